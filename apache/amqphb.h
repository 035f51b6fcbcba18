/*
 * The contract between the C shim (mod_amqp_heartbeat.c) and the Rust side
 * (src/apache/): read by the shim and by bindgen (build.rs), so both sides
 * are compiled against this one text and a mismatch fails the build.
 *
 * - Directive indexes: the command table passes them as cmd->info;
 *   src/apache/server_config.rs maps each by its name here to
 *   config::Directive.
 * - Entry points: each function is declared through a function type.
 *   bindgen turns the type into a Rust function-pointer type and
 *   src/apache/contract.rs checks every Rust definition against it; the C
 *   compiler checks the shim's calls against the declarations.
 * - build.rs names the entry points defined in Rust "local" in the export
 *   version script (only the module record and the daemon entry points are
 *   exported); it finds them in the block that follows ENTRY_BLOCK below.
 */
#ifndef AMQPHB_H
#define AMQPHB_H

#include <stdint.h>

#include "httpd.h"
#include "http_config.h"

enum amqphb_directive_index {
    AMQPHB_BROKER = 0,
    AMQPHB_INTERVAL = 1,
    AMQPHB_CONNECT_TIMEOUT = 2,
    AMQPHB_ENV = 3,
    AMQPHB_MAX_CONNECTIONS = 4,
    AMQPHB_TLS_CA_CERTIFICATE_FILE = 5,
    AMQPHB_CHILD_RELAY = 6,
    /* One past the last: config::Directive has exactly these. */
    AMQPHB_DIRECTIVE_COUNT = 7
};

/* Rust entry points (src/apache/). */
typedef void *amqphb_create_server_config_fn(apr_pool_t *p, server_rec *s);
typedef void *amqphb_merge_server_config_fn(apr_pool_t *p, void *base, void *add);
typedef const char *amqphb_directive_fn(cmd_parms *cmd, unsigned directive_index,
                                        int argc, const char *const argv[]);
typedef int amqphb_check_config_fn(server_rec *s);
typedef void amqphb_child_init_fn(apr_pool_t *pchild, server_rec *s);
typedef void amqphb_child_stopping_fn(apr_pool_t *pchild, int graceful);
typedef int amqphb_fixups_fn(request_rec *r);
typedef int amqphb_post_config_fn(server_rec *s, int hard_limit);
typedef int amqphb_status_handler_fn(request_rec *r, const char *args);
typedef int amqphb_status_summary_fn(request_rec *r, int short_form);
amqphb_create_server_config_fn amqphb_create_server_config;
amqphb_merge_server_config_fn amqphb_merge_server_config;
amqphb_directive_fn amqphb_directive;
amqphb_check_config_fn amqphb_check_config;
amqphb_child_init_fn amqphb_child_init;
amqphb_child_init_fn amqphb_child_init_last;
amqphb_child_stopping_fn amqphb_child_stopping;
amqphb_fixups_fn amqphb_fixups;
amqphb_post_config_fn amqphb_post_config;
amqphb_status_handler_fn amqphb_status_handler;
amqphb_status_summary_fn amqphb_status_summary;

/* Exported for mod_wsgi daemon processes (apache/amqp_heartbeat_daemon.py
 * calls them through ctypes). */
typedef int amqp_heartbeat_daemon_start_fn(const char **report);
typedef int amqp_heartbeat_daemon_stop_fn(void);

/* Defined in the shim, called from Rust. */
typedef void amqphb_log_fn(const server_rec *s, int level, const char *msg);
typedef void *amqphb_module_config_fn(const server_rec *s);
/* status 0 and an empty type leave the response's as they are. */
typedef void amqphb_respond_fn(request_rec *r, int status, const char *content_type,
                               const char *body, size_t len);
/* The status table the parent keeps across restarts (process pool); only
 * a table of the same `layout` (a new build may change it) is given back. */
typedef void *amqphb_table_kept_fn(const server_rec *s, uint64_t layout, size_t *slots);
typedef int amqphb_table_keep_fn(const server_rec *s, void *base, size_t slots, uint64_t layout);
amqphb_log_fn amqphb_log;
amqphb_module_config_fn amqphb_module_config;
amqphb_respond_fn amqphb_respond;
amqphb_table_kept_fn amqphb_table_kept;
amqphb_table_keep_fn amqphb_table_keep;

#endif
