
/*
 * Unit test of the limiter scripts' reply decoding, driven by replies that
 * hiredis' own reader parses from RESP bytes.  Prints TAP.
 */


#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "rl_reply.h"


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


/* *why may point into the reply: it is copied before the reply is freed */

static int
decode(const char *resp, rl_check_result_t *result, const char **why)
{
    int          rc;
    redisReply  *reply;
    static char  message[256];

    reply = parse(resp);
    rc = rl_reply_decode_check(reply, result, why);

    snprintf(message, sizeof(message), "%s", *why ? *why : "");
    *why = message;

    if (reply) {
        freeReplyObject(reply);
    }

    return rc;
}


int
main(void)
{
    const char         *why = NULL;
    rl_check_result_t   r;

    printf("1..26\n");

    memset(&r, 0, sizeof(r));
    ok(decode("*4\r\n:1\r\n:99\r\n:0\r\n:600\r\n", &r, &why) == RL_REPLY_OK,
       "allowed reply decodes");
    ok(r.allowed == 1 && r.remaining == 99 && r.retry_after_ms == 0
       && r.reset_ms == 600, "allowed reply fields");

    ok(decode("*4\r\n:0\r\n:0\r\n:1500\r\n:60000\r\n", &r, &why)
       == RL_REPLY_OK, "denied reply decodes");
    ok(r.allowed == 0 && r.remaining == 0 && r.retry_after_ms == 1500
       && r.reset_ms == 60000, "denied reply fields");

    ok(decode("-NOSCRIPT No matching script. Please use EVAL.\r\n", &r, &why)
       == RL_REPLY_NOSCRIPT, "NOSCRIPT is told apart");
    ok(decode("-ERR ratelimit: bad limit\r\n", &r, &why) == RL_REPLY_ERROR
       && strcmp(why, "ERR ratelimit: bad limit") == 0,
       "other errors carry Redis' message");
    ok(decode("-OOM command not allowed\r\n", &r, &why) == RL_REPLY_ERROR,
       "OOM is an error");

    ok(rl_reply_decode_check(NULL, &r, &why) == RL_REPLY_MALFORMED,
       "no reply is malformed");
    ok(decode("*3\r\n:1\r\n:1\r\n:0\r\n", &r, &why) == RL_REPLY_MALFORMED,
       "three elements are malformed");
    ok(decode("*6\r\n:1\r\n:1\r\n:0\r\n:0\r\n:0\r\n:0\r\n", &r, &why)
       == RL_REPLY_MALFORMED, "six elements are malformed");
    ok(decode("*5\r\n:1\r\n:7\r\n:0\r\n:10\r\n:1764340000123\r\n", &r,
              &why) == RL_REPLY_OK
       && r.allowed == 1 && r.remaining == 7 && r.now_ms == 1764340000123LL,
       "a fifth element is the shard's clock");
    ok(decode("*4\r\n:1\r\n:7\r\n:0\r\n:10\r\n", &r, &why) == RL_REPLY_OK
       && r.now_ms == -1, "without it the clock is not known");
    ok(decode("*5\r\n:-1\r\n:0\r\n:0\r\n:0\r\n:1764340000123\r\n", &r,
              &why) == RL_REPLY_EXPIRED && r.now_ms == 1764340000123LL,
       "allowed -1: ran after its deadline, clock still told");
    ok(decode("*5\r\n:-2\r\n:0\r\n:0\r\n:0\r\n:1\r\n", &r, &why)
       == RL_REPLY_MALFORMED, "an allowed flag of -2 is malformed");
    ok(decode("*5\r\n:1\r\n:0\r\n:0\r\n:0\r\n:-1\r\n", &r, &why)
       == RL_REPLY_MALFORMED, "a negative clock is malformed");
    ok(decode("*4\r\n:1\r\n$2\r\n99\r\n:0\r\n:0\r\n", &r, &why)
       == RL_REPLY_MALFORMED, "a string element is malformed");
    ok(decode("*4\r\n:1\r\n:-1\r\n:0\r\n:0\r\n", &r, &why)
       == RL_REPLY_MALFORMED, "a negative element is malformed");
    ok(decode("*4\r\n:2\r\n:1\r\n:0\r\n:0\r\n", &r, &why)
       == RL_REPLY_MALFORMED, "an allowed flag of 2 is malformed");
    ok(decode("*4\r\n:0\r\n:0\r\n:0\r\n:0\r\n", &r, &why)
       == RL_REPLY_MALFORMED, "a denial without a retry time is malformed");
    ok(decode("+OK\r\n", &r, &why) == RL_REPLY_MALFORMED,
       "a status reply is malformed");
    ok(decode("$-1\r\n", &r, &why) == RL_REPLY_MALFORMED,
       "a nil reply is malformed");

    ok(rl_retry_after_seconds(1) == 1, "Retry-After: 1 ms is 1 s");
    ok(rl_retry_after_seconds(0) == 1, "Retry-After: never 0");
    ok(rl_retry_after_seconds(1000) == 1 && rl_retry_after_seconds(1001) == 2,
       "Retry-After: rounded up, never early");
    ok(rl_reset_seconds(0) == 0 && rl_reset_seconds(1) == 1,
       "reset: 0 when full, else rounded up");
    ok(rl_reset_seconds(59999) == 60, "reset: 59.999 s is 60 s");

    return failed ? 1 : 0;
}
