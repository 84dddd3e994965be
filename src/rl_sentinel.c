
/*
 * What Redis Sentinel says of where a primary is, and whether a node is one.
 */


#include <string.h>

#include "rl_sentinel.h"


static int rl_sentinel_host(const char *host, size_t len);
static int rl_sentinel_port(const char *text, size_t len);
static int rl_sentinel_is(const redisReply *reply, const char *text);


int
rl_sentinel_valid_name(const char *name, size_t len)
{
    size_t  i;

    if (len == 0 || len > RL_SENTINEL_MAX_NAME) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if ((unsigned char) name[i] <= ' ' || name[i] == 0x7f) {
            return 0;
        }
    }

    return 1;
}


int
rl_sentinel_master_reply(const redisReply *reply, rl_sentinel_addr_t *addr,
    const char **why)
{
    const redisReply  *host, *port;

    if (reply == NULL) {
        *why = "no reply";
        return RL_SENTINEL_BAD;
    }

    if (reply->type == REDIS_REPLY_NIL) {
        return RL_SENTINEL_UNKNOWN;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        *why = reply->str;
        return RL_SENTINEL_BAD;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        *why = "not an array of two";
        return RL_SENTINEL_BAD;
    }

    host = reply->element[0];
    port = reply->element[1];

    if (host->type != REDIS_REPLY_STRING || port->type != REDIS_REPLY_STRING
        || !rl_sentinel_host(host->str, host->len))
    {
        *why = "not a host";
        return RL_SENTINEL_BAD;
    }

    addr->port = rl_sentinel_port(port->str, port->len);

    if (addr->port == 0) {
        *why = "not a port";
        return RL_SENTINEL_BAD;
    }

    addr->host = host->str;
    addr->host_len = host->len;

    return RL_SENTINEL_OK;
}


int
rl_sentinel_message(const redisReply *reply, const char *name,
    size_t name_len, rl_sentinel_addr_t *addr, const char **why)
{
    size_t             n, len[5];
    const char        *p, *end, *field[5];
    const redisReply  *msg;

    *why = "not a message of the subscription";

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_STRING
        || !rl_sentinel_is(reply->element[1], "+switch-master"))
    {
        return RL_SENTINEL_BAD;
    }

    if (rl_sentinel_is(reply->element[0], "subscribe")) {
        return reply->element[2]->type == REDIS_REPLY_INTEGER
               ? RL_SENTINEL_OTHER : RL_SENTINEL_BAD;
    }

    msg = reply->element[2];

    if (!rl_sentinel_is(reply->element[0], "message")
        || msg->type != REDIS_REPLY_STRING)
    {
        return RL_SENTINEL_BAD;
    }

    /* five fields separated by single spaces */

    p = msg->str;
    end = msg->str + msg->len;

    for (n = 0; n < 5; n++) {
        field[n] = p;

        while (p < end && *p != ' ') {
            p++;
        }

        len[n] = p - field[n];

        if (len[n] == 0 || (n < 4 && p == end)) {
            *why = "a switch of fewer than five fields";
            return RL_SENTINEL_BAD;
        }

        p++;
    }

    if (p <= end) {
        *why = "a switch of more than five fields";
        return RL_SENTINEL_BAD;
    }

    if (len[0] != name_len || memcmp(field[0], name, name_len) != 0) {
        return RL_SENTINEL_OTHER;
    }

    if (!rl_sentinel_host(field[3], len[3])) {
        *why = "a switch to no host";
        return RL_SENTINEL_BAD;
    }

    addr->port = rl_sentinel_port(field[4], len[4]);

    if (addr->port == 0) {
        *why = "a switch to no port";
        return RL_SENTINEL_BAD;
    }

    addr->host = field[3];
    addr->host_len = len[3];

    return RL_SENTINEL_OK;
}


int
rl_sentinel_is_primary(const redisReply *reply)
{
    return reply != NULL
           && reply->type == REDIS_REPLY_ARRAY
           && reply->elements >= 1
           && reply->element[0]->type == REDIS_REPLY_STRING
           && rl_sentinel_is(reply->element[0], "master");
}


/* an address or a host name: letters, digits, ".", "-", "_" and ":" */

static int
rl_sentinel_host(const char *host, size_t len)
{
    size_t  i;
    char    c;

    if (len == 0 || len > RL_SENTINEL_MAX_HOST) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = host[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
              || (c >= 'A' && c <= 'Z') || c == '.' || c == '-' || c == '_'
              || c == ':'))
        {
            return 0;
        }
    }

    return 1;
}


/* 1 to 65535 in decimal digits, else 0 */

static int
rl_sentinel_port(const char *text, size_t len)
{
    int     port;
    size_t  i;

    if (len == 0 || len > 5) {
        return 0;
    }

    port = 0;

    for (i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9') {
            return 0;
        }

        port = port * 10 + (text[i] - '0');
    }

    return port <= 65535 ? port : 0;
}


static int
rl_sentinel_is(const redisReply *reply, const char *text)
{
    size_t  len;

    len = strlen(text);

    return reply->len == len && memcmp(reply->str, text, len) == 0;
}
