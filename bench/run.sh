#!/bin/sh
# `make bench`: two Redis shards and four nginx on 127.0.0.1 (plain, with
# the module, with the module and one of its two shards down, with the
# module and its only shard down), wrk against each scenario in interleaved
# rounds, then the Redis memory per key.  Prints the table and writes
# bench/results/{summary.txt,rounds.tsv,memory.tsv,bench.png}.
# bench/README.md explains the scenarios and the knobs:
#
#   BENCH_DURATION=5 BENCH_ROUNDS=3 BENCH_CONNECTIONS=50 BENCH_THREADS=2
#   BENCH_C1_DURATION=$BENCH_DURATION BENCH_KEYS=10000
#
# Everything it starts it stops again by pid, on exit and on Ctrl-C.

set -eu

cd "$(dirname "$0")/.."
top=$(pwd)
results="$top/bench/results"
run="$results/run"
raw="$results/raw"

. "$top/bench/lib.sh"

duration=${BENCH_DURATION:-5}
rounds=${BENCH_ROUNDS:-3}
connections=${BENCH_CONNECTIONS:-50}
threads=${BENCH_THREADS:-2}
c1_duration=${BENCH_C1_DURATION:-$duration}
keys=${BENCH_KEYS:-10000}

# memory per key: one request per key under this limit and window (s)
mem_limit=100
mem_window=3600

for v in duration rounds connections threads c1_duration keys; do
    eval "need_int $v \"\$$v\""
done

[ "$connections" -ge "$threads" ] \
    || die "BENCH_CONNECTIONS ($connections) must be >= BENCH_THREADS ($threads)"

need_tools
bench_begin
rm -f "$results/rounds.tsv" "$results/memory.tsv" "$results/summary.txt" \
      "$results/bench.png" "$results/plot.dat" "$results/plot.vars"

# dead_port: a free port nothing is started on
set -- $(free_ports 7)
plain_port=$1 limiter_port=$2 down_port=$3 dead_nginx_port=$4
shard1=$5 shard2=$6 dead_port=$7
[ -n "$dead_port" ] || die "no free ports"

start_redis "$shard1" "$shard2"

start_nginx plain plain "$plain_port" -
start_nginx limiter limiter "$limiter_port" 10m "$shard1" "$shard2"
start_nginx down limiter "$down_port" 10m "$shard1" "$dead_port"
start_nginx dead limiter "$dead_nginx_port" 10m "$dead_port"

{
    machine_meta
    cat <<META
duration=$duration
c1_duration=$c1_duration
rounds=$rounds
connections=$connections
threads=$threads
keys=$keys
mem_limit=$mem_limit
mem_window=$mem_window
META
} > "$results/meta.txt"

# --- the load -------------------------------------------------------------

# scenario NAME: sets url, stats (the port of ratelimit_stats, if any),
# nginx_pid (the master serving it) and hot (the one key, if any)
scenario() {
    hot=""
    stats=""
    case $1 in
        plain)      url="http://127.0.0.1:$plain_port/plain/"
                    nginx_pid=$plain_pid ;;
        limit_req)  url="http://127.0.0.1:$plain_port/limit_req/"
                    nginx_pid=$plain_pid ;;
        allowed)    url="http://127.0.0.1:$limiter_port/allowed/"
                    stats=$limiter_port nginx_pid=$limiter_pid ;;
        hot_key)    url="http://127.0.0.1:$limiter_port/hot/"
                    stats=$limiter_port nginx_pid=$limiter_pid
                    hot="hot-user" ;;
        shard_down) url="http://127.0.0.1:$down_port/allowed/"
                    stats=$down_port nginx_pid=$down_pid ;;
        only_dead)  url="http://127.0.0.1:$dead_nginx_port/allowed/"
                    stats=$dead_nginx_port nginx_pid=$dead_pid ;;
    esac
}

# load NAME ROUND MODE: one wrk run, recorded as a row of rounds.tsv
load() {
    scenario "$1"
    if [ "$3" = c1 ]; then
        t=1 c=1 d=$c1_duration
    else
        t=$threads c=$connections d=$duration
    fi
    out="$results/rounds.tsv"
    if [ "$2" = warmup ]; then
        d=1 out="$run/warmup.tsv"
    fi
    measure "$2" "$1" "$3" "$t" "$c" "$d" "$out"
}

all="plain limit_req allowed hot_key shard_down only_dead"
nall=$(echo $all | wc -w)

echo "bench: $(nproc) cores, $rounds rounds of $nall scenarios," \
     "${duration}s at -t$threads -c$connections and ${c1_duration}s at -t1 -c1" \
     "each" >&2

# connections made and scripts loaded before anything counts
echo "warm-up" >&2
for s in $all; do
    load "$s" warmup load
done

round=1
while [ "$round" -le "$rounds" ]; do
    echo "round $round/$rounds" >&2

    # a different scenario goes first each round
    order="" rest="" i=1
    for s in $all; do
        if [ $i -lt $(( (round - 1) % nall + 1 )) ]; then
            rest="$rest $s"
        else
            order="$order $s"
        fi
        i=$((i + 1))
    done
    order="$order$rest"

    for s in $order; do
        load "$s" "$round" load
    done
    for s in $order; do
        load "$s" "$round" c1
    done
    round=$((round + 1))
done

echo "Redis memory per key ($keys keys per algorithm)" >&2
perl "$bench/bench.pl" memory --nginx "$limiter_port" \
    --redis "$shard1,$shard2" --keys "$keys" --limit "$mem_limit" \
    --window "$mem_window" --out "$results/memory.tsv"

# --- the report -----------------------------------------------------------

echo >&2
perl "$bench/report.pl" "$results" > "$results/summary.txt"
cat "$results/summary.txt"

gnuplot -e "resultdir='$results'" "$bench/plot.gp" \
    || die "gnuplot failed"

echo
echo "written: $results/summary.txt rounds.tsv memory.tsv bench.png"
