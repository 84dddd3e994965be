#!/usr/bin/perl
# The limiter scripts (lua/check.lua, lua/refund.lua) against a real
# redis-server: decisions, costs, groups, the honesty of the times they
# promise, TTLs, limit changes, bad input, refunds, atomicity; and a fuzz
# with a fake clock (t/lib/check_fuzz.lua) for what real time cannot check
# to the ms.  Contract: lua/README.md.  Small windows keep the whole run to
# a few seconds.

use strict;
use warnings;

use lib 't/lib';
use Digest::SHA qw(sha1_hex);
use POSIX qw(floor ceil);
use Redis;
use RLTest::Redis;
use Test::More;
use Time::HiRes qw(sleep);

# A broken script must fail this test, never hang it.
$SIG{ALRM} = sub { die "timed out\n" };
alarm 120;

my $srv = RLTest::Redis->start;
my $r = Redis->new(server => '127.0.0.1:' . $srv->port, reconnect => 0);

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or die "$path: $!";
    local $/;
    return scalar <$fh>;
}

# The module puts the bounds of a rule (src/rl_rule.h) in front of each
# script, as these lines (ngx_http_ratelimit_handler.c).
sub bounds {
    my $h = slurp('src/rl_rule.h');
    my %d = $h =~ /^#define\s+(RL_RULE_\w+)\s+(\d+)/mg;
    return "local RL_MAX_LIMIT = $d{RL_RULE_MAX_LIMIT}\n"
         . "local RL_MIN_WINDOW_MS = $d{RL_RULE_MIN_WINDOW} * 1000\n"
         . "local RL_MAX_WINDOW_MS = $d{RL_RULE_MAX_WINDOW} * 1000\n";
}

my %body = (check => bounds() . slurp('lua/check.lua'),
            refund => bounds() . slurp('lua/refund.lua'));
my %sha;
for my $script (sort keys %body) {
    $sha{$script} = $r->script_load($body{$script});
    is $sha{$script}, sha1_hex($body{$script}),
        "$script: SCRIPT LOAD gives the sha1 of the bounds and the file";
}

# Several checks in one call, each a hash {key, alg, limit, window, group,
# deadline, cost, mode, field, pfield}: (a list of [allowed, remaining,
# retry, reset, t, rule_limit, rule_window, rule_algorithm, rule_ttl],
# now).
sub rchecks {
    my @c = @_;
    my @res = $r->evalsha($sha{check}, scalar @c, (map { $_->{key} } @c),
        map { ($_->{group} // 1, $_->{deadline} // 0, $_->{alg},
               $_->{limit}, $_->{window}, $_->{cost} // 1, $_->{mode} // 0,
               $_->{field} // '', $_->{pfield} // '') }
            @c);
    die 'reply of ' . @res . ' for ' . @c . " checks\n" unless @res == 9 * @c + 1;
    my $now = pop @res;
    return ([map { [@res[9 * $_ .. 9 * $_ + 8]] } 0 .. $#c], $now);
}

# The same without rule fields: (a list of [allowed, remaining, retry,
# reset, t], now); every check must say its rule was not read (-1, -1, -1,
# -1).
sub checks {
    my ($res, $now) = rchecks(@_);
    for my $c (@$res) {
        my @rule = splice @$c, 5;
        die "rule fields @rule without a field\n" if "@rule" ne '-1 -1 -1 -1';
    }
    return ($res, $now);
}

# One check in a call of its own, without rule fields: (allowed,
# remaining, retry_ms, reset_ms, t_ms, now_ms).  %o: cost (1), mode (0),
# deadline (0), group (1).
sub call {
    my ($alg, $key, $limit, $window, %o) = @_;
    my ($res, $now) = checks({ key => $key, alg => $alg, limit => $limit,
                               window => $window, %o });
    return (@{ $res->[0] }, $now);
}

# refund.lua: (refunded, now); each refund [key, alg, limit, window, cost,
# at].
sub refund {
    my @f = @_;
    return $r->evalsha($sha{refund}, scalar @f, (map { $_->[0] } @f),
                       map { @$_[1 .. 5] } @f);
}

# The server's clock in ms, as the scripts read it.
sub now_ms {
    my ($s, $us) = $r->time;
    return $s * 1000 + floor($us / 1000);
}

sub sleep_ms { sleep($_[0] / 1000) if $_[0] > 0 }

# Sleeps until the server clock reads at least $t.
sub sleep_until {
    my ($t) = @_;
    while ((my $d = $t - now_ms()) > 0) { sleep_ms($d) }
}

# The stored state, decoded: tb is struct.pack('<ddd', ts, u, w), sw is
# struct.pack('<dddd', win, cur, prev, w) (lua/README.md).  undef for a
# value of any other length.
my %layout = (tb => [qw(ts u w)], sw => [qw(win cur prev w)]);
sub state_of {
    my ($key) = @_;
    my ($alg) = $key =~ /^(tb|sw):/ or die "no algorithm in $key";
    my $v = $r->get($key);
    my @f = @{ $layout{$alg} };
    return undef unless defined $v && length($v) == 8 * @f;
    my %h;
    @h{@f} = unpack("d<" . @f, $v);
    return \%h;
}

# Writes a state in the stored layout, keeping the key's TTL.
sub put_state {
    my ($key, $st) = @_;
    my ($alg) = $key =~ /^(tb|sw):/ or die "no algorithm in $key";
    my @f = @{ $layout{$alg} };
    $r->set($key, pack("d<" . @f, @$st{@f}), 'KEEPTTL');
}

# Fires $n calls, returns how many were allowed.
sub burst {
    my ($alg, $key, $limit, $window, $n, %o) = @_;
    my $ok = 0;
    $ok += (call($alg, $key, $limit, $window, %o))[0] for 1 .. $n;
    return $ok;
}

# The token bucket maths, for exact checks: the absolute ms at which a
# caller with stored state $st can take $need units, and at which it is
# full.  The usage u is in 1/W of a token and drains by L per ms: a call
# e ms after ts passes once u - e * L <= (L - need) * W; it is full at
# u - e * L <= 0.  Computed here in 64-bit integers, independently of the
# script's doubles.
sub tb_times {
    my ($st, $L, $W, $need) = @_;
    $need //= 1;
    use integer;
    my $u = $st->{u} > $L * $W ? $L * $W : $st->{u};
    my $first = sub {
        my $over = $u - shift;              # what has to drain, >= 0
        my $e = $over <= 0 ? 0 : ($over + $L - 1) / $L;
        return $st->{ts} + ($e > $W ? $W : $e);
    };
    return ($first->(($L - $need) * $W), $first->(0));
}

# A check decided and never taken: in a group with a check that always
# denies (cost 2 of limit 1), so the group fails and nothing is written
# anywhere.  Returns (allowed, now).
sub probe {
    my ($alg, $key, $limit, $window, $cost) = @_;
    my ($res, $now) = checks(
        { key => $key, alg => $alg, limit => $limit, window => $window,
          cost => $cost },
        { key => 'probe:never', alg => 'tb', limit => 1, window => 1000,
          cost => 2 });
    die "the probe's second check allowed\n" if $res->[1][0];
    return ($res->[0][0], $now);
}

# Probes a check over and over from a little before server ms $at until a
# little after: it must be denied at every ms before $at and allowed at
# every ms from $at on.  Returns the probes that broke that, and the last
# ms probed before $at.
sub watch {
    my ($at, @probe) = @_;
    sleep_until($at - 25);
    my ($wrong, $before) = (0, undef);
    while (1) {
        my ($ok, $now) = probe(@probe);
        if ($now < $at) {
            $wrong++ if $ok;
            $before = $now;
        } else {
            $wrong++ unless $ok;
            last if $now >= $at + 2;
        }
    }
    return ($wrong, $before // 0);
}

my $started = time;

########################################################################
# Token bucket
########################################################################

# limit 5 per 2000 ms: one token back every 400 ms.
{
    my $key = 'tb:basic';
    my ($t0, $t1);
    for my $i (1 .. 5) {
        my @res = call('tb', $key, 5, 2000);
        $t0 //= $res[5];
        $t1 = $res[5];
        is_deeply [@res[0 .. 2]], [1, 5 - $i, 0], "tb: request $i allowed, remaining " . (5 - $i);
        # reset is the time to refill what is used: ~400 ms per token.
        ok $res[3] <= 400 * $i && $res[3] > 400 * $i - 400, "tb: reset $res[3] ms fits $i used tokens";
        # t: one more token than remaining, so the one being refilled.
        my $st = state_of($key);
        my ($more) = tb_times($st, 5, 2000, 5 - $i + 1);
        is $res[4], $more - $res[5], "tb: t $res[4] is exactly when remaining + 1 could pass";
    }
    is $r->type($key), 'string', 'tb: state is one string';
    is length($r->get($key)), 24, 'tb: of 24 bytes';
    my $st = state_of($key);
    is $st->{w}, 2000, 'tb: w is the window it was counted with';
    like $st->{ts}, qr/^\d+$/, 'tb: ts is written as a whole number';
    like $st->{u}, qr/^\d+$/, 'tb: and so is the usage (in 1/W of a token)';
    ok $st->{u} > 4 * 2000 && $st->{u} <= 5 * 2000, "tb: u = $st->{u}: 5 tokens taken, some refilled";
    is $st->{ts}, $t1, 'tb: ts is the server clock the call answered';

    my ($allowed, $remaining, $retry, $reset, $t, $now) = call('tb', $key, 5, 2000);
    is $allowed, 0, 'tb: 6th request denied';
    my ($pass, $full) = tb_times($st, 5, 2000);
    is $retry, $pass - $now, "tb: retry $retry is exactly when the refill reaches 1 token";
    is $reset, $full - $now, "tb: reset $reset is exactly when the bucket is full";
    is $t, $retry, 'tb: t is retry when denied';
    is $remaining, 0, 'tb: nothing remaining when denied';
    ok $retry >= 1 && $retry <= 400, "tb: retry $retry in [1, 400]";
    ok $reset >= $retry && $reset <= 2000, "tb: reset $reset in [retry, window]";
    my $pttl = $r->pttl($key);
    ok $pttl > 0 && $pttl <= 2000, "tb: PTTL $pttl in (0, window]";

    # Denials change nothing: same state, same TTL bound, and after the
    # promised time exactly one request (not fewer) gets through.
    my $last;
    my $denied = 0;
    for (1 .. 50) {
        my @res = call('tb', $key, 5, 2000);
        $denied++ unless $res[0];
        $last = $res[2];
    }
    is $denied, 50, 'tb: 50 hammered requests all denied';
    is_deeply state_of($key), $st, 'tb: denials left the state untouched';
    ok $r->pttl($key) <= $pttl, 'tb: denials did not extend the TTL';
    sleep_ms($last);
    is burst('tb', $key, 5, 2000, 5), 1, 'tb: after retry exactly one more is allowed';

    # Honesty: clearly before the promised time still denied, at it allowed.
    ($allowed, undef, $retry) = call('tb', $key, 5, 2000);
    is $allowed, 0, 'tb: denied again right after';
    ok $retry > 300, "tb: a whole token to wait for ($retry ms)";
    sleep_ms($retry - 120);
    my @early = call('tb', $key, 5, 2000);
    is $early[0], 0, 'tb: 120 ms before retry still denied';
    ok $early[2] >= 1 && $early[2] <= 120, "tb: and the new retry ($early[2]) agrees";
    sleep_ms($early[2]);
    is((call('tb', $key, 5, 2000))[0], 1, 'tb: allowed exactly at retry');
}

# Sleeping exactly retry, over and over, always passes (10 per s).
{
    my $key = 'tb:honest';
    burst('tb', $key, 10, 1000, 10);
    my $pass = 0;
    for (1 .. 5) {
        my @res = call('tb', $key, 10, 1000);
        next if $res[0];
        sleep_ms($res[2]);
        $pass += (call('tb', $key, 10, 1000))[0];
    }
    is $pass, 5, 'tb: 5 of 5 retries at exactly retry allowed';
}

# Refill rate: half a window brings half the tokens back.
{
    my $key = 'tb:refill';
    is burst('tb', $key, 10, 1000, 12), 10, 'tb: a burst of 12 takes the 10 tokens';
    sleep_ms(500);
    my ($allowed, $remaining) = call('tb', $key, 10, 1000);
    ok $allowed && ($remaining == 4 || $remaining == 5),
        "tb: after half a window ~5 tokens are back (remaining $remaining after one)";
    my $more = burst('tb', $key, 10, 1000, 10);
    is $more, $remaining, 'tb: remaining was the truth';
}

# The stored usage is exact: each allowed call leaves precisely
# drain(u, ts' - ts) + one token, nothing rounded (7 per 3 s: a token is
# no whole number of ms, so the usage in tokens has endless fractions).
{
    my $key = 'tb:exact';
    call('tb', $key, 7, 3000);
    my $exact = 0;
    for (1 .. 4) {
        my $st = state_of($key);
        sleep_ms(7);
        call('tb', $key, 7, 3000);
        my $new = state_of($key);
        my $want = $st->{u} - ($new->{ts} - $st->{ts}) * 7 + 3000;
        $exact++ if $new->{u} == $want && $new->{u} % 3000 != 0;
    }
    is $exact, 4, 'tb: stored usage is exact to the 1/W token';
}

# TTL: the key lives until the bucket would be full again, then vanishes.
{
    my $key = 'tb:ttl';
    my @res = call('tb', $key, 10, 1000);
    my $pttl = $r->pttl($key);
    ok $pttl > 0 && $pttl <= 100, "tb: one token used of 10/s: PTTL $pttl in (0, 100]";
    ok $pttl <= $res[3], "tb: PTTL $pttl <= reset $res[3]";
    sleep_ms($pttl + 30);
    is $r->exists($key), 0, 'tb: key gone once the bucket is full again';
    @res = call('tb', $key, 10, 1000);
    is $res[1], 9, 'tb: and it behaves as a fresh key';
}

# Limit change: usage carries over, judged against the new limit.
{
    my $key = 'tb:limit';
    is burst('tb', $key, 5, 2000, 6), 5, 'tb: 5 of 6 allowed at limit 5';
    my @up = call('tb', $key, 10, 2000);
    is $up[0], 1, 'tb: raised to 10: allowed at once';
    is $up[1], 4, 'tb: 6 of 10 used, 4 remaining';
    my $st = state_of($key);
    my @down = call('tb', $key, 3, 2000);
    is $down[0], 0, 'tb: lowered to 3: denied (usage clamped to the full 3)';
    my ($pass) = tb_times($st, 3, 2000);
    is $down[2], $pass - $down[5], "tb: retry $down[2] is exact for the clamped usage";
    ok $down[2] > 500 && $down[2] <= 667, "tb: one token at 3 per 2 s: retry $down[2] in (500, 667]";
    ok $down[3] <= 2000, "tb: reset $down[3] within a window of the new limit";
    sleep_ms($down[2]);
    my @after = call('tb', $key, 3, 2000);
    is_deeply [@after[0, 1]], [1, 0], 'tb: at retry allowed, remaining 0';
}

# Window change: the tokens taken carry over (converted to the new unit,
# rounded up), refilled at the new rate.  (Long windows: the bucket must
# stay empty until the checks are done.)
{
    my $key = 'tb:window';
    is burst('tb', $key, 5, 20000, 5), 5, 'tb: 5 of 5 taken at 5 per 20 s';
    my $st = state_of($key);
    for my $w (40000, 10000) {
        my %conv = (%$st, u => ceil($st->{u} * $w / 20000), w => $w);
        my ($pass, $full) = tb_times(\%conv, 5, $w);
        my @res = call('tb', $key, 5, $w);
        is $res[0], 0, "tb: window now $w ms: still 5 tokens taken, denied";
        is $res[2], $pass - $res[5], "tb: retry $res[2] is one token at 5 per $w ms";
        is $res[3], $full - $res[5], "tb: reset $res[3] is all 5 at 5 per $w ms";
    }
}

########################################################################
# Sliding window counter (W = 1000 ms unless said)
########################################################################

{
    my $W = 1000;
    # Start just after a window edge so the first batch stays in window B0.
    my $b0 = (floor(now_ms() / $W) + 1) * $W;
    sleep_until($b0 + 20);
    my $b1 = $b0 + $W;

    # TTL key first: it should be gone at the end of window B1.
    my @res = call('sw', 'sw:ttl', 5, $W);
    is $res[3], $b0 + 2 * $W - $res[5], "sw: reset $res[3] is the end of the next window";
    my $pttl = $r->pttl('sw:ttl');
    ok $pttl > $W - 100 && $pttl <= 2 * $W, "sw: PTTL $pttl in (W - 100, 2W]: count weighs two windows";

    # Limit 5: counts down, then denied until weight of B0's 5 drops to 4.
    my $key = 'sw:basic';
    for my $i (1 .. 5) {
        my @res = call('sw', $key, 5, $W);
        is_deeply [@res[0 .. 2]], [1, 5 - $i, 0], "sw: request $i allowed, remaining " . (5 - $i);
        is $res[3], $b0 + 2 * $W - $res[5], "sw: reset $res[3] is the end of the next window";
        # (kept from the first request, whose SET PX may have run 1 ms
        # after the TIME its reset was counted from)
        ok $r->pttl($key) <= $res[3] + 1, 'sw: PTTL <= reset (+ 1 ms)';
        # t: remaining + 1 pass in the next window once B0's i weigh
        # little enough: i * (W - e) + (6 - i) * W <= 5 * W, e >= W / i
        # (never for i < 1... always here); never more than a window.
        my $e = ceil($W / $i);
        my $want = $b1 + $e - $res[5];
        $want = $W if $want > $W;
        is $res[4], $want, "sw: t $res[4] is when remaining + 1 pass (or the window)";
    }
    is $r->type($key), 'string', 'sw: state is one string';
    is length($r->get($key)), 32, 'sw: of 32 bytes';
    my $st = state_of($key);
    is_deeply $st, { win => $b0 / $W, cur => 5, prev => 0, w => $W },
        'sw: holding {win, cur, prev, w}';
    @res = call('sw', $key, 5, $W);
    is_deeply [@res[0, 1]], [0, 0], 'sw: 6th request denied, 0 remaining';
    # In B1 the 5 weigh 5*(W-e)/W; 4 + 1 <= 5 first at e = 200.
    my $pass = $b1 + 200;
    is $res[2], $pass - $res[5], "sw: retry $res[2] points at exactly B1 + 200 ms";
    is $res[4], $res[2], 'sw: t is retry when denied';
    my $denied = 0;
    $denied += !(call('sw', $key, 5, $W))[0] for 1 .. 50;
    is $denied, 50, 'sw: 50 hammered requests all denied';
    is_deeply state_of($key), $st, 'sw: denials left the state untouched';

    # Limit change, same window: raised lets through at once, lowered
    # blocks until the estimate is low enough for the new limit.
    my $lk = 'sw:limit';
    is burst('sw', $lk, 5, $W, 6), 5, 'sw: 5 of 6 allowed at limit 5';
    my @up = call('sw', $lk, 10, $W);
    is_deeply [@up[0, 1]], [1, 4], 'sw: raised to 10: allowed at once, 4 remaining';
    my @down = call('sw', $lk, 3, $W);
    is $down[0], 0, 'sw: lowered to 3: denied with 6 counted';
    # Next window: 6*(W-e)/W + 1 <= 3 first at e = ceil(W*2/3) = 667.
    is $down[2], $b1 + 667 - $down[5], "sw: retry $down[2] points at B1 + 667 ms";

    # A count that cannot pass before B0 + 2W: limit 1, one request in B0
    # still weighs all through B1.
    is burst('sw', 'sw:one', 1, $W, 1), 1, 'sw: limit 1: first allowed';
    @res = call('sw', 'sw:one', 1, $W);
    ok !$res[0] && $res[2] == $b0 + 2 * $W - $res[5],
        "sw: limit 1: retry $res[2] points at B0 + 2W";
    is $res[3], $res[2], 'sw: limit 1: and so does reset';
    ok $res[4] > $W, "sw: and t, retry, may be more than a window ($res[4])";

    # Weighting: fill 10 in B0, then see B0's count weigh in B1.
    my $wk = 'sw:weight';
    is burst('sw', $wk, 10, $W, 10), 10, 'sw: 10 of 10 allowed in B0';
    sleep_until($b1 + 50);
    @res = call('sw', $wk, 10, $W);
    is $res[0], 0, 'sw: early in B1 the previous 10 still weigh ~9.5: denied';
    # 10*(W-e)/W + 1 <= 10 first at e = 100.
    is $res[2], $b1 + 100 - $res[5], "sw: retry $res[2] points at B1 + 100 ms, inside B1";
    is $res[3], $b1 + $W - $res[5], 'sw: reset is the end of B1 (nothing counted in B1)';
    sleep_ms($res[2] - 30);
    my @early = call('sw', $wk, 10, $W);
    is $early[0], 0, 'sw: 30 ms before retry still denied';
    sleep_ms($early[2]);
    @res = call('sw', $wk, 10, $W);
    is $res[0], 1, 'sw: allowed at retry';
    my $pttl1 = $r->pttl($wk);
    ok $pttl1 > $W && $pttl1 <= $b1 + 2 * $W - $res[5],
        "sw: the first count in B1 moved the TTL to the end of B2 (PTTL $pttl1)";
    is_deeply state_of($wk), { win => $b1 / $W, cur => 1, prev => 10, w => $W },
        'sw: B0 count rolled into prev';
    # t: remaining + 1 more pass once 10 * (W - e) + (2 + remaining) * W
    # <= 10 * W (remaining 0 at B1 + 100: e >= 200).
    my $at = $b1 + ceil($W - (8 - $res[1]) * $W / 10);
    is $res[4], $at - $res[5], "sw: t $res[4] points at B1 + " . ($at - $b1) . ' ms, when ' . ($res[1] + 1) . ' more pass';

    # Denied ones from B0 were not counted: exactly one passes at B1 + 200.
    sleep_until($pass);
    is burst('sw', $key, 5, $W, 5), 1, 'sw: after retry exactly one more allowed';

    # remaining is floor(L - estimate - 1) with estimate = 10*(W-e)/W + 1.
    sleep_until($b1 + 600);
    @res = call('sw', $wk, 10, $W);
    my $want = floor(10 - (10 * ($W - ($res[5] - $b1)) / $W + 1) - 1);
    ok $res[0] && $res[1] == $want,
        "sw: remaining $res[1] matches the weighted estimate ($want)";
    is burst('sw', $wk, 10, $W, 10), $res[1], 'sw: remaining was the truth';

    # The TTL key vanishes at the end of B1, once its count weighs nothing.
    sleep_until($b0 + 2 * $W + 20);
    is $r->exists('sw:ttl'), 0, 'sw: key gone after both windows passed';
}

# Sleeping exactly retry, over and over, always passes: with limit 3 the
# waits land inside a window (prev weighs less) and in the next one.
{
    my $key = 'sw:honest';
    burst('sw', $key, 3, 1000, 3);
    my ($pass, $waited) = (0, 0);
    for (1 .. 4) {
        my @res = call('sw', $key, 3, 1000);
        next if $res[0];
        sleep_ms($res[2]);
        $waited += $res[2];
        $pass += (call('sw', $key, 3, 1000))[0];
    }
    is $pass, 4, "sw: 4 of 4 retries at exactly retry allowed (${waited} ms)";
}

########################################################################
# Cost
########################################################################

for my $alg (qw(tb sw)) {
    # (a long window: nothing refills meanwhile)
    my $key = "$alg:cost";
    my @res = call($alg, $key, 10, 60000, cost => 5);
    is_deeply [@res[0 .. 2]], [1, 5, 0], "$alg: cost 5 of limit 10: allowed, 5 remaining";
    my $st = state_of($key);
    is $alg eq 'tb' ? $st->{u} : $st->{cur}, $alg eq 'tb' ? 5 * 60000 : 5,
        "$alg: 5 units stored";
    @res = call($alg, $key, 10, 60000, cost => 5);
    is_deeply [@res[0 .. 2]], [1, 0, 0], "$alg: 5 more: allowed, 0 remaining";
    @res = call($alg, $key, 10, 60000, cost => 5);
    is_deeply [@res[0, 1]], [0, 0], "$alg: 5 more: denied";
    ok $res[2] >= 1, "$alg: with a retry ($res[2])";

    # Cost 0: decided as 1, takes nothing.
    my $fresh = "$alg:cost0";
    @res = call($alg, $fresh, 10, 60000, cost => 0);
    is_deeply [@res[0 .. 3]], [1, 10, 0, 0], "$alg: cost 0 on a fresh key: allowed, all 10 remaining, full";
    is $res[4], 60000, "$alg: t is the window: 11 never pass";
    is $r->exists($fresh), 0, "$alg: and nothing is written";
    $st = state_of($key);
    my $pttl = $r->pttl($key);
    my @one = call($alg, $key, 10, 60000, cost => 1);
    @res = call($alg, $key, 10, 60000, cost => 0);
    is $res[0], 0, "$alg: cost 0 on a spent key: denied";
    is $res[2], $one[2] - ($res[5] - $one[5]), "$alg: with the retry of cost 1";
    is_deeply state_of($key), $st, "$alg: the state untouched";
    ok $r->pttl($key) <= $pttl, "$alg: the TTL too";
    call($alg, "$alg:cost0b", 10, 60000, cost => 3);
    @res = call($alg, "$alg:cost0b", 10, 60000, cost => 0);
    is_deeply [@res[0, 1]], [1, 7], "$alg: cost 0 after 3: allowed, 7 remaining";
    is((call($alg, "$alg:cost0b", 10, 60000, cost => 7))[0], 1, "$alg: and 7 do pass");

    # More than the limit never passes: the retry says the window.
    my $big = "$alg:costbig";
    @res = call($alg, $big, 10, 60000, cost => 11);
    is_deeply [@res[0 .. 4]], [0, 10, 60000, 0, 60000],
        "$alg: cost 11 of limit 10: denied, 10 remaining, retry and t the window, full";
    is $r->exists($big), 0, "$alg: nothing written";
    # A denied cost tells what does remain.
    call($alg, $big, 10, 60000, cost => 7);
    @res = call($alg, $big, 10, 60000, cost => 4);
    is_deeply [@res[0, 1]], [0, 3], "$alg: cost 4 with 3 left: denied, remaining 3";
}

# The retry of a cost above 1 is honest: from retry on it passes, and at
# none of the ms before (probed without taking anything).
{
    # 10 per second, all taken: 4 units back after 400 ms.
    my $key = 'tb:costretry';
    burst('tb', $key, 10, 1000, 1, cost => 10);
    my $st = state_of($key);
    my @res = call('tb', $key, 10, 1000, cost => 4);
    is $res[0], 0, 'tb: cost 4 with all taken: denied';
    my ($pass) = tb_times($st, 10, 1000, 4);
    is $res[2], $pass - $res[5], "tb: retry $res[2] is exactly when 4 have refilled";
    my ($wrong, $before) = watch($res[5] + $res[2], 'tb', $key, 10, 1000, 4);
    is $wrong, 0, 'tb: cost 4 denied before retry, allowed from it on (probed each ms)';
    cmp_ok $before, '>=', $res[5] + $res[2] - 3, "tb: probed up to the last ms before (" . ($res[5] + $res[2] - $before) . ' ms before)';
}

{
    my $W = 1000;
    my $key = 'sw:costretry';
    # 10 in B0; in B1 the 10 weigh 10 * (W - e) / W, and 4 pass once that
    # is <= 6: e >= 400.
    my $b0 = (floor(now_ms() / $W) + 1) * $W;
    sleep_until($b0 + 10);
    burst('sw', $key, 10, $W, 1, cost => 10);
    my @res = call('sw', $key, 10, $W, cost => 4);
    is $res[0], 0, 'sw: cost 4 with 10 of 10 counted: denied';
    is $res[2], $b0 + $W + 400 - $res[5], "sw: retry $res[2] points at B1 + 400 ms";
    my ($wrong, $before) = watch($b0 + $W + 400, 'sw', $key, 10, $W, 4);
    is $wrong, 0, 'sw: cost 4 denied before retry, allowed from it on (probed each ms)';
    cmp_ok $before, '>=', $b0 + $W + 400 - 3, 'sw: probed up to the last ms before';
}

# t: after t_ms more than remaining units pass, not before.
{
    # 10 per second, 7 taken: remaining 3; a 4th unit is back once 0.x of
    # a token has drained.
    my $key = 'tb:t';
    my @res = call('tb', $key, 10, 1000, cost => 7);
    is_deeply [@res[0 .. 2]], [1, 3, 0], 'tb: 7 of 10 taken, 3 remaining';
    my $st = state_of($key);
    my ($more) = tb_times($st, 10, 1000, 4);
    is $res[4], $more - $res[5], "tb: t $res[4] is exactly when 4 pass";
    ok $res[4] >= 1 && $res[4] <= 1000, 'tb: within the window';
    my ($wrong, $before) = watch($res[5] + $res[4], 'tb', $key, 10, 1000, 4);
    is $wrong, 0, 'tb: remaining + 1 pass from t on, and not before (probed each ms)';
    cmp_ok $before, '>=', $res[5] + $res[4] - 3, 'tb: probed up to the last ms before';
}

{
    my $W = 1000;
    my $key = 'sw:t';
    # 8 in B0; early in B1 one more is taken: the 8 weigh 8 * (W - e) / W,
    # so remaining is floor(10 - 1 - 8 * (W - e) / W) and one more passes
    # once 8 * (W - e) + (2 + remaining) * W <= 10 * W.
    my $b0 = (floor(now_ms() / $W) + 1) * $W;
    sleep_until($b0 + 10);
    burst('sw', $key, 10, $W, 1, cost => 8);
    sleep_until($b0 + $W + 100);
    my @res = call('sw', $key, 10, $W);
    is $res[0], 1, 'sw: 1 more early in B1: allowed';
    my $e = $res[5] - $b0 - $W;
    my $rem = floor((10 * $W - 8 * ($W - $e)) / $W) - 1;
    is $res[1], $rem, "sw: remaining $rem";
    my $at = $b0 + $W + ceil($W - (10 - 2 - $rem) * $W / 8);
    is $res[4], $at - $res[5], "sw: t $res[4] is exactly when " . ($rem + 1) . ' pass';
    my ($wrong, $before) = watch($at, 'sw', $key, 10, $W, $rem + 1);
    is $wrong, 0, 'sw: remaining + 1 pass from t on, and not before (probed each ms)';
    cmp_ok $before, '>=', $at - 3, 'sw: probed up to the last ms before';
}

# t is never more than the window (limit 1: remaining 0, the next one in
# the window after next).
for my $alg (qw(tb sw)) {
    my @res = call($alg, "$alg:tmax", 1, 1000);
    ok $res[0] && $res[4] >= 1 && $res[4] <= 1000, "$alg: limit 1: t $res[4] within the window";
}

########################################################################
# Both
########################################################################

# Garbled state is a fresh key; a garbled key is rewritten cleanly.  Each
# case starts from a full bucket / window (3 of 3), so a garbled state that
# were taken at face value would mostly be denied.
my $inf = 9**9**9;
my $nan = $inf - $inf;
for my $case (['tb', 'banana'], ['tb', 'x' x 24], ['tb', 'x' x 25],
              ['tb', u => $nan], ['tb', ts => $inf], ['tb', u => -3000],
              ['tb', u => 1e17], ['tb', u => 100000.5],
              ['tb', ts => 99999999999999999], ['tb', ts => sub { $_[0] + 0.5 }],
              ['tb', w => 999], ['tb', w => $nan], ['tb', w => 1000.5],
              ['sw', 'x'], ['sw', 'x' x 32], ['sw', win => 1e300],
              ['sw', win => sub { $_[0] + 2 }], ['sw', win => -1],
              ['sw', prev => -1], ['sw', cur => 2.5], ['sw', cur => $nan],
              ['sw', cur => 2e9], ['sw', w => 999], ['sw', w => 30000]) {
    my ($alg, $field, $value) = @$case;
    my $key = "$alg:garbled";
    $r->del($key);
    burst($alg, $key, 3, 60000, 3);
    my $what;
    if (defined $value) {
        my $st = state_of($key);
        $st->{$field} = ref $value ? $value->($st->{$field}) : $value;
        $what = "$field = $st->{$field}";
        put_state($key, $st);
    } else {
        $r->set($key, $field, 'KEEPTTL');
        $what = "the value '$field'";
    }
    my @res = call($alg, $key, 3, 60000);
    is_deeply [@res[0, 1]], [1, 2], "$alg: $what is read as a fresh key";
    my $st = state_of($key);
    ok $st && !grep({ !($_ >= 0 && $_ < 1e17 && $_ == int $_) } values %$st)
              && $st->{w} == 60000,
        "$alg: and the key is rewritten cleanly";
    ok $r->pttl($key) > 0, "$alg: with a TTL";
    my $v = $r->get($key);
    $r->set($key, substr($v, 0, length($v) - 8), 'KEEPTTL');
    is((call($alg, $key, 3, 60000))[1], 2, "$alg: truncated value: fresh key");
}

# A hash left by the previous version of the scripts (fields of the old
# layout) carries on: judged as before, replaced by the string at the next
# allowed request; a garbled one is a fresh key.  Any other type is Redis's
# WRONGTYPE error, and the key is left alone.  (The old hashes here have no
# TTL, so the one found afterwards must have been set by the new script.)
{
    my $now = now_ms();
    $r->del('tb:old');
    $r->hset('tb:old', used => 3, ts => $now);
    my @res = call('tb', 'tb:old', 3, 60000);
    is $res[0], 0, 'tb: an old hash {used, ts} with the bucket empty: denied';
    is $res[2], $now + 20000 - $res[5], "tb: retry $res[2] is one token at 3 per minute from its ts";
    is $r->type('tb:old'), 'hash', 'tb: the denial wrote nothing';
    $r->hset('tb:old', used => 1.5);
    @res = call('tb', 'tb:old', 3, 60000);
    is_deeply [@res[0, 1]], [1, 0], 'tb: used = 1.5 of 3 carries on: allowed, 0 remaining';
    is $r->type('tb:old'), 'string', 'tb: and the hash is replaced';
    my $st = state_of('tb:old');
    ok $st->{u} > 2.4 * 60000 && $st->{u} <= 2.5 * 60000, "tb: by 2.5 tokens ($st->{u})";
    my $pttl = $r->pttl('tb:old');
    ok $pttl > 0 && $pttl <= $res[3], "tb: with the TTL of its reset ($pttl)";

    $r->del('sw:old');
    my $idx = floor(now_ms() / 60000);
    $r->hset('sw:old', win => $idx, cur => 3, prev => 0, w => 60000);
    @res = call('sw', 'sw:old', 3, 60000);
    is $res[0], 0, 'sw: an old hash {win, cur, prev, w} with 3 of 3: denied';
    is $r->type('sw:old'), 'hash', 'sw: the denial wrote nothing';
    $r->hset('sw:old', cur => 1);
    @res = call('sw', 'sw:old', 3, 60000);
    is_deeply [@res[0, 1]], [1, 1], 'sw: cur = 1 of 3 carries on: allowed, 1 remaining';
    if (floor($res[5] / 60000) == $idx) {
        is_deeply state_of('sw:old'), { win => $idx, cur => 2, prev => 0, w => 60000 },
            'sw: and the hash is replaced';
    } else {
        pass 'sw: (crossed a window edge, state not compared)';
    }
    $pttl = $r->pttl('sw:old');
    ok $pttl > 0 && $pttl <= $res[3], "sw: with the TTL of the end of the next window ($pttl)";

    # Among other checks (one MGET for all, which tells nothing about a
    # hash): the same.
    $r->del('tb:old2', 'sw:old2', 'tb:new2');
    $r->hset('tb:old2', used => 3, ts => now_ms());
    $r->hset('sw:old2', win => floor(now_ms() / 60000), cur => 1, prev => 0, w => 60000);
    my ($res) = checks({ key => 'tb:new2', alg => 'tb', limit => 3, window => 60000, group => 1 },
                       { key => 'tb:old2', alg => 'tb', limit => 3, window => 60000, group => 2 },
                       { key => 'sw:old2', alg => 'sw', limit => 3, window => 60000, group => 3 });
    is_deeply [map { @$_[0, 1] } @$res], [1, 2, 0, 0, 1, 1],
        'several checks: a new key, an old tb hash (empty bucket), an old sw hash (1 of 3)';
    is $r->type('tb:old2'), 'hash', 'several checks: the denied old hash stays';
    is $r->type('sw:old2'), 'string', 'several checks: the allowed one is replaced';

    for my $alg (qw(tb sw)) {
        my $key = "$alg:oldbad";
        $r->del($key);
        $r->hset($key, ($alg eq 'tb' ? 'used' : 'cur'), 'banana');
        my @res = call($alg, $key, 3, 60000);
        is_deeply [@res[0, 1]], [1, 2], "$alg: a garbled old hash is a fresh key";
        is $r->type($key), 'string', "$alg: and is replaced";

        $key = "$alg:list";
        $r->del($key);
        $r->rpush($key, 'x');
        eval { call($alg, $key, 3, 60000) };
        like $@, qr/WRONGTYPE/, "$alg: a list under the key is Redis's WRONGTYPE error";
        is $r->type($key), 'list', "$alg: and is left alone";
        # among others: nothing of the call is written
        $r->del("$alg:beside");
        eval { checks({ key => "$alg:beside", alg => $alg, limit => 3, window => 60000, group => 1 },
                      { key => $key, alg => $alg, limit => 3, window => 60000, group => 2 }) };
        like $@, qr/WRONGTYPE/, "$alg: a list among several keys: WRONGTYPE";
        is $r->exists("$alg:beside"), 0, "$alg: and the check before it wrote nothing";
    }
}

# Bad arguments: a Redis error, and nothing written anywhere.
{
    # [what is wrong, the error, the 9 arguments]
    my @ok = (1, 0, 'tb', 5, 1000, 1, 0, '', '');
    my @cases;
    for my $limit ('0', '-1', '1.5', 'abc', '', '1000000001', '1e3', ' 5') {
        push @cases, ["limit '$limit'", 'bad limit', 3, 0, 'tb', $limit, 1000, 1, 0, '', ''];
    }
    for my $window ('999', '86400001', '1000.0', 'x', '-1000', '') {
        push @cases, ["window '$window'", 'bad window', 3, 0, 'sw', 5, $window, 1, 0, '', ''];
    }
    for my $cost ('-1', '1.5', '1000000001', 'x', '', ' 1') {
        push @cases, ["cost '$cost'", 'bad cost', 3, 0, 'tb', 5, 1000, $cost, 0, '', ''];
    }
    for my $alg ('', 'TB', 'fixed', 'tb ') {
        push @cases, ["algorithm '$alg'", 'bad algorithm', 3, 0, $alg, 5, 1000, 1, 0, '', ''];
    }
    for my $mode ('', '2', '01', 'dry') {
        push @cases, ["mode '$mode'", 'bad mode', 3, 0, 'tb', 5, 1000, 1, $mode, '', ''];
    }
    for my $d ('-1', '1e3', 'x', '') {
        push @cases, ["deadline '$d'", 'bad deadline', 3, $d, 'tb', 5, 1000, 1, 0, '', ''];
    }
    for my $g ('', 'a', '-1', '1.0') {
        push @cases, ["group '$g'", 'bad group', $g, 0, 'tb', 5, 1000, 1, 0, '', ''];
    }
    # a policy field without the customer's field
    push @cases, ["policy field without a field", 'bad rule field', 3, 0, 'tb', 5, 1000, 1, 0, '', "acme\x1fburst"];
    my $k = 0;
    for my $case (@cases) {
        my ($what, $err, @args) = @$case;
        # the bad check third (a group of its own), after two that would
        # be allowed
        $k++;
        my @keys = ("tb:bad:$k:1", "tb:bad:$k:2", "tb:bad:$k:3");
        eval { $r->evalsha($sha{check}, 3, @keys, @ok, 2, 0, 'tb', 5, 1000, 1, 0, '', '', @args) };
        like $@, qr/ERR ratelimit: \Q$err\E \(check 3\)/, "$what is an error naming check 3";
        is $r->exists(@keys), 0, "$what: nothing written";
    }
    my @bad = (
        ['no key', 'need 1 to 1024 keys', 0],
        ['1025 keys', 'need 1 to 1024 keys', 1025, (map { "tb:many:$_" } 1 .. 1025), (@ok) x 1025],
        ['7 arguments (the contract before rule fields)', 'need 9 arguments per key', 1, 'tb:bad:n', @ok[0 .. 6]],
        ['8 arguments', 'need 9 arguments per key', 1, 'tb:bad:n', @ok[0 .. 7]],
        ['10 arguments', 'need 9 arguments per key', 1, 'tb:bad:n', @ok, 1],
        ['a group not adjacent', 'group not adjacent \(check 3\)', 3, 'tb:bad:a1', 'tb:bad:a2', 'tb:bad:a3',
         @ok, 2, @ok[1 .. 8], @ok],
        ['deadlines differing within a group', 'deadline differs within the group \(check 2\)', 2,
         'tb:bad:d1', 'tb:bad:d2', @ok, 1, now_ms() + 5000, @ok[2 .. 8]],
    );
    for my $case (@bad) {
        my ($what, $err, @args) = @$case;
        eval { $r->evalsha($sha{check}, @args) };
        like $@, qr/ERR ratelimit: $err/, "$what is an error";
    }
    my @written = ($r->keys('tb:bad:*'), $r->keys('tb:many:*'));
    is scalar(@written), 0, 'and none of them wrote anything';
    # equal deadlines in other spellings are equal
    my $d = now_ms() + 5000;
    my ($res) = checks({ key => 'tb:dl1', alg => 'tb', limit => 3, window => 1000, deadline => $d },
                       { key => 'tb:dl2', alg => 'tb', limit => 3, window => 1000, deadline => "0$d" });
    is_deeply [map { $_->[0] } @$res], [1, 1], 'a deadline written with a leading 0 is the same deadline';

    for my $alg (qw(tb sw)) {
        my @res = call($alg, "$alg:edge", 1000000000, 86400000, cost => 1000000000);
        is_deeply [@res[0, 1]], [1, 0], "$alg: the largest limit, window and cost are accepted";
        @res = call($alg, "$alg:edge2", 1, 1000);
        is_deeply [@res[0 .. 2]], [1, 0, 0], "$alg: the smallest too";
    }
    my @n = (1024, (map { "tb:k1024:$_" } 1 .. 1024),
             map { ($_, 0, 'tb', 1, 1000, 1, 0, '', '') } 1 .. 1024);
    my @res = $r->evalsha($sha{check}, @n);
    is scalar(@res), 9 * 1024 + 1, '1024 checks: 9217 numbers';
    is scalar(grep { $res[9 * $_] == 1 } 0 .. 1023), 1024, '1024 checks: all allowed';
}

# After a NOSCRIPT (script cache flushed), EVAL of the body does the same.
{
    $r->script_flush;
    eval { call('tb', 'tb:eval', 2, 1000) };
    like $@, qr/NOSCRIPT/, 'NOSCRIPT after SCRIPT FLUSH';
    for my $alg (qw(tb sw)) {
        my @ok = map { ($r->eval($body{check}, 1, "$alg:eval", 1, 0, $alg, 2, 1000, 1, 0, '', ''))[0] } 1 .. 3;
        is_deeply \@ok, [1, 1, 0], "$alg: EVAL allows 2 of 3";
    }
    my @rf = $r->eval($body{refund}, 1, 'tb:eval', 'tb', 2, 1000, 1, now_ms());
    is $rf[0], 1, 'refund: EVAL gives back';
    $sha{$_} = $r->script_load($body{$_}) for keys %body;
}

# Atomicity: 8 processes x 200 calls on one key, limit 100, long window.
sub race {
    my ($procs, $work) = @_;
    my @kids;
    for my $k (1 .. $procs) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if (!$pid) {
            # _exit: the child must not run the END block that stops redis.
            my $n = eval {
                my $c = Redis->new(server => '127.0.0.1:' . $srv->port, reconnect => 0);
                $work->($c, $k);
            };
            POSIX::_exit(defined $n ? $n : 255);
        }
        push @kids, $pid;
    }
    my ($total, $failed) = (0, 0);
    for my $pid (@kids) {
        waitpid($pid, 0);
        my $n = $? >> 8;
        if ($? & 127 || $n == 255) { $failed++ } else { $total += $n }
    }
    return ($total, $failed);
}

for my $alg (qw(tb sw)) {
    my $key = "$alg:race";
    my ($total, $failed) = race(8, sub {
        my ($c) = @_;
        my $ok = 0;
        for (1 .. 200) {
            my @res = $c->evalsha($sha{check}, 1, $key, 1, 0, $alg, 100, 86400000, 1, 0, '', '');
            $ok += $res[0];
            die "bad denial\n" if !$res[0] && $res[2] < 1;
        }
        return $ok;
    });
    is $failed, 0, "$alg: 8 racing processes ran cleanly";
    is $total, 100, "$alg: exactly 100 of 1600 concurrent requests allowed";
}

# Groups of two (limits 50 and 30) from 8 processes, 200 groups in all:
# exactly 30 pass, and the 50 counts exactly those 30.
for my $alg (qw(tb sw)) {
    my ($k50, $k30) = ("$alg:race50", "$alg:race30");
    my ($total, $failed) = race(8, sub {
        my ($c) = @_;
        my $ok = 0;
        for my $i (1 .. 25) {
            my @res = $c->evalsha($sha{check}, 2, $k50, $k30,
                                  $i, 0, $alg, 50, 86400000, 1, 0, '', '',
                                  $i, 0, $alg, 30, 86400000, 1, 0, '', '');
            $ok++ if $res[0] == 1 && $res[9] == 1;
        }
        return $ok;
    });
    is $failed, 0, "$alg: 8 processes sending groups ran cleanly";
    is $total, 30, "$alg: exactly 30 of 200 concurrent groups passed";
    my @res = call($alg, $k50, 50, 86400000, cost => 0);
    is $res[1], 20, "$alg: and the limit of 50 has exactly 20 left";
    if ($alg eq 'sw') {
        my $st = state_of($k50);
        is $st->{cur} + $st->{prev}, 30, 'sw: 30 counted';
    }
}

# The deadline: a group run after it (a stalled server woke up, a long
# queue) counts nothing and says so with allowed -1; every answer ends with
# the server's clock, from which edge nodes learn the deadline to send.
for my $alg (qw(tb sw)) {
    my $key = "$alg:deadline:$$";
    $r->del($key);
    my $t0 = now_ms();
    my @raw = $r->evalsha($sha{check}, 1, $key, 1, $t0 - 1, $alg, 5, 60000, 1, 0, '', '');
    is scalar @raw, 10, "$alg: a late check answers 10 elements";
    is_deeply [@raw[5 .. 8]], [-1, -1, -1, -1], "$alg: ... its rule not read";
    my @late = call($alg, $key, 5, 60000, deadline => $t0 - 1);
    is_deeply [@late[0 .. 4]], [-1, 0, 0, 0, 0], "$alg: a check past its deadline is refused with -1";
    cmp_ok $late[5], '>=', $t0, "$alg: ... and tells the server's clock";
    is $r->exists($key), 0, "$alg: ... and counts nothing";

    my @ok = call($alg, $key, 5, 60000, deadline => now_ms() + 5000);
    is_deeply [@ok[0, 1]], [1, 4], "$alg: a check before its deadline counts";
    my $t1 = now_ms();
    cmp_ok abs($ok[5] - $t1), '<=', 1000, "$alg: its clock is the server's";

    my @none = call($alg, $key, 5, 60000, deadline => 0);
    is $none[0], 1, "$alg: deadline 0 means none";

    my $err = eval { call($alg, $key, 5, 60000, deadline => '1e3'); 1 } ? '' : $@;
    like $err, qr/bad deadline/, "$alg: a deadline that is not digits is refused";
}

# Per group: a late group is skipped whole, the others run.
{
    my $t0 = now_ms();
    $r->del(qw(tb:dg1 sw:dg2 tb:dg3));
    my ($res) = checks({ key => 'tb:dg1', alg => 'tb', limit => 5, window => 60000, group => 1, deadline => $t0 - 1 },
                       { key => 'sw:dg2', alg => 'sw', limit => 5, window => 60000, group => 1, deadline => $t0 - 1 },
                       { key => 'tb:dg3', alg => 'tb', limit => 5, window => 60000, group => 2, deadline => $t0 + 5000 },
                       { key => 'tb:dg1', alg => 'tb', limit => 5, window => 60000, group => 3 });
    is_deeply [map { $_->[0] } @$res], [-1, -1, 1, 1], 'a late group: -1 for both its checks; the next groups run';
    is_deeply $res->[0], [-1, 0, 0, 0, 0], 'a late check answers only -1';
    is $r->exists('sw:dg2'), 0, 'the late group wrote nothing';
    is $res->[3][1], 4, 'a later group on the same key counts from the stored state';
}

########################################################################
# Groups
########################################################################

# All or nothing: one enforced denial and none of the group is written, to
# the byte and the ms of TTL; the checks that allowed tell what remains.
for my $alg (qw(tb sw)) {
    my ($a, $b, $c) = map { "$alg:grp:$_" } 1 .. 3;
    $r->del($a, $b, $c);
    call($alg, $a, 10, 60000, cost => 4);
    call($alg, $b, 3, 60000, cost => 3);
    my %before = map { ($_ => $r->get($_)) } $a, $b;
    my %ttl = map { ($_ => $r->pexpiretime($_)) } $a, $b;
    my ($res) = checks({ key => $a, alg => $alg, limit => 10, window => 60000, cost => 2 },
                       { key => $b, alg => $alg, limit => 3, window => 60000, cost => 1 },
                       { key => $c, alg => $alg, limit => 5, window => 60000, cost => 1 });
    is_deeply [map { $_->[0] } @$res], [1, 0, 1], "$alg: group: the check on the spent key denies";
    is $r->get($a), $before{$a}, "$alg: group failed: the allowed check's key is untouched, byte for byte";
    is $r->pexpiretime($a), $ttl{$a}, "$alg: and so is its TTL";
    is $r->get($b), $before{$b}, "$alg: the denied one too";
    is $r->exists($c), 0, "$alg: and a fresh key is not even created";
    is $res->[0][1], 6, "$alg: the allowed check tells remaining without its cost (6)";
    is $res->[2][1], 5, "$alg: on the fresh key: 5";
    is $res->[0][2], 0, "$alg: retry 0 for the allowed";
    ok $res->[0][4] >= 1 && $res->[0][4] <= 60000, "$alg: t within the window";

    # a dry-run denial does not fail its group, and is not written
    %before = map { ($_ => $r->get($_)) } $a, $b;
    ($res) = checks({ key => $a, alg => $alg, limit => 10, window => 60000, cost => 2 },
                    { key => $b, alg => $alg, limit => 3, window => 60000, cost => 1, mode => 1 },
                    { key => $c, alg => $alg, limit => 5, window => 60000, cost => 1, mode => 1 });
    is_deeply [map { @$_[0, 1] } @$res], [1, 4, 0, 0, 1, 4],
        "$alg: dry-run denial: the group passes, the dry-run allowed one counts too";
    is $r->get($b), $before{$b}, "$alg: the dry-run denial wrote nothing";
    ok $r->get($a) ne $before{$a}, "$alg: the enforced check was written";
    my $st = state_of($c);
    is $alg eq 'tb' ? $st->{u} : $st->{cur}, $alg eq 'tb' ? 60000 : 1,
        "$alg: and the allowed dry-run one";
    is((call($alg, $a, 10, 60000, cost => 0))[1], 4, "$alg: 4 left on the first key, as said");
}

# Two groups in one call: the second sees what the first took; the same
# key twice in one group: the second check sees the first.
for my $alg (qw(tb sw)) {
    my ($a, $b) = map { "$alg:two:$_" } 1 .. 2;
    $r->del($a, $b);
    my ($res) = checks({ key => $a, alg => $alg, limit => 5, window => 60000, cost => 3, group => 7 },
                       { key => $a, alg => $alg, limit => 5, window => 60000, cost => 3, group => 8 },
                       { key => $b, alg => $alg, limit => 5, window => 60000, cost => 1, group => 8 },
                       { key => $a, alg => $alg, limit => 5, window => 60000, cost => 2, group => 9 });
    is_deeply [map { @$_[0, 1] } @$res], [1, 2, 0, 2, 1, 5, 1, 0],
        "$alg: two groups: 3 of 5 taken, then 3 more denied (2 left; the other key untaken), then 2 taken";
    is $r->exists($b), 0, "$alg: the denied group wrote nothing";
    is((call($alg, $a, 5, 60000, cost => 0))[0], 0, "$alg: all 5 are taken");

    my $k = "$alg:twice";
    $r->del($k);
    ($res) = checks({ key => $k, alg => $alg, limit => 5, window => 60000, cost => 3 },
                    { key => $k, alg => $alg, limit => 5, window => 60000, cost => 2 });
    is_deeply [map { @$_[0, 1] } @$res], [1, 2, 1, 0], "$alg: the same key twice: 3, then 2 of the 2 left";
    is((call($alg, $k, 5, 60000, cost => 0))[0], 0, "$alg: both were written: 5 of 5");
    $r->del($k);
    ($res) = checks({ key => $k, alg => $alg, limit => 5, window => 60000, cost => 3 },
                    { key => $k, alg => $alg, limit => 5, window => 60000, cost => 3 });
    is_deeply [map { @$_[0, 1] } @$res], [1, 5, 0, 2], "$alg: twice, 3 and 3 of 5: the second denied, the first not taken";
    is $r->exists($k), 0, "$alg: nothing written";
}

########################################################################
# Rules read by the script (the fields of rl:rules, when the node's cache
# does not know the rule)
########################################################################

# How many times Redis ran a command, scripts' calls included.
sub cmd_calls {
    my ($cmd) = @_;
    my $line = $r->info('commandstats')->{"cmdstat_$cmd"} // '';
    return $line =~ /\bcalls=(\d+)/ ? $1 : 0;
}

# The rule a check answered: "limit window algorithm".
sub rule_of { my ($c) = @_; return "@$c[5 .. 7]" }

my $US = "\x1f";

# The policy's rule beats the customer's, which beats the passed default;
# the rule's window is in seconds, its limit and window replace those
# passed.
{
    $r->del('rl:rules');
    $r->hset('rl:rules', 'acme', '5 10 60 -', "acme${US}burst", '6 3 60 -');
    $r->del(map { "tb:rule:$_" } 1 .. 4);
    my ($res) = rchecks(
        { key => 'tb:rule:1', alg => 'tb', limit => 100, window => 1000, group => 1,
          field => 'acme', pfield => "acme${US}burst" },
        { key => 'tb:rule:2', alg => 'tb', limit => 100, window => 1000, group => 2,
          field => 'acme', pfield => "acme${US}daily" },
        { key => 'tb:rule:3', alg => 'tb', limit => 100, window => 1000, group => 3,
          field => 'acme' },
        { key => 'tb:rule:4', alg => 'tb', limit => 100, window => 1000, group => 4,
          field => 'nobody', pfield => "nobody${US}burst" });
    is rule_of($res->[0]), '3 60 0', "the policy's rule is read (3 per 60 s, no algorithm)";
    is_deeply [@{ $res->[0] }[0, 1, 3]], [1, 2, 20000],
        "and decides: 2 of 3 remaining, full again in 60 s / 3";
    is state_of('tb:rule:1')->{w}, 60000, 'counted in the rule\'s window (ms)';
    is rule_of($res->[1]), '10 60 0', "a policy without a rule: the customer's";
    is $res->[1][1], 9, 'and decides with it: 9 of 10';
    is rule_of($res->[2]), '10 60 0', "no policy field (HGET): the customer's";
    is $res->[2][1], 9, 'and decides with it';
    is rule_of($res->[3]), '0 0 0', 'no rule at all: 0 0 0';
    is $res->[3][1], 99, 'and the limit passed applies: 99 of 100';
    is state_of('tb:rule:4')->{w}, 1000, 'in the window passed';
}

# Deleted ("<stamp> -") and undone ("<stamp> ~<body>") values, as
# ngx_http_ratelimit_rule_parse reads them: a deleted policy rule falls
# back to the customer's; "~-" is deleted too; "~<rule>" is that rule.
{
    $r->del('rl:rules');
    $r->hset('rl:rules',
             'c1', '4 10 60 -', "c1${US}p", '7 -',
             'c2', '4 ~-', "c2${US}p", '9 ~4 60 -',
             'c3', '2 ~8 60 -', "c3${US}p", '8 ~-',
             'c4', '12 -');
    my @cases = (['c1', "c1${US}p", '10 60 0', 'a deleted policy rule: the customer\'s'],
                 ['c2', "c2${US}p", '4 60 0', 'an undone policy rule: the rule it went back to'],
                 ['c2', '', '0 0 0', '"~-": undone back to deleted, no rule'],
                 ['c3', "c3${US}p", '8 60 0', '"~-" for the policy: the customer\'s, itself undone back to'],
                 ['c4', "c4${US}p", '0 0 0', 'a deleted customer, no policy rule: none']);
    my $k = 0;
    for my $case (@cases) {
        my ($f, $pf, $want, $what) = @$case;
        $k++;
        $r->del("sw:del:$k");
        my ($res) = rchecks({ key => "sw:del:$k", alg => 'sw', limit => 50, window => 1000,
                              field => $f, pfield => $pf });
        is rule_of($res->[0]), $want, $what;
        my ($limit) = split / /, $want;
        is $res->[0][1], ($limit || 50) - 1, "... and decides with it";
    }
}

# Garbled and out-of-bounds values are no rule (a garbled policy rule falls
# back to the customer's); the edges of what the C side takes are rules.
{
    my @none = ('', 'abc', '5', '5 ', '5 10 60', '5 10 60 TB', '5 10 60 - ',
                '5 10 60 token_bucket ', ' 5 10 60 -', '5  10 60 -', '5 ~~10 60 -',
                '5 ~ 10 60 -', '5 -10 60 -', '-5 10 60 -', 'x5 10 60 -', "5 10 60 -\n",
                "5 10 60 -\0", '5 10.5 60 -', '5 1e3 60 -',
                '5 0 60 -', '5 1000000001 60 -', '5 010 60 -', '5 10 0 -',
                '5 10 86401 -', '5 10 060 -', '5 99999999999999999999999 60 -',
                '18446744073709551610 10 60 -', '18446744073709551616 10 60 -',
                '99999999999999999999 10 60 -', '184467440737095516090 10 60 -');
    my @rules = (['18446744073709551609 10 60 -', '10 60 0'],
                 ['0000018446744073709551609 10 60 -', '10 60 0'],
                 ['1844674407370955161 10 60 -', '10 60 0'],
                 ['0 10 60 -', '10 60 0'],
                 ['5 1000000000 86400 sliding_window', '1000000000 86400 2'],
                 ['5 1 1 token_bucket', '1 1 1']);
    $r->del('rl:rules');
    my $i = 0;
    $r->hset('rl:rules', 'g' . ++$i, $_) for @none, map { $_->[0] } @rules;
    $r->hset('rl:rules', 'cust', '1 20 60 -', "cust${US}p", 'garbage');
    $i = 0;
    my @c = map { { key => 'tb:garbled:' . ++$i, alg => 'tb', limit => 50, window => 1000,
                    group => $i, field => "g$i" } } @none, @rules;
    push @c, { key => 'tb:garbled:last', alg => 'tb', limit => 50, window => 1000,
               group => 0, field => 'cust', pfield => "cust${US}p" };
    $r->del(map { $_->{key} } @c);
    my ($res) = rchecks(@c);
    for my $j (0 .. $#none) {
        (my $v = $none[$j]) =~ s/([^ -~])/sprintf '\x%02x', ord $1/ge;
        is rule_of($res->[$j]) . " $res->[$j][1]", '0 0 0 49', "'$v' is no rule: the default decides";
    }
    for my $j (0 .. $#rules) {
        my ($v, $want) = @{ $rules[$j] };
        # (the sliding window rule sends its group, sent as tb, back: -2)
        is rule_of($res->[@none + $j]), $want, "'$v' is a rule: $want";
    }
    is_deeply [map { $res->[@none + $_][0] } 0 .. $#rules], [1, 1, 1, 1, -2, 1],
        'each decided with its rule, the sliding window one sent back';
    is rule_of($res->[-1]) . " $res->[-1][1]", '20 60 0 19', "a garbled policy rule: the customer's";
}

# Rules that expire ("<stamp> <limit> <window> <algorithm> <epoch s>"): in
# force until the server's clock reaches the expiry, with the ms left as
# the answer's ttl; then no rule: an expired policy rule falls back to the
# customer's, whose own expiry (or none: ttl 0) the answer then carries.
# Expiries not in the exact form, or past 9999, are garbled: no rule.
{
    my $now = now_ms();
    my $s = int($now / 1000);
    $r->del('rl:rules');
    $r->hset('rl:rules',
             'e1', '1 7 60 - ' . ($s + 100),
             'e2', '1 7 60 - ' . ($s - 1),
             'e3', '1 8 60 -', "e3${US}p", '2 ~3 60 - ' . ($s - 5),
             'e4', '1 9 60 - ' . ($s + 50), "e4${US}p", '2 3 60 - ' . ($s + 20),
             'e5', '1 9 60 - ' . ($s + 50), "e5${US}p", '2 3 60 - ' . ($s - 20),
             'e6', '1 6 60 token_bucket 253402300799',
             'g1', '1 7 60 - 0', 'g2', '1 7 60 - 01', 'g3', '1 7 60 - 253402300800',
             'g4', '1 7 60 - 1 2', 'g5', '1 7 60 -  ' . ($s + 100), 'g6', '1 7 60 - x',
             'g7', '1 7 60 - ' . ($s + 100) . ' ');
    my @c = (['e1', ''], ['e2', ''], ['e3', "e3${US}p"], ['e4', "e4${US}p"],
             ['e5', "e5${US}p"], ['e6', ''], map { ["g$_", ''] } 1 .. 7);
    my $i = 0;
    my @checks = map { { key => 'tb:exp:' . ++$i, alg => 'tb', limit => 50, window => 1000,
                         group => $i, field => $_->[0], pfield => $_->[1] } } @c;
    $r->del(map { $_->{key} } @checks);
    my ($res, $t) = rchecks(@checks);
    my $left = sub { $_[0] * 1000 - $t };
    is rule_of($res->[0]), '7 60 0', 'a rule expiring in 100 s is in force';
    is $res->[0][8], $left->($s + 100), '... for exactly the ms left to its expiry';
    is $res->[0][1], 6, '... and decides: 6 of 7';
    is rule_of($res->[1]) . " $res->[1][8] $res->[1][1]", '0 0 0 0 49',
        'an expired rule is no rule, for good: the default decides';
    is rule_of($res->[2]) . " $res->[2][8]", '8 60 0 0',
        "an expired policy rule (undone form): the customer's, for good";
    is rule_of($res->[3]) . " $res->[3][8]", '3 60 0 ' . $left->($s + 20),
        "a policy rule in force: until its own expiry, not the customer's";
    is rule_of($res->[4]) . " $res->[4][8]", '9 60 0 ' . $left->($s + 50),
        "an expired policy rule: the customer's, until the customer's expiry";
    is rule_of($res->[5]) . " $res->[5][8]", '6 60 1 ' . $left->(253402300799),
        'the last second of 9999 is a valid expiry';
    for my $j (6 .. 12) {
        my $v = $r->hget('rl:rules', $c[$j][0]);
        is rule_of($res->[$j]) . " $res->[$j][8] $res->[$j][1]", '0 0 0 0 49',
            "'$v' is garbled: no rule";
    }

    # at the second of the expiry, the same rule is no longer read
    my $at = int(now_ms() / 1000) + 2;
    $r->hset('rl:rules', 'soon', '1 4 60 - ' . $at);
    $r->del('sw:exp:soon1', 'sw:exp:soon2');
    sleep_until($at * 1000 - 300);
    ($res) = rchecks({ key => 'sw:exp:soon1', alg => 'sw', limit => 50, window => 1000,
                       field => 'soon' });
    is rule_of($res->[0]) . " $res->[0][1]", '4 60 0 3', 'just before its expiry: the rule';
    cmp_ok $res->[0][8], '<=', 300, '... for at most 300 ms more';
    sleep_until($at * 1000);
    ($res) = rchecks({ key => 'sw:exp:soon2', alg => 'sw', limit => 50, window => 1000,
                       field => 'soon' });
    is rule_of($res->[0]) . " $res->[0][1]", '0 0 0 49', 'at its expiry: the default';
}

# A rule without an algorithm keeps the one passed; a rule naming the one
# passed decides as usual.
for my $alg (qw(tb sw)) {
    $r->del('rl:rules');
    $r->hset('rl:rules', 'acme', '1 4 60 -', 'named', '1 4 60 ' . ($alg eq 'tb' ? 'token_bucket' : 'sliding_window'));
    $r->del("$alg:noalg", "$alg:named");
    my ($res) = rchecks({ key => "$alg:noalg", alg => $alg, limit => 50, window => 1000, field => 'acme' },
                        { key => "$alg:named", alg => $alg, limit => 50, window => 1000, field => 'named',
                          group => 2 });
    is_deeply [map { @$_[0, 1, 5 .. 7] } @$res], [1, 3, 4, 60, 0, 1, 3, 4, 60, $alg eq 'tb' ? 1 : 2],
        "$alg: a rule without algorithm, and one naming $alg: decided, 3 of 4 left";
    is state_of("$alg:noalg")->{w}, 60000, "$alg: stored as $alg, in the rule's window";
}

# A rule naming the other algorithm: its whole group answers -2 ("send
# again under the rule's algorithm", the rule with it) and writes nothing,
# to the byte; the other groups of the call run; a group after it on the
# same customer, sent with the right algorithm, is decided.
{
    $r->del('rl:rules');
    $r->hset('rl:rules', 'acme', '1 5 60 sliding_window');
    $r->del(qw(tb:rs:1 tb:rs:2 tb:rs:3 sw:rs:4 tb:rs:5));
    call('tb', 'tb:rs:2', 10, 60000, cost => 3);
    my $before = $r->get('tb:rs:2');
    my $ttl = $r->pexpiretime('tb:rs:2');
    my ($res) = rchecks(
        { key => 'tb:rs:1', alg => 'tb', limit => 10, window => 60000, group => 1 },
        { key => 'tb:rs:2', alg => 'tb', limit => 10, window => 60000, group => 1, mode => 1 },
        { key => 'tb:rs:3', alg => 'tb', limit => 10, window => 60000, group => 1, field => 'acme' },
        { key => 'tb:rs:2', alg => 'tb', limit => 10, window => 60000, group => 1 },
        { key => 'sw:rs:4', alg => 'sw', limit => 10, window => 60000, group => 2, field => 'acme' },
        { key => 'tb:rs:5', alg => 'tb', limit => 10, window => 60000, group => 3 });
    is_deeply [map { $_->[0] } @$res], [-2, -2, -2, -2, 1, 1],
        'a rule of another algorithm: -2 for every check of its group, the others run';
    is_deeply [map { [@$_[1 .. 4]] } @$res[0 .. 3]], [([0, 0, 0, 0]) x 4], 'a -2 check says nothing else';
    is_deeply [map { rule_of($_) } @$res], ['-1 -1 -1', '-1 -1 -1', '5 60 2', '-1 -1 -1', '5 60 2', '-1 -1 -1'],
        'the check that read the rule carries it (to be cached); the others say what they read';
    is $r->exists('tb:rs:1') + $r->exists('tb:rs:3'), 0, 'the -2 group wrote nothing: no key made';
    is $r->get('tb:rs:2'), $before, 'and left a key it had decided on untouched, byte for byte';
    is $r->pexpiretime('tb:rs:2'), $ttl, 'TTL too';
    is $res->[4][1], 4, 'the rule decides the sliding window sent after it: 4 of 5';
    is state_of('sw:rs:4')->{cur}, 1, 'and it is written';
    is state_of('tb:rs:5')->{u}, 60000, 'the group without rules is written';
    # the mismatch first in its group: nothing after it is decided either
    ($res) = rchecks(
        { key => 'tb:rs:3', alg => 'tb', limit => 10, window => 60000, field => 'acme' },
        { key => 'tb:rs:1', alg => 'tb', limit => 10, window => 60000 });
    is_deeply [map { $_->[0] } @$res], [-2, -2], 'the mismatch first: -2 for both';
    is $r->exists('tb:rs:1') + $r->exists('tb:rs:3'), 0, 'nothing written';
    # a lone check
    my @one = $r->evalsha($sha{check}, 1, 'tb:rs:3', 1, 0, 'tb', 10, 60000, 1, 0, 'acme', '');
    is "@one[0 .. 7]", '-2 0 0 0 0 5 60 2', 'a lone check: -2 and the rule';
    is $r->exists('tb:rs:3'), 0, 'nothing written';
}

# A failed group: its allowed checks answer as the state stays, under the
# rule they were decided with.
{
    $r->del('rl:rules');
    $r->hset('rl:rules', 'acme', '1 7 60 -');
    $r->del(qw(tb:rf:1 tb:rf:2));
    my ($res) = rchecks({ key => 'tb:rf:1', alg => 'tb', limit => 100, window => 1000, cost => 2,
                          field => 'acme' },
                        { key => 'tb:rf:2', alg => 'tb', limit => 1, window => 1000, cost => 2 });
    is_deeply [map { @$_[0, 1] } @$res], [1, 7, 0, 1],
        'a failed group: the allowed check tells 7 of its rule\'s 7 remaining';
    is $res->[0][4], 60000, 'and its t is the rule\'s window (all 7 left: 8 never pass)';
    is $r->exists('tb:rf:1'), 0, 'nothing written';
}

# The rules are read once per pair of fields per call (HMGET with a policy
# field, HGET without), not at all when no field is named, nor for a late
# group; Redis counts the commands scripts call.
{
    $r->del('rl:rules');
    $r->hset('rl:rules', 'acme', '1 1000 60 -', "acme${US}burst", '1 900 60 -', 'beta', '1 800 60 -');
    my @c;
    push @c, { key => "tb:once:a$_", alg => 'tb', limit => 5, window => 1000, group => $_,
               field => 'acme', pfield => "acme${US}burst" } for 1 .. 30;
    push @c, { key => "tb:once:b$_", alg => 'tb', limit => 5, window => 1000, group => 100 + $_,
               field => 'acme' } for 1 .. 20;
    push @c, { key => "tb:once:c$_", alg => 'sw', limit => 5, window => 1000, group => 200 + $_,
               field => 'beta', pfield => "beta${US}burst" } for 1 .. 10;
    my ($hget, $hmget) = (cmd_calls('hget'), cmd_calls('hmget'));
    my ($res) = rchecks(@c);
    is cmd_calls('hmget') - $hmget, 2, '60 checks, two pairs with a policy field: 2 HMGET';
    is cmd_calls('hget') - $hget, 1, 'and one customer alone: 1 HGET';
    is_deeply [map { $res->[$_][1] } 0, 29, 30, 49, 50, 59], [899, 899, 999, 999, 799, 799],
        'each check decided with its rule';

    ($hget, $hmget) = (cmd_calls('hget'), cmd_calls('hmget'));
    ($res) = checks(map { { key => "tb:none:$_", alg => 'tb', limit => 5, window => 1000,
                            group => $_ } } 1 .. 50);
    is scalar(grep { $_->[0] == 1 } @$res), 50, '50 checks without rule fields: all allowed';
    is cmd_calls('hmget') - $hmget, 0, 'no HMGET';
    is cmd_calls('hget') - $hget, 0, 'no HGET';

    ($hget, $hmget) = (cmd_calls('hget'), cmd_calls('hmget'));
    ($res) = rchecks({ key => 'tb:latefield', alg => 'tb', limit => 5, window => 1000,
                       deadline => now_ms() - 1000, field => 'acme', pfield => "acme${US}burst" });
    is_deeply [@{ $res->[0] }[0, 5 .. 7]], [-1, -1, -1, -1], 'a late group: -1, its rule not read';
    is cmd_calls('hmget') - $hmget + cmd_calls('hget') - $hget, 0, 'no read';
}

# rl:rules of another type: Redis's WRONGTYPE error, before anything is
# written.
{
    $r->del('rl:rules', 'tb:wt:1', 'tb:wt:2');
    $r->set('rl:rules', 'x');
    eval { rchecks({ key => 'tb:wt:1', alg => 'tb', limit => 5, window => 1000, group => 1 },
                   { key => 'tb:wt:2', alg => 'tb', limit => 5, window => 1000, group => 2,
                     field => 'acme' }) };
    like $@, qr/WRONGTYPE/, 'rl:rules not a hash: WRONGTYPE';
    is $r->exists('tb:wt:1'), 0, 'and the check before wrote nothing';
    $r->del('rl:rules');
}

########################################################################
# Refund
########################################################################

# Take, then give back: the next decision is as if nothing had been taken.
for my $alg (qw(tb sw)) {
    my $key = "$alg:refund";
    $r->del($key);
    call($alg, $key, 5, 60000, cost => 2);
    my $st = state_of($key);
    my $pttl = $r->pexpiretime($key);
    my @take = call($alg, $key, 5, 60000, cost => 3);
    is_deeply [@take[0, 1]], [1, 0], "$alg: 3 more taken: 0 left";
    my ($n, $now) = refund([$key, $alg, 5, 60000, 3, $take[5]]);
    is $n, 1, "$alg: refund: 1 check given back";
    cmp_ok $now, '>=', $take[5], "$alg: refund tells the server's clock";
    my @res = call($alg, $key, 5, 60000, cost => 0);
    is $res[1], 3, "$alg: 3 remaining again";
    my $after = state_of($key);
    if ($alg eq 'tb') {
        is $after->{u}, $st->{u} - ($take[5] - $st->{ts}) * 5,
            'tb: the usage is that of before, drained to when it was taken';
        is $after->{ts}, $take[5], 'tb: as of then';
    } elsif ($st->{win} == floor($take[5] / 60000)) {
        is_deeply $after, $st, 'sw: the state is that of before';
    } else {
        pass 'sw: (crossed a window edge, state not compared)';
    }
    ok $r->pexpiretime($key) >= $pttl, "$alg: the TTL kept";
    is((call($alg, $key, 5, 60000, cost => 3))[0], 1, "$alg: and 3 pass");
}

# Sliding window: given back from the previous count once the window rolled
# over, from nothing once it rolled out.
{
    my $W = 1000;
    my $key = 'sw:refundroll';
    $r->del($key);
    my $b0 = (floor(now_ms() / $W) + 1) * $W;
    sleep_until($b0 + 10);
    my @take = call('sw', $key, 4, $W, cost => 3);
    sleep_until($b0 + $W + 10);
    call('sw', $key, 4, $W, cost => 1);
    is_deeply state_of($key), { win => $b0 / $W + 1, cur => 1, prev => 3, w => $W },
        'sw: taken in B0, then 1 in B1: prev 3, cur 1';
    my ($n) = refund([$key, 'sw', 4, $W, 3, $take[5]]);
    is $n, 1, 'sw: refund after the window rolled over: given back';
    is_deeply state_of($key), { win => $b0 / $W + 1, cur => 1, prev => 0, w => $W },
        'sw: from prev';
    my ($m) = refund([$key, 'sw', 4, $W, 3, $take[5] - $W]);
    is $m, 0, 'sw: taken two windows before: nothing to give back';
}

# A missing key, another type, nothing taken: nothing; several at once.
{
    $r->del('tb:nokey');
    my ($n) = refund(['tb:nokey', 'tb', 5, 1000, 1, now_ms()]);
    is $n, 0, 'refund on a missing key: nothing';
    is $r->exists('tb:nokey'), 0, 'and no key made';
    $r->del('tb:rlist');
    $r->rpush('tb:rlist', 'x');
    ($n) = refund(['tb:rlist', 'tb', 5, 1000, 1, now_ms()]);
    is $n, 0, 'refund on a list: nothing';
    call('sw', 'sw:rw', 5, 1000, cost => 2);
    ($n) = refund(['sw:rw', 'sw', 5, 2000, 2, now_ms()]);
    is $n, 0, 'refund with another window: nothing';
    call('tb', 'tb:r2', 5, 60000, cost => 2);
    my @t = call('sw', 'sw:r2', 5, 60000, cost => 2);
    ($n) = refund(['tb:r2', 'tb', 5, 60000, 2, $t[5]], ['sw:r2', 'sw', 5, 60000, 2, $t[5]],
                  ['tb:nokey', 'tb', 5, 60000, 2, $t[5]]);
    is $n, 2, 'three refunds at once: the two keys there';
    is_deeply [map { (call($_->[0], $_->[1], 5, 60000, cost => 0))[1] } ['tb', 'tb:r2'], ['sw', 'sw:r2']],
        [5, 5], 'both full again';
    for my $case (['bad algorithm', 'xx', 5, 1000, 1, 0], ['bad limit', 'tb', 0, 1000, 1, 0],
                  ['bad window', 'tb', 5, 999, 1, 0], ['bad cost', 'tb', 5, 1000, -1, 0],
                  ['bad time', 'tb', 5, 1000, 1, 'x']) {
        my ($err, @args) = @$case;
        call('tb', 'tb:r3', 5, 60000, cost => 2);
        my $v = $r->get('tb:r3');
        eval { refund(['tb:r3', 'tb', 5, 60000, 2, 0], ['tb:r3', @args]) };
        like $@, qr/ERR ratelimit: $err \(check 2\)/, "refund: $err is an error";
        is $r->get('tb:r3'), $v, "refund: $err: nothing given back";
    }
    eval { $r->evalsha($sha{refund}, 1, 'tb:r3', 'tb', 5, 1000, 1) };
    like $@, qr/need 5 arguments per key/, 'refund: 4 arguments are an error';
}

########################################################################
# Fuzz: every promise to the ms, against a fake clock
########################################################################

{
    my $fuzz = slurp('t/lib/check_fuzz.lua');
    # the scripts under test, and the one-check scripts they replaced
    # (t/lib/reference/), which the fuzz holds them to for a cost of 1
    my %dir = (token_bucket => 't/lib/reference', sliding_window => 't/lib/reference',
               check => 'lua', refund => 'lua');
    $fuzz =~ s/^-- \@(\w+)\@$/$dir{$1} ? bounds() . slurp("$dir{$1}\/$1.lua") : die "no $1"/gme;
    for my $seed (map { $$ * 10 + $_ } 1 .. 3) {
        my ($checks, $failures, @why) = $r->eval($fuzz, 0, $seed, 1500);
        cmp_ok $checks, '>', 15000, "fuzz $seed: $checks checks made";
        is $failures, 0, "fuzz $seed: every promise kept" or diag join "\n", @why;
    }
}

my $took = time - $started;
diag "took ~${took}s";
done_testing;
