# A check that took its fail path counts nothing, even when its shard runs
# it later: a stalled shard (SIGSTOP) still takes the EVALSHA into its
# socket buffer and runs it when it wakes.  Each check carries a deadline in
# the shard's own clock, and the script refuses to count past it.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http);
use RLTest::Nginx;
use RLTest::Redis;

my $shard = RLTest::Redis->start;

my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
    shards  => [$shard->port],
    timeout => '300ms',
    body    => <<'EOF'));
    server {
        listen 127.0.0.1:%PORT%;
        location /t {
            ratelimit $http_x_user_id;
            ratelimit_customer everyone;    # the rule is cached at once
            ratelimit_default 3 3600s;
            ratelimit_fail open;
            empty_gif;
        }
    }
EOF

# how many keys of this caller the shard holds, whatever their layout
sub keys_of {
    my ($id) = @_;
    my @keys = grep { length } split /\n/, $shard->cli('--scan', '--pattern', "*$id*");
    return scalar @keys;
}

# the worker's connection is up, has learnt the shard's clock and cached
# the (absent) rule: the checks below are EVALSHAs only
my $warm = unique_key('warm');
is $nginx->get('/t', 'X-User-Id' => $warm)->{status}, 200, 'warm-up request allowed';
is keys_of($warm), 1, 'and counted';

my $user = unique_key('late');

kill 'STOP', $shard->pid or die "SIGSTOP: $!";

# five checks at once: all of them are written before any times out
my $t0 = time;
my @status = RLTest::Nginx::parallel(5, sub {
    return $nginx->get('/t', 'X-User-Id' => $user)->{status};
});
my $took = time - $t0;

kill 'CONT', $shard->pid or die "SIGCONT: $!";

is_deeply [sort @status], [(200) x 5], 'a stalled shard: every request failed open';
cmp_ok $took, '<', 5, sprintf('... after the timeout, not the stall (%.2fs)', $took);

# wait until the shard counts again (it may be marked down for a while)
my $probe = unique_key('probe');
my $deadline = time + 10;
until (keys_of($probe) == 1 || time > $deadline) {
    $nginx->get('/t', 'X-User-Id' => $probe);
    sleep 0.1;
}
is keys_of($probe), 1, 'the shard counts again';

is keys_of($user), 0,
    'the checks it ran after their deadline counted nothing';

my @after = map { $nginx->get('/t', 'X-User-Id' => $user)->{status} } 1 .. 4;
is_deeply \@after, [200, 200, 200, 429], 'the caller has its whole quota of 3';

unlike $nginx->error_log, qr/exited on signal|\[alert\]/, 'no worker crashed';

done_testing;
