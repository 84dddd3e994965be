
/*
 * Global API rate limiter: directives, configuration and module hooks.
 */


#include "ngx_http_ratelimit_module.h"
#include "ngx_http_ratelimit_zone.h"
#include "ngx_http_ratelimit_redis.h"
#include "ngx_http_ratelimit_discovery.h"
#include "ngx_http_ratelimit_ssl.h"
#include "ngx_http_ratelimit_rules.h"
#include "ngx_http_ratelimit_handler.h"
#include "ngx_http_ratelimit_batch.h"
#include "ngx_http_ratelimit_admin.h"
#include "ngx_http_ratelimit_stats.h"
#include "ngx_http_ratelimit_metrics.h"


static void *ngx_http_ratelimit_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_ratelimit_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_ratelimit_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_ratelimit_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_ratelimit_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ratelimit_redis_password(ngx_conf_t *cf,
    ngx_str_t *value, ngx_str_t *password);
static char *ngx_http_ratelimit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ratelimit_key_name(ngx_conf_t *cf,
    ngx_str_t *value, ngx_str_t *name);
static char *ngx_http_ratelimit_policy(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ratelimit_compile_keys(ngx_conf_t *cf,
    ngx_str_t *value, ngx_uint_t n, ngx_array_t **keys,
    ngx_array_t **key_names);
static ngx_int_t ngx_http_ratelimit_parse_limit(ngx_conf_t *cf,
    ngx_str_t *value, ngx_uint_t *limit);
static ngx_int_t ngx_http_ratelimit_parse_window(ngx_conf_t *cf,
    ngx_str_t *value, ngx_uint_t *window);
static ngx_int_t ngx_http_ratelimit_resolve(ngx_conf_t *cf,
    ngx_http_ratelimit_loc_conf_t *conf);
static char *ngx_http_ratelimit_default(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_stats(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_admin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_admin_token(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_ratelimit_set_enum(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_set_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_set_timeout(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_ratelimit_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_ratelimit_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_ratelimit_init_process(ngx_cycle_t *cycle);
static void ngx_http_ratelimit_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_ratelimit_algorithms[] = {
    { ngx_string("token_bucket"), RL_RULE_ALGORITHM_TOKEN_BUCKET },
    { ngx_string("sliding_window"), RL_RULE_ALGORITHM_SLIDING_WINDOW },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_ratelimit_fail_policies[] = {
    { ngx_string("open"), NGX_HTTP_RATELIMIT_FAIL_OPEN },
    { ngx_string("closed"), NGX_HTTP_RATELIMIT_FAIL_CLOSED },
    { ngx_null_string, 0 }
};


/* as limit_req_log_level: the level of denials, and one below for delays */
static ngx_conf_enum_t  ngx_http_ratelimit_log_levels[] = {
    { ngx_string("info"), NGX_LOG_INFO },
    { ngx_string("notice"), NGX_LOG_NOTICE },
    { ngx_string("warn"), NGX_LOG_WARN },
    { ngx_string("error"), NGX_LOG_ERR },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_ratelimit_header_sets[] = {
    { ngx_string("off"), NGX_HTTP_RATELIMIT_HEADERS_OFF },
    { ngx_string("on"), NGX_HTTP_RATELIMIT_HEADERS_DRAFT },
    { ngx_string("legacy"), NGX_HTTP_RATELIMIT_HEADERS_LEGACY },
    { ngx_null_string, 0 }
};


/* twemproxy's names, so that a nutcracker with the same "hash:" agrees */
static ngx_conf_enum_t  ngx_http_ratelimit_redis_hashes[] = {
    { ngx_string("md5"), RL_KETAMA_HASH_MD5 },
    { ngx_string("fnv1a_64"), RL_KETAMA_HASH_FNV1A_64 },
    { ngx_string("murmur"), RL_KETAMA_HASH_MURMUR },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_ratelimit_commands[] = {

    { ngx_string("ratelimit_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_ratelimit_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_redis_sentinel"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_ratelimit_redis_sentinel,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_set_timeout,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_main_conf_t, timeout),
      NULL },

    { ngx_string("ratelimit_redis_tls_verify"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_main_conf_t, tls.verify),
      NULL },

    { ngx_string("ratelimit_redis_tls_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_main_conf_t, tls.trusted_certificate),
      NULL },

    { ngx_string("ratelimit_redis_tls_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_main_conf_t, tls.certificate),
      NULL },

    { ngx_string("ratelimit_redis_tls_certificate_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_main_conf_t, tls.certificate_key),
      NULL },

    { ngx_string("ratelimit_redis_tls_server_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_main_conf_t, tls.server_name),
      NULL },

    { ngx_string("ratelimit_redis_hash"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_set_enum,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_main_conf_t, hash),
      &ngx_http_ratelimit_redis_hashes },

    { ngx_string("ratelimit_policy"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_ratelimit_policy,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_ratelimit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_customer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, customer),
      NULL },

    { ngx_string("ratelimit_default"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE2,
      ngx_http_ratelimit_default,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_algorithm"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_set_enum,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, algorithm),
      &ngx_http_ratelimit_algorithms },

    { ngx_string("ratelimit_fail"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_set_enum,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, fail),
      &ngx_http_ratelimit_fail_policies },

    { ngx_string("ratelimit_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_set_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, status),
      NULL },

    { ngx_string("ratelimit_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, dry_run),
      NULL },

    { ngx_string("ratelimit_log_level"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_set_enum,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, log_level),
      &ngx_http_ratelimit_log_levels },

    { ngx_string("ratelimit_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_set_enum,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, headers),
      &ngx_http_ratelimit_header_sets },

    { ngx_string("ratelimit_problem_details"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_loc_conf_t, problem_details),
      NULL },

    { ngx_string("ratelimit_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ratelimit_admin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_admin_token"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_admin_token,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_stats"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ratelimit_stats,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ratelimit_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_ratelimit_module_ctx = {
    ngx_http_ratelimit_add_variables,      /* preconfiguration */
    ngx_http_ratelimit_init,               /* postconfiguration */

    ngx_http_ratelimit_create_main_conf,   /* create main configuration */
    ngx_http_ratelimit_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_ratelimit_create_loc_conf,    /* create location configuration */
    ngx_http_ratelimit_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_ratelimit_module = {
    NGX_MODULE_V1,
    &ngx_http_ratelimit_module_ctx,        /* module context */
    ngx_http_ratelimit_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_ratelimit_init_module,        /* init module */
    ngx_http_ratelimit_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_ratelimit_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_ratelimit_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratelimit_main_conf_t));
    if (rmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     rmcf->shm_zone = NULL;
     *     rmcf->used = 0;
     */

    if (ngx_array_init(&rmcf->shards, cf->pool, 4,
                       sizeof(ngx_http_ratelimit_shard_conf_t))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&rmcf->policies, cf->pool, 4,
                       sizeof(ngx_http_ratelimit_policy_t))
        != NGX_OK)
    {
        return NULL;
    }

    rmcf->timeout = NGX_CONF_UNSET_MSEC;
    rmcf->hash = NGX_CONF_UNSET_UINT;
    rmcf->tls.verify = NGX_CONF_UNSET;

    return rmcf;
}


ngx_http_ratelimit_policy_t *
ngx_http_ratelimit_policy_find(ngx_http_ratelimit_main_conf_t *rmcf,
    ngx_str_t *name)
{
    ngx_uint_t                    i;
    ngx_http_ratelimit_policy_t  *policy;

    policy = rmcf->policies.elts;

    for (i = 0; i < rmcf->policies.nelts; i++) {
        if (policy[i].name.len == name->len
            && ngx_strncmp(policy[i].name.data, name->data, name->len) == 0)
        {
            return &policy[i];
        }
    }

    return NULL;
}


static char *
ngx_http_ratelimit_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_ratelimit_main_conf_t *rmcf = conf;

    ngx_conf_init_msec_value(rmcf->timeout, 50);

    /*
     * md5 rather than twemproxy's own default, fnv1a_64: FNV-1a moves
     * little between keys that differ in their last bytes, so sequential
     * ids ("cust-1", "cust-2", ...) crowd onto one shard
     */
    ngx_conf_init_uint_value(rmcf->hash, RL_KETAMA_HASH_DEFAULT);

    /*
     * An unverified TLS connection to a managed Redis is a trap: verified
     * unless said otherwise, so a trusted certificate is needed.
     */
    ngx_conf_init_value(rmcf->tls.verify, 1);

    if (ngx_http_ratelimit_ssl_conf(cf, rmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_ratelimit_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_ratelimit_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratelimit_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->uses = NGX_CONF_UNSET_PTR;
    conf->keys = NGX_CONF_UNSET_PTR;
    conf->customer = NGX_CONF_UNSET_PTR;
    conf->limit = NGX_CONF_UNSET_UINT;
    conf->window = NGX_CONF_UNSET_UINT;
    conf->algorithm = NGX_CONF_UNSET_UINT;
    conf->fail = NGX_CONF_UNSET_UINT;
    conf->status = NGX_CONF_UNSET_UINT;
    conf->headers = NGX_CONF_UNSET_UINT;
    conf->problem_details = NGX_CONF_UNSET;
    conf->dry_run = NGX_CONF_UNSET;
    conf->log_level = NGX_CONF_UNSET_UINT;
    conf->admin = NGX_CONF_UNSET;

    return conf;
}


static char *
ngx_http_ratelimit_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_ratelimit_loc_conf_t *prev = parent;
    ngx_http_ratelimit_loc_conf_t *conf = child;

    /* the "ratelimit" lines are inherited as a whole, as limit_req's */

    if (conf->uses == NGX_CONF_UNSET_PTR) {
        conf->uses = prev->uses;
        conf->keys = prev->keys;
        conf->key_names = prev->key_names;
    }

    if (conf->uses == NGX_CONF_UNSET_PTR) {
        conf->uses = NULL;
    }

    if (conf->keys == NGX_CONF_UNSET_PTR) {
        conf->keys = NULL;
        conf->key_names = NULL;
    }
    ngx_conf_merge_ptr_value(conf->customer, prev->customer, NULL);

    if (conf->limit == NGX_CONF_UNSET_UINT) {
        conf->limit = prev->limit;
        conf->window = prev->window;
    }

    ngx_conf_merge_uint_value(conf->limit, prev->limit, 100);
    ngx_conf_merge_uint_value(conf->window, prev->window, 60);
    ngx_conf_merge_uint_value(conf->algorithm, prev->algorithm,
                              RL_RULE_ALGORITHM_TOKEN_BUCKET);
    ngx_conf_merge_uint_value(conf->fail, prev->fail,
                              NGX_HTTP_RATELIMIT_FAIL_OPEN);
    ngx_conf_merge_uint_value(conf->status, prev->status,
                              NGX_HTTP_TOO_MANY_REQUESTS);
    ngx_conf_merge_uint_value(conf->headers, prev->headers,
                              NGX_HTTP_RATELIMIT_HEADERS_DRAFT);
    ngx_conf_merge_value(conf->problem_details, prev->problem_details, 0);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_uint_value(conf->log_level, prev->log_level, NGX_LOG_ERR);
    ngx_conf_merge_value(conf->admin, prev->admin, 0);
    ngx_conf_merge_str_value(conf->admin_token, prev->admin_token, "");

    if (conf->uses && ngx_http_ratelimit_resolve(cf, conf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (conf->admin && conf->admin_token.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"ratelimit_admin\" requires "
                           "\"ratelimit_admin_token\"");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * Each "ratelimit" line finds its policy: a named one of the http block,
 * or this location's unnamed one, made of its merged "ratelimit_default",
 * "ratelimit_algorithm" and "ratelimit_customer".
 */

static ngx_int_t
ngx_http_ratelimit_resolve(ngx_conf_t *cf, ngx_http_ratelimit_loc_conf_t *conf)
{
    ngx_uint_t                       i, j;
    ngx_http_ratelimit_use_t        *use;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_ratelimit_module);

    conf->unnamed.name.data = (u_char *) "default";
    conf->unnamed.name.len = sizeof("default") - 1;
    conf->unnamed.keys = conf->keys;
    conf->unnamed.key_names = conf->key_names;
    conf->unnamed.customer = conf->customer;
    conf->unnamed.limit = conf->limit;
    conf->unnamed.window = conf->window;
    conf->unnamed.algorithm = conf->algorithm;

    use = conf->uses->elts;

    for (i = 0; i < conf->uses->nelts; i++) {

        if (use[i].name.len == 0 || use[i].policy) {
            continue;
        }

        use[i].policy = ngx_http_ratelimit_policy_find(rmcf, &use[i].name);

        if (use[i].policy == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "unknown ratelimit policy \"%V\" in %s:%ui",
                          &use[i].name, use[i].file, use[i].line);
            return NGX_ERROR;
        }

        for (j = 0; j < i; j++) {
            if (use[j].policy == use[i].policy) {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "duplicate ratelimit policy \"%V\" in %s:%ui",
                              &use[i].name, use[i].file, use[i].line);
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/* ratelimit_zone name:size */

static char *
ngx_http_ratelimit_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_main_conf_t *rmcf = conf;

    u_char                     *p;
    ssize_t                     size;
    ngx_str_t                  *value, name, s;
    ngx_http_ratelimit_zone_t  *zone;

    if (rmcf->shm_zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    p = (u_char *) ngx_strchr(value[1].data, ':');

    if (p == NULL || p == value[1].data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone \"%V\", expected \"name:size\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - value[1].data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (16 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small", &value[1]);
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratelimit_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone->main_conf = rmcf;

    rmcf->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                           &ngx_http_ratelimit_module);
    if (rmcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (rmcf->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    rmcf->shm_zone->init = ngx_http_ratelimit_init_zone;
    rmcf->shm_zone->data = zone;

    return NGX_CONF_OK;
}


/*
 * ratelimit_redis host:port [weight=N] [user=NAME] [password=SECRET |
 *                 password=file:PATH] [tls]
 */

static char *
ngx_http_ratelimit_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_main_conf_t *rmcf = conf;

    ngx_int_t                         rc;
    ngx_str_t                        *value;
    ngx_url_t                         u;
    ngx_uint_t                        i;
    ngx_http_ratelimit_shard_conf_t  *shard;

    value = cf->args->elts;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = value[1];
    u.default_port = 6379;

    /* a host name is resolved once the http block says whether by resolver */

    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in shard address \"%V\"", u.err, &u.url);
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid shard address \"%V\"", &u.url);
        }

        return NGX_CONF_ERROR;
    }

    if (u.host.len == 0 || u.uri.len || u.family == AF_UNIX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid shard address \"%V\", "
                           "expected \"host:port\"", &u.url);
        return NGX_CONF_ERROR;
    }

    shard = ngx_array_push(&rmcf->shards);
    if (shard == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(shard, sizeof(ngx_http_ratelimit_shard_conf_t));

    /* twemproxy names a server "host:port" as written: keep the ring equal */

    shard->name.len = u.host.len + 1 + NGX_INT_T_LEN;
    shard->name.data = ngx_pnalloc(cf->pool, shard->name.len);
    if (shard->name.data == NULL) {
        return NGX_CONF_ERROR;
    }

    shard->name.len = ngx_sprintf(shard->name.data, "%V:%d", &u.host, u.port)
                      - shard->name.data;

    if (shard->name.len > sizeof(((ngx_http_ratelimit_health_t *) 0)->name)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shard address \"%V\" is too long", &u.url);
        return NGX_CONF_ERROR;
    }

    if (u.naddrs) {
        shard->addr = u.addrs[0];
        shard->addr.name = shard->name;

    } else if (ngx_http_ratelimit_discovery_host(cf, shard, &u) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    shard->host = u.host;
    shard->weight = 1;

    for (i = 2; i < cf->args->nelts; i++) {
        rc = ngx_http_ratelimit_shard_param(cf, shard, &value[i]);

        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        if (rc == NGX_DECLINED) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_ratelimit_shard_check(cf, rmcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_ratelimit_shard_param(ngx_conf_t *cf,
    ngx_http_ratelimit_shard_conf_t *shard, ngx_str_t *value)
{
    ngx_int_t                        weight;
    ngx_str_t                        s;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    if (ngx_strncmp(value->data, "weight=", 7) == 0) {
        s.data = value->data + 7;
        s.len = value->len - 7;

        weight = ngx_atoi(s.data, s.len);

        if (weight == NGX_ERROR || weight < 1 || weight > 1000) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid weight \"%V\", "
                               "must be 1 to 1000", value);
            return NGX_ERROR;
        }

        shard->weight = weight;
        return NGX_OK;
    }

    if (ngx_strncmp(value->data, "password=", 9) == 0) {
        return ngx_http_ratelimit_redis_password(cf, value, &shard->password);
    }

    if (ngx_strncmp(value->data, "user=", 5) == 0) {
        shard->user.data = value->data + 5;
        shard->user.len = value->len - 5;

        if (shard->user.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "empty user in \"%V\"", value);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (value->len == 3 && ngx_strncmp(value->data, "tls", 3) == 0) {
        rmcf = ngx_http_conf_get_module_main_conf(cf,
                                                  ngx_http_ratelimit_module);
        shard->tls = &rmcf->tls;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_ratelimit_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, size_t type_len, ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type_len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_err_t
ngx_http_ratelimit_connect_error(ngx_connection_t *c)
{
    int        err;
    socklen_t  len;

    err = 0;
    len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    return err;
}


ngx_int_t
ngx_http_ratelimit_shard_check(ngx_conf_t *cf,
    ngx_http_ratelimit_main_conf_t *rmcf)
{
    ngx_uint_t                        i;
    ngx_http_ratelimit_shard_conf_t  *shard, *last;

    shard = rmcf->shards.elts;
    last = &shard[rmcf->shards.nelts - 1];

    if (last->user.len && last->password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"user=%V\" requires \"password=\"",
                           &last->user);
        return NGX_ERROR;
    }

    for (i = 0; i < rmcf->shards.nelts - 1; i++) {
        if (shard[i].name.len == last->name.len
            && ngx_strncmp(shard[i].name.data, last->name.data,
                           last->name.len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate shard \"%V\"", &last->name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * "password=SECRET", or "password=file:PATH": the password is read from
 * the file now (relative to the configuration prefix), so that it stays out
 * of nginx.conf; one trailing line break is not part of it.  The file is
 * read again on each reload.
 */

static ngx_int_t
ngx_http_ratelimit_redis_password(ngx_conf_t *cf, ngx_str_t *value,
    ngx_str_t *password)
{
    u_char           *p;
    size_t            len;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t         name;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    password->data = value->data + 9;
    password->len = value->len - 9;

    if (password->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty password in \"%V\"", value);
        return NGX_ERROR;
    }

    if (password->len < 5 || ngx_strncmp(password->data, "file:", 5) != 0) {
        return NGX_OK;
    }

    name.data = password->data + 5;
    name.len = password->len - 5;

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no file name in \"%V\"", value);
        return NGX_ERROR;
    }

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot read the password file \"%s\"",
                           name.data);
        return NGX_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));

    file.fd = fd;
    file.name = name;
    file.log = cf->log;

    n = NGX_ERROR;
    p = NULL;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%s\" failed", name.data);
        goto done;
    }

    len = (size_t) ngx_file_size(&fi);

    /* a password, not a file read by mistake */

    if (len > NGX_HTTP_RATELIMIT_MAX_PASSWORD) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the password file \"%s\" is over %d bytes",
                           name.data, NGX_HTTP_RATELIMIT_MAX_PASSWORD);
        goto done;
    }

    p = ngx_pnalloc(cf->pool, len + 1);
    if (p == NULL) {
        goto done;
    }

    n = ngx_read_file(&file, p, len, 0);

    if (n == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot read the password file \"%s\"",
                           name.data);
        goto done;
    }

done:

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, cf->log, ngx_errno,
                      ngx_close_file_n " \"%s\" failed", name.data);
    }

    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (n > 0 && p[n - 1] == LF) {
        n--;

        if (n > 0 && p[n - 1] == CR) {
            n--;
        }
    }

    if (n == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the password file \"%s\" is empty", name.data);
        return NGX_ERROR;
    }

    password->data = p;
    password->len = n;

    return NGX_OK;
}


/*
 * ratelimit $key [$fallback ...] | NAME [cost=N|cost=$var] [dry_run] | off
 *
 * Repeatable: each line is a limit the location's requests are checked
 * against.  An argument starting with "$" is a key (the location's unnamed
 * policy), a bare word a "ratelimit_policy" name, found once the whole http
 * block is read, so policies may be declared after their use.
 */

static char *
ngx_http_ratelimit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_loc_conf_t *rlcf = conf;

    ngx_str_t                         *value;
    ngx_uint_t                         i;
    ngx_http_ratelimit_use_t          *use;
    ngx_http_ratelimit_main_conf_t    *rmcf;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        if (rlcf->uses != NGX_CONF_UNSET_PTR) {
            return "is duplicate";
        }

        rlcf->uses = NULL;
        return NGX_CONF_OK;
    }

    if (rlcf->uses == NULL) {
        return "is duplicate";
    }

    if (rlcf->uses == NGX_CONF_UNSET_PTR) {
        rlcf->uses = ngx_array_create(cf->pool, 2,
                                      sizeof(ngx_http_ratelimit_use_t));
        if (rlcf->uses == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (rlcf->uses->nelts == NGX_HTTP_RATELIMIT_MAX_POLICIES) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many \"ratelimit\" policies in one place, "
                           "at most %d", NGX_HTTP_RATELIMIT_MAX_POLICIES);
        return NGX_CONF_ERROR;
    }

    use = ngx_array_push(rlcf->uses);
    if (use == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(use, sizeof(ngx_http_ratelimit_use_t));

    use->cost_value = 1;
    use->file = cf->conf_file->file.name.data;
    use->line = cf->conf_file->line;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_ratelimit_module);
    rmcf->used = 1;

    if (value[1].data[0] == '$') {

        /* the unnamed policy: "ratelimit_default" and others complete it */

        if (rlcf->keys != NGX_CONF_UNSET_PTR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate \"ratelimit\" keys: a location "
                               "has one unnamed policy, name the others "
                               "with \"ratelimit_policy\"");
            return NGX_CONF_ERROR;
        }

        if (ngx_http_ratelimit_compile_keys(cf, &value[1], cf->args->nelts - 1,
                                            &rlcf->keys, &rlcf->key_names)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    {
        rl_rule_error_t  err;

        if (rl_rule_check_policy_name(value[1].data, value[1].len, &err) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid policy name \"%V\" in \"ratelimit\": "
                               "%s; keys start with \"$\"",
                               &value[1], err.message);
            return NGX_CONF_ERROR;
        }
    }

    use->name = value[1];

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "dry_run") == 0) {
            use->dry_run = 1;
            continue;
        }

        if (value[i].len > 5 && ngx_strncmp(value[i].data, "cost=", 5) == 0) {

            if (value[i].data[5] != '$') {
                use->cost_value = ngx_atoi(value[i].data + 5, value[i].len - 5);

                if (use->cost_value == (ngx_uint_t) NGX_ERROR
                    || use->cost_value > RL_RULE_MAX_LIMIT)
                {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "invalid cost \"%V\", must be 0 to %d "
                                       "or a variable", &value[i],
                                       RL_RULE_MAX_LIMIT);
                    return NGX_CONF_ERROR;
                }

                continue;
            }

            use->cost = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
            if (use->cost == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            ccv.cf = cf;
            ccv.value = &value[i];
            ccv.value->data += 5;
            ccv.value->len -= 5;
            ccv.complex_value = use->cost;

            if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" of policy \"%V\", "
                           "expected \"cost=\" or \"dry_run\"",
                           &value[i], &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * ratelimit_policy NAME KEY [FALLBACK ...] limit=N window=TIME
 *     [algorithm=token_bucket|sliding_window] [customer=VALUE]
 */

static char *
ngx_http_ratelimit_policy(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_main_conf_t *rmcf = conf;

    ngx_str_t                         *value, s;
    u_char                            *eq;
    size_t                             n;
    ngx_uint_t                         i, j, first, nkeys;
    ngx_conf_enum_t                   *e;
    rl_rule_error_t                    err;
    ngx_http_ratelimit_policy_t       *policy;
    ngx_http_compile_complex_value_t   ccv;

    value = cf->args->elts;

    if (rl_rule_check_policy_name(value[1].data, value[1].len, &err) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid policy name \"%V\": %s",
                           &value[1], err.message);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_ratelimit_policy_find(rmcf, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate policy \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    policy = ngx_array_push(&rmcf->policies);
    if (policy == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(policy, sizeof(ngx_http_ratelimit_policy_t));

    policy->name = value[1];
    policy->named = 1;
    policy->algorithm = RL_RULE_ALGORITHM_TOKEN_BUCKET;

    /* the keys come first, up to the first parameter */

    first = 2;

    for (nkeys = 0; first + nkeys < cf->args->nelts; nkeys++) {
        s = value[first + nkeys];

        if ((s.len >= 6 && ngx_strncmp(s.data, "limit=", 6) == 0)
            || (s.len >= 7 && ngx_strncmp(s.data, "window=", 7) == 0)
            || (s.len >= 10 && ngx_strncmp(s.data, "algorithm=", 10) == 0)
            || (s.len >= 9 && ngx_strncmp(s.data, "customer=", 9) == 0))
        {
            break;
        }
    }

    if (nkeys == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "policy \"%V\" has no key", &value[1]);
        return NGX_CONF_ERROR;
    }

    /*
     * A constant key is one count for everybody (a global limit), but one
     * that reads "name=value" is a mistyped parameter, not a key.
     */

    for (i = first; i < first + nkeys; i++) {
        if (ngx_strlchr(value[i].data, value[i].data + value[i].len, '$')
            == NULL
            && ngx_strlchr(value[i].data, value[i].data + value[i].len, '=')
               != NULL)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown parameter \"%V\" of policy \"%V\"",
                               &value[i], &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_ratelimit_compile_keys(cf, &value[first], nkeys,
                                        &policy->keys, &policy->key_names)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    for (i = first + nkeys; i < cf->args->nelts; i++) {

        /* "limit=" and the others: each at most once */

        eq = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');

        if (eq == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" of policy \"%V\", "
                               "keys come first", &value[i], &value[1]);
            return NGX_CONF_ERROR;
        }

        n = eq - value[i].data;

        for (j = first + nkeys; j < i; j++) {
            if (value[j].len > n && value[j].data[n] == '='
                && ngx_strncmp(value[j].data, value[i].data, n) == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "duplicate parameter \"%V\" of policy "
                                   "\"%V\"", &value[i], &value[1]);
                return NGX_CONF_ERROR;
            }
        }

        if (ngx_strncmp(value[i].data, "limit=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            if (ngx_http_ratelimit_parse_limit(cf, &s, &policy->limit)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            if (ngx_http_ratelimit_parse_window(cf, &s, &policy->window)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "algorithm=", 10) == 0) {
            s.data = value[i].data + 10;
            s.len = value[i].len - 10;

            for (e = ngx_http_ratelimit_algorithms; e->name.len; e++) {
                if (e->name.len == s.len
                    && ngx_strncmp(e->name.data, s.data, s.len) == 0)
                {
                    policy->algorithm = e->value;
                    break;
                }
            }

            if (e->name.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid algorithm \"%V\" of policy "
                                   "\"%V\", must be \"token_bucket\" or "
                                   "\"sliding_window\"", &s, &value[1]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "customer=", 9) == 0
            && value[i].len > 9)
        {
            policy->customer = ngx_palloc(cf->pool,
                                          sizeof(ngx_http_complex_value_t));
            if (policy->customer == NULL) {
                return NGX_CONF_ERROR;
            }

            s.data = value[i].data + 9;
            s.len = value[i].len - 9;

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            ccv.cf = cf;
            ccv.value = &s;
            ccv.complex_value = policy->customer;

            if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" of policy \"%V\", "
                           "keys come first", &value[i], &value[1]);
        return NGX_CONF_ERROR;
    }

    if (policy->limit == 0 || policy->window == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "policy \"%V\" needs \"limit=\" and \"window=\"",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* the keys of a policy, with the names they take in Redis */

static ngx_int_t
ngx_http_ratelimit_compile_keys(ngx_conf_t *cf, ngx_str_t *value,
    ngx_uint_t n, ngx_array_t **keys, ngx_array_t **key_names)
{
    ngx_str_t                         *name;
    ngx_uint_t                         i;
    ngx_http_complex_value_t          *cv;
    ngx_http_compile_complex_value_t   ccv;

    *keys = ngx_array_create(cf->pool, n, sizeof(ngx_http_complex_value_t));
    if (*keys == NULL) {
        return NGX_ERROR;
    }

    *key_names = ngx_array_create(cf->pool, n, sizeof(ngx_str_t));
    if (*key_names == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {

        if (value[i].len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "empty key in \"%V\"",
                               (ngx_str_t *) cf->args->elts);
            return NGX_ERROR;
        }

        cv = ngx_array_push(*keys);
        if (cv == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &value[i];
        ccv.complex_value = cv;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_ERROR;
        }

        name = ngx_array_push(*key_names);
        if (name == NULL) {
            return NGX_ERROR;
        }

        if (ngx_http_ratelimit_key_name(cf, &value[i], name) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The name a "ratelimit" value gives its keys in Redis: "http_x_user_id"
 * for $http_x_user_id; for anything but one plain variable, "x" and the
 * CRC32 of the value as written.  Two locations with the same value share
 * counts; two different values never do.
 */

static ngx_int_t
ngx_http_ratelimit_key_name(ngx_conf_t *cf, ngx_str_t *value, ngx_str_t *name)
{
    u_char      c;
    ngx_uint_t  i, plain;

    plain = (value->len > 1 && value->len <= NGX_HTTP_RATELIMIT_MAX_KEY_NAME + 1
             && value->data[0] == '$');

    for (i = 1; plain && i < value->len; i++) {
        c = value->data[i];

        plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                || (c >= '0' && c <= '9') || c == '_';
    }

    if (plain) {
        name->data = value->data + 1;
        name->len = value->len - 1;
        return NGX_OK;
    }

    name->data = ngx_pnalloc(cf->pool, 1 + 8);
    if (name->data == NULL) {
        return NGX_ERROR;
    }

    name->len = ngx_sprintf(name->data, "x%08xD",
                            ngx_crc32_long(value->data, value->len))
                - name->data;

    return NGX_OK;
}


/* ratelimit_default limit window */

static char *
ngx_http_ratelimit_default(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_loc_conf_t *rlcf = conf;

    ngx_str_t  *value;

    if (rlcf->limit != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_ratelimit_parse_limit(cf, &value[1], &rlcf->limit) != NGX_OK
        || ngx_http_ratelimit_parse_window(cf, &value[2], &rlcf->window)
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ratelimit_parse_limit(ngx_conf_t *cf, ngx_str_t *value,
    ngx_uint_t *limit)
{
    ngx_int_t  n;

    n = ngx_atoi(value->data, value->len);

    if (n == NGX_ERROR || n < 1 || n > RL_RULE_MAX_LIMIT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid limit \"%V\", must be 1 to %d",
                           value, RL_RULE_MAX_LIMIT);
        return NGX_ERROR;
    }

    *limit = n;

    return NGX_OK;
}


/* whole seconds, within the bounds of the admin endpoint's rules */

static ngx_int_t
ngx_http_ratelimit_parse_window(ngx_conf_t *cf, ngx_str_t *value,
    ngx_uint_t *window)
{
    ngx_int_t  ms;

    ms = ngx_parse_time(value, 0);

    if (ms == NGX_ERROR
        || ms < RL_RULE_MIN_WINDOW * 1000
        || ms > RL_RULE_MAX_WINDOW * 1000)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid window \"%V\", must be 1s to 1d", value);
        return NGX_ERROR;
    }

    if (ms % 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid window \"%V\", must be whole seconds",
                           value);
        return NGX_ERROR;
    }

    *window = ms / 1000;

    return NGX_OK;
}


/* ratelimit_admin: this location is the admin endpoint */

static char *
ngx_http_ratelimit_admin(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_loc_conf_t *rlcf = conf;

    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    if (rlcf->admin != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    rlcf->admin = 1;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_ratelimit_module);
    rmcf->needs_zone = 1;
    rmcf->needs_shards = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_ratelimit_admin_handler;

    return NGX_CONF_OK;
}


/*
 * ratelimit_admin_token TOKEN | file=PATH
 *
 * A file keeps the secret out of the configuration; its trailing newline
 * and spaces are not part of the token.
 */

static char *
ngx_http_ratelimit_admin_token(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_ratelimit_loc_conf_t *rlcf = conf;

    ssize_t     n;
    ngx_str_t  *value, path, token;
    ngx_file_t  file;
    u_char      buf[4097];

    if (rlcf->admin_token.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    token = value[1];

    if (ngx_strncmp(token.data, "file=", 5) == 0) {
        path.data = token.data + 5;
        path.len = token.len - 5;

        if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&file, sizeof(ngx_file_t));
        file.name = path;
        file.log = cf->log;

        file.fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
        if (file.fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               ngx_open_file_n " \"%V\" failed", &path);
            return NGX_CONF_ERROR;
        }

        n = ngx_read_file(&file, buf, sizeof(buf), 0);

        ngx_close_file(file.fd);

        if (n == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        if (n == (ssize_t) sizeof(buf)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "token file \"%V\" is too large", &path);
            return NGX_CONF_ERROR;
        }

        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'
                         || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        {
            n--;
        }

        token.len = n;
        token.data = ngx_pnalloc(cf->pool, n);
        if (token.data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(token.data, buf, n);
    }

    if (token.len < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "admin token is too short, "
                           "it must be at least 16 characters");
        return NGX_CONF_ERROR;
    }

    rlcf->admin_token = token;

    return NGX_CONF_OK;
}


/* ratelimit_stats: this location answers the zone's counters as JSON */

static char *
ngx_http_ratelimit_stats(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_ratelimit_module);
    rmcf->needs_zone = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_ratelimit_stats_handler;

    return NGX_CONF_OK;
}


/*
 * ratelimit_metrics: this location answers the same counters, and those of
 * each shard and policy, in Prometheus' text format
 */

static char *
ngx_http_ratelimit_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t        *clcf;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_ratelimit_module);
    rmcf->needs_zone = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_ratelimit_metrics_handler;

    return NGX_CONF_OK;
}


/*
 * The stock slots name either the directive or the value; these name both,
 * and what would have been right.
 */

static char *
ngx_http_ratelimit_set_enum(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    u_char           *last;
    ngx_str_t        *value;
    ngx_uint_t       *np, i;
    ngx_conf_enum_t  *e;
    u_char            expected[128];

    np = (ngx_uint_t *) (p + cmd->offset);

    if (*np != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    e = cmd->post;

    for (i = 0; e[i].name.len != 0; i++) {
        if (e[i].name.len == value[1].len
            && ngx_strcasecmp(e[i].name.data, value[1].data) == 0)
        {
            *np = e[i].value;
            return NGX_CONF_OK;
        }
    }

    last = expected;

    for (i = 0; e[i].name.len != 0; i++) {
        last = ngx_slprintf(last, expected + sizeof(expected), "%s\"%V\"",
                            i == 0 ? "" : (e[i + 1].name.len ? ", " : " or "),
                            &e[i].name);
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\", expected %*s",
                       &value[1], &cmd->name, last - expected, expected);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_ratelimit_set_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_loc_conf_t *rlcf = conf;

    ngx_int_t   status;
    ngx_str_t  *value;

    if (rlcf->status != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    status = ngx_atoi(value[1].data, value[1].len);

    if (status == NGX_ERROR || status < 400 || status > 599) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid status \"%V\" in \"%V\", "
                           "must be 400 to 599", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    rlcf->status = status;

    return NGX_CONF_OK;
}


static char *
ngx_http_ratelimit_set_timeout(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_ratelimit_main_conf_t *rmcf = conf;

    ngx_int_t   timeout;
    ngx_str_t  *value;

    if (rmcf->timeout != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    timeout = ngx_parse_time(&value[1], 0);

    if (timeout == NGX_ERROR || timeout == 0 || timeout > 60000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid timeout \"%V\" in \"%V\", "
                           "must be 1ms to 60s", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    rmcf->timeout = timeout;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_ratelimit_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt             *h;
    ngx_http_core_main_conf_t       *cmcf;
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_ratelimit_module);

    if (ngx_http_ratelimit_discovery_init_conf(cf, rmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (rmcf->needs_zone && rmcf->shm_zone == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"ratelimit_stats\", \"ratelimit_metrics\" and "
                      "\"ratelimit_admin\" require \"ratelimit_zone\"");
        return NGX_ERROR;
    }

    if (rmcf->needs_shards && rmcf->shards.nelts == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"ratelimit_admin\" is used but no "
                      "\"ratelimit_redis\" shard is configured");
        return NGX_ERROR;
    }

    if (!rmcf->used) {
        return NGX_OK;
    }

    if (rmcf->shards.nelts == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"ratelimit\" is used but no \"ratelimit_redis\" "
                      "shard is configured");
        return NGX_ERROR;
    }

    if (rmcf->shm_zone == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"ratelimit\" is used but no \"ratelimit_zone\" "
                      "is configured");
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    /*
     * Not in the access phase: there a dynamic module's handler runs before
     * allow/deny, auth_basic and auth_request, and under "satisfy any" the
     * first of them to grant access skips every handler after it.  The
     * precontent phase runs once access is settled, and its handlers run
     * last pushed first: this one before try_files and mirror.
     */

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_ratelimit_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_init_module(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_main_conf_t  *rmcf;

    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_ratelimit_module);

    if (rmcf && rmcf->shm_zone) {
        ngx_http_ratelimit_ring_commit(rmcf->shm_zone->data);
        ngx_http_ratelimit_metrics_commit(rmcf->shm_zone->data, cycle->log);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_ratelimit_init_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_main_conf_t  *rmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_ratelimit_module);

    if (rmcf == NULL || rmcf->shm_zone == NULL) {
        return NGX_OK;
    }

    ngx_http_ratelimit_ring_hold(rmcf->shm_zone->data);

    if (ngx_http_ratelimit_metrics_hold(rmcf->shm_zone->data, cycle)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!rmcf->used && !rmcf->needs_shards) {
        return NGX_OK;
    }

    if (ngx_http_ratelimit_redis_init_process(cycle, &rmcf->shards,
                                              ngx_http_ratelimit_shard_event)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_ratelimit_discovery_init_process(cycle, &rmcf->shards)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* nodes that limit learn of rule changes made elsewhere */

    if (rmcf->used) {
        return ngx_http_ratelimit_rules_init_process(cycle, rmcf);
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_main_conf_t  *rmcf;

    ngx_http_ratelimit_rules_exit_process(cycle);
    ngx_http_ratelimit_discovery_exit_process(cycle);
    ngx_http_ratelimit_redis_exit_process(cycle);
    ngx_http_ratelimit_batch_exit_process();

    rmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_ratelimit_module);

    if (rmcf && rmcf->shm_zone) {
        ngx_http_ratelimit_metrics_release(rmcf->shm_zone->data);
        ngx_http_ratelimit_ring_release(rmcf->shm_zone->data);
    }
}
