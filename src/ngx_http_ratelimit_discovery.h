
/*
 * Global API rate limiter: where each shard is now.  A shard written as an
 * address stays there; one named by a host name is resolved again at run
 * time with the http block's "resolver"; one declared by
 * "ratelimit_redis_sentinel" is the primary that Redis Sentinel names, and
 * follows its failovers.  The connections (ngx_http_ratelimit_redis.h) ask
 * here where to connect and say when a connection failed; this side tells
 * them when the address moved.
 */


#ifndef _NGX_HTTP_RATELIMIT_DISCOVERY_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_DISCOVERY_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"


/* ratelimit_redis_sentinel NAME host:port [host:port ...] [weight=N] ... */
char *ngx_http_ratelimit_redis_sentinel(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * A "ratelimit_redis" named by a host name (u, parsed without resolving):
 * resolved at run time if the http block has a "resolver", else once when
 * the configuration is read, by ngx_http_ratelimit_discovery_init_conf().
 */
ngx_int_t ngx_http_ratelimit_discovery_host(ngx_conf_t *cf,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_url_t *u);

/* postconfiguration: every shard's resolver, or its address now */
ngx_int_t ngx_http_ratelimit_discovery_init_conf(ngx_conf_t *cf,
    ngx_http_ratelimit_main_conf_t *rmcf);

ngx_int_t ngx_http_ratelimit_discovery_init_process(ngx_cycle_t *cycle,
    ngx_array_t *shards);
void ngx_http_ratelimit_discovery_exit_process(ngx_cycle_t *cycle);

/*
 * The address to connect shard number "index" to now; NULL while it is not
 * known yet (the first answer is awaited: take the fail path, a connection
 * is made as soon as it comes).  A host name is resolved again on each
 * call, in the background: each reconnect asks.
 */
ngx_addr_t *ngx_http_ratelimit_discovery_addr(
    ngx_http_ratelimit_shard_conf_t *shard, ngx_uint_t index);

/* 1 when a new connection must check with ROLE that its node is a primary */
ngx_uint_t ngx_http_ratelimit_discovery_verify(
    ngx_http_ratelimit_shard_conf_t *shard);

/*
 * The shard's connection failed, or its node is no primary: ask again (the
 * resolver, or Sentinel) soon, in the background.
 */
void ngx_http_ratelimit_discovery_failed(ngx_uint_t index);


#endif /* _NGX_HTTP_RATELIMIT_DISCOVERY_H_INCLUDED_ */
