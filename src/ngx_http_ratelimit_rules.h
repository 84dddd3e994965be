
/*
 * Global API rate limiter: per-customer rules kept in Redis, on every
 * shard, and the poll that keeps edge nodes and shards in step.
 */


#ifndef _NGX_HTTP_RATELIMIT_RULES_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_RULES_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"


/* every shard holds every rule, in one hash, with a version counter */
#define NGX_HTTP_RATELIMIT_RULES_KEY        "rl:rules"
#define NGX_HTTP_RATELIMIT_RULES_VERSION    "rl:rules:version"

/*
 * A rules script's body and length, lua/rules_lib.lua in front of it (the
 * user includes ngx_http_ratelimit_scripts.h)
 */
#define ngx_http_ratelimit_rules_script(name)                                 \
    NGX_HTTP_RATELIMIT_LUA_RULES_LIB name,                                    \
    sizeof(NGX_HTTP_RATELIMIT_LUA_RULES_LIB name) - 1


/*
 * The hash field of a rule: "<customer>" for a rule of every policy of the
 * customer, "<customer>\x1f<policy>" for one policy's (a customer id has no
 * control characters, so no id reads as another's policy rule).
 */
#define NGX_HTTP_RATELIMIT_RULE_SEPARATOR   '\x1f'
#define NGX_HTTP_RATELIMIT_MAX_RULE_FIELD                                     \
    (RL_RULE_MAX_CUSTOMER_ID + 1 + RL_RULE_MAX_POLICY)

/* writes the field into field[NGX_HTTP_RATELIMIT_MAX_RULE_FIELD] */
size_t ngx_http_ratelimit_rules_field(u_char *field, ngx_str_t *customer,
    ngx_str_t *policy);

/*
 * The command that reads the rules in force for a customer under a policy:
 * HGET rl:rules <customer> without a policy, HMGET rl:rules <customer>
 * <customer>\x1f<policy> with one (field[] holds the latter).  argv and
 * argvlen have room for 4; the number of arguments is returned.
 */
ngx_uint_t ngx_http_ratelimit_rules_lookup(const char **argv, size_t *argvlen,
    ngx_str_t *customer, ngx_str_t *policy, u_char *field);

ngx_int_t ngx_http_ratelimit_rules_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_main_conf_t *rmcf);
void ngx_http_ratelimit_rules_exit_process(ngx_cycle_t *cycle);
void ngx_http_ratelimit_rules_eval(const char **argv, size_t *argvlen,
    const char *body, size_t len);
/*
 * A stored rule: NGX_OK and *limit, NGX_DECLINED when the customer has no
 * rule (deleted), NGX_ERROR when garbled; *stamp when not NULL.
 */
ngx_int_t ngx_http_ratelimit_rule_parse(u_char *stored, size_t len,
    rl_limit_t *limit, uint64_t *stamp);



#endif /* _NGX_HTTP_RATELIMIT_RULES_H_INCLUDED_ */
