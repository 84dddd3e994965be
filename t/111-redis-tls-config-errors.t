# Configuration errors of TLS and ACL shards (issue 12): nginx refuses to
# start and names the directive, the file or the value at fault.  The first
# block is the control: an ACL user whose password comes from a file (the
# shard's default user takes any password), with the TLS directives given
# and no shard using them.

use Test::Nginx::Socket;

our $Run = "t109-$$-" . time();

no_shuffle();
repeat_each(1);

plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: control: user= and password=file: (trailing newline), TLS directives unused
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT user=default password=file:../html/redis.pw;
    ratelimit_redis_timeout 1s;
    ratelimit_redis_tls_verify on;
    ratelimit_redis_tls_trusted_certificate /nonexistent/ca.crt;
    ratelimit_redis_tls_server_name redis.example.com;
--- user_files
>>> redis.pw
s3cret-from-a-file
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 60s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-control"
--- pipelined_requests eval
["GET /t", "GET /t"]
--- error_code eval
[200, 429]
--- no_error_log
AUTH
marked down



=== TEST 2: tls while ratelimit_redis_tls_verify is on (the default) without a trusted certificate
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT tls;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*no "ratelimit_redis_tls_trusted_certificate" for the "tls" shards while "ratelimit_redis_tls_verify" is on/



=== TEST 3: ratelimit_redis_tls_verify: not on or off
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT tls;
    ratelimit_redis_tls_verify maybe;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid value "maybe" in "ratelimit_redis_tls_verify" directive, it must be "on" or "off" in \S+nginx\.conf:\d+/



=== TEST 4: a client certificate without its key
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT tls;
    ratelimit_redis_tls_verify off;
    ratelimit_redis_tls_certificate /etc/ssl/certs/client.crt;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*no "ratelimit_redis_tls_certificate_key" is defined for certificate "\/etc\/ssl\/certs\/client.crt"/



=== TEST 5: a key without its client certificate
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT tls;
    ratelimit_redis_tls_verify off;
    ratelimit_redis_tls_certificate_key /etc/ssl/private/client.key;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*no "ratelimit_redis_tls_certificate" is defined for key "\/etc\/ssl\/private\/client.key"/



=== TEST 6: a trusted certificate file that does not exist
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT tls;
    ratelimit_redis_tls_trusted_certificate /nonexistent/ca.crt;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*SSL_CTX_load_verify_locations\("\/nonexistent\/ca.crt"\) failed/



=== TEST 7: password=file: a file that cannot be read
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT password=file:/nonexistent/redis.pw;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*cannot read the password file "\/nonexistent\/redis.pw" \(2: No such file or directory\) in \S+nginx\.conf:\d+/



=== TEST 8: password=file: an empty file (a line break only)
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT password=file:../html/empty.pw;
--- user_files
>>> empty.pw

--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*the password file "\S+\/empty.pw" is empty in \S+nginx\.conf:\d+/



=== TEST 9: password=file: without a file name
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT password=file:;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*no file name in "password=file:" in \S+nginx\.conf:\d+/



=== TEST 10: user= without password=
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT user=limiter;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"user=limiter" requires "password=" in \S+nginx\.conf:\d+/



=== TEST 11: an empty user=
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT user= password=x;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*empty user in "user=" in \S+nginx\.conf:\d+/



=== TEST 12: a misspelt tls flag
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT tsl;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid parameter "tsl" in \S+nginx\.conf:\d+/
