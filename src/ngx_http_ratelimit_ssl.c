
/*
 * Global API rate limiter: TLS to the shards, with nginx's own ngx_ssl, as
 * the proxy module's proxy_ssl_* does it for upstreams: one SSL context per
 * configuration, freed with the configuration's pool; per connection a
 * nonblocking handshake, the session of the previous connection offered
 * again, and the certificate checked once the handshake is done.
 */


#include "ngx_http_ratelimit_ssl.h"


/*
 * Certificates between the server's and the trusted one: managed services
 * chain through an intermediate or two, so nginx's own default of 1 for
 * proxy_ssl_verify_depth would refuse them.
 */
#define NGX_HTTP_RATELIMIT_TLS_VERIFY_DEPTH  9


#if (NGX_SSL)
static ngx_int_t ngx_http_ratelimit_ssl_create(ngx_conf_t *cf,
    ngx_http_ratelimit_tls_conf_t *tls);
#endif
static ngx_int_t ngx_http_ratelimit_ssl_name(ngx_conf_t *cf,
    ngx_http_ratelimit_tls_conf_t *tls,
    ngx_http_ratelimit_shard_conf_t *shard);


ngx_int_t
ngx_http_ratelimit_ssl_conf(ngx_conf_t *cf,
    ngx_http_ratelimit_main_conf_t *rmcf)
{
    ngx_uint_t                        i, used;
    ngx_http_ratelimit_tls_conf_t    *tls;
    ngx_http_ratelimit_shard_conf_t  *shard;

    tls = &rmcf->tls;
    shard = rmcf->shards.elts;
    used = 0;

    for (i = 0; i < rmcf->shards.nelts; i++) {
        if (shard[i].tls == NULL) {
            continue;
        }

        if (ngx_http_ratelimit_ssl_name(cf, tls, &shard[i]) != NGX_OK) {
            return NGX_ERROR;
        }

        used = 1;
    }

    if (!used) {
        return NGX_OK;
    }

#if (NGX_SSL)

    return ngx_http_ratelimit_ssl_create(cf, tls);

#else

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "\"ratelimit_redis ... tls\" needs nginx built with SSL");
    return NGX_ERROR;

#endif
}


/*
 * The name the server's certificate must bear: the server name given, else
 * the shard's host as written.  SNI carries a DNS name only (RFC 6066), and
 * an address is checked against the certificate's IP addresses, which
 * ngx_ssl_check_host() (X509_check_host()) does not look at.
 */

static ngx_int_t
ngx_http_ratelimit_ssl_name(ngx_conf_t *cf,
    ngx_http_ratelimit_tls_conf_t *tls, ngx_http_ratelimit_shard_conf_t *shard)
{
    u_char     *p;
    ngx_str_t   name;
#if (NGX_HAVE_INET6)
    u_char      buf[16];
#endif

    name = tls->server_name.len ? tls->server_name : shard->host;

    /*
     * A Sentinel shard has no host of its own: Sentinel names its primary
     * by an address that changes with each failover.
     */

    if (name.len == 0 && tls->verify) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "shard \"%V\" with \"tls\" requires "
                      "\"ratelimit_redis_tls_server_name\" (or "
                      "\"ratelimit_redis_tls_verify off\")", &shard->name);
        return NGX_ERROR;
    }

    if (name.len > 2 && name.data[0] == '[' && name.data[name.len - 1] == ']')
    {
        name.data++;
        name.len -= 2;
    }

    p = ngx_pnalloc(cf->pool, name.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(p, name.data, name.len + 1);

    shard->tls_name.data = p;
    shard->tls_name.len = name.len;

    shard->tls_name_ip = (ngx_inet_addr(name.data, name.len) != INADDR_NONE);

#if (NGX_HAVE_INET6)
    if (ngx_inet6_addr(name.data, name.len, buf) == NGX_OK) {
        shard->tls_name_ip = 1;
    }
#endif

    return NGX_OK;
}


#if (NGX_SSL)

static ngx_int_t
ngx_http_ratelimit_ssl_create(ngx_conf_t *cf,
    ngx_http_ratelimit_tls_conf_t *tls)
{
    ngx_pool_cleanup_t  *cln;

    if (tls->certificate.len && tls->certificate_key.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"ratelimit_redis_tls_certificate_key\" is defined "
                      "for certificate \"%V\"", &tls->certificate);
        return NGX_ERROR;
    }

    if (tls->certificate_key.len && tls->certificate.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"ratelimit_redis_tls_certificate\" is defined "
                      "for key \"%V\"", &tls->certificate_key);
        return NGX_ERROR;
    }

    if (tls->verify && tls->trusted_certificate.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"ratelimit_redis_tls_trusted_certificate\" for "
                      "the \"tls\" shards while \"ratelimit_redis_tls_verify\" "
                      "is on");
        return NGX_ERROR;
    }

    tls->ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (tls->ssl == NULL) {
        return NGX_ERROR;
    }

    tls->ssl->log = cf->log;

    if (ngx_ssl_create(tls->ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(tls->ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = tls->ssl;

    /*
     * The connection's output buffer grows and is compacted while a write
     * waits: OpenSSL must accept the same bytes at another address.
     */

    SSL_CTX_set_mode(tls->ssl->ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    if (tls->certificate.len
        && ngx_ssl_certificate(cf, tls->ssl, &tls->certificate,
                               &tls->certificate_key, NULL)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (tls->verify
        && ngx_ssl_trusted_certificate(cf, tls->ssl,
                                       &tls->trusted_certificate,
                                       NGX_HTTP_RATELIMIT_TLS_VERIFY_DEPTH)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* sessions are kept per connection, for its reconnects */

    if (ngx_ssl_client_session_cache(cf, tls->ssl, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_ratelimit_ssl_handshake(ngx_connection_t *c,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_ssl_session_t *session,
    ngx_connection_handler_pt save_session, ngx_connection_handler_pt done)
{
    ngx_int_t  rc;

    if (ngx_ssl_create_connection(shard->tls->ssl, c, NGX_SSL_CLIENT)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

#ifdef SSL_CTRL_SET_TLSEXT_HOSTNAME

    if (shard->tls_name.len && !shard->tls_name_ip
        && SSL_set_tlsext_host_name(c->ssl->connection,
                                    (char *) shard->tls_name.data)
           == 0)
    {
        ngx_ssl_error(NGX_LOG_ERR, c->log, 0,
                      "SSL_set_tlsext_host_name(\"%s\") failed",
                      shard->tls_name.data);
        return NGX_ERROR;
    }

#endif

    if (ngx_ssl_set_session(c, session) != NGX_OK) {
        return NGX_ERROR;
    }

    c->ssl->save_session = save_session;

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = done;
        return NGX_AGAIN;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_ratelimit_ssl_verify(ngx_connection_t *c,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_log_t *log,
    const char **reason)
{
    long        rc;
    X509       *cert;
    ngx_uint_t  match;

    if (!shard->tls->verify) {
        return NGX_OK;
    }

    rc = SSL_get_verify_result(c->ssl->connection);

    if (rc != X509_V_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit: shard %V: certificate verify failed: "
                      "(%l:%s)", &shard->name, rc,
                      X509_verify_cert_error_string(rc));
        *reason = "certificate verify failed";
        return NGX_ERROR;
    }

    if (shard->tls_name_ip) {
        cert = SSL_get_peer_certificate(c->ssl->connection);
        match = (cert != NULL
                 && X509_check_ip_asc(cert, (char *) shard->tls_name.data, 0)
                    == 1);

        if (cert) {
            X509_free(cert);
        }

    } else {
        match = (ngx_ssl_check_host(c, &shard->tls_name) == NGX_OK);
    }

    if (!match) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit: shard %V: certificate does not match "
                      "\"%V\"", &shard->name, &shard->tls_name);
        *reason = "certificate does not match";
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_http_ratelimit_ssl_close(ngx_connection_t *c)
{
    if (c->ssl == NULL) {
        return;
    }

    /*
     * Neither sent nor awaited, the close_notify: a shard is left when it
     * failed or when the worker exits, and neither may wait for it.
     */

    c->ssl->no_wait_shutdown = 1;
    c->ssl->no_send_shutdown = 1;

    (void) ngx_ssl_shutdown(c);
}

#endif
