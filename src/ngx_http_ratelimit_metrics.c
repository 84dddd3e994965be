
/*
 * Global API rate limiter: the counters of each shard and each policy in
 * the zone, and the location with "ratelimit_metrics" that shows them, with
 * the zone's counters, in Prometheus' text format (version 0.0.4).
 *
 * A shard's counters must outlive a reload, even one that changes the
 * shard list and so replaces the ring its health lives in: they are kept
 * by name in series of their own.  The master makes its configuration's
 * series current when it commits it; each worker finds its
 * configuration's series when it starts and counts in them through a
 * pointer per shard and per policy, with atomic additions only.  A series
 * a new configuration dropped stays until the last worker of the older
 * configurations exits, then goes; one that comes back later starts again
 * from zero.
 */


#include "ngx_http_ratelimit_metrics.h"
#include "ngx_http_ratelimit_zone.h"


#define NGX_HTTP_RATELIMIT_PREFIX  "nginx_ratelimit_"


/* the families, in the order they are shown */
#define NGX_HTTP_RATELIMIT_F_REQUESTS      0
#define NGX_HTTP_RATELIMIT_F_CACHE_ENTRIES 1
#define NGX_HTTP_RATELIMIT_F_CACHE_EVICT   2
#define NGX_HTTP_RATELIMIT_F_RULES_VERSION 3
#define NGX_HTTP_RATELIMIT_F_RULES_SYNC    4
#define NGX_HTTP_RATELIMIT_F_SHARD_UP      5
#define NGX_HTTP_RATELIMIT_F_SHARD_FIRST   6    /* SHARD_* counters */
#define NGX_HTTP_RATELIMIT_F_SHARD_RTT                                        \
    (NGX_HTTP_RATELIMIT_F_SHARD_FIRST + NGX_HTTP_RATELIMIT_SHARD_COUNTERS)
#define NGX_HTTP_RATELIMIT_F_ZONE_FIRST    (NGX_HTTP_RATELIMIT_F_SHARD_RTT + 1)


typedef struct {
    ngx_str_t                       name;       /* after the prefix */
    ngx_str_t                       type;
    ngx_str_t                       help;
    size_t                          offset;     /* zone's: in stats_t */
} ngx_http_ratelimit_family_t;


/* the series a commit found no room for: said in one line */
typedef struct {
    ngx_uint_t                      n;
    ngx_uint_t                      kind;       /* of the first */
    ngx_str_t                       name;
} ngx_http_ratelimit_missed_t;


#define ngx_http_ratelimit_family(name, type, help)                           \
    { ngx_string(name), ngx_string(type), ngx_string(help), 0 }

#define ngx_http_ratelimit_zone_family(name, field, help)                     \
    { ngx_string(name), ngx_string("counter"), ngx_string(help),              \
      offsetof(ngx_http_ratelimit_stats_t, field) }


static ngx_http_ratelimit_family_t  ngx_http_ratelimit_families[] = {

    ngx_http_ratelimit_family("requests_total", "counter",
        "Checks of requests against each policy, by outcome: at most one "
        "per request and policy"),
    ngx_http_ratelimit_family("cache_entries", "gauge",
        "Entries of the zone's rule and deny caches"),
    ngx_http_ratelimit_family("cache_evictions_total", "counter",
        "Entries dropped from the zone's caches to make room"),
    ngx_http_ratelimit_family("rules_version", "gauge",
        "The highest rules version seen on the shards"),
    ngx_http_ratelimit_family("rules_last_sync_timestamp_seconds", "gauge",
        "When a shard last answered this node's poll of the rules version, "
        "0 for never"),
    ngx_http_ratelimit_family("shard_up", "gauge",
        "1 when the shard is taken as up, 0 while it is marked down"),

    /* indexed by NGX_HTTP_RATELIMIT_SHARD_* */
    ngx_http_ratelimit_family("shard_commands_total", "counter",
        "Commands queued on the connections to the shard"),
    ngx_http_ratelimit_family("shard_writes_total", "counter",
        "send() calls on the connections to the shard"),
    ngx_http_ratelimit_family("shard_replies_total", "counter",
        "Replies read from the shard"),
    ngx_http_ratelimit_family("shard_failures_total", "counter",
        "Failures of the shard: a connection refused or lost, a timeout, "
        "a bound crossed"),
    ngx_http_ratelimit_family("shard_batches_total", "counter",
        "Calls of the check script sent to the shard"),
    ngx_http_ratelimit_family("shard_checks_total", "counter",
        "Policy checks sent to the shard"),

    ngx_http_ratelimit_family("shard_check_rtt_seconds", "histogram",
        "Round trip of the shard's answered check script calls, from the "
        "call queued to its reply read"),

    /* the zone's counters, as the JSON stats show them */
    ngx_http_ratelimit_zone_family("checks_total", checks,
        "Policy checks sent to a shard"),
    ngx_http_ratelimit_zone_family("batches_total", batches,
        "Calls of the check script the checks went out in"),
    ngx_http_ratelimit_zone_family("allowed_total", allowed,
        "Checks a shard allowed and counted"),
    ngx_http_ratelimit_zone_family("denied_total", denied,
        "Denials, from a shard or from the deny cache, dry run included"),
    ngx_http_ratelimit_zone_family("denied_cached_total", denied_cached,
        "Denials from the deny cache, without a Redis call"),
    ngx_http_ratelimit_zone_family("failed_open_total", failed_open,
        "Checks that took the fail path and let the request through"),
    ngx_http_ratelimit_zone_family("failed_closed_total", failed_closed,
        "Checks that took the fail path and refused the request"),
    ngx_http_ratelimit_zone_family("redis_commands_total", redis_commands,
        "Commands queued on the shard connections"),
    ngx_http_ratelimit_zone_family("redis_writes_total", redis_writes,
        "send() calls on the shard connections"),
    ngx_http_ratelimit_zone_family("redis_replies_total", redis_replies,
        "Replies read from the shards"),
    ngx_http_ratelimit_zone_family("noscript_total", noscript,
        "NOSCRIPT answers, each followed by one EVAL"),
    ngx_http_ratelimit_zone_family("rule_lookups_total", rule_lookups,
        "Checks that asked the check script to read the customer's rules"),
    ngx_http_ratelimit_zone_family("refunds_total", refunds,
        "Checks given back after a policy on another shard refused")
};

#define NGX_HTTP_RATELIMIT_FAMILIES                                           \
    (sizeof(ngx_http_ratelimit_families)                                      \
     / sizeof(ngx_http_ratelimit_family_t))


/* indexed by NGX_HTTP_RATELIMIT_OUTCOME_* */
static ngx_str_t  ngx_http_ratelimit_outcomes[] = {
    ngx_string("passed"),
    ngx_string("rejected"),
    ngx_string("rejected_dry_run"),
    ngx_string("failed_open"),
    ngx_string("failed_closed")
};


/*
 * The longest sample line: the name with a suffix, two labels (one of
 * them a name escaped, the other an outcome, a cache or a bound), the
 * value (a number, or seconds with 6 decimals).
 */
#define NGX_HTTP_RATELIMIT_SAMPLE_MAX                                         \
    (sizeof(NGX_HTTP_RATELIMIT_PREFIX) + 64                                   \
     + sizeof("{policy=\"\",outcome=\"\"} ")                                  \
     + rl_metrics_escaped_max(NGX_HTTP_RATELIMIT_SERIES_NAME) + 32            \
     + NGX_ATOMIC_T_LEN + 8 + 1)

/* the samples of the zone's own, besides the families of series */
#define NGX_HTTP_RATELIMIT_ZONE_SAMPLES                                       \
    (NGX_HTTP_RATELIMIT_FAMILIES - NGX_HTTP_RATELIMIT_F_ZONE_FIRST + 4 + 2)

#define NGX_HTTP_RATELIMIT_SHARD_SAMPLES                                      \
    (NGX_HTTP_RATELIMIT_SHARD_COUNTERS + RL_METRICS_BUCKETS + 2)


static ngx_http_ratelimit_series_t *ngx_http_ratelimit_series_find_locked(
    ngx_http_ratelimit_zone_t *zone, ngx_uint_t kind, ngx_str_t *name);
static void ngx_http_ratelimit_series_add_locked(
    ngx_http_ratelimit_zone_t *zone, ngx_uint_t kind, ngx_str_t *name,
    ngx_http_ratelimit_missed_t *missed);
static void ngx_http_ratelimit_series_free_locked(
    ngx_http_ratelimit_zone_t *zone, ngx_http_ratelimit_series_t *series);
static ngx_http_ratelimit_series_t *ngx_http_ratelimit_series_hold_locked(
    ngx_http_ratelimit_zone_t *zone, ngx_uint_t kind, ngx_str_t *name);
static void ngx_http_ratelimit_series_release_locked(
    ngx_http_ratelimit_zone_t *zone, ngx_http_ratelimit_series_t *series);
static u_char *ngx_http_ratelimit_metrics_write(ngx_http_ratelimit_zone_t *zone,
    u_char *p, u_char *last);
static u_char *ngx_http_ratelimit_metrics_family(u_char *p, u_char *last,
    ngx_uint_t f);
static u_char *ngx_http_ratelimit_metrics_label(u_char *p, u_char *last,
    const char *label, u_char *value, size_t len);


static ngx_str_t  ngx_http_ratelimit_default_name = ngx_string("default");

/* indexed by NGX_HTTP_RATELIMIT_SERIES_* */
static char  *ngx_http_ratelimit_kinds[] = { "shard", "policy" };


/* this worker's series: per shard index, per named policy, "default" */
static ngx_http_ratelimit_zone_t     *ngx_http_ratelimit_metrics_zone;
static ngx_http_ratelimit_series_t  **ngx_http_ratelimit_shard_series;
static ngx_uint_t                     ngx_http_ratelimit_nshard_series;
static ngx_http_ratelimit_policy_t   *ngx_http_ratelimit_policies;
static ngx_http_ratelimit_series_t  **ngx_http_ratelimit_policy_series;
static ngx_uint_t                     ngx_http_ratelimit_npolicy_series;
static ngx_http_ratelimit_series_t   *ngx_http_ratelimit_default_series;


/*
 * The master commits a configuration (init_module, once the reload can no
 * longer fail): the series of its shards and policies are current, found
 * or made now; the others go unless a worker still counts in them.  A full
 * zone gives up cached entries first; the series that still find no room
 * are not counted, and said in one line.
 */

void
ngx_http_ratelimit_metrics_commit(ngx_http_ratelimit_zone_t *zone,
    ngx_log_t *log)
{
    ngx_uint_t                        i;
    ngx_http_ratelimit_missed_t       missed;
    ngx_http_ratelimit_series_t      *s, *next;
    ngx_http_ratelimit_policy_t      *policy;
    ngx_http_ratelimit_shard_conf_t  *shard;
    ngx_http_ratelimit_main_conf_t   *rmcf;

    rmcf = zone->main_conf;
    missed.n = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (s = zone->sh->series; s; s = s->next) {
        s->current = 0;
    }

    shard = rmcf->shards.elts;

    for (i = 0; i < rmcf->shards.nelts; i++) {
        ngx_http_ratelimit_series_add_locked(zone,
                                             NGX_HTTP_RATELIMIT_SERIES_SHARD,
                                             &shard[i].name, &missed);
    }

    policy = rmcf->policies.elts;

    for (i = 0; i < rmcf->policies.nelts; i++) {
        ngx_http_ratelimit_series_add_locked(zone,
                                             NGX_HTTP_RATELIMIT_SERIES_POLICY,
                                             &policy[i].name, &missed);
    }

    /* every location's unnamed policy counts as one, "default" */

    if (rmcf->used) {
        ngx_http_ratelimit_series_add_locked(zone,
                                             NGX_HTTP_RATELIMIT_SERIES_POLICY,
                                             &ngx_http_ratelimit_default_name,
                                             &missed);
    }

    for (s = zone->sh->series; s; s = next) {
        next = s->next;

        if (!s->current && s->refs == 0) {
            ngx_http_ratelimit_series_free_locked(zone, s);
        }
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (missed.n) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "ratelimit: no room in the zone for the metrics of %ui "
                      "shards and policies (the first: %s \"%V\"), not "
                      "counted: make \"ratelimit_zone\" larger",
                      missed.n, ngx_http_ratelimit_kinds[missed.kind],
                      &missed.name);
    }
}


ngx_int_t
ngx_http_ratelimit_metrics_hold(ngx_http_ratelimit_zone_t *zone,
    ngx_cycle_t *cycle)
{
    ngx_uint_t                        i;
    ngx_http_ratelimit_policy_t      *policy;
    ngx_http_ratelimit_shard_conf_t  *shard;
    ngx_http_ratelimit_main_conf_t   *rmcf;

    rmcf = zone->main_conf;
    shard = rmcf->shards.elts;
    policy = rmcf->policies.elts;

    ngx_http_ratelimit_shard_series = ngx_pcalloc(cycle->pool,
                         (rmcf->shards.nelts + rmcf->policies.nelts + 1)
                         * sizeof(ngx_http_ratelimit_series_t *));
    if (ngx_http_ratelimit_shard_series == NULL) {
        return NGX_ERROR;
    }

    ngx_http_ratelimit_policy_series = ngx_http_ratelimit_shard_series
                                       + rmcf->shards.nelts;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (i = 0; i < rmcf->shards.nelts; i++) {
        ngx_http_ratelimit_shard_series[i] =
            ngx_http_ratelimit_series_hold_locked(zone,
                                                NGX_HTTP_RATELIMIT_SERIES_SHARD,
                                                &shard[i].name);
    }

    for (i = 0; i < rmcf->policies.nelts; i++) {
        ngx_http_ratelimit_policy_series[i] =
            ngx_http_ratelimit_series_hold_locked(zone,
                                               NGX_HTTP_RATELIMIT_SERIES_POLICY,
                                               &policy[i].name);
    }

    ngx_http_ratelimit_default_series =
        ngx_http_ratelimit_series_hold_locked(zone,
                                              NGX_HTTP_RATELIMIT_SERIES_POLICY,
                                              &ngx_http_ratelimit_default_name);

    ngx_shmtx_unlock(&zone->shpool->mutex);

    ngx_http_ratelimit_metrics_zone = zone;
    ngx_http_ratelimit_nshard_series = rmcf->shards.nelts;
    ngx_http_ratelimit_policies = policy;
    ngx_http_ratelimit_npolicy_series = rmcf->policies.nelts;

    return NGX_OK;
}


void
ngx_http_ratelimit_metrics_release(ngx_http_ratelimit_zone_t *zone)
{
    ngx_uint_t  i, n;

    if (ngx_http_ratelimit_metrics_zone != zone) {
        return;
    }

    n = ngx_http_ratelimit_nshard_series + ngx_http_ratelimit_npolicy_series;

    /* no counting from here on: the pointers go before the series may */

    ngx_http_ratelimit_metrics_zone = NULL;
    ngx_http_ratelimit_nshard_series = 0;
    ngx_http_ratelimit_npolicy_series = 0;

    ngx_shmtx_lock(&zone->shpool->mutex);

    for (i = 0; i < n; i++) {
        if (ngx_http_ratelimit_shard_series[i]) {
            ngx_http_ratelimit_series_release_locked(zone,
                                          ngx_http_ratelimit_shard_series[i]);
        }
    }

    if (ngx_http_ratelimit_default_series) {
        ngx_http_ratelimit_series_release_locked(zone,
                                            ngx_http_ratelimit_default_series);
        ngx_http_ratelimit_default_series = NULL;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


void
ngx_http_ratelimit_count_outcome(ngx_http_ratelimit_policy_t *policy,
    ngx_uint_t outcome)
{
    ngx_uint_t                    i;
    ngx_http_ratelimit_series_t  *s;

    if (!policy->named) {
        s = ngx_http_ratelimit_default_series;

    } else {
        /* a named policy is an element of the main conf's array */

        if (policy < ngx_http_ratelimit_policies) {
            return;
        }

        i = policy - ngx_http_ratelimit_policies;

        if (i >= ngx_http_ratelimit_npolicy_series) {
            return;
        }

        s = ngx_http_ratelimit_policy_series[i];
    }

    if (s) {
        (void) ngx_atomic_fetch_add(&s->counters[outcome], 1);
    }
}


void
ngx_http_ratelimit_count_shard(ngx_uint_t shard, ngx_uint_t counter,
    ngx_uint_t n)
{
    ngx_http_ratelimit_series_t  *s;

    if (shard >= ngx_http_ratelimit_nshard_series) {
        return;
    }

    s = ngx_http_ratelimit_shard_series[shard];

    if (s) {
        (void) ngx_atomic_fetch_add(&s->counters[counter], n);
    }
}


void
ngx_http_ratelimit_observe_rtt(ngx_uint_t shard, uint64_t us)
{
    ngx_http_ratelimit_series_t  *s;

    if (shard >= ngx_http_ratelimit_nshard_series) {
        return;
    }

    s = ngx_http_ratelimit_shard_series[shard];

    if (s) {
        (void) ngx_atomic_fetch_add(&s->rtt[rl_metrics_bucket(us)], 1);
        (void) ngx_atomic_fetch_add(&s->rtt_sum, (ngx_atomic_int_t) us);
    }
}


static ngx_http_ratelimit_series_t *
ngx_http_ratelimit_series_find_locked(ngx_http_ratelimit_zone_t *zone,
    ngx_uint_t kind, ngx_str_t *name)
{
    ngx_http_ratelimit_series_t  *s;

    for (s = zone->sh->series; s; s = s->next) {
        if (s->kind == kind
            && s->name_len == name->len
            && ngx_memcmp(s->name, name->data, name->len) == 0)
        {
            return s;
        }
    }

    return NULL;
}


/*
 * Found or made, and current; appended, so that they show in the
 * configuration's order.  The configuration allows no name longer than a
 * series holds.
 */

static void
ngx_http_ratelimit_series_add_locked(ngx_http_ratelimit_zone_t *zone,
    ngx_uint_t kind, ngx_str_t *name, ngx_http_ratelimit_missed_t *missed)
{
    ngx_http_ratelimit_series_t   *s, **pp;

    s = ngx_http_ratelimit_series_find_locked(zone, kind, name);

    if (s) {
        s->current = 1;
        return;
    }

    for ( ;; ) {
        if (name->len <= NGX_HTTP_RATELIMIT_SERIES_NAME) {
            s = ngx_slab_calloc_locked(zone->shpool,
                                       sizeof(ngx_http_ratelimit_series_t));
            if (s) {
                break;
            }
        }

        if (name->len > NGX_HTTP_RATELIMIT_SERIES_NAME
            || ngx_http_ratelimit_cache_shrink_locked(zone) == 0)
        {
            if (missed->n++ == 0) {
                missed->kind = kind;
                missed->name = *name;
            }

            return;
        }
    }

    s->kind = kind;
    s->current = 1;
    s->name_len = name->len;
    ngx_memcpy(s->name, name->data, name->len);

    for (pp = &zone->sh->series; *pp; pp = &(*pp)->next) { /* void */ }

    *pp = s;
}


static void
ngx_http_ratelimit_series_free_locked(ngx_http_ratelimit_zone_t *zone,
    ngx_http_ratelimit_series_t *series)
{
    ngx_http_ratelimit_series_t  **pp;

    for (pp = &zone->sh->series; *pp; pp = &(*pp)->next) {
        if (*pp == series) {
            *pp = series->next;
            break;
        }
    }

    ngx_slab_free_locked(zone->shpool, series);
}


static ngx_http_ratelimit_series_t *
ngx_http_ratelimit_series_hold_locked(ngx_http_ratelimit_zone_t *zone,
    ngx_uint_t kind, ngx_str_t *name)
{
    ngx_http_ratelimit_series_t  *s;

    s = ngx_http_ratelimit_series_find_locked(zone, kind, name);

    if (s) {
        s->refs++;
    }

    return s;
}


static void
ngx_http_ratelimit_series_release_locked(ngx_http_ratelimit_zone_t *zone,
    ngx_http_ratelimit_series_t *series)
{
    if (series->refs > 0) {
        series->refs--;
    }

    if (series->refs == 0 && !series->current) {
        ngx_http_ratelimit_series_free_locked(zone, series);
    }
}


ngx_int_t
ngx_http_ratelimit_metrics_handler(ngx_http_request_t *r)
{
    size_t                           len;
    ngx_int_t                        rc;
    ngx_buf_t                       *b;
    ngx_uint_t                       i, samples;
    ngx_http_ratelimit_zone_t       *zone;
    ngx_http_ratelimit_series_t     *s;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    static ngx_str_t  type = ngx_string("text/plain; version=0.0.4");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_ratelimit_stats_not_allowed(r);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);
    zone = rmcf->shm_zone->data;

    len = 0;

    for (i = 0; i < NGX_HTTP_RATELIMIT_FAMILIES; i++) {
        len += 2 * (sizeof("# HELP  \n") - 1
                    + sizeof(NGX_HTTP_RATELIMIT_PREFIX) - 1
                    + ngx_http_ratelimit_families[i].name.len)
               + ngx_http_ratelimit_families[i].help.len
               + ngx_http_ratelimit_families[i].type.len;
    }

    /*
     * The series are counted and written under the zone's lock, so that
     * none comes or goes in between: the buffer always has room.
     */

    ngx_shmtx_lock(&zone->shpool->mutex);

    samples = NGX_HTTP_RATELIMIT_ZONE_SAMPLES;

    if (zone->ring) {
        samples += zone->ring->nshards;
    }

    for (s = zone->sh->series; s; s = s->next) {
        samples += (s->kind == NGX_HTTP_RATELIMIT_SERIES_SHARD)
                   ? NGX_HTTP_RATELIMIT_SHARD_SAMPLES
                   : NGX_HTTP_RATELIMIT_OUTCOMES;
    }

    len += samples * NGX_HTTP_RATELIMIT_SAMPLE_MAX;

    b = ngx_create_temp_buf(r->pool, len);

    if (b) {
        b->last = ngx_http_ratelimit_metrics_write(zone, b->last, b->end);
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_send(r, NGX_HTTP_OK, &type,
                                   sizeof("text/plain") - 1, b);
}


/* called locked */

static u_char *
ngx_http_ratelimit_metrics_write(ngx_http_ratelimit_zone_t *zone, u_char *p,
    u_char *last)
{
    ngx_uint_t                    i, f, up;
    ngx_atomic_uint_t             n, *field;
    ngx_http_ratelimit_ring_t    *ring;
    ngx_http_ratelimit_shctx_t   *sh;
    ngx_http_ratelimit_series_t  *s;
    ngx_http_ratelimit_health_t  *h;

    sh = zone->sh;
    ring = zone->ring;

    p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_REQUESTS);

    for (s = sh->series; s; s = s->next) {
        if (s->kind != NGX_HTTP_RATELIMIT_SERIES_POLICY) {
            continue;
        }

        for (i = 0; i < NGX_HTTP_RATELIMIT_OUTCOMES; i++) {
            p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX
                             "requests_total");
            p = ngx_http_ratelimit_metrics_label(p, last, "{policy",
                                                 s->name, s->name_len);
            p = ngx_http_ratelimit_metrics_label(p, last, ",outcome",
                                           ngx_http_ratelimit_outcomes[i].data,
                                           ngx_http_ratelimit_outcomes[i].len);
            p = ngx_slprintf(p, last, "} %uA\n", s->counters[i]);
        }
    }

    p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_CACHE_ENTRIES);
    p = ngx_slprintf(p, last,
                     NGX_HTTP_RATELIMIT_PREFIX "cache_entries{cache=\"rule\"} "
                     "%ui\n"
                     NGX_HTTP_RATELIMIT_PREFIX "cache_entries{cache=\"deny\"} "
                     "%ui\n",
                     sh->rule_cache.entries, sh->deny_cache.entries);

    p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_CACHE_EVICT);
    p = ngx_slprintf(p, last,
                     NGX_HTTP_RATELIMIT_PREFIX "cache_evictions_total"
                     "{cache=\"rule\"} %ui\n"
                     NGX_HTTP_RATELIMIT_PREFIX "cache_evictions_total"
                     "{cache=\"deny\"} %ui\n",
                     sh->rule_cache.evictions, sh->deny_cache.evictions);

    p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_RULES_VERSION);
    p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX "rules_version %uA\n",
                     sh->rules_version);

    p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_RULES_SYNC);
    p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX
                     "rules_last_sync_timestamp_seconds %uA\n",
                     sh->rules_synced_at);

    /* up: the shards of this configuration's ring, where health lives */

    p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_SHARD_UP);

    for (i = 0; ring && i < ring->nshards; i++) {
        h = &ring->health[i];
        up = (h->down_until == 0);

        p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX "shard_up");
        p = ngx_http_ratelimit_metrics_label(p, last, "{shard", h->name,
                                             h->name_len);
        p = ngx_slprintf(p, last, "} %ui\n", up);
    }

    for (f = 0; f < NGX_HTTP_RATELIMIT_SHARD_COUNTERS; f++) {
        p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_SHARD_FIRST + f);

        for (s = sh->series; s; s = s->next) {
            if (s->kind != NGX_HTTP_RATELIMIT_SERIES_SHARD) {
                continue;
            }

            p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX "%V",
                 &ngx_http_ratelimit_families[NGX_HTTP_RATELIMIT_F_SHARD_FIRST
                                              + f].name);
            p = ngx_http_ratelimit_metrics_label(p, last, "{shard", s->name,
                                                 s->name_len);
            p = ngx_slprintf(p, last, "} %uA\n", s->counters[f]);
        }
    }

    /* the histogram: cumulative buckets, +Inf the count of them all */

    p = ngx_http_ratelimit_metrics_family(p, last,
                                          NGX_HTTP_RATELIMIT_F_SHARD_RTT);

    for (s = sh->series; s; s = s->next) {
        if (s->kind != NGX_HTTP_RATELIMIT_SERIES_SHARD) {
            continue;
        }

        n = 0;

        for (i = 0; i < RL_METRICS_BUCKETS; i++) {
            n += s->rtt[i];

            p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX
                             "shard_check_rtt_seconds_bucket");
            p = ngx_http_ratelimit_metrics_label(p, last, "{shard", s->name,
                                                 s->name_len);
            p = ngx_slprintf(p, last, ",le=\"%s\"} %uA\n",
                             rl_metrics_bucket_le[i], n);
        }

        p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX
                         "shard_check_rtt_seconds_sum");
        p = ngx_http_ratelimit_metrics_label(p, last, "{shard", s->name,
                                             s->name_len);
        p = ngx_slprintf(p, last, "} %uA.%06uA\n", s->rtt_sum / 1000000,
                         s->rtt_sum % 1000000);

        p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX
                         "shard_check_rtt_seconds_count");
        p = ngx_http_ratelimit_metrics_label(p, last, "{shard", s->name,
                                             s->name_len);
        p = ngx_slprintf(p, last, "} %uA\n", n);
    }

    for (f = NGX_HTTP_RATELIMIT_F_ZONE_FIRST;
         f < NGX_HTTP_RATELIMIT_FAMILIES;
         f++)
    {
        field = (ngx_atomic_uint_t *) ((u_char *) &sh->stats
                                    + ngx_http_ratelimit_families[f].offset);

        p = ngx_http_ratelimit_metrics_family(p, last, f);
        p = ngx_slprintf(p, last, NGX_HTTP_RATELIMIT_PREFIX "%V %uA\n",
                         &ngx_http_ratelimit_families[f].name, *field);
    }

    return p;
}


static u_char *
ngx_http_ratelimit_metrics_family(u_char *p, u_char *last, ngx_uint_t f)
{
    ngx_http_ratelimit_family_t  *family;

    family = &ngx_http_ratelimit_families[f];

    return ngx_slprintf(p, last,
                        "# HELP " NGX_HTTP_RATELIMIT_PREFIX "%V %V\n"
                        "# TYPE " NGX_HTTP_RATELIMIT_PREFIX "%V %V\n",
                        &family->name, &family->help,
                        &family->name, &family->type);
}


/* label="value", the value escaped; "label" carries the "{" or "," */

static u_char *
ngx_http_ratelimit_metrics_label(u_char *p, u_char *last, const char *label,
    u_char *value, size_t len)
{
    p = ngx_slprintf(p, last, "%s=\"", label);

    if ((size_t) (last - p) < rl_metrics_escaped_max(len) + 1) {
        return p;
    }

    p = rl_metrics_escape(p, value, len);
    *p++ = '"';

    return p;
}
