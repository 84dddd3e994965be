
/*
 * Global API rate limiter: the module's configuration, and the names of its
 * types, as ngx_core.h names nginx's own.  Each subsystem has a header of
 * its own that says what it offers:
 *
 *   ngx_http_ratelimit_zone.h     the shared zone: ring, shard health
 *   ngx_http_ratelimit_cache.h    the zone's rule and deny caches
 *   ngx_http_ratelimit_stats.h    the zone's counters, the stats location
 *   ngx_http_ratelimit_metrics.h  counters per shard and policy, the
 *                                 Prometheus location
 *   ngx_http_ratelimit_redis.h    each worker's connections to the shards
 *   ngx_http_ratelimit_discovery.h  where each shard is now: resolver,
 *                                 Sentinel
 *   ngx_http_ratelimit_rules.h    per-customer rules kept in Redis
 *   ngx_http_ratelimit_rules_store.h  one rule's change on every shard,
 *                                 its read from a live shard
 *   ngx_http_ratelimit_handler.h  the check of each request
 *   ngx_http_ratelimit_admin.h    the admin endpoint
 *   rl_*.h                        nginx-free logic (ring, replies, rules)
 */


#ifndef _NGX_HTTP_RATELIMIT_MODULE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "rl_rule.h"        /* the rule, its algorithms and bounds */


typedef struct ngx_http_ratelimit_zone_s  ngx_http_ratelimit_zone_t;
typedef struct ngx_http_ratelimit_ring_s  ngx_http_ratelimit_ring_t;
typedef struct ngx_http_ratelimit_conn_s  ngx_http_ratelimit_conn_t;
typedef struct ngx_http_ratelimit_slot_s  ngx_http_ratelimit_slot_t;
typedef struct ngx_http_ratelimit_discovery_s
    ngx_http_ratelimit_discovery_t;


#define NGX_HTTP_RATELIMIT_FAIL_OPEN        0
#define NGX_HTTP_RATELIMIT_FAIL_CLOSED      1

#define NGX_HTTP_RATELIMIT_HEADERS_OFF      0
#define NGX_HTTP_RATELIMIT_HEADERS_DRAFT    1
#define NGX_HTTP_RATELIMIT_HEADERS_LEGACY   2

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
 * "rl:tb:" ["@" + policy + ":"] + name + ":k:" + a key of up to 126 bytes,
 * or the same with ":h:" + 40 hex digits
 */
#define NGX_HTTP_RATELIMIT_MAX_REDIS_KEY                                      \
    (6 + 1 + RL_RULE_MAX_POLICY + 1 + NGX_HTTP_RATELIMIT_MAX_KEY_NAME + 1     \
     + NGX_HTTP_RATELIMIT_MAX_RAW_KEY)


/*
 * A limit requests are checked against: a "ratelimit_policy" of the http
 * block, or a location's unnamed one (the "ratelimit $key" form, with
 * "ratelimit_default", "ratelimit_algorithm" and "ratelimit_customer"),
 * which headers, logs and variables call "default".
 */
typedef struct {
    ngx_str_t                       name;
    ngx_array_t                    *keys;       /* complex values */
    ngx_array_t                    *key_names;  /* ngx_str_t, one per key */
    ngx_http_complex_value_t       *customer;   /* whose rule, NULL: key */
    ngx_uint_t                      limit;      /* the default */
    ngx_uint_t                      window;     /* seconds */
    ngx_uint_t                      algorithm;  /* RL_RULE_ALGORITHM_* */
    unsigned                        named:1;
} ngx_http_ratelimit_policy_t;


/*
 * One "ratelimit" line of a location: a named policy, or the location's
 * unnamed one (policy NULL until the merge finds it, name empty).
 */
typedef struct {
    ngx_str_t                       name;
    ngx_http_ratelimit_policy_t    *policy;     /* named: resolved at merge */
    ngx_http_complex_value_t       *cost;       /* NULL: cost_value */
    ngx_uint_t                      cost_value;
    ngx_flag_t                      dry_run;
    u_char                         *file;       /* where, for errors */
    ngx_uint_t                      line;
} ngx_http_ratelimit_use_t;

/* "ratelimit" lines a location may have */
#define NGX_HTTP_RATELIMIT_MAX_POLICIES     16


/*
 * The TLS of the shards marked "tls": one profile for all of them, from the
 * "ratelimit_redis_tls_*" directives of the http block.
 */
typedef struct {
#if (NGX_SSL)
    ngx_ssl_t                      *ssl;        /* NULL: no shard uses TLS */
#endif
    ngx_flag_t                      verify;
    ngx_str_t                       trusted_certificate;
    ngx_str_t                       certificate;
    ngx_str_t                       certificate_key;
    ngx_str_t                       server_name; /* empty: the shard's host */
} ngx_http_ratelimit_tls_conf_t;


/* the largest "password=file:" file read */
#define NGX_HTTP_RATELIMIT_MAX_PASSWORD     4096


/* one "ratelimit_redis" or "ratelimit_redis_sentinel" line */
typedef struct {
    ngx_str_t                       name;       /* "host:port", ring name */
    ngx_addr_t                      addr;
    ngx_uint_t                      weight;
    ngx_str_t                       user;       /* empty: AUTH password */
    ngx_str_t                       password;
    ngx_http_ratelimit_discovery_t *discovery;  /* NULL: addr, fixed */

    /* "tls": the profile; the name checked, null-terminated; if an IP */
    ngx_http_ratelimit_tls_conf_t  *tls;        /* NULL: plain TCP */
    ngx_str_t                       host;       /* as written, no port */
    ngx_str_t                       tls_name;
    unsigned                        tls_name_ip:1;
} ngx_http_ratelimit_shard_conf_t;


typedef struct {
    ngx_shm_zone_t                 *shm_zone;
    ngx_array_t                     shards;     /* shard_conf_t */
    ngx_msec_t                      timeout;
    ngx_uint_t                      hash;       /* RL_KETAMA_HASH_* */
    ngx_flag_t                      used;       /* some location limits */
    ngx_flag_t                      needs_zone; /* stats or admin */
    ngx_flag_t                      needs_shards; /* admin */
    ngx_array_t                     policies;   /* policy_t, named */
    ngx_http_ratelimit_tls_conf_t   tls;
} ngx_http_ratelimit_main_conf_t;


/*
 * A shard line's parameter, "weight=", "user=", "password=" or "tls":
 * NGX_DECLINED when it is none of them, NGX_ERROR (logged) when its value is
 * bad.  check(): the shard added last, all its parameters read, has a name
 * of its own and a password for its user.
 */
ngx_int_t ngx_http_ratelimit_shard_param(ngx_conf_t *cf,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_str_t *value);
ngx_int_t ngx_http_ratelimit_shard_check(ngx_conf_t *cf,
    ngx_http_ratelimit_main_conf_t *rmcf);


/*
 * A whole answer in one buffer: status, Content-Type ("type_len": its
 * length without parameters, as nginx keeps it), Content-Length, body.
 */
ngx_int_t ngx_http_ratelimit_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, size_t type_len, ngx_buf_t *b);

/* a nonblocking connect() has ended: 0, or the error it ended with */
ngx_err_t ngx_http_ratelimit_connect_error(ngx_connection_t *c);


/* a named policy of the http block, or NULL */
ngx_http_ratelimit_policy_t *ngx_http_ratelimit_policy_find(
    ngx_http_ratelimit_main_conf_t *rmcf, ngx_str_t *name);


typedef struct {
    ngx_array_t                    *uses;       /* use_t, NULL: off */

    /* the unnamed policy: "ratelimit $key", "ratelimit_default", ... */
    ngx_array_t                    *keys;       /* complex values */
    ngx_array_t                    *key_names;  /* ngx_str_t, one per key */
    ngx_http_complex_value_t       *customer;   /* whose rule, NULL: key */
    ngx_uint_t                      limit;      /* the default */
    ngx_uint_t                      window;     /* seconds */
    ngx_uint_t                      algorithm;  /* RL_RULE_ALGORITHM_* */
    ngx_http_ratelimit_policy_t     unnamed;    /* the above, merged */

    ngx_uint_t                      fail;
    ngx_uint_t                      status;
    ngx_uint_t                      headers;
    ngx_flag_t                      problem_details;
    ngx_flag_t                      dry_run;
    ngx_uint_t                      log_level;  /* of denials */
    ngx_flag_t                      admin;
    ngx_str_t                       admin_token;
} ngx_http_ratelimit_loc_conf_t;



/*
 * Request-time complaints are rate-limited, a shard that is down must not
 * cost a line per request: true at most once a second per *logged_at (one
 * per worker and cause).
 */
static ngx_inline ngx_uint_t
ngx_http_ratelimit_log_due(ngx_msec_t *logged_at)
{
    if (*logged_at != 0 && ngx_current_msec - *logged_at < 1000) {
        return 0;
    }

    *logged_at = ngx_current_msec;

    return 1;
}


/* this worker's clock in ms, as the shards' clocks are compared with it */
static ngx_inline int64_t
ngx_http_ratelimit_local_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


extern ngx_module_t  ngx_http_ratelimit_module;


#endif /* _NGX_HTTP_RATELIMIT_MODULE_H_INCLUDED_ */
