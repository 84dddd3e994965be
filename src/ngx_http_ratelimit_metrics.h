
/*
 * Global API rate limiter: the counters of each shard and of each policy,
 * kept in the zone by name so that they outlive reloads, and the location
 * that shows them and the zone's counters in Prometheus' text format.
 */


#ifndef _NGX_HTTP_RATELIMIT_METRICS_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_METRICS_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"
#include "rl_metrics.h"

#include <time.h>


/* what became of a policy's check: the "outcome" label */
#define NGX_HTTP_RATELIMIT_OUTCOME_PASSED            0
#define NGX_HTTP_RATELIMIT_OUTCOME_REJECTED          1
#define NGX_HTTP_RATELIMIT_OUTCOME_REJECTED_DRY_RUN  2
#define NGX_HTTP_RATELIMIT_OUTCOME_FAILED_OPEN       3
#define NGX_HTTP_RATELIMIT_OUTCOME_FAILED_CLOSED     4
#define NGX_HTTP_RATELIMIT_OUTCOMES                  5

/* a shard's counters */
#define NGX_HTTP_RATELIMIT_SHARD_COMMANDS            0
#define NGX_HTTP_RATELIMIT_SHARD_WRITES              1
#define NGX_HTTP_RATELIMIT_SHARD_REPLIES             2
#define NGX_HTTP_RATELIMIT_SHARD_FAILURES            3
#define NGX_HTTP_RATELIMIT_SHARD_BATCHES             4
#define NGX_HTTP_RATELIMIT_SHARD_CHECKS              5
#define NGX_HTTP_RATELIMIT_SHARD_COUNTERS            6

#define NGX_HTTP_RATELIMIT_SERIES_SHARD              0
#define NGX_HTTP_RATELIMIT_SERIES_POLICY             1

/* shard names ("host:port") and policy names are no longer */
#define NGX_HTTP_RATELIMIT_SERIES_NAME               64


typedef struct ngx_http_ratelimit_series_s  ngx_http_ratelimit_series_t;

/*
 * shared memory: the counters of one shard or one policy, found by kind
 * and name.  One stays while the master's configuration has it (current)
 * or a worker counts in it (refs, under the mutex); the last worker out of
 * one that is no longer current frees it, as with the rings.
 */
struct ngx_http_ratelimit_series_s {
    ngx_http_ratelimit_series_t    *next;
    ngx_uint_t                      refs;
    ngx_uint_t                      kind;
    ngx_uint_t                      current;
    size_t                          name_len;
    u_char                          name[NGX_HTTP_RATELIMIT_SERIES_NAME];

    /* OUTCOME_* of a policy, SHARD_* of a shard */
    ngx_atomic_t                    counters[NGX_HTTP_RATELIMIT_SHARD_COUNTERS];

    /* a shard's: check round trips, not cumulative, and their sum in us */
    ngx_atomic_t                    rtt[RL_METRICS_BUCKETS];
    ngx_atomic_t                    rtt_sum;
};


/* init_module, in the master: the configuration's series are current */
void ngx_http_ratelimit_metrics_commit(ngx_http_ratelimit_zone_t *zone,
    ngx_log_t *log);

/* init_process: this worker counts in its configuration's series */
ngx_int_t ngx_http_ratelimit_metrics_hold(ngx_http_ratelimit_zone_t *zone,
    ngx_cycle_t *cycle);
void ngx_http_ratelimit_metrics_release(ngx_http_ratelimit_zone_t *zone);

/* a few atomic additions, no lock: fine on every request */
void ngx_http_ratelimit_count_outcome(ngx_http_ratelimit_policy_t *policy,
    ngx_uint_t outcome);
void ngx_http_ratelimit_count_shard(ngx_uint_t shard, ngx_uint_t counter,
    ngx_uint_t n);
void ngx_http_ratelimit_observe_rtt(ngx_uint_t shard, uint64_t us);

ngx_int_t ngx_http_ratelimit_metrics_handler(ngx_http_request_t *r);


/* a monotonic clock in microseconds, for round trips (a vDSO call) */
static ngx_inline uint64_t
ngx_http_ratelimit_usec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


#endif /* _NGX_HTTP_RATELIMIT_METRICS_H_INCLUDED_ */
