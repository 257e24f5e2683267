//! The one SIGCHLD reaper of the shim server.
//!
//! cove is a child subreaper: pause processes (and, later, container processes) are its
//! children. A single task collects every exit with `waitpid(-1)` and hands it to whoever
//! watches that pid. An exit that arrives before anyone watches is kept, so a caller that
//! learns a pid only after the process may already have died still sees its exit exactly once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal number for a process killed by a signal
    /// (the shell convention containerd reports).
    pub status: u32,
    pub at: SystemTime,
}

/// Exits of pids nobody watched yet; bounded so stray children cannot grow it forever.
const MAX_UNCLAIMED: usize = 1024;

#[derive(Default)]
struct Table {
    watched: HashMap<i32, watch::Sender<Option<Exit>>>,
    /// Exits nobody watched yet, with when they were reaped.
    unclaimed: HashMap<i32, (Exit, Instant)>,
    order: VecDeque<i32>,
}

/// Hands out exit notifications; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Starts the reaping task on the current tokio runtime. Call it before any child
    /// whose exit matters is spawned.
    pub fn start() -> std::io::Result<Reaper> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper::default();
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Returns a receiver that holds `Some(exit)` once `pid` has exited.
    ///
    /// `born` is a moment before the process was created (before the fork, or before the
    /// runc call that made it). A kept exit of the same pid reaped before then was another
    /// process's, whose pid the kernel has since handed out again: it is dropped, never
    /// passed off as this process's exit.
    pub fn watch(&self, pid: i32, born: Instant) -> watch::Receiver<Option<Exit>> {
        let mut t = self.lock();
        if let Some((exit, reaped)) = t.unclaimed.remove(&pid) {
            t.order.retain(|p| *p != pid);
            if reaped >= born {
                let (_tx, rx) = watch::channel(Some(exit));
                return rx;
            }
            log::debug!("dropped a stale exit of pid {pid} (reaped before it was born)");
        }
        t.watched
            .entry(pid)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Collects every exited child without blocking.
    pub fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.record(pid.as_raw(), code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.record(pid.as_raw(), 128 + sig as u32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    /// Delivers an exit to its watchers, or keeps it for a later `watch`.
    pub fn record(&self, pid: i32, status: u32) {
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        let mut t = self.lock();
        if let Some(tx) = t.watched.remove(&pid) {
            tx.send_replace(Some(exit));
            return;
        }
        if t.order.len() >= MAX_UNCLAIMED {
            if let Some(old) = t.order.pop_front() {
                t.unclaimed.remove(&old);
            }
        }
        t.unclaimed.insert(pid, (exit, Instant::now()));
        t.order.push_back(pid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::lock::lock(&self.table)
    }
}

/// Waits until the receiver holds an exit.
pub async fn wait_exit(rx: &mut watch::Receiver<Option<Exit>>) -> Option<Exit> {
    match rx.wait_for(|e| e.is_some()).await {
        Ok(v) => *v,
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_before_watch_is_kept() {
        let r = Reaper::default();
        let born = Instant::now();
        r.record(42, 3);
        let mut rx = r.watch(42, born);
        assert_eq!(wait_exit(&mut rx).await.map(|e| e.status), Some(3));
    }

    #[tokio::test]
    async fn an_exit_of_a_recycled_pid_is_not_handed_to_the_new_process() {
        let r = Reaper::default();
        // An old process with pid 42 exits and nobody claims its exit...
        r.record(42, 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // ...then a new process gets pid 42.
        let born = Instant::now();
        let mut rx = r.watch(42, born);
        assert!(rx.borrow().is_none(), "the new process has not exited");
        r.record(42, 0);
        assert_eq!(wait_exit(&mut rx).await.map(|e| e.status), Some(0));
    }

    #[tokio::test]
    async fn every_watcher_sees_the_exit_once_it_happens() {
        let r = Reaper::default();
        let mut a = r.watch(7, Instant::now());
        let mut b = r.watch(7, Instant::now());
        assert!(a.borrow().is_none());
        r.record(7, 137);
        assert_eq!(wait_exit(&mut a).await.map(|e| e.status), Some(137));
        assert_eq!(wait_exit(&mut b).await.map(|e| e.status), Some(137));
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let r = Reaper::default();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.record(pid, 0);
        }
        let t = r.lock();
        assert_eq!(t.unclaimed.len(), MAX_UNCLAIMED);
        assert!(!t.unclaimed.contains_key(&0));
    }
}
