//! The kernel's log (`/dev/kmsg`) from a point on: whether the OOM killer killed a given
//! process after that point.
//!
//! An OOM kill is counted in the victim's cgroup (`memory.events`, `memory.oom_control`),
//! but a cgroup that systemd manages (a scope) is removed the moment its last process is
//! gone, and systemd, which watches the scope's processes directly, is usually faster than
//! any reader of the counter (seen in the systemd guest: a third of Docker's OOM-killed
//! containers, on runc's shim and on cove's alike, had their scope removed before the
//! counter was read). The kernel also logs every OOM kill with the victim's pid, and that
//! record outlives the cgroup. A [`Cursor`] opened when the container is created reads only
//! what was logged after it, so a pid used earlier by another process cannot match.
//!
//! Only the kernel's own record of a kill counts: its facility is the kernel's (a record
//! written to `/dev/kmsg` from user space never is), its level is `KERN_ERR`, and its whole
//! message begins as the OOM killer's does (`<constraint>: Killed process <pid> (`; before
//! Linux 5.1, `Killed process <pid> (`), so a kernel message that quotes a name a container
//! chose cannot pass for one. Outside the initial pid namespace the pids the kernel logs
//! are not this process's, and no cursor is opened.
//!
//! The kernel logs the kill before the victim can exit (the record is written while the
//! victim's memory is still held), and the shim reads the log as soon as the exit is seen,
//! right after reaping, so no other process has had the time to take the pid over and be
//! killed in its turn. What this does not see: a kill of another process of the container
//! (its init then exits on its own), which only the removed cgroup counted.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// The inode of the initial pid namespace (the kernel's `PROC_PID_INIT_INO`).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;
/// The largest record `/dev/kmsg` returns (the kernel's `CONSOLE_EXT_LOG_MAX`); a smaller
/// buffer gets EINVAL.
const RECORD_MAX: usize = 8192;
/// The OOM killer's constraints, which begin its record of a kill (`oom_kill.c`).
const CONSTRAINTS: [&str; 3] = [
    "Out of memory",
    "Memory cgroup out of memory",
    "Out of memory (oom_kill_allocating_task)",
];
/// The kernel's facility and `KERN_ERR`, as `/dev/kmsg` writes a record's priority.
const KERNEL_ERR: &str = "3";
/// At most this many records are read in one look, so that a kernel logging without pause
/// cannot keep the reader in its loop.
const MAX_RECORDS: usize = 100_000;

/// A read position in the kernel's log.
pub struct Cursor(File);

impl Cursor {
    /// A cursor at the end of the log: it sees what is logged from now on. None where the
    /// log cannot be read or its pids are not this process's.
    pub fn at_end() -> Option<Cursor> {
        let ns = std::fs::metadata("/proc/self/ns/pid").ok()?;
        if ns.ino() != INIT_PID_NS_INO {
            return None;
        }
        let mut log = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        log.seek(SeekFrom::End(0)).ok()?;
        Some(Cursor(log))
    }

    /// Whether the kernel logged an OOM kill of `pid` (a pid of this namespace, the
    /// initial one) between the cursor's position and now. Moves the cursor to the end.
    pub fn oom_killed(&mut self, pid: i32) -> bool {
        let mut buf = vec![0u8; RECORD_MAX];
        let mut found = false;
        for _ in 0..MAX_RECORDS {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => found |= records_oom_kill(&buf[..n], pid),
                // Records were overwritten before they were read: the cursor has moved to
                // the oldest one kept, and reading goes on from there.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => continue,
                // WouldBlock: nothing more is logged.
                Err(_) => break,
            }
        }
        found
    }
}

/// Whether `record` (`<priority>,<seq>,<usec>,<flags>;<message>\n[ KEY=value\n...]`) is
/// the kernel's record of an OOM kill of `pid`.
fn records_oom_kill(record: &[u8], pid: i32) -> bool {
    let Ok(text) = std::str::from_utf8(record) else {
        return false;
    };
    let Some((header, rest)) = text.split_once(';') else {
        return false;
    };
    if header.split(',').next() != Some(KERNEL_ERR) {
        return false;
    }
    // Only the first line is the message; what follows is its dictionary.
    let message = rest.split('\n').next().unwrap_or_default();
    let victim = format!("Killed process {pid} (");
    // Kernels before 5.1 logged the kill with no constraint in front.
    message.starts_with(&victim)
        || CONSTRAINTS.iter().any(|c| {
            message
                .strip_prefix(c)
                .and_then(|m| m.strip_prefix(": "))
                .is_some_and(|m| m.starts_with(&victim))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: &str = "Memory cgroup out of memory: Killed process 19858 (tail) \
        total-vm:18072kB, anon-rss:15872kB, file-rss:1296kB, shmem-rss:0kB, UID:0 \
        pgtables:72kB oom_score_adj:0";

    fn rec(priority: u32, message: &str) -> Vec<u8> {
        format!("{priority},168481,53903326858,-;{message}\n SUBSYSTEM=x\n").into_bytes()
    }

    #[test]
    fn the_kernels_kill_record_names_the_pid_and_no_other() {
        assert!(records_oom_kill(&rec(3, KILL), 19858));
        let old_kernel = "Killed process 7 (java) total-vm:1kB, anon-rss:1kB";
        assert!(records_oom_kill(&rec(3, old_kernel), 7));
        for constraint in CONSTRAINTS {
            let m = format!("{constraint}: Killed process 7 (java) total-vm:1kB");
            assert!(records_oom_kill(&rec(3, &m), 7), "{m}");
        }
        for pid in [1985, 19859, 198580, 9858] {
            assert!(!records_oom_kill(&rec(3, KILL), pid), "{pid}");
        }
    }

    #[test]
    fn nothing_else_passes_for_a_kill() {
        // Written to /dev/kmsg as "<3>...": the kernel gives it the user facility (8 | 3).
        assert!(!records_oom_kill(&rec(11, KILL), 19858));
        // Another level.
        assert!(!records_oom_kill(&rec(4, KILL), 19858));
        // A kernel message quoting a name a process chose (a file, a command).
        let quoted = format!("process '{KILL}' launched '/x' with NULL argv");
        assert!(!records_oom_kill(&rec(3, &quoted), 19858));
        // Only the message's first line is the message; what follows is its dictionary.
        let dict = format!("3,1,2,-;usb 1-1: new device\n {KILL}\n");
        assert!(!records_oom_kill(dict.as_bytes(), 19858));
        for junk in [
            &b"no header"[..],
            b"x,1,2,-;Out of memory: Killed process 19858 (tail)",
            b"\xff;\xfe",
        ] {
            assert!(!records_oom_kill(junk, 19858));
        }
    }
}
