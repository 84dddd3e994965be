#!/usr/bin/perl
# The routing oracle: real nutcracker (twemproxy 0.5.0, "distribution:
# ketama", with each of "hash: md5", "fnv1a_64" and "murmur") in front of
# real redis-servers decides where 2000 keys go; build/unit/ketama_route,
# given the same servers and hash, must name the same backend for every one
# of them.
#
# nutcracker names a server listed as "127.0.0.1:PORT:WEIGHT" after
# "127.0.0.1:PORT" (conf_add_server in nc_conf.c: host and port, the port
# left out only when it is 11211), or after the name written after it, so
# ketama_route gets "127.0.0.1:PORT:WEIGHT" (its name is all before the
# last ':') or "NAME:WEIGHT".

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Encode qw(encode_utf8);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Test::More;
use Time::HiRes qw(sleep);

my ($nutcracker) = grep { -x } map { "$_/nutcracker" }
                   split(/:/, $ENV{PATH} || ''), '/usr/sbin', '/usr/bin';

plan skip_all => 'nutcracker (twemproxy) is not installed'
    unless $nutcracker;
plan skip_all => 'the Redis perl module is not installed'
    unless eval { require Redis; 1 };

require RLTest::Redis;

chdir "$FindBin::Bin/.." or die "chdir: $!";

system('sh t/unit/build.sh 1>&2') == 0 or die "sh t/unit/build.sh failed\n";

my $route = 'build/unit/ketama_route';
my $dir = tempdir('rltest-nutcracker-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $nc_pid;

END {
    my $status = $?;
    stop_nutcracker();
    $? = $status;
}

my @redis = map { RLTest::Redis->start } 1 .. 3;
my @ports = map { $_->port } @redis;

my @keys = make_keys(2000);

# Server names whose points collide, with keys that land on the collision:
# found and explained in t/unit/ketama_test.c (test_ties), two per tie and
# hash.  nutcracker gives a tie to the name it sorts first, shorter and then
# bytewise smaller, whatever the order of the list.
my @hashes = qw(md5 fnv1a_64 murmur);
my %tie_keys = (
    md5      => [ qw(tie:256 tie:503 tie:554 tie:1197) ],
    fnv1a_64 => [ qw(tie:22540 tie:22541 tie:43440 tie:43441) ],
    murmur   => [ qw(tie:28 tie:99 tie:99 tie:696) ],
);

my @cases = (
    { what => 'weights 1,2,1, nutcracker\'s own names',
      servers => [ map { [ $ports[$_], (1, 2, 1)[$_] ] } 0 .. 2 ] },

    { what => 'equal weights, nutcracker\'s own names',
      servers => [ map { [ $ports[$_], 1 ] } 0 .. 2 ] },

    # 156 points each (float rounding) rather than 160; 25 named servers
    # share the 3 backends, so a key is checked at the backend it reached
    { what => '25 equal servers named s0..s24 on 3 backends',
      servers => [ map { [ $ports[$_ % 3], 1, "s$_" ] } 0 .. 24 ] },

    { what => 'tie: n19921 listed before n255',
      servers => [ [ $ports[0], 1, 'n19921' ], [ $ports[1], 1, 'n255' ] ],
      extra => [ 0, 1 ], winner => $ports[1] },

    { what => 'tie: n255 listed before n19921',
      servers => [ [ $ports[0], 1, 'n255' ], [ $ports[1], 1, 'n19921' ] ],
      extra => [ 0, 1 ], winner => $ports[0] },

    { what => 'tie: n6596 listed before n4012',
      servers => [ [ $ports[0], 1, 'n6596' ], [ $ports[1], 1, 'n4012' ] ],
      extra => [ 2, 3 ], winner => $ports[1] },
);

for my $hash (@hashes) {
    check_case($hash, $_) for @cases;
}

done_testing();


# One case under one hash: the keys through nutcracker, then each key looked
# for on every backend and compared with ketama_route's answer
sub check_case {
    my ($hash, $case) = @_;
    my @extra = @{ $tie_keys{$hash} }[ @{ $case->{extra} || [] } ];
    my @case_keys = (@keys, @extra);
    my $what = "hash $hash, $case->{what}";

    $_->cli('FLUSHALL') for @redis;

    my $port = start_nutcracker($case->{servers}, $hash);
    my $errors = set_keys($port, \@case_keys);
    stop_nutcracker();

    is($errors, 0, "$what: nutcracker stored all "
                   . scalar(@case_keys) . " keys");

    # where each key really went
    my %held;
    for my $r (@redis) {
        my $client = Redis->new(server => '127.0.0.1:' . $r->port);
        push @{ $held{$_} }, $r->port for $client->keys('*');
        $client->quit;
    }

    # where ketama_route says it goes
    my @specs = map { defined $_->[2] ? "$_->[2]:$_->[1]"
                                      : "127.0.0.1:$_->[0]:$_->[1]" }
                @{ $case->{servers} };
    my @index = run_route($hash, \@specs, \@case_keys);

    my ($agree, @wrong) = (0);
    my %per_port;
    for my $i (0 .. $#case_keys) {
        my $key = $case_keys[$i];
        my $want = $case->{servers}[ $index[$i] ][0];
        my $got = $held{$key} || [];

        $per_port{$want}++;

        if (@$got == 1 && $got->[0] == $want) {
            $agree++;
        } elsif (@wrong < 5) {
            push @wrong, sprintf("%s: ketama_route %s, nutcracker %s",
                                 printable($key), $want,
                                 join(',', @$got) || 'nowhere');
        }
    }

    is($agree, scalar(@case_keys),
       "$what: ketama_route agrees with nutcracker on every key")
        or diag(join("\n", @wrong));
    note("$what: keys per backend "
         . join(', ', map { "$_: " . ($per_port{$_} || 0) } @ports));

    if ($case->{winner}) {
        my @at_tie = grep { my $h = $held{$_}; $h && $h->[0] == $case->{winner} }
                     @extra;
        is(scalar(@at_tie), scalar(@extra),
           "$what: nutcracker gives the tied point to the name it "
           . "sorts first");
    }
}




# 2000 distinct keys, none with "\n" (ketama_route reads lines) nor empty:
# the module's own shapes, UTF-8, raw bytes >= 0x80, long ones.  They come
# from a private xorshift so that runs repeat without seeding Perl's rand,
# which must stay random for picking ports.
sub make_keys {
    my ($n) = @_;
    my (%seen, @out);
    my $x = 20240607;

    my $rnd = sub {
        my ($below) = @_;
        $x ^= ($x << 13) & 0xffffffff;
        $x ^= $x >> 17;
        $x ^= ($x << 5) & 0xffffffff;
        return $x % $below;
    };

    for (my $i = 0; @out < $n; $i++) {
        my $kind = $i % 6;
        my $key;

        if ($kind == 0) {
            $key = "rl:tb:user$i";
        } elsif ($kind == 1) {
            $key = sprintf('rl:sw:%d.%d.%d.%d', map { $rnd->(256) } 1 .. 4);
        } elsif ($kind == 2) {
            $key = encode_utf8("rl:tb:\x{443}\x{441}\x{435}\x{440}-$i-\x{e9}"
                               . "\x{4e2d}\x{1f600}");
        } elsif ($kind == 3) {
            $key = join '', map { chr(0x80 + $rnd->(128)) } 0 .. $rnd->(16);
            $key .= $i;
        } elsif ($kind == 4) {
            $key = join '', map { chr(1 + $rnd->(255)) } 0 .. $rnd->(40);
            $key =~ s/\n/./g;
            $key .= ":$i";
        } else {
            $key = "rl:long:$i:" . ('x' x (100 + $rnd->(900)))
                   . chr(0x80 + $rnd->(128));
        }

        push @out, $key unless $seen{$key}++;
    }

    return @out;
}

sub printable {
    my ($s) = @_;
    $s = substr($s, 0, 40) . '...' if length $s > 40;
    $s =~ s/([^\x20-\x7e])/sprintf('\\x%02x', ord $1)/ge;
    return "\"$s\"";
}

# A port below the kernel's ephemeral range: probing a port in that range
# before anything listens can connect the probe to itself (TCP self-connect)
# and pass for a listener.  ReuseAddr as nutcracker binds: a port whose
# last connections linger in TIME_WAIT is free for it.
sub low_free_port {
    my ($low) = (`cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null`
                 =~ /^(\d+)/);
    $low = 32768 unless $low && $low > 11000;

    for (1 .. 50) {
        my $port = 10000 + int rand($low - 10000);
        my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                         LocalPort => $port, Proto => 'tcp',
                                         ReuseAddr => 1, Listen => 1);
        next unless $sock;
        close $sock;
        return $port;
    }

    die "no free loopback port below $low found\n";
}

# Starts nutcracker for these servers and this "hash:" and returns its port
# once it answers PING itself (it does, without a backend); a port taken
# between the probe and nutcracker's bind makes it exit, and it is tried
# again elsewhere.
sub start_nutcracker {
    my ($servers, $hash) = @_;
    my $conf = "$dir/nutcracker.yml";

    for my $attempt (1 .. 5) {
        my $port = low_free_port();
        my $stats = low_free_port();
        next if $stats == $port;

        open my $fh, '>', $conf or die "$conf: $!";
        print $fh "pool:\n",
                  "  listen: 127.0.0.1:$port\n",
                  "  hash: $hash\n",
                  "  distribution: ketama\n",
                  "  redis: true\n",
                  "  auto_eject_hosts: false\n",
                  "  timeout: 5000\n",
                  "  servers:\n",
                  map({ "    - 127.0.0.1:$_->[0]:$_->[1]"
                        . (defined $_->[2] ? " $_->[2]" : '') . "\n" }
                      @$servers);
        close $fh or die "$conf: $!";

        $nc_pid = fork;
        die "fork: $!" unless defined $nc_pid;

        if ($nc_pid == 0) {
            open STDOUT, '>>', "$dir/nutcracker.out";
            open STDERR, '>&', \*STDOUT;
            # _exit: END blocks in a forked child would stop our servers
            exec($nutcracker, '-c', $conf, '-o', "$dir/nutcracker.log",
                 '-s', $stats, '-a', '127.0.0.1')
                or POSIX::_exit(127);
        }

        for (1 .. 200) {
            if (waitpid($nc_pid, WNOHANG) == $nc_pid) {
                undef $nc_pid;
                last;
            }

            my $pong = eval {
                my $client = Redis->new(server => "127.0.0.1:$port",
                                        reconnect => 0);
                my $reply = $client->ping;
                $client->quit;
                $reply;
            };
            return $port if defined $pong && $pong eq 'PONG';

            sleep 0.025;
        }

        stop_nutcracker();
    }

    my $log = `cat $dir/nutcracker.out $dir/nutcracker.log 2>/dev/null`;
    die "nutcracker did not start:\n$log";
}

sub stop_nutcracker {
    return unless $nc_pid;

    kill 'TERM', $nc_pid;
    for (1 .. 200) {
        last if waitpid($nc_pid, WNOHANG) == $nc_pid;
        sleep 0.025;
    }
    if (kill 0, $nc_pid) {
        kill 'KILL', $nc_pid;
        waitpid($nc_pid, 0);
    }

    undef $nc_pid;
}

# SETs every key through nutcracker, pipelined; returns the error count
sub set_keys {
    my ($port, $keys) = @_;
    my $errors = 0;

    my $client = Redis->new(server => "127.0.0.1:$port");

    for my $i (0 .. $#$keys) {
        $client->set($keys->[$i], $i, sub {
            my ($reply, $error) = @_;
            $errors++ if $error || !defined $reply || $reply ne 'OK';
        });
    }

    $client->wait_all_responses;
    $client->quit;

    return $errors;
}

sub run_route {
    my ($hash, $specs, $keys) = @_;
    my $file = "$dir/keys";

    open my $fh, '>:raw', $file or die "$file: $!";
    print $fh map { "$_\n" } @$keys;
    close $fh or die "$file: $!";

    my $pid = open my $out, '-|';
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        if (open STDIN, '<', $file) {
            exec $route, '-h', $hash, @$specs;
        }
        warn "$route: $!\n";
        POSIX::_exit(127);
    }

    my @index = <$out>;
    close $out or die "$route @$specs failed: $?\n";
    chomp @index;

    die "$route answered " . scalar(@index) . " lines for "
        . scalar(@$keys) . " keys\n" unless @index == @$keys;

    return @index;
}
