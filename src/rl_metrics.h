
/*
 * The Prometheus text exposition format (version 0.0.4), what of it does
 * not need nginx: the buckets of the round-trip histogram and label values
 * escaped.  Unit-tested.
 */


#ifndef _RL_METRICS_H_INCLUDED_
#define _RL_METRICS_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


/* 50 us to 100 ms, and +Inf */
#define RL_METRICS_BUCKETS        12

/* the longest "le" value, "0.00025" */
#define RL_METRICS_LE_LEN         8

/* a label value may grow to twice its length when escaped */
#define rl_metrics_escaped_max(len)  (2 * (len))


/* the upper bound of each bucket, in us, and as "le" writes it, seconds */
extern const uint64_t    rl_metrics_bucket_us[RL_METRICS_BUCKETS];
extern const char       *rl_metrics_bucket_le[RL_METRICS_BUCKETS];

/* the first bucket whose bound holds the value (le: less or equal) */
unsigned rl_metrics_bucket(uint64_t us);

/*
 * A label value as the format wants it between double quotes: backslash,
 * double quote and line feed escaped.  dst has room for
 * rl_metrics_escaped_max(len); returns the end.
 */
unsigned char *rl_metrics_escape(unsigned char *dst, const unsigned char *src,
    size_t len);


#endif /* _RL_METRICS_H_INCLUDED_ */
