
/*
 * Unit test of what the module reads from Redis Sentinel (and ROLE), driven
 * by replies that hiredis' own reader parses from RESP bytes.  Prints TAP.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "rl_sentinel.h"


static int  tests;
static int  failed;


static void
ok(int cond, const char *name)
{
    tests++;

    if (!cond) {
        failed++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", tests, name);
}


static redisReply *
parse(const char *resp)
{
    void         *reply;
    redisReader  *reader;

    reader = redisReaderCreate();
    reply = NULL;

    if (redisReaderFeed(reader, resp, strlen(resp)) != REDIS_OK
        || redisReaderGetReply(reader, &reply) != REDIS_OK)
    {
        reply = NULL;
    }

    redisReaderFree(reader);

    return reply;
}


static int
master(const char *resp, char *host, int *port)
{
    int                  rc;
    const char          *why;
    redisReply          *reply;
    rl_sentinel_addr_t   addr;

    reply = parse(resp);
    why = NULL;
    rc = rl_sentinel_master_reply(reply, &addr, &why);

    if (rc == RL_SENTINEL_OK) {
        memcpy(host, addr.host, addr.host_len);
        host[addr.host_len] = '\0';
        *port = addr.port;
    }

    if (reply) {
        freeReplyObject(reply);
    }

    return rc;
}


/* a message of the subscription as Sentinel sends it */

static int
message(const char *text, char *host, int *port)
{
    int                  rc;
    char                 resp[512];
    const char          *why;
    redisReply          *reply;
    rl_sentinel_addr_t   addr;

    snprintf(resp, sizeof(resp),
             "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%zu\r\n%s\r\n",
             strlen(text), text);

    reply = parse(resp);
    rc = rl_sentinel_message(reply, "mymaster", 8, &addr, &why);

    if (rc == RL_SENTINEL_OK) {
        memcpy(host, addr.host, addr.host_len);
        host[addr.host_len] = '\0';
        *port = addr.port;
    }

    if (reply) {
        freeReplyObject(reply);
    }

    return rc;
}


static int
primary(const char *resp)
{
    int          rc;
    redisReply  *reply;

    reply = parse(resp);
    rc = rl_sentinel_is_primary(reply);

    if (reply) {
        freeReplyObject(reply);
    }

    return rc;
}


int
main(void)
{
    int          port;
    char         host[300];
    const char  *why;
    redisReply  *reply;
    rl_sentinel_addr_t  addr;

    printf("1..33\n");

    /* names */

    ok(rl_sentinel_valid_name("mymaster", 8), "a plain name is valid");
    ok(!rl_sentinel_valid_name("", 0), "an empty name is not");
    ok(!rl_sentinel_valid_name("my master", 9), "nor one with a space");
    ok(!rl_sentinel_valid_name("a\tb", 3), "nor one with a control byte");
    ok(rl_sentinel_valid_name(
           "0123456789012345678901234567890123456789012345678901234567890123",
           64), "64 bytes are valid");
    ok(!rl_sentinel_valid_name(
           "01234567890123456789012345678901234567890123456789012345678901234",
           65), "65 are not");

    /* SENTINEL get-master-addr-by-name */

    port = 0;
    ok(master("*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n", host, &port)
       == RL_SENTINEL_OK && strcmp(host, "127.0.0.1") == 0 && port == 6380,
       "an address and a port");
    ok(master("*2\r\n$3\r\n::1\r\n$5\r\n65535\r\n", host, &port)
       == RL_SENTINEL_OK && strcmp(host, "::1") == 0 && port == 65535,
       "an IPv6 address, the highest port");
    ok(master("*2\r\n$14\r\nredis-1.local_\r\n$4\r\n6379\r\n", host, &port)
       == RL_SENTINEL_OK && strcmp(host, "redis-1.local_") == 0,
       "a host name is read (the module then refuses it)");
    ok(master("$-1\r\n", host, &port) == RL_SENTINEL_UNKNOWN,
       "nil: the master is unknown");
    ok(master("*-1\r\n", host, &port) == RL_SENTINEL_UNKNOWN,
       "a nil array too");
    ok(master("-ERR unknown command\r\n", host, &port) == RL_SENTINEL_BAD,
       "an error is bad");
    ok(master("*1\r\n$9\r\n127.0.0.1\r\n", host, &port) == RL_SENTINEL_BAD,
       "one element is bad");
    ok(master("*2\r\n$9\r\n127.0.0.1\r\n:6379\r\n", host, &port)
       == RL_SENTINEL_BAD, "a port that is an integer is bad");
    ok(master("*2\r\n$9\r\n127.0.0.1\r\n$1\r\n0\r\n", host, &port)
       == RL_SENTINEL_BAD, "port 0 is bad");
    ok(master("*2\r\n$9\r\n127.0.0.1\r\n$5\r\n65536\r\n", host, &port)
       == RL_SENTINEL_BAD, "port 65536 is bad");
    ok(master("*2\r\n$9\r\n127.0.0.1\r\n$3\r\n6a9\r\n", host, &port)
       == RL_SENTINEL_BAD, "a port with a letter is bad");
    ok(master("*2\r\n$0\r\n\r\n$4\r\n6379\r\n", host, &port)
       == RL_SENTINEL_BAD, "an empty host is bad");
    ok(master("*2\r\n$9\r\n127.0 0.1\r\n$4\r\n6379\r\n", host, &port)
       == RL_SENTINEL_BAD, "a host with a space is bad");
    ok(rl_sentinel_master_reply(NULL, &addr, &why) == RL_SENTINEL_BAD,
       "no reply is bad");

    /* +switch-master */

    ok(message("mymaster 127.0.0.1 6379 127.0.0.2 6380", host, &port)
       == RL_SENTINEL_OK && strcmp(host, "127.0.0.2") == 0 && port == 6380,
       "a switch of this master gives the new primary");
    ok(message("other 127.0.0.1 6379 127.0.0.2 6380", host, &port)
       == RL_SENTINEL_OTHER, "a switch of another master is no concern");
    ok(message("mymaster2 127.0.0.1 6379 127.0.0.2 6380", host, &port)
       == RL_SENTINEL_OTHER, "nor one of a name this one begins");
    ok(message("mymaster 127.0.0.1 6379 127.0.0.2", host, &port)
       == RL_SENTINEL_BAD, "four fields are bad");
    ok(message("mymaster 127.0.0.1 6379 127.0.0.2 6380 x", host, &port)
       == RL_SENTINEL_BAD, "six fields are bad");
    ok(message("mymaster 127.0.0.1 6379 127.0.0.2 6380 ", host, &port)
       == RL_SENTINEL_BAD, "a trailing space is bad");
    ok(message("mymaster 127.0.0.1  6379 127.0.0.2 6380", host, &port)
       == RL_SENTINEL_BAD, "two spaces are bad");
    ok(message("mymaster 127.0.0.1 6379 127.0.0.2 99999", host, &port)
       == RL_SENTINEL_BAD, "a switch to port 99999 is bad");

    reply = parse("*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n");
    ok(rl_sentinel_message(reply, "mymaster", 8, &addr, &why)
       == RL_SENTINEL_OTHER, "the confirmation of the subscription");
    freeReplyObject(reply);

    reply = parse("*3\r\n$7\r\nmessage\r\n$5\r\n+sdown\r\n$3\r\nabc\r\n");
    ok(rl_sentinel_message(reply, "mymaster", 8, &addr, &why)
       == RL_SENTINEL_BAD, "a message of another channel is bad");
    freeReplyObject(reply);

    /* ROLE */

    ok(primary("*3\r\n$6\r\nmaster\r\n:3129\r\n*0\r\n"), "ROLE master");
    ok(!primary("*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n"
                "$9\r\nconnected\r\n:3129\r\n"), "ROLE slave is no primary");
    ok(!primary("-NOPERM no\r\n") && !primary("+master\r\n"),
       "nor an error or a status");

    return failed ? 1 : 0;
}
