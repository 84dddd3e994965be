#!/bin/sh
# Builds every t/unit/*.c that has a main() into build/unit/<name>, linked
# with the src/rl_*.c files whose headers it includes (and theirs, in turn).
# Only the nginx-free rl_* files are candidates, so no nginx tree is needed.
# A binary is rebuilt only when it is older than one of its inputs, so
# running this again is cheap; run it from anywhere.
#
#   sh t/unit/build.sh        CC=clang sh t/unit/build.sh

set -e

cd "$(dirname "$0")/../.."

CC=${CC:-cc}
CFLAGS="-std=c99 -O2 -Wall -Wextra -Werror -Isrc"
LIBS="-lcrypto -lhiredis -lyajl"
OUT=build/unit

mkdir -p "$OUT"

# the src/rl_*.c files a source needs: one per included "rl_*.h" that has a
# .c beside it, followed through those files until nothing new turns up
deps() {
    todo="$1"
    found=""

    while [ -n "$todo" ]; do
        next=""

        for f in $todo; do
            for h in $(sed -n 's/^#include[[:space:]]*"\(rl_[A-Za-z0-9_]*\)\.h".*/\1/p' "$f"); do
                c="src/$h.c"
                case " $found " in
                    *" $c "*) continue ;;
                esac
                if [ -f "$c" ]; then
                    found="$found $c"
                    next="$next $c"
                fi
            done
        done

        todo="$next"
    done

    echo $found
}

for src in t/unit/*.c; do
    [ -f "$src" ] || continue

    grep -Eq '^(int[[:space:]]+)?main[[:space:]]*\(' "$src" || continue

    bin="$OUT/$(basename "$src" .c)"
    libs=$(deps "$src")

    stale=0
    [ -x "$bin" ] || stale=1
    for f in "$src" $libs src/rl_*.h t/unit/build.sh; do
        if [ -f "$f" ] && [ "$f" -nt "$bin" ]; then
            stale=1
        fi
    done

    [ "$stale" = 1 ] || continue

    echo "$CC $CFLAGS $src $libs $LIBS -o $bin"
    # build beside the target and rename, so a failed build leaves no binary
    $CC $CFLAGS "$src" $libs $LIBS -o "$bin.tmp"
    mv "$bin.tmp" "$bin"
done
