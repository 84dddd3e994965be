
/*
 * Global API rate limiter: each worker's connections to the Redis shards,
 * pipelined, one per shard.  hiredis formats the commands and parses the
 * replies.
 */


#ifndef _NGX_HTTP_RATELIMIT_REDIS_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_REDIS_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"

#include <hiredis/hiredis.h>


/*
 * Called once per queued command, from an event handler, never from inside
 * ngx_http_ratelimit_redis_send(): with the reply, or with NULL when the
 * connection failed before the reply came.  The reply is freed afterwards.
 */
typedef void (*ngx_http_ratelimit_reply_pt)(void *data, redisReply *reply);

/*
 * Every function below accepts a NULL conn (as ngx_http_ratelimit_redis_conn()
 * returns for a shard this worker does not know) and a NULL slot: send()
 * returns NULL (take the fail path), stuck() 0, name() "no shard",
 * clock_offset() NULL; fail() and detach() do nothing.
 *
 * send() also returns NULL when the connection holds too many commands or
 * unsent bytes (a shard slower than its callers), without calling back.
 *
 * detach(): the owner of a slot is gone.  A command not yet written is
 * withdrawn (the shard never sees it, the slot is reused at once): NGX_OK.
 * One already written, even in part, is answered later and the answer
 * dropped: NGX_DECLINED, the shard may still run it.  Either way the handler
 * is never called, and the slot must not be used again.
 *
 * stuck(): the shard is slower than "timeout": the oldest command it owes
 * an answer was queued that long ago, or connecting took that long.  Then
 * fail() it, so every waiting command takes its fail path at once.
 *
 * clock_offset(): a field kept per connection for its owner's use, 0 until
 * written, kept across reconnects (the shard's clock minus the worker's).
 */

/*
 * What the connections tell their owner, which keeps the shards' health
 * and the counters: a command queued, a write made, a reply read (the shard
 * answers), the connection failed (reason says why).
 */
#define NGX_HTTP_RATELIMIT_REDIS_COMMAND  0
#define NGX_HTTP_RATELIMIT_REDIS_WRITE    1
#define NGX_HTTP_RATELIMIT_REDIS_REPLY    2
#define NGX_HTTP_RATELIMIT_REDIS_FAILED   3

typedef void (*ngx_http_ratelimit_redis_event_pt)(ngx_uint_t shard,
    ngx_uint_t event, const char *reason, ngx_log_t *log);


/* one connection per "ratelimit_redis" shard (shard_conf_t) of the array */
ngx_int_t ngx_http_ratelimit_redis_init_process(ngx_cycle_t *cycle,
    ngx_array_t *shards, ngx_http_ratelimit_redis_event_pt event);
void ngx_http_ratelimit_redis_exit_process(ngx_cycle_t *cycle);
ngx_http_ratelimit_conn_t *ngx_http_ratelimit_redis_conn(ngx_uint_t shard);
ngx_http_ratelimit_slot_t *ngx_http_ratelimit_redis_send(
    ngx_http_ratelimit_conn_t *conn, int argc, const char **argv,
    const size_t *argvlen, ngx_http_ratelimit_reply_pt handler, void *data);
ngx_int_t ngx_http_ratelimit_redis_detach(ngx_http_ratelimit_slot_t *slot);
void ngx_http_ratelimit_redis_fail(ngx_http_ratelimit_conn_t *conn,
    const char *reason);
/* the shard's address changed: leave the old node, connect to the new */
void ngx_http_ratelimit_redis_moved(ngx_http_ratelimit_conn_t *conn);
ngx_uint_t ngx_http_ratelimit_redis_stuck(ngx_http_ratelimit_conn_t *conn,
    ngx_msec_t timeout);
ngx_str_t *ngx_http_ratelimit_redis_name(ngx_http_ratelimit_conn_t *conn);
ngx_msec_int_t *ngx_http_ratelimit_redis_clock_offset(
    ngx_http_ratelimit_conn_t *conn);
/* a field kept per connection for the batches (NULL conn: not allowed) */
void **ngx_http_ratelimit_redis_batch(ngx_http_ratelimit_conn_t *conn);



#endif /* _NGX_HTTP_RATELIMIT_REDIS_H_INCLUDED_ */
