# How the module spreads similar keys over two shards under each
# ratelimit_redis_hash: the 40 sequential ids cust-1..cust-40 (Redis keys
# rl:tb:http_x_user_id:k:cust-N) and 512 addresses of 10.1.0.0/16 (keys
# rl:tb:remote_addr:k:10.1.A.B, the address set through realip), found on
# the shards themselves after one request each.
#
# The shards listen on free ports, so their names, and the ring, change from
# run to run.  md5 (the default) and murmur are held to a band: the ids
# split no worse than 6/34 and the addresses between 30% and 70% (each
# shard's share of the circle is 0.5 +- 0.04 and 40 keys add +- 0.08, so 6
# is over 3.5 standard deviations out; 512 addresses add only +- 0.02).
# fnv1a_64's clustering is printed, not asserted: it depends on the names.
# t/unit/ketama_test.c (test_spread) gives the same figures over 100 fixed
# pairs of names, asserted.

use strict;
use warnings;

use Redis;
use Test::More;

use lib 't/lib';
use RLTest qw(ratelimit_http);
use RLTest::Nginx;
use RLTest::Redis;

my @redis = map { RLTest::Redis->start } 1 .. 2;
my @direct = map { Redis->new(server => '127.0.0.1:' . $_->port) } @redis;

my @ids = map { "cust-$_" } 1 .. 40;

# every 128th address of the /16, moved along each /24: 512 of them
my @addrs = map { my $i = $_ * 128 + ($_ * 37) % 128;
                  '10.1.' . ($i >> 8) . '.' . ($i & 255) } 0 .. 511;

sub http_conf {
    my ($hash) = @_;
    return ratelimit_http(
        shards => [ map { $_->port } @redis ],
        body   => ($hash ? "    ratelimit_redis_hash $hash;\n" : '') . <<'EOF');
    server {
        listen 127.0.0.1:%PORT%;
        set_real_ip_from 127.0.0.1;
        real_ip_header X-Real-IP;
        location /id/ {
            ratelimit $http_x_user_id;
            ratelimit_default 100 3600s;
            empty_gif;
        }
        location /ip/ {
            ratelimit $remote_addr;
            ratelimit_default 100 3600s;
            empty_gif;
        }
    }
EOF
}

my $nginx = RLTest::Nginx->start(workers => 1, http => http_conf());

for my $hash (qw(md5 fnv1a_64 murmur)) {
    # md5 is the default: its round runs without the directive
    $nginx->reload(http_conf($hash)) if $hash ne 'md5';
    $_->cli('FLUSHALL') for @redis;

    my $sent = grep { $nginx->raw_get('/id/', 'X-User-Id' => $_) == 200 } @ids;
    $sent += grep { $nginx->raw_get('/ip/', 'X-Real-IP' => $_) == 200 } @addrs;
    is $sent, @ids + @addrs, "$hash: every request allowed";

    my @id_split = split_of(map { "rl:tb:http_x_user_id:k:$_" } @ids);
    my @ip_split = split_of(map { "rl:tb:remote_addr:k:$_" } @addrs);

    is $id_split[0] + $id_split[1], scalar @ids,
        "$hash: each id's count is on exactly one shard";
    is $ip_split[0] + $ip_split[1], scalar @addrs,
        "$hash: each address's count is on exactly one shard";

    diag sprintf '%-8s cust-1..cust-40: %2d/%2d   10.1.0.0/16 (512): %3d/%3d',
                 $hash, @id_split, @ip_split;

    next if $hash eq 'fnv1a_64';

    my ($least) = sort { $a <=> $b } @id_split;
    cmp_ok $least, '>=', 6,
        "$hash: 40 sequential ids split no worse than 6/34 (@id_split)";

    my $share = $ip_split[0] / @addrs;
    ok $share >= 0.3 && $share <= 0.7,
        "$hash: the /16 sample splits between 30% and 70% (@ip_split)";
}

$_->quit for @direct;

done_testing;


# how many of these keys each shard holds
sub split_of {
    my @keys = @_;
    my @count = (0, 0);

    for my $i (0 .. 1) {
        $count[$i] = grep { $direct[$i]->exists($_) } @keys;
    }

    return @count;
}
