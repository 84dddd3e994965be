
/*
 * Global API rate limiter: each worker's connections to the Redis shards.
 *
 * One persistent connection per shard per worker.  Commands from every
 * request that arrives in the same event loop iteration are appended to one
 * output buffer and written together by a posted event, so that a burst of
 * checks costs one write and one round trip.  Redis answers in order, so the
 * head of the waiting queue owns the next reply.  hiredis formats the
 * commands and parses the replies.
 *
 * A shard is not trusted to be well behaved: what one reply may hold, the
 * unparsed input, the unsent output, the number of commands waiting and the
 * work done per read event are all bounded, and a shard that crosses a
 * bound is failed.  A command whose owner leaves before it was written is
 * taken back out of the output buffer: the shard never sees it.
 */


#include "ngx_http_ratelimit_redis.h"
#include "ngx_http_ratelimit_discovery.h"
#include "rl_sentinel.h"
#include "ngx_http_ratelimit_ssl.h"


#define NGX_HTTP_RATELIMIT_DISCONNECTED  0
#define NGX_HTTP_RATELIMIT_CONNECTING    1
#define NGX_HTTP_RATELIMIT_CONNECTED     2
#define NGX_HTTP_RATELIMIT_HANDSHAKING   3

/* what a TLS connection allocates from its pool: its ngx_ssl_connection_t */
#define NGX_HTTP_RATELIMIT_TLS_POOL      512

#define NGX_HTTP_RATELIMIT_OUT_MIN       4096

/* a drained output buffer larger than this is given back after a burst */
#define NGX_HTTP_RATELIMIT_OUT_KEEP      65536

/*
 * Unsent bytes a connection may hold before new commands are refused, not
 * counting commands larger than this: the rules load that syncs a lagging
 * shard is one such, rare, and must not make every check fail while it is
 * written.
 */
#define NGX_HTTP_RATELIMIT_OUT_MAX       (1024 * 1024)

/* one command: the largest is the rules load, as large as the rules dump */
#define NGX_HTTP_RATELIMIT_COMMAND_MAX   (64 * 1024 * 1024)

/*
 * The largest legitimate reply is the rules dump: {version, digest, id,
 * value, ...} with ids of up to 256 bytes and values of a few dozen (16
 * values of room for what may precede the pairs).  Bounds on a reply:
 * values in all (arrays count their elements as they are announced, before
 * anything is allocated), one string, and the memory of the whole reply.
 */
#define NGX_HTTP_RATELIMIT_REPLY_RULES   100000
#define NGX_HTTP_RATELIMIT_REPLY_VALUES  (2 * NGX_HTTP_RATELIMIT_REPLY_RULES + 16)
#define NGX_HTTP_RATELIMIT_REPLY_STRING  65536
#define NGX_HTTP_RATELIMIT_REPLY_BYTES   (64 * 1024 * 1024)

/*
 * Unparsed input: hiredis consumes every complete value at once, so what
 * stays is at most one unfinished string and its header.
 */
#define NGX_HTTP_RATELIMIT_IN_MAX        (NGX_HTTP_RATELIMIT_REPLY_STRING + 1024)

/* bytes read per read event before the other events get their turn */
#define NGX_HTTP_RATELIMIT_READ_MAX      65536

#define NGX_HTTP_RATELIMIT_READ_BUF      16384


struct ngx_http_ratelimit_slot_s {
    ngx_queue_t                        queue;
    ngx_http_ratelimit_reply_pt        handler;    /* NULL: owner gone */
    void                              *data;
    ngx_http_ratelimit_conn_t         *conn;
    off_t                              start;      /* in the output stream */
    size_t                             len;
    ngx_msec_t                         queued_at;
};


struct ngx_http_ratelimit_conn_s {
    ngx_peer_connection_t              peer;
    ngx_http_ratelimit_shard_conf_t   *shard;
    ngx_uint_t                         index;
    ngx_uint_t                         state;
    ngx_uint_t                         generation;  /* bumped on close */
    ngx_msec_t                         connect_at;

    redisReader                       *reader;
    size_t                             reply_values;  /* of the reply */
    size_t                             reply_bytes;   /* being read */
    u_char                             refused[128];  /* why, or "" */

    /*
     * out[0 .. out_sent) is written, out[out_sent .. out_len) is not;
     * out[0] is byte out_offset of everything ever queued on the connection.
     */
    u_char                            *out;
    size_t                             out_size;
    size_t                             out_sent;
    size_t                             out_len;
    off_t                              out_offset;
    size_t                             out_large;  /* unsent, of commands
                                                      over OUT_MAX */

    /*
     * Below this offset the bytes may be inside OpenSSL already: a TLS
     * write that returned NGX_AGAIN may have encrypted part of what it was
     * given, and must be retried with the same bytes.
     */
    off_t                              out_committed;
    ngx_event_t                        flush;

    ngx_queue_t                        waiting;
    ngx_uint_t                         nwaiting;
    ngx_uint_t                         max_waiting;
    ngx_queue_t                        spare;

    void                              *batch;   /* its owner's open batch */
    ngx_msec_int_t                     clock_offset;  /* kept across
                                                         reconnects */
    ngx_msec_t                         logged_at;
    ngx_msec_t                         refused_logged_at;
    ngx_log_t                         *log;

    /* the socket's own log: nginx's messages about it name the shard */
    ngx_log_t                          peer_log;

#if (NGX_SSL)
    ngx_ssl_session_t                 *ssl_session;  /* for the next
                                                        handshake */
#endif
};


static ngx_int_t ngx_http_ratelimit_redis_connect(
    ngx_http_ratelimit_conn_t *conn);
static ngx_int_t ngx_http_ratelimit_redis_auth(
    ngx_http_ratelimit_conn_t *conn);
static void ngx_http_ratelimit_redis_connected(
    ngx_http_ratelimit_conn_t *conn);
#if (NGX_SSL)
static void ngx_http_ratelimit_redis_tls_start(
    ngx_http_ratelimit_conn_t *conn);
static void ngx_http_ratelimit_redis_tls_done(ngx_connection_t *c);
static void ngx_http_ratelimit_redis_save_session(ngx_connection_t *c);
#endif
static u_char *ngx_http_ratelimit_redis_log_error(ngx_log_t *log,
    u_char *buf, size_t len);
static void ngx_http_ratelimit_redis_drop(ngx_http_ratelimit_conn_t *conn,
    const char *reason);
static void ngx_http_ratelimit_redis_close(ngx_http_ratelimit_conn_t *conn);
static void ngx_http_ratelimit_redis_settle(ngx_http_ratelimit_conn_t *conn);
static ngx_http_ratelimit_slot_t *ngx_http_ratelimit_redis_queue(
    ngx_http_ratelimit_conn_t *conn, int argc, const char **argv,
    const size_t *argvlen, ngx_http_ratelimit_reply_pt handler, void *data);
static void ngx_http_ratelimit_redis_refuse(ngx_http_ratelimit_conn_t *conn,
    const char *why);
static void ngx_http_ratelimit_redis_flush_handler(ngx_event_t *ev);
static void ngx_http_ratelimit_redis_flush(ngx_http_ratelimit_conn_t *conn);
static void ngx_http_ratelimit_redis_write_handler(ngx_event_t *wev);
static void ngx_http_ratelimit_redis_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_http_ratelimit_redis_replies(
    ngx_http_ratelimit_conn_t *conn);
static void ngx_http_ratelimit_redis_auth_done(void *data, redisReply *reply);
static void ngx_http_ratelimit_redis_role_done(void *data, redisReply *reply);
static const char *ngx_http_ratelimit_redis_unfit(
    ngx_http_ratelimit_slot_t *slot, redisReply *reply);

static ngx_int_t ngx_http_ratelimit_reply_charge(const redisReadTask *task,
    size_t bytes);
static void *ngx_http_ratelimit_reply_string(const redisReadTask *task,
    char *str, size_t len);
static void *ngx_http_ratelimit_reply_array(const redisReadTask *task,
    int elements);
static void *ngx_http_ratelimit_reply_integer(const redisReadTask *task,
    long long value);
static void *ngx_http_ratelimit_reply_nil(const redisReadTask *task);


static ngx_http_ratelimit_conn_t  *ngx_http_ratelimit_conns;
static ngx_uint_t                  ngx_http_ratelimit_nconns;
static ngx_http_ratelimit_redis_event_pt  ngx_http_ratelimit_redis_event;

static ngx_str_t  ngx_http_ratelimit_redis_nobody = ngx_string("no shard");

/* hiredis's own reply builders, which the bounded ones below call */
static redisReplyObjectFunctions  *ngx_http_ratelimit_hiredis_fn;

static redisReplyObjectFunctions  ngx_http_ratelimit_bounded_fn = {
    ngx_http_ratelimit_reply_string,
    ngx_http_ratelimit_reply_array,
    ngx_http_ratelimit_reply_integer,
    ngx_http_ratelimit_reply_nil,
    freeReplyObject
};


ngx_int_t
ngx_http_ratelimit_redis_init_process(ngx_cycle_t *cycle, ngx_array_t *shards,
    ngx_http_ratelimit_redis_event_pt event)
{
    ngx_uint_t                        i;
    redisReader                      *reader;
    ngx_http_ratelimit_conn_t        *conn;
    ngx_http_ratelimit_shard_conf_t  *shard;

    ngx_http_ratelimit_redis_event = event;

    /* the only way to reach hiredis's default builders is a reader's */

    if (ngx_http_ratelimit_hiredis_fn == NULL) {
        reader = redisReaderCreate();
        if (reader == NULL) {
            return NGX_ERROR;
        }

        ngx_http_ratelimit_hiredis_fn = reader->fn;
        redisReaderFree(reader);
    }

    ngx_http_ratelimit_nconns = shards->nelts;
    ngx_http_ratelimit_conns = ngx_pcalloc(cycle->pool,
                  ngx_http_ratelimit_nconns * sizeof(ngx_http_ratelimit_conn_t));
    if (ngx_http_ratelimit_conns == NULL) {
        return NGX_ERROR;
    }

    shard = shards->elts;

    for (i = 0; i < ngx_http_ratelimit_nconns; i++) {
        conn = &ngx_http_ratelimit_conns[i];

        conn->shard = &shard[i];
        conn->index = i;
        conn->log = cycle->log;
        conn->state = NGX_HTTP_RATELIMIT_DISCONNECTED;

        conn->peer_log = *cycle->log;
        conn->peer_log.handler = ngx_http_ratelimit_redis_log_error;
        conn->peer_log.data = conn;

        /*
         * A worker holds at most one live command per connection of its
         * own at a time: beyond twice that, the waiting commands are those
         * of requests that left a shard that does not answer.
         */

        conn->max_waiting = 2 * cycle->connection_n + 64;

        ngx_queue_init(&conn->waiting);
        ngx_queue_init(&conn->spare);

        conn->flush.handler = ngx_http_ratelimit_redis_flush_handler;
        conn->flush.data = conn;
        conn->flush.log = cycle->log;
    }

    return NGX_OK;
}


void
ngx_http_ratelimit_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                  i;
    ngx_queue_t                *q;
    ngx_http_ratelimit_conn_t  *conn;

    for (i = 0; i < ngx_http_ratelimit_nconns; i++) {
        conn = &ngx_http_ratelimit_conns[i];

        ngx_http_ratelimit_redis_close(conn);

        /* the requests that owned these are being torn down as well */

        ngx_queue_add(&conn->spare, &conn->waiting);
        ngx_queue_init(&conn->waiting);
        conn->nwaiting = 0;

        while (!ngx_queue_empty(&conn->spare)) {
            q = ngx_queue_head(&conn->spare);
            ngx_queue_remove(q);
            ngx_free(ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue));
        }

        if (conn->out) {
            ngx_free(conn->out);
            conn->out = NULL;
            conn->out_size = 0;
        }

#if (NGX_SSL)
        if (conn->ssl_session) {
            ngx_ssl_free_session(conn->ssl_session);
            conn->ssl_session = NULL;
        }
#endif
    }

    ngx_http_ratelimit_nconns = 0;
}


ngx_http_ratelimit_conn_t *
ngx_http_ratelimit_redis_conn(ngx_uint_t shard)
{
    if (shard >= ngx_http_ratelimit_nconns) {
        return NULL;
    }

    return &ngx_http_ratelimit_conns[shard];
}


/*
 * True when the shard is slower than "timeout": the oldest command it owes
 * an answer was queued that long ago, or the connection has been connecting
 * that long.  A shard that answers, only each answer too late, is as
 * useless as one that answers nothing, and its queue would grow.
 */

ngx_uint_t
ngx_http_ratelimit_redis_stuck(ngx_http_ratelimit_conn_t *conn,
    ngx_msec_t timeout)
{
    ngx_http_ratelimit_slot_t  *slot;

    if (conn == NULL) {
        return 0;
    }

    if ((conn->state == NGX_HTTP_RATELIMIT_CONNECTING
         || conn->state == NGX_HTTP_RATELIMIT_HANDSHAKING)
        && ngx_current_msec - conn->connect_at >= timeout)
    {
        return 1;
    }

    if (ngx_queue_empty(&conn->waiting)) {
        return 0;
    }

    slot = ngx_queue_data(ngx_queue_head(&conn->waiting),
                          ngx_http_ratelimit_slot_t, queue);

    return ngx_current_msec - slot->queued_at >= timeout;
}


ngx_str_t *
ngx_http_ratelimit_redis_name(ngx_http_ratelimit_conn_t *conn)
{
    if (conn == NULL) {
        return &ngx_http_ratelimit_redis_nobody;
    }

    return &conn->shard->name;
}


ngx_msec_int_t *
ngx_http_ratelimit_redis_clock_offset(ngx_http_ratelimit_conn_t *conn)
{
    if (conn == NULL) {
        return NULL;
    }

    return &conn->clock_offset;
}


void **
ngx_http_ratelimit_redis_batch(ngx_http_ratelimit_conn_t *conn)
{
    return &conn->batch;
}


ngx_http_ratelimit_slot_t *
ngx_http_ratelimit_redis_send(ngx_http_ratelimit_conn_t *conn, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_ratelimit_reply_pt handler, void *data)
{
    size_t                      unsent;
    ngx_http_ratelimit_slot_t  *slot;

    if (conn == NULL) {
        return NULL;
    }

    /*
     * A shard that takes commands faster than it answers them must not grow
     * the worker: past the bounds, commands take their fail path at once.
     */

    if (conn->nwaiting >= conn->max_waiting) {
        ngx_http_ratelimit_redis_refuse(conn, "too many commands waiting");
        return NULL;
    }

    unsent = conn->out_len - conn->out_sent;
    unsent -= ngx_min(unsent, conn->out_large);

    if (unsent >= NGX_HTTP_RATELIMIT_OUT_MAX) {
        ngx_http_ratelimit_redis_refuse(conn, "too many bytes unsent");
        return NULL;
    }

    if (conn->state == NGX_HTTP_RATELIMIT_DISCONNECTED
        && ngx_http_ratelimit_redis_connect(conn) != NGX_OK)
    {
        return NULL;
    }

    slot = ngx_http_ratelimit_redis_queue(conn, argc, argv, argvlen, handler,
                                          data);
    if (slot == NULL) {
        return NULL;
    }

    if (conn->state == NGX_HTTP_RATELIMIT_CONNECTED && !conn->flush.posted) {
        ngx_post_event(&conn->flush, &ngx_posted_events);
    }

    return slot;
}


/*
 * The owner of a command is gone.  A command not written yet, not even in
 * part, is taken out of the output buffer: its check already took its fail
 * path and must count nothing (NGX_OK).  One already written is answered
 * later; the answer is read and dropped (NGX_DECLINED: the shard may still
 * run it).
 */

ngx_int_t
ngx_http_ratelimit_redis_detach(ngx_http_ratelimit_slot_t *slot)
{
    size_t                      pos;
    ngx_queue_t                *q;
    ngx_http_ratelimit_slot_t  *next;
    ngx_http_ratelimit_conn_t  *conn;

    if (slot == NULL) {
        return NGX_DECLINED;
    }

    slot->handler = NULL;
    slot->data = NULL;

    conn = slot->conn;

    /* closing the connection moves out_offset past all it discarded */

    if (slot->start < conn->out_offset + (off_t) conn->out_sent
        || slot->start < conn->out_committed)
    {
        return NGX_DECLINED;
    }

    pos = (size_t) (slot->start - conn->out_offset);

    ngx_memmove(conn->out + pos, conn->out + pos + slot->len,
                conn->out_len - pos - slot->len);
    conn->out_len -= slot->len;

    /* the commands queued after it are not written either: they move up */

    for (q = ngx_queue_next(&slot->queue);
         q != ngx_queue_sentinel(&conn->waiting);
         q = ngx_queue_next(q))
    {
        next = ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue);
        next->start -= slot->len;
    }

    if (slot->len > NGX_HTTP_RATELIMIT_OUT_MAX) {
        conn->out_large -= ngx_min(slot->len, conn->out_large);
    }

    ngx_queue_remove(&slot->queue);
    ngx_queue_insert_tail(&conn->spare, &slot->queue);
    conn->nwaiting--;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, conn->log, 0,
                   "ratelimit: command of %uz bytes to shard %V withdrawn",
                   slot->len, &conn->shard->name);

    return NGX_OK;
}


/*
 * The connection is unusable: close it and settle every waiting command
 * with a NULL reply, so each request takes its fail path now.
 */

void
ngx_http_ratelimit_redis_fail(ngx_http_ratelimit_conn_t *conn,
    const char *reason)
{
    if (conn == NULL) {
        return;
    }

    if (ngx_http_ratelimit_log_due(&conn->logged_at)) {
        ngx_log_error(NGX_LOG_WARN, conn->log, 0,
                      "ratelimit: shard %V: %s", &conn->shard->name, reason);
    }

    ngx_http_ratelimit_redis_drop(conn, reason);
}


/* fail() without its line: for failures whose cause is logged already */

static void
ngx_http_ratelimit_redis_drop(ngx_http_ratelimit_conn_t *conn,
    const char *reason)
{
    ngx_http_ratelimit_redis_event(conn->index,
                                   NGX_HTTP_RATELIMIT_REDIS_FAILED, reason,
                                   conn->log);

    /* the node may be gone for good: where is the shard now? */

    ngx_http_ratelimit_discovery_failed(conn->index);

    ngx_http_ratelimit_redis_settle(conn);
}


/*
 * The shard moved (ngx_http_ratelimit_discovery.c): nothing more goes to the
 * old node.  The commands waiting on it take their fail path, as on a
 * failure, but the shard is not marked down for it; a PING on the new
 * connection marks a shard that was down up again as soon as it answers.
 */

void
ngx_http_ratelimit_redis_moved(ngx_http_ratelimit_conn_t *conn)
{
    size_t       argvlen[1];
    const char  *argv[1];

    if (conn == NULL) {
        return;
    }

    ngx_http_ratelimit_redis_settle(conn);

    if (conn->state != NGX_HTTP_RATELIMIT_DISCONNECTED
        || ngx_http_ratelimit_redis_connect(conn) != NGX_OK)
    {
        return;
    }

    argv[0] = "PING";
    argvlen[0] = 4;

    if (ngx_http_ratelimit_redis_queue(conn, 1, argv, argvlen, NULL, NULL)
        != NULL
        && conn->state == NGX_HTTP_RATELIMIT_CONNECTED
        && !conn->flush.posted)
    {
        ngx_post_event(&conn->flush, &ngx_posted_events);
    }
}


/* closes the connection and settles every waiting command with NULL */

static void
ngx_http_ratelimit_redis_settle(ngx_http_ratelimit_conn_t *conn)
{
    ngx_queue_t                 failed, *q;
    ngx_http_ratelimit_slot_t  *slot;
    ngx_http_ratelimit_reply_pt handler;
    void                       *data;

    ngx_http_ratelimit_redis_close(conn);

    /* new commands queued by the callbacks below go to a fresh connection */

    ngx_queue_init(&failed);

    if (!ngx_queue_empty(&conn->waiting)) {
        ngx_queue_add(&failed, &conn->waiting);
        ngx_queue_init(&conn->waiting);
    }

    conn->nwaiting = 0;

    while (!ngx_queue_empty(&failed)) {
        q = ngx_queue_head(&failed);
        ngx_queue_remove(q);

        slot = ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue);

        handler = slot->handler;
        data = slot->data;

        ngx_queue_insert_tail(&conn->spare, q);

        if (handler) {
            handler(data, NULL);
        }
    }
}


static ngx_int_t
ngx_http_ratelimit_redis_connect(ngx_http_ratelimit_conn_t *conn)
{
    int                tcp_nodelay;
    ngx_int_t          rc;
    ngx_addr_t        *addr;
    const char        *argv[2];
    size_t             argvlen[2];
    ngx_connection_t  *c;

    /*
     * Where the shard is now.  Not known yet (the first answer of the
     * resolver or of Sentinel is awaited): the caller takes its fail path,
     * and the connection is made when the answer comes.
     */

    addr = ngx_http_ratelimit_discovery_addr(conn->shard, conn->index);

    if (addr == NULL) {
        ngx_http_ratelimit_redis_refuse(conn, "address not known yet");
        return NGX_ERROR;
    }

    ngx_memzero(&conn->peer, sizeof(ngx_peer_connection_t));

    conn->peer.sockaddr = addr->sockaddr;
    conn->peer.socklen = addr->socklen;
    conn->peer.name = &conn->shard->name;
    conn->peer.get = ngx_event_get_peer;
    conn->peer.log = &conn->peer_log;
    conn->peer.log_error = NGX_ERROR_ERR;

    conn->connect_at = ngx_current_msec;

    rc = ngx_event_connect_peer(&conn->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (conn->peer.connection) {
            ngx_close_connection(conn->peer.connection);
            conn->peer.connection = NULL;
        }

        ngx_http_ratelimit_redis_fail(conn, "connect failed");
        return NGX_ERROR;
    }

    c = conn->peer.connection;

    /*
     * Small pipelined writes must not wait for the ACK of the previous one:
     * Nagle would hold a check back for a round trip.
     */

    tcp_nodelay = 1;

    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY,
                   (const void *) &tcp_nodelay, sizeof(int))
        == -1)
    {
        ngx_log_error(NGX_LOG_WARN, conn->log, ngx_socket_errno,
                      "ratelimit: setsockopt(TCP_NODELAY) to shard %V failed",
                      &conn->shard->name);

    } else {
        c->tcp_nodelay = NGX_TCP_NODELAY_SET;
    }

    c->data = conn;
    c->read->handler = ngx_http_ratelimit_redis_read_handler;
    c->write->handler = ngx_http_ratelimit_redis_write_handler;

    /* replies are built by bounded wrappers of hiredis's own builders */

    conn->reader = redisReaderCreateWithFunctions(
                                             &ngx_http_ratelimit_bounded_fn);
    if (conn->reader == NULL) {
        ngx_http_ratelimit_redis_close(conn);
        return NGX_ERROR;
    }

    conn->reader->privdata = conn;
    conn->reply_values = 0;
    conn->reply_bytes = 0;
    conn->refused[0] = '\0';

    if (rc == NGX_AGAIN) {
        conn->state = NGX_HTTP_RATELIMIT_CONNECTING;

    } else if (conn->shard->tls) {

        /* the handshake starts from an event, never inside send() */

        conn->state = NGX_HTTP_RATELIMIT_CONNECTING;
        ngx_post_event(c->write, &ngx_posted_events);

    } else {
        conn->state = NGX_HTTP_RATELIMIT_CONNECTED;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, conn->log, 0,
                   "ratelimit: connecting to shard %V: %i",
                   &conn->shard->name, rc);

    /*
     * On failure the commands queued here (AUTH, ROLE) go with the
     * connection: left waiting, the next connection's replies would be
     * paired with them.  Nothing else waits on a connection being made.
     */

    if (ngx_http_ratelimit_redis_auth(conn) != NGX_OK) {
        ngx_http_ratelimit_redis_settle(conn);
        return NGX_ERROR;
    }

    /* Sentinel's answer may be stale: a demoted primary must not be used */

    if (ngx_http_ratelimit_discovery_verify(conn->shard)) {
        argv[0] = "ROLE";
        argvlen[0] = 4;

        if (ngx_http_ratelimit_redis_queue(conn, 1, argv, argvlen,
                                           ngx_http_ratelimit_redis_role_done,
                                           conn)
            == NULL)
        {
            ngx_http_ratelimit_redis_settle(conn);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * AUTH goes first on each new connection, as "AUTH user password" for an
 * ACL user; the commands queued behind it wait for no answer, and are
 * failed with the connection if AUTH is refused.
 */

static ngx_int_t
ngx_http_ratelimit_redis_auth(ngx_http_ratelimit_conn_t *conn)
{
    int          argc;
    size_t       argvlen[3];
    const char  *argv[3];

    if (conn->shard->password.len == 0) {
        return NGX_OK;
    }

    argc = 0;

    argv[argc] = "AUTH";
    argvlen[argc++] = 4;

    if (conn->shard->user.len) {
        argv[argc] = (const char *) conn->shard->user.data;
        argvlen[argc++] = conn->shard->user.len;
    }

    argv[argc] = (const char *) conn->shard->password.data;
    argvlen[argc++] = conn->shard->password.len;

    if (ngx_http_ratelimit_redis_queue(conn, argc, argv, argvlen,
                                       ngx_http_ratelimit_redis_auth_done,
                                       conn)
        == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the TCP connection is up: a TLS shard's handshake first, then writes */

static void
ngx_http_ratelimit_redis_connected(ngx_http_ratelimit_conn_t *conn)
{
#if (NGX_SSL)
    if (conn->shard->tls) {
        ngx_http_ratelimit_redis_tls_start(conn);
        return;
    }
#endif

    conn->state = NGX_HTTP_RATELIMIT_CONNECTED;

    ngx_http_ratelimit_redis_flush(conn);
}


#if (NGX_SSL)

/*
 * The handshake counts against the timeout from connect_at, as connecting
 * does (stuck()); the queued commands, AUTH first, wait for its end.
 */

static void
ngx_http_ratelimit_redis_tls_start(ngx_http_ratelimit_conn_t *conn)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    c = conn->peer.connection;

    conn->state = NGX_HTTP_RATELIMIT_HANDSHAKING;

    c->pool = ngx_create_pool(NGX_HTTP_RATELIMIT_TLS_POOL, conn->log);
    if (c->pool == NULL) {
        ngx_http_ratelimit_redis_fail(conn, "TLS failed");
        return;
    }

    rc = ngx_http_ratelimit_ssl_handshake(c, conn->shard, conn->ssl_session,
                                      ngx_http_ratelimit_redis_save_session,
                                      ngx_http_ratelimit_redis_tls_done);

    if (rc == NGX_AGAIN) {
        return;
    }

    if (rc == NGX_ERROR) {
        ngx_http_ratelimit_redis_fail(conn, "TLS failed");
        return;
    }

    ngx_http_ratelimit_redis_tls_done(c);
}


static void
ngx_http_ratelimit_redis_tls_done(ngx_connection_t *c)
{
    const char                 *reason;
    ngx_http_ratelimit_conn_t  *conn;

    conn = c->data;

    if (!c->ssl->handshaked) {

        /* OpenSSL's reason is logged by ngx_ssl_handshake(), on peer_log */

        ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                      "ratelimit: TLS handshake with shard %V failed",
                      &conn->shard->name);
        reason = "TLS handshake failed";
        goto failed;
    }

    if (ngx_http_ratelimit_ssl_verify(c, conn->shard, conn->log, &reason)
        != NGX_OK)
    {
        goto failed;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, conn->log, 0,
                   "ratelimit: TLS to shard %V, session reused: %d",
                   &conn->shard->name,
                   SSL_session_reused(c->ssl->connection));

    c->read->handler = ngx_http_ratelimit_redis_read_handler;
    c->write->handler = ngx_http_ratelimit_redis_write_handler;

    conn->state = NGX_HTTP_RATELIMIT_CONNECTED;

    ngx_http_ratelimit_redis_flush(conn);

    return;

failed:

    /* a session of a shard that was not trusted is never resumed */

    if (conn->ssl_session) {
        ngx_ssl_free_session(conn->ssl_session);
        conn->ssl_session = NULL;
    }

    ngx_http_ratelimit_redis_drop(conn, reason);
}


/* OpenSSL has a new session: the next connection offers it */

static void
ngx_http_ratelimit_redis_save_session(ngx_connection_t *c)
{
    ngx_ssl_session_t          *session;
    ngx_http_ratelimit_conn_t  *conn;

    conn = c->data;

    session = ngx_ssl_get_session(c);
    if (session == NULL) {
        return;
    }

    if (conn->ssl_session) {
        ngx_ssl_free_session(conn->ssl_session);
    }

    conn->ssl_session = session;
}

#endif


/* what nginx itself logs about the socket (connect(), SSL) names the shard */

static u_char *
ngx_http_ratelimit_redis_log_error(ngx_log_t *log, u_char *buf, size_t len)
{
    ngx_http_ratelimit_conn_t  *conn = log->data;

    return ngx_snprintf(buf, len, ", ratelimit shard: %V",
                        &conn->shard->name);
}


static void
ngx_http_ratelimit_redis_close(ngx_http_ratelimit_conn_t *conn)
{
    ngx_pool_t        *pool;
    ngx_connection_t  *c;

    c = conn->peer.connection;

    if (c) {
#if (NGX_SSL)
        ngx_http_ratelimit_ssl_close(c);
#endif

        pool = c->pool;

        ngx_close_connection(c);
        conn->peer.connection = NULL;

        if (pool) {
            ngx_destroy_pool(pool);
        }
    }

    if (conn->reader) {
        redisReaderFree(conn->reader);
        conn->reader = NULL;
    }

    if (conn->flush.posted) {
        ngx_delete_posted_event(&conn->flush);
    }

    /* what was not written is gone: no command in it can be withdrawn */

    conn->out_offset += conn->out_len;
    conn->out_sent = 0;
    conn->out_len = 0;
    conn->out_large = 0;
    conn->state = NGX_HTTP_RATELIMIT_DISCONNECTED;
    conn->generation++;
}


/* formats a command into the output buffer and queues its slot */

static ngx_http_ratelimit_slot_t *
ngx_http_ratelimit_redis_queue(ngx_http_ratelimit_conn_t *conn, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_ratelimit_reply_pt handler, void *data)
{
    int                         len;
    char                       *cmd;
    size_t                      size, unsent;
    u_char                     *out;
    ngx_queue_t                *q;
    ngx_http_ratelimit_slot_t  *slot;

    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0) {
        ngx_log_error(NGX_LOG_ALERT, conn->log, 0,
                      "ratelimit: could not format a Redis command");
        return NULL;
    }

    if (len > NGX_HTTP_RATELIMIT_COMMAND_MAX) {
        redisFreeCommand(cmd);
        ngx_http_ratelimit_redis_refuse(conn, "command too large");
        return NULL;
    }

    if (conn->out_len + len > conn->out_size) {

        /* the written part is not needed any more */

        unsent = conn->out_len - conn->out_sent;

        if (conn->out_sent) {
            ngx_memmove(conn->out, conn->out + conn->out_sent, unsent);
            conn->out_offset += conn->out_sent;
            conn->out_len = unsent;
            conn->out_sent = 0;
        }

        if (unsent + len > conn->out_size) {
            size = ngx_max(conn->out_size * 2, NGX_HTTP_RATELIMIT_OUT_MIN);
            size = ngx_max(size, unsent + len);

            out = ngx_alloc(size, conn->log);
            if (out == NULL) {
                redisFreeCommand(cmd);
                return NULL;
            }

            if (conn->out) {
                ngx_memcpy(out, conn->out, unsent);
                ngx_free(conn->out);
            }

            conn->out = out;
            conn->out_size = size;
        }
    }

    /* slots outlive the requests that queue them: they come from the heap */

    if (!ngx_queue_empty(&conn->spare)) {
        q = ngx_queue_head(&conn->spare);
        ngx_queue_remove(q);
        slot = ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue);

    } else {
        slot = ngx_alloc(sizeof(ngx_http_ratelimit_slot_t), conn->log);
        if (slot == NULL) {
            redisFreeCommand(cmd);
            return NULL;
        }
    }

    slot->handler = handler;
    slot->data = data;
    slot->conn = conn;
    slot->start = conn->out_offset + conn->out_len;
    slot->len = len;
    slot->queued_at = ngx_current_msec;

    ngx_memcpy(conn->out + conn->out_len, cmd, len);
    conn->out_len += len;

    if (len > NGX_HTTP_RATELIMIT_OUT_MAX) {
        conn->out_large += len;
    }

    redisFreeCommand(cmd);

    ngx_queue_insert_tail(&conn->waiting, &slot->queue);
    conn->nwaiting++;

    ngx_http_ratelimit_redis_event(conn->index,
                                   NGX_HTTP_RATELIMIT_REDIS_COMMAND, NULL,
                                   conn->log);

    return slot;
}


/* a refused command: said once a second per shard, not once per request */

static void
ngx_http_ratelimit_redis_refuse(ngx_http_ratelimit_conn_t *conn,
    const char *why)
{
    if (!ngx_http_ratelimit_log_due(&conn->refused_logged_at)) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, conn->log, 0,
                  "ratelimit: shard %V: %s (%ui waiting, %uz bytes unsent), "
                  "refusing commands", &conn->shard->name, why,
                  conn->nwaiting, conn->out_len - conn->out_sent);
}


static void
ngx_http_ratelimit_redis_flush_handler(ngx_event_t *ev)
{
    ngx_http_ratelimit_redis_flush(ev->data);
}


static void
ngx_http_ratelimit_redis_flush(ngx_http_ratelimit_conn_t *conn)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = conn->peer.connection;

    if (c == NULL || conn->state != NGX_HTTP_RATELIMIT_CONNECTED) {
        return;
    }

    while (conn->out_sent < conn->out_len) {

        n = c->send(c, conn->out + conn->out_sent,
                    conn->out_len - conn->out_sent);

        ngx_http_ratelimit_redis_event(conn->index,
                                       NGX_HTTP_RATELIMIT_REDIS_WRITE, NULL,
                                       conn->log);

        if (n == NGX_AGAIN) {

            if (c->ssl) {
                conn->out_committed = conn->out_offset + conn->out_len;
            }

            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                ngx_http_ratelimit_redis_fail(conn, "write event failed");
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_ratelimit_redis_fail(conn, "send failed");
            return;
        }

        conn->out_sent += n;
    }

    conn->out_offset += conn->out_len;
    conn->out_sent = 0;
    conn->out_len = 0;
    conn->out_large = 0;

    /* a burst to a slow shard may have grown the buffer: give it back */

    if (conn->out_size > NGX_HTTP_RATELIMIT_OUT_KEEP) {
        ngx_free(conn->out);
        conn->out = NULL;
        conn->out_size = 0;
    }
}


static void
ngx_http_ratelimit_redis_write_handler(ngx_event_t *wev)
{
    ngx_err_t                   err;
    ngx_connection_t           *c;
    ngx_http_ratelimit_conn_t  *conn;

    c = wev->data;
    conn = c->data;

    if (conn->state == NGX_HTTP_RATELIMIT_CONNECTING) {
        err = ngx_http_ratelimit_connect_error(c);

        if (err) {
            ngx_log_error(NGX_LOG_ERR, conn->log, err,
                          "ratelimit: connect() to shard %V failed",
                          &conn->shard->name);
            ngx_http_ratelimit_redis_fail(conn, "connect failed");
            return;
        }

        ngx_http_ratelimit_redis_connected(conn);
        return;
    }

    ngx_http_ratelimit_redis_flush(conn);
}


static void
ngx_http_ratelimit_redis_read_handler(ngx_event_t *rev)
{
    size_t                      total, unparsed;
    ssize_t                     n;
    ngx_connection_t           *c;
    ngx_http_ratelimit_conn_t  *conn;
    u_char                      buf[NGX_HTTP_RATELIMIT_READ_BUF];

    c = rev->data;
    conn = c->data;

    for (total = 0; /* void */; total += n) {

        /*
         * A shard that keeps sending must not hold the worker: after a
         * bounded amount, the rest is read in the next loop iteration,
         * once the other events and timers had their turn.
         */

        if (total >= NGX_HTTP_RATELIMIT_READ_MAX) {
            ngx_post_event(rev, &ngx_posted_next_events);
            return;
        }

        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {

            if (ngx_queue_empty(&conn->waiting)) {
                /* an idle connection closed by the shard is no failure */
                ngx_http_ratelimit_redis_close(conn);
                return;
            }

            ngx_http_ratelimit_redis_fail(conn, n == 0
                                          ? "connection closed by the shard"
                                          : "recv() failed");
            return;
        }

        if (redisReaderFeed(conn->reader, (const char *) buf, n) != REDIS_OK) {
            ngx_http_ratelimit_redis_fail(conn, "reply buffer failed");
            return;
        }

        if (ngx_http_ratelimit_redis_replies(conn) != NGX_OK) {
            return;
        }

        unparsed = conn->reader->len - conn->reader->pos;

        if (unparsed > NGX_HTTP_RATELIMIT_IN_MAX) {
            ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                          "ratelimit: shard %V sent an unfinished value "
                          "of over %uz bytes, failing the shard",
                          &conn->shard->name,
                          (size_t) NGX_HTTP_RATELIMIT_IN_MAX);
            ngx_http_ratelimit_redis_fail(conn, "reply too large");
            return;
        }

        /*
         * A short read drained the socket, unless the connection says it
         * is still ready: the end of the stream or an error is pending
         * (an SSL read keeps going until SSL holds nothing more).
         */

        if ((size_t) n < sizeof(buf) && !rev->ready) {
            break;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_ratelimit_redis_fail(conn, "read event failed");
    }
}


/*
 * Hands every complete reply to the head of the queue.  NGX_OK: the
 * connection is still the same and open; NGX_DONE: it was failed or closed
 * meanwhile, stop reading it.
 */

static ngx_int_t
ngx_http_ratelimit_redis_replies(ngx_http_ratelimit_conn_t *conn)
{
    void                        *data;
    const char                  *why;
    ngx_uint_t                   generation;
    ngx_queue_t                 *q;
    redisReply                  *reply;
    ngx_http_ratelimit_slot_t   *slot;
    ngx_http_ratelimit_reply_pt  handler;

    generation = conn->generation;

    for ( ;; ) {
        reply = NULL;

        if (redisReaderGetReply(conn->reader, (void **) &reply) != REDIS_OK) {

            if (conn->refused[0]) {
                ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                              "ratelimit: shard %V sent %s, failing the shard",
                              &conn->shard->name, conn->refused);
                ngx_http_ratelimit_redis_fail(conn, "reply too large");

            } else {
                ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                              "ratelimit: shard %V sent a malformed reply: %s",
                              &conn->shard->name, conn->reader->errstr);
                ngx_http_ratelimit_redis_fail(conn, "malformed reply");
            }

            return NGX_DONE;
        }

        if (reply == NULL) {
            return NGX_OK;
        }

        if (ngx_queue_empty(&conn->waiting)) {
            freeReplyObject(reply);
            ngx_http_ratelimit_redis_fail(conn, "reply nobody asked for");
            return NGX_DONE;
        }

        q = ngx_queue_head(&conn->waiting);

        /* a node that is no primary fails: every waiting command with it */

        slot = ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue);
        why = ngx_http_ratelimit_redis_unfit(slot, reply);

        if (why) {
            ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                          "ratelimit: shard %V: %s", &conn->shard->name, why);
            freeReplyObject(reply);
            ngx_http_ratelimit_redis_fail(conn, why);
            return NGX_DONE;
        }

        ngx_queue_remove(q);
        conn->nwaiting--;

        handler = slot->handler;
        data = slot->data;

        ngx_queue_insert_tail(&conn->spare, q);

        /* AUTH's answer tells its handler whether the shard works */

        if (handler != ngx_http_ratelimit_redis_auth_done) {
            ngx_http_ratelimit_redis_event(conn->index,
                                           NGX_HTTP_RATELIMIT_REDIS_REPLY,
                                           NULL, conn->log);
        }

        if (handler) {
            handler(data, reply);
        }

        freeReplyObject(reply);

        /* a handler may have failed this connection: stop reading it */

        if (conn->generation != generation) {
            return NGX_DONE;
        }
    }
}


/*
 * A refused AUTH (WRONGPASS, NOPERM, ...) fails the connection, and with it
 * the shard, which is tried again at its probe interval: one line per
 * attempt, with Redis's words, never the password.
 */

static void
ngx_http_ratelimit_redis_auth_done(void *data, redisReply *reply)
{
    ngx_http_ratelimit_conn_t  *conn = data;

    if (reply == NULL) {
        return;
    }

    /*
     * A Sentinel shard's node answers for the shard only once ROLE, queued
     * behind AUTH, has shown it is the primary: until then a replica would
     * be marked up, for every worker, at each probe.
     */

    if (reply->type != REDIS_REPLY_ERROR) {
        if (!ngx_http_ratelimit_discovery_verify(conn->shard)) {
            ngx_http_ratelimit_redis_event(conn->index,
                                           NGX_HTTP_RATELIMIT_REDIS_REPLY,
                                           NULL, conn->log);
        }

        return;
    }

    if (conn->shard->user.len) {
        ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                      "ratelimit: AUTH as user \"%V\" on shard %V "
                      "failed: %*s", &conn->shard->user, &conn->shard->name,
                      reply->len, reply->str);

    } else {
        ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                      "ratelimit: AUTH on shard %V failed: %*s",
                      &conn->shard->name, reply->len, reply->str);
    }

    ngx_http_ratelimit_redis_drop(conn, "AUTH failed");
}


/* ROLE said "master": ngx_http_ratelimit_redis_unfit() judged the rest */

static void
ngx_http_ratelimit_redis_role_done(void *data, redisReply *reply)
{
}


/*
 * Why the node that sent this reply must not be used as the shard, or NULL:
 * it refuses writes as a replica does ("-READONLY", a primary demoted
 * behind a name that still points at it), or it answered ROLE with anything
 * but "master".  Judged before the reply counts as the shard answering.
 */

static const char *
ngx_http_ratelimit_redis_unfit(ngx_http_ratelimit_slot_t *slot,
    redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ERROR && reply->len >= 8
        && ngx_strncmp(reply->str, "READONLY", 8) == 0)
    {
        return "the node is a replica (READONLY)";
    }

    if (slot->handler == ngx_http_ratelimit_redis_role_done
        && !rl_sentinel_is_primary(reply))
    {
        return "the node is not a primary (ROLE)";
    }

    return NULL;
}


/*
 * The bounded reply builders.  hiredis calls them as it parses, an array
 * when its count is read, before its elements arrive; returning NULL makes
 * the reader fail, and it frees what it built of the reply so far.  The
 * budget restarts with each reply's root value.
 */

static ngx_int_t
ngx_http_ratelimit_reply_charge(const redisReadTask *task, size_t bytes)
{
    ngx_http_ratelimit_conn_t  *conn = task->privdata;

    /* the values counted are those inside the reply, as an array counts */

    if (task->parent == NULL) {
        conn->reply_values = 0;
        conn->reply_bytes = 0;

    } else {
        conn->reply_values++;
    }

    conn->reply_bytes += sizeof(redisReply) + bytes;

    if (conn->reply_values > NGX_HTTP_RATELIMIT_REPLY_VALUES) {
        ngx_snprintf(conn->refused, sizeof(conn->refused) - 1,
                     "a reply of over %d values%Z",
                     NGX_HTTP_RATELIMIT_REPLY_VALUES);
        return NGX_ERROR;
    }

    if (conn->reply_bytes > NGX_HTTP_RATELIMIT_REPLY_BYTES) {
        ngx_snprintf(conn->refused, sizeof(conn->refused) - 1,
                     "a reply of over %d bytes%Z",
                     NGX_HTTP_RATELIMIT_REPLY_BYTES);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void *
ngx_http_ratelimit_reply_string(const redisReadTask *task, char *str,
    size_t len)
{
    ngx_http_ratelimit_conn_t  *conn = task->privdata;

    if (len > NGX_HTTP_RATELIMIT_REPLY_STRING) {
        ngx_snprintf(conn->refused, sizeof(conn->refused) - 1,
                     "a string of %uz bytes, over %d%Z",
                     len, NGX_HTTP_RATELIMIT_REPLY_STRING);
        return NULL;
    }

    if (ngx_http_ratelimit_reply_charge(task, len + 1) != NGX_OK) {
        return NULL;
    }

    return ngx_http_ratelimit_hiredis_fn->createString(task, str, len);
}


static void *
ngx_http_ratelimit_reply_array(const redisReadTask *task, int elements)
{
    ngx_http_ratelimit_conn_t  *conn = task->privdata;

    /* refused before hiredis allocates (and later walks) the elements */

    if (elements > NGX_HTTP_RATELIMIT_REPLY_VALUES) {
        ngx_snprintf(conn->refused, sizeof(conn->refused) - 1,
                     "an array of %d elements, over %d%Z",
                     elements, NGX_HTTP_RATELIMIT_REPLY_VALUES);
        return NULL;
    }

    if (ngx_http_ratelimit_reply_charge(task,
                                 (size_t) elements * sizeof(redisReply *))
        != NGX_OK)
    {
        return NULL;
    }

    return ngx_http_ratelimit_hiredis_fn->createArray(task, elements);
}


static void *
ngx_http_ratelimit_reply_integer(const redisReadTask *task, long long value)
{
    if (ngx_http_ratelimit_reply_charge(task, 0) != NGX_OK) {
        return NULL;
    }

    return ngx_http_ratelimit_hiredis_fn->createInteger(task, value);
}


static void *
ngx_http_ratelimit_reply_nil(const redisReadTask *task)
{
    if (ngx_http_ratelimit_reply_charge(task, 0) != NGX_OK) {
        return NULL;
    }

    return ngx_http_ratelimit_hiredis_fn->createNil(task);
}
