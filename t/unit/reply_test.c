
/*
 * Unit test of the limiter scripts' reply decoding, driven by replies that
 * hiredis' own reader parses from RESP bytes.  Prints TAP.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "rl_reply.h"
#include "rl_rule.h"


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
decode_batch(const char *resp, size_t n, rl_check_result_t *results,
    long long *now_ms, const char **why)
{
    int          rc;
    redisReply  *reply;
    static char  message[256];

    reply = parse(resp);
    rc = rl_reply_decode_batch(reply, n, results, now_ms, why);

    snprintf(message, sizeof(message), "%s", *why ? *why : "");
    *why = message;

    if (reply) {
        freeReplyObject(reply);
    }

    return rc;
}


static int
decode_refund(const char *resp, long long *now_ms, const char **why)
{
    int          rc;
    redisReply  *reply;
    static char  message[256];

    reply = parse(resp);
    rc = rl_reply_decode_refund(reply, now_ms, why);

    snprintf(message, sizeof(message), "%s", *why ? *why : "");
    *why = message;

    if (reply) {
        freeReplyObject(reply);
    }

    return rc;
}


/* the RESP of an array of the integers v[0 .. n-1] */

static char *
resp_ints(const long long *v, size_t n)
{
    char    *buf, *p;
    size_t   i;

    buf = malloc(32 * (n + 1));

    if (buf == NULL) {
        return NULL;
    }

    p = buf + sprintf(buf, "*%zu\r\n", n);

    for (i = 0; i < n; i++) {
        p += sprintf(p, ":%lld\r\n", v[i]);
    }

    return buf;
}


/* decodes the array of the integers v[0 .. n-1] as a reply for checks */

static int
decode_ints(const long long *v, size_t n, size_t checks,
    rl_check_result_t *results, long long *now_ms)
{
    int          rc;
    char        *resp;
    const char  *why = NULL;

    resp = resp_ints(v, n);

    if (resp == NULL) {
        return -1;
    }

    rc = decode_batch(resp, checks, results, now_ms, &why);
    free(resp);

    return rc;
}


/* one check {a, r, retry, reset, t, rule..., ttl} and the clock 1 */

static int
one_ttl(long long a, long long r, long long retry, long long reset,
    long long t, long long rl, long long rw, long long ra, long long ttl,
    rl_check_result_t *res)
{
    long long  now, v[10] = { a, r, retry, reset, t, rl, rw, ra, ttl, 1 };

    return decode_ints(v, 10, 1, res, &now);
}


/* the same with the ttl of a rule not read (-1), else of one that stays */

static int
one(long long a, long long r, long long retry, long long reset, long long t,
    long long rl, long long rw, long long ra, rl_check_result_t *res)
{
    return one_ttl(a, r, retry, reset, t, rl, rw, ra, rl == -1 ? -1 : 0,
                   res);
}


/* n checks allowed, check i with remaining i, reset 1000 + i, t 1 + i, rule
 * i + 1 per 60 s, algorithm i % 3 */

static int
batch_of(size_t n, size_t elements, long long now, rl_check_result_t *res)
{
    int          rc;
    size_t       i;
    long long    v[9 * 1100 + 1], got;

    for (i = 0; i < n; i++) {
        v[9 * i] = 1;
        v[9 * i + 1] = (long long) i;
        v[9 * i + 2] = 0;
        v[9 * i + 3] = 1000 + (long long) i;
        v[9 * i + 4] = 1 + (long long) i;
        v[9 * i + 5] = 1 + (long long) i;
        v[9 * i + 6] = 60;
        v[9 * i + 7] = (long long) (i % 3);
        v[9 * i + 8] = (long long) i;
    }

    v[9 * n] = now;

    rc = decode_ints(v, elements, n, res, &got);

    if (rc == RL_REPLY_OK && got != now) {
        return -1;
    }

    return rc;
}


int
main(void)
{
    size_t              i;
    long long           now;
    const char         *why = NULL;
    rl_check_result_t   b[1100];

    printf("1..88\n");

    /* check.lua: 9 per check, then the clock */

    memset(b, 0, sizeof(b));
    ok(decode_batch("*10\r\n:1\r\n:4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:-1\r\n"
                    ":1764340000123\r\n", 1, b, &now, &why) == RL_REPLY_OK,
       "batch: one allowed check decodes");
    ok(b[0].allowed == 1 && b[0].remaining == 4 && b[0].retry_after_ms == 0
       && b[0].reset_ms == 600 && b[0].t_ms == 400,
       "batch: its five numbers");
    ok(b[0].rule_limit == -1 && b[0].rule_window == -1
       && b[0].rule_algorithm == -1 && b[0].rule_ttl_ms == -1,
       "batch: its rule not read: -1 -1 -1 -1");
    ok(now == 1764340000123LL && b[0].now_ms == 1764340000123LL,
       "batch: the clock, in the call's and the check's");

    ok(decode_batch("*28\r\n"
                    ":1\r\n:9\r\n:0\r\n:100\r\n:100\r\n:-1\r\n:-1\r\n:-1\r\n"
                    ":-1\r\n"
                    ":0\r\n:3\r\n:1500\r\n:60000\r\n:1500\r\n"
                    ":10\r\n:60\r\n:1\r\n:2500\r\n"
                    ":-1\r\n:0\r\n:0\r\n:0\r\n:0\r\n:-1\r\n:-1\r\n:-1\r\n"
                    ":-1\r\n"
                    ":42\r\n", 3, b, &now, &why) == RL_REPLY_OK,
       "batch: allowed, denied, not run: decodes");
    ok(b[1].allowed == 0 && b[1].remaining == 3 && b[1].retry_after_ms == 1500
       && b[1].reset_ms == 60000 && b[1].t_ms == 1500,
       "batch: the denied check's numbers (remaining may be > 0)");
    ok(b[1].rule_limit == 10 && b[1].rule_window == 60
       && b[1].rule_algorithm == RL_RULE_ALGORITHM_TOKEN_BUCKET
       && b[1].rule_ttl_ms == 2500,
       "batch: the denied check's rule, read: 10 per 60 s, token bucket, for"
       " 2.5 s more");
    ok(b[2].allowed == RL_CHECK_LATE, "batch: a check not run is -1, no error");
    ok(b[0].remaining == 9 && b[0].now_ms == 42 && b[1].now_ms == 42
       && b[2].now_ms == 42 && now == 42,
       "batch: every check gets the clock");
    ok(decode_batch("*10\r\n:-1\r\n:5\r\n:5\r\n:5\r\n:5\r\n:-1\r\n:-1\r\n:-1\r\n"
                    ":-1\r\n:1\r\n", 1, b, &now, &why) == RL_REPLY_OK
       && b[0].allowed == -1,
       "batch: what a check not run says beside -1 is not judged");

    /* the rule */

    ok(one(1, 4, 0, 600, 400, 0, 0, 0, b) == RL_REPLY_OK
       && b[0].rule_limit == 0 && b[0].rule_window == 0
       && b[0].rule_algorithm == 0, "rule: read, none: 0 0 0");
    ok(one(1, 4, 0, 600, 400, 100, 60, 0, b) == RL_REPLY_OK
       && b[0].rule_limit == 100 && b[0].rule_window == 60
       && b[0].rule_algorithm == RL_RULE_ALGORITHM_NONE,
       "rule: 100 per 60 s, no algorithm (the policy's)");
    ok(one(0, 0, 5, 600, 5, 7, 3600, 2, b) == RL_REPLY_OK
       && b[0].rule_algorithm == RL_RULE_ALGORITHM_SLIDING_WINDOW,
       "rule: sliding window, with a denial");
    ok(one(1, 0, 0, 1, 1, RL_RULE_MAX_LIMIT, RL_RULE_MAX_WINDOW, 1, b)
       == RL_REPLY_OK && b[0].rule_limit == RL_RULE_MAX_LIMIT
       && b[0].rule_window == RL_RULE_MAX_WINDOW,
       "rule: the largest limit and window");
    ok(one(1, 0, 0, 1, 1, 1, RL_RULE_MIN_WINDOW, 0, b) == RL_REPLY_OK,
       "rule: the smallest");
    ok(one(1, 0, 0, 1, 1, RL_RULE_MAX_LIMIT + 1LL, 60, 0, b)
       == RL_REPLY_MALFORMED, "rule: a limit above the bounds is malformed");
    ok(one(1, 0, 0, 1, 1, 5, RL_RULE_MAX_WINDOW + 1LL, 0, b)
       == RL_REPLY_MALFORMED, "rule: a window above the bounds is malformed");
    ok(one(1, 0, 0, 1, 1, 5, 0, 0, b) == RL_REPLY_MALFORMED,
       "rule: a limit without a window is malformed");
    ok(one(1, 0, 0, 1, 1, 0, 60, 0, b) == RL_REPLY_MALFORMED,
       "rule: a window without a limit is malformed");
    ok(one(1, 0, 0, 1, 1, 0, 0, 1, b) == RL_REPLY_MALFORMED,
       "rule: none with an algorithm is malformed");
    ok(one(1, 0, 0, 1, 1, 5, 60, 3, b) == RL_REPLY_MALFORMED,
       "rule: algorithm 3 is malformed");
    ok(one(1, 0, 0, 1, 1, 5, 60, -1, b) == RL_REPLY_MALFORMED,
       "rule: a rule with algorithm -1 is malformed");
    ok(one(1, 0, 0, 1, 1, -1, -1, 0, b) == RL_REPLY_MALFORMED,
       "rule: -1 -1 0 is malformed");
    ok(one(1, 0, 0, 1, 1, -1, 0, 0, b) == RL_REPLY_MALFORMED,
       "rule: -1 0 0 is malformed");
    ok(one(1, 0, 0, 1, 1, -2, -1, -1, b) == RL_REPLY_MALFORMED,
       "rule: -2 is malformed");
    ok(one(-1, 0, 0, 0, 0, 5, 60, 7, b) == RL_REPLY_MALFORMED,
       "rule: judged for a check not run too");
    ok(one_ttl(1, 4, 0, 600, 400, 100, 60, 0, 86400000, b) == RL_REPLY_OK
       && b[0].rule_ttl_ms == 86400000, "rule: with the time it holds");
    ok(one_ttl(1, 4, 0, 600, 400, 0, 0, 0, 5, b) == RL_REPLY_OK
       && b[0].rule_limit == 0 && b[0].rule_ttl_ms == 5,
       "rule: none may carry a ttl");
    ok(one_ttl(1, 4, 0, 600, 400, 100, 60, 0, -1, b) == RL_REPLY_MALFORMED,
       "rule: a rule read with ttl -1 is malformed");
    ok(one_ttl(1, 4, 0, 600, 400, -1, -1, -1, 0, b) == RL_REPLY_MALFORMED,
       "rule: not read with a ttl is malformed");
    ok(one_ttl(1, 4, 0, 600, 400, 100, 60, 0, -2, b) == RL_REPLY_MALFORMED,
       "rule: ttl -2 is malformed");

    /* resend */

    ok(one(-2, 0, 0, 0, 0, 5, 60, 2, b) == RL_REPLY_OK
       && b[0].allowed == RL_CHECK_RESEND && b[0].rule_limit == 5
       && b[0].rule_window == 60 && b[0].rule_algorithm == 2,
       "resend: -2 with its rule, naming sliding window");
    ok(one(-2, 0, 0, 0, 0, 5, 60, 1, b) == RL_REPLY_OK,
       "resend: naming token bucket");
    ok(one(-2, 0, 0, 0, 0, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "resend: without a rule read is malformed");
    ok(one(-2, 0, 0, 0, 0, 0, 0, 0, b) == RL_REPLY_MALFORMED,
       "resend: with none is malformed");
    ok(one(-2, 0, 0, 0, 0, 5, 60, 0, b) == RL_REPLY_MALFORMED,
       "resend: with a rule naming no algorithm is malformed");
    ok(one(-3, 0, 0, 0, 0, 5, 60, 1, b) == RL_REPLY_MALFORMED,
       "resend: allowed -3 is malformed");
    {
        /* a group of three sent back by its second check, then one run */
        long long  v[37] = { -2, 0, 0, 0, 0, -1, -1, -1, -1,
                             -2, 0, 0, 0, 0, 9, 30, 1, 0,
                             -2, 0, 0, 0, 0, 0, 0, 0, 0,
                             1, 2, 0, 10, 20, 5, 60, 0, 0,
                             77 };

        ok(decode_ints(v, 37, 4, b, &now) == RL_REPLY_OK
           && b[0].allowed == -2 && b[0].rule_limit == -1
           && b[1].allowed == -2 && b[1].rule_limit == 9
           && b[1].rule_window == 30 && b[1].rule_algorithm == 1
           && b[2].allowed == -2 && b[2].rule_limit == 0
           && b[3].allowed == 1 && b[3].remaining == 2
           && b[3].rule_limit == 5 && now == 77,
           "resend: a group's checks all -2, one naming the algorithm; the "
           "next group run");
        v[16] = 0;
        ok(decode_ints(v, 37, 4, b, &now) == RL_REPLY_MALFORMED,
           "resend: ... and none naming it is malformed");
    }

    ok(decode_batch("-NOSCRIPT No matching script. Please use EVAL.\r\n", 2,
                    b, &now, &why) == RL_REPLY_NOSCRIPT,
       "batch: NOSCRIPT is told apart");
    ok(decode_batch("-ERR ratelimit: bad limit (check 3)\r\n", 3, b, &now,
                    &why) == RL_REPLY_ERROR
       && strcmp(why, "ERR ratelimit: bad limit (check 3)") == 0,
       "batch: other errors carry Redis' message");
    ok(decode_batch("-WRONGTYPE Operation against a key\r\n", 1, b, &now,
                    &why) == RL_REPLY_ERROR, "batch: WRONGTYPE is an error");
    ok(decode_batch("-NOSCRIP\r\n", 1, b, &now, &why) == RL_REPLY_ERROR,
       "batch: NOSCRIP is not NOSCRIPT");

    ok(rl_reply_decode_batch(NULL, 1, b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: no reply is malformed");
    ok(decode_batch("*10\r\n:1\r\n:4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:-1\r\n:1\r\n", 2,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: 10 elements for 2 checks are malformed");
    ok(decode_batch("*9\r\n:1\r\n:4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:-1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: without the clock malformed");
    ok(decode_batch("*9\r\n:1\r\n:4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: the 8 per check of before expiries are malformed");
    ok(decode_batch("*11\r\n:1\r\n:4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:-1\r\n:1\r\n:1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: one element more is malformed");
    ok(decode_batch("*6\r\n:1\r\n:4\r\n:0\r\n:600\r\n:400\r\n:1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: the old 5 per check (before rules) are malformed");
    ok(decode_batch("*1\r\n:1\r\n", 0, b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: 0 checks are malformed");
    ok(decode_batch("+OK\r\n", 1, b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: a status reply is malformed");
    ok(decode_batch("$-1\r\n", 1, b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: a nil reply is malformed");
    ok(decode_batch(":1\r\n", 1, b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: an integer reply is malformed");
    ok(decode_batch("*10\r\n:1\r\n$1\r\n4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:-1\r\n:1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: a string element is malformed");
    ok(decode_batch("*10\r\n:1\r\n:4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n$2\r\n-1\r\n:-1\r\n:-1\r\n:1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: a string in the rule is malformed");
    ok(decode_batch("*10\r\n:1\r\n*1\r\n:4\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:-1\r\n:1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: an array element is malformed");
    ok(decode_batch("*10\r\n:1\r\n$-1\r\n:0\r\n:600\r\n:400\r\n"
                    ":-1\r\n:-1\r\n:-1\r\n:-1\r\n:1\r\n", 1,
                    b, &now, &why) == RL_REPLY_MALFORMED,
       "batch: a nil element is malformed");
    ok(one(2, 4, 0, 600, 400, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: allowed 2 is malformed");
    {
        long long  v[19] = { 1, 4, 0, 600, 400, -1, -1, -1, -1,
                             3, 4, 0, 600, 400, -1, -1, -1, -1, 1 };

        ok(decode_ints(v, 19, 2, b, &now) == RL_REPLY_MALFORMED,
           "batch: allowed 3 in the second check is malformed");
    }
    ok(one(1, -4, 0, 600, 400, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: negative remaining is malformed");
    ok(one(0, 0, -5, 600, 400, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: a negative retry is malformed");
    ok(one(1, 4, 0, -600, 400, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: a negative reset is malformed");
    ok(one(1, 4, 0, 600, -400, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: a negative t is malformed");
    {
        long long  v[10] = { 1, 4, 0, 600, 400, -1, -1, -1, -1, -1 };

        ok(decode_ints(v, 10, 1, b, &now) == RL_REPLY_MALFORMED,
           "batch: a negative clock is malformed (-1 is only for allowed and"
           " the rule)");
    }
    ok(one(-1, -1, 0, 0, 0, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: -1 in remaining is malformed");
    ok(one(-2, 0, -1, 0, 0, 5, 60, 1, b) == RL_REPLY_MALFORMED,
       "batch: -1 in a -2 check's retry is malformed");
    ok(one(1, 4, 7, 600, 400, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: allowed with a retry time is malformed");
    ok(one(0, 0, 0, 600, 400, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: denied without a retry time is malformed");
    ok(one(1, 4, 0, 600, 0, -1, -1, -1, b) == RL_REPLY_MALFORMED,
       "batch: a check run with t 0 is malformed");

    ok(batch_of(1024, 9 * 1024 + 1, 7, b) == RL_REPLY_OK,
       "batch: 1024 checks decode");
    for (i = 0; i < 1024; i++) {
        if (b[i].allowed != 1 || b[i].remaining != (long long) i
            || b[i].reset_ms != 1000 + (long long) i
            || b[i].t_ms != 1 + (long long) i || b[i].now_ms != 7
            || b[i].rule_limit != 1 + (long long) i || b[i].rule_window != 60
            || b[i].rule_algorithm != (int) (i % 3)
            || b[i].rule_ttl_ms != (long long) i)
        {
            break;
        }
    }
    ok(i == 1024, "batch: each of the 1024 in its place");
    ok(batch_of(1025, 9 * 1025 + 1, 7, b) == RL_REPLY_MALFORMED,
       "batch: 1025 checks are more than a call has");
    ok(batch_of(3, 9 * 3, 7, b) == RL_REPLY_MALFORMED,
       "batch: 3 checks without the clock are malformed");

    /* refund.lua: {refunded, now_ms} */

    now = 0;
    ok(decode_refund("*2\r\n:1\r\n:1764340000123\r\n", &now, &why)
       == RL_REPLY_OK && now == 1764340000123LL, "refund: decodes the clock");
    ok(decode_refund("*2\r\n:0\r\n:5\r\n", &now, &why) == RL_REPLY_OK
       && now == 5, "refund: nothing given back is no error");
    ok(decode_refund("-NOSCRIPT No matching script.\r\n", &now, &why)
       == RL_REPLY_NOSCRIPT, "refund: NOSCRIPT");
    ok(decode_refund("-ERR ratelimit: bad cost (check 1)\r\n", &now, &why)
       == RL_REPLY_ERROR && strcmp(why, "ERR ratelimit: bad cost (check 1)")
       == 0, "refund: errors carry Redis' message");
    ok(rl_reply_decode_refund(NULL, &now, &why) == RL_REPLY_MALFORMED,
       "refund: no reply is malformed");
    ok(decode_refund("*1\r\n:1\r\n", &now, &why) == RL_REPLY_MALFORMED,
       "refund: one element is malformed");
    ok(decode_refund("*3\r\n:1\r\n:1\r\n:1\r\n", &now, &why)
       == RL_REPLY_MALFORMED, "refund: three elements are malformed");
    ok(decode_refund("*2\r\n:-1\r\n:1\r\n", &now, &why)
       == RL_REPLY_MALFORMED, "refund: a negative count is malformed");
    ok(decode_refund("*2\r\n:1\r\n$2\r\n12\r\n", &now, &why)
       == RL_REPLY_MALFORMED, "refund: a string clock is malformed");
    ok(decode_refund("+OK\r\n", &now, &why) == RL_REPLY_MALFORMED,
       "refund: a status reply is malformed");

    ok(rl_retry_after_seconds(1) == 1, "Retry-After: 1 ms is 1 s");
    ok(rl_retry_after_seconds(0) == 1, "Retry-After: never 0");
    ok(rl_retry_after_seconds(1000) == 1 && rl_retry_after_seconds(1001) == 2,
       "Retry-After: rounded up, never early");
    ok(rl_reset_seconds(0) == 0 && rl_reset_seconds(1) == 1,
       "reset: 0 when full, else rounded up");
    ok(rl_reset_seconds(59999) == 60, "reset: 59.999 s is 60 s");

    return failed ? 1 : 0;
}
