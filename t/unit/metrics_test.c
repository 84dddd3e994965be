
/*
 * Unit test of the Prometheus exposition helpers: the round-trip
 * histogram's buckets and the escaping of label values.  Prints TAP, the
 * plan at the end.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_metrics.h"


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


static int
escapes_to(const char *in, const char *want)
{
    size_t          len;
    unsigned char  *buf, *end;
    int             same;

    len = strlen(in);

    /* one byte past the worst case, to see nothing is written there */

    buf = malloc(rl_metrics_escaped_max(len) + 1);
    if (buf == NULL) {
        return 0;
    }

    memset(buf, 0xa5, rl_metrics_escaped_max(len) + 1);

    end = rl_metrics_escape(buf, (const unsigned char *) in, len);

    same = (size_t) (end - buf) == strlen(want)
           && memcmp(buf, want, strlen(want)) == 0
           && (size_t) (end - buf) <= rl_metrics_escaped_max(len)
           && buf[rl_metrics_escaped_max(len)] == 0xa5;

    free(buf);

    return same;
}


static void
test_buckets(void)
{
    unsigned  i;
    int       bounds, le, sorted;

    ok(rl_metrics_bucket(0) == 0, "0 us falls in the first bucket");
    ok(rl_metrics_bucket(50) == 0, "50 us falls in le=0.00005 (le is <=)");
    ok(rl_metrics_bucket(51) == 1, "51 us falls in le=0.0001");
    ok(rl_metrics_bucket(1000) == 4, "1 ms falls in le=0.001");
    ok(rl_metrics_bucket(1001) == 5, "1.001 ms falls in le=0.0025");
    ok(rl_metrics_bucket(100000) == 10, "100 ms falls in le=0.1");
    ok(rl_metrics_bucket(100001) == RL_METRICS_BUCKETS - 1,
       "above 100 ms falls in +Inf");
    ok(rl_metrics_bucket(UINT64_MAX) == RL_METRICS_BUCKETS - 1,
       "the largest value falls in +Inf");

    /* every "le" says its bound in seconds, and the bounds grow */

    bounds = 1;
    le = 1;
    sorted = 1;

    for (i = 0; i < RL_METRICS_BUCKETS - 1; i++) {
        if (rl_metrics_bucket(rl_metrics_bucket_us[i]) != i
            || rl_metrics_bucket(rl_metrics_bucket_us[i] + 1) != i + 1)
        {
            bounds = 0;
        }

        if ((uint64_t) (strtod(rl_metrics_bucket_le[i], NULL) * 1e6 + 0.5)
            != rl_metrics_bucket_us[i]
            || strlen(rl_metrics_bucket_le[i]) > RL_METRICS_LE_LEN)
        {
            le = 0;
        }

        if (rl_metrics_bucket_us[i] >= rl_metrics_bucket_us[i + 1]) {
            sorted = 0;
        }
    }

    ok(bounds, "each bound belongs to its bucket, one more to the next");
    ok(le, "each le label is its bound in seconds, within RL_METRICS_LE_LEN");
    ok(sorted, "the bounds grow");
    ok(strcmp(rl_metrics_bucket_le[RL_METRICS_BUCKETS - 1], "+Inf") == 0,
       "the last bucket is +Inf");
}


static void
test_escape(void)
{
    ok(escapes_to("127.0.0.1:6379", "127.0.0.1:6379"),
       "a plain value is copied");
    ok(escapes_to("", ""), "an empty value stays empty");
    ok(escapes_to("a\"b", "a\\\"b"), "a double quote is escaped");
    ok(escapes_to("a\\b", "a\\\\b"), "a backslash is escaped");
    ok(escapes_to("a\nb", "a\\nb"), "a line feed becomes \\n");
    ok(escapes_to("\\\"\n", "\\\\\\\"\\n"),
       "every byte escaped fits twice the length");
    ok(escapes_to("a\tb\x7f\xc3\xa9", "a\tb\x7f\xc3\xa9"),
       "tabs, DEL and UTF-8 pass as they are (the format allows them)");
}


int
main(void)
{
    test_buckets();
    test_escape();

    printf("1..%d\n", tests);

    return failed ? 1 : 0;
}
