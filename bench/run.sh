#!/bin/sh
# `make bench`: two Redis shards and three nginx on 127.0.0.1 (plain, with
# the module, with the module and one shard down), wrk against each
# scenario in interleaved rounds, then the Redis memory per key.  Prints the
# table and writes bench/results/{summary.txt,rounds.tsv,memory.tsv,
# bench.png}.  bench/README.md explains the scenarios and the knobs:
#
#   BENCH_DURATION=5 BENCH_ROUNDS=3 BENCH_CONNECTIONS=50 BENCH_THREADS=2
#   BENCH_C1_DURATION=$BENCH_DURATION BENCH_KEYS=10000
#
# Everything it starts it stops again by pid, on exit and on Ctrl-C.

set -eu

cd "$(dirname "$0")/.."
top=$(pwd)
bench="$top/bench"
results="$bench/results"
run="$results/run"
raw="$results/raw"

nginx=${NGINX:-/usr/sbin/nginx}
module="$top/build/ngx_http_ratelimit_module.so"

duration=${BENCH_DURATION:-5}
rounds=${BENCH_ROUNDS:-3}
connections=${BENCH_CONNECTIONS:-50}
threads=${BENCH_THREADS:-2}
c1_duration=${BENCH_C1_DURATION:-$duration}
keys=${BENCH_KEYS:-10000}

# memory per key: one request per key under this limit and window (s)
mem_limit=100
mem_window=3600

die() {
    echo "bench: $*" >&2
    exit 1
}

for v in duration rounds connections threads c1_duration keys; do
    eval "val=\$$v"
    case $val in
        ''|*[!0-9]*|0) die "$v must be a positive integer, not \"$val\"" ;;
    esac
done

[ "$connections" -ge "$threads" ] \
    || die "BENCH_CONNECTIONS ($connections) must be >= BENCH_THREADS ($threads)"

for tool in wrk gnuplot redis-server perl; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool is missing: sh scripts/deps.sh --bench"
done
[ -x "$nginx" ] || die "no nginx at $nginx"
[ -f "$module" ] || die "no module at $module: run make first"

rm -rf "$run" "$raw"
mkdir -p "$run" "$raw"
rm -f "$results/rounds.tsv" "$results/memory.tsv" "$results/summary.txt" \
      "$results/bench.png" "$results/plot.dat"

# --- start and stop -------------------------------------------------------

pids=""        # Redis servers and nginx masters, in start order
nginx_pids=""
redis_pids=""  # the same Redis servers, comma-separated
wrk_pid=""

stop() {
    status=$?
    trap - EXIT INT TERM
    if [ -n "$wrk_pid" ]; then
        kill "$wrk_pid" 2>/dev/null || true
    fi
    # nginx first (gracefully: its workers close their Redis connections)
    for pid in $nginx_pids; do
        kill -QUIT "$pid" 2>/dev/null || true
    done
    for pid in $pids; do
        case " $nginx_pids " in *" $pid "*) continue ;; esac
        kill "$pid" 2>/dev/null || true
    done
    # every child gone, or after 5 s the stragglers killed
    for pid in $pids $wrk_pid; do
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
            sleep 0.05
            i=$((i + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    exit "$status"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

set -- $(perl "$bench/bench.pl" freeports 6)
plain_port=$1 limiter_port=$2 down_port=$3 shard1=$4 shard2=$5 dead_port=$6

for port in $shard1 $shard2; do
    mkdir -p "$run/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$run/redis-$port" \
        --logfile "$run/redis-$port/redis.log" &
    pids="$pids $!"
    redis_pids="${redis_pids:+$redis_pids,}$!"
done

for port in $shard1 $shard2; do
    perl "$bench/bench.pl" wait-port "$port"
done

user=""
[ "$(id -u)" = 0 ] && user="user root;"

# start_nginx NAME BODY PORT [SHARD2]: one nginx from nginx.conf.in and BODY
start_nginx() {
    dir="$run/nginx-$1"
    mkdir -p "$dir/tmp"
    load=""
    [ "$2" = limiter ] && load="load_module $module;"

    sed -e "s|@PORT@|$3|g" -e "s|@SHARD1@|$shard1|g" \
        -e "s|@SHARD2@|${4:-$shard2}|g" -e "s|@MEM_LIMIT@|$mem_limit|g" \
        -e "s|@MEM_WINDOW@|$mem_window|g" \
        "$bench/$2.conf.in" > "$dir/body.conf"
    sed -e "s|@LOAD_MODULE@|$load|" -e "s|@USER@|$user|" \
        -e "s|@RUN@|$dir|g" -e "s|@BODY@|$dir/body.conf|" \
        "$bench/nginx.conf.in" > "$dir/nginx.conf"

    "$nginx" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -t -q \
        || die "nginx -t failed for $dir/nginx.conf"
    "$nginx" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" &
    pids="$pids $!"
    nginx_pids="$nginx_pids $!"
    eval "${1}_pid=\$!"
    perl "$bench/bench.pl" wait-port "$3"
}

start_nginx plain plain "$plain_port"
start_nginx limiter limiter "$limiter_port"
start_nginx down limiter "$down_port" "$dead_port"

# --- the machine ----------------------------------------------------------

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo \
      | head -n 1)
commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null \
         || echo 'unknown (not a git checkout)')
if [ -n "$(git -C "$top" status --porcelain -- src lua config 2>/dev/null)" ]
then
    commit="$commit + uncommitted changes in src/, lua/ or config"
fi

cat > "$results/meta.txt" <<META
date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
nproc=$(nproc)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=${cpu:-unknown}
kernel=$(uname -sr)
nginx=$("$nginx" -v 2>&1 | sed 's/^nginx version: //')
redis=$(redis-server --version | sed 's/^Redis server v=\([^ ]*\).*/\1/')
wrk=$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//; s/^wrk //')
commit=$commit
duration=$duration
c1_duration=$c1_duration
rounds=$rounds
connections=$connections
threads=$threads
keys=$keys
mem_limit=$mem_limit
mem_window=$mem_window
META

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
    [ "$2" = warmup ] && d=1

    log="$raw/$2-$1-$3.txt"
    stats_opt="--nginx-pid $nginx_pid --redis-pids $redis_pids"
    [ -n "$stats" ] && stats_opt="$stats_opt --stats $stats"

    perl "$bench/bench.pl" snapshot $stats_opt --redis "$shard1,$shard2" \
        > "$run/before"

    # wrk is the only child that ends between these two: the difference
    # of the children's times is its CPU time
    times > "$run/times.before"
    BENCH_WRK_KEYS=$keys BENCH_WRK_HOTKEY=$hot \
        wrk -t"$t" -c"$c" -d"${d}s" --timeout 2s --latency \
            -s "$bench/wrk-keys.lua" "$url" > "$log" 2>&1 &
    wrk_pid=$!
    wait "$wrk_pid" || die "wrk failed, see $log"
    wrk_pid=""
    times > "$run/times.after"

    out="$results/rounds.tsv"
    [ "$2" = warmup ] && out="$run/warmup.tsv"

    perl "$bench/bench.pl" record --round "$2" --scenario "$1" --mode "$3" \
        --wrk "$log" --before "$run/before" $stats_opt \
        --times-before "$run/times.before" --times-after "$run/times.after" \
        --redis "$shard1,$shard2" --out "$out"
}

all="plain limit_req allowed hot_key shard_down"

echo "bench: $(nproc) cores, $rounds rounds of 5 scenarios," \
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
        if [ $i -lt $(( (round - 1) % 5 + 1 )) ]; then
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
