
/*
 * Global API rate limiter: TLS to the shards, with nginx's own ngx_ssl.
 * The profile is built once per configuration; each connection marked
 * "tls" is handshaken after connect and checked (certificate chain, name)
 * before its first command is written.
 */


#ifndef _NGX_HTTP_RATELIMIT_SSL_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_SSL_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"


/*
 * Configuration time, once the http block is read: the TLS profile of the
 * shards marked "tls" (none: nothing is created) and each such shard's
 * name to check.  NGX_ERROR: logged, naming the directive at fault.
 */
ngx_int_t ngx_http_ratelimit_ssl_conf(ngx_conf_t *cf,
    ngx_http_ratelimit_main_conf_t *rmcf);


#if (NGX_SSL)

/*
 * Starts the handshake on a connected c (c->pool set): SNI, the session of
 * the previous connection (may be NULL) and save_session to learn the new
 * one.  NGX_AGAIN: "done" is called when the handshake ends either way;
 * NGX_OK: it ended already, successfully or not, and done was not called
 * (check c->ssl->handshaked); NGX_ERROR: no handshake could start.
 */
ngx_int_t ngx_http_ratelimit_ssl_handshake(ngx_connection_t *c,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_ssl_session_t *session,
    ngx_connection_handler_pt save_session, ngx_connection_handler_pt done);

/*
 * After the handshake: the certificate chain and the name, when
 * "ratelimit_redis_tls_verify" is on.  NGX_ERROR: the reason is logged,
 * naming the shard; *reason is a short one for the shard's health.
 */
ngx_int_t ngx_http_ratelimit_ssl_verify(ngx_connection_t *c,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_log_t *log,
    const char **reason);

/* frees the TLS state of c before c itself is closed; no shutdown wait */
void ngx_http_ratelimit_ssl_close(ngx_connection_t *c);

#endif


#endif /* _NGX_HTTP_RATELIMIT_SSL_H_INCLUDED_ */
