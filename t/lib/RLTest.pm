package RLTest;

# What the multi-node suites share: the shards make test started (or fresh
# ones), unique keys, and the module's http{} preamble.

use strict;
use warnings;

use Exporter 'import';
use Time::HiRes qw(time);

use RLTest::Redis;

our @EXPORT_OK = qw(test_shards unique_key ratelimit_http redis_has_key
                    status_counts route_callers);

# Two shards: the ones make test started, else two of our own.
sub test_shards {
    my @ports = grep { $_ } @ENV{qw(TEST_NGINX_REDIS_PORT TEST_NGINX_REDIS_PORT2)};
    return @ports if @ports == 2;
    return map { RLTest::Redis->start->port } 1 .. 2;
}

my $counter = 0;

sub unique_key {
    my ($name) = @_;
    $counter++;
    return sprintf '%s-%d-%d-%d', $name, $$, int(time * 1000), $counter;
}

# The http{} lines that point the module at the given shard ports; extra
# lines (locations, servers) follow.
sub ratelimit_http {
    my (%opt) = @_;
    my $zone = $opt{zone} || '1m';
    my $shards = join '', map {
        my ($port, $extra) = ref $_ ? @$_ : ($_, '');
        "    ratelimit_redis 127.0.0.1:$port$extra;\n"
    } @{ $opt{shards} };
    # suites not about timeouts wait long: a busy 2-core box is no failure
    my $timeout = "    ratelimit_redis_timeout " . ($opt{timeout} || '1s') . ";\n";
    return "    ratelimit_zone ratelimit:$zone;\n$shards$timeout$opt{body}";
}

# 1 when the shard on $port holds $key.
sub redis_has_key {
    my ($port, $key) = @_;
    my $out = `redis-cli -h 127.0.0.1 -p $port EXISTS '$key' 2>&1`;
    chomp $out;
    return $out eq '1' ? 1 : 0;
}

# Sends $n requests to /api/x, each from a new caller named after $name;
# returns (status counts, [the index in @$shards of each shard holding a
# caller's count]), the shards being RLTest::Redis servers.
sub route_callers {
    my ($nginx, $shards, $name, $n) = @_;
    my (@status, @where);
    for (1 .. $n) {
        my $user = unique_key($name);
        push @status, $nginx->get('/api/x', 'X-User-Id' => $user)->{status};
        push @where, grep {
            $shards->[$_]->cli('--scan', '--pattern', "*$user*") ne ''
        } 0 .. $#$shards;
    }
    return (status_counts(@status), \@where);
}

sub status_counts {
    my %count;
    $count{$_}++ for @_;
    return \%count;
}

1;
