# Configuration errors of named policies (issue 9): nginx refuses to start
# and names the value at fault.  The first block is the control: every
# parameter with a good value (boundary values included) starts and works.

use Test::Nginx::Socket;

our $Run = "t107-$$-" . time();

no_shuffle();
repeat_each(1);

plan 'no_plan';

run_tests();

__DATA__

=== TEST 1: control: policies with every parameter, used with every parameter
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_redis_timeout 1s;
    ratelimit_policy a.b-c_D $http_x_user_id $remote_addr limit=1000000000 window=1d algorithm=sliding_window customer=$http_x_org;
    ratelimit_policy qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq global limit=1 window=1s algorithm=token_bucket;
--- config
    location /t {
        ratelimit a.b-c_D cost=0 dry_run;
        ratelimit qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq cost=1000000000 dry_run;
        ratelimit $http_x_user_id;
        ratelimit_problem_details off;
        empty_gif;
    }
--- more_headers eval
"X-User-Id: $::Run-control"
--- request
GET /t
--- error_code: 200
--- response_headers_like
RateLimit-Policy: "a\.b-c_D";q=1000000000;w=86400, "q{64}";q=1;w=1, "default";q=100;w=60



=== TEST 2: a policy name with a character outside letters, digits, _ - .
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy b@d $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit b@d;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid policy name "b\@d": policy must be letters, digits, "_", "-" and "\." \(byte 0x40 at offset 1\)/


=== TEST 3: "default" is the unnamed policy's name
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy default $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid policy name "default": policy "default" is reserved for the unnamed policy of each location/


=== TEST 4: a policy name longer than 64
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit $http_x_user_id;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid policy name "p{65}": policy must be a name of 1 to 64 characters, not 65/


=== TEST 5: two policies of one name
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
    ratelimit_policy p $remote_addr limit=2 window=1s;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*duplicate policy "p"/


=== TEST 6: a policy without a key
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p limit=1 window=1s;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*policy "p" has no key/


=== TEST 7: a policy without a window
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*policy "p" needs "limit=" and "window="/


=== TEST 8: a policy without a limit
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id window=1s;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*policy "p" needs "limit=" and "window="/


=== TEST 9: limit=0
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=0 window=1s;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid limit "0", must be 1 to 1000000000/


=== TEST 10: a window of a fraction of a second
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1500ms;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid window "1500ms", must be whole seconds/


=== TEST 11: a window over a day
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=2d;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid window "2d", must be 1s to 1d/


=== TEST 12: an unknown algorithm
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s algorithm=leaky_bucket;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid algorithm "leaky_bucket" of policy "p", must be "token_bucket" or "sliding_window"/


=== TEST 13: a mistyped parameter among the keys
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id burst=5 limit=1 window=1s;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*unknown parameter "burst=5" of policy "p"/


=== TEST 14: a key after the parameters
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s $remote_addr;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid parameter "\$remote_addr" of policy "p", keys come first/


=== TEST 15: a parameter given twice
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s limit=2;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*duplicate parameter "limit=2" of policy "p"/


=== TEST 16: an empty customer=
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s customer=;
--- config
    location /t {
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid parameter "customer=" of policy "p", keys come first/


=== TEST 17: ratelimit_policy in a location
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;

--- config
    location /t {
        ratelimit_policy p $http_x_user_id limit=1 window=1s;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit_policy" directive is not allowed here/


=== TEST 18: ratelimit naming a policy nobody declared
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;

--- config
    location /t {
        ratelimit nosuch;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*unknown ratelimit policy "nosuch" in \S+nginx\.conf:\d+/


=== TEST 19: the same policy twice in one location
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit p;
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*duplicate ratelimit policy "p" in \S+nginx\.conf:\d+/


=== TEST 20: a cost that is not a number
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit p cost=two;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid cost "cost=two", must be 0 to 1000000000 or a variable/


=== TEST 21: a negative cost
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit p cost=-1;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid cost "cost=-1", must be 0 to 1000000000 or a variable/


=== TEST 22: a cost over the largest limit
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit p cost=1000000001;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid cost "cost=1000000001", must be 0 to 1000000000 or a variable/


=== TEST 23: an unknown parameter of ratelimit
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit p burst=3;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid parameter "burst=3" of policy "p", expected "cost=" or "dry_run"/


=== TEST 24: a bare word that is no policy name
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;

--- config
    location /t {
        ratelimit user.id!;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid policy name "user\.id!" in "ratelimit": policy must be letters, digits, "_", "-" and "\." \(byte 0x21 at offset 7\); keys start with "\$"/


=== TEST 25: more than 16 policies in one location
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p0 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p1 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p2 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p3 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p4 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p5 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p6 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p7 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p8 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p9 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p10 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p11 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p12 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p13 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p14 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p15 $http_x_user_id limit=1 window=1s;
    ratelimit_policy p16 $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit p0;
        ratelimit p1;
        ratelimit p2;
        ratelimit p3;
        ratelimit p4;
        ratelimit p5;
        ratelimit p6;
        ratelimit p7;
        ratelimit p8;
        ratelimit p9;
        ratelimit p10;
        ratelimit p11;
        ratelimit p12;
        ratelimit p13;
        ratelimit p14;
        ratelimit p15;
        ratelimit p16;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*too many "ratelimit" policies in one place, at most 16/


=== TEST 26: "ratelimit off" beside a policy
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit off;
        ratelimit p;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*"ratelimit" directive is duplicate/


=== TEST 27: ratelimit_problem_details with a bad value
--- http_config
    ratelimit_zone ratelimit:1m;
    ratelimit_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    ratelimit_policy p $http_x_user_id limit=1 window=1s;
--- config
    location /t {
        ratelimit p;
        ratelimit_problem_details yes;
        empty_gif;
    }
--- must_die
--- error_log eval
qr/\[emerg\] .*invalid value "yes" in "ratelimit_problem_details" directive, it must be "on" or "off"/
