#!/usr/bin/perl
# The measuring half of `make bench` (bench/run.sh drives it):
#
#   bench.pl freeports N
#       N distinct free TCP ports on 127.0.0.1
#   bench.pl wait-port PORT
#       waits (at most 10 s) until something accepts on 127.0.0.1:PORT
#   bench.pl snapshot [--stats PORT] --redis P1,P2,... --nginx-pid PID
#                     --redis-pids PID,PID,...
#       one line of counters: the module's ratelimit_stats, the shards'
#       INFO commandstats, and the CPU time used so far by the nginx
#       workers (the children of master PID) and by the Redis servers
#   bench.pl record --round N --scenario S --mode MODE --wrk LOG
#                   --before FILE [--stats PORT] --redis P1,P2,...
#                   --nginx-pid PID --redis-pids PID,PID,...
#                   --times-before FILE --times-after FILE --out TSV
#                   [--tag NAME=VALUE ...]
#       takes the "after" snapshot, appends one row (the wrk result and the
#       counter deltas) to TSV, and prints a line of progress; the "times"
#       files hold the shell's `times` from just before and after wrk ran,
#       whose children's times then differ by wrk's CPU time; each tag is
#       a column put before the others (bench/curve.sh: the curve and the
#       point)
#   bench.pl memory --nginx PORT --redis P1,P2 --keys N --limit L
#                   --window SECONDS --out TSV
#       Redis memory per key and key TTLs, per algorithm
#
# Only core Perl modules; Redis and HTTP are spoken over plain sockets.

use strict;
use warnings;

use Getopt::Long qw(GetOptionsFromArray);
use IO::Select;
use IO::Socket::INET;
use JSON::PP qw(decode_json);
use POSIX ();
use Time::HiRes qw(sleep time);

my $IO_TIMEOUT = 10;    # seconds any one answer may take

# the module's counters, in the order of the TSV columns
my @STATS = qw(checks batches allowed denied denied_cached failed_open
               failed_closed redis_commands redis_writes redis_replies
               noscript rule_lookups refunds rule_cache_evictions);

# From the shards' INFO commandstats.  Redis counts the commands a script
# calls under their own names too, inside the script's usec: so the
# module's Redis time is that of its script calls (EVALSHA, EVAL) and of
# the commands it sends itself that its check script never calls (HGET,
# HMGET: rule lookups; check.lua calls HMGET only on keys of the old hash
# layout, which the bench never makes).  Not counted: the rules poll (an
# MGET a second per nginx, an MGET is also what check.lua calls) and INFO
# (the bench's own).
my @REDIS = qw(evalsha eval evalsha_usec eval_usec lookup_calls lookup_usec);

# the columns of rounds.tsv (bench/report.pl reads them by name)
my @COLUMNS = (qw(round scenario mode requests duration_us rps
                  p50_us p90_us p99_us p999_us max_us mean_us
                  sock_errors non2xx),
               @STATS, @REDIS, qw(cpu_nginx_ms cpu_redis_ms cpu_wrk_ms
                                  box_busy_ms box_total_ms));

my %commands = (
    freeports   => \&cmd_freeports,
    'wait-port' => \&cmd_wait_port,
    snapshot    => \&cmd_snapshot,
    record      => \&cmd_record,
    memory      => \&cmd_memory,
);

my $cmd = shift @ARGV;
die "usage: bench.pl " . join('|', sort keys %commands) . " ...\n"
    unless defined $cmd && $commands{$cmd};
$commands{$cmd}->(@ARGV);
exit 0;


sub cmd_freeports {
    my ($n) = @_;
    my %seen;
    my $tries = 0;

    while (keys %seen < $n) {
        die "no free loopback ports found\n" if ++$tries > 200;
        my $port = 10000 + int(rand(22000));    # below the ephemeral range
        next if $seen{$port};
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                      LocalPort => $port, Proto => 'tcp',
                                      ReuseAddr => 1, Listen => 1);
        next unless $s;
        close $s;
        next if port_open($port);
        $seen{$port} = 1;
    }

    print join(' ', keys %seen), "\n";
}


sub cmd_wait_port {
    my ($port) = @_;
    for (1 .. 200) {
        exit 0 if port_open($port);
        sleep 0.05;
    }
    die "nothing accepts on 127.0.0.1:$port\n";
}


sub port_open {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}


sub cmd_snapshot {
    my %o = options(\@_, 'stats=i', 'redis=s', 'nginx-pid=i',
                    'redis-pids=s');
    print format_snapshot(snapshot(\%o)), "\n";
}


sub snapshot {
    my ($o) = @_;
    my %snap;

    if ($o->{stats}) {
        my ($status, $body) = http_get($o->{stats}, '/ratelimit/stats');
        die "ratelimit_stats answered $status\n" unless $status == 200;
        my $json = decode_json($body);
        $json->{rule_cache_evictions} = $json->{rule_cache}{evictions};
        # a counter this module does not have yet stays "-"
        $snap{$_} = $json->{$_} // '-' for @STATS;
    }

    # the sum over the shards
    $snap{$_} = 0 for @REDIS;

    for my $port (split /,/, $o->{redis}) {
        my $info = redis_command(redis_connect($port), 'INFO', 'commandstats');
        my %c;
        $c{$1} = [$2, $3]
            while $info =~ /^cmdstat_(\w+):calls=(\d+),usec=(\d+)/mg;
        for my $cmd (qw(evalsha eval)) {
            $snap{$cmd} += $c{$cmd}[0] // 0;
            $snap{"${cmd}_usec"} += $c{$cmd}[1] // 0;
        }
        for my $cmd (qw(hget hmget)) {
            $snap{lookup_calls} += $c{$cmd}[0] // 0;
            $snap{lookup_usec} += $c{$cmd}[1] // 0;
        }
    }

    $snap{cpu_nginx_ms} = cpu_ms(children($o->{'nginx-pid'}));
    $snap{cpu_redis_ms} = cpu_ms(split /,/, $o->{'redis-pids'});
    @snap{qw(box_busy_ms box_total_ms)} = box_ms();

    return \%snap;
}


# user + system CPU time of these processes, in ms
sub cpu_ms {
    my (@pids) = @_;
    my $ticks = 0;
    for my $pid (@pids) {
        my @f = proc_stat($pid) or next;
        $ticks += $f[13] + $f[14];            # utime, stime
    }
    return int($ticks * 1000 / POSIX::sysconf(POSIX::_SC_CLK_TCK()));
}


# busy and total CPU time of the whole machine (all cores), in ms
sub box_ms {
    open my $fh, '<', '/proc/stat' or die "/proc/stat: $!\n";
    my ($line) = grep { /^cpu / } <$fh>;
    my @f = split ' ', $line;
    shift @f;
    my $total = 0;
    $total += $_ for @f[0 .. 7];             # up to steal; guest is in user
    my $idle = $f[3] + $f[4];                 # idle, iowait
    my $hz = POSIX::sysconf(POSIX::_SC_CLK_TCK());
    return (int(($total - $idle) * 1000 / $hz), int($total * 1000 / $hz));
}


# the children's user + system time in the output of the shell's "times"
sub times_ms {
    my ($file) = @_;
    my @lines = split /\n/, slurp($file);
    my $ms = 0;
    $ms += ($1 * 60 + $2) * 1000 while ($lines[1] // '') =~ /(\d+)m([\d.]+)s/g;
    return $ms;
}


sub children {
    my ($parent) = @_;
    opendir my $dh, '/proc' or die "/proc: $!\n";
    my @pids = grep { /^\d+$/ } readdir $dh;
    closedir $dh;
    return grep { my @f = proc_stat($_); @f && $f[3] == $parent } @pids;
}


# the fields of /proc/PID/stat, from the state on (the name may hold
# spaces), so that the indexes are those of proc(5) minus 1
sub proc_stat {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return;
    my $line = <$fh> // return;
    $line =~ s/^(\d+) \(.*\) // or return;
    return ($1, 'name', split ' ', $line);
}


sub format_snapshot {
    my ($snap) = @_;
    return join ' ', map { "$_=$snap->{$_}" } sort keys %$snap;
}


sub parse_pairs {
    my ($line) = @_;
    my %h;
    $h{$1} = $2 while $line =~ /(\w+)=(\S+)/g;
    return \%h;
}


sub cmd_record {
    my %o = options(\@_, 'round=s', 'scenario=s', 'mode=s', 'wrk=s',
                    'before=s', 'stats=i', 'redis=s', 'nginx-pid=i',
                    'redis-pids=s', 'times-before=s', 'times-after=s',
                    'out=s', 'tag=s@');

    my $after = snapshot(\%o);
    my $before = parse_pairs(slurp($o{before}));

    my ($line) = grep { /^BENCH / } split /\n/, slurp($o{wrk});
    die "no result line in $o{wrk}: did wrk fail?\n" unless $line;
    my $w = parse_pairs($line);

    my %row = (
        round       => $o{round},
        scenario    => $o{scenario},
        mode        => $o{mode},
        requests    => $w->{requests},
        duration_us => $w->{duration_us},
        rps         => sprintf('%.1f',
                           $w->{requests} / ($w->{duration_us} / 1e6 || 1)),
        p50_us      => $w->{p50},
        p90_us      => $w->{p90},
        p99_us      => $w->{p99},
        p999_us     => $w->{p999},
        max_us      => $w->{max},
        mean_us     => $w->{mean},
        sock_errors => $w->{connect} + $w->{read} + $w->{write}
                       + $w->{timeout},
        non2xx      => $w->{status},
    );

    for my $c (@STATS, @REDIS, qw(cpu_nginx_ms cpu_redis_ms box_busy_ms
                                  box_total_ms)) {
        my ($a, $b) = ($after->{$c}, $before->{$c});
        $row{$c} = defined $a && defined $b && $a ne '-' && $b ne '-'
                   ? $a - $b : '-';
    }

    $row{cpu_wrk_ms} = sprintf '%.0f', times_ms($o{'times-after'})
                                       - times_ms($o{'times-before'});

    my @tags;
    for my $t (@{ $o{tag} // [] }) {
        my ($k, $v) = $t =~ /^(\w+)=(.*)$/ or die "bad tag \"$t\"\n";
        push @tags, $k;
        $row{$k} = $v;
    }
    my @cols = (@tags, @COLUMNS);

    my $new = !-s $o{out};
    open my $fh, '>>', $o{out} or die "$o{out}: $!\n";
    print $fh join("\t", @cols), "\n" if $new;
    print $fh join("\t", map { $row{$_} } @cols), "\n";
    close $fh;

    my $redis = '';
    if ($row{checks} ne '-' && $row{checks} > 0) {
        $redis = sprintf '  Redis %.1f us/check', ($row{evalsha_usec}
                         + $row{eval_usec} + $row{lookup_usec}) / $row{checks};
        $redis .= sprintf '  batch %.2f', $row{checks} / $row{batches}
            if $row{batches} ne '-' && $row{batches} > 0;
    }
    printf STDERR "  %-14s %-4s %9.0f req/s  p50 %6.3f ms  p99 %7.3f ms"
                  . "  non-2xx %d%s\n",
                  $o{scenario}, $o{mode}, $row{rps}, $row{p50_us} / 1000,
                  $row{p99_us} / 1000, $row{non2xx}, $redis;
}


# Memory per key: empty both shards, create N keys through nginx with one
# request each, and divide the growth of used_memory by the keys made.
# Then the TTLs: of those keys, and of a key left idle under a 1 s window,
# watched until it is gone.

sub cmd_memory {
    my %o = options(\@_, 'nginx=i', 'redis=s', 'keys=i', 'limit=i',
                    'window=i', 'out=s');

    my @shards = map { redis_connect($_) } split /,/, $o{redis};
    my @rows;

    for my $algo (qw(tb sw)) {
        redis_command($_, 'FLUSHALL') for @shards;
        sleep 0.2;

        my ($mem0, $keys0) = redis_memory(@shards);
        my $status = http_requests($o{nginx}, "/mem-$algo/", "m$algo",
                                   $o{keys});
        my ($mem1, $keys1) = redis_memory(@shards);
        my $made = $keys1 - $keys0;

        my $key = "rl:$algo:http_x_user_id:k:m${algo}1";
        my ($pttl, $usage) = ('-', '-');
        for my $r (@shards) {
            my $t = redis_command($r, 'PTTL', $key);
            next if $t == -2;
            $pttl = $t;
            $usage = redis_command($r, 'MEMORY', 'USAGE', $key);
        }

        push @rows, {
            code           => $algo,
            algorithm      => $algo eq 'tb' ? 'token_bucket' : 'sliding_window',
            requests       => $o{keys},
            statuses       => join(',', map { "$_:$status->{$_}" }
                                        sort keys %$status),
            keys           => $made,
            used_memory    => $mem1 - $mem0,
            bytes_per_key  => $made ? sprintf('%.1f', ($mem1 - $mem0) / $made)
                                    : '-',
            memory_usage   => $usage // '-',
            sample_key     => $key,
            pttl_ms        => $pttl,
            ttl_expected   => $algo eq 'tb'
                ? sprintf('%.0f', $o{window} * 1000 / $o{limit})
                : sprintf('%d-%d', $o{window} * 1000, 2 * $o{window} * 1000),
        };
    }

    # idle keys expire: one request each under "10 per 1s", then watch
    my %probe;
    for my $algo (qw(tb sw)) {
        http_requests($o{nginx}, "/exp-$algo/", "exp$algo", 1);
        $probe{$algo} = { key => "rl:$algo:http_x_user_id:k:exp${algo}1", start => time };
        for my $r (@shards) {
            my $t = redis_command($r, 'PTTL', $probe{$algo}{key});
            $probe{$algo}{pttl} = $t unless $t == -2;
            $probe{$algo}{shard} = $r unless $t == -2;
        }
    }

    for (1 .. 60) {    # 3 s at most: a 1 s window lives at most 2 s
        my $left = 0;
        for my $p (values %probe) {
            next if defined $p->{gone} || !$p->{shard};
            if (redis_command($p->{shard}, 'EXISTS', $p->{key})) {
                $left++;
            } else {
                $p->{gone} = sprintf('%.0f', (time - $p->{start}) * 1000);
            }
        }
        last unless $left;
        sleep 0.05;
    }

    for my $row (@rows) {
        my $p = $probe{$row->{code}};
        $row->{idle_pttl_ms} = $p->{pttl} // '-';
        $row->{idle_gone_ms} = $p->{gone} // 'not gone after 3 s';
    }

    my @cols = qw(algorithm requests statuses keys used_memory bytes_per_key
                  memory_usage sample_key pttl_ms ttl_expected idle_pttl_ms
                  idle_gone_ms);
    open my $fh, '>', $o{out} or die "$o{out}: $!\n";
    print $fh join("\t", @cols), "\n";
    for my $row (@rows) {
        print $fh join("\t", map { $row->{$_} } @cols), "\n";
    }
    close $fh;

    for my $row (@rows) {
        printf STDERR "  %-14s %6d keys  %s bytes/key  PTTL %s ms\n",
                      $row->{algorithm}, $row->{keys}, $row->{bytes_per_key},
                      $row->{pttl_ms};
    }
}


sub redis_memory {
    my (@shards) = @_;
    my ($mem, $keys) = (0, 0);
    for my $r (@shards) {
        my $info = redis_command($r, 'INFO', 'memory');
        $mem += $1 if $info =~ /^used_memory:(\d+)/m;
        $keys += redis_command($r, 'DBSIZE');
    }
    return ($mem, $keys);
}


sub options {
    my ($args, @spec) = @_;
    my %o;
    GetOptionsFromArray($args, \%o, @spec) or die "bad options\n";
    return %o;
}


sub slurp {
    my ($file) = @_;
    open my $fh, '<', $file or die "$file: $!\n";
    local $/;
    my $s = <$fh>;
    return $s // '';
}


# --- HTTP -----------------------------------------------------------------

sub http_connect {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => $IO_TIMEOUT)
        or die "connect to 127.0.0.1:$port: $!\n";
    binmode $s;
    return $s;
}


sub read_some {
    my ($s, $buf) = @_;
    die "no answer in ${IO_TIMEOUT}s\n"
        unless IO::Select->new($s)->can_read($IO_TIMEOUT);
    my $n = sysread($s, $$buf, 65536, length $$buf);
    die "read: $!\n" unless defined $n;
    return $n;
}


sub http_get {
    my ($port, $path) = @_;
    my $s = http_connect($port);
    print $s "GET $path HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    my $buf = '';
    1 while read_some($s, \$buf);
    close $s;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    my ($status) = $head =~ m{^HTTP/1\.\d (\d+)};
    return ($status // 0, $body // '');
}


# N HEAD requests for ids PREFIX1 .. PREFIXN, pipelined on one keepalive
# connection, 64 at a time.  HEAD answers end at their blank line, so they
# are counted without parsing bodies.  Returns { status => count }.

sub http_requests {
    my ($port, $path, $prefix, $n) = @_;
    my $s = http_connect($port);
    my %status;
    my ($sent, $done, $buf) = (0, 0, '');

    while ($done < $n) {
        if ($sent == $done) {
            my $req = '';
            while ($sent < $n && $sent - $done < 64) {
                $sent++;
                $req .= "HEAD $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      . "X-User-Id: $prefix$sent\r\n\r\n";
            }
            print $s $req;
        }

        read_some($s, \$buf) or die "nginx closed the connection\n";

        while ($buf =~ s/\A(.*?)\r\n\r\n//s) {
            my ($code) = $1 =~ m{^HTTP/1\.\d (\d+)};
            $status{$code // 'bad'}++;
            $done++;
        }
    }

    close $s;
    return \%status;
}


# --- Redis ----------------------------------------------------------------

sub redis_connect {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => $IO_TIMEOUT)
        or die "connect to Redis 127.0.0.1:$port: $!\n";
    binmode $s;
    return { sock => $s, buf => '' };
}


sub redis_command {
    my ($r, @args) = @_;
    my $cmd = '*' . @args . "\r\n";
    $cmd .= '$' . length($_) . "\r\n$_\r\n" for @args;
    print { $r->{sock} } $cmd;
    return redis_reply($r);
}


sub redis_line {
    my ($r) = @_;
    my $end;
    while (($end = index($r->{buf}, "\r\n")) < 0) {
        read_some($r->{sock}, \$r->{buf}) or die "Redis closed\n";
    }
    my $line = substr($r->{buf}, 0, $end);
    substr($r->{buf}, 0, $end + 2) = '';
    return $line;
}


sub redis_reply {
    my ($r) = @_;
    my $line = redis_line($r);
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));

    return $rest if $type eq '+' || $type eq ':';
    die "Redis: $rest\n" if $type eq '-';

    if ($type eq '$') {
        return undef if $rest < 0;
        while (length $r->{buf} < $rest + 2) {
            read_some($r->{sock}, \$r->{buf}) or die "Redis closed\n";
        }
        my $s = substr($r->{buf}, 0, $rest);
        substr($r->{buf}, 0, $rest + 2) = '';
        return $s;
    }

    if ($type eq '*') {
        return undef if $rest < 0;
        return [ map { redis_reply($r) } 1 .. $rest ];
    }

    die "Redis: unexpected reply \"$line\"\n";
}
