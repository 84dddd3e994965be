
/*
 * Global API rate limiter: each worker's connections to the Redis shards.
 *
 * One persistent connection per shard per worker.  Commands from every
 * request that arrives in the same event loop iteration are appended to one
 * output buffer and written together by a posted event, so that a burst of
 * checks costs one write and one round trip.  Redis answers in order, so the
 * head of the waiting queue owns the next reply.  hiredis formats the
 * commands and parses the replies.
 */


#include "ngx_http_ratelimit_module.h"


#define NGX_HTTP_RATELIMIT_DISCONNECTED  0
#define NGX_HTTP_RATELIMIT_CONNECTING    1
#define NGX_HTTP_RATELIMIT_CONNECTED     2

#define NGX_HTTP_RATELIMIT_OUT_MIN       4096


struct ngx_http_ratelimit_slot_s {
    ngx_queue_t                        queue;
    ngx_http_ratelimit_reply_pt        handler;    /* NULL: owner gone */
    void                              *data;
};


struct ngx_http_ratelimit_conn_s {
    ngx_peer_connection_t              peer;
    ngx_http_ratelimit_shard_conf_t   *shard;
    ngx_uint_t                         index;
    ngx_uint_t                         state;
    ngx_uint_t                         generation;  /* bumped on close */

    redisReader                       *reader;

    u_char                            *out;
    size_t                             out_size;
    size_t                             out_sent;
    size_t                             out_len;
    ngx_event_t                        flush;

    ngx_queue_t                        waiting;
    ngx_queue_t                        spare;

    ngx_msec_t                         logged_at;
    ngx_msec_t                         answered_at;  /* or started waiting */
    ngx_log_t                         *log;
};


static ngx_int_t ngx_http_ratelimit_redis_connect(
    ngx_http_ratelimit_conn_t *conn);
static void ngx_http_ratelimit_redis_close(ngx_http_ratelimit_conn_t *conn);
static ngx_int_t ngx_http_ratelimit_redis_append(
    ngx_http_ratelimit_conn_t *conn, int argc, const char **argv,
    const size_t *argvlen);
static ngx_http_ratelimit_slot_t *ngx_http_ratelimit_redis_queue(
    ngx_http_ratelimit_conn_t *conn, ngx_http_ratelimit_reply_pt handler,
    void *data);
static void ngx_http_ratelimit_redis_flush_handler(ngx_event_t *ev);
static void ngx_http_ratelimit_redis_flush(ngx_http_ratelimit_conn_t *conn);
static void ngx_http_ratelimit_redis_write_handler(ngx_event_t *wev);
static void ngx_http_ratelimit_redis_read_handler(ngx_event_t *rev);
static void ngx_http_ratelimit_redis_auth_done(void *data, redisReply *reply);
static ngx_http_ratelimit_health_t *ngx_http_ratelimit_redis_health(
    ngx_http_ratelimit_conn_t *conn);


static ngx_http_ratelimit_conn_t  *ngx_http_ratelimit_conns;
static ngx_uint_t                  ngx_http_ratelimit_nconns;
static ngx_http_ratelimit_ring_t  *ngx_http_ratelimit_worker_ring;


ngx_int_t
ngx_http_ratelimit_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_main_conf_t *rmcf)
{
    ngx_uint_t                        i;
    ngx_http_ratelimit_conn_t        *conn;
    ngx_http_ratelimit_zone_t        *zone;
    ngx_http_ratelimit_shard_conf_t  *shard;

    zone = rmcf->shm_zone->data;
    ngx_http_ratelimit_worker_ring = zone->ring;
    ngx_http_ratelimit_counters = &zone->sh->stats;

    ngx_http_ratelimit_nconns = rmcf->shards.nelts;
    ngx_http_ratelimit_conns = ngx_pcalloc(cycle->pool,
                  ngx_http_ratelimit_nconns * sizeof(ngx_http_ratelimit_conn_t));
    if (ngx_http_ratelimit_conns == NULL) {
        return NGX_ERROR;
    }

    shard = rmcf->shards.elts;

    for (i = 0; i < ngx_http_ratelimit_nconns; i++) {
        conn = &ngx_http_ratelimit_conns[i];

        conn->shard = &shard[i];
        conn->index = i;
        conn->log = cycle->log;
        conn->state = NGX_HTTP_RATELIMIT_DISCONNECTED;

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

        while (!ngx_queue_empty(&conn->spare)) {
            q = ngx_queue_head(&conn->spare);
            ngx_queue_remove(q);
            ngx_free(ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue));
        }

        if (conn->out) {
            ngx_free(conn->out);
            conn->out = NULL;
        }
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
 * True when commands are waiting and the shard has answered none of them for
 * "timeout": it hangs, as opposed to answering late under load.
 */

ngx_uint_t
ngx_http_ratelimit_redis_stuck(ngx_http_ratelimit_conn_t *conn,
    ngx_msec_t timeout)
{
    return !ngx_queue_empty(&conn->waiting)
           && ngx_current_msec - conn->answered_at >= timeout;
}


ngx_str_t *
ngx_http_ratelimit_redis_name(ngx_http_ratelimit_conn_t *conn)
{
    return &conn->shard->name;
}


ngx_http_ratelimit_slot_t *
ngx_http_ratelimit_redis_send(ngx_http_ratelimit_conn_t *conn, int argc,
    const char **argv, const size_t *argvlen,
    ngx_http_ratelimit_reply_pt handler, void *data)
{
    ngx_http_ratelimit_slot_t  *slot;

    if (conn->state == NGX_HTTP_RATELIMIT_DISCONNECTED
        && ngx_http_ratelimit_redis_connect(conn) != NGX_OK)
    {
        return NULL;
    }

    if (ngx_http_ratelimit_redis_append(conn, argc, argv, argvlen) != NGX_OK) {
        return NULL;
    }

    slot = ngx_http_ratelimit_redis_queue(conn, handler, data);
    if (slot == NULL) {
        return NULL;
    }

    if (conn->state == NGX_HTTP_RATELIMIT_CONNECTED && !conn->flush.posted) {
        ngx_post_event(&conn->flush, &ngx_posted_events);
    }

    return slot;
}


void
ngx_http_ratelimit_redis_detach(ngx_http_ratelimit_slot_t *slot)
{
    slot->handler = NULL;
    slot->data = NULL;
}


/*
 * The connection is unusable: close it and settle every waiting command
 * with a NULL reply, so each request takes its fail path now.
 */

void
ngx_http_ratelimit_redis_fail(ngx_http_ratelimit_conn_t *conn,
    const char *reason)
{
    ngx_queue_t                 failed, *q;
    ngx_http_ratelimit_slot_t  *slot;
    ngx_http_ratelimit_reply_pt handler;
    void                       *data;

    if (ngx_current_msec - conn->logged_at >= 1000 || conn->logged_at == 0) {
        conn->logged_at = ngx_current_msec;
        ngx_log_error(NGX_LOG_WARN, conn->log, 0,
                      "ratelimit: shard %V: %s", &conn->shard->name, reason);
    }

    ngx_http_ratelimit_shard_failed(ngx_http_ratelimit_redis_health(conn),
                                    conn->log, reason);

    ngx_http_ratelimit_redis_close(conn);

    /* new commands queued by the callbacks below go to a fresh connection */

    ngx_queue_init(&failed);

    if (!ngx_queue_empty(&conn->waiting)) {
        ngx_queue_add(&failed, &conn->waiting);
        ngx_queue_init(&conn->waiting);
    }

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
    const char        *argv[2];
    size_t             argvlen[2];
    ngx_connection_t  *c;

    ngx_memzero(&conn->peer, sizeof(ngx_peer_connection_t));

    conn->peer.sockaddr = conn->shard->addr.sockaddr;
    conn->peer.socklen = conn->shard->addr.socklen;
    conn->peer.name = &conn->shard->name;
    conn->peer.get = ngx_event_get_peer;
    conn->peer.log = conn->log;
    conn->peer.log_error = NGX_ERROR_ERR;

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

    conn->reader = redisReaderCreate();
    if (conn->reader == NULL) {
        ngx_http_ratelimit_redis_close(conn);
        return NGX_ERROR;
    }

    conn->out_sent = 0;
    conn->out_len = 0;

    conn->state = (rc == NGX_AGAIN) ? NGX_HTTP_RATELIMIT_CONNECTING
                                    : NGX_HTTP_RATELIMIT_CONNECTED;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, conn->log, 0,
                   "ratelimit: connecting to shard %V: %i",
                   &conn->shard->name, rc);

    if (conn->shard->password.len) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = (const char *) conn->shard->password.data;
        argvlen[1] = conn->shard->password.len;

        if (ngx_http_ratelimit_redis_append(conn, 2, argv, argvlen) != NGX_OK
            || ngx_http_ratelimit_redis_queue(conn,
                                             ngx_http_ratelimit_redis_auth_done,
                                             conn)
               == NULL)
        {
            ngx_http_ratelimit_redis_close(conn);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_redis_close(ngx_http_ratelimit_conn_t *conn)
{
    if (conn->peer.connection) {
        ngx_close_connection(conn->peer.connection);
        conn->peer.connection = NULL;
    }

    if (conn->reader) {
        redisReaderFree(conn->reader);
        conn->reader = NULL;
    }

    if (conn->flush.posted) {
        ngx_delete_posted_event(&conn->flush);
    }

    conn->out_sent = 0;
    conn->out_len = 0;
    conn->state = NGX_HTTP_RATELIMIT_DISCONNECTED;
    conn->generation++;
}


static ngx_int_t
ngx_http_ratelimit_redis_append(ngx_http_ratelimit_conn_t *conn, int argc,
    const char **argv, const size_t *argvlen)
{
    int      len;
    char    *cmd;
    size_t   size;
    u_char  *out;

    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0) {
        ngx_log_error(NGX_LOG_ALERT, conn->log, 0,
                      "ratelimit: could not format a Redis command");
        return NGX_ERROR;
    }

    if (conn->out_len + len > conn->out_size) {
        size = ngx_max(conn->out_size * 2, NGX_HTTP_RATELIMIT_OUT_MIN);
        size = ngx_max(size, conn->out_len + len);

        out = ngx_alloc(size, conn->log);
        if (out == NULL) {
            redisFreeCommand(cmd);
            return NGX_ERROR;
        }

        if (conn->out) {
            ngx_memcpy(out, conn->out, conn->out_len);
            ngx_free(conn->out);
        }

        conn->out = out;
        conn->out_size = size;
    }

    ngx_memcpy(conn->out + conn->out_len, cmd, len);
    conn->out_len += len;

    ngx_http_ratelimit_count(redis_commands, 1);

    redisFreeCommand(cmd);

    return NGX_OK;
}


static ngx_http_ratelimit_slot_t *
ngx_http_ratelimit_redis_queue(ngx_http_ratelimit_conn_t *conn,
    ngx_http_ratelimit_reply_pt handler, void *data)
{
    ngx_queue_t                *q;
    ngx_http_ratelimit_slot_t  *slot;

    /* slots outlive the requests that queue them: they come from the heap */

    if (!ngx_queue_empty(&conn->spare)) {
        q = ngx_queue_head(&conn->spare);
        ngx_queue_remove(q);
        slot = ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue);

    } else {
        slot = ngx_alloc(sizeof(ngx_http_ratelimit_slot_t), conn->log);
        if (slot == NULL) {
            return NULL;
        }
    }

    slot->handler = handler;
    slot->data = data;

    if (ngx_queue_empty(&conn->waiting)) {
        conn->answered_at = ngx_current_msec;
    }

    ngx_queue_insert_tail(&conn->waiting, &slot->queue);

    return slot;
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

        ngx_http_ratelimit_count(redis_writes, 1);

        if (n == NGX_AGAIN) {
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

    conn->out_sent = 0;
    conn->out_len = 0;
}


static void
ngx_http_ratelimit_redis_write_handler(ngx_event_t *wev)
{
    int                         err;
    socklen_t                   len;
    ngx_connection_t           *c;
    ngx_http_ratelimit_conn_t  *conn;

    c = wev->data;
    conn = c->data;

    if (conn->state == NGX_HTTP_RATELIMIT_CONNECTING) {
        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_log_error(NGX_LOG_ERR, conn->log, err,
                          "ratelimit: connect() to shard %V failed",
                          &conn->shard->name);
            ngx_http_ratelimit_redis_fail(conn, "connect failed");
            return;
        }

        conn->state = NGX_HTTP_RATELIMIT_CONNECTED;
    }

    ngx_http_ratelimit_redis_flush(conn);
}


static void
ngx_http_ratelimit_redis_read_handler(ngx_event_t *rev)
{
    void                        *data;
    ssize_t                      n;
    ngx_uint_t                   generation;
    ngx_queue_t                 *q;
    redisReply                  *reply;
    ngx_connection_t            *c;
    ngx_http_ratelimit_slot_t   *slot;
    ngx_http_ratelimit_conn_t   *conn;
    ngx_http_ratelimit_reply_pt  handler;
    u_char                       buf[16384];

    c = rev->data;
    conn = c->data;
    generation = conn->generation;

    for ( ;; ) {
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

        for ( ;; ) {
            reply = NULL;

            if (redisReaderGetReply(conn->reader, (void **) &reply)
                != REDIS_OK)
            {
                ngx_http_ratelimit_redis_fail(conn, "malformed reply");
                return;
            }

            if (reply == NULL) {
                break;
            }

            if (ngx_queue_empty(&conn->waiting)) {
                freeReplyObject(reply);
                ngx_http_ratelimit_redis_fail(conn, "reply nobody asked for");
                return;
            }

            q = ngx_queue_head(&conn->waiting);
            ngx_queue_remove(q);

            slot = ngx_queue_data(q, ngx_http_ratelimit_slot_t, queue);
            handler = slot->handler;
            data = slot->data;

            ngx_queue_insert_tail(&conn->spare, q);

            conn->answered_at = ngx_current_msec;

            ngx_http_ratelimit_count(redis_replies, 1);

            ngx_http_ratelimit_shard_ok(ngx_http_ratelimit_redis_health(conn),
                                        conn->log);

            if (handler) {
                handler(data, reply);
            }

            freeReplyObject(reply);

            /* a handler may have failed this connection: stop reading it */

            if (conn->generation != generation) {
                return;
            }
        }

        if ((size_t) n < sizeof(buf)) {
            break;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_ratelimit_redis_fail(conn, "read event failed");
    }
}


static void
ngx_http_ratelimit_redis_auth_done(void *data, redisReply *reply)
{
    ngx_http_ratelimit_conn_t  *conn = data;

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, conn->log, 0,
                  "ratelimit: AUTH on shard %V failed: %s",
                  &conn->shard->name, reply->str);

    ngx_http_ratelimit_redis_fail(conn, "AUTH failed");
}


static ngx_http_ratelimit_health_t *
ngx_http_ratelimit_redis_health(ngx_http_ratelimit_conn_t *conn)
{
    return &ngx_http_ratelimit_worker_ring->health[conn->index];
}
