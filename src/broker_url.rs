//! Broker URLs as written in `AMQPHeartbeatBroker`.
//!
//! Only what the relay needs is accepted: `amqp://` or `amqps://`, a host,
//! an optional port, optional userinfo and an optional vhost, kept verbatim
//! (still percent-encoded). With userinfo the relay logs in with it
//! (relay::login); the vhost is copied into the URL published to the app.
//!
//! The parser is hand-written rather than taken from the `url` or
//! `amq-protocol-uri` crates because every rejection must name the part that
//! is wrong in words an operator reading `apachectl -t` understands, and
//! because the accepted grammar is deliberately narrower (no query string:
//! the heartbeat is this module's business).

use std::fmt;

/// One upstream broker. `Debug` hides the password as `Display` does (the
/// configuration records holding it derive `Debug`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    /// `amqps://`: TLS with certificate verification.
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `user[:password]` exactly as written (still percent-encoded).
    pub userinfo: Option<String>,
    /// The path after the authority exactly as written, without the leading
    /// `/` (still percent-encoded); `None` when the URL has no path.
    pub vhost: Option<String>,
}

impl BrokerUrl {
    pub fn parse(text: &str) -> Result<BrokerUrl, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!(
                "'{}' is not a URL (expected amqp://host[:port][/vhost])",
                redact(text)
            )
        })?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => false,
            "amqps" => true,
            _ => {
                return Err(format!(
                    "unsupported scheme '{scheme}' in '{}' (expected amqp:// or amqps://)",
                    redact(text)
                ));
            }
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(format!(
                "'{}' has a query or fragment; none is supported (the heartbeat is set with AMQPHeartbeatInterval)",
                redact(text)
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        // An '@' after the first '/' is either a password holding '/' or a
        // vhost holding '@'; which one cannot be told, and guessing wrong
        // would publish part of a password as a vhost. Nothing of either is
        // quoted: redact() hides everything up to the last '@'.
        if path.is_some_and(|p| p.contains('@')) {
            return Err(format!(
                "'{}' has an '@' after the first '/': write a '/' in the password as %2F, or an '@' in the vhost as %40",
                redact(text)
            ));
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if let Some(ui) = userinfo {
            // The errors quote neither part (a password's fragment is a
            // secret too); the user is shown by redact().
            let (user, password) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            percent_decode(user)
                .map_err(|e| format!("bad user name in '{}': {e}", redact(text)))?;
            if let Some(password) = password {
                percent_decode(password)
                    .map_err(|e| format!("bad password in '{}': {e}", redact(text)))?;
            }
        }
        if let Some(p) = path {
            if p.contains('/') {
                return Err(format!(
                    "vhost '{p}' in '{}' contains '/'; write it percent-encoded (%2F)",
                    redact(text)
                ));
            }
            percent_decode(p).map_err(|e| format!("bad vhost '{p}' in '{}': {e}", redact(text)))?;
        }
        let (host, port_text) =
            split_host_port(hostport).map_err(|e| format!("{e} in '{}'", redact(text)))?;
        check_host(host).map_err(|e| format!("{e} in '{}'", redact(text)))?;
        let port = match port_text {
            None => {
                if tls {
                    5671
                } else {
                    5672
                }
            }
            Some(p) => parse_port(p).map_err(|e| format!("{e} in '{}'", redact(text)))?,
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
            userinfo: userinfo.map(str::to_string),
            vhost: path.map(str::to_string),
        })
    }

    /// `host:port` for connecting (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The vhost percent-decoded, as the broker names it.
    pub fn vhost_decoded(&self) -> Option<String> {
        self.vhost.as_deref().and_then(|v| percent_decode(v).ok())
    }
}

/// Logs and error messages show the URL with the password hidden.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        write!(f, "{scheme}://")?;
        if let Some(ui) = &self.userinfo {
            match ui.split_once(':') {
                Some((user, _)) => write!(f, "{user}:***@")?,
                None => write!(f, "{ui}@")?,
            }
        }
        write!(f, "{}", self.authority())?;
        if let Some(v) = &self.vhost {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

/// Hide a password in text that failed to parse, so an error message that
/// quotes the directive's value never leaks it to the error log.
pub fn redact(text: &str) -> String {
    // The userinfo ends at the LAST '@' (a password may hold '@' or '/'
    // unencoded, however the URL then parses), and text that is not even a
    // URL is treated the same way.
    let (prefix, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    match rest.rfind('@') {
        None => hide_non_port(&prefix, rest),
        Some(at) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.split_once(':') {
                // The user, unless it runs past the authority (then it is
                // not a user name but a piece of something else).
                Some((user, _)) if !user.contains('/') => format!("{user}:***"),
                Some(_) => "***".to_string(),
                None if !userinfo.contains('/') => userinfo.to_string(),
                None => "***".to_string(),
            };
            format!("{prefix}{shown}@{}", &rest[at + 1..])
        }
    }
}

/// A URL with no '@' whose authority has a ':' followed by something other
/// than a port: that is a password (its '@' lost to a space, or written
/// %40), shown as `***`.
fn hide_non_port(prefix: &str, rest: &str) -> String {
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // An IPv6 host's colons are inside its brackets.
    let after_host = match authority.rfind(']') {
        Some(close) => close + 1,
        None => 0,
    };
    match authority[after_host..].find(':') {
        Some(colon) => {
            let colon = after_host + colon;
            let port = &authority[colon + 1..];
            if port.bytes().all(|b| b.is_ascii_digit()) {
                format!("{prefix}{rest}")
            } else {
                format!("{prefix}{}:***{path}", &authority[..colon])
            }
        }
        None => format!("{prefix}{rest}"),
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), String> {
    if hostport.is_empty() {
        return Err("missing host".to_string());
    }
    if let Some(inner) = hostport.strip_prefix('[') {
        let close = inner.find(']').ok_or("unclosed '[' in IPv6 host")?;
        let host = &inner[..close];
        let after = &inner[close + 1..];
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!("unexpected '{after}' after IPv6 host")),
            },
        };
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => {
            if h.contains(':') {
                Err(format!(
                    "IPv6 host '{hostport}' must be written in brackets, e.g. [::1]"
                ))
            } else {
                Ok((h, Some(p)))
            }
        }
        None => Ok((hostport, None)),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("'{host}' is not an IPv6 address"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.len() > 253 || !trimmed.split('.').all(label_ok) {
        return Err(format!("'{host}' is not a valid host name"));
    }
    // All-numeric dotted names must be real IPv4 addresses: "1.2.3.256" is a
    // typo, not a host name.
    if trimmed
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        && trimmed.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(format!("'{host}' is not a valid IPv4 address"));
    }
    Ok(())
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        // Not quoted: without an '@' (a space in an unquoted password
        // splits the URL there), a password sits where the port goes.
        return Err(
            "the text after ':' is not a port number (credentials go before an '@': user:password@host)"
                .to_string(),
        );
    }
    match text.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(format!("port '{text}' is out of range (1..65535)")),
    }
}

/// Decode `%XX` escapes; the result must be UTF-8 because RabbitMQ vhost
/// and user names are. The error quotes nothing of `text` (it may be a
/// password): the caller names the part.
pub fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly: from_str_radix alone would take "+f".
            let value = bytes
                .get(i + 1..i + 3)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    "a '%' is not followed by two hex digits (write a '%' itself as %25)"
                        .to_string()
                })?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "it does not decode to UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let u =
            BrokerUrl::parse("amqp://nova:s%40cret@rabbit1.example.org:5673/nova%2Fprod").unwrap();
        assert!(!u.tls);
        assert_eq!(u.host, "rabbit1.example.org");
        assert_eq!(u.port, 5673);
        assert_eq!(u.userinfo.as_deref(), Some("nova:s%40cret"));
        assert_eq!(u.vhost.as_deref(), Some("nova%2Fprod"));
        assert_eq!(u.vhost_decoded().as_deref(), Some("nova/prod"));
        assert_eq!(
            u.to_string(),
            "amqp://nova:***@rabbit1.example.org:5673/nova%2Fprod"
        );
    }

    #[test]
    fn defaults_and_ipv6() {
        let u = BrokerUrl::parse("amqps://[::1]").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 5671);
        assert_eq!(u.authority(), "[::1]:5671");
        assert_eq!(u.vhost, None);
        let u = BrokerUrl::parse("AMQP://127.0.0.1/").unwrap();
        assert_eq!(u.port, 5672);
        assert_eq!(u.vhost.as_deref(), Some(""));
    }

    #[test]
    fn rejections_name_the_problem() {
        let cases = [
            ("http://h/", "unsupported scheme 'http'"),
            ("rabbit1:5672", "is not a URL"),
            ("amqp://", "missing host"),
            ("amqp://h:0/", "out of range"),
            ("amqp://h:70000/", "out of range"),
            ("amqp://h:abc/", "is not a port number"),
            ("amqp://bad_host/", "not a valid host name"),
            ("amqp://1.2.3.256/", "not a valid IPv4"),
            ("amqp://::1/", "must be written in brackets"),
            ("amqp://[::g]/", "not an IPv6 address"),
            ("amqp://u:p%zz@h/", "bad password"),
            ("amqp://u%zz:p@h/", "bad user name"),
            ("amqp://h/v%4", "bad vhost 'v%4'"),
            ("amqp://h/v%+f", "bad vhost"),
            ("amqp://h/a@b", "an '@' after the first '/'"),
            ("amqp://h/a/b", "contains '/'"),
            ("amqp://h/?heartbeat=5", "query"),
            ("amqp://h/%ff", "UTF-8"),
        ];
        for (text, want) in cases {
            let err = BrokerUrl::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    /// Every rejection of a URL with a password, however malformed, and
    /// every `Debug` or `Display` of an accepted one: no fragment of the
    /// password (here all of them hold "Secret" or "s0rd").
    #[test]
    fn passwords_never_in_errors() {
        let rejected = [
            "amqp://user:topSecret@h:99999/",
            // A bad escape inside the password: not even the escape.
            "amqp://nova:Sup3r%Secret@h/",
            "amqp://nova:Secret%zz@h/",
            "amqp://nova:Secret%ff@h/",
            // A '/' in the password: the authority seems to end inside it.
            "amqp://nova:pa/s0rdSecret@h:5672/nova",
            "amqp://nova:pa/s0rdSecret@h",
            "amqp://nova:1234/s0rdSecret@h",
            // '@' and '/' together.
            "amqp://nova:p@s/s0rd@Secret@h:99999/",
            "amqp://nova:Secret@bad_host/",
            "amqp://nova:Secret@h/?heartbeat=5",
            "amqp://nova:Sec?ret@h/",
            "amqp://nova:Secret@h/a/b",
            "ftp://nova:Secret@h/",
            "nova:Secret@h",
            "amqp:/nova:Secret@h/",
            // No '@' at all: httpd split an unquoted password at its space,
            // or the '@' was written %40; the password sits where the
            // port goes.
            "amqp://nova:topSecret",
            "amqp://nova:Sup3rSecret/",
            "amqp://nova:Sup3rSecret%40h/",
            "amqps://nova:Secret/vhost",
        ];
        for text in rejected {
            let err = BrokerUrl::parse(text).unwrap_err();
            for fragment in ["Secret", "s0rd", "%Se", "%zz"] {
                assert!(!err.contains(fragment), "{text}: {err}");
            }
            assert!(!redact(text).contains("Secret"), "{text}");
        }
        let err = BrokerUrl::parse("amqp://user:topsecret@h:99999/").unwrap_err();
        assert!(err.contains("user:***@"), "{err}");
        assert_eq!(redact("amqp://u:pw@h/x"), "amqp://u:***@h/x");
        assert_eq!(redact("amqp://u:p/w@h/x"), "amqp://u:***@h/x");
        assert_eq!(redact("amqp://u:p@w@h/x"), "amqp://u:***@h/x");
        assert_eq!(redact("u:pw@h"), "u:***@h");
        assert_eq!(redact("no url"), "no url");

        // Accepted URLs: '@' in the password is fine unencoded.
        let u = BrokerUrl::parse("amqp://nova:p@Secret@h/nova").unwrap();
        assert_eq!(u.host, "h");
        for shown in [format!("{u}"), format!("{u:?}"), format!("{:?}", Some(&u))] {
            assert!(!shown.contains("Secret"), "{shown}");
            assert!(shown.contains("nova:***@h:5672/nova"), "{shown}");
        }
    }
}
