# The ratelimit_metrics location on its own: the exposition's content type,
# 405 with Allow for anything but GET and HEAD (ratelimit_stats' too), and
# nginx -t naming the directive when it is misplaced, has arguments, or has
# no zone.  The values themselves, read by a real Prometheus parser under
# traffic and reloads, are t/213-metrics.t's.

use Test::Nginx::Socket;

repeat_each(1);

# 3 blocks of 3, 2 and 2 tests; every other block is must_die (1) + one
# error_log pattern (1)
plan tests => repeat_each() * (3 + 2 + 2 + (blocks() - 3) * 2);

run_tests();

__DATA__

=== TEST 1: GET: the text format, version 0.0.4
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
--- config
    location /t { ratelimit $remote_addr; empty_gif; }
    location = /metrics { ratelimit_metrics; }
--- request
GET /metrics
--- error_code: 200
--- response_headers
Content-Type: text/plain; version=0.0.4
--- response_body_like eval
qr/\A# HELP nginx_ratelimit_requests_total [^\n]+\n# TYPE nginx_ratelimit_requests_total counter\nnginx_ratelimit_requests_total\{policy="default",outcome="passed"\} 0\n/



=== TEST 2: POST: 405, Allow: GET, HEAD
--- http_config
    ratelimit_zone ratelimit:1m;
--- config
    location = /metrics { ratelimit_metrics; }
--- request
POST /metrics
x
--- error_code: 405
--- response_headers
Allow: GET, HEAD



=== TEST 3: ratelimit_stats answers a POST the same way
--- http_config
    ratelimit_zone ratelimit:1m;
--- config
    location = /stats { ratelimit_stats; }
--- request
POST /stats
x
--- error_code: 405
--- response_headers
Allow: GET, HEAD



=== TEST 4: no zone
--- config
    location = /metrics { ratelimit_metrics; }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit_metrics" .*require "ratelimit_zone"/



=== TEST 5: an argument
--- http_config
    ratelimit_zone ratelimit:1m;
--- config
    location = /metrics { ratelimit_metrics on; }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid number of arguments in "ratelimit_metrics" directive/



=== TEST 6: not in a location
--- http_config
    ratelimit_zone ratelimit:1m;
--- config
    ratelimit_metrics;
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit_metrics" directive is not allowed here/
