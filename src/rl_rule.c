
/*
 * Per-customer limit rules, for every policy of the customer or for one:
 * the admin endpoint's JSON and the form stored in Redis.
 */


#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "rl_rule.h"


/*
 * How many bytes of an unknown field's name are quoted back: the message
 * and a copy of the name have to share rl_rule_error_t.message.
 */
#define RL_RULE_NAME_QUOTED  40

/* a rule's stored form is at most "1000000000 86400 sliding_window" */
#define RL_RULE_ENCODED_MAX  64


#if defined(__GNUC__)
#define RL_RULE_PRINTF(f, a)  __attribute__((format(printf, f, a)))
#else
#define RL_RULE_PRINTF(f, a)
#endif


/*
 * What the scan before the tree parse learns.  yajl's tree keeps strings
 * and keys NUL-terminated, so one with an escaped "\u0000" would reach us
 * cut short and look valid: only the parser's own callbacks see the whole
 * string.
 */

typedef struct {
    size_t          depth;
    size_t          members;        /* top-level keys so far */
    size_t          nul_member;     /* 1 + the first member with a NUL in
                                       it, or 0 */
    int             nul_in_key;     /* the NUL is in that member's key */
    size_t          key_len;
    unsigned char   key[RL_RULE_NAME_QUOTED + 4];   /* that key's start:
                                                       enough to quote */
} rl_rule_scan_t;


static int rl_rule_fail(rl_rule_error_t *err, const char *field,
    const char *fmt, ...) RL_RULE_PRINTF(3, 4);
static int rl_rule_fail_yajl(rl_rule_error_t *err, const char *what,
    const char *text);
static int rl_rule_fail_unknown(rl_rule_error_t *err,
    const unsigned char *name, size_t len);
static size_t rl_rule_utf8(const unsigned char *p, size_t len);
static int rl_rule_scan(const char *body, size_t len, rl_rule_scan_t *scan,
    rl_rule_error_t *err);
static int rl_rule_scan_open(void *data);
static int rl_rule_scan_close(void *data);
static int rl_rule_scan_key(void *data, const unsigned char *key,
    size_t len);
static int rl_rule_scan_string(void *data, const unsigned char *s,
    size_t len);
static int rl_rule_validate(yajl_val root, rl_rule_scan_t *scan,
    rl_rule_t *rule, rl_rule_error_t *err);
static int rl_rule_integer(yajl_val v, long long min, long long max,
    long long *out);
static const char *rl_rule_not(yajl_val v, yajl_type wanted);
static const char *rl_rule_algorithm_name(int algorithm);
static const char *rl_rule_decode_number(const char *p, const char *last,
    long long max, long long *out);
static size_t rl_rule_gen_done(yajl_gen g, int ok, char *buf, size_t size);
static int rl_rule_expires(yajl_val v, int nul, long long *out,
    rl_rule_error_t *err);
static const char *rl_rule_digits(const char *p, const char *last, size_t n,
    int *out);
static long long rl_rule_days(long long y, int m, int d);


int
rl_rule_parse_json(const char *body, size_t len, rl_rule_t *rule,
    rl_rule_error_t *err)
{
    int             rc;
    char            text[RL_RULE_MAX_BODY + 1], errbuf[128];
    size_t          i;
    yajl_val        root;
    unsigned char   c;
    rl_rule_t       r;
    rl_rule_scan_t  scan;

    if (len > RL_RULE_MAX_BODY) {
        return rl_rule_fail(err, NULL, "the body is over %d bytes",
                            RL_RULE_MAX_BODY);
    }

    if (len == 0) {
        return rl_rule_fail(err, NULL, "malformed JSON: the body is empty");
    }

    /*
     * RFC 8259 allows no control character but tab, LF and CR anywhere:
     * not as whitespace between tokens (yajl takes form feed and vertical
     * tab there) nor raw inside a string.  A NUL would also end the body
     * early for the tree parser, which takes a C string.
     */

    for (i = 0; i < len; i++) {
        c = (unsigned char) body[i];

        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            return rl_rule_fail(err, NULL,
                                "malformed JSON: control character 0x%02x at"
                                " offset %lu (only space, tab, CR and LF may"
                                " separate tokens)",
                                c, (unsigned long) i);
        }
    }

    /*
     * The scan also checks the syntax, strictly (the tree parser would take
     * comments), and leaves the tree parser nothing to fail on but memory:
     * some yajl versions leak the tree built so far on a parse error.
     */

    if (rl_rule_scan(body, len, &scan, err) != 0) {
        return -1;
    }

    memcpy(text, body, len);
    text[len] = '\0';

    root = yajl_tree_parse(text, errbuf, sizeof(errbuf));

    if (root == NULL) {
        return rl_rule_fail_yajl(err, "cannot parse the body: ", errbuf);
    }

    memset(&r, 0, sizeof(rl_rule_t));

    rc = rl_rule_validate(root, &scan, &r, err);

    yajl_tree_free(root);

    if (rc != 0) {
        return -1;
    }

    *rule = r;

    return 0;
}


int
rl_rule_check_policy_name(const unsigned char *name, size_t len,
    rl_rule_error_t *err)
{
    size_t         i;
    unsigned char  c;

    if (len == 0 || len > RL_RULE_MAX_POLICY) {
        return rl_rule_fail(err, "policy",
                            "policy must be a name of 1 to %d characters,"
                            " not %lu", RL_RULE_MAX_POLICY,
                            (unsigned long) len);
    }

    for (i = 0; i < len; i++) {
        c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
        {
            return rl_rule_fail(err, "policy",
                                "policy must be letters, digits, \"_\", \"-\""
                                " and \".\" (byte 0x%02x at offset %lu)",
                                c, (unsigned long) i);
        }
    }

    /* every location's unnamed policy: a rule for it would be ambiguous */

    if (len == 7 && memcmp(name, "default", 7) == 0) {
        return rl_rule_fail(err, "policy",
                            "policy \"default\" is reserved for the unnamed"
                            " policy of each location");
    }

    return 0;
}


int
rl_rule_check_customer_id(const unsigned char *id, size_t len,
    rl_rule_error_t *err)
{
    size_t  i, n, end, depth;

    if (len == 0 || len > RL_RULE_MAX_CUSTOMER_ID) {
        return rl_rule_fail(err, "customer_id",
                            "customer_id must be a string of 1 to %d bytes,"
                            " not %lu bytes",
                            RL_RULE_MAX_CUSTOMER_ID, (unsigned long) len);
    }

    for (i = 0; i < len; i += n) {

        if (id[i] < 0x20 || id[i] == 0x7f) {
            return rl_rule_fail(err, "customer_id",
                                "customer_id must not contain control"
                                " characters (byte 0x%02x at offset %lu)",
                                id[i], (unsigned long) i);
        }

        n = rl_rule_utf8(&id[i], len - i);

        if (n == 0) {
            return rl_rule_fail(err, "customer_id",
                                "customer_id must be valid UTF-8"
                                " (byte 0x%02x at offset %lu)",
                                id[i], (unsigned long) i);
        }
    }

    /*
     * The id is the URI path after "<admin location>/".  nginx resolves
     * ".." segments before it picks a location, so an id whose ".." climb
     * above its own start ("..", "../x", "a/../..") takes any request
     * naming it out of the admin location: nothing could read or delete it.
     */

    depth = 0;

    for (i = 0; i <= len; i = end + 1) {
        end = i;

        while (end < len && id[end] != '/') {
            end++;
        }

        if (end - i == 2 && id[i] == '.' && id[i + 1] == '.') {
            if (depth == 0) {
                return rl_rule_fail(err, "customer_id",
                                    "customer_id must not climb above itself"
                                    " with \"..\" segments: a request for it"
                                    " would leave the admin location");
            }

            depth--;

        } else if (end - i != 0 && !(end - i == 1 && id[i] == '.')) {
            depth++;
        }
    }

    return 0;
}


size_t
rl_rule_encode(const rl_rule_t *rule, char *buf, size_t size)
{
    int          n;
    char         tmp[RL_RULE_ENCODED_MAX];
    const char  *name;

    /* what decode would refuse must not be stored in the first place */

    if (rule->limit < 1 || rule->limit > RL_RULE_MAX_LIMIT
        || rule->window < RL_RULE_MIN_WINDOW
        || rule->window > RL_RULE_MAX_WINDOW)
    {
        return 0;
    }

    if (rule->algorithm == RL_RULE_ALGORITHM_NONE) {
        name = "-";

    } else {
        name = rl_rule_algorithm_name(rule->algorithm);
        if (name == NULL) {
            return 0;
        }
    }

    if (rule->expires_at < 0 || rule->expires_at > RL_RULE_MAX_EXPIRES) {
        return 0;
    }

    /* a rule that never expires keeps the form of earlier versions */

    if (rule->expires_at) {
        n = snprintf(tmp, sizeof(tmp), "%lld %lld %s %lld",
                     rule->limit, rule->window, name, rule->expires_at);

    } else {
        n = snprintf(tmp, sizeof(tmp), "%lld %lld %s",
                     rule->limit, rule->window, name);
    }

    /* formatted aside, so that a short buf is left without half a rule */

    if (n < 0 || (size_t) n >= sizeof(tmp) || (size_t) n >= size) {
        return 0;
    }

    memcpy(buf, tmp, (size_t) n + 1);

    return (size_t) n;
}


int
rl_rule_decode(const char *s, size_t len, rl_rule_t *rule)
{
    int          algorithm;
    size_t       rest;
    long long    limit, window, expires;
    const char  *p, *last, *sp;

    p = s;
    last = s + len;
    expires = 0;

    p = rl_rule_decode_number(p, last, RL_RULE_MAX_LIMIT, &limit);
    if (p == NULL || p == last || *p++ != ' ') {
        return -1;
    }

    p = rl_rule_decode_number(p, last, RL_RULE_MAX_WINDOW, &window);
    if (p == NULL || p == last || *p++ != ' ') {
        return -1;
    }

    /* " <epoch seconds>" after the algorithm: the rule expires */

    sp = memchr(p, ' ', (size_t) (last - p));

    if (sp != NULL) {
        if (rl_rule_decode_number(sp + 1, last, RL_RULE_MAX_EXPIRES,
                                  &expires)
            != last)
        {
            return -1;
        }

        last = sp;
    }

    rest = (size_t) (last - p);

    if (rest == 1 && *p == '-') {
        algorithm = RL_RULE_ALGORITHM_NONE;

    } else if (rest == sizeof("token_bucket") - 1
               && memcmp(p, "token_bucket", rest) == 0)
    {
        algorithm = RL_RULE_ALGORITHM_TOKEN_BUCKET;

    } else if (rest == sizeof("sliding_window") - 1
               && memcmp(p, "sliding_window", rest) == 0)
    {
        algorithm = RL_RULE_ALGORITHM_SLIDING_WINDOW;

    } else {
        return -1;
    }

    rule->limit = limit;
    rule->window = window;
    rule->algorithm = algorithm;
    rule->expires_at = expires;

    return 0;
}


size_t
rl_rule_to_json(const rl_rule_t *rule, char *buf, size_t size)
{
    int       ok;
    yajl_gen  g;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return 0;
    }

    /* an answer that is not UTF-8 is no JSON: better none */
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    ok = (rl_rule_gen(g, rule) == 0);

    return rl_rule_gen_done(g, ok, buf, size);
}


int
rl_rule_gen(yajl_gen g, const rl_rule_t *rule)
{
    int          ok;
    char         when[32];
    size_t       when_len;
    const char  *name;

    when_len = 0;

    if (rule->expires_at) {
        when_len = rl_rule_format_time(rule->expires_at, when, sizeof(when));
        if (when_len == 0) {
            return -1;
        }
    }

    if (rule->customer_id_len > RL_RULE_MAX_CUSTOMER_ID
        || rule->policy_len > RL_RULE_MAX_POLICY)
    {
        return -1;
    }

    name = NULL;

    if (rule->algorithm != RL_RULE_ALGORITHM_NONE) {
        name = rl_rule_algorithm_name(rule->algorithm);
        if (name == NULL) {
            return -1;
        }
    }

    ok = yajl_gen_map_open(g) == yajl_gen_status_ok
         && yajl_gen_string(g, (const unsigned char *) "customer_id", 11)
            == yajl_gen_status_ok
         && yajl_gen_string(g, rule->customer_id, rule->customer_id_len)
            == yajl_gen_status_ok;

    if (ok && rule->policy_len) {
        ok = yajl_gen_string(g, (const unsigned char *) "policy", 6)
             == yajl_gen_status_ok
             && yajl_gen_string(g, rule->policy, rule->policy_len)
                == yajl_gen_status_ok;
    }

    ok = ok
         && yajl_gen_string(g, (const unsigned char *) "limit", 5)
            == yajl_gen_status_ok
         && yajl_gen_integer(g, rule->limit) == yajl_gen_status_ok
         && yajl_gen_string(g, (const unsigned char *) "window", 6)
            == yajl_gen_status_ok
         && yajl_gen_integer(g, rule->window) == yajl_gen_status_ok;

    if (ok && name != NULL) {
        ok = yajl_gen_string(g, (const unsigned char *) "algorithm", 9)
             == yajl_gen_status_ok
             && yajl_gen_string(g, (const unsigned char *) name,
                                strlen(name))
                == yajl_gen_status_ok;
    }

    if (ok && when_len) {
        ok = yajl_gen_string(g, (const unsigned char *) "expires_at", 10)
             == yajl_gen_status_ok
             && yajl_gen_string(g, (const unsigned char *) when, when_len)
                == yajl_gen_status_ok;
    }

    ok = ok && yajl_gen_map_close(g) == yajl_gen_status_ok;

    return ok ? 0 : -1;
}


int
rl_rule_check_expiry(const rl_rule_t *rule, long long now,
    rl_rule_error_t *err)
{
    char  when[32];

    if (rule->expires_at == 0 || rule->expires_at > now) {
        return 0;
    }

    if (rl_rule_format_time(rule->expires_at, when, sizeof(when)) == 0) {
        when[0] = '\0';
    }

    return rl_rule_fail(err, "expires_at",
                        "expires_at %s is not in the future: the rule would"
                        " never apply", when);
}


/*
 * date-time = full-date "T" full-time (RFC 3339, section 5.6):
 * YYYY-MM-DD "T" HH:MM:SS [. digits] ("Z" | ("+" | "-") HH:MM)
 */

int
rl_rule_parse_time(const char *s, size_t len, long long *epoch)
{
    int          year, month, day, hour, min, sec, oh, om, frac, mdays;
    char         sign;
    long long    t;
    const char  *p, *last;

    static const int  days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30,
                                 31 };

    p = s;
    last = s + len;
    frac = 0;

    if ((p = rl_rule_digits(p, last, 4, &year)) == NULL
        || p == last || *p++ != '-'
        || (p = rl_rule_digits(p, last, 2, &month)) == NULL
        || p == last || *p++ != '-'
        || (p = rl_rule_digits(p, last, 2, &day)) == NULL
        || p == last || (*p != 'T' && *p != 't')
        || (p = rl_rule_digits(p + 1, last, 2, &hour)) == NULL
        || p == last || *p++ != ':'
        || (p = rl_rule_digits(p, last, 2, &min)) == NULL
        || p == last || *p++ != ':'
        || (p = rl_rule_digits(p, last, 2, &sec)) == NULL)
    {
        return -1;
    }

    if (p < last && *p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return -1;
        }

        while (p < last && *p >= '0' && *p <= '9') {
            frac |= (*p++ != '0');
        }
    }

    if (p == last) {
        return -1;
    }

    oh = 0;
    om = 0;

    if (*p == 'Z' || *p == 'z') {
        p++;

    } else if (*p == '+' || *p == '-') {
        sign = *p;

        if ((p = rl_rule_digits(p + 1, last, 2, &oh)) == NULL
            || p == last || *p++ != ':'
            || (p = rl_rule_digits(p, last, 2, &om)) == NULL
            || oh > 23 || om > 59)
        {
            return -1;
        }

        if (sign == '-') {
            oh = -oh;
            om = -om;
        }

    } else {
        return -1;
    }

    if (p != last) {
        return -1;
    }

    mdays = 0;

    if (month >= 1 && month <= 12) {
        mdays = days[month - 1];

        if (month == 2
            && year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))
        {
            mdays = 29;
        }
    }

    if (day < 1 || day > mdays || hour > 23 || min > 59 || sec > 60) {
        return -1;
    }

    t = rl_rule_days(year, month, day) * 86400
        + hour * 3600 + min * 60 + sec
        - (long long) oh * 3600 - (long long) om * 60
        + frac;

    if (t < 1 || t > RL_RULE_MAX_EXPIRES) {
        return -1;
    }

    *epoch = t;

    return 0;
}


size_t
rl_rule_format_time(long long epoch, char *buf, size_t size)
{
    int        n;
    long long  days, secs, y, m, d, era, doe, yoe, doy, mp;

    if (epoch < 0 || epoch > RL_RULE_MAX_EXPIRES) {
        return 0;
    }

    days = epoch / 86400;
    secs = epoch % 86400;

    /*
     * The civil date of a day count, in 400-year eras that start on March
     * 1st, so that a leap day ends its year.
     */

    days += 719468;
    era = days / 146097;
    doe = days - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y = yoe + era * 400 + (m <= 2);

    n = snprintf(buf, size, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lldZ",
                 y, m, d, secs / 3600, secs / 60 % 60, secs % 60);

    if (n < 0 || (size_t) n >= size) {
        return 0;
    }

    return (size_t) n;
}


size_t
rl_rule_error_json(const rl_rule_error_t *err, char *buf, size_t size)
{
    int          ok;
    size_t       len;
    yajl_gen     g;
    const char  *end;

    /* a message cut short by whoever filled it in may lack its NUL */

    end = memchr(err->message, '\0', sizeof(err->message));
    len = end ? (size_t) (end - err->message) : sizeof(err->message);

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return 0;
    }

    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    ok = yajl_gen_map_open(g) == yajl_gen_status_ok
         && yajl_gen_string(g, (const unsigned char *) "error", 5)
            == yajl_gen_status_ok
         && yajl_gen_string(g, (const unsigned char *) err->message, len)
            == yajl_gen_status_ok
         && yajl_gen_string(g, (const unsigned char *) "field", 5)
            == yajl_gen_status_ok;

    if (ok) {
        if (err->field == NULL) {
            ok = yajl_gen_null(g) == yajl_gen_status_ok;

        } else {
            ok = yajl_gen_string(g, (const unsigned char *) err->field,
                                 strlen(err->field))
                 == yajl_gen_status_ok;
        }
    }

    ok = ok && yajl_gen_map_close(g) == yajl_gen_status_ok;

    return rl_rule_gen_done(g, ok, buf, size);
}


static int
rl_rule_fail(rl_rule_error_t *err, const char *field, const char *fmt, ...)
{
    va_list  args;

    if (err == NULL) {
        return -1;
    }

    err->field = field;

    va_start(args, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, args);
    va_end(args);

    return -1;
}


/*
 * yajl's messages run over several lines when verbose, and end in a
 * newline anyway: an answer wants the first line only.
 */

static int
rl_rule_fail_yajl(rl_rule_error_t *err, const char *what, const char *text)
{
    size_t  n;

    n = strcspn(text, "\r\n");

    while (n > 0 && text[n - 1] == ' ') {
        n--;
    }

    if (n == 0) {
        return rl_rule_fail(err, NULL, "%sno reason given", what);
    }

    return rl_rule_fail(err, NULL, "%s%.*s", what, (int) n, text);
}


/*
 * The name is quoted in the message and copied after the message's NUL,
 * for err->field to point at: rl_rule_error_t has no other room for it.
 * Only whole UTF-8 characters are kept, and control characters or stray
 * bytes become '?', so the message stays one line of text.
 */

static int
rl_rule_fail_unknown(rl_rule_error_t *err, const unsigned char *name,
    size_t len)
{
    int     n;
    char    quoted[RL_RULE_NAME_QUOTED];
    size_t  i, k, q, name_at;

    q = 0;

    for (i = 0; i < len; i += k) {

        if (name[i] < 0x20 || name[i] == 0x7f) {
            k = 0;

        } else {
            k = rl_rule_utf8(&name[i], len - i);
        }

        if (q + (k ? k : 1) > sizeof(quoted)) {
            break;
        }

        if (k == 0) {
            quoted[q++] = '?';
            k = 1;

        } else {
            memcpy(&quoted[q], &name[i], k);
            q += k;
        }
    }

    if (err == NULL) {
        return -1;
    }

    n = snprintf(err->message, sizeof(err->message),
                 "unknown field \"%.*s%s\" (expected customer_id, policy,"
                 " limit, window, algorithm, expires_at)",
                 (int) q, quoted, i < len ? "..." : "");

    if (n < 0 || (size_t) n + 1 + q + 1 > sizeof(err->message)) {
        /* cannot happen with RL_RULE_NAME_QUOTED as it is */
        err->field = NULL;
        return -1;
    }

    name_at = (size_t) n + 1;

    memcpy(&err->message[name_at], quoted, q);
    err->message[name_at + q] = '\0';
    err->field = &err->message[name_at];

    return -1;
}


/*
 * The length of the valid UTF-8 character at p, or 0: no overlong forms,
 * no surrogates, nothing past U+10FFFF.
 */

int
rl_rule_valid_utf8(const unsigned char *p, size_t len)
{
    size_t  i, n;

    for (i = 0; i < len; i += n) {
        n = rl_rule_utf8(&p[i], len - i);
        if (n == 0) {
            return 0;
        }
    }

    return 1;
}


static size_t
rl_rule_utf8(const unsigned char *p, size_t len)
{
    size_t        n, i;
    unsigned int  c, min;

    c = p[0];

    if (c < 0x80) {
        return 1;
    }

    if (c < 0xc2) {
        /* a continuation byte, or the lead of an overlong 2-byte form */
        return 0;
    }

    if (c < 0xe0) {
        n = 2;
        c &= 0x1f;
        min = 0x80;

    } else if (c < 0xf0) {
        n = 3;
        c &= 0x0f;
        min = 0x800;

    } else if (c < 0xf5) {
        n = 4;
        c &= 0x07;
        min = 0x10000;

    } else {
        return 0;
    }

    if (len < n) {
        return 0;
    }

    for (i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }

        c = (c << 6) | (p[i] & 0x3f);
    }

    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
        return 0;
    }

    return n;
}


static int
rl_rule_scan(const char *body, size_t len, rl_rule_scan_t *scan,
    rl_rule_error_t *err)
{
    int                    rc;
    size_t                 rest;
    yajl_handle            h;
    yajl_status            status;
    unsigned char         *text;
    static const yajl_callbacks  callbacks = {
        NULL,                   /* null */
        NULL,                   /* boolean */
        NULL,                   /* integer */
        NULL,                   /* double */
        NULL,                   /* number */
        rl_rule_scan_string,    /* string */
        rl_rule_scan_open,      /* start map */
        rl_rule_scan_key,       /* map key */
        rl_rule_scan_close,     /* end map */
        rl_rule_scan_open,      /* start array */
        rl_rule_scan_close      /* end array */
    };

    memset(scan, 0, sizeof(rl_rule_scan_t));

    h = yajl_alloc(&callbacks, NULL, scan);
    if (h == NULL) {
        return rl_rule_fail(err, NULL, "cannot parse the body: out of memory");
    }

    /*
     * Without this yajl lexes on after the value, but takes an unfinished
     * token there ('{...} "lim') for the end of the text.  With it, it stops
     * right after the value and says where: only whitespace may follow.
     */

    yajl_config(h, yajl_allow_trailing_garbage, 1);

    status = yajl_parse(h, (const unsigned char *) body, len);

    rest = len;

    if (status == yajl_status_ok) {
        rest = yajl_get_bytes_consumed(h);

        while (rest < len && (body[rest] == ' ' || body[rest] == '\t'
                              || body[rest] == '\n' || body[rest] == '\r'))
        {
            rest++;
        }

        status = yajl_complete_parse(h);
    }

    rc = 0;

    if (rest < len) {
        rc = rl_rule_fail(err, NULL, "malformed JSON: bytes after the end"
                          " of the object (offset %lu)", (unsigned long) rest);

    } else if (status != yajl_status_ok) {
        text = yajl_get_error(h, 0, NULL, 0);

        rc = rl_rule_fail_yajl(err, "malformed JSON: ",
                               text ? (const char *) text : "");

        if (text != NULL) {
            yajl_free_error(h, text);
        }
    }

    yajl_free(h);

    return rc;
}


static int
rl_rule_scan_open(void *data)
{
    rl_rule_scan_t  *scan = data;

    scan->depth++;

    return 1;
}


static int
rl_rule_scan_close(void *data)
{
    rl_rule_scan_t  *scan = data;

    scan->depth--;

    return 1;
}


static int
rl_rule_scan_key(void *data, const unsigned char *key, size_t len)
{
    rl_rule_scan_t  *scan = data;

    if (scan->depth != 1) {
        /* a key inside a member's value is that value's trouble */
        return rl_rule_scan_string(data, key, len);
    }

    scan->members++;

    if (scan->nul_member == 0 && memchr(key, '\0', len) != NULL) {
        scan->nul_member = scan->members;
        scan->nul_in_key = 1;
        scan->key_len = len < sizeof(scan->key) ? len : sizeof(scan->key);
        memcpy(scan->key, key, scan->key_len);
    }

    return 1;
}


static int
rl_rule_scan_string(void *data, const unsigned char *s, size_t len)
{
    rl_rule_scan_t  *scan = data;

    if (scan->nul_member == 0 && scan->members > 0
        && memchr(s, '\0', len) != NULL)
    {
        scan->nul_member = scan->members;
    }

    return 1;
}


static int
rl_rule_validate(yajl_val root, rl_rule_scan_t *scan, rl_rule_t *rule,
    rl_rule_error_t *err)
{
    int          nul;
    size_t       i;
    yajl_val     v, id, policy, limit, window, algorithm, expires, *slot;
    const char  *key, *field, *s;

    if (!YAJL_IS_OBJECT(root)) {
        return rl_rule_fail(err, NULL, "the body must be a JSON object%s",
                            rl_rule_not(root, yajl_t_object));
    }

    id = NULL;
    policy = NULL;
    limit = NULL;
    window = NULL;
    algorithm = NULL;
    expires = NULL;

    for (i = 0; i < root->u.object.len; i++) {
        key = root->u.object.keys[i];
        v = root->u.object.values[i];
        nul = (i + 1 == scan->nul_member);

        if (nul && scan->nul_in_key) {
            return rl_rule_fail_unknown(err, scan->key, scan->key_len);
        }

        if (strcmp(key, "customer_id") == 0) {
            field = "customer_id";
            slot = &id;

        } else if (strcmp(key, "policy") == 0) {
            field = "policy";
            slot = &policy;

        } else if (strcmp(key, "limit") == 0) {
            field = "limit";
            slot = &limit;

        } else if (strcmp(key, "window") == 0) {
            field = "window";
            slot = &window;

        } else if (strcmp(key, "algorithm") == 0) {
            field = "algorithm";
            slot = &algorithm;

        } else if (strcmp(key, "expires_at") == 0) {
            field = "expires_at";
            slot = &expires;

        } else {
            return rl_rule_fail_unknown(err, (const unsigned char *) key,
                                        strlen(key));
        }

        /* the last of two would win silently, whichever the client meant */

        if (*slot != NULL) {
            return rl_rule_fail(err, field,
                                "field \"%s\" is given more than once",
                                field);
        }

        *slot = v;

        if (slot == &id) {
            if (!YAJL_IS_STRING(v)) {
                return rl_rule_fail(err, "customer_id",
                                    "customer_id must be a string of 1 to %d"
                                    " bytes%s",
                                    RL_RULE_MAX_CUSTOMER_ID,
                                    rl_rule_not(v, yajl_t_string));
            }

            s = YAJL_GET_STRING(v);

            /* the tree has the string only up to its first NUL */

            if (nul) {
                return rl_rule_fail(err, "customer_id",
                                    "customer_id must not contain control"
                                    " characters (byte 0x00 at offset %lu)",
                                    (unsigned long) strlen(s));
            }

            if (rl_rule_check_customer_id((const unsigned char *) s,
                                          strlen(s), err)
                != 0)
            {
                return -1;
            }

            rule->customer_id_len = strlen(s);
            memcpy(rule->customer_id, s, rule->customer_id_len);

        } else if (slot == &policy) {
            if (!YAJL_IS_STRING(v)) {
                return rl_rule_fail(err, "policy",
                                    "policy must be a name of 1 to %d"
                                    " characters%s", RL_RULE_MAX_POLICY,
                                    rl_rule_not(v, yajl_t_string));
            }

            s = YAJL_GET_STRING(v);

            /* cut short at its NUL, the name could look valid */

            if (nul) {
                return rl_rule_fail(err, "policy",
                                    "policy must be letters, digits, \"_\","
                                    " \"-\" and \".\" (byte 0x00 at offset"
                                    " %lu)", (unsigned long) strlen(s));
            }

            if (rl_rule_check_policy_name((const unsigned char *) s,
                                          strlen(s), err)
                != 0)
            {
                return -1;
            }

            rule->policy_len = strlen(s);
            memcpy(rule->policy, s, rule->policy_len);

        } else if (slot == &limit) {
            if (rl_rule_integer(v, 1, RL_RULE_MAX_LIMIT, &rule->limit) != 0)
            {
                return rl_rule_fail(err, "limit",
                                    "limit must be an integer from 1 to %d%s",
                                    RL_RULE_MAX_LIMIT,
                                    rl_rule_not(v, yajl_t_number));
            }

        } else if (slot == &window) {
            if (rl_rule_integer(v, RL_RULE_MIN_WINDOW, RL_RULE_MAX_WINDOW,
                                &rule->window)
                != 0)
            {
                return rl_rule_fail(err, "window",
                                    "window must be an integer from %d to %d"
                                    " (seconds)%s",
                                    RL_RULE_MIN_WINDOW, RL_RULE_MAX_WINDOW,
                                    rl_rule_not(v, yajl_t_number));
            }

        } else if (slot == &expires) {
            if (rl_rule_expires(v, nul, &rule->expires_at, err) != 0) {
                return -1;
            }

        } else {
            s = YAJL_GET_STRING(v);

            if (s != NULL && !nul && strcmp(s, "token_bucket") == 0) {
                rule->algorithm = RL_RULE_ALGORITHM_TOKEN_BUCKET;

            } else if (s != NULL && !nul
                       && strcmp(s, "sliding_window") == 0)
            {
                rule->algorithm = RL_RULE_ALGORITHM_SLIDING_WINDOW;

            } else {
                return rl_rule_fail(err, "algorithm",
                                    "algorithm must be \"token_bucket\" or"
                                    " \"sliding_window\"%s",
                                    rl_rule_not(v, yajl_t_string));
            }
        }
    }

    if (id == NULL) {
        return rl_rule_fail(err, "customer_id",
                            "customer_id is required: a string of 1 to %d"
                            " bytes", RL_RULE_MAX_CUSTOMER_ID);
    }

    if (limit == NULL) {
        return rl_rule_fail(err, "limit",
                            "limit is required: an integer from 1 to %d",
                            RL_RULE_MAX_LIMIT);
    }

    if (window == NULL) {
        return rl_rule_fail(err, "window",
                            "window is required: an integer from %d to %d"
                            " (seconds)",
                            RL_RULE_MIN_WINDOW, RL_RULE_MAX_WINDOW);
    }

    if (algorithm == NULL) {
        rule->algorithm = RL_RULE_ALGORITHM_NONE;
    }

    return 0;
}


static int
rl_rule_integer(yajl_val v, long long min, long long max, long long *out)
{
    long long  n;

    if (!YAJL_IS_INTEGER(v)) {
        return -1;
    }

    /* "60.0" and "6e1" are whole, but not what a client should send */

    if (strpbrk(YAJL_GET_NUMBER(v), ".eE") != NULL) {
        return -1;
    }

    n = YAJL_GET_INTEGER(v);

    if (n < min || n > max) {
        return -1;
    }

    *out = n;

    return 0;
}


/*
 * What the value is instead, to follow "must be ...": nothing when it is
 * of the type wanted, and only its value is wrong.
 */

static const char *
rl_rule_not(yajl_val v, yajl_type wanted)
{
    switch (v->type) {

    case yajl_t_string:
        return wanted == yajl_t_string ? "" : ", not a string";

    case yajl_t_number:
        if (wanted != yajl_t_number) {
            return ", not a number";
        }

        if (strpbrk(YAJL_GET_NUMBER(v), ".eE") != NULL) {
            return ", written without a fraction or exponent";
        }

        return "";

    case yajl_t_object:
        return ", not an object";

    case yajl_t_array:
        return ", not an array";

    case yajl_t_true:
    case yajl_t_false:
        return ", not a boolean";

    case yajl_t_null:
        return ", not null";

    default:
        return "";
    }
}


static const char *
rl_rule_algorithm_name(int algorithm)
{
    switch (algorithm) {

    case RL_RULE_ALGORITHM_TOKEN_BUCKET:
        return "token_bucket";

    case RL_RULE_ALGORITHM_SLIDING_WINDOW:
        return "sliding_window";

    default:
        return NULL;
    }
}


/*
 * Digits only, no sign and no leading zero: only what rl_rule_encode()
 * writes, so anything else in Redis shows up as garbled.
 */

static const char *
rl_rule_decode_number(const char *p, const char *last, long long max,
    long long *out)
{
    long long  n;

    if (p == last || *p < '1' || *p > '9') {
        return NULL;
    }

    n = 0;

    while (p < last && *p >= '0' && *p <= '9') {
        n = n * 10 + (*p++ - '0');

        /* max is far below LLONG_MAX / 10: checking here cannot be late */
        if (n > max) {
            return NULL;
        }
    }

    *out = n;

    return p;
}


/* copies the generated JSON and a newline out, and frees the generator */

static size_t
rl_rule_gen_done(yajl_gen g, int ok, char *buf, size_t size)
{
    size_t                len;
    const unsigned char  *out;

    len = 0;

    if (ok && yajl_gen_get_buf(g, &out, &len) == yajl_gen_status_ok
        && len + 2 <= size)
    {
        memcpy(buf, out, len);
        buf[len++] = '\n';
        buf[len] = '\0';

    } else {
        len = 0;
    }

    yajl_gen_free(g);

    return len;
}


/*
 * "expires_at": an RFC 3339 date-time, whole epoch seconds, or null (no
 * expiry, as when the field is left out)
 */

static int
rl_rule_expires(yajl_val v, int nul, long long *out, rl_rule_error_t *err)
{
    const char  *s;

    if (YAJL_IS_NULL(v)) {
        *out = 0;
        return 0;
    }

    if (YAJL_IS_STRING(v)) {
        s = YAJL_GET_STRING(v);

        if (!nul && rl_rule_parse_time(s, strlen(s), out) == 0) {
            return 0;
        }

        return rl_rule_fail(err, "expires_at",
                            "expires_at must be an RFC 3339 date-time such"
                            " as \"2026-12-01T00:00:00Z\" (a real date,"
                            " up to the year 9999), or epoch seconds");
    }

    if (rl_rule_integer(v, 1, RL_RULE_MAX_EXPIRES, out) == 0) {
        return 0;
    }

    return rl_rule_fail(err, "expires_at",
                        "expires_at must be epoch seconds from 1 to %lld,"
                        " or an RFC 3339 date-time%s",
                        RL_RULE_MAX_EXPIRES, rl_rule_not(v, yajl_t_number));
}


/* exactly n digits */

static const char *
rl_rule_digits(const char *p, const char *last, size_t n, int *out)
{
    int  v;

    if ((size_t) (last - p) < n) {
        return NULL;
    }

    for (v = 0; n; n--, p++) {
        if (*p < '0' || *p > '9') {
            return NULL;
        }

        v = v * 10 + (*p - '0');
    }

    *out = v;

    return p;
}


/* days from 1970-01-01 to a civil date, proleptic Gregorian */

static long long
rl_rule_days(long long y, int m, int d)
{
    long long  era, yoe, doy, doe;

    y -= (m <= 2);
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return era * 146097 + doe - 719468;
}
