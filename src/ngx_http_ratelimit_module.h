
/*
 * Global API rate limiter: types shared by the module's files.
 *
 * The module is split by responsibility:
 *   ngx_http_ratelimit_module.c   directives, configuration, module hooks
 *   ngx_http_ratelimit_handler.c  the access-phase check and the deny answer
 *   ngx_http_ratelimit_redis.c    per-worker pipelined connections to shards
 *   ngx_http_ratelimit_zone.c     the shared memory zone: ring, shard health,
 *                                 deny cache
 *   rl_*.c                        nginx-free logic (ring, reply decoding)
 */


#ifndef _NGX_HTTP_RATELIMIT_MODULE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>

#include "rl_ketama.h"
#include "rl_reply.h"
#include "rl_rule.h"


#define NGX_HTTP_RATELIMIT_TOKEN_BUCKET     0
#define NGX_HTTP_RATELIMIT_SLIDING_WINDOW   1
#define NGX_HTTP_RATELIMIT_NALGORITHMS      2

#define NGX_HTTP_RATELIMIT_FAIL_OPEN        0
#define NGX_HTTP_RATELIMIT_FAIL_CLOSED      1

#define NGX_HTTP_RATELIMIT_HEADERS_OFF      0
#define NGX_HTTP_RATELIMIT_HEADERS_DRAFT    1
#define NGX_HTTP_RATELIMIT_HEADERS_LEGACY   2

#define NGX_HTTP_RATELIMIT_MAX_LIMIT        1000000000
#define NGX_HTTP_RATELIMIT_MIN_WINDOW       1000
#define NGX_HTTP_RATELIMIT_MAX_WINDOW       86400000

/* customer ids: as the admin endpoint accepts them */
#define NGX_HTTP_RATELIMIT_MAX_CUSTOMER     256

/* every shard holds every rule, in one hash, with a version counter */
#define NGX_HTTP_RATELIMIT_RULES_KEY        "rl:rules"
#define NGX_HTTP_RATELIMIT_RULES_VERSION    "rl:rules:version"

/*
 * Caller keys longer than this are replaced by their SHA-1 in the Redis key,
 * so a huge user id costs a bounded key in Redis and in shared memory.
 */
#define NGX_HTTP_RATELIMIT_MAX_RAW_KEY      128

/*
 * The name of a "ratelimit" value in the Redis key: the variable's name,
 * or "x" and a CRC32 of anything else.
 */
#define NGX_HTTP_RATELIMIT_MAX_KEY_NAME     32

/*
 * "rl:tb:" + name + ":k:" + a key of up to 126 bytes, or
 * "rl:tb:" + name + ":h:" + 40 hex digits
 */
#define NGX_HTTP_RATELIMIT_MAX_REDIS_KEY                                      \
    (6 + NGX_HTTP_RATELIMIT_MAX_KEY_NAME + 1 + NGX_HTTP_RATELIMIT_MAX_RAW_KEY)


/* one "ratelimit_redis" line */
typedef struct {
    ngx_str_t                       name;       /* "host:port", ring name */
    ngx_addr_t                      addr;
    ngx_uint_t                      weight;
    ngx_str_t                       password;
} ngx_http_ratelimit_shard_conf_t;


/* shared memory: what every worker knows about one shard */
typedef struct {
    ngx_atomic_t                    down_until;  /* ngx_current_msec, 0: up */
    ngx_atomic_t                    failures;    /* consecutive */
    u_char                          name[64];
    size_t                          name_len;
} ngx_http_ratelimit_health_t;


/*
 * shared memory: the ketama ring of one configuration generation, with its
 * shards' health.  The current ring stays; every worker holds a reference
 * to its own until it exits, and the last one out of a ring that is no
 * longer current frees it: a worker of an older generation never reads a
 * freed ring.
 */
typedef struct ngx_http_ratelimit_ring_s  ngx_http_ratelimit_ring_t;

struct ngx_http_ratelimit_ring_s {
    ngx_http_ratelimit_ring_t      *next;        /* the zone's live rings */
    ngx_uint_t                      refs;        /* workers, under the mutex */
    uint32_t                        fingerprint;  /* of names and weights */
    ngx_uint_t                      nshards;
    ngx_http_ratelimit_health_t    *health;
    ngx_uint_t                      npoints;
    rl_ketama_point_t              *points;
};


typedef struct {
    ngx_atomic_t                    checks;         /* limited requests */
    ngx_atomic_t                    allowed;
    ngx_atomic_t                    denied;
    ngx_atomic_t                    denied_cached;  /* without Redis */
    ngx_atomic_t                    failed_open;
    ngx_atomic_t                    failed_closed;
    ngx_atomic_t                    redis_commands;
    ngx_atomic_t                    redis_writes;   /* send() calls */
    ngx_atomic_t                    redis_replies;
    ngx_atomic_t                    noscript;
    ngx_atomic_t                    rule_lookups;   /* rule cache misses */
} ngx_http_ratelimit_stats_t;


/* the limit a request is held to: a customer's rule or the default */
typedef struct {
    ngx_uint_t                      limit;
    ngx_msec_t                      window;
    ngx_uint_t                      algorithm;   /* NGX_HTTP_RATELIMIT_* */
    unsigned                        has_rule:1;  /* else: location default */
    unsigned                        has_algorithm:1;
} ngx_http_ratelimit_rule_t;


/* shared memory: an entry of the rule cache or of the deny cache */
typedef struct {
    ngx_rbtree_node_t               node;        /* key: CRC32 of data */
    ngx_queue_t                     queue;       /* LRU */
    ngx_uint_t                      epoch;
    ngx_msec_t                      until;       /* deny: denied until */
    ngx_msec_t                      reset_until; /* deny: quota full at */
    ngx_http_ratelimit_rule_t       rule;        /* rule cache */
    u_short                         len;
    u_char                          data[1];
} ngx_http_ratelimit_entry_t;


typedef struct {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     lru;
    ngx_uint_t                      entries;
    ngx_uint_t                      evictions;
} ngx_http_ratelimit_cache_t;


/* shared memory: the zone's root */
typedef struct {
    ngx_http_ratelimit_ring_t      *rings;       /* every live generation */
    ngx_http_ratelimit_ring_t      *current;     /* the master's configuration's */
    ngx_atomic_t                    epoch;       /* of the cached rules */
    ngx_atomic_t                    rules_version;   /* highest seen */
    ngx_atomic_t                    rules_polled_at;
    ngx_http_ratelimit_cache_t      rule_cache;
    ngx_http_ratelimit_cache_t      deny_cache;
    ngx_http_ratelimit_stats_t      stats;
} ngx_http_ratelimit_shctx_t;


typedef struct {
    ngx_http_ratelimit_shctx_t     *sh;
    ngx_slab_pool_t                *shpool;
    ngx_http_ratelimit_ring_t      *ring;       /* this configuration's */
    void                           *main_conf;
    unsigned                        worker_holds:1;  /* a ring reference */
} ngx_http_ratelimit_zone_t;


typedef struct {
    ngx_shm_zone_t                 *shm_zone;
    ngx_array_t                     shards;     /* shard_conf_t */
    ngx_msec_t                      timeout;
    ngx_flag_t                      used;       /* some location limits */
    ngx_flag_t                      needs_zone; /* stats or admin */
    ngx_flag_t                      needs_shards; /* admin */
} ngx_http_ratelimit_main_conf_t;


typedef struct {
    ngx_array_t                    *keys;       /* complex values, NULL: off */
    ngx_array_t                    *key_names;  /* ngx_str_t, one per key */
    ngx_http_complex_value_t       *customer;   /* whose rule, NULL: key */
    ngx_uint_t                      limit;
    ngx_msec_t                      window;
    ngx_uint_t                      algorithm;
    ngx_uint_t                      fail;
    ngx_uint_t                      status;
    ngx_uint_t                      headers;
    ngx_flag_t                      admin;
    ngx_str_t                       admin_token;
} ngx_http_ratelimit_loc_conf_t;


/* per worker: Redis connections */

typedef struct ngx_http_ratelimit_conn_s  ngx_http_ratelimit_conn_t;
typedef struct ngx_http_ratelimit_slot_s  ngx_http_ratelimit_slot_t;

/*
 * Called once per queued command, from an event handler, never from inside
 * ngx_http_ratelimit_redis_send(): with the reply, or with NULL when the
 * connection failed before the reply came.  The reply is freed afterwards.
 */
typedef void (*ngx_http_ratelimit_reply_pt)(void *data, redisReply *reply);

/*
 * Every function below accepts a NULL conn (as ngx_http_ratelimit_redis_conn()
 * returns for a shard this worker does not know) and a NULL slot: send()
 * returns NULL (take the fail path), stuck() 0, name() "no shard",
 * clock_offset() NULL; fail() and detach() do nothing.
 *
 * send() also returns NULL when the connection holds too many commands or
 * unsent bytes (a shard slower than its callers), without calling back.
 *
 * detach(): the owner of a slot is gone.  A command not yet written is
 * withdrawn (the shard never sees it, the slot is reused at once): NGX_OK.
 * One already written, even in part, is answered later and the answer
 * dropped: NGX_DECLINED, the shard may still run it.  Either way the handler
 * is never called, and the slot must not be used again.
 *
 * stuck(): the shard is slower than "timeout": the oldest command it owes
 * an answer was queued that long ago, or connecting took that long.  Then
 * fail() it, so every waiting command takes its fail path at once.
 *
 * clock_offset(): a field kept per connection for its owner's use, 0 until
 * written, kept across reconnects (the shard's clock minus the worker's).
 */

ngx_int_t ngx_http_ratelimit_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_main_conf_t *rmcf);
void ngx_http_ratelimit_redis_exit_process(ngx_cycle_t *cycle);
ngx_http_ratelimit_conn_t *ngx_http_ratelimit_redis_conn(ngx_uint_t shard);
ngx_http_ratelimit_slot_t *ngx_http_ratelimit_redis_send(
    ngx_http_ratelimit_conn_t *conn, int argc, const char **argv,
    const size_t *argvlen, ngx_http_ratelimit_reply_pt handler, void *data);
ngx_int_t ngx_http_ratelimit_redis_detach(ngx_http_ratelimit_slot_t *slot);
void ngx_http_ratelimit_redis_fail(ngx_http_ratelimit_conn_t *conn,
    const char *reason);
ngx_uint_t ngx_http_ratelimit_redis_stuck(ngx_http_ratelimit_conn_t *conn,
    ngx_msec_t timeout);
ngx_str_t *ngx_http_ratelimit_redis_name(ngx_http_ratelimit_conn_t *conn);
ngx_msec_int_t *ngx_http_ratelimit_redis_clock_offset(
    ngx_http_ratelimit_conn_t *conn);


/* shared memory zone */

#define NGX_HTTP_RATELIMIT_SHARD_UP      0
#define NGX_HTTP_RATELIMIT_SHARD_PROBE   1
#define NGX_HTTP_RATELIMIT_SHARD_DOWN    2

ngx_int_t ngx_http_ratelimit_init_zone(ngx_shm_zone_t *shm_zone, void *data);
void ngx_http_ratelimit_ring_commit(ngx_http_ratelimit_zone_t *zone);
void ngx_http_ratelimit_ring_hold(ngx_http_ratelimit_zone_t *zone);
void ngx_http_ratelimit_ring_release(ngx_http_ratelimit_zone_t *zone);
ngx_uint_t ngx_http_ratelimit_ring_lookup(ngx_http_ratelimit_ring_t *ring,
    u_char *key, size_t len);
ngx_uint_t ngx_http_ratelimit_shard_state(ngx_http_ratelimit_health_t *h);
ngx_msec_t ngx_http_ratelimit_shard_retry_in(ngx_http_ratelimit_health_t *h);
void ngx_http_ratelimit_shard_failed(ngx_http_ratelimit_health_t *h,
    ngx_log_t *log, const char *reason);
void ngx_http_ratelimit_shard_ok(ngx_http_ratelimit_health_t *h,
    ngx_log_t *log);


/* rules kept in Redis */

ngx_int_t ngx_http_ratelimit_rules_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_main_conf_t *rmcf);
void ngx_http_ratelimit_rules_exit_process(ngx_cycle_t *cycle);
void ngx_http_ratelimit_rules_eval(const char **argv, size_t *argvlen,
    const char *body, size_t len);
ngx_int_t ngx_http_ratelimit_rules_shard(ngx_http_ratelimit_ring_t *ring,
    u_char *customer, size_t len);
ngx_int_t ngx_http_ratelimit_rule_parse(u_char *stored, size_t len,
    ngx_http_ratelimit_rule_t *rule, uint64_t *stamp);


/* the caches in the zone */

void ngx_http_ratelimit_cache_init(ngx_http_ratelimit_cache_t *cache);
void ngx_http_ratelimit_cache_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
ngx_int_t ngx_http_ratelimit_rule_cache_get(ngx_http_ratelimit_zone_t *zone,
    u_char *customer, size_t len, ngx_http_ratelimit_rule_t *rule);
void ngx_http_ratelimit_rule_cache_put(ngx_http_ratelimit_zone_t *zone,
    u_char *customer, size_t len, ngx_http_ratelimit_rule_t *rule,
    ngx_uint_t epoch);
ngx_int_t ngx_http_ratelimit_deny_cache_get(ngx_http_ratelimit_zone_t *zone,
    u_char *key, size_t len, ngx_msec_t *retry_ms, ngx_msec_t *reset_ms);
void ngx_http_ratelimit_deny_cache_put(ngx_http_ratelimit_zone_t *zone,
    u_char *key, size_t len, ngx_msec_t retry_ms, ngx_msec_t reset_ms,
    ngx_uint_t epoch);
void ngx_http_ratelimit_cache_invalidate(ngx_http_ratelimit_zone_t *zone);
ngx_uint_t ngx_http_ratelimit_cache_shrink_locked(
    ngx_http_ratelimit_zone_t *zone);


/* handlers */

ngx_int_t ngx_http_ratelimit_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_ratelimit_stats_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_ratelimit_admin_handler(ngx_http_request_t *r);

/* this worker's view of the zone, set in init_process */
extern ngx_http_ratelimit_stats_t  *ngx_http_ratelimit_counters;

#define ngx_http_ratelimit_count(field, n)                                    \
    if (ngx_http_ratelimit_counters) {                                           \
        (void) ngx_atomic_fetch_add(&ngx_http_ratelimit_counters->field, n);     \
    }


extern ngx_module_t  ngx_http_ratelimit_module;


#endif /* _NGX_HTTP_RATELIMIT_MODULE_H_INCLUDED_ */
