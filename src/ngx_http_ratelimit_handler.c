
/*
 * Global API rate limiter: the access-phase check.
 *
 * The handler picks the caller's key, finds its shard on the ring, queues an
 * EVALSHA of the limiter script and suspends the request.  The reply (or the
 * timeout, or the loss of the connection) resumes it; the handler then runs
 * again and returns the decision it recorded.
 */


#include "ngx_http_ratelimit_module.h"
#include "ngx_http_ratelimit_scripts.h"

#include <ngx_sha1.h>


typedef struct {
    ngx_http_request_t                *request;
    ngx_http_ratelimit_loc_conf_t     *conf;
    ngx_http_ratelimit_conn_t         *conn;
    ngx_http_ratelimit_slot_t         *slot;
    ngx_http_ratelimit_health_t       *health;
    ngx_event_t                        timer;

    size_t                             key_len;
    u_char                             key[NGX_HTTP_RATELIMIT_MAX_REDIS_KEY];

    ngx_int_t                          rc;

    unsigned                           waiting:1;
    unsigned                           eval:1;     /* resent after NOSCRIPT */
} ngx_http_ratelimit_ctx_t;


typedef struct {
    ngx_str_t                          body;
    u_char                             sha1[40];
} ngx_http_ratelimit_script_t;


static ngx_http_ratelimit_ctx_t *ngx_http_ratelimit_redirected_ctx(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_key(ngx_http_request_t *r,
    ngx_http_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_send(ngx_http_ratelimit_ctx_t *ctx);
static void ngx_http_ratelimit_reply(void *data, redisReply *reply);
static void ngx_http_ratelimit_timeout(ngx_event_t *ev);
static void ngx_http_ratelimit_resume(ngx_http_ratelimit_ctx_t *ctx,
    ngx_int_t rc);
static ngx_int_t ngx_http_ratelimit_decide(ngx_http_ratelimit_ctx_t *ctx,
    rl_check_result_t *result);
static ngx_int_t ngx_http_ratelimit_failed(ngx_http_ratelimit_ctx_t *ctx,
    const char *reason);
static ngx_int_t ngx_http_ratelimit_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, u_char *last);
static ngx_int_t ngx_http_ratelimit_add_headers(ngx_http_request_t *r,
    ngx_http_ratelimit_loc_conf_t *rlcf, rl_check_result_t *result);
static void ngx_http_ratelimit_cleanup(void *data);
static ngx_http_ratelimit_script_t *ngx_http_ratelimit_script(
    ngx_uint_t algorithm);


static ngx_http_ratelimit_script_t  ngx_http_ratelimit_scripts[] = {
    { ngx_string(NGX_HTTP_RATELIMIT_LUA_TOKEN_BUCKET), "" },
    { ngx_string(NGX_HTTP_RATELIMIT_LUA_SLIDING_WINDOW), "" }
};


static const char  *ngx_http_ratelimit_prefixes[] = {
    "rl:tb:", "rl:sw:"
};


/* request-time complaints: at most one line a second per worker */
static ngx_msec_t  ngx_http_ratelimit_logged_at;


ngx_int_t
ngx_http_ratelimit_handler(ngx_http_request_t *r)
{
    ngx_uint_t                       shard, state;
    ngx_pool_cleanup_t              *cln;
    ngx_http_ratelimit_ctx_t        *ctx;
    ngx_http_ratelimit_zone_t       *zone;
    ngx_http_ratelimit_loc_conf_t   *rlcf;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module);

    if (rlcf->keys == NULL) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    if (ctx) {
        return ctx->waiting ? NGX_AGAIN : ctx->rc;
    }

    /* an internal redirect wipes module contexts: count a request once */

    if (ngx_http_ratelimit_redirected_ctx(r)) {
        return NGX_DECLINED;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_ratelimit_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_ratelimit_cleanup;
    cln->data = ctx;

    ctx->request = r;
    ctx->conf = rlcf;
    ctx->rc = NGX_DECLINED;

    ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_module);

    switch (ngx_http_ratelimit_key(r, ctx)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        return NGX_DECLINED;

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);
    zone = rmcf->shm_zone->data;

    shard = ngx_http_ratelimit_ring_lookup(zone->ring, ctx->key, ctx->key_len);

    ctx->health = &zone->ring->health[shard];
    ctx->conn = ngx_http_ratelimit_redis_conn(shard);

    if (ctx->conn == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ratelimit: key \"%*s\" on shard %V",
                   ctx->key_len, ctx->key,
                   ngx_http_ratelimit_redis_name(ctx->conn));

    state = ngx_http_ratelimit_shard_state(ctx->health);

    if (state == NGX_HTTP_RATELIMIT_SHARD_DOWN) {
        ctx->rc = ngx_http_ratelimit_failed(ctx, "shard is down");
        return ctx->rc;
    }

    if (ngx_http_ratelimit_send(ctx) != NGX_OK) {
        ctx->rc = ngx_http_ratelimit_failed(ctx, "shard is unreachable");
        return ctx->rc;
    }

    ctx->timer.handler = ngx_http_ratelimit_timeout;
    ctx->timer.data = ctx;
    ctx->timer.log = r->connection->log;

    ngx_add_timer(&ctx->timer, rmcf->timeout);

    ctx->waiting = 1;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    return NGX_AGAIN;
}


static ngx_http_ratelimit_ctx_t *
ngx_http_ratelimit_redirected_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_ratelimit_cleanup) {
            return cln->data;
        }
    }

    return NULL;
}


/*
 * The Redis key: "rl:<algorithm>:k:<caller key>", or, for a caller key too
 * long to keep as it is, "rl:<algorithm>:h:<SHA-1 of the key in hex>".
 */

static ngx_int_t
ngx_http_ratelimit_key(ngx_http_request_t *r, ngx_http_ratelimit_ctx_t *ctx)
{
    u_char                    *p;
    ngx_str_t                  value;
    ngx_uint_t                 i;
    ngx_sha1_t                 sha1;
    ngx_http_complex_value_t  *cv;
    u_char                     digest[20];

    cv = ctx->conf->keys->elts;

    ngx_str_null(&value);

    for (i = 0; i < ctx->conf->keys->nelts; i++) {
        if (ngx_http_complex_value(r, &cv[i], &value) != NGX_OK) {
            return NGX_ERROR;
        }

        if (value.len) {
            break;
        }
    }

    if (value.len == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ratelimit: every key is empty, not limited");
        return NGX_DECLINED;
    }

    p = ngx_cpymem(ctx->key,
                   ngx_http_ratelimit_prefixes[ctx->conf->algorithm], 6);

    if (value.len <= NGX_HTTP_RATELIMIT_MAX_RAW_KEY - 2) {
        *p++ = 'k';
        *p++ = ':';
        p = ngx_cpymem(p, value.data, value.len);

    } else {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, value.data, value.len);
        ngx_sha1_final(digest, &sha1);

        *p++ = 'h';
        *p++ = ':';
        p = ngx_hex_dump(p, digest, sizeof(digest));
    }

    ctx->key_len = p - ctx->key;

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_send(ngx_http_ratelimit_ctx_t *ctx)
{
    u_char                       *p;
    const char                   *argv[6];
    size_t                        argvlen[6];
    ngx_http_ratelimit_script_t  *script;
    u_char                        limit[NGX_INT_T_LEN];
    u_char                        window[NGX_INT_T_LEN];

    script = ngx_http_ratelimit_script(ctx->conf->algorithm);

    if (ctx->eval) {
        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = (const char *) script->body.data;
        argvlen[1] = script->body.len;

    } else {
        argv[0] = "EVALSHA";
        argvlen[0] = 7;
        argv[1] = (const char *) script->sha1;
        argvlen[1] = sizeof(script->sha1);
    }

    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (const char *) ctx->key;
    argvlen[3] = ctx->key_len;

    p = ngx_sprintf(limit, "%ui", ctx->conf->limit);
    argv[4] = (const char *) limit;
    argvlen[4] = p - limit;

    p = ngx_sprintf(window, "%M", ctx->conf->window);
    argv[5] = (const char *) window;
    argvlen[5] = p - window;

    ctx->slot = ngx_http_ratelimit_redis_send(ctx->conn, 6, argv, argvlen,
                                              ngx_http_ratelimit_reply, ctx);

    if (ctx->slot && !ctx->eval) {
        ngx_http_ratelimit_count(checks, 1);
    }

    return ctx->slot ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_ratelimit_reply(void *data, redisReply *reply)
{
    ngx_http_ratelimit_ctx_t *ctx = data;

    int                 rc;
    const char         *why;
    ngx_http_request_t *r;
    rl_check_result_t   result;

    ctx->slot = NULL;
    r = ctx->request;

    if (reply == NULL) {
        ngx_http_ratelimit_resume(ctx,
                 ngx_http_ratelimit_failed(ctx, "connection to shard lost"));
        return;
    }

    rc = rl_reply_decode_check(reply, &result, &why);

    switch (rc) {

    case RL_REPLY_OK:
        ngx_http_ratelimit_resume(ctx, ngx_http_ratelimit_decide(ctx, &result));
        return;

    case RL_REPLY_NOSCRIPT:

        /* a restarted or flushed shard: EVAL caches the script again */

        if (!ctx->eval) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "ratelimit: NOSCRIPT, sending EVAL");
            ctx->eval = 1;
            ngx_http_ratelimit_count(noscript, 1);

            if (ngx_http_ratelimit_send(ctx) == NGX_OK) {
                return;
            }
        }

        break;

    default:
        break;
    }

    if (ngx_current_msec - ngx_http_ratelimit_logged_at >= 1000
        || ngx_http_ratelimit_logged_at == 0)
    {
        ngx_http_ratelimit_logged_at = ngx_current_msec;
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: shard %V answered: %s",
                      ngx_http_ratelimit_redis_name(ctx->conn), why);
    }

    ngx_http_ratelimit_resume(ctx,
                        ngx_http_ratelimit_failed(ctx, "unusable reply"));
}


static void
ngx_http_ratelimit_timeout(ngx_event_t *ev)
{
    ngx_http_ratelimit_ctx_t *ctx = ev->data;

    ngx_int_t                        rc;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    if (ctx->slot) {
        ngx_http_ratelimit_redis_detach(ctx->slot);
        ctx->slot = NULL;
    }

    rc = ngx_http_ratelimit_failed(ctx, "shard timed out");

    /*
     * A shard that answers nothing at all hangs: drop the connection, so
     * everything queued behind takes the fail path now, and mark the shard
     * down.  One that still answers, only late, costs just the late checks.
     */

    rmcf = ngx_http_get_module_main_conf(ctx->request,
                                         ngx_http_ratelimit_module);

    if (ngx_http_ratelimit_redis_stuck(ctx->conn, rmcf->timeout)) {
        ngx_http_ratelimit_redis_fail(ctx->conn, "timed out");
    }

    ngx_http_ratelimit_resume(ctx, rc);
}


static void
ngx_http_ratelimit_resume(ngx_http_ratelimit_ctx_t *ctx, ngx_int_t rc)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    ctx->waiting = 0;
    ctx->rc = rc;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_ratelimit_decide(ngx_http_ratelimit_ctx_t *ctx,
    rl_check_result_t *result)
{
    u_char              *p;
    ngx_http_request_t  *r;
    u_char               buf[NGX_INT64_LEN];

    r = ctx->request;

    if (ngx_http_ratelimit_add_headers(r, ctx->conf, result) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (result->allowed) {
        ngx_http_ratelimit_count(allowed, 1);
        return NGX_DECLINED;
    }

    ngx_http_ratelimit_count(denied, 1);

    p = ngx_sprintf(buf, "%L", rl_retry_after_seconds(result->retry_after_ms));

    if (ngx_http_ratelimit_add_header(r, "Retry-After", buf, p) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "ratelimit: limiting requests of \"%*s\", "
                  "retry after %L ms", ctx->key_len, ctx->key,
                  result->retry_after_ms);

    return ctx->conf->status;
}


/*
 * The shard cannot answer: "open" lets the request through, "closed"
 * answers 503 with a Retry-After of the shard's next probe.
 */

static ngx_int_t
ngx_http_ratelimit_failed(ngx_http_ratelimit_ctx_t *ctx, const char *reason)
{
    u_char              *p;
    ngx_uint_t           closed;
    ngx_msec_t           retry;
    ngx_http_request_t  *r;
    u_char               buf[NGX_INT64_LEN];

    r = ctx->request;
    closed = (ctx->conf->fail == NGX_HTTP_RATELIMIT_FAIL_CLOSED);

    if (ngx_current_msec - ngx_http_ratelimit_logged_at >= 1000
        || ngx_http_ratelimit_logged_at == 0)
    {
        ngx_http_ratelimit_logged_at = ngx_current_msec;
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ratelimit: %s (%V), failing %s",
                      reason, ngx_http_ratelimit_redis_name(ctx->conn),
                      closed ? "closed" : "open");
    }

    if (!closed) {
        ngx_http_ratelimit_count(failed_open, 1);
        return NGX_DECLINED;
    }

    ngx_http_ratelimit_count(failed_closed, 1);

    retry = ngx_http_ratelimit_shard_retry_in(ctx->health);

    p = ngx_sprintf(buf, "%L", rl_retry_after_seconds((long long) retry));

    if (ngx_http_ratelimit_add_header(r, "Retry-After", buf, p) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_HTTP_SERVICE_UNAVAILABLE;
}


static ngx_int_t
ngx_http_ratelimit_add_headers(ngx_http_request_t *r,
    ngx_http_ratelimit_loc_conf_t *rlcf, rl_check_result_t *result)
{
    u_char  *p;
    u_char   buf[128];

    switch (rlcf->headers) {

    case NGX_HTTP_RATELIMIT_HEADERS_DRAFT:
        p = ngx_sprintf(buf, "\"default\";q=%ui;w=%M",
                        rlcf->limit, rlcf->window / 1000);

        if (ngx_http_ratelimit_add_header(r, "RateLimit-Policy", buf, p)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_sprintf(buf, "\"default\";r=%L;t=%L", result->remaining,
                        rl_reset_seconds(result->reset_ms));

        return ngx_http_ratelimit_add_header(r, "RateLimit", buf, p);

    case NGX_HTTP_RATELIMIT_HEADERS_LEGACY:
        p = ngx_sprintf(buf, "%ui", rlcf->limit);

        if (ngx_http_ratelimit_add_header(r, "X-RateLimit-Limit", buf, p)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_sprintf(buf, "%L", result->remaining);

        if (ngx_http_ratelimit_add_header(r, "X-RateLimit-Remaining", buf, p)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_sprintf(buf, "%L", rl_reset_seconds(result->reset_ms));

        return ngx_http_ratelimit_add_header(r, "X-RateLimit-Reset", buf, p);

    default: /* NGX_HTTP_RATELIMIT_HEADERS_OFF */
        return NGX_OK;
    }
}


static ngx_int_t
ngx_http_ratelimit_add_header(ngx_http_request_t *r, const char *name,
    u_char *value, u_char *last)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);

    h->value.len = last - value;
    h->value.data = ngx_pnalloc(r->pool, h->value.len);
    if (h->value.data == NULL) {
        h->hash = 0;
        return NGX_ERROR;
    }

    ngx_memcpy(h->value.data, value, h->value.len);

    return NGX_OK;
}


static void
ngx_http_ratelimit_cleanup(void *data)
{
    ngx_http_ratelimit_ctx_t *ctx = data;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    /* the reply may still come: it must find nobody, not freed memory */

    if (ctx->slot) {
        ngx_http_ratelimit_redis_detach(ctx->slot);
        ctx->slot = NULL;
    }
}


/* the SHA-1 of each script is taken once, from the body compiled in */

static ngx_http_ratelimit_script_t *
ngx_http_ratelimit_script(ngx_uint_t algorithm)
{
    ngx_sha1_t                    sha1;
    ngx_http_ratelimit_script_t  *script;
    u_char                        digest[20];

    script = &ngx_http_ratelimit_scripts[algorithm];

    if (script->sha1[0] == '\0') {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, script->body.data, script->body.len);
        ngx_sha1_final(digest, &sha1);
        ngx_hex_dump(script->sha1, digest, sizeof(digest));
    }

    return script;
}
