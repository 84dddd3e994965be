
/*
 * Global API rate limiter: the check of each request.
 *
 * The handler runs once the access phase has let the request in (it is the
 * first handler of the precontent phase): what allow/deny, auth_basic or
 * auth_request refuse costs no Redis call and no quota, under "satisfy all"
 * and "satisfy any" alike, and a key set by auth_request_set is known.
 *
 * A request is checked against each policy of its location ("ratelimit"
 * lines), all or nothing: it passes only if every enforced policy allows,
 * and a request any policy denies consumes nothing from any of them.
 *
 *   1. Each check finds its caller's key, its cost, and the rule in force
 *      for its customer and policy from the zone's rule cache.  When the
 *      cache does not know it, the check itself asks for it: the script
 *      reads the customer's rules on the key's shard (every shard holds
 *      every rule), decides under the rule in force and returns it, to be
 *      cached.  A rule never costs a round trip of its own.
 *   2. A check the deny cache knows to be over its limit denies the request
 *      at once.  The others are grouped by the shard their key lives on.
 *   3. The groups go out one after the other, in the ring's order of their
 *      shards, each as ONE call of lua/check.lua that decides all its
 *      checks atomically and takes nothing unless all of them allow.  A
 *      group that denies ends the request; what earlier groups took is
 *      given back (lua/refund.lua).  One group at a time is what makes the
 *      outcome exact: a request only ever holds quota on shards whose
 *      policies all allowed it, so concurrent requests can be refused by
 *      what it holds only until it is given back, never let through.
 *
 * The request is suspended while a group is in flight; the reply (or the
 * timeout, or the loss of the connection) moves it on, and once decided the
 * handler runs again and returns the verdict.
 */


#include "ngx_http_ratelimit_handler.h"
#include "ngx_http_ratelimit_batch.h"
#include "ngx_http_ratelimit_zone.h"
#include "ngx_http_ratelimit_metrics.h"
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


/* the values lua/refund.lua takes per check, after its key */
#define NGX_HTTP_RATELIMIT_REFUND_ARGS       5


typedef struct ngx_http_ratelimit_ctx_s  ngx_http_ratelimit_ctx_t;


/* one policy a request is checked against */
typedef struct {
    ngx_http_ratelimit_ctx_t          *ctx;        /* the request's */
    ngx_http_ratelimit_policy_t       *policy;
    ngx_uint_t                         cost;

    ngx_str_t                          caller;     /* the limiting value */
    ngx_str_t                         *key_name;   /* which value it is */
    ngx_str_t                          customer;   /* whose rule applies */
    rl_limit_t                         rule;       /* the limit in force */

    size_t                             field_len;  /* its rule's, cached */
    u_char                             field[NGX_HTTP_RATELIMIT_MAX_RULE_FIELD];

    size_t                             key_len;
    u_char                             key[NGX_HTTP_RATELIMIT_MAX_REDIS_KEY];

    /* the Redis key and what decides, for the deny cache and the trail */
    size_t                             limit_id_len;
    u_char                             limit_id[NGX_HTTP_RATELIMIT_MAX_REDIS_KEY
                                                + 2 * NGX_INT64_LEN];

    ngx_uint_t                         shard;
    ngx_http_ratelimit_conn_t         *conn;
    ngx_http_ratelimit_health_t       *health;

    ngx_uint_t                         status;     /* NGX_HTTP_RATELIMIT_* */
    rl_check_result_t                  result;     /* when has_result */
    ngx_http_ratelimit_batch_check_t   wire;       /* as the script takes it */

    unsigned                           dry_run:1;
    unsigned                           limits:1;   /* a caller was found */
    unsigned                           active:1;   /* still to be decided */
    unsigned                           has_result:1;
    unsigned                           taken:1;    /* Redis counted it */
    unsigned                           read_rule:1; /* not cached: ask */
} ngx_http_ratelimit_check_t;


/* the request's checks bound for one shard: a group of a batch's call */
typedef struct {
    ngx_uint_t                         shard;
    ngx_http_ratelimit_conn_t         *conn;
    ngx_http_ratelimit_health_t       *health;
    ngx_http_ratelimit_check_t       **checks;     /* in ctx->order */
    ngx_uint_t                         nchecks;
    long long                          taken_at;   /* shard's ms, 0: not */

    ngx_http_ratelimit_member_t        member;     /* in a batch */
    ngx_http_ratelimit_batch_check_t  *wire[NGX_HTTP_RATELIMIT_MAX_POLICIES];
} ngx_http_ratelimit_group_t;


struct ngx_http_ratelimit_ctx_s {
    ngx_http_request_t                *request;
    ngx_http_ratelimit_loc_conf_t     *conf;
    ngx_http_ratelimit_zone_t         *zone;
    ngx_uint_t                         epoch;      /* of the zone's caches */
    ngx_msec_t                         timeout;

    ngx_http_ratelimit_check_t        *checks;     /* the location's order */
    ngx_uint_t                         nchecks;

    /* a check may go out twice: again after its rule moved its key */
    ngx_http_ratelimit_check_t        *order[2 * NGX_HTTP_RATELIMIT_MAX_POLICIES];
    ngx_uint_t                         nordered;
    ngx_http_ratelimit_group_t         groups[2 * NGX_HTTP_RATELIMIT_MAX_POLICIES];
    ngx_uint_t                         ngroups;
    ngx_uint_t                         current;    /* the group in flight */

    ngx_msec_t                         closed_retry;

    ngx_int_t                          rc;         /* the verdict */

    unsigned                           in_flight:1; /* the current group */
    unsigned                           planned:1;
    unsigned                           denied:1;   /* a policy refused */
    unsigned                           closed:1;   /* failing closed */
    unsigned                           error:1;
    unsigned                           done:1;
    unsigned                           waiting:1;  /* the request is parked */
    unsigned                           answered:1; /* problem details sent */
};



/* a script call being built: its arguments, and room for their numbers */
typedef struct {
    const char                       **argv;
    size_t                            *argvlen;
    ngx_uint_t                         argc;
    u_char                            *last;       /* room for numbers */
} ngx_http_ratelimit_args_t;


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


static ngx_int_t ngx_http_ratelimit_prepare(ngx_http_ratelimit_check_t *check,
    ngx_http_ratelimit_use_t *use);
static ngx_int_t ngx_http_ratelimit_cost(ngx_http_ratelimit_check_t *check,
    ngx_http_ratelimit_use_t *use);
static ngx_int_t ngx_http_ratelimit_caller(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_find_rule(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_apply_rule(ngx_http_ratelimit_check_t *check,
    rl_limit_t *rule);
static void ngx_http_ratelimit_learn_rule(ngx_http_ratelimit_check_t *check,
    rl_check_result_t *result);
static void ngx_http_ratelimit_advance(ngx_http_ratelimit_ctx_t *ctx);
static void ngx_http_ratelimit_plan(ngx_http_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_place(ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_order(ngx_http_ratelimit_ctx_t *ctx,
    ngx_http_ratelimit_check_t *check, ngx_uint_t from);
static void ngx_http_ratelimit_group_shards(ngx_http_ratelimit_ctx_t *ctx,
    ngx_uint_t from);
static void ngx_http_ratelimit_key(ngx_http_ratelimit_check_t *check);
static ngx_int_t ngx_http_ratelimit_send_group(ngx_http_ratelimit_ctx_t *ctx);
static void ngx_http_ratelimit_group_done(void *data, ngx_int_t rc,
    rl_check_result_t *results, long long now_ms, const char *why);
static void ngx_http_ratelimit_group_decided(ngx_http_ratelimit_ctx_t *ctx,
    rl_check_result_t *results, long long now_ms);
static void ngx_http_ratelimit_group_failed(ngx_http_ratelimit_ctx_t *ctx,
    const char *reason);
static void ngx_http_ratelimit_failed(ngx_http_ratelimit_check_t *check,
    const char *reason);
static void ngx_http_ratelimit_denial(ngx_http_ratelimit_check_t *check,
    ngx_uint_t from_redis);
static void ngx_http_ratelimit_finish(ngx_http_ratelimit_ctx_t *ctx);
static void ngx_http_ratelimit_give_back(ngx_http_ratelimit_ctx_t *ctx);
static void ngx_http_ratelimit_refund_reply(void *data, redisReply *reply);
static ngx_int_t ngx_http_ratelimit_args_init(ngx_http_ratelimit_args_t *args,
    ngx_pool_t *pool, ngx_uint_t n, ngx_uint_t numbers);
static void ngx_http_ratelimit_args_string(ngx_http_ratelimit_args_t *args,
    const char *s, size_t len);
static void ngx_http_ratelimit_args_number(ngx_http_ratelimit_args_t *args,
    int64_t n);
static ngx_int_t ngx_http_ratelimit_verdict(ngx_http_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_headers(ngx_http_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_problem(ngx_http_ratelimit_ctx_t *ctx);
static void ngx_http_ratelimit_resume(ngx_http_ratelimit_ctx_t *ctx);
static ngx_http_ratelimit_trail_t *ngx_http_ratelimit_trail(
    ngx_http_request_t *r, ngx_uint_t create);
static void ngx_http_ratelimit_trail_cleanup(void *data);
static ngx_uint_t ngx_http_ratelimit_trail_seen(
    ngx_http_ratelimit_check_t *check);
static void ngx_http_ratelimit_record(ngx_http_ratelimit_ctx_t *ctx);
static ngx_int_t ngx_http_ratelimit_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_ratelimit_add_header(ngx_http_request_t *r,
    const char *name, u_char *value, u_char *last);
static u_char *ngx_http_ratelimit_escape(ngx_http_request_t *r, u_char *data,
    size_t len, size_t *escaped);
static void ngx_http_ratelimit_learn_clock(ngx_http_ratelimit_conn_t *conn,
    int64_t now_ms);
static void ngx_http_ratelimit_cleanup(void *data);


/* sent as EVAL: refunds are rare (see ngx_http_ratelimit_give_back()) */
static ngx_str_t  ngx_http_ratelimit_refund_script =
    ngx_string(NGX_HTTP_RATELIMIT_LUA_BOUNDS NGX_HTTP_RATELIMIT_LUA_REFUND);


/* indexed by RL_RULE_ALGORITHM_*: in Redis keys and in script arguments */
static ngx_str_t  ngx_http_ratelimit_algorithm_ids[] = {
    ngx_null_string,
    ngx_string("tb"),
    ngx_string("sw")
};


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
static ngx_msec_t  ngx_http_ratelimit_refund_logged_at;



ngx_int_t
ngx_http_ratelimit_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_uint_t                       i;
    ngx_pool_cleanup_t              *cln;
    ngx_http_ratelimit_ctx_t        *ctx;
    ngx_http_ratelimit_use_t        *use;
    ngx_http_ratelimit_check_t      *check;
    ngx_http_ratelimit_loc_conf_t   *rlcf;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    /* as in the access phase: a subrequest is its main request's work */

    if (r != r->main) {
        return NGX_DECLINED;
    }

    rlcf = ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module);

    if (rlcf->uses == NULL) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_ratelimit_module);

    if (ctx == NULL) {
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

        ctx->nchecks = rlcf->uses->nelts;
        ctx->checks = ngx_pcalloc(r->pool, ctx->nchecks
                                           * sizeof(ngx_http_ratelimit_check_t));
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

        use = rlcf->uses->elts;

        for (i = 0; i < ctx->nchecks; i++) {
            check = &ctx->checks[i];
            check->ctx = ctx;

            switch (ngx_http_ratelimit_prepare(check, &use[i])) {

            case NGX_OK:
                check->limits = 1;
                check->active = 1;
                ngx_http_ratelimit_find_rule(check);
                break;

            case NGX_DECLINED:
                break;

            default:
                ctx->error = 1;
            }

            if (ctx->error) {
                break;
            }
        }

        ngx_http_ratelimit_advance(ctx);

        if (!ctx->done) {
            ctx->waiting = 1;

            r->read_event_handler = ngx_http_test_reading;
            r->write_event_handler = ngx_http_request_empty_handler;

            return NGX_AGAIN;
        }

    } else if (!ctx->done) {
        return NGX_AGAIN;
    }

    if (ctx->rc == (ngx_int_t) ctx->conf->status && ctx->denied
        && ctx->conf->problem_details && !ctx->answered)
    {
        /* the problem details are the answer: the phases end here */

        ctx->answered = 1;

        rc = ngx_http_ratelimit_problem(ctx);
        ngx_http_finalize_request(r, rc);

        return NGX_DONE;
    }

    return ctx->rc;
}


/*
 * A check's policy, cost, caller and customer: NGX_OK, NGX_DECLINED when
 * it does not limit this request (every key empty), NGX_ERROR for a 500.
 */

static ngx_int_t
ngx_http_ratelimit_prepare(ngx_http_ratelimit_check_t *check,
    ngx_http_ratelimit_use_t *use)
{
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;

    check->policy = use->policy ? use->policy : &ctx->conf->unnamed;
    check->dry_run = use->dry_run || ctx->conf->dry_run;

    if (ngx_http_ratelimit_cost(check, use) != NGX_OK) {
        return NGX_ERROR;
    }

    check->rule.limit = check->policy->limit;
    check->rule.window = check->policy->window;
    check->rule.algorithm = check->policy->algorithm;

    return ngx_http_ratelimit_caller(check);
}


/* "cost=N" or "cost=$variable": a variable must give a whole number */

static ngx_int_t
ngx_http_ratelimit_cost(ngx_http_ratelimit_check_t *check,
    ngx_http_ratelimit_use_t *use)
{
    u_char              *escaped;
    size_t               len;
    ngx_int_t            n;
    ngx_str_t            value;
    ngx_http_request_t  *r;

    if (use->cost == NULL) {
        check->cost = use->cost_value;
        return NGX_OK;
    }

    r = check->ctx->request;

    if (ngx_http_complex_value(r, use->cost, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    n = ngx_atoi(value.data, value.len);

    if (n == NGX_ERROR || n > RL_RULE_MAX_LIMIT) {
        escaped = ngx_http_ratelimit_escape(r, value.data,
                                            ngx_min(value.len, 64), &len);

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: cost \"%*s\" of policy \"%V\" is not a "
                      "whole number from 0 to %d",
                      len, escaped, &check->policy->name, RL_RULE_MAX_LIMIT);
        return NGX_ERROR;
    }

    check->cost = n;

    return NGX_OK;
}


/*
 * The caller is the first non-empty value of the policy's keys; the
 * customer, whose rule applies, is the policy's customer value, or else
 * the caller.
 */

static ngx_int_t
ngx_http_ratelimit_caller(ngx_http_ratelimit_check_t *check)
{
    ngx_uint_t                    i;
    ngx_str_t                    *names;
    ngx_http_request_t           *r;
    ngx_http_complex_value_t     *cv;
    ngx_http_ratelimit_policy_t  *policy;

    r = check->ctx->request;
    policy = check->policy;

    cv = policy->keys->elts;
    names = policy->key_names->elts;

    for (i = 0; i < policy->keys->nelts; i++) {
        if (ngx_http_complex_value(r, &cv[i], &check->caller) != NGX_OK) {
            return NGX_ERROR;
        }

        if (check->caller.len) {
            check->key_name = &names[i];
            break;
        }
    }

    if (check->caller.len == 0) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ratelimit: every key of policy \"%V\" is empty, "
                       "not limited", &policy->name);
        return NGX_DECLINED;
    }

    check->customer = check->caller;

    if (policy->customer) {
        if (ngx_http_complex_value(r, policy->customer, &check->customer)
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


/*
 * The rule in force for the customer under this policy: the policy's own
 * rule for the customer, else the customer's rule for every policy, else
 * the policy's default.  The cache keeps what applies, per customer and
 * policy; when it does not know, the check asks its shard for the rules
 * (every shard holds every rule) and caches what the shard applied.
 */

static void
ngx_http_ratelimit_find_rule(ngx_http_ratelimit_check_t *check)
{
    rl_limit_t                 rule;
    ngx_str_t                 *policy;
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;

    if (check->customer.len > RL_RULE_MAX_CUSTOMER_ID) {
        return;                 /* no rule can name it: the default */
    }

    policy = check->policy->named ? &check->policy->name : NULL;

    check->field_len = ngx_http_ratelimit_rules_field(check->field,
                                                      &check->customer,
                                                      policy);

    if (ngx_http_ratelimit_rule_cache_get(ctx->zone, check->field,
                                          check->field_len, &rule)
        == NGX_OK)
    {
        ngx_http_ratelimit_apply_rule(check, &rule);
        return;
    }

    check->read_rule = 1;
}


/*
 * A customer's rule over the policy's default: limit 0 is no rule,
 * algorithm NONE the policy's.
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
 * The shard read the customer's rules for this check and says what applied
 * (limit 0: no rule): cached for the customer and policy (until the rule
 * in force expires, if it does), and in force for the check, whose key and
 * limit id follow (the trail records the limit it was really checked
 * against).
 */

static void
ngx_http_ratelimit_learn_rule(ngx_http_ratelimit_check_t *check,
    rl_check_result_t *result)
{
    rl_limit_t                 rule;
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;

    rule.limit = result->rule_limit;
    rule.window = result->rule_window;
    rule.algorithm = (int) result->rule_algorithm;
    rule.expires = 0;

    ngx_http_ratelimit_rule_cache_put(ctx->zone, check->field,
                                      check->field_len, &rule,
                                      (ngx_msec_t) result->rule_ttl_ms,
                                      ctx->epoch);

    check->read_rule = 0;

    ngx_http_ratelimit_apply_rule(check, &rule);
    ngx_http_ratelimit_key(check);

    (void) ngx_http_ratelimit_trail_seen(check);
}


/*
 * Moves the request on as far as it goes without waiting: once every rule
 * is known, the plan; then the groups, one at a time; then the verdict.
 */

static void
ngx_http_ratelimit_advance(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_uint_t  i;

    if (ctx->done) {
        return;
    }

    for ( ;; ) {

        if (ctx->error) {
            break;
        }

        if (ctx->in_flight) {
            return;
        }

        if (!ctx->planned) {
            ctx->planned = 1;
            ngx_http_ratelimit_plan(ctx);
            continue;
        }

        if (ctx->denied || ctx->closed || ctx->current == ctx->ngroups) {
            break;
        }

        if (ngx_http_ratelimit_send_group(ctx) == NGX_OK) {
            return;
        }

        for (i = 0; i < ctx->groups[ctx->current].nchecks; i++) {
            ngx_http_ratelimit_failed(ctx->groups[ctx->current].checks[i],
                                      "shard is unreachable");
        }

        ctx->current++;
    }

    ngx_http_ratelimit_finish(ctx);
}


/*
 * With every rule known: the keys; what the deny cache or a dead shard
 * settles at once; the others grouped by shard, in the ring's order of the
 * shards, the same for every request on every node.
 */

static void
ngx_http_ratelimit_plan(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_uint_t                   i;
    ngx_msec_t                   retry, reset;
    ngx_http_ratelimit_check_t  *check;

    for (i = 0; i < ctx->nchecks; i++) {
        check = &ctx->checks[i];

        if (!check->active) {
            continue;
        }

        ngx_http_ratelimit_key(check);

        if (ngx_http_ratelimit_trail_seen(check)) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP,
                           ctx->request->connection->log, 0,
                           "ratelimit: checked against policy \"%V\" already",
                           &check->policy->name);
            check->active = 0;
            continue;
        }

        /* the cache knows when one unit passes again: a cost of 0 or 1 */

        if (check->cost <= 1
            && ngx_http_ratelimit_deny_cache_get(ctx->zone, check->limit_id,
                                                 check->limit_id_len,
                                                 &retry, &reset)
               == NGX_OK)
        {
            ngx_http_ratelimit_count(denied_cached, 1);

            check->active = 0;
            check->has_result = 1;
            check->result.allowed = 0;
            check->result.remaining = 0;
            check->result.retry_after_ms = retry;
            check->result.reset_ms = reset;
            check->result.t_ms = retry;

            ngx_http_ratelimit_denial(check, 0);
        }
    }

    if (ctx->denied) {
        return;
    }

    for (i = 0; i < ctx->nchecks; i++) {
        check = &ctx->checks[i];

        if (check->active && ngx_http_ratelimit_place(check) == NGX_OK) {
            ngx_http_ratelimit_order(ctx, check, 0);
        }
    }

    if (ctx->closed) {
        return;
    }

    ngx_http_ratelimit_group_shards(ctx, 0);
}


/*
 * The check's shard on the ring: NGX_OK when it may be sent there, else it
 * took its fail path (the shard is down, or this worker has no connection).
 */

static ngx_int_t
ngx_http_ratelimit_place(ngx_http_ratelimit_check_t *check)
{
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;

    check->shard = ngx_http_ratelimit_ring_lookup(ctx->zone->ring, check->key,
                                                  check->key_len);

    check->health = &ctx->zone->ring->health[check->shard];
    check->conn = ngx_http_ratelimit_redis_conn(check->shard);

#if (NGX_DEBUG)
    if (ctx->request->connection->log->log_level & NGX_LOG_DEBUG_HTTP) {
        u_char  *escaped;
        size_t   len;

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
        ngx_http_ratelimit_failed(check, "shard is down");
        return NGX_DECLINED;
    }

    if (check->conn == NULL) {
        ngx_http_ratelimit_failed(check, "no connection to the shard");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * The check joins ctx->order, by shard among the checks from "from" on,
 * then in the location's order: an insertion sort.
 */

static void
ngx_http_ratelimit_order(ngx_http_ratelimit_ctx_t *ctx,
    ngx_http_ratelimit_check_t *check, ngx_uint_t from)
{
    ngx_uint_t  j;

    for (j = ctx->nordered;
         j > from && ctx->order[j - 1]->shard > check->shard;
         j--)
    {
        ctx->order[j] = ctx->order[j - 1];
    }

    ctx->order[j] = check;
    ctx->nordered++;
}


/* the checks of ctx->order from "from" on, made groups, one per shard */

static void
ngx_http_ratelimit_group_shards(ngx_http_ratelimit_ctx_t *ctx,
    ngx_uint_t from)
{
    ngx_uint_t                   i;
    ngx_http_ratelimit_check_t  *check;
    ngx_http_ratelimit_group_t  *group;

    group = NULL;

    for (i = from; i < ctx->nordered; i++) {
        check = ctx->order[i];

        if (i == from || ctx->order[i - 1]->shard != check->shard) {
            group = &ctx->groups[ctx->ngroups++];
            group->shard = check->shard;
            group->conn = check->conn;
            group->health = check->health;
            group->checks = &ctx->order[i];
        }

        group->nchecks++;
    }
}


/*
 * The Redis key: "rl:<algorithm>:<name>:k:<caller>" for a location's
 * unnamed policy, "rl:<algorithm>:@<policy>:<name>:k:<caller>" for a named
 * one, or, for a caller too long to keep as it is, ":h:<SHA-1 of the caller
 * in hex>" at the end.  <name> says which of the policy's values the caller
 * is (the variable's name, as "http_x_user_id" or "remote_addr"): a user id
 * that reads like an address never spends the quota of that address, and
 * two policies never share a count ("@" starts no variable's name).
 *
 * The limit id adds what else decides (limit and window): a denial under
 * one limit says nothing of the same key under another.
 */

static void
ngx_http_ratelimit_key(ngx_http_ratelimit_check_t *check)
{
    u_char  *p;

    check->key_len = ngx_http_ratelimit_redis_key(check->key,
                                                  check->rule.algorithm,
                                                  check->policy,
                                                  check->key_name,
                                                  &check->caller);

    p = ngx_cpymem(check->limit_id, check->key, check->key_len);
    p = ngx_sprintf(p, "%Z%L%Z%L", check->rule.limit, check->rule.window);

    check->limit_id_len = p - check->limit_id;
}


size_t
ngx_http_ratelimit_redis_key(u_char *key, ngx_uint_t algorithm,
    ngx_http_ratelimit_policy_t *policy, ngx_str_t *key_name,
    ngx_str_t *caller)
{
    u_char      *p;
    ngx_str_t   *alg;
    ngx_sha1_t   sha1;
    u_char       digest[20];

    alg = &ngx_http_ratelimit_algorithm_ids[algorithm];

    p = ngx_cpymem(key, "rl:", 3);
    p = ngx_cpymem(p, alg->data, alg->len);
    *p++ = ':';

    if (policy->named) {
        *p++ = '@';
        p = ngx_cpymem(p, policy->name.data, policy->name.len);
        *p++ = ':';
    }

    p = ngx_cpymem(p, key_name->data, key_name->len);
    *p++ = ':';

    if (caller->len <= NGX_HTTP_RATELIMIT_MAX_RAW_KEY - 2) {
        *p++ = 'k';
        *p++ = ':';
        p = ngx_cpymem(p, caller->data, caller->len);

    } else {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, caller->data, caller->len);
        ngx_sha1_final(digest, &sha1);

        *p++ = 'h';
        *p++ = ':';
        p = ngx_hex_dump(p, digest, sizeof(digest));
    }

    return p - key;
}


/*
 * The current group joins the batch of its shard: one call of lua/check.lua
 * at the end of this turn of the event loop decides it, all or nothing,
 * with the checks of other requests for that shard.
 */

static ngx_int_t
ngx_http_ratelimit_send_group(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_uint_t                   i;
    ngx_http_ratelimit_check_t  *check;
    ngx_http_ratelimit_group_t  *group;

    group = &ctx->groups[ctx->current];

    for (i = 0; i < group->nchecks; i++) {
        check = group->checks[i];

        check->wire.key = check->key;
        check->wire.key_len = check->key_len;
        check->wire.algorithm =
                      &ngx_http_ratelimit_algorithm_ids[check->rule.algorithm];
        check->wire.limit = check->rule.limit;
        check->wire.window_ms = check->rule.window * 1000;
        check->wire.cost = check->cost;
        check->wire.dry_run = check->dry_run;

        /* the rule unknown: the customer's rules, read where the key is */

        if (check->read_rule) {
            ngx_http_ratelimit_count(rule_lookups, 1);

            check->wire.field = check->customer.data;
            check->wire.field_len = check->customer.len;

            if (check->policy->named) {
                check->wire.policy_field = check->field;
                check->wire.policy_field_len = check->field_len;

            } else {
                check->wire.policy_field = NULL;
                check->wire.policy_field_len = 0;
            }

        } else {
            check->wire.field = NULL;
            check->wire.field_len = 0;
            check->wire.policy_field = NULL;
            check->wire.policy_field_len = 0;
        }

        group->wire[i] = &check->wire;
    }

    group->member.checks = group->wire;
    group->member.nchecks = group->nchecks;
    group->member.handler = ngx_http_ratelimit_group_done;
    group->member.data = ctx;

    if (ngx_http_ratelimit_batch_add(group->shard, &group->member,
                                     ctx->timeout)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctx->in_flight = 1;

    return NGX_OK;
}


static void
ngx_http_ratelimit_group_done(void *data, ngx_int_t rc,
    rl_check_result_t *results, long long now_ms, const char *why)
{
    ngx_http_ratelimit_ctx_t *ctx = data;

    ngx_uint_t                   i, from, resend;
    ngx_http_ratelimit_check_t  *check;
    ngx_http_ratelimit_group_t  *group;

    group = &ctx->groups[ctx->current];
    ctx->in_flight = 0;

    if (rc != NGX_OK) {
        ngx_http_ratelimit_group_failed(ctx, why);
        return;
    }

    if (now_ms > 0) {
        ngx_http_ratelimit_learn_clock(group->conn, now_ms);
    }

    resend = 0;

    for (i = 0; i < group->nchecks; i++) {
        if (results[i].allowed == -2) {
            resend = 1;
        }

        if (group->checks[i]->read_rule && results[i].rule_limit >= 0) {
            ngx_http_ratelimit_learn_rule(group->checks[i], &results[i]);
        }
    }

    if (resend) {

        /*
         * A rule names another algorithm than the policy's: the checks
         * were under the wrong keys, and the shard decided nothing of the
         * group.  They go out again under their rule's keys, which may
         * live on other shards.
         */

        from = ctx->nordered;

        for (i = 0; i < group->nchecks; i++) {
            check = group->checks[i];

            if (ngx_http_ratelimit_place(check) == NGX_OK) {
                ngx_http_ratelimit_order(ctx, check, from);
            }
        }

        ngx_http_ratelimit_group_shards(ctx, from);

        ctx->current++;
        ngx_http_ratelimit_advance(ctx);
        return;
    }

    for (i = 0; i < group->nchecks; i++) {
        if (results[i].allowed < 0) {

            /*
             * Our idea of the shard's clock was off (it is learnt now):
             * nothing was counted, so the group takes the fail path like a
             * late one.
             */

            ngx_http_ratelimit_group_failed(ctx, "check ran too late");
            return;
        }
    }

    ngx_http_ratelimit_group_decided(ctx, results, now_ms);
}


/*
 * The shard decided the group: taken as a whole, or refused by one of its
 * enforced checks, and then nothing of it was counted.
 */

static void
ngx_http_ratelimit_group_decided(ngx_http_ratelimit_ctx_t *ctx,
    rl_check_result_t *results, long long now_ms)
{
    ngx_uint_t                   i, refused;
    ngx_http_ratelimit_check_t  *check;
    ngx_http_ratelimit_group_t  *group;

    group = &ctx->groups[ctx->current];
    refused = 0;

    for (i = 0; i < group->nchecks; i++) {
        check = group->checks[i];

        check->active = 0;
        check->has_result = 1;
        check->result = results[i];

        if (results[i].allowed == 0 && !check->dry_run) {
            refused = 1;
        }
    }

    for (i = 0; i < group->nchecks; i++) {
        check = group->checks[i];

        if (check->result.allowed) {
            check->status = NGX_HTTP_RATELIMIT_PASSED;

            if (!refused) {
                ngx_http_ratelimit_count(allowed, 1);
                ngx_http_ratelimit_count_outcome(check->policy,
                                             NGX_HTTP_RATELIMIT_OUTCOME_PASSED);

                if (check->cost > 0) {
                    check->taken = 1;
                    group->taken_at = now_ms;
                }
            }

            continue;
        }

        ngx_http_ratelimit_denial(check, 1);
    }

    ctx->current++;

    ngx_http_ratelimit_advance(ctx);
}


/* the group's shard cannot answer: each of its checks takes the fail path */

static void
ngx_http_ratelimit_group_failed(ngx_http_ratelimit_ctx_t *ctx,
    const char *reason)
{
    ngx_uint_t                   i;
    ngx_http_ratelimit_group_t  *group;

    group = &ctx->groups[ctx->current];

    ngx_http_ratelimit_batch_detach(&group->member);
    ctx->in_flight = 0;

    for (i = 0; i < group->nchecks; i++) {
        ngx_http_ratelimit_failed(group->checks[i], reason);
    }

    ctx->current++;

    ngx_http_ratelimit_advance(ctx);
}


/*
 * A check's shard cannot answer: "open" lets it through uncounted,
 * "closed" refuses the request with 503 and a Retry-After of the shard's
 * next probe.
 */

static void
ngx_http_ratelimit_failed(ngx_http_ratelimit_check_t *check,
    const char *reason)
{
    ngx_msec_t                 retry;
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;
    check->active = 0;

    if (ngx_http_ratelimit_log_due(&ngx_http_ratelimit_logged_at)) {
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "ratelimit: %s (%V), failing %s",
                      reason, ngx_http_ratelimit_redis_name(check->conn),
                      ctx->conf->fail == NGX_HTTP_RATELIMIT_FAIL_CLOSED
                      ? "closed" : "open");
    }

    if (ctx->conf->fail != NGX_HTTP_RATELIMIT_FAIL_CLOSED) {
        check->status = NGX_HTTP_RATELIMIT_FAILED_OPEN;
        ngx_http_ratelimit_count(failed_open, 1);
        ngx_http_ratelimit_count_outcome(check->policy,
                                        NGX_HTTP_RATELIMIT_OUTCOME_FAILED_OPEN);
        return;
    }

    check->status = NGX_HTTP_RATELIMIT_FAILED_CLOSED;
    ngx_http_ratelimit_count(failed_closed, 1);
    ngx_http_ratelimit_count_outcome(check->policy,
                                     NGX_HTTP_RATELIMIT_OUTCOME_FAILED_CLOSED);

    retry = check->health ? ngx_http_ratelimit_shard_retry_in(check->health)
                          : 0;

    if (!ctx->closed || retry > ctx->closed_retry) {
        ctx->closed_retry = retry;
    }

    ctx->closed = 1;
}


/*
 * A check's policy refuses the request (or would, in dry run): counted,
 * remembered by the deny cache, logged like limit_req's refusals.
 */

static void
ngx_http_ratelimit_denial(ngx_http_ratelimit_check_t *check,
    ngx_uint_t from_redis)
{
    ngx_http_request_t        *r;
    ngx_http_ratelimit_ctx_t  *ctx;

    ctx = check->ctx;
    r = ctx->request;

    ngx_http_ratelimit_count(denied, 1);
    ngx_http_ratelimit_count_outcome(check->policy, check->dry_run
                                  ? NGX_HTTP_RATELIMIT_OUTCOME_REJECTED_DRY_RUN
                                  : NGX_HTTP_RATELIMIT_OUTCOME_REJECTED);

    if (from_redis) {

        /* until then Redis would refuse one unit as well: spare the asking */

        if (check->cost <= 1) {
            ngx_http_ratelimit_deny_cache_put(ctx->zone, check->limit_id,
                                   check->limit_id_len,
                                   (ngx_msec_t) check->result.retry_after_ms,
                                   (ngx_msec_t) check->result.reset_ms,
                                   ctx->epoch);
        }
    }

    /*
     * The policy and its limit, never the key (often a user id) but at
     * debug; nginx adds the client's address.
     */

    if (check->cost == 1) {
        ngx_log_error(ctx->conf->log_level, r->connection->log, 0,
                      "ratelimit: %slimiting requests by policy \"%V\" "
                      "(%L per %Ls), retry after %L ms",
                      check->dry_run ? "dry run, not " : "",
                      &check->policy->name, check->rule.limit,
                      check->rule.window, check->result.retry_after_ms);

    } else {
        ngx_log_error(ctx->conf->log_level, r->connection->log, 0,
                      "ratelimit: %slimiting requests by policy \"%V\" "
                      "(%L per %Ls, cost %ui), retry after %L ms",
                      check->dry_run ? "dry run, not " : "",
                      &check->policy->name, check->rule.limit,
                      check->rule.window, check->cost,
                      check->result.retry_after_ms);
    }

#if (NGX_DEBUG)
    if (r->connection->log->log_level & NGX_LOG_DEBUG_HTTP) {
        u_char  *escaped;
        size_t   len;

        escaped = ngx_http_ratelimit_escape(r, check->key, check->key_len,
                                            &len);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ratelimit: key \"%*s\" is over its limit",
                       len, escaped);
    }
#endif

    if (check->dry_run) {
        check->status = NGX_HTTP_RATELIMIT_REJECTED_DRY_RUN;
        return;
    }

    check->status = NGX_HTTP_RATELIMIT_REJECTED;
    ctx->denied = 1;
}


/*
 * Every check is settled: what a refused request had taken goes back, the
 * verdict and its headers are set, and a parked request runs on.
 */

static void
ngx_http_ratelimit_finish(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_int_t  rc;

    ngx_http_ratelimit_cleanup(ctx);

    if (ctx->error) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;

    } else {
        if (ctx->denied || ctx->closed) {
            ngx_http_ratelimit_give_back(ctx);
        }

        rc = ngx_http_ratelimit_verdict(ctx);

        if (rc != NGX_HTTP_INTERNAL_SERVER_ERROR
            && ngx_http_ratelimit_headers(ctx) != NGX_OK)
        {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_ratelimit_record(ctx);
    }

    ctx->rc = rc;
    ctx->done = 1;

    if (ctx->waiting) {
        ngx_http_ratelimit_resume(ctx);
    }
}


/*
 * A request refused on one shard gives back what it took on the shards
 * before: one call of lua/refund.lua per such shard, sent as EVAL (refunds
 * are rare, and nothing waits for them to resend after a NOSCRIPT).  A
 * refund that cannot be sent is logged: the caller has lost that quota
 * until the window passes, never gained any.
 */

static void
ngx_http_ratelimit_give_back(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_str_t                    *alg;
    ngx_uint_t                    g, i, n;
    ngx_http_ratelimit_args_t     args;
    ngx_http_ratelimit_check_t   *check;
    ngx_http_ratelimit_group_t   *group;
    ngx_str_t                    *script;

    script = &ngx_http_ratelimit_refund_script;

    for (g = 0; g < ctx->ngroups; g++) {
        group = &ctx->groups[g];

        if (group->taken_at == 0) {
            continue;
        }

        if (ngx_http_ratelimit_args_init(&args, ctx->request->pool,
                             3 + group->nchecks
                               * (1 + NGX_HTTP_RATELIMIT_REFUND_ARGS),
                             1 + group->nchecks * 4)
            != NGX_OK)
        {
            return;
        }

        ngx_http_ratelimit_args_string(&args, "EVAL", 4);
        ngx_http_ratelimit_args_string(&args, (const char *) script->data,
                                       script->len);

        n = 0;

        for (i = 0; i < group->nchecks; i++) {
            n += group->checks[i]->taken;
        }

        ngx_http_ratelimit_args_number(&args, n);

        for (i = 0; i < group->nchecks; i++) {
            check = group->checks[i];

            if (check->taken) {
                ngx_http_ratelimit_args_string(&args,
                                               (const char *) check->key,
                                               check->key_len);
            }
        }

        for (i = 0; i < group->nchecks; i++) {
            check = group->checks[i];

            if (!check->taken) {
                continue;
            }

            alg = &ngx_http_ratelimit_algorithm_ids[check->rule.algorithm];

            ngx_http_ratelimit_args_string(&args, (const char *) alg->data,
                                           alg->len);
            ngx_http_ratelimit_args_number(&args, check->rule.limit);
            ngx_http_ratelimit_args_number(&args, check->rule.window * 1000);
            ngx_http_ratelimit_args_number(&args, check->cost);
            ngx_http_ratelimit_args_number(&args, group->taken_at);

            /*
             * The headers tell what is left once it is given back; "t"
             * stays: both algorithms give units back at a pace that does
             * not depend on how many are left.
             */

            check->taken = 0;
            check->result.remaining += check->cost;

            if (check->result.remaining > check->rule.limit) {
                check->result.remaining = check->rule.limit;
            }
        }

        group->taken_at = 0;

        if (ngx_http_ratelimit_redis_send(group->conn, args.argc, args.argv,
                                          args.argvlen,
                                          ngx_http_ratelimit_refund_reply,
                                          NULL)
            == NULL)
        {
            if (ngx_http_ratelimit_log_due(
                                       &ngx_http_ratelimit_refund_logged_at))
            {
                ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                              "ratelimit: could not give back what a refused "
                              "request took on shard %V",
                              ngx_http_ratelimit_redis_name(group->conn));
            }

            continue;
        }

        ngx_http_ratelimit_count(refunds, n);
    }
}


/*
 * Room for n arguments of a script call, "numbers" of them numbers, from
 * the request's pool: hiredis copies them all when the call is queued.
 */

static ngx_int_t
ngx_http_ratelimit_args_init(ngx_http_ratelimit_args_t *args,
    ngx_pool_t *pool, ngx_uint_t n, ngx_uint_t numbers)
{
    args->argv = ngx_palloc(pool, n * (sizeof(const char *) + sizeof(size_t)));
    if (args->argv == NULL) {
        return NGX_ERROR;
    }

    args->argvlen = (size_t *) (args->argv + n);
    args->argc = 0;

    args->last = ngx_pnalloc(pool, numbers * NGX_INT64_LEN);
    if (args->last == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_args_string(ngx_http_ratelimit_args_t *args,
    const char *s, size_t len)
{
    args->argv[args->argc] = s;
    args->argvlen[args->argc++] = len;
}


static void
ngx_http_ratelimit_args_number(ngx_http_ratelimit_args_t *args, int64_t n)
{
    u_char  *p;

    p = args->last;
    args->last = ngx_sprintf(p, "%L", n);

    ngx_http_ratelimit_args_string(args, (const char *) p, args->last - p);
}


/* nobody waits for a refund: a failure is only logged */

static void
ngx_http_ratelimit_refund_reply(void *data, redisReply *reply)
{
    const char  *why;
    long long    now_ms;

    if (reply == NULL) {
        why = "connection lost";

    } else if (rl_reply_decode_refund(reply, &now_ms, &why) == RL_REPLY_OK) {
        return;
    }

    if (ngx_http_ratelimit_log_due(&ngx_http_ratelimit_refund_logged_at)) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ratelimit: giving back what a refused request took "
                      "failed: %s", why);
    }
}


/*
 * The verdict: 500 if anything broke, 503 when failing closed, the
 * location's status (429) when a policy refused, else on to the content.
 * Retry-After is the latest of the refusing policies' times: the earliest
 * moment the same request can pass.
 */

static ngx_int_t
ngx_http_ratelimit_verdict(ngx_http_ratelimit_ctx_t *ctx)
{
    u_char                      *p;
    ngx_uint_t                   i;
    long long                    retry;
    ngx_http_ratelimit_check_t  *check;
    u_char                       buf[NGX_INT64_LEN];

    if (ctx->denied) {
        retry = 0;

        for (i = 0; i < ctx->nchecks; i++) {
            check = &ctx->checks[i];

            if (check->status == NGX_HTTP_RATELIMIT_REJECTED
                && check->result.retry_after_ms > retry)
            {
                retry = check->result.retry_after_ms;
            }
        }

        p = ngx_sprintf(buf, "%L", rl_retry_after_seconds(retry));

        if (ngx_http_ratelimit_add_header(ctx->request, "Retry-After", buf, p)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ctx->conf->status;
    }

    if (ctx->closed) {
        p = ngx_sprintf(buf, "%L",
                        rl_retry_after_seconds((long long) ctx->closed_retry));

        if (ngx_http_ratelimit_add_header(ctx->request, "Retry-After", buf, p)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    return NGX_DECLINED;
}


/*
 * draft-ietf-httpapi-ratelimit-headers-11: RateLimit-Policy names every
 * policy of the request with the quota (q) and window (w) in force;
 * RateLimit gives, for each policy a shard (or the deny cache) decided, the
 * units left (r) and the effective window (t): the seconds within which no
 * more than r can be used, never more than w, and on a refusal the policy's
 * Retry-After.  "legacy": X-RateLimit-* of the most restrictive policy, the
 * one that refused, or else the one with the fewest units left.
 */

static ngx_int_t
ngx_http_ratelimit_headers(ngx_http_ratelimit_ctx_t *ctx)
{
    u_char                      *p, *q, *policy, *limit;
    size_t                       len;
    ngx_uint_t                   i;
    long long                    t;
    ngx_http_request_t          *r;
    ngx_http_ratelimit_check_t  *check, *worst;
    u_char                       buf[NGX_INT64_LEN];

    r = ctx->request;

    switch (ctx->conf->headers) {

    case NGX_HTTP_RATELIMIT_HEADERS_DRAFT:
        len = 0;

        for (i = 0; i < ctx->nchecks; i++) {
            len += sizeof("\"\";q=;w=, ") - 1 + RL_RULE_MAX_POLICY
                   + 2 * NGX_INT64_LEN;
        }

        policy = ngx_pnalloc(r->pool, 2 * len);
        if (policy == NULL) {
            return NGX_ERROR;
        }

        limit = policy + len;
        p = policy;
        q = limit;

        for (i = 0; i < ctx->nchecks; i++) {
            check = &ctx->checks[i];

            /*
             * A rule nobody has read yet (its shard was not asked: another
             * policy refused first) is not stated: the default might not
             * be what is in force.
             */

            if (!check->limits || check->read_rule) {
                continue;
            }

            if (p != policy) {
                p = ngx_cpymem(p, ", ", 2);
            }

            p = ngx_sprintf(p, "\"%V\";q=%L;w=%L", &check->policy->name,
                            check->rule.limit, check->rule.window);

            if (!check->has_result) {
                continue;
            }

            t = rl_retry_after_seconds(check->result.t_ms);

            if (t > check->rule.window) {
                t = check->rule.window;
            }

            if (q != limit) {
                q = ngx_cpymem(q, ", ", 2);
            }

            q = ngx_sprintf(q, "\"%V\";r=%L;t=%L", &check->policy->name,
                            check->result.remaining, t);
        }

        if (p != policy
            && ngx_http_ratelimit_add_header(r, "RateLimit-Policy", policy, p)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (q != limit
            && ngx_http_ratelimit_add_header(r, "RateLimit", limit, q)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        return NGX_OK;

    case NGX_HTTP_RATELIMIT_HEADERS_LEGACY:
        worst = NULL;

        for (i = 0; i < ctx->nchecks; i++) {
            check = &ctx->checks[i];

            if (!check->has_result) {
                continue;
            }

            if (worst == NULL) {
                worst = check;
                continue;
            }

            if (check->status == NGX_HTTP_RATELIMIT_REJECTED) {
                if (worst->status != NGX_HTTP_RATELIMIT_REJECTED
                    || check->result.retry_after_ms
                       > worst->result.retry_after_ms)
                {
                    worst = check;
                }

                continue;
            }

            if (worst->status != NGX_HTTP_RATELIMIT_REJECTED
                && check->result.remaining < worst->result.remaining)
            {
                worst = check;
            }
        }

        if (worst == NULL) {
            return NGX_OK;
        }

        p = ngx_sprintf(buf, "%L", worst->rule.limit);

        if (ngx_http_ratelimit_add_header(r, "X-RateLimit-Limit", buf, p)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_sprintf(buf, "%L", worst->result.remaining);

        if (ngx_http_ratelimit_add_header(r, "X-RateLimit-Remaining", buf, p)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        p = ngx_sprintf(buf, "%L", rl_reset_seconds(worst->result.reset_ms));

        return ngx_http_ratelimit_add_header(r, "X-RateLimit-Reset", buf, p);

    default: /* NGX_HTTP_RATELIMIT_HEADERS_OFF */
        return NGX_OK;
    }
}


/*
 * The refusal as an RFC 9457 problem, of draft-11's "quota-exceeded" type,
 * naming the violated policies; sent here, so the request ends with it.
 */

static ngx_int_t
ngx_http_ratelimit_problem(ngx_http_ratelimit_ctx_t *ctx)
{
    u_char                      *p;
    size_t                       len;
    ngx_buf_t                   *b;
    ngx_uint_t                   i, n;
    ngx_http_request_t          *r;
    ngx_http_ratelimit_check_t  *check;

    static ngx_str_t  type = ngx_string("application/problem+json");
    static u_char     head[] =
        "{\"type\":\"https://iana.org/assignments/http-problem-types"
        "#quota-exceeded\",\"title\":\"Request cannot be satisfied as "
        "assigned quota has been exceeded\",\"status\":";

    r = ctx->request;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    len = sizeof(head) - 1 + NGX_INT_T_LEN
          + sizeof(",\"violated-policies\":[]}\n") - 1;

    for (i = 0; i < ctx->nchecks; i++) {
        len += RL_RULE_MAX_POLICY + sizeof("\"\",") - 1;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, head, sizeof(head) - 1);
    p = ngx_sprintf(p, "%ui,\"violated-policies\":[", ctx->rc);

    n = 0;

    for (i = 0; i < ctx->nchecks; i++) {
        check = &ctx->checks[i];

        if (check->status != NGX_HTTP_RATELIMIT_REJECTED) {
            continue;
        }

        /* policy names are letters, digits, "_", "-", ".": nothing to escape */

        p = ngx_sprintf(p, "%s\"%V\"", n++ ? "," : "", &check->policy->name);
    }

    p = ngx_cpymem(p, "]}\n", 3);

    b->last = p;

    return ngx_http_ratelimit_send(r, ctx->rc, &type, type.len, b);
}


static void
ngx_http_ratelimit_resume(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    ctx->waiting = 0;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
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
 * PASSED), the first policy behind the worst rejection, the fewest units
 * left.  A request an internal redirect checks again keeps the latest
 * verdict; checks that limited nothing leave the earlier one.
 */

static void
ngx_http_ratelimit_record(ngx_http_ratelimit_ctx_t *ctx)
{
    ngx_uint_t                   i, status;
    ngx_str_t                   *policy;
    long long                    remaining;
    ngx_http_ratelimit_check_t  *check;
    ngx_http_ratelimit_trail_t  *trail;

    status = NGX_HTTP_RATELIMIT_NOT_LIMITED;
    remaining = -1;
    policy = NULL;

    for (i = 0; i < ctx->nchecks; i++) {
        check = &ctx->checks[i];

        if (check->status > status) {
            status = check->status;

            if (status >= NGX_HTTP_RATELIMIT_REJECTED_DRY_RUN) {
                policy = &check->policy->name;
            }
        }

        if (check->has_result
            && (remaining < 0 || check->result.remaining < remaining))
        {
            remaining = check->result.remaining;
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
    trail->policy = policy;
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

    /* an answer may still come: it must find nobody, not freed memory */

    if (ctx->in_flight) {
        ngx_http_ratelimit_batch_detach(&ctx->groups[ctx->current].member);
        ctx->in_flight = 0;
    }
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


/* each worker keeps the offset of each shard's clock to its own */

static void
ngx_http_ratelimit_learn_clock(ngx_http_ratelimit_conn_t *conn, int64_t now_ms)
{
    *ngx_http_ratelimit_redis_clock_offset(conn) =
                    (ngx_msec_int_t) (now_ms - ngx_http_ratelimit_local_ms());
}
