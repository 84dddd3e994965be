# A zone full of cached callers must not block a reload that changes the
# shard list: the new ring always fits (issue 7, defect 9: the ring
# allocation failed, nothing was logged, the old ring stayed).  A ring that
# can never fit is refused with a reason at emerg/alert, and the workers
# keep the old one.

use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP ();
use Test::More;
use Time::HiRes qw(sleep time);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http status_counts route_callers);
use RLTest::Nginx;
use RLTest::Redis;

my @shards = map { RLTest::Redis->start } 1 .. 4;

my $server = <<'EOF';
    server {
        listen 127.0.0.1:%PORT%;
        location /api/ {
            ratelimit $http_x_user_id;
            ratelimit_default 100 3600s;    # one request lives 36 s in Redis: long enough to be found
            ratelimit_fail closed;
            empty_gif;
        }
        location = /stats { ratelimit_stats; }
    }
EOF

# the smallest zone the module takes: a few hundred callers fill it
sub config_for {
    my @ports = map { ref $_ ? @$_ : $shards[$_]->port } @_;
    return ratelimit_http(zone => '64k', shards => \@ports, timeout => '2s',
                          body => $server);
}

my $nginx = RLTest::Nginx->start(workers => 1, http => config_for(0));
my $http = HTTP::Tiny->new(keep_alive => 1, timeout => 10);

sub stats {
    my $r = $http->get($nginx->url('/stats'));
    die "stats: $r->{status} $r->{content}\n" unless $r->{status} == 200;
    return JSON::PP::decode_json($r->{content});
}

# Sends distinct callers until the rule cache has evicted 200 more entries
# (the zone is full and stays full); returns the statuses and the stats.
my $round = 0;
sub fill {
    $round++;
    my $before = stats()->{rule_cache}{evictions};
    my (@status, $st);
    for my $i (1 .. 4000) {
        push @status, $http->get($nginx->url('/api/x'),
            { headers => { 'X-User-Id' => "fill$round-$i-" . ('x' x 20) } })->{status};
        next if $i % 100;
        $st = stats();
        last if $st->{rule_cache}{evictions} >= $before + 200;
    }
    return (status_counts(@status), $st);
}

# $n new callers: statuses, and the shards (indexes) their counts are on
sub route {
    my ($name, $n) = @_;
    return route_callers($nginx, \@shards, $name, $n);
}

# '' when the 8 counts of route() are each on one shard of @set; else what
# is wrong
sub on_only {
    my ($where, @set) = @_;
    my %in = map { $_ => 1 } @set;
    return "counts found: " . scalar(@$where) . ' of 8' unless @$where == 8;
    return join ' ', grep { !$in{$_} } @$where;
}

my ($status, $where) = route('first', 8);
is on_only($where, 0), '', 'one shard: every count on it';

# each reload moves to shards disjoint from the previous ones, so where a
# new caller is counted tells which ring the workers use
my @steps = ([1, 2, 3], [0], [2, 3], [1]);

for my $set (@steps) {
    my ($count, $st) = fill();
    is_deeply [keys %$count], [200], 'the fill requests all passed'
        or diag explain $count;
    cmp_ok $st->{rule_cache}{evictions}, '>', 0,
        "the zone is full ($st->{rule_cache}{entries} callers cached, "
        . "$st->{rule_cache}{evictions} evicted)";

    my $offset = $nginx->log_size;
    my $ok = $nginx->reload_nowait(config_for(@$set), timeout => 6);
    my $log = $nginx->error_log_since($offset);
    is $ok, 1, "with the zone full, a reload to shards [@$set] took effect"
        or diag "what nginx logged:\n$log";
    ok $ok || $log =~ /\[(?:emerg|alert)\].*ratelimit/,
        'or else it was refused with a reason at emerg/alert';

    ($status, $where) = route('after' . join('-', @$set), 8);
    is_deeply $status, { 200 => 8 }, 'new callers pass' or diag explain $status;
    is on_only($where, @$set), '', "and are counted on shards [@$set] only"
        or diag "counted on shards [@$where]";
}

# A ring that cannot fit even in an empty 64k zone (64 shards, ~10000
# points of 8 bytes): the reload is refused and nginx says why; the workers
# keep the ring they have.
{
    my @many = map { RLTest::Redis::free_port() } 1 .. 64;
    my $offset = $nginx->log_size;
    my $ok = eval { $nginx->reload_nowait(config_for([@many]), timeout => 6) };
    my $why = $@ || $nginx->{reload_output} || '';
    ok !$ok, 'a ring larger than the zone is not taken';

    # the master may still be writing why when the reload is seen refused
    my $log = $nginx->error_log_since($offset);
    my $until = time + 10;
    until ("$why$log" =~ /\[(?:emerg|alert)\][^\n]*ratelimit/ || time > $until) {
        sleep 0.1;
        $log = $nginx->error_log_since($offset);
    }
    like "$why$log", qr/\[(?:emerg|alert)\][^\n]*ratelimit/,
        'and nginx says why, at emerg or alert'
        or diag "what nginx logged:\n$log$why";

    ($status, $where) = route('kept', 8);
    is_deeply $status, { 200 => 8 }, 'the workers still answer'
        or diag explain $status;
    is on_only($where, $steps[-1][0]), '', 'with the ring they had';
}

my @crashes = $nginx->crashes;
is "@crashes", '', 'no worker exited on a signal';

done_testing;
