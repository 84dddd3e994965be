# Dry run, the level of denial log lines, and the variables that tell what
# the limiter did ($ratelimit_status, $ratelimit_policy,
# $ratelimit_remaining), usable in add_header, map and log_format.

use Test::Nginx::Socket;

# unique to this run of the file
our $Run = "t105-$$-" . time();

no_shuffle();
repeat_each(1);

# the plan is what the blocks run: no count kept by hand
plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: the variables through a limit: PASSED with what remains, then REJECTED by "default"
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        add_header X-Status "$ratelimit_status" always;
        add_header X-Policy "$ratelimit_policy" always;
        add_header X-Remaining "$ratelimit_remaining" always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-vars"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["X-Status: PASSED\nX-Policy: \nX-Remaining: 1",
 "X-Status: PASSED\nX-Policy: \nX-Remaining: 0",
 "X-Status: REJECTED\nX-Policy: default\nX-Remaining: 0"]



=== TEST 2: dry run: what would be denied passes and is said in $ratelimit_status
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        ratelimit_dry_run on;
        add_header X-Status "$ratelimit_status" always;
        add_header X-Policy "$ratelimit_policy" always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-dry"
--- pipelined_requests eval
["GET /t", "GET /t"]
--- error_code eval
[200, 200]
--- response_headers eval
["X-Status: PASSED\nX-Policy: \nRetry-After: ",
 "X-Status: REJECTED_DRY_RUN\nX-Policy: default\nRetry-After: "]



=== TEST 3: ... and logged as what it would have been
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        ratelimit_dry_run on;
        add_header X-Status "$ratelimit_status" always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-dry"
--- request
GET /t
--- error_code: 200
--- response_headers
X-Status: REJECTED_DRY_RUN
--- error_log eval
[qr/\[error\] .*ratelimit: dry run, not limiting requests by policy "default" \(1 per 60s\)/]



=== TEST 3b: ... and it counted nothing: with the dry run off, the caller has spent only its first request
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 60s;
        add_header X-Status "$ratelimit_status" always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-dry"
--- pipelined_requests eval
["GET /t", "GET /t"]
--- error_code eval
[200, 429]



=== TEST 4: a location that limits nothing leaves the variables empty
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        add_header X-Status "[$ratelimit_status]" always;
        add_header X-Remaining "[$ratelimit_remaining]" always;
        empty_gif;
    }
--- request
GET /t
--- error_code: 200
--- response_headers
X-Status: []
X-Remaining: []



=== TEST 5: a dead shard: FAILED_OPEN lets the request through
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_fail open;
        add_header X-Status "$ratelimit_status" always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-open"
--- request
GET /t
--- error_code: 200
--- response_headers
X-Status: FAILED_OPEN



=== TEST 6: a dead shard: FAILED_CLOSED answers 503
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_DEAD_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_fail closed;
        add_header X-Status "$ratelimit_status" always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-closed"
--- request
GET /t
--- error_code: 503
--- response_headers
X-Status: FAILED_CLOSED



=== TEST 7: map reads the variables: a request that passes
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
    map $ratelimit_status $ratelimit_verdict {
        REJECTED   "no";
        default    "yes";
    }
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        ratelimit_log_level warn;
        add_header X-Verdict $ratelimit_verdict always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-level"
--- request
GET /t
--- error_code: 200
--- response_headers
X-Verdict: yes



=== TEST 7b: ratelimit_log_level warn: the denial is logged at warn
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
    map $ratelimit_status $ratelimit_verdict {
        REJECTED   "no";
        default    "yes";
    }
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        ratelimit_log_level warn;
        add_header X-Verdict $ratelimit_verdict always;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-level"
--- request
GET /t
--- error_code: 429
--- response_headers
X-Verdict: no
--- error_log eval
[qr/\[warn\] .*ratelimit: limiting requests by policy "default" \(1 per 60s\)/]
--- no_error_log
[error]



=== TEST 8: a bad log level is named by nginx -t
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_log_level debug;
        empty_gif;
    }
--- must_die
--- error_log
invalid value "debug" in "ratelimit_log_level", expected "info", "notice", "warn" or "error"
