
/*
 * Global API rate limiter: the zone's two caches, the rule cache (customer
 * -> rule in force) and the deny cache (limit -> denied until), rbtrees with
 * an LRU queue, emptied at once by bumping the zone's epoch.
 */


#ifndef _NGX_HTTP_RATELIMIT_CACHE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_CACHE_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"
#include "ngx_http_ratelimit_rules.h"


/* shared memory: an entry of the rule cache or of the deny cache */
typedef struct {
    ngx_rbtree_node_t               node;        /* key: CRC32 of data */
    ngx_queue_t                     queue;       /* LRU */
    ngx_uint_t                      epoch;
    ngx_msec_t                      until;       /* deny: denied until;
                                                    rule: expires at, if
                                                    expires */
    ngx_msec_t                      reset_until; /* deny: quota full at */
    rl_limit_t                      rule;        /* rule cache */
    u_short                         len;
    unsigned                        expires:1;   /* rule: until is set */
    u_char                          data[1];
} ngx_http_ratelimit_entry_t;


typedef struct {
    ngx_rbtree_t                    rbtree;
    ngx_rbtree_node_t               sentinel;
    ngx_queue_t                     lru;
    ngx_uint_t                      entries;
    ngx_uint_t                      evictions;
} ngx_http_ratelimit_cache_t;


void ngx_http_ratelimit_cache_init(ngx_http_ratelimit_cache_t *cache);
void ngx_http_ratelimit_cache_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
ngx_int_t ngx_http_ratelimit_rule_cache_get(ngx_http_ratelimit_zone_t *zone,
    u_char *customer, size_t len, rl_limit_t *rule);
void ngx_http_ratelimit_rule_cache_put(ngx_http_ratelimit_zone_t *zone,
    u_char *customer, size_t len, rl_limit_t *rule, ngx_msec_t ttl,
    ngx_uint_t epoch);
ngx_int_t ngx_http_ratelimit_deny_cache_get(ngx_http_ratelimit_zone_t *zone,
    u_char *key, size_t len, ngx_msec_t *retry_ms, ngx_msec_t *reset_ms);
void ngx_http_ratelimit_deny_cache_put(ngx_http_ratelimit_zone_t *zone,
    u_char *key, size_t len, ngx_msec_t retry_ms, ngx_msec_t reset_ms,
    ngx_uint_t epoch);
void ngx_http_ratelimit_cache_invalidate(ngx_http_ratelimit_zone_t *zone);
ngx_uint_t ngx_http_ratelimit_cache_shrink_locked(
    ngx_http_ratelimit_zone_t *zone);



#endif /* _NGX_HTTP_RATELIMIT_CACHE_H_INCLUDED_ */
