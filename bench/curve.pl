#!/usr/bin/perl
# The reporting half of `make bench-curve`: reads curve-meta.txt and
# curve-rounds.tsv in the results directory, prints the tables (bench/
# curve.sh saves them as curve-summary.txt) and writes curve-CURVE.tsv, one
# row per point, which bench/curve.gp plots.
#
#   perl bench/curve.pl bench/results > bench/results/curve-summary.txt
#
# Every figure is the median over the rounds of that round's figure; a
# ratio or difference to plain nginx is taken against the plain nginx run
# of the same curve and round (of the concurrency curve: with the same
# connections) first, then the median of those is quoted.

use strict;
use warnings;

use FindBin;
use lib $FindBin::Bin;
use Figures qw(median ratio fmt redis_usec read_meta read_tsv);

my $dir = shift @ARGV or die "usage: curve.pl RESULTS_DIR\n";

my %meta = read_meta("$dir/curve-meta.txt");
$meta{$_} //= '?' for qw(nproc cpu kernel loadavg nginx redis wrk commit date
                        duration rounds threads connections keys curves
                        base_shards base_zone);

my @rows = read_tsv("$dir/curve-rounds.tsv");

# $plain{curve}{x}{round}: the plain nginx run (x 0 but in the concurrency
# curve); $module{curve}{"x zone"}{round}: a point's run
my (%plain, %module, %points);
for my $r (@rows) {
    if ($r->{kind} eq 'plain') {
        $plain{ $r->{curve} }{ $r->{x} }{ $r->{round} } = $r;
    } else {
        my $p = "$r->{x} $r->{zone}";
        $module{ $r->{curve} }{$p}{ $r->{round} } = $r;
        $points{ $r->{curve} }{$p} = { x => $r->{x}, zone => $r->{zone},
                                       shards => $r->{shards},
                                       keys => $r->{keys} };
    }
}


# the share of the machine's CPU time that went to processes other than
# wrk, nginx and Redis during a run (and to kernel work charged to none):
# a noisy run shows here
sub other_pct {
    my ($r) = @_;
    my $v = $r->{box_busy_ms} - $r->{cpu_nginx_ms} - $r->{cpu_redis_ms}
            - $r->{cpu_wrk_ms};
    return ratio(100 * ($v < 0 ? 0 : $v), $r->{box_total_ms});
}

# the figures of one point: medians over its rounds
sub figures {
    my ($curve, $p) = @_;
    my $runs = $module{$curve}{$p};
    my $pt = $points{$curve}{$p};
    my $bx = $curve eq 'concurrency' ? $pt->{x} : 0;
    my @r = map { $runs->{$_} } sort { $a <=> $b } keys %$runs;
    my @pairs = map { [ $runs->{$_}, $plain{$curve}{$bx}{$_} ] }
                grep { $plain{$curve}{$bx}{$_} } keys %$runs;
    my $m = sub { my $f = shift; median(map { $f->($_) } @r) };
    my $mp = sub { my $f = shift; median(map { $f->(@$_) } @pairs) };
    my $enough = $m->(sub { $_[0]{checks} eq '-' ? 0 : $_[0]{checks} })
                 >= 100;
    my $per_check = sub {
        my $f = shift;
        return undef unless $enough;
        return $m->(sub { ratio($f->($_[0]), $_[0]{checks}) });
    };
    my @rps = sort { $a <=> $b } map { $_->{rps} } @r;

    return {
        %$pt,
        rounds      => scalar @r,
        rps         => $m->(sub { $_[0]{rps} }),
        rps_min     => $rps[0],
        rps_max     => $rps[-1],
        plain_rps   => median(map { $_->[1]{rps} } @pairs),
        x_plain     => $mp->(sub { ratio($_[0]{rps}, $_[1]{rps}) }),
        p50_ms      => $m->(sub { $_[0]{p50_us} / 1000 }),
        p99_ms      => $m->(sub { $_[0]{p99_us} / 1000 }),
        plain_p50_ms => median(map { $_->[1]{p50_us} / 1000 } @pairs),
        plain_p99_ms => median(map { $_->[1]{p99_us} / 1000 } @pairs),
        add_p50_us  => $mp->(sub { $_[0]{p50_us} - $_[1]{p50_us} }),
        add_p99_us  => $mp->(sub { $_[0]{p99_us} - $_[1]{p99_us} }),
        redis_us    => $per_check->(\&redis_usec),
        redis_cpu_us => $per_check->(sub { $_[0]{cpu_redis_ms} * 1000 }),
        batch       => $enough && $r[0]{batches} ne '-'
                       ? $m->(sub { ratio($_[0]{checks}, $_[0]{batches}) })
                       : undef,
        checks_req  => $m->(sub { ratio($_[0]{checks}, $_[0]{requests}) }),
        lookups_req => $m->(sub { ratio($_[0]{rule_lookups},
                                        $_[0]{requests}) }),
        writes_check => $per_check->(sub { $_[0]{redis_writes} }),
        failed_open => $m->(sub { ratio($_[0]{failed_open},
                                        $_[0]{requests}) }),
        non2xx      => $m->(sub { ratio($_[0]{non2xx}, $_[0]{requests}) }),
        sock_errors => $m->(sub { $_[0]{sock_errors} }),
        nginx_us    => $m->(sub { ratio($_[0]{cpu_nginx_ms} * 1000,
                                        $_[0]{requests}) }),
        other_pct   => $m->(\&other_pct),
    };
}

# --- header ---------------------------------------------------------------

my $nrounds = keys %{ { map { $_->{round} => 1 } @rows } };
my $conns = "-t$meta{threads} -c$meta{connections}";

print <<HEAD;
make bench-curve: how the module's cost grows with the work

machine   $meta{nproc} cores, $meta{cpu}, $meta{kernel}; load average at the start $meta{loadavg}
software  $meta{nginx}, Redis $meta{redis}, wrk $meta{wrk}
code      $meta{commit}
run       $meta{date}, $nrounds round@{[ $nrounds == 1 ? '' : 's' ]} of every point, $meta{duration} s each, a different
          point first each round; every figure is the median over the rounds,
          ratios to the plain nginx run of the same curve and round
setup     everything (wrk, nginx with 2 workers, every Redis) on the same
          $meta{nproc} cores of 127.0.0.1; empty_gif behind every location;
          token_bucket, ratelimit_fail open; unless the curve varies it:
          $meta{base_shards} shards, a $meta{base_zone} zone, $meta{keys} callers, $conns

HEAD

# --- the curves -----------------------------------------------------------

my %TITLE = (
    shards      => "Shards: the allowed path over 1 to N Redis shards "
                   . "($meta{keys} callers, $conns)",
    callers     => "Callers: distinct ids and the zone's size "
                   . "($meta{base_shards} shards, $conns)",
    policies    => "Policies per request: /pN/ checks N policies on the "
                   . "same id ($meta{keys} callers, $conns)",
    concurrency => "Concurrency: connections against mean batch size "
                   . "($meta{keys} callers, -t$meta{threads} or fewer)",
);
my %XNAME = (shards => 'shards', callers => 'callers', policies => 'policies',
             concurrency => 'conns');

my @COLS = qw(x zone shards keys rounds rps rps_min rps_max plain_rps x_plain
              p50_ms p99_ms plain_p50_ms plain_p99_ms add_p50_us add_p99_us
              redis_us redis_cpu_us batch checks_req lookups_req
              writes_check failed_open non2xx sock_errors nginx_us
              other_pct);
my %FMT = (rps => '%.0f', rps_min => '%.0f', rps_max => '%.0f',
           plain_rps => '%.0f', x_plain => '%.3f', p50_ms => '%.3f',
           p99_ms => '%.3f', plain_p50_ms => '%.3f', plain_p99_ms => '%.3f',
           add_p50_us => '%.0f', add_p99_us => '%.0f', redis_us => '%.2f',
           redis_cpu_us => '%.2f', batch => '%.3f', checks_req => '%.3f',
           lookups_req => '%.4f', writes_check => '%.3f',
           failed_open => '%.4f', non2xx => '%.4f', sock_errors => '%.0f',
           nginx_us => '%.2f', other_pct => '%.0f');

my @warn;

for my $curve (qw(shards callers policies concurrency)) {
    next unless $points{$curve};
    # by zone, then x: a plotted line per zone runs through its rows
    my @p = sort { size($points{$curve}{$a}{zone})
                       <=> size($points{$curve}{$b}{zone})
                   || $points{$curve}{$a}{x} <=> $points{$curve}{$b}{x} }
            keys %{ $points{$curve} };
    my @f = map { figures($curve, $_) } @p;

    open my $fh, '>', "$dir/curve-$curve.tsv"
        or die "$dir/curve-$curve.tsv: $!\n";
    print $fh join("\t", @COLS), "\n";
    for my $f (@f) {
        print $fh join("\t", map { $FMT{$_} ? fmt($FMT{$_}, $f->{$_})
                                            : $f->{$_} // '-' } @COLS), "\n";
    }
    close $fh;

    # the series of its plot: one per zone (several only for callers)
    my %z = map { $_->{zone} => 1 } @f;
    open $fh, '>', "$dir/curve-$curve.vars"
        or die "$dir/curve-$curve.vars: $!\n";
    print $fh 'zones = "' . join(' ', sort { size($a) <=> size($b) } keys %z)
            . "\"\n";
    print $fh "title = \"$TITLE{$curve}\"\n";
    # a tic at each point, 10000 as 10k
    my %x = map { $_->{x} => 1 } @f;
    print $fh 'xtics = "(' . join(', ', map { "\\\"" . short($_) . "\\\" $_" }
                                   sort { $a <=> $b } keys %x) . ")\"\n";
    close $fh;

    print "$TITLE{$curve}\n\n";
    my $head = "  %8s %5s %8s %8s %7s %7s %7s %8s %9s %9s %7s %9s\n";
    printf $head, $XNAME{$curve}, 'zone', 'req/s', 'plain', 'x plain',
           'p50 ms', 'p99 ms', '+p50 us', 'Redis us', 'CPU us', 'batch',
           $curve eq 'callers' ? 'lookups' : 'checks';
    printf $head, '', '', '', 'req/s', '', '', '', '', '/check', '/check',
           '', '/req';
    for my $f (@f) {
        printf $head, $f->{x}, $f->{zone}, fmt('%.0f', $f->{rps}),
               fmt('%.0f', $f->{plain_rps}), fmt('%.2f', $f->{x_plain}),
               fmt('%.3f', $f->{p50_ms}), fmt('%.3f', $f->{p99_ms}),
               fmt('%+.0f', $f->{add_p50_us}), fmt('%.1f', $f->{redis_us}),
               fmt('%.1f', $f->{redis_cpu_us}), fmt('%.2f', $f->{batch}),
               fmt('%.3f', $curve eq 'callers' ? $f->{lookups_req}
                                                : $f->{checks_req});
        push @warn, sprintf('%s %s %s: %.2f%% of answers not 2xx', $curve,
                            $f->{x}, $f->{zone}, 100 * $f->{non2xx})
            if $f->{non2xx};
        push @warn, sprintf('%s %s %s: %.2f%% of requests failed open '
                            . '(a shard slower than the timeout)', $curve,
                            $f->{x}, $f->{zone}, 100 * $f->{failed_open})
            if $f->{failed_open};
        push @warn, "$curve $f->{x} $f->{zone}: $f->{sock_errors} socket "
                  . 'errors (median)' if $f->{sock_errors};
    }
    printf "\n  other processes: %s of the machine's CPU time "
         . "(median of this curve's runs)\n\n",
         fmt('%.0f%%', median(map { other_pct($_) }
                              grep { $_->{curve} eq $curve } @rows));
}

print <<'NOTE';
  plain req/s   plain nginx in the same round (of the concurrency curve:
                with as many connections); x plain: the ratio, per round
  +p50 us       p50 minus plain nginx's p50 of the same round
  Redis us      Redis time per check: commandstats usec of EVALSHA, EVAL,
                HGET and HMGET (rule lookups) over the checks
  CPU us        CPU time of the Redis processes over the checks: Redis us
                plus reading, parsing and answering the commands
  batch         mean batch size: checks / batches (check script calls)
  checks/req    checks sent to a shard per request (N for N policies)
  lookups/req   rule lookups (rule cache misses that asked a shard) per
                request: a zone too small for the callers' rules shows here
  other processes: CPU time of the machine (/proc/stat) that went to
                neither wrk, nginx nor Redis: above a few percent, the run
                was disturbed by something else on the machine
  The TSVs (curve-CURVE.tsv) hold more: rps min and max of the rounds,
  plain nginx's latency, +p99, writes per check, failed_open and non-2xx
  shares, nginx CPU per request, the other processes' share per point.

NOTE

# sanity: every point measured in every round
my %count;
$count{"$_->{curve} $_->{kind} $_->{x} $_->{zone}"}++ for @rows;
for my $k (sort keys %count) {
    push @warn, "$k: measured in $count{$k} of $nrounds rounds"
        if $count{$k} != $nrounds;
}
print "Warnings\n\n", map { "  $_\n" } @warn if @warn;

# the subtitle of every plot
open my $fh, '>', "$dir/curve-plot.vars" or die "$dir/curve-plot.vars: $!\n";
(my $cpu = $meta{cpu}) =~ s/["\\]//g;
print $fh "subtitle = \"$meta{nproc} cores, $cpu; commit $meta{commit}; "
        . "median of $nrounds round" . ($nrounds == 1 ? '' : 's')
        . ", $meta{duration} s each\"\n";
close $fh;


# 10000 as 10k, 1000000 as 1M
sub short {
    my ($n) = @_;
    return $n % 1000000 == 0 ? ($n / 1000000) . 'M'
         : $n % 1000 == 0    ? ($n / 1000) . 'k' : $n;
}

# a zone size in bytes, for ordering
sub size {
    my ($z) = @_;
    my ($n, $u) = $z =~ /^(\d+)([km]?)$/i or return 0;
    return $n * ({ '' => 1, k => 1024, m => 1024 * 1024 }->{lc $u});
}


