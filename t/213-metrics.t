# ratelimit_metrics (issue 11): the Prometheus text exposition, scraped and
# read by prometheus_client's own parser (t/lib/prom_parse.py) as a scraper
# would.  Every family with its type; each policy's outcomes move by exactly
# the traffic of each kind sent (a dead shard for the fail paths) and agree
# with the JSON stats; the round-trip histogram is cumulative and counts
# each shard's batches; counters are summed over the workers and survive a
# reload, also one that changes the shard list and drops policies (whose
# series then go); the rules version and last sync follow the shards.

use strict;
use warnings;

use File::Temp qw(tempfile);
use JSON::PP;
use Test::More;
use Time::HiRes qw(sleep time);

use lib 't/lib';
use RLTest qw(test_shards unique_key ratelimit_http);
use RLTest::Nginx;

my @live = test_shards();
my $dead = $ENV{TEST_NGINX_DEAD_PORT} || 1;
my $token = 'metrics-token-0123456789';

sub config {
    my (%opt) = @_;
    my $dead_policies = $opt{dead} ? <<'EOF' : '';
    ratelimit_policy deadopen $http_x_user limit=5 window=1h;
    ratelimit_policy deadclosed $http_x_user limit=5 window=1h;
EOF
    my $dead_locations = $opt{dead} ? <<'EOF' : '';
        location /open/ { ratelimit deadopen; ratelimit_fail open; empty_gif; }
        location /closed/ { ratelimit deadclosed; ratelimit_fail closed;
                            empty_gif; }
EOF
    return ratelimit_http(shards => $opt{ring}, body => <<"EOF");
    ratelimit_policy burst \$http_x_user limit=3 window=1h;
    ratelimit_policy dry \$http_x_user limit=1 window=1h;
$dead_policies
    server {
        listen 127.0.0.1:%PORT%;
        add_header X-Pid \$pid always;

        location /burst/ { ratelimit burst; empty_gif; }
        location /dry/ { ratelimit dry dry_run; empty_gif; }
        location /unnamed/ { ratelimit \$http_x_user; ratelimit_default 1000 1h;
                             empty_gif; }
$dead_locations
        location /metrics { ratelimit_metrics; }
        location /stats { ratelimit_stats; }
        location /admin/limits {
            ratelimit_admin;
            ratelimit_admin_token $token;
        }
    }
EOF
}

my @ring_a = (@live, $dead);
my $node = RLTest::Nginx->start(workers => 2,
                                http => config(ring => \@ring_a, dead => 1));

# values of the header whose Redis key ("$prefix$value") lives on shard $want
# of @$ring
sub values_on_shard {
    my ($ring, $prefix, $want, $n) = @_;
    my @cand = map { unique_key("m$want-$_") } 1 .. 40 * $n;
    my $servers = join ' ', map { "127.0.0.1:$_:1" } @$ring;
    my ($fh, $file) = tempfile(UNLINK => 1);
    print $fh map { "$prefix$_\n" } @cand;
    close $fh;
    my @idx = split /\n/, `build/unit/ketama_route $servers < $file`;
    my @on = map { $cand[$_] } grep { $idx[$_] == $want } 0 .. $#cand;
    return @on[0 .. $n - 1];
}

sub sample_id {
    my ($name, %l) = @_;
    return $name . '{' . join(',', map { "$_=$l{$_}" } sort keys %l) . '}';
}

# the exposition, as prometheus_client reads it
sub parse {
    my ($text) = @_;
    my ($fh, $file) = tempfile(UNLINK => 1);
    print $fh $text;
    close $fh;
    my $json = `/usr/bin/python3 t/lib/prom_parse.py < $file 2>&1`;
    die "prometheus_client refused the exposition: $json\n$text" if $?;
    my $d = decode_json($json);
    my %v;
    for my $s (@{ $d->{samples} }) {
        my ($name, $labels, $value) = @$s;
        $v{ sample_id($name, %$labels) } = $value;
    }
    return { families => $d->{families}, values => \%v, text => $text };
}

sub scrape {
    my $r = $node->get('/metrics');
    die "scrape: $r->{status}\n" unless $r->{status} == 200;
    my $m = parse($r->{content});
    $m->{content_type} = $r->{headers}{'content-type'};
    return $m;
}

sub val {
    my ($m, $name, %l) = @_;
    return $m->{values}{ sample_id($name, %l) };
}

sub outcome {
    my ($m, $policy, $outcome) = @_;
    return val($m, 'nginx_ratelimit_requests_total',
               policy => $policy, outcome => $outcome) // 'absent';
}

sub stats {
    return decode_json($node->get('/stats')->{content});
}

my @outcomes = qw(passed rejected rejected_dry_run failed_open failed_closed);
my @policies = qw(burst dry default deadopen deadclosed);

my $m0 = scrape();
my $s0 = stats();

subtest 'families, types and the content type' => sub {
    is $m0->{content_type}, 'text/plain; version=0.0.4',
        'Content-Type: text/plain; version=0.0.4';

    my %want = (
        nginx_ratelimit_requests => 'counter',
        nginx_ratelimit_cache_entries => 'gauge',
        nginx_ratelimit_cache_evictions => 'counter',
        nginx_ratelimit_rules_version => 'gauge',
        nginx_ratelimit_rules_last_sync_timestamp_seconds => 'gauge',
        nginx_ratelimit_shard_up => 'gauge',
        nginx_ratelimit_shard_commands => 'counter',
        nginx_ratelimit_shard_writes => 'counter',
        nginx_ratelimit_shard_replies => 'counter',
        nginx_ratelimit_shard_failures => 'counter',
        nginx_ratelimit_shard_batches => 'counter',
        nginx_ratelimit_shard_checks => 'counter',
        nginx_ratelimit_shard_check_rtt_seconds => 'histogram',
        map { ("nginx_ratelimit_$_" => 'counter') }
            qw(checks batches allowed denied denied_cached failed_open
               failed_closed redis_commands redis_writes redis_replies
               noscript rule_lookups refunds),
    );
    for my $f (sort keys %want) {
        is $m0->{families}{$f}{type} // 'absent', $want{$f}, "$f is a $want{$f}";
        ok(($m0->{families}{$f}{help} // '') ne '', "$f has a HELP line");
    }
    is scalar(keys %{ $m0->{families} }), scalar(keys %want),
        'no other family';

    # every JSON counter is also a metric (those that move by themselves,
    # the polls' commands, only roughly)
    for my $field (grep { !ref $s0->{$_} } sort keys %$s0) {
        my $v = val($m0, "nginx_ratelimit_${field}_total");
        if ($field =~ /^redis_/) {
            cmp_ok $v, '<=', $s0->{$field},
                "JSON $field is nginx_ratelimit_${field}_total";
        } else {
            is $v, $s0->{$field}, "JSON $field is nginx_ratelimit_${field}_total";
        }
    }

    for my $p (@policies) {
        for my $o (@outcomes) {
            is outcome($m0, $p, $o), 0, "$p $o starts at 0";
        }
    }

    for my $s (map { "127.0.0.1:$_" } @ring_a) {
        ok defined val($m0, 'nginx_ratelimit_shard_up', shard => $s),
            "shard_up of $s";
        ok defined val($m0, 'nginx_ratelimit_shard_check_rtt_seconds_bucket',
                       shard => $s, le => '+Inf'), "rtt +Inf bucket of $s";
    }
    is scalar(grep { /^nginx_ratelimit_shard_up\{/ } keys %{ $m0->{values} }),
        3, 'shard_up for the 3 shards of the ring';
};

my ($burst_user) = values_on_shard(\@ring_a, 'rl:tb:@burst:http_x_user:k:', 0, 1);
my ($dry_user) = values_on_shard(\@ring_a, 'rl:tb:@dry:http_x_user:k:', 1, 1);
my ($open_user) = values_on_shard(\@ring_a, 'rl:tb:@deadopen:http_x_user:k:', 2, 1);
my ($closed_user) = values_on_shard(\@ring_a, 'rl:tb:@deadclosed:http_x_user:k:', 2, 1);
my @unnamed_users = values_on_shard(\@ring_a, 'rl:tb:http_x_user:k:', 1, 2);

sub statuses {
    my ($path, $user, $n) = @_;
    return join ' ', map { $node->get($path, 'X-User' => $user)->{status} } 1 .. $n;
}

my $m1;
subtest 'each outcome moves by the traffic sent' => sub {
    is statuses('/burst/x', $burst_user, 5), '200 200 200 429 429',
        'burst: 3 pass, 2 refused';
    is statuses('/dry/x', $dry_user, 3), '200 200 200', 'dry run: all pass';
    is statuses('/open/x', $open_user, 3), '200 200 200',
        'dead shard, open: all pass';
    is statuses('/closed/x', $closed_user, 2), '503 503',
        'dead shard, closed: 503';
    is join(' ', map { statuses('/unnamed/x', $_, 1) } @unnamed_users),
        '200 200', 'unnamed policy: pass';

    $m1 = scrape();
    my %want = (
        burst => { passed => 3, rejected => 2 },
        dry => { passed => 1, rejected_dry_run => 2 },
        deadopen => { failed_open => 3 },
        deadclosed => { failed_closed => 2 },
        default => { passed => 2 },
    );
    for my $p (@policies) {
        for my $o (@outcomes) {
            my $n = $want{$p}{$o} // 0;
            is outcome($m1, $p, $o) - outcome($m0, $p, $o), $n,
                "$p $o moved by $n";
        }
    }

    # the JSON counters mean the same, summed over the policies
    my $s1 = stats();
    my %sum;
    for my $p (@policies) {
        $sum{$_} += outcome($m1, $p, $_) for @outcomes;
    }
    is $sum{passed}, $s1->{allowed}, 'passed, summed: JSON allowed';
    is $sum{rejected} + $sum{rejected_dry_run}, $s1->{denied},
        'rejected and rejected_dry_run, summed: JSON denied';
    is $sum{failed_open}, $s1->{failed_open}, 'failed_open: JSON failed_open';
    is $sum{failed_closed}, $s1->{failed_closed},
        'failed_closed: JSON failed_closed';
    for my $field (qw(checks batches allowed denied denied_cached failed_open
                      failed_closed noscript rule_lookups refunds)) {
        is val($m1, "nginx_ratelimit_${field}_total"), $s1->{$field},
            "nginx_ratelimit_${field}_total is JSON $field";
    }

    cmp_ok val($m1, 'nginx_ratelimit_cache_entries', cache => 'deny'), '>=', 1,
        'the deny cache holds the refused key';
    cmp_ok val($m1, 'nginx_ratelimit_cache_entries', cache => 'rule'), '>=', 1,
        'the rule cache holds the callers';
    is val($m1, 'nginx_ratelimit_cache_entries', cache => 'deny'),
        $s1->{deny_cache}{entries}, 'deny cache entries: JSON';
};

sub check_histogram {
    my ($m, $shard) = @_;
    my @le = qw(0.00005 0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025
                0.05 0.1 +Inf);
    my @b = map { val($m, 'nginx_ratelimit_shard_check_rtt_seconds_bucket',
                      shard => $shard, le => $_) // -1 } @le;
    my $cumulative = $b[0] >= 0;
    for my $i (1 .. $#b) {
        $cumulative = 0 if $b[$i] < $b[$i - 1];
    }
    ok $cumulative, "$shard: the 12 buckets are there and cumulative (@b)";
    my $count = val($m, 'nginx_ratelimit_shard_check_rtt_seconds_count',
                    shard => $shard);
    is $count, $b[-1], "$shard: _count is the +Inf bucket";
    my $sum = val($m, 'nginx_ratelimit_shard_check_rtt_seconds_sum',
                  shard => $shard);
    return ($count, $sum);
}

subtest 'shards: batches, the round-trip histogram, up and failures' => sub {
    my $batches = 0;
    for my $port (@live) {
        my $s = "127.0.0.1:$port";
        my ($count, $sum) = check_histogram($m1, $s);
        my $b = val($m1, 'nginx_ratelimit_shard_batches_total', shard => $s);
        cmp_ok $b, '>', 0, "$s: batches sent";
        is $count, $b, "$s: _count is the shard's batches ($b)";
        cmp_ok $sum, '>', 0, "$s: _sum is above 0";
        cmp_ok $sum, '<', $count * 1.0, "$s: _sum below 1 s a call (timeout)";
        cmp_ok val($m1, 'nginx_ratelimit_shard_checks_total', shard => $s),
            '>=', $b, "$s: at least a check per batch";
        is val($m1, 'nginx_ratelimit_shard_up', shard => $s), 1, "$s is up";
        is val($m1, 'nginx_ratelimit_shard_failures_total', shard => $s), 0,
            "$s never failed";
        cmp_ok val($m1, 'nginx_ratelimit_shard_replies_total', shard => $s),
            '>=', $b, "$s: replies";
        cmp_ok val($m1, 'nginx_ratelimit_shard_writes_total', shard => $s),
            '>', 0, "$s: writes";
        cmp_ok val($m1, 'nginx_ratelimit_shard_commands_total', shard => $s),
            '>=', val($m1, 'nginx_ratelimit_shard_writes_total', shard => $s),
            "$s: commands at least writes";
        $batches += $b;
    }
    my $d = "127.0.0.1:$dead";

    # the first check for the dead shard may be queued while connecting
    is $batches + val($m1, 'nginx_ratelimit_shard_batches_total', shard => $d),
        val($m1, 'nginx_ratelimit_batches_total'),
        'the shards\' batches add up to the zone\'s';

    is val($m1, 'nginx_ratelimit_shard_up', shard => $d), 0,
        'the dead shard is down';
    cmp_ok val($m1, 'nginx_ratelimit_shard_failures_total', shard => $d),
        '>=', 1, 'the dead shard failed';
    is val($m1, 'nginx_ratelimit_shard_check_rtt_seconds_count', shard => $d),
        0, 'no round trip of the dead shard observed';
};

# a caller's outcome under the default policy: a third of them live on the
# dead shard
sub default_done {
    my ($m) = @_;
    return outcome($m, 'default', 'passed')
           + outcome($m, 'default', 'failed_open');
}

subtest 'counters of every worker are summed' => sub {
    my $before = default_done(scrape());
    my (%pids, $sent);
    for my $round (1 .. 20) {
        my @out = RLTest::Nginx::parallel(4, sub {
            my ($i) = @_;
            my @r;
            for (1 .. 5) {
                my $r = $node->get('/unnamed/x',
                                   'X-User' => unique_key("w$round-$i"));
                push @r, "$r->{status} " . ($r->{headers}{'x-pid'} // '?');
            }
            return @r;
        });
        for (@out) {
            my ($status, $pid) = split ' ';
            $sent++;
            $pids{$pid}++ if $status == 200;
        }
        last if keys %pids >= 2;
    }
    is scalar(keys %pids), 2, 'both workers answered: ' . join ' ', %pids;
    is default_done(scrape()) - $before, $sent,
        "default passed and failed_open moved by all $sent requests, "
        . "whichever worker";
};

my $m2 = scrape();

sub same_counters {
    my ($m, $ref, $what, @shards) = @_;
    for my $p (qw(burst dry default)) {
        for my $o (@outcomes) {
            is outcome($m, $p, $o), outcome($ref, $p, $o), "$what: $p $o kept";
        }
    }
    for my $s (@shards) {
        for my $c (qw(batches checks)) {
            is val($m, "nginx_ratelimit_shard_${c}_total", shard => $s),
               val($ref, "nginx_ratelimit_shard_${c}_total", shard => $s),
               "$what: $s $c kept";
        }
        is val($m, 'nginx_ratelimit_shard_check_rtt_seconds_count', shard => $s),
           val($ref, 'nginx_ratelimit_shard_check_rtt_seconds_count',
               shard => $s),
           "$what: $s round trips kept";
    }
    is val($m, 'nginx_ratelimit_batches_total'),
       val($ref, 'nginx_ratelimit_batches_total'), "$what: zone batches kept";
}

subtest 'a reload keeps every counter' => sub {
    $node->reload(config(ring => \@ring_a, dead => 1));
    my $m = scrape();
    same_counters($m, $m2, 'HUP', map { "127.0.0.1:$_" } @live);
    is outcome($m, 'deadopen', 'failed_open'),
       outcome($m2, 'deadopen', 'failed_open'), 'HUP: deadopen kept';
    is outcome($m, 'deadclosed', 'failed_closed'),
       outcome($m2, 'deadclosed', 'failed_closed'), 'HUP: deadclosed kept';
};

subtest 'a reload that changes the shard list and drops policies' => sub {
    $node->reload(config(ring => \@live, dead => 0));
    my $m = scrape();
    same_counters($m, $m2, 'new ring', map { "127.0.0.1:$_" } @live);

    my $d = "127.0.0.1:$dead";
    ok !defined val($m, 'nginx_ratelimit_shard_up', shard => $d),
        'the removed shard has no up';
    ok !defined val($m, 'nginx_ratelimit_shard_batches_total', shard => $d),
        'nor counters, once its workers are gone';
    is outcome($m, 'deadopen', 'failed_open'), 'absent',
        'a removed policy has no series';
    is scalar(grep { /^nginx_ratelimit_shard_up\{/ } keys %{ $m->{values} }),
        2, 'shard_up for the 2 shards of the ring';
    is val($m, 'nginx_ratelimit_shard_up', shard => "127.0.0.1:$_"), 1,
        "127.0.0.1:$_ is up" for @live;

    is statuses('/unnamed/x', unique_key('after'), 1), '200',
        'a request under the new ring';
    is outcome(scrape(), 'default', 'passed'),
       outcome($m2, 'default', 'passed') + 1, 'counted on top of the old value';
};

subtest 'rules version and last sync' => sub {
    my $m = scrape();
    my $version = val($m, 'nginx_ratelimit_rules_version');
    my $synced = val($m, 'nginx_ratelimit_rules_last_sync_timestamp_seconds');
    cmp_ok abs($synced - time), '<', 30, "last sync is recent ($synced)";

    my $r = $node->request('PUT', '/admin/limits',
                           'Authorization' => "Bearer $token",
                           'Content-Type' => 'application/json',
                           _body => encode_json({ customer_id => unique_key('c'),
                                                  limit => 10, window => 60 }));
    is $r->{status}, 200, 'a rule is put';

    my $now;
    for (1 .. 40) {
        $now = val(scrape(), 'nginx_ratelimit_rules_version');
        last if $now > $version;
        sleep 0.1;
    }
    cmp_ok $now, '>', $version, "rules_version moved ($version -> $now)";
};

subtest 'only GET and HEAD' => sub {
    my $r = $node->request('POST', '/metrics', _body => 'x');
    is $r->{status}, 405, 'POST: 405';
    like $r->{headers}{allow} // '', qr/GET/, 'Allow names GET';
    $r = $node->request('HEAD', '/metrics');
    is $r->{status}, 200, 'HEAD: 200';
    is $r->{content} // '', '', 'HEAD: no body';
};

subtest 'a zone too small for every series: those that fit are counted' => sub {
    my $policies = join '', map {
        "    ratelimit_policy p$_ \$http_x_user limit=10 window=1m;\n"
    } 1 .. 400;
    my $small = RLTest::Nginx->start(workers => 1,
        http => ratelimit_http(zone => '64k', shards => \@live, body => <<"EOF"));
$policies
    server {
        listen 127.0.0.1:%PORT%;
        location /first/ { ratelimit p1; empty_gif; }
        location /last/ { ratelimit p400; empty_gif; }
        location /metrics { ratelimit_metrics; }
    }
EOF
    like $small->error_log,
        qr/\[warn\] .*no room in the zone for the metrics of \d+ shards and policies \(the first: policy "p\d+"\), not counted/,
        'the policies without room are named in one line';
    is scalar(() = $small->error_log =~ /no room in the zone for the metrics/g),
        1, 'one line, not one per policy';

    my $u = unique_key('small');
    is $small->get('/first/x', 'X-User' => $u)->{status}, 200, 'p1 limits';
    is $small->get('/last/x', 'X-User' => $u)->{status}, 200,
        'p400 limits, uncounted';
    my $r = $small->get('/metrics');
    is $r->{status}, 200, 'the scrape answers';
    my $m = parse($r->{content});
    is val($m, 'nginx_ratelimit_requests_total', policy => 'p1',
           outcome => 'passed'), 1, 'p1 counted';
    ok !defined val($m, 'nginx_ratelimit_requests_total', policy => 'p400',
                    outcome => 'passed'), 'p400 has no series';
    is val($m, 'nginx_ratelimit_allowed_total'), 2,
        'the zone counts both checks';

    $small->reload;
    is $small->get('/first/x', 'X-User' => $u)->{status}, 200,
        'after a reload, p1 limits';
    is val(parse($small->get('/metrics')->{content}),
           'nginx_ratelimit_requests_total', policy => 'p1',
           outcome => 'passed'), 2, 'p1 counted on';
    is_deeply [ $small->crashes ], [], 'no crash';
};

is_deeply [ $node->crashes ], [], 'no worker crashed';

done_testing;
