
/*
 * Global API rate limiter: the shared memory zone.
 *
 * The master builds the ketama ring here once per configuration; every
 * worker reads it in place.  Shard health lives beside the ring so that one
 * worker's discovery that a shard is down spares the others the timeout.
 */


#include "ngx_http_ratelimit_zone.h"
#include "ngx_http_ratelimit_redis.h"


/* a shard marked down is probed again after this, doubling up to the cap */
#define NGX_HTTP_RATELIMIT_PROBE_MIN   250
#define NGX_HTTP_RATELIMIT_PROBE_MAX   2000


static ngx_http_ratelimit_zone_t  *ngx_http_ratelimit_worker_zone;


static ngx_http_ratelimit_ring_t *ngx_http_ratelimit_ring_create(
    ngx_http_ratelimit_zone_t *zone, uint32_t fingerprint, ngx_log_t *log);
static uint32_t ngx_http_ratelimit_ring_fingerprint(
    ngx_http_ratelimit_main_conf_t *rmcf);
static void ngx_http_ratelimit_ring_free_locked(
    ngx_http_ratelimit_zone_t *zone, ngx_http_ratelimit_ring_t *ring);


ngx_int_t
ngx_http_ratelimit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_ratelimit_zone_t  *ozone = data;

    size_t                           len;
    uint32_t                         fingerprint;
    ngx_http_ratelimit_ring_t       *ring, *next, *found;
    ngx_http_ratelimit_zone_t       *zone;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    zone = shm_zone->data;
    rmcf = zone->main_conf;

    if (ozone) {
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;

    } else {
        zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

        if (shm_zone->shm.exists) {
            zone->sh = zone->shpool->data;

        } else {
            zone->sh = ngx_slab_calloc(zone->shpool,
                                       sizeof(ngx_http_ratelimit_shctx_t));
            if (zone->sh == NULL) {
                return NGX_ERROR;
            }

            zone->shpool->data = zone->sh;

            ngx_http_ratelimit_cache_init(&zone->sh->rule_cache);
            ngx_http_ratelimit_cache_init(&zone->sh->deny_cache);

            len = sizeof(" in ratelimit zone \"\"") + shm_zone->shm.name.len;

            zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
            if (zone->shpool->log_ctx == NULL) {
                return NGX_ERROR;
            }

            ngx_sprintf(zone->shpool->log_ctx, " in ratelimit zone \"%V\"%Z",
                        &shm_zone->shm.name);

            zone->shpool->log_nomem = 0;
        }
    }

    if (rmcf->shards.nelts == 0) {
        return NGX_OK;
    }

    /*
     * A ring of the same shards and key hash that some generation still
     * uses is shared, with its health state.  Rings stay while they are current (the ring
     * of the configuration the master runs: workers it spawns, also after a
     * crash, find it) or some worker runs with them; the others are left
     * from reloads that failed, and go now.  This ring becomes current only
     * once the reload can no longer fail (ngx_http_ratelimit_ring_commit).
     */

    fingerprint = ngx_http_ratelimit_ring_fingerprint(rmcf);

    ngx_shmtx_lock(&zone->shpool->mutex);

    found = NULL;

    for (ring = zone->sh->rings; ring; ring = next) {
        next = ring->next;

        /*
         * the hash is compared, not only fingerprinted: a ring shared
         * across a change of hash would send every key to the old place
         */
        if (ring->fingerprint == fingerprint
            && ring->nshards == rmcf->shards.nelts
            && ring->hash == (rl_ketama_hash_t) rmcf->hash)
        {
            found = ring;

        } else if (ring->refs == 0 && ring != zone->sh->current) {
            ngx_http_ratelimit_ring_free_locked(zone, ring);
        }
    }

    if (found == NULL) {
        found = ngx_http_ratelimit_ring_create(zone, fingerprint,
                                               shm_zone->shm.log);
        if (found == NULL) {
            ngx_shmtx_unlock(&zone->shpool->mutex);
            return NGX_ERROR;
        }
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    zone->ring = found;

    return NGX_OK;
}


/*
 * The configuration is committed (init_module, past the point where a
 * reload can fail): its ring is the current one.  The ring it replaces is
 * freed by the last of its workers to exit, or now if it has none.
 */

void
ngx_http_ratelimit_ring_commit(ngx_http_ratelimit_zone_t *zone)
{
    ngx_http_ratelimit_ring_t  *previous;

    if (zone->ring == NULL) {
        return;
    }

    ngx_shmtx_lock(&zone->shpool->mutex);

    previous = zone->sh->current;
    zone->sh->current = zone->ring;

    if (previous && previous != zone->ring && previous->refs == 0) {
        ngx_http_ratelimit_ring_free_locked(zone, previous);
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * Called locked.  The ring is one slab allocation: the ring, the shards'
 * health, the points.  It must fit whatever the caches hold, or a reload
 * that changes the shard list could never take effect: cached entries are
 * evicted until it does.
 */

static ngx_http_ratelimit_ring_t *
ngx_http_ratelimit_ring_create(ngx_http_ratelimit_zone_t *zone,
    uint32_t fingerprint, ngx_log_t *log)
{
    size_t                            n, size, ring_size, health_size;
    u_char                           *p;
    ngx_uint_t                        i, evicted;
    rl_ketama_server_t               *servers;
    ngx_http_ratelimit_ring_t        *ring;
    ngx_http_ratelimit_shard_conf_t  *shard;
    ngx_http_ratelimit_main_conf_t   *rmcf;

    rmcf = zone->main_conf;
    shard = rmcf->shards.elts;

    servers = ngx_alloc(rmcf->shards.nelts * sizeof(rl_ketama_server_t), log);
    if (servers == NULL) {
        return NULL;
    }

    for (i = 0; i < rmcf->shards.nelts; i++) {
        servers[i].name = shard[i].name.data;
        servers[i].name_len = shard[i].name.len;
        servers[i].weight = (uint32_t) shard[i].weight;
    }

    n = rl_ketama_points_needed(servers, rmcf->shards.nelts);

    if (n == 0) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "ratelimit: could not build the ketama ring of "
                      "%ui shards", rmcf->shards.nelts);
        ngx_free(servers);
        return NULL;
    }

    ring_size = ngx_align(sizeof(ngx_http_ratelimit_ring_t), 8);
    health_size = ngx_align(rmcf->shards.nelts
                            * sizeof(ngx_http_ratelimit_health_t), 8);
    size = ring_size + health_size + n * sizeof(rl_ketama_point_t);

    evicted = 0;

    for ( ;; ) {
        p = ngx_slab_alloc_locked(zone->shpool, size);
        if (p) {
            break;
        }

        if (ngx_http_ratelimit_cache_shrink_locked(zone) == 0) {
            ngx_log_error(NGX_LOG_EMERG, log, 0,
                          "ratelimit: no room for the ketama ring of %ui "
                          "shards (%uz bytes) even with the caches empty: "
                          "make \"ratelimit_zone\" larger",
                          rmcf->shards.nelts, size);
            ngx_free(servers);
            return NULL;
        }

        evicted = 1;
    }

    ngx_memzero(p, size);

    ring = (ngx_http_ratelimit_ring_t *) p;
    ring->health = (ngx_http_ratelimit_health_t *) (p + ring_size);
    ring->points = (rl_ketama_point_t *) (p + ring_size + health_size);
    ring->nshards = rmcf->shards.nelts;
    ring->fingerprint = fingerprint;
    ring->hash = (rl_ketama_hash_t) rmcf->hash;

    for (i = 0; i < ring->nshards; i++) {
        ring->health[i].name_len = shard[i].name.len;
        ngx_memcpy(ring->health[i].name, shard[i].name.data,
                   shard[i].name.len);
    }

    ring->npoints = rl_ketama_build(servers, rmcf->shards.nelts, ring->points);

    ngx_free(servers);

    if (ring->npoints == 0) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "ratelimit: could not build the ketama ring");
        ngx_slab_free_locked(zone->shpool, ring);
        return NULL;
    }

    ring->next = zone->sh->rings;
    zone->sh->rings = ring;

    if (evicted) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "ratelimit: cached entries evicted to make room for "
                      "the ketama ring of %ui shards", ring->nshards);
    }

    ngx_log_error(NGX_LOG_INFO, log, 0,
                  "ratelimit: ketama ring of %ui shards, %ui points, "
                  "hash %s", ring->nshards, ring->npoints,
                  rl_ketama_hash_name(ring->hash));

    return ring;
}


/*
 * A worker runs with its cycle's ring: it holds it until it exits, and its
 * connections report to it (ngx_http_ratelimit_shard_event).
 */

void
ngx_http_ratelimit_ring_hold(ngx_http_ratelimit_zone_t *zone)
{
    ngx_http_ratelimit_counters = &zone->sh->stats;
    ngx_http_ratelimit_worker_zone = zone;

    if (zone->ring == NULL || zone->worker_holds) {
        return;
    }

    ngx_shmtx_lock(&zone->shpool->mutex);
    zone->ring->refs++;
    ngx_shmtx_unlock(&zone->shpool->mutex);

    zone->worker_holds = 1;
}


/*
 * A worker exits: the last one out of a ring that is no longer current
 * frees it.  A worker that crashes keeps its reference: its ring then
 * stays, a small leak rather than a freed ring in use.
 */

void
ngx_http_ratelimit_ring_release(ngx_http_ratelimit_zone_t *zone)
{
    ngx_http_ratelimit_ring_t  *ring;

    if (!zone->worker_holds) {
        return;
    }

    zone->worker_holds = 0;
    ring = zone->ring;

    ngx_shmtx_lock(&zone->shpool->mutex);

    if (ring->refs > 0) {
        ring->refs--;
    }

    if (ring->refs == 0 && ring != zone->sh->current) {
        ngx_http_ratelimit_ring_free_locked(zone, ring);
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


static void
ngx_http_ratelimit_ring_free_locked(ngx_http_ratelimit_zone_t *zone,
    ngx_http_ratelimit_ring_t *ring)
{
    ngx_http_ratelimit_ring_t  **pp;

    for (pp = &zone->sh->rings; *pp; pp = &(*pp)->next) {
        if (*pp == ring) {
            *pp = ring->next;
            break;
        }
    }

    ngx_slab_free_locked(zone->shpool, ring);
}


static uint32_t
ngx_http_ratelimit_ring_fingerprint(ngx_http_ratelimit_main_conf_t *rmcf)
{
    uint32_t                          crc;
    ngx_uint_t                        i;
    ngx_http_ratelimit_shard_conf_t  *shard;

    shard = rmcf->shards.elts;

    ngx_crc32_init(crc);

    for (i = 0; i < rmcf->shards.nelts; i++) {
        ngx_crc32_update(&crc, shard[i].name.data, shard[i].name.len);
        ngx_crc32_update(&crc, (u_char *) &shard[i].weight,
                         sizeof(ngx_uint_t));
    }

    ngx_crc32_update(&crc, (u_char *) &rmcf->hash, sizeof(ngx_uint_t));

    ngx_crc32_final(crc);

    return crc;
}


ngx_uint_t
ngx_http_ratelimit_ring_lookup(ngx_http_ratelimit_ring_t *ring, u_char *key,
    size_t len)
{
    return rl_ketama_lookup(ring->points, ring->npoints,
                            rl_ketama_hash(ring->hash, key, len));
}


/*
 * The first shard that is up, walking the ring from the key's place; *tried
 * (0 the first time) says how far an earlier call walked, so that a caller
 * can go on to the next one.  NGX_ERROR: none is up.
 */

ngx_int_t
ngx_http_ratelimit_ring_next_live(ngx_http_ratelimit_ring_t *ring,
    u_char *key, size_t len, ngx_uint_t *tried)
{
    ngx_uint_t  first, shard;

    first = ngx_http_ratelimit_ring_lookup(ring, key, len);

    while (*tried < ring->nshards) {
        shard = (first + *tried) % ring->nshards;
        (*tried)++;

        if (ring->health[shard].down_until == 0) {
            return shard;
        }
    }

    return NGX_ERROR;
}


/*
 * UP: send.  PROBE: the shard is down but its retry time has come and this
 * caller won the right to try it.  DOWN: take the fail path now.
 */

ngx_uint_t
ngx_http_ratelimit_shard_admit(ngx_http_ratelimit_health_t *h)
{
    ngx_msec_t        now;
    ngx_atomic_int_t  failures;
    ngx_atomic_uint_t until, delay;

    until = h->down_until;

    if (until == 0) {
        return NGX_HTTP_RATELIMIT_SHARD_UP;
    }

    now = ngx_current_msec;

    if ((ngx_msec_int_t) (until - now) > 0) {
        return NGX_HTTP_RATELIMIT_SHARD_DOWN;
    }

    /* one probe per interval across all workers: whoever moves the mark */

    failures = h->failures;
    delay = NGX_HTTP_RATELIMIT_PROBE_MIN << ngx_min(failures, 3);
    delay = ngx_min(delay, NGX_HTTP_RATELIMIT_PROBE_MAX);

    if (ngx_atomic_cmp_set(&h->down_until, until, (now + delay) | 1)) {
        return NGX_HTTP_RATELIMIT_SHARD_PROBE;
    }

    return NGX_HTTP_RATELIMIT_SHARD_DOWN;
}


ngx_msec_t
ngx_http_ratelimit_shard_retry_in(ngx_http_ratelimit_health_t *h)
{
    ngx_msec_int_t  left;

    left = (ngx_msec_int_t) (h->down_until - ngx_current_msec);

    return left > 0 ? (ngx_msec_t) left : 0;
}


void
ngx_http_ratelimit_shard_failed(ngx_http_ratelimit_health_t *h,
    ngx_log_t *log, const char *reason)
{
    ngx_atomic_uint_t  until, failures;

    failures = ngx_atomic_fetch_add(&h->failures, 1) + 1;
    until = h->down_until;

    /* 0 means up, so a mark is never 0: the low bit is always set */

    if (until == 0
        && ngx_atomic_cmp_set(&h->down_until, 0,
                              (ngx_current_msec + NGX_HTTP_RATELIMIT_PROBE_MIN)
                              | 1))
    {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit: shard %*s marked down: %s",
                      h->name_len, h->name, reason);
        return;
    }

    /* an nginx built without --with-debug compiles the line below away */

    (void) failures;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, log, 0,
                   "ratelimit: shard %*s still down (%uA failures)",
                   h->name_len, h->name, failures);
}


void
ngx_http_ratelimit_shard_ok(ngx_http_ratelimit_health_t *h, ngx_log_t *log)
{
    ngx_atomic_uint_t  until;

    until = h->down_until;

    if (until == 0) {
        return;
    }

    if (ngx_atomic_cmp_set(&h->down_until, until, 0)) {
        h->failures = 0;

        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "ratelimit: shard %*s is back up",
                      h->name_len, h->name);
    }
}


/*
 * What this worker's connections report (ngx_http_ratelimit_redis.h): the
 * counters, and the health of the shard in the zone, shared by every worker
 * so that one worker's discovery spares the others the timeout.
 */

void
ngx_http_ratelimit_shard_event(ngx_uint_t shard, ngx_uint_t event,
    const char *reason, ngx_log_t *log)
{
    ngx_http_ratelimit_ring_t  *ring;

    switch (event) {

    case NGX_HTTP_RATELIMIT_REDIS_COMMAND:
        ngx_http_ratelimit_count(redis_commands, 1);
        ngx_http_ratelimit_count_shard(shard,
                                       NGX_HTTP_RATELIMIT_SHARD_COMMANDS, 1);
        return;

    case NGX_HTTP_RATELIMIT_REDIS_WRITE:
        ngx_http_ratelimit_count(redis_writes, 1);
        ngx_http_ratelimit_count_shard(shard, NGX_HTTP_RATELIMIT_SHARD_WRITES,
                                       1);
        return;

    case NGX_HTTP_RATELIMIT_REDIS_REPLY:
        ngx_http_ratelimit_count(redis_replies, 1);
        ngx_http_ratelimit_count_shard(shard, NGX_HTTP_RATELIMIT_SHARD_REPLIES,
                                       1);
        break;

    default: /* NGX_HTTP_RATELIMIT_REDIS_FAILED */
        ngx_http_ratelimit_count_shard(shard,
                                       NGX_HTTP_RATELIMIT_SHARD_FAILURES, 1);
        break;
    }

    if (ngx_http_ratelimit_worker_zone == NULL) {
        return;
    }

    ring = ngx_http_ratelimit_worker_zone->ring;

    if (ring == NULL || shard >= ring->nshards) {
        return;
    }

    if (event == NGX_HTTP_RATELIMIT_REDIS_REPLY) {
        ngx_http_ratelimit_shard_ok(&ring->health[shard], log);

    } else {
        ngx_http_ratelimit_shard_failed(&ring->health[shard], log, reason);
    }
}
