# A shard that answers with hostile bytes must not stall or bloat a worker:
# a reply announcing 2^31 elements, a bulk string of a gigabyte streamed as
# fast as the worker reads.  The worker keeps serving every other request
# quickly, stays small, takes the fail path for the shard's keys, names the
# bound in its log and exits promptly on quit.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(ratelimit_http);
use RLTest::FakeRedis;
use RLTest::Nginx;
use RLTest::Redis;

my $locations = <<'EOF';
    server {
        listen 127.0.0.1:%PORT%;

        location /open/ {
            ratelimit $http_x_user_id;
            ratelimit_default 100 3600s;
            ratelimit_fail open;
            empty_gif;
        }

        location /closed/ {
            ratelimit $http_x_user_id;
            ratelimit_default 100 3600s;
            ratelimit_fail closed;
            empty_gif;
        }

        location /free/ {
            empty_gif;
        }
    }
EOF

sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    while (<$fh>) {
        return $1 if /^VmRSS:\s+(\d+)/;
    }
    return 0;
}

# gone, or a zombie its (daemonized) parent did not reap yet
sub alive {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my $stat = <$fh>;
    return $stat =~ /\) ([A-Z])/ && $1 ne 'Z';
}

sub hostile {
    my (%opt) = @_;
    my $fake = RLTest::FakeRedis->start(mode => $opt{mode});
    my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [$fake->port], timeout => '300ms', body => $locations));
    my ($worker) = @{ $nginx->worker_pids };
    my $rss0 = rss_kb($worker);

    # checks make the worker (re)connect whenever the shard is probed; in
    # parallel, the unlimited location must answer as if nothing happened,
    # and the worker must stay small
    my @lines = RLTest::Nginx::parallel(3, sub {
        my ($client) = @_;
        my (@out, $i);
        my $end = time + 3;
        while (time < $end) {
            $i++;
            if ($client == 2) {
                push @out, 'rss ' . rss_kb($worker) . ' 0';
                sleep 0.02;
                next;
            }
            my $where = $client == 1 ? 'free'
                      : $i % 2 ? 'closed' : 'open';
            my $t0 = time;
            my $st = $nginx->get("/$where/x", 'X-User-Id' => "u$i")->{status};
            push @out, sprintf '%s %d %.3f', $where, $st, time - $t0;
            sleep 0.01;
        }
        return @out;
    });

    my (%status, %slowest);
    my $rss_peak = $rss0;
    for (@lines) {
        my ($what, $value, $took) = split / /;
        if ($what eq 'rss') {
            $rss_peak = $value if $value > $rss_peak;
            next;
        }
        push @{ $status{$what} }, $value;
        my $kind = $what eq 'free' ? 'free' : 'check';
        $slowest{$kind} = $took if $took > ($slowest{$kind} || 0);
    }

    my $accepts = $fake->count('accept');
    cmp_ok $accepts, '>=', 2, "the worker connected to the shard $accepts times";
    cmp_ok $slowest{free}, '<', 0.25,
        sprintf 'unlimited requests never waited (slowest %.3fs)',
                $slowest{free};
    cmp_ok $slowest{check}, '<', 0.8,
        sprintf 'checks took the fail path in time (slowest %.3fs)',
                $slowest{check};
    is_deeply [grep { $_ != 200 } @{ $status{free} }], [],
        scalar(@{ $status{free} }) . ' unlimited requests answered 200';
    is_deeply [grep { $_ != 503 } @{ $status{closed} }], [],
        scalar(@{ $status{closed} }) . ' checks failing closed answered 503';
    is_deeply [grep { $_ != 200 } @{ $status{open} }], [],
        scalar(@{ $status{open} }) . ' checks failing open answered 200';
    cmp_ok $rss_peak - $rss0, '<', 32 * 1024,
        sprintf 'worker RSS stayed bounded (%d kB -> peak %d kB)',
                $rss0, $rss_peak;
    ok $nginx->error_log =~ $opt{log}, 'the crossed bound is named in the log';

    # the worker exits on quit while the shard is still hostile
    $nginx->get('/closed/x', 'X-User-Id' => 'last');
    my $master = $nginx->master_pid;
    my $t0 = time;
    kill 'QUIT', $master;
    while (time - $t0 < 8 && (alive($master) || alive($worker))) {
        sleep 0.02;
    }
    my $took = time - $t0;
    cmp_ok $took, '<', 1, sprintf 'nginx -s quit completed in %.2fs', $took;

    my $log = $nginx->error_log;
    unlike $log, qr/exited on signal|\[alert\]|\[emerg\]/, 'no worker crashed';
    $nginx->stop;
    $fake->stop;
}

subtest 'a reply announcing 2^31 elements' => sub {
    hostile(mode => 'huge_array',
            log  => qr/shard 127\.0\.0\.1:\d+ sent an array of 2147483647 elements, over \d+, failing the shard/);
};

subtest 'a bulk string of a gigabyte, streamed' => sub {
    hostile(mode => 'endless_bulk',
            log  => qr/shard 127\.0\.0\.1:\d+ sent an unfinished value of over \d+ bytes, failing the shard/);
};

subtest 'the largest legitimate reply still passes: a dump of 100000 rules' => sub {
    my $full = RLTest::Redis->start;
    my $empty = RLTest::Redis->start;

    # customer ids of the longest length the admin endpoint accepts
    $full->cli('EVAL', <<'LUA', 2, 'rl:rules', 'rl:rules:version');
for i = 1, 100000 do
    local id = string.rep('c', 250) .. string.format('%06d', i)
    redis.call('HSET', KEYS[1], id, '1700000000000001 10 60 0')
end
redis.call('SET', KEYS[2], 100000)
return 1
LUA
    is $full->cli('HLEN', 'rl:rules'), '(integer) 100000',
        'one shard holds 100000 rules';

    my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
        shards => [$full->port, $empty->port], body => $locations));

    # the poll finds the empty shard behind and syncs it from the dump
    my $deadline = time + 20;
    my $have = 0;
    while (time < $deadline) {
        $have = $empty->cli('HLEN', 'rl:rules');
        last if $have eq '(integer) 100000';
        sleep 0.2;
    }
    is $have, '(integer) 100000', 'the lagging shard was synced from the dump';
    my $log = $nginx->error_log;
    my @crossed = $log =~ /^(.*(?:over \d+|failing the shard|refusing).*)$/mg;
    is_deeply \@crossed, [], 'no bound was crossed';
    ok $log !~ /exited on signal|\[alert\]/, 'no crash';
    $nginx->stop;
    $full->stop;
    $empty->stop;
};

done_testing;
