# Reloads that change the shard list while requests are held open in older
# worker generations, successful and failed ones, growing and shrinking the
# ring: every worker stays alive and every request is answered (issue 7,
# defect 1: a ring freed while an older generation still uses it).

use strict;
use warnings;

use IO::Socket::INET;
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
    }
EOF

# shards by index into @shards; $extra adds servers (a listen that fails)
sub config_for {
    my ($idx, $extra) = @_;
    return ratelimit_http(shards => [map { $shards[$_]->port } @$idx],
                          timeout => '2s', body => $server . ($extra || ''));
}

sub fresh_status {
    my ($nginx, $name) = @_;
    return $nginx->get('/api/x', 'X-User-Id' => unique_key($name))->{status};
}

# $n requests of new callers: their statuses, and the shards (indexes into
# @shards) their counts landed on
sub route {
    my ($nginx, $name, $n) = @_;
    return route_callers($nginx, \@shards, $name, $n);
}

sub crash_lines {
    my ($nginx) = @_;
    my @lines = $nginx->crashes;
    return @lines ? join("\n", @lines[0 .. ($#lines < 4 ? $#lines : 4)]) : '';
}

# ---------------------------------------------------------------------------
# The issue's reproduction: 1 worker, 1 shard; 40 requests held open; reload
# to 2, 3, then 4 shards one second apart; finish the 40 requests.

{
    my $nginx = RLTest::Nginx->start(workers => 1, http => config_for([0]));
    is fresh_status($nginx, 'warm'), 200, 'one shard: a request passes';

    my @held = map { $nginx->hold_request('/api/x',
                                          'X-User-Id' => unique_key("held$_")) }
               1 .. 40;
    sleep 0.5;                              # the worker has read them

    for my $n (2 .. 4) {
        is $nginx->reload_nowait(config_for([0 .. $n - 1])), 1,
            "reload to $n shards started new workers";
        sleep 1;
    }

    my @status = map { RLTest::Nginx::finish_request($_) } @held;
    my $count = status_counts(@status);
    is scalar(grep { /^\d+$/ } @status), 40,
        'every one of the 40 held requests got an answer'
        or diag explain $count;
    is $count->{200} || 0, 40, 'and every one was 200' or diag explain $count;

    is fresh_status($nginx, 'after'), 200,
        'the workers of the 4-shard configuration answer';
    is crash_lines($nginx), '', 'no worker exited on a signal';

    $nginx->stop;
}

# ---------------------------------------------------------------------------
# Successful and failed reloads (the new configuration cannot bind(): a port
# this test keeps open), growing and shrinking the ring, with requests held
# open across them in every generation.

{
    my $blocker;
    for (1 .. 20) {
        $blocker = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                         LocalPort => RLTest::Redis::free_port(),
                                         Proto => 'tcp', Listen => 5);
        last if $blocker;
    }
    die "cannot hold a port: $!\n" unless $blocker;
    my $taken = $blocker->sockport;
    my $fails = "    server { listen 127.0.0.1:$taken; location / { empty_gif; } }\n";

    my $nginx = RLTest::Nginx->start(workers => 2, http => config_for([0]));
    is fresh_status($nginx, 'warm2'), 200, 'second instance: a request passes';

    # [shard indexes, 1 = the reload succeeds, 0 = it cannot bind()]
    my @steps = (
        [[0, 1],       1],
        [[0, 1, 2],    0],
        [[0],          0],
        [[1, 2],       1],
        [[0, 1, 2, 3], 0],
        [[3, 2, 1, 0], 1],
        [[3],          0],
        [[2],          0],
        [[1],          1],
    );

    my @held;
    my $n = 0;
    my $good = [0];
    for my $step (@steps) {
        my ($idx, $succeeds) = @$step;
        push @held, map { $nginx->hold_request('/api/x',
                              'X-User-Id' => unique_key("h$n-$_")) } 1 .. 6;
        sleep 0.3;
        $n++;
        my $what = sprintf 'reload %d to shards [%s]%s', $n, "@$idx",
                           $succeeds ? '' : ' with a listen that cannot bind';
        my $got = $nginx->reload_nowait(config_for($idx, $succeeds ? '' : $fails));
        is $got, $succeeds, $what . ($succeeds ? ': new workers' : ': refused');
        $good = $idx if $succeeds;
        my ($status, $where) = route($nginx, "fresh$n", 8);
        is_deeply $status, { 200 => 8 }, "after $what: new requests get 200"
            or diag explain $status;
        my %allowed = map { $_ => 1 } @$good;
        my @stray = grep { !$allowed{$_} } @$where;
        push @stray, 'counts found: ' . scalar(@$where) . ' of 8' if @$where != 8;
        is "@stray", '', "and are counted on the shards [@$good] in force"
            or diag "counted on shards [@$where]";
    }

    my @status = map { RLTest::Nginx::finish_request($_) } @held;
    my $count = status_counts(@status);
    is scalar(grep { /^\d+$/ } @status), scalar(@held),
        'every request held across the reloads got an answer'
        or diag explain $count;
    is $count->{200} || 0, scalar(@held), 'and every one was 200'
        or diag explain $count;

    like $nginx->error_log, qr/still could not bind\(\)/,
        'the failed reloads failed on bind()';
    is crash_lines($nginx), '', 'no worker exited on a signal';

    $nginx->stop;
}

done_testing;
