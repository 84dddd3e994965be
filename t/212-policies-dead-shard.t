# Several policies of a request when one of their shards is dead (issue 9):
# "closed" refuses the request with 503 and takes nothing from the policies
# on live shards (what was taken before the dead shard failed is given
# back); "open" lets the dead shard's policy through uncounted while the
# live ones still count, and still refuse.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep);

use lib 't/lib';
use RLTest qw(test_shards unique_key ratelimit_http);
use RLTest::Nginx;

my @live = test_shards();
my $dead = $ENV{TEST_NGINX_DEAD_PORT} || 1;
my @ring = (@live, $dead);

my $http = ratelimit_http(shards => \@ring, body => <<'EOF');
    ratelimit_policy live $http_x_a limit=5 window=1h;
    ratelimit_policy gone $http_x_b limit=5 window=1h;

    server {
        listen 127.0.0.1:%PORT%;

        location /closed/ {
            ratelimit live;
            ratelimit gone;
            ratelimit_fail closed;
            empty_gif;
        }

        location /open/ {
            ratelimit live;
            ratelimit gone;
            ratelimit_fail open;
            add_header X-Status $ratelimit_status always;
            empty_gif;
        }

        location /live/ {
            ratelimit live cost=0;
            empty_gif;
        }
    }
EOF

my $node = RLTest::Nginx->start(http => $http, workers => 1);

# values of a policy's key whose count lives on ring shard $want
sub values_on_shard {
    my ($policy, $header, $want, $n) = @_;
    my @cand = map { unique_key("$policy-on$want-$_") } 1 .. 32 * $n;
    my $servers = join ' ', map { "127.0.0.1:$_:1" } @ring;
    my $in = join '', map { "rl:tb:\@$policy:$header:k:$_\n" } @cand;
    my @idx = split /\n/, `printf '%s' '$in' | build/unit/ketama_route $servers`;
    my @on = map { $cand[$_] } grep { $idx[$_] == $want } 0 .. $#cand;
    return @on[0 .. $n - 1];
}

sub left {
    my ($va) = @_;
    my $h = $node->get('/live/x', 'X-A' => $va)->{headers}{ratelimit} // '';
    return $h =~ /^"live";r=(\d+);/ ? $1 : "?($h)";
}

subtest 'fail closed: 503, and nothing taken from the live policy' => sub {
    my ($va) = values_on_shard('live', 'http_x_a', 0, 1);
    my ($vb) = values_on_shard('gone', 'http_x_b', 2, 1);
    ok defined $va && defined $vb, 'one key on a live shard, one on the dead';

    # the first request finds the shard dead by trying it, after the live
    # shard has taken its unit; later ones know it is down and send nothing
    for my $i (1 .. 3) {
        my $r = $node->get('/closed/x', 'X-A' => $va, 'X-B' => $vb);
        is $r->{status}, 503, "request $i: 503";
        like $r->{headers}{'retry-after'} // '', qr/^\d+$/, "request $i: Retry-After";
    }

    sleep 0.3;      # the refund is on its way before the 503 is
    is left($va), 5, 'the live policy has counted nothing';
};

subtest 'fail open: the dead policy passes uncounted, the live one counts and refuses' => sub {
    my ($va) = values_on_shard('live', 'http_x_a', 1, 1);
    my ($vb) = values_on_shard('gone', 'http_x_b', 2, 1);
    ok defined $va && defined $vb, 'one key on a live shard, one on the dead';

    my @got = map {
        my $r = $node->get('/open/x', 'X-A' => $va, 'X-B' => $vb);
        "$r->{status} " . ($r->{headers}{'x-status'} // '');
    } 1 .. 6;
    is_deeply \@got, [('200 FAILED_OPEN') x 5, '429 REJECTED'],
        'five pass with the dead shard failing open, the sixth is refused';
    is left($va), 0, 'the live policy counted the five';
};

unlike $node->error_log, qr/\[(alert|crit|emerg)\]|exited on signal/,
    'no worker crashed';

done_testing;
