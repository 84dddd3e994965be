# HTTP/2 and clients that go away: streams multiplexed on one connection
# are each checked and counted exactly; clients (HTTP/1.1 and HTTP/2) that
# leave while their checks wait on a stalled shard leave no worker crashed,
# stalled or holding their memory.

use strict;
use warnings;

use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http status_counts);
use RLTest::Nginx;
use RLTest::Redis;

my $shard = RLTest::Redis->start;

# nginx 1.22 speaks only HTTP/2 on a cleartext "http2" listener: HTTP/1.1
# gets a port of its own
my $h2_port = RLTest::Redis::free_port();

my $nginx = RLTest::Nginx->start(workers => 1, http => ratelimit_http(
    shards  => [$shard->port],
    timeout => '2s',      # a busy box is no failed shard here
    body    => <<"EOF"));
    server {
        listen 127.0.0.1:%PORT%;
        listen 127.0.0.1:$h2_port http2;
        location /t {
            ratelimit \$http_x_user_id;
            ratelimit_default 5 3600s;
            ratelimit_fail closed;
            empty_gif;
        }
        location /free {
            empty_gif;
        }
    }
EOF

sub curl_h2 {
    my ($n, $user) = @_;
    my $url = "http://127.0.0.1:$h2_port/t";
    my @out = `curl -s --no-progress-meter --http2-prior-knowledge --parallel --parallel-immediate --parallel-max 20 -H 'X-User-Id: $user' -o /dev/null -w '%{http_code} %{http_version}\\n' @{[ join ' ', ($url) x $n ]} 2>/dev/null`;
    return map { /(\d{3} [\d.]+)/g } @out;
}

my $user = unique_key('h2');
my @codes = curl_h2(12, $user);
is scalar @codes, 12, 'twelve streams answered';
is scalar(grep { / 2$/ } @codes), 12, 'all over HTTP/2';
my $count = status_counts(map { (split ' ')[0] } @codes);
is $count->{200}, 5, 'exactly the limit of 5 streams allowed';
is $count->{429}, 7, 'the other 7 denied';

# clients that leave while their checks wait on a stalled shard
kill 'STOP', $shard->pid or die "SIGSTOP: $!";

my @socks;
for my $i (1 .. 30) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $nginx->port)
        or die "connect: $!";
    print $s "GET /t HTTP/1.1\r\nHost: x\r\nX-User-Id: leave-$i\r\n\r\n";
    push @socks, $s;
}
sleep 0.1;
close $_ for @socks;

# an HTTP/2 client that gives up after 100 ms, its streams still waiting
my $gone = unique_key('h2-gone');
system("curl -s --http2-prior-knowledge --parallel --max-time 0.1 -H 'X-User-Id: $gone' -o /dev/null "
       . join(' ', ("http://127.0.0.1:$h2_port/t") x 10) . " >/dev/null 2>&1");

# the worker still serves what needs no shard, at once
my $t0 = time;
my $free = $nginx->get('/free');
is $free->{status}, 200, 'an unlimited location answers while the shard is stalled';
cmp_ok time - $t0, '<', 0.4, '... without waiting for the shard';

kill 'CONT', $shard->pid or die "SIGCONT: $!";

# the shard is usable again, and the worker that held the departed
# requests' slots is the one that answers (no crash, no respawn)
my $pids = $nginx->worker_pids;
my $again = unique_key('again');
my $deadline = time + 10;
my $status;
do {
    sleep 0.1;
    $status = $nginx->get('/t', 'X-User-Id' => $again)->{status};
} until $status == 200 || time > $deadline;
is $status, 200, 'checks pass again once the shard wakes';
is_deeply $nginx->worker_pids, $pids, 'the same worker: none crashed';

unlike $nginx->error_log, qr/exited on signal|\[alert\]/, 'no crash, no alert';

done_testing;
