
/*
 * Decoding the limiter scripts' replies.
 */


#include <string.h>

#include "rl_reply.h"
#include "rl_rule.h"


/* the most checks lua/check.lua takes in one call */
#define RL_REPLY_MAX_CHECKS  1024

/* the integers of lua/check.lua's reply per check */
#define RL_REPLY_PER_CHECK   9


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
    int                 rc, resend, named;
    size_t              i, k;
    long long           v[RL_REPLY_PER_CHECK], now, least;
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

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != RL_REPLY_PER_CHECK * n + 1)
    {
        *why = "reply is not an array of 9 integers per check and the clock";
        return RL_REPLY_MALFORMED;
    }

    for (i = 0; i < reply->elements; i++) {
        e = reply->element[i];

        if (e == NULL || e->type != REDIS_REPLY_INTEGER) {
            *why = "reply element is not an integer";
            return RL_REPLY_MALFORMED;
        }

        /*
         * only allowed may be negative, down to -2, and the rule (-1: not
         * read)
         */

        k = i % RL_REPLY_PER_CHECK;
        least = 0;

        if (i < RL_REPLY_PER_CHECK * n) {
            if (k == 0) {
                least = RL_CHECK_RESEND;

            } else if (k >= 5) {
                least = -1;
            }
        }

        if (e->integer < least) {
            *why = "reply element is negative";
            return RL_REPLY_MALFORMED;
        }
    }

    now = reply->element[RL_REPLY_PER_CHECK * n]->integer;
    resend = 0;
    named = 0;

    for (i = 0; i < n; i++) {
        for (k = 0; k < RL_REPLY_PER_CHECK; k++) {
            v[k] = reply->element[RL_REPLY_PER_CHECK * i + k]->integer;
        }

        if (v[0] > 1) {
            *why = "allowed flag is neither -2, -1, 0 nor 1";
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

        /*
         * the rule: not read, none, or one the admin endpoint could store;
         * the time it stays in force only with a rule read (0: none ends)
         */

        if (!((v[5] == -1 && v[6] == -1 && v[7] == -1 && v[8] == -1)
              || (v[5] == 0 && v[6] == 0 && v[7] == 0 && v[8] >= 0)
              || (v[5] >= 1 && v[5] <= RL_RULE_MAX_LIMIT
                  && v[6] >= RL_RULE_MIN_WINDOW && v[6] <= RL_RULE_MAX_WINDOW
                  && v[7] >= RL_RULE_ALGORITHM_NONE
                  && v[7] <= RL_RULE_ALGORITHM_SLIDING_WINDOW
                  && v[8] >= 0)))
        {
            *why = "rule is neither not read, none, nor a rule in bounds";
            return RL_REPLY_MALFORMED;
        }

        if (v[0] == RL_CHECK_RESEND) {
            resend = 1;

            /* the check that sends its group back names the algorithm */
            if (v[5] > 0 && v[7] != RL_RULE_ALGORITHM_NONE) {
                named = 1;
            }
        }

        res = &results[i];
        res->allowed = (int) v[0];
        res->remaining = v[1];
        res->retry_after_ms = v[2];
        res->reset_ms = v[3];
        res->t_ms = v[4];
        res->now_ms = now;
        res->rule_limit = v[5];
        res->rule_window = v[6];
        res->rule_algorithm = (int) v[7];
        res->rule_ttl_ms = v[8];
    }

    if (resend && !named) {
        *why = "checks to resend, yet no rule names an algorithm";
        return RL_REPLY_MALFORMED;
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
