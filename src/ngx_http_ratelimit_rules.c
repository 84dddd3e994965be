
/*
 * Global API rate limiter: per-customer rules kept in Redis.
 *
 * Every shard holds every rule, in the hash "rl:rules" (customer id, or
 * "<customer id>\x1f<policy>" for the rule of one policy, ->
 * "<stamp> <limit> <window> <algorithm> [<expires>]", "<stamp> -" once
 * deleted, or "<stamp> ~<body>" once a failed write was undone) with a
 * version counter, a digest and a sorted index of the fields beside it.  So any live shard can tell a
 * customer's rule, and losing a shard loses no rule.
 *
 * Each edge node polls the shards' versions and digests a few times a
 * second (one worker does it for the node): a highest version that moved
 * means a rule changed somewhere, and the node's rule and deny caches are
 * dropped.  A shard that lags behind (added to the ring, restarted empty,
 * down during a change) or whose rules differ from those of the shard with
 * the highest version (a write that landed after its undo was given up on)
 * is merged with that shard's rules.  A merge that writes anything moves
 * the highest version on (lua/rules_load.lua), so every node drops what it
 * may have read from the shard while it lagged, and what only the merged
 * shard held travels on at the next poll.
 */


#include "ngx_http_ratelimit_rules.h"
#include "ngx_http_ratelimit_batch.h"
#include "ngx_http_ratelimit_zone.h"
#include "ngx_http_ratelimit_redis.h"
#include "ngx_http_ratelimit_cache.h"
#include "rl_rule.h"
#include "ngx_http_ratelimit_scripts.h"


#define NGX_HTTP_RATELIMIT_POLL_INTERVAL  250
#define NGX_HTTP_RATELIMIT_POLL_TIMEOUT   1000

/* 32 hex digits; an empty one: none stored yet */
#define NGX_HTTP_RATELIMIT_DIGEST_LEN     32


typedef struct ngx_http_ratelimit_poller_s  ngx_http_ratelimit_poller_t;

typedef struct {
    ngx_http_ratelimit_poller_t        *poller;
    ngx_uint_t                          index;
    ngx_http_ratelimit_slot_t          *slot;
    long long                           version;    /* -1: unknown */
    size_t                              digest_len;
    u_char                              digest[NGX_HTTP_RATELIMIT_DIGEST_LEN];
} ngx_http_ratelimit_poll_shard_t;


struct ngx_http_ratelimit_poller_s {
    ngx_event_t                         timer;
    ngx_http_ratelimit_zone_t          *zone;
    ngx_http_ratelimit_poll_shard_t    *shards;
    ngx_uint_t                          nshards;
    ngx_uint_t                          pending;
    ngx_msec_t                          started;
    ngx_http_ratelimit_slot_t          *dump_slot;
    ngx_log_t                          *log;
};


static void ngx_http_ratelimit_poll(ngx_event_t *ev);
static void ngx_http_ratelimit_poll_reply(void *data, redisReply *reply);
static void ngx_http_ratelimit_poll_done(ngx_http_ratelimit_poller_t *poller);
static void ngx_http_ratelimit_poll_abandon(
    ngx_http_ratelimit_poller_t *poller);
static void ngx_http_ratelimit_sync_dump(void *data, redisReply *reply);
static void ngx_http_ratelimit_sync_loaded(void *data, redisReply *reply);
static ngx_uint_t ngx_http_ratelimit_poll_behind(
    ngx_http_ratelimit_poll_shard_t *ps, long long version, u_char *digest,
    size_t digest_len);


static ngx_http_ratelimit_poller_t  ngx_http_ratelimit_poller;

/* timers log their data as a connection: give them one that says so */
static ngx_connection_t             ngx_http_ratelimit_poller_conn;


/*
 * The first five arguments of every rules script:
 * EVAL <body> 2 rl:rules rl:rules:version
 */

void
ngx_http_ratelimit_rules_eval(const char **argv, size_t *argvlen,
    const char *body, size_t len)
{
    argv[0] = "EVAL";
    argvlen[0] = 4;
    argv[1] = body;
    argvlen[1] = len;
    argv[2] = "2";
    argvlen[2] = 1;
    argv[3] = NGX_HTTP_RATELIMIT_RULES_KEY;
    argvlen[3] = sizeof(NGX_HTTP_RATELIMIT_RULES_KEY) - 1;
    argv[4] = NGX_HTTP_RATELIMIT_RULES_VERSION;
    argvlen[4] = sizeof(NGX_HTTP_RATELIMIT_RULES_VERSION) - 1;
}


/*
 * Parses a stored rule.  NGX_OK: *limit is the customer's; NGX_DECLINED: the
 * customer has no rule (a tombstone); NGX_ERROR: garbled.
 */

ngx_int_t
ngx_http_ratelimit_rule_parse(u_char *stored, size_t len, rl_limit_t *limit,
    uint64_t *stamp)
{
    u_char     *p, *last;
    uint64_t    n;
    rl_rule_t   r;

    p = stored;
    last = stored + len;
    n = 0;

    if (p == last || *p < '0' || *p > '9') {
        return NGX_ERROR;
    }

    while (p < last && *p >= '0' && *p <= '9') {
        if (n > (UINT64_MAX - 9) / 10) {
            return NGX_ERROR;
        }

        n = n * 10 + (*p++ - '0');
    }

    if (p == last || *p++ != ' ') {
        return NGX_ERROR;
    }

    if (stamp) {
        *stamp = n;
    }

    ngx_memzero(limit, sizeof(rl_limit_t));

    /* an undone write: the rule in force is the one it undid back to */

    if (p < last && *p == '~') {
        p++;
    }

    if (last - p == 1 && *p == '-') {
        return NGX_DECLINED;
    }

    if (rl_rule_decode((const char *) p, last - p, &r) != 0) {
        return NGX_ERROR;
    }

    limit->limit = r.limit;
    limit->window = r.window;
    limit->algorithm = r.algorithm;
    limit->expires = r.expires_at;

    return NGX_OK;
}


size_t
ngx_http_ratelimit_rules_field(u_char *field, ngx_str_t *customer,
    ngx_str_t *policy)
{
    u_char  *p;

    p = ngx_cpymem(field, customer->data, customer->len);

    if (policy && policy->len) {
        *p++ = NGX_HTTP_RATELIMIT_RULE_SEPARATOR;
        p = ngx_cpymem(p, policy->data, policy->len);
    }

    return p - field;
}


ngx_uint_t
ngx_http_ratelimit_rules_lookup(const char **argv, size_t *argvlen,
    ngx_str_t *customer, ngx_str_t *policy, u_char *field)
{
    argv[1] = NGX_HTTP_RATELIMIT_RULES_KEY;
    argvlen[1] = sizeof(NGX_HTTP_RATELIMIT_RULES_KEY) - 1;
    argv[2] = (const char *) customer->data;
    argvlen[2] = customer->len;

    if (policy == NULL || policy->len == 0) {
        argv[0] = "HGET";
        argvlen[0] = 4;

        return 3;
    }

    argv[0] = "HMGET";
    argvlen[0] = 5;
    argv[3] = (const char *) field;
    argvlen[3] = ngx_http_ratelimit_rules_field(field, customer, policy);

    return 4;
}


ngx_int_t
ngx_http_ratelimit_rules_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_main_conf_t *rmcf)
{
    ngx_uint_t                    i;
    ngx_http_ratelimit_poller_t  *poller;

    poller = &ngx_http_ratelimit_poller;

    poller->zone = rmcf->shm_zone->data;
    poller->nshards = rmcf->shards.nelts;
    poller->log = cycle->log;

    poller->shards = ngx_pcalloc(cycle->pool, poller->nshards
                                 * sizeof(ngx_http_ratelimit_poll_shard_t));
    if (poller->shards == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < poller->nshards; i++) {
        poller->shards[i].poller = poller;
        poller->shards[i].index = i;
    }

    ngx_http_ratelimit_poller_conn.fd = (ngx_socket_t) -1;

    poller->timer.handler = ngx_http_ratelimit_poll;
    poller->timer.data = &ngx_http_ratelimit_poller_conn;
    poller->timer.log = cycle->log;
    poller->timer.cancelable = 1;

    ngx_add_timer(&poller->timer, NGX_HTTP_RATELIMIT_POLL_INTERVAL);

    return NGX_OK;
}


void
ngx_http_ratelimit_rules_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_poller_t  *poller;

    poller = &ngx_http_ratelimit_poller;

    if (poller->timer.timer_set) {
        ngx_del_timer(&poller->timer);
    }

    ngx_http_ratelimit_poll_abandon(poller);
}


static void
ngx_http_ratelimit_poll(ngx_event_t *ev)
{
    ngx_http_ratelimit_poller_t *poller = &ngx_http_ratelimit_poller;

    const char                  *argv[3];
    size_t                       argvlen[3];
    ngx_uint_t                   i;
    ngx_msec_t                   now;
    ngx_atomic_uint_t            last;
    ngx_http_ratelimit_shctx_t  *sh;
    ngx_http_ratelimit_health_t *h;
    ngx_http_ratelimit_conn_t   *conn;

    if (ngx_exiting) {
        return;
    }

    ngx_add_timer(&poller->timer, NGX_HTTP_RATELIMIT_POLL_INTERVAL);

    now = ngx_current_msec;

    if (poller->pending || poller->dump_slot) {
        if (now - poller->started < NGX_HTTP_RATELIMIT_POLL_TIMEOUT) {
            return;
        }

        /* a shard that does not answer leaves the round without it */

        ngx_http_ratelimit_poll_abandon(poller);
        ngx_http_ratelimit_poll_done(poller);
        return;
    }

    /* one worker of this node polls each interval: whoever moves the mark */

    sh = poller->zone->sh;
    last = sh->rules_polled_at;

    if (now - last < NGX_HTTP_RATELIMIT_POLL_INTERVAL - 10
        || !ngx_atomic_cmp_set(&sh->rules_polled_at, last, now))
    {
        return;
    }

    poller->started = now;

    argv[0] = "MGET";
    argvlen[0] = 4;
    argv[1] = NGX_HTTP_RATELIMIT_RULES_VERSION;
    argvlen[1] = sizeof(NGX_HTTP_RATELIMIT_RULES_VERSION) - 1;
    argv[2] = NGX_HTTP_RATELIMIT_RULES_KEY ":digest";
    argvlen[2] = sizeof(NGX_HTTP_RATELIMIT_RULES_KEY ":digest") - 1;

    for (i = 0; i < poller->nshards; i++) {
        poller->shards[i].version = -1;
        poller->shards[i].digest_len = 0;
        poller->shards[i].slot = NULL;

        h = &poller->zone->ring->health[i];

        /* polling doubles as the probe of a shard that is down */

        if (ngx_http_ratelimit_shard_admit(h) == NGX_HTTP_RATELIMIT_SHARD_DOWN) {
            continue;
        }

        conn = ngx_http_ratelimit_redis_conn(i);

        poller->shards[i].slot = ngx_http_ratelimit_redis_send(conn, 3, argv,
                                           argvlen,
                                           ngx_http_ratelimit_poll_reply,
                                           &poller->shards[i]);
        if (poller->shards[i].slot) {
            poller->pending++;
        }
    }

    if (poller->pending == 0) {
        ngx_http_ratelimit_poll_done(poller);
    }
}


static void
ngx_http_ratelimit_poll_reply(void *data, redisReply *reply)
{
    ngx_http_ratelimit_poll_shard_t *ps = data;

    redisReply                   *v, *d;
    ngx_http_ratelimit_poller_t  *poller;

    poller = ps->poller;
    ps->slot = NULL;

    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        v = reply->element[0];
        d = reply->element[1];

        if (v->type == REDIS_REPLY_NIL) {
            ps->version = 0;

        } else if (v->type == REDIS_REPLY_STRING) {
            ps->version = ngx_atoof((u_char *) v->str, v->len);
        }

        /* none yet, or not one of ours: differs from any real one */

        if (d->type == REDIS_REPLY_STRING
            && d->len == NGX_HTTP_RATELIMIT_DIGEST_LEN)
        {
            ngx_memcpy(ps->digest, d->str, NGX_HTTP_RATELIMIT_DIGEST_LEN);
            ps->digest_len = NGX_HTTP_RATELIMIT_DIGEST_LEN;
        }
    }

    if (--poller->pending == 0) {
        ngx_http_ratelimit_poll_done(poller);
    }
}


/*
 * Every shard that could answer did: a new highest version means a rule
 * changed on some edge node; shards below it, or whose rules differ from
 * those of the shard at it, are merged with that shard's rules.
 */

static void
ngx_http_ratelimit_poll_done(ngx_http_ratelimit_poller_t *poller)
{
    const char                  *argv[5];
    size_t                       argvlen[5];
    long long                    highest;
    ngx_uint_t                   i, source, lagging;
    ngx_http_ratelimit_shctx_t  *sh;

    sh = poller->zone->sh;
    highest = -1;
    source = 0;
    lagging = 0;

    for (i = 0; i < poller->nshards; i++) {
        if (poller->shards[i].version > highest) {
            highest = poller->shards[i].version;
            source = i;
        }
    }

    if (highest < 0) {
        return;
    }

    /* a shard answered: this node knows the rules version in force */

    sh->rules_synced_at = (ngx_atomic_uint_t) ngx_time();

    if ((ngx_atomic_uint_t) highest != sh->rules_version) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, poller->log, 0,
                       "ratelimit: rules version %uA -> %L",
                       sh->rules_version, highest);

        sh->rules_version = (ngx_atomic_uint_t) highest;
        ngx_http_ratelimit_cache_invalidate(poller->zone);
    }

    for (i = 0; i < poller->nshards; i++) {
        if (ngx_http_ratelimit_poll_behind(&poller->shards[i], highest,
                                           poller->shards[source].digest,
                                           poller->shards[source].digest_len))
        {
            lagging++;
        }
    }

    if (lagging == 0) {
        return;
    }

    ngx_http_ratelimit_rules_eval(argv, argvlen,
                      ngx_http_ratelimit_rules_script(
                          NGX_HTTP_RATELIMIT_LUA_RULES_DUMP));

    poller->started = ngx_current_msec;
    poller->dump_slot = ngx_http_ratelimit_redis_send(
                            ngx_http_ratelimit_redis_conn(source), 5, argv,
                            argvlen, ngx_http_ratelimit_sync_dump, poller);
}


/* the rules of the most recent shard: load them into those behind it */

static void
ngx_http_ratelimit_sync_dump(void *data, redisReply *reply)
{
    ngx_http_ratelimit_poller_t *poller = data;

    u_char                     *p;
    size_t                     *argvlen, n, j;
    long long                   version;
    redisReply                 *digest;
    ngx_uint_t                  i;
    const char                **argv;
    u_char                      vbuf[NGX_INT64_LEN];

    poller->dump_slot = NULL;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements < 2 || reply->elements % 2 != 0
        || reply->element[0]->type != REDIS_REPLY_INTEGER)
    {
        ngx_log_error(NGX_LOG_WARN, poller->log, 0,
                      "ratelimit: could not read the rules to sync shards");
        return;
    }

    for (j = 1; j < reply->elements; j++) {
        if (reply->element[j]->type != REDIS_REPLY_STRING) {
            ngx_log_error(NGX_LOG_WARN, poller->log, 0,
                          "ratelimit: unexpected rules dump, not syncing");
            return;
        }
    }

    version = reply->element[0]->integer;
    digest = reply->element[1];

    /* EVAL body 2 key key version digest id value ... */

    n = 5 + reply->elements;

    argv = ngx_alloc(n * sizeof(char *), poller->log);
    argvlen = ngx_alloc(n * sizeof(size_t), poller->log);

    if (argv == NULL || argvlen == NULL) {
        goto done;
    }

    p = ngx_sprintf(vbuf, "%L", version);

    ngx_http_ratelimit_rules_eval(argv, argvlen,
                      ngx_http_ratelimit_rules_script(
                          NGX_HTTP_RATELIMIT_LUA_RULES_LOAD));
    argv[5] = (const char *) vbuf;
    argvlen[5] = p - vbuf;

    for (j = 1; j < reply->elements; j++) {
        argv[5 + j] = reply->element[j]->str;
        argvlen[5 + j] = reply->element[j]->len;
    }

    for (i = 0; i < poller->nshards; i++) {
        if (!ngx_http_ratelimit_poll_behind(&poller->shards[i], version,
                                            (u_char *) digest->str,
                                            digest->len))
        {
            continue;
        }

        ngx_log_error(NGX_LOG_NOTICE, poller->log, 0,
                      "ratelimit: shard %V has rules version %L of %L%s, "
                      "merging %uz rules into it",
                      ngx_http_ratelimit_redis_name(
                          ngx_http_ratelimit_redis_conn(i)),
                      poller->shards[i].version, version,
                      poller->shards[i].version >= version
                      ? " with different rules" : "",
                      (reply->elements - 2) / 2);

        /* formatted into the output buffer now: the reply may go after */

        (void) ngx_http_ratelimit_redis_send(ngx_http_ratelimit_redis_conn(i),
                                             (int) n, argv, argvlen,
                                             ngx_http_ratelimit_sync_loaded,
                                             poller);
    }

done:

    if (argv) {
        ngx_free(argv);
    }

    if (argvlen) {
        ngx_free(argvlen);
    }
}


static void
ngx_http_ratelimit_sync_loaded(void *data, redisReply *reply)
{
    ngx_http_ratelimit_poller_t *poller = data;

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        ngx_log_error(NGX_LOG_WARN, poller->log, 0,
                      "ratelimit: syncing rules to a shard failed: %s",
                      reply && reply->type == REDIS_REPLY_ERROR
                      ? reply->str : "no answer");
        return;
    }

    /*
     * The shard answered from fewer rules until now: what this node cached
     * from it ("no rule" for a customer it lacked) goes at once; the other
     * nodes drop theirs when they see the version the load moved on.
     */

    if (reply->integer > 0) {
        ngx_http_ratelimit_cache_invalidate(poller->zone);
    }
}


/* the shard is below "version", or may hold other rules than the source */

static ngx_uint_t
ngx_http_ratelimit_poll_behind(ngx_http_ratelimit_poll_shard_t *ps,
    long long version, u_char *digest, size_t digest_len)
{
    if (ps->version < 0) {
        return 0;
    }

    /*
     * No digest: the rules were stored by an older module, or by hand, and
     * nothing tells whether they agree with the others.  The merge makes
     * one, so this happens once.
     */

    if (ps->version < version || ps->digest_len == 0) {
        return 1;
    }

    return ps->digest_len != digest_len
           || ngx_memcmp(ps->digest, digest, digest_len) != 0;
}


static void
ngx_http_ratelimit_poll_abandon(ngx_http_ratelimit_poller_t *poller)
{
    ngx_uint_t  i;

    for (i = 0; i < poller->nshards; i++) {
        if (poller->shards[i].slot) {
            ngx_http_ratelimit_redis_detach(poller->shards[i].slot);
            poller->shards[i].slot = NULL;

            /* as the admin's timeout does: see rules_store_expire() */

            ngx_http_ratelimit_batch_drop_stalled(
                ngx_http_ratelimit_redis_conn(poller->shards[i].index),
                NGX_HTTP_RATELIMIT_POLL_TIMEOUT);
        }
    }

    if (poller->dump_slot) {
        ngx_http_ratelimit_redis_detach(poller->dump_slot);
        poller->dump_slot = NULL;
    }

    poller->pending = 0;
}
