# The admin endpoint's input, as nginx hands it over (issue 7, item 12):
# strict JSON (nothing after the object, no form feed or vertical tab as
# whitespace), and customer ids that nginx would normalise in the URI
# ("a//b", "./a", "a/../b") reachable by GET and DELETE as PUT stored them.
#
# Every request of a block is checked for its status and its body; ids are
# unique to this run, so rules from earlier runs do not matter.

use Test::Nginx::Socket;

our $Run = "t301-$$-" . time();
our $Token = 'test-admin-token-0123456789';

# a PUT of the body given, as the endpoint expects it
sub put { "PUT /admin/limits\n$_[0]" }

no_shuffle();
repeat_each(1);

# 2 checks (status, body) per request, and the log checks of TEST 7 (2
# patterns after each of its 2 requests)
my @requests = (4, 4, 10, 4, 3, 6, 2);
my $sum = 2 * 2;
$sum += 2 * $_ for @requests;
plan tests => repeat_each() * $sum;

run_tests();

__DATA__

=== TEST 1: bytes after the object: 400, nothing stored
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- more_headers eval
"Authorization: Bearer $::Token\nContent-Type: application/json"
--- request eval
[main::put(qq({"customer_id": "$::Run-tail", "limit": 1, "window": 60} "lim)),
 main::put(qq({"customer_id": "$::Run-tail", "limit": 1, "window": 60} 5)),
 main::put(qq({"customer_id": "$::Run-tail", "limit": 1, "window": 60}}\n)),
 "GET /admin/limits/$::Run-tail"]
--- error_code eval
[400, 400, 400, 404]
--- response_body_like eval
[qr/^\{"error":"malformed JSON: bytes after the end of the object \(offset \d+\)","field":null\}$/,
 qr/bytes after the end of the object/,
 qr/bytes after the end of the object/,
 qr/"error":"this customer has no rule/]



=== TEST 2: form feed or vertical tab where JSON allows only space, tab, CR, LF
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- more_headers eval
"Authorization: Bearer $::Token\nContent-Type: application/json"
--- request eval
[main::put(qq({"customer_id": "$::Run-ff",\f"limit": 1, "window": 60})),
 main::put(qq({"customer_id": "$::Run-ff", "limit": 1,\x0b"window": 60})),
 main::put(qq({\f"customer_id": "$::Run-ff", "limit": 1, "window": 60})),
 "GET /admin/limits/$::Run-ff"]
--- error_code eval
[400, 400, 400, 404]
--- response_body_like eval
[qr/"error":"malformed JSON: control character 0x0c at offset \d+/,
 qr/"error":"malformed JSON: control character 0x0b at offset \d+/,
 qr/"error":"malformed JSON: control character 0x0c at offset \d+/,
 qr/"error":"this customer has no rule/]



=== TEST 3: ids with "//", "/./" and "/../" are read and deleted as stored; "?" ends them
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- more_headers eval
"Authorization: Bearer $::Token\nContent-Type: application/json"
--- request eval
[main::put(qq({"customer_id": "$::Run/a//b", "limit": 5, "window": 60})),
 main::put(qq({"customer_id": "$::Run/./c", "limit": 6, "window": 60})),
 main::put(qq({"customer_id": "$::Run/d/../e", "limit": 7, "window": 60})),
 "GET /admin/limits/$::Run/a//b",
 "GET /admin/limits/$::Run/./c",
 "GET /admin/limits/$::Run%2Fd%2F..%2Fe",
 "GET /admin/limits/$::Run/a/b",
 "GET /admin/limits/$::Run/a/b?x=1",
 "DELETE /admin/limits/$::Run/a//b",
 "GET /admin/limits/$::Run/a//b"]
--- error_code eval
[200, 200, 200, 200, 200, 200, 404, 400, 200, 404]
--- response_body_like eval
[qr/"limit":5/, qr/"limit":6/, qr/"limit":7/,
 qr/^\{"customer_id":"\Q$::Run\E\/a\/\/b","limit":5,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E\/.\/c","limit":6,"window":60\}$/,
 qr/^\{"customer_id":"\Q$::Run\E\/d\/..\/e","limit":7,"window":60\}$/,
 qr/this customer has no rule/,
 qr/^\{"error":"unknown argument \\"x\\" \(expected \\"policy\\"\)","field":"x"\}$/,
 qr/^\{"customer_id":"\Q$::Run\E\/a\/\/b","deleted":true\}$/,
 qr/this customer has no rule/]



=== TEST 4: an id whose ".." would take its URI out of the admin location is refused
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- more_headers eval
"Authorization: Bearer $::Token\nContent-Type: application/json"
--- request eval
[main::put(qq({"customer_id": "..", "limit": 5, "window": 60})),
 main::put(qq({"customer_id": "../$::Run", "limit": 5, "window": 60})),
 main::put(qq({"customer_id": "$::Run/../..", "limit": 5, "window": 60})),
 main::put(qq({"customer_id": "$::Run/..", "limit": 5, "window": 60}))]
--- error_code eval
[400, 400, 400, 200]
--- response_body_like eval
[qr/"error":"customer_id must not climb above itself.*","field":"customer_id"/,
 qr/must not climb above itself/,
 qr/must not climb above itself/,
 qr/"limit":5/]



=== TEST 5: after a rewrite, the id is read from the rewritten URI
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /v1/limits/ {
        rewrite ^/v1/limits/(.*)$ /admin/limits/$1 last;
    }
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- more_headers eval
"Authorization: Bearer $::Token\nContent-Type: application/json"
--- request eval
[main::put(qq({"customer_id": "$::Run-rw", "limit": 8, "window": 60})),
 "GET /v1/limits/$::Run-rw",
 "GET /admin/limits/$::Run-rw"]
--- error_code eval
[200, 200, 200]
--- response_body_like eval
[qr/"limit":8/, qr/^\{"customer_id":"\Q$::Run\E-rw","limit":8,"window":60\}$/,
 qr/"limit":8/]



=== TEST 6: tokens of every length but the right one are refused alike
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- more_headers eval
[map { "Authorization: Bearer $_" }
 "t", "test-admin-token-012345678", "test-admin-token-0123456789x",
 "test-admin-token-0123456788", "x" x 4000, $::Token]
--- request eval
[("GET /admin/limits/$::Run-nobody") x 6]
--- error_code eval
[401, 401, 401, 401, 401, 404]
--- response_body_like eval
[(qr/"error":"a valid \\"Authorization: Bearer\\" token is required"/) x 5,
 qr/this customer has no rule/]



=== TEST 7: GET and DELETE of an invalid id: one 400, and nothing more is done
The 400 used to be sent and the request carried on to the store as if the
id were good: a second answer ("header already sent"), a client left
waiting, and for DELETE a deletion under the empty id sent to the shards.
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /admin/limits {
        ratelimit_admin;
        ratelimit_admin_token test-admin-token-0123456789;
    }
--- more_headers eval
"Authorization: Bearer $::Token"
--- request eval
["GET /admin/limits/$::Run%01x",
 "DELETE /admin/limits/$::Run%01x"]
--- error_code eval
[400, 400]
--- response_body_like eval
[qr/^\{"error":"customer_id must not contain control characters \(byte 0x01 at offset \d+\)","field":"customer_id"\}$/,
 qr/"field":"customer_id"/]
--- no_error_log
header already sent
[alert]
