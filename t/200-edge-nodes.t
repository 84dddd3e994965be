# Several edge nodes on the same shards: one count, exact under concurrency.
#
# Two nginx instances, each a master with two workers (so the shm ring is
# shared by real processes), both pointed at the same two Redis shards.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(test_shards unique_key ratelimit_http redis_has_key status_counts);
use RLTest::Nginx;

my @shards = test_shards();

my $http = ratelimit_http(shards => \@shards, body => <<'EOF');
    server {
        listen 127.0.0.1:%PORT%;

        location /tb/ {
            ratelimit $http_x_user_id $remote_addr;
            ratelimit_default 100 3600s;
            ratelimit_algorithm token_bucket;
            empty_gif;
        }

        location /sw/ {
            ratelimit $http_x_user_id $remote_addr;
            ratelimit_default 100 60s;
            ratelimit_algorithm sliding_window;
            empty_gif;
        }

        location /small/ {
            ratelimit $http_x_user_id;
            ratelimit_default 5 3600s;
            empty_gif;
        }
    }
EOF

my $a = RLTest::Nginx->start(http => $http, workers => 2);
my $b = RLTest::Nginx->start(http => $http, workers => 2);

subtest 'two edge nodes share one count' => sub {
    my $user = unique_key('shared');
    my @got;
    push @got, $a->get('/small/x', 'X-User-Id' => $user)->{status} for 1 .. 3;
    push @got, $b->get('/small/x', 'X-User-Id' => $user)->{status} for 1 .. 2;
    is_deeply \@got, [200, 200, 200, 200, 200], 'five allowed across both';

    my $ra = $a->get('/small/x', 'X-User-Id' => $user);
    my $rb = $b->get('/small/x', 'X-User-Id' => $user);
    is $ra->{status}, 429, 'sixth on node A denied';
    is $rb->{status}, 429, 'seventh on node B denied';
    like $rb->{headers}{'retry-after'}, qr/^\d+$/, 'Retry-After from node B';
    is $rb->{headers}{ratelimit}, '"default";r=0;t=720',
        'node B reports the count node A made';
};

# Sliding windows roll over at multiples of the window: keep a burst clear of
# a boundary, or the previous window's weight would blur an exact count.
sub clear_of_minute_boundary {
    my $into = time - 60 * int(time / 60);
    sleep 60 - $into + 0.2 if $into > 50;
}

for my $algo (qw(tb sw)) {
    subtest "concurrent clients over two nodes, $algo: exactly the limit" => sub {
        clear_of_minute_boundary() if $algo eq 'sw';
        my $user = unique_key("burst-$algo");
        my $t0 = time;
        my @statuses = RLTest::Nginx::parallel(16, sub {
            my ($i) = @_;
            my $node = $i % 2 ? $a : $b;
            my $http = HTTP::Tiny->new(keep_alive => 1, timeout => 10);
            map {
                $http->get($node->url("/$algo/x"),
                           { headers => { 'X-User-Id' => $user } })->{status}
            } 1 .. 25;
        });
        my $count = status_counts(@statuses);
        is scalar @statuses, 400, '400 answers';
        is $count->{200}, 100, 'exactly 100 allowed';
        is $count->{429}, 300, 'the other 300 denied';
        diag sprintf '%s: 400 requests from 16 clients in %.2fs', $algo,
            time - $t0;
    };
}

subtest 'keys spread over both shards' => sub {
    my @users = map { unique_key("spread$_") } 1 .. 200;
    my %on = map { $_ => 0 } @shards;
    my $everywhere = 1;
    for my $user (@users) {
        $a->get('/tb/x', 'X-User-Id' => $user)->{status} == 200
            or die "not allowed";
        my @holders = grep { redis_has_key($_, "rl:tb:http_x_user_id:k:$user") } @shards;
        $everywhere = 0 unless @holders == 1;
        $on{$_}++ for @holders;
    }
    ok $everywhere, 'every key lives on exactly one shard';
    for my $port (@shards) {
        cmp_ok $on{$port}, '>', 50, "shard $port holds a fair share ($on{$port} of 200)";
    }
};

subtest 'the IP is the key when no user id is sent' => sub {
    my $ip_key = 'rl:tb:remote_addr:k:127.0.0.1';
    my $r = $a->get('/tb/x');
    is $r->{status}, 200, 'allowed';
    ok((grep { redis_has_key($_, $ip_key) } @shards), "counted under $ip_key");
};

unlike $a->error_log . $b->error_log, qr/\[(alert|crit|emerg)\]|exited on signal/,
    'no worker crashed, no alert';

done_testing;
