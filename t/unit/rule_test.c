
/*
 * Unit test of the limit rules: the admin endpoint's JSON validation, the
 * stored form, and the JSON answers.  Prints TAP, the plan at the end.
 */


#include <stdio.h>
#include <string.h>

#include "rl_rule.h"


#define SENTINEL  0xa5
#define RULE      "{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}"


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


static void
sentinel(rl_rule_t *rule, rl_rule_error_t *err)
{
    memset(rule, SENTINEL, sizeof(rl_rule_t));
    memset(err, SENTINEL, sizeof(rl_rule_error_t));
}


static int
untouched(const void *p, size_t size)
{
    size_t               i;
    const unsigned char  *b = p;

    for (i = 0; i < size; i++) {
        if (b[i] != SENTINEL) {
            return 0;
        }
    }

    return 1;
}


static int
same_field(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }

    return strcmp(a, b) == 0;
}


/*
 * A message fit for an answer: NUL-terminated inside the array, one line,
 * not empty, and rl_rule_error_json() can render it.
 */

static int
sane_message(const rl_rule_error_t *err)
{
    char         json[1024];
    const char  *end;

    end = memchr(err->message, '\0', sizeof(err->message));

    return end != NULL && end != err->message
           && strchr(err->message, '\n') == NULL
           && strchr(err->message, '\r') == NULL
           && rl_rule_error_json(err, json, sizeof(json)) > 0;
}


/*
 * The body must be refused, naming field (NULL: the body as a whole) with
 * a message that contains expect (exact: that is expect), and *rule must be
 * left alone.
 */

static void
refused(const char *body, size_t len, const char *field, const char *expect,
    int exact, const char *name)
{
    int              rc;
    char             title[512];
    rl_rule_t        rule;
    rl_rule_error_t  err;

    sentinel(&rule, &err);

    rc = rl_rule_parse_json(body, len, &rule, &err);

    snprintf(title, sizeof(title), "refused: %s", name);

    ok(rc == -1 && same_field(err.field, field)
       && (exact ? strcmp(err.message, expect) == 0
                 : strstr(err.message, expect) != NULL)
       && sane_message(&err)
       && untouched(&rule, sizeof(rule)), title);

    if (rc == -1) {
        printf("#   field %s%s%s, message: %s\n",
               err.field ? "\"" : "", err.field ? err.field : "null",
               err.field ? "\"" : "", err.message);

    } else {
        printf("#   was accepted\n");
    }
}


static void
bad_len(const char *body, size_t len, const char *field, const char *expect,
    const char *name)
{
    refused(body, len, field, expect, 0, name);
}


static void
bad(const char *body, const char *field, const char *expect,
    const char *name)
{
    refused(body, strlen(body), field, expect, 0, name);
}


static void
bad_exactly(const char *body, const char *field, const char *expect,
    const char *name)
{
    refused(body, strlen(body), field, expect, 1, name);
}


/*
 * The body must be taken as the rule given, for the policy given ("": for
 * every policy), and the rule must go through the stored form and the JSON
 * answer unchanged; json is that answer.
 */

static void
good_policy(const char *body, const char *id, const char *policy,
    long long limit, long long window, int algorithm, const char *json,
    const char *name)
{
    int              rc;
    char             title[512], stored[64], out[2048];
    size_t           n, idlen, plen;
    rl_rule_t        rule, decoded, again;
    rl_rule_error_t  err;

    idlen = strlen(id);
    plen = strlen(policy);

    sentinel(&rule, &err);

    rc = rl_rule_parse_json(body, strlen(body), &rule, &err);

    snprintf(title, sizeof(title), "accepted: %s", name);
    ok(rc == 0 && rule.customer_id_len == idlen
       && memcmp(rule.customer_id, id, idlen) == 0
       && rule.policy_len == plen && memcmp(rule.policy, policy, plen) == 0
       && rule.limit == limit && rule.window == window
       && rule.algorithm == algorithm
       && untouched(&err, sizeof(err)), title);

    if (rc != 0) {
        printf("#   field %s, message: %s\n",
               err.field ? err.field : "null", err.message);
        return;
    }

    n = rl_rule_encode(&rule, stored, sizeof(stored));

    memset(&decoded, SENTINEL, sizeof(decoded));
    memcpy(decoded.customer_id, rule.customer_id, rule.customer_id_len);
    decoded.customer_id_len = rule.customer_id_len;
    memcpy(decoded.policy, rule.policy, rule.policy_len);
    decoded.policy_len = rule.policy_len;

    snprintf(title, sizeof(title), "stored form round-trips: %s", name);
    ok(n > 0 && n == strlen(stored)
       && rl_rule_decode(stored, n, &decoded) == 0
       && decoded.limit == limit && decoded.window == window
       && decoded.algorithm == algorithm
       && memcmp(decoded.customer_id, id, idlen) == 0
       && decoded.policy_len == plen
       && memcmp(decoded.policy, policy, plen) == 0, title);

    n = rl_rule_to_json(&decoded, out, sizeof(out));

    snprintf(title, sizeof(title), "JSON answer: %s", name);
    ok(n > 0 && n == strlen(out) && strcmp(out, json) == 0, title);

    if (n == 0 || strcmp(out, json) != 0) {
        printf("#   got:      %s#   expected: %s", n ? out : "(nothing)\n",
               json);
    }

    /* the answer is a body the endpoint takes back, to the same rule */

    memset(&again, SENTINEL, sizeof(again));

    snprintf(title, sizeof(title), "JSON answer parses back: %s", name);
    ok(n > 0 && rl_rule_parse_json(out, n, &again, &err) == 0
       && again.customer_id_len == idlen
       && memcmp(again.customer_id, id, idlen) == 0
       && again.policy_len == plen
       && memcmp(again.policy, policy, plen) == 0
       && again.limit == limit && again.window == window
       && again.algorithm == algorithm, title);
}


/* a rule of every policy of the customer */

static void
good(const char *body, const char *id, long long limit, long long window,
    int algorithm, const char *json, const char *name)
{
    good_policy(body, id, "", limit, window, algorithm, json, name);
}


static void
test_malformed(void)
{
    char  body[RL_RULE_MAX_BODY + 2];

    bad("", NULL, "malformed JSON", "an empty body");
    bad("   \n", NULL, "malformed JSON", "a body of whitespace");
    bad("{", NULL, "malformed JSON", "an unclosed object");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60",
        NULL, "malformed JSON", "a missing closing brace");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,}",
        NULL, "malformed JSON", "a trailing comma");
    bad("{customer_id:\"acme\",limit:100,window:60}",
        NULL, "malformed JSON", "unquoted keys");
    bad("{'customer_id':'acme','limit':100,'window':60}",
        NULL, "malformed JSON", "single quotes");
    bad("{\"customer_id\" \"acme\"}", NULL, "malformed JSON",
        "a missing colon");
    bad("{\"customer_id\":\"acme\",\"limit\":0100,\"window\":60}",
        NULL, "malformed JSON", "a leading zero");
    bad("{\"customer_id\":\"acme\",\"limit\":1e,\"window\":60}",
        NULL, "malformed JSON", "a broken exponent");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,\"x\":tru}",
        NULL, "malformed JSON", "a misspelt literal");
    bad("{\"customer_id\":\"a\\xb\",\"limit\":100,\"window\":60}",
        NULL, "malformed JSON", "a bad escape");
    bad("{\"customer_id\":\"a\\u12\",\"limit\":100,\"window\":60}",
        NULL, "malformed JSON", "a short \\u escape");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60} x",
        NULL, "malformed JSON", "trailing garbage");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}{}",
        NULL, "malformed JSON", "a second object after the first");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}]",
        NULL, "malformed JSON", "a stray bracket after the object");
    bad("{/* note */\"customer_id\":\"acme\",\"limit\":100,\"window\":60}",
        NULL, "malformed JSON", "a comment");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}"
        " // note", NULL, "malformed JSON", "a comment after the object");
    bad("{\"customer_id\":\"a\x01" "b\",\"limit\":100,\"window\":60}",
        NULL, "malformed JSON", "a raw control character in a string");
    bad("{\"customer_id\":\"a\nb\",\"limit\":100,\"window\":60}",
        NULL, "malformed JSON", "a raw newline in a string");
    bad("{\"customer_id\":\"\xff\",\"limit\":100,\"window\":60}",
        NULL, "malformed JSON", "a raw 0xff byte in a string");
    bad("{\"customer_id\":\"\xc3\",\"limit\":100,\"window\":60}",
        NULL, "malformed JSON", "half a UTF-8 character in a string");

    bad_len("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}\0",
            sizeof("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}"),
            NULL, "control character 0x00", "a raw NUL byte after the object");
    bad_len("{\"customer_id\":\"ac\0me\",\"limit\":100,\"window\":60}",
            sizeof("{\"customer_id\":\"ac\0me\",\"limit\":100,\"window\":60}")
            - 1, NULL, "control character 0x00", "a raw NUL byte in a string");

    /* the body's own length counts, not where a NUL might be */

    bad_len("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}", 20,
            NULL, "malformed JSON", "a body cut short by its length");

    memset(body, ' ', sizeof(body));
    memcpy(body, RULE, strlen(RULE));
    bad_len(body, RL_RULE_MAX_BODY + 1, NULL, "over 4096 bytes",
            "a body of 4097 bytes");
}


/*
 * RFC 8259: only space, tab, LF and CR separate tokens, and nothing but
 * whitespace follows the value.  yajl alone takes form feed and vertical
 * tab as whitespace, and an unfinished token after the object for its end.
 */

static void
test_strict_json(void)
{
    size_t       i;
    char         body[256], title[128];
    static const char  *after[] = {
        " \"lim", " \"", " \"a\\", " 5", " 1e", " t", " nul", " -",
        "\"x\"", " {", " [", " }", " ,", " \"x\":1",
    };

    bad("{\"customer_id\": \"x\", \"limit\": 1, \"window\": 60} \"lim",
        NULL, "bytes after the end of the object",
        "an unfinished string after the object (issue 7, item 12)");

    for (i = 0; i < sizeof(after) / sizeof(after[0]); i++) {
        snprintf(body, sizeof(body), "%s%s", RULE, after[i]);
        snprintf(title, sizeof(title), "'%s' after the object", after[i]);
        bad(body, NULL, "bytes after the end of the object", title);
    }

    bad("{\"customer_id\": \"x\",\f\"limit\": 1, \"window\": 60}",
        NULL, "control character 0x0c at offset 20",
        "a form feed between tokens");
    bad("{\"customer_id\": \"x\",\v\"limit\": 1, \"window\": 60}",
        NULL, "control character 0x0b at offset 20",
        "a vertical tab between tokens");
    bad(RULE "\f", NULL, "control character 0x0c", "a form feed after");
    bad("\v" RULE, NULL, "control character 0x0b", "a vertical tab before");

    good(" \t\r\n" RULE " \t\r\n", "acme", 100, 60,
         RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}\n",
         "space, tab, CR and LF around the object");
    good("{\"customer_id\":\"a}\\\"\",\"limit\":100,\"window\":60}\n",
         "a}\"", 100, 60, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"a}\\\"\",\"limit\":100,\"window\":60}\n",
         "a brace and a quote inside a string");
}


static void
test_not_object(void)
{
    bad("[]", NULL, "must be a JSON object, not an array", "an empty array");
    bad("[{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}]", NULL,
        "must be a JSON object, not an array", "a rule inside an array");
    bad("\"acme\"", NULL, "must be a JSON object, not a string", "a string");
    bad("100", NULL, "must be a JSON object, not a number", "a number");
    bad("null", NULL, "must be a JSON object, not null", "null");
    bad("true", NULL, "must be a JSON object, not a boolean", "true");
}


static void
test_fields(void)
{
    char  body[512], name[64];
    int   i;

    bad("{}", "customer_id", "customer_id is required", "an empty object");
    bad("{\"limit\":100,\"window\":60}", "customer_id",
        "customer_id is required", "customer_id missing");
    bad("{\"customer_id\":\"acme\",\"window\":60}", "limit",
        "limit is required: an integer from 1 to 1000000000",
        "limit missing");
    bad("{\"customer_id\":\"acme\",\"limit\":100}", "window",
        "window is required: an integer from 1 to 86400",
        "window missing");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,"
        "\"foo\":1}", "foo", "unknown field \"foo\"", "an unknown field");
    bad("{\"foo\":1,\"customer_id\":\"acme\",\"limit\":100,\"window\":60}",
        "foo", "unknown field \"foo\"", "an unknown field first");
    bad("{\"customer_id\":\"acme\",\"Limit\":100,\"window\":60}",
        "Limit", "unknown field \"Limit\"", "field names are case-sensitive");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,"
        "\"a\\\"b\":1}", "a\"b", "unknown field \"a\"b\"",
        "an unknown field with a quote in its name");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,"
        "\"\xc3\xbc\":1}", "\xc3\xbc", "unknown field \"\xc3\xbc\"",
        "an unknown field with a UTF-8 name");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,"
        "\"a\\nb\":1}", "a?b", "unknown field \"a?b\"",
        "an unknown field's newline is not quoted back");
    bad("{\"customer_id\":\"acme\",\"limit\\u0000x\":100,\"window\":60}",
        "limit?x", "unknown field \"limit?x\"",
        "a known name with an escaped NUL after it is unknown");
    bad("{\"customer_id\":\"acme\",\"\":100,\"limit\":100,\"window\":60}",
        "", "unknown field \"\"", "an empty field name");

    /* a long name is quoted shortened, and the message still fits */

    strcpy(body, "{\"");
    for (i = 0; i < 300; i++) {
        strcat(body, "x");
    }
    strcat(body, "\":1}");

    memset(name, 'x', 40);
    name[40] = '\0';
    bad(body, name, "...\" (expected", "a long unknown field name");

    /* shortening keeps whole UTF-8 characters: 13 of 3 bytes are 39 */

    strcpy(body, "{\"");
    for (i = 0; i < 20; i++) {
        strcat(body, "\xe2\x82\xac");
    }
    strcat(body, "\":1}");

    name[0] = '\0';
    for (i = 0; i < 13; i++) {
        strcat(name, "\xe2\x82\xac");
    }
    bad(body, name, "...\"", "a long UTF-8 unknown field name");

    bad("{\"customer_id\":\"acme\",\"customer_id\":\"acme\",\"limit\":100,"
        "\"window\":60}", "customer_id",
        "field \"customer_id\" is given more than once",
        "customer_id twice");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"limit\":200,"
        "\"window\":60}", "limit", "field \"limit\" is given more than once",
        "limit twice");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,"
        "\"window\":60}", "window", "field \"window\" is given more than once",
        "window twice, the same both times");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,"
        "\"algorithm\":\"token_bucket\",\"algorithm\":\"sliding_window\"}",
        "algorithm", "field \"algorithm\" is given more than once",
        "algorithm twice");
}


static void
test_limit(void)
{
    char         body[256], expect[160];
    size_t       i;
    static const struct {
        const char  *value;
        const char  *expect;
        const char  *name;
    } cases[] = {
        { "\"100\"", ", not a string", "a string" },
        { "\"\"", ", not a string", "an empty string" },
        { "60.5", ", written without a fraction or exponent", "a fraction" },
        { "100.0", ", written without a fraction or exponent",
          "a whole number with a fraction" },
        { "1e2", ", written without a fraction or exponent",
          "an exponent" },
        { "1E2", ", written without a fraction or exponent",
          "an upper-case exponent" },
        { "1.0e2", ", written without a fraction or exponent",
          "a fraction and an exponent" },
        { "1e-2", ", written without a fraction or exponent",
          "a negative exponent" },
        { "true", ", not a boolean", "true" },
        { "false", ", not a boolean", "false" },
        { "null", ", not null", "null" },
        { "{}", ", not an object", "an object" },
        { "[]", ", not an array", "an empty array" },
        { "[100]", ", not an array", "an array of the number" },
        { "0", "", "0" },
        { "-0", "", "-0" },
        { "-1", "", "-1" },
        { "-9223372036854775808", "", "the smallest long long" },
        { "1000000001", "", "one over the maximum" },
        { "2147483648", "", "2^31" },
        { "9223372036854775807", "", "the largest long long" },
        { "9223372036854775808", "", "one over the largest long long" },
        { "99999999999999999999999999", "", "far beyond a long long" },
        { "-99999999999999999999999999", "", "far below a long long" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"customer_id\":\"acme\",\"limit\":%s,\"window\":60}",
                 cases[i].value);
        snprintf(expect, sizeof(expect),
                 "limit must be an integer from 1 to 1000000000%s",
                 cases[i].expect);
        bad_exactly(body, "limit", expect, cases[i].name);
    }
}


static void
test_window(void)
{
    char         body[256], expect[160];
    size_t       i;
    static const struct {
        const char  *value;
        const char  *expect;
        const char  *name;
    } cases[] = {
        { "\"60\"", ", not a string", "a string" },
        { "60.5", ", written without a fraction or exponent", "a fraction" },
        { "60.0", ", written without a fraction or exponent",
          "a whole number with a fraction" },
        { "6e1", ", written without a fraction or exponent",
          "an exponent" },
        { "6E+1", ", written without a fraction or exponent",
          "an upper-case exponent with a sign" },
        { "true", ", not a boolean", "true" },
        { "null", ", not null", "null" },
        { "{\"s\":60}", ", not an object", "an object" },
        { "[60]", ", not an array", "an array" },
        { "0", "", "0" },
        { "-1", "", "-1" },
        { "-60", "", "-60" },
        { "86401", "", "one over a day" },
        { "9223372036854775807", "", "the largest long long" },
        { "99999999999999999999", "", "beyond a long long" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"customer_id\":\"acme\",\"limit\":100,\"window\":%s}",
                 cases[i].value);
        snprintf(expect, sizeof(expect),
                 "window must be an integer from 1 to 86400 (seconds)%s",
                 cases[i].expect);
        bad_exactly(body, "window", expect, cases[i].name);
    }
}


static void
test_customer_id(void)
{
    char         body[1024];
    size_t       i;
    static const struct {
        const char  *value;
        const char  *expect;
        const char  *name;
    } cases[] = {
        { "\"\"", "must be a string of 1 to 256 bytes, not 0 bytes",
          "empty" },
        { "\"\\u0000\"", "must not contain control characters (byte 0x00",
          "an escaped NUL alone" },
        { "\"ac\\u0000me\"",
          "must not contain control characters (byte 0x00 at offset 2)",
          "an escaped NUL inside" },
        { "\"acme\\u0000\"", "must not contain control characters",
          "an escaped NUL at the end" },
        { "\"a\\nb\"",
          "must not contain control characters (byte 0x0a at offset 1)",
          "an escaped newline" },
        { "\"a\\r\"", "must not contain control characters (byte 0x0d",
          "an escaped carriage return" },
        { "\"\\tacme\"",
          "must not contain control characters (byte 0x09 at offset 0)",
          "an escaped tab" },
        { "\"a\\u001fb\"", "must not contain control characters (byte 0x1f",
          "an escaped 0x1f" },
        { "\"a\\u007fb\"", "must not contain control characters (byte 0x7f",
          "an escaped DEL" },
        { "\"a\x7f" "b\"", "must not contain control characters (byte 0x7f",
          "a raw DEL" },
        { "\"\xc0\x80\"", "must be valid UTF-8 (byte 0xc0 at offset 0)",
          "an overlong NUL, raw" },
        { "\"a\xed\xa0\x80\"", "must be valid UTF-8 (byte 0xed at offset 1)",
          "a raw surrogate" },
        { "42", "must be a string of 1 to 256 bytes, not a number",
          "a number" },
        { "true", "must be a string of 1 to 256 bytes, not a boolean",
          "true" },
        { "null", "must be a string of 1 to 256 bytes, not null", "null" },
        { "{}", "must be a string of 1 to 256 bytes, not an object",
          "an object" },
        { "[\"acme\"]", "must be a string of 1 to 256 bytes, not an array",
          "an array" },
        { "[\"a\\u0000\"]", "must be a string of 1 to 256 bytes, not an array",
          "an array of a string with a NUL" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"customer_id\":%s,\"limit\":100,\"window\":60}",
                 cases[i].value);
        bad(body, "customer_id", cases[i].expect, cases[i].name);
    }

    /* 257 bytes: 255 ASCII and one 2-byte character */

    strcpy(body, "{\"customer_id\":\"");
    for (i = 0; i < 255; i++) {
        strcat(body, "a");
    }
    strcat(body, "\xc3\xa9\",\"limit\":100,\"window\":60}");
    bad(body, "customer_id", "not 257 bytes", "customer_id of 257 bytes");

    /* escapes count as the bytes they stand for: 6 * 43 is 258 */

    strcpy(body, "{\"customer_id\":\"");
    for (i = 0; i < 43; i++) {
        strcat(body, "\\u00e9\\u00e9\\u00e9");
    }
    strcat(body, "\",\"limit\":100,\"window\":60}");
    bad(body, "customer_id", "not 258 bytes",
        "customer_id of 258 bytes written as escapes");
}


static void
test_algorithm(void)
{
    char         body[256], expect[160];
    size_t       i;
    static const struct {
        const char  *value;
        const char  *expect;
        const char  *name;
    } cases[] = {
        { "\"leaky_bucket\"", "", "an unknown name" },
        { "\"\"", "", "an empty name" },
        { "\"TOKEN_BUCKET\"", "", "upper case" },
        { "\"token_bucket \"", "", "a trailing space" },
        { "\"token_bucket\\u0000\"", "", "a trailing escaped NUL" },
        { "\"sliding_window\\u0000x\"", "", "an escaped NUL inside" },
        { "1", ", not a number", "a number" },
        { "true", ", not a boolean", "true" },
        { "null", ", not null", "null" },
        { "[\"token_bucket\"]", ", not an array", "an array" },
        { "{}", ", not an object", "an object" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"customer_id\":\"acme\",\"limit\":100,\"window\":60,"
                 "\"algorithm\":%s}", cases[i].value);
        snprintf(expect, sizeof(expect),
                 "algorithm must be \"token_bucket\" or"
                 " \"sliding_window\"%s", cases[i].expect);
        bad_exactly(body, "algorithm", expect, cases[i].name);
    }
}


static void
test_first_error(void)
{
    /* the fields are checked in order: the first at fault is named */

    bad("{\"limit\":0,\"window\":0}", "limit", "limit must be",
        "two bad fields: the first is named");
    bad("{\"window\":0,\"limit\":0}", "window", "window must be",
        "two bad fields, the other way round");
    bad("{\"customer_id\":\"acme\",\"limit\":100,\"foo\":1}", "foo",
        "unknown field", "an unknown field before a missing one");
}


static void
test_good(void)
{
    char  body[RL_RULE_MAX_BODY + 1], id[RL_RULE_MAX_CUSTOMER_ID + 1],
          json[1024];

    good("{\"customer_id\":\"acme\",\"limit\":10000,\"window\":60}",
         "acme", 10000, 60, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"acme\",\"limit\":10000,\"window\":60}\n",
         "the basic rule");
    good("{\"customer_id\":\"acme\",\"limit\":10000,\"window\":60,"
         "\"algorithm\":\"token_bucket\"}",
         "acme", 10000, 60, RL_RULE_ALGORITHM_TOKEN_BUCKET,
         "{\"customer_id\":\"acme\",\"limit\":10000,\"window\":60,"
         "\"algorithm\":\"token_bucket\"}\n", "token_bucket");
    good("{\"customer_id\":\"acme\",\"limit\":10000,\"window\":60,"
         "\"algorithm\":\"sliding_window\"}",
         "acme", 10000, 60, RL_RULE_ALGORITHM_SLIDING_WINDOW,
         "{\"customer_id\":\"acme\",\"limit\":10000,\"window\":60,"
         "\"algorithm\":\"sliding_window\"}\n", "sliding_window");
    good(" \n\t{ \"algorithm\" : \"token_bucket\" ,\r\n \"window\":3600,"
         "\"limit\" :5, \"customer_id\": \"b\" } \n",
         "b", 5, 3600, RL_RULE_ALGORITHM_TOKEN_BUCKET,
         "{\"customer_id\":\"b\",\"limit\":5,\"window\":3600,"
         "\"algorithm\":\"token_bucket\"}\n",
         "whitespace and any order");

    good("{\"customer_id\":\"acme\",\"limit\":1,\"window\":1}",
         "acme", 1, 1, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"acme\",\"limit\":1,\"window\":1}\n",
         "the smallest limit and window");
    good("{\"customer_id\":\"acme\",\"limit\":1000000000,\"window\":86400}",
         "acme", 1000000000, 86400, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"acme\",\"limit\":1000000000,\"window\":86400}\n",
         "the largest limit and window");

    good("{\"customer_id\":\"\xc3\xbcn\xc3\xaf" "code\",\"limit\":10,"
         "\"window\":60}", "\xc3\xbcn\xc3\xaf" "code", 10, 60,
         RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"\xc3\xbcn\xc3\xaf" "code\",\"limit\":10,"
         "\"window\":60}\n", "a UTF-8 customer id");
    good("{\"customer_id\":\"\\u00fcn\\u00efcode\",\"limit\":10,"
         "\"window\":60}", "\xc3\xbcn\xc3\xaf" "code", 10, 60,
         RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"\xc3\xbcn\xc3\xaf" "code\",\"limit\":10,"
         "\"window\":60}\n", "a UTF-8 customer id written as escapes");
    good("{\"customer_id\":\"\xf0\x9f\x9a\x80 rocket\",\"limit\":10,"
         "\"window\":60}", "\xf0\x9f\x9a\x80 rocket", 10, 60,
         RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"\xf0\x9f\x9a\x80 rocket\",\"limit\":10,"
         "\"window\":60}\n", "an emoji customer id");
    good("{\"customer_id\":\"\\ud83d\\ude00\",\"limit\":10,\"window\":60}",
         "\xf0\x9f\x98\x80", 10, 60, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"\xf0\x9f\x98\x80\",\"limit\":10,"
         "\"window\":60}\n", "an emoji written as a surrogate pair");
    good("{\"customer_id\":\"\xf4\x8f\xbf\xbf\xef\xbf\xbf\",\"limit\":10,"
         "\"window\":60}", "\xf4\x8f\xbf\xbf\xef\xbf\xbf", 10, 60,
         RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"\xf4\x8f\xbf\xbf\xef\xbf\xbf\",\"limit\":10,"
         "\"window\":60}\n", "U+10FFFF and U+FFFF");

    good("{\"customer_id\":\"a\\\"b\\\\c\",\"limit\":10,\"window\":60}",
         "a\"b\\c", 10, 60, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"a\\\"b\\\\c\",\"limit\":10,\"window\":60}\n",
         "quotes and backslashes are escaped in the answer");
    good("{\"customer_id\":\"a\\/b c\",\"limit\":10,\"window\":60}",
         "a/b c", 10, 60, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"a/b c\",\"limit\":10,\"window\":60}\n",
         "an escaped slash and a space");
    good("{\"customer_id\":\"</script>\",\"limit\":10,\"window\":60}",
         "</script>", 10, 60, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"</script>\",\"limit\":10,\"window\":60}\n",
         "markup passes as text");

    memset(id, 'z', RL_RULE_MAX_CUSTOMER_ID);
    id[RL_RULE_MAX_CUSTOMER_ID] = '\0';
    snprintf(body, sizeof(body),
             "{\"customer_id\":\"%s\",\"limit\":10,\"window\":60}", id);
    snprintf(json, sizeof(json),
             "{\"customer_id\":\"%s\",\"limit\":10,\"window\":60}\n", id);
    good(body, id, 10, 60, RL_RULE_ALGORITHM_NONE, json,
         "customer_id of 256 bytes");

    id[0] = 'y';
    id[1] = '\0';
    good("{\"customer_id\":\"y\",\"limit\":10,\"window\":60}", id, 10, 60,
         RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"y\",\"limit\":10,\"window\":60}\n",
         "customer_id of 1 byte");

    /* exactly RL_RULE_MAX_BODY bytes is still taken */

    memset(body, ' ', RL_RULE_MAX_BODY);
    memcpy(body, RULE, strlen(RULE));
    body[RL_RULE_MAX_BODY] = '\0';
    good(body, "acme", 100, 60, RL_RULE_ALGORITHM_NONE,
         "{\"customer_id\":\"acme\",\"limit\":100,\"window\":60}\n",
         "a body of exactly 4096 bytes");
}


static void
test_check_customer_id(void)
{
    size_t           i;
    unsigned char    id[RL_RULE_MAX_CUSTOMER_ID + 1];
    rl_rule_error_t  err;
    char             title[128];
    static const struct {
        const char  *id;
        const char  *name;
    } valid[] = {
        { "acme", "ASCII" },
        { "a b", "a space" },
        { "\xc3\xbcn\xc3\xaf" "code", "2-byte characters" },
        { "\xe2\x82\xac", "a 3-byte character" },
        { "\xf0\x9f\x98\x80", "a 4-byte character" },
        { "\xf4\x8f\xbf\xbf", "U+10FFFF" },
        { "\xed\x9f\xbf\xee\x80\x80",
          "U+D7FF and U+E000, around the surrogates" },
        { "\xc2\x80", "U+0080" },
        { "a//b", "an empty segment" },
        { "/a", "a leading slash" },
        { "a/", "a trailing slash" },
        { "./a", "a \".\" segment" },
        { ".", "only \".\"" },
        { "a/../b", "a \"..\" that stays inside" },
        { "a/b/../../c", "two \"..\" that stay inside" },
        { "...", "three dots" },
        { "..a", "a name starting with two dots" },
    }, climbing[] = {
        { "..", "only \"..\"" },
        { "../a", "a leading \"..\"" },
        { "a/../..", "a \"..\" too many" },
        { "./..", "\"..\" after \".\"" },
        { "a//../..", "\"..\" after an empty segment" },
    }, invalid[] = {
        { "\x80", "a lone continuation byte" },
        { "a\xbf", "a continuation byte after ASCII" },
        { "\xc3", "a 2-byte character cut short" },
        { "\xe2\x82", "a 3-byte character cut short" },
        { "\xf0\x9f\x98", "a 4-byte character cut short" },
        { "\xc3(", "a lead byte before ASCII" },
        { "\xc0\x80", "an overlong NUL" },
        { "\xc1\xbf", "an overlong 2-byte form" },
        { "\xe0\x80\xaf", "an overlong 3-byte form" },
        { "\xf0\x80\x80\xaf", "an overlong 4-byte form" },
        { "\xed\xa0\x80", "a high surrogate" },
        { "\xed\xbf\xbf", "a low surrogate" },
        { "\xf4\x90\x80\x80", "past U+10FFFF" },
        { "\xf5\x80\x80\x80", "a lead byte 0xf5" },
        { "\xff", "0xff" },
        { "\xfe", "0xfe" },
    };

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        memset(&err, SENTINEL, sizeof(err));
        snprintf(title, sizeof(title), "customer id check takes %s",
                 valid[i].name);
        ok(rl_rule_check_customer_id((const unsigned char *) valid[i].id,
                                     strlen(valid[i].id), &err) == 0
           && untouched(&err, sizeof(err)), title);
    }

    /* a request for these would leave the admin location (issue 7, 12) */

    for (i = 0; i < sizeof(climbing) / sizeof(climbing[0]); i++) {
        memset(&err, SENTINEL, sizeof(err));
        snprintf(title, sizeof(title), "customer id check refuses %s",
                 climbing[i].name);
        ok(rl_rule_check_customer_id((const unsigned char *) climbing[i].id,
                                     strlen(climbing[i].id), &err) == -1
           && same_field(err.field, "customer_id")
           && strstr(err.message, "must not climb above itself")
           && sane_message(&err), title);
    }

    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        memset(&err, SENTINEL, sizeof(err));
        snprintf(title, sizeof(title), "customer id check refuses %s",
                 invalid[i].name);
        ok(rl_rule_check_customer_id((const unsigned char *) invalid[i].id,
                                     strlen(invalid[i].id), &err) == -1
           && same_field(err.field, "customer_id")
           && strstr(err.message, "customer_id must be valid UTF-8")
           && sane_message(&err), title);
    }

    for (i = 0; i < 0x20; i++) {
        id[0] = 'a';
        id[1] = (unsigned char) i;
        id[2] = 'b';
        memset(&err, SENTINEL, sizeof(err));
        if (rl_rule_check_customer_id(id, 3, &err) != -1
            || !same_field(err.field, "customer_id")
            || strstr(err.message, "control characters") == NULL)
        {
            break;
        }
    }
    ok(i == 0x20, "customer id check refuses every byte 0x00 to 0x1f");
    printf("#   message: %s\n", err.message);

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_customer_id((const unsigned char *) "a\x7f", 2, &err)
       == -1 && same_field(err.field, "customer_id")
       && strstr(err.message, "(byte 0x7f at offset 1)") != NULL,
       "customer id check refuses DEL");

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_customer_id((const unsigned char *) "", 0, &err) == -1
       && same_field(err.field, "customer_id")
       && strstr(err.message, "1 to 256 bytes, not 0 bytes") != NULL,
       "customer id check refuses the empty id");

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_customer_id(NULL, 0, &err) == -1,
       "customer id check refuses no id at all");

    memset(id, 'a', sizeof(id));

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_customer_id(id, RL_RULE_MAX_CUSTOMER_ID, &err) == 0
       && untouched(&err, sizeof(err)),
       "customer id check takes 256 bytes");

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_customer_id(id, RL_RULE_MAX_CUSTOMER_ID + 1, &err)
       == -1 && same_field(err.field, "customer_id")
       && strstr(err.message, "not 257 bytes") != NULL,
       "customer id check refuses 257 bytes");

    ok(rl_rule_check_customer_id(id, 300, NULL) == -1
       && rl_rule_check_customer_id(id, 3, NULL) == 0,
       "customer id check works without an error to fill in");
}


static void
test_policy(void)
{
    char         body[512], title[128], name[RL_RULE_MAX_POLICY + 2],
                 json[512];
    size_t       i;
    static const struct {
        const char  *value;
        const char  *expect;
        const char  *name;
    } cases[] = {
        { "\"\"", "policy must be a name of 1 to 64 characters, not 0",
          "an empty name" },
        { "\"default\"", "policy \"default\" is reserved",
          "\"default\", every location's unnamed policy" },
        { "\"a b\"", "(byte 0x20 at offset 1)", "a space" },
        { "\"a/b\"", "(byte 0x2f at offset 1)", "a slash" },
        { "\"a\\u001fb\"", "(byte 0x1f at offset 1)",
          "the separator of the stored field" },
        { "\"a\\u0000b\"", "(byte 0x00 at offset 1)", "an escaped NUL" },
        { "\"burst\\u0000\"", "(byte 0x00 at offset 5)",
          "a valid name, then an escaped NUL" },
        { "\"\\u00e9t\\u00e9\"", "(byte 0xc3 at offset 0)", "UTF-8 letters" },
        { "\"a?b\"", "(byte 0x3f at offset 1)", "a question mark" },
        { "42", "policy must be a name of 1 to 64 characters, not a number",
          "a number" },
        { "null", "policy must be a name of 1 to 64 characters, not null",
          "null" },
        { "true", ", not a boolean", "true" },
        { "[\"burst\"]", ", not an array", "an array" },
        { "{}", ", not an object", "an object" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"customer_id\":\"acme\",\"policy\":%s,\"limit\":100,"
                 "\"window\":60}", cases[i].value);
        snprintf(title, sizeof(title), "policy: %s", cases[i].name);
        bad(body, "policy", cases[i].expect, title);
    }

    bad("{\"customer_id\":\"acme\",\"policy\":\"a\",\"policy\":\"b\","
        "\"limit\":100,\"window\":60}", "policy",
        "field \"policy\" is given more than once", "policy twice");
    bad("{\"customer_id\":\"acme\",\"Policy\":\"a\",\"limit\":100,"
        "\"window\":60}", "Policy",
        "(expected customer_id, policy, limit, window, algorithm,"
        " expires_at)",
        "an unknown field: policy is among those expected");
    bad("{\"policy\":\"burst\",\"limit\":100,\"window\":60}", "customer_id",
        "customer_id is required", "a policy without a customer");
    bad("{\"customer_id\":\"acme\",\"policy\":\"burst\",\"window\":60}",
        "limit", "limit is required", "a policy without a limit");

    memset(name, 'p', RL_RULE_MAX_POLICY + 1);
    name[RL_RULE_MAX_POLICY + 1] = '\0';
    snprintf(body, sizeof(body),
             "{\"customer_id\":\"acme\",\"policy\":\"%s\",\"limit\":100,"
             "\"window\":60}", name);
    bad(body, "policy", "1 to 64 characters, not 65",
        "a policy name of 65 characters");

    name[RL_RULE_MAX_POLICY] = '\0';
    snprintf(body, sizeof(body),
             "{\"customer_id\":\"acme\",\"policy\":\"%s\",\"limit\":100,"
             "\"window\":60}", name);
    snprintf(json, sizeof(json),
             "{\"customer_id\":\"acme\",\"policy\":\"%s\",\"limit\":100,"
             "\"window\":60}\n", name);
    good_policy(body, "acme", name, 100, 60, RL_RULE_ALGORITHM_NONE, json,
                "a policy name of 64 characters");

    good_policy("{\"customer_id\":\"acme\",\"policy\":\"burst\",\"limit\":10,"
                "\"window\":1}", "acme", "burst", 10, 1,
                RL_RULE_ALGORITHM_NONE,
                "{\"customer_id\":\"acme\",\"policy\":\"burst\",\"limit\":10,"
                "\"window\":1}\n", "the rule of one policy");
    good_policy("{\"algorithm\":\"sliding_window\",\"window\":3600,"
                "\"limit\":5,\"policy\":\"Search_v2.1-x\",\"customer_id\":"
                "\"a?b\"}", "a?b", "Search_v2.1-x", 5, 3600,
                RL_RULE_ALGORITHM_SLIDING_WINDOW,
                "{\"customer_id\":\"a?b\",\"policy\":\"Search_v2.1-x\","
                "\"limit\":5,\"window\":3600,\"algorithm\":"
                "\"sliding_window\"}\n",
                "a policy in any order, every kind of character in its name");
    good_policy("{\"customer_id\":\"acme\",\"policy\":\"\\u0062urst\","
                "\"limit\":10,\"window\":60}", "acme", "burst", 10, 60,
                RL_RULE_ALGORITHM_NONE,
                "{\"customer_id\":\"acme\",\"policy\":\"burst\",\"limit\":10,"
                "\"window\":60}\n", "a policy name written with an escape");
}


static void
test_check_policy_name(void)
{
    size_t           i;
    char             title[128];
    unsigned char    name[RL_RULE_MAX_POLICY + 1];
    rl_rule_error_t  err;
    static const char  *valid[] = {
        "a", "burst", "Burst", "search_v2", "a.b-c_d", "0", "...", "-",
        "defaults", "Default", "default_",
    };

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        memset(&err, SENTINEL, sizeof(err));
        snprintf(title, sizeof(title), "policy name check takes \"%s\"",
                 valid[i]);
        ok(rl_rule_check_policy_name((const unsigned char *) valid[i],
                                     strlen(valid[i]), &err) == 0
           && untouched(&err, sizeof(err)), title);
    }

    for (i = 0; i < 256; i++) {
        name[0] = 'a';
        name[1] = (unsigned char) i;

        if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z')
            || (i >= '0' && i <= '9') || i == '_' || i == '-' || i == '.')
        {
            continue;
        }

        memset(&err, SENTINEL, sizeof(err));

        if (rl_rule_check_policy_name(name, 2, &err) != -1
            || !same_field(err.field, "policy")
            || strstr(err.message, "at offset 1)") == NULL
            || !sane_message(&err))
        {
            break;
        }
    }
    ok(i == 256, "policy name check refuses every other byte");
    printf("#   message: %s\n", err.message);

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_policy_name((const unsigned char *) "default", 7, &err)
       == -1 && same_field(err.field, "policy")
       && strstr(err.message, "reserved") != NULL && sane_message(&err),
       "policy name check refuses \"default\"");

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_policy_name((const unsigned char *) "", 0, &err) == -1
       && same_field(err.field, "policy")
       && strstr(err.message, "not 0") != NULL,
       "policy name check refuses the empty name");

    memset(name, 'x', sizeof(name));

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_policy_name(name, RL_RULE_MAX_POLICY, &err) == 0
       && untouched(&err, sizeof(err)),
       "policy name check takes 64 characters");

    memset(&err, SENTINEL, sizeof(err));
    ok(rl_rule_check_policy_name(name, RL_RULE_MAX_POLICY + 1, &err) == -1
       && same_field(err.field, "policy")
       && strstr(err.message, "not 65") != NULL,
       "policy name check refuses 65 characters");

    ok(rl_rule_check_policy_name(name, 3, NULL) == 0
       && rl_rule_check_policy_name((const unsigned char *) "a b", 3, NULL)
          == -1,
       "policy name check works without an error to fill in");
}


static void
test_encode_decode(void)
{
    char         buf[64];
    size_t       i, n;
    rl_rule_t    rule, copy;
    static const struct {
        const char  *stored;
        const char  *name;
    } garbled[] = {
        { "", "empty" },
        { "abc", "letters" },
        { "10", "the limit alone" },
        { "10 60", "no algorithm" },
        { "10 60 ", "an empty algorithm" },
        { "10 60 foo", "an unknown algorithm" },
        { "10 60 --", "two dashes" },
        { "10 60 TOKEN_BUCKET", "an upper-case algorithm" },
        { "10 60 token_bucket ", "a trailing space" },
        { "10 60 -\n", "a trailing newline" },
        { "10 60 - extra", "a fourth word" },
        { " 10 60 -", "a leading space" },
        { "10  60 -", "two spaces" },
        { "10\t60 -", "a tab" },
        { "0 60 -", "limit 0" },
        { "10 0 -", "window 0" },
        { "-10 60 -", "a negative limit" },
        { "+10 60 -", "a plus sign" },
        { "010 60 -", "a leading zero" },
        { "1000000001 60 -", "limit over the maximum" },
        { "10 86401 -", "window over a day" },
        { "99999999999999999999 60 -", "a limit beyond a long long" },
        { "10 99999999999999999999 -", "a window beyond a long long" },
        { "10.5 60 -", "a fraction" },
        { "1e3 60 -", "an exponent" },
    };

    for (i = 0; i < sizeof(garbled) / sizeof(garbled[0]); i++) {
        char  title[128];

        memset(&rule, SENTINEL, sizeof(rule));
        snprintf(title, sizeof(title), "decode refuses %s",
                 garbled[i].name);
        ok(rl_rule_decode(garbled[i].stored, strlen(garbled[i].stored),
                          &rule) == -1
           && untouched(&rule, sizeof(rule)), title);
    }

    memset(&rule, SENTINEL, sizeof(rule));
    ok(rl_rule_decode("10 60 -\0", 8, &rule) == -1
       && untouched(&rule, sizeof(rule)), "decode refuses a trailing NUL");

    memset(&rule, SENTINEL, sizeof(rule));
    ok(rl_rule_decode("10 60 token_bucket", 18, &rule) == 0
       && rule.limit == 10 && rule.window == 60
       && rule.algorithm == RL_RULE_ALGORITHM_TOKEN_BUCKET
       && untouched(rule.customer_id, sizeof(rule.customer_id))
       && untouched(&rule.customer_id_len, sizeof(rule.customer_id_len))
       && untouched(rule.policy, sizeof(rule.policy))
       && untouched(&rule.policy_len, sizeof(rule.policy_len)),
       "decode fills limit, window and algorithm, not the customer id nor"
       " the policy");

    memset(&rule, SENTINEL, sizeof(rule));
    ok(rl_rule_decode("1000000000 86400 sliding_window", 31, &rule) == 0
       && rule.limit == 1000000000 && rule.window == 86400
       && rule.algorithm == RL_RULE_ALGORITHM_SLIDING_WINDOW,
       "decode takes the largest values");

    memset(&rule, SENTINEL, sizeof(rule));
    ok(rl_rule_decode("1 1 -", 5, &rule) == 0
       && rule.limit == 1 && rule.window == 1
       && rule.algorithm == RL_RULE_ALGORITHM_NONE,
       "decode takes the smallest values, and no algorithm");

    memset(&rule, SENTINEL, sizeof(rule));
    ok(rl_rule_decode("10 60 -junk", 7, &rule) == 0 && rule.limit == 10
       && rule.algorithm == RL_RULE_ALGORITHM_NONE,
       "decode reads len bytes, not up to a NUL");

    memset(&rule, 0, sizeof(rule));
    rule.limit = 100;
    rule.window = 60;
    rule.algorithm = RL_RULE_ALGORITHM_NONE;

    n = rl_rule_encode(&rule, buf, sizeof(buf));
    ok(n == 8 && strcmp(buf, "100 60 -") == 0,
       "encode: \"100 60 -\" without an algorithm");

    rule.limit = 10000;
    rule.algorithm = RL_RULE_ALGORITHM_TOKEN_BUCKET;
    n = rl_rule_encode(&rule, buf, sizeof(buf));
    ok(n == 21 && strcmp(buf, "10000 60 token_bucket") == 0,
       "encode: \"10000 60 token_bucket\"");

    rule.limit = RL_RULE_MAX_LIMIT;
    rule.window = RL_RULE_MAX_WINDOW;
    rule.algorithm = RL_RULE_ALGORITHM_SLIDING_WINDOW;
    n = rl_rule_encode(&rule, buf, sizeof(buf));
    ok(n == 31 && strcmp(buf, "1000000000 86400 sliding_window") == 0,
       "encode: the longest stored form");

    memset(buf, 'x', sizeof(buf));
    ok(rl_rule_encode(&rule, buf, 31) == 0 && buf[0] == 'x',
       "encode: no room for the NUL is too small, and buf is left alone");
    ok(rl_rule_encode(&rule, buf, 32) == 31 && buf[31] == '\0',
       "encode: just enough room");
    ok(rl_rule_encode(&rule, buf, 0) == 0, "encode: size 0");
    ok(rl_rule_encode(&rule, NULL, 0) == 0, "encode: no buffer at all");

    copy = rule;
    copy.limit = 0;
    ok(rl_rule_encode(&copy, buf, sizeof(buf)) == 0,
       "encode refuses limit 0");
    copy = rule;
    copy.limit = RL_RULE_MAX_LIMIT + 1LL;
    ok(rl_rule_encode(&copy, buf, sizeof(buf)) == 0,
       "encode refuses a limit over the maximum");
    copy = rule;
    copy.window = 0;
    ok(rl_rule_encode(&copy, buf, sizeof(buf)) == 0,
       "encode refuses window 0");
    copy = rule;
    copy.window = RL_RULE_MAX_WINDOW + 1;
    ok(rl_rule_encode(&copy, buf, sizeof(buf)) == 0,
       "encode refuses a window over a day");
    copy = rule;
    copy.algorithm = 3;
    ok(rl_rule_encode(&copy, buf, sizeof(buf)) == 0,
       "encode refuses an unknown algorithm");
}


static void
test_json_out(void)
{
    char             buf[2048], small[64];
    size_t           n, len;
    rl_rule_t        rule;
    rl_rule_error_t  err, copy;

    memset(&rule, 0, sizeof(rule));
    memcpy(rule.customer_id, "acme", 4);
    rule.customer_id_len = 4;
    rule.limit = 10000;
    rule.window = 60;
    rule.algorithm = RL_RULE_ALGORITHM_TOKEN_BUCKET;

    len = rl_rule_to_json(&rule, buf, sizeof(buf));
    ok(len == strlen("{\"customer_id\":\"acme\",\"limit\":10000,\"window\":60,"
                     "\"algorithm\":\"token_bucket\"}\n"),
       "to_json: the length of the answer, newline included");

    ok(rl_rule_to_json(&rule, small, sizeof(small)) == 0,
       "to_json: a buffer too small gives 0");
    ok(rl_rule_to_json(&rule, buf, len) == 0,
       "to_json: no room for the NUL gives 0");
    ok(rl_rule_to_json(&rule, buf, len + 1) == len && buf[len] == '\0'
       && buf[len - 1] == '\n', "to_json: just enough room");
    ok(rl_rule_to_json(&rule, NULL, 0) == 0, "to_json: no buffer at all");

    memcpy(rule.customer_id, "a\"\\\x01", 4);
    n = rl_rule_to_json(&rule, buf, sizeof(buf));
    ok(n > 0 && strstr(buf, "\"customer_id\":\"a\\\"\\\\\\u0001\"") != NULL,
       "to_json escapes quotes, backslashes and control characters");

    memcpy(rule.customer_id, "a\xff", 2);
    rule.customer_id_len = 2;
    ok(rl_rule_to_json(&rule, buf, sizeof(buf)) == 0,
       "to_json gives nothing for a customer id that is not UTF-8");

    rule.customer_id_len = RL_RULE_MAX_CUSTOMER_ID + 1;
    ok(rl_rule_to_json(&rule, buf, sizeof(buf)) == 0,
       "to_json refuses a customer id length past the array");

    memcpy(rule.customer_id, "acme", 4);
    rule.customer_id_len = 4;
    rule.algorithm = 7;
    ok(rl_rule_to_json(&rule, buf, sizeof(buf)) == 0,
       "to_json refuses an unknown algorithm");

    rule.algorithm = RL_RULE_ALGORITHM_NONE;
    memcpy(rule.policy, "burst", 5);
    rule.policy_len = 5;
    n = rl_rule_to_json(&rule, buf, sizeof(buf));
    ok(n > 0 && strcmp(buf, "{\"customer_id\":\"acme\",\"policy\":\"burst\","
                            "\"limit\":10000,\"window\":60}\n") == 0,
       "to_json: the policy after the customer id");

    rule.policy_len = RL_RULE_MAX_POLICY + 1;
    ok(rl_rule_to_json(&rule, buf, sizeof(buf)) == 0,
       "to_json refuses a policy length past the array");

    memcpy(rule.policy, "b\xff", 2);
    rule.policy_len = 2;
    ok(rl_rule_to_json(&rule, buf, sizeof(buf)) == 0,
       "to_json gives nothing for a policy that is not UTF-8");

    rule.policy_len = 0;

    err.field = "limit";
    strcpy(err.message, "limit must be an integer from 1 to 1000000000");
    n = rl_rule_error_json(&err, buf, sizeof(buf));
    ok(n > 0 && n == strlen(buf)
       && strcmp(buf, "{\"error\":\"limit must be an integer from 1 to"
                      " 1000000000\",\"field\":\"limit\"}\n") == 0,
       "error_json names the field");

    ok(rl_rule_error_json(&err, buf, n) == 0
       && rl_rule_error_json(&err, buf, n + 1) == n,
       "error_json: too small gives 0, just enough works");

    err.field = NULL;
    strcpy(err.message, "malformed JSON: \"quoted\" \\ and a\ttab");
    n = rl_rule_error_json(&err, buf, sizeof(buf));
    ok(n > 0 && strcmp(buf, "{\"error\":\"malformed JSON: \\\"quoted\\\" \\\\"
                            " and a\\ttab\",\"field\":null}\n") == 0,
       "error_json: field null, the message escaped");

    memset(err.message, 'm', sizeof(err.message));
    ok(rl_rule_error_json(&err, buf, sizeof(buf))
       == strlen("{\"error\":\"\",\"field\":null}\n") + sizeof(err.message),
       "error_json stops at the end of a message without a NUL");

    /* an unknown field's name lives in the error itself */

    memset(&err, SENTINEL, sizeof(err));
    rl_rule_parse_json("{\"x\\\"y\":1}", 10, &rule, &err);
    copy = err;
    n = rl_rule_error_json(&copy, buf, sizeof(buf));
    ok(n > 0 && strcmp(buf, "{\"error\":\"unknown field \\\"x\\\"y\\\""
                            " (expected customer_id, policy, limit, window,"
                            " algorithm, expires_at)\",\"field\":"
                            "\"x\\\"y\"}\n") == 0,
       "error_json of an unknown field, escaped");
    printf("#   %s", buf);
}


static void
test_time(void)
{
    char         buf[64], title[160];
    size_t       i, n;
    long long    t;
    static const struct {
        const char  *text;
        long long    epoch;
    } good[] = {
        { "1970-01-01T00:00:01Z", 1 },
        { "2026-12-01T00:00:00Z", 1796083200 },
        { "2026-12-01t00:00:00z", 1796083200 },
        { "2026-12-01T02:00:00+02:00", 1796083200 },
        { "2026-11-30T19:30:00-04:30", 1796083200 },
        { "2026-11-30T23:59:59.001Z", 1796083200 },
        { "2026-12-01T00:00:00.000000Z", 1796083200 },
        { "2026-11-30T23:59:59.5+00:00", 1796083200 },
        { "2024-02-29T12:00:00Z", 1709208000 },
        { "2000-02-29T00:00:00Z", 951782400 },
        { "2016-12-31T23:59:60Z", 1483228800 },
        { "9999-12-31T23:59:59Z", RL_RULE_MAX_EXPIRES },
    };
    static const char  *bad[] = {
        "", "2026-12-01", "2026-12-01T00:00Z", "2026-12-01T00:00:00",
        "2026-12-01 00:00:00Z", "2026-12-1T00:00:00Z", "26-12-01T00:00:00Z",
        "2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z",
        "2026-02-29T00:00:00Z", "1900-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z", "2026-12-00T00:00:00Z",
        "2026-12-01T24:00:00Z", "2026-12-01T23:60:00Z",
        "2026-12-01T23:59:61Z", "2026-12-01T00:00:00.Z",
        "2026-12-01T00:00:00+0200", "2026-12-01T00:00:00+24:00",
        "2026-12-01T00:00:00+02:60", "2026-12-01T00:00:00Z ",
        " 2026-12-01T00:00:00Z", "2026-12-01T00:00:00ZZ",
        "+2026-12-01T00:00:00Z", "2026-12-01T00:00:00 Z",
        "1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.1Z", "9999-12-31T23:59:59-00:01",
        "2026-12-01T0a:00:00Z",
    };

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        t = -7;
        snprintf(title, sizeof(title), "time: \"%s\" is %lld",
                 good[i].text, good[i].epoch);
        ok(rl_rule_parse_time(good[i].text, strlen(good[i].text), &t) == 0
           && t == good[i].epoch, title);
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t = -7;
        snprintf(title, sizeof(title), "time: \"%s\" is refused", bad[i]);
        ok(rl_rule_parse_time(bad[i], strlen(bad[i]), &t) == -1 && t == -7,
           title);
    }

    ok(rl_rule_parse_time("2026-12-01T00:00:00Z\0", 21, &t) == -1
       && rl_rule_parse_time("2026-12-01T00:00:00\0Z", 21, &t) == -1,
       "time: a NUL inside is refused");

    ok(rl_rule_parse_time("2026-12-01T00:00:00Zjunk", 20, &t) == 0
       && t == 1796083200, "time: reads len bytes, not up to a NUL");

    n = rl_rule_format_time(1796083200, buf, sizeof(buf));
    ok(n == 20 && strcmp(buf, "2026-12-01T00:00:00Z") == 0,
       "format: 2026-12-01T00:00:00Z");
    n = rl_rule_format_time(RL_RULE_MAX_EXPIRES, buf, sizeof(buf));
    ok(n == 20 && strcmp(buf, "9999-12-31T23:59:59Z") == 0,
       "format: the last second of 9999");
    n = rl_rule_format_time(951782400 + 86399, buf, sizeof(buf));
    ok(n == 20 && strcmp(buf, "2000-02-29T23:59:59Z") == 0,
       "format: a leap day");
    ok(rl_rule_format_time(RL_RULE_MAX_EXPIRES + 1, buf, sizeof(buf)) == 0,
       "format: refuses past 9999");
    ok(rl_rule_format_time(-1, buf, sizeof(buf)) == 0,
       "format: refuses a negative time");
    ok(rl_rule_format_time(1, buf, 20) == 0,
       "format: no room for the NUL");

    /* every day of 1970 .. 2100 and back, a second apart from midnight */

    n = 0;

    for (t = 1; t < 4102444800LL; t += 86400 - 1) {
        if (rl_rule_format_time(t, buf, sizeof(buf)) == 0) {
            n++;
            continue;
        }

        {
            long long  back = -1;

            if (rl_rule_parse_time(buf, strlen(buf), &back) != 0
                || back != t)
            {
                n++;
            }
        }
    }

    ok(n == 0, "format then parse: every day to 2100 comes back as it was");
}


#define PARSE(body, rule, err)                                               \
    rl_rule_parse_json(body, strlen(body), rule, err)


static void
test_expiry(void)
{
    char             buf[512];
    size_t           n;
    rl_rule_t        rule;
    rl_rule_error_t  err;

    memset(&rule, 0, sizeof(rule));
    ok(PARSE("{\"customer_id\":\"acme\",\"limit\":5,"
                          "\"window\":60,\"expires_at\":"
                          "\"2026-12-01T02:00:00.5+02:00\"}", &rule, &err) == 0
       && rule.expires_at == 1796083201,
       "expires_at: RFC 3339 with an offset and a fraction, rounded up");

    memset(&rule, 0, sizeof(rule));
    ok(PARSE("{\"customer_id\":\"acme\",\"limit\":5,"
             "\"window\":60,\"expires_at\":1796083200}",
             &rule, &err) == 0
       && rule.expires_at == 1796083200, "expires_at: epoch seconds");

    memset(&rule, 0, sizeof(rule));
    ok(PARSE("{\"customer_id\":\"acme\",\"limit\":5,"
             "\"window\":60,\"expires_at\":null}",
             &rule, &err) == 0
       && rule.expires_at == 0, "expires_at: null is none");

    memset(&rule, 0, sizeof(rule));
    ok(PARSE("{\"customer_id\":\"acme\",\"limit\":5,"
             "\"window\":60}",
             &rule, &err) == 0
       && rule.expires_at == 0, "expires_at: left out is none");

    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":\"2026-02-30T00:00:00Z\"}", "expires_at",
        "RFC 3339", "expires_at: February 30th");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":\"tomorrow\"}", "expires_at", "RFC 3339",
        "expires_at: a word");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":\"1796083200\"}", "expires_at", "RFC 3339",
        "expires_at: epoch seconds as a string");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":0}", "expires_at", "epoch seconds from 1",
        "expires_at: 0");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":-5}", "expires_at", "epoch seconds from 1",
        "expires_at: negative");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":253402300800}", "expires_at",
        "epoch seconds from 1", "expires_at: past the year 9999");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":1796083200.5}", "expires_at",
        "without a fraction", "expires_at: a fraction of epoch seconds");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":true}", "expires_at", "not a boolean",
        "expires_at: a boolean");
    bad("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
        "\"expires_at\":1,\"expires_at\":2}", "expires_at",
        "more than once", "expires_at: twice");
    bad_len("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
            "\"expires_at\":\"2026-12-01T00:00:00Z\\u0000\"}",
            strlen("{\"customer_id\":\"acme\",\"limit\":5,\"window\":60,"
                   "\"expires_at\":\"2026-12-01T00:00:00Z\\u0000\"}"),
            "expires_at", "RFC 3339", "expires_at: with an escaped NUL");

    rule.expires_at = 1000;
    ok(rl_rule_check_expiry(&rule, 999, &err) == 0,
       "check_expiry: a second ahead is fine");
    ok(rl_rule_check_expiry(&rule, 1000, &err) == -1
       && same_field(err.field, "expires_at")
       && strstr(err.message, "1970-01-01T00:16:40Z") != NULL,
       "check_expiry: now is refused, naming the time");
    rule.expires_at = 0;
    ok(rl_rule_check_expiry(&rule, 1000, &err) == 0,
       "check_expiry: no expiry is fine");

    /* stored form: the epoch after the algorithm, old forms still read */

    memset(&rule, 0, sizeof(rule));
    rule.limit = 5;
    rule.window = 60;
    rule.expires_at = 1796083200;
    n = rl_rule_encode(&rule, buf, sizeof(buf));
    ok(n == 17 && strcmp(buf, "5 60 - 1796083200") == 0,
       "encode: \"5 60 - 1796083200\"");

    rule.limit = RL_RULE_MAX_LIMIT;
    rule.window = RL_RULE_MAX_WINDOW;
    rule.algorithm = RL_RULE_ALGORITHM_SLIDING_WINDOW;
    rule.expires_at = RL_RULE_MAX_EXPIRES;
    n = rl_rule_encode(&rule, buf, sizeof(buf));
    ok(n == 44 && strcmp(buf, "1000000000 86400 sliding_window "
                              "253402300799") == 0,
       "encode: the longest stored form with an expiry");

    rule.expires_at = RL_RULE_MAX_EXPIRES + 1;
    ok(rl_rule_encode(&rule, buf, sizeof(buf)) == 0,
       "encode refuses an expiry past 9999");

    memset(&rule, 0, sizeof(rule));
    ok(rl_rule_decode("5 60 token_bucket 1796083200", 28, &rule) == 0
       && rule.limit == 5 && rule.expires_at == 1796083200
       && rule.algorithm == RL_RULE_ALGORITHM_TOKEN_BUCKET,
       "decode: an expiry");

    rule.expires_at = 77;
    ok(rl_rule_decode("5 60 token_bucket", 17, &rule) == 0
       && rule.expires_at == 0, "decode: none is 0");

    ok(rl_rule_decode("5 60 - 0", 8, &rule) == -1
       && rl_rule_decode("5 60 - 01", 9, &rule) == -1
       && rl_rule_decode("5 60 - 253402300800", 19, &rule) == -1
       && rl_rule_decode("5 60 - 1 2", 10, &rule) == -1
       && rl_rule_decode("5 60 - ", 7, &rule) == -1
       && rl_rule_decode("5 60 -  1", 9, &rule) == -1,
       "decode refuses an expiry of 0, with a leading zero, past 9999, two,"
       " empty, after two spaces");

    /* the answer */

    memset(&rule, 0, sizeof(rule));
    memcpy(rule.customer_id, "acme", 4);
    rule.customer_id_len = 4;
    rule.limit = 5;
    rule.window = 60;
    rule.expires_at = 1796083200;
    n = rl_rule_to_json(&rule, buf, sizeof(buf));
    ok(n > 0 && strcmp(buf, "{\"customer_id\":\"acme\",\"limit\":5,"
                            "\"window\":60,\"expires_at\":"
                            "\"2026-12-01T00:00:00Z\"}\n") == 0,
       "to_json: expires_at in RFC 3339 UTC");
}


static void
test_valid_utf8(void)
{
    ok(rl_rule_valid_utf8((const unsigned char *) "", 0), "utf8: empty");
    ok(rl_rule_valid_utf8((const unsigned char *) "a\"\n\\", 4),
       "utf8: ASCII with controls (JSON escapes them)");
    ok(rl_rule_valid_utf8((const unsigned char *) "caf\xc3\xa9", 5),
       "utf8: two-byte form");
    ok(rl_rule_valid_utf8((const unsigned char *) "\xf0\x9f\x98\x80", 4),
       "utf8: four-byte form");
    ok(!rl_rule_valid_utf8((const unsigned char *) "ab\xff" "c", 4),
       "utf8: 0xff refused");
    ok(!rl_rule_valid_utf8((const unsigned char *) "\xc3", 1),
       "utf8: cut short refused");
    ok(!rl_rule_valid_utf8((const unsigned char *) "\xc0\xaf", 2),
       "utf8: overlong refused");
    ok(!rl_rule_valid_utf8((const unsigned char *) "\xed\xa0\x80", 3),
       "utf8: surrogate refused");
}


int
main(void)
{
    test_malformed();
    test_strict_json();
    test_not_object();
    test_fields();
    test_limit();
    test_window();
    test_customer_id();
    test_algorithm();
    test_first_error();
    test_good();
    test_check_customer_id();
    test_policy();
    test_check_policy_name();
    test_encode_decode();
    test_json_out();
    test_time();
    test_expiry();
    test_valid_utf8();

    printf("1..%d\n", tests);

    return failed ? 1 : 0;
}
