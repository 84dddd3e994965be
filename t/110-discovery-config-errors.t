# Configuration of shards found at run time (issue 12): ratelimit_redis
# with a host name and a resolver, ratelimit_redis_sentinel.  nginx refuses
# a bad value and names it.  The first blocks are the controls: good lines
# start (no sentinel needs to answer for nginx to start; a name that only the
# resolver will know starts too).

use Test::Nginx::Socket;

no_shuffle();
repeat_each(1);

plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: control: a Sentinel shard beside a plain one, every parameter
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis_sentinel mymaster-1.x_y 127.0.0.1:$TEST_NGINX_DEAD_PORT 127.0.0.1 [::1]:26380 weight=1000 password=secret;
    ratelimit_redis_timeout 100ms;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_fail open;
        empty_gif;
    }
--- more_headers
X-User-Id: sentinel-control
--- request
GET /t
--- error_code: 200



=== TEST 2: control: a host name that only the resolver knows does not stop nginx
--- http_config
    resolver 127.0.0.1:$TEST_NGINX_DEAD_PORT valid=1s;
    resolver_timeout 200ms;
    ratelimit_zone ratelimit:1m;
    ratelimit_redis no-such-host.invalid:6379;
    ratelimit_redis_timeout 100ms;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_fail open;
        empty_gif;
    }
--- more_headers
X-User-Id: resolver-control
--- request
GET /t
--- error_code: 200



=== TEST 3: without a resolver, a host name is resolved when the configuration is read
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis no-such-host.invalid:6379;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*host not found in shard address "no-such-host\.invalid:6379" in \S+nginx\.conf:\d+/



=== TEST 4: a sentinel shard with no sentinel address
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster weight=2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*no sentinel address in "ratelimit_redis_sentinel", expected "host:port" after the master name in \S+nginx\.conf:\d+/



=== TEST 5: a master name alone
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid number of arguments in "ratelimit_redis_sentinel" directive in \S+nginx\.conf:\d+/



=== TEST 6: an empty master name
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel "" 127.0.0.1:26379;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*empty master name in "ratelimit_redis_sentinel" in \S+nginx\.conf:\d+/



=== TEST 7: a master name with a space
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel "my master" 127.0.0.1:26379;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid master name "my master", must be 1 to 64 bytes, no space or control byte in \S+nginx\.conf:\d+/



=== TEST 8: a bad weight
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster 127.0.0.1:26379 weight=0;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid weight "weight=0", must be 1 to 1000 in \S+nginx\.conf:\d+/



=== TEST 9: an unknown parameter
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster 127.0.0.1:26379 wieght=2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid parameter "wieght=2" in \S+nginx\.conf:\d+/



=== TEST 10: a bad sentinel address
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster 127.0.0.1:26379 127.0.0.1:0;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid port in sentinel address "127\.0\.0\.1:0" in \S+nginx\.conf:\d+/



=== TEST 11: a sentinel address that is a socket path
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster unix:/tmp/sentinel.sock;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid sentinel address "unix:\/tmp\/sentinel\.sock", expected "host:port" in \S+nginx\.conf:\d+/



=== TEST 12: two Sentinel shards of one name
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster 127.0.0.1:26379;
    ratelimit_redis_sentinel mymaster 127.0.0.1:26380;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*duplicate shard "mymaster" in \S+nginx\.conf:\d+/



=== TEST 13: a Sentinel shard named as a plain shard is
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis_sentinel 127.0.0.1:$TEST_NGINX_REDIS_PORT 127.0.0.1:26379;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*duplicate shard "127\.0\.0\.1:$ENV{TEST_NGINX_REDIS_PORT}" in \S+nginx\.conf:\d+/



=== TEST 14: a Sentinel shard over TLS, verified, needs the name its certificate bears
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster 127.0.0.1:26379 tls;
    ratelimit_redis_tls_trusted_certificate /etc/ssl/certs/ca-certificates.crt;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*shard "mymaster" with "tls" requires "ratelimit_redis_tls_server_name"/
