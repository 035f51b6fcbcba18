//! Which requests mod_wsgi hands to a daemon process, as far as an httpd
//! child can tell before mod_wsgi's handler runs.
//!
//! `fixups` must not put this child's relay URL into a request that
//! mod_wsgi ships to a `WSGIDaemonProcess`: mod_wsgi sends the request's
//! whole `subprocess_env` to the daemon, which builds the WSGI environ from
//! it, and the daemon cannot use the child's loopback port (its relay
//! refuses sockets of other processes). mod_wsgi picks the process group in
//! its handler, after fixups, from its private per-directory record, so
//! this reads what it reads, in public places:
//!
//! - `WSGIProcessGroup` in httpd's configuration tree (`ap_conftree`, kept
//!   in pconf for the life of the configuration): a server whose section,
//!   or the main server's, names a group other than `%{GLOBAL}` is taken as
//!   routing its mod_wsgi requests to daemons. Conservative: one such line
//!   in a `<Location>` stops the URL for the whole server, which at worst
//!   leaves an embedded app of that server reading its process
//!   environment.
//! - `WSGIScriptAlias ... process-group=G`: mod_wsgi's translate_name
//!   leaves G in the request's notes (`mod_wsgi.process_group`).

use super::bindings::{ap_conftree, ap_directive_t, apr_table_get, request_rec};
use super::ffi::c_str;

/// The group name mod_wsgi reads as "this process" (embedded mode).
const EMBEDDED: &str = "%{GLOBAL}";

/// One node of httpd's configuration tree.
#[derive(Debug, Default)]
pub(super) struct Node {
    pub(super) directive: String,
    pub(super) args: String,
    /// `file:line`, as `Server::defined_at` gives it for a vhost.
    pub(super) at: String,
    pub(super) children: Vec<Node>,
}

/// Whether `WSGIProcessGroup` arguments name a daemon group.
fn names_daemon(args: &str) -> bool {
    let group = args.trim().trim_matches('"');
    !group.is_empty() && group != EMBEDDED
}

fn routes_in(nodes: &[Node], skip_vhosts: bool) -> bool {
    nodes.iter().any(|n| {
        if n.directive.eq_ignore_ascii_case("WSGIProcessGroup") {
            return names_daemon(&n.args);
        }
        if skip_vhosts && n.directive.eq_ignore_ascii_case("<VirtualHost") {
            return false;
        }
        routes_in(&n.children, skip_vhosts)
    })
}

/// What the tree says about each server: the main server routes when a
/// `WSGIProcessGroup` outside every `<VirtualHost>` names a daemon group
/// (the vhosts inherit it); a vhost routes when the main server does or its
/// own section names one.
pub(super) struct Routing {
    main: bool,
    /// `file:line` of the `<VirtualHost>` sections that name one.
    vhosts: Vec<String>,
}

impl Routing {
    pub(super) fn from_tree(tree: &[Node]) -> Routing {
        let mut vhosts = Vec::new();
        collect_vhosts(tree, &mut vhosts);
        Routing {
            main: routes_in(tree, true),
            vhosts,
        }
    }

    /// `vhost_at`: where the server's `<VirtualHost>` starts; `None` for
    /// the main server.
    pub(super) fn routes(&self, vhost_at: Option<&str>) -> bool {
        self.main || vhost_at.is_some_and(|at| self.vhosts.iter().any(|v| v == at))
    }
}

fn collect_vhosts(nodes: &[Node], out: &mut Vec<String>) {
    for n in nodes {
        if n.directive.eq_ignore_ascii_case("<VirtualHost") {
            if routes_in(&n.children, false) {
                out.push(n.at.clone());
            }
        } else {
            collect_vhosts(&n.children, out);
        }
    }
}

/// httpd's configuration tree, copied.
pub(super) fn config_tree() -> Vec<Node> {
    // SAFETY: ap_conftree is NULL or the tree httpd built in pconf; it is
    // only written while the configuration is read, before any child or
    // daemon process runs our hooks, and freed with pconf.
    unsafe { copy_siblings(ap_conftree) }
}

/// # Safety
/// `node` is NULL or a node of httpd's configuration tree (see above).
unsafe fn copy_siblings(mut node: *const ap_directive_t) -> Vec<Node> {
    let mut out = Vec::new();
    // SAFETY: each node is NULL or live (contract above); its strings are
    // NULL or NUL-terminated in pconf, its links NULL or tree nodes.
    while let Some(n) = unsafe { node.as_ref() } {
        let text = |p| unsafe { c_str(p) }.map(|s| s.to_string_lossy().into_owned());
        out.push(Node {
            directive: text(n.directive).unwrap_or_default(),
            args: text(n.args).unwrap_or_default(),
            at: format!("{}:{}", text(n.filename).unwrap_or_default(), n.line_num),
            children: unsafe { copy_siblings(n.first_child) },
        });
        node = n.next;
    }
    out
}

/// Whether mod_wsgi's translate_name noted a daemon group for this request
/// (`WSGIScriptAlias ... process-group=G`).
pub(super) fn noted_daemon_group(request: &request_rec) -> bool {
    if request.notes.is_null() {
        return false;
    }
    // SAFETY: notes is the request's live table; apr_table_get returns NULL
    // or a string in the request pool, read at once.
    let group = unsafe {
        c_str(apr_table_get(
            request.notes,
            c"mod_wsgi.process_group".as_ptr(),
        ))
    };
    group.is_some_and(|g| names_daemon(&g.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(directive: &str, args: &str, at: &str, children: Vec<Node>) -> Node {
        Node {
            directive: directive.to_string(),
            args: args.to_string(),
            at: at.to_string(),
            children,
        }
    }

    fn group(args: &str) -> Node {
        node("WSGIProcessGroup", args, "c:1", vec![])
    }

    #[test]
    fn a_vhost_naming_a_daemon_group_routes_and_only_it() {
        let tree = vec![
            node("WSGIDaemonProcess", "nova processes=2", "c:1", vec![]),
            node("<VirtualHost", "*:80", "c:2", vec![group("nova")]),
            node("<VirtualHost", "*:81", "c:5", vec![group("%{GLOBAL}")]),
            node(
                "<VirtualHost",
                "*:82",
                "c:9",
                vec![node("<Location", "/x", "c:10", vec![group("\"other\"")])],
            ),
        ];
        let r = Routing::from_tree(&tree);
        assert!(r.routes(Some("c:2")));
        assert!(!r.routes(Some("c:5")));
        assert!(r.routes(Some("c:9")), "a group in a <Location> counts");
        assert!(!r.routes(None));
    }

    #[test]
    fn the_main_servers_group_is_inherited_by_every_vhost() {
        let tree = vec![
            node("<Directory", "/srv", "c:1", vec![group("api")]),
            node("<VirtualHost", "*:80", "c:4", vec![]),
        ];
        let r = Routing::from_tree(&tree);
        assert!(r.routes(None));
        assert!(r.routes(Some("c:4")));
        assert!(!Routing::from_tree(&[group("%{GLOBAL}"), group("")]).routes(None));
    }
}
