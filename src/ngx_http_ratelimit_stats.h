
/*
 * Global API rate limiter: the zone's counters, summed over all workers,
 * and the location that shows them.
 */


#ifndef _NGX_HTTP_RATELIMIT_STATS_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_STATS_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"


typedef struct {
    ngx_atomic_t                    checks;         /* sent to a shard */
    ngx_atomic_t                    batches;        /* check script calls */
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
    ngx_atomic_t                    refunds;        /* checks given back */
} ngx_http_ratelimit_stats_t;



/* this worker's view of the zone's counters, set in init_process */
extern ngx_http_ratelimit_stats_t  *ngx_http_ratelimit_counters;

#define ngx_http_ratelimit_count(field, n)                                    \
    do {                                                                      \
        if (ngx_http_ratelimit_counters) {                                    \
            (void) ngx_atomic_fetch_add(&ngx_http_ratelimit_counters->field,  \
                                        n);                                   \
        }                                                                     \
    } while (0)


ngx_int_t ngx_http_ratelimit_stats_handler(ngx_http_request_t *r);

/* 405 with "Allow: GET, HEAD", for the locations that only show */
ngx_int_t ngx_http_ratelimit_stats_not_allowed(ngx_http_request_t *r);


#endif /* _NGX_HTTP_RATELIMIT_STATS_H_INCLUDED_ */
