//! CPU time of one thread or one whole process, from the scheduler's own
//! accounting (`/proc/.../schedstat`: nanoseconds on the CPU), which is
//! exact where `stat`'s utime/stime tick at 10 ms.

use super::Res;

/// Nanoseconds on the CPU of task `tid` of process `pid`.
fn task_ns(pid: u32, tid: &str) -> Res<u64> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| format!("{path}: unexpected content {text:?}"))
}

fn tasks(pid: u32) -> Res<Vec<String>> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// CPU nanoseconds of every thread of `pid` (threads that exited are not
/// counted, so measure processes whose threads live for the whole run).
pub fn process_ns(pid: u32) -> Res<u64> {
    tasks(pid)?.iter().map(|tid| task_ns(pid, tid)).sum()
}

/// CPU nanoseconds of this process's threads named `name` (the relay
/// thread is "amqp-heartbeat").
pub fn own_threads_ns(name: &str) -> Res<u64> {
    let pid = std::process::id();
    let mut total = 0;
    let mut found = false;
    for tid in tasks(pid)? {
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if comm.trim_end() == name {
            total += task_ns(pid, &tid)?;
            found = true;
        }
    }
    if found {
        Ok(total)
    } else {
        Err(format!("no thread named {name} in this process"))
    }
}
