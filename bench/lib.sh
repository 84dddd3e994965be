# Shared by bench/run.sh (`make bench`) and bench/curve.sh (`make
# bench-curve`), sourced after the caller has set
#
#   top      the tree (where build/ and bench/ are)
#   run      the directory for this run's configurations and logs
#   raw      the directory for wrk's output of every run
#
# It gives: die, need_int, need_tools, Redis and nginx started on
# 127.0.0.1 and stopped again by pid (on exit and on Ctrl-C), the machine's
# description for a meta file, and one measured wrk run.  POSIX sh.

bench="$top/bench"
nginx=${NGINX:-/usr/sbin/nginx}
module="$top/build/ngx_http_ratelimit_module.so"

die() {
    echo "bench: $*" >&2
    exit 1
}

# need_int NAME VALUE: a positive integer, or stop
need_int() {
    case $2 in
        ''|*[!0-9]*|0) die "$1 must be a positive integer, not \"$2\"" ;;
    esac
}

need_tools() {
    for tool in wrk gnuplot redis-server perl; do
        command -v "$tool" >/dev/null 2>&1 \
            || die "$tool is missing: sh scripts/deps.sh --bench"
    done
    [ -x "$nginx" ] || die "no nginx at $nginx"
    [ -f "$module" ] || die "no module at $module: run make first"
}

# --- start and stop -------------------------------------------------------

pids=""         # Redis servers and nginx masters, in start order
nginx_pids=""
redis_pids=""   # the Redis servers, comma-separated (their CPU time)
redis_ports=""  # their ports, comma-separated (their INFO commandstats)
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

# fresh run and raw directories, and stop() armed
bench_begin() {
    rm -rf "$run" "$raw"
    mkdir -p "$run" "$raw"
    trap stop EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# free_ports N: prints N free loopback ports
free_ports() {
    perl "$bench/bench.pl" freeports "$1"
}

# start_redis PORT...: one Redis server per port, no persistence, and wait
# until each accepts
start_redis() {
    for sr_port in "$@"; do
        mkdir -p "$run/redis-$sr_port"
        redis-server --port "$sr_port" --bind 127.0.0.1 --save '' \
            --appendonly no --daemonize no --dir "$run/redis-$sr_port" \
            --logfile "$run/redis-$sr_port/redis.log" &
        pids="$pids $!"
        redis_pids="${redis_pids:+$redis_pids,}$!"
        redis_ports="${redis_ports:+$redis_ports,}$sr_port"
    done
    for sr_port in "$@"; do
        perl "$bench/bench.pl" wait-port "$sr_port"
    done
}

user=""
[ "$(id -u)" = 0 ] && user="user root;"

# start_nginx NAME BODY PORT ZONE SHARD...: one nginx from nginx.conf.in
# and bench/BODY.conf.in, in $run/nginx-NAME, listening on PORT.  A body
# that includes @SHARDS@ (one ratelimit_redis line per SHARD port) is one
# with the module: it is loaded; @ZONE@ holds "ratelimit_zone bench:ZONE".
# Bodies may also include @COMMON@/FILE: files the caller put in $run.
# Sets NAME_pid (NAME: letters, digits, _) to the master's pid.  The
# functions' own variables start with their initials: the callers' stay.
start_nginx() {
    sn_name=$1 sn_body=$2 sn_port=$3 sn_zone=$4
    shift 4
    sn_dir="$run/nginx-$sn_name"
    mkdir -p "$sn_dir/tmp"

    sn_load=""
    grep -q '@SHARDS@' "$bench/$sn_body.conf.in" \
        && sn_load="load_module $module;"

    echo "ratelimit_zone bench:$sn_zone;" > "$sn_dir/zone.conf"
    : > "$sn_dir/shards.conf"
    for sn_shard in "$@"; do
        echo "ratelimit_redis 127.0.0.1:$sn_shard;" >> "$sn_dir/shards.conf"
    done

    sed -e "s|@PORT@|$sn_port|g" -e "s|@ZONE@|$sn_dir/zone.conf|g" \
        -e "s|@SHARDS@|$sn_dir/shards.conf|g" -e "s|@COMMON@|$run|g" \
        -e "s|@MEM_LIMIT@|${mem_limit:-100}|g" \
        -e "s|@MEM_WINDOW@|${mem_window:-3600}|g" \
        "$bench/$sn_body.conf.in" > "$sn_dir/body.conf"
    sed -e "s|@LOAD_MODULE@|$sn_load|" -e "s|@USER@|$user|" \
        -e "s|@RUN@|$sn_dir|g" -e "s|@BODY@|$sn_dir/body.conf|" \
        "$bench/nginx.conf.in" > "$sn_dir/nginx.conf"

    "$nginx" -p "$sn_dir/" -e "$sn_dir/error.log" -c "$sn_dir/nginx.conf" \
        -t -q || die "nginx -t failed for $sn_dir/nginx.conf"
    "$nginx" -p "$sn_dir/" -e "$sn_dir/error.log" -c "$sn_dir/nginx.conf" &
    pids="$pids $!"
    nginx_pids="$nginx_pids $!"
    eval "${sn_name}_pid=\$!"
    perl "$bench/bench.pl" wait-port "$sn_port"
}

# --- the machine ----------------------------------------------------------

# machine_meta: lines of key=value about the box, the software and the code
machine_meta() {
    cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo \
          | head -n 1)
    commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null \
             || echo 'unknown (not a git checkout)')
    # the module's own code: where src/, lua/ and config last changed
    code=$(git -C "$top" log -1 --format=%h -- src lua config 2>/dev/null \
           || true)
    [ -n "$code" ] && commit="$commit (src/, lua/, config as of $code)"
    if [ -n "$(git -C "$top" status --porcelain -- src lua config \
               2>/dev/null)" ]
    then
        commit="$commit + uncommitted changes in src/, lua/ or config"
    fi

    cat <<META
date=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
nproc=$(nproc)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=${cpu:-unknown}
kernel=$(uname -sr)
nginx=$("$nginx" -v 2>&1 | sed 's/^nginx version: //')
redis=$(redis-server --version | sed 's/^Redis server v=\([^ ]*\).*/\1/')
wrk=$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//; s/^wrk //')
commit=$commit
META
}

# --- one measured run -----------------------------------------------------

# measure ROUND NAME MODE THREADS CONNECTIONS SECONDS OUT [TAG=VALUE...]:
# one wrk run against $url with $keys ids (or the one id $hot), recorded as
# a row of the TSV OUT with the counter deltas around it: the nginx
# workers' CPU (master $nginx_pid), $stats (the port of ratelimit_stats, if
# any) and every Redis server started.  TAGs become leading columns.
measure() {
    m_round=$1 m_name=$2 m_mode=$3 m_t=$4 m_c=$5 m_d=$6 m_out=$7
    shift 7

    m_log="$raw/$m_round-$m_name-$m_mode.txt"
    m_opt="--nginx-pid $nginx_pid --redis-pids $redis_pids"
    m_opt="$m_opt --redis $redis_ports"
    [ -n "$stats" ] && m_opt="$m_opt --stats $stats"
    m_tags=""
    for m_tag in "$@"; do
        m_tags="$m_tags --tag $m_tag"
    done

    perl "$bench/bench.pl" snapshot $m_opt > "$run/before"

    # wrk is the only child that ends between these two: the difference
    # of the children's times is its CPU time
    times > "$run/times.before"
    BENCH_WRK_KEYS=$keys BENCH_WRK_HOTKEY=$hot \
        wrk -t"$m_t" -c"$m_c" -d"${m_d}s" --timeout 2s --latency \
            -s "$bench/wrk-keys.lua" "$url" > "$m_log" 2>&1 &
    wrk_pid=$!
    wait "$wrk_pid" || die "wrk failed, see $m_log"
    wrk_pid=""
    times > "$run/times.after"

    perl "$bench/bench.pl" record --round "$m_round" --scenario "$m_name" \
        --mode "$m_mode" --wrk "$m_log" --before "$run/before" $m_opt \
        --times-before "$run/times.before" \
        --times-after "$run/times.after" --out "$m_out" $m_tags
}
