
/*
 * Per-customer limit rules, for every policy of the customer or for one, as
 * the admin endpoint takes them (JSON) and as Redis stores them: validation
 * and encoding, nginx-free, so unit tests can drive it directly.  yajl
 * parses and generates the JSON.
 */


#ifndef _RL_RULE_H_INCLUDED_
#define _RL_RULE_H_INCLUDED_


#include <stddef.h>

#include <yajl/yajl_gen.h>


#define RL_RULE_MAX_CUSTOMER_ID   256
#define RL_RULE_MAX_POLICY        64       /* a policy's name */
#define RL_RULE_MAX_LIMIT         1000000000
#define RL_RULE_MIN_WINDOW        1
#define RL_RULE_MAX_WINDOW        86400
#define RL_RULE_MAX_BODY          4096     /* larger bodies get 413 before parsing */

/*
 * An expiry is whole seconds since the epoch, from 1 (1970-01-01T00:00:01Z)
 * to 9999-12-31T23:59:59Z, the last instant RFC 3339 can write
 */
#define RL_RULE_MAX_EXPIRES       253402300799LL

#define RL_RULE_ALGORITHM_NONE            0   /* not given: the location's own */
#define RL_RULE_ALGORITHM_TOKEN_BUCKET    1
#define RL_RULE_ALGORITHM_SLIDING_WINDOW  2


/*
 * The part of a rule that limits, as every layer carries it: the admin
 * endpoint, the store, the rule cache, the check.  Whole seconds and
 * RL_RULE_ALGORITHM_*, the same bounds everywhere (the limiter scripts get
 * theirs from here too, see ngx_http_ratelimit_handler.c).  limit 0: no
 * rule (the location's default); algorithm NONE: the location's.
 */

typedef struct {
    long long      limit;
    long long      window;      /* seconds */
    int            algorithm;   /* RL_RULE_ALGORITHM_* */
    long long      expires;     /* epoch seconds, 0: never */
} rl_limit_t;


/*
 * customer_id and policy are not NUL-terminated: all 256 (64) bytes may be
 * the id (the name).  policy_len 0: the rule of every policy of the
 * customer; else the rule of that "ratelimit_policy" alone.
 */

typedef struct {
    unsigned char  customer_id[RL_RULE_MAX_CUSTOMER_ID];
    size_t         customer_id_len;
    unsigned char  policy[RL_RULE_MAX_POLICY];
    size_t         policy_len;
    long long      limit;
    long long      window;      /* seconds */
    int            algorithm;   /* RL_RULE_ALGORITHM_* */
    long long      expires_at;  /* epoch seconds, 0: never */
} rl_rule_t;


/*
 * "field" is a string literal, except for an unknown field: its (shortened)
 * name is then kept in message[] itself, after the message's own NUL, so it
 * lives as long as this very struct does.
 */

typedef struct {
    const char    *field;       /* the field at fault ("limit"), or NULL for the body as a whole */
    char           message[200];
} rl_rule_error_t;


/*
 * 0 and *rule filled, or -1 and *err says why; never both partly.
 * "expires_at" is optional: an RFC 3339 date-time or whole epoch seconds
 * (or null: none); whether it is in the past is for the caller to tell,
 * with rl_rule_check_expiry().  Bodies
 * over RL_RULE_MAX_BODY are refused as a whole.  Strict JSON (RFC 8259): no
 * comments, no control characters but tab, CR and LF, nothing but
 * whitespace after the object.  "policy" is optional, a name as
 * rl_rule_check_policy_name() takes it; whether such a policy is declared
 * is for the caller to tell.
 */
int rl_rule_parse_json(const char *body, size_t len, rl_rule_t *rule,
    rl_rule_error_t *err);

/*
 * 1..256 bytes, no control characters (0x00-0x1f, 0x7f), valid UTF-8
 * (no overlong forms, no surrogates), and no ".." segment that climbs above
 * the id's start ("..", "../x"), which no request URI can name: 0, else -1
 * with err (field "customer_id").
 */
int rl_rule_check_customer_id(const unsigned char *id, size_t len,
    rl_rule_error_t *err);

/*
 * 1 if the bytes are valid UTF-8 (no overlong forms, no surrogates) and
 * can go into a JSON string as they are, else 0.
 */
int rl_rule_valid_utf8(const unsigned char *p, size_t len);

/*
 * A policy name: 1..64 of letters, digits, "_", "-" and ".", not "default"
 * (the name of every location's unnamed policy): 0, else -1 with err (field
 * "policy").
 */
int rl_rule_check_policy_name(const unsigned char *name, size_t len,
    rl_rule_error_t *err);

/*
 * An expiry at or before "now" (epoch seconds) would store a rule that never
 * applies: 0, else -1 with err (field "expires_at").  No expiry is fine.
 */
int rl_rule_check_expiry(const rl_rule_t *rule, long long now,
    rl_rule_error_t *err);

/*
 * RFC 3339 date-time ("2026-12-01T00:00:00Z", "2026-12-01T02:00:00.250+02:00",
 * "T" and "Z" in either case) to epoch seconds, a fraction rounded up: the
 * rule holds at least until the instant written.  0 and *epoch, or -1 when
 * malformed, not a real date or time (February 30th, 24:00) or outside
 * 1970-01-01T00:00:01Z .. RL_RULE_MAX_EXPIRES.  A leap second (:60) is the
 * first second of the next minute.
 */
int rl_rule_parse_time(const char *s, size_t len, long long *epoch);

/*
 * Epoch seconds as RFC 3339 UTC, "2026-12-01T00:00:00Z", NUL-terminated
 * into buf (21 bytes): the length, or 0 when out of range or too small.
 */
size_t rl_rule_format_time(long long epoch, char *buf, size_t size);

/*
 * The form stored in Redis, e.g. "10000 60 token_bucket", "100 60 -" when
 * algorithm is NONE, with " <epoch seconds>" after it when the rule
 * expires; NUL-terminated; returns length written (without NUL),
 * or 0 if size is too small (or the rule is out of range).
 */
size_t rl_rule_encode(const rl_rule_t *rule, char *buf, size_t size);

/*
 * Parses the stored form back into limit/window/algorithm (customer_id and
 * policy untouched); 0, or -1 if garbled or out of range (*rule then untouched).
 * Only the exact form rl_rule_encode() writes is taken.
 */
int rl_rule_decode(const char *s, size_t len, rl_rule_t *rule);

/*
 * {"customer_id":"acme","policy":"burst","limit":10000,"window":60,
 * "algorithm":"token_bucket","expires_at":"2026-12-01T00:00:00Z"} ("policy"
 * omitted when policy_len is 0, "algorithm" when NONE, "expires_at" when
 * 0) + "\n", NUL-terminated; length (without NUL), or 0
 * if size too small (or customer_id or policy is not valid UTF-8).
 */
size_t rl_rule_to_json(const rl_rule_t *rule, char *buf, size_t size);

/* the same object into a generator (of a list): 0, or -1 */
int rl_rule_gen(yajl_gen g, const rl_rule_t *rule);

/*
 * {"error":"<message>","field":"limit"} (or "field":null) + "\n",
 * NUL-terminated; length (without NUL), or 0 if too small.
 */
size_t rl_rule_error_json(const rl_rule_error_t *err, char *buf,
    size_t size);


#endif /* _RL_RULE_H_INCLUDED_ */
