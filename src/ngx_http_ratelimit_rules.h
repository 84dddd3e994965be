
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


/* HGET rl:rules <customer>: the stored rule of one customer */
void ngx_http_ratelimit_rules_hget(const char **argv, size_t *argvlen,
    ngx_str_t *customer);

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
