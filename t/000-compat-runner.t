# Self-test of the Test::Nginx block-format runner, using stock nginx only.
#
# Runs under the project's runner (PERL5LIB=t/compat) and, unchanged, under
# the real Test::Nginx::Socket.  The plan below is the per-block assertion
# count described in t/compat/README.md, so a runner that emits a different
# number of assertions fails this file too.

use Test::Nginx::Socket;

use File::Temp ();
use POSIX ();

repeat_each(2);
no_shuffle();

# assertions per repeat, block by block (see "Counting" in the README):
my @per_block = (
    4,    # TEST 1:  status + body + 2 no_error_log patterns
    6,    # TEST 2:  status + 4 response_headers lines + body
    4,    # TEST 3:  status + 2 response_headers_like lines + body_like
    4,    # TEST 4:  status + 1 header + body + 1 no_error_log pattern
    4,    # TEST 5:  must_die + 2 error_log patterns + 1 no_error_log pattern
    5,    # TEST 6:  status + body_like + 2 error_log patterns + grep
    15,   # TEST 7:  3 pipelined x (status + header + body_like)
          #          + 3 log checks x 2 no_error_log patterns
    3,    # TEST 8:  status + error_log + no_error_log
    6,    # TEST 9:  2 requests x (status + body) + 2 x no_error_log
    4,    # TEST 10: status + 2 headers + body
    4,    # TEST 11: 2 requests x (status + body)
    2,    # TEST 12: status + body
);
my $negative_checks = 4;

my $sum = 0;
$sum += $_ for @per_block;
plan tests => repeat_each() * $sum + $negative_checks;

run_tests();

# A runner that never fails is no runner: feed it a small suite whose
# expectations are wrong and check that exactly those assertions fail.
negative_self_test();

sub negative_self_test {
    my $suite = <<'_EOS_';
use Test::Nginx::Socket;
no_shuffle();
plan tests => 9;
run_tests();
__DATA__

=== TEST 1: wrong status and body
--- config
    location = /t {
        return 200 "right\n";
    }
--- request
GET /t
--- error_code: 201
--- response_body
wrong

=== TEST 2: a log line that never comes, a header that is there
--- config
    location = /t {
        add_header X-Here yes;
        return 200 "ok\n";
    }
--- request
GET /t
--- response_headers
X-Here: no
!Server
--- error_log
this line is never logged
--- response_body
ok

=== TEST 3: pipelined, second status wrong
--- config
    location = /t {
        return 200 "ok\n";
    }
--- pipelined_requests eval
["GET /t", "GET /t"]
--- error_code eval
[200, 500]
_EOS_

    my ($fh, $file) = File::Temp::tempfile('compat-negative-XXXXXX',
                                           SUFFIX => '.t', TMPDIR => 1,
                                           UNLINK => 1);
    print $fh $suite;
    close $fh;

    # own port and server root (t/servroot_PORT), removed when it ends
    local $ENV{TEST_NGINX_RANDOMIZE} = 1;
    local $ENV{TEST_NGINX_SERVROOT};
    local $ENV{TEST_NGINX_PORT};
    local $ENV{TEST_NGINX_SERVER_PORT};
    local $ENV{TEST_NGINX_CLIENT_PORT};
    local $ENV{HARNESS_ACTIVE};
    delete $ENV{$_} for qw(TEST_NGINX_SERVROOT TEST_NGINX_PORT
                           TEST_NGINX_SERVER_PORT TEST_NGINX_CLIENT_PORT
                           HARNESS_ACTIVE);

    # same perl, same @INC (and so the same runner) as this file
    my $pid = open my $from_child, '-|';
    die "fork failed: $!" unless defined $pid;
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        { exec $^X, (map { "-I$_" } grep { !ref } @INC), $file; }
        print "exec $^X failed: $!\n";
        POSIX::_exit(127);
    }
    my $out = do { local $/; <$from_child> };
    close $from_child;
    my $status = $? >> 8;

    my @not_ok = grep { /^not ok \d+/ } split /\n/, $out;
    my @ok     = grep { /^ok \d+/ } split /\n/, $out;

    isnt($status, 0, "negative suite: exits non-zero")
        or diag($out);
    is(scalar(@not_ok), 6, "negative suite: exactly the 6 wrong "
                           . "expectations fail") or diag($out);
    is(scalar(@ok), 3, "negative suite: the 3 right ones pass")
        or diag($out);

    my @want = (
        qr/TEST 1: wrong status and body - status code ok/,
        qr/TEST 1: wrong status and body - response_body - response is expected/,
        qr/TEST 2: .* - header X-Here ok/,
        qr/TEST 2: .* - header Server not present in the raw headers/,
        qr/TEST 2: .* - pattern "this line is never logged" should match a line in error\.log/,
        qr/TEST 3: pipelined, second status wrong - status code ok/,
    );
    my @missing = grep { my $re = $_; !grep { $_ =~ $re } @not_ok } @want;
    ok(!@missing, "negative suite: the failures are the expected ones")
        or diag("missing: @missing\n$out");
}

__DATA__

=== TEST 1: POST with a body and more_headers; Host, Connection, Content-Length
--- config
    location = /echo {
        return 200 "$request_method $uri host=$host conn=$http_connection len=$http_content_length x=$http_x_compat\n";
    }
--- more_headers
X-Compat: yes please
--- request
POST /echo
  hello body  
--- response_body
POST /echo host=localhost conn=close len=10 x=yes please
--- no_error_log
[error]
[alert]



=== TEST 2: add_header, an empty header, absent headers, 204
--- config
    location = /h {
        add_header X-Foo "bar baz";
        add_header X-Empty "";
        return 204;
    }
--- request
GET /h
--- error_code: 204
--- response_headers
X-Foo: bar baz
X-Empty:
!X-Missing
Content-Length:
--- response_body



=== TEST 3: empty_gif, response_headers_like, response_body_like eval
--- config
    location = /pixel.gif {
        empty_gif;
    }
--- request
GET /pixel.gif
--- response_headers_like
Content-Type: image/gif
Content-Length: \d+
--- response_body_like eval
qr/\AGIF89a/



=== TEST 4: proxy_pass to another location of the same server ($TEST_NGINX_SERVER_PORT)
--- config
    location = /front {
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/back;
    }
    location = /back {
        add_header X-Backend yes;
        return 200 "from back: $request_uri\n";
    }
--- request
GET /front
--- response_headers
X-Backend: yes
--- response_body
from back: /back
--- no_error_log
[error]



=== TEST 5: a bad directive value: nginx must die and name the value
--- http_config
    limit_req_zone $binary_remote_addr zone=compat:1m rate=fast;
--- config
    location = /t {
        return 200;
    }
--- must_die
--- error_log eval
[qr/\[emerg\]/, 'invalid rate "rate=fast"']
--- no_error_log
[alert]



=== TEST 6: 404 from the root location: open() failure in the error log
--- config
    location = /unused {
        return 200;
    }
--- request
GET /no-such-file.html
--- error_code: 404
--- response_body_like: 404 Not Found
--- error_log eval
[qr{open\(\) "[^"]*/html/no-such-file\.html" failed}, "(2: No such file or directory)"]
--- grep_error_log eval
qr/No such file or directory/
--- grep_error_log_out
No such file or directory



=== TEST 7: pipelined requests: one keep-alive connection, per-request arrays
--- config
    location /p/ {
        return 200 "uri=$uri\n";
    }
--- pipelined_requests eval
["GET /p/1", "GET /missing.html", "GET /p/3"]
--- error_code eval
[200, 404, 200]
--- response_headers eval
["Content-Type: text/plain", "Content-Type: text/html", "!X-Nope"]
--- response_body_like eval
[qr{^uri=/p/1$}, qr/404 Not Found/, qr{^uri=/p/3$}]
--- no_error_log
[alert]
[crit]



=== TEST 8: raw_request, log_level info: a bad request line is logged at info
--- config
    location = /t {
        return 200;
    }
--- log_level: info
--- raw_request eval
"FOO BAR BAZ QUX\r\n\r\n"
--- error_code: 400
--- error_log
client sent invalid request
--- no_error_log
[debug]



=== TEST 9: request array, main_config, http_config, wait and timeout
--- main_config
worker_rlimit_nofile 1024;
--- http_config
    map $arg_v $compat_mapped {
        default "none";
        one     "1";
        two     "2";
    }
--- config
    location = /m {
        return 200 "mapped=$compat_mapped\n";
    }
--- request eval
["GET /m?v=one", "GET /m?v=two HTTP/1.0"]
--- response_body eval
["mapped=1\n", "mapped=2\n"]
--- wait: 0.1
--- timeout: 2s
--- no_error_log
[error]



=== TEST 10: a chunked response (sub_filter drops Content-Length)
--- config
    location = /chunked {
        sub_filter_types text/plain;
        sub_filter 'world' 'nginx';
        return 200 "hello world\n";
    }
--- request
GET /chunked
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body
hello nginx



=== TEST 11: user_files and init (html_dir)
--- config
    location = /unused {
        return 200;
    }
--- user_files
>>> compat/user.txt
from user_files
--- init
my $file = html_dir() . '/init.txt';
open my $out, '>', $file or die "cannot write $file: $!";
print $out "from init\n";
close $out;
--- request eval
["GET /compat/user.txt", "GET /init.txt"]
--- response_body eval
["from user_files\n", "from init\n"]



=== TEST 12: no config section: the previous block's nginx serves it
--- request
GET /compat/user.txt
--- response_body
from user_files
