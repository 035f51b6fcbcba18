//! Relay-side login (issue 11, item 1): with credentials in the
//! `AMQPHeartbeatBroker` URL the relay logs in upstream with them, whatever
//! the client sends; without, the client's credentials pass through and the
//! broker judges them. Neither password ever reaches a relay event.

use crate::Env;
use crate::support::amqp::{Client, Tuning};
use crate::support::rabbit::Node;
use crate::support::relay::{Relay, Settings};

const USER: &str = "relay-login";
/// '/' and '@' are where a naive redaction or URL split goes wrong.
const PASSWORD: &str = "TopS3cret/@x";
const PASSWORD_IN_URL: &str = "TopS3cret%2F%40x";
const WRONG: &str = "Wr0ngPassw0rd";

/// A broker user with a password and every permission on "/" (once per
/// node; a concurrent trial may have added it first).
fn ensure_user(node: &Node) -> Result<(), String> {
    match node.ctl(&["add_user", USER, PASSWORD]) {
        Ok(_) => {}
        Err(e) if e.contains("already exists") || e.contains("user_already_exists") => {}
        Err(e) => return Err(e),
    }
    node.ctl(&["set_permissions", "-p", "/", USER, ".*", ".*", ".*"])
        .map(|_| ())
}

/// The user the broker shows for the connection whose peer port is `port`.
fn broker_user(node: &Node, port: u16) -> Result<String, String> {
    let out = node.ctl(&["-q", "list_connections", "peer_port", "user"])?;
    out.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(p, _)| p.trim().parse::<u16>().ok() == Some(port))
        .map(|(_, user)| user.trim().to_string())
        .ok_or_else(|| format!("the broker lists no connection from port {port}:\n{out}"))
}

fn login(user: &'static str, password: &'static str) -> Tuning {
    Tuning {
        login: (user, password),
        ..Tuning::default()
    }
}

fn assert_no_secret(relay: &Relay) -> Result<(), String> {
    let text = relay.log.text();
    for secret in [PASSWORD, PASSWORD_IN_URL, WRONG, "TopS3cret"] {
        ensure!(
            !text.contains(secret),
            "a relay event shows a password:\n{text}"
        );
    }
    Ok(())
}

/// Credentials in the directive: a client sending a wrong password (or the
/// guest default an app gets from a URL without userinfo) is logged in as
/// the configured user, and its messages go through.
pub fn configured_credentials_replace_the_clients(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    ensure_user(node)?;
    let url = format!(
        "amqp://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{}/",
        node.amqp_port
    );
    let relay = Relay::start("login-configured", Settings::new(&[&url]).build())?;
    relay.explain((|| {
        for tuning in [login("guest", WRONG), login("guest", "guest")] {
            let mut c = Client::open(relay.addr, tuning)?;
            let upstream = relay.upstream_port(c.local_port())?;
            let user = broker_user(node, upstream)?;
            ensure!(user == USER, "the broker sees user '{user}', not '{USER}'");
            let q = c.declare_private_queue(1)?;
            c.publish(1, &q, b"published without a secret")?;
            let m = c.get(1, &q)?.ok_or("the message did not arrive")?;
            ensure!(m.body == b"published without a secret", "wrong body");
            c.close()?;
        }
        assert_no_secret(&relay)
    })())
}

/// No credentials in the directive: the broker judges the client's own,
/// so a wrong password is refused and the right one works.
pub fn client_credentials_pass_through_without_configured_ones(env: &Env) -> Result<(), String> {
    let node = env.node()?;
    ensure_user(node)?;
    let url = format!("amqp://127.0.0.1:{}/", node.amqp_port);
    let relay = Relay::start("login-passthrough", Settings::new(&[&url]).build())?;
    relay.explain((|| {
        ensure!(
            Client::open(relay.addr, login(USER, WRONG)).is_err(),
            "a wrong client password was accepted through a relay without credentials"
        );
        let c = Client::open(relay.addr, login(USER, PASSWORD))?;
        let upstream = relay.upstream_port(c.local_port())?;
        let user = broker_user(node, upstream)?;
        ensure!(user == USER, "the broker sees user '{user}', not '{USER}'");
        c.close()?;
        assert_no_secret(&relay)
    })())
}
