//! Per-server configuration: directive parsing, validation and merging.
//!
//! Every `AMQPHeartbeat*` directive handler in the Apache layer is a thin
//! translation to [`ServerConfig::apply`]; all checks live here so they are
//! unit-tested without httpd. Errors name the directive and the bad value,
//! because httpd prints them verbatim for `apachectl -t`.

use crate::broker_url::BrokerUrl;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_INTERVAL_SECS: u16 = 15;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u16 = 10;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 32;
pub const DEFAULT_ENV_NAME: &str = "AMQP_HEARTBEAT_URL";

/// The directives, in the order of the command table in the C shim (the
/// numeric values cross the FFI boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Directive {
    Broker = 0,
    Interval = 1,
    ConnectTimeout = 2,
    Env = 3,
    MaxConnections = 4,
    TlsCaCertificateFile = 5,
    ChildRelay = 6,
}

impl Directive {
    /// The directive with index `index` of the C command table
    /// (apache/amqphb.h; src/apache/contract.rs checks the two agree).
    pub const fn from_index(index: u32) -> Option<Directive> {
        Some(match index {
            0 => Directive::Broker,
            1 => Directive::Interval,
            2 => Directive::ConnectTimeout,
            3 => Directive::Env,
            4 => Directive::MaxConnections,
            5 => Directive::TlsCaCertificateFile,
            6 => Directive::ChildRelay,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Directive::Broker => "AMQPHeartbeatBroker",
            Directive::Interval => "AMQPHeartbeatInterval",
            Directive::ConnectTimeout => "AMQPHeartbeatConnectTimeout",
            Directive::Env => "AMQPHeartbeatEnv",
            Directive::MaxConnections => "AMQPHeartbeatMaxConnections",
            Directive::TlsCaCertificateFile => "AMQPHeartbeatTLSCACertificateFile",
            Directive::ChildRelay => "AMQPHeartbeatChildRelay",
        }
    }
}

/// Schemes an app's client library understands for a plain AMQP URL. The
/// relay listens in plain TCP on loopback, so no TLS scheme is offered.
const ENV_SCHEMES: [&str; 3] = ["amqp", "rabbit", "pyamqp"];

/// One `AMQPHeartbeatEnv NAME [SCHEME]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnvExport {
    pub name: String,
    pub scheme: String,
}

/// A CA bundle read at configuration time (as root, before the children
/// drop privileges, so www-data never needs to read it).
#[derive(Clone)]
pub struct CaBundle {
    pub path: String,
    pub certificates: Arc<Vec<CertificateDer<'static>>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path,
            self.certificates.len()
        )
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.certificates == other.certificates
    }
}

impl Eq for CaBundle {}

/// One server's (main server or `<VirtualHost>`) settings. `None` means "not
/// set here", which is what lets a vhost inherit (the `*_set` flags of
/// httpd's own modules).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    pub brokers: Option<Vec<BrokerUrl>>,
    pub interval_secs: Option<u16>,
    pub connect_timeout_secs: Option<u16>,
    pub env: Option<Vec<EnvExport>>,
    pub max_connections: Option<u32>,
    pub ca_bundle: Option<CaBundle>,
    /// `AMQPHeartbeatChildRelay`: whether httpd's own (MPM) children start
    /// a relay. Main server only (the shim refuses it in a vhost): it
    /// decides for the whole process, not for one server.
    pub child_relay: Option<bool>,
}

/// What one relay listener needs: the effective settings of a server that
/// names a broker. Servers with equal settings share one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySettings {
    pub brokers: Vec<BrokerUrl>,
    pub heartbeat: Duration,
    pub connect_timeout: Duration,
    pub max_connections: u32,
    pub ca_bundle: Option<CaBundle>,
}

impl ServerConfig {
    /// Apply one directive occurrence. `args` are the directive's arguments
    /// as httpd split them.
    pub fn apply(&mut self, directive: Directive, args: &[&str]) -> Result<(), String> {
        let name = directive.name();
        match directive {
            Directive::Broker => {
                if args.is_empty() {
                    return Err(format!("{name} needs at least one broker URL"));
                }
                if self.brokers.is_some() {
                    return Err(format!(
                        "{name} is given twice for this server; list every broker in one {name} line (they are tried in order)"
                    ));
                }
                let mut brokers = Vec::with_capacity(args.len());
                for arg in args {
                    brokers.push(BrokerUrl::parse(arg).map_err(|e| format!("{name}: {e}"))?);
                }
                check_one_vhost(name, &brokers)?;
                self.brokers = Some(brokers);
            }
            Directive::Interval => {
                self.interval_secs =
                    Some(parse_number(name, one_arg(name, args)?, 1, 3600)? as u16);
            }
            Directive::ConnectTimeout => {
                self.connect_timeout_secs =
                    Some(parse_number(name, one_arg(name, args)?, 1, 300)? as u16);
            }
            Directive::MaxConnections => {
                self.max_connections = Some(parse_number(name, one_arg(name, args)?, 1, 4096)?);
            }
            Directive::Env => {
                let (env_name, scheme) = match args {
                    [n] => (*n, "amqp"),
                    [n, s] => (*n, *s),
                    _ => {
                        return Err(format!(
                            "{name} takes NAME [SCHEME], got {} arguments",
                            args.len()
                        ));
                    }
                };
                crate::env_name::check(name, env_name)?;
                let scheme = scheme.to_ascii_lowercase();
                if !ENV_SCHEMES.contains(&scheme.as_str()) {
                    return Err(format!(
                        "{name}: unknown scheme '{scheme}' for {env_name} (expected one of {})",
                        ENV_SCHEMES.join(", ")
                    ));
                }
                let list = self.env.get_or_insert_with(Vec::new);
                if list.iter().any(|e| e.name == env_name) {
                    return Err(format!(
                        "{name}: {env_name} is already published by this server"
                    ));
                }
                list.push(EnvExport {
                    name: env_name.to_string(),
                    scheme,
                });
            }
            Directive::TlsCaCertificateFile => {
                let path = one_arg(name, args)?;
                self.ca_bundle = Some(read_ca_bundle(path).map_err(|e| format!("{name}: {e}"))?);
            }
            Directive::ChildRelay => {
                let flag = one_arg(name, args)?;
                self.child_relay = Some(match flag.to_ascii_lowercase().as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("{name}: '{flag}' is neither On nor Off")),
                });
            }
        }
        Ok(())
    }

    /// httpd's merge: what `add` (the vhost) sets wins, the rest comes from
    /// `base` (the main server). Builds a new record; inputs are untouched.
    pub fn merge(base: &ServerConfig, add: &ServerConfig) -> ServerConfig {
        ServerConfig {
            brokers: add.brokers.clone().or_else(|| base.brokers.clone()),
            interval_secs: add.interval_secs.or(base.interval_secs),
            connect_timeout_secs: add.connect_timeout_secs.or(base.connect_timeout_secs),
            env: add.env.clone().or_else(|| base.env.clone()),
            max_connections: add.max_connections.or(base.max_connections),
            ca_bundle: add.ca_bundle.clone().or_else(|| base.ca_bundle.clone()),
            child_relay: add.child_relay.or(base.child_relay),
        }
    }

    /// The relay this server needs, or `None` when it names no broker (the
    /// module is off for it).
    pub fn relay_settings(&self) -> Option<RelaySettings> {
        let brokers = self.brokers.clone()?;
        Some(RelaySettings {
            brokers,
            heartbeat: Duration::from_secs(u64::from(
                self.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS),
            )),
            connect_timeout: Duration::from_secs(u64::from(
                self.connect_timeout_secs
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
            )),
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            ca_bundle: self.ca_bundle.clone(),
        })
    }

    /// Whether httpd's MPM children start a relay (read on the main
    /// server); on unless `AMQPHeartbeatChildRelay Off`.
    pub fn child_relay(&self) -> bool {
        self.child_relay.unwrap_or(true)
    }

    /// The environment names this server publishes (the default when none
    /// is configured).
    pub fn env_exports(&self) -> Vec<EnvExport> {
        match &self.env {
            Some(list) if !list.is_empty() => list.clone(),
            _ => vec![EnvExport {
                name: DEFAULT_ENV_NAME.to_string(),
                scheme: "amqp".to_string(),
            }],
        }
    }
}

/// The URL the app is given: `SCHEME://LISTEN/[vhost]`, the vhost copied
/// from the first broker URL. Never the userinfo: the URL lands in the
/// process environment of the whole child (every vhost, every subprocess)
/// and in request environments that travel to CGI/FastCGI backends, so it
/// must hold no secret. The relay logs in with the directive's credentials
/// itself (relay::login); an app that sends none gets its client's default.
pub fn published_url(
    scheme: &str,
    listen: std::net::SocketAddr,
    first_broker: &BrokerUrl,
) -> String {
    let mut url = format!("{scheme}://{listen}");
    url.push('/');
    if let Some(v) = &first_broker.vhost {
        url.push_str(v);
    }
    url
}

/// Every broker URL of a server names the same vhost: the app is given
/// one URL (the first's vhost, see [`published_url`]) and its
/// Connection.Open names that vhost whichever broker answered, so a later
/// URL's different vhost would never be used. No vhost, an empty one and
/// `%2F` all name RabbitMQ's default vhost `/` to the app's client.
fn check_one_vhost(name: &str, brokers: &[BrokerUrl]) -> Result<(), String> {
    let named = |b: &BrokerUrl| b.vhost_decoded().filter(|v| !v.is_empty() && v != "/");
    let Some((first, rest)) = brokers.split_first() else {
        return Ok(());
    };
    match rest.iter().find(|b| named(b) != named(first)) {
        None => Ok(()),
        Some(other) => {
            let describe = |b: &BrokerUrl| match named(b) {
                Some(v) => format!("'{b}' names vhost '{v}'"),
                None => format!("'{b}' names the default vhost"),
            };
            Err(format!(
                "{name}: every broker URL must name the same vhost (the app opens the vhost of the one URL it is given, whichever broker answers): {}, {}",
                describe(first),
                describe(other)
            ))
        }
    }
}

/// A server as the cross-server check sees it.
pub struct NamedServer<'a> {
    /// e.g. "vhost api.example.org (/etc/apache2/sites-enabled/nova.conf:3)"
    pub description: String,
    pub config: &'a ServerConfig,
}

/// One environment NAME holds one URL per process, so two servers may
/// publish the same NAME only when they would publish the same relay.
pub fn check_env_conflicts(servers: &[NamedServer<'_>]) -> Result<(), String> {
    // NAME -> (relay settings, scheme, which server published it first)
    let mut seen: Vec<(String, RelaySettings, String, &str)> = Vec::new();
    for server in servers {
        let Some(settings) = server.config.relay_settings() else {
            continue;
        };
        for export in server.config.env_exports() {
            let Some((_, other, other_scheme, other_desc)) =
                seen.iter().find(|(name, ..)| *name == export.name)
            else {
                seen.push((
                    export.name,
                    settings.clone(),
                    export.scheme,
                    &server.description,
                ));
                continue;
            };
            let what = if *other != settings {
                "different brokers or relay settings"
            } else if *other_scheme != export.scheme {
                "different schemes"
            } else {
                continue;
            };
            return Err(format!(
                "AMQPHeartbeatEnv: {} is published by {} and by {} with {what}; \
                 give one of them another name with AMQPHeartbeatEnv",
                export.name, other_desc, server.description
            ));
        }
    }
    Ok(())
}

fn one_arg<'a>(name: &str, args: &[&'a str]) -> Result<&'a str, String> {
    match args {
        [a] => Ok(a),
        _ => Err(format!(
            "{name} takes exactly one argument, got {}",
            args.len()
        )),
    }
}

fn parse_number(name: &str, text: &str, min: u32, max: u32) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name}: '{text}' is not a whole number (expected {min}..{max})"
        ));
    }
    match text.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name}: {text} is out of range (expected {min}..{max})"
        )),
    }
}

fn read_ca_bundle(path: &str) -> Result<CaBundle, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read CA file '{path}': {e}"))?;
    let mut certificates = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&data) {
        certificates.push(cert.map_err(|e| format!("'{path}' is not a PEM CA bundle: {e}"))?);
    }
    if certificates.is_empty() {
        return Err(format!("'{path}' holds no PEM certificate"));
    }
    // A bundle rustls cannot use is better reported now than at the first
    // connection in some child.
    let mut roots = rustls::RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(certificates.iter().cloned());
    if roots.is_empty() {
        return Err(format!(
            "'{path}': none of its {rejected} certificates is a usable CA certificate"
        ));
    }
    Ok(CaBundle {
        path: path.to_string(),
        certificates: Arc::new(certificates),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lines: &[(Directive, &[&str])]) -> Result<ServerConfig, String> {
        let mut c = ServerConfig::default();
        for (d, args) in lines {
            c.apply(*d, args)?;
        }
        Ok(c)
    }

    #[test]
    fn defaults() {
        let c = cfg(&[(Directive::Broker, &["amqp://h/"])]).unwrap();
        let s = c.relay_settings().unwrap();
        assert_eq!(s.heartbeat, Duration::from_secs(15));
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.max_connections, 32);
        assert_eq!(c.env_exports()[0].name, "AMQP_HEARTBEAT_URL");
        assert!(ServerConfig::default().relay_settings().is_none());
    }

    #[test]
    fn bad_values_name_the_directive() {
        let cases: &[(Directive, &[&str], &str)] = &[
            (
                Directive::Interval,
                &["0"],
                "AMQPHeartbeatInterval: 0 is out of range",
            ),
            (
                Directive::Interval,
                &["3601"],
                "AMQPHeartbeatInterval: 3601 is out of range",
            ),
            (
                Directive::Interval,
                &["ten"],
                "AMQPHeartbeatInterval: 'ten' is not a whole number",
            ),
            (Directive::Interval, &["-1"], "not a whole number"),
            (
                Directive::ConnectTimeout,
                &["0"],
                "AMQPHeartbeatConnectTimeout: 0 is out of range",
            ),
            (
                Directive::MaxConnections,
                &["99999999999"],
                "AMQPHeartbeatMaxConnections: 99999999999 is out of range",
            ),
            (
                Directive::Env,
                &["1BAD"],
                "AMQPHeartbeatEnv: '1BAD' is not a valid environment variable name",
            ),
            (
                Directive::Env,
                &["A-B"],
                "not a valid environment variable name",
            ),
            (
                Directive::Env,
                &["X", "amqps"],
                "AMQPHeartbeatEnv: unknown scheme 'amqps'",
            ),
            (Directive::Env, &["X", "a", "b"], "takes NAME [SCHEME]"),
            (
                Directive::Env,
                &["LD_PRELOAD"],
                "AMQPHeartbeatEnv: 'LD_PRELOAD' is reserved",
            ),
            (
                Directive::Broker,
                &["ftp://h/"],
                "AMQPHeartbeatBroker: unsupported scheme 'ftp'",
            ),
            (Directive::Broker, &[], "needs at least one broker URL"),
            (
                Directive::TlsCaCertificateFile,
                &["/nonexistent/ca.pem"],
                "cannot read CA file '/nonexistent/ca.pem'",
            ),
        ];
        for (d, args, want) in cases {
            let err = cfg(&[(*d, args)]).unwrap_err();
            assert!(err.contains(want), "{d:?} {args:?}: {err}");
        }
    }

    #[test]
    fn child_relay_is_on_unless_turned_off() {
        assert!(ServerConfig::default().child_relay());
        let off = cfg(&[(Directive::ChildRelay, &["off"])]).unwrap();
        assert!(!off.child_relay());
        assert!(
            cfg(&[(Directive::ChildRelay, &["On"])])
                .unwrap()
                .child_relay()
        );
        let err = cfg(&[(Directive::ChildRelay, &["maybe"])]).unwrap_err();
        assert!(err.contains("AMQPHeartbeatChildRelay: 'maybe'"), "{err}");
        // The flag is no relay setting: servers still share one listener.
        let mut a = cfg(&[(Directive::Broker, &["amqp://a/"])]).unwrap();
        let b = a.clone();
        a.apply(Directive::ChildRelay, &["Off"]).unwrap();
        assert_eq!(a.relay_settings(), b.relay_settings());
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("amqphb-ca-test-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = cfg(&[(Directive::TlsCaCertificateFile, &[path.to_str().unwrap()])]).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn every_broker_url_names_the_same_vhost() {
        let mut c = ServerConfig::default();
        c.apply(
            Directive::Broker,
            &["amqp://a/nova", "amqp://nova:pw@b:5673/nova"],
        )
        .unwrap();
        let mut c = ServerConfig::default();
        c.apply(
            Directive::Broker,
            &["amqp://a", "amqp://b/", "amqp://c/%2F"],
        )
        .unwrap();
        let mut c = ServerConfig::default();
        let err = c
            .apply(
                Directive::Broker,
                &["amqp://u:Secr3t@a/nova", "amqp://u:Secr3t@b/"],
            )
            .unwrap_err();
        assert_eq!(
            err,
            "AMQPHeartbeatBroker: every broker URL must name the same vhost (the app opens the vhost of the one URL it is given, whichever broker answers): 'amqp://u:***@a:5672/nova' names vhost 'nova', 'amqp://u:***@b:5672/' names the default vhost"
        );
    }

    #[test]
    fn env_is_repeatable_but_not_twice_the_same() {
        let c = cfg(&[(Directive::Env, &["A"]), (Directive::Env, &["B", "Rabbit"])]).unwrap();
        let names: Vec<_> = c
            .env_exports()
            .into_iter()
            .map(|e| (e.name, e.scheme))
            .collect();
        assert_eq!(
            names,
            [("A".into(), "amqp".into()), ("B".into(), "rabbit".into())]
        );
        assert!(cfg(&[(Directive::Env, &["A"]), (Directive::Env, &["A"])]).is_err());
        assert!(
            cfg(&[
                (Directive::Broker, &["amqp://a/"]),
                (Directive::Broker, &["amqp://b/"])
            ])
            .is_err()
        );
    }

    #[test]
    fn merge_inherits_and_never_mutates() {
        let base = cfg(&[
            (Directive::Broker, &["amqp://a/"]),
            (Directive::Interval, &["5"]),
            (Directive::Env, &["A"]),
            (Directive::Env, &["B"]),
        ])
        .unwrap();
        let add = cfg(&[
            (Directive::Env, &["C"]),
            (Directive::MaxConnections, &["3"]),
        ])
        .unwrap();
        let (base_before, add_before) = (base.clone(), add.clone());
        let merged = ServerConfig::merge(&base, &add);
        assert_eq!(base, base_before);
        assert_eq!(add, add_before);
        assert_eq!(merged.brokers, base.brokers);
        assert_eq!(merged.interval_secs, Some(5));
        assert_eq!(merged.max_connections, Some(3));
        // A vhost that sets AMQPHeartbeatEnv replaces the inherited list.
        assert_eq!(merged.env_exports().len(), 1);
        assert_eq!(merged.env_exports()[0].name, "C");
    }

    #[test]
    fn published_url_copies_the_vhost_and_never_the_userinfo() {
        let b = BrokerUrl::parse("amqps://nova:pw@rabbit:5671/nova%2Fprod").unwrap();
        let listen: std::net::SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(
            published_url("rabbit", listen, &b),
            "rabbit://127.0.0.1:40001/nova%2Fprod"
        );
        let b = BrokerUrl::parse("amqp://rabbit").unwrap();
        assert_eq!(published_url("amqp", listen, &b), "amqp://127.0.0.1:40001/");
    }

    /// What `apachectl -t` and any `{:?}` of a configuration record show:
    /// never a password, however the URL is malformed.
    #[test]
    fn passwords_never_in_errors_or_debug() {
        for url in [
            "amqp://nova:Sup3r%Secret@h/",
            "amqp://nova:pa/ssSecret@h:5672/nova",
            "amqp://nova:p@ss/Secret@h:99999/",
            "nova:Secret@h",
        ] {
            let err = cfg(&[(Directive::Broker, &["amqp://h/", url])]).unwrap_err();
            assert!(err.starts_with("AMQPHeartbeatBroker: "), "{err}");
            for fragment in ["Secret", "%Se", "ssS"] {
                assert!(!err.contains(fragment), "{url}: {err}");
            }
        }
        let c = cfg(&[(
            Directive::Broker,
            &["amqp://nova:p@Secret@h/nova", "amqps://nova:Secret@h2/nova"],
        )])
        .unwrap();
        let shown = format!("{c:?} {:?}", c.relay_settings().unwrap());
        assert!(!shown.contains("Secret"), "{shown}");
        assert!(shown.contains("nova:***@h:5672/nova"), "{shown}");
    }

    #[test]
    fn env_conflicts_across_servers() {
        let a = cfg(&[(Directive::Broker, &["amqp://a/"])]).unwrap();
        let b = cfg(&[(Directive::Broker, &["amqp://b/"])]).unwrap();
        let b_other_name = cfg(&[
            (Directive::Broker, &["amqp://b/"]),
            (Directive::Env, &["OTHER"]),
        ])
        .unwrap();
        let off = ServerConfig::default();
        let named = |d: &str, c| NamedServer {
            description: d.to_string(),
            config: c,
        };
        let err =
            check_env_conflicts(&[named("main server", &a), named("vhost b", &b)]).unwrap_err();
        assert!(err.contains("AMQP_HEARTBEAT_URL"), "{err}");
        assert!(
            err.contains("main server") && err.contains("vhost b"),
            "{err}"
        );
        assert!(
            check_env_conflicts(&[named("m", &a), named("v", &b_other_name), named("o", &off)])
                .is_ok()
        );
        let a_again = a.clone();
        assert!(check_env_conflicts(&[named("m", &a), named("v", &a_again)]).is_ok());
        let a_rabbit = cfg(&[
            (Directive::Broker, &["amqp://a/"]),
            (Directive::Env, &["AMQP_HEARTBEAT_URL", "rabbit"]),
        ])
        .unwrap();
        let err = check_env_conflicts(&[named("m", &a), named("v", &a_rabbit)]).unwrap_err();
        assert!(err.contains("different schemes"), "{err}");
    }

    proptest::proptest! {
        /// The directive parser's fuzz in `make test` (the long runs are
        /// `fuzz/run.sh config_apply`): any directive with any arguments
        /// never panics; a rejection names the directive and leaves the
        /// record as it was.
        #[test]
        fn any_directive_input_is_handled(
            index in 0u32..7,
            args in proptest::collection::vec("[ -~]{0,40}|amqps?://[a-z0-9:@%./\\[\\]_-]{0,40}|[0-9]{0,6}", 0..4),
        ) {
            let directive = Directive::from_index(index).unwrap();
            let mut config = ServerConfig::default();
            config.apply(Directive::Env, &["EXISTING"]).unwrap();
            let before = config.clone();
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(message) = config.apply(directive, &refs) {
                proptest::prop_assert!(message.contains(directive.name()), "{message}");
                proptest::prop_assert_eq!(&config, &before);
            }
            if let Some(settings) = config.relay_settings() {
                proptest::prop_assert!(!settings.brokers.is_empty());
                proptest::prop_assert!(settings.heartbeat.as_secs() >= 1);
            }
        }
    }
}
