//! Reading the shared status blocks: claiming a slot for this process,
//! freeing those of dead processes, and plain snapshots for rendering.
//! Runs in the process that claims (once, at start) or that serves the
//! page, never on the relay's hot path.

use crate::status::layout::{
    BUSY, CLOSE_CODES, Connection, END_KINDS, KIND_DAEMON, MAX_LISTENERS, Owner, REFUSALS, Table,
};
use std::sync::atomic::Ordering::{Acquire, Relaxed};

/// Whether process `pid`, started at `start` (clock ticks since boot,
/// 0: unknown), still runs. A zombie does not.
pub fn process_alive(pid: u32, start: u64) -> bool {
    match process_start(pid) {
        Some((started, zombie)) => !zombie && (start == 0 || started == start),
        None => false,
    }
}

/// Field 22 of /proc/PID/stat (start time) and whether the state is Z or X.
pub fn process_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = *fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// Claim a slot for process `pid`: one it already holds (a reused pid, a
/// second start), else a free one, else one whose owner is dead. The
/// claimed slot is reset. Its index, or None when every slot is held by a
/// live process.
pub fn claim(
    table: Table<'_>,
    pid: u32,
    start: u64,
    kind: u32,
    alive: impl Fn(u32, u64) -> bool,
) -> Option<usize> {
    let owners = &table.owners[..table.len()];
    let cas = |owner: &Owner, from: u32| {
        owner
            .pid
            .compare_exchange(from, pid, Relaxed, Relaxed)
            .is_ok()
    };
    let index = owners
        .iter()
        .position(|o| o.pid.load(Relaxed) == pid)
        .or_else(|| owners.iter().position(|o| cas(o, 0)))
        .or_else(|| {
            owners.iter().position(|o| {
                let owner = o.pid.load(Relaxed);
                owner != 0 && !alive(owner, o.process_start.load(Relaxed)) && cas(o, owner)
            })
        })?;
    owners[index].process_start.store(start, Relaxed);
    let slot = &table.slots[index];
    slot.reset();
    slot.kind.store(kind, Relaxed);
    slot.started_unix_ms
        .store(crate::status::counting::unix_ms_now(), Relaxed);
    Some(index)
}

/// Give slot `index` back (its process `pid` is exiting cleanly).
pub fn release(table: Table<'_>, index: usize, pid: u32) {
    if let (Some(owner), Some(slot)) = (table.owners.get(index), table.slots.get(index)) {
        slot.running.store(0, Relaxed);
        let _ = owner.pid.compare_exchange(pid, 0, Relaxed, Relaxed);
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CountersView {
    pub connections: u64,
    pub closes: [u64; END_KINDS],
    pub close_codes: [u64; CLOSE_CODES.len() + 1],
    pub refusals: [u64; REFUSALS],
    pub dial_failures: u64,
    pub failovers: u64,
    pub broker_dead: u64,
    pub restarts: u64,
    pub bad_headers: u64,
    pub unlisted: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionView {
    pub id: u64,
    pub server: String,
    pub client_port: u16,
    pub upstream_port: u16,
    pub broker_index: u32,
    pub broker: String,
    pub started_unix_ms: u64,
    pub bytes_to_broker: u64,
    pub bytes_to_client: u64,
    pub frames_to_broker: u64,
    pub frames_to_client: u64,
    pub heartbeats_to_broker: u64,
    pub heartbeats_from_broker: u64,
    /// 0: nothing yet.
    pub last_broker_unix_ms: u64,
    pub heartbeat_secs: u32,
    pub frame_max: u32,
    pub paused: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessView {
    pub pid: u32,
    pub daemon: bool,
    pub started_unix_ms: u64,
    pub running: bool,
    /// (server, port) per listener.
    pub listeners: Vec<(String, u16)>,
    pub counters: CountersView,
    pub connections: Vec<ConnectionView>,
}

fn load<const N: usize>(a: &[std::sync::atomic::AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| a[i].load(Relaxed))
}

fn connection_view(e: &Connection, listeners: &[(String, u16)]) -> Option<ConnectionView> {
    let id = e.id.load(Acquire);
    if id == 0 || id == BUSY {
        return None;
    }
    let listener = e.listener.load(Relaxed) as usize;
    let view = ConnectionView {
        id,
        server: listeners
            .get(listener)
            .map(|l| l.0.clone())
            .unwrap_or_default(),
        client_port: e.client_port.load(Relaxed) as u16,
        upstream_port: e.upstream_port.load(Relaxed) as u16,
        broker_index: e.broker_index.load(Relaxed),
        broker: e.broker.get(),
        started_unix_ms: e.started_unix_ms.load(Relaxed),
        bytes_to_broker: e.bytes_to_broker.load(Relaxed),
        bytes_to_client: e.bytes_to_client.load(Relaxed),
        frames_to_broker: e.frames_to_broker.load(Relaxed),
        frames_to_client: e.frames_to_client.load(Relaxed),
        heartbeats_to_broker: e.heartbeats_to_broker.load(Relaxed),
        heartbeats_from_broker: e.heartbeats_from_broker.load(Relaxed),
        last_broker_unix_ms: e.last_broker_unix_ms.load(Relaxed),
        heartbeat_secs: e.heartbeat_secs.load(Relaxed),
        frame_max: e.frame_max.load(Relaxed),
        paused: e.paused.load(Relaxed) != 0,
    };
    // Reused while read: drop it rather than show a mix of two.
    (e.id.load(Acquire) == id).then_some(view)
}

/// Snapshots of the slots of live processes, in slot order; the slots of
/// dead ones are freed on the way.
pub fn snapshot(table: Table<'_>, alive: impl Fn(u32, u64) -> bool) -> Vec<ProcessView> {
    let mut views = Vec::new();
    for (owner, slot) in table.owners.iter().zip(table.slots) {
        let pid = owner.pid.load(Acquire);
        if pid == 0 {
            continue;
        }
        if !alive(pid, owner.process_start.load(Relaxed)) {
            let _ = owner.pid.compare_exchange(pid, 0, Relaxed, Relaxed);
            continue;
        }
        let count = (slot.listener_count.load(Acquire) as usize).min(MAX_LISTENERS);
        let listeners: Vec<(String, u16)> = slot.listeners[..count]
            .iter()
            .map(|l| (l.server.get(), l.port.load(Relaxed) as u16))
            .collect();
        let c = &slot.counters;
        let counters = CountersView {
            connections: c.connections.load(Relaxed),
            closes: load(&c.closes),
            close_codes: load(&c.close_codes),
            refusals: load(&c.refusals),
            dial_failures: c.dial_failures.load(Relaxed),
            failovers: c.failovers.load(Relaxed),
            broker_dead: c.broker_dead.load(Relaxed),
            restarts: c.restarts.load(Relaxed),
            bad_headers: c.bad_headers.load(Relaxed),
            unlisted: c.unlisted.load(Relaxed),
        };
        let connections = slot
            .connections
            .iter()
            .filter_map(|e| connection_view(e, &listeners))
            .collect();
        views.push(ProcessView {
            pid,
            daemon: slot.kind.load(Relaxed) == KIND_DAEMON,
            started_unix_ms: slot.started_unix_ms.load(Relaxed),
            running: slot.running.load(Relaxed) != 0,
            listeners,
            counters,
            connections,
        });
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::layout::{KIND_HTTPD_CHILD, Slot};

    fn table(n: usize) -> Table<'static> {
        let owners: Vec<Owner> = (0..n).map(|_| Owner::default()).collect();
        let slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
        Table {
            owners: owners.leak(),
            slots: slots.leak(),
        }
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let (start, zombie) = process_start(me).unwrap();
        assert!(!zombie);
        assert!(process_alive(me, start));
        assert!(
            !process_alive(me, start + 1),
            "a reused pid is not the owner"
        );
        assert!(!process_alive(u32::MAX - 1, 0));
    }

    #[test]
    fn a_slot_is_claimed_once_per_pid_and_a_dead_owners_slot_is_reused() {
        let t = table(2);
        let a = claim(t, 10, 1, KIND_HTTPD_CHILD, |_, _| true).unwrap();
        assert_eq!(claim(t, 10, 1, KIND_HTTPD_CHILD, |_, _| true), Some(a));
        let b = claim(t, 11, 1, KIND_DAEMON, |_, _| true).unwrap();
        assert_ne!(a, b);
        assert!(claim(t, 12, 1, KIND_HTTPD_CHILD, |_, _| true).is_none());
        t.slots[a].counters.connections.store(5, Relaxed);
        let reused = claim(t, 12, 1, KIND_HTTPD_CHILD, |pid, _| pid != 10).unwrap();
        assert_eq!(reused, a);
        assert_eq!(t.owners[a].pid.load(Relaxed), 12);
        assert_eq!(t.slots[a].counters.connections.load(Relaxed), 0, "reset");
        release(t, a, 12);
        assert_eq!(t.owners[a].pid.load(Relaxed), 0);
    }

    #[test]
    fn snapshot_lists_live_processes_and_frees_dead_ones() {
        let t = table(3);
        let a = &t.slots[claim(t, 20, 0, KIND_HTTPD_CHILD, |_, _| true).unwrap()];
        a.set_listener(0, "www.example.org", 41000);
        let e = a.claim_connection().unwrap();
        e.broker.set("rabbit:5672");
        e.publish(3);
        let dead = claim(t, 21, 0, KIND_DAEMON, |_, _| true).unwrap();
        let views = snapshot(t, |pid, _| pid == 20);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].pid, 20);
        assert_eq!(
            views[0].listeners,
            vec![("www.example.org".to_string(), 41000)]
        );
        assert_eq!(views[0].connections[0].broker, "rabbit:5672");
        assert_eq!(views[0].connections[0].server, "www.example.org");
        assert_eq!(
            t.owners[dead].pid.load(Relaxed),
            0,
            "the dead owner's slot is free"
        );
        // An entry being claimed is not shown.
        a.claim_connection().unwrap();
        assert_eq!(snapshot(t, |_, _| true)[0].connections.len(), 1);
    }
}
