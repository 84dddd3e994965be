
/*
 * A ketama consistent-hashing ring that routes keys exactly like
 * twemproxy 0.5.0 (nutcracker) does with "distribution: ketama" and
 * "hash: md5", "fnv1a_64" or "murmur", so a key counted by this module lives
 * on the same Redis shard that a nutcracker in front of the same shards,
 * with the same hash, would pick.
 *
 * Plain C99 without nginx headers: the nginx module and the unit tests link
 * the same file.  MD5 comes from OpenSSL's libcrypto.
 */


#ifndef _RL_KETAMA_H_INCLUDED_
#define _RL_KETAMA_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


/*
 * twemproxy builds each point name as "<name>-<i>" in an 86-byte buffer; a
 * longer point name overflows its buffer, so such names are refused rather
 * than routed in a way no nutcracker could agree with.
 */
#define RL_KETAMA_MAX_POINT_NAME  85


/*
 * The key hashes, by twemproxy's names.  The ring's points are MD5 whatever
 * the key hash: only where a key lands on the circle depends on it.
 */
typedef enum {
    RL_KETAMA_HASH_MD5 = 0,
    RL_KETAMA_HASH_FNV1A_64,
    RL_KETAMA_HASH_MURMUR
} rl_ketama_hash_t;

#define RL_KETAMA_HASH_DEFAULT  RL_KETAMA_HASH_MD5


typedef struct {
    uint32_t              value;     /* point on the circle */
    uint32_t              server;    /* index into the server array given to
                                        rl_ketama_build */
} rl_ketama_point_t;


typedef struct {
    const unsigned char  *name;      /* point name, "host:port" as twemproxy
                                        names it (just "host" for port
                                        11211), or the server's explicit
                                        name */
    size_t                name_len;
    uint32_t              weight;    /* >= 1 */
} rl_ketama_server_t;


/*
 * The number of points rl_ketama_build writes for these servers (exact, and
 * so an upper bound), letting the caller allocate the ring, e.g. in nginx
 * shared memory; 0 when rl_ketama_build would refuse the servers.
 */
size_t rl_ketama_points_needed(const rl_ketama_server_t *servers, size_t n);

/*
 * Fills points, sorted by value, and returns the number written, or 0 on
 * error: n == 0, a zero weight, total weight over UINT32_MAX, an empty name,
 * a name too long for twemproxy's point buffer, two servers with the same
 * name (nutcracker refuses that config), or an MD5 failure.
 *
 * Points with equal values are ordered by their server's name, shorter
 * names first and then bytewise (memcmp), whatever the order of the array:
 * nutcracker sorts its servers that way while validating the config, adds
 * their points in that order and sorts the ring with glibc's stable merge
 * sort, so at a tie the name that sorts first owns the key.  This was
 * checked against Debian 12's nutcracker with colliding server names
 * (t/002-ketama-nutcracker.t).
 */
size_t rl_ketama_build(const rl_ketama_server_t *servers, size_t n,
    rl_ketama_point_t *points);

/*
 * The key's place on the circle under hash, as twemproxy 0.5.0 computes it
 * on x86-64 (where Debian's nutcracker runs; its murmur reads native-endian
 * words):
 *
 *   md5       the first four bytes of the key's MD5, little-endian (0 if
 *             libcrypto fails, which would have failed rl_ketama_build too);
 *   fnv1a_64  despite the name a 32-bit FNV-1a with the low half of the
 *             64-bit offset basis (0x84222325) and of the 64-bit prime
 *             (0x1b3), over the key's bytes taken as signed char, so bytes
 *             >= 0x80 are xored in sign-extended;
 *   murmur    MurmurHash2 with seed 0xdeadbeef * len (modulo 2^32), its
 *             words and tail bytes read unsigned, little-endian.
 *
 * nutcracker itself routes an empty key (and any key of a one-server pool)
 * to hash 0; the module never hashes an empty key.
 */
uint32_t rl_ketama_hash(rl_ketama_hash_t hash, const unsigned char *key,
    size_t len);

/*
 * twemproxy's name of a hash ("md5", "fnv1a_64", "murmur"), NULL for a value
 * outside the enum: for logs and for tools that take the name.
 */
const char *rl_ketama_hash_name(rl_ketama_hash_t hash);

/*
 * The index of the server owning hash: the first point whose value is
 * >= hash, wrapping around to the first point.  npoints must be > 0 (0 is
 * returned otherwise).
 */
uint32_t rl_ketama_lookup(const rl_ketama_point_t *points, size_t npoints,
    uint32_t hash);


#endif /* _RL_KETAMA_H_INCLUDED_ */
