#!/bin/sh
# `make run`: two Redis shards on 127.0.0.1:6380 and :6381, and Debian's
# nginx with the module and conf.d/ratelimit-demo.conf on 127.0.0.1:8080,
# in front of a demo origin on :8081.  Ctrl-C stops all of it.

set -eu

cd "$(dirname "$0")/.."
top=$(pwd)
run="$top/build/demo"
nginx=${NGINX:-/usr/sbin/nginx}

rm -rf "$run"
mkdir -p "$run/conf" "$run/logs" "$run/redis"

for port in 6380 6381 8080 8081; do
    if perl -MIO::Socket::INET -e \
        'exit(IO::Socket::INET->new("127.0.0.1:$ARGV[0]") ? 0 : 1)' "$port"
    then
        echo "port $port is taken on 127.0.0.1: stop what uses it first" >&2
        exit 1
    fi
done

pids=""

stop() {
    trap - EXIT INT TERM
    echo
    echo "stopping"
    if [ -f "$run/logs/nginx.pid" ]; then
        kill -QUIT "$(cat "$run/logs/nginx.pid")" 2>/dev/null || true
    fi
    for pid in $pids; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 0' INT TERM

for port in 6380 6381; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$run/redis" --logfile "$run/redis/$port.log" &
    pids="$pids $!"
done

user=""
[ "$(id -u)" = 0 ] && user="user root;"

# a fresh admin token for this run, readable by nobody else
umask 077
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run/conf/admin.token"
umask 022
token=$(cat "$run/conf/admin.token")

cat > "$run/conf/nginx.conf" <<CONF
load_module $top/build/ngx_http_ratelimit_module.so;
$user
daemon off;
worker_processes 2;
error_log logs/error.log info;
pid logs/nginx.pid;

events { worker_connections 1024; }

http {
    access_log logs/access.log;
    include $top/conf.d/ratelimit-demo.conf;
}
CONF

"$nginx" -p "$run/" -c conf/nginx.conf -t
"$nginx" -p "$run/" -c conf/nginx.conf &
pids="$pids $!"

sleep 0.5
cat <<MSG

The demo runs (logs in build/demo/logs). Try:

    curl -i -H 'X-User-Id: alice' http://127.0.0.1:8080/api/hello

the 11th request of a minute gets 429 with Retry-After.  Give alice more:

    curl -X PUT http://127.0.0.1:8080/admin/limits \\
         -H 'Authorization: Bearer $token' \\
         -H 'Content-Type: application/json' \\
         -d '{"customer_id": "alice", "limit": 100, "window": 60}'

The admin token is in build/demo/conf/admin.token (README, "The admin
endpoint", has every call).
Counters: curl http://127.0.0.1:8080/ratelimit/stats (JSON) or
          curl http://127.0.0.1:8080/ratelimit/metrics (Prometheus).
Ctrl-C stops it.

MSG

wait
