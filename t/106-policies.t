# Named policies (issue 9): several limits per request, all or nothing;
# one count per policy wherever it is used and never shared between two;
# inheritance and "ratelimit off"; cost (fixed, from a variable, 0, above
# the limit); dry run per policy; the variables; draft-11 headers for every
# policy, the legacy ones of the most restrictive; problem details.
#
# The times in the headers are exact: a token bucket of limit L over W
# seconds gives a unit back every W/L seconds, and "t" is when one more
# unit than "r" can be used (never more than w; on a refusal, Retry-After).

use Test::Nginx::Socket;

# unique to this run of the file
our $Run = "t106-$$-" . time();

# every block's http{} starts with the zone and the two shards
add_block_preprocessor(sub {
    my ($block) = @_;
    $block->set_value('http_config', <<'EOF' . ($block->http_config // ''));
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
EOF
});

no_shuffle();
repeat_each(1);

plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: two policies: both in RateLimit-Policy and RateLimit, the request refused by the one out of quota
--- http_config
    ratelimit_policy burst $http_x_user_id limit=2 window=10s;
    ratelimit_policy daily $http_x_user_id limit=5 window=1h;
--- config
    location /t {
        ratelimit burst;
        ratelimit daily;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-two"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["RateLimit-Policy: \"burst\";q=2;w=10, \"daily\";q=5;w=3600\nRateLimit: \"burst\";r=1;t=5, \"daily\";r=4;t=720\n!Retry-After",
 "RateLimit-Policy: \"burst\";q=2;w=10, \"daily\";q=5;w=3600\nRateLimit: \"burst\";r=0;t=5, \"daily\";r=3;t=720",
 "RateLimit-Policy: \"burst\";q=2;w=10, \"daily\";q=5;w=3600\nRetry-After: 5"]



=== TEST 2: a request one policy refuses takes nothing from the other
--- http_config
    ratelimit_policy one $http_x_user_id limit=1 window=1h;
    ratelimit_policy three $http_x_user_id limit=3 window=1h;
--- config
    location /t {
        ratelimit one;
        ratelimit three;
        empty_gif;
    }
    location /three {
        ratelimit three cost=0;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-nothing"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t", "GET /three"]
--- error_code eval
[200, 429, 429, 200]
--- response_headers eval
["", "", "", "RateLimit: \"three\";r=2;t=1200"]



=== TEST 3: one count per policy wherever it is used, never shared by two policies on the same key
--- http_config
    ratelimit_policy p1 $http_x_user_id limit=2 window=1h;
    ratelimit_policy p2 $http_x_user_id limit=2 window=1h;
--- config
    location /a { ratelimit p1; empty_gif; }
    location /b { ratelimit p1; empty_gif; }
    location /c { ratelimit p2; empty_gif; }
--- more_headers eval
"X-User-Id: $::Run-share"
--- pipelined_requests eval
["GET /a", "GET /b", "GET /a", "GET /c", "GET /c", "GET /c"]
--- error_code eval
[200, 200, 429, 200, 200, 429]



=== TEST 4: inherited as a whole, replaced by a location's own lines, cancelled by "ratelimit off"
--- http_config
    ratelimit_policy outer $http_x_user_id limit=1 window=1h;
    ratelimit_policy inner $http_x_user_id limit=5 window=1h;
--- config
    ratelimit outer;
    location /inherits { empty_gif; }
    location /replaces { ratelimit inner; empty_gif; }
    location /off { ratelimit off; empty_gif; }
--- more_headers eval
"X-User-Id: $::Run-inherit"
--- pipelined_requests eval
["GET /inherits", "GET /inherits", "GET /replaces", "GET /off"]
--- error_code eval
[200, 429, 200, 200]
--- response_headers eval
["RateLimit-Policy: \"outer\";q=1;w=3600",
 "RateLimit-Policy: \"outer\";q=1;w=3600",
 "RateLimit-Policy: \"inner\";q=5;w=3600",
 "!RateLimit-Policy\n!RateLimit"]



=== TEST 5: cost=4 of 10: four units a request, an honest Retry-After for the four
--- http_config
    ratelimit_policy units $http_x_user_id limit=10 window=1h;
--- config
    location /t {
        ratelimit units cost=4;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-cost"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["RateLimit: \"units\";r=6;t=360",
 "RateLimit: \"units\";r=2;t=360",
 "RateLimit: \"units\";r=2;t=720\nRetry-After: 720"]



=== TEST 6: cost from a variable; 0 checks without consuming; above the limit, refused until the window has passed
--- http_config
    ratelimit_policy units $http_x_user_id limit=10 window=1h;
--- config
    location /t {
        ratelimit units cost=$arg_cost;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-costvar"
--- pipelined_requests eval
["GET /t?cost=3", "GET /t?cost=0", "GET /t?cost=0", "GET /t?cost=11", "GET /t?cost=7", "GET /t?cost=0"]
--- error_code eval
[200, 200, 200, 429, 200, 429]
--- response_headers eval
["RateLimit: \"units\";r=7;t=360",
 "RateLimit: \"units\";r=7;t=360",
 "RateLimit: \"units\";r=7;t=360",
 "RateLimit: \"units\";r=7;t=3600\nRetry-After: 3600",
 "RateLimit: \"units\";r=0;t=360",
 "RateLimit: \"units\";r=0;t=360\nRetry-After: 360"]



=== TEST 7: a cost that is not a whole number is a 500, with the policy named in the error log
--- http_config
    ratelimit_policy units $http_x_user_id limit=10 window=1h;
--- config
    location /t {
        ratelimit units cost=$arg_cost;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-costbad"
--- request
GET /t?cost=2.5
--- error_code: 500
--- error_log eval
[qr/\[error\] .*ratelimit: cost "2\.5" of policy "units" is not a whole number from 0 to 1000000000/]



=== TEST 8: ... as is a negative one (nginx closes the connection after a 500, so one request a block)
--- http_config
    ratelimit_policy units $http_x_user_id limit=10 window=1h;
--- config
    location /t {
        ratelimit units cost=$arg_cost;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-costbad"
--- request
GET /t?cost=-1
--- error_code: 500



=== TEST 8b: ... an empty one
--- http_config
    ratelimit_policy units $http_x_user_id limit=10 window=1h;
--- config
    location /t {
        ratelimit units cost=$arg_cost;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-costbad"
--- request
GET /t?cost=
--- error_code: 500



=== TEST 8c: ... and one over the largest limit
--- http_config
    ratelimit_policy units $http_x_user_id limit=10 window=1h;
--- config
    location /t {
        ratelimit units cost=$arg_cost;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-costbad"
--- request
GET /t?cost=1000000001
--- error_code: 500



=== TEST 8d: none of them cost the caller anything
--- http_config
    ratelimit_policy units $http_x_user_id limit=10 window=1h;
--- config
    location /t {
        ratelimit units cost=$arg_cost;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-costbad"
--- request
GET /t?cost=1
--- error_code: 200
--- response_headers
RateLimit: "units";r=9;t=360



=== TEST 9: dry run of one policy: it never refuses, what it would refuse is not counted, the other policy still counts
--- http_config
    ratelimit_policy trial $http_x_user_id limit=1 window=1h;
    ratelimit_policy real $http_x_user_id limit=5 window=1h;
--- config
    location /t {
        ratelimit trial dry_run;
        ratelimit real;
        add_header X-Status "$ratelimit_status" always;
        add_header X-Policy "$ratelimit_policy" always;
        add_header X-Remaining "$ratelimit_remaining" always;
        empty_gif;
    }
    location /trial { ratelimit trial cost=0; empty_gif; }
--- more_headers eval
"X-User-Id: $::Run-dry"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t", "GET /trial"]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
["X-Status: PASSED\nX-Policy: \nX-Remaining: 0\nRateLimit: \"trial\";r=0;t=3600, \"real\";r=4;t=720",
 "X-Status: REJECTED_DRY_RUN\nX-Policy: trial\nX-Remaining: 0\nRateLimit: \"trial\";r=0;t=3600, \"real\";r=3;t=720\n!Retry-After",
 "X-Status: REJECTED_DRY_RUN\nX-Policy: trial\nX-Remaining: 0\nRateLimit: \"trial\";r=0;t=3600, \"real\";r=2;t=720\n!Retry-After",
 "RateLimit: \"trial\";r=0;t=3600"]



=== TEST 10: $ratelimit_policy names the policy that refused, $ratelimit_remaining is the lowest
--- http_config
    ratelimit_policy roomy $http_x_user_id limit=100 window=1h;
    ratelimit_policy tight $http_x_user_id limit=2 window=1h;
--- config
    location /t {
        ratelimit roomy;
        ratelimit tight;
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
 "X-Status: REJECTED\nX-Policy: tight\nX-Remaining: 0"]



=== TEST 11: legacy headers give the most restrictive policy: the one with the fewest units left, then the one that refused
--- http_config
    ratelimit_policy roomy $http_x_user_id limit=100 window=1h;
    ratelimit_policy tight $http_x_user_id limit=2 window=1h;
--- config
    location /t {
        ratelimit roomy;
        ratelimit tight;
        ratelimit_headers legacy;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-legacy"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["X-RateLimit-Limit: 2\nX-RateLimit-Remaining: 1\n!RateLimit\n!RateLimit-Policy",
 "X-RateLimit-Limit: 2\nX-RateLimit-Remaining: 0",
 "X-RateLimit-Limit: 2\nX-RateLimit-Remaining: 0\nRetry-After: 1800"]



=== TEST 12: problem details: a refusal answers application/problem+json of the draft's quota-exceeded type
--- http_config
    ratelimit_policy burst $http_x_user_id limit=1 window=1h;
    ratelimit_policy daily $http_x_user_id limit=100 window=1d;
--- config
    location /t {
        ratelimit burst;
        ratelimit daily;
        ratelimit_problem_details on;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-problem"
--- pipelined_requests eval
["GET /t", "GET /t"]
--- error_code eval
[200, 429]
--- response_headers eval
["", "Content-Type: application/problem+json\nRetry-After: 3600\nRateLimit-Policy: \"burst\";q=1;w=3600, \"daily\";q=100;w=86400"]
--- response_body eval
[qr/^GIF/, qq({"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Request cannot be satisfied as assigned quota has been exceeded","status":429,"violated-policies":["burst"]}\n)]



=== TEST 13: a sliding window's t never exceeds w; a refusal's Retry-After is honest even where it is later than w
--- http_config
    ratelimit_policy sw $http_x_user_id limit=2 window=1h algorithm=sliding_window;
--- config
    location /t {
        ratelimit sw;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-sw"
--- pipelined_requests eval
["GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 429]
--- response_headers_like eval
["RateLimit: \"sw\";r=1;t=(\\d{1,3}|[1-2]\\d{3}|3[0-5]\\d\\d|3600)",
 "RateLimit: \"sw\";r=0;t=(\\d{1,3}|[1-2]\\d{3}|3[0-5]\\d\\d|3600)",
 "RateLimit: \"sw\";r=0;t=(\\d{1,3}|[1-2]\\d{3}|3[0-5]\\d\\d|3600)\nRetry-After: \\d+"]



=== TEST 14: the location's unnamed policy beside a named one: "default" in the headers
--- http_config
    ratelimit_policy burst $http_x_user_id limit=2 window=10s;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 3 1h;
        ratelimit burst;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-mixed"
--- request
GET /t
--- error_code: 200
--- response_headers
RateLimit-Policy: "default";q=3;w=3600, "burst";q=2;w=10
RateLimit: "default";r=2;t=1200, "burst";r=1;t=5



=== TEST 15: refusals are logged with the policy, its limit and the cost, never the key
--- http_config
    ratelimit_policy tiny $http_x_user_id limit=1 window=1h;
--- config
    location /t {
        ratelimit tiny cost=2;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-logged"
--- request
GET /t
--- error_code: 429
--- error_log eval
[qr/\[error\] .*ratelimit: limiting requests by policy "tiny" \(1 per 3600s, cost 2\), retry after 3600000 ms, client: 127\.0\.0\.1/]
--- no_error_log eval
[qr/\[(?:info|notice|warn|error)\].*t106-.*-logged/]



=== TEST 16: admin rules: a policy's own rule for the customer beats the customer's rule for every policy, which beats the default
--- http_config
    ratelimit_policy burst $http_x_user_id limit=5 window=1h;
    ratelimit_policy daily $http_x_user_id limit=5 window=1h;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
    location /t {
        ratelimit burst;
        ratelimit daily;
        empty_gif;
    }
    location /daily {
        ratelimit daily cost=0;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-rules\nAuthorization: Bearer test-admin-token-0123456789\nContent-Type: application/json"
--- pipelined_requests eval
["GET /t",
 "PUT /admin/limits\n{\"customer_id\":\"$::Run-rules\",\"policy\":\"burst\",\"limit\":1,\"window\":60}",
 "GET /t",
 "PUT /admin/limits\n{\"customer_id\":\"$::Run-rules\",\"limit\":7,\"window\":120}",
 "GET /daily",
 "GET /t",
 "DELETE /admin/limits/$::Run-rules?policy=burst",
 "GET /t"]
--- error_code eval
[200, 200, 429, 200, 200, 429, 200, 200]
--- response_headers eval
["RateLimit-Policy: \"burst\";q=5;w=3600, \"daily\";q=5;w=3600",
 "",
 "",
 "",
 "RateLimit-Policy: \"daily\";q=7;w=120",
 "",
 "",
 "RateLimit-Policy: \"burst\";q=7;w=120, \"daily\";q=7;w=120"]



=== TEST 17: an internal redirect counts each policy once: try_files into a location with the same policy and another
--- http_config
    ratelimit_policy shared $http_x_user_id limit=3 window=1h;
    ratelimit_policy extra $http_x_user_id limit=3 window=1h;
--- config
    location /front {
        ratelimit shared;
        try_files /nothing-here @back;
    }
    location @back {
        ratelimit shared;
        ratelimit extra;
        empty_gif;
    }
    location /shared { ratelimit shared cost=0; empty_gif; }
    location /extra { ratelimit extra cost=0; empty_gif; }
--- more_headers eval
"X-User-Id: $::Run-redirect"
--- pipelined_requests eval
["GET /front", "GET /shared", "GET /extra"]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["", "RateLimit: \"shared\";r=2;t=1200", "RateLimit: \"extra\";r=2;t=1200"]



=== TEST 18: a customer's rule that names another algorithm: the first check learns it from the shard and goes out again under that algorithm's key
--- http_config
    ratelimit_policy alg $http_x_user_id limit=100 window=1h;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
    location /t {
        ratelimit alg;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-alg\nAuthorization: Bearer test-admin-token-0123456789\nContent-Type: application/json"
--- pipelined_requests eval
["PUT /admin/limits\n{\"customer_id\":\"$::Run-alg\",\"policy\":\"alg\",\"limit\":2,\"window\":60,\"algorithm\":\"sliding_window\"}",
 "GET /t", "GET /t", "GET /t"]
--- error_code eval
[200, 200, 200, 429]
--- response_headers eval
["", "RateLimit-Policy: \"alg\";q=2;w=60\nRateLimit: \"alg\";r=1;t=60",
 "RateLimit-Policy: \"alg\";q=2;w=60", "RateLimit-Policy: \"alg\";q=2;w=60"]
