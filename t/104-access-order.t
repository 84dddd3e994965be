# Where the limiter stands among nginx's own checks, which key counts, and
# what an internal redirect does: the check runs once access is settled
# (allow/deny, auth_request, satisfy any), counts nothing nginx refuses,
# keeps the values of "ratelimit" apart, keeps denials per limit, and
# checks a request against every limit it passes through, once each.

use Test::Nginx::Socket;

# unique to this run of the file
our $Run = "t104-$$-" . time();

no_shuffle();
repeat_each(1);

# the plan is what the blocks run: no count kept by hand
plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: a request refused by deny is answered 403 and counts nothing
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /denied {
        deny all;
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        empty_gif;
    }
    location /open {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-deny"
--- pipelined_requests eval
["GET /denied", "GET /denied", "GET /denied", "GET /open", "GET /open"]
--- error_code eval
[403, 403, 403, 200, 429]



=== TEST 2: auth_request decides first; its key is the one limited
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location = /auth {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/authz;
        proxy_pass_request_body off;
    }
    location = /authz {
        if ($http_x_token != "good") {
            return 401;
        }
        add_header X-Authed-User "$http_x_user_id-authed";
        return 200;
    }
    location /api {
        auth_request /auth;
        auth_request_set $authed_user $upstream_http_x_authed_user;
        ratelimit $authed_user;
        ratelimit_default 2 60s;
        empty_gif;
    }
--- pipelined_requests eval
["GET /api", "GET /api", "GET /api", "GET /api", "GET /api", "GET /api"]
--- more_headers eval
["X-User-Id: $::Run-ar\nX-Token: bad",
 "X-User-Id: $::Run-ar\nX-Token: bad",
 "X-User-Id: $::Run-ar\nX-Token: bad",
 "X-User-Id: $::Run-ar\nX-Token: good",
 "X-User-Id: $::Run-ar\nX-Token: good",
 "X-User-Id: $::Run-ar\nX-Token: good"]
--- error_code eval
[401, 401, 401, 200, 200, 429]



=== TEST 3: under satisfy any, a client that allow lets in is still limited
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        satisfy any;
        allow 127.0.0.1;
        deny all;
        auth_basic "api";
        auth_basic_user_file /dev/null;
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-any"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]



=== TEST 4: ratelimit_status 403 holds under satisfy any
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        satisfy any;
        allow 127.0.0.1;
        deny all;
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        ratelimit_status 403;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-403"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 403]



=== TEST 5: ratelimit_status 401 holds under satisfy any
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        satisfy any;
        allow 127.0.0.1;
        deny all;
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        ratelimit_status 401;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-401"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 401]



=== TEST 6: a user id that reads like another value's key has its own count
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id $http_x_device;
        ratelimit_default 1 60s;
        empty_gif;
    }
--- more_headers eval
["X-User-Id: $::Run-same", "X-Device: $::Run-same", "X-Device: $::Run-same"]
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]



=== TEST 7: a denial under a tight limit is no denial under a loose one
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /tight {
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        empty_gif;
    }
    location /loose {
        ratelimit $http_x_user_id;
        ratelimit_default 100 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-deny-cache"
--- pipelined_requests eval
["GET /tight", "GET /tight", "GET /tight", "GET /loose"]
--- error_code eval
[200, 200, 429, 200]



=== TEST 8: try_files from a location whose key is empty: the target's limit holds
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /tf {
        ratelimit $http_x_no_such_header;
        try_files /no-such-file @limited;
    }
    location @limited {
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-try-files"
--- pipelined_requests eval
["GET /tf", "GET /tf", "GET /tf", "GET /tf"]
--- error_code eval
[200, 200, 429, 429]



=== TEST 9: error_page into a tighter limit: both limits hold
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /ep/ {
        ratelimit $http_x_user_id;
        ratelimit_default 100 60s;
        error_page 404 = @tight;
    }
    location @tight {
        ratelimit $http_x_client;
        ratelimit_default 2 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-error-page\nX-Client: $::Run-error-page"
--- pipelined_requests eval
["GET /ep/missing", "GET /ep/missing", "GET /ep/missing"]
--- error_code eval
[200, 200, 429]



=== TEST 10: error_page into the same limit counts a request once
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /ep/ {
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        error_page 404 = @same;
    }
    location @same {
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-once"
--- pipelined_requests eval
["GET /ep/missing", "GET /ep/missing", "GET /ep/missing"]
--- error_code eval
[200, 200, 429]



=== TEST 11: X-Accel-Redirect into a limited location: its limit holds
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /xa {
        ratelimit $http_x_no_such_header;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/backend;
    }
    location = /backend {
        add_header X-Accel-Redirect /protected;
        return 200;
    }
    location /protected {
        internal;
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-accel"
--- pipelined_requests eval
["GET /xa", "GET /xa", "GET /xa"]
--- error_code eval
[200, 200, 429]



=== TEST 12: a caller whose id holds control bytes spends its quota
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-esc\e[31mred"
--- request
GET /t
--- error_code: 200



=== TEST 13: ... and its denial is logged without the id (info and up)
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        empty_gif;
    }
--- log_level: info
--- more_headers eval
"X-User-Id: $::Run-esc\e[31mred"
--- request
GET /t
--- error_code: 429
--- error_log eval
[qr/limiting requests by policy "default" \(1 per 60s\)/]
--- no_error_log eval
["\e[31m"]



=== TEST 14: ... and at debug the key is logged with those bytes escaped
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        empty_gif;
    }
--- log_level: debug
--- more_headers eval
"X-User-Id: $::Run-esc\e[31mred"
--- request
GET /t
--- error_code: 429
--- error_log eval
[qr/ratelimit: key "rl:tb:http_x_user_id:k:\Q$::Run\E-esc\\u001B\[31mred" is over its limit/]
