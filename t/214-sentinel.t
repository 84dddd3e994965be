# A shard whose primary Redis Sentinel names (ratelimit_redis_sentinel):
# a primary, a replica and three sentinels on loopback; the first sentinel
# nginx is given is down.  The primary is killed under load: every request
# is answered, no worker crashes, the keys follow the promoted replica
# (counts go on there), the admin endpoint writes rules to it; reloads
# under load (one refused) keep the count exact.  A sentinel
# that names a replica is not believed: ROLE says it is no primary.

use strict;
use warnings;

use File::Temp qw(tempdir);
use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(unique_key status_counts);
use RLTest::Nginx;
use RLTest::Redis;

my $token = 'sentinel-suite-token';
my @sentinels;

my $primary = RLTest::Redis->start;
my $replica = RLTest::Redis->start(
    args => ['--replicaof', '127.0.0.1', $primary->port]);

wait_until(10, sub { $replica->cli('INFO', 'replication')
                     =~ /master_link_status:up/ })
    or BAIL_OUT('the replica did not sync');

push @sentinels, start_sentinel($primary->port) for 1 .. 3;

# every sentinel knows the replica and the two other sentinels
wait_until(30, sub {
    for my $s (@sentinels) {
        return 0 unless scli($s, 'SENTINEL', 'replicas', 'mymaster')
                        =~ /\b${\ $replica->port }\b/;
        my @others = scli($s, 'SENTINEL', 'sentinels', 'mymaster')
                     =~ /^name$/mg;
        return 0 unless @others == 2;
    }
    return 1;
}) or BAIL_OUT('the sentinels did not find each other and the replica');

my $dead = RLTest::Redis::free_port();
my $addrs = join ' ', "127.0.0.1:$dead",
                      map { "127.0.0.1:$_->{port}" } @sentinels;

my $http = <<"EOF";
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster $addrs;
    ratelimit_redis_timeout 500ms;

    server {
        listen 127.0.0.1:%PORT%;

        location /open/ {
            ratelimit \$http_x_user_id;
            ratelimit_default 1000000 86400s;
            ratelimit_fail open;
            empty_gif;
        }

        location /closed/ {
            ratelimit \$http_x_user_id;
            ratelimit_default 1000000 86400s;
            ratelimit_fail closed;
            empty_gif;
        }

        location /limited/ {
            ratelimit \$http_x_user_id;
            ratelimit_default 30 3600s;
            ratelimit_fail closed;
            empty_gif;
        }

        location /admin/limits {
            ratelimit_admin;
            ratelimit_admin_token $token;
        }
    }
EOF

my $nginx = RLTest::Nginx->start(workers => 2, http => $http);

sub key_of { "rl:tb:http_x_user_id:k:$_[0]" }

subtest 'the primary is found through the sentinels, the first one down' => sub {
    my $user = unique_key('first');
    ok wait_until(10, sub {
        $nginx->get('/closed/x', 'X-User-Id' => $user)->{status} == 200 }),
        'a check is answered';
    is $primary->cli('EXISTS', key_of($user)), '(integer) 1',
        'its count is on the primary';
    my $p = $primary->port;
    like $nginx->error_log, qr/shard mymaster is at 127\.0\.0\.1:$p /,
        'the log says where the shard is';
    like $nginx->error_log, qr/sentinel 127\.0\.0\.1:$dead: connect failed/,
        'and that the dead sentinel was passed over'
        or diag join "\n", grep { /sentinel/ } split /\n/, $nginx->error_log;
};

my $limited = unique_key('limited');
my $cust_before = unique_key('cust-before');

subtest 'before the failover' => sub {
    my @st = map { $nginx->get('/limited/x', 'X-User-Id' => $limited)->{status} }
             1 .. 10;
    is_deeply \@st, [(200) x 10], 'the limited caller spends 10 of 30';
    is admin_put($cust_before)->{status}, 200, 'a rule is written';
    ok wait_until(5, sub { repl_offset($primary, 'master_repl_offset')
                           == repl_offset($replica, 'slave_repl_offset') }),
        'and everything is replicated before the primary dies';
};

# load: 4 clients, two on a fail-open and two on a fail-closed location,
# each for a bounded time and a bounded number of requests
my $load_for = 14;
my $clients = RLTest::Nginx::parallel_start(4, sub {
    my ($i) = @_;
    my $where = $i % 2 ? '/open/x' : '/closed/x';
    my $user = unique_key("load$i");
    my $until = time + $load_for;
    my @out;
    for (1 .. 20000) {
        last if time > $until;
        my $r = $nginx->get($where, 'X-User-Id' => $user);
        push @out, "$where $r->{status}";
        sleep 0.005;
    }
    return @out;
});

sleep 1.5;

my $killed_at = time;
kill 'KILL', $primary->pid;
$primary->stop;     # reaps it

my $switched = wait_until(30, sub {
    scli($sentinels[1], 'SENTINEL', 'get-master-addr-by-name', 'mymaster')
        =~ /\b${\ $replica->port }\b/ });
my $switched_at = time;
ok $switched, sprintf 'the sentinels promote the replica (%.1fs after the kill)',
    $switched_at - $killed_at;

my $probe = unique_key('after');
my $followed = wait_until(10, sub {
    $nginx->get('/closed/x', 'X-User-Id' => $probe)->{status} == 200 });
my $followed_at = time;
ok $followed, sprintf 'nginx follows: a fail-closed check is allowed again '
    . '%.2fs after the switch, %.1fs after the kill',
    $followed_at - $switched_at, $followed_at - $killed_at;
cmp_ok $followed_at - $switched_at, '<', 1, 'within 1 s of the switch (+switch-master)';
is $replica->cli('EXISTS', key_of($probe)), '(integer) 1',
    'the new count is on the promoted replica';

my @results = RLTest::Nginx::parallel_wait($clients);

subtest 'every request under load was answered' => sub {
    my %by = (open => [], closed => []);
    for (@results) {
        my ($where, $status) = split ' ';
        push @{ $by{ $where =~ /open/ ? 'open' : 'closed' } }, $status;
    }
    cmp_ok scalar @results, '>', 100, scalar(@results) . ' requests sent';
    my @statuses = map { (split ' ')[1] } @results;
    is_deeply [grep { !/^(?:200|429|503)$/ } @statuses], [],
        'each answered 200, 429 or 503';
    my $open = status_counts(@{ $by{open} });
    my $closed = status_counts(@{ $by{closed} });
    note 'fail open: ' . join(', ', map { "$_ x$open->{$_}" } sort keys %$open);
    note 'fail closed: ' . join(', ', map { "$_ x$closed->{$_}" } sort keys %$closed);
    is_deeply [grep { $_ != 200 } @{ $by{open} }], [],
        'fail open: all allowed, during the failover too';
    ok $closed->{503}, 'fail closed: refused (503) while no primary answered';
    ok $closed->{200}, 'and allowed before and after';
};

subtest 'counts go on on the promoted replica' => sub {
    my $allowed = 0;
    for (1 .. 40) {
        my $status = $nginx->get('/limited/x', 'X-User-Id' => $limited)->{status};
        last if $status == 429;
        $allowed++ if $status == 200;
    }
    # replicated in full before the kill, so nothing was lost; writes made
    # after the last replication would have come back as quota
    is $allowed, 20, 'the caller that spent 10 of 30 gets exactly 20 more';
    is $replica->cli('EXISTS', key_of($limited)), '(integer) 1',
        'its key is on the promoted replica';
};

subtest 'the admin endpoint writes to the new primary' => sub {
    my $cust = unique_key('cust-after');
    is admin_put($cust)->{status}, 200, 'a rule is written after the failover';
    is $replica->cli('HEXISTS', 'rl:rules', $cust), '(integer) 1',
        'the new primary holds it';
    is $replica->cli('HEXISTS', 'rl:rules', $cust_before), '(integer) 1',
        'and the one written before the failover';
};

subtest 'the log' => sub {
    my $log = $nginx->error_log;
    my ($p, $r) = ($primary->port, $replica->port);
    like $log, qr/shard mymaster moved from 127\.0\.0\.1:$p to 127\.0\.0\.1:$r \(\+switch-master/,
        'names the switch';
    unlike $log, qr/exited on signal|\[alert\]|\[emerg\]/, 'no worker crashed';
};

subtest 'reloads under load, one refused: counts exact, old workers leave their sentinels' => sub {
    my $user = unique_key('reload');
    is $nginx->get('/limited/x', 'X-User-Id' => $user)->{status}, 200,
        'a first request counted';

    # 8 clients for about 3 s, while the node reloads, is refused a broken
    # configuration, and reloads again
    my $kids = RLTest::Nginx::parallel_start(8, sub {
        my $until = time + 3;
        my @got;
        while (time < $until) {
            push @got, $nginx->get('/open/x', 'X-User-Id' => "load-$_[0]")->{status};
        }
        return @got;
    });
    sleep 0.5;
    ok $nginx->reload_nowait($http), 'reloaded';
    sleep 0.5;
    is $nginx->reload_nowait($http . "    ratelimit_redis_sentinel mymaster;\n"), 0,
        'a broken configuration refused';
    sleep 0.5;
    ok $nginx->reload_nowait($http), 'reloaded again';
    my $count = status_counts(RLTest::Nginx::parallel_wait($kids));
    ok $count->{200} && !grep({ $_ ne '200' } keys %$count),
        'every request under the reloads answered 200 (fail open or not): '
        . join ' ', map { "$_ x$count->{$_}" } sort keys %$count;

    my $allowed = 0;
    for (1 .. 40) {
        my $status = $nginx->get('/limited/x', 'X-User-Id' => $user)->{status};
        last if $status == 429;
        $allowed++ if $status == 200;
    }
    is $allowed, 29, 'the count went on exactly: 29 more of 30';

    # each worker holds one subscription; the old workers' are closed
    my $subscribed = 0;
    wait_until(10, sub {
        $subscribed = 0;
        $subscribed += () = scli($_, 'CLIENT', 'LIST') =~ /cmd=subscribe/g
            for @sentinels;
        $subscribed == 2;
    });
    is $subscribed, 2, 'two subscriptions to the sentinels, one per worker';
    unlike $nginx->error_log, qr/exited on signal|\[alert\]/, 'no crash';
};

subtest 'a sentinel that names a replica is not believed' => sub {
    my $second = RLTest::Redis->start(
        args => ['--replicaof', '127.0.0.1', $replica->port]);
    $second->cli('CONFIG', 'SET', 'requirepass', 'sekret-0123');
    my $liar = start_liar($second->port);
    my $other = RLTest::Nginx->start(workers => 1, http => <<"EOF");
    ratelimit_zone ratelimit:1m;
    ratelimit_redis_sentinel mymaster 127.0.0.1:$liar->{port} password=sekret-0123;
    ratelimit_redis_timeout 500ms;

    server {
        listen 127.0.0.1:%PORT%;

        location /closed/ {
            ratelimit \$http_x_user_id;
            ratelimit_default 10 3600s;
            ratelimit_fail closed;
            empty_gif;
        }
    }
EOF
    my $user = unique_key('liar');
    my @st;
    for (1 .. 10) {
        push @st, $other->get('/closed/x', 'X-User-Id' => $user)->{status};
        sleep 0.1;
    }
    is_deeply [grep { $_ != 503 } @st], [], 'every check fails closed';
    like $other->error_log, qr/shard mymaster: the node is not a primary \(ROLE\)/,
        'the log says why';
    unlike $other->error_log, qr/shard mymaster is back up/,
        'its AUTH accepted, the replica is never taken as the shard answering';
    ok $liar->{asked} = wait_until(5, sub { liar_connections($liar) >= 2 }),
        'the sentinel is asked again after the refusal';
    unlike $other->error_log, qr/exited on signal|\[alert\]/, 'no crash';
    $other->stop;
    kill 'KILL', $liar->{pid};
    waitpid $liar->{pid}, 0;
    $second->stop;
};

$nginx->stop;
done_testing;


sub wait_until {
    my ($seconds, $cond) = @_;
    my $deadline = time + $seconds;
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.1;
    }
    return $cond->() ? 1 : 0;
}

sub admin_put {
    my ($cust) = @_;
    return $nginx->request('PUT', '/admin/limits',
        Authorization => "Bearer $token",
        'Content-Type' => 'application/json',
        _body => encode_json({ customer_id => $cust, limit => 7, window => 60 }));
}

sub repl_offset {
    my ($redis, $field) = @_;
    my ($n) = $redis->cli('INFO', 'replication') =~ /^$field:(\d+)/m;
    return $n // -1;
}

sub start_sentinel {
    my ($master_port) = @_;
    my $port = RLTest::Redis::free_port();
    my $dir = tempdir('rltest-sentinel-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    open my $fh, '>', "$dir/sentinel.conf" or die $!;
    print $fh <<"EOF";
port $port
bind 127.0.0.1
dir $dir
sentinel monitor mymaster 127.0.0.1 $master_port 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 3000
sentinel parallel-syncs mymaster 1
EOF
    close $fh;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', "$dir/sentinel.log";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-sentinel', "$dir/sentinel.conf" or POSIX::_exit(127);
    }
    my $s = { port => $port, pid => $pid, dir => $dir };
    wait_until(5, sub { RLTest::Redis::port_open($port) })
        or die "redis-sentinel on $port did not start: "
               . `cat $dir/sentinel.log`;
    return $s;
}

sub scli {
    my ($s, @args) = @_;
    open my $fh, '-|', 'redis-cli', '-h', '127.0.0.1', '-p', $s->{port}, @args
        or die "redis-cli: $!";
    local $/;
    my $out = <$fh>;
    close $fh;
    return defined $out ? $out : '';
}

# A "sentinel" that names the given port as the primary of every master
# and then holds the subscription open; it counts its connections in a file.
sub start_liar {
    my ($port_named) = @_;
    my $dir = tempdir('rltest-liar-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my $server = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                       Listen => 16, ReuseAddr => 1)
        or die "listen: $!";
    my $port = $server->sockport;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my $until = time + 60;
        my $n = 0;
        $server->blocking(0);
        my @conns;
        while (time < $until) {
            if (my $c = $server->accept) {
                $n++;
                # answer the question once it is asked, as a sentinel does
                my $question = '';
                my $deadline = time + 2;
                while ($question !~ /switch-master\r\n/ && time < $deadline) {
                    $c->blocking(0);
                    my $got = sysread $c, my $buf, 4096;
                    $question .= $buf if $got;
                    sleep 0.01 unless $got;
                }
                open my $fh, '>', "$dir/connections" or die;
                print $fh $n;
                close $fh;
                my $p = length $port_named;
                syswrite $c, "*2\r\n\$9\r\n127.0.0.1\r\n\$$p\r\n$port_named\r\n"
                    . "*3\r\n\$9\r\nsubscribe\r\n\$14\r\n+switch-master\r\n:1\r\n";
                push @conns, $c;
            }
            sleep 0.02;
        }
        POSIX::_exit(0);
    }
    close $server;
    return { port => $port, pid => $pid, dir => $dir };
}

sub liar_connections {
    my ($liar) = @_;
    open my $fh, '<', "$liar->{dir}/connections" or return 0;
    my $n = <$fh>;
    return $n || 0;
}

END {
    for my $s (@sentinels) {
        next unless $s->{pid};
        kill 'TERM', $s->{pid};
        waitpid $s->{pid}, 0;
    }
}
