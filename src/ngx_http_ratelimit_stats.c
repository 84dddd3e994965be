
/*
 * Global API rate limiter: the counters in the zone, shown as JSON by a
 * location with "ratelimit_stats", for benchmarks and monitoring.
 */


#include "ngx_http_ratelimit_stats.h"
#include "ngx_http_ratelimit_zone.h"


ngx_http_ratelimit_stats_t  *ngx_http_ratelimit_counters;


ngx_int_t
ngx_http_ratelimit_stats_handler(ngx_http_request_t *r)
{
    size_t                           len;
    ngx_int_t                        rc;
    ngx_buf_t                       *b;
    ngx_uint_t                       i;
    ngx_http_ratelimit_ring_t       *ring;
    ngx_http_ratelimit_zone_t       *zone;
    ngx_http_ratelimit_stats_t      *st;
    ngx_http_ratelimit_health_t     *h;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    static ngx_str_t  type = ngx_string("application/json");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_ratelimit_stats_not_allowed(r);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);
    zone = rmcf->shm_zone->data;
    st = &zone->sh->stats;
    ring = zone->ring;

    len = sizeof("{\"shards\":[],}\n") + 24 * (NGX_ATOMIC_T_LEN + 24)
          + (ring ? ring->nshards * (64 + 64 + NGX_ATOMIC_T_LEN) : 0);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_sprintf(b->last,
                          "{\"checks\":%uA,\"batches\":%uA,\"allowed\":%uA,\"denied\":%uA,"
                          "\"denied_cached\":%uA,\"failed_open\":%uA,"
                          "\"failed_closed\":%uA,\"redis_commands\":%uA,"
                          "\"redis_writes\":%uA,\"redis_replies\":%uA,"
                          "\"noscript\":%uA,\"rule_lookups\":%uA,"
                          "\"refunds\":%uA,"
                          "\"rule_cache\":{\"entries\":%ui,\"evictions\":%ui},"
                          "\"deny_cache\":{\"entries\":%ui,\"evictions\":%ui},"
                          "\"shards\":[",
                          st->checks, st->batches, st->allowed, st->denied,
                          st->denied_cached, st->failed_open,
                          st->failed_closed, st->redis_commands,
                          st->redis_writes, st->redis_replies, st->noscript,
                          st->rule_lookups, st->refunds,
                          zone->sh->rule_cache.entries,
                          zone->sh->rule_cache.evictions,
                          zone->sh->deny_cache.entries,
                          zone->sh->deny_cache.evictions);

    for (i = 0; ring && i < ring->nshards; i++) {
        h = &ring->health[i];

        /* shard names come from the configuration: no escaping needed */

        b->last = ngx_sprintf(b->last,
                              "%s{\"name\":\"%*s\",\"up\":%s,"
                              "\"failures\":%uA}",
                              i ? "," : "", h->name_len, h->name,
                              h->down_until ? "false" : "true",
                              h->failures);
    }

    b->last = ngx_cpymem(b->last, "]}\n", 3);
    return ngx_http_ratelimit_send(r, NGX_HTTP_OK, &type, type.len, b);
}


ngx_int_t
ngx_http_ratelimit_stats_not_allowed(ngx_http_request_t *r)
{
    ngx_table_elt_t  *allow;

    /* as the dav module does: the error page keeps the header */

    allow = ngx_list_push(&r->headers_out.headers);
    if (allow == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    allow->hash = 1;
    ngx_str_set(&allow->key, "Allow");
    ngx_str_set(&allow->value, "GET, HEAD");

    return NGX_HTTP_NOT_ALLOWED;
}
