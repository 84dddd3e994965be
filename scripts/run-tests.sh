#!/bin/sh
# Runs every suite under prove, against real Redis shards started here on
# free loopback ports and stopped on exit.  Called by `make test`.
#
# The suites learn where things are from the environment:
#   TEST_NGINX_REDIS_PORT, TEST_NGINX_REDIS_PORT2   the two shards
#   TEST_NGINX_DEAD_PORT                            a port nobody listens on
#   TEST_NGINX_LOAD_MODULES                         the module's .so
#   TEST_NGINX_BINARY                               Debian's nginx

set -eu

cd "$(dirname "$0")/.."
top=$(pwd)

work=$(mktemp -d /tmp/ratelimit-test.XXXXXX)

# the shards are found by their pid files: start_shard runs in a subshell
cleanup() {
    for pidfile in "$work"/redis-*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 40 ]; do
            sleep 0.05
            i=$((i + 1))
        done
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    perl -I"$top/t/lib" -MRLTest::Redis -e 'print RLTest::Redis::free_port()'
}

start_shard() {
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" --daemonize yes --pidfile "$work/redis-$port.pid" \
        --logfile "$work/redis-$port.log"
    i=0
    until redis-cli -p "$port" PING >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "redis on $port did not start" >&2; exit 1; }
        sleep 0.05
    done
    echo "$port"
}

TEST_NGINX_REDIS_PORT=$(start_shard)
TEST_NGINX_REDIS_PORT2=$(start_shard)
TEST_NGINX_DEAD_PORT=$(free_port)
TEST_NGINX_LOAD_MODULES=${TEST_NGINX_LOAD_MODULES:-"$top/build/ngx_http_ratelimit_module.so"}
TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
export TEST_NGINX_REDIS_PORT TEST_NGINX_REDIS_PORT2 TEST_NGINX_DEAD_PORT
export TEST_NGINX_LOAD_MODULES TEST_NGINX_BINARY

# the real Test::Nginx when installed, the project's runner otherwise
PERL5LIB="$top/t/lib${PERL5LIB:+:$PERL5LIB}"
if ! perl -MTest::Nginx::Socket -e 1 2>/dev/null; then
    PERL5LIB="$top/t/compat:$PERL5LIB"
fi
export PERL5LIB

echo "shards on 127.0.0.1:$TEST_NGINX_REDIS_PORT and :$TEST_NGINX_REDIS_PORT2"

if [ $# -eq 0 ]; then set -- t; fi
prove ${PROVE_FLAGS:-} -r "$@"
