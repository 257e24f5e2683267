//! OOM kills in a container's cgroup, reported as `/tasks/oom`.
//!
//! cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`;
//! cgroup v2: inotify on `memory.events`. Either wakes the watcher, which publishes when
//! the `oom_kill` counter has grown. The exit path runs the same check before it publishes
//! the exit, so an OOM kill is always reported before the exit it caused.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cgroups::Layout;
use crate::task::events::Events;

pub struct Oom {
    id: String,
    dir: PathBuf,
    v2: bool,
    seen: AtomicU64,
    events: Events,
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
    /// Watches the memory cgroup `rel` of container `id`; None without a memory controller.
    pub fn watch(layout: &Layout, rel: &Path, id: &str, events: Events) -> Option<Arc<Oom>> {
        let v2 = matches!(layout, Layout::V2(_));
        let dir = layout.controller_dir("memory", rel)?;
        let oom = Arc::new(Oom {
            id: id.to_owned(),
            seen: AtomicU64::new(oom_kills(&dir, v2).unwrap_or(0)),
            dir,
            v2,
            events,
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

    /// Publishes `/tasks/oom` if the kill counter grew since the last look.
    pub fn check(&self) {
        let Some(now) = oom_kills(&self.dir, self.v2) else {
            return;
        };
        if now > self.seen.swap(now, Ordering::SeqCst) {
            log::info!("container {} was OOM-killed", self.id);
            self.events.oom(&self.id);
        }
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
        tokio::spawn(async move {
            let _control = control;
            loop {
                let Ok(mut guard) = efd.readable().await else {
                    return;
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
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable().await else {
                    return;
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
}
