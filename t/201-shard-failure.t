# A shard that dies, hangs, forgets its scripts or talks nonsense:
# fail open or closed as configured, only for the keys on that shard, and
# take the shard back when it answers again.

use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http redis_has_key);
use RLTest::Nginx;
use RLTest::Redis;

# shards of our own: this suite kills them
my $keep = RLTest::Redis->start;
my $victim = RLTest::Redis->start;

# a "shard" that answers every command with bytes that are not RESP
my $liar_port = RLTest::Redis::free_port();
my $liar_pid = start_liar($liar_port);

my $locations = <<'EOF';
        location /open/ {
            ratelimit $http_x_user_id;
            ratelimit_default 2 3600s;
            ratelimit_fail open;
            empty_gif;
        }

        location /closed/ {
            ratelimit $http_x_user_id;
            ratelimit_default 2 3600s;
            ratelimit_fail closed;
            empty_gif;
        }
EOF

my $nginx = RLTest::Nginx->start(workers => 2, http => ratelimit_http(
    shards  => [$keep->port, $victim->port],
    timeout => '300ms',
    body    => "    server {\n        listen 127.0.0.1:%PORT%;\n$locations    }\n"));

# keys that the ring puts on each shard, found by where the counts land
my (@on_keep, @on_victim);
for my $i (1 .. 200) {
    last if @on_keep >= 6 && @on_victim >= 6;
    my $user = unique_key("probe$i");
    $nginx->get('/open/x', 'X-User-Id' => $user)->{status} == 200 or die;
    if (redis_has_key($victim->port, "rl:tb:http_x_user_id:k:$user")) {
        push @on_victim, $user;
    } elsif (redis_has_key($keep->port, "rl:tb:http_x_user_id:k:$user")) {
        push @on_keep, $user;
    }
}
cmp_ok scalar @on_victim, '>=', 6, 'found keys on the shard to kill';
cmp_ok scalar @on_keep, '>=', 6, 'found keys on the shard that stays';

subtest 'SCRIPT FLUSH is transparent' => sub {
    $_->cli('SCRIPT', 'FLUSH') for $keep, $victim;
    my $r = $nginx->get('/closed/x', 'X-User-Id' => $on_keep[0]);
    is $r->{status}, 200, 'second request of the key still allowed';
    is $r->{headers}{ratelimit}, '"default";r=0;t=1800', 'and counted';
    $r = $nginx->get('/closed/x', 'X-User-Id' => $on_victim[0]);
    is $r->{status}, 200, 'same on the other shard';
    is $nginx->get('/closed/x', 'X-User-Id' => $on_keep[0])->{status}, 429,
        'third request denied: the count went on';
    unlike $nginx->error_log, qr/answered|failing/, 'no error seen';
};

$victim->stop;

subtest 'killed shard, fail open' => sub {
    my $r = $nginx->get('/open/x', 'X-User-Id' => $on_victim[1]);
    is $r->{status}, 200, 'allowed';
    ok !exists $r->{headers}{ratelimit}, 'no RateLimit header: nothing known';
    my @st = map { $nginx->get('/open/x', 'X-User-Id' => $on_victim[1])->{status} } 1 .. 5;
    is_deeply \@st, [(200) x 5], 'still allowed past the limit';
};

subtest 'killed shard, fail closed' => sub {
    my $r = $nginx->get('/closed/x', 'X-User-Id' => $on_victim[2]);
    is $r->{status}, 503, 'answers 503';
    like $r->{headers}{'retry-after'}, qr/^[1-9]\d*$/, 'with Retry-After';
};

subtest 'keys on the live shard are still limited' => sub {
    my @st = map { $nginx->get('/closed/x', 'X-User-Id' => $on_keep[1])->{status} } 1 .. 3;
    is_deeply \@st, [200, 429, 429], q{limit of 2 holds (one was spent finding the key)};
};

subtest 'a down shard costs no timeout and few log lines' => sub {
    my $t0 = time;
    my @st = map { $nginx->get('/closed/x', 'X-User-Id' => $on_victim[3])->{status} } 1 .. 40;
    my $took = time - $t0;
    is_deeply [grep { $_ != 503 } @st], [], 'all 503';
    cmp_ok $took, '<', 40 * 0.3 / 4, sprintf 'well under 40 timeouts (%.2fs)', $took;
    my @lines = $nginx->error_log =~ /failing (?:open|closed)/g;
    cmp_ok scalar @lines, '<=', 20, scalar(@lines) . ' "failing" lines for 47 requests';
    like $nginx->error_log, qr/shard 127\.0\.0\.1:\d+ marked down/, 'marked down is logged';
};

subtest 'the shard comes back' => sub {
    $victim->restart;
    my $deadline = time + 6;
    my $r;
    while (time < $deadline) {
        $r = $nginx->get('/closed/x', 'X-User-Id' => $on_victim[4]);
        last if $r->{status} == 200;
        sleep 0.1;
    }
    is $r->{status}, 200, 'allowed again';
    is $r->{headers}{ratelimit}, '"default";r=1;t=1800', 'and counted';
    is $nginx->get('/closed/x', 'X-User-Id' => $on_victim[4])->{status}, 200, 'second';
    is $nginx->get('/closed/x', 'X-User-Id' => $on_victim[4])->{status}, 429,
        'third denied: limiting again';
    like $nginx->error_log, qr/shard 127\.0\.0\.1:\d+ is back up/, 'logged';
};

subtest 'a shard that hangs takes the fail path after the timeout' => sub {
    $keep->cli('CLIENT', 'PAUSE', 2500, 'ALL');
    my $t0 = time;
    my $r = $nginx->get('/closed/x', 'X-User-Id' => $on_keep[2]);
    my $took = time - $t0;
    is $r->{status}, 503, 'closed: 503';
    cmp_ok $took, '<', 1.2, sprintf 'after %.3fs, not when Redis wakes', $took;
    $r = $nginx->get('/open/x', 'X-User-Id' => $on_keep[3]);
    is $r->{status}, 200, 'open: allowed';
    sleep 2.6;
};

subtest 'a shard that answers garbage' => sub {
    my $liar_nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [$liar_port],
        body   => "    server {\n        listen 127.0.0.1:%PORT%;\n$locations    }\n"));
    my @st = map { $liar_nginx->get('/closed/x', 'X-User-Id' => "u$_")->{status} } 1 .. 5;
    is_deeply \@st, [(503) x 5], 'closed: five times 503';
    is $liar_nginx->get('/open/x', 'X-User-Id' => 'u9')->{status}, 200, 'open: 200';
    my $log = $liar_nginx->error_log;
    like $log, qr/malformed reply|answered/, 'the bad reply is named in the log';
    unlike $log, qr/exited on signal|\[alert\]/, 'no worker crashed';
    $liar_nginx->stop;
};

unlike $nginx->error_log, qr/exited on signal|\[alert\]|\[emerg\]/, 'no worker crashed';

done_testing;

END { local $?; if ($liar_pid) { kill "TERM", $liar_pid; waitpid $liar_pid, 0; } }

sub start_liar {
    my ($port) = @_;
    my $server = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
        LocalPort => $port, Listen => 16, ReuseAddr => 1) or die $!;
    my $pid = fork;
    die $! unless defined $pid;
    if ($pid == 0) {
        open STDOUT, ">", "/dev/null";
        open STDERR, ">", "/dev/null";
        local $SIG{ALRM} = sub { POSIX::_exit(0) };
        alarm 120;
        while (my $client = $server->accept) {
            $client->sysread(my $buf, 65536);
            $client->syswrite("?garbage\r\n");
            close $client;
        }
        POSIX::_exit(0);
    }
    close $server;
    return $pid;
}
