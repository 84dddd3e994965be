
/*
 * Global API rate limiter: the admin endpoint.
 *
 *   PUT    <location>        {"customer_id": "acme", "limit": 10000,
 *                             "window": 60, "algorithm": "token_bucket"}
 *   GET    <location>/<customer id>
 *   DELETE <location>/<customer id>
 *
 * A change is written to every shard and answered 200 only once every shard
 * holds it; if one cannot take it, the write is undone on every shard that
 * took it or may still take it (one that did not answer in time runs the
 * undo right after the write, on the same connection) and the answer is
 * 503, so the old rule stays in force everywhere.  On success the node drops
 * its cached rules and denials at once; other edge nodes see the rules
 * version move at their next poll.
 *
 * The customer id of GET and DELETE is the rest of the URI as the client
 * sent it, percent-decoded, not nginx's normalised $uri: "a//b", "./a" and
 * "a/../b" name the customers of those ids, like the ids PUT stores.
 */


#include "ngx_http_ratelimit_admin.h"
#include "ngx_http_ratelimit_zone.h"
#include "ngx_http_ratelimit_redis.h"
#include "ngx_http_ratelimit_rules.h"
#include "ngx_http_ratelimit_cache.h"
#include "rl_rule.h"
#include "ngx_http_ratelimit_scripts.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <yajl/yajl_gen.h>


#define NGX_HTTP_RATELIMIT_ADMIN_TIMEOUT  1000

#define NGX_HTTP_RATELIMIT_ADMIN_WRITE    0
#define NGX_HTTP_RATELIMIT_ADMIN_RESTORE  1
#define NGX_HTTP_RATELIMIT_ADMIN_READ     2

/* lua/rules_lib.lua goes in front of every rules script */
#define ngx_http_ratelimit_rules_script(name)                                 \
    NGX_HTTP_RATELIMIT_LUA_RULES_LIB name,                                    \
    sizeof(NGX_HTTP_RATELIMIT_LUA_RULES_LIB name) - 1


typedef struct ngx_http_ratelimit_admin_ctx_s  ngx_http_ratelimit_admin_ctx_t;

typedef struct {
    ngx_http_ratelimit_admin_ctx_t     *ctx;
    ngx_uint_t                          index;
    ngx_http_ratelimit_slot_t          *slot;
    ngx_str_t                           previous;   /* as stored before */
    unsigned                            sent:1;
    unsigned                            answered:1;
    unsigned                            written:1;
    unsigned                            failed:1;
    unsigned                            lost:1;     /* connection failed
                                                       after sending */
} ngx_http_ratelimit_admin_shard_t;


struct ngx_http_ratelimit_admin_ctx_s {
    ngx_http_request_t                 *request;
    ngx_http_ratelimit_zone_t          *zone;
    ngx_http_ratelimit_admin_shard_t   *shards;
    ngx_uint_t                          nshards;
    ngx_uint_t                          pending;
    ngx_uint_t                          phase;
    ngx_event_t                         timer;

    rl_rule_t                           rule;
    ngx_str_t                           stamp;
    ngx_str_t                           stored;     /* "limit window algo" */
    ngx_uint_t                          tried;      /* READ: shards asked */
    unsigned                            delete:1;
    unsigned                            finished:1;
};


static ngx_int_t ngx_http_ratelimit_admin_authorized(ngx_http_request_t *r,
    ngx_http_ratelimit_loc_conf_t *rlcf);
static ngx_int_t ngx_http_ratelimit_admin_path(ngx_http_request_t *r,
    ngx_str_t *base, ngx_str_t *path);
static ngx_int_t ngx_http_ratelimit_admin_customer(ngx_http_request_t *r,
    ngx_str_t *rest, rl_rule_t *rule);
static u_char *ngx_http_ratelimit_admin_escape(ngx_pool_t *pool, u_char *src,
    size_t len);
static void ngx_http_ratelimit_admin_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_admin_read_body(ngx_http_request_t *r,
    u_char *buf, size_t *len);
static ngx_int_t ngx_http_ratelimit_admin_start(ngx_http_request_t *r,
    ngx_uint_t phase, ngx_uint_t delete);
static ngx_int_t ngx_http_ratelimit_admin_write(
    ngx_http_ratelimit_admin_ctx_t *ctx);
static void ngx_http_ratelimit_admin_written(void *data, redisReply *reply);
static void ngx_http_ratelimit_admin_restore(
    ngx_http_ratelimit_admin_ctx_t *ctx);
static ngx_uint_t ngx_http_ratelimit_admin_holds_write(
    ngx_http_ratelimit_admin_ctx_t *ctx, ngx_http_ratelimit_admin_shard_t *as);
static void ngx_http_ratelimit_admin_restored(void *data, redisReply *reply);
static ngx_int_t ngx_http_ratelimit_admin_read(
    ngx_http_ratelimit_admin_ctx_t *ctx);
static void ngx_http_ratelimit_admin_got(void *data, redisReply *reply);
static void ngx_http_ratelimit_admin_timeout(ngx_event_t *ev);
static void ngx_http_ratelimit_admin_done(ngx_http_ratelimit_admin_ctx_t *ctx);
static void ngx_http_ratelimit_admin_finish(ngx_http_ratelimit_admin_ctx_t *ctx,
    ngx_int_t status, ngx_str_t *body);
static ngx_int_t ngx_http_ratelimit_admin_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static ngx_int_t ngx_http_ratelimit_admin_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *field, const char *message);
static ngx_int_t ngx_http_ratelimit_admin_rule_json(ngx_http_request_t *r,
    rl_rule_t *rule, ngx_str_t *out);
static ngx_int_t ngx_http_ratelimit_admin_deleted_json(ngx_http_request_t *r,
    rl_rule_t *rule, ngx_uint_t existed, ngx_str_t *out);
static void ngx_http_ratelimit_admin_cleanup(void *data);


/* the key admin tokens are compared under, drawn by each worker */
static u_char      ngx_http_ratelimit_admin_key[32];
static ngx_uint_t  ngx_http_ratelimit_admin_keyed;


ngx_int_t
ngx_http_ratelimit_admin_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_str_t                        base, rest, *type;
    ngx_table_elt_t                 *allow;
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_ratelimit_admin_ctx_t  *ctx;
    ngx_http_ratelimit_loc_conf_t   *rlcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module);

    if (!ngx_http_ratelimit_admin_authorized(r, rlcf)) {
        r->headers_out.www_authenticate = ngx_list_push(&r->headers_out.headers);
        if (r->headers_out.www_authenticate == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        r->headers_out.www_authenticate->hash = 1;
        ngx_str_set(&r->headers_out.www_authenticate->key, "WWW-Authenticate");
        ngx_str_set(&r->headers_out.www_authenticate->value,
                    "Bearer realm=\"ratelimit\"");

        ngx_http_discard_request_body(r);

        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_UNAUTHORIZED, NULL,
                                   "a valid \"Authorization: Bearer\" token "
                                   "is required");
    }

    /* the part of the URI after the location: "" or "/<customer id>" */

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    base = clcf->name;

    if (base.len && base.data[base.len - 1] == '/') {
        base.len--;
    }

    if (ngx_http_ratelimit_admin_path(r, &base, &rest) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rest.len && rest.data[0] != '/') {
        ngx_http_discard_request_body(r);
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_FOUND, NULL,
                                              "no such admin resource");
    }

    if (rest.len) {
        rest.data++;
        rest.len--;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_ratelimit_admin_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_module);

    if (rest.len == 0) {

        if (r->method != NGX_HTTP_PUT) {
            ngx_http_discard_request_body(r);

            allow = ngx_list_push(&r->headers_out.headers);
            if (allow == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            allow->hash = 1;
            ngx_str_set(&allow->key, "Allow");
            ngx_str_set(&allow->value, "PUT");

            return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_ALLOWED,
                         NULL, "the collection takes PUT; a customer's rule "
                               "takes GET and DELETE");
        }

        type = r->headers_in.content_type ? &r->headers_in.content_type->value
                                          : NULL;

        if (type == NULL
            || type->len < sizeof("application/json") - 1
            || ngx_strncasecmp(type->data, (u_char *) "application/json",
                               sizeof("application/json") - 1) != 0
            || (type->len > sizeof("application/json") - 1
                && type->data[sizeof("application/json") - 1] != ';'
                && type->data[sizeof("application/json") - 1] != ' '))
        {
            ngx_http_discard_request_body(r);
            return ngx_http_ratelimit_admin_error(r,
                         NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, NULL,
                         "the body must be \"Content-Type: application/json\"");
        }

        if (r->headers_in.content_length_n > RL_RULE_MAX_BODY) {
            ngx_http_discard_request_body(r);
            return ngx_http_ratelimit_admin_error(r,
                         NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NULL,
                         "the body is over 4096 bytes");
        }

        r->request_body_in_single_buf = 1;

        rc = ngx_http_read_client_request_body(r,
                                               ngx_http_ratelimit_admin_body);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_DELETE))) {
        ngx_http_discard_request_body(r);

        allow = ngx_list_push(&r->headers_out.headers);
        if (allow == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        allow->hash = 1;
        ngx_str_set(&allow->key, "Allow");
        ngx_str_set(&allow->value, "GET, HEAD, DELETE");

        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_ALLOWED, NULL,
                     "a customer's rule takes GET and DELETE; "
                     "PUT goes to the collection");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_ratelimit_admin_customer(r, &rest, &ctx->rule);
    if (rc != NGX_OK) {
        return rc;
    }

    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_ratelimit_admin_start(r, NGX_HTTP_RATELIMIT_ADMIN_WRITE,
                                              1);
    }

    return ngx_http_ratelimit_admin_start(r, NGX_HTTP_RATELIMIT_ADMIN_READ, 0);
}


/*
 * "Authorization: Bearer <token>".  The two are compared as HMAC-SHA-256
 * digests under a key drawn once per worker: digests of equal length, so
 * the comparison takes as long whether or not the lengths agree, and the
 * caller cannot choose the bytes compared.
 */

static ngx_int_t
ngx_http_ratelimit_admin_authorized(ngx_http_request_t *r,
    ngx_http_ratelimit_loc_conf_t *rlcf)
{
    ngx_str_t            given, *token;
    unsigned int         glen, tlen;
    u_char               gmac[EVP_MAX_MD_SIZE], tmac[EVP_MAX_MD_SIZE];

    token = &rlcf->admin_token;

    if (r->headers_in.authorization == NULL || token->len == 0) {
        return 0;
    }

    given = r->headers_in.authorization->value;

    if (given.len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(given.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1) != 0)
    {
        return 0;
    }

    given.data += sizeof("Bearer ") - 1;
    given.len -= sizeof("Bearer ") - 1;

    while (given.len && given.data[0] == ' ') {
        given.data++;
        given.len--;
    }

    if (!ngx_http_ratelimit_admin_keyed) {
        if (RAND_bytes(ngx_http_ratelimit_admin_key,
                       sizeof(ngx_http_ratelimit_admin_key))
            != 1)
        {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "ratelimit: no random key to compare admin tokens"
                          " with: refusing every token");
            return 0;
        }

        ngx_http_ratelimit_admin_keyed = 1;
    }

    if (HMAC(EVP_sha256(), ngx_http_ratelimit_admin_key,
             sizeof(ngx_http_ratelimit_admin_key), given.data, given.len,
             gmac, &glen)
        == NULL
        || HMAC(EVP_sha256(), ngx_http_ratelimit_admin_key,
                sizeof(ngx_http_ratelimit_admin_key), token->data,
                token->len, tmac, &tlen)
           == NULL
        || glen != tlen)
    {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "ratelimit: HMAC of an admin token failed");
        return 0;
    }

    return CRYPTO_memcmp(gmac, tmac, tlen) == 0;
}


/*
 * The part of the URI after the location, "" or "/<customer id>".  From the
 * request line as the client sent it, percent-decoded, so that ids nginx
 * would normalise ("a//b", "./a", "a/../b") stay the ids they are.  After a
 * rewrite or an internal redirect, or when the raw URI does not start with
 * the location's name (the client spelled that part oddly), the URI nginx
 * matched the location with is all there is.
 */

static ngx_int_t
ngx_http_ratelimit_admin_path(ngx_http_request_t *r, ngx_str_t *base,
    ngx_str_t *path)
{
    u_char     *src, *dst;
    ngx_str_t   raw, decoded;

    *path = r->uri;

    if (r->valid_unparsed_uri && !r->internal && r == r->main) {
        raw = r->unparsed_uri;

        if (r->args_start && r->args_start > raw.data
            && r->args_start <= raw.data + raw.len)
        {
            raw.len = r->args_start - 1 - raw.data;
        }

        decoded.data = ngx_pnalloc(r->pool, raw.len + 1);
        if (decoded.data == NULL) {
            return NGX_ERROR;
        }

        src = raw.data;
        dst = decoded.data;
        ngx_unescape_uri(&dst, &src, raw.len, 0);
        decoded.len = dst - decoded.data;

        if (decoded.len >= base->len
            && ngx_strncmp(decoded.data, base->data, base->len) == 0
            && (decoded.len == base->len || decoded.data[base->len] == '/'))
        {
            *path = decoded;
        }
    }

    if (path->len >= base->len
        && ngx_strncmp(path->data, base->data, base->len) == 0)
    {
        path->data += base->len;
        path->len -= base->len;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_admin_customer(ngx_http_request_t *r, ngx_str_t *rest,
    rl_rule_t *rule)
{
    rl_rule_error_t  err;

    if (rl_rule_check_customer_id(rest->data, rest->len, &err) != 0) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              err.field, err.message);
    }

    ngx_memcpy(rule->customer_id, rest->data, rest->len);
    rule->customer_id_len = rest->len;

    return NGX_OK;
}


static void
ngx_http_ratelimit_admin_body(ngx_http_request_t *r)
{
    size_t                           len;
    ngx_int_t                        rc;
    rl_rule_error_t                  err;
    ngx_http_ratelimit_admin_ctx_t  *ctx;
    u_char                           body[RL_RULE_MAX_BODY + 1];

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    len = sizeof(body);

    rc = ngx_http_ratelimit_admin_read_body(r, body, &len);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (len > RL_RULE_MAX_BODY) {
        ngx_http_finalize_request(r, ngx_http_ratelimit_admin_error(r,
                                    NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NULL,
                                    "the body is over 4096 bytes"));
        return;
    }

    if (rl_rule_parse_json((const char *) body, len, &ctx->rule, &err) != 0) {
        ngx_http_finalize_request(r, ngx_http_ratelimit_admin_error(r,
                                    NGX_HTTP_BAD_REQUEST, err.field,
                                    err.message));
        return;
    }

    ngx_http_finalize_request(r, ngx_http_ratelimit_admin_start(r,
                                     NGX_HTTP_RATELIMIT_ADMIN_WRITE, 0));
}


/* copies at most *len bytes of the body; *len becomes its whole size */

static ngx_int_t
ngx_http_ratelimit_admin_read_body(ngx_http_request_t *r, u_char *buf,
    size_t *len)
{
    size_t        size, total, room;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    room = *len;
    total = 0;

    if (r->request_body == NULL) {
        *len = 0;
        return NGX_OK;
    }

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file) {
            size = b->file_last - b->file_pos;

            if (total < room) {
                n = ngx_read_file(b->file, buf + total,
                                  ngx_min(size, room - total), b->file_pos);
                if (n == NGX_ERROR) {
                    return NGX_ERROR;
                }
            }

        } else {
            size = b->last - b->pos;

            if (total < room) {
                ngx_memcpy(buf + total, b->pos, ngx_min(size, room - total));
            }
        }

        total += size;
    }

    *len = total;

    return NGX_OK;
}


/*
 * WRITE: the change goes to every shard; READ: a live shard is asked.
 * Returns NGX_DONE while the shards answer, or a status already sent.
 */

static ngx_int_t
ngx_http_ratelimit_admin_start(ngx_http_request_t *r, ngx_uint_t phase,
    ngx_uint_t delete)
{
    u_char                          *p;
    ngx_int_t                        rc;
    ngx_uint_t                       i;
    ngx_time_t                      *tp;
    ngx_pool_cleanup_t              *cln;
    ngx_http_ratelimit_ring_t       *ring;
    ngx_http_ratelimit_admin_ctx_t  *ctx;
    ngx_http_ratelimit_main_conf_t  *rmcf;
    u_char                           buf[64];

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);

    ctx->request = r;
    ctx->zone = rmcf->shm_zone->data;
    ctx->phase = phase;
    ctx->delete = delete;

    ring = ctx->zone->ring;

    ctx->nshards = ring->nshards;
    ctx->shards = ngx_pcalloc(r->pool, ctx->nshards
                              * sizeof(ngx_http_ratelimit_admin_shard_t));
    if (ctx->shards == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < ctx->nshards; i++) {
        ctx->shards[i].ctx = ctx;
        ctx->shards[i].index = i;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_ratelimit_admin_cleanup;
    cln->data = ctx;

    ctx->timer.handler = ngx_http_ratelimit_admin_timeout;
    ctx->timer.data = ctx;
    ctx->timer.log = r->connection->log;

    if (phase == NGX_HTTP_RATELIMIT_ADMIN_READ) {
        rc = ngx_http_ratelimit_admin_read(ctx);

    } else {

        /*
         * last writer wins on every shard alike: time, then this worker;
         * under 2^53, so that Lua compares stamps exactly
         */

        ctx->stamp.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (ctx->stamp.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_time_update();
        tp = ngx_timeofday();

        ctx->stamp.len = ngx_sprintf(ctx->stamp.data, "%uL",
                             ((uint64_t) tp->sec * 1000 + tp->msec) * 1000
                             + (uint64_t) ngx_pid % 1000)
                         - ctx->stamp.data;

        if (delete) {
            ngx_str_set(&ctx->stored, "-");

        } else {
            ctx->stored.len = rl_rule_encode(&ctx->rule, (char *) buf,
                                             sizeof(buf));
            if (ctx->stored.len == 0) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            p = ngx_pnalloc(r->pool, ctx->stored.len);
            if (p == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_memcpy(p, buf, ctx->stored.len);
            ctx->stored.data = p;
        }

        rc = ngx_http_ratelimit_admin_write(ctx);
    }

    if (rc != NGX_DONE) {
        return rc;
    }

    ngx_add_timer(&ctx->timer, NGX_HTTP_RATELIMIT_ADMIN_TIMEOUT);

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_ratelimit_admin_write(ngx_http_ratelimit_admin_ctx_t *ctx)
{
    const char                   *argv[8];
    size_t                        argvlen[8];
    ngx_uint_t                    i;
    ngx_http_ratelimit_ring_t    *ring;
    ngx_http_ratelimit_health_t  *h;

    ring = ctx->zone->ring;

    /* a shard known to be down cannot take the change: change nothing */

    for (i = 0; i < ring->nshards; i++) {
        h = &ring->health[i];

        if (h->down_until != 0
            && ngx_http_ratelimit_shard_admit(h)
               == NGX_HTTP_RATELIMIT_SHARD_DOWN)
        {
            ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                          "ratelimit: admin change refused: shard %*s is down",
                          h->name_len, h->name);

            return ngx_http_ratelimit_admin_error(ctx->request,
                        NGX_HTTP_SERVICE_UNAVAILABLE, NULL,
                        "a shard is down: the rule was not changed");
        }
    }

    ngx_http_ratelimit_rules_eval(argv, argvlen,
                      ngx_http_ratelimit_rules_script(
                          NGX_HTTP_RATELIMIT_LUA_RULES_PUT));
    argv[5] = (const char *) ctx->rule.customer_id;
    argvlen[5] = ctx->rule.customer_id_len;
    argv[6] = (const char *) ctx->stamp.data;
    argvlen[6] = ctx->stamp.len;
    argv[7] = (const char *) ctx->stored.data;
    argvlen[7] = ctx->stored.len;

    for (i = 0; i < ctx->nshards; i++) {
        ctx->shards[i].slot = ngx_http_ratelimit_redis_send(
                                  ngx_http_ratelimit_redis_conn(i), 8, argv,
                                  argvlen, ngx_http_ratelimit_admin_written,
                                  &ctx->shards[i]);

        if (ctx->shards[i].slot == NULL) {
            ctx->shards[i].answered = 1;
            ctx->shards[i].failed = 1;
            continue;
        }

        ctx->shards[i].sent = 1;
        ctx->pending++;
    }

    if (ctx->pending == 0) {
        return ngx_http_ratelimit_admin_error(ctx->request,
                        NGX_HTTP_SERVICE_UNAVAILABLE, NULL,
                        "no shard could take the change: "
                        "the rule was not changed");
    }

    return NGX_DONE;
}


static void
ngx_http_ratelimit_admin_written(void *data, redisReply *reply)
{
    ngx_http_ratelimit_admin_shard_t *as = data;

    ngx_http_ratelimit_admin_ctx_t  *ctx;

    ctx = as->ctx;
    as->slot = NULL;
    as->answered = 1;

    /* the connection failed: the write may have reached the shard or not */

    if (reply == NULL) {
        as->lost = 1;
    }

    if (reply == NULL
        || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[2]->type != REDIS_REPLY_INTEGER)
    {
        as->failed = 1;

        ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                      "ratelimit: shard %V could not store the rule of "
                      "\"%s\": %s",
                      ngx_http_ratelimit_redis_name(
                          ngx_http_ratelimit_redis_conn(as->index)),
                      ngx_http_ratelimit_admin_escape(ctx->request->pool,
                          ctx->rule.customer_id, ctx->rule.customer_id_len),
                      reply && reply->type == REDIS_REPLY_ERROR
                      ? reply->str : "no usable answer");

    } else {
        as->written = reply->element[2]->integer == 1;

        as->previous.len = reply->element[0]->len;
        as->previous.data = ngx_pnalloc(ctx->request->pool,
                                        as->previous.len + 1);
        if (as->previous.data == NULL) {
            as->failed = 1;

        } else {
            ngx_memcpy(as->previous.data, reply->element[0]->str,
                       as->previous.len);
        }
    }

    if (--ctx->pending == 0) {
        ngx_http_ratelimit_admin_done(ctx);
    }
}


/* every shard answered, or the time is up */

static void
ngx_http_ratelimit_admin_done(ngx_http_ratelimit_admin_ctx_t *ctx)
{
    ngx_str_t                    body;
    ngx_int_t                    rc;
    ngx_uint_t                   i, failed, written, existed;
    rl_limit_t                   old;

    if (ctx->finished) {
        return;
    }

    failed = 0;
    written = 0;
    existed = 0;

    for (i = 0; i < ctx->nshards; i++) {
        if (ctx->shards[i].failed || !ctx->shards[i].answered) {
            failed++;
            continue;
        }

        if (ctx->shards[i].written) {
            written++;
        }

        if (ctx->shards[i].previous.len
            && ngx_http_ratelimit_rule_parse(ctx->shards[i].previous.data,
                                             ctx->shards[i].previous.len,
                                             &old, NULL)
               == NGX_OK)
        {
            existed = 1;
        }
    }

    if (ctx->phase == NGX_HTTP_RATELIMIT_ADMIN_RESTORE) {
        ngx_http_ratelimit_admin_finish(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        NULL);
        return;
    }

    if (failed) {
        ngx_http_ratelimit_admin_restore(ctx);
        return;
    }

    /* the change is everywhere: this node sees it at its next request */

    ngx_http_ratelimit_cache_invalidate(ctx->zone);

    if (written == 0) {
        ngx_http_ratelimit_admin_finish(ctx, NGX_HTTP_CONFLICT, NULL);
        return;
    }

    if (ctx->delete) {
        rc = ngx_http_ratelimit_admin_deleted_json(ctx->request, &ctx->rule,
                                                   existed, &body);
    } else {
        rc = ngx_http_ratelimit_admin_rule_json(ctx->request, &ctx->rule,
                                                &body);
    }

    ngx_http_ratelimit_admin_finish(ctx, rc == NGX_OK ? NGX_HTTP_OK
                                         : NGX_HTTP_INTERNAL_SERVER_ERROR,
                                    rc == NGX_OK ? &body : NULL);
}


/*
 * The change failed somewhere: undo it on every shard that took it, and on
 * every shard that may still take it: one that did not answer in time runs
 * the undo right after the write, queued behind it on the same connection,
 * and one whose connection failed gets the undo on a new one, where it
 * voids the write should that land later (lua/rules_restore.lua).
 */

static void
ngx_http_ratelimit_admin_restore(ngx_http_ratelimit_admin_ctx_t *ctx)
{
    const char                        *argv[8];
    size_t                             argvlen[8];
    ngx_uint_t                         i, unsent, queued;
    ngx_http_ratelimit_admin_shard_t  *as;

    ctx->phase = NGX_HTTP_RATELIMIT_ADMIN_RESTORE;

    ngx_http_ratelimit_rules_eval(argv, argvlen,
                      ngx_http_ratelimit_rules_script(
                          NGX_HTTP_RATELIMIT_LUA_RULES_RESTORE));
    argv[5] = (const char *) ctx->rule.customer_id;
    argvlen[5] = ctx->rule.customer_id_len;
    argv[6] = (const char *) ctx->stamp.data;
    argvlen[6] = ctx->stamp.len;
    argv[7] = (const char *) ctx->stored.data;
    argvlen[7] = ctx->stored.len;

    unsent = 0;
    queued = 0;

    for (i = 0; i < ctx->nshards; i++) {
        as = &ctx->shards[i];

        if (as->slot) {
            /* timed out: its late answer must find nobody */
            ngx_http_ratelimit_redis_detach(as->slot);
            as->slot = NULL;
        }

        /*
         * Never sent, or refused by the shard: nothing to undo there,
         * unless the rules poll carried the write over from another shard
         * before it arrived (the shard then refuses it as already there).
         */

        if (!as->sent
            || (as->answered && !as->written && !as->lost
                && !ngx_http_ratelimit_admin_holds_write(ctx, as)))
        {
            continue;
        }

        as->slot = ngx_http_ratelimit_redis_send(
                       ngx_http_ratelimit_redis_conn(i), 8, argv, argvlen,
                       ngx_http_ratelimit_admin_restored, as);
        if (as->slot == NULL) {
            unsent++;
            continue;
        }

        /*
         * A shard that let the write time out will not answer the undo in
         * time either: it runs when the shard does, and the answer need not
         * wait for it.
         */

        if (!as->answered) {
            ngx_http_ratelimit_redis_detach(as->slot);
            as->slot = NULL;
            queued++;
            continue;
        }

        ctx->pending++;
    }

    ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                  "ratelimit: a change of the rule of \"%s\" failed on a "
                  "shard, undoing it on %ui shards%s",
                  ngx_http_ratelimit_admin_escape(ctx->request->pool,
                      ctx->rule.customer_id, ctx->rule.customer_id_len),
                  ctx->pending + queued,
                  unsent ? "; some could not be sent the undo, the rules "
                           "poll will carry it to them" : "");

    if (ctx->pending == 0) {
        ngx_http_ratelimit_admin_finish(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        NULL);
        return;
    }

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    ngx_add_timer(&ctx->timer, NGX_HTTP_RATELIMIT_ADMIN_TIMEOUT);
}


/* the value the shard had when the write came is the write itself */

static ngx_uint_t
ngx_http_ratelimit_admin_holds_write(ngx_http_ratelimit_admin_ctx_t *ctx,
    ngx_http_ratelimit_admin_shard_t *as)
{
    u_char  *p;

    if (as->previous.len != ctx->stamp.len + 1 + ctx->stored.len) {
        return 0;
    }

    p = as->previous.data;

    return ngx_memcmp(p, ctx->stamp.data, ctx->stamp.len) == 0
           && p[ctx->stamp.len] == ' '
           && ngx_memcmp(p + ctx->stamp.len + 1, ctx->stored.data,
                         ctx->stored.len)
              == 0;
}


static void
ngx_http_ratelimit_admin_restored(void *data, redisReply *reply)
{
    ngx_http_ratelimit_admin_shard_t *as = data;

    ngx_http_ratelimit_admin_ctx_t  *ctx;

    ctx = as->ctx;
    as->slot = NULL;

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                      "ratelimit: shard %V could not undo a failed change "
                      "of the rule of \"%s\"; the rules poll will carry "
                      "the undo to it",
                      ngx_http_ratelimit_redis_name(
                          ngx_http_ratelimit_redis_conn(as->index)),
                      ngx_http_ratelimit_admin_escape(ctx->request->pool,
                          ctx->rule.customer_id, ctx->rule.customer_id_len));
    }

    if (--ctx->pending == 0) {
        ngx_http_ratelimit_admin_finish(ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                        NULL);
    }
}


/* GET: the first live shard from the customer's place on the ring answers */

static ngx_int_t
ngx_http_ratelimit_admin_read(ngx_http_ratelimit_admin_ctx_t *ctx)
{
    ngx_int_t                   shard;
    const char                 *argv[3];
    size_t                      argvlen[3];
    ngx_http_ratelimit_ring_t  *ring;

    ring = ctx->zone->ring;

    argv[0] = "HGET";
    argvlen[0] = 4;
    argv[1] = NGX_HTTP_RATELIMIT_RULES_KEY;
    argvlen[1] = sizeof(NGX_HTTP_RATELIMIT_RULES_KEY) - 1;
    argv[2] = (const char *) ctx->rule.customer_id;
    argvlen[2] = ctx->rule.customer_id_len;

    for ( ;; ) {
        shard = ngx_http_ratelimit_ring_next_live(ring, ctx->rule.customer_id,
                                                  ctx->rule.customer_id_len,
                                                  &ctx->tried);
        if (shard == NGX_ERROR) {
            break;
        }

        ctx->shards[0].index = shard;
        ctx->shards[0].slot = ngx_http_ratelimit_redis_send(
                                  ngx_http_ratelimit_redis_conn(shard), 3,
                                  argv, argvlen, ngx_http_ratelimit_admin_got,
                                  &ctx->shards[0]);
        if (ctx->shards[0].slot) {
            ctx->pending = 1;
            return NGX_DONE;
        }
    }

    return ngx_http_ratelimit_admin_error(ctx->request,
                                          NGX_HTTP_SERVICE_UNAVAILABLE, NULL,
                                          "no shard could be asked");
}


static void
ngx_http_ratelimit_admin_got(void *data, redisReply *reply)
{
    ngx_http_ratelimit_admin_shard_t *as = data;

    ngx_int_t                        rc;
    ngx_str_t                        body;
    rl_limit_t                       rule;
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    ctx = as->ctx;
    as->slot = NULL;
    ctx->pending = 0;

    if (reply == NULL
        || (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL))
    {
        /* this shard failed: the next live one holds the same rules */

        rc = ngx_http_ratelimit_admin_read(ctx);

        if (rc != NGX_DONE) {
            ngx_http_ratelimit_admin_finish(ctx, rc, NULL);
        }

        return;
    }

    rc = NGX_DECLINED;

    if (reply->type == REDIS_REPLY_STRING) {
        rc = ngx_http_ratelimit_rule_parse((u_char *) reply->str, reply->len,
                                           &rule, NULL);
    }

    if (rc != NGX_OK) {
        ngx_http_ratelimit_admin_finish(ctx, ngx_http_ratelimit_admin_error(
                                   ctx->request, NGX_HTTP_NOT_FOUND,
                                   "customer_id",
                                   "this customer has no rule: the location's "
                                   "default applies"), NULL);
        return;
    }

    ctx->rule.limit = rule.limit;
    ctx->rule.window = rule.window;
    ctx->rule.algorithm = rule.algorithm;

    rc = ngx_http_ratelimit_admin_rule_json(ctx->request, &ctx->rule, &body);

    ngx_http_ratelimit_admin_finish(ctx, rc == NGX_OK ? NGX_HTTP_OK
                                         : NGX_HTTP_INTERNAL_SERVER_ERROR,
                                    rc == NGX_OK ? &body : NULL);
}


static void
ngx_http_ratelimit_admin_timeout(ngx_event_t *ev)
{
    ngx_http_ratelimit_admin_ctx_t *ctx = ev->data;

    ngx_uint_t  i;

    ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                  "ratelimit: admin request for the rule of \"%s\" timed "
                  "out waiting for shards",
                  ngx_http_ratelimit_admin_escape(ctx->request->pool,
                      ctx->rule.customer_id, ctx->rule.customer_id_len));

    for (i = 0; i < ctx->nshards; i++) {
        if (ctx->shards[i].slot) {
            ngx_http_ratelimit_redis_detach(ctx->shards[i].slot);
            ctx->shards[i].slot = NULL;
        }
    }

    ctx->pending = 0;

    if (ctx->phase == NGX_HTTP_RATELIMIT_ADMIN_WRITE) {
        ngx_http_ratelimit_admin_done(ctx);
        return;
    }

    ngx_http_ratelimit_admin_finish(ctx, NGX_HTTP_SERVICE_UNAVAILABLE, NULL);
}


/*
 * Sends the answer.  "status" is an HTTP status with "body", or, with a NULL
 * body, a 503/409 whose message is made here, or a status already sent.
 */

static void
ngx_http_ratelimit_admin_finish(ngx_http_ratelimit_admin_ctx_t *ctx,
    ngx_int_t status, ngx_str_t *body)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    if (ctx->finished) {
        return;
    }

    ctx->finished = 1;
    r = ctx->request;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    if (body) {
        rc = ngx_http_ratelimit_admin_send(r, status, body);

    } else if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        rc = ngx_http_ratelimit_admin_error(r, status, NULL,
                    ctx->phase == NGX_HTTP_RATELIMIT_ADMIN_READ
                    ? "no shard answered"
                    : "a shard could not take the change: "
                      "the rule was not changed");

    } else if (status == NGX_HTTP_CONFLICT) {
        rc = ngx_http_ratelimit_admin_error(r, status, "customer_id",
                    "a newer change of this customer was stored "
                    "at the same time");

    } else {
        rc = status;
    }

    ngx_http_finalize_request(r, rc);
}


static ngx_int_t
ngx_http_ratelimit_admin_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = body->len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_ratelimit_admin_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *field, const char *message)
{
    size_t           len;
    ngx_str_t        body;
    rl_rule_error_t  err;

    err.field = field;
    ngx_cpystrn((u_char *) err.message, (u_char *) message,
                sizeof(err.message));

    body.data = ngx_pnalloc(r->pool, 512);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = rl_rule_error_json(&err, (char *) body.data, 512);
    if (len == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body.len = len;

    return ngx_http_ratelimit_admin_send(r, status, &body);
}


static ngx_int_t
ngx_http_ratelimit_admin_rule_json(ngx_http_request_t *r, rl_rule_t *rule,
    ngx_str_t *out)
{
    size_t  size;

    /* a customer id of control-free bytes escapes to at most 6 times it */

    size = 6 * RL_RULE_MAX_CUSTOMER_ID + 256;

    out->data = ngx_pnalloc(r->pool, size);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    out->len = rl_rule_to_json(rule, (char *) out->data, size);

    return out->len ? NGX_OK : NGX_ERROR;
}


static ngx_int_t
ngx_http_ratelimit_admin_deleted_json(ngx_http_request_t *r, rl_rule_t *rule,
    ngx_uint_t existed, ngx_str_t *out)
{
    size_t                len;
    yajl_gen              g;
    ngx_int_t             rc;
    const unsigned char  *buf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || yajl_gen_string(g, (const unsigned char *) "customer_id", 11)
           != yajl_gen_status_ok
        || yajl_gen_string(g, rule->customer_id, rule->customer_id_len)
           != yajl_gen_status_ok
        || yajl_gen_string(g, (const unsigned char *) "deleted", 7)
           != yajl_gen_status_ok
        || yajl_gen_bool(g, existed) != yajl_gen_status_ok
        || yajl_gen_map_close(g) != yajl_gen_status_ok
        || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
    {
        goto done;
    }

    out->data = ngx_pnalloc(r->pool, len + 1);
    if (out->data == NULL) {
        goto done;
    }

    ngx_memcpy(out->data, buf, len);
    out->data[len] = '\n';
    out->len = len + 1;

    rc = NGX_OK;

done:

    yajl_gen_free(g);

    return rc;
}


/*
 * Caller-supplied bytes fit for a log line, NUL-terminated: every byte but
 * printable ASCII, and the quote and backslash around them, as "\xHH", so
 * that an id cannot end the line, start a forged one or drive a terminal.
 * A constant stands in when the pool is out of memory.
 */

static u_char *
ngx_http_ratelimit_admin_escape(ngx_pool_t *pool, u_char *src, size_t len)
{
    u_char         *dst, *p;
    size_t          i;
    static u_char   hex[] = "0123456789ABCDEF";

    dst = ngx_pnalloc(pool, 4 * len + 1);
    if (dst == NULL) {
        return (u_char *) "(out of memory)";
    }

    p = dst;

    for (i = 0; i < len; i++) {
        if (src[i] < 0x20 || src[i] >= 0x7f || src[i] == '"'
            || src[i] == '\\')
        {
            *p++ = '\\';
            *p++ = 'x';
            *p++ = hex[src[i] >> 4];
            *p++ = hex[src[i] & 0xf];

        } else {
            *p++ = src[i];
        }
    }

    *p = '\0';

    return dst;
}


static void
ngx_http_ratelimit_admin_cleanup(void *data)
{
    ngx_http_ratelimit_admin_ctx_t *ctx = data;

    ngx_uint_t  i;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    for (i = 0; i < ctx->nshards; i++) {
        if (ctx->shards[i].slot) {
            ngx_http_ratelimit_redis_detach(ctx->shards[i].slot);
            ctx->shards[i].slot = NULL;
        }
    }
}
