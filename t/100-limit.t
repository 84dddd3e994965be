# The limit itself: allowed up to the limit, then denied; which key counts;
# where a limit applies; what a denial does and does not do.
#
# Redis keeps counts across blocks (and across runs of this file): every
# block uses user ids unique to this run, and the block that starts counting
# under the client address deletes that key first.  Some blocks go on with the
# counts of the block before them, so the blocks run in file order and once
# each.

use Test::Nginx::Socket;

use Digest::SHA ();

# unique to this run of the file
our $Run = "t100-$$-" . time();

# a 100 KB user id: over the raw-key length, so it is hashed in the Redis key
our $BigId = "big-$Run-";
$BigId .= 'u' x (102400 - length $BigId);
our $BigKey = 'rl:tb:http_x_user_id:h:' . Digest::SHA::sha1_hex($BigId);

# the longest user id kept as it is (126 bytes), and one byte more
our $Id126 = "$Run-edge-";
$Id126 .= 'e' x (126 - length $Id126);
our $Id127 = "$Id126-";
our $Key127 = 'rl:tb:http_x_user_id:h:' . Digest::SHA::sha1_hex($Id127);

# forget the count of the client address on both shards
sub forget_ip {
    for my $port ($ENV{TEST_NGINX_REDIS_PORT}, $ENV{TEST_NGINX_REDIS_PORT2}) {
        system("redis-cli -p $port DEL rl:tb:remote_addr:k:127.0.0.1 >/dev/null") == 0
            or die "redis-cli on port $port failed\n";
    }
}

no_shuffle();
repeat_each(1);

# the plan is what the blocks run: no count kept by hand
plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: allowed up to the limit, then 429 with Retry-After in whole seconds
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
"X-User-Id: $::Run-limit"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 200, 429, 429]
--- response_headers_like eval
# token bucket, 3 per 60 s: the next token comes in 20 s at most
["Retry-After: ", "Retry-After: ", "Retry-After: ",
 "Retry-After: (19|20)", "Retry-After: (19|20)"]
--- response_body_like eval
["^GIF89a", "^GIF89a", "^GIF89a",
 "429 Too Many Requests", "429 Too Many Requests"]



=== TEST 2: no user id: the client address is the key; a user id counts apart
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id $remote_addr;
        ratelimit_default 2 3600s;
        empty_gif;
    }
--- init
main::forget_ip();
--- more_headers eval
["", "", "", "X-User-Id: $::Run-ipfb", ""]
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429, 200, 429]
--- response_headers_like eval
["Retry-After: ", "Retry-After: ", "Retry-After: [1-9][0-9]*",
 "Retry-After: ", "Retry-After: [1-9][0-9]*"]



=== TEST 3: the count of TEST 2 is kept under rl:tb:remote_addr:k:127.0.0.1
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id $remote_addr;
        ratelimit_default 2 3600s;
        empty_gif;
    }
--- request
GET /t
--- error_code: 429
--- response_headers_like
Retry-After: [1-9][0-9]*
--- response_body_like: 429 Too Many Requests
--- error_log eval
[qr/\[error\] .*ratelimit: limiting requests by policy "default" \(2 per 3600s\), retry after [1-9][0-9]* ms, client: 127\.0\.0\.1/,
 qr/ratelimit: key "rl:tb:remote_addr:k:127\.0\.0\.1" is over its limit/]



=== TEST 4: two user ids have separate counts
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id $remote_addr;
        ratelimit_default 2 3600s;
        empty_gif;
    }
--- more_headers eval
[map { "X-User-Id: $::Run-sep-$_" } qw(a a b b a b c)]
--- pipelined_requests eval
[("GET /t") x 7]
--- error_code eval
[200, 200, 200, 200, 429, 429, 200]



=== TEST 5: ratelimit_status changes the status of a denial (503, 418)
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /busy {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        ratelimit_status 503;
        empty_gif;
    }
    location /teapot {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        ratelimit_status 418;
        empty_gif;
    }
--- more_headers eval
["X-User-Id: $::Run-st-busy", "X-User-Id: $::Run-st-busy",
 "X-User-Id: $::Run-st-pot", "X-User-Id: $::Run-st-pot"]
--- pipelined_requests eval
["GET /busy", "GET /busy", "GET /teapot", "GET /teapot"]
--- error_code eval
[200, 503, 200, 418]
--- response_headers_like eval
["Retry-After: ", "Retry-After: [1-9][0-9]*",
 "Retry-After: ", "Retry-After: [1-9][0-9]*"]



=== TEST 6: "ratelimit off" in a nested location turns the inherited limit off
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /api/ {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        empty_gif;

        location /api/free/ {
            ratelimit off;
            empty_gif;
        }
    }
--- more_headers eval
"X-User-Id: $::Run-off"
--- pipelined_requests eval
["GET /api/free/a", "GET /api/free/b", "GET /api/free/c",
 "GET /api/x", "GET /api/x"]
--- error_code eval
[200, 200, 200, 200, 429]
--- response_headers eval
["!RateLimit\n!RateLimit-Policy", "!RateLimit\n!RateLimit-Policy",
 "!RateLimit\n!RateLimit-Policy",
 "RateLimit: \"default\";r=0;t=3600\nRateLimit-Policy: \"default\";q=1;w=3600",
 "RateLimit: \"default\";r=0;t=3600\nRateLimit-Policy: \"default\";q=1;w=3600"]



=== TEST 7: a limit set at server level applies in a location, with its own default
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    ratelimit $http_x_user_id;
    ratelimit_default 2 3600s;

    location /inherit/ {
        empty_gif;
    }

    location /own/ {
        ratelimit_default 1 1800s;
        empty_gif;
    }
--- more_headers eval
["X-User-Id: $::Run-inh-a", "X-User-Id: $::Run-inh-a",
 "X-User-Id: $::Run-inh-a",
 "X-User-Id: $::Run-inh-b", "X-User-Id: $::Run-inh-b"]
--- pipelined_requests eval
["GET /inherit/x", "GET /inherit/x", "GET /inherit/x",
 "GET /own/x", "GET /own/x"]
--- error_code eval
[200, 200, 429, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=1;t=1800", "RateLimit: \"default\";r=0;t=1800",
 "RateLimit: \"default\";r=0;t=1800",
 "RateLimit: \"default\";r=0;t=1800", "RateLimit: \"default\";r=0;t=1800"]



=== TEST 8: an empty key is not limited (and gets no headers)
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        empty_gif;
    }
--- more_headers eval
["", "", "", "", "X-User-Id: $::Run-empty", "X-User-Id: $::Run-empty"]
--- pipelined_requests eval
[("GET /t") x 6]
--- error_code eval
[200, 200, 200, 200, 200, 429]
--- response_headers eval
["!RateLimit\n!Retry-After", "!RateLimit\n!Retry-After",
 "!RateLimit\n!Retry-After", "!RateLimit\n!Retry-After",
 "RateLimit: \"default\";r=0;t=3600\n!Retry-After",
 "RateLimit: \"default\";r=0;t=3600\nRetry-After: 3600"]



=== TEST 9: a 100 KB user id is counted: allowed up to the limit, then denied
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    large_client_header_buffers 4 128k;

    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 3600s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::BigId"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]
--- response_headers_like eval
["RateLimit: \"default\";r=1;t=1800\nRetry-After: ",
 "RateLimit: \"default\";r=0;t=1800\nRetry-After: ",
 "RateLimit: \"default\";r=0;t=1800\nRetry-After: 1800"]



=== TEST 10: the 100 KB user id is still denied; its Redis key is its SHA-1
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    large_client_header_buffers 4 128k;

    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 3600s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::BigId"
--- request
GET /t
--- error_code: 429
--- response_headers_like
Retry-After: [1-9][0-9]*
--- error_log eval
[qr/ratelimit: key "\Q$::BigKey\E" is over its limit/]
--- no_error_log eval
["rl:tb:http_x_user_id:k:big-"]



=== TEST 11: a 126-byte and a 127-byte user id use up their quota
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        empty_gif;
    }
--- more_headers eval
["X-User-Id: $::Id126", "X-User-Id: $::Id127"]
--- pipelined_requests eval
["GET /t", "GET /t"]
--- error_code eval
[200, 200]



=== TEST 12: the 126-byte user id is the Redis key as it is
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Id126"
--- request
GET /t
--- error_code: 429
--- error_log eval
[qr/ratelimit: key "rl:tb:http_x_user_id:k:\Q$::Id126\E" is over its limit/]



=== TEST 13: the 127-byte user id is replaced by its SHA-1
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Id127"
--- request
GET /t
--- error_code: 429
--- error_log eval
[qr/ratelimit: key "\Q$::Key127\E" is over its limit/]



=== TEST 14: a denied request never reaches the origin
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
    log_format origin "origin hit: $http_x_user_id";
--- config
    # /spend and /front share the key, so /spend can use up the quota
    location /spend/ {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        empty_gif;
    }

    location /front/ {
        ratelimit $http_x_user_id;
        ratelimit_default 1 3600s;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/origin/;
    }

    location /origin/ {
        access_log logs/access.log origin;
        return 200 "origin answered $http_x_user_id\n";
    }
--- more_headers eval
["X-User-Id: $::Run-origin-denied", "X-User-Id: $::Run-origin-denied",
 "X-User-Id: $::Run-origin-allowed"]
--- pipelined_requests eval
["GET /spend/x", "GET /front/x", "GET /front/x"]
--- error_code eval
[200, 429, 200]
--- response_body_like eval
["^GIF89a", "429 Too Many Requests",
 "^origin answered \Q$::Run\E-origin-allowed\$"]
--- no_access_log eval
["origin hit: $::Run-origin-denied"]



=== TEST 15: error_page 429 = /limited.txt serves that answer; the redirect is not counted again
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    # also limits "location /" of the test server, where /limited.txt is
    ratelimit $http_x_user_id;
    ratelimit_default 1 3600s;

    location /api/ {
        error_page 429 = /limited.txt;
        empty_gif;
    }
--- user_files
>>> limited.txt
slow down
--- more_headers eval
"X-User-Id: $::Run-errpage"
--- pipelined_requests eval
["GET /api/x", "GET /api/x", "GET /limited.txt"]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=0;t=3600", "RateLimit: \"default\";r=0;t=3600",
 "RateLimit: \"default\";r=0;t=3600"]
--- response_body_like eval
["^GIF89a", "^slow down\n\\z", "429 Too Many Requests"]



=== TEST 16: an allowed request redirected by error_page 404 is counted once
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    ratelimit $http_x_user_id;
    ratelimit_default 3 3600s;

    location /missing/ {
        error_page 404 = /found.txt;
    }
--- user_files
>>> found.txt
found
--- more_headers eval
"X-User-Id: $::Run-404"
--- pipelined_requests eval
["GET /missing/a", "GET /missing/b", "GET /missing/c", "GET /missing/d"]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=2;t=1200", "RateLimit: \"default\";r=1;t=1200",
 "RateLimit: \"default\";r=0;t=1200", "RateLimit: \"default\";r=0;t=1200"]
--- response_body_like eval
["^found\n\\z", "^found\n\\z", "^found\n\\z", "429 Too Many Requests"]
