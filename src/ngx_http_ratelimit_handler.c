
/*
 * Global API rate limiter: the check of each request.
 *
 * The handler runs once the access phase has let the request in (it is the
 * first handler of the precontent phase): what allow/deny, auth_basic or
 * auth_request refuse costs no Redis call and no quota, under "satisfy all"
 * and "satisfy any" alike, and a key set by auth_request_set is known.
 *
 * The handler picks the caller's key and the customer whose rule applies.
 * The rule comes from the zone's rule cache, or, the first time, from Redis
 * (one HGET, then cached).  A key the deny cache knows to be over its limit
 * is denied at once.  Otherwise the handler finds the key's shard on the
 * ring, queues an EVALSHA of the limiter script and suspends the request.
 * The reply (or the timeout, or the loss of the connection) resumes it; the
 * handler then runs again and returns the decision it recorded.
 */


#include "ngx_http_ratelimit_handler.h"
#include "ngx_http_ratelimit_zone.h"
#include "ngx_http_ratelimit_redis.h"
#include "ngx_http_ratelimit_rules.h"
#include "rl_reply.h"
#include "ngx_http_ratelimit_scripts.h"

#include <ngx_sha1.h>


/* what became of a check: $ratelimit_status */
#define NGX_HTTP_RATELIMIT_NOT_LIMITED       0
#define NGX_HTTP_RATELIMIT_PASSED            1
#define NGX_HTTP_RATELIMIT_FAILED_OPEN       2
#define NGX_HTTP_RATELIMIT_FAILED_CLOSED     3
#define NGX_HTTP_RATELIMIT_REJECTED_DRY_RUN  4
#define NGX_HTTP_RATELIMIT_REJECTED          5   /* the worst, last */


/* the most limits one request is checked against */
#define NGX_HTTP_RATELIMIT_MAX_CHECKS  16


typedef struct ngx_http_ratelimit_ctx_s  ngx_http_ratelimit_ctx_t;


/* one limit a request is checked against, with its own state */
typedef struct {
    ngx_http_ratelimit_ctx_t          *ctx;        /* the request's */

    ngx_str_t                          caller;     /* the limiting value */
    ngx_str_t                         *key_name;   /* which value it is */
    ngx_str_t                          customer;   /* whose rule applies */
    rl_limit_t                         rule;       /* the limit in force */

    size_t                             key_len;
    u_char                             key[NGX_HTTP_RATELIMIT_MAX_REDIS_KEY];

    /* the Redis key and what decides, for the deny cache and the trail */
    size_t                             limit_id_len;
    u_char                             limit_id[NGX_HTTP_RATELIMIT_MAX_REDIS_KEY
                                                + 2 * NGX_INT64_LEN];

    ngx_http_ratelimit_conn_t         *conn;
    ngx_http_ratelimit_slot_t         *slot;       /* a command in flight */
    ngx_http_ratelimit_health_t       *health;
    int64_t                            deadline;   /* shard's clock, ms */

    ngx_int_t                          rc;         /* DECLINED: passed */
    ngx_uint_t                         status;     /* NGX_HTTP_RATELIMIT_* */
    long long                          remaining;  /* -1: not known */

    unsigned                           pending:1;  /* waits for a shard */
    unsigned                           eval:1;     /* resent after NOSCRIPT */
} ngx_http_ratelimit_check_t;


/* the request's: its checks, settled one by one, and the one timeout */
struct ngx_http_ratelimit_ctx_s {
    ngx_http_request_t                *request;
    ngx_http_ratelimit_loc_conf_t     *conf;
    ngx_http_ratelimit_zone_t         *zone;
    ngx_uint_t                         epoch;      /* of the zone's caches */
    ngx_msec_t                         timeout;
    ngx_event_t                        timer;

    ngx_http_ratelimit_check_t        *checks;
    ngx_uint_t                         nchecks;
    ngx_uint_t                         pending;    /* checks still waiting */

    ngx_int_t                          rc;         /* the verdict */
};


typedef struct {
    ngx_str_t                          body;
    u_char                             sha1[40];
} ngx_http_ratelimit_script_t;


/*
 * The limits a request has been checked against, kept in its pool: an
 * internal redirect wipes module contexts, and must neither count a request
 * twice under the same limit nor skip a limit it has not been checked
 * against.
 */
typedef struct {
    ngx_array_t                        limits;     /* ngx_str_t limit ids */

    /* the latest verdict, for the variables (they outlive a redirect too) */
    ngx_uint_t                         status;
    long long                          remaining;  /* -1: not known */
    ngx_str_t                         *policy;     /* that denied, or would */
} ngx_http_ratelimit_trail_t;


static ngx_http_ratelimit_trail_t *ngx_http_ratelimit_trail(
    ngx_http_request_t *r, ngx_uint_t create);
static void ngx_http_ratelimit_trail_cleanup(void *data);
static ngx_uint_t ngx_http_ratelimit_trail_seen(
    ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_start(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_settle(ngx_http_ratelimit_check_t *check,
    ngx_int_t rc);
static void ngx_http_ratelimit_suspend(ngx_http_ratelimit_check_t *check);
static ngx_int_t ngx_http_ratelimit_verdict(ngx_http_ratelimit_ctx_t *ctx);
static void ngx_http_ratelimit_record(ngx_http_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_ratelimit_caller(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_lookup_rule(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_rule_reply(void *data, redisReply *reply);
static void ngx_http_ratelimit_apply_rule(ngx_http_ratelimit_check_t *check,
    rl_limit_t *rule);
static void ngx_http_ratelimit_evaluate(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_key(ngx_http_ratelimit_check_t *check);
static ngx_int_t ngx_http_ratelimit_send(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_check_reply(void *data, redisReply *reply);
static void ngx_http_ratelimit_lost(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_timeout(ngx_event_t *ev);
static void ngx_http_ratelimit_resume(ngx_http_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_decide(ngx_http_ratelimit_check_t *check,
    rl_check_result_t *result, ngx_uint_t from_redis);
static ngx_int_t ngx_http_ratelimit_failed(ngx_http_ratelimit_check_t *check,
    const char *reason);
static ngx_int_t ngx_http_ratelimit_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, u_char *last);
static ngx_int_t ngx_http_ratelimit_add_headers(
    ngx_http_ratelimit_check_t *check, rl_check_result_t *result);
static u_char *ngx_http_ratelimit_escape(ngx_http_request_t *r, u_char *data,
    size_t len, size_t *escaped);
static void ngx_http_ratelimit_learn_clock(ngx_http_ratelimit_conn_t *conn,
    int64_t now_ms);
static int64_t ngx_http_ratelimit_local_ms(void);
static void ngx_http_ratelimit_cleanup(void *data);
static ngx_http_ratelimit_script_t *ngx_http_ratelimit_script(
    ngx_uint_t algorithm);


/*
 * The limiter scripts start with the bounds of a rule, from rl_rule.h: the
 * configuration, the admin endpoint and the scripts refuse alike.
 */

#define ngx_http_ratelimit_stringify(n)   ngx_http_ratelimit_stringify_(n)
#define ngx_http_ratelimit_stringify_(n)  #n

#define NGX_HTTP_RATELIMIT_LUA_BOUNDS                                         \
    "local RL_MAX_LIMIT = "                                                   \
    ngx_http_ratelimit_stringify(RL_RULE_MAX_LIMIT) "\n"                      \
    "local RL_MIN_WINDOW_MS = "                                               \
    ngx_http_ratelimit_stringify(RL_RULE_MIN_WINDOW) " * 1000\n"              \
    "local RL_MAX_WINDOW_MS = "                                               \
    ngx_http_ratelimit_stringify(RL_RULE_MAX_WINDOW) " * 1000\n"


/* indexed by RL_RULE_ALGORITHM_* */

static ngx_http_ratelimit_script_t  ngx_http_ratelimit_scripts[] = {
    { ngx_null_string, "" },
    { ngx_string(NGX_HTTP_RATELIMIT_LUA_BOUNDS
                 NGX_HTTP_RATELIMIT_LUA_TOKEN_BUCKET), "" },
    { ngx_string(NGX_HTTP_RATELIMIT_LUA_BOUNDS
                 NGX_HTTP_RATELIMIT_LUA_SLIDING_WINDOW), "" }
};


static const char  *ngx_http_ratelimit_prefixes[] = {
    "", "rl:tb:", "rl:sw:"
};


/* the location's unnamed limit, as headers, logs and variables name it */
static ngx_str_t  ngx_http_ratelimit_default_policy = ngx_string("default");


/* indexed by NGX_HTTP_RATELIMIT_* statuses */
static ngx_str_t  ngx_http_ratelimit_statuses[] = {
    ngx_string(""),
    ngx_string("PASSED"),
    ngx_string("FAILED_OPEN"),
    ngx_string("FAILED_CLOSED"),
    ngx_string("REJECTED_DRY_RUN"),
    ngx_string("REJECTED")
};


#define NGX_HTTP_RATELIMIT_VAR_STATUS     0
#define NGX_HTTP_RATELIMIT_VAR_POLICY     1
#define NGX_HTTP_RATELIMIT_VAR_REMAINING  2

static ngx_http_variable_t  ngx_http_ratelimit_vars[] = {

    { ngx_string("ratelimit_status"), NULL,
      ngx_http_ratelimit_status_variable, NGX_HTTP_RATELIMIT_VAR_STATUS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratelimit_policy"), NULL,
      ngx_http_ratelimit_status_variable, NGX_HTTP_RATELIMIT_VAR_POLICY,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("ratelimit_remaining"), NULL,
      ngx_http_ratelimit_status_variable, NGX_HTTP_RATELIMIT_VAR_REMAINING,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* request-time complaints: at most one line a second per worker */
static ngx_msec_t  ngx_http_ratelimit_logged_at;

/*
 * Set while this worker drops the connection to a stalled shard: the shard
 * may yet wake up and run the checks it has been sent, each up to its
 * deadline, so those requests wait out their own timeout rather than take
 * the fail path early and still be counted.
 */
static ngx_uint_t  ngx_http_ratelimit_dropping_stalled;


ngx_int_t
ngx_http_ratelimit_handler(ngx_http_request_t *r)
{
    ngx_uint_t                       i;
    ngx_pool_cleanup_t              *cln;
    ngx_http_ratelimit_ctx_t        *ctx;
    ngx_http_ratelimit_check_t      *check;
    ngx_http_ratelimit_loc_conf_t   *rlcf;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    /* as in the access phase: a subrequest is its main request's work */

    if (r != r->main) {
        return NGX_DECLINED;
    }

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module);

    if (rlcf->keys == NULL) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    if (ctx) {
        return ctx->pending ? NGX_AGAIN : ctx->rc;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_ratelimit_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rmcf = ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module);

    ctx->request = r;
    ctx->conf = rlcf;
    ctx->zone = rmcf->shm_zone->data;
    ctx->timeout = rmcf->timeout;
    ctx->epoch = ctx->zone->sh->epoch;
    ctx->rc = NGX_DECLINED;

    ctx->timer.handler = ngx_http_ratelimit_timeout;
    ctx->timer.data = ctx;
    ctx->timer.log = r->connection->log;

    /* the location's one limit; named policies will add theirs here */

    ctx->nchecks = 1;
    ctx->checks = ngx_pcalloc(r->pool,
                              ctx->nchecks * sizeof(ngx_http_ratelimit_check_t));
    if (ctx->checks == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_module);

    /* a reply may come after the request is gone: it must find nobody */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_ratelimit_cleanup;
    cln->data = ctx;

    for (i = 0; i < ctx->nchecks; i++) {
        check = &ctx->checks[i];
        check->ctx = ctx;
        check->rc = NGX_DECLINED;
        check->remaining = -1;

        ngx_http_ratelimit_start(check);
    }

    if (ctx->pending) {
        ngx_add_timer(&ctx->timer, ctx->timeout);

        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;

        return NGX_AGAIN;
    }

    ctx->rc = ngx_http_ratelimit_verdict(ctx);
    ngx_http_ratelimit_record(ctx);

    return ctx->rc;
}


/*
 * A check's first steps: its key, its rule from the cache (or a lookup),
 * then the check itself.  It either settles at once or is left pending.
 */

static void
ngx_http_ratelimit_start(ngx_http_ratelimit_check_t *check)
{
    rl_limit_t                      rule;
    ngx_http_ratelimit_ctx_t       *ctx;
    ngx_http_ratelimit_loc_conf_t  *rlcf;

    ctx = check->ctx;
    rlcf = ctx->conf;

    switch (ngx_http_ratelimit_caller(check)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        ngx_http_ratelimit_settle(check, NGX_DECLINED);
        return;

    default:
        ngx_http_ratelimit_settle(check, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    check->rule.limit = rlcf->limit;
    check->rule.window = rlcf->window;
    check->rule.algorithm = rlcf->algorithm;

    if (check->customer.len > 0
        && check->customer.len <= RL_RULE_MAX_CUSTOMER_ID)
    {
        if (ngx_http_ratelimit_rule_cache_get(ctx->zone, check->customer.data,
                                              check->customer.len, &rule)
            == NGX_DECLINED)
        {
            ngx_http_ratelimit_lookup_rule(check);
            return;
        }

        ngx_http_ratelimit_apply_rule(check, &rule);
    }

    ngx_http_ratelimit_evaluate(check);
}


/*
 * A check is decided: rc is NGX_DECLINED (passed) or a status.  The last
 * one of a suspended request resumes it.
 */

static void
ngx_http_ratelimit_settle(ngx_http_ratelimit_check_t *check, ngx_int_t rc)
{
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;

    check->rc = rc;
    check->slot = NULL;

    if (!check->pending) {
        return;
    }

    check->pending = 0;

    if (--ctx->pending == 0) {
        ngx_http_ratelimit_resume(ctx);
    }
}


/* the check waits for a shard: the request waits for every such check */

static void
ngx_http_ratelimit_suspend(ngx_http_ratelimit_check_t *check)
{
    if (!check->pending) {
        check->pending = 1;
        check->ctx->pending++;
    }
}


/* the request passes when every check passed; else the first refusal */

static ngx_int_t
ngx_http_ratelimit_verdict(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_uint_t  i;

    for (i = 0; i < ctx->nchecks; i++) {
        if (ctx->checks[i].rc != NGX_DECLINED) {
            return ctx->checks[i].rc;
        }
    }

    return NGX_DECLINED;
}


static ngx_http_ratelimit_trail_t *
ngx_http_ratelimit_trail(ngx_http_request_t *r, ngx_uint_t create)
{
    ngx_pool_cleanup_t          *cln;
    ngx_http_ratelimit_trail_t  *trail;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_ratelimit_trail_cleanup) {
            return cln->data;
        }
    }

    if (!create) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_ratelimit_trail_t));
    if (cln == NULL) {
        return NULL;
    }

    trail = cln->data;

    if (ngx_array_init(&trail->limits, r->pool, 2, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NULL;
    }

    trail->status = NGX_HTTP_RATELIMIT_NOT_LIMITED;
    trail->remaining = -1;
    trail->policy = NULL;

    cln->handler = ngx_http_ratelimit_trail_cleanup;

    return trail;
}


/* only a mark that finds the trail among the pool's cleanups */

static void
ngx_http_ratelimit_trail_cleanup(void *data)
{
}


/*
 * True when this request has already been checked against this very limit
 * (the same Redis key, limit, window and algorithm) before an internal
 * redirect; else the limit joins the trail.
 */

static ngx_uint_t
ngx_http_ratelimit_trail_seen(ngx_http_ratelimit_check_t *check)
{
    ngx_str_t                   *id;
    ngx_uint_t                   i;
    ngx_http_ratelimit_trail_t  *trail;

    trail = ngx_http_ratelimit_trail(check->ctx->request, 1);
    if (trail == NULL) {
        return 0;
    }

    id = trail->limits.elts;

    for (i = 0; i < trail->limits.nelts; i++) {
        if (id[i].len == check->limit_id_len
            && ngx_memcmp(id[i].data, check->limit_id, id[i].len) == 0)
        {
            return 1;
        }
    }

    id = ngx_array_push(&trail->limits);
    if (id == NULL) {
        return 0;
    }

    id->data = ngx_pnalloc(check->ctx->request->pool, check->limit_id_len);
    if (id->data == NULL) {
        trail->limits.nelts--;
        return 0;
    }

    ngx_memcpy(id->data, check->limit_id, check->limit_id_len);
    id->len = check->limit_id_len;

    return 0;
}


/*
 * The verdict as the variables tell it: the worst status of the checks
 * (REJECTED over REJECTED_DRY_RUN over FAILED_CLOSED over FAILED_OPEN over
 * PASSED), the policy behind a rejection, the lowest remaining.  A request
 * an internal redirect checks again keeps the latest verdict; checks that
 * limited nothing leave the earlier one.
 */

static void
ngx_http_ratelimit_record(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_uint_t                   i, status;
    long long                    remaining;
    ngx_http_ratelimit_check_t  *check;
    ngx_http_ratelimit_trail_t  *trail;

    status = NGX_HTTP_RATELIMIT_NOT_LIMITED;
    remaining = -1;

    for (i = 0; i < ctx->nchecks; i++) {
        check = &ctx->checks[i];

        if (check->status > status) {
            status = check->status;
        }

        if (check->remaining >= 0
            && (remaining < 0 || check->remaining < remaining))
        {
            remaining = check->remaining;
        }
    }

    if (status == NGX_HTTP_RATELIMIT_NOT_LIMITED) {
        return;
    }

    trail = ngx_http_ratelimit_trail(ctx->request, 1);
    if (trail == NULL) {
        return;
    }

    trail->status = status;
    trail->remaining = remaining;
    trail->policy = (status >= NGX_HTTP_RATELIMIT_REJECTED_DRY_RUN)
                    ? &ngx_http_ratelimit_default_policy : NULL;
}


ngx_int_t
ngx_http_ratelimit_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_ratelimit_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                      *p;
    ngx_str_t                   *s;
    ngx_http_ratelimit_trail_t  *trail;

    trail = ngx_http_ratelimit_trail(r->main, 0);

    if (trail == NULL || trail->status == NGX_HTTP_RATELIMIT_NOT_LIMITED) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_RATELIMIT_VAR_STATUS:
        s = &ngx_http_ratelimit_statuses[trail->status];
        break;

    case NGX_HTTP_RATELIMIT_VAR_POLICY:
        if (trail->policy == NULL) {
            v->not_found = 1;
            return NGX_OK;
        }

        s = trail->policy;
        break;

    default: /* NGX_HTTP_RATELIMIT_VAR_REMAINING */
        if (trail->remaining < 0) {
            v->not_found = 1;
            return NGX_OK;
        }

        p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->len = ngx_sprintf(p, "%L", trail->remaining) - p;
        v->valid = 1;
        v->no_cacheable = 1;
        v->not_found = 0;
        v->data = p;

        return NGX_OK;
    }

    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = s->data;

    return NGX_OK;
}


/*
 * The caller is the first non-empty "ratelimit" value; the customer, whose
 * rule applies, is the "ratelimit_customer" value, or else the caller.
 */

static ngx_int_t
ngx_http_ratelimit_caller(ngx_http_ratelimit_check_t *check)
{
    ngx_uint_t                      i;
    ngx_str_t                      *names;
    ngx_http_request_t             *r;
    ngx_http_complex_value_t       *cv;
    ngx_http_ratelimit_loc_conf_t  *rlcf;

    r = check->ctx->request;
    rlcf = check->ctx->conf;

    cv = rlcf->keys->elts;
    names = rlcf->key_names->elts;

    for (i = 0; i < rlcf->keys->nelts; i++) {
        if (ngx_http_complex_value(r, &cv[i], &check->caller) != NGX_OK) {
            return NGX_ERROR;
        }

        if (check->caller.len) {
            check->key_name = &names[i];
            break;
        }
    }

    if (check->caller.len == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ratelimit: every key is empty, not limited");
        return NGX_DECLINED;
    }

    check->customer = check->caller;

    if (rlcf->customer) {
        if (ngx_http_complex_value(r, rlcf->customer, &check->customer)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (check->customer.len == 0) {
            check->customer = check->caller;
        }
    }

    return NGX_OK;
}


/* the customer's rule is not cached: ask a live shard, all hold every rule */

static void
ngx_http_ratelimit_lookup_rule(ngx_http_ratelimit_check_t *check)
{
    ngx_int_t                  shard;
    ngx_uint_t                 tried;
    const char                *argv[3];
    size_t                     argvlen[3];
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;

    tried = 0;
    shard = ngx_http_ratelimit_ring_next_live(ctx->zone->ring,
                                              check->customer.data,
                                              check->customer.len, &tried);

    if (shard == NGX_ERROR) {
        ngx_http_ratelimit_settle(check,
                  ngx_http_ratelimit_failed(check, "every shard is down"));
        return;
    }

    check->health = &ctx->zone->ring->health[shard];
    check->conn = ngx_http_ratelimit_redis_conn(shard);

    (void) ngx_http_ratelimit_rules_lookup(argv, argvlen, &check->customer,
                                           NULL, NULL);

    check->slot = ngx_http_ratelimit_redis_send(check->conn, 3, argv, argvlen,
                                                ngx_http_ratelimit_rule_reply,
                                                check);
    if (check->slot == NULL) {
        ngx_http_ratelimit_settle(check,
                  ngx_http_ratelimit_failed(check, "shard is unreachable"));
        return;
    }

    ngx_http_ratelimit_count(rule_lookups, 1);

    ngx_http_ratelimit_suspend(check);
}


static void
ngx_http_ratelimit_rule_reply(void *data, redisReply *reply)
{
    ngx_http_ratelimit_check_t *check = data;

    u_char                    *escaped;
    size_t                     len;
    rl_limit_t                 rule;
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;
    check->slot = NULL;

    if (reply == NULL) {
        ngx_http_ratelimit_lost(check);
        return;
    }

    ngx_memzero(&rule, sizeof(rl_limit_t));

    if (reply->type == REDIS_REPLY_STRING) {
        if (ngx_http_ratelimit_rule_parse((u_char *) reply->str, reply->len,
                                          &rule, NULL)
            == NGX_ERROR)
        {
            escaped = ngx_http_ratelimit_escape(ctx->request,
                                                check->customer.data,
                                                check->customer.len, &len);

            ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                          "ratelimit: garbled rule of customer \"%*s\" "
                          "on shard %V, using the default",
                          len, escaped,
                          ngx_http_ratelimit_redis_name(check->conn));
            ngx_memzero(&rule, sizeof(rl_limit_t));
        }

    } else if (reply->type != REDIS_REPLY_NIL) {
        ngx_http_ratelimit_settle(check,
                  ngx_http_ratelimit_failed(check, "rule lookup failed"));
        return;
    }

    ngx_http_ratelimit_rule_cache_put(ctx->zone, check->customer.data,
                                      check->customer.len, &rule, ctx->epoch);

    ngx_http_ratelimit_apply_rule(check, &rule);
    ngx_http_ratelimit_evaluate(check);
}


/*
 * A customer's rule (from the cache or a shard) over the location's
 * default: limit 0 is no rule, algorithm NONE the location's.
 */

static void
ngx_http_ratelimit_apply_rule(ngx_http_ratelimit_check_t *check,
    rl_limit_t *rule)
{
    if (rule->limit) {
        check->rule.limit = rule->limit;
        check->rule.window = rule->window;
    }

    if (rule->algorithm != RL_RULE_ALGORITHM_NONE) {
        check->rule.algorithm = rule->algorithm;
    }
}


/*
 * With the rule known: deny from the deny cache, or send the check to the
 * key's shard and leave it pending.
 */

static void
ngx_http_ratelimit_evaluate(ngx_http_ratelimit_check_t *check)
{
#if (NGX_DEBUG)
    u_char                    *escaped;
    size_t                     len;
#endif
    ngx_uint_t                 shard;
    ngx_msec_t                 retry, reset;
    rl_check_result_t          result;
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;

    ngx_http_ratelimit_key(check);

    if (ngx_http_ratelimit_trail_seen(check)) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                       "ratelimit: checked against this limit already");
        ngx_http_ratelimit_settle(check, NGX_DECLINED);
        return;
    }

    if (ngx_http_ratelimit_deny_cache_get(ctx->zone, check->limit_id,
                                          check->limit_id_len, &retry, &reset)
        == NGX_OK)
    {
        ngx_http_ratelimit_count(denied_cached, 1);

        result.allowed = 0;
        result.remaining = 0;
        result.retry_after_ms = retry;
        result.reset_ms = reset;

        ngx_http_ratelimit_settle(check,
                         ngx_http_ratelimit_decide(check, &result, 0));
        return;
    }

    shard = ngx_http_ratelimit_ring_lookup(ctx->zone->ring, check->key,
                                           check->key_len);

    check->health = &ctx->zone->ring->health[shard];
    check->conn = ngx_http_ratelimit_redis_conn(shard);

#if (NGX_DEBUG)
    if (ctx->request->connection->log->log_level & NGX_LOG_DEBUG_HTTP) {
        escaped = ngx_http_ratelimit_escape(ctx->request, check->key,
                                            check->key_len, &len);

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ctx->request->connection->log, 0,
                       "ratelimit: key \"%*s\" on shard %V", len, escaped,
                       ngx_http_ratelimit_redis_name(check->conn));
    }
#endif

    if (ngx_http_ratelimit_shard_admit(check->health)
        == NGX_HTTP_RATELIMIT_SHARD_DOWN)
    {
        ngx_http_ratelimit_settle(check,
                         ngx_http_ratelimit_failed(check, "shard is down"));
        return;
    }

    if (check->conn == NULL) {
        ngx_http_ratelimit_settle(check,
                  ngx_http_ratelimit_failed(check, "no connection to the shard"));
        return;
    }

    /*
     * The deadline is this request's timeout in the shard's clock, as far
     * as the shard's replies have told it (the offset is 0 until the first
     * one: a clock far off costs that one check its fail path).
     */

    check->deadline = ngx_http_ratelimit_local_ms()
                      + *ngx_http_ratelimit_redis_clock_offset(check->conn)
                      + (int64_t) ctx->timeout;

    if (ngx_http_ratelimit_send(check) != NGX_OK) {
        ngx_http_ratelimit_settle(check,
                  ngx_http_ratelimit_failed(check, "shard is unreachable"));
        return;
    }

    ngx_http_ratelimit_suspend(check);
}


/*
 * The Redis key: "rl:<algorithm>:<name>:k:<caller>", or, for a caller too
 * long to keep as it is, "rl:<algorithm>:<name>:h:<SHA-1 of the caller in
 * hex>".  <name> says which of the "ratelimit" values the caller is (the
 * variable's name, as "http_x_user_id" or "remote_addr"): a user id that
 * reads like an address never spends the quota of that address.
 *
 * The limit id adds what else decides (limit and window): a denial under
 * one limit says nothing of the same key under another.
 */

static void
ngx_http_ratelimit_key(ngx_http_ratelimit_check_t *check)
{
    u_char      *p;
    ngx_sha1_t   sha1;
    u_char       digest[20];

    p = ngx_cpymem(check->key,
                   ngx_http_ratelimit_prefixes[check->rule.algorithm], 6);
    p = ngx_cpymem(p, check->key_name->data, check->key_name->len);
    *p++ = ':';

    if (check->caller.len <= NGX_HTTP_RATELIMIT_MAX_RAW_KEY - 2) {
        *p++ = 'k';
        *p++ = ':';
        p = ngx_cpymem(p, check->caller.data, check->caller.len);

    } else {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, check->caller.data, check->caller.len);
        ngx_sha1_final(digest, &sha1);

        *p++ = 'h';
        *p++ = ':';
        p = ngx_hex_dump(p, digest, sizeof(digest));
    }

    check->key_len = p - check->key;

    p = ngx_cpymem(check->limit_id, check->key, check->key_len);
    p = ngx_sprintf(p, "%Z%L%Z%L", check->rule.limit, check->rule.window);

    check->limit_id_len = p - check->limit_id;
}


static ngx_int_t
ngx_http_ratelimit_send(ngx_http_ratelimit_check_t *check)
{
    u_char                       *p;
    const char                   *argv[7];
    size_t                        argvlen[7];
    ngx_http_ratelimit_script_t  *script;
    u_char                        limit[NGX_INT64_LEN];
    u_char                        window[NGX_INT64_LEN];
    u_char                        deadline[NGX_INT64_LEN];

    script = ngx_http_ratelimit_script(check->rule.algorithm);

    if (check->eval) {
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
    argv[3] = (const char *) check->key;
    argvlen[3] = check->key_len;

    p = ngx_sprintf(limit, "%L", check->rule.limit);
    argv[4] = (const char *) limit;
    argvlen[4] = p - limit;

    p = ngx_sprintf(window, "%L", check->rule.window * 1000);
    argv[5] = (const char *) window;
    argvlen[5] = p - window;

    p = ngx_sprintf(deadline, "%L", check->deadline > 0 ? check->deadline : 0);
    argv[6] = (const char *) deadline;
    argvlen[6] = p - deadline;

    check->slot = ngx_http_ratelimit_redis_send(check->conn, 7, argv, argvlen,
                                                ngx_http_ratelimit_check_reply,
                                                check);

    if (check->slot && !check->eval) {
        ngx_http_ratelimit_count(checks, 1);
    }

    return check->slot ? NGX_OK : NGX_ERROR;
}


static void
ngx_http_ratelimit_check_reply(void *data, redisReply *reply)
{
    ngx_http_ratelimit_check_t *check = data;

    int                 rc;
    const char         *why;
    ngx_http_request_t *r;
    rl_check_result_t   result;

    check->slot = NULL;
    r = check->ctx->request;

    if (reply == NULL) {
        ngx_http_ratelimit_lost(check);
        return;
    }

    rc = rl_reply_decode_check(reply, &result, &why);

    if ((rc == RL_REPLY_OK || rc == RL_REPLY_EXPIRED) && result.now_ms > 0) {
        ngx_http_ratelimit_learn_clock(check->conn, result.now_ms);
    }

    switch (rc) {

    case RL_REPLY_OK:
        ngx_http_ratelimit_settle(check,
                          ngx_http_ratelimit_decide(check, &result, 1));
        return;

    case RL_REPLY_EXPIRED:

        /*
         * Our clock's idea of the shard's was off (it is learnt now): the
         * check counted nothing, so it takes the fail path like a late one.
         */

        ngx_http_ratelimit_settle(check,
                     ngx_http_ratelimit_failed(check, "check ran too late"));
        return;

    case RL_REPLY_NOSCRIPT:

        /* a restarted or flushed shard: EVAL caches the script again */

        if (!check->eval) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "ratelimit: NOSCRIPT, sending EVAL");
            check->eval = 1;
            ngx_http_ratelimit_count(noscript, 1);

            if (ngx_http_ratelimit_send(check) == NGX_OK) {
                return;
            }
        }

        break;

    default:
        break;
    }

    if (ngx_http_ratelimit_log_due(&ngx_http_ratelimit_logged_at)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: shard %V answered: %s",
                      ngx_http_ratelimit_redis_name(check->conn), why);
    }

    ngx_http_ratelimit_settle(check,
                        ngx_http_ratelimit_failed(check, "unusable reply"));
}


/*
 * The connection of a pending check failed.  When this worker is dropping
 * it because the shard stalled, the shard may yet wake up and run what it
 * was sent, up to the check's deadline: the check then waits out the
 * request's timeout rather than take the fail path early and still count.
 */

static void
ngx_http_ratelimit_lost(ngx_http_ratelimit_check_t *check)
{
    if (ngx_http_ratelimit_dropping_stalled && check->ctx->timer.timer_set) {
        return;
    }

    ngx_http_ratelimit_settle(check,
               ngx_http_ratelimit_failed(check, "connection to shard lost"));
}


static void
ngx_http_ratelimit_timeout(ngx_event_t *ev)
{
    ngx_http_ratelimit_ctx_t *ctx = ev->data;

    ngx_uint_t                   i, n;
    ngx_http_ratelimit_check_t  *check;
    ngx_http_ratelimit_conn_t   *stuck[NGX_HTTP_RATELIMIT_MAX_CHECKS];

    /*
     * A shard that answers slower than the timeout is failing: its
     * connection is dropped, so everything queued behind takes its fail
     * path, and the shard is marked down.  This request resumes first,
     * though: it waited longest.
     */

    n = 0;

    for (i = 0; i < ctx->nchecks; i++) {
        check = &ctx->checks[i];

        if (!check->pending) {
            continue;
        }

        if (check->slot) {
            (void) ngx_http_ratelimit_redis_detach(check->slot);
            check->slot = NULL;
        }

        if (check->conn
            && ngx_http_ratelimit_redis_stuck(check->conn, ctx->timeout)
            && n < NGX_HTTP_RATELIMIT_MAX_CHECKS)
        {
            stuck[n++] = check->conn;
        }

        check->rc = ngx_http_ratelimit_failed(check, "shard timed out");
        check->pending = 0;
    }

    ctx->pending = 0;

    /* the request may be gone after this */

    ngx_http_ratelimit_resume(ctx);

    ngx_http_ratelimit_dropping_stalled = 1;

    for (i = 0; i < n; i++) {
        ngx_http_ratelimit_redis_fail(stuck[i], "timed out");
    }

    ngx_http_ratelimit_dropping_stalled = 0;
}


static void
ngx_http_ratelimit_resume(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    ctx->rc = ngx_http_ratelimit_verdict(ctx);
    ngx_http_ratelimit_record(ctx);

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_ratelimit_decide(ngx_http_ratelimit_check_t *check,
    rl_check_result_t *result, ngx_uint_t from_redis)
{
    u_char                    *p;
#if (NGX_DEBUG)
    u_char                    *escaped;
    size_t                     len;
#endif
    ngx_http_request_t        *r;
    ngx_http_ratelimit_ctx_t  *ctx;
    u_char                     buf[NGX_INT64_LEN];

    ctx = check->ctx;
    r = ctx->request;

    if (ngx_http_ratelimit_add_headers(check, result) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    check->remaining = result->remaining;

    if (result->allowed) {
        check->status = NGX_HTTP_RATELIMIT_PASSED;
        ngx_http_ratelimit_count(allowed, 1);
        return NGX_DECLINED;
    }

    ngx_http_ratelimit_count(denied, 1);

    /* until then Redis would say no as well: spare it the asking */

    if (from_redis) {
        ngx_http_ratelimit_deny_cache_put(ctx->zone, check->limit_id,
                                          check->limit_id_len,
                                          (ngx_msec_t) result->retry_after_ms,
                                          (ngx_msec_t) result->reset_ms,
                                          ctx->epoch);
    }

    /*
     * Like limit_req's: the policy and its limit, never the key (often a
     * user id) but at debug; nginx adds the client's address.
     */

    ngx_log_error(ctx->conf->log_level, r->connection->log, 0,
                  "ratelimit: %slimiting requests by policy \"%V\" "
                  "(%L per %Ls), retry after %L ms",
                  ctx->conf->dry_run ? "dry run, not " : "",
                  &ngx_http_ratelimit_default_policy, check->rule.limit,
                  check->rule.window, result->retry_after_ms);

#if (NGX_DEBUG)
    if (r->connection->log->log_level & NGX_LOG_DEBUG_HTTP) {
        escaped = ngx_http_ratelimit_escape(r, check->key, check->key_len,
                                            &len);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ratelimit: key \"%*s\" is over its limit",
                       len, escaped);
    }
#endif

    if (ctx->conf->dry_run) {
        check->status = NGX_HTTP_RATELIMIT_REJECTED_DRY_RUN;
        return NGX_DECLINED;
    }

    check->status = NGX_HTTP_RATELIMIT_REJECTED;

    p = ngx_sprintf(buf, "%L", rl_retry_after_seconds(result->retry_after_ms));

    if (ngx_http_ratelimit_add_header(r, "Retry-After", buf, p) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ctx->conf->status;
}


/*
 * The shard cannot answer: "open" lets the request through, "closed"
 * answers 503 with a Retry-After of the shard's next probe.
 */

static ngx_int_t
ngx_http_ratelimit_failed(ngx_http_ratelimit_check_t *check,
    const char *reason)
{
    u_char              *p;
    ngx_uint_t           closed;
    ngx_msec_t           retry;
    ngx_http_request_t  *r;
    u_char               buf[NGX_INT64_LEN];

    r = check->ctx->request;
    closed = (check->ctx->conf->fail == NGX_HTTP_RATELIMIT_FAIL_CLOSED);

    if (ngx_http_ratelimit_log_due(&ngx_http_ratelimit_logged_at)) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ratelimit: %s (%V), failing %s",
                      reason, ngx_http_ratelimit_redis_name(check->conn),
                      closed ? "closed" : "open");
    }

    if (!closed) {
        check->status = NGX_HTTP_RATELIMIT_FAILED_OPEN;
        ngx_http_ratelimit_count(failed_open, 1);
        return NGX_DECLINED;
    }

    check->status = NGX_HTTP_RATELIMIT_FAILED_CLOSED;
    ngx_http_ratelimit_count(failed_closed, 1);

    retry = check->health ? ngx_http_ratelimit_shard_retry_in(check->health)
                          : 0;

    p = ngx_sprintf(buf, "%L", rl_retry_after_seconds((long long) retry));

    if (ngx_http_ratelimit_add_header(r, "Retry-After", buf, p) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_HTTP_SERVICE_UNAVAILABLE;
}


static ngx_int_t
ngx_http_ratelimit_add_headers(ngx_http_ratelimit_check_t *check,
    rl_check_result_t *result)
{
    u_char              *p;
    ngx_http_request_t  *r;
    u_char               buf[128];

    r = check->ctx->request;

    switch (check->ctx->conf->headers) {

    case NGX_HTTP_RATELIMIT_HEADERS_DRAFT:
        p = ngx_sprintf(buf, "\"default\";q=%L;w=%L",
                        check->rule.limit, check->rule.window);

        if (ngx_http_ratelimit_add_header(r, "RateLimit-Policy", buf, p)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_sprintf(buf, "\"default\";r=%L;t=%L", result->remaining,
                        rl_reset_seconds(result->reset_ms));

        return ngx_http_ratelimit_add_header(r, "RateLimit", buf, p);

    case NGX_HTTP_RATELIMIT_HEADERS_LEGACY:
        p = ngx_sprintf(buf, "%L", check->rule.limit);

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

    ngx_uint_t  i;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    /* a reply may still come: it must find nobody, not freed memory */

    for (i = 0; i < ctx->nchecks; i++) {
        if (ctx->checks[i].slot) {
            (void) ngx_http_ratelimit_redis_detach(ctx->checks[i].slot);
            ctx->checks[i].slot = NULL;
        }
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


/*
 * Caller-supplied bytes for the error log: quotes, backslashes and control
 * bytes (ESC, CR, LF) escaped, so a header cannot forge log lines or
 * terminal sequences.  On no memory, a placeholder.
 */

static u_char *
ngx_http_ratelimit_escape(ngx_http_request_t *r, u_char *data, size_t len,
    size_t *escaped)
{
    u_char  *p;
    size_t   n;

    n = len + ngx_escape_json(NULL, data, len);

    p = ngx_pnalloc(r->pool, n);
    if (p == NULL) {
        *escaped = sizeof("?") - 1;
        return (u_char *) "?";
    }

    (void) ngx_escape_json(p, data, len);
    *escaped = n;

    return p;
}


static int64_t
ngx_http_ratelimit_local_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000 + tp->msec;
}


/* each worker keeps the offset of each shard's clock to its own */

static void
ngx_http_ratelimit_learn_clock(ngx_http_ratelimit_conn_t *conn, int64_t now_ms)
{
    *ngx_http_ratelimit_redis_clock_offset(conn) =
                    (ngx_msec_int_t) (now_ms - ngx_http_ratelimit_local_ms());
}
