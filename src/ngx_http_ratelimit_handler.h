
/*
 * Global API rate limiter: the check of each request, first handler of the
 * precontent phase.
 */


#ifndef _NGX_HTTP_RATELIMIT_HANDLER_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_HANDLER_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"


ngx_int_t ngx_http_ratelimit_handler(ngx_http_request_t *r);

/*
 * The Redis key of a caller's count under a policy, as the check builds it
 * (see ngx_http_ratelimit_key()), into key[NGX_HTTP_RATELIMIT_MAX_REDIS_KEY]:
 * algorithm RL_RULE_ALGORITHM_TOKEN_BUCKET or _SLIDING_WINDOW, key_name
 * one of the policy's key_names.  Returns its length.
 */
size_t ngx_http_ratelimit_redis_key(u_char *key, ngx_uint_t algorithm,
    ngx_http_ratelimit_policy_t *policy, ngx_str_t *key_name,
    ngx_str_t *caller);

/* $ratelimit_status, $ratelimit_policy, $ratelimit_remaining */
ngx_int_t ngx_http_ratelimit_add_variables(ngx_conf_t *cf);


#endif /* _NGX_HTTP_RATELIMIT_HANDLER_H_INCLUDED_ */
