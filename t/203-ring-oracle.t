# The module's key -> shard routing equals twemproxy's (Debian's nutcracker,
# distribution ketama) for the same servers and weights, under each key
# hash: md5 (the module's default, no directive), then fnv1a_64 and murmur
# through reloads (a reload that changes the hash must build a new ring, not
# share the old one): counts the module wrote are found by asking through a
# nutcracker with the same "hash:".

use strict;
use warnings;

use File::Temp qw(tempdir);
use POSIX ();
use Redis;
use Test::More;
use Time::HiRes qw(sleep);

use lib 't/lib';
use RLTest qw(unique_key ratelimit_http);
use RLTest::Nginx;
use RLTest::Redis;

my ($nutcracker) = grep { -x } qw(/usr/sbin/nutcracker /usr/bin/nutcracker);
plan skip_all => 'nutcracker is not installed' unless $nutcracker;

my @redis = map { RLTest::Redis->start } 1 .. 3;
my @weights = (1, 2, 1);

sub http_conf {
    my ($hash) = @_;
    return ratelimit_http(
        shards => [ map { [ $redis[$_]->port, " weight=$weights[$_]" ] } 0 .. 2 ],
        body   => ($hash ? "    ratelimit_redis_hash $hash;\n" : '') . <<'EOF');
    server {
        listen 127.0.0.1:%PORT%;
        large_client_header_buffers 4 8k;
        location /api/ {
            ratelimit $http_x_user_id;
            ratelimit_default 100 3600s;
            empty_gif;
        }
    }
EOF
}

my $nginx = RLTest::Nginx->start(workers => 2, http => http_conf());
my $dir = tempdir('rltest-oracle-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $proxy_pid;
END { local $?; stop_proxy() }

for my $hash (qw(md5 fnv1a_64 murmur)) {
    my $offset = $nginx->log_size;

    # md5 is the default: the first round runs without the directive
    $nginx->reload(http_conf($hash)) if $hash ne 'md5';

    like $nginx->error_log_since($hash eq 'md5' ? 0 : $offset),
        qr/ketama ring of 3 shards, \d+ points, hash \Q$hash\E/,
        "$hash: nginx builds a ring with hash $hash";

    check_hash($hash);
}

done_testing;


# nutcracker in front of the same shards with this "hash:"
sub start_proxy {
    my ($hash) = @_;
    my $port = RLTest::Redis::free_port();

    open my $yml, '>', "$dir/nutcracker.yml" or die $!;
    print $yml "ratelimit:\n  listen: 127.0.0.1:$port\n  hash: $hash\n"
        . "  distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n"
        . "  servers:\n"
        . join('', map { "   - 127.0.0.1:" . $redis[$_]->port . ":$weights[$_]\n" } 0 .. 2);
    close $yml;

    $proxy_pid = fork;
    die $! unless defined $proxy_pid;
    if ($proxy_pid == 0) {
        open STDOUT, '>', "$dir/out";
        open STDERR, '>&', \*STDOUT;
        exec $nutcracker, '-c', "$dir/nutcracker.yml", '-o', "$dir/log"
            or POSIX::_exit(127);
    }

    for (1 .. 100) {
        last if RLTest::Redis::port_open($port);
        sleep 0.05;
    }

    return $port;
}

sub stop_proxy {
    return unless $proxy_pid;
    kill 'TERM', $proxy_pid;
    waitpid $proxy_pid, 0;
    undef $proxy_pid;
}

sub check_hash {
    my ($hash) = @_;
    my $proxy_port = start_proxy($hash);
    ok RLTest::Redis::port_open($proxy_port), "$hash: nutcracker listens";

    # user ids as callers send them: plain, IP-like, UTF-8, raw high bytes,
    # long; new ones for each hash
    my @users;
    for my $i (1 .. 400) {
        my $kind = $i % 5;
        my $tail = "-$i-$$-$hash";
        push @users,
            $kind == 0 ? unique_key("user$i-$hash")
          : $kind == 1 ? join('.', map { int rand 256 } 1 .. 4) . $tail
          : $kind == 2 ? "\xd0\xbf\xd0\xbe\xd0\xbb\xd1\x8c$tail"
          : $kind == 3 ? join('', map { chr(0x80 + int rand 127) } 1 .. 8) . $tail
          :              ('k' x 100) . $tail;
    }

    my $allowed = grep { $nginx->raw_get('/api/x', 'X-User-Id' => $_) == 200 } @users;
    is $allowed, scalar @users, "$hash: every first request allowed";

    # EXISTS through nutcracker goes to the shard nutcracker picks for the key
    my $proxy = Redis->new(server => "127.0.0.1:$proxy_port", encoding => undef);
    my @direct = map { Redis->new(server => '127.0.0.1:' . $_->port, encoding => undef) } @redis;
    my ($agree, @wrong) = (0);
    my %per_shard;
    for my $user (@users) {
        my $key = "rl:tb:http_x_user_id:k:$user";
        my $found = $proxy->exists($key);
        if ($found) {
            $agree++;
        } elsif (@wrong < 5) {
            push @wrong, "$key: nutcracker finds nothing";
        }
        for my $i (0 .. $#redis) {
            $per_shard{$i}++ if $direct[$i]->exists($key);
        }
    }

    is $agree, scalar @users,
        "$hash: nutcracker finds every count where the module put it"
        or diag join "\n", @wrong;

    my @share = map { $per_shard{$_} || 0 } 0 .. $#redis;
    diag "$hash: keys per shard (weights 1,2,1): @share";
    cmp_ok $share[1], '>', $share[0], "$hash: the weight-2 shard holds more";

    $proxy->quit;
    $_->quit for @direct;
    stop_proxy();
}
