
/*
 * Global API rate limiter: the admin endpoint, the HTTP side of the rules
 * store.
 *
 *   PUT    <location>        {"customer_id": "acme", "limit": 10000,
 *                             "window": 60, "algorithm": "token_bucket",
 *                             "policy": "burst",
 *                             "expires_at": "2026-12-01T00:00:00Z"}
 *   GET    <location>[?limit=<n>&cursor=<from the page before>]
 *   GET    <location>/<customer id>[?policy=<name>]
 *   DELETE <location>/<customer id>[?policy=<name>]
 *   GET    <location>/usage?policy=<name>&key=<value>[&source=<name>]
 *                             [&customer=<id>]
 *   DELETE <location>/usage?policy=<name>&key=<value>[&source=<name>]
 *
 * Without a policy the rule is the customer's for every policy; with one,
 * for that "ratelimit_policy" alone, which must be declared in this nginx's
 * http block.  The two are fields of their own in the rules hash,
 * "<customer>" and "<customer>\x1f<policy>", put and deleted apart.  The
 * query takes "policy" and nothing else (PUT: nothing at all).
 *
 * A change is answered 200 only once every shard holds it; if one cannot
 * take it, the store undoes it everywhere and the answer is 503, so the old
 * rule stays in force everywhere (ngx_http_ratelimit_rules_store.c).  On
 * success the node drops its cached rules and denials at once; other edge
 * nodes see the rules version move at their next poll.
 *
 * The customer id of GET and DELETE is the rest of the URI as the client
 * sent it, percent-decoded, not nginx's normalised $uri: "a//b", "./a" and
 * "a/../b" name the customers of those ids, like the ids PUT stores.
 * "/usage" as sent is the usage of a caller; the rule of a customer whose
 * id is "usage" is reached as "/%75sage".
 *
 * The list comes from the first live shard, a page at a time in the byte
 * order of the rules' fields (lua/rules_list.lua); the cursor is the last
 * field of the page before, in hex.  The usage of a caller is read from
 * its key's shard by the check script itself at cost 0 (so it is exactly
 * what a request would be told, and takes nothing); its reset deletes the
 * caller's counts of both algorithms, and moves the rules version so that
 * every edge node drops the denials it cached.
 */


#include "ngx_http_ratelimit_admin.h"
#include "ngx_http_ratelimit_rules_store.h"
#include "ngx_http_ratelimit_handler.h"
#include "ngx_http_ratelimit_batch.h"
#include "rl_rule.h"
#include "rl_reply.h"
#include "ngx_http_ratelimit_scripts.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <yajl/yajl_gen.h>


#define NGX_HTTP_RATELIMIT_ADMIN_TIMEOUT  1000


/* how much of an unknown query argument's name an answer quotes */
#define NGX_HTTP_RATELIMIT_ADMIN_ARG_QUOTED  40

/* a page of the rules list */
#define NGX_HTTP_RATELIMIT_ADMIN_PAGE        100
#define NGX_HTTP_RATELIMIT_ADMIN_MAX_PAGE    1000

/* the longest caller key the usage takes (a header's value, typically) */
#define NGX_HTTP_RATELIMIT_ADMIN_MAX_KEY     4096


/* turns how the store's operation ended into the answer, sent */
typedef ngx_int_t (*ngx_http_ratelimit_admin_answer_pt)(ngx_http_request_t *r,
    ngx_int_t outcome, rl_limit_t *rule);


/* the same for a command of the endpoint's own: the shard's reply */
typedef ngx_int_t (*ngx_http_ratelimit_admin_reply_pt)(ngx_http_request_t *r,
    ngx_int_t outcome, redisReply *reply);


/* a query argument the request may give: value.data NULL when not given */
typedef struct {
    const char                          *name;
    ngx_str_t                            value;
} ngx_http_ratelimit_admin_arg_t;


typedef struct {
    ngx_http_request_t                  *request;
    rl_rule_t                            rule;      /* the id; PUT: the rule */
    ngx_http_ratelimit_rules_op_t       *op;        /* the store's, if any */
    ngx_http_ratelimit_admin_answer_pt   answer;
    ngx_http_ratelimit_admin_reply_pt    reply_answer;

    /* the usage of a caller */
    ngx_http_ratelimit_policy_t         *policy;
    ngx_str_t                           *source;    /* a key's name */
    ngx_str_t                            key;       /* the caller's value */
    ngx_str_t                            customer;
    ngx_str_t                            redis_key;
    ngx_str_t                           *shard_name;
    ngx_uint_t                           shard;
    ngx_str_t                            sw_key;    /* reset: the other */
    ngx_str_t                           *sw_shard_name;
    ngx_uint_t                           sw_shard;
    long long                            deleted;
    rl_check_result_t                    read;      /* the rule read */
    unsigned                             resent:1;  /* reset: second key */
    unsigned                             waiting:1;
} ngx_http_ratelimit_admin_ctx_t;


static ngx_int_t ngx_http_ratelimit_admin_authorized(ngx_http_request_t *r,
    ngx_http_ratelimit_loc_conf_t *rlcf);
static ngx_int_t ngx_http_ratelimit_admin_path(ngx_http_request_t *r,
    ngx_str_t *base, ngx_str_t *path, ngx_uint_t *usage);
static ngx_int_t ngx_http_ratelimit_admin_list(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_admin_indexing(ngx_http_request_t *r,
    long long indexed, long long fields);
static ngx_int_t ngx_http_ratelimit_admin_listed(ngx_http_request_t *r,
    ngx_int_t outcome, redisReply *reply);
static ngx_int_t ngx_http_ratelimit_admin_list_rule(yajl_gen g,
    redisReply *field, redisReply *value);
static ngx_int_t ngx_http_ratelimit_admin_usage(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_admin_usage_read(ngx_http_request_t *r,
    ngx_uint_t algorithm, ngx_uint_t limit, ngx_uint_t window,
    ngx_uint_t rules);
static ngx_int_t ngx_http_ratelimit_admin_usage_got(ngx_http_request_t *r,
    ngx_int_t outcome, redisReply *reply);
static ngx_int_t ngx_http_ratelimit_admin_usage_reset(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_admin_usage_gone(ngx_http_request_t *r,
    ngx_int_t outcome, redisReply *reply);
static ngx_int_t ngx_http_ratelimit_admin_call(ngx_http_request_t *r,
    ngx_str_t *what, ngx_str_t *route, ngx_uint_t shard, ngx_uint_t argc,
    const char **argv, size_t *argvlen,
    ngx_http_ratelimit_admin_reply_pt answer);
static void ngx_http_ratelimit_admin_replied(void *data, ngx_int_t outcome,
    redisReply *reply);
static ngx_int_t ngx_http_ratelimit_admin_args(ngx_http_request_t *r,
    ngx_http_ratelimit_admin_arg_t *args, ngx_uint_t n, const char *expected,
    rl_rule_error_t *err);
static ngx_int_t ngx_http_ratelimit_admin_send_gen(ngx_http_request_t *r,
    yajl_gen g);
static ngx_int_t ngx_http_ratelimit_gen_hex(ngx_http_request_t *r,
    yajl_gen g, const char *name, u_char *value, size_t len);
static u_char *ngx_http_ratelimit_admin_escape(ngx_http_request_t *r,
    ngx_str_t *s);
static ngx_int_t ngx_http_ratelimit_admin_put(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_admin_get(ngx_http_request_t *r,
    ngx_str_t *id);
static ngx_int_t ngx_http_ratelimit_admin_delete(ngx_http_request_t *r,
    ngx_str_t *id);
static ngx_int_t ngx_http_ratelimit_admin_not_allowed(ngx_http_request_t *r,
    char *allow, const char *message);
static ngx_table_elt_t *ngx_http_ratelimit_admin_header(ngx_http_request_t *r,
    char *name, char *value);
static ngx_uint_t ngx_http_ratelimit_admin_json_type(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_admin_customer(ngx_http_request_t *r,
    ngx_str_t *id, rl_rule_error_t *err);
static ngx_int_t ngx_http_ratelimit_admin_query(ngx_http_request_t *r,
    ngx_str_t *policy, rl_rule_error_t *err);
static ngx_int_t ngx_http_ratelimit_admin_unescape(ngx_http_request_t *r,
    u_char *start, u_char *end, ngx_str_t *out);
static ngx_int_t ngx_http_ratelimit_admin_unknown_arg(ngx_http_request_t *r,
    ngx_str_t *name, const char *expected, rl_rule_error_t *err);
static ngx_int_t ngx_http_ratelimit_admin_policy(ngx_http_request_t *r,
    u_char *name, size_t len, rl_rule_error_t *err);
static ngx_int_t ngx_http_ratelimit_admin_fail(rl_rule_error_t *err,
    const char *field, const char *fmt, ...);
static void ngx_http_ratelimit_admin_field(rl_rule_t *rule, u_char *field,
    ngx_str_t *out);
static void ngx_http_ratelimit_admin_put_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_ratelimit_admin_read_body(ngx_http_request_t *r,
    u_char *buf, size_t *len);
static ngx_int_t ngx_http_ratelimit_admin_change(ngx_http_request_t *r,
    rl_rule_t *rule);
static ngx_int_t ngx_http_ratelimit_admin_wait(ngx_http_request_t *r,
    ngx_int_t rc);
static void ngx_http_ratelimit_admin_done(void *data, ngx_int_t outcome,
    rl_limit_t *rule);
static ngx_int_t ngx_http_ratelimit_admin_changed(ngx_http_request_t *r,
    ngx_int_t outcome, rl_limit_t *before);
static ngx_int_t ngx_http_ratelimit_admin_got(ngx_http_request_t *r,
    ngx_int_t outcome, rl_limit_t *rule);
static void ngx_http_ratelimit_admin_rule_shown(
    rl_limit_t *rule, rl_rule_t *shown);
static ngx_int_t ngx_http_ratelimit_admin_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *body);
static ngx_int_t ngx_http_ratelimit_admin_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *field, const char *message);
static ngx_int_t ngx_http_ratelimit_admin_send_rule(ngx_http_request_t *r,
    rl_rule_t *rule);
static ngx_int_t ngx_http_ratelimit_admin_send_deleted(ngx_http_request_t *r,
    rl_rule_t *rule, ngx_uint_t existed);
static void ngx_http_ratelimit_admin_cleanup(void *data);


#define ngx_http_ratelimit_admin_zone(r)                                      \
    ((ngx_http_ratelimit_zone_t *)                                            \
     ((ngx_http_ratelimit_main_conf_t *)                                      \
      ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module))            \
     ->shm_zone->data)

/* "key": "value" and "key": number into a generator */
#define ngx_http_ratelimit_gen_str(g, k, v, n)                                \
    (yajl_gen_string(g, (const unsigned char *) k, sizeof(k) - 1)             \
     == yajl_gen_status_ok                                                    \
     && yajl_gen_string(g, (const unsigned char *) v, n)                      \
        == yajl_gen_status_ok)

/*
 * "key": "value" when the caller's bytes are UTF-8; else "key_hex": their
 * hex, as JSON strings hold nothing else
 */
#define ngx_http_ratelimit_gen_bytes(r, g, k, v, n)                           \
    (rl_rule_valid_utf8(v, n)                                                 \
     ? ngx_http_ratelimit_gen_str(g, k, v, n)                                 \
     : ngx_http_ratelimit_gen_hex(r, g, k "_hex", v, n))

#define ngx_http_ratelimit_gen_int(g, k, v)                                   \
    (yajl_gen_string(g, (const unsigned char *) k, sizeof(k) - 1)             \
     == yajl_gen_status_ok                                                    \
     && yajl_gen_integer(g, v) == yajl_gen_status_ok)


/* the key admin tokens are compared under, drawn by each worker */
static u_char      ngx_http_ratelimit_admin_key[32];
static ngx_uint_t  ngx_http_ratelimit_admin_keyed;


ngx_int_t
ngx_http_ratelimit_admin_handler(ngx_http_request_t *r)
{
    ngx_str_t                        base, rest;
    ngx_uint_t                       usage;
    ngx_table_elt_t                 *h;
    ngx_pool_cleanup_t              *cln;
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_ratelimit_admin_ctx_t  *ctx;
    ngx_http_ratelimit_loc_conf_t   *rlcf;

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module);

    if (!ngx_http_ratelimit_admin_authorized(r, rlcf)) {
        h = ngx_http_ratelimit_admin_header(r, "WWW-Authenticate",
                                            "Bearer realm=\"ratelimit\"");
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        r->headers_out.www_authenticate = h;

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

    if (ngx_http_ratelimit_admin_path(r, &base, &rest, &usage) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rest.len && rest.data[0] != '/') {
        ngx_http_discard_request_body(r);
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_FOUND, NULL,
                                              "no such admin resource");
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_ratelimit_admin_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the store's operation must not outlive the request */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_ratelimit_admin_cleanup;
    cln->data = ctx;

    ctx->request = r;
    ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_module);

    if (rest.len == 0) {

        if (r->method == NGX_HTTP_PUT) {
            return ngx_http_ratelimit_admin_put(r);
        }

        if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
            return ngx_http_ratelimit_admin_list(r);
        }

        return ngx_http_ratelimit_admin_not_allowed(r, "GET, HEAD, PUT",
                   "the collection takes GET (the list) and PUT; a "
                   "customer's rule takes GET and DELETE");
    }

    if (usage) {

        if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_DELETE)) {
            return ngx_http_ratelimit_admin_usage(r);
        }

        return ngx_http_ratelimit_admin_not_allowed(r, "GET, HEAD, DELETE",
                   "a caller's usage takes GET (read) and DELETE (reset)");
    }

    rest.data++;
    rest.len--;

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
        return ngx_http_ratelimit_admin_get(r, &rest);
    }

    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_ratelimit_admin_delete(r, &rest);
    }

    return ngx_http_ratelimit_admin_not_allowed(r, "GET, HEAD, DELETE",
               "a customer's rule takes GET and DELETE; "
               "PUT goes to the collection");
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
    ngx_str_t *path, ngx_uint_t *usage)
{
    u_char     *src, *dst;
    ngx_str_t   raw, decoded;

    *path = r->uri;
    *usage = 2;         /* not known yet */

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

            /* "/usage" as sent, not "/%75sage" */

            *usage = raw.len >= 6
                     && ngx_strncmp(raw.data + raw.len - 6, "/usage", 6) == 0
                     && decoded.len == base->len + 6;
        }
    }

    if (path->len >= base->len
        && ngx_strncmp(path->data, base->data, base->len) == 0)
    {
        path->data += base->len;
        path->len -= base->len;
    }

    if (*usage == 2) {
        *usage = path->len == 6 && ngx_strncmp(path->data, "/usage", 6) == 0;
    }

    return NGX_OK;
}

/* PUT <location>: the rule comes in the body, read before it is stored */

static ngx_int_t
ngx_http_ratelimit_admin_put(ngx_http_request_t *r)
{
    ngx_int_t        rc;
    rl_rule_error_t  err;

    rc = ngx_http_ratelimit_admin_query(r, NULL, &err);

    if (rc != NGX_OK) {
        ngx_http_discard_request_body(r);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              err.field, err.message);
    }

    if (!ngx_http_ratelimit_admin_json_type(r)) {
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
                                           ngx_http_ratelimit_admin_put_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* GET <location>/<customer id>: the rule in force, from a live shard */

static ngx_int_t
ngx_http_ratelimit_admin_get(ngx_http_request_t *r, ngx_str_t *id)
{
    ngx_int_t                        rc;
    ngx_str_t                        field;
    rl_rule_error_t                  err;
    ngx_http_ratelimit_admin_ctx_t  *ctx;
    ngx_http_ratelimit_main_conf_t  *rmcf;
    u_char                           buf[NGX_HTTP_RATELIMIT_MAX_RULE_FIELD];

    rc = ngx_http_ratelimit_admin_customer(r, id, &err);

    if (rc == NGX_DECLINED) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              err.field, err.message);
    }

    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);

    ctx->answer = ngx_http_ratelimit_admin_got;

    ngx_http_ratelimit_admin_field(&ctx->rule, buf, &field);

    rc = ngx_http_ratelimit_rules_store_read(rmcf->shm_zone->data, r->pool,
                                             r->connection->log, &field,
                                             NGX_HTTP_RATELIMIT_ADMIN_TIMEOUT,
                                             ngx_http_ratelimit_admin_done,
                                             ctx, &ctx->op);

    return ngx_http_ratelimit_admin_wait(r, rc);
}


/* DELETE <location>/<customer id>: the location's default applies again */

static ngx_int_t
ngx_http_ratelimit_admin_delete(ngx_http_request_t *r, ngx_str_t *id)
{
    ngx_int_t        rc;
    rl_rule_error_t  err;

    rc = ngx_http_ratelimit_admin_customer(r, id, &err);

    if (rc == NGX_DECLINED) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              err.field, err.message);
    }

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_ratelimit_admin_change(r, NULL);
}


static ngx_int_t
ngx_http_ratelimit_admin_not_allowed(ngx_http_request_t *r, char *allow,
    const char *message)
{
    ngx_http_discard_request_body(r);

    if (ngx_http_ratelimit_admin_header(r, "Allow", allow) == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_ALLOWED, NULL,
                                          message);
}


static ngx_table_elt_t *
ngx_http_ratelimit_admin_header(ngx_http_request_t *r, char *name,
    char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NULL;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);

    return h;
}


/* "application/json", alone or with parameters */

static ngx_uint_t
ngx_http_ratelimit_admin_json_type(ngx_http_request_t *r)
{
    size_t      n;
    ngx_str_t  *type;

    if (r->headers_in.content_type == NULL) {
        return 0;
    }

    type = &r->headers_in.content_type->value;
    n = sizeof("application/json") - 1;

    return type->len >= n
           && ngx_strncasecmp(type->data, (u_char *) "application/json", n)
              == 0
           && (type->len == n || type->data[n] == ';' || type->data[n] == ' ');
}


/*
 * The customer id and the policy ("?policy=", or none) of GET and DELETE,
 * kept in the request's ctx: NGX_OK; NGX_DECLINED and *err, for the caller
 * to answer 400 with (an answer sent here would let the caller go on as if
 * the request were good); or the status to finalize the request with.
 */

static ngx_int_t
ngx_http_ratelimit_admin_customer(ngx_http_request_t *r, ngx_str_t *id,
    rl_rule_error_t *err)
{
    ngx_int_t                        rc;
    ngx_str_t                        policy;
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (rl_rule_check_customer_id(id->data, id->len, err) != 0) {
        return NGX_DECLINED;
    }

    rc = ngx_http_ratelimit_admin_query(r, &policy, err);

    if (rc == NGX_OK && policy.data) {
        rc = ngx_http_ratelimit_admin_policy(r, policy.data, policy.len, err);
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    ngx_memcpy(ctx->rule.customer_id, id->data, id->len);
    ctx->rule.customer_id_len = id->len;

    /* a valid name: 1 to RL_RULE_MAX_POLICY bytes */

    if (policy.data) {
        ngx_memcpy(ctx->rule.policy, policy.data, policy.len);
        ctx->rule.policy_len = policy.len;
    }

    return NGX_OK;
}


/*
 * The query: "policy=<name>" when policy is not NULL (GET, DELETE), else
 * nothing (PUT).  Names and values are percent-decoded; empty parts ("&&")
 * are skipped.  NGX_OK and *policy (data NULL: not given; the name is not
 * checked here); NGX_DECLINED and *err; NGX_ERROR.
 */

static ngx_int_t
ngx_http_ratelimit_admin_query(ngx_http_request_t *r, ngx_str_t *policy,
    rl_rule_error_t *err)
{
    ngx_int_t                       rc;
    ngx_http_ratelimit_admin_arg_t  args[1];

    args[0].name = "policy";

    rc = ngx_http_ratelimit_admin_args(r, args, 1,
                                       policy ? "(expected \"policy\")"
                                              : "(PUT takes none)", err);
    if (rc != NGX_OK) {
        return rc;
    }

    if (policy) {
        *policy = args[0].value;

    } else if (args[0].value.data) {
        return ngx_http_ratelimit_admin_fail(err, "policy",
                   "PUT takes the policy in the body, not in the query");
    }

    return NGX_OK;
}


/* the bytes from start to end, percent-decoded and NUL-terminated */

static ngx_int_t
ngx_http_ratelimit_admin_unescape(ngx_http_request_t *r, u_char *start,
    u_char *end, ngx_str_t *out)
{
    u_char  *dst;

    out->data = ngx_pnalloc(r->pool, end - start + 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    dst = out->data;
    ngx_unescape_uri(&dst, &start, end - start, 0);
    *dst = '\0';

    out->len = dst - out->data;

    return NGX_OK;
}


/*
 * An unknown argument is named in the answer, as the "field" at fault too:
 * its first bytes, every one but printable ASCII shown as "?", so the
 * answer stays one line of valid UTF-8.
 */

static ngx_int_t
ngx_http_ratelimit_admin_unknown_arg(ngx_http_request_t *r, ngx_str_t *name,
    const char *expected, rl_rule_error_t *err)
{
    size_t   i, n;
    u_char  *quoted;

    n = ngx_min(name->len, NGX_HTTP_RATELIMIT_ADMIN_ARG_QUOTED);

    quoted = ngx_pnalloc(r->pool, n + 1);
    if (quoted == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        quoted[i] = (name->data[i] >= 0x20 && name->data[i] < 0x7f)
                    ? name->data[i] : '?';
    }

    quoted[n] = '\0';

    return ngx_http_ratelimit_admin_fail(err, (const char *) quoted,
                                         "unknown argument \"%s%s\" %s",
                                         quoted, n < name->len ? "..." : "",
                                         expected);
}


/*
 * A policy named by a request: a valid name, and that of a
 * "ratelimit_policy" of this nginx.  NGX_OK, or NGX_DECLINED and *err.
 */

static ngx_int_t
ngx_http_ratelimit_admin_policy(ngx_http_request_t *r, u_char *name,
    size_t len, rl_rule_error_t *err)
{
    ngx_str_t                        s;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    if (rl_rule_check_policy_name(name, len, err) != 0) {
        return NGX_DECLINED;
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);

    s.data = name;
    s.len = len;

    if (ngx_http_ratelimit_policy_find(rmcf, &s) == NULL) {
        return ngx_http_ratelimit_admin_fail(err, "policy",
                   "unknown policy \"%V\": no \"ratelimit_policy\" of that"
                   " name in this nginx's http block", &s);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_admin_fail(rl_rule_error_t *err, const char *field,
    const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    err->field = field;

    va_start(args, fmt);
    p = ngx_vslprintf((u_char *) err->message,
                      (u_char *) err->message + sizeof(err->message) - 1,
                      fmt, args);
    va_end(args);

    *p = '\0';

    return NGX_DECLINED;
}


/* the rule's field in the rules hash: "<customer>[\x1f<policy>]" */

static void
ngx_http_ratelimit_admin_field(rl_rule_t *rule, u_char *field, ngx_str_t *out)
{
    ngx_str_t  customer, policy;

    customer.data = rule->customer_id;
    customer.len = rule->customer_id_len;
    policy.data = rule->policy;
    policy.len = rule->policy_len;

    out->data = field;
    out->len = ngx_http_ratelimit_rules_field(field, &customer, &policy);
}


static void
ngx_http_ratelimit_admin_put_body(ngx_http_request_t *r)
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

    if (rl_rule_parse_json((const char *) body, len, &ctx->rule, &err) != 0
        || rl_rule_check_expiry(&ctx->rule, ngx_time(), &err) != 0
        || (ctx->rule.policy_len
            && ngx_http_ratelimit_admin_policy(r, ctx->rule.policy,
                                               ctx->rule.policy_len, &err)
               != NGX_OK))
    {
        ngx_http_finalize_request(r, ngx_http_ratelimit_admin_error(r,
                                    NGX_HTTP_BAD_REQUEST, err.field,
                                    err.message));
        return;
    }

    ngx_http_finalize_request(r, ngx_http_ratelimit_admin_change(r,
                                                                 &ctx->rule));
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


/* PUT and DELETE: the rule, or NULL to delete it, goes to every shard */

static ngx_int_t
ngx_http_ratelimit_admin_change(ngx_http_request_t *r, rl_rule_t *rule)
{
    ngx_int_t                        rc;
    ngx_str_t                        field;
    ngx_http_ratelimit_admin_ctx_t  *ctx;
    ngx_http_ratelimit_main_conf_t  *rmcf;
    u_char                           buf[NGX_HTTP_RATELIMIT_MAX_RULE_FIELD];

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);
    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);

    ctx->answer = ngx_http_ratelimit_admin_changed;

    /* the store keeps its own copy of the field */

    ngx_http_ratelimit_admin_field(&ctx->rule, buf, &field);

    rc = ngx_http_ratelimit_rules_store_write(rmcf->shm_zone->data, r->pool,
                                              r->connection->log, &field, rule,
                                              NGX_HTTP_RATELIMIT_ADMIN_TIMEOUT,
                                              ngx_http_ratelimit_admin_done,
                                              ctx, &ctx->op);

    return ngx_http_ratelimit_admin_wait(r, rc);
}


/*
 * What the store said at once: under way (the request waits for the
 * answer), an outcome to answer now, or out of memory.
 */

static ngx_int_t
ngx_http_ratelimit_admin_wait(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    if (rc == NGX_AGAIN) {
        r->main->count++;
        return NGX_DONE;
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    return ctx->answer(r, rc, NULL);
}


static void
ngx_http_ratelimit_admin_done(void *data, ngx_int_t outcome,
    rl_limit_t *rule)
{
    ngx_http_ratelimit_admin_ctx_t *ctx = data;

    ngx_http_finalize_request(ctx->request,
                              ctx->answer(ctx->request, outcome, rule));
}


/* the answer to PUT and DELETE; "before": the rule the change replaced */

static ngx_int_t
ngx_http_ratelimit_admin_changed(ngx_http_request_t *r, ngx_int_t outcome,
    rl_limit_t *before)
{
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    switch (outcome) {

    case NGX_HTTP_RATELIMIT_RULES_OK:
        break;

    case NGX_HTTP_RATELIMIT_RULES_OUTDATED:
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_CONFLICT,
                    "customer_id", "a newer change of this customer was "
                                   "stored at the same time");

    case NGX_HTTP_RATELIMIT_RULES_DOWN:
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, "a shard is down: the rule was not changed");

    case NGX_HTTP_RATELIMIT_RULES_UNSENT:
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, "no shard could take the change: "
                          "the rule was not changed");

    default:
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, "a shard could not take the change: "
                          "the rule was not changed");
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    /* an expired rule was no rule, as GET and the list say */

    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_ratelimit_admin_send_deleted(r, &ctx->rule,
                   before != NULL
                   && (before->expires == 0 || before->expires > ngx_time()));
    }

    return ngx_http_ratelimit_admin_send_rule(r, &ctx->rule);
}


/* the answer to GET */

static ngx_int_t
ngx_http_ratelimit_admin_got(ngx_http_request_t *r, ngx_int_t outcome,
    rl_limit_t *rule)
{
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    switch (outcome) {

    case NGX_HTTP_RATELIMIT_RULES_OK:
        break;

    case NGX_HTTP_RATELIMIT_RULES_UNSENT:
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                              NULL, "no shard could be asked");

    default:
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                              NULL, "no shard answered");
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    if (rule == NULL && ctx->rule.policy_len) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_FOUND,
                                   "policy",
                                   "this customer has no rule for this "
                                   "policy: its rule for every policy "
                                   "applies, or else the policy's limit");
    }

    if (rule == NULL) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_FOUND,
                                   "customer_id",
                                   "this customer has no rule: the location's "
                                   "default applies");
    }

    /* an expired rule is no rule: every check has ignored it since */

    if (rule->expires && rule->expires <= ngx_time()) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_NOT_FOUND,
                                   ctx->rule.policy_len ? "policy"
                                                        : "customer_id",
                                   ctx->rule.policy_len
                                   ? "this customer's rule for this policy "
                                     "has expired: its rule for every "
                                     "policy applies, or else the policy's "
                                     "limit"
                                   : "this customer's rule has expired: the "
                                     "location's default applies");
    }

    ngx_http_ratelimit_admin_rule_shown(rule, &ctx->rule);

    return ngx_http_ratelimit_admin_send_rule(r, &ctx->rule);
}


/* the rule in force as the JSON answers show it (the id is left as it is) */

static void
ngx_http_ratelimit_admin_rule_shown(rl_limit_t *rule, rl_rule_t *shown)
{
    shown->limit = rule->limit;
    shown->window = rule->window;
    shown->algorithm = rule->algorithm;
    shown->expires_at = rule->expires;
}



static ngx_int_t
ngx_http_ratelimit_admin_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_buf_t  *b;

    static ngx_str_t  type = ngx_string("application/json");

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;

    return ngx_http_ratelimit_send(r, status, &type, type.len, b);
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
ngx_http_ratelimit_admin_send_rule(ngx_http_request_t *r, rl_rule_t *rule)
{
    size_t     size;
    ngx_str_t  body;

    /*
     * A customer id of control-free bytes escapes to at most 6 times it; a
     * policy name needs no escapes.
     */

    size = 6 * RL_RULE_MAX_CUSTOMER_ID + RL_RULE_MAX_POLICY + 256;

    body.data = ngx_pnalloc(r->pool, size);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body.len = rl_rule_to_json(rule, (char *) body.data, size);
    if (body.len == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_admin_send(r, NGX_HTTP_OK, &body);
}


/*
 * {"customer_id":"acme","deleted":true}: false when it had no rule;
 * "policy":"burst" after the id for the rule of a policy
 */

static ngx_int_t
ngx_http_ratelimit_admin_send_deleted(ngx_http_request_t *r, rl_rule_t *rule,
    ngx_uint_t existed)
{
    size_t                len;
    yajl_gen              g;
    ngx_str_t             body;
    const unsigned char  *buf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body.data = NULL;

    if (yajl_gen_map_open(g) == yajl_gen_status_ok
        && yajl_gen_string(g, (const unsigned char *) "customer_id", 11)
           == yajl_gen_status_ok
        && yajl_gen_string(g, rule->customer_id, rule->customer_id_len)
           == yajl_gen_status_ok
        && (rule->policy_len == 0
            || (yajl_gen_string(g, (const unsigned char *) "policy", 6)
                == yajl_gen_status_ok
                && yajl_gen_string(g, rule->policy, rule->policy_len)
                   == yajl_gen_status_ok))
        && yajl_gen_string(g, (const unsigned char *) "deleted", 7)
           == yajl_gen_status_ok
        && yajl_gen_bool(g, existed) == yajl_gen_status_ok
        && yajl_gen_map_close(g) == yajl_gen_status_ok
        && yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok)
    {
        body.data = ngx_pnalloc(r->pool, len + 1);

        if (body.data) {
            ngx_memcpy(body.data, buf, len);
            body.data[len] = '\n';
            body.len = len + 1;
        }
    }

    yajl_gen_free(g);

    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_admin_send(r, NGX_HTTP_OK, &body);
}


static void
ngx_http_ratelimit_admin_cleanup(void *data)
{
    ngx_http_ratelimit_admin_ctx_t *ctx = data;

    if (ctx->op) {
        ngx_http_ratelimit_rules_store_cancel(ctx->op);
    }
}


/*
 * GET <location>: a page of the rules in force, from the first live shard,
 * {"rules": [...], "next_cursor": "<hex>" or null at the end}.
 */

static ngx_int_t
ngx_http_ratelimit_admin_list(ngx_http_request_t *r)
{
    u_char                          *p, *after;
    size_t                           argvlen[7], i, n;
    ngx_int_t                        rc, size;
    ngx_str_t                        what, route, *cursor;
    const char                      *argv[7];
    rl_rule_error_t                  err;
    ngx_http_ratelimit_admin_arg_t   args[2];

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    args[0].name = "limit";
    args[1].name = "cursor";

    rc = ngx_http_ratelimit_admin_args(r, args, 2,
                                       "(expected \"limit\" and \"cursor\")",
                                       &err);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              err.field, err.message);
    }

    size = NGX_HTTP_RATELIMIT_ADMIN_PAGE;

    if (args[0].value.data) {
        size = ngx_atoi(args[0].value.data, args[0].value.len);

        if (size < 1 || size > NGX_HTTP_RATELIMIT_ADMIN_MAX_PAGE) {
            return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                       "limit", "limit must be a whole number from 1 to 1000"
                                " (rules per page)");
        }
    }

    /* the cursor: the last field of the page before, in hex */

    cursor = &args[1].value;
    n = cursor->data ? cursor->len / 2 : 0;

    after = ngx_pnalloc(r->pool, n + 1);
    if (after == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (cursor->data
        && (cursor->len % 2 != 0
            || n > NGX_HTTP_RATELIMIT_MAX_RULE_FIELD))
    {
        goto bad_cursor;
    }

    for (i = 0; i < n; i++) {
        rc = ngx_hextoi(cursor->data + 2 * i, 2);
        if (rc == NGX_ERROR) {
            goto bad_cursor;
        }

        after[i] = (u_char) rc;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_ratelimit_rules_eval(argv, argvlen,
                      ngx_http_ratelimit_rules_script(
                          NGX_HTTP_RATELIMIT_LUA_RULES_LIST));

    argv[5] = (const char *) after;
    argvlen[5] = n;
    argv[6] = (const char *) p;
    argvlen[6] = ngx_sprintf(p, "%i", size) - p;

    ngx_str_set(&what, "(the rules list)");
    ngx_str_set(&route, NGX_HTTP_RATELIMIT_RULES_KEY);

    return ngx_http_ratelimit_admin_call(r, &what, &route, 0, 7, argv,
                                         argvlen,
                                         ngx_http_ratelimit_admin_listed);

bad_cursor:

    return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST, "cursor",
               "cursor must be the \"next_cursor\" of a page before, as it "
               "was given");
}


static ngx_int_t
ngx_http_ratelimit_admin_listed(ngx_http_request_t *r, ngx_int_t outcome,
    redisReply *reply)
{
    u_char      *p;
    size_t       i;
    yajl_gen     g;
    ngx_int_t    rc;
    redisReply  *last;

    if (outcome != NGX_HTTP_RATELIMIT_RULES_OK) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                              NULL, "no shard answered");
    }

    /* {-1, indexed, fields}: the shard is making its index again */

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3
        && reply->element[0]->type == REDIS_REPLY_INTEGER
        && reply->element[0]->integer == -1
        && reply->element[1]->type == REDIS_REPLY_INTEGER
        && reply->element[2]->type == REDIS_REPLY_INTEGER)
    {
        return ngx_http_ratelimit_admin_indexing(r,
                                                 reply->element[1]->integer,
                                                 reply->element[2]->integer);
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2
        || reply->elements % 2 != 0
        || reply->element[0]->type != REDIS_REPLY_INTEGER)
    {
        goto unusable;
    }

    for (i = 1; i < reply->elements; i++) {
        if (reply->element[i]->type != REDIS_REPLY_STRING) {
            goto unusable;
        }
    }

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    rc = NGX_OK;

    if (yajl_gen_map_open(g) != yajl_gen_status_ok
        || yajl_gen_string(g, (const unsigned char *) "rules", 5)
           != yajl_gen_status_ok
        || yajl_gen_array_open(g) != yajl_gen_status_ok)
    {
        rc = NGX_ERROR;
    }

    for (i = 2; rc == NGX_OK && i < reply->elements; i += 2) {
        rc = ngx_http_ratelimit_admin_list_rule(g, reply->element[i],
                                                reply->element[i + 1]);
    }

    last = reply->element[1];

    if (rc == NGX_OK
        && (yajl_gen_array_close(g) != yajl_gen_status_ok
            || yajl_gen_string(g, (const unsigned char *) "next_cursor", 11)
               != yajl_gen_status_ok))
    {
        rc = NGX_ERROR;
    }

    if (rc == NGX_OK) {
        if (reply->element[0]->integer && last->len) {
            p = ngx_pnalloc(r->pool, 2 * last->len);
            if (p == NULL
                || yajl_gen_string(g, p,
                                   ngx_hex_dump(p, (u_char *) last->str,
                                                last->len) - p)
                   != yajl_gen_status_ok)
            {
                rc = NGX_ERROR;
            }

        } else if (yajl_gen_null(g) != yajl_gen_status_ok) {
            rc = NGX_ERROR;
        }
    }

    if (rc == NGX_OK && yajl_gen_map_close(g) != yajl_gen_status_ok) {
        rc = NGX_ERROR;
    }

    if (rc != NGX_OK) {
        yajl_gen_free(g);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_admin_send_gen(r, g);

unusable:

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "ratelimit: a shard answered the rules list unusably");

    return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                          NULL, "a shard answered the list "
                                                "unusably");
}


/*
 * One rule of the list: "<customer>[\x1f<policy>]" and its stored value.
 * What no PUT could have stored (a field edited by hand, a garbled value)
 * is left out rather than shown as something it is not.
 */

/*
 * 503 with Retry-After: the shard the list is read from is making its
 * index of the rules again, a step per call (lua/rules_list.lua).
 */

static ngx_int_t
ngx_http_ratelimit_admin_indexing(ngx_http_request_t *r, long long indexed,
    long long fields)
{
    u_char  *message;

    message = ngx_pnalloc(r->pool, 128 + 2 * NGX_INT64_LEN);
    if (message == NULL
        || ngx_http_ratelimit_admin_header(r, "Retry-After", "1") == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_sprintf(message, "the shard is making its index of the rules "
                       "again (%L of %L fields), retry%Z", indexed, fields);

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ratelimit: %s", message);

    return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                          NULL, (const char *) message);
}


static ngx_int_t
ngx_http_ratelimit_admin_list_rule(yajl_gen g, redisReply *field,
    redisReply *value)
{
    u_char      *sep;
    size_t       id_len;
    rl_limit_t   limit;
    rl_rule_t    rule;

    if (ngx_http_ratelimit_rule_parse((u_char *) value->str, value->len,
                                      &limit, NULL)
        != NGX_OK)
    {
        return NGX_OK;
    }

    sep = ngx_strlchr((u_char *) field->str, (u_char *) field->str + field->len,
                      NGX_HTTP_RATELIMIT_RULE_SEPARATOR);

    id_len = sep ? (size_t) (sep - (u_char *) field->str) : field->len;

    if (rl_rule_check_customer_id((u_char *) field->str, id_len, NULL) != 0
        || (sep && rl_rule_check_policy_name(sep + 1,
                                             field->len - id_len - 1, NULL)
                   != 0))
    {
        return NGX_OK;
    }

    ngx_memzero(&rule, sizeof(rl_rule_t));

    ngx_memcpy(rule.customer_id, field->str, id_len);
    rule.customer_id_len = id_len;

    if (sep) {
        rule.policy_len = field->len - id_len - 1;
        ngx_memcpy(rule.policy, sep + 1, rule.policy_len);
    }

    rule.limit = limit.limit;
    rule.window = limit.window;
    rule.algorithm = limit.algorithm;
    rule.expires_at = limit.expires;

    return rl_rule_gen(g, &rule) == 0 ? NGX_OK : NGX_ERROR;
}


/*
 * GET and DELETE <location>/usage?policy=<name>&key=<value>: the caller's
 * count under a named policy, read or reset.  Only named policies: a
 * location's unnamed one ("default") has the limits of its location.
 */

static ngx_int_t
ngx_http_ratelimit_admin_usage(ngx_http_request_t *r)
{
    u_char                          *p, *last;
    ngx_int_t                        rc;
    ngx_str_t                       *names;
    ngx_uint_t                       i;
    rl_rule_error_t                  err;
    ngx_http_ratelimit_policy_t     *policy;
    ngx_http_ratelimit_admin_ctx_t  *ctx;
    ngx_http_ratelimit_admin_arg_t   args[4];
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    args[0].name = "policy";
    args[1].name = "key";
    args[2].name = "source";
    args[3].name = "customer";

    rc = ngx_http_ratelimit_admin_args(r, args, 4,
                                       "(expected \"policy\", \"key\", "
                                       "\"source\" and \"customer\")", &err);

    if (rc == NGX_OK && args[0].value.data == NULL) {
        rc = ngx_http_ratelimit_admin_fail(&err, "policy",
                 "policy is required: the name of a \"ratelimit_policy\"");
    }

    if (rc == NGX_OK) {
        rc = ngx_http_ratelimit_admin_policy(r, args[0].value.data,
                                             args[0].value.len, &err);
    }

    if (rc == NGX_OK
        && (args[1].value.data == NULL || args[1].value.len == 0
            || args[1].value.len > NGX_HTTP_RATELIMIT_ADMIN_MAX_KEY))
    {
        rc = ngx_http_ratelimit_admin_fail(&err, "key",
                 "key is required: the caller's value of the policy's key, "
                 "1 to %d bytes", NGX_HTTP_RATELIMIT_ADMIN_MAX_KEY);
    }

    if (rc == NGX_OK && args[3].value.data
        && (r->method == NGX_HTTP_DELETE || args[3].value.len == 0))
    {
        rc = ngx_http_ratelimit_admin_fail(&err, "customer",
                 r->method == NGX_HTTP_DELETE
                 ? "customer is for reading the usage: a reset deletes the "
                   "caller's counts whatever its rule"
                 : "customer must not be empty (leave it out: the key)");
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                              err.field, err.message);
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);
    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    policy = ngx_http_ratelimit_policy_find(rmcf, &args[0].value);
    names = policy->key_names->elts;

    /* which of the policy's keys the value is: the first by default */

    ctx->source = &names[0];

    if (args[2].value.data) {
        ctx->source = NULL;

        for (i = 0; i < policy->key_names->nelts; i++) {
            if (names[i].len == args[2].value.len
                && ngx_strncmp(names[i].data, args[2].value.data,
                               names[i].len) == 0)
            {
                ctx->source = &names[i];
                break;
            }
        }

        if (ctx->source == NULL) {
            p = (u_char *) err.message;
            last = p + sizeof(err.message) - 1;

            p = ngx_slprintf(p, last, "source must name one of the keys of"
                             " policy \"%V\":", &policy->name);

            for (i = 0; i < policy->key_names->nelts; i++) {
                p = ngx_slprintf(p, last, "%s %V", i ? "," : "", &names[i]);
            }

            *p = '\0';

            return ngx_http_ratelimit_admin_error(r, NGX_HTTP_BAD_REQUEST,
                                                  "source", err.message);
        }
    }

    ctx->policy = policy;
    ctx->key = args[1].value;
    ctx->customer = args[3].value.data ? args[3].value : args[1].value;

    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_ratelimit_admin_usage_reset(r);
    }

    return ngx_http_ratelimit_admin_usage_read(r, policy->algorithm,
                                               policy->limit, policy->window,
                                               1);
}


/*
 * The caller's count as the check script itself tells it at cost 0 and in
 * dry run: decided exactly as a request would be, nothing taken, nothing
 * written.  With "rules", the script reads the customer's rules too; a
 * rule naming the other algorithm sends the check back, and it is read
 * again under that algorithm's key.
 */

static ngx_int_t
ngx_http_ratelimit_admin_usage_read(ngx_http_request_t *r,
    ngx_uint_t algorithm, ngx_uint_t limit, ngx_uint_t window,
    ngx_uint_t rules)
{
    u_char                          *p, *field;
    size_t                           argvlen[14];
    ngx_str_t                        what, policy;
    const char                      *argv[14];
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    static ngx_str_t  script = ngx_string(NGX_HTTP_RATELIMIT_LUA_BOUNDS
                                          NGX_HTTP_RATELIMIT_LUA_CHECK);

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    ctx->redis_key.data = ngx_pnalloc(r->pool,
                                      NGX_HTTP_RATELIMIT_MAX_REDIS_KEY);
    p = ngx_pnalloc(r->pool, 2 * NGX_INT_T_LEN);
    field = ngx_pnalloc(r->pool, NGX_HTTP_RATELIMIT_MAX_RULE_FIELD);

    if (ctx->redis_key.data == NULL || p == NULL || field == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->redis_key.len = ngx_http_ratelimit_redis_key(ctx->redis_key.data,
                                                      algorithm, ctx->policy,
                                                      ctx->source, &ctx->key);

    ctx->shard = ngx_http_ratelimit_rules_store_shard(
                     ngx_http_ratelimit_admin_zone(r), ctx->redis_key.data,
                     ctx->redis_key.len, &ctx->shard_name);

    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = (const char *) script.data;
    argvlen[1] = script.len;
    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (const char *) ctx->redis_key.data;
    argvlen[3] = ctx->redis_key.len;
    argv[4] = "1";                              /* group */
    argvlen[4] = 1;
    argv[5] = "0";                              /* no deadline */
    argvlen[5] = 1;
    argv[6] = algorithm == RL_RULE_ALGORITHM_SLIDING_WINDOW ? "sw" : "tb";
    argvlen[6] = 2;
    argv[7] = (const char *) p;
    argvlen[7] = ngx_sprintf(p, "%ui", limit) - p;
    argv[8] = (const char *) p + argvlen[7];
    argvlen[8] = ngx_sprintf(p + argvlen[7], "%ui", window * 1000)
                 - (p + argvlen[7]);
    argv[9] = "0";                              /* cost 0: takes nothing */
    argvlen[9] = 1;
    argv[10] = "1";                             /* dry run: fails no group */
    argvlen[10] = 1;
    argv[11] = "";
    argvlen[11] = 0;
    argv[12] = "";
    argvlen[12] = 0;

    /* a customer id no rule can have: the policy's own limit */

    if (rules && ctx->customer.len <= RL_RULE_MAX_CUSTOMER_ID) {
        policy = ctx->policy->name;

        argv[11] = (const char *) ctx->customer.data;
        argvlen[11] = ctx->customer.len;
        argv[12] = (const char *) field;
        argvlen[12] = ngx_http_ratelimit_rules_field(field, &ctx->customer,
                                                     &policy);
    }

    ngx_str_set(&what, "(a caller's usage)");

    return ngx_http_ratelimit_admin_call(r, &what, NULL, ctx->shard, 13, argv,
                                         argvlen,
                                         ngx_http_ratelimit_admin_usage_got);
}


static ngx_int_t
ngx_http_ratelimit_admin_usage_got(ngx_http_request_t *r, ngx_int_t outcome,
    redisReply *reply)
{
    u_char                          *key;
    yajl_gen                         g;
    long long                        now, limit, window, used;
    ngx_int_t                        rc;
    const char                      *why, *alg;
    ngx_uint_t                       algorithm;
    rl_check_result_t                res;
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    if (outcome == NGX_HTTP_RATELIMIT_RULES_DOWN) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, "the caller's shard is down: its count is unknown");
    }

    if (outcome != NGX_HTTP_RATELIMIT_RULES_OK) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, "the caller's shard did not answer");
    }

    why = "";

    if (rl_reply_decode_batch(reply, 1, &res, &now, &why) != RL_REPLY_OK
        || res.allowed == RL_CHECK_LATE
        || (res.allowed == RL_CHECK_RESEND && ctx->resent))
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: shard %V answered the usage unusably: %s",
                      ctx->shard_name, why);

        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, "the caller's shard answered unusably");
    }

    if (!ctx->resent) {
        ctx->read = res;
    }

    /* the rule in force: the customer's, else the policy's */

    limit = ctx->policy->limit;
    window = ctx->policy->window;
    algorithm = ctx->policy->algorithm;

    if (ctx->read.rule_limit > 0) {
        limit = ctx->read.rule_limit;
        window = ctx->read.rule_window;

        if (ctx->read.rule_algorithm != RL_RULE_ALGORITHM_NONE) {
            algorithm = ctx->read.rule_algorithm;
        }
    }

    if (res.allowed == RL_CHECK_RESEND) {
        ctx->resent = 1;

        return ngx_http_ratelimit_admin_usage_read(r, algorithm, limit,
                                                   window, 0);
    }

    used = limit - res.remaining;
    if (used < 0) {
        used = 0;
    }

    alg = algorithm == RL_RULE_ALGORITHM_SLIDING_WINDOW ? "sliding_window"
                                                        : "token_bucket";

    key = ngx_http_ratelimit_admin_escape(r, &ctx->key);

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ratelimit: admin read the usage of key \"%s\" (%V) under "
                  "policy \"%V\": %L of %L used, %L remaining",
                  key, ctx->source, &ctx->policy->name, used, limit,
                  res.remaining);

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * The key and the customer are the caller's bytes: yajl escapes the
     * control characters; bytes that are not UTF-8 go as "key_hex" (and
     * "customer_hex", "redis_key_hex"), never into a JSON string.
     */

    rc = yajl_gen_map_open(g) == yajl_gen_status_ok
         && ngx_http_ratelimit_gen_str(g, "policy", ctx->policy->name.data,
                                       ctx->policy->name.len)
         && ngx_http_ratelimit_gen_str(g, "source", ctx->source->data,
                                       ctx->source->len)
         && ngx_http_ratelimit_gen_bytes(r, g, "key", ctx->key.data,
                                         ctx->key.len)
         && ngx_http_ratelimit_gen_bytes(r, g, "customer",
                                         ctx->customer.data,
                                         ctx->customer.len)
         && ngx_http_ratelimit_gen_str(g, "shard", ctx->shard_name->data,
                                       ctx->shard_name->len)
         && ngx_http_ratelimit_gen_bytes(r, g, "redis_key",
                                         ctx->redis_key.data,
                                         ctx->redis_key.len)
         && ngx_http_ratelimit_gen_int(g, "limit", limit)
         && ngx_http_ratelimit_gen_int(g, "window", window)
         && ngx_http_ratelimit_gen_str(g, "algorithm", alg, ngx_strlen(alg))
         && yajl_gen_string(g, (const unsigned char *) "rule", 4)
            == yajl_gen_status_ok
         && yajl_gen_bool(g, ctx->read.rule_limit > 0) == yajl_gen_status_ok
         && ngx_http_ratelimit_gen_int(g, "used", used)
         && ngx_http_ratelimit_gen_int(g, "remaining", res.remaining)
         && ngx_http_ratelimit_gen_int(g, "reset",
                                       rl_reset_seconds(res.reset_ms))
         && ngx_http_ratelimit_gen_int(g, "retry_after",
                                       res.allowed
                                       ? 0
                                       : rl_retry_after_seconds(
                                             res.retry_after_ms))
         && yajl_gen_map_close(g) == yajl_gen_status_ok;

    if (!rc) {
        yajl_gen_free(g);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_admin_send_gen(r, g);
}


/*
 * DELETE: the caller's counts under the policy go, those of both
 * algorithms (a rule may have moved the count to the other one's key),
 * each from its own shard, one after the other; then the rules version
 * moves so that every edge node drops the denials it cached for the
 * caller, this one at once.
 */

static ngx_int_t
ngx_http_ratelimit_admin_usage_reset(ngx_http_request_t *r)
{
    size_t                           argvlen[2];
    ngx_str_t                        what, *key, **name;
    ngx_uint_t                       algorithm, *shard;
    const char                      *argv[2];
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    if (!ctx->resent) {
        algorithm = RL_RULE_ALGORITHM_TOKEN_BUCKET;
        key = &ctx->redis_key;
        shard = &ctx->shard;
        name = &ctx->shard_name;

    } else {
        algorithm = RL_RULE_ALGORITHM_SLIDING_WINDOW;
        key = &ctx->sw_key;
        shard = &ctx->sw_shard;
        name = &ctx->sw_shard_name;
    }

    key->data = ngx_pnalloc(r->pool, NGX_HTTP_RATELIMIT_MAX_REDIS_KEY);
    if (key->data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    key->len = ngx_http_ratelimit_redis_key(key->data, algorithm,
                                            ctx->policy, ctx->source,
                                            &ctx->key);

    *shard = ngx_http_ratelimit_rules_store_shard(
                 ngx_http_ratelimit_admin_zone(r), key->data, key->len, name);

    argv[0] = "DEL";
    argvlen[0] = 3;
    argv[1] = (const char *) key->data;
    argvlen[1] = key->len;

    ngx_str_set(&what, "(a caller's reset)");

    return ngx_http_ratelimit_admin_call(r, &what, NULL, *shard, 2, argv,
                                         argvlen,
                                         ngx_http_ratelimit_admin_usage_gone);
}


static ngx_int_t
ngx_http_ratelimit_admin_usage_gone(ngx_http_request_t *r, ngx_int_t outcome,
    redisReply *reply)
{
    u_char                          *key;
    yajl_gen                         g;
    ngx_int_t                        rc;
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    /* a reset sent but not answered in time may yet be run */

    if (outcome == NGX_HTTP_RATELIMIT_RULES_FAILED) {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, ctx->resent
                          ? "the shard of the caller's sliding window count "
                            "did not answer the reset in time, and may yet "
                            "run it (its token bucket count is reset)"
                          : "the caller's shard did not answer the reset in "
                            "time, and may yet run it");
    }

    if (outcome != NGX_HTTP_RATELIMIT_RULES_OK
        || reply->type != REDIS_REPLY_INTEGER)
    {
        return ngx_http_ratelimit_admin_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                    NULL, ctx->resent
                          ? "the shard of the caller's sliding window count "
                            "could not reset it (its token bucket count is "
                            "reset)"
                          : "the caller's shard could not reset its count");
    }

    ctx->deleted += reply->integer;

    if (!ctx->resent) {
        ctx->resent = 1;
        return ngx_http_ratelimit_admin_usage_reset(r);
    }

    ngx_http_ratelimit_rules_store_touch(ngx_http_ratelimit_admin_zone(r));

    key = ngx_http_ratelimit_admin_escape(r, &ctx->key);

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ratelimit: admin reset the count of key \"%s\" (%V) "
                  "under policy \"%V\" on shards %V and %V (%L keys deleted)",
                  key, ctx->source, &ctx->policy->name, ctx->shard_name,
                  ctx->sw_shard_name, ctx->deleted);

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = yajl_gen_map_open(g) == yajl_gen_status_ok
         && ngx_http_ratelimit_gen_str(g, "policy", ctx->policy->name.data,
                                       ctx->policy->name.len)
         && ngx_http_ratelimit_gen_str(g, "source", ctx->source->data,
                                       ctx->source->len)
         && ngx_http_ratelimit_gen_bytes(r, g, "key", ctx->key.data,
                                         ctx->key.len)
         && yajl_gen_string(g, (const unsigned char *) "reset", 5)
            == yajl_gen_status_ok
         && yajl_gen_bool(g, 1) == yajl_gen_status_ok
         && ngx_http_ratelimit_gen_int(g, "deleted", ctx->deleted)
         && yajl_gen_map_close(g) == yajl_gen_status_ok;

    if (!rc) {
        yajl_gen_free(g);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_admin_send_gen(r, g);
}


/*
 * A command of the endpoint's own: the answer is made once the shard
 * replies, or at once when the store knows the outcome already.
 */

static ngx_int_t
ngx_http_ratelimit_admin_call(ngx_http_request_t *r, ngx_str_t *what,
    ngx_str_t *route, ngx_uint_t shard, ngx_uint_t argc, const char **argv,
    size_t *argvlen, ngx_http_ratelimit_admin_reply_pt answer)
{
    ngx_int_t                        rc;
    ngx_http_ratelimit_admin_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    ctx->reply_answer = answer;
    ctx->op = NULL;

    rc = ngx_http_ratelimit_rules_store_call(ngx_http_ratelimit_admin_zone(r),
                                             r->pool, r->connection->log,
                                             what, route, shard, argc, argv,
                                             argvlen,
                                             NGX_HTTP_RATELIMIT_ADMIN_TIMEOUT,
                                             ngx_http_ratelimit_admin_replied,
                                             ctx, &ctx->op);

    if (rc == NGX_AGAIN) {

        /* a second command of the same request waits as the first did */

        if (!ctx->waiting) {
            ctx->waiting = 1;
            r->main->count++;
        }

        return NGX_DONE;
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return answer(r, rc, NULL);
}


static void
ngx_http_ratelimit_admin_replied(void *data, ngx_int_t outcome,
    redisReply *reply)
{
    ngx_http_ratelimit_admin_ctx_t *ctx = data;

    ngx_int_t  rc;

    ctx->op = NULL;

    rc = ctx->reply_answer(ctx->request, outcome, reply);

    /* another command went out: the request waits on */

    if (rc == NGX_DONE && ctx->op) {
        return;
    }

    ctx->waiting = 0;

    ngx_http_finalize_request(ctx->request, rc);
}


/*
 * The query arguments of an admin request: each of args[] at most
 * once, no other.  Names and values are percent-decoded; empty parts
 * ("&&") are skipped.  NGX_OK; NGX_DECLINED and *err; NGX_ERROR.
 */

static ngx_int_t
ngx_http_ratelimit_admin_args(ngx_http_request_t *r,
    ngx_http_ratelimit_admin_arg_t *args, ngx_uint_t n, const char *expected,
    rl_rule_error_t *err)
{
    u_char      *p, *last, *end, *eq;
    ngx_str_t    name, value;
    ngx_uint_t   i;

    for (i = 0; i < n; i++) {
        ngx_str_null(&args[i].value);
    }

    p = r->args.data;
    last = p + r->args.len;

    for ( /* void */ ; p < last; p = end + 1) {

        end = ngx_strlchr(p, last, '&');
        if (end == NULL) {
            end = last;
        }

        if (end == p) {
            continue;
        }

        eq = ngx_strlchr(p, end, '=');

        if (ngx_http_ratelimit_admin_unescape(r, p, eq ? eq : end, &name)
            != NGX_OK
            || ngx_http_ratelimit_admin_unescape(r, eq ? eq + 1 : end, end,
                                                 &value)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        for (i = 0; i < n; i++) {
            if (name.len == ngx_strlen(args[i].name)
                && ngx_strncmp(name.data, args[i].name, name.len) == 0)
            {
                break;
            }
        }

        if (i == n) {
            return ngx_http_ratelimit_admin_unknown_arg(r, &name, expected,
                                                        err);
        }

        /* the last of two would win silently, whichever the client meant */

        if (args[i].value.data) {
            return ngx_http_ratelimit_admin_fail(err, args[i].name,
                       "argument \"%s\" is given more than once",
                       args[i].name);
        }

        args[i].value = value;
    }

    return NGX_OK;
}


/* the generated JSON and a newline, sent; the generator freed */

static ngx_int_t
ngx_http_ratelimit_admin_send_gen(ngx_http_request_t *r, yajl_gen g)
{
    size_t                len;
    ngx_str_t             body;
    const unsigned char  *buf;

    body.data = NULL;

    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok) {
        body.data = ngx_pnalloc(r->pool, len + 1);

        if (body.data) {
            ngx_memcpy(body.data, buf, len);
            body.data[len] = '\n';
            body.len = len + 1;
        }
    }

    yajl_gen_free(g);

    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_ratelimit_admin_send(r, NGX_HTTP_OK, &body);
}


/*
 * A caller's value fit for a log line, NUL-terminated: every byte but
 * printable ASCII, and the quote and backslash, as "\xHH", as the store
 * logs customer ids.
 */

static u_char *
ngx_http_ratelimit_admin_escape(ngx_http_request_t *r, ngx_str_t *s)
{
    u_char         *dst, *p;
    size_t          i;
    static u_char   hex[] = "0123456789ABCDEF";

    dst = ngx_pnalloc(r->pool, 4 * s->len + 1);
    if (dst == NULL) {
        return (u_char *) "(out of memory)";
    }

    p = dst;

    for (i = 0; i < s->len; i++) {
        if (s->data[i] < 0x20 || s->data[i] >= 0x7f || s->data[i] == '"'
            || s->data[i] == '\\')
        {
            *p++ = '\\';
            *p++ = 'x';
            *p++ = hex[s->data[i] >> 4];
            *p++ = hex[s->data[i] & 0xf];

        } else {
            *p++ = s->data[i];
        }
    }

    *p = '\0';

    return dst;
}


/* "name": the value's bytes in hex, lowercase; 1 if generated, else 0 */

static ngx_int_t
ngx_http_ratelimit_gen_hex(ngx_http_request_t *r, yajl_gen g,
    const char *name, u_char *value, size_t len)
{
    u_char  *hex;

    hex = ngx_pnalloc(r->pool, 2 * len);
    if (hex == NULL) {
        return 0;
    }

    ngx_hex_dump(hex, value, len);

    return yajl_gen_string(g, (const unsigned char *) name,
                           ngx_strlen(name)) == yajl_gen_status_ok
           && yajl_gen_string(g, hex, 2 * len) == yajl_gen_status_ok;
}
