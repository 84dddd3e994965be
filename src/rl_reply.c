
/*
 * Decoding the limiter scripts' replies.
 */


#include <string.h>

#include "rl_reply.h"


int
rl_reply_decode_check(const redisReply *reply, rl_check_result_t *result,
    const char **why)
{
    size_t             i;
    long long          v[5];
    const redisReply  *e;

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

    if (reply->type != REDIS_REPLY_ARRAY
        || (reply->elements != 4 && reply->elements != 5))
    {
        *why = "reply is not an array of 4 or 5 elements";
        return RL_REPLY_MALFORMED;
    }

    for (i = 0; i < reply->elements; i++) {
        e = reply->element[i];

        if (e == NULL || e->type != REDIS_REPLY_INTEGER
            || e->integer < (i == 0 ? -1 : 0))
        {
            *why = "reply element is not a non-negative integer";
            return RL_REPLY_MALFORMED;
        }

        v[i] = e->integer;
    }

    result->now_ms = (reply->elements == 5) ? v[4] : -1;

    if (v[0] == -1) {
        *why = "the check ran after its deadline";
        return RL_REPLY_EXPIRED;
    }

    if (v[0] > 1) {
        *why = "allowed flag is neither 0 nor 1";
        return RL_REPLY_MALFORMED;
    }

    /* a denial that names no retry time would make Retry-After a lie */
    if (v[0] == 0 && v[2] == 0) {
        *why = "denied without a retry time";
        return RL_REPLY_MALFORMED;
    }

    result->allowed = (int) v[0];
    result->remaining = v[1];
    result->retry_after_ms = v[2];
    result->reset_ms = v[3];

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
