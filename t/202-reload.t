# nginx -s reload with a changed shard list: the ring and the workers'
# connections follow, and no request is dropped on the way.

use strict;
use warnings;

use HTTP::Tiny;
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http redis_has_key status_counts);
use RLTest::Nginx;
use RLTest::Redis;

my $first = RLTest::Redis->start;
my $second = RLTest::Redis->start;

my $server = <<'EOF';
    server {
        listen 127.0.0.1:%PORT%;
        location /api/ {
            ratelimit $http_x_user_id;
            ratelimit_default 100 3600s;
            ratelimit_fail closed;
            empty_gif;
        }
    }
EOF

# a generous timeout: this suite is about reloads, not a busy machine
sub config_for { ratelimit_http(shards => [@_], timeout => "1s", body => $server) }

my $nginx = RLTest::Nginx->start(workers => 2, http => config_for($first->port));

sub landing {
    my ($n) = @_;
    my %on = ($first->port => 0, $second->port => 0);
    for my $i (1 .. $n) {
        my $user = unique_key("land$i");
        my $r = $nginx->get('/api/x', 'X-User-Id' => $user);
        die "request failed: $r->{status}" unless $r->{status} == 200;
        $on{$_} += redis_has_key($_, "rl:tb:http_x_user_id:k:$user") for keys %on;
    }
    return \%on;
}

my $on = landing(50);
is_deeply $on, { $first->port => 50, $second->port => 0 },
    'one shard: every key on it';

# clients keep sending while the configuration changes under them
sub during {
    my ($change) = @_;
    my $until = time + 3;
    my $pid = fork;
    die $! unless defined $pid;
    if ($pid == 0) {
        sleep 0.5;
        $change->();
        POSIX::_exit(0);
    }
    my @statuses = RLTest::Nginx::parallel(4, sub {
        my ($i) = @_;
        my $http = HTTP::Tiny->new(keep_alive => 0, timeout => 10);
        my @s;
        while (time < $until) {
            push @s, $http->get($nginx->url('/api/x'),
                { headers => { 'X-User-Id' => unique_key("busy$i") } })->{status};
        }
        @s;
    });
    waitpid $pid, 0;
    return status_counts(@statuses);
}

my $count = during(sub { $nginx->reload(config_for($first->port, $second->port)) });
my @bad = grep { $_ != 200 } keys %$count;
ok !@bad, "every request answered 200 during the reload ($count->{200} requests)"
    or diag explain $count;

$on = landing(200);
cmp_ok $on->{$first->port}, '>', 50, "after adding a shard: $on->{$first->port} on the first";
cmp_ok $on->{$second->port}, '>', 50, "and $on->{$second->port} on the new one";
is $on->{$first->port} + $on->{$second->port}, 200, 'each key on one shard';

$count = during(sub { $nginx->reload(config_for($second->port)) });
@bad = grep { $_ != 200 } keys %$count;
ok !@bad, "every request answered 200 while a shard was removed ($count->{200})"
    or diag explain $count;

$on = landing(50);
is_deeply $on, { $first->port => 0, $second->port => 50 },
    'after removing a shard: every key on the one left';

like $nginx->error_log, qr/ketama ring of 2 shards/, 'the ring was rebuilt';
unlike $nginx->error_log, qr/exited on signal|\[alert\]|\[emerg\]/, "no worker crashed"
    or diag join "\n", grep { /exited on signal|alert|emerg/ } split /\n/, $nginx->error_log;

done_testing;
