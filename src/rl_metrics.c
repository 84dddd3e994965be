
/*
 * The Prometheus text exposition format: what of it does not need nginx.
 */


#include "rl_metrics.h"


/*
 * From a round trip on loopback to one ten times the default timeout;
 * +Inf last.  prometheus_client and Prometheus itself read "le" with a
 * float parser, so plain decimals do.
 */
const uint64_t  rl_metrics_bucket_us[RL_METRICS_BUCKETS] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
    UINT64_MAX
};

const char  *rl_metrics_bucket_le[RL_METRICS_BUCKETS] = {
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
    "0.01", "0.025", "0.05", "0.1", "+Inf"
};


unsigned
rl_metrics_bucket(uint64_t us)
{
    unsigned  i;

    /* 11 comparisons at most: a search would not pay */

    for (i = 0; i < RL_METRICS_BUCKETS - 1; i++) {
        if (us <= rl_metrics_bucket_us[i]) {
            return i;
        }
    }

    return RL_METRICS_BUCKETS - 1;
}


unsigned char *
rl_metrics_escape(unsigned char *dst, const unsigned char *src, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        switch (src[i]) {

        case '\\':
        case '"':
            *dst++ = '\\';
            *dst++ = src[i];
            break;

        case '\n':
            *dst++ = '\\';
            *dst++ = 'n';
            break;

        default:
            *dst++ = src[i];
        }
    }

    return dst;
}
