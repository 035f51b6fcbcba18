//! Which names `AMQPHeartbeatEnv` may publish.
//!
//! The relay URL is set in the child's process environment and in every
//! request's `subprocess_env`, overwriting what was there. A name that
//! something else already gives a meaning would be silently replaced (or
//! would replace the relay URL, for request variables httpd sets later), so
//! these are refused at configuration time, in four groups:
//!
//! - read by the dynamic loader, libc or the shell of any subprocess
//!   (`PATH`, `LD_*`, `LANG`/`LC_*`, `TZ`, `IFS`, `MALLOC_*`, ...);
//! - read by an interpreter httpd embeds or runs (`PYTHON*`, `PERL*`,
//!   `PHP*`, `RUBY*`, ...);
//! - CGI/1.1 meta-variables (RFC 3875) and the request variables httpd and
//!   its modules set (`HTTP_*`, `HTTPS`, `REMOTE_*`, `SERVER_*`, `SSL_*`,
//!   `REDIRECT_*`, ...), which the WSGI environ and `$_SERVER` show;
//! - httpd's own start-up environment (`APACHE_*` from Debian's envvars).
//!
//! Names are compared without regard to case: a `Path` beside `PATH` only
//! confuses.

/// Exact names, with the reason shown to the operator.
const RESERVED: &[(&str, &str)] = &[
    ("PATH", "the program search path"),
    ("HOME", "a login variable"),
    ("SHELL", "a login variable"),
    ("USER", "a login variable"),
    ("LOGNAME", "a login variable"),
    ("PWD", "a shell variable"),
    ("OLDPWD", "a shell variable"),
    ("IFS", "a shell variable"),
    ("ENV", "read by sh at start"),
    ("BASH_ENV", "read by bash at start"),
    ("CDPATH", "a shell variable"),
    ("PS4", "a shell variable"),
    ("TERM", "a terminal variable"),
    ("TMPDIR", "where programs put temporary files"),
    ("TMP", "where programs put temporary files"),
    ("TEMP", "where programs put temporary files"),
    ("LANG", "a locale variable"),
    ("LANGUAGE", "a locale variable"),
    ("TZ", "the time zone"),
    ("TZDIR", "the time zone database"),
    ("NLSPATH", "read by libc (message catalogs)"),
    ("GCONV_PATH", "read by libc (character set modules)"),
    ("LOCALDOMAIN", "read by the libc resolver"),
    ("RES_OPTIONS", "read by the libc resolver"),
    ("HOSTALIASES", "read by the libc resolver"),
    ("GLIBC_TUNABLES", "read by libc"),
    ("HOSTNAME", "a shell variable"),
    ("HTTPS", "set by httpd for TLS requests"),
    ("GATEWAY_INTERFACE", "a CGI variable"),
    ("QUERY_STRING", "a CGI variable"),
    ("DOCUMENT_ROOT", "a CGI variable set by httpd"),
    ("AUTH_TYPE", "a CGI variable"),
    ("PATH_INFO", "a CGI variable"),
    ("PATH_TRANSLATED", "a CGI variable"),
    ("UNIQUE_ID", "set by mod_unique_id"),
];

/// Name prefixes, with the reason.
const RESERVED_PREFIXES: &[(&str, &str)] = &[
    ("LD_", "read by the dynamic loader"),
    ("LC_", "a locale variable"),
    ("MALLOC_", "read by libc's allocator"),
    ("SSL_", "set by mod_ssl, read by OpenSSL"),
    ("PYTHON", "read by Python"),
    ("PERL", "read by Perl"),
    ("PHP", "read by PHP"),
    ("RUBY", "read by Ruby"),
    ("GEM_", "read by Ruby"),
    ("NODE_", "read by Node.js"),
    ("JAVA_", "read by Java"),
    ("HTTP_", "a CGI variable (an HTTP request header)"),
    ("REMOTE_", "a CGI variable"),
    ("SERVER_", "a CGI variable"),
    ("REQUEST_", "a CGI variable"),
    ("SCRIPT_", "a CGI variable"),
    ("CONTENT_", "a CGI variable"),
    ("CONTEXT_", "a CGI variable set by httpd"),
    ("REDIRECT_", "set by httpd on internal redirects"),
    ("APACHE_", "httpd's start-up environment"),
];

/// Check one `AMQPHeartbeatEnv` NAME; the error names the directive and
/// the value.
pub fn check(directive: &str, name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "{directive}: '{name}' is not a valid environment variable name (letters, digits and '_', not starting with a digit)"
        ));
    }
    let upper = name.to_ascii_uppercase();
    let reason = RESERVED
        .iter()
        .find(|(reserved, _)| upper == *reserved)
        .or_else(|| {
            RESERVED_PREFIXES
                .iter()
                .find(|(prefix, _)| upper.starts_with(prefix))
        })
        .map(|(_, reason)| *reason);
    match reason {
        Some(reason) => Err(format!(
            "{directive}: '{name}' is reserved ({reason}); publishing the relay URL under it would overwrite it. Choose another name (see the README, \"Security\")"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_others_define_are_refused() {
        for name in [
            "PATH",
            "path",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "PYTHONHOME",
            "PYTHONPATH",
            "PERL5LIB",
            "PERL5OPT",
            "PHPRC",
            "PHP_INI_SCAN_DIR",
            "HTTPS",
            "HTTP_HOST",
            "REMOTE_USER",
            "SERVER_NAME",
            "GATEWAY_INTERFACE",
            "REQUEST_METHOD",
            "SCRIPT_FILENAME",
            "QUERY_STRING",
            "CONTENT_TYPE",
            "DOCUMENT_ROOT",
            "HOME",
            "SHELL",
            "USER",
            "LANG",
            "LC_ALL",
            "TZ",
            "TMPDIR",
            "IFS",
            "SSL_CERT_FILE",
            "REDIRECT_STATUS",
            "APACHE_RUN_USER",
            "GLIBC_TUNABLES",
            "LOCALDOMAIN",
        ] {
            let err = check("AMQPHeartbeatEnv", name).unwrap_err();
            assert!(
                err.starts_with(&format!("AMQPHeartbeatEnv: '{name}' is reserved (")),
                "{err}"
            );
        }
    }

    #[test]
    fn ordinary_names_are_accepted() {
        for name in [
            "AMQP_HEARTBEAT_URL",
            "OS_DEFAULT__TRANSPORT_URL",
            "SHOP_AMQP_URL",
            "NOVA_URL",
            "_X",
            "PATHS_URL",
            "HTTPSURL",
            "TZ_URL",
        ] {
            assert_eq!(check("AMQPHeartbeatEnv", name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_syntax_is_refused() {
        for name in ["", "1BAD", "A-B", "A B", "A=B", "É"] {
            let err = check("AMQPHeartbeatEnv", name).unwrap_err();
            assert!(
                err.contains("not a valid environment variable name"),
                "{err}"
            );
        }
    }
}
