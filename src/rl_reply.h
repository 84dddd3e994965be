
/*
 * Decoding the limiter scripts' replies: nginx-free, so unit tests can drive
 * it with replies built by hiredis' own reader.
 */


#ifndef _RL_REPLY_H_INCLUDED_
#define _RL_REPLY_H_INCLUDED_


#include <stdint.h>

#include <hiredis/hiredis.h>


typedef struct {
    int         allowed;          /* 1, 0; check.lua: RL_CHECK_LATE,
                                     RL_CHECK_RESEND */
    long long   remaining;
    long long   retry_after_ms;   /* 0 when allowed */
    long long   reset_ms;         /* until the full quota is back */
    long long   t_ms;             /* check.lua: within which no more than
                                     remaining pass; -1: not said */
    long long   now_ms;           /* the shard's clock, -1: not said */

    /*
     * The rule check.lua read for the check, to be cached: all three -1
     * when it read none (the fields were empty, or the check did not run),
     * all three 0 when the customer has no rule (absent, deleted or
     * garbled), else the rule: limit, window in seconds and
     * RL_RULE_ALGORITHM_* (NONE: the policy's own)
     */
    long long   rule_limit;
    long long   rule_window;
    int         rule_algorithm;

    /*
     * How long what was read stays true: -1 with a rule not read; 0 when
     * it does not end by itself; else the ms until the rule read ends (its
     * "expires_at"), when a rule behind it or none applies
     */
    long long   rule_ttl_ms;
} rl_check_result_t;


/* check.lua's allowed, besides 1 and 0 */
#define RL_CHECK_LATE       -1    /* the group ran after its deadline */
#define RL_CHECK_RESEND     -2    /* a rule read names another algorithm
                                     than the check was sent with: its
                                     group took nothing, to be sent again
                                     under the rule's algorithm */


#define RL_REPLY_OK          0
#define RL_REPLY_NOSCRIPT    1    /* the script is not cached: send EVAL */
#define RL_REPLY_ERROR       2    /* Redis answered an error */
#define RL_REPLY_MALFORMED   3    /* not what the scripts return */
#define RL_REPLY_EXPIRED     4    /* run after its deadline: nothing counted */


/*
 * Decodes the reply of lua/check.lua for n checks: 9 integers per check
 * {allowed, remaining, retry_ms, reset_ms, t_ms, rule_limit, rule_window,
 * rule_algorithm, rule_ttl_ms}, then now_ms, into results[0 .. n-1] (each with now_ms)
 * and *now_ms.  allowed RL_CHECK_LATE (the check's group ran after its
 * deadline, nothing counted) and RL_CHECK_RESEND (its group took nothing:
 * a rule read names another algorithm) are no error here: each check says
 * so in results[i].allowed; what such a check says beside it and its rule
 * is not judged.  RL_REPLY_NOSCRIPT, RL_REPLY_ERROR (*why: Redis' message)
 * or RL_REPLY_MALFORMED (wrong type or length, an element that is no
 * integer or out of its range: allowed not -2, -1, 0 or 1, a negative
 * number, an allowed check with a retry time, a denied one without, a
 * check run without its t; a rule neither -1 -1 -1 -1, 0 0 0 and a ttl
 * nor a limit, window and algorithm within the bounds of rl_rule.h and a
 * ttl; a reply with
 * checks to resend of which none carries a rule naming an algorithm);
 * then results and *now_ms are unspecified.
 */
int rl_reply_decode_batch(const redisReply *reply, size_t n,
    rl_check_result_t *results, long long *now_ms, const char **why);

/*
 * Decodes the reply of lua/refund.lua, {refunded, now_ms}: RL_REPLY_OK
 * with *now_ms set, or as above.
 */
int rl_reply_decode_refund(const redisReply *reply, long long *now_ms,
    const char **why);

/* whole seconds for Retry-After: rounded up, at least 1 */
long long rl_retry_after_seconds(long long ms);

/* whole seconds until a quota is full again: rounded up, 0 when full */
long long rl_reset_seconds(long long ms);


#endif /* _RL_REPLY_H_INCLUDED_ */
