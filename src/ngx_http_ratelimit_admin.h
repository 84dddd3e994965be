
/*
 * Global API rate limiter: the admin endpoint (PUT, GET, DELETE of
 * per-customer rules, their list, a caller's usage read and reset), the
 * content handler of a "ratelimit_admin" location.
 */


#ifndef _NGX_HTTP_RATELIMIT_ADMIN_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_ADMIN_H_INCLUDED_


#include "ngx_http_ratelimit_module.h"


ngx_int_t ngx_http_ratelimit_admin_handler(ngx_http_request_t *r);


#endif /* _NGX_HTTP_RATELIMIT_ADMIN_H_INCLUDED_ */
