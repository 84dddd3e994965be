# The answer headers: the draft RateLimit / RateLimit-Policy pair (default),
# the legacy X-RateLimit-* set, none at all; Retry-After on every denial.
#
# Token bucket, 3 per 60 s: a token comes back every 20 s, so after n
# requests one more unit than what remains can be used in 20 s ("t", the
# draft's effective window), the full quota is back in 20 * n seconds
# (X-RateLimit-Reset), and the next token after a denial comes in 20 s
# (Retry-After, and t).  The requests of a
# block take milliseconds, and times are rounded up to whole seconds, so the
# values are exact.
#
# User ids are unique to this run, so Redis counts from earlier runs or
# blocks do not matter; the blocks run in file order and once each.

use Test::Nginx::Socket;

our $Run = "t102-$$-" . time();

# sliding window, 2 per hour (TEST 6): a count made at any time in the
# current hour weighs until the end of the next one; after 2 requests the
# next passes half way into the next hour, 1801 to 5400 s from now
# (Retry-After), and "t" says that too, but never more than the window
our $SwRetry = '(?:180[1-9]|18[1-9][0-9]|19[0-9][0-9]|[2-4][0-9]{3}'
               . '|5[0-3][0-9][0-9]|5400)';
our $SwT = '(?:180[1-9]|18[1-9][0-9]|19[0-9][0-9]|2[0-9]{3}|3[0-5][0-9][0-9]'
           . '|3600)';

no_shuffle();
repeat_each(1);

# the plan is what the blocks run: no count kept by hand
plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: "ratelimit_headers on" (the default): RateLimit-Policy and RateLimit, counting down
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 3 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-draft"
--- pipelined_requests eval
[("GET /t") x 5]
--- error_code eval
[200, 200, 200, 429, 429]
--- response_headers eval
[map { qq{RateLimit-Policy: "default";q=3;w=60\nRateLimit: $_} }
 qq{"default";r=2;t=20\n!Retry-After},
 qq{"default";r=1;t=20\n!Retry-After},
 qq{"default";r=0;t=20\n!Retry-After},
 qq{"default";r=0;t=20\nRetry-After: 20},
 qq{"default";r=0;t=20\nRetry-After: 20}]



=== TEST 2: "ratelimit_headers legacy": X-RateLimit-Limit, -Remaining, -Reset and no draft headers
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 3 60s;
        ratelimit_headers legacy;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-legacy"
--- pipelined_requests eval
[("GET /t") x 5]
--- error_code eval
[200, 200, 200, 429, 429]
--- response_headers eval
[map {
     my ($remaining, $reset, $retry) = @$_;
     "X-RateLimit-Limit: 3\nX-RateLimit-Remaining: $remaining\n"
     . "X-RateLimit-Reset: $reset\n!RateLimit\n!RateLimit-Policy\n"
     . ($retry ? "Retry-After: $retry" : "!Retry-After")
 } [2, 20], [1, 40], [0, 60], [0, 60, 20], [0, 60, 20]]



=== TEST 3: "ratelimit_headers off": no rate limit headers, but Retry-After on a denial
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 3 60s;
        ratelimit_headers off;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-off"
--- pipelined_requests eval
[("GET /t") x 5]
--- error_code eval
[200, 200, 200, 429, 429]
--- response_headers eval
[map {
     "!RateLimit\n!RateLimit-Policy\n!X-RateLimit-Limit\n"
     . "!X-RateLimit-Remaining\n!X-RateLimit-Reset\n$_"
 } "!Retry-After", "!Retry-After", "!Retry-After",
   "Retry-After: 20", "Retry-After: 20"]



=== TEST 4: the header set is inherited from server level, and overridden per location
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    ratelimit $http_x_user_id;
    ratelimit_default 1 10s;
    ratelimit_headers off;

    location /quiet/ {
        empty_gif;
    }

    location /loud/ {
        ratelimit_headers on;
        empty_gif;
    }
--- more_headers eval
["X-User-Id: $::Run-quiet", "X-User-Id: $::Run-quiet",
 "X-User-Id: $::Run-loud", "X-User-Id: $::Run-loud"]
--- pipelined_requests eval
["GET /quiet/x", "GET /quiet/x", "GET /loud/x", "GET /loud/x"]
--- error_code eval
[200, 429, 200, 429]
--- response_headers eval
["!RateLimit-Policy\n!RateLimit\n!Retry-After",
 "!RateLimit-Policy\n!RateLimit\nRetry-After: 10",
 "RateLimit-Policy: \"default\";q=1;w=10\nRateLimit: \"default\";r=0;t=10\n!Retry-After",
 "RateLimit-Policy: \"default\";q=1;w=10\nRateLimit: \"default\";r=0;t=10\nRetry-After: 10"]



=== TEST 5: a custom deny status (503) with the legacy set: each header once
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        ratelimit_status 503;
        ratelimit_headers legacy;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-503"
--- pipelined_requests eval
[("GET /t") x 4]
--- error_code eval
[200, 200, 503, 503]
--- response_headers eval
["X-RateLimit-Limit: 2\n!RateLimit\n!Retry-After",
 "X-RateLimit-Limit: 2\n!RateLimit\n!Retry-After",
 "X-RateLimit-Limit: 2\n!RateLimit\nRetry-After: 30",
 "X-RateLimit-Limit: 2\n!RateLimit\nRetry-After: 30"]



=== TEST 6: sliding window: same headers; t is when one more unit can be used, never more than w
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 3600s;
        ratelimit_algorithm sliding_window;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-sw"
--- pipelined_requests eval
[("GET /t") x 3]
--- error_code eval
[200, 200, 429]
--- response_headers_like eval
# windows are fixed hours and their counts weigh until the end of the next
# one: a second unit more is never free within the hour (t=3600); a denial
# waits until half the next hour
["RateLimit: \"default\";r=1;t=3600\nRetry-After: ",
 "RateLimit: \"default\";r=0;t=$::SwT\nRetry-After: ",
 "RateLimit: \"default\";r=0;t=$::SwT\nRetry-After: $::SwRetry"]
