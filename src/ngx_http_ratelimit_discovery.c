
/*
 * Global API rate limiter: where each shard is now.
 *
 * A shard named by a host name, with the http block's "resolver", is
 * resolved by each worker at start, again whenever its connection is made
 * anew or fails, and when the answer expires (the resolver's valid= or the
 * record's TTL): a managed service that fails over by moving the name is
 * followed without a reload.  Without a resolver the name was resolved once,
 * when the configuration was read, as before.
 *
 * A shard of "ratelimit_redis_sentinel" is the primary that Redis Sentinel
 * names.  Each worker keeps one connection to one of the sentinels, on
 * which it asks "SENTINEL get-master-addr-by-name" and then subscribes to
 * "+switch-master", both in one write: the answer gives the primary, the
 * messages its successors.  A sentinel that cannot be reached, does not
 * answer within a second, does not know the master or talks nonsense is
 * left for the next one; once all of them failed in turn, the next round
 * waits a second.  A failure of the shard's own connection asks again (the
 * primary may have gone), at most every 250 ms; a new connection asks the
 * node with ROLE whether it is a primary (ngx_http_ratelimit_redis.c).
 *
 * Per worker rather than once in shared memory: a worker learns of a
 * failover from its own subscription as soon as any other would, with no
 * lock or leader to elect, for one idle connection per worker and
 * Sentinel shard.
 *
 * The ring keeps each shard's name as written ("host:port", or the master
 * name): the keys do not move when the address does.
 */


#include "ngx_http_ratelimit_discovery.h"
#include "ngx_http_ratelimit_redis.h"
#include "rl_sentinel.h"


#define NGX_HTTP_RATELIMIT_SENTINEL_PORT      26379

/* a sentinel that takes longer to connect and answer is passed over */
#define NGX_HTTP_RATELIMIT_SENTINEL_TIMEOUT   1000

/* once every sentinel failed in turn, the next round waits this long */
#define NGX_HTTP_RATELIMIT_SENTINEL_BACKOFF   1000

/* a failed connection asks again, at most this often (ms) */
#define NGX_HTTP_RATELIMIT_ASK_MIN            250

/* a name is resolved again when its answer expires, within these (s) */
#define NGX_HTTP_RATELIMIT_RESOLVE_MIN        1
#define NGX_HTTP_RATELIMIT_RESOLVE_MAX        3600

/* what a sentinel sends is small: bounds on one reply and on a read */
#define NGX_HTTP_RATELIMIT_SENTINEL_IN_MAX    4096
#define NGX_HTTP_RATELIMIT_SENTINEL_ELEMENTS  8
#define NGX_HTTP_RATELIMIT_SENTINEL_READ_MAX  65536

#define NGX_HTTP_RATELIMIT_SENTINEL_IDLE        0
#define NGX_HTTP_RATELIMIT_SENTINEL_CONNECTING  1
#define NGX_HTTP_RATELIMIT_SENTINEL_ASKING      2
#define NGX_HTTP_RATELIMIT_SENTINEL_SUBSCRIBED  3


/* configuration: how a shard's address is found */
struct ngx_http_ratelimit_discovery_s {
    ngx_str_t                         host;      /* a name to resolve */
    in_port_t                         port;
    ngx_resolver_t                   *resolver;  /* of the http block */
    ngx_msec_t                        resolver_timeout;
    ngx_str_t                         master;    /* Sentinel: its name */
    ngx_array_t                       sentinels; /* ngx_addr_t */
    u_char                           *file;      /* where, for errors */
    ngx_uint_t                        line;
};


/* per worker: where one shard is, and the asking */
typedef struct {
    ngx_http_ratelimit_discovery_t   *conf;
    ngx_http_ratelimit_shard_conf_t  *shard;
    ngx_uint_t                        index;

    ngx_addr_t                        addr;      /* sockaddr NULL: unknown */
    ngx_sockaddr_t                    sockaddr;

    ngx_event_t                       ask;       /* posted: ask again */
    ngx_event_t                       timer;
    ngx_msec_t                        asked_at;
    ngx_msec_t                        logged_at;

    ngx_resolver_ctx_t               *resolving;

    ngx_peer_connection_t             peer;      /* to a sentinel */
    redisReader                      *reader;
    ngx_uint_t                        state;
    ngx_uint_t                        current;   /* the sentinel asked */
    ngx_uint_t                        failures;  /* in a row */
    u_char                           *out;       /* the question */
    size_t                            out_len;
    size_t                            out_sent;
} ngx_http_ratelimit_source_t;


static ngx_int_t ngx_http_ratelimit_discovery_question(ngx_cycle_t *cycle,
    ngx_http_ratelimit_source_t *src);
static void ngx_http_ratelimit_discovery_ask_handler(ngx_event_t *ev);
static void ngx_http_ratelimit_discovery_timer_handler(ngx_event_t *ev);
static void ngx_http_ratelimit_discovery_set(ngx_http_ratelimit_source_t *src,
    struct sockaddr *sockaddr, socklen_t socklen, const char *how,
    ngx_str_t *by);
static void ngx_http_ratelimit_discovery_resolve(
    ngx_http_ratelimit_source_t *src);
static void ngx_http_ratelimit_discovery_resolved(ngx_resolver_ctx_t *ctx);
static void ngx_http_ratelimit_sentinel_connect(
    ngx_http_ratelimit_source_t *src);
static void ngx_http_ratelimit_sentinel_next(ngx_http_ratelimit_source_t *src,
    const char *reason);
static void ngx_http_ratelimit_sentinel_close(
    ngx_http_ratelimit_source_t *src);
static void ngx_http_ratelimit_sentinel_write(ngx_event_t *wev);
static void ngx_http_ratelimit_sentinel_read(ngx_event_t *rev);
static ngx_int_t ngx_http_ratelimit_sentinel_replies(
    ngx_http_ratelimit_source_t *src);
static ngx_int_t ngx_http_ratelimit_sentinel_primary(
    ngx_http_ratelimit_source_t *src, rl_sentinel_addr_t *addr,
    const char *how);
static void *ngx_http_ratelimit_sentinel_array(const redisReadTask *task,
    int elements);


static ngx_http_ratelimit_source_t  *ngx_http_ratelimit_sources;
static ngx_uint_t                    ngx_http_ratelimit_nsources;

/*
 * What the timers' data points at: nginx's timer code logs the fd of an
 * event's connection, and these events have none.  A handler finds its
 * source from the event itself.
 */
static ngx_connection_t  ngx_http_ratelimit_discovery_ident;

/* hiredis's own builders, but an array of a sentinel is small */
static redisReplyObjectFunctions  *ngx_http_ratelimit_sentinel_hiredis;
static redisReplyObjectFunctions   ngx_http_ratelimit_sentinel_fn;


/* ratelimit_redis_sentinel NAME host:port [host:port ...] [weight=N] ... */

char *
ngx_http_ratelimit_redis_sentinel(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_ratelimit_main_conf_t *rmcf = conf;

    ngx_int_t                         rc;
    ngx_str_t                        *value;
    ngx_url_t                         u;
    ngx_uint_t                        i;
    ngx_addr_t                       *sentinel;
    ngx_http_ratelimit_discovery_t   *d;
    ngx_http_ratelimit_shard_conf_t  *shard;

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty master name in \"%V\"", &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (!rl_sentinel_valid_name((char *) value[1].data, value[1].len)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid master name \"%V\", must be 1 to %d "
                           "bytes, no space or control byte",
                           &value[1], RL_SENTINEL_MAX_NAME);
        return NGX_CONF_ERROR;
    }

    shard = ngx_array_push(&rmcf->shards);
    if (shard == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(shard, sizeof(ngx_http_ratelimit_shard_conf_t));

    d = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratelimit_discovery_t));
    if (d == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_array_init(&d->sentinels, cf->pool, 3, sizeof(ngx_addr_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* the ring point names are the master's: where it is does not matter */

    shard->name = value[1];
    shard->weight = 1;
    shard->discovery = d;

    d->master = value[1];
    d->file = cf->conf_file->file.name.data;
    d->line = cf->conf_file->line;

    for (i = 2; i < cf->args->nelts; i++) {

        /* parameters have a "=", or are "tls"; addresses neither */

        if (ngx_strlchr(value[i].data, value[i].data + value[i].len, '=')
            || (value[i].len == 3 && ngx_strncmp(value[i].data, "tls", 3) == 0))
        {
            rc = ngx_http_ratelimit_shard_param(cf, shard, &value[i]);

            if (rc == NGX_ERROR) {
                return NGX_CONF_ERROR;
            }

            if (rc == NGX_DECLINED) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid parameter \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = value[i];
        u.default_port = NGX_HTTP_RATELIMIT_SENTINEL_PORT;

        if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in sentinel address \"%V\"",
                               u.err ? u.err : "invalid address", &u.url);
            return NGX_CONF_ERROR;
        }

        if (u.naddrs == 0 || u.uri.len || u.family == AF_UNIX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid sentinel address \"%V\", "
                               "expected \"host:port\"", &u.url);
            return NGX_CONF_ERROR;
        }

        sentinel = ngx_array_push(&d->sentinels);
        if (sentinel == NULL) {
            return NGX_CONF_ERROR;
        }

        *sentinel = u.addrs[0];
        sentinel->name = value[i];
    }

    if (d->sentinels.nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no sentinel address in \"%V\", expected "
                           "\"host:port\" after the master name", &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_ratelimit_shard_check(cf, rmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_ratelimit_discovery_host(ngx_conf_t *cf,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_url_t *u)
{
    ngx_http_ratelimit_discovery_t  *d;

    d = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratelimit_discovery_t));
    if (d == NULL) {
        return NGX_ERROR;
    }

    d->host = u->host;
    d->port = u->port;
    d->file = cf->conf_file->file.name.data;
    d->line = cf->conf_file->line;

    shard->discovery = d;

    return NGX_OK;
}


/*
 * The "resolver" of the http block, as proxy_pass with variables uses it:
 * known only once the whole block is read.  Without one, a host name is
 * resolved now, once, by the system, as nginx resolves a static proxy_pass.
 */

ngx_int_t
ngx_http_ratelimit_discovery_init_conf(ngx_conf_t *cf,
    ngx_http_ratelimit_main_conf_t *rmcf)
{
    ngx_url_t                         u;
    ngx_uint_t                        i;
    ngx_msec_t                        timeout;
    ngx_resolver_t                   *resolver;
    ngx_http_core_loc_conf_t         *clcf;
    ngx_http_ratelimit_discovery_t   *d;
    ngx_http_ratelimit_shard_conf_t  *shard;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    /* without "resolver", the http block has a dummy one, or none */

    resolver = clcf->resolver;

    if (resolver != NULL && resolver->connections.nelts == 0) {
        resolver = NULL;
    }

    timeout = clcf->resolver_timeout;

    if (timeout == NGX_CONF_UNSET_MSEC) {
        timeout = 30000;
    }

    shard = rmcf->shards.elts;

    for (i = 0; i < rmcf->shards.nelts; i++) {
        d = shard[i].discovery;

        if (d == NULL || d->master.len) {
            continue;
        }

        if (resolver) {
            d->resolver = resolver;
            d->resolver_timeout = timeout;
            continue;
        }

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.host = d->host;
        u.port = d->port;

        if (ngx_inet_resolve_host(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "%s in shard address \"%V\" in %s:%ui",
                          u.err ? u.err : "host not found", &shard[i].name,
                          d->file, d->line);
            return NGX_ERROR;
        }

        shard[i].addr = u.addrs[0];
        shard[i].addr.name = shard[i].name;
        shard[i].discovery = NULL;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_ratelimit_discovery_init_process(ngx_cycle_t *cycle,
    ngx_array_t *shards)
{
    ngx_uint_t                        i;
    redisReader                      *reader;
    ngx_http_ratelimit_source_t      *src;
    ngx_http_ratelimit_shard_conf_t  *shard;

    ngx_http_ratelimit_discovery_ident.fd = (ngx_socket_t) -1;

    if (ngx_http_ratelimit_sentinel_hiredis == NULL) {
        reader = redisReaderCreate();
        if (reader == NULL) {
            return NGX_ERROR;
        }

        ngx_http_ratelimit_sentinel_hiredis = reader->fn;
        redisReaderFree(reader);

        ngx_http_ratelimit_sentinel_fn = *ngx_http_ratelimit_sentinel_hiredis;
        ngx_http_ratelimit_sentinel_fn.createArray =
                                             ngx_http_ratelimit_sentinel_array;
    }

    ngx_http_ratelimit_nsources = shards->nelts;
    ngx_http_ratelimit_sources = ngx_pcalloc(cycle->pool,
                                       ngx_http_ratelimit_nsources
                                       * sizeof(ngx_http_ratelimit_source_t));
    if (ngx_http_ratelimit_sources == NULL) {
        return NGX_ERROR;
    }

    shard = shards->elts;

    for (i = 0; i < ngx_http_ratelimit_nsources; i++) {
        src = &ngx_http_ratelimit_sources[i];

        src->shard = &shard[i];
        src->index = i;
        src->conf = shard[i].discovery;

        if (src->conf == NULL) {
            continue;
        }

        src->ask.handler = ngx_http_ratelimit_discovery_ask_handler;
        src->ask.data = &ngx_http_ratelimit_discovery_ident;
        src->ask.log = cycle->log;

        src->timer.handler = ngx_http_ratelimit_discovery_timer_handler;
        src->timer.data = &ngx_http_ratelimit_discovery_ident;
        src->timer.log = cycle->log;
        src->timer.cancelable = 1;

        if (src->conf->master.len
            && ngx_http_ratelimit_discovery_question(cycle, src) != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* the first question goes out as soon as the event loop runs */

        ngx_add_timer(&src->timer, 1);
    }

    return NGX_OK;
}


void
ngx_http_ratelimit_discovery_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                    i;
    ngx_http_ratelimit_source_t  *src;

    for (i = 0; i < ngx_http_ratelimit_nsources; i++) {
        src = &ngx_http_ratelimit_sources[i];

        if (src->conf == NULL) {
            continue;
        }

        if (src->resolving) {
            ngx_resolve_name_done(src->resolving);
            src->resolving = NULL;
        }

        ngx_http_ratelimit_sentinel_close(src);

        if (src->ask.posted) {
            ngx_delete_posted_event(&src->ask);
        }
    }

    ngx_http_ratelimit_nsources = 0;
}


ngx_addr_t *
ngx_http_ratelimit_discovery_addr(ngx_http_ratelimit_shard_conf_t *shard,
    ngx_uint_t index)
{
    ngx_http_ratelimit_source_t  *src;

    if (shard->discovery == NULL) {
        return &shard->addr;
    }

    if (index >= ngx_http_ratelimit_nsources) {
        return NULL;
    }

    src = &ngx_http_ratelimit_sources[index];

    /* a reconnect asks the resolver again; its cache makes it cheap */

    if (src->conf->master.len == 0 && !src->ask.posted) {
        ngx_post_event(&src->ask, &ngx_posted_events);
    }

    return src->addr.sockaddr ? &src->addr : NULL;
}


ngx_uint_t
ngx_http_ratelimit_discovery_verify(ngx_http_ratelimit_shard_conf_t *shard)
{
    return shard->discovery != NULL && shard->discovery->master.len != 0;
}


void
ngx_http_ratelimit_discovery_failed(ngx_uint_t index)
{
    ngx_http_ratelimit_source_t  *src;

    if (index >= ngx_http_ratelimit_nsources) {
        return;
    }

    src = &ngx_http_ratelimit_sources[index];

    /* never from inside the caller: it may be closing the connection */

    if (src->conf && !src->ask.posted) {
        ngx_post_event(&src->ask, &ngx_posted_events);
    }
}


/*
 * "SENTINEL get-master-addr-by-name NAME" and "SUBSCRIBE +switch-master",
 * sent together on each connection to a sentinel.
 */

static ngx_int_t
ngx_http_ratelimit_discovery_question(ngx_cycle_t *cycle,
    ngx_http_ratelimit_source_t *src)
{
    int          len1, len2;
    char        *cmd1, *cmd2;
    size_t       argvlen[3];
    const char  *argv[3];

    argv[0] = "SENTINEL";
    argvlen[0] = sizeof("SENTINEL") - 1;
    argv[1] = "get-master-addr-by-name";
    argvlen[1] = sizeof("get-master-addr-by-name") - 1;
    argv[2] = (const char *) src->conf->master.data;
    argvlen[2] = src->conf->master.len;

    len1 = redisFormatCommandArgv(&cmd1, 3, argv, argvlen);
    if (len1 < 0) {
        return NGX_ERROR;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = sizeof("SUBSCRIBE") - 1;
    argv[1] = "+switch-master";
    argvlen[1] = sizeof("+switch-master") - 1;

    len2 = redisFormatCommandArgv(&cmd2, 2, argv, argvlen);
    if (len2 < 0) {
        redisFreeCommand(cmd1);
        return NGX_ERROR;
    }

    src->out = ngx_pnalloc(cycle->pool, len1 + len2);

    if (src->out) {
        ngx_memcpy(src->out, cmd1, len1);
        ngx_memcpy(src->out + len1, cmd2, len2);
        src->out_len = len1 + len2;
    }

    redisFreeCommand(cmd1);
    redisFreeCommand(cmd2);

    return src->out ? NGX_OK : NGX_ERROR;
}


/* a connection failed, or a reconnect: ask again, not too often */

static void
ngx_http_ratelimit_discovery_ask_handler(ngx_event_t *ev)
{
    ngx_msec_t                    elapsed;
    ngx_http_ratelimit_source_t  *src;

    src = (ngx_http_ratelimit_source_t *)
              ((u_char *) ev - offsetof(ngx_http_ratelimit_source_t, ask));

    if (src->conf->master.len == 0) {
        ngx_http_ratelimit_discovery_resolve(src);
        return;
    }

    /* an answer is on its way, or every sentinel failed: wait for it */

    if (src->state == NGX_HTTP_RATELIMIT_SENTINEL_CONNECTING
        || src->state == NGX_HTTP_RATELIMIT_SENTINEL_ASKING
        || src->timer.timer_set)
    {
        return;
    }

    elapsed = ngx_current_msec - src->asked_at;

    if (elapsed < NGX_HTTP_RATELIMIT_ASK_MIN) {
        ngx_add_timer(&src->timer, NGX_HTTP_RATELIMIT_ASK_MIN - elapsed);
        return;
    }

    ngx_http_ratelimit_sentinel_close(src);
    ngx_http_ratelimit_sentinel_connect(src);
}


static void
ngx_http_ratelimit_discovery_timer_handler(ngx_event_t *ev)
{
    ngx_http_ratelimit_source_t  *src;

    src = (ngx_http_ratelimit_source_t *)
              ((u_char *) ev - offsetof(ngx_http_ratelimit_source_t, timer));

    if (src->conf->master.len == 0) {
        ngx_http_ratelimit_discovery_resolve(src);
        return;
    }

    if (src->state == NGX_HTTP_RATELIMIT_SENTINEL_CONNECTING
        || src->state == NGX_HTTP_RATELIMIT_SENTINEL_ASKING)
    {
        ngx_http_ratelimit_sentinel_next(src, "timed out");
        return;
    }

    /* the first question, a round after a pause, or a delayed one */

    ngx_http_ratelimit_sentinel_close(src);
    ngx_http_ratelimit_sentinel_connect(src);
}


/*
 * The shard is at this address now.  A new one closes the connection to the
 * old (nginx has nothing more to do there: the name moved, or the primary
 * changed) and connects to the new one at once.
 */

static void
ngx_http_ratelimit_discovery_set(ngx_http_ratelimit_source_t *src,
    struct sockaddr *sockaddr, socklen_t socklen, const char *how,
    ngx_str_t *by)
{
    size_t  len, old;
    u_char  text[NGX_SOCKADDR_STRLEN], was[NGX_SOCKADDR_STRLEN];

    if (src->addr.sockaddr
        && ngx_cmp_sockaddr(sockaddr, socklen, src->addr.sockaddr,
                            src->addr.socklen, 1)
           == NGX_OK)
    {
        return;
    }

    old = 0;

    if (src->addr.sockaddr) {
        old = ngx_sock_ntop(src->addr.sockaddr, src->addr.socklen, was,
                            NGX_SOCKADDR_STRLEN, 1);
    }

    ngx_memcpy(&src->sockaddr, sockaddr, socklen);
    src->addr.sockaddr = &src->sockaddr.sockaddr;
    src->addr.socklen = socklen;
    src->addr.name = src->shard->name;

    len = ngx_sock_ntop(sockaddr, socklen, text, NGX_SOCKADDR_STRLEN, 1);

    if (old) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "ratelimit: shard %V moved from %*s to %*s (%s %V)",
                      &src->shard->name, old, was, len, text, how, by);

    } else {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "ratelimit: shard %V is at %*s (%s %V)",
                      &src->shard->name, len, text, how, by);
    }

    ngx_http_ratelimit_redis_moved(ngx_http_ratelimit_redis_conn(src->index));
}


static void
ngx_http_ratelimit_discovery_resolve(ngx_http_ratelimit_source_t *src)
{
    ngx_resolver_ctx_t  *ctx;

    if (src->resolving) {
        return;
    }

    ctx = ngx_resolve_start(src->conf->resolver, NULL);

    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "ratelimit: shard %V: could not start resolving",
                      &src->shard->name);
        ngx_add_timer(&src->timer, 1000);
        return;
    }

    ctx->name = src->conf->host;
    ctx->handler = ngx_http_ratelimit_discovery_resolved;
    ctx->data = src;
    ctx->timeout = src->conf->resolver_timeout;
    ctx->cancelable = 1;

    src->resolving = ctx;
    src->asked_at = ngx_current_msec;

    /* a cached answer calls the handler before this returns */

    if (ngx_resolve_name(ctx) != NGX_OK) {
        src->resolving = NULL;

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "ratelimit: shard %V: could not resolve \"%V\"",
                      &src->shard->name, &src->conf->host);
        ngx_add_timer(&src->timer, 1000);
    }
}


static void
ngx_http_ratelimit_discovery_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_http_ratelimit_source_t *src = ctx->data;

    time_t          delay;
    ngx_uint_t      i;
    ngx_sockaddr_t  sockaddr;

    if (ctx->state) {
        if (ngx_http_ratelimit_log_due(&src->logged_at)) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "ratelimit: shard %V: \"%V\" could not be resolved "
                          "(%i: %s), %s", &src->shard->name, &ctx->name,
                          ctx->state, ngx_resolver_strerror(ctx->state),
                          src->addr.sockaddr ? "keeping its last address"
                                             : "no address yet");
        }

        goto done;
    }

    /* of several addresses, the one in use stays: no flapping between them */

    for (i = 0; src->addr.sockaddr && i < ctx->naddrs; i++) {
        if (ngx_cmp_sockaddr(ctx->addrs[i].sockaddr, ctx->addrs[i].socklen,
                             src->addr.sockaddr, src->addr.socklen, 0)
            == NGX_OK)
        {
            goto done;
        }
    }

    if (ctx->naddrs == 0 || ctx->addrs[0].socklen > sizeof(ngx_sockaddr_t)) {
        goto done;
    }

    ngx_memcpy(&sockaddr, ctx->addrs[0].sockaddr, ctx->addrs[0].socklen);
    ngx_inet_set_port(&sockaddr.sockaddr, src->conf->port);

    ngx_http_ratelimit_discovery_set(src, &sockaddr.sockaddr,
                                     ctx->addrs[0].socklen, "resolved",
                                     &src->conf->host);

done:

    /* again when the answer expires: the resolver's valid= or the TTL */

    delay = ctx->valid - ngx_time();
    delay = ngx_max(delay, NGX_HTTP_RATELIMIT_RESOLVE_MIN);
    delay = ngx_min(delay, NGX_HTTP_RATELIMIT_RESOLVE_MAX);

    src->resolving = NULL;
    ngx_resolve_name_done(ctx);

    ngx_add_timer(&src->timer, (ngx_msec_t) delay * 1000);
}


static void
ngx_http_ratelimit_sentinel_connect(ngx_http_ratelimit_source_t *src)
{
    ngx_int_t          rc;
    ngx_addr_t        *sentinel;
    ngx_connection_t  *c;

    sentinel = src->conf->sentinels.elts;
    sentinel = &sentinel[src->current];

    ngx_memzero(&src->peer, sizeof(ngx_peer_connection_t));

    src->peer.sockaddr = sentinel->sockaddr;
    src->peer.socklen = sentinel->socklen;
    src->peer.name = &sentinel->name;
    src->peer.get = ngx_event_get_peer;
    src->peer.log = ngx_cycle->log;
    src->peer.log_error = NGX_ERROR_ERR;

    src->asked_at = ngx_current_msec;

    rc = ngx_event_connect_peer(&src->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (src->peer.connection) {
            ngx_close_connection(src->peer.connection);
            src->peer.connection = NULL;
        }

        ngx_http_ratelimit_sentinel_next(src, "connect failed");
        return;
    }

    c = src->peer.connection;

    c->data = src;
    c->read->handler = ngx_http_ratelimit_sentinel_read;
    c->write->handler = ngx_http_ratelimit_sentinel_write;

    src->reader = redisReaderCreateWithFunctions(
                                             &ngx_http_ratelimit_sentinel_fn);
    if (src->reader == NULL) {
        ngx_http_ratelimit_sentinel_next(src, "no memory");
        return;
    }

    src->out_sent = 0;
    src->state = NGX_HTTP_RATELIMIT_SENTINEL_CONNECTING;

    ngx_add_timer(&src->timer, NGX_HTTP_RATELIMIT_SENTINEL_TIMEOUT);

    if (rc == NGX_OK) {
        ngx_http_ratelimit_sentinel_write(c->write);
    }
}


/* this sentinel failed: the next one, or a pause after a whole round */

static void
ngx_http_ratelimit_sentinel_next(ngx_http_ratelimit_source_t *src,
    const char *reason)
{
    ngx_addr_t  *sentinel;

    sentinel = src->conf->sentinels.elts;

    if (ngx_http_ratelimit_log_due(&src->logged_at)) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ratelimit: shard %V: sentinel %V: %s",
                      &src->shard->name, &sentinel[src->current].name,
                      reason);
    }

    ngx_http_ratelimit_sentinel_close(src);

    src->current = (src->current + 1) % src->conf->sentinels.nelts;
    src->failures++;

    if (src->failures >= src->conf->sentinels.nelts) {
        src->failures = 0;
        ngx_add_timer(&src->timer, NGX_HTTP_RATELIMIT_SENTINEL_BACKOFF);
        return;
    }

    ngx_http_ratelimit_sentinel_connect(src);
}


static void
ngx_http_ratelimit_sentinel_close(ngx_http_ratelimit_source_t *src)
{
    if (src->peer.connection) {
        ngx_close_connection(src->peer.connection);
        src->peer.connection = NULL;
    }

    if (src->reader) {
        redisReaderFree(src->reader);
        src->reader = NULL;
    }

    if (src->timer.timer_set) {
        ngx_del_timer(&src->timer);
    }

    src->state = NGX_HTTP_RATELIMIT_SENTINEL_IDLE;
}


static void
ngx_http_ratelimit_sentinel_write(ngx_event_t *wev)
{
    ssize_t                       n;
    ngx_err_t                     err;
    ngx_connection_t             *c;
    ngx_http_ratelimit_source_t  *src;

    c = wev->data;
    src = c->data;

    if (src->state == NGX_HTTP_RATELIMIT_SENTINEL_CONNECTING) {
        err = ngx_http_ratelimit_connect_error(c);

        if (err) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, err,
                          "ratelimit: connect() to sentinel %V failed",
                          src->peer.name);
            ngx_http_ratelimit_sentinel_next(src, "connect failed");
            return;
        }

        src->state = NGX_HTTP_RATELIMIT_SENTINEL_ASKING;
    }

    while (src->out_sent < src->out_len) {
        n = c->send(c, src->out + src->out_sent,
                    src->out_len - src->out_sent);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_ratelimit_sentinel_next(src, "write event failed");
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_ratelimit_sentinel_next(src, "send failed");
            return;
        }

        src->out_sent += n;
    }
}


static void
ngx_http_ratelimit_sentinel_read(ngx_event_t *rev)
{
    size_t                        total;
    ssize_t                       n;
    ngx_connection_t             *c;
    ngx_http_ratelimit_source_t  *src;
    u_char                        buf[1024];

    c = rev->data;
    src = c->data;

    for (total = 0; /* void */; total += n) {

        /* a sentinel that keeps sending must not hold the worker */

        if (total >= NGX_HTTP_RATELIMIT_SENTINEL_READ_MAX) {
            ngx_post_event(rev, &ngx_posted_next_events);
            return;
        }

        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {

            /* a refused connect() may be seen by a read first */

            ngx_http_ratelimit_sentinel_next(src,
                      src->state == NGX_HTTP_RATELIMIT_SENTINEL_CONNECTING
                      ? "connect failed"
                      : (n == 0 ? "connection closed" : "recv() failed"));
            return;
        }

        if (redisReaderFeed(src->reader, (const char *) buf, n) != REDIS_OK) {
            ngx_http_ratelimit_sentinel_next(src, "reply buffer failed");
            return;
        }

        if (ngx_http_ratelimit_sentinel_replies(src) != NGX_OK) {
            return;
        }

        if (src->reader->len - src->reader->pos
            > NGX_HTTP_RATELIMIT_SENTINEL_IN_MAX)
        {
            ngx_http_ratelimit_sentinel_next(src, "reply too large");
            return;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_ratelimit_sentinel_next(src, "read event failed");
    }
}


/* NGX_OK: go on reading; NGX_DONE: the connection was left */

static ngx_int_t
ngx_http_ratelimit_sentinel_replies(ngx_http_ratelimit_source_t *src)
{
    ngx_int_t            rc;
    const char          *why;
    redisReply          *reply;
    rl_sentinel_addr_t   addr;

    for ( ;; ) {
        reply = NULL;

        if (redisReaderGetReply(src->reader, (void **) &reply) != REDIS_OK) {
            ngx_http_ratelimit_sentinel_next(src, "malformed reply");
            return NGX_DONE;
        }

        if (reply == NULL) {
            return NGX_OK;
        }

        why = "";

        if (src->state == NGX_HTTP_RATELIMIT_SENTINEL_ASKING) {

            switch (rl_sentinel_master_reply(reply, &addr, &why)) {

            case RL_SENTINEL_OK:
                rc = ngx_http_ratelimit_sentinel_primary(src, &addr,
                                                         "named by sentinel");
                if (rc == NGX_DECLINED) {
                    why = "a primary named by a host name, not supported";

                } else {
                    src->state = NGX_HTTP_RATELIMIT_SENTINEL_SUBSCRIBED;
                    src->failures = 0;

                    if (src->timer.timer_set) {
                        ngx_del_timer(&src->timer);
                    }
                }

                break;

            case RL_SENTINEL_UNKNOWN:
                rc = NGX_ERROR;
                why = "does not know the master";
                break;

            default:
                rc = NGX_ERROR;
                break;
            }

        } else if (src->state == NGX_HTTP_RATELIMIT_SENTINEL_SUBSCRIBED) {

            switch (rl_sentinel_message(reply, (char *) src->conf->master.data,
                                        src->conf->master.len, &addr, &why))
            {
            case RL_SENTINEL_OK:
                rc = ngx_http_ratelimit_sentinel_primary(src, &addr,
                                               "+switch-master from sentinel");
                why = "a switch to a host name, not supported";
                break;

            case RL_SENTINEL_OTHER:
                rc = NGX_OK;
                break;

            default:
                rc = NGX_ERROR;
                break;
            }

        } else {
            rc = NGX_ERROR;
            why = "a reply before the question";
        }

        if (rc != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                          "ratelimit: shard %V: sentinel %V answered: %s",
                          &src->shard->name, src->peer.name,
                          why ? why : "");
            freeReplyObject(reply);
            ngx_http_ratelimit_sentinel_next(src, "bad answer");
            return NGX_DONE;
        }

        freeReplyObject(reply);
    }
}


/*
 * A sentinel named the primary.  Only addresses: a sentinel that announces
 * host names ("resolve-hostnames yes") is not followed (NGX_DECLINED).
 */

static ngx_int_t
ngx_http_ratelimit_sentinel_primary(ngx_http_ratelimit_source_t *src,
    rl_sentinel_addr_t *addr, const char *how)
{
    in_addr_t             inaddr;
    socklen_t             socklen;
    ngx_sockaddr_t        sockaddr;
    struct sockaddr_in   *sin;
#if (NGX_HAVE_INET6)
    struct sockaddr_in6  *sin6;
#endif

    ngx_memzero(&sockaddr, sizeof(ngx_sockaddr_t));

    inaddr = ngx_inet_addr((u_char *) addr->host, addr->host_len);

    if (inaddr != INADDR_NONE) {
        sin = &sockaddr.sockaddr_in;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = inaddr;
        sin->sin_port = htons((in_port_t) addr->port);
        socklen = sizeof(struct sockaddr_in);

#if (NGX_HAVE_INET6)
    } else if (ngx_inet6_addr((u_char *) addr->host, addr->host_len,
                              sockaddr.sockaddr_in6.sin6_addr.s6_addr)
               == NGX_OK)
    {
        sin6 = &sockaddr.sockaddr_in6;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((in_port_t) addr->port);
        socklen = sizeof(struct sockaddr_in6);
#endif

    } else {
        return NGX_DECLINED;
    }

    ngx_http_ratelimit_discovery_set(src, &sockaddr.sockaddr, socklen, how,
                                     src->peer.name);

    return NGX_OK;
}


static void *
ngx_http_ratelimit_sentinel_array(const redisReadTask *task, int elements)
{
    if (elements > NGX_HTTP_RATELIMIT_SENTINEL_ELEMENTS) {
        return NULL;
    }

    return ngx_http_ratelimit_sentinel_hiredis->createArray(task, elements);
}
