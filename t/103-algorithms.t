# The two algorithms against the clock, with small limits and short windows:
# a denial says when to come back (Retry-After), coming back earlier is still
# denied, coming back then passes; the token bucket refills one token at a
# time; the sliding window weighs the previous window's count.
#
# A block that looks at a later moment makes its own earlier requests in its
# --- init (prime()), with a user id of its own, and sleeps until a moment
# measured from them: never from an earlier block, since Test::Nginx may
# take a second or more to restart nginx between blocks.  User ids are
# unique to this run.  The whole file sleeps about 15 s.
#
# Redis and this file read the same clock.  Sliding windows are fixed: window
# n covers [n * W, (n + 1) * W) of the Unix time in ms, so a block can start
# at a known offset into a window.

use Test::Nginx::Socket;

use Time::HiRes ();

our $Run = "t103-$$-" . time();

use IO::Socket::INET ();

# Sends $n requests for $user to this block's nginx, one connection each, and
# returns the time just before the first, in seconds.  Dies on an answer
# other than 200 or 429.
sub prime {
    my ($user, $n) = @_;
    my $t0 = Time::HiRes::time();
    for (1 .. $n) {
        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                         PeerPort => server_port(),
                                         Timeout => 5)
            or die "connect: $!\n";
        print $sock "GET /t HTTP/1.0\r\nHost: localhost\r\n"
                    . "X-User-Id: $user\r\n\r\n";
        my $line = <$sock>;
        die "prime: no answer\n" unless defined $line;
        die "prime: $line" unless $line =~ m{^HTTP/1\.\d (200|429)};
        close $sock;
    }
    return $t0;
}

sub sleep_until {
    my ($t) = @_;
    my $d = $t - Time::HiRes::time();
    Time::HiRes::sleep($d) if $d > 0;
}

# sleeps until $offset ms into a window of $w ms (the next such moment) and
# returns the start of that window, in seconds
sub align {
    my ($w, $offset) = @_;
    my $now = int(Time::HiRes::time() * 1000);
    my $start = $now - $now % $w;
    $start += $w if $start + $offset <= $now;
    sleep_until(($start + $offset) / 1000);
    return $start / 1000;
}

no_shuffle();
repeat_each(1);

# the plan is what the blocks run: no count kept by hand
plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: token bucket, 2 per 2 s: 2 pass, the 3rd waits 1 s for a token
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 2s;
        ratelimit_algorithm token_bucket;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-tb"
--- pipelined_requests eval
[("GET /t") x 3]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=1;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\nRetry-After: 1"]



=== TEST 2: token bucket: half way to the token, still denied, 0.5 s left
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 2s;
        ratelimit_algorithm token_bucket;
        empty_gif;
    }
--- init
# TEST 1's three requests, then half way to the next token
main::sleep_until(main::prime("$::Run-tb2", 3) + 0.5);
--- more_headers eval
"X-User-Id: $::Run-tb2"
--- request
GET /t
--- error_code: 429
--- response_headers
RateLimit: "default";r=0;t=1
Retry-After: 1



=== TEST 3: token bucket: after the Retry-After of TEST 1, one passes (the early retry cost nothing)
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 2s;
        ratelimit_algorithm token_bucket;
        empty_gif;
    }
--- init
# TEST 1's three requests, TEST 2's early retry, then the Retry-After
my $t0 = main::prime("$::Run-tb3", 3);
main::sleep_until($t0 + 0.5);
main::prime("$::Run-tb3", 1);
main::sleep_until($t0 + 1.05);
--- more_headers eval
"X-User-Id: $::Run-tb3"
--- pipelined_requests eval
[("GET /t") x 2]
--- error_code eval
[200, 429]
--- response_headers eval
["RateLimit: \"default\";r=0;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\nRetry-After: 1"]



=== TEST 4: token bucket, 4 per 4 s: 4 pass, the 5th is denied
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 4 4s;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-refill"
--- pipelined_requests eval
[("GET /t") x 5]
--- error_code eval
[200, 200, 200, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=3;t=1\n!Retry-After",
 "RateLimit: \"default\";r=2;t=1\n!Retry-After",
 "RateLimit: \"default\";r=1;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\nRetry-After: 1"]



=== TEST 5: token bucket refill: 1.1 s later exactly one more token (not 2)
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 4 4s;
        empty_gif;
    }
--- init
# TEST 4's five requests, then 1.1 s of refill
main::sleep_until(main::prime("$::Run-refill5", 5) + 1.1);
--- more_headers eval
"X-User-Id: $::Run-refill5"
--- pipelined_requests eval
[("GET /t") x 2]
--- error_code eval
[200, 429]
--- response_headers eval
["RateLimit: \"default\";r=0;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\nRetry-After: 1"]



=== TEST 6: sliding window, 2 per 2 s, 0.1 s into a window: the 3rd waits 3 s
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 2s;
        ratelimit_algorithm sliding_window;
        empty_gif;
    }
--- init
# the count of this window weighs until the end of the next one, and 2 of 2
# leave room for one more only half way into the next one (3 s): t, the
# draft's effective window, says no more than the window (2 s)
main::align(2000, 100);
--- more_headers eval
"X-User-Id: $::Run-sw"
--- pipelined_requests eval
[("GET /t") x 3]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=1;t=2\n!Retry-After",
 "RateLimit: \"default\";r=0;t=2\n!Retry-After",
 "RateLimit: \"default\";r=0;t=2\nRetry-After: 3"]



=== TEST 7: sliding window: 2 s later, 0.1 s into the next window, still denied
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 2s;
        ratelimit_algorithm sliding_window;
        empty_gif;
    }
--- init
# TEST 6's three requests 0.1 s into a window; 2 s later the previous
# window's 2 still weigh 2 * 1.9 / 2 = 1.9
my $start = main::align(2000, 100);
main::prime("$::Run-sw7", 3);
main::sleep_until($start + 2.1);
--- more_headers eval
"X-User-Id: $::Run-sw7"
--- request
GET /t
--- error_code: 429
--- response_headers
RateLimit: "default";r=0;t=1
Retry-After: 1



=== TEST 8: sliding window: 3 s after the denial of TEST 6, one passes
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 2 2s;
        ratelimit_algorithm sliding_window;
        empty_gif;
    }
--- init
# TEST 6's three requests 0.1 s into a window, TEST 7's retry 2 s later;
# 1.1 s into the next window the previous 2 weigh 0.9: 1 more passes, not 2
my $start = main::align(2000, 100);
main::prime("$::Run-sw8", 3);
main::sleep_until($start + 2.1);
main::prime("$::Run-sw8", 1);
main::sleep_until($start + 3.1);
--- more_headers eval
"X-User-Id: $::Run-sw8"
--- pipelined_requests eval
[("GET /t") x 2]
--- error_code eval
[200, 429]
--- response_headers eval
["RateLimit: \"default\";r=0;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\nRetry-After: 1"]



=== TEST 9: sliding window, 4 per 2 s, filled late in a window
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 4 2s;
        ratelimit_algorithm sliding_window;
        empty_gif;
    }
--- init
# 1.6 s into a window; room again a quarter into the next one (0.9 s)
main::align(2000, 1600);
--- more_headers eval
"X-User-Id: $::Run-weight"
--- pipelined_requests eval
[("GET /t") x 5]
--- error_code eval
[200, 200, 200, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=3;t=2\n!Retry-After",
 "RateLimit: \"default\";r=2;t=2\n!Retry-After",
 "RateLimit: \"default\";r=1;t=2\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\nRetry-After: 1"]



=== TEST 10: sliding window weighting: 1.15 s into the next window the previous 4 weigh 1.7: 2 pass
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_timeout 1s;   # a busy box is no shard failure
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT2;
--- config
    location /t {
        ratelimit $http_x_user_id;
        ratelimit_default 4 2s;
        ratelimit_algorithm sliding_window;
        empty_gif;
    }
--- init
# TEST 9's five requests 1.6 s into a window; 1.15 s into the next one a
# fixed window would let 4 pass, a token bucket 3 (1.55 s of refill)
my $start = main::align(2000, 1600);
main::prime("$::Run-weight10", 5);
main::sleep_until($start + 2 + 1.15);
--- more_headers eval
"X-User-Id: $::Run-weight10"
--- pipelined_requests eval
[("GET /t") x 3]
--- error_code eval
[200, 200, 429]
--- response_headers eval
["RateLimit: \"default\";r=1;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\n!Retry-After",
 "RateLimit: \"default\";r=0;t=1\nRetry-After: 1"]
