
/*
 * What Redis Sentinel says of where a primary is, and whether a node is
 * one: nginx-free, so unit tests can drive it with replies built by
 * hiredis' own reader.
 */


#ifndef _RL_SENTINEL_H_INCLUDED_
#define _RL_SENTINEL_H_INCLUDED_


#include <stddef.h>

#include <hiredis/hiredis.h>


/* a master name: as long as a shard's name may be */
#define RL_SENTINEL_MAX_NAME    64

/* an address as a sentinel writes it: an IPv4 or IPv6 literal, or a name */
#define RL_SENTINEL_MAX_HOST    255


#define RL_SENTINEL_OK          0
#define RL_SENTINEL_UNKNOWN     1    /* the sentinel does not know the name */
#define RL_SENTINEL_OTHER       2    /* a message of no concern */
#define RL_SENTINEL_BAD         3    /* not what a sentinel sends */


/* where a primary is; host points into the reply it was read from */
typedef struct {
    const char  *host;
    size_t       host_len;
    int          port;
} rl_sentinel_addr_t;


/*
 * 1 if the name can be a sentinel's master name that this module follows:
 * 1 to RL_SENTINEL_MAX_NAME bytes, none a space or a control byte (the
 * +switch-master message separates its fields with spaces).
 */
int rl_sentinel_valid_name(const char *name, size_t len);

/*
 * The reply of "SENTINEL get-master-addr-by-name": RL_SENTINEL_OK with
 * *addr, RL_SENTINEL_UNKNOWN (nil: no such master), RL_SENTINEL_BAD (an
 * error or anything else; *why says what).
 */
int rl_sentinel_master_reply(const redisReply *reply,
    rl_sentinel_addr_t *addr, const char **why);

/*
 * One reply on a connection subscribed to "+switch-master":
 * RL_SENTINEL_OK with *addr when it is a switch of this master (the new
 * primary's address), RL_SENTINEL_OTHER for the subscription's confirmation
 * and the switches of other masters, RL_SENTINEL_BAD for anything else.
 * The message is "<name> <old-ip> <old-port> <new-ip> <new-port>".
 */
int rl_sentinel_message(const redisReply *reply, const char *name,
    size_t name_len, rl_sentinel_addr_t *addr, const char **why);

/*
 * The reply of ROLE: 1 when the node says it is a primary ("master"), 0
 * when anything else (a replica, a sentinel, an error, no array).
 */
int rl_sentinel_is_primary(const redisReply *reply);


#endif /* _RL_SENTINEL_H_INCLUDED_ */
