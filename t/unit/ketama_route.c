
/*
 * ketama_route [-h md5|fnv1a_64|murmur] name:weight [name:weight ...] < keys
 *
 * Prints, for each key read from stdin (one per line, any bytes but '\n'),
 * the index of the server the ring routes it to, in the order the servers
 * were given, the key hashed with twemproxy's hash of that name (md5, the
 * module's default, without -h).  The name is everything before the last
 * ':', so "127.0.0.1:6379:1" is server "127.0.0.1:6379" of weight 1, the name
 * nutcracker gives "127.0.0.1:6379:1" in its servers list.  Tests compare
 * its answers with where nutcracker actually put the keys.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_ketama.h"


static int
parse_hash(const char *arg, rl_ketama_hash_t *hash)
{
    int          h;
    const char  *name;

    for (h = RL_KETAMA_HASH_MD5; ; h++) {
        name = rl_ketama_hash_name((rl_ketama_hash_t) h);

        if (name == NULL) {
            return -1;
        }

        if (strcmp(name, arg) == 0) {
            *hash = (rl_ketama_hash_t) h;
            return 0;
        }
    }
}


static int
parse_server(const char *arg, rl_ketama_server_t *server)
{
    char           *end;
    const char     *colon;
    unsigned long   weight;

    colon = strrchr(arg, ':');

    if (colon == NULL || colon == arg || colon[1] < '0' || colon[1] > '9') {
        return -1;
    }

    weight = strtoul(colon + 1, &end, 10);

    if (*end != '\0' || weight == 0 || weight > UINT32_MAX) {
        return -1;
    }

    server->name = (const unsigned char *) arg;
    server->name_len = (size_t) (colon - arg);
    server->weight = (uint32_t) weight;

    return 0;
}


int
main(int argc, char **argv)
{
    int                  c, first;
    size_t               n, i, npoints, len, size;
    rl_ketama_hash_t     hash;
    unsigned char       *key, *bigger;
    rl_ketama_point_t   *points;
    rl_ketama_server_t  *servers;

    hash = RL_KETAMA_HASH_DEFAULT;
    first = 1;

    if (argc > 2 && strcmp(argv[1], "-h") == 0) {
        if (parse_hash(argv[2], &hash) != 0) {
            fprintf(stderr, "unknown hash \"%s\", expected md5, fnv1a_64 "
                    "or murmur\n", argv[2]);
            return 2;
        }

        first = 3;
    }

    if (argc <= first) {
        fprintf(stderr, "usage: %s [-h md5|fnv1a_64|murmur] "
                "name:weight [name:weight ...] < keys\n", argv[0]);
        return 2;
    }

    n = (size_t) (argc - first);

    servers = calloc(n, sizeof(rl_ketama_server_t));
    if (servers == NULL) {
        perror("calloc");
        return 1;
    }

    for (i = 0; i < n; i++) {
        if (parse_server(argv[first + i], &servers[i]) != 0) {
            fprintf(stderr, "invalid server \"%s\", expected name:weight\n",
                    argv[first + i]);
            return 2;
        }
    }

    npoints = rl_ketama_points_needed(servers, n);
    if (npoints == 0) {
        fprintf(stderr, "the ring refuses these servers\n");
        return 1;
    }

    points = calloc(npoints, sizeof(rl_ketama_point_t));
    if (points == NULL) {
        perror("calloc");
        return 1;
    }

    npoints = rl_ketama_build(servers, n, points);
    if (npoints == 0) {
        fprintf(stderr, "rl_ketama_build failed\n");
        return 1;
    }

    size = 256;
    key = malloc(size);
    if (key == NULL) {
        perror("malloc");
        return 1;
    }

    /* getc() rather than fgets(): a key may hold NUL bytes */
    len = 0;

    for ( ;; ) {
        c = getc(stdin);

        if (c == EOF && len == 0) {
            break;
        }

        if (c == EOF || c == '\n') {
            printf("%lu\n", (unsigned long)
                   rl_ketama_lookup(points, npoints,
                                    rl_ketama_hash(hash, key, len)));
            len = 0;

            if (c == EOF) {
                break;
            }

            continue;
        }

        if (len == size) {
            size *= 2;
            bigger = realloc(key, size);
            if (bigger == NULL) {
                perror("realloc");
                return 1;
            }
            key = bigger;
        }

        key[len++] = (unsigned char) c;
    }

    if (ferror(stdin) || fflush(stdout) != 0) {
        perror("ketama_route");
        return 1;
    }

    free(key);
    free(points);
    free(servers);

    return 0;
}
