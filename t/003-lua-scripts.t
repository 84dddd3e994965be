#!/usr/bin/perl
# The two limiter scripts (lua/token_bucket.lua, lua/sliding_window.lua)
# against a real redis-server: decisions, the honesty of the times they
# promise, TTLs, limit changes, bad input, atomicity.  Contract:
# lua/README.md.  Small windows keep the whole run to a few seconds.

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

my %body = (tb => bounds() . slurp('lua/token_bucket.lua'),
            sw => bounds() . slurp('lua/sliding_window.lua'));
my %sha;
for my $alg (sort keys %body) {
    $sha{$alg} = $r->script_load($body{$alg});
    is $sha{$alg}, sha1_hex($body{$alg}), "$alg: SCRIPT LOAD gives the sha1 of the bounds and the file";
}

# One limiter call: (allowed, remaining, retry_after_ms, reset_ms).
sub call {
    my ($alg, $key, $limit, $window) = @_;
    my @res = $r->evalsha($sha{$alg}, 1, $key, $limit, $window);
    return @res;
}

# The server's clock in ms, as the scripts read it.
sub now_ms {
    my ($s, $us) = $r->time;
    return $s * 1000 + floor($us / 1000);
}

# A call bracketed by clock reads: the script's "now" lies in [t0, t1].
sub timed_call {
    my $t0 = now_ms();
    my @res = call(@_);
    my $t1 = now_ms();
    return ($t0, $t1, @res);
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
    my ($alg, $key, $limit, $window, $n) = @_;
    my $ok = 0;
    $ok += (call($alg, $key, $limit, $window))[0] for 1 .. $n;
    return $ok;
}

# The token bucket maths, for exact checks: the absolute ms at which a
# denied caller with stored state $st passes (and at which it is full).
# The usage u is in 1/W of a token and drains by L per ms: a call e ms
# after ts passes once u - e * L <= (L - 1) * W; it is full at u - e * L
# <= 0.  Computed here in 64-bit integers, independently of the script's
# doubles.
sub tb_times {
    my ($st, $L, $W) = @_;
    use integer;
    my $u = $st->{u} > $L * $W ? $L * $W : $st->{u};
    my $first = sub {
        my $over = $u - shift;              # what has to drain, >= 0
        my $e = $over <= 0 ? 0 : ($over + $L - 1) / $L;
        return $st->{ts} + ($e > $W ? $W : $e);
    };
    return ($first->(($L - 1) * $W), $first->(0));
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
        my ($a0, $a1, @res) = timed_call('tb', $key, 5, 2000);
        $t0 //= $a0;
        $t1 = $a1;
        is_deeply [@res[0 .. 2]], [1, 5 - $i, 0], "tb: request $i allowed, remaining " . (5 - $i);
        # reset is the time to refill what is used: ~400 ms per token.
        ok $res[3] <= 400 * $i && $res[3] > 400 * $i - 400, "tb: reset $res[3] ms fits $i used tokens";
    }
    is $r->type($key), 'string', 'tb: state is one string';
    is length($r->get($key)), 24, 'tb: of 24 bytes';
    my $st = state_of($key);
    is $st->{w}, 2000, 'tb: w is the window it was counted with';
    like $st->{ts}, qr/^\d+$/, 'tb: ts is written as a whole number';
    like $st->{u}, qr/^\d+$/, 'tb: and so is the usage (in 1/W of a token)';
    ok $st->{u} > 4 * 2000 && $st->{u} <= 5 * 2000, "tb: u = $st->{u}: 5 tokens taken, some refilled";
    ok $st->{ts} >= $t0 && $st->{ts} <= $t1, 'tb: ts comes from the server clock';

    my ($d0, $d1, $allowed, $remaining, $retry, $reset) = timed_call('tb', $key, 5, 2000);
    is $allowed, 0, 'tb: 6th request denied';
    my ($pass, $full) = tb_times($st, 5, 2000);
    ok $retry >= $pass - $d1 && $retry <= $pass - $d0,
        "tb: retry_after $retry is exactly when the refill reaches 1 token";
    ok $reset >= $full - $d1 && $reset <= $full - $d0,
        "tb: reset $reset is exactly when the bucket is full";
    is $remaining, 0, 'tb: nothing remaining when denied';
    ok $retry >= 1 && $retry <= 400, "tb: retry_after $retry in [1, 400]";
    ok $reset >= $retry && $reset <= 2000, "tb: reset $reset in [retry, window]";
    my $pttl = $r->pttl($key);
    ok $pttl > 0 && $pttl <= 2000, "tb: PTTL $pttl in (0, window]";

    # Denials change nothing: same hash, same TTL bound, and after the
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
    is burst('tb', $key, 5, 2000, 5), 1, 'tb: after retry_after exactly one more is allowed';

    # Honesty: clearly before the promised time still denied, at it allowed.
    ($allowed, undef, $retry) = call('tb', $key, 5, 2000);
    is $allowed, 0, 'tb: denied again right after';
    ok $retry > 300, "tb: a whole token to wait for ($retry ms)";
    sleep_ms($retry - 120);
    my @early = call('tb', $key, 5, 2000);
    is $early[0], 0, 'tb: 120 ms before retry_after still denied';
    ok $early[2] >= 1 && $early[2] <= 120, "tb: and the new retry_after ($early[2]) agrees";
    sleep_ms($early[2]);
    is((call('tb', $key, 5, 2000))[0], 1, 'tb: allowed exactly at retry_after');
}

# Sleeping exactly retry_after, over and over, always passes (10 per s).
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
    is $pass, 5, 'tb: 5 of 5 retries at exactly retry_after allowed';
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
    call('tb', $key, 10, 1000);
    my $pttl = $r->pttl($key);
    ok $pttl > 0 && $pttl <= 100, "tb: one token used of 10/s: PTTL $pttl in (0, 100]";
    sleep_ms($pttl + 30);
    is $r->exists($key), 0, 'tb: key gone once the bucket is full again';
    my @res = call('tb', $key, 10, 1000);
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
    my ($d0, $d1, @down) = timed_call('tb', $key, 3, 2000);
    is $down[0], 0, 'tb: lowered to 3: denied (usage clamped to the full 3)';
    my ($pass) = tb_times($st, 3, 2000);
    ok $down[2] >= $pass - $d1 && $down[2] <= $pass - $d0,
        "tb: retry_after $down[2] is exact for the clamped usage";
    ok $down[2] > 500 && $down[2] <= 667, "tb: one token at 3 per 2 s: retry $down[2] in (500, 667]";
    ok $down[3] <= 2000, "tb: reset $down[3] within a window of the new limit";
    sleep_ms($down[2]);
    my @after = call('tb', $key, 3, 2000);
    is_deeply [@after[0, 1]], [1, 0], 'tb: at retry_after allowed, remaining 0';
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
        my ($d0, $d1, @res) = timed_call('tb', $key, 5, $w);
        is $res[0], 0, "tb: window now $w ms: still 5 tokens taken, denied";
        ok $res[2] >= $pass - $d1 && $res[2] <= $pass - $d0,
            "tb: retry_after $res[2] is one token at 5 per $w ms";
        ok $res[3] >= $full - $d1 && $res[3] <= $full - $d0,
            "tb: reset $res[3] is all 5 at 5 per $w ms";
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
    my ($t0, $t1, @res) = timed_call('sw', 'sw:ttl', 5, $W);
    ok $res[3] >= $b0 + 2 * $W - $t1 && $res[3] <= $b0 + 2 * $W - $t0,
        "sw: reset $res[3] is the end of the next window";
    my $pttl = $r->pttl('sw:ttl');
    ok $pttl > $W - 100 && $pttl <= 2 * $W, "sw: PTTL $pttl in (W - 100, 2W]: count weighs two windows";

    # Limit 5: counts down, then denied until weight of B0's 5 drops to 4.
    my $key = 'sw:basic';
    for my $i (1 .. 5) {
        my ($t0, $t1, @res) = timed_call('sw', $key, 5, $W);
        is_deeply [@res[0 .. 2]], [1, 5 - $i, 0], "sw: request $i allowed, remaining " . (5 - $i);
        ok $res[3] >= $b0 + 2 * $W - $t1 && $res[3] <= $b0 + 2 * $W - $t0,
            "sw: reset $res[3] is the end of the next window";
        ok $r->pttl($key) <= $res[3], 'sw: PTTL <= reset';
    }
    is $r->type($key), 'string', 'sw: state is one string';
    is length($r->get($key)), 32, 'sw: of 32 bytes';
    my $st = state_of($key);
    is_deeply $st, { win => $b0 / $W, cur => 5, prev => 0, w => $W },
        'sw: holding {win, cur, prev, w}';
    ($t0, $t1, @res) = timed_call('sw', $key, 5, $W);
    is_deeply [@res[0, 1]], [0, 0], 'sw: 6th request denied, 0 remaining';
    # In B1 the 5 weigh 5*(W-e)/W; 4 + 1 <= 5 first at e = 200.
    my $pass = $b1 + 200;
    ok $res[2] >= $pass - $t1 && $res[2] <= $pass - $t0,
        "sw: retry_after $res[2] points at exactly B1 + 200 ms";
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
    ($t0, $t1, my @down) = timed_call('sw', $lk, 3, $W);
    is $down[0], 0, 'sw: lowered to 3: denied with 6 counted';
    # Next window: 6*(W-e)/W + 1 <= 3 first at e = ceil(W*2/3) = 667.
    ok $down[2] >= $b1 + 667 - $t1 && $down[2] <= $b1 + 667 - $t0,
        "sw: retry_after $down[2] points at B1 + 667 ms";

    # A count that cannot pass before B0 + 2W: limit 1, one request in B0
    # still weighs all through B1.
    is burst('sw', 'sw:one', 1, $W, 1), 1, 'sw: limit 1: first allowed';
    ($t0, $t1, @res) = timed_call('sw', 'sw:one', 1, $W);
    ok !$res[0] && $res[2] >= $b0 + 2 * $W - $t1 && $res[2] <= $b0 + 2 * $W - $t0,
        "sw: limit 1: retry_after $res[2] points at B0 + 2W";
    is $res[3], $res[2], 'sw: limit 1: and so does reset';

    # Weighting: fill 10 in B0, then see B0's count weigh in B1.
    my $wk = 'sw:weight';
    is burst('sw', $wk, 10, $W, 10), 10, 'sw: 10 of 10 allowed in B0';
    sleep_until($b1 + 50);
    ($t0, $t1, @res) = timed_call('sw', $wk, 10, $W);
    is $res[0], 0, 'sw: early in B1 the previous 10 still weigh ~9.5: denied';
    # 10*(W-e)/W + 1 <= 10 first at e = 100.
    ok $res[2] >= $b1 + 100 - $t1 && $res[2] <= $b1 + 100 - $t0,
        "sw: retry_after $res[2] points at B1 + 100 ms, inside B1";
    ok $res[3] >= $b1 + $W - $t1 && $res[3] <= $b1 + $W - $t0,
        'sw: reset is the end of B1 (nothing counted in B1)';
    sleep_ms($res[2] - 30);
    my @early = call('sw', $wk, 10, $W);
    is $early[0], 0, 'sw: 30 ms before retry_after still denied';
    sleep_ms($early[2]);
    ($t0, $t1, @res) = timed_call('sw', $wk, 10, $W);
    is $res[0], 1, 'sw: allowed at retry_after';
    my $pttl1 = $r->pttl($wk);
    ok $pttl1 > $W && $pttl1 <= $b1 + 2 * $W - $t0,
        "sw: the first count in B1 moved the TTL to the end of B2 (PTTL $pttl1)";
    is_deeply state_of($wk), { win => $b1 / $W, cur => 1, prev => 10, w => $W },
        'sw: B0 count rolled into prev';

    # Denied ones from B0 were not counted: exactly one passes at B1 + 200.
    sleep_until($pass);
    is burst('sw', $key, 5, $W, 5), 1, 'sw: after retry_after exactly one more allowed';

    # remaining is floor(L - estimate - 1) with estimate = 10*(W-e)/W + 1.
    sleep_until($b1 + 600);
    ($t0, $t1, @res) = timed_call('sw', $wk, 10, $W);
    my @range = map { floor(10 - (10 * ($W - ($_ - $b1)) / $W + 1) - 1) } $t0, $t1;
    ok $res[0] && $res[1] >= $range[0] && $res[1] <= $range[1],
        "sw: remaining $res[1] matches the weighted estimate ($range[0]..$range[1])";
    is burst('sw', $wk, 10, $W, 10), $res[1], 'sw: remaining was the truth';

    # The TTL key vanishes at the end of B1, once its count weighs nothing.
    sleep_until($b0 + 2 * $W + 20);
    is $r->exists('sw:ttl'), 0, 'sw: key gone after both windows passed';
}

# Sleeping exactly retry_after, over and over, always passes: with limit 3
# the waits land inside a window (prev weighs less) and in the next one.
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
    is $pass, 4, "sw: 4 of 4 retries at exactly retry_after allowed (${waited} ms)";
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
# TTL, so the one found afterwards must have been set by the new scripts.)
{
    my $now = now_ms();
    $r->del('tb:old');
    $r->hset('tb:old', used => 3, ts => $now);
    my ($d0, $d1, @res) = timed_call('tb', 'tb:old', 3, 60000);
    is $res[0], 0, 'tb: an old hash {used, ts} with the bucket empty: denied';
    ok $res[2] >= $now + 20000 - $d1 && $res[2] <= $now + 20000 - $d0,
        "tb: retry_after $res[2] is one token at 3 per minute from its ts";
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
    my ($t0, $t1);
    ($t0, $t1, @res) = timed_call('sw', 'sw:old', 3, 60000);
    is_deeply [@res[0, 1]], [1, 1], 'sw: cur = 1 of 3 carries on: allowed, 1 remaining';
    if (floor($t1 / 60000) == $idx) {
        is_deeply state_of('sw:old'), { win => $idx, cur => 2, prev => 0, w => 60000 },
            'sw: and the hash is replaced';
    } else {
        pass 'sw: (crossed a window edge, state not compared)';
    }
    $pttl = $r->pttl('sw:old');
    ok $pttl > 0 && $pttl <= $res[3], "sw: with the TTL of the end of the next window ($pttl)";

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
    }
}

# Bad arguments: a Redis error, and nothing written.
for my $alg (qw(tb sw)) {
    for my $case (['0', 1000], ['-1', 1000], ['1.5', 1000], ['abc', 1000],
                  ['', 1000], ['1000000001', 1000], ['1e3', 1000], [' 5', 1000],
                  [5, '999'], [5, '86400001'], [5, '1000.0'], [5, 'x'], [5, '-1000'],
                  [5, undef]) {
        my ($limit, $window) = @$case;
        my @args = defined $window ? ($limit, $window) : ($limit);
        eval { $r->evalsha($sha{$alg}, 1, "$alg:bad", @args) };
        my $what = defined $window ? "'$limit' '$window'" : "'$limit' (no window)";
        like $@, qr/ERR ratelimit: bad (limit|window)/, "$alg: $what is an error";
    }
    eval { $r->evalsha($sha{$alg}, 0, 5, 1000) };
    like $@, qr/ERR ratelimit: need one key/, "$alg: no key is an error";
    is $r->exists("$alg:bad"), 0, "$alg: bad calls wrote nothing";
    my @ok = call($alg, "$alg:edge", 1000000000, 86400000);
    is_deeply [@ok[0, 1]], [1, 999999999], "$alg: the largest limit and window are accepted";
    @ok = call($alg, "$alg:edge2", 1, 1000);
    is_deeply [@ok[0 .. 2]], [1, 0, 0], "$alg: the smallest too";
}

# After a NOSCRIPT (script cache flushed), EVAL of the body does the same.
{
    $r->script_flush;
    eval { call('tb', 'tb:eval', 2, 1000) };
    like $@, qr/NOSCRIPT/, 'NOSCRIPT after SCRIPT FLUSH';
    for my $alg (qw(tb sw)) {
        my @a = $r->eval($body{$alg}, 1, "$alg:eval", 2, 1000);
        my @b = $r->eval($body{$alg}, 1, "$alg:eval", 2, 1000);
        my @c = $r->eval($body{$alg}, 1, "$alg:eval", 2, 1000);
        is_deeply [map { $_->[0] } \@a, \@b, \@c], [1, 1, 0], "$alg: EVAL allows 2 of 3";
        $sha{$alg} = $r->script_load($body{$alg});
    }
}

# Atomicity: 8 processes x 200 calls on one key, limit 100, long window.
for my $alg (qw(tb sw)) {
    my $key = "$alg:race";
    my @kids;
    for my $k (1 .. 8) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if (!$pid) {
            # _exit: the child must not run the END block that stops redis.
            my $n = eval {
                my $c = Redis->new(server => '127.0.0.1:' . $srv->port, reconnect => 0);
                my $ok = 0;
                for (1 .. 200) {
                    my @res = $c->evalsha($sha{$alg}, 1, $key, 100, 86400000);
                    $ok += $res[0];
                    die "bad denial\n" if !$res[0] && $res[2] < 1;
                }
                $ok;
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
    is $failed, 0, "$alg: 8 racing processes ran cleanly";
    is $total, 100, "$alg: exactly 100 of 1600 concurrent requests allowed";
}

# The deadline: a check run after it (a stalled server woke up, a long
# queue) counts nothing and says so with allowed -1; every answer ends with
# the server's clock, from which edge nodes learn the deadline to send.
for my $alg (qw(tb sw)) {
    my $key = "$alg:deadline:$$";
    $r->del($key);
    my $t0 = now_ms();
    my @late = $r->evalsha($sha{$alg}, 1, $key, 5, 60000, $t0 - 1);
    is scalar @late, 5, "$alg: a late check answers 5 elements";
    is $late[0], -1, "$alg: a check past its deadline is refused with -1";
    cmp_ok $late[4], '>=', $t0, "$alg: ... and tells the server's clock";
    is $r->exists($key), 0, "$alg: ... and counts nothing";

    my @ok = $r->evalsha($sha{$alg}, 1, $key, 5, 60000, now_ms() + 5000);
    is_deeply [@ok[0, 1]], [1, 4], "$alg: a check before its deadline counts";
    my $t1 = now_ms();
    cmp_ok abs($ok[4] - $t1), '<=', 1000, "$alg: its clock is the server's";

    my @none = $r->evalsha($sha{$alg}, 1, $key, 5, 60000, 0);
    is $none[0], 1, "$alg: deadline 0 means none";

    my $err = eval { $r->evalsha($sha{$alg}, 1, $key, 5, 60000, '1e3'); 1 }
        ? '' : $@;
    like $err, qr/bad deadline/, "$alg: a deadline that is not digits is refused";
}

my $took = time - $started;
diag "took ~${took}s";
done_testing;
