
/*
 * Global API rate limiter: the rules store.  One customer's rule as the
 * shards hold it: a change written to every shard, and undone on every
 * shard that took it or may still take it when one cannot; a read from the
 * first live shard.  Asynchronous, and knows nothing of HTTP.
 */


#ifndef _NGX_HTTP_RATELIMIT_RULES_STORE_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_RULES_STORE_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"
#include "ngx_http_ratelimit_rules.h"
#include "rl_rule.h"

#include <hiredis/hiredis.h>


typedef struct ngx_http_ratelimit_rules_op_s  ngx_http_ratelimit_rules_op_t;


/*
 * How an operation ended.  OK: every shard holds the change, or a shard
 * answered the read.  OUTDATED: every shard kept a newer change of the same
 * customer instead.  DOWN: a shard is known to be down, nothing was sent.
 * UNSENT: no shard could be sent the command.  FAILED: some shard could not
 * take the change, which was undone; or no shard answered the read in time.
 */
#define NGX_HTTP_RATELIMIT_RULES_OK        1
#define NGX_HTTP_RATELIMIT_RULES_OUTDATED  2
#define NGX_HTTP_RATELIMIT_RULES_DOWN      3
#define NGX_HTTP_RATELIMIT_RULES_UNSENT    4
#define NGX_HTTP_RATELIMIT_RULES_FAILED    5

/*
 * Called once, from an event handler, never from inside write() or read(),
 * and never after cancel().  "rule", with OK only: after a read, the rule in
 * force (NULL: the customer has none); after a write, the rule the change
 * replaced on some shard (NULL: there was none).  The caller may free the
 * pool from inside the handler.
 */
typedef void (*ngx_http_ratelimit_rules_done_pt)(void *data,
    ngx_int_t outcome, rl_limit_t *rule);


/*
 * write() stores "rule" as the customer's rule, or deletes it when "rule"
 * is NULL; read() asks for it.  "customer" is the rule's field in the
 * rules hash, as ngx_http_ratelimit_rules_field() makes it: the customer
 * id, and the policy after it for the rule of one policy; the store takes
 * it as it is (only rule->limit, window, algorithm and expires_at are
 * stored).  Both allocate from "pool", which must last
 * until the handler is called or the operation is cancelled, log to "log",
 * and wait "timeout" for the shards (a failed write waits as long again
 * for its undo).
 *
 * NGX_AGAIN: under way, *handle is its handle, the handler will tell how it
 * ended.  An outcome: known at once, the handler is not called.  NGX_ERROR:
 * out of memory, nothing was sent.
 *
 * cancel(): the caller is gone; the shards' answers are dropped.  Harmless
 * after the handler was called.
 */
ngx_int_t ngx_http_ratelimit_rules_store_write(ngx_http_ratelimit_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *customer, rl_rule_t *rule,
    ngx_msec_t timeout, ngx_http_ratelimit_rules_done_pt handler, void *data,
    ngx_http_ratelimit_rules_op_t **handle);
ngx_int_t ngx_http_ratelimit_rules_store_read(ngx_http_ratelimit_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *customer, ngx_msec_t timeout,
    ngx_http_ratelimit_rules_done_pt handler, void *data,
    ngx_http_ratelimit_rules_op_t **handle);
void ngx_http_ratelimit_rules_store_cancel(ngx_http_ratelimit_rules_op_t *op);


/*
 * Called once, as the handler above, with the reply when a shard answered
 * (OK; any reply but none at all, which the caller judges), or with NULL
 * and how it failed.  The reply is freed once the handler returns.
 */
typedef void (*ngx_http_ratelimit_rules_reply_pt)(void *data,
    ngx_int_t outcome, redisReply *reply);

/*
 * One command of the admin endpoint's own: to the first live shard from
 * the place of "route" on the ring, and to the next live one when it
 * fails (every shard holds the rules); or, "route" NULL, to shard "shard"
 * alone (a caller's counter lives there), DOWN when it is known to be
 * down.  argv and argvlen are copied; the strings they point at must last
 * as long as "pool" (or be static).  "what" names the command in log
 * lines.  Returns as the functions above.
 */
ngx_int_t ngx_http_ratelimit_rules_store_call(ngx_http_ratelimit_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *what, ngx_str_t *route,
    ngx_uint_t shard, ngx_uint_t argc, const char **argv, size_t *argvlen,
    ngx_msec_t timeout, ngx_http_ratelimit_rules_reply_pt handler,
    void *data, ngx_http_ratelimit_rules_op_t **handle);

/* the shard of a Redis key on the ring, and its name ("host:port") */
ngx_uint_t ngx_http_ratelimit_rules_store_shard(
    ngx_http_ratelimit_zone_t *zone, u_char *key, size_t len,
    ngx_str_t **name);

/*
 * The rules version moved on every shard that can be sent the command, not
 * waiting for answers: every edge node drops its cached rules and denials
 * at its next poll, this one at once.
 */
void ngx_http_ratelimit_rules_store_touch(ngx_http_ratelimit_zone_t *zone);


#endif /* _NGX_HTTP_RATELIMIT_RULES_STORE_H_INCLUDED_ */
