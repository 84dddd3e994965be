
/*
 * Decoding the limiter scripts' replies.
 */


#include <string.h>

#include "rl_reply.h"


/* the most checks lua/check.lua takes in one call */
#define RL_REPLY_MAX_CHECKS  1024


static int rl_reply_error(const redisReply *reply, const char **why);


/* RL_REPLY_OK if the reply is no error reply, else what it is */

static int
rl_reply_error(const redisReply *reply, const char **why)
{
    if (reply == NULL) {
        *why = "no reply";
        return RL_REPLY_MALFORMED;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        *why = reply->str;

        if (reply->len >= 8 && memcmp(reply->str, "NOSCRIPT", 8) == 0) {
            return RL_REPLY_NOSCRIPT;
        }

        return RL_REPLY_ERROR;
    }

    return RL_REPLY_OK;
}


int
rl_reply_decode_batch(const redisReply *reply, size_t n,
    rl_check_result_t *results, long long *now_ms, const char **why)
{
    int                 rc;
    size_t              i, k;
    long long           v[5], now;
    const redisReply   *e;
    rl_check_result_t  *res;

    rc = rl_reply_error(reply, why);

    if (rc != RL_REPLY_OK) {
        return rc;
    }

    if (n == 0 || n > RL_REPLY_MAX_CHECKS) {
        *why = "no call has that many checks";
        return RL_REPLY_MALFORMED;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 5 * n + 1) {
        *why = "reply is not an array of 5 integers per check and the clock";
        return RL_REPLY_MALFORMED;
    }

    for (i = 0; i < reply->elements; i++) {
        e = reply->element[i];

        if (e == NULL || e->type != REDIS_REPLY_INTEGER) {
            *why = "reply element is not an integer";
            return RL_REPLY_MALFORMED;
        }

        /* only allowed may be negative, and only -1 */
        if (e->integer < ((i % 5 == 0 && i < 5 * n) ? -1 : 0)) {
            *why = "reply element is negative";
            return RL_REPLY_MALFORMED;
        }
    }

    now = reply->element[5 * n]->integer;

    for (i = 0; i < n; i++) {
        for (k = 0; k < 5; k++) {
            v[k] = reply->element[5 * i + k]->integer;
        }

        if (v[0] > 1) {
            *why = "allowed flag is neither -1, 0 nor 1";
            return RL_REPLY_MALFORMED;
        }

        if (v[0] == 1 && v[2] != 0) {
            *why = "allowed with a retry time";
            return RL_REPLY_MALFORMED;
        }

        /* a denial that names no retry time would make Retry-After a lie */
        if (v[0] == 0 && v[2] == 0) {
            *why = "denied without a retry time";
            return RL_REPLY_MALFORMED;
        }

        if (v[0] >= 0 && v[4] == 0) {
            *why = "a check run without its t";
            return RL_REPLY_MALFORMED;
        }

        res = &results[i];
        res->allowed = (int) v[0];
        res->remaining = v[1];
        res->retry_after_ms = v[2];
        res->reset_ms = v[3];
        res->t_ms = v[4];
        res->now_ms = now;
    }

    *now_ms = now;

    return RL_REPLY_OK;
}


int
rl_reply_decode_refund(const redisReply *reply, long long *now_ms,
    const char **why)
{
    int                rc;
    size_t             i;
    const redisReply  *e;

    rc = rl_reply_error(reply, why);

    if (rc != RL_REPLY_OK) {
        return rc;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        *why = "reply is not an array of 2 elements";
        return RL_REPLY_MALFORMED;
    }

    for (i = 0; i < 2; i++) {
        e = reply->element[i];

        if (e == NULL || e->type != REDIS_REPLY_INTEGER || e->integer < 0) {
            *why = "reply element is not a non-negative integer";
            return RL_REPLY_MALFORMED;
        }
    }

    *now_ms = reply->element[1]->integer;

    return RL_REPLY_OK;
}


long long
rl_retry_after_seconds(long long ms)
{
    long long  s;

    s = (ms + 999) / 1000;

    return s < 1 ? 1 : s;
}


long long
rl_reset_seconds(long long ms)
{
    return ms <= 0 ? 0 : (ms + 999) / 1000;
}
