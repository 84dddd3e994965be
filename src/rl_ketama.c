
/*
 * The ketama ring of twemproxy 0.5.0, rewritten from the description of its
 * algorithm (see rl_ketama.h); every constant below is there because
 * nutcracker uses it, not because it is a good choice on its own.
 */


#include <string.h>
#include <stdio.h>

#include <openssl/evp.h>

#include "rl_ketama.h"


#define RL_KETAMA_POINTS_PER_SERVER  160
#define RL_KETAMA_POINTS_PER_HASH    4
#define RL_KETAMA_MD5_LEN            16

#define RL_KETAMA_FNV_BASIS          0x84222325u
#define RL_KETAMA_FNV_PRIME          0x1b3u

#define RL_KETAMA_MURMUR_M           0x5bd1e995u
#define RL_KETAMA_MURMUR_R           24
#define RL_KETAMA_MURMUR_SEED        0xdeadbeefu

/* keeps 160 * n and every point index inside uint32_t, as in twemproxy */
#define RL_KETAMA_MAX_SERVERS        (UINT32_MAX / RL_KETAMA_POINTS_PER_SERVER)


static uint32_t rl_ketama_le32(const unsigned char *p);
static uint32_t rl_ketama_md5(const unsigned char *key, size_t len);
static uint32_t rl_ketama_fnv1a_64(const unsigned char *key, size_t len);
static uint32_t rl_ketama_murmur(const unsigned char *key, size_t len);
static uint32_t rl_ketama_server_points(uint32_t weight, uint32_t total_weight,
    uint32_t nservers);
static size_t rl_ketama_decimal_len(uint32_t v);
static size_t rl_ketama_check(const rl_ketama_server_t *servers, size_t n,
    uint32_t *total_weight);
static int rl_ketama_point_cmp(const rl_ketama_point_t *a,
    const rl_ketama_point_t *b, const rl_ketama_server_t *servers);
static void rl_ketama_sift_down(rl_ketama_point_t *points, size_t root,
    size_t end, const rl_ketama_server_t *servers);
static void rl_ketama_sort(rl_ketama_point_t *points, size_t npoints,
    const rl_ketama_server_t *servers);


/*
 * twemproxy computes the share in float, adds 1e-10 in double (a double
 * literal promotes the sum) and narrows back to float before flooring;
 * every step is kept so that rounding at the edges (weights that do not
 * divide evenly) gives the same count.  The value is never negative, so the
 * conversion to an integer is the floor.
 */

static uint32_t
rl_ketama_server_points(uint32_t weight, uint32_t total_weight,
    uint32_t nservers)
{
    float  pct, hashes;

    pct = (float) weight / (float) total_weight;

    hashes = pct * (float) RL_KETAMA_POINTS_PER_SERVER;
    hashes = hashes / (float) RL_KETAMA_POINTS_PER_HASH;
    hashes = hashes * (float) nservers;
    hashes = (float) ((double) hashes + 0.0000000001);

    return (uint32_t) hashes * RL_KETAMA_POINTS_PER_HASH;
}


static size_t
rl_ketama_decimal_len(uint32_t v)
{
    size_t  len;

    len = 1;

    while (v >= 10) {
        v /= 10;
        len++;
    }

    return len;
}


/*
 * Validates the servers the way both public functions need it and returns
 * the exact number of points, or 0 when the servers are refused.
 */

static size_t
rl_ketama_check(const rl_ketama_server_t *servers, size_t n,
    uint32_t *total_weight)
{
    size_t    i, j, total;
    uint32_t  weight, points;

    if (servers == NULL || n == 0 || n > RL_KETAMA_MAX_SERVERS) {
        return 0;
    }

    weight = 0;

    for (i = 0; i < n; i++) {
        if (servers[i].weight == 0
            || servers[i].weight > UINT32_MAX - weight)
        {
            return 0;
        }

        weight += servers[i].weight;

        /* "%.*s" in twemproxy would stop at a NUL: no name can hold one */
        if (servers[i].name == NULL
            || servers[i].name_len == 0
            || servers[i].name_len > RL_KETAMA_MAX_POINT_NAME
            || memchr(servers[i].name, '\0', servers[i].name_len) != NULL)
        {
            return 0;
        }
    }

    /* a duplicate name would give both servers the very same points */
    for (i = 0; i < n; i++) {
        for (j = i + 1; j < n; j++) {
            if (servers[i].name_len == servers[j].name_len
                && memcmp(servers[i].name, servers[j].name,
                          servers[i].name_len)
                   == 0)
            {
                return 0;
            }
        }
    }

    total = 0;

    for (i = 0; i < n; i++) {
        points = rl_ketama_server_points(servers[i].weight, weight,
                                         (uint32_t) n);
        if (points == 0) {
            continue;
        }

        if (servers[i].name_len + 1
            + rl_ketama_decimal_len(points / RL_KETAMA_POINTS_PER_HASH - 1)
            > RL_KETAMA_MAX_POINT_NAME)
        {
            return 0;
        }

        total += points;
    }

    *total_weight = weight;

    return total;
}


size_t
rl_ketama_points_needed(const rl_ketama_server_t *servers, size_t n)
{
    uint32_t  total_weight;

    return rl_ketama_check(servers, n, &total_weight);
}


size_t
rl_ketama_build(const rl_ketama_server_t *servers, size_t n,
    rl_ketama_point_t *points)
{
    int                 len;
    size_t              i, npoints;
    uint32_t            total_weight, hashes, h, k;
    unsigned int        md_len;
    unsigned char       md[EVP_MAX_MD_SIZE];
    char                point_name[RL_KETAMA_MAX_POINT_NAME + 1];
    rl_ketama_point_t  *p;

    if (points == NULL || rl_ketama_check(servers, n, &total_weight) == 0) {
        return 0;
    }

    p = points;

    for (i = 0; i < n; i++) {
        hashes = rl_ketama_server_points(servers[i].weight, total_weight,
                                         (uint32_t) n)
                 / RL_KETAMA_POINTS_PER_HASH;

        /* the name may hold any byte but NUL, so it is copied, not printed */
        memcpy(point_name, servers[i].name, servers[i].name_len);

        for (h = 0; h < hashes; h++) {
            len = snprintf(point_name + servers[i].name_len,
                           sizeof(point_name) - servers[i].name_len,
                           "-%lu", (unsigned long) h);

            if (len < 0
                || (size_t) len >= sizeof(point_name) - servers[i].name_len)
            {
                return 0;
            }

            md_len = 0;

            if (EVP_Digest(point_name, servers[i].name_len + (size_t) len,
                           md, &md_len, EVP_md5(), NULL)
                != 1
                || md_len != RL_KETAMA_MD5_LEN)
            {
                return 0;
            }

            /* twemproxy reads the digest as four little-endian words */
            for (k = 0; k < RL_KETAMA_POINTS_PER_HASH; k++) {
                p->value = rl_ketama_le32(&md[k * 4]);
                p->server = (uint32_t) i;
                p++;
            }
        }
    }

    npoints = (size_t) (p - points);

    rl_ketama_sort(points, npoints, servers);

    return npoints;
}


/*
 * A total order on points, so that the ring does not depend on how the
 * sort treats equal elements: ties go to the server whose name nutcracker
 * puts first (shorter, then bytewise smaller), see rl_ketama.h.
 */

static int
rl_ketama_point_cmp(const rl_ketama_point_t *a, const rl_ketama_point_t *b,
    const rl_ketama_server_t *servers)
{
    const rl_ketama_server_t  *sa, *sb;

    if (a->value != b->value) {
        return a->value < b->value ? -1 : 1;
    }

    if (a->server == b->server) {
        return 0;
    }

    sa = &servers[a->server];
    sb = &servers[b->server];

    if (sa->name_len != sb->name_len) {
        return sa->name_len < sb->name_len ? -1 : 1;
    }

    return memcmp(sa->name, sb->name, sa->name_len) < 0 ? -1 : 1;
}


static void
rl_ketama_sift_down(rl_ketama_point_t *points, size_t root, size_t end,
    const rl_ketama_server_t *servers)
{
    size_t             child;
    rl_ketama_point_t  tmp;

    for ( ;; ) {
        child = 2 * root + 1;

        if (child >= end) {
            return;
        }

        if (child + 1 < end
            && rl_ketama_point_cmp(&points[child], &points[child + 1],
                                   servers)
               < 0)
        {
            child++;
        }

        if (rl_ketama_point_cmp(&points[root], &points[child], servers) >= 0) {
            return;
        }

        tmp = points[root];
        points[root] = points[child];
        points[child] = tmp;

        root = child;
    }
}


/*
 * Heapsort: qsort() cannot see the server names the order needs, and the
 * ring may sit in shared memory with no room for a merge buffer.
 */

static void
rl_ketama_sort(rl_ketama_point_t *points, size_t npoints,
    const rl_ketama_server_t *servers)
{
    size_t             i;
    rl_ketama_point_t  tmp;

    if (npoints < 2) {
        return;
    }

    for (i = npoints / 2; i > 0; i--) {
        rl_ketama_sift_down(points, i - 1, npoints, servers);
    }

    for (i = npoints - 1; i > 0; i--) {
        tmp = points[0];
        points[0] = points[i];
        points[i] = tmp;

        rl_ketama_sift_down(points, 0, i, servers);
    }
}


static uint32_t
rl_ketama_le32(const unsigned char *p)
{
    return (uint32_t) p[0]
           | (uint32_t) p[1] << 8
           | (uint32_t) p[2] << 16
           | (uint32_t) p[3] << 24;
}


/* twemproxy's hash_md5: the digest's first word, little-endian */

static uint32_t
rl_ketama_md5(const unsigned char *key, size_t len)
{
    unsigned int   md_len;
    unsigned char  md[EVP_MAX_MD_SIZE];

    md_len = 0;

    if (EVP_Digest(key, len, md, &md_len, EVP_md5(), NULL) != 1
        || md_len != RL_KETAMA_MD5_LEN)
    {
        return 0;
    }

    return rl_ketama_le32(md);
}


static uint32_t
rl_ketama_fnv1a_64(const unsigned char *key, size_t len)
{
    size_t    i;
    uint32_t  hash, byte;

    hash = RL_KETAMA_FNV_BASIS;

    for (i = 0; i < len; i++) {
        byte = key[i];

        /* twemproxy widens a signed char: bytes >= 0x80 sign-extend */
        if (byte >= 0x80) {
            byte |= 0xffffff00u;
        }

        hash ^= byte;
        hash *= RL_KETAMA_FNV_PRIME;
    }

    return hash;
}


/*
 * twemproxy's hash_murmur, MurmurHash2 seeded with the length.  It reads
 * each word through an unsigned int pointer, little-endian on x86-64: the
 * words are assembled explicitly here, so a big-endian build agrees too.
 */

static uint32_t
rl_ketama_murmur(const unsigned char *key, size_t len)
{
    uint32_t  hash, k, n;

    n = (uint32_t) len;
    hash = (RL_KETAMA_MURMUR_SEED * n) ^ n;

    while (len >= 4) {
        k = rl_ketama_le32(key);

        k *= RL_KETAMA_MURMUR_M;
        k ^= k >> RL_KETAMA_MURMUR_R;
        k *= RL_KETAMA_MURMUR_M;

        hash *= RL_KETAMA_MURMUR_M;
        hash ^= k;

        key += 4;
        len -= 4;
    }

    switch (len) {
    case 3:
        hash ^= (uint32_t) key[2] << 16;
        /* fall through */
    case 2:
        hash ^= (uint32_t) key[1] << 8;
        /* fall through */
    case 1:
        hash ^= key[0];
        hash *= RL_KETAMA_MURMUR_M;
        break;
    default:
        break;
    }

    hash ^= hash >> 13;
    hash *= RL_KETAMA_MURMUR_M;
    hash ^= hash >> 15;

    return hash;
}


uint32_t
rl_ketama_hash(rl_ketama_hash_t hash, const unsigned char *key, size_t len)
{
    switch (hash) {

    case RL_KETAMA_HASH_FNV1A_64:
        return rl_ketama_fnv1a_64(key, len);

    case RL_KETAMA_HASH_MURMUR:
        return rl_ketama_murmur(key, len);

    default: /* RL_KETAMA_HASH_MD5 */
        return rl_ketama_md5(key, len);
    }
}


const char *
rl_ketama_hash_name(rl_ketama_hash_t hash)
{
    switch (hash) {

    case RL_KETAMA_HASH_MD5:
        return "md5";

    case RL_KETAMA_HASH_FNV1A_64:
        return "fnv1a_64";

    case RL_KETAMA_HASH_MURMUR:
        return "murmur";

    default:
        return NULL;
    }
}


uint32_t
rl_ketama_lookup(const rl_ketama_point_t *points, size_t npoints,
    uint32_t hash)
{
    size_t  left, right, middle;

    if (points == NULL || npoints == 0) {
        return 0;
    }

    left = 0;
    right = npoints;

    /* the leftmost point >= hash, so that at a tie the first point wins */
    while (left < right) {
        middle = left + (right - left) / 2;

        if (points[middle].value < hash) {
            left = middle + 1;

        } else {
            right = middle;
        }
    }

    if (right == npoints) {
        right = 0;
    }

    return points[right].server;
}
