/*
 * mod_amqp_heartbeat: the C side of the module.
 *
 * Only what C does better lives here: the module record, the directive
 * table (AP_INIT_* macros), hook registration and the varargs log call
 * (ap_log_error is a macro that needs this module's index). Every body is
 * in Rust (src/apache/), reached through the amqphb_* entry points that
 * amqphb.h declares (the one contract both sides compile against), each of
 * which catches panics and never lets one cross into httpd.
 */

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_request.h"
#include "http_protocol.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "apr_hooks.h"
#include "apr_optional_hooks.h"
#include "apr_strings.h"
#include "mod_status.h"
#include "amqphb.h"

APLOG_USE_MODULE(amqp_heartbeat);

/* The handler name of the status page (SetHandler in a <Location>). */
#define STATUS_HANDLER "amqp-heartbeat-status"

void amqphb_log(const server_rec *s, int level, const char *msg)
{
    ap_log_error(APLOG_MARK, level, 0, s, "%s", msg);
}

void *amqphb_module_config(const server_rec *s)
{
    return ap_get_module_config(s->module_config, &amqp_heartbeat_module);
}

/* status 0 and an empty type leave the response's as they are (the
 * status_hook writes into mod_status's page). */
void amqphb_respond(request_rec *r, int status, const char *content_type,
                    const char *body, size_t len)
{
    if (status != 0) {
        r->status = status;
    }
    if (content_type[0] != '\0') {
        ap_set_content_type(r, apr_pstrdup(r->pool, content_type));
    }
    if (!r->header_only && len > 0) {
        ap_rwrite(body, (int)len, r);
    }
}

/* The status table outlives this module's code: httpd unloads and reloads
 * DSO modules on every restart (static variables start afresh), while the
 * table must stay the same for the parent's whole life. So the parent
 * keeps its address in the process pool, which lives as long as it. A
 * restart may load another build of the module (a package upgrade, then
 * a reload): the record names the table's layout, and a build with
 * another layout makes a table of its own. The key changed with the
 * record's shape ("status-table" records had no layout). */
#define TABLE_KEY "amqp_heartbeat:status-table-2"

struct kept_table {
    void *base;
    size_t slots;
    uint64_t layout;
};

void *amqphb_table_kept(const server_rec *s, uint64_t layout, size_t *slots)
{
    void *data = NULL;
    const struct kept_table *kept;
    apr_pool_userdata_get(&data, TABLE_KEY, s->process->pool);
    kept = data;
    if (kept == NULL || kept->layout != layout) {
        return NULL;
    }
    *slots = kept->slots;
    return kept->base;
}

int amqphb_table_keep(const server_rec *s, void *base, size_t slots, uint64_t layout)
{
    struct kept_table *kept = apr_palloc(s->process->pool, sizeof(*kept));
    kept->base = base;
    kept->slots = slots;
    kept->layout = layout;
    /* _set copies the key: this module's string constants go away with it. */
    return apr_pool_userdata_set(kept, TABLE_KEY, apr_pool_cleanup_null,
                                 s->process->pool) == APR_SUCCESS;
}

static const char *set_argv(cmd_parms *cmd, void *dummy, int argc,
                            char *const argv[])
{
    (void)dummy;
    return amqphb_directive(cmd, (unsigned)(size_t)cmd->info, argc,
                            (const char *const *)argv);
}

static const char *set_take1(cmd_parms *cmd, void *dummy, const char *arg)
{
    const char *argv[1];
    (void)dummy;
    argv[0] = arg;
    return amqphb_directive(cmd, (unsigned)(size_t)cmd->info, 1, argv);
}

static const char *set_take12(cmd_parms *cmd, void *dummy, const char *arg1,
                              const char *arg2)
{
    const char *argv[2];
    (void)dummy;
    argv[0] = arg1;
    argv[1] = arg2;
    return amqphb_directive(cmd, (unsigned)(size_t)cmd->info,
                            arg2 ? 2 : 1, argv);
}

/* A process-wide switch: refused inside <VirtualHost> and other sections. */
static const char *set_global_flag(cmd_parms *cmd, void *dummy, int flag)
{
    const char *argv[1];
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    (void)dummy;
    if (err != NULL)
        return err;
    argv[0] = flag ? "On" : "Off";
    return amqphb_directive(cmd, (unsigned)(size_t)cmd->info, 1, argv);
}

#define DIRECTIVE_INFO(index) ((void *)(size_t)(index))

static const command_rec amqphb_cmds[] = {
    AP_INIT_TAKE_ARGV("AMQPHeartbeatBroker", set_argv,
        DIRECTIVE_INFO(AMQPHB_BROKER), RSRC_CONF,
        "URL [URL ...]: upstream AMQP broker(s), amqp:// or amqps://, "
        "tried in order; enables the per-child relay for this server"),
    AP_INIT_TAKE1("AMQPHeartbeatInterval", set_take1,
        DIRECTIVE_INFO(AMQPHB_INTERVAL), RSRC_CONF,
        "SECONDS (1-3600): heartbeat the relay negotiates with the broker "
        "(default 15)"),
    AP_INIT_TAKE1("AMQPHeartbeatConnectTimeout", set_take1,
        DIRECTIVE_INFO(AMQPHB_CONNECT_TIMEOUT), RSRC_CONF,
        "SECONDS (1-300): TCP+TLS+handshake limit per broker try "
        "(default 10)"),
    AP_INIT_TAKE12("AMQPHeartbeatEnv", set_take12,
        DIRECTIVE_INFO(AMQPHB_ENV), RSRC_CONF,
        "NAME [SCHEME]: environment variable that receives the relay URL, "
        "SCHEME amqp (default), rabbit or pyamqp; repeatable "
        "(default AMQP_HEARTBEAT_URL)"),
    AP_INIT_TAKE1("AMQPHeartbeatMaxConnections", set_take1,
        DIRECTIVE_INFO(AMQPHB_MAX_CONNECTIONS), RSRC_CONF,
        "N (1-4096): relayed connections per child for this server "
        "(default 32)"),
    AP_INIT_TAKE1("AMQPHeartbeatTLSCACertificateFile", set_take1,
        DIRECTIVE_INFO(AMQPHB_TLS_CA_CERTIFICATE_FILE), RSRC_CONF,
        "PATH: PEM CA bundle for amqps:// brokers (default: system roots)"),
    AP_INIT_FLAG("AMQPHeartbeatChildRelay", set_global_flag,
        DIRECTIVE_INFO(AMQPHB_CHILD_RELAY), RSRC_CONF,
        "On|Off: whether httpd's own children run a relay (default On); "
        "Off when only mod_wsgi daemon processes host the apps"),
    { NULL }
};

static int amqphb_check_config_hook(apr_pool_t *pconf, apr_pool_t *plog,
                                    apr_pool_t *ptemp, server_rec *s)
{
    (void)pconf;
    (void)plog;
    (void)ptemp;
    return amqphb_check_config(s);
}

static int amqphb_post_config_hook(apr_pool_t *pconf, apr_pool_t *plog,
                                   apr_pool_t *ptemp, server_rec *s)
{
    int hard_limit = 0;
    (void)pconf;
    (void)plog;
    (void)ptemp;
    if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &hard_limit) != APR_SUCCESS) {
        hard_limit = 0;
    }
    return amqphb_post_config(s, hard_limit);
}

static int amqphb_handler(request_rec *r)
{
    if (r->handler == NULL || strcmp(r->handler, STATUS_HANDLER) != 0) {
        return DECLINED;
    }
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    return amqphb_status_handler(r, r->args);
}

static int amqphb_status_hook(request_rec *r, int flags)
{
    return amqphb_status_summary(r, (flags & AP_STATUS_SHORT) != 0);
}

#if AP_MODULE_MAGIC_AT_LEAST(20120211, 110)
static void amqphb_child_stopping_hook(apr_pool_t *pchild, int graceful)
{
    int threaded = AP_MPMQ_NOT_SUPPORTED;
    /* prefork (single-threaded) has no workers to join: its child exits
     * at once, through the pool cleanup, and some versions pass
     * graceful=0 for every exit, some from its SIGTERM handler. */
    if (ap_mpm_query(AP_MPMQ_IS_THREADED, &threaded) != APR_SUCCESS
        || threaded == AP_MPMQ_NOT_SUPPORTED) {
        return;
    }
    amqphb_child_stopping(pchild, graceful);
}
#endif

static void amqphb_register_hooks(apr_pool_t *p)
{
    (void)p;
    /* The status table is made in the parent before any process that
     * runs a relay is forked: REALLY_FIRST, ahead of mod_wsgi's
     * post_config, which starts its daemon processes. */
    ap_hook_post_config(amqphb_post_config_hook, NULL, NULL,
                        APR_HOOK_REALLY_FIRST);
    ap_hook_handler(amqphb_handler, NULL, NULL, APR_HOOK_MIDDLE);
    /* mod_status's summary lines; a no-op when mod_status is not loaded. */
    APR_OPTIONAL_HOOK(ap, status_hook, amqphb_status_hook, NULL, NULL,
                      APR_HOOK_MIDDLE);
    /* check_config runs for `httpd -t` and for every (re)start, after the
     * vhost configs are merged; a non-OK result fails the configuration. */
    ap_hook_check_config(amqphb_check_config_hook, NULL, NULL, APR_HOOK_MIDDLE);
    /* Before mod_wsgi's child_init (APR_HOOK_MIDDLE) and every other one:
     * the relay URL must be in the environment before any interpreter
     * starts, and setenv() is only safe while this child has one thread. */
    ap_hook_child_init(amqphb_child_init, NULL, NULL, APR_HOOK_REALLY_FIRST);
    /* After every other child_init: the cleanup that stops the relay is
     * registered last, so it runs first when the child exits, before any
     * module (mod_wsgi) tears down its interpreters. */
    ap_hook_child_init(amqphb_child_init_last, NULL, NULL, APR_HOOK_REALLY_LAST);
    ap_hook_fixups(amqphb_fixups, NULL, NULL, APR_HOOK_MIDDLE);
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 110)
    /* httpd 2.4.49+: on an ungraceful stop, the event and worker MPMs run
     * child_stopping before they join their worker threads; the relay
     * closes its connections shortly after, so a request waiting on the
     * broker ends instead of holding its thread until httpd's SIGKILL. */
    ap_hook_child_stopping(amqphb_child_stopping_hook, NULL, NULL, APR_HOOK_MIDDLE);
#endif
}

module AP_MODULE_DECLARE_DATA amqp_heartbeat_module = {
    STANDARD20_MODULE_STUFF,
    NULL,                         /* per-directory config creator */
    NULL,                         /* per-directory config merger */
    amqphb_create_server_config,  /* per-server config creator */
    amqphb_merge_server_config,   /* per-server config merger */
    amqphb_cmds,                  /* command table */
    amqphb_register_hooks         /* hook registration */
#ifdef AP_MODULE_FLAG_NONE
    , AP_MODULE_FLAG_NONE         /* flags (httpd >= 2.4.21) */
#endif
};
