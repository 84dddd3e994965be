# A shard named by a host name that moves, as a managed Redis fails over:
# with the http block's resolver (a local dnsmasq whose answer is changed
# during the test, TTL 1 s), the name is resolved again and nginx follows it
# without a reload.  The old node is left (nginx closes its connections), a
# replica the name points at too early is not written to (READONLY), and
# once it is promoted the counts go on there.  The ring keeps the name as
# written.

use strict;
use warnings;

use File::Temp qw(tempdir);
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(unique_key);
use RLTest::Nginx;
use RLTest::Redis;

plan skip_all => 'dnsmasq is not installed (Debian package dnsmasq-base)'
    unless -x '/usr/sbin/dnsmasq';

my $port = RLTest::Redis::free_port();
my $old = RLTest::Redis->start(port => $port);
my $new = eval {
    RLTest::Redis->start(port => $port, host => '127.0.0.2',
                         args => ['--replicaof', '127.0.0.1', $port]);
};
plan skip_all => "no redis-server on 127.0.0.2 (loopback /8 not usable): $@"
    unless $new;

ok wait_until(10, sub { $new->cli('INFO', 'replication')
                        =~ /master_link_status:up/ }),
    'the second node replicates the first, as a managed standby does';

my $dns = start_dnsmasq('127.0.0.1');

my $nginx = RLTest::Nginx->start(workers => 2, http => <<"EOF");
    resolver 127.0.0.1:$dns->{port} valid=1s ipv6=off;
    resolver_timeout 1s;

    ratelimit_zone ratelimit:1m;
    ratelimit_redis redis.rl.test:$port;
    ratelimit_redis_timeout 500ms;

    server {
        listen 127.0.0.1:%PORT%;

        location /limited/ {
            ratelimit \$http_x_user_id;
            ratelimit_default 10 3600s;
            ratelimit_fail closed;
            empty_gif;
        }
    }
EOF

sub key_of { "rl:tb:http_x_user_id:k:$_[0]" }

my $master = $nginx->master_pid;
my @workers = sort @{ $nginx->worker_pids };
my $caller = unique_key('mover');

subtest 'the name is resolved by the resolver' => sub {
    ok wait_until(10, sub {
        $nginx->get('/limited/x', 'X-User-Id' => $caller)->{status} == 200 }),
        'a check is answered';
    my @st = map { $nginx->get('/limited/x', 'X-User-Id' => $caller)->{status} }
             1 .. 4;
    is_deeply \@st, [(200) x 4], '5 of 10 spent';
    is $old->cli('EXISTS', key_of($caller)), '(integer) 1',
        'the count is on 127.0.0.1';
    like $nginx->error_log,
        qr/shard redis\.rl\.test:$port is at 127\.0\.0\.1:$port \(resolved redis\.rl\.test\)/,
        'the log says where the name points';
    like $nginx->error_log, qr/ketama ring of 1 shards/, 'one shard on the ring';
    ok wait_until(5, sub { repl_offset($old, 'master_repl_offset')
                           == repl_offset($new, 'slave_repl_offset') }),
        'the standby has every count';
};

# the name moves before the standby is promoted: writes must not go to it
my $moved_at = time;
$dns->move('127.0.0.2');

subtest 'the name moves to a node still a replica' => sub {
    ok wait_until(10, sub { $nginx->error_log
        =~ /shard redis\.rl\.test:$port moved from 127\.0\.0\.1:$port to 127\.0\.0\.2:$port/ }),
        sprintf 'nginx follows the name (%.1fs)', time - $moved_at;
    my $status;
    wait_until(5, sub {
        $status = $nginx->get('/limited/x', 'X-User-Id' => unique_key('ro'))->{status};
        $status == 503 });
    is $status, 503, 'a check fails closed: the node refuses writes';
    like $nginx->error_log, qr/the node is a replica \(READONLY\)/,
        'the log says why';
};

subtest 'nginx left the old node' => sub {
    # the replication link of the standby is nginx's no more: cut it
    $new->cli('REPLICAOF', 'NO', 'ONE');
    ok wait_until(5, sub { $old->cli('INFO', 'clients') =~ /^connected_clients:1\r?$/m }),
        'no connection to the old node but redis-cli\'s own'
        or diag $old->cli('CLIENT', 'LIST');
};

subtest 'promoted, the new node counts on' => sub {
    my $first;
    ok wait_until(10, sub {
        $first = $nginx->get('/limited/x', 'X-User-Id' => $caller)->{status};
        $first == 200 }), 'allowed again once the node is a primary';
    my $allowed = 1;
    for (1 .. 20) {
        my $s = $nginx->get('/limited/x', 'X-User-Id' => $caller)->{status};
        last if $s == 429;
        $allowed++ if $s == 200;
    }
    is $allowed, 5, 'the caller who spent 5 of 10 gets exactly 5 more';
    is $new->cli('EXISTS', key_of($caller)), '(integer) 1',
        'its count is on 127.0.0.2';
};

subtest 'without a reload' => sub {
    is $nginx->master_pid, $master, 'same master';
    is_deeply [sort @{ $nginx->worker_pids }], \@workers, 'same workers';
    unlike $nginx->error_log, qr/reconfiguring/, 'no reload';
    unlike $nginx->error_log, qr/exited on signal|\[alert\]|\[emerg\]/,
        'no worker crashed';
};

subtest 'a name that no longer resolves keeps the last address' => sub {
    $dns->move(undef);
    sleep 2.5;
    my $user = unique_key('kept');
    is $nginx->get('/limited/x', 'X-User-Id' => $user)->{status}, 200,
        'checks still go to 127.0.0.2';
    is $new->cli('EXISTS', key_of($user)), '(integer) 1', 'and count there';
    like $nginx->error_log,
        qr/"redis\.rl\.test" could not be resolved \(\d+: [^)]+\), keeping its last address/,
        'the failed resolution is logged';
};

$nginx->stop;
$dns->stop;
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

sub repl_offset {
    my ($redis, $field) = @_;
    my ($n) = $redis->cli('INFO', 'replication') =~ /^$field:(\d+)/m;
    return $n // -1;
}

# dnsmasq answering redis.rl.test from a hosts file with a TTL of 1 s;
# ->move($address) rewrites the file and makes it read it again (SIGHUP),
# ->move(undef) removes the name.
sub start_dnsmasq {
    my ($address) = @_;
    my $dir = tempdir('rltest-dns-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    chmod 0755, $dir;          # dnsmasq run by root reads it as nobody
    my $self = bless { dir => $dir, hosts => "$dir/hosts" }, 'RLTestDns';
    RLTestDns::write_hosts($self, $address);
    for (1 .. 5) {
        $self->{port} = RLTest::Redis::free_port();
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            open STDOUT, '>', "$dir/dnsmasq.out";
            open STDERR, '>&', \*STDOUT;
            exec '/usr/sbin/dnsmasq', '--keep-in-foreground',
                "--port=$self->{port}", '--listen-address=127.0.0.1',
                '--bind-interfaces', '--no-resolv', '--no-hosts',
                "--addn-hosts=$self->{hosts}", '--local-ttl=1',
                "--pid-file=$dir/dnsmasq.pid",
                "--log-facility=$dir/dnsmasq.log",
                ($> == 0 ? ('--user=root') : ())
                or POSIX::_exit(127);
        }
        $self->{pid} = $pid;
        last if wait_until(3, sub { dig($self) eq $address });
        kill 'TERM', $pid;
        waitpid $pid, 0;
        delete $self->{pid};
    }
    die "dnsmasq did not start: " . `cat $dir/dnsmasq.out $dir/dnsmasq.log 2>&1`
        unless $self->{pid};
    return $self;
}

# the address the server answers for the name, asked with a raw UDP query
sub dig {
    my ($self) = @_;
    require IO::Socket::INET;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $self->{port},
                                     Proto => 'udp') or return '';
    my $qname = join '', map { chr(length $_) . $_ } split /\./, 'redis.rl.test';
    my $query = pack('n6', 0x1234, 0x0100, 1, 0, 0, 0) . $qname . "\0"
              . pack('n2', 1, 1);
    $sock->send($query) or return '';
    my $rin = '';
    vec($rin, fileno($sock), 1) = 1;
    return '' unless select(my $rout = $rin, undef, undef, 0.5);
    defined $sock->recv(my $answer, 512) or return '';   # not up yet
    return '' if length $answer < 16;
    my ($ancount) = unpack 'x6 n', $answer;
    return 'none' unless $ancount;
    # the last 4 bytes of a single A answer are the address
    return join '.', unpack 'C4', substr($answer, -4);
}

package RLTestDns;

sub write_hosts {
    my ($self, $address) = @_;
    open my $fh, '>', "$self->{hosts}.tmp" or die $!;
    print $fh "$address redis.rl.test\n" if defined $address;
    close $fh;
    chmod 0644, "$self->{hosts}.tmp";
    rename "$self->{hosts}.tmp", $self->{hosts} or die $!;
}

sub move {
    my ($self, $address) = @_;
    write_hosts($self, $address);
    kill 'HUP', $self->{pid};
    main::wait_until(3, sub { main::dig($self) eq ($address // 'none') })
        or die "dnsmasq does not answer the new address\n";
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid};
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    delete $self->{pid};
}

sub DESTROY { $_[0]->stop }
