//! What a sandbox leaves on the host, persisted in its bundle (`cove-sandbox.json`, a
//! [`crate::record`]) so the shim's `delete` can remove all of it after a crash, and the
//! one cleanup routine that both ShutdownSandbox and `delete` run.
//!
//! The record is rewritten atomically (temp file, rename) whenever it changes.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{self, Record};

pub const STATE_FILE: &str = "cove-sandbox.json";

/// Everything a sandbox created on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// The pause process: pid and its start time (field 22 of /proc/PID/stat), so a
    /// recycled pid is never killed by mistake.
    pub pause: Option<(i32, u64)>,
    /// The pause process's own cgroup directories (cgroupfs driver): they hold nothing
    /// else, so whatever is in them is killed, even a pause whose pid was never recorded.
    pub pause_cgroups: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    pub shm: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    /// systemd units to stop, in order: the pause scope, then the slices it made appear.
    pub units: Vec<String>,
}

/// [`Leftovers`] as stored. Version 1 is version 0 (the hand-written layout, whose
/// field names it keeps) with a version; `pause_cgroups` and `units` came later in
/// version 0, so they default to empty.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SandboxRecord {
    pause_pid: Option<i32>,
    pause_start: Option<u64>,
    #[serde(default)]
    pause_cgroups: Vec<PathBuf>,
    #[serde(default)]
    cgroups: Vec<PathBuf>,
    #[serde(default)]
    shm: Option<PathBuf>,
    #[serde(default)]
    files: Vec<PathBuf>,
    #[serde(default)]
    dirs: Vec<PathBuf>,
    #[serde(default)]
    units: Vec<String>,
}

impl Record for SandboxRecord {
    const KIND: &'static str = "sandbox record";
    const VERSION: u32 = 1;
}

impl From<&Leftovers> for SandboxRecord {
    fn from(l: &Leftovers) -> Self {
        SandboxRecord {
            pause_pid: l.pause.map(|p| p.0),
            pause_start: l.pause.map(|p| p.1),
            pause_cgroups: l.pause_cgroups.clone(),
            cgroups: l.cgroups.clone(),
            shm: l.shm.clone(),
            files: l.files.clone(),
            dirs: l.dirs.clone(),
            units: l.units.clone(),
        }
    }
}

impl From<SandboxRecord> for Leftovers {
    fn from(r: SandboxRecord) -> Self {
        Leftovers {
            pause: r.pause_pid.zip(r.pause_start),
            pause_cgroups: r.pause_cgroups,
            cgroups: r.cgroups,
            shm: r.shm,
            files: r.files,
            dirs: r.dirs,
            units: r.units,
        }
    }
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        *self == Leftovers::default()
    }

    /// Persists the record in `bundle`, atomically.
    pub fn save(&self, bundle: &Path) -> Result<()> {
        record::save(&SandboxRecord::from(self), &bundle.join(STATE_FILE))
    }

    /// Reads the record from `bundle`; `None` when there is none, [`Error::Corrupt`] when
    /// it cannot be read as one.
    pub fn load(bundle: &Path) -> Result<Option<Leftovers>> {
        Ok(record::load::<SandboxRecord>(&bundle.join(STATE_FILE))?.map(Leftovers::from))
    }

    pub fn forget(bundle: &Path) -> Result<()> {
        record::forget(&bundle.join(STATE_FILE))
    }

    /// Kills the pause process: by pid if it is still the one recorded, and whatever is in
    /// its own cgroups (a pause the shim died before recording). Returns whether the
    /// recorded pid was alive.
    pub fn kill_pause(&self) -> bool {
        let recorded = self
            .pause
            .filter(|(pid, start)| proc_start_time(*pid) == Some(*start));
        for d in &self.pause_cgroups {
            crate::cgroups::kill_procs_in(d);
        }
        match recorded {
            // Already dying if its cgroup was emptied; a SIGKILL to it still stands.
            Some((pid, _)) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                true
            }
            None => false,
        }
    }

    /// Removes everything recorded: shm mount, files, directories, cgroups. Best effort:
    /// every item is tried, the first failure is returned. Blocks while a cgroup's last
    /// task exits: for `delete`; the server uses [`Leftovers::clean_async`].
    pub fn clean(&self) -> Result<()> {
        let files = self.clean_files();
        let cgroups = crate::cgroups::remove_dirs(&self.cgroups);
        files.and(cgroups)
    }

    /// [`Leftovers::clean`] without blocking the server's runtime thread.
    pub async fn clean_async(&self) -> Result<()> {
        let files = self.clean_files();
        let cgroups = crate::cgroups::remove_dirs_async(&self.cgroups).await;
        files.and(cgroups)
    }

    fn clean_files(&self) -> Result<()> {
        let mut first: Option<Error> = None;
        let mut note = |e: Error| {
            log::warn!("cleanup: {e}");
            first.get_or_insert(e);
        };
        if let Some(shm) = &self.shm {
            if let Err(e) = unmount_shm(shm) {
                note(e);
            }
        }
        for f in &self.files {
            if let Err(e) = std::fs::remove_file(f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    note(Error::io(format!("remove {}", f.display()), e));
                }
            }
        }
        let mut dirs: Vec<&PathBuf> = self.dirs.iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            // A parent cove created (e.g. CRI's sandboxes directory on a fresh host) may
            // hold other pods' files by now: it stays, and that is not a failure.
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    log::debug!("{} is in use by others; kept", d.display());
                }
                Err(e) => note(Error::io(format!("remove {}", d.display()), e)),
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The start time of `pid` in clock ticks since boot, or `None` if it is gone or a zombie.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_time_of(&stat)
}

/// [`proc_start_time`] of `pid` if it is a live child of this process: a pid this
/// process has not reaped yet is still its child's, whatever else ran meanwhile, so what
/// is read is that child's (and a pid the reaper has collected, which the kernel may have
/// handed to another process, is not taken for it).
pub fn child_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: u32 = stat_fields(&stat)?.get(1)?.parse().ok()?;
    if ppid != std::process::id() {
        return None;
    }
    start_time_of(&stat)
}

/// The fields of a `/proc/<pid>/stat` line after the command name, from field 3 (state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    // The command name (field 2) may contain spaces and ')'; the fields after it follow
    // the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split(' ').collect())
}

/// Field 22 (start time) of a `/proc/<pid>/stat` line, unless the process is a zombie.
fn start_time_of(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Unmounts a pod's /dev/shm tmpfs; not mounted (or not there) is fine.
pub fn unmount_shm(shm: &Path) -> Result<()> {
    match nix::mount::umount2(shm, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::sys(format!("unmount {}", shm.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_saves_atomically() {
        let dir = std::env::temp_dir().join(format!("cove-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Leftovers::load(&dir).unwrap(), None);
        let l = Leftovers {
            pause: Some((42, 1234)),
            pause_cgroups: vec!["/sys/fs/cgroup/memory/p/x".into()],
            cgroups: vec!["/sys/fs/cgroup/memory/p/x".into()],
            shm: Some("/run/x/shm".into()),
            files: vec!["/var/lib/x/hosts".into()],
            dirs: vec!["/var/lib/x".into()],
            units: vec!["cri-containerd-x.scope".into(), "pod1.slice".into()],
        };
        l.save(&dir).unwrap();
        assert_eq!(Leftovers::load(&dir).unwrap(), Some(l));
        assert!(!dir.join(format!("{STATE_FILE}.tmp")).exists());
        Leftovers::forget(&dir).unwrap();
        Leftovers::forget(&dir).unwrap();
        assert_eq!(Leftovers::load(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_of_an_older_cove_is_read() {
        // As cove wrote it before records were versioned (and before `units`).
        let old = r#"{"pause_pid":42,"pause_start":1234,"pause_cgroups":["/sys/fs/cgroup/pids/p/x"],"cgroups":["/sys/fs/cgroup/pids/p/x"],"shm":null,"files":["/var/lib/x/hosts"],"dirs":[]}"#;
        let r: SandboxRecord = record::decode(old, Path::new("old")).unwrap();
        assert_eq!(
            Leftovers::from(r),
            Leftovers {
                pause: Some((42, 1234)),
                pause_cgroups: vec!["/sys/fs/cgroup/pids/p/x".into()],
                cgroups: vec!["/sys/fs/cgroup/pids/p/x".into()],
                files: vec!["/var/lib/x/hosts".into()],
                ..Default::default()
            }
        );
        let wrong = r#"{"pause_pid":"42","pause_start":1}"#;
        assert!(matches!(
            record::decode::<SandboxRecord>(wrong, Path::new("x")),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn start_time_identifies_a_live_process() {
        let me = std::process::id() as i32;
        assert!(proc_start_time(me).is_some());
        let stale = Leftovers {
            pause: Some((me, proc_start_time(me).unwrap() + 1)),
            ..Default::default()
        };
        assert!(!stale.kill_pause(), "a recycled pid must not be killed");
    }

    #[test]
    fn clean_removes_files_and_dirs_and_tolerates_missing_ones() {
        let dir = std::env::temp_dir().join(format!("cove-clean-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/hosts"), "x").unwrap();
        let l = Leftovers {
            files: vec![dir.join("a/b/hosts"), dir.join("missing")],
            dirs: vec![dir.join("a"), dir.join("a/b")],
            ..Default::default()
        };
        l.clean().unwrap();
        assert!(!dir.join("a").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_created_parent_that_others_now_use_is_kept_without_error() {
        let dir = std::env::temp_dir().join(format!("cove-shared-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sandboxes/mine")).unwrap();
        std::fs::create_dir_all(dir.join("sandboxes/other-pod")).unwrap();
        let l = Leftovers {
            dirs: vec![dir.join("sandboxes"), dir.join("sandboxes/mine")],
            ..Default::default()
        };
        l.clean().unwrap();
        assert!(!dir.join("sandboxes/mine").exists());
        assert!(dir.join("sandboxes/other-pod").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn the_start_time_is_read_past_any_command_name(
            comm in "[^\\x00]{0,16}",
            state in "[RSDZT]",
            start in proptest::num::u64::ANY,
        ) {
            let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
            fields[0] = state.clone();
            fields[19] = start.to_string();
            let line = format!("4242 ({comm}) {}\n", fields.join(" "));
            let want = (state != "Z").then_some(start);
            proptest::prop_assert_eq!(start_time_of(&line), want);
        }

        #[test]
        fn any_stat_text_is_read_without_panicking(text in "\\PC{0,120}") {
            let _ = start_time_of(&text);
        }
    }
}
