//! Relay-side login: when the `AMQPHeartbeatBroker` URL carries
//! credentials, the relay logs in upstream with them, whatever the client
//! sent, so the app (and every environment the published URL reaches) holds
//! no broker secret.
//!
//! Two frames are looked at, both on channel 0 and both only as far as
//! their fixed layout goes:
//! - the broker's `Connection.Start`, for the SASL mechanisms it offers;
//! - the client's `Connection.StartOk`, whose client-properties table and
//!   locale are kept byte for byte (RabbitMQ reads the client's capabilities
//!   from that table), while the mechanism and the response are replaced.
//!
//! The client's response is dropped unread; neither it nor the configured
//! password ever reaches a log line (`Credentials`' Debug hides them).

use crate::broker_url::{BrokerUrl, percent_decode};
use crate::relay::frame::{self, FRAME_METHOD};
use bytes::Bytes;
use std::fmt;

/// User and password from a broker URL's userinfo, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// The credentials a broker URL names, if it names any. A userinfo
    /// without `:` is a user with an empty password (as in RFC 3986 URLs
    /// that py-amqp and pika accept).
    pub fn of(url: &BrokerUrl) -> Result<Option<Credentials>, String> {
        let Some(userinfo) = &url.userinfo else {
            return Ok(None);
        };
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        // The parser already accepted the escapes; say nothing of the text.
        let decode = |part: &str, what: &str| {
            percent_decode(part)
                .map_err(|_| format!("the {what} of {url} is not valid percent-encoded UTF-8"))
        };
        Ok(Some(Credentials {
            user: decode(user, "user")?,
            password: decode(password, "password")?,
        }))
    }

    #[cfg(test)]
    pub(crate) fn new(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// Why the relay cannot log in for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginError {
    /// The frame does not have StartOk's (or Start's) layout.
    Malformed(&'static str),
    /// The broker offers neither PLAIN nor AMQPLAIN; the text lists what
    /// it offers (mechanism names are not secret).
    NoMechanism(String),
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Malformed(what) => write!(f, "malformed {what}"),
            LoginError::NoMechanism(offered) => write!(
                f,
                "the broker offers no mechanism the relay can log in with (PLAIN, AMQPLAIN); it offers: {offered}"
            ),
        }
    }
}

/// A cursor over a method payload's fields.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], LoginError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(LoginError::Malformed(what))?;
        let field = &self.buf[self.at..end];
        self.at = end;
        Ok(field)
    }

    fn short_string(&mut self, what: &'static str) -> Result<&'a [u8], LoginError> {
        let len = self.take(1, what)?[0] as usize;
        self.take(len, what)
    }

    /// A long string or a field table: a u32 length, then the bytes.
    fn long(&mut self, what: &'static str) -> Result<&'a [u8], LoginError> {
        let len = self.take(4, what)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len, what)
    }
}

/// The SASL mechanisms a `Connection.Start` payload offers (class and
/// method included), as the space-separated names the broker sent.
pub fn offered_mechanisms(start: &[u8]) -> Result<String, LoginError> {
    const WHAT: &str = "Connection.Start";
    let mut fields = Fields { buf: start, at: 0 };
    fields.take(4 + 2, WHAT)?; // class, method, version major/minor
    fields.long(WHAT)?; // server properties
    let mechanisms = fields.long(WHAT)?;
    Ok(String::from_utf8_lossy(mechanisms).into_owned())
}

/// The mechanism the relay uses: PLAIN when offered (every RabbitMQ
/// offers it by default), else AMQPLAIN.
fn choose(offered: &str) -> Result<&'static str, LoginError> {
    let names: Vec<&str> = offered.split_ascii_whitespace().collect();
    ["PLAIN", "AMQPLAIN"]
        .into_iter()
        .find(|m| names.contains(m))
        .ok_or_else(|| LoginError::NoMechanism(offered.to_string()))
}

/// The response for `mechanism`: PLAIN is `\0user\0password`; AMQPLAIN is
/// a field table of LOGIN and PASSWORD without the table's length prefix.
fn response(mechanism: &str, credentials: &Credentials) -> Vec<u8> {
    let (user, password) = (credentials.user.as_bytes(), credentials.password.as_bytes());
    let mut out = Vec::with_capacity(user.len() + password.len() + 32);
    if mechanism == "PLAIN" {
        out.push(0);
        out.extend_from_slice(user);
        out.push(0);
        out.extend_from_slice(password);
    } else {
        for (key, value) in [("LOGIN", user), ("PASSWORD", password)] {
            out.push(key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            out.push(b'S');
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
    }
    out
}

/// A complete `Connection.StartOk` frame that logs in with `credentials`,
/// built from the client's StartOk payload (class and method included):
/// its client properties and locale are kept byte for byte, the mechanism
/// and response are the relay's.
pub fn start_ok_with(
    client_start_ok: &[u8],
    offered: &str,
    credentials: &Credentials,
) -> Result<Bytes, LoginError> {
    const WHAT: &str = "Connection.StartOk";
    let mut fields = Fields {
        buf: client_start_ok,
        at: 0,
    };
    let head = fields.take(4, WHAT)?;
    let properties_start = fields.at;
    fields.long(WHAT)?;
    let properties = &client_start_ok[properties_start..fields.at];
    fields.short_string(WHAT)?; // the client's mechanism: replaced
    fields.long(WHAT)?; // the client's response: dropped unread
    let locale_start = fields.at;
    fields.short_string(WHAT)?;
    let locale = &client_start_ok[locale_start..fields.at];

    let mechanism = choose(offered)?;
    let response = response(mechanism, credentials);
    let mut payload =
        Vec::with_capacity(head.len() + properties.len() + locale.len() + response.len() + 16);
    payload.extend_from_slice(head);
    payload.extend_from_slice(properties);
    payload.push(mechanism.len() as u8);
    payload.extend_from_slice(mechanism.as_bytes());
    payload.extend_from_slice(&(response.len() as u32).to_be_bytes());
    payload.extend_from_slice(&response);
    payload.extend_from_slice(locale);

    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame::encode(FRAME_METHOD, 0, &payload, &mut frame);
    Ok(Bytes::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::frame::{Scan, scan};
    use amq_protocol::protocol::{AMQPClass, connection, parse_class};
    use amq_protocol::types::{AMQPValue, FieldTable, LongString};

    /// A StartOk payload as a client would send it, built with amq-protocol
    /// (an independent codec) so the test does not check the code with
    /// itself.
    fn client_start_ok(mechanism: &str, response: &[u8], locale: &str) -> Vec<u8> {
        let mut properties = FieldTable::default();
        properties.insert("product".into(), AMQPValue::LongString("py-amqp".into()));
        let mut capabilities = FieldTable::default();
        capabilities.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
        capabilities.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let frame = amq_protocol::frame::AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: properties,
                mechanism: mechanism.into(),
                response: LongString::from(response.to_vec()),
                locale: locale.into(),
            })),
        );
        let bytes =
            cookie_factory::gen_simple(amq_protocol::frame::gen_frame(&frame), Vec::new()).unwrap();
        bytes[7..bytes.len() - 1].to_vec()
    }

    fn decode(frame: &[u8]) -> connection::StartOk {
        let info = match scan(frame, 1 << 20) {
            Scan::Frame(info) => info,
            other => panic!("not one frame: {other:?}"),
        };
        assert_eq!(info.len, frame.len(), "trailing bytes");
        assert_eq!((info.kind, info.channel), (FRAME_METHOD, 0));
        match parse_class(info.payload(frame)) {
            Ok((rest, AMQPClass::Connection(connection::AMQPMethod::StartOk(ok)))) => {
                assert!(rest.is_empty(), "bytes after StartOk");
                ok
            }
            other => panic!("not a StartOk: {other:?}"),
        }
    }

    fn start_payload(mechanisms: &str) -> Vec<u8> {
        let mut p = vec![0, 10, 0, 10, 0, 9];
        p.extend_from_slice(&5u32.to_be_bytes()); // a 5-byte property table
        p.extend_from_slice(&[1, b'x', b't', 0, 0]);
        p.extend_from_slice(&(mechanisms.len() as u32).to_be_bytes());
        p.extend_from_slice(mechanisms.as_bytes());
        p.extend_from_slice(&5u32.to_be_bytes());
        p.extend_from_slice(b"en_US");
        p
    }

    #[test]
    fn plain_replaces_the_clients_credentials_and_keeps_its_properties() {
        let client = client_start_ok("AMQPLAIN", b"\x05LOGINS\0\0\0\x05guest", "en_US");
        let creds = Credentials::new("nova", "s3cr/et@x");
        let frame = start_ok_with(&client, "AMQPLAIN PLAIN", &creds).unwrap();
        let ok = decode(&frame);
        assert_eq!(ok.mechanism.as_str(), "PLAIN");
        assert_eq!(ok.response.as_bytes(), b"\0nova\0s3cr/et@x");
        assert_eq!(ok.locale.as_str(), "en_US");
        // The properties table is the client's, byte for byte.
        let table_len = u32::from_be_bytes(client[4..8].try_into().unwrap()) as usize;
        assert_eq!(&frame[7 + 4..7 + 8 + table_len], &client[4..8 + table_len]);
    }

    #[test]
    fn amqplain_when_plain_is_not_offered() {
        let client = client_start_ok("PLAIN", b"\0guest\0guest", "de_DE");
        let frame = start_ok_with(&client, "AMQPLAIN", &Credentials::new("app", "pw")).unwrap();
        let ok = decode(&frame);
        assert_eq!(ok.mechanism.as_str(), "AMQPLAIN");
        assert_eq!(ok.locale.as_str(), "de_DE");
        // Decoded as a field table (with its length put back), as RabbitMQ
        // does.
        let mut table = (ok.response.as_bytes().len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(ok.response.as_bytes());
        let (_, parsed) =
            amq_protocol::types::parsing::parse_field_table(table.as_slice()).unwrap();
        assert_eq!(
            parsed.inner().get("LOGIN"),
            Some(&AMQPValue::LongString("app".into()))
        );
        assert_eq!(
            parsed.inner().get("PASSWORD"),
            Some(&AMQPValue::LongString("pw".into()))
        );
    }

    #[test]
    fn no_usable_mechanism_is_an_error_that_names_what_is_offered() {
        let client = client_start_ok("PLAIN", b"\0guest\0guest", "en_US");
        let err = start_ok_with(&client, "EXTERNAL", &Credentials::new("a", "b")).unwrap_err();
        assert_eq!(err, LoginError::NoMechanism("EXTERNAL".into()));
        assert!(err.to_string().contains("EXTERNAL"));
        // "PLAINX" is not PLAIN.
        assert!(start_ok_with(&client, "PLAINX", &Credentials::new("a", "b")).is_err());
    }

    #[test]
    fn truncated_start_ok_is_malformed_at_every_cut() {
        let client = client_start_ok("PLAIN", b"\0guest\0guest", "en_US");
        let creds = Credentials::new("a", "b");
        for cut in 0..client.len() {
            assert_eq!(
                start_ok_with(&client[..cut], "PLAIN", &creds),
                Err(LoginError::Malformed("Connection.StartOk")),
                "cut at {cut}"
            );
        }
        assert!(start_ok_with(&client, "PLAIN", &creds).is_ok());
    }

    #[test]
    fn mechanisms_from_start() {
        assert_eq!(
            offered_mechanisms(&start_payload("AMQPLAIN PLAIN")).unwrap(),
            "AMQPLAIN PLAIN"
        );
        let full = start_payload("PLAIN");
        for cut in 0..full.len() - 9 {
            assert!(offered_mechanisms(&full[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn credentials_are_decoded_and_never_printed() {
        let url = BrokerUrl::parse("amqp://nova:Sup%2Fer%40Secret@rabbit/nova").unwrap();
        let creds = Credentials::of(&url).unwrap().unwrap();
        assert_eq!(creds, Credentials::new("nova", "Sup/er@Secret"));
        let shown = format!("{creds:?}");
        assert!(!shown.contains("Secret"), "{shown}");
        let url = BrokerUrl::parse("amqp://justuser@rabbit/").unwrap();
        assert_eq!(
            Credentials::of(&url).unwrap(),
            Some(Credentials::new("justuser", ""))
        );
        let url = BrokerUrl::parse("amqp://rabbit/").unwrap();
        assert_eq!(Credentials::of(&url).unwrap(), None);
    }
}
