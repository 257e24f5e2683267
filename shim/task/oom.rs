//! OOM kills in a container's cgroup, reported as `/tasks/oom`.
//!
//! cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`;
//! cgroup v2: inotify on `memory.events`. Either wakes the watcher, which publishes when
//! the `oom_kill` counter has grown. The exit path runs the same check before it publishes
//! the exit, so an OOM kill is always reported before the exit it caused.
//!
//! Under the systemd driver a container's cgroup is a scope that systemd removes as soon as
//! its last process is gone, possibly before the shim has read the counter. The parent's
//! `memory.events` counts the kills of every cgroup below it (cgroup v2 counters are
//! hierarchical), so a [`Ledger`] per parent keeps how many of its kills the containers of
//! this shim have claimed; a container killed by SIGKILL whose own counter is gone claims
//! one the parent counted and nobody has claimed. That holds only where every cgroup below
//! the parent is this shim's: the pod cgroup of a sandbox it serves. A plain task's parent
//! (Docker's `system.slice`, say) holds other shims' containers and the host's services,
//! whose OOM kills are not this container's: there the container's own counter is all
//! that is read (seen in the systemd guest: Docker's `rm -f` of cove containers reported an
//! OOM kill that runc's container in the same slice had taken). For such a container in a
//! scope, the kernel's log is read instead ([`crate::kmsg`]): it names the pid of every OOM
//! victim, and a cursor opened at the container's creation sees only what came after.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::cgroups::Layout;
use crate::task::events::Events;

pub struct Oom {
    id: String,
    dir: PathBuf,
    v2: bool,
    seen: AtomicU64,
    events: Events,
    parent: Option<(PathBuf, Arc<Ledger>)>,
    /// The init's pid, and the kernel's log from the container's creation on: read at the
    /// init's exit when the cgroup is a scope with no ledger and is gone by then.
    init: i32,
    kmsg: Mutex<Option<crate::kmsg::Cursor>>,
    /// Whether `/tasks/oom` was published for this container.
    reported: std::sync::atomic::AtomicBool,
    /// Ends the watcher (and closes its descriptors) when the container is deleted: on
    /// cgroup v2 the kernel need not tell an inotify watch that the cgroup is gone.
    stop: tokio::sync::watch::Sender<bool>,
}

/// The OOM kills counted in one parent cgroup since this shim began to watch below it, and
/// how many of them its containers have claimed.
pub struct Ledger {
    base: u64,
    claimed: AtomicU64,
}

/// The ledgers of the parents this shim watches below, shared by every container.
#[derive(Default)]
pub struct Ledgers(Mutex<HashMap<PathBuf, Weak<Ledger>>>);

impl Ledgers {
    fn get(&self, parent: &Path) -> Option<Arc<Ledger>> {
        let mut all = crate::lock::lock(&self.0);
        all.retain(|_, l| l.strong_count() > 0);
        if let Some(l) = all.get(parent).and_then(Weak::upgrade) {
            return Some(l);
        }
        let l = Arc::new(Ledger {
            base: oom_kills(parent, true)?,
            claimed: AtomicU64::new(0),
        });
        all.insert(parent.to_owned(), Arc::downgrade(&l));
        Some(l)
    }
}

fn oom_kills(dir: &Path, v2: bool) -> Option<u64> {
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok())?
    })
}

impl Oom {
    /// Watches the memory cgroup `rel` of container `id`, whose init is `init`; None
    /// without a memory controller. `pod_ledgers` is given when the container's parent is
    /// the pod cgroup of a sandbox this shim serves (its kills are then the shim's
    /// containers').
    pub fn watch(
        layout: &Layout,
        rel: &Path,
        id: &str,
        init: i32,
        events: Events,
        pod_ledgers: Option<&Ledgers>,
    ) -> Option<Arc<Oom>> {
        let v2 = matches!(layout, Layout::V2(_));
        let dir = layout.controller_dir("memory", rel)?;
        let parent = match (dir.parent(), pod_ledgers) {
            (Some(p), Some(ledgers)) if v2 => ledgers.get(p).map(|l| (p.to_owned(), l)),
            _ => None,
        };
        // A scope is systemd's, which removes it as soon as it is empty.
        let scope = rel.extension().is_some_and(|e| e == "scope");
        let kmsg = if scope && parent.is_none() {
            let cursor = crate::kmsg::Cursor::at_end();
            if cursor.is_none() {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    log::warn!(
                        "the kernel's log (/dev/kmsg) cannot be read here: an OOM kill of a container whose scope systemd removes before the shim reads its counter goes unreported"
                    )
                });
            }
            cursor
        } else {
            None
        };
        let oom = Arc::new(Oom {
            id: id.to_owned(),
            seen: AtomicU64::new(oom_kills(&dir, v2).unwrap_or(0)),
            dir,
            v2,
            events,
            parent,
            init,
            kmsg: Mutex::new(kmsg),
            reported: Default::default(),
            stop: tokio::sync::watch::channel(false).0,
        });
        let o = oom.clone();
        let started = if v2 {
            o.clone().spawn_v2()
        } else {
            o.clone().spawn_v1()
        };
        if let Err(e) = started {
            log::warn!("OOM notifications for {id}: {e}; OOM kills are still reported at exit");
        }
        Some(oom)
    }

    /// Ends the watcher: the container is deleted.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Publishes `/tasks/oom` if the kill counter grew since the last look. Returns false
    /// when the container's counter cannot be read (its cgroup is gone).
    pub fn check(&self) -> bool {
        let Some(now) = oom_kills(&self.dir, self.v2) else {
            return false;
        };
        let before = self.seen.swap(now, Ordering::SeqCst);
        if now > before {
            if let Some((_, ledger)) = &self.parent {
                ledger.claimed.fetch_add(now - before, Ordering::SeqCst);
            }
            log::info!("container {} was OOM-killed", self.id);
            self.reported.store(true, Ordering::SeqCst);
            self.events.oom(&self.id);
        }
        true
    }

    /// The check on the init's exit. When the container's cgroup is already gone (systemd
    /// removed its scope) and the init died of SIGKILL, an OOM kill its parent counted and
    /// no container of this shim claimed is this one's; without such a parent, the
    /// kernel's log says whether the init was an OOM victim. Returns whether the container
    /// was ever reported OOM-killed.
    pub async fn check_exit(&self, sigkilled: bool) -> bool {
        // The log is read at most once, and its descriptor closed after.
        let kmsg = crate::lock::lock(&self.kmsg).take();
        if self.check() || !sigkilled {
            return self.reported.load(Ordering::SeqCst);
        }
        let Some((parent, ledger)) = &self.parent else {
            let Some(mut kmsg) = kmsg else {
                return self.reported.load(Ordering::SeqCst);
            };
            // Off the event loop: a container that lived long on a busy host has a long
            // log to read.
            let pid = self.init;
            let killed = tokio::task::spawn_blocking(move || kmsg.oom_killed(pid))
                .await
                .unwrap_or(false);
            if killed && !self.reported.swap(true, Ordering::SeqCst) {
                log::info!(
                    "container {} was OOM-killed (in the kernel's log; its own cgroup is gone)",
                    self.id
                );
                self.events.oom(&self.id);
            }
            return self.reported.load(Ordering::SeqCst);
        };
        let Some(total) = oom_kills(parent, true) else {
            return self.reported.load(Ordering::SeqCst);
        };
        let counted = total.saturating_sub(ledger.base);
        let claimed = ledger.claimed.load(Ordering::SeqCst);
        if counted > claimed
            && ledger
                .claimed
                .compare_exchange(claimed, claimed + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            log::info!(
                "container {} was OOM-killed (counted in {}; its own cgroup is gone)",
                self.id,
                parent.display()
            );
            self.reported.store(true, Ordering::SeqCst);
            self.events.oom(&self.id);
        }
        self.reported.load(Ordering::SeqCst)
    }

    fn spawn_v1(self: Arc<Self>) -> std::io::Result<()> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let control = std::fs::File::open(self.dir.join("memory.oom_control"))?;
        std::fs::write(
            self.dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd()),
        )?;
        let efd = crate::sys::async_fd(efd.as_fd().try_clone_to_owned()?)?;
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let _control = control;
            loop {
                let mut guard = tokio::select! {
                    r = efd.readable() => match r {
                        Ok(g) => g,
                        Err(_) => return,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                };
                let mut buf = [0u8; 8];
                match nix::unistd::read(efd.as_raw_fd(), &mut buf) {
                    Ok(_) => {}
                    Err(nix::Error::EAGAIN) => {
                        guard.clear_ready();
                        continue;
                    }
                    Err(_) => return,
                }
                // The kernel also signals when the cgroup is removed.
                if !self.dir.exists() {
                    return;
                }
                self.check();
            }
        });
        Ok(())
    }

    fn spawn_v2(self: Arc<Self>) -> std::io::Result<()> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        ino.add_watch(&self.dir.join("memory.events"), AddWatchFlags::IN_MODIFY)?;
        let fd = crate::sys::async_fd(ino.as_fd().try_clone_to_owned()?)?;
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let mut guard = tokio::select! {
                    r = fd.readable() => match r {
                        Ok(g) => g,
                        Err(_) => return,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                };
                match ino.read_events() {
                    Ok(evs) => {
                        if evs
                            .iter()
                            .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                        {
                            return;
                        }
                    }
                    Err(nix::Error::EAGAIN) => {
                        guard.clear_ready();
                        continue;
                    }
                    Err(_) => return,
                }
                self.check();
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_counters_are_read_from_both_formats() {
        let d = std::env::temp_dir().join(format!("cove-oom-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        std::fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(oom_kills(&d, false), Some(3));
        assert_eq!(oom_kills(&d, true), Some(1));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A pid no process has (above any pid_max): the kernel's log never names it.
    const NO_PID: i32 = i32::MAX;

    fn counters(dir: &Path, kills: u64) {
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 9\noom 1\noom_kill {kills}\n"),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_kill_counted_by_the_parent_is_claimed_once_when_the_scope_is_gone() {
        let root = std::env::temp_dir().join(format!("cove-oom-ledger-{}", std::process::id()));
        let (a, b) = (root.join("a.scope"), root.join("b.scope"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
            counters(d, 0);
        }
        counters(&root, 5);
        let layout = Layout::V2(PathBuf::from("/"));
        let ledgers = Ledgers::default();
        let events = Events::detached("test");
        let oa = Oom::watch(&layout, &a, "a", NO_PID, events.clone(), Some(&ledgers)).unwrap();
        let ob = Oom::watch(&layout, &b, "b", NO_PID, events.clone(), Some(&ledgers)).unwrap();
        // a is OOM-killed and the watcher sees it: the parent's kill is a's.
        counters(&a, 1);
        counters(&root, 6);
        assert!(oa.check());
        // b is SIGKILLed (not by the OOM killer) and its scope is gone: nothing to claim.
        std::fs::remove_dir_all(&b).unwrap();
        ob.check_exit(true).await;
        // a's scope goes too, and its exit finds the kill claimed already.
        std::fs::remove_dir_all(&a).unwrap();
        oa.check_exit(true).await;
        assert_eq!(events.sent_oom(), vec!["a".to_string()]);
        // A new container c is OOM-killed and its scope is gone before any look: claimed once.
        let c = root.join("c.scope");
        std::fs::create_dir_all(&c).unwrap();
        counters(&c, 0);
        let oc = Oom::watch(&layout, &c, "c", NO_PID, events.clone(), Some(&ledgers)).unwrap();
        counters(&root, 7);
        std::fs::remove_dir_all(&c).unwrap();
        oc.check_exit(false).await;
        assert_eq!(
            events.sent_oom().len(),
            1,
            "an exit not by SIGKILL is no OOM kill"
        );
        oc.check_exit(true).await;
        oc.check_exit(true).await;
        assert_eq!(events.sent_oom(), vec!["a".to_string(), "c".to_string()]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_plain_tasks_parent_is_not_its_ledger() {
        let root = std::env::temp_dir().join(format!("cove-oom-plain-{}", std::process::id()));
        let d = root.join("docker-d.scope");
        std::fs::create_dir_all(&d).unwrap();
        counters(&d, 0);
        counters(&root, 2);
        let layout = Layout::V2(PathBuf::from("/"));
        let events = Events::detached("test");
        let od = Oom::watch(&layout, &d, "d", NO_PID, events.clone(), None).unwrap();
        // Someone else in the same parent is OOM-killed; d is SIGKILLed and its scope goes.
        counters(&root, 3);
        std::fs::remove_dir_all(&d).unwrap();
        assert!(!od.check_exit(true).await);
        assert!(
            events.sent_oom().is_empty(),
            "another cgroup's OOM kill is not d's"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
