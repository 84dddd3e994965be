#!/bin/sh
# Redis CPU per check of lua/check.lua, on a redis-server of its own (a free
# loopback port, stopped on exit): redis-benchmark sends calls of N checks,
# one group per check, cost 1, token bucket or sliding window, keys that
# mostly exist (a warm-up call set first), every check allowed; then
# usec_per_call of INFO commandstats divided by N.  With CALLGRIND=1 the
# server runs under callgrind, collecting inside evalShaCommand only, and
# the instructions per call and per check are told instead (stable where
# the µs of a shared VM are not).
#
#   sh scripts/bench-check.sh [checks per call (50)] [tb|sw (tb)] [calls]
#
#   CHECK_LUA=file   the script (lua/check.lua), e.g. an older version:
#                    CHECK_LUA=<(git show HEAD~1:lua/check.lua) needs bash;
#                    git show HEAD~1:lua/check.lua > /tmp/old.lua works anywhere
#   CHECK_ARGS=7|9   arguments per check: 7 (the contract before the rules
#                    were read by the script) or 9 (the two rule fields
#                    after them); 9 by default
#   FIELD=str        the rule field of every check (empty: not read), with
#   POLICY_FIELD=str its policy field (empty by default); __rand_int__ in
#                    them makes each check's its own (a field per customer)
#   RULE=str         stored in rl:rules under FIELD (a stored value, e.g.
#                    "1 1000000 600 -"), and POLICY_RULE under POLICY_FIELD
#   KEEP=dir         (with CALLGRIND=1) the callgrind output is copied there

set -eu

cd "$(dirname "$0")/.."
top=$(pwd)

n=${1:-50}
alg=${2:-tb}
calls=${3:-}
lua=${CHECK_LUA:-lua/check.lua}
nargs=${CHECK_ARGS:-9}
field=${FIELD:-}
pfield=${POLICY_FIELD:-}

work=$(mktemp -d /tmp/ratelimit-bench.XXXXXX)
pid=

cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
            sleep 0.05
            i=$((i + 1))
        done
    fi
    if [ -n "${KEEP:-}" ]; then cp "$work"/callgrind.out* "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(perl -I"$top/t/lib" -MRLTest::Redis -e 'print RLTest::Redis::free_port()')

if [ "${CALLGRIND:-0}" = 1 ]; then
    calls=${calls:-2000}
    valgrind --tool=callgrind --toggle-collect=evalShaCommand \
        --callgrind-out-file="$work/callgrind.out" \
        redis-server --port "$port" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
    pid=$!
else
    calls=${calls:-20000}
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" > "$work/redis.log" 2>&1 &
    pid=$!
fi

i=0
until redis-cli -p "$port" PING >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 400 ] || { echo "redis did not start" >&2; cat "$work/redis.log" >&2; exit 1; }
    sleep 0.05
done

# the bounds lines the module puts in front of the script (rl_rule.h)
perl -ne 'print "local RL_MAX_LIMIT = $1\n" if /^#define\s+RL_RULE_MAX_LIMIT\s+(\d+)/;
          print "local RL_MIN_WINDOW_MS = $1 * 1000\n" if /^#define\s+RL_RULE_MIN_WINDOW\s+(\d+)/;
          print "local RL_MAX_WINDOW_MS = $1 * 1000\n" if /^#define\s+RL_RULE_MAX_WINDOW\s+(\d+)/' \
    src/rl_rule.h > "$work/check.lua"
cat "$lua" >> "$work/check.lua"
sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat "$work/check.lua")")
if [ -n "${RULE:-}" ]; then
    redis-cli -p "$port" HSET rl:rules "$field" "$RULE" > /dev/null
fi
if [ -n "${POLICY_RULE:-}" ]; then
    redis-cli -p "$port" HSET rl:rules "$pfield" "$POLICY_RULE" > /dev/null
fi

# the command: n keys, then n times the check's arguments
set -- EVALSHA "$sha" "$n"
i=1
while [ $i -le "$n" ]; do
    set -- "$@" "rl:$alg:bench:k:__rand_int__"
    i=$((i + 1))
done
i=1
while [ $i -le "$n" ]; do
    set -- "$@" "$i" 0 "$alg" 1000000 600000 1 0
    if [ "$nargs" = 9 ]; then
        set -- "$@" "$field" "$pfield"
    fi
    i=$((i + 1))
done

# warm-up: the keys exist, the script's first run is behind us
redis-benchmark -p "$port" -P 8 -r 10000 -n "$calls" -q "$@" > /dev/null
redis-cli -p "$port" CONFIG RESETSTAT > /dev/null
if [ "${CALLGRIND:-0}" = 1 ]; then
    callgrind_control -z "$pid" > /dev/null 2>&1
fi

redis-benchmark -p "$port" -P 8 -r 10000 -n "$calls" -q "$@" > /dev/null

stats=$(redis-cli -p "$port" INFO commandstats | tr -d '\r' | grep '^cmdstat_evalsha:')
done_calls=$(echo "$stats" | sed 's/.*evalsha:calls=\([0-9]*\).*/\1/')
usec=$(echo "$stats" | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')
errors=$(echo "$stats" | sed 's/.*failed_calls=\([0-9]*\).*/\1/')

if [ "${CALLGRIND:-0}" = 1 ]; then
    callgrind_control -d "$pid" > /dev/null 2>&1
    sleep 1
    ir=$(for f in "$work"/callgrind.out*; do
             callgrind_annotate "$f" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p'
         done | tr -d ',' | sort -n | tail -1)
    echo "$lua, $n checks ($alg), $nargs args per check, field '$field' '$pfield': $done_calls calls ($errors failed), $ir instructions: $((ir / done_calls)) per call, $((ir / done_calls / n)) per check"
else
    perl -e 'printf "%s, %d checks (%s), %d args per check, field \x27%s\x27 \x27%s\x27: %d calls (%d failed), %.2f usec per call, %.3f per check\n", @ARGV, $ARGV[8] / $ARGV[1]' \
        "$lua" "$n" "$alg" "$nargs" "$field" "$pfield" "$done_calls" "$errors" "$usec"
fi
