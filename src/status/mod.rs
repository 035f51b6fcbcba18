//! Status and metrics of every relay of the server, on one page (issue
//! 12). Each relay process owns a [`layout::Slot`] in memory the httpd
//! parent shares with all its processes (src/apache/status.rs); the relay
//! counts its typed events into it ([`counting::CountingLog`]) and the
//! driver publishes each connection's traffic with relaxed stores. Any
//! process serving the page takes snapshots ([`view`]) and renders them
//! ([`render`]): HTML, JSON, Prometheus text, mod_status lines, health.

pub mod counting;
pub mod layout;
pub mod render;
pub mod view;
