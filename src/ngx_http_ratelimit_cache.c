
/*
 * Global API rate limiter: the two caches in the shared zone.
 *
 * The rule cache maps a customer to the rule in force (or to "no rule: the
 * location's default"), so the steady-state request path needs no Redis
 * round trip to learn a limit.  The deny cache remembers keys known to be
 * over their limit until their retry time, so a hot abusive key is denied
 * without asking Redis at all.  It may only deny, never allow: the counts in
 * Redis stay exact.
 *
 * Both are rbtrees keyed by a CRC32 of the key with an LRU queue, like
 * limit_req's states.  A full zone evicts the least recently used entries;
 * an entry that still does not fit is simply not cached.  Every entry carries
 * the zone's epoch when it was made: bumping the epoch (a rule changed here
 * or on another edge node) invalidates them all at once.
 */


#include "ngx_http_ratelimit_cache.h"
#include "ngx_http_ratelimit_zone.h"


#define NGX_HTTP_RATELIMIT_EVICT_BATCH  8


static ngx_http_ratelimit_entry_t *ngx_http_ratelimit_cache_find(
    ngx_http_ratelimit_cache_t *cache, uint32_t hash, u_char *key, size_t len);
static ngx_http_ratelimit_entry_t *ngx_http_ratelimit_cache_upsert(
    ngx_http_ratelimit_zone_t *zone, ngx_http_ratelimit_cache_t *cache,
    u_char *key, size_t len);
static ngx_http_ratelimit_entry_t *ngx_http_ratelimit_cache_alloc(
    ngx_http_ratelimit_zone_t *zone, ngx_http_ratelimit_cache_t *cache,
    size_t len);
static ngx_uint_t ngx_http_ratelimit_cache_evict(ngx_slab_pool_t *shpool,
    ngx_http_ratelimit_cache_t *cache, ngx_uint_t n, ngx_uint_t only_stale,
    ngx_uint_t epoch);
static void ngx_http_ratelimit_cache_delete(ngx_slab_pool_t *shpool,
    ngx_http_ratelimit_cache_t *cache, ngx_http_ratelimit_entry_t *entry);


void
ngx_http_ratelimit_cache_init(ngx_http_ratelimit_cache_t *cache)
{
    ngx_rbtree_init(&cache->rbtree, &cache->sentinel,
                    ngx_http_ratelimit_cache_insert_value);
    ngx_queue_init(&cache->lru);
}


void
ngx_http_ratelimit_cache_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t           **p;
    ngx_http_ratelimit_entry_t   *e, *et;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            e = (ngx_http_ratelimit_entry_t *) node;
            et = (ngx_http_ratelimit_entry_t *) temp;

            p = (ngx_memn2cmp(e->data, et->data, e->len, et->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/*
 * NGX_OK: *rule is the cached answer (rule->limit 0: the customer has no
 * rule of its own).  NGX_DECLINED: not known, ask Redis.
 */

ngx_int_t
ngx_http_ratelimit_rule_cache_get(ngx_http_ratelimit_zone_t *zone,
    u_char *customer, size_t len, rl_limit_t *rule)
{
    uint32_t                     hash;
    ngx_int_t                    rc;
    ngx_http_ratelimit_cache_t  *cache;
    ngx_http_ratelimit_entry_t  *e;

    cache = &zone->sh->rule_cache;
    hash = ngx_crc32_short(customer, len);

    ngx_shmtx_lock(&zone->shpool->mutex);

    e = ngx_http_ratelimit_cache_find(cache, hash, customer, len);

    if (e == NULL) {
        rc = NGX_DECLINED;

    } else if (e->epoch != zone->sh->epoch
               || (e->expires
                   && (ngx_msec_int_t) (e->until - ngx_current_msec) <= 0))
    {
        /* changed since, or expired: the shard tells what applies now */

        ngx_http_ratelimit_cache_delete(zone->shpool, cache, e);
        rc = NGX_DECLINED;

    } else {
        ngx_queue_remove(&e->queue);
        ngx_queue_insert_head(&cache->lru, &e->queue);
        *rule = e->rule;
        rc = NGX_OK;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return rc;
}


/*
 * "epoch" is the zone's epoch when the rule was asked for: a rule read
 * before an invalidation must not be cached as current after it.  "ttl":
 * the ms the answer holds (the rule in force expires then), 0: until the
 * next change; counted from the reply, so it ends here at most the reply's
 * trip later than on the shard's clock.
 */

void
ngx_http_ratelimit_rule_cache_put(ngx_http_ratelimit_zone_t *zone,
    u_char *customer, size_t len, rl_limit_t *rule, ngx_msec_t ttl,
    ngx_uint_t epoch)
{
    ngx_http_ratelimit_entry_t  *e;

    if (epoch != zone->sh->epoch) {
        return;
    }

    ngx_shmtx_lock(&zone->shpool->mutex);

    e = ngx_http_ratelimit_cache_upsert(zone, &zone->sh->rule_cache,
                                        customer, len);
    if (e) {
        e->epoch = epoch;
        e->rule = *rule;

        /* a month at most: beyond it the entry is simply read again */

        e->expires = (ttl != 0);
        e->until = ngx_current_msec
                   + ngx_min(ttl, (ngx_msec_t) 30 * 86400 * 1000);
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * NGX_OK: the key is over its limit for *retry_ms more; *reset_ms and
 * *limit describe it for the headers.  NGX_DECLINED: ask Redis.
 */

ngx_int_t
ngx_http_ratelimit_deny_cache_get(ngx_http_ratelimit_zone_t *zone,
    u_char *key, size_t len, ngx_msec_t *retry_ms, ngx_msec_t *reset_ms)
{
    uint32_t                     hash;
    ngx_int_t                    rc;
    ngx_msec_int_t               left;
    ngx_http_ratelimit_cache_t  *cache;
    ngx_http_ratelimit_entry_t  *e;

    cache = &zone->sh->deny_cache;

    /* nothing cached: spare every allowed request the lock */

    if (cache->entries == 0) {
        return NGX_DECLINED;
    }

    hash = ngx_crc32_short(key, len);
    rc = NGX_DECLINED;

    ngx_shmtx_lock(&zone->shpool->mutex);

    e = ngx_http_ratelimit_cache_find(cache, hash, key, len);

    if (e) {
        left = (ngx_msec_int_t) (e->until - ngx_current_msec);

        if (left <= 0 || e->epoch != zone->sh->epoch) {
            ngx_http_ratelimit_cache_delete(zone->shpool, cache, e);

        } else {
            *retry_ms = left;
            left = (ngx_msec_int_t) (e->reset_until - ngx_current_msec);
            *reset_ms = left > 0 ? (ngx_msec_t) left : 0;
            rc = NGX_OK;
        }
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return rc;
}


void
ngx_http_ratelimit_deny_cache_put(ngx_http_ratelimit_zone_t *zone,
    u_char *key, size_t len, ngx_msec_t retry_ms, ngx_msec_t reset_ms,
    ngx_uint_t epoch)
{
    ngx_http_ratelimit_cache_t  *cache;
    ngx_http_ratelimit_entry_t  *e;

    if (epoch != zone->sh->epoch) {
        return;
    }

    cache = &zone->sh->deny_cache;

    ngx_shmtx_lock(&zone->shpool->mutex);

    /* entries whose time has passed go first: they are worth nothing */

    (void) ngx_http_ratelimit_cache_evict(zone->shpool, cache, 2, 1, epoch);

    e = ngx_http_ratelimit_cache_upsert(zone, cache, key, len);
    if (e) {
        e->epoch = epoch;
        e->until = ngx_current_msec + retry_ms;
        e->reset_until = ngx_current_msec + reset_ms;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


/*
 * The entry for the key, found or made, at the hot end of the queue; NULL
 * when the zone has no room even after evictions.  Called locked.
 */

static ngx_http_ratelimit_entry_t *
ngx_http_ratelimit_cache_upsert(ngx_http_ratelimit_zone_t *zone,
    ngx_http_ratelimit_cache_t *cache, u_char *key, size_t len)
{
    uint32_t                     hash;
    ngx_http_ratelimit_entry_t  *e;

    hash = ngx_crc32_short(key, len);

    e = ngx_http_ratelimit_cache_find(cache, hash, key, len);

    if (e) {
        ngx_queue_remove(&e->queue);

    } else {
        e = ngx_http_ratelimit_cache_alloc(zone, cache, len);

        if (e == NULL) {
            return NULL;
        }

        e->node.key = hash;
        e->len = (u_short) len;
        ngx_memcpy(e->data, key, len);

        ngx_rbtree_insert(&cache->rbtree, &e->node);
        cache->entries++;
    }

    ngx_queue_insert_head(&cache->lru, &e->queue);

    return e;
}


/* a rule changed: every cached rule and every cached denial is void */

void
ngx_http_ratelimit_cache_invalidate(ngx_http_ratelimit_zone_t *zone)
{
    (void) ngx_atomic_fetch_add(&zone->sh->epoch, 1);
}


/*
 * Called locked, when the zone must make room for something that matters
 * more than cached entries (a new ring): frees a batch of the least
 * recently used entries of both caches.  Returns how many went.
 */

ngx_uint_t
ngx_http_ratelimit_cache_shrink_locked(ngx_http_ratelimit_zone_t *zone)
{
    ngx_uint_t  freed;

    freed = ngx_http_ratelimit_cache_evict(zone->shpool, &zone->sh->deny_cache,
                                           NGX_HTTP_RATELIMIT_EVICT_BATCH * 8,
                                           0, 0);

    freed += ngx_http_ratelimit_cache_evict(zone->shpool,
                                            &zone->sh->rule_cache,
                                            NGX_HTTP_RATELIMIT_EVICT_BATCH * 8,
                                            0, 0);

    return freed;
}


static ngx_http_ratelimit_entry_t *
ngx_http_ratelimit_cache_find(ngx_http_ratelimit_cache_t *cache,
    uint32_t hash, u_char *key, size_t len)
{
    ngx_int_t                    rc;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_http_ratelimit_entry_t  *e;

    node = cache->rbtree.root;
    sentinel = cache->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        /* hash == node->key */

        e = (ngx_http_ratelimit_entry_t *) node;

        rc = ngx_memn2cmp(key, e->data, len, (size_t) e->len);

        if (rc == 0) {
            return e;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static ngx_http_ratelimit_entry_t *
ngx_http_ratelimit_cache_alloc(ngx_http_ratelimit_zone_t *zone,
    ngx_http_ratelimit_cache_t *cache, size_t len)
{
    size_t                       size;
    ngx_uint_t                   i;
    ngx_http_ratelimit_cache_t  *victims[2];
    ngx_http_ratelimit_entry_t  *e;

    size = offsetof(ngx_http_ratelimit_entry_t, data) + len;

    e = ngx_slab_alloc_locked(zone->shpool, size);
    if (e) {
        return e;
    }

    /*
     * The zone is full: the least recently used entries go, first of this
     * cache, then of the other, whose entries may hold the memory.
     */

    victims[0] = cache;
    victims[1] = (cache == &zone->sh->rule_cache) ? &zone->sh->deny_cache
                                                  : &zone->sh->rule_cache;

    for (i = 0; i < 2; i++) {
        while (ngx_http_ratelimit_cache_evict(zone->shpool, victims[i],
                                              NGX_HTTP_RATELIMIT_EVICT_BATCH,
                                              0, 0))
        {
            e = ngx_slab_alloc_locked(zone->shpool, size);
            if (e) {
                return e;
            }
        }
    }

    return NULL;
}


/*
 * Frees up to n entries from the cold end of the queue: any of them, or,
 * with only_stale, only those already worthless (past their time or of an
 * old epoch).  Returns how many went.
 */

static ngx_uint_t
ngx_http_ratelimit_cache_evict(ngx_slab_pool_t *shpool,
    ngx_http_ratelimit_cache_t *cache, ngx_uint_t n, ngx_uint_t only_stale,
    ngx_uint_t epoch)
{
    ngx_uint_t                   freed;
    ngx_queue_t                 *q;
    ngx_http_ratelimit_entry_t  *e;

    freed = 0;

    while (freed < n && !ngx_queue_empty(&cache->lru)) {

        q = ngx_queue_last(&cache->lru);
        e = ngx_queue_data(q, ngx_http_ratelimit_entry_t, queue);

        if (only_stale
            && e->epoch == epoch
            && (ngx_msec_int_t) (e->until - ngx_current_msec) > 0)
        {
            break;
        }

        ngx_http_ratelimit_cache_delete(shpool, cache, e);
        cache->evictions++;
        freed++;
    }

    return freed;
}


static void
ngx_http_ratelimit_cache_delete(ngx_slab_pool_t *shpool,
    ngx_http_ratelimit_cache_t *cache, ngx_http_ratelimit_entry_t *entry)
{
    ngx_queue_remove(&entry->queue);
    ngx_rbtree_delete(&cache->rbtree, &entry->node);
    ngx_slab_free_locked(shpool, entry);
    cache->entries--;
}
