
/*
 * Global API rate limiter: the checks bound for one shard in one turn of
 * the event loop, from many requests, sent as ONE call of lua/check.lua.
 */


#ifndef _NGX_HTTP_RATELIMIT_BATCH_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_BATCH_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"
#include "rl_reply.h"


/*
 * The most checks one call carries: enough to gather a busy turn of the
 * event loop, few enough that one slow call holds few requests.
 */
#define NGX_HTTP_RATELIMIT_BATCH_MAX  64


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


typedef struct ngx_http_ratelimit_batch_s  ngx_http_ratelimit_batch_t;


/* a check as lua/check.lua takes it */
typedef struct {
    u_char                            *key;
    size_t                             key_len;
    ngx_str_t                         *algorithm;   /* "tb" or "sw" */
    int64_t                            limit;
    int64_t                            window_ms;
    ngx_uint_t                         cost;
    ngx_uint_t                         dry_run;

    /* the rules to read, when the node does not know them (else NULL) */
    u_char                            *field;         /* the customer's */
    size_t                             field_len;
    u_char                            *policy_field;  /* for the policy */
    size_t                             policy_field_len;
} ngx_http_ratelimit_batch_check_t;


/*
 * How a member's checks ended: NGX_OK with a result per check and the
 * shard's clock, else NGX_ERROR (with why: unreachable, lost, an unusable
 * reply) or NGX_ETIMEDOUT.  Called once, never from inside
 * ngx_http_ratelimit_batch_add() or _detach().
 */
typedef void (*ngx_http_ratelimit_batch_pt)(void *data, ngx_int_t rc,
    rl_check_result_t *results, long long now_ms, const char *why);


/*
 * One request's checks for one shard, decided all or nothing: a group of
 * the call.  The request owns it (and keeps it alive while it is in a
 * batch); the batch only points at it.
 */
typedef struct {
    ngx_http_ratelimit_batch_check_t **checks;
    ngx_uint_t                         nchecks;
    int64_t                            deadline;    /* shard's clock, ms */

    ngx_http_ratelimit_batch_pt        handler;
    void                              *data;

    /* the batch's */
    ngx_http_ratelimit_batch_t        *batch;       /* NULL: in none */
    ngx_uint_t                         index;       /* in the batch */
    ngx_uint_t                         first;       /* its first result */
} ngx_http_ratelimit_member_t;


/*
 * Queues the member's checks for the shard; they go out at the end of this
 * turn of the event loop, with every other check queued for the shard
 * meanwhile (up to NGX_HTTP_RATELIMIT_BATCH_MAX a call).  NGX_ERROR: no
 * memory, take the fail path.
 */
ngx_int_t ngx_http_ratelimit_batch_add(ngx_uint_t shard,
    ngx_http_ratelimit_member_t *member, ngx_msec_t timeout);

/*
 * The member's owner is gone or gave up: it leaves its batch and is never
 * called.  A batch that nobody waits for any more is withdrawn if it was
 * not written yet (ngx_http_ratelimit_redis_detach()).
 */
void ngx_http_ratelimit_batch_detach(ngx_http_ratelimit_member_t *member);

/*
 * A shard that owes an answer older than "timeout" (or took that long to
 * connect) is dropped, as a check batch's timeout drops it: for the admin
 * commands and the rules poll, on a node whose checks might not notice.
 */
void ngx_http_ratelimit_batch_drop_stalled(ngx_http_ratelimit_conn_t *conn,
    ngx_msec_t timeout);

void ngx_http_ratelimit_batch_exit_process(void);


#endif /* _NGX_HTTP_RATELIMIT_BATCH_H_INCLUDED_ */
