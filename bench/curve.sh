#!/bin/sh
# `make bench-curve`: how the module's cost grows with the work.  Four
# curves, each point measured against plain nginx in the same round:
#
#   shards       1, 2, 4 Redis shards (allowed path, 10k callers)
#   callers      10k, 100k, 1M distinct callers, with a 1m and a 64m zone
#   policies     1, 2, 4 policies per request (same id, limits far above)
#   concurrency  1, 2, 4, ..., 256 connections: throughput, mean batch size
#                and Redis time per check
#
# Writes bench/results/curve-{shards,callers,policies,concurrency}.{tsv,png},
# curve-rounds.tsv (every wrk run) and curve-summary.txt, and prints the
# tables.  bench/README.md explains the knobs:
#
#   BENCH_CURVES="shards callers policies concurrency"
#   BENCH_CURVE_DURATION=4 BENCH_CURVE_ROUNDS=3 BENCH_CURVE_CONNECTIONS=50
#   BENCH_CURVE_THREADS=2 BENCH_CURVE_KEYS=10000
#   BENCH_CURVE_SHARDS="1 2 4" BENCH_CURVE_CALLERS="10000 100000 1000000"
#   BENCH_CURVE_ZONES="1m 64m" BENCH_CURVE_POLICIES="1 2 4"
#   BENCH_CURVE_CONCURRENCY="1 2 4 8 16 32 64 128 256"
#
# Everything it starts (Redis, nginx, wrk) it stops again by pid, on exit
# and on Ctrl-C; all traffic goes to 127.0.0.1.

set -eu

cd "$(dirname "$0")/.."
top=$(pwd)
results="$top/bench/results"
run="$results/curve-run"
raw="$results/curve-raw"

. "$top/bench/lib.sh"

curves=${BENCH_CURVES:-shards callers policies concurrency}
duration=${BENCH_CURVE_DURATION:-4}
rounds=${BENCH_CURVE_ROUNDS:-3}
connections=${BENCH_CURVE_CONNECTIONS:-50}
threads=${BENCH_CURVE_THREADS:-2}
base_keys=${BENCH_CURVE_KEYS:-10000}
shard_counts=${BENCH_CURVE_SHARDS:-1 2 4}
callers=${BENCH_CURVE_CALLERS:-10000 100000 1000000}
zones=${BENCH_CURVE_ZONES:-1m 64m}
policy_counts=${BENCH_CURVE_POLICIES:-1 2 4}
concurrency=${BENCH_CURVE_CONCURRENCY:-1 2 4 8 16 32 64 128 256}

# the shards and zone of the callers, policies and concurrency curves (and
# of make bench's scenario 3)
base_shards=2
base_zone=10m

for v in duration rounds connections threads base_keys; do
    eval "need_int $v \"\$$v\""
done
for n in $shard_counts $callers $policy_counts $concurrency; do
    need_int "every count of the curves" "$n"
done
for c in $curves; do
    case $c in
        shards|callers|policies|concurrency) ;;
        *) die "no curve \"$c\" (shards, callers, policies, concurrency)" ;;
    esac
done
for z in $zones; do
    case $z in
        *[!0-9km]*|[!0-9]*|*[km]?*|*[0-9]) die "a zone size is like 1m or 512k, not \"$z\"" ;;
    esac
done
for n in $policy_counts; do
    [ "$n" -le 16 ] || die "at most 16 policies per location, not $n"
done
[ "$connections" -ge "$threads" ] \
    || die "BENCH_CURVE_CONNECTIONS ($connections) must be >= BENCH_CURVE_THREADS ($threads)"

need_tools
bench_begin
rm -f "$results"/curve-*.tsv "$results"/curve-*.png "$results"/curve-*.vars \
      "$results/curve-summary.txt" "$results/curve-meta.txt"

has_curve() {
    case " $curves " in *" $1 "*) return 0 ;; esac
    return 1
}

max() {
    mx=$1
    shift
    for mx_n in "$@"; do
        [ "$mx_n" -gt "$mx" ] && mx=$mx_n
    done
    echo "$mx"
}

# --- Redis and nginx ------------------------------------------------------

nredis=$base_shards
has_curve shards && nredis=$(max $nredis $shard_counts)

# ports: the shards, plain nginx, and one per limiter nginx (at most one
# per shard count and one per zone, and the base one)
nlimiters=$(( 1 + $(echo $shard_counts | wc -w) + $(echo $zones | wc -w) ))
set -- $(free_ports $(( nredis + 1 + nlimiters )))
[ $# -eq $(( nredis + 1 + nlimiters )) ] || die "no free ports"
shards=""
i=0
while [ $i -lt "$nredis" ]; do
    shards="$shards $1"
    shift
    i=$((i + 1))
done
plain_port=$1
shift
spare_ports="$*"

start_redis $shards

start_nginx plain plain "$plain_port" -

# the policies p1 .. pN and the locations /pN/, in every limiter nginx
maxp=$(max 1 $policy_counts)
: > "$run/policies-http.conf"
: > "$run/policies-locations.conf"
i=1
while [ $i -le "$maxp" ]; do
    echo "ratelimit_policy p$i \$http_x_user_id limit=10000 window=3600s;" \
        >> "$run/policies-http.conf"
    i=$((i + 1))
done
for n in $policy_counts; do
    {
        echo "location /p$n/ {"
        i=1
        while [ $i -le "$n" ]; do
            echo "    ratelimit p$i;"
            i=$((i + 1))
        done
        echo "    empty_gif;"
        echo "}"
    } >> "$run/policies-locations.conf"
done

# limiter N ZONE: the limiter nginx with the first N shards and that zone,
# started the first time: sets lim (its name), lim_port and lim_pid
limiter() {
    lim="lim_$1_$2"
    eval "lim_port=\${${lim}_port:-}"
    if [ -z "$lim_port" ]; then
        set -- "$1" "$2" $shards
        l_n=$1 l_z=$2
        shift 2
        l_use=""
        while [ "$l_n" -gt 0 ]; do
            l_use="$l_use $1"
            shift
            l_n=$((l_n - 1))
        done
        set -- $spare_ports
        lim_port=$1
        shift
        spare_ports="$*"
        start_nginx "$lim" curve "$lim_port" "$l_z" $l_use
        eval "${lim}_port=$lim_port"
    fi
    eval "lim_pid=\$${lim}_pid"
}

# every nginx is started before anything is measured
has_curve shards && for n in $shard_counts; do limiter "$n" "$base_zone"; done
has_curve callers && for z in $zones; do limiter "$base_shards" "$z"; done
if has_curve policies || has_curve concurrency; then
    limiter "$base_shards" "$base_zone"
fi

{
    machine_meta
    cat <<META
curves=$curves
duration=$duration
rounds=$rounds
connections=$connections
threads=$threads
keys=$base_keys
base_shards=$base_shards
base_zone=$base_zone
META
} > "$results/curve-meta.txt"

# --- the points -----------------------------------------------------------

# point CURVE POINT: sets url, nginx_pid, stats, keys, conns and the tags
# of one point of a curve.  POINT is "plain" (the baseline) or the point's
# value; for the callers curve CALLERS@ZONE, for the concurrency curve
# plain@CONNECTIONS or module@CONNECTIONS.
point() {
    p_curve=$1 p=$2
    hot="" stats="" keys=$base_keys conns=$connections
    kind=module zone=$base_zone shards_n=$base_shards path=/allowed/
    case $p_curve:$p in
        concurrency:*)  kind=${p%@*} conns=${p#*@} x=$conns ;;
        *:plain)        kind=plain x=0 ;;
        shards:*)       x=$p shards_n=$p ;;
        callers:*)      x=${p%@*} zone=${p#*@} keys=$x ;;
        policies:*)     x=$p path=/p$p/ ;;
    esac
    if [ "$kind" = plain ]; then
        url="http://127.0.0.1:$plain_port/plain/" nginx_pid=$plain_pid
        shards_n=0 zone=-
    else
        limiter "$shards_n" "$zone"
        url="http://127.0.0.1:$lim_port$path" nginx_pid=$lim_pid
        stats=$lim_port
    fi
    # wrk needs a connection per thread
    t=$threads
    if [ "$conns" -lt "$t" ]; then
        t=$conns
    fi
}

# the points of a curve, in their order
points() {
    case $1 in
        shards)   echo plain $shard_counts ;;
        callers)  for n in $callers; do
                      for z in $zones; do printf '%s ' "$n@$z"; done
                  done
                  echo plain ;;
        policies) echo plain $policy_counts ;;
        concurrency)
                  for c in $concurrency; do
                      printf '%s ' "plain@$c" "module@$c"
                  done
                  echo ;;
    esac
}

# measure_point CURVE POINT ROUND
measure_point() {
    point "$1" "$2"
    out="$results/curve-rounds.tsv" d=$duration
    if [ "$3" = warmup ]; then
        out="$run/warmup.tsv" d=1
    fi
    measure "$3" "$1-$(echo "$2" | tr @ -)" "c$conns" "$t" "$conns" "$d" \
        "$out" curve="$1" kind="$kind" x="$x" zone="$zone" \
        shards="$shards_n" keys="$keys"
}

# rotate N WORD...: the words, the first N of them moved to the end
rotate() {
    r_n=$1
    shift
    r_head="" r_i=0
    for w in "$@"; do
        if [ $r_i -lt "$r_n" ]; then
            r_head="$r_head $w"
        else
            printf '%s ' "$w"
        fi
        r_i=$((r_i + 1))
    done
    echo $r_head
}

npoints=0
for c in $curves; do
    npoints=$(( npoints + $(points "$c" | wc -w) ))
done
echo "bench-curve: $(nproc) cores, $rounds rounds of $npoints points" \
     "($curves), ${duration}s each" >&2

# connections made and scripts loaded before anything counts: one second
# of every point (of the concurrency curve, only the highest)
echo "warm-up" >&2
for c in $curves; do
    if [ "$c" = concurrency ]; then
        top_c=$(max $concurrency)
        measure_point "$c" "plain@$top_c" warmup
        measure_point "$c" "module@$top_c" warmup
        continue
    fi
    for p in $(points "$c"); do
        measure_point "$c" "$p" warmup
    done
done

# Each round runs every curve once, each curve's points one after the
# other, a different one first each round; the concurrency curve keeps
# plain and module of one connection count side by side, in turns.
round=1
while [ "$round" -le "$rounds" ]; do
    echo "round $round/$rounds" >&2
    for c in $curves; do
        set -- $(points "$c")
        step=1
        [ "$c" = concurrency ] && step=2
        order=$(rotate $(( ( (round - 1) * step ) % $# )) "$@")
        if [ "$c" = concurrency ] && [ $((round % 2)) -eq 0 ]; then
            order=$(echo $order | sed 's/\(plain@[0-9]*\) \(module@[0-9]*\)/\2 \1/g')
        fi
        for p in $order; do
            measure_point "$c" "$p" "$round"
        done
    done
    round=$((round + 1))
done

# --- the report -----------------------------------------------------------

echo >&2
perl "$bench/curve.pl" "$results" > "$results/curve-summary.txt"
cat "$results/curve-summary.txt"

for c in $curves; do
    gnuplot -e "resultdir='$results'; curve='$c'" "$bench/curve.gp" \
        || die "gnuplot failed for the $c curve"
done

echo
echo "written: $results/curve-summary.txt curve-rounds.tsv" \
     "$(for c in $curves; do printf 'curve-%s.tsv curve-%s.png ' "$c" "$c"; done)"
