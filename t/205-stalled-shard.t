# A shard that stalls or slows down: a check that already took its fail
# path must not be sent later, the commands a worker keeps for one shard
# are bounded, and a shard that answers, only slower than the timeout, is
# failed like one that answers nothing.

use strict;
use warnings;

use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http);
use RLTest::FakeRedis;
use RLTest::Nginx;
use RLTest::Redis;

my $locations = <<'EOF';
    server {
        listen 127.0.0.1:%PORT%;

        location /two/ {
            ratelimit $http_x_user_id;
            ratelimit_default 2 3600s;
            ratelimit_fail closed;
            empty_gif;
        }

        location /many/ {
            ratelimit $http_x_user_id;
            ratelimit_default 1000000 3600s;
            ratelimit_fail closed;
            empty_gif;
        }
    }
EOF

# a request whose client leaves after $stay seconds, before any answer
sub leave_early {
    my ($nginx, $path, $user, $stay) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $nginx->port) or die $!;
    print $s "GET $path HTTP/1.1\r\nHost: x\r\nX-User-Id: $user\r\n\r\n";
    sleep $stay;
    close $s;
}

# connects to $port, or gives up after $timeout seconds
sub try_connect {
    my ($port, $timeout) = @_;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                 Timeout => $timeout);
}

subtest 'a check whose client left while connecting is never sent' => sub {
    # a listen backlog of 0: one pending connection fills it, and a
    # stopped server accepts none, so the worker's connect hangs
    my $redis = RLTest::Redis->start(args => ['--tcp-backlog', '0']);
    my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [$redis->port], body => $locations));
    my $user = unique_key('gone');

    my $r = $nginx->get('/two/x', 'X-User-Id' => $user);
    is $r->{status}, 200, 'first request counted';

    kill 'STOP', $redis->pid;
    my $filler = try_connect($redis->port, 0.5);
    ok $filler, 'one connection fills the stopped shard\'s backlog';
    ok !try_connect($redis->port, 0.3), 'the next one hangs';

    # a new worker: its connection to the shard is still connecting
    $nginx->reload;
    sleep 0.4;
    leave_early($nginx, '/two/x', $user, 0.3);
    sleep 0.2;

    kill 'CONT', $redis->pid;
    close $filler;

    # the kernel retries the worker's SYN after 1s, then 3s
    my $deadline = time + 5;
    while (time < $deadline) {
        last if $redis->cli('CLIENT', 'LIST') =~ /cmd=(?:get|evalsha|hget)/;
        sleep 0.1;
    }
    sleep 0.3;

    $r = $nginx->get('/two/x', 'X-User-Id' => $user);
    is $r->{status}, 200,
        'the next request is the second counted: the one that left was not';
    is $nginx->get('/two/x', 'X-User-Id' => $user)->{status}, 429,
        'and the third is denied';
    ok $nginx->error_log !~ qr/exited on signal|\[alert\]/, 'no crash';
    $nginx->stop;
    $redis->stop;
};

subtest 'a check whose client left while the socket was full is never sent' => sub {
    # a shard that stops reading, with a small receive buffer: the worker's
    # writes block after a few kilobytes and its commands wait unsent
    my $fake = RLTest::FakeRedis->start(mode => 'slow', delay => 0,
                                        rcvbuf => 4096, mss => 536);
    my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [$fake->port], body => $locations));

    # both keys known: their next checks go straight to EVALSHA; the
    # filler's is long, so that fewer of them fill the socket
    my $filler = 'filler' . ('f' x 114);
    is $nginx->get('/many/x', 'X-User-Id' => 'victim')->{status}, 200,
        'the victim\'s first check';
    is $nginx->get('/many/x', 'X-User-Id' => $filler)->{status}, 200,
        'the filler\'s first check';

    # clients that leave soon, the victim among the last of them: its check
    # waits behind unsent ones when it leaves
    $fake->pause;
    my $left = 0;
    for my $round (1 .. 5) {
        my @batch;
        for (1 .. 200) {
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $nginx->port) or last;
            print $s "GET /many/x HTTP/1.1\r\nHost: x\r\nX-User-Id: $filler\r\n\r\n";
            push @batch, $s;
        }
        $left += @batch;
        if ($round == 5) {
            sleep 0.1;
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $nginx->port) or die $!;
            print $s "GET /many/x HTTP/1.1\r\nHost: x\r\nX-User-Id: victim\r\n\r\n";
            push @batch, $s;
        }
        sleep 0.1;
        close $_ for @batch;
    }
    sleep 0.2;
    $fake->resume;

    my $deadline = time + 5;
    my $fillers = 0;
    while (time < $deadline) {
        $fillers = grep { $_->[1] eq 'cmd' && ($_->[3] // '') =~ /[ :]$filler$/ }
                   @{ $fake->events };
        last if $fillers > $left / 2;
        sleep 0.1;
    }
    sleep 0.5;
    my $victim = grep { $_->[1] eq 'cmd' && ($_->[3] // '') =~ /[ :]victim$/ }
                 @{ $fake->events };
    cmp_ok $fillers, '>', 100, "$fillers of $left filler checks reached the shard";
    is $victim, 1, 'the victim\'s second check never did';

    # what was taken out of the output buffer left a well-formed stream
    is $nginx->get('/many/x', 'X-User-Id' => 'victim')->{status}, 200,
        'the next check is answered';
    $victim = grep { $_->[1] eq 'cmd' && ($_->[3] // '') =~ /[ :]victim$/ }
              @{ $fake->events };
    is $victim, 2, 'and the shard read it as the victim\'s';
    ok $nginx->error_log !~ qr/exited on signal|\[alert\]/, 'no crash';
    $nginx->stop;
    $fake->stop;
};

subtest 'commands waiting for a stalled shard are bounded' => sub {
    my $redis = RLTest::Redis->start;
    my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [$redis->port], body => $locations));
    my $user = unique_key('flood');
    is $nginx->get('/many/x', 'X-User-Id' => $user)->{status}, 200,
        'the key is known';

    kill 'STOP', $redis->pid;

    # clients that leave before the timeout: nothing ever times out, their
    # commands are written and wait for a shard that does not answer
    my $left = 0;
    my $end = time + 20;
    while ($left < 2400 && time < $end) {
        my @batch;
        for (1 .. 200) {
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $nginx->port) or last;
            print $s "GET /many/x HTTP/1.1\r\nHost: x\r\nX-User-Id: $user\r\n\r\n";
            push @batch, $s;
        }
        sleep 0.1;
        close $_ for @batch;
        $left += @batch;
    }
    cmp_ok $left, '>=', 2400, "$left clients left a stalled shard";
    sleep 0.2;

    my $t0 = time;
    my $r = $nginx->get('/many/x', 'X-User-Id' => unique_key('next'));
    my $took = time - $t0;
    is $r->{status}, 503, 'a new check takes the fail path';
    cmp_ok $took, '<', 0.5, sprintf 'at once (%.3fs), the queue is full', $took;
    ok $nginx->error_log =~ qr/too many commands waiting \(\d+ waiting/, 'said in the log';
    my @said = $nginx->error_log =~ /refusing commands/g;
    cmp_ok scalar @said, '<=', 3, 'once, not once per request';

    kill 'CONT', $redis->pid;
    sleep 0.5;
    my $deadline = time + 5;
    while (time < $deadline) {
        $r = $nginx->get('/many/x', 'X-User-Id' => $user);
        last if $r->{status} == 200;
        sleep 0.2;
    }
    is $r->{status}, 200, 'the shard is used again once it answers';
    ok $nginx->error_log !~ qr/exited on signal|\[alert\]/, 'no crash';
    $nginx->stop;
    $redis->stop;
};

subtest 'a shard that answers slower than the timeout is failed' => sub {
    my $fake = RLTest::FakeRedis->start(mode => 'slow', delay => 0.25);
    my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [$fake->port], timeout => '400ms', body => $locations));

    my @st = RLTest::Nginx::parallel(6, sub {
        my ($client) = @_;
        my @out;
        my $end = time + 2.5;
        while (time < $end) {
            push @out, $nginx->get('/many/x', 'X-User-Id' => 'slow')->{status};
        }
        return @out;
    });

    is_deeply [grep { $_ != 200 && $_ != 503 } @st], [],
        scalar(@st) . ' requests answered 200 or 503';
    my $backlog = $fake->max_backlog;
    cmp_ok $backlog, '<=', 10,
        "the shard never owed more than $backlog answers on one connection";
    cmp_ok $fake->count('accept'), '>=', 2, 'the connection was dropped';
    ok $nginx->error_log =~ qr/marked down/, 'the shard was marked down';
    ok $nginx->error_log !~ qr/exited on signal|\[alert\]/, 'no crash';
    $nginx->stop;
    $fake->stop;
};

subtest 'AUTH still goes first on every new connection' => sub {
    my $redis = RLTest::Redis->start;
    $redis->cli('CONFIG', 'SET', 'requirepass', 'sesame-0123456789');
    my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [[$redis->port, ' password=sesame-0123456789']],
        body => $locations));
    my $user = unique_key('auth');
    my @st = map { $nginx->get('/two/x', 'X-User-Id' => $user)->{status} } 1 .. 3;
    is_deeply \@st, [200, 200, 429], 'counted on a shard that wants AUTH';

    $nginx->reload($nginx->{http} =~ s/sesame-0123456789/wrong-0123456789/r);
    is $nginx->get('/two/x', 'X-User-Id' => unique_key('auth'))->{status}, 503,
        'a wrong password takes the fail path';
    ok $nginx->error_log =~ qr/AUTH on shard \S+ failed/, 'and says why';
    $nginx->stop;
    $redis->stop;
};

done_testing;
