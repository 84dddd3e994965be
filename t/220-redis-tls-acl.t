# Shards over TLS and with ACL users (issue 12): real redis-server
# processes started with --tls-port and certificates made by openssl here,
# real nginx, real HTTP.  Each Redis keeps a plain port for this test's own
# redis-cli; nginx is only pointed at the TLS ports.

use strict;
use warnings;

use IO::Socket::INET;
use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http redis_has_key status_counts);
use RLTest::Nginx;
use RLTest::Redis;
use RLTest::TLS;

my $certs = RLTest::TLS::certs();
my $tls = RLTest::TLS::start_redis();
my $plain = RLTest::Redis->start;
my $mtls = RLTest::TLS::start_redis(auth_clients => 'yes');
my $acl = RLTest::TLS::start_redis();

my $token = 'test-admin-token-0123456789';

# the locations every node of this suite serves
sub server_block {
    my (%opt) = @_;
    my $fail = $opt{fail} || 'closed';
    my $limit = $opt{limit} || 5;
    return <<"EOF";
    server {
        listen 127.0.0.1:%PORT%;

        location /api/ {
            ratelimit \$http_x_user_id;
            ratelimit_default $limit 3600s;
            ratelimit_fail $fail;
            empty_gif;
        }

        location /open/ {
            ratelimit \$http_x_user_id;
            ratelimit_default $limit 3600s;
            ratelimit_fail open;
            empty_gif;
        }

        location = /stats {
            ratelimit_stats;
        }

        location /admin/limits {
            ratelimit_admin;
            ratelimit_admin_token $token;
        }
    }
EOF
}

# a node whose shards are given as [port, parameters]; tls => the lines of
# the ratelimit_redis_tls_* directives
sub node {
    my (%opt) = @_;
    my $tls_lines = defined $opt{tls} ? $opt{tls}
        : "    ratelimit_redis_tls_trusted_certificate $certs->{ca};\n";
    return RLTest::Nginx->start(
        workers => $opt{workers} || 1,
        main    => $opt{main} || '',
        http    => ratelimit_http(
            shards  => $opt{shards},
            timeout => $opt{timeout} || '1s',
            body    => $tls_lines . server_block(%opt)));
}

sub statuses {
    my ($nginx, $path, $user, $n) = @_;
    return [map { $nginx->get($path, 'X-User-Id' => $user)->{status} } 1 .. $n];
}

sub stats {
    my ($nginx) = @_;
    return decode_json($nginx->get('/stats')->{content});
}

sub count_lines {
    my ($text, $re) = @_;
    return scalar(() = $text =~ /$re/g);
}


subtest 'limit enforced exactly over a TLS shard' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls']]);
    my $user = unique_key('tls');
    is_deeply statuses($nginx, '/api/x', $user, 7),
        [200, 200, 200, 200, 200, 429, 429], '5 allowed of 7, then 429';
    ok redis_has_key($tls->port, "rl:tb:http_x_user_id:k:$user"),
        'the count is in the TLS shard';
    unlike $nginx->error_log, qr/marked down|failed/, 'no failure logged';
    $nginx->stop;
};


subtest 'a ring of one TLS shard and one plain shard' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls'], $plain->port]);
    my (%on, @users);
    for my $i (1 .. 40) {
        my $user = unique_key("ring$i");
        is $nginx->get('/api/x', 'X-User-Id' => $user)->{status}, 200
            or diag $nginx->error_log;
        my $key = "rl:tb:http_x_user_id:k:$user";
        my $where = redis_has_key($tls->port, $key) ? 'tls'
                  : redis_has_key($plain->port, $key) ? 'plain' : 'none';
        $on{$where}++;
        push @users, [$user, $where];
    }
    cmp_ok $on{tls} || 0, '>', 5, "counts on the TLS shard ($on{tls})";
    cmp_ok $on{plain} || 0, '>', 5, "counts on the plain shard ($on{plain})";
    ok !$on{none}, 'every count on one of them';

    # exact on both: 4 more allowed, then denied
    for my $kind (qw(tls plain)) {
        my ($u) = map { $_->[0] } grep { $_->[1] eq $kind } @users;
        is_deeply statuses($nginx, '/api/x', $u, 5), [200, 200, 200, 200, 429],
            "exact on the $kind shard";
    }
    $nginx->stop;
};


# $n requests on as many connections, all written before any is read, so
# that the worker finds them in one turn of its event loop; the statuses
sub burst {
    my ($nginx, $n, $user) = @_;
    my @socks = map {
        IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $nginx->port,
                              Proto => 'tcp', Timeout => 10)
            or die "connect: $!"
    } 1 .. $n;
    my $req = "GET /api/x HTTP/1.0\r\nHost: localhost\r\n"
            . "X-User-Id: $user\r\n\r\n";
    syswrite($_, $req) for @socks;
    return map {
        my $sock = $_;
        local $/;
        my $resp = <$sock>;
        close $sock;
        defined $resp && $resp =~ m{^HTTP/1\.\d (\d{3})} ? $1 : 'none';
    } @socks;
}

subtest 'pipelining over TLS: concurrent requests batched, counts exact' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls']], limit => 100);
    my $warm = unique_key('warm');
    $nginx->get('/api/x', 'X-User-Id' => $warm);   # connected, scripts loaded
    my $user = unique_key('burst');
    my $before = stats($nginx);
    my @st = map { burst($nginx, 50, $user) } 1 .. 4;
    my $after = stats($nginx);
    is_deeply status_counts(@st), { 200 => 100, 429 => 100 },
        '200 concurrent requests: exactly 100 allowed';
    my %d = map { $_ => $after->{$_} - $before->{$_} }
            qw(checks batches redis_commands redis_writes);
    diag join ', ', map { "$_ $d{$_}" } sort keys %d;
    cmp_ok $d{checks}, '>', $d{batches},
        'several checks shared a batch (one EVALSHA through TLS)';
    cmp_ok $d{redis_writes}, '<', $d{redis_commands} + 1,
        'no more writes than commands';
    is $after->{failed_open} + $after->{failed_closed}, 0, 'none failed';
    $nginx->stop;
};


subtest 'a CA that did not sign the shard: fail path, verify failure logged' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls']],
        tls => "    ratelimit_redis_tls_trusted_certificate $certs->{other_ca};\n");
    my $user = unique_key('wrongca');
    is $nginx->get('/api/x', 'X-User-Id' => $user)->{status}, 503,
        'fail closed: 503';
    my $r = $nginx->get('/open/x', 'X-User-Id' => $user);
    is $r->{status}, 200, 'fail open: allowed';
    ok !exists $r->{headers}{ratelimit}, 'nothing counted';
    ok !redis_has_key($tls->port, "rl:tb:http_x_user_id:k:$user"),
        'no command reached the shard';
    like $nginx->error_log,
        qr/\[error\] .*ratelimit: shard 127\.0\.0\.1:$tls->{tls_port}: certificate verify failed: \(\d+:[^)]+\)/,
        'the log names the shard and the verify failure';
    like $nginx->error_log, qr/marked down: certificate verify failed/,
        'the shard is marked down';
    $nginx->stop;
};


subtest 'ratelimit_redis_tls_verify off: no trusted certificate needed' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls']],
        tls => "    ratelimit_redis_tls_verify off;\n");
    my $user = unique_key('noverify');
    is_deeply statuses($nginx, '/api/x', $user, 6),
        [200, 200, 200, 200, 200, 429], 'works, exact';
    $nginx->stop;

    $nginx = node(shards => [[$tls->{tls_port}, ' tls']],
        tls => "    ratelimit_redis_tls_verify off;\n"
             . "    ratelimit_redis_tls_trusted_certificate $certs->{other_ca};\n");
    is_deeply statuses($nginx, '/api/x', $user . 'b', 2), [200, 200],
        'the wrong CA is not looked at';
    $nginx->stop;
};


subtest 'server name: checked against the certificate' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls']],
        tls => "    ratelimit_redis_tls_trusted_certificate $certs->{ca};\n"
             . "    ratelimit_redis_tls_server_name redis.example.com;\n");
    my $user = unique_key('name');
    is $nginx->get('/api/x', 'X-User-Id' => $user)->{status}, 503,
        'a name the certificate lacks: fail path';
    like $nginx->error_log,
        qr/shard 127\.0\.0\.1:\d+: certificate does not match "redis\.example\.com"/,
        'the log names the name';
    $nginx->stop;

    $nginx = node(shards => [[$tls->{tls_port}, ' tls']],
        tls => "    ratelimit_redis_tls_trusted_certificate $certs->{ca};\n"
             . "    ratelimit_redis_tls_server_name localhost;\n");
    is_deeply statuses($nginx, '/api/x', $user, 2), [200, 200],
        'its DNS name (sent as SNI): works';
    $nginx->stop;

    # the IP address as written is checked against the IP SAN; a
    # certificate naming only another address is refused
    $nginx = node(shards => [[$tls->{tls_port}, ' tls']],
        tls => "    ratelimit_redis_tls_trusted_certificate $certs->{ca};\n"
             . "    ratelimit_redis_tls_server_name 127.0.0.2;\n");
    is $nginx->get('/api/x', 'X-User-Id' => $user . 'ip')->{status}, 503,
        'another IP address: fail path';
    like $nginx->error_log, qr/certificate does not match "127\.0\.0\.2"/,
        'logged';
    $nginx->stop;
};


subtest 'the handshake counts against ratelimit_redis_timeout' => sub {
    # a listener that never accepts: the kernel completes TCP, nobody
    # answers the ClientHello
    my $mute = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                     Proto => 'tcp', Listen => 16)
        or die "listen: $!";
    my $nginx = node(shards => [[$mute->sockport, ' tls']],
                     timeout => '300ms');
    my $t0 = time;
    is $nginx->get('/api/x', 'X-User-Id' => unique_key('mute'))->{status},
        503, 'a shard that never answers the handshake: fail path';
    my $took = time - $t0;
    cmp_ok $took, '>=', 0.25, sprintf 'after the timeout (%.2f s)', $took;
    cmp_ok $took, '<', 3, 'not much later';
    # the connection may have been made a millisecond after the request's
    # batch was timed: then a second request finds it older than the
    # timeout for sure
    $nginx->get('/api/x', 'X-User-Id' => unique_key('mute'))
        unless $nginx->error_log =~ /marked down/;
    like $nginx->error_log, qr/marked down/, 'the shard is marked down';
    $nginx->stop;
    close $mute;
};


subtest 'a shard that requires client certificates' => sub {
    my $nginx = node(shards => [[$mtls->{tls_port}, ' tls']]);
    my $user = unique_key('mtls');
    is $nginx->get('/api/x', 'X-User-Id' => $user)->{status}, 503,
        'without one: fail path';
    like $nginx->error_log, qr/marked down/, 'the shard is marked down';
    like $nginx->error_log, qr/ratelimit shard: 127\.0\.0\.1:$mtls->{tls_port}/,
        "nginx's own SSL error names the shard";
    $nginx->stop;

    $nginx = node(shards => [[$mtls->{tls_port}, ' tls']],
        tls => "    ratelimit_redis_tls_trusted_certificate $certs->{ca};\n"
             . "    ratelimit_redis_tls_certificate $certs->{client_crt};\n"
             . "    ratelimit_redis_tls_certificate_key $certs->{client_key};\n");
    is_deeply statuses($nginx, '/api/x', $user, 6),
        [200, 200, 200, 200, 200, 429], 'with one: works, exact';
    unlike $nginx->error_log, qr/marked down/, 'never marked down';
    $nginx->stop;
};


subtest 'reconnects: the session is reused; a restarted shard is taken back' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls']],
                     main => "error_log logs/debug.log debug;\n",
                     timeout => '300ms');
    my $user = unique_key('restart');
    is_deeply statuses($nginx, '/api/x', $user, 2), [200, 200], 'works';

    # the shard closes the idle connection: the next one resumes the session
    $tls->cli('CLIENT', 'KILL', 'LADDR', "127.0.0.1:$tls->{tls_port}");
    sleep 0.2;
    is $nginx->get('/api/x', 'X-User-Id' => $user)->{status}, 200,
        'after the shard closed the connection: works';
    my $debug = `cat $nginx->{dir}/logs/debug.log`;
    is count_lines($debug, qr/ratelimit: TLS to shard \S+, session reused: 0/), 1,
        'one full handshake';
    cmp_ok count_lines($debug, qr/ratelimit: TLS to shard \S+, session reused: 1/),
        '>=', 1, 'then the session reused';

    $tls->restart;
    my @st;
    my $deadline = time + 10;
    while (time < $deadline) {
        push @st, $nginx->get('/api/x', 'X-User-Id' => $user)->{status};
        last if $st[-1] == 200;
        sleep 0.1;
    }
    is $st[-1], 200, 'the restarted shard answers again (a fresh count)'
        or diag "@st";
    cmp_ok scalar @st, '<=', 40, 'soon';
    is_deeply statuses($nginx, '/api/x', $user, 5), [200, 200, 200, 200, 429],
        'exact again';
    is scalar($nginx->crashes), 0, 'no crash';
    $nginx->stop;
};


subtest 'a reload: the new configuration\'s TLS profile, old workers leave cleanly' => sub {
    my $nginx = node(shards => [[$tls->{tls_port}, ' tls']], workers => 2);
    my $user = unique_key('reload');
    is_deeply statuses($nginx, '/api/x', $user, 2), [200, 200], 'works';
    # the same shards, now also showing a client certificate
    $nginx->reload(ratelimit_http(
        shards  => [[$tls->{tls_port}, ' tls']],
        timeout => '1s',
        body    => "    ratelimit_redis_tls_trusted_certificate $certs->{ca};\n"
                 . "    ratelimit_redis_tls_certificate $certs->{client_crt};\n"
                 . "    ratelimit_redis_tls_certificate_key $certs->{client_key};\n"
                 . server_block()));
    is_deeply statuses($nginx, '/api/x', $user, 4), [200, 200, 200, 429],
        'after the reload: the same count, exact';
    is scalar($nginx->crashes), 0, 'no worker crashed';
    unlike $nginx->error_log, qr/marked down|alert|emerg/, 'nothing failed';
    $nginx->stop;
};


# what README.md advises for the module's user
$acl->cli('ACL', 'SETUSER', 'limiter', 'on', '>right-secret-0123', '~rl:*',
          '+@all', '-@dangerous');

subtest 'ACL user over TLS: the right password' => sub {
    my $nginx = node(shards => [[$acl->{tls_port},
                                 ' tls user=limiter password=right-secret-0123']]);
    my $user = unique_key('acl');
    is_deeply statuses($nginx, '/api/x', $user, 6),
        [200, 200, 200, 200, 200, 429], 'works, exact';
    like $acl->cli('CLIENT', 'LIST'), qr/laddr=127\.0\.0\.1:$acl->{tls_port} .*user=limiter /,
        "nginx's connection is the ACL user's";
    $nginx->stop;
};


subtest 'ACL user: password=file:' => sub {
    my $dir = File::Temp::tempdir('rltest-pw-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    open my $fh, '>', "$dir/redis.pw" or die $!;
    print $fh "right-secret-0123\n";
    close $fh;
    chmod 0644, "$dir/redis.pw";
    chmod 0755, $dir;
    my $nginx = node(shards => [[$acl->{tls_port},
                                 " tls user=limiter password=file:$dir/redis.pw"]]);
    my $user = unique_key('aclfile');
    is_deeply statuses($nginx, '/api/x', $user, 6),
        [200, 200, 200, 200, 200, 429], 'works, exact';
    unlike $nginx->error_log, qr/AUTH/, 'AUTH accepted';
    $nginx->stop;
};


subtest 'ACL user: a wrong password' => sub {
    my $nginx = node(shards => [[$acl->{tls_port},
                                 ' tls user=limiter password=wrong-secret-4567']],
                     workers => 2);
    my $user = unique_key('aclbad');
    my $before = RLTest::TLS::connections_received($acl);
    my (%st, $n);
    my $start = time;
    while (time - $start < 3) {
        $st{$nginx->get('/api/x', 'X-User-Id' => $user)->{status}}++;
        $st{open}{$nginx->get('/open/x', 'X-User-Id' => $user)->{status}}++;
        $n++;
        sleep 0.02;
    }
    my $elapsed = time - $start;
    # this call is one connection itself
    my $conns = RLTest::TLS::connections_received($acl) - $before - 1;
    my $log = $nginx->error_log;
    my $lines = count_lines($log,
        qr/\[error\] .*ratelimit: AUTH as user "limiter" on shard 127\.0\.0\.1:$acl->{tls_port} failed: WRONGPASS/);
    diag sprintf "%d requests x 2 in %.1f s: %d connections, %d AUTH lines",
        $n, $elapsed, $conns, $lines;
    is $st{503}, $n, 'fail closed: every request 503';
    is_deeply $st{open}, { 200 => $n }, 'fail open: every request allowed';
    cmp_ok $lines, '>=', 2, 'the refusal is logged, with Redis\'s words';
    cmp_ok $conns, '>=', $lines, 'one line per attempt at most';
    cmp_ok $conns, '<=', 12,
        "no retry storm: $conns connections for " . 2 * $n . ' requests';
    unlike $log, qr/wrong-secret/, 'the password is never logged';
    unlike $log, qr/is back up/, 'a refused AUTH is no sign of health';
    $nginx->stop;
};


subtest 'admin writes over TLS and ACL shards' => sub {
    my $nginx = node(shards => [[$acl->{tls_port},
                                 ' tls user=limiter password=right-secret-0123'],
                                [$tls->{tls_port}, ' tls']]);
    my $id = unique_key('cust');
    my %h = (Authorization => "Bearer $token",
             'Content-Type' => 'application/json');
    my $r = $nginx->request('PUT', '/admin/limits', %h,
        _body => encode_json({ customer_id => $id, limit => 2,
                               window => 60 }));
    is $r->{status}, 200, 'PUT: 200' or diag $r->{content};
    for my $shard ($acl, $tls) {
        like $shard->cli('HGET', 'rl:rules', $id), qr/\S/,
            'the rule is on shard ' . $shard->port;
    }
    $r = $nginx->request('GET', "/admin/limits/$id", %h);
    is $r->{status}, 200, 'GET: 200';
    my $rule = eval { decode_json($r->{content}) } || {};
    is $rule->{limit}, 2, 'GET answers the rule';
    is_deeply statuses($nginx, '/api/x', $id, 3), [200, 200, 429],
        'the rule is enforced';
    $r = $nginx->request('DELETE', "/admin/limits/$id", %h);
    like $r->{status}, qr/^20[04]$/, 'DELETE: done';
    is $nginx->request('GET', "/admin/limits/$id", %h)->{status}, 404,
        'gone';
    like $acl->cli('HGET', 'rl:rules', $id), qr/^"\S+ -"$/,
        'a tombstone on the ACL shard';
    like $tls->cli('HGET', 'rl:rules', $id), qr/^"\S+ -"$/,
        'and on the other';
    $nginx->stop;
};

done_testing;
