# Configuration errors: nginx refuses to start, and its message names the
# directive or the value at fault.  The first block is the control: every
# directive with a good value (the boundary values included) starts and works.
#
# The real Test::Nginx::Socket only sees startup errors in logs/error.log
# with an nginx built from source (a distro nginx logs them on stderr); this
# project's runner starts nginx with "-e logs/error.log", so both work here.

use Test::Nginx::Socket;

our $Run = "t101-$$-" . time();

no_shuffle();
repeat_each(1);

# the control block: 3 requests x (status + 1 header); every other block is
# must_die (1) + one error_log pattern (1)
plan tests => repeat_each() * (3 * 2 + (blocks() - 1) * 2);

run_tests();

__DATA__

=== TEST 1: control: every directive with a good value, boundary values included
--- http_config
    ratelimit_zone ratelimit:64k;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT weight=1;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2 weight=1000;
    ratelimit_redis_timeout 1s;
    ratelimit_redis_hash murmur;
--- config
    location /low {
        ratelimit $http_x_user_id $remote_addr;
        ratelimit_default 1 1s;
        ratelimit_algorithm sliding_window;
        ratelimit_fail closed;
        ratelimit_status 599;
        ratelimit_headers legacy;
        empty_gif;
    }

    location /high {
        ratelimit $http_x_user_id;
        ratelimit_default 1000000000 1d;
        ratelimit_algorithm token_bucket;
        ratelimit_fail open;
        ratelimit_status 400;
        ratelimit_headers on;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-control"
--- pipelined_requests eval
["GET /low", "GET /low", "GET /high"]
--- error_code eval
[200, 599, 200]
--- response_headers eval
["X-RateLimit-Limit: 1", "X-RateLimit-Limit: 1",
 "RateLimit-Policy: \"default\";q=1000000000;w=86400"]



=== TEST 2: ratelimit_default: limit 0
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 0 60s;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid limit "0", must be 1 to 1000000000 in \S+nginx\.conf:\d+/



=== TEST 3: ratelimit_default: a negative limit
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default -5 60s;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid limit "-5", must be 1 to 1000000000 in \S+nginx\.conf:\d+/



=== TEST 4: ratelimit_default: a limit over 1000000000
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1000000001 60s;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid limit "1000000001", must be 1 to 1000000000 in \S+nginx\.conf:\d+/



=== TEST 5: ratelimit_default: a limit that is no number
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default abc 60s;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid limit "abc", must be 1 to 1000000000 in \S+nginx\.conf:\d+/



=== TEST 6: ratelimit_default: a window under 1s
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 10 500ms;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid window "500ms", must be 1s to 1d in \S+nginx\.conf:\d+/



=== TEST 7: ratelimit_default: a window over 1d
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 10 2d;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid window "2d", must be 1s to 1d in \S+nginx\.conf:\d+/



=== TEST 8: ratelimit_default: a window that is not whole seconds
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 10 1500ms;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid window "1500ms", must be whole seconds in \S+nginx\.conf:\d+/



=== TEST 9: ratelimit_default: a window that is no time
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 10 soon;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid window "soon", must be 1s to 1d in \S+nginx\.conf:\d+/



=== TEST 10: ratelimit_default: a window of 0s
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 10 0s;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid window "0s", must be 1s to 1d in \S+nginx\.conf:\d+/



=== TEST 11: ratelimit_default: twice in one location
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 10 60s;
        ratelimit_default 20 60s;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit_default" directive is duplicate in \S+nginx\.conf:\d+/



=== TEST 12: ratelimit_algorithm: an unknown algorithm
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_algorithm leaky;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid value "leaky" in "ratelimit_algorithm", expected "token_bucket" or "sliding_window" in \S+nginx\.conf:\d+/



=== TEST 13: ratelimit_fail: neither open nor closed
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_fail maybe;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid value "maybe" in "ratelimit_fail", expected "open" or "closed" in \S+nginx\.conf:\d+/



=== TEST 14: ratelimit_status: 200 is no error status
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_status 200;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid status "200" in "ratelimit_status", must be 400 to 599 in \S+nginx\.conf:\d+/



=== TEST 15: ratelimit_status: 600 is over the range
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_status 600;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid status "600" in "ratelimit_status", must be 400 to 599 in \S+nginx\.conf:\d+/



=== TEST 16: ratelimit_status: no number
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_status slow;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid status "slow" in "ratelimit_status", must be 400 to 599 in \S+nginx\.conf:\d+/



=== TEST 17: ratelimit_headers: neither on, off nor legacy
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_headers sometimes;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid value "sometimes" in "ratelimit_headers", expected "off", "on" or "legacy" in \S+nginx\.conf:\d+/



=== TEST 18: ratelimit_redis: a port that is no number
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:notaport;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid port in shard address "127\.0\.0\.1:notaport" in \S+nginx\.conf:\d+/



=== TEST 19: ratelimit_redis: port 0
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:0;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid port in shard address "127\.0\.0\.1:0" in \S+nginx\.conf:\d+/



=== TEST 20: ratelimit_redis: a unix socket is refused
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis unix:/tmp/x;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid shard address "unix:\/tmp\/x", expected "host:port" in \S+nginx\.conf:\d+/



=== TEST 21: ratelimit_redis: an address with a path (nginx calls it a bad host)
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:6379/db;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid host in shard address "127\.0\.0\.1:6379\/db" in \S+nginx\.conf:\d+/



=== TEST 22: ratelimit_redis: weight=0
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT weight=0;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid weight "weight=0", must be 1 to 1000 in \S+nginx\.conf:\d+/



=== TEST 23: ratelimit_redis: weight over 1000
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT weight=1001;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid weight "weight=1001", must be 1 to 1000 in \S+nginx\.conf:\d+/



=== TEST 24: ratelimit_redis: a weight that is no number
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT weight=heavy;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid weight "weight=heavy", must be 1 to 1000 in \S+nginx\.conf:\d+/



=== TEST 25: ratelimit_redis: an unknown parameter
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT backup;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid parameter "backup" in \S+nginx\.conf:\d+/



=== TEST 26: ratelimit_redis: an empty password
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT password=;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*empty password in "password=" in \S+nginx\.conf:\d+/



=== TEST 27: ratelimit_redis: the same shard twice
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT weight=2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*duplicate shard "127\.0\.0\.1:$ENV{TEST_NGINX_REDIS_PORT}" in \S+nginx\.conf:\d+/



=== TEST 28: ratelimit_redis: only allowed at http level
--- http_config
    ratelimit_zone ratelimit:1m;
--- config
    location /t {
        ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit_redis" directive is not allowed here in \S+nginx\.conf:\d+/



=== TEST 29: ratelimit without any ratelimit_redis
--- http_config
    ratelimit_zone ratelimit:1m;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit" is used but no "ratelimit_redis" shard is configured/



=== TEST 30: ratelimit without a ratelimit_zone
--- http_config
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit" is used but no "ratelimit_zone" is configured/



=== TEST 31: ratelimit twice in one location
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit $remote_addr;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*duplicate "ratelimit" keys: a location has one unnamed policy, name the others with "ratelimit_policy" in \S+nginx\.conf:\d+/



=== TEST 32: ratelimit with an empty key
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id "";
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*empty key in "ratelimit" in \S+nginx\.conf:\d+/



=== TEST 33: ratelimit_zone twice
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_zone other:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit_zone" directive is duplicate in \S+nginx\.conf:\d+/



=== TEST 34: ratelimit_zone: too small (under 16 pages)
--- http_config
    ratelimit_zone ratelimit:32k;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*zone "ratelimit:32k" is too small in \S+nginx\.conf:\d+/



=== TEST 35: ratelimit_zone: no size
--- http_config
    ratelimit_zone ratelimit;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid zone "ratelimit", expected "name:size" in \S+nginx\.conf:\d+/



=== TEST 36: ratelimit_zone: a size that is no size
--- http_config
    ratelimit_zone ratelimit:big;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid zone size "ratelimit:big" in \S+nginx\.conf:\d+/



=== TEST 37: ratelimit_redis_timeout 0
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis_timeout 0;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid timeout "0" in "ratelimit_redis_timeout", must be 1ms to 60s in \S+nginx\.conf:\d+/



=== TEST 38: ratelimit_redis_timeout: no time
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis_timeout soon;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid timeout "soon" in "ratelimit_redis_timeout", must be 1ms to 60s in \S+nginx\.conf:\d+/



=== TEST 39: ratelimit_redis_hash: a hash twemproxy has but the module does not
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis_hash crc32;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid value "crc32" in "ratelimit_redis_hash", expected "md5", "fnv1a_64" or "murmur" in \S+nginx\.conf:\d+/



=== TEST 40: ratelimit_redis_hash twice
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis_hash md5;
    ratelimit_redis_hash fnv1a_64;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit_redis_hash" directive is duplicate in \S+nginx\.conf:\d+/
