#!/bin/sh
# Installs the Debian packages the module needs to build, run, test and
# benchmark, skipping those already installed.  Debian 12 (bookworm).
#   --bench     also what `make bench` needs
#   --deb       also what `make deb` (the Debian package) and t/500-deb.t need
#   --valgrind  also valgrind (make test-valgrind)
# Plain `make test` needs none of them.

set -eu

packages="
    build-essential nginx nginx-dev libhiredis-dev libyajl-dev libssl-dev
    libpcre2-dev zlib1g-dev redis-server redis-tools redis-sentinel
    dnsmasq-base nutcracker curl openssl
    libtest-base-perl libtext-diff-perl libtest-longstring-perl
    liblist-moreutils-perl libwww-perl liburi-perl libipc-run-perl
    libredis-perl python3-prometheus-client
"

for flag in "$@"; do
    case "$flag" in
        --bench)    packages="$packages wrk gnuplot-nox" ;;
        --deb)      packages="$packages debhelper dpkg-dev fakeroot lintian" ;;
        --valgrind) packages="$packages valgrind" ;;
        *)          echo "deps.sh: unknown flag $flag" >&2; exit 2 ;;
    esac
done

missing=""
for p in $packages; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

[ -z "$missing" ] && exit 0

echo "installing:$missing"

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends $missing
