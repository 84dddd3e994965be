
/*
 * Global API rate limiter: the rules store, one customer's rule on the
 * shards.
 *
 * A change goes to every shard (lua/rules_put.lua), each answering with the
 * value it held before.  It is done only once every shard holds it; if one
 * cannot take it, it is undone (lua/rules_restore.lua) on every shard that
 * took it or may still take it, so the old rule stays in force everywhere:
 * one that did not answer in time runs the undo right after the write,
 * queued behind it on the same connection, and one whose connection failed
 * gets the undo on a new one, where it voids the write should that land
 * later.  The rules poll carries an undo to a shard that could not be sent
 * it.
 *
 * A read asks the first live shard from the customer's place on the ring,
 * and the next live one when that one fails: every shard holds every rule.
 * The admin endpoint's other commands (a page of the rules list, a
 * caller's counter) go the same way, or to the one shard that can answer.
 */


#include "ngx_http_ratelimit_rules_store.h"
#include "ngx_http_ratelimit_batch.h"
#include "ngx_http_ratelimit_zone.h"
#include "ngx_http_ratelimit_cache.h"
#include "ngx_http_ratelimit_redis.h"
#include "ngx_http_ratelimit_scripts.h"


/* "limit window algorithm" as rl_rule_encode() writes it, with room */
#define NGX_HTTP_RATELIMIT_RULES_BODY_LEN  64


/* where one shard stands in an operation */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_UNSENT    0  /* could not be sent */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_WAITING   1  /* owes an answer */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_ANSWERED  2  /* answered the read */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_WRITTEN   3  /* took the change */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_NEWER     4  /* kept a newer value */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_ALREADY   5  /* had the change: the
                                                       poll brought it */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_BROKEN    6  /* answered, unusably */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_LOST      7  /* the connection failed
                                                       after sending */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_LATE      8  /* no answer in time */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_UNDOING   9  /* owes the undo */
#define NGX_HTTP_RATELIMIT_RULES_SHARD_UNDONE   10  /* answered the undo */


typedef struct {
    ngx_http_ratelimit_rules_op_t     *op;
    ngx_uint_t                         index;      /* on the ring */
    ngx_uint_t                         state;      /* ..._SHARD_* */
    ngx_http_ratelimit_slot_t         *slot;       /* the command it owes */
} ngx_http_ratelimit_rules_shard_t;


struct ngx_http_ratelimit_rules_op_s {
    ngx_http_ratelimit_zone_t         *zone;
    ngx_pool_t                        *pool;
    ngx_log_t                         *log;
    ngx_str_t                          customer;
    ngx_str_t                          stamp;      /* write: of the change */
    ngx_str_t                          body;       /* write: the rule or "-" */
    ngx_http_ratelimit_rules_shard_t  *shards;     /* write: all; read: one */
    ngx_uint_t                         nshards;
    ngx_uint_t                         pending;    /* answers awaited */
    ngx_uint_t                         tried;      /* read: shards asked */
    ngx_msec_t                         timeout;
    ngx_event_t                        timer;
    rl_limit_t                         rule;
    rl_limit_t                        *found;      /* &rule, or NULL: none */
    ngx_http_ratelimit_rules_done_pt   handler;    /* NULL: over */
    void                              *data;

    /* a command of its own: sent to one shard, or routed by "route" */
    ngx_uint_t                         argc;       /* 0: a rule's read */
    const char                       **argv;
    size_t                            *argvlen;
    ngx_str_t                          route;      /* empty: one shard */
    ngx_http_ratelimit_rules_reply_pt  reply_handler;
};


static ngx_http_ratelimit_rules_op_t *ngx_http_ratelimit_rules_store_op(
    ngx_http_ratelimit_zone_t *zone, ngx_pool_t *pool, ngx_log_t *log,
    ngx_str_t *customer, ngx_uint_t nshards, ngx_msec_t timeout,
    ngx_http_ratelimit_rules_done_pt handler, void *data);
static ngx_uint_t ngx_http_ratelimit_rules_store_down(
    ngx_http_ratelimit_zone_t *zone, ngx_log_t *log);
static ngx_int_t ngx_http_ratelimit_rules_store_value(
    ngx_http_ratelimit_rules_op_t *op, rl_rule_t *rule);
static void ngx_http_ratelimit_rules_store_argv(
    ngx_http_ratelimit_rules_op_t *op, const char **argv, size_t *argvlen,
    const char *script, size_t len);
static void ngx_http_ratelimit_rules_store_written(void *data,
    redisReply *reply);
static ngx_uint_t ngx_http_ratelimit_rules_store_is_change(
    ngx_http_ratelimit_rules_op_t *op, redisReply *value);
static void ngx_http_ratelimit_rules_store_keep(
    ngx_http_ratelimit_rules_op_t *op, redisReply *value);
static void ngx_http_ratelimit_rules_store_settle(
    ngx_http_ratelimit_rules_op_t *op);
static void ngx_http_ratelimit_rules_store_undo(
    ngx_http_ratelimit_rules_op_t *op);
static void ngx_http_ratelimit_rules_store_undone(void *data,
    redisReply *reply);
static ngx_int_t ngx_http_ratelimit_rules_store_ask(
    ngx_http_ratelimit_rules_op_t *op);
static void ngx_http_ratelimit_rules_store_got(void *data, redisReply *reply);
static void ngx_http_ratelimit_rules_store_write_timeout(ngx_event_t *ev);
static void ngx_http_ratelimit_rules_store_timeout(ngx_event_t *ev);
static void ngx_http_ratelimit_rules_store_expire(
    ngx_http_ratelimit_rules_op_t *op);
static void ngx_http_ratelimit_rules_store_finish(
    ngx_http_ratelimit_rules_op_t *op, ngx_int_t outcome);
static u_char *ngx_http_ratelimit_rules_store_id(
    ngx_http_ratelimit_rules_op_t *op);
static void ngx_http_ratelimit_rules_store_answered(void *data,
    redisReply *reply);


ngx_int_t
ngx_http_ratelimit_rules_store_write(ngx_http_ratelimit_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *customer, rl_rule_t *rule,
    ngx_msec_t timeout, ngx_http_ratelimit_rules_done_pt handler, void *data,
    ngx_http_ratelimit_rules_op_t **handle)
{
    const char                        *argv[8];
    size_t                             argvlen[8];
    ngx_uint_t                         i;
    ngx_http_ratelimit_rules_op_t     *op;
    ngx_http_ratelimit_rules_shard_t  *shard;

    if (ngx_http_ratelimit_rules_store_down(zone, log)) {
        return NGX_HTTP_RATELIMIT_RULES_DOWN;
    }

    op = ngx_http_ratelimit_rules_store_op(zone, pool, log, customer,
                                           zone->ring->nshards, timeout,
                                           handler, data);
    if (op == NULL
        || ngx_http_ratelimit_rules_store_value(op, rule) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_ratelimit_rules_store_argv(op, argv, argvlen,
                      ngx_http_ratelimit_rules_script(
                          NGX_HTTP_RATELIMIT_LUA_RULES_PUT));

    for (i = 0; i < op->nshards; i++) {
        shard = &op->shards[i];

        shard->slot = ngx_http_ratelimit_redis_send(
                          ngx_http_ratelimit_redis_conn(i), 8, argv, argvlen,
                          ngx_http_ratelimit_rules_store_written, shard);

        if (shard->slot) {
            shard->state = NGX_HTTP_RATELIMIT_RULES_SHARD_WAITING;
            op->pending++;
        }
    }

    if (op->pending == 0) {
        return NGX_HTTP_RATELIMIT_RULES_UNSENT;
    }

    op->timer.handler = ngx_http_ratelimit_rules_store_write_timeout;
    ngx_add_timer(&op->timer, timeout);

    *handle = op;

    return NGX_AGAIN;
}


ngx_int_t
ngx_http_ratelimit_rules_store_read(ngx_http_ratelimit_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *customer, ngx_msec_t timeout,
    ngx_http_ratelimit_rules_done_pt handler, void *data,
    ngx_http_ratelimit_rules_op_t **handle)
{
    ngx_http_ratelimit_rules_op_t  *op;

    op = ngx_http_ratelimit_rules_store_op(zone, pool, log, customer, 1,
                                           timeout, handler, data);
    if (op == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_ratelimit_rules_store_ask(op) != NGX_OK) {
        return NGX_HTTP_RATELIMIT_RULES_UNSENT;
    }

    /* one time limit for the read, whichever shards answer it */

    op->timer.handler = ngx_http_ratelimit_rules_store_timeout;
    ngx_add_timer(&op->timer, timeout);

    *handle = op;

    return NGX_AGAIN;
}


ngx_int_t
ngx_http_ratelimit_rules_store_call(ngx_http_ratelimit_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *what, ngx_str_t *route,
    ngx_uint_t shard, ngx_uint_t argc, const char **argv, size_t *argvlen,
    ngx_msec_t timeout, ngx_http_ratelimit_rules_reply_pt handler,
    void *data, ngx_http_ratelimit_rules_op_t **handle)
{
    ngx_http_ratelimit_health_t    *h;
    ngx_http_ratelimit_rules_op_t  *op;

    op = ngx_http_ratelimit_rules_store_op(zone, pool, log, what, 1, timeout,
                                           NULL, data);
    if (op == NULL) {
        return NGX_ERROR;
    }

    op->argv = ngx_pnalloc(pool, argc * sizeof(char *));
    op->argvlen = ngx_pnalloc(pool, argc * sizeof(size_t));

    if (op->argv == NULL || op->argvlen == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(op->argv, argv, argc * sizeof(char *));
    ngx_memcpy(op->argvlen, argvlen, argc * sizeof(size_t));

    op->argc = argc;
    op->reply_handler = handler;

    if (route) {
        op->route = *route;

        if (ngx_http_ratelimit_rules_store_ask(op) != NGX_OK) {
            return NGX_HTTP_RATELIMIT_RULES_UNSENT;
        }

    } else {
        h = &zone->ring->health[shard];

        if (h->down_until != 0
            && ngx_http_ratelimit_shard_admit(h)
               == NGX_HTTP_RATELIMIT_SHARD_DOWN)
        {
            return NGX_HTTP_RATELIMIT_RULES_DOWN;
        }

        op->shards[0].index = shard;
        op->shards[0].slot = ngx_http_ratelimit_redis_send(
                                 ngx_http_ratelimit_redis_conn(shard),
                                 (int) argc, op->argv, op->argvlen,
                                 ngx_http_ratelimit_rules_store_answered,
                                 &op->shards[0]);

        if (op->shards[0].slot == NULL) {
            return NGX_HTTP_RATELIMIT_RULES_UNSENT;
        }

        op->shards[0].state = NGX_HTTP_RATELIMIT_RULES_SHARD_WAITING;
        op->pending = 1;
    }

    op->timer.handler = ngx_http_ratelimit_rules_store_timeout;
    ngx_add_timer(&op->timer, timeout);

    *handle = op;

    return NGX_AGAIN;
}


ngx_uint_t
ngx_http_ratelimit_rules_store_shard(ngx_http_ratelimit_zone_t *zone,
    u_char *key, size_t len, ngx_str_t **name)
{
    ngx_uint_t  index;

    index = ngx_http_ratelimit_ring_lookup(zone->ring, key, len);

    *name = ngx_http_ratelimit_redis_name(ngx_http_ratelimit_redis_conn(index));

    return index;
}


void
ngx_http_ratelimit_rules_store_touch(ngx_http_ratelimit_zone_t *zone)
{
    const char  *argv[2];
    size_t       argvlen[2];
    ngx_uint_t   i;

    argv[0] = "INCR";
    argvlen[0] = 4;
    argv[1] = NGX_HTTP_RATELIMIT_RULES_VERSION;
    argvlen[1] = sizeof(NGX_HTTP_RATELIMIT_RULES_VERSION) - 1;

    /*
     * Not detached: a command not written yet would be taken back.  The
     * answer finds no operation; a shard that misses the move is brought
     * to the highest version by the poll's sync.
     */

    for (i = 0; i < zone->ring->nshards; i++) {
        (void) ngx_http_ratelimit_redis_send(
                   ngx_http_ratelimit_redis_conn(i), 2, argv, argvlen,
                   ngx_http_ratelimit_rules_store_answered, NULL);
    }

    ngx_http_ratelimit_cache_invalidate(zone);
}


void
ngx_http_ratelimit_rules_store_cancel(ngx_http_ratelimit_rules_op_t *op)
{
    ngx_uint_t  i;

    op->handler = NULL;
    op->reply_handler = NULL;

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    for (i = 0; i < op->nshards; i++) {
        if (op->shards[i].slot) {
            ngx_http_ratelimit_redis_detach(op->shards[i].slot);
            op->shards[i].slot = NULL;
        }
    }
}


static ngx_http_ratelimit_rules_op_t *
ngx_http_ratelimit_rules_store_op(ngx_http_ratelimit_zone_t *zone,
    ngx_pool_t *pool, ngx_log_t *log, ngx_str_t *customer, ngx_uint_t nshards,
    ngx_msec_t timeout, ngx_http_ratelimit_rules_done_pt handler, void *data)
{
    ngx_uint_t                      i;
    ngx_http_ratelimit_rules_op_t  *op;

    op = ngx_pcalloc(pool, sizeof(ngx_http_ratelimit_rules_op_t));
    if (op == NULL) {
        return NULL;
    }

    op->shards = ngx_pcalloc(pool,
                     nshards * sizeof(ngx_http_ratelimit_rules_shard_t));
    if (op->shards == NULL) {
        return NULL;
    }

    op->customer.data = ngx_pnalloc(pool, customer->len);
    if (op->customer.data == NULL) {
        return NULL;
    }

    ngx_memcpy(op->customer.data, customer->data, customer->len);
    op->customer.len = customer->len;

    for (i = 0; i < nshards; i++) {
        op->shards[i].op = op;
        op->shards[i].index = i;
    }

    op->zone = zone;
    op->pool = pool;
    op->log = log;
    op->nshards = nshards;
    op->timeout = timeout;
    op->handler = handler;
    op->data = data;

    op->timer.data = op;
    op->timer.log = log;

    return op;
}


/* a shard known to be down cannot take the change: change nothing */

static ngx_uint_t
ngx_http_ratelimit_rules_store_down(ngx_http_ratelimit_zone_t *zone,
    ngx_log_t *log)
{
    ngx_uint_t                    i;
    ngx_http_ratelimit_ring_t    *ring;
    ngx_http_ratelimit_health_t  *h;

    ring = zone->ring;

    for (i = 0; i < ring->nshards; i++) {
        h = &ring->health[i];

        if (h->down_until != 0
            && ngx_http_ratelimit_shard_admit(h)
               == NGX_HTTP_RATELIMIT_SHARD_DOWN)
        {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "ratelimit: admin change refused: shard %*s is down",
                          h->name_len, h->name);
            return 1;
        }
    }

    return 0;
}


/*
 * What the change stores: "<stamp> <rule>", or "<stamp> -" to delete.  The
 * last writer wins on every shard alike: time, then this worker; under
 * 2^53, so that Lua compares stamps exactly.
 */

static ngx_int_t
ngx_http_ratelimit_rules_store_value(ngx_http_ratelimit_rules_op_t *op,
    rl_rule_t *rule)
{
    ngx_time_t  *tp;

    op->stamp.data = ngx_pnalloc(op->pool, NGX_INT64_LEN);
    if (op->stamp.data == NULL) {
        return NGX_ERROR;
    }

    ngx_time_update();
    tp = ngx_timeofday();

    op->stamp.len = ngx_sprintf(op->stamp.data, "%uL",
                        ((uint64_t) tp->sec * 1000 + tp->msec) * 1000
                        + (uint64_t) ngx_pid % 1000)
                    - op->stamp.data;

    if (rule == NULL) {
        ngx_str_set(&op->body, "-");
        return NGX_OK;
    }

    op->body.data = ngx_pnalloc(op->pool, NGX_HTTP_RATELIMIT_RULES_BODY_LEN);
    if (op->body.data == NULL) {
        return NGX_ERROR;
    }

    op->body.len = rl_rule_encode(rule, (char *) op->body.data,
                                  NGX_HTTP_RATELIMIT_RULES_BODY_LEN);

    return op->body.len ? NGX_OK : NGX_ERROR;
}


/* the write and its undo take the same arguments: id, stamp, body */

static void
ngx_http_ratelimit_rules_store_argv(ngx_http_ratelimit_rules_op_t *op,
    const char **argv, size_t *argvlen, const char *script, size_t len)
{
    ngx_http_ratelimit_rules_eval(argv, argvlen, script, len);

    argv[5] = (const char *) op->customer.data;
    argvlen[5] = op->customer.len;
    argv[6] = (const char *) op->stamp.data;
    argvlen[6] = op->stamp.len;
    argv[7] = (const char *) op->body.data;
    argvlen[7] = op->body.len;
}


static void
ngx_http_ratelimit_rules_store_written(void *data, redisReply *reply)
{
    ngx_http_ratelimit_rules_shard_t *shard = data;

    ngx_http_ratelimit_rules_op_t  *op;

    op = shard->op;
    shard->slot = NULL;

    if (reply == NULL
        || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[2]->type != REDIS_REPLY_INTEGER)
    {
        /* with no reply the write may have reached the shard or not */

        shard->state = reply ? NGX_HTTP_RATELIMIT_RULES_SHARD_BROKEN
                             : NGX_HTTP_RATELIMIT_RULES_SHARD_LOST;

        ngx_log_error(NGX_LOG_ERR, op->log, 0,
                      "ratelimit: shard %V could not store the rule of "
                      "\"%s\": %s",
                      ngx_http_ratelimit_redis_name(
                          ngx_http_ratelimit_redis_conn(shard->index)),
                      ngx_http_ratelimit_rules_store_id(op),
                      reply && reply->type == REDIS_REPLY_ERROR
                      ? reply->str : "no usable answer");

    } else {

        /*
         * A shard that refuses the change as already there had the rules
         * poll carry it over from another shard before it arrived.
         */

        shard->state = reply->element[2]->integer == 1
                       ? NGX_HTTP_RATELIMIT_RULES_SHARD_WRITTEN
                       : ngx_http_ratelimit_rules_store_is_change(op,
                             reply->element[0])
                       ? NGX_HTTP_RATELIMIT_RULES_SHARD_ALREADY
                       : NGX_HTTP_RATELIMIT_RULES_SHARD_NEWER;

        ngx_http_ratelimit_rules_store_keep(op, reply->element[0]);
    }

    if (--op->pending == 0) {
        ngx_http_ratelimit_rules_store_settle(op);
    }
}


/* the value is this very change */

static ngx_uint_t
ngx_http_ratelimit_rules_store_is_change(ngx_http_ratelimit_rules_op_t *op,
    redisReply *value)
{
    u_char  *p;

    if (value->len != op->stamp.len + 1 + op->body.len) {
        return 0;
    }

    p = (u_char *) value->str;

    return ngx_memcmp(p, op->stamp.data, op->stamp.len) == 0
           && p[op->stamp.len] == ' '
           && ngx_memcmp(p + op->stamp.len + 1, op->body.data, op->body.len)
              == 0;
}


/* the first stored value seen that holds a rule is the one reported */

static void
ngx_http_ratelimit_rules_store_keep(ngx_http_ratelimit_rules_op_t *op,
    redisReply *value)
{
    if (op->found == NULL
        && value->type == REDIS_REPLY_STRING
        && ngx_http_ratelimit_rule_parse((u_char *) value->str, value->len,
                                         &op->rule, NULL)
           == NGX_OK)
    {
        op->found = &op->rule;
    }
}


/* every shard answered the write, or the time is up */

static void
ngx_http_ratelimit_rules_store_settle(ngx_http_ratelimit_rules_op_t *op)
{
    ngx_uint_t  i, written;

    written = 0;

    for (i = 0; i < op->nshards; i++) {

        switch (op->shards[i].state) {

        case NGX_HTTP_RATELIMIT_RULES_SHARD_WRITTEN:
            written++;
            break;

        case NGX_HTTP_RATELIMIT_RULES_SHARD_NEWER:
        case NGX_HTTP_RATELIMIT_RULES_SHARD_ALREADY:
            break;

        default:
            ngx_http_ratelimit_rules_store_undo(op);
            return;
        }
    }

    /* the change is everywhere: this node sees it at its next request */

    ngx_http_ratelimit_cache_invalidate(op->zone);

    ngx_http_ratelimit_rules_store_finish(op, written
                                          ? NGX_HTTP_RATELIMIT_RULES_OK
                                          : NGX_HTTP_RATELIMIT_RULES_OUTDATED);
}


/*
 * The change failed somewhere: undo it on every shard that took it or may
 * still take it.  A shard never sent it, one that kept a newer value and
 * one that answered with an error have nothing to undo.
 */

static void
ngx_http_ratelimit_rules_store_undo(ngx_http_ratelimit_rules_op_t *op)
{
    const char                        *argv[8];
    size_t                             argvlen[8];
    ngx_uint_t                         i, unsent, queued;
    ngx_http_ratelimit_rules_shard_t  *shard;

    ngx_http_ratelimit_rules_store_argv(op, argv, argvlen,
                      ngx_http_ratelimit_rules_script(
                          NGX_HTTP_RATELIMIT_LUA_RULES_RESTORE));

    unsent = 0;
    queued = 0;

    for (i = 0; i < op->nshards; i++) {
        shard = &op->shards[i];

        if (shard->state != NGX_HTTP_RATELIMIT_RULES_SHARD_WRITTEN
            && shard->state != NGX_HTTP_RATELIMIT_RULES_SHARD_ALREADY
            && shard->state != NGX_HTTP_RATELIMIT_RULES_SHARD_LOST
            && shard->state != NGX_HTTP_RATELIMIT_RULES_SHARD_LATE)
        {
            continue;
        }

        /*
         * A shard that let the write time out will not answer the undo in
         * time either: it runs when the shard does, and the outcome need
         * not wait for it.  Its answer belongs to nobody; the command is
         * not detached, which would take it back before it is written.
         */

        if (shard->state == NGX_HTTP_RATELIMIT_RULES_SHARD_LATE) {
            if (ngx_http_ratelimit_redis_send(
                    ngx_http_ratelimit_redis_conn(shard->index), 8, argv,
                    argvlen, ngx_http_ratelimit_rules_store_answered, NULL)
                == NULL)
            {
                unsent++;

            } else {
                queued++;
            }

            continue;
        }

        shard->slot = ngx_http_ratelimit_redis_send(
                          ngx_http_ratelimit_redis_conn(shard->index), 8,
                          argv, argvlen, ngx_http_ratelimit_rules_store_undone,
                          shard);
        if (shard->slot == NULL) {
            unsent++;
            continue;
        }

        shard->state = NGX_HTTP_RATELIMIT_RULES_SHARD_UNDOING;
        op->pending++;
    }

    ngx_log_error(NGX_LOG_WARN, op->log, 0,
                  "ratelimit: a change of the rule of \"%s\" failed on a "
                  "shard, undoing it on %ui shards%s",
                  ngx_http_ratelimit_rules_store_id(op), op->pending + queued,
                  unsent ? "; some could not be sent the undo, the rules "
                           "poll will carry it to them" : "");

    if (op->pending == 0) {
        ngx_http_ratelimit_rules_store_finish(op,
                                              NGX_HTTP_RATELIMIT_RULES_FAILED);
        return;
    }

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    op->timer.handler = ngx_http_ratelimit_rules_store_timeout;
    ngx_add_timer(&op->timer, op->timeout);
}


static void
ngx_http_ratelimit_rules_store_undone(void *data, redisReply *reply)
{
    ngx_http_ratelimit_rules_shard_t *shard = data;

    ngx_http_ratelimit_rules_op_t  *op;

    op = shard->op;
    shard->slot = NULL;
    shard->state = NGX_HTTP_RATELIMIT_RULES_SHARD_UNDONE;

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        ngx_log_error(NGX_LOG_ERR, op->log, 0,
                      "ratelimit: shard %V could not undo a failed change "
                      "of the rule of \"%s\"; the rules poll will carry "
                      "the undo to it",
                      ngx_http_ratelimit_redis_name(
                          ngx_http_ratelimit_redis_conn(shard->index)),
                      ngx_http_ratelimit_rules_store_id(op));
    }

    if (--op->pending == 0) {
        ngx_http_ratelimit_rules_store_finish(op,
                                              NGX_HTTP_RATELIMIT_RULES_FAILED);
    }
}


/* the read goes to the next live shard from the customer's place */

static ngx_int_t
ngx_http_ratelimit_rules_store_ask(ngx_http_ratelimit_rules_op_t *op)
{
    ngx_int_t                          index;
    const char                        *argv[3];
    size_t                             argvlen[3];
    ngx_http_ratelimit_rules_shard_t  *shard;

    ngx_str_t                         *route;

    if (op->argc == 0) {
        (void) ngx_http_ratelimit_rules_lookup(argv, argvlen, &op->customer,
                                               NULL, NULL);
        route = &op->customer;

    } else {
        route = &op->route;
    }

    shard = &op->shards[0];

    for ( ;; ) {
        index = ngx_http_ratelimit_ring_next_live(op->zone->ring, route->data,
                                                  route->len, &op->tried);
        if (index == NGX_ERROR) {
            return NGX_DECLINED;
        }

        shard->index = index;

        if (op->argc) {
            shard->slot = ngx_http_ratelimit_redis_send(
                              ngx_http_ratelimit_redis_conn(index),
                              (int) op->argc, op->argv, op->argvlen,
                              ngx_http_ratelimit_rules_store_answered, shard);

        } else {
            shard->slot = ngx_http_ratelimit_redis_send(
                              ngx_http_ratelimit_redis_conn(index), 3, argv,
                              argvlen, ngx_http_ratelimit_rules_store_got,
                              shard);
        }

        if (shard->slot) {
            shard->state = NGX_HTTP_RATELIMIT_RULES_SHARD_WAITING;
            op->pending = 1;
            return NGX_OK;
        }
    }
}


static void
ngx_http_ratelimit_rules_store_got(void *data, redisReply *reply)
{
    ngx_http_ratelimit_rules_shard_t *shard = data;

    ngx_http_ratelimit_rules_op_t  *op;

    op = shard->op;
    shard->slot = NULL;
    op->pending = 0;

    if (reply == NULL
        || (reply->type != REDIS_REPLY_STRING
            && reply->type != REDIS_REPLY_NIL))
    {
        /* this shard failed: the next live one holds the same rules */

        shard->state = reply ? NGX_HTTP_RATELIMIT_RULES_SHARD_BROKEN
                             : NGX_HTTP_RATELIMIT_RULES_SHARD_LOST;

        if (ngx_http_ratelimit_rules_store_ask(op) != NGX_OK) {
            ngx_http_ratelimit_rules_store_finish(op,
                                              NGX_HTTP_RATELIMIT_RULES_UNSENT);
        }

        return;
    }

    shard->state = NGX_HTTP_RATELIMIT_RULES_SHARD_ANSWERED;

    ngx_http_ratelimit_rules_store_keep(op, reply);

    ngx_http_ratelimit_rules_store_finish(op, NGX_HTTP_RATELIMIT_RULES_OK);
}


/* a write that some shard did not answer in time fails, and is undone */

static void
ngx_http_ratelimit_rules_store_write_timeout(ngx_event_t *ev)
{
    ngx_http_ratelimit_rules_op_t *op = ev->data;

    ngx_http_ratelimit_rules_store_expire(op);
    ngx_http_ratelimit_rules_store_settle(op);
}


/* a read, or an undo, that the shards did not answer in time */

static void
ngx_http_ratelimit_rules_store_timeout(ngx_event_t *ev)
{
    ngx_http_ratelimit_rules_op_t *op = ev->data;

    ngx_http_ratelimit_rules_store_expire(op);
    ngx_http_ratelimit_rules_store_finish(op, NGX_HTTP_RATELIMIT_RULES_FAILED);
}


/* the answers still owed come too late: whatever they say is dropped */

static void
ngx_http_ratelimit_rules_store_expire(ngx_http_ratelimit_rules_op_t *op)
{
    ngx_uint_t  i;

    ngx_log_error(NGX_LOG_WARN, op->log, 0,
                  "ratelimit: admin request for the rule of \"%s\" timed "
                  "out waiting for shards",
                  ngx_http_ratelimit_rules_store_id(op));

    for (i = 0; i < op->nshards; i++) {
        if (op->shards[i].slot) {
            ngx_http_ratelimit_redis_detach(op->shards[i].slot);
            op->shards[i].slot = NULL;
            op->shards[i].state = NGX_HTTP_RATELIMIT_RULES_SHARD_LATE;
        }
    }

    op->pending = 0;

    /*
     * A node that only takes admin calls sends no checks whose timeout
     * would drop a connection that stopped answering: drop it here, so the
     * shard is marked down and connected to again (or found again).
     */

    for (i = 0; i < op->nshards; i++) {
        if (op->shards[i].state == NGX_HTTP_RATELIMIT_RULES_SHARD_LATE) {
            ngx_http_ratelimit_batch_drop_stalled(
                ngx_http_ratelimit_redis_conn(op->shards[i].index),
                op->timeout);
        }
    }
}


/* the handler may free the pool: nothing touches op after it */

static void
ngx_http_ratelimit_rules_store_finish(ngx_http_ratelimit_rules_op_t *op,
    ngx_int_t outcome)
{
    ngx_http_ratelimit_rules_done_pt   handler;
    ngx_http_ratelimit_rules_reply_pt  reply_handler;

    handler = op->handler;
    reply_handler = op->reply_handler;
    op->handler = NULL;
    op->reply_handler = NULL;

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    if (reply_handler) {
        reply_handler(op->data, outcome, NULL);
        return;
    }

    if (handler) {
        handler(op->data, outcome,
                outcome == NGX_HTTP_RATELIMIT_RULES_OK ? op->found : NULL);
    }
}


/*
 * The answer to a command of the admin endpoint's own (or to the version's
 * move, which nobody waits for).  A shard that fails a routed command
 * leaves it to the next live one.
 */

static void
ngx_http_ratelimit_rules_store_answered(void *data, redisReply *reply)
{
    ngx_http_ratelimit_rules_shard_t *shard = data;

    ngx_http_ratelimit_rules_op_t      *op;
    ngx_http_ratelimit_rules_reply_pt   handler;

    if (shard == NULL) {
        return;
    }

    op = shard->op;
    shard->slot = NULL;
    op->pending = 0;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        shard->state = reply ? NGX_HTTP_RATELIMIT_RULES_SHARD_BROKEN
                             : NGX_HTTP_RATELIMIT_RULES_SHARD_LOST;

        ngx_log_error(NGX_LOG_ERR, op->log, 0,
                      "ratelimit: shard %V could not answer the admin "
                      "request for \"%s\": %s",
                      ngx_http_ratelimit_redis_name(
                          ngx_http_ratelimit_redis_conn(shard->index)),
                      ngx_http_ratelimit_rules_store_id(op),
                      reply ? reply->str : "no answer");

        if (op->route.len == 0
            || ngx_http_ratelimit_rules_store_ask(op) != NGX_OK)
        {
            ngx_http_ratelimit_rules_store_finish(op,
                                              NGX_HTTP_RATELIMIT_RULES_FAILED);
        }

        return;
    }

    shard->state = NGX_HTTP_RATELIMIT_RULES_SHARD_ANSWERED;

    handler = op->reply_handler;
    op->reply_handler = NULL;

    if (op->timer.timer_set) {
        ngx_del_timer(&op->timer);
    }

    handler(op->data, NGX_HTTP_RATELIMIT_RULES_OK, reply);
}


/*
 * The customer id fit for a log line, NUL-terminated: every byte but
 * printable ASCII, and the quote and backslash around them, as "\xHH", so
 * that an id cannot end the line, start a forged one or drive a terminal.
 * A constant stands in when the pool is out of memory.
 */

static u_char *
ngx_http_ratelimit_rules_store_id(ngx_http_ratelimit_rules_op_t *op)
{
    u_char         *dst, *p, *src;
    size_t          i;
    static u_char   hex[] = "0123456789ABCDEF";

    src = op->customer.data;

    dst = ngx_pnalloc(op->pool, 4 * op->customer.len + 1);
    if (dst == NULL) {
        return (u_char *) "(out of memory)";
    }

    p = dst;

    for (i = 0; i < op->customer.len; i++) {
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
