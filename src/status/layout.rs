//! The status block of one relay process, `#[repr(C)]` atomics only, so
//! it can live in memory shared by every httpd process (created by the
//! parent, see src/apache/status.rs) and be written without a lock or a
//! syscall: counters are relaxed `fetch_add`s, a connection entry is a few
//! relaxed stores per driver wakeup.
//!
//! All-zero bytes are a valid, empty block (a fresh anonymous mapping).
//! Every field is a lock-free atomic, which is address-free, so two
//! processes mapping the same page see one value.
//!
//! A slot belongs to the process whose pid its [`Owner`] holds (claimed
//! with a CAS);
//! a connection entry to the connection whose id it holds (claimed with a
//! CAS, [`BUSY`] while its text is written). Readers in other processes
//! take a snapshot (src/status/view.rs) and skip entries being written.

use crate::relay::session::Traffic;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::Release};

/// Listeners (servers with their own relay settings) shown per process.
pub const MAX_LISTENERS: usize = 8;
/// Connections listed per process; more are counted, not listed.
pub const MAX_CONNECTIONS: usize = 64;
/// Bytes of a text field (server name, broker host:port).
pub const TEXT: usize = 64;
/// A connection entry's id while its fields are being set.
pub const BUSY: u64 = u64::MAX;

/// Close codes the relay sends, counted each; anything else is "other".
pub const CLOSE_CODES: [u16; 6] = [200, 320, 501, 502, 505, 541];
/// Number of [`crate::relay::session::events::EndKind`] variants.
pub const END_KINDS: usize = 11;
/// Number of [`crate::relay::session::events::Refusal`] variants.
pub const REFUSALS: usize = 4;

/// A short text in atomics: written byte by byte before its owner is
/// published (Release), read after it (Acquire).
#[repr(C)]
pub struct Text([AtomicU8; TEXT]);

impl Text {
    pub fn new() -> Text {
        Text(std::array::from_fn(|_| AtomicU8::new(0)))
    }

    /// Truncated to fit (at a char boundary), NUL-padded.
    pub fn set(&self, text: &str) {
        let mut end = text.len().min(TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let bytes = &text.as_bytes()[..end];
        for (i, cell) in self.0.iter().enumerate() {
            cell.store(bytes.get(i).copied().unwrap_or(0), Relaxed);
        }
    }

    pub fn get(&self) -> String {
        let bytes: Vec<u8> = self
            .0
            .iter()
            .map(|c| c.load(Relaxed))
            .take_while(|b| *b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters since the relay process started.
#[repr(C)]
#[derive(Default)]
pub struct Counters {
    /// Connections relayed (the broker answered).
    pub connections: AtomicU64,
    /// Closed connections by [`EndKind`](crate::relay::session::events::EndKind), in declaration order.
    pub closes: [AtomicU64; END_KINDS],
    /// Connection.Close sent by the relay, by code ([`CLOSE_CODES`], then other).
    pub close_codes: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Refused clients by reason (not this process, owner unknown, too many).
    pub refusals: [AtomicU64; REFUSALS],
    /// Clients closed because no broker answered.
    pub dial_failures: AtomicU64,
    /// Connections relayed to a broker other than the first.
    pub failovers: AtomicU64,
    /// Brokers declared dead (missed heartbeats, rule R7).
    pub broker_dead: AtomicU64,
    /// Relay restarts after a panic.
    pub restarts: AtomicU64,
    /// Clients that sent a wrong or no protocol header.
    pub bad_headers: AtomicU64,
    /// Connections not listed because the table was full.
    pub unlisted: AtomicU64,
}

/// One listener of the process: the server it serves and its port.
#[repr(C)]
#[derive(Default)]
pub struct Listener {
    pub port: AtomicU32,
    pub server: Text,
}

/// One open relayed connection. Written only by the relay thread that
/// owns it; `id` is the publication point.
#[repr(C)]
#[derive(Default)]
pub struct Connection {
    /// 0: free; [`BUSY`]: being claimed; else the connection's id.
    pub id: AtomicU64,
    pub listener: AtomicU32,
    pub client_port: AtomicU32,
    pub upstream_port: AtomicU32,
    /// 0-based index of the broker URL in the listener's list.
    pub broker_index: AtomicU32,
    /// host:port only: never credentials.
    pub broker: Text,
    pub started_unix_ms: AtomicU64,
    pub bytes_to_broker: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub frames_to_broker: AtomicU64,
    pub frames_to_client: AtomicU64,
    pub heartbeats_to_broker: AtomicU64,
    pub heartbeats_from_broker: AtomicU64,
    /// Unix ms of the last bytes from the broker; 0 until the first.
    pub last_broker_unix_ms: AtomicU64,
    /// Negotiated with the broker; 0 until tuned.
    pub heartbeat_secs: AtomicU32,
    pub frame_max: AtomicU32,
    /// 1 while the relay does not read the broker because the client is
    /// not taking what it sent (rule R8).
    pub paused: AtomicU32,
}

/// What a relay process is.
pub const KIND_HTTPD_CHILD: u32 = 1;
pub const KIND_DAEMON: u32 = 2;

/// Bump when a field of [`Owner`] or [`Slot`] changes its meaning or its
/// place but not their sizes (a size change alone changes
/// [`TABLE_LAYOUT`]).
const LAYOUT_REVISION: u64 = 1;

/// The layout a status table kept across a restart must have to be used
/// again: a reload may load another build of the module (a package
/// upgrade), whose slots would overlap the old ones (src/apache/status.rs).
pub const TABLE_LAYOUT: u64 =
    LAYOUT_REVISION << 48 | (size_of::<Owner>() as u64) << 32 | size_of::<Slot>() as u64;

/// Who owns a slot. Owners are kept apart from the slots, in one array:
/// finding a slot to claim, or the live ones to render, touches one page
/// per 256 slots instead of a page of every slot.
#[repr(C)]
#[derive(Default)]
pub struct Owner {
    /// 0: free; else the owner's pid.
    pub pid: AtomicU32,
    pub _reserved: AtomicU32,
    /// The owner's start time in clock ticks since boot
    /// (/proc/PID/stat field 22): a reused pid is told apart by it.
    pub process_start: AtomicU64,
}

/// The shared table: `owners[i]` owns `slots[i]`.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    pub owners: &'a [Owner],
    pub slots: &'a [Slot],
}

impl Table<'_> {
    /// Bytes of a table of `n` slots: the owners, then the slots (16 x n
    /// bytes keeps the slots 8-aligned).
    pub const fn bytes(n: usize) -> usize {
        n * (size_of::<Owner>() + size_of::<Slot>())
    }

    pub fn len(&self) -> usize {
        self.owners.len().min(self.slots.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The block of one relay process.
#[repr(C)]
pub struct Slot {
    /// [`KIND_HTTPD_CHILD`] or [`KIND_DAEMON`].
    pub kind: AtomicU32,
    pub _reserved: AtomicU32,
    pub started_unix_ms: AtomicU64,
    pub listener_count: AtomicU32,
    /// 1 while the relay thread runs.
    pub running: AtomicU32,
    pub listeners: [Listener; MAX_LISTENERS],
    pub counters: Counters,
    pub connections: [Connection; MAX_CONNECTIONS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            kind: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
            started_unix_ms: AtomicU64::new(0),
            listener_count: AtomicU32::new(0),
            running: AtomicU32::new(0),
            listeners: Default::default(),
            counters: Counters::default(),
            connections: std::array::from_fn(|_| Connection::default()),
        }
    }
}

impl Slot {
    /// Forget everything (a freshly claimed slot).
    pub fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.connections,
            &c.dial_failures,
            &c.failovers,
            &c.broker_dead,
            &c.restarts,
            &c.bad_headers,
            &c.unlisted,
        ] {
            a.store(0, Relaxed);
        }
        for a in c.closes.iter().chain(&c.close_codes).chain(&c.refusals) {
            a.store(0, Relaxed);
        }
        for l in &self.listeners {
            l.port.store(0, Relaxed);
            l.server.set("");
        }
        for e in &self.connections {
            e.id.store(0, Relaxed);
        }
        self.listener_count.store(0, Relaxed);
        self.running.store(0, Relaxed);
    }

    /// Record listener `index` (server name and port), at start-up.
    pub fn set_listener(&self, index: usize, server: &str, port: u16) {
        let Some(l) = self.listeners.get(index) else {
            return;
        };
        l.server.set(server);
        l.port.store(port.into(), Relaxed);
        self.listener_count.fetch_max((index + 1) as u32, Release);
    }

    /// A free entry for connection `id`, claimed; None when the table is
    /// full (the connection is then only counted).
    pub fn claim_connection(&self) -> Option<&Connection> {
        let entry = self
            .connections
            .iter()
            .find(|e| e.id.compare_exchange(0, BUSY, Relaxed, Relaxed).is_ok());
        if entry.is_none() {
            self.counters.unlisted.fetch_add(1, Relaxed);
        }
        entry
    }

    /// The entry of connection `id`, if it is listed.
    pub fn connection(&self, id: u64) -> Option<&Connection> {
        self.connections
            .iter()
            .find(|e| id != 0 && e.id.load(Relaxed) == id)
    }
}

impl Connection {
    /// Publish a claimed entry under `id` (after its fields are set).
    pub fn publish(&self, id: u64) {
        self.id.store(id, Release);
    }

    pub fn release(&self) {
        self.id.store(0, Release);
    }

    /// The driver's view of the session, published after each wakeup:
    /// relaxed stores only (no syscall, no lock).
    pub fn update(&self, t: &Traffic) {
        self.bytes_to_broker.store(t.bytes_to_broker, Relaxed);
        self.bytes_to_client.store(t.bytes_to_client, Relaxed);
        self.frames_to_broker.store(t.frames_to_broker, Relaxed);
        self.frames_to_client.store(t.frames_to_client, Relaxed);
        self.heartbeats_to_broker
            .store(t.heartbeats_to_broker, Relaxed);
        self.heartbeats_from_broker
            .store(t.heartbeats_from_broker, Relaxed);
        if let Some(after) = t.last_broker_read {
            let started = self.started_unix_ms.load(Relaxed);
            let at = started.saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
            self.last_broker_unix_ms.store(at, Relaxed);
        }
        self.heartbeat_secs.store(t.heartbeat_secs, Relaxed);
        self.frame_max.store(t.frame_max, Relaxed);
        self.paused.store(u32::from(t.paused), Relaxed);
    }
}
