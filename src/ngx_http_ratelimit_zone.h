
/*
 * Global API rate limiter: the shared memory zone.  The ketama ring of each
 * configuration generation with its shards' health, the caches and the
 * counters, shared by every worker.
 */


#ifndef _NGX_HTTP_RATELIMIT_ZONE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_ZONE_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"
#include "ngx_http_ratelimit_cache.h"
#include "ngx_http_ratelimit_stats.h"
#include "ngx_http_ratelimit_metrics.h"
#include "rl_ketama.h"


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
struct ngx_http_ratelimit_ring_s {
    ngx_http_ratelimit_ring_t      *next;        /* the zone's live rings */
    ngx_uint_t                      refs;        /* workers, under the mutex */
    uint32_t                        fingerprint;  /* of names, weights and
                                                     the key hash */
    rl_ketama_hash_t                hash;        /* of the keys */
    ngx_uint_t                      nshards;
    ngx_http_ratelimit_health_t    *health;
    ngx_uint_t                      npoints;
    rl_ketama_point_t              *points;
};


/* shared memory: the zone's root */
typedef struct {
    ngx_http_ratelimit_ring_t      *rings;       /* every live generation */
    ngx_http_ratelimit_ring_t      *current;     /* the master's configuration's */
    ngx_atomic_t                    epoch;       /* of the cached rules */
    ngx_atomic_t                    rules_version;   /* highest seen */
    ngx_atomic_t                    rules_polled_at;
    ngx_atomic_t                    rules_synced_at; /* unix time, 0: never */
    ngx_http_ratelimit_cache_t      rule_cache;
    ngx_http_ratelimit_cache_t      deny_cache;
    ngx_http_ratelimit_stats_t      stats;
    ngx_http_ratelimit_series_t    *series;      /* per shard and policy */
} ngx_http_ratelimit_shctx_t;


/* per configuration: the zone as this cycle sees it */
struct ngx_http_ratelimit_zone_s {
    ngx_http_ratelimit_shctx_t     *sh;
    ngx_slab_pool_t                *shpool;
    ngx_http_ratelimit_ring_t      *ring;       /* this configuration's */
    void                           *main_conf;
    unsigned                        worker_holds:1;  /* a ring reference */
};


#define NGX_HTTP_RATELIMIT_SHARD_UP      0
#define NGX_HTTP_RATELIMIT_SHARD_PROBE   1
#define NGX_HTTP_RATELIMIT_SHARD_DOWN    2

ngx_int_t ngx_http_ratelimit_init_zone(ngx_shm_zone_t *shm_zone, void *data);
void ngx_http_ratelimit_ring_commit(ngx_http_ratelimit_zone_t *zone);
void ngx_http_ratelimit_ring_hold(ngx_http_ratelimit_zone_t *zone);
void ngx_http_ratelimit_ring_release(ngx_http_ratelimit_zone_t *zone);
ngx_uint_t ngx_http_ratelimit_ring_lookup(ngx_http_ratelimit_ring_t *ring,
    u_char *key, size_t len);
ngx_int_t ngx_http_ratelimit_ring_next_live(ngx_http_ratelimit_ring_t *ring,
    u_char *key, size_t len, ngx_uint_t *tried);

/*
 * May the caller send to the shard now?  UP: yes.  PROBE: the shard is
 * down, its retry time has come and this caller has claimed the probe (no
 * other caller of any worker gets it until the next interval).  DOWN: take
 * the fail path.
 */
ngx_uint_t ngx_http_ratelimit_shard_admit(ngx_http_ratelimit_health_t *h);
ngx_msec_t ngx_http_ratelimit_shard_retry_in(ngx_http_ratelimit_health_t *h);
void ngx_http_ratelimit_shard_failed(ngx_http_ratelimit_health_t *h,
    ngx_log_t *log, const char *reason);
void ngx_http_ratelimit_shard_ok(ngx_http_ratelimit_health_t *h,
    ngx_log_t *log);
void ngx_http_ratelimit_shard_event(ngx_uint_t shard, ngx_uint_t event,
    const char *reason, ngx_log_t *log);



#endif /* _NGX_HTTP_RATELIMIT_ZONE_H_INCLUDED_ */
