
/*
 * Global API rate limiter: the check of each request, first handler of the
 * precontent phase.
 */


#ifndef _NGX_HTTP_RATELIMIT_HANDLER_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_HANDLER_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"


ngx_int_t ngx_http_ratelimit_handler(ngx_http_request_t *r);

/* $ratelimit_status, $ratelimit_policy, $ratelimit_remaining */
ngx_int_t ngx_http_ratelimit_add_variables(ngx_conf_t *cf);


#endif /* _NGX_HTTP_RATELIMIT_HANDLER_H_INCLUDED_ */
