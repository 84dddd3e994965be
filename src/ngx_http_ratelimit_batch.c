
/*
 * Global API rate limiter: batches of checks.
 *
 * Redis spends most of a check entering the script, not deciding: one call
 * that decides many checks costs far less per check than a call each.  So
 * every check a worker sends to a shard during one turn of the event loop
 * (several requests', and several policies of one request) waits in the
 * shard's open batch, and a posted event sends the batch as ONE call of
 * lua/check.lua at the end of the turn, each request's checks a group of
 * their own (all or nothing).  A full batch is closed and a new one opened;
 * the closed one still goes out at the end of the turn, never from inside
 * the request that filled it.
 *
 * Each batch keeps one timer for all its requests (they were queued in the
 * same turn, so their timeouts would fall within a millisecond), and the
 * arguments of its call in itself: nothing is allocated per check.  Batches
 * are reused.
 */


#include "ngx_http_ratelimit_batch.h"
#include "ngx_http_ratelimit_redis.h"
#include "ngx_http_ratelimit_stats.h"
#include "ngx_http_ratelimit_metrics.h"
#include "ngx_http_ratelimit_scripts.h"

#include <ngx_sha1.h>


/* lua/check.lua's values per check, after its key */
#define NGX_HTTP_RATELIMIT_CHECK_ARGS  9

#define NGX_HTTP_RATELIMIT_BATCH_ARGS                                         \
    (3 + NGX_HTTP_RATELIMIT_BATCH_MAX * (1 + NGX_HTTP_RATELIMIT_CHECK_ARGS))

/* per check: its group, deadline, limit, window and cost, as digits */
#define NGX_HTTP_RATELIMIT_BATCH_DIGITS                                       \
    (NGX_INT_T_LEN + NGX_HTTP_RATELIMIT_BATCH_MAX * 5 * NGX_INT64_LEN)


struct ngx_http_ratelimit_batch_s {
    ngx_http_ratelimit_conn_t         *conn;
    ngx_uint_t                         shard;
    ngx_msec_t                         timeout;

    ngx_http_ratelimit_member_t       *members[NGX_HTTP_RATELIMIT_BATCH_MAX];
    ngx_uint_t                         nmembers;
    ngx_uint_t                         nchecks;
    ngx_uint_t                         waiting;    /* members still there */
    ngx_uint_t                         sent;       /* checks in the call */

    ngx_http_ratelimit_slot_t         *slot;       /* the call in flight */
    uint64_t                           sent_at;    /* us, monotonic */
    ngx_event_t                        send;       /* posted: end of turn */
    ngx_event_t                        timer;

    const char                        *argv[NGX_HTTP_RATELIMIT_BATCH_ARGS];
    size_t                             argvlen[NGX_HTTP_RATELIMIT_BATCH_ARGS];
    u_char                             digits[NGX_HTTP_RATELIMIT_BATCH_DIGITS];

    ngx_http_ratelimit_batch_t        *next;       /* free, or every one */
    ngx_http_ratelimit_batch_t        *all;

    unsigned                           eval:1;     /* resent after NOSCRIPT */
};


typedef struct {
    ngx_str_t                          body;
    u_char                             sha1[40];
} ngx_http_ratelimit_batch_script_t;


static ngx_http_ratelimit_batch_t *ngx_http_ratelimit_batch_get(
    ngx_http_ratelimit_conn_t *conn, ngx_uint_t shard, ngx_msec_t timeout);
static void ngx_http_ratelimit_batch_put(ngx_http_ratelimit_batch_t *batch);
static void ngx_http_ratelimit_batch_send_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_ratelimit_batch_send(
    ngx_http_ratelimit_batch_t *batch);
static u_char *ngx_http_ratelimit_batch_number(
    ngx_http_ratelimit_batch_t *batch, ngx_uint_t arg, u_char *p, int64_t n);
static void ngx_http_ratelimit_batch_reply(void *data, redisReply *reply);
static void ngx_http_ratelimit_batch_timeout(ngx_event_t *ev);
static void ngx_http_ratelimit_batch_fail_conn(
    ngx_http_ratelimit_conn_t *conn, const char *reason);
static void ngx_http_ratelimit_batch_end(ngx_http_ratelimit_batch_t *batch,
    ngx_int_t rc, rl_check_result_t *results, long long now_ms,
    const char *why);
static ngx_http_ratelimit_batch_script_t *ngx_http_ratelimit_batch_script(
    void);


static ngx_http_ratelimit_batch_script_t  ngx_http_ratelimit_check_script = {
    ngx_string(NGX_HTTP_RATELIMIT_LUA_BOUNDS NGX_HTTP_RATELIMIT_LUA_CHECK), ""
};


/* this worker's batches: reused, every one of them freed at exit */
static ngx_http_ratelimit_batch_t  *ngx_http_ratelimit_free_batches;
static ngx_http_ratelimit_batch_t  *ngx_http_ratelimit_all_batches;

/*
 * What the batch timers' data points at: nginx's timer code logs the fd of
 * an event's connection, and a batch has none.  The handler finds its batch
 * from the event itself.
 */
static ngx_connection_t  ngx_http_ratelimit_batch_ident;

/* request-time complaints: at most one line a second per worker */
static ngx_msec_t  ngx_http_ratelimit_batch_logged_at;

/*
 * Set while this worker drops the connection to a stalled shard: the shard
 * may yet wake up and run the batches it has been sent, each up to its
 * deadline, so their requests wait out their own timeout rather than take
 * the fail path early and still be counted.
 */
static ngx_uint_t  ngx_http_ratelimit_dropping_stalled;


ngx_int_t
ngx_http_ratelimit_batch_add(ngx_uint_t shard,
    ngx_http_ratelimit_member_t *member, ngx_msec_t timeout)
{
    void                       **open;
    ngx_http_ratelimit_conn_t   *conn;
    ngx_http_ratelimit_batch_t  *batch;

    conn = ngx_http_ratelimit_redis_conn(shard);
    if (conn == NULL) {
        return NGX_ERROR;
    }

    open = ngx_http_ratelimit_redis_batch(conn);
    batch = *open;

    if (batch
        && (batch->nchecks + member->nchecks > NGX_HTTP_RATELIMIT_BATCH_MAX
            || batch->nmembers == NGX_HTTP_RATELIMIT_BATCH_MAX))
    {
        /* full: it goes out at the end of the turn all the same */

        batch = NULL;
    }

    if (batch == NULL) {
        batch = ngx_http_ratelimit_batch_get(conn, shard, timeout);
        if (batch == NULL) {
            return NGX_ERROR;
        }

        *open = batch;
    }

    /*
     * The deadline is the timeout in the shard's clock, as far as the
     * shard's replies have told it (the offset is 0 until the first one: a
     * clock far off costs that one batch its fail path).
     */

    member->deadline = ngx_http_ratelimit_local_ms()
                       + *ngx_http_ratelimit_redis_clock_offset(conn)
                       + (int64_t) timeout;

    if (member->deadline < 0) {
        member->deadline = 0;
    }

    member->batch = batch;
    member->index = batch->nmembers;

    batch->members[batch->nmembers++] = member;
    batch->nchecks += member->nchecks;
    batch->waiting++;

    return NGX_OK;
}


void
ngx_http_ratelimit_batch_detach(ngx_http_ratelimit_member_t *member)
{
    ngx_http_ratelimit_batch_t  *batch;

    batch = member->batch;

    if (batch == NULL) {
        return;
    }

    batch->members[member->index] = NULL;
    member->batch = NULL;

    if (--batch->waiting || batch->send.posted) {
        return;
    }

    /* nobody waits for the call: taken back if not written yet */

    if (batch->slot) {
        (void) ngx_http_ratelimit_redis_detach(batch->slot);
        batch->slot = NULL;
    }

    ngx_http_ratelimit_batch_put(batch);
}


void
ngx_http_ratelimit_batch_exit_process(void)
{
    ngx_http_ratelimit_batch_t  *batch, *next;

    for (batch = ngx_http_ratelimit_all_batches; batch; batch = next) {
        next = batch->all;

        if (batch->send.posted) {
            ngx_delete_posted_event(&batch->send);
        }

        if (batch->timer.timer_set) {
            ngx_del_timer(&batch->timer);
        }

        ngx_free(batch);
    }

    ngx_http_ratelimit_all_batches = NULL;
    ngx_http_ratelimit_free_batches = NULL;
}


/* a batch for the shard, open, its send posted to the end of the turn */

static ngx_http_ratelimit_batch_t *
ngx_http_ratelimit_batch_get(ngx_http_ratelimit_conn_t *conn,
    ngx_uint_t shard, ngx_msec_t timeout)
{
    ngx_http_ratelimit_batch_t  *batch;

    batch = ngx_http_ratelimit_free_batches;

    if (batch) {
        ngx_http_ratelimit_free_batches = batch->next;

    } else {
        batch = ngx_alloc(sizeof(ngx_http_ratelimit_batch_t), ngx_cycle->log);
        if (batch == NULL) {
            return NULL;
        }

        ngx_memzero(&batch->send, sizeof(ngx_event_t));
        ngx_memzero(&batch->timer, sizeof(ngx_event_t));

        batch->send.handler = ngx_http_ratelimit_batch_send_handler;
        batch->send.data = batch;
        batch->send.log = ngx_cycle->log;

        batch->timer.handler = ngx_http_ratelimit_batch_timeout;
        batch->timer.data = &ngx_http_ratelimit_batch_ident;
        ngx_http_ratelimit_batch_ident.fd = (ngx_socket_t) -1;
        batch->timer.log = ngx_cycle->log;

        batch->all = ngx_http_ratelimit_all_batches;
        ngx_http_ratelimit_all_batches = batch;
    }

    batch->conn = conn;
    batch->shard = shard;
    batch->timeout = timeout;
    batch->nmembers = 0;
    batch->nchecks = 0;
    batch->waiting = 0;
    batch->slot = NULL;
    batch->next = NULL;
    batch->eval = 0;

    ngx_post_event(&batch->send, &ngx_posted_events);

    return batch;
}


static void
ngx_http_ratelimit_batch_put(ngx_http_ratelimit_batch_t *batch)
{
    void  **open;

    open = ngx_http_ratelimit_redis_batch(batch->conn);

    if (*open == batch) {
        *open = NULL;
    }

    if (batch->send.posted) {
        ngx_delete_posted_event(&batch->send);
    }

    if (batch->timer.timer_set) {
        ngx_del_timer(&batch->timer);
    }

    batch->next = ngx_http_ratelimit_free_batches;
    ngx_http_ratelimit_free_batches = batch;
}


/* the end of the turn: the batch goes out as it is */

static void
ngx_http_ratelimit_batch_send_handler(ngx_event_t *ev)
{
    ngx_http_ratelimit_batch_t *batch = ev->data;

    void  **open;

    open = ngx_http_ratelimit_redis_batch(batch->conn);

    if (*open == batch) {
        *open = NULL;
    }

    if (batch->waiting == 0) {
        ngx_http_ratelimit_batch_put(batch);
        return;
    }

    if (ngx_http_ratelimit_batch_send(batch) != NGX_OK) {
        ngx_http_ratelimit_batch_end(batch, NGX_ERROR, NULL, 0,
                                     "shard is unreachable");
        return;
    }

    ngx_add_timer(&batch->timer, batch->timeout);
}


/*
 * One call of lua/check.lua: the keys of every check still waiting, then 7
 * values per check, its member's index for its group.  A member that left
 * before the call is simply not in it.
 */

static ngx_int_t
ngx_http_ratelimit_batch_send(ngx_http_ratelimit_batch_t *batch)
{
    u_char                             *p, *group, *deadline;
    size_t                              group_len, deadline_len;
    ngx_uint_t                          i, j, argc;
    ngx_http_ratelimit_member_t        *m;
    ngx_http_ratelimit_batch_check_t   *c;
    ngx_http_ratelimit_batch_script_t  *script;

    script = ngx_http_ratelimit_batch_script();

    if (batch->eval) {
        batch->argv[0] = "EVAL";
        batch->argvlen[0] = 4;
        batch->argv[1] = (const char *) script->body.data;
        batch->argvlen[1] = script->body.len;

    } else {
        batch->argv[0] = "EVALSHA";
        batch->argvlen[0] = 7;
        batch->argv[1] = (const char *) script->sha1;
        batch->argvlen[1] = sizeof(script->sha1);
    }

    /* argv[2], the number of keys, once they are counted */

    argc = 3;
    batch->sent = 0;

    for (i = 0; i < batch->nmembers; i++) {
        m = batch->members[i];

        if (m == NULL) {
            continue;
        }

        m->first = batch->sent;

        for (j = 0; j < m->nchecks; j++) {
            batch->argv[argc] = (const char *) m->checks[j]->key;
            batch->argvlen[argc++] = m->checks[j]->key_len;
        }

        batch->sent += m->nchecks;
    }

    p = batch->digits;

    batch->argv[2] = (const char *) p;
    p = ngx_sprintf(p, "%ui", batch->sent);
    batch->argvlen[2] = p - (u_char *) batch->argv[2];

    for (i = 0; i < batch->nmembers; i++) {
        m = batch->members[i];

        if (m == NULL) {
            continue;
        }

        /* the member's group and deadline: one string each for its checks */

        group = p;
        p = ngx_sprintf(p, "%ui", i);
        group_len = p - group;

        deadline = p;
        p = ngx_sprintf(p, "%L", m->deadline);
        deadline_len = p - deadline;

        for (j = 0; j < m->nchecks; j++) {
            c = m->checks[j];

            batch->argv[argc] = (const char *) group;
            batch->argvlen[argc++] = group_len;

            batch->argv[argc] = (const char *) deadline;
            batch->argvlen[argc++] = deadline_len;

            batch->argv[argc] = (const char *) c->algorithm->data;
            batch->argvlen[argc++] = c->algorithm->len;

            p = ngx_http_ratelimit_batch_number(batch, argc++, p, c->limit);
            p = ngx_http_ratelimit_batch_number(batch, argc++, p,
                                                c->window_ms);
            p = ngx_http_ratelimit_batch_number(batch, argc++, p,
                                                (int64_t) c->cost);

            batch->argv[argc] = c->dry_run ? "1" : "0";
            batch->argvlen[argc++] = 1;

            batch->argv[argc] = c->field ? (const char *) c->field : "";
            batch->argvlen[argc++] = c->field_len;

            batch->argv[argc] = c->policy_field
                                ? (const char *) c->policy_field : "";
            batch->argvlen[argc++] = c->policy_field_len;
        }
    }

    batch->slot = ngx_http_ratelimit_redis_send(batch->conn, argc,
                                                batch->argv, batch->argvlen,
                                                ngx_http_ratelimit_batch_reply,
                                                batch);
    if (batch->slot == NULL) {
        return NGX_ERROR;
    }

    /* the connection writes it at the end of this same turn */

    batch->sent_at = ngx_http_ratelimit_usec();

    if (!batch->eval) {
        ngx_http_ratelimit_count(checks, batch->sent);
        ngx_http_ratelimit_count(batches, 1);
        ngx_http_ratelimit_count_shard(batch->shard,
                                       NGX_HTTP_RATELIMIT_SHARD_CHECKS,
                                       batch->sent);
        ngx_http_ratelimit_count_shard(batch->shard,
                                       NGX_HTTP_RATELIMIT_SHARD_BATCHES, 1);
    }

    return NGX_OK;
}


static u_char *
ngx_http_ratelimit_batch_number(ngx_http_ratelimit_batch_t *batch,
    ngx_uint_t arg, u_char *p, int64_t n)
{
    batch->argv[arg] = (const char *) p;
    p = ngx_sprintf(p, "%L", n);
    batch->argvlen[arg] = p - (u_char *) batch->argv[arg];

    return p;
}


static void
ngx_http_ratelimit_batch_reply(void *data, redisReply *reply)
{
    ngx_http_ratelimit_batch_t *batch = data;

    int                 rc;
    const char         *why;
    long long           now_ms;
    rl_check_result_t   results[NGX_HTTP_RATELIMIT_BATCH_MAX];

    batch->slot = NULL;

    if (reply == NULL) {
        if (ngx_http_ratelimit_dropping_stalled && batch->timer.timer_set) {
            return;             /* its own timeout ends it */
        }

        ngx_http_ratelimit_batch_end(batch, NGX_ERROR, NULL, 0,
                                     "connection to shard lost");
        return;
    }

    /* members that left since the call still have their results in it */

    rc = rl_reply_decode_batch(reply, batch->sent, results, &now_ms, &why);

    switch (rc) {

    case RL_REPLY_OK:
        ngx_http_ratelimit_observe_rtt(batch->shard,
                                 ngx_http_ratelimit_usec() - batch->sent_at);
        ngx_http_ratelimit_batch_end(batch, NGX_OK, results, now_ms, NULL);
        return;

    case RL_REPLY_NOSCRIPT:

        /* a restarted or flushed shard: EVAL caches the script again */

        if (!batch->eval) {
            batch->eval = 1;
            ngx_http_ratelimit_count(noscript, 1);

            if (ngx_http_ratelimit_batch_send(batch) == NGX_OK) {
                return;
            }
        }

        break;

    default:
        break;
    }

    if (ngx_http_ratelimit_log_due(&ngx_http_ratelimit_batch_logged_at)) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "ratelimit: shard %V answered: %s",
                      ngx_http_ratelimit_redis_name(batch->conn), why);
    }

    ngx_http_ratelimit_batch_end(batch, NGX_ERROR, NULL, 0, "unusable reply");
}


/*
 * A shard that answers slower than the timeout is failing: its connection
 * is dropped, so everything queued behind takes its fail path, and the
 * shard is marked down.  This batch's requests move on first, though: they
 * waited longest.
 */

static void
ngx_http_ratelimit_batch_timeout(ngx_event_t *ev)
{
    ngx_http_ratelimit_batch_t *batch = (ngx_http_ratelimit_batch_t *)
                     ((u_char *) ev - offsetof(ngx_http_ratelimit_batch_t, timer));

    ngx_uint_t                  stuck;
    ngx_http_ratelimit_conn_t  *conn;

    conn = batch->conn;
    stuck = ngx_http_ratelimit_redis_stuck(conn, batch->timeout);

    if (batch->slot) {
        (void) ngx_http_ratelimit_redis_detach(batch->slot);
        batch->slot = NULL;
    }

    ngx_http_ratelimit_batch_end(batch, NGX_ETIMEDOUT, NULL, 0,
                                 "shard timed out");

    if (stuck) {
        ngx_http_ratelimit_batch_fail_conn(conn, "timed out");
    }
}


/*
 * Drops the connection to a shard that stalled: the batches it was sent
 * wait out their own timeout, since the shard may yet wake up and run
 * them (each up to its deadline).
 */

static void
ngx_http_ratelimit_batch_fail_conn(ngx_http_ratelimit_conn_t *conn,
    const char *reason)
{
    ngx_http_ratelimit_dropping_stalled = 1;
    ngx_http_ratelimit_redis_fail(conn, reason);
    ngx_http_ratelimit_dropping_stalled = 0;
}


void
ngx_http_ratelimit_batch_drop_stalled(ngx_http_ratelimit_conn_t *conn,
    ngx_msec_t timeout)
{
    if (ngx_http_ratelimit_redis_stuck(conn, timeout)) {
        ngx_http_ratelimit_batch_fail_conn(conn, "timed out");
    }
}


/*
 * Every member still there learns how its checks ended, each once; the
 * batch is then free again.  A member's handler may queue new checks, in
 * other batches: this one is no longer open.
 */

static void
ngx_http_ratelimit_batch_end(ngx_http_ratelimit_batch_t *batch, ngx_int_t rc,
    rl_check_result_t *results, long long now_ms, const char *why)
{
    ngx_uint_t                    i;
    ngx_http_ratelimit_member_t  *m;

    if (batch->timer.timer_set) {
        ngx_del_timer(&batch->timer);
    }

    for (i = 0; i < batch->nmembers; i++) {
        m = batch->members[i];

        if (m == NULL) {
            continue;
        }

        batch->members[i] = NULL;
        batch->waiting--;
        m->batch = NULL;

        m->handler(m->data, rc, results ? results + m->first : NULL, now_ms,
                   why);
    }

    ngx_http_ratelimit_batch_put(batch);
}


/* the SHA-1 of the script is taken once, from the body compiled in */

static ngx_http_ratelimit_batch_script_t *
ngx_http_ratelimit_batch_script(void)
{
    ngx_sha1_t                          sha1;
    ngx_http_ratelimit_batch_script_t  *script;
    u_char                              digest[20];

    script = &ngx_http_ratelimit_check_script;

    if (script->sha1[0] == '\0') {
        ngx_sha1_init(&sha1);
        ngx_sha1_update(&sha1, script->body.data, script->body.len);
        ngx_sha1_final(digest, &sha1);
        ngx_hex_dump(script->sha1, digest, sizeof(digest));
    }

    return script;
}
