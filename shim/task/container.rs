//! A container: its bundle, rootfs mounts, runc state, init process and execs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, IoContext, Result};
use crate::record::{self, Record};
use crate::task::oom::Oom;
use crate::task::process::Process;
use crate::task::runc::{RestoreFrom, Runc};

/// The record in a container bundle that lets `delete` clean up after a shim crash.
pub const TASK_FILE: &str = "cove-task.json";

/// What `delete` needs to clean up a container after a crash (a [`crate::record`]).
/// Version 1 is the hand-written version 0 with a version; `systemd_cgroup` came later
/// in version 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    /// The bundle (absent from the records that `cleanup_indexed` makes up).
    #[serde(default)]
    pub bundle: PathBuf,
    /// The OCI runtime binary and its state root (namespace included).
    pub runtime: String,
    pub root: PathBuf,
    #[serde(default)]
    pub systemd_cgroup: bool,
    pub rootfs_mounted: bool,
}

impl Record for TaskRecord {
    const KIND: &'static str = "task record";
    const VERSION: u32 = 1;
}
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runc: Runc,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    pub rootfs_mounted: bool,
    /// Its entry in the sandbox's task index, if it runs in a sandbox of this shim.
    pub index: Option<PathBuf>,
    /// The init shares a pid namespace (the pod's or the host's): when it exits, the rest
    /// of the container's processes are killed, as no kernel will do it.
    pub kill_all_on_exit: bool,
    /// runc's delete of the stopped container would only remove its state and cgroups
    /// (cgroupfs driver, no poststop hooks, no Intel RDT): the shim can do that itself.
    pub plain_delete: bool,
    /// The container's cgroup (relative), known once it is created.
    pub cgroup: Mutex<Option<PathBuf>>,
    pub oom: Mutex<Option<Arc<Oom>>>,
    /// Opens once Start (or Kill, or Delete) has run, so that an init's exit is never
    /// published before its start.
    pub gate: watch::Sender<bool>,
    /// Where a task created from a checkpoint is in its restore. Held by the init's Start
    /// (`runc start`, or the restore) until it has ended, so that a Delete that comes
    /// meanwhile waits for that end, as Delete waits behind Start on the process's mutex
    /// in containerd's runc shim: a Delete refused then would leave the task, and its
    /// server, for good when it was containerd's cleanup of that very Start (a caller
    /// that gave up on it).
    pub restore: tokio::sync::Mutex<Restore>,
}

/// The restore of a task created from a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// Not created from a checkpoint, or restored.
    None,
    /// Start will restore it from there.
    Pending(RestoreFrom),
    /// The restore failed: the task can only be deleted (its stdio was closed with the
    /// failed run; a second run would write where no reader is).
    Failed,
}

impl Restore {
    /// For the init's Start: the checkpoint to restore it from (the caller holds the lock
    /// on it until the restore has ended), or None for a task not created from one. A
    /// restore that failed is final.
    pub fn begin(&mut self, id: &str) -> Result<Option<RestoreFrom>> {
        match std::mem::replace(self, Restore::None) {
            Restore::Pending(from) => Ok(Some(from)),
            Restore::None => Ok(None),
            Restore::Failed => {
                *self = Restore::Failed;
                Err(Error::FailedPrecondition(format!(
                    "task {id}: its restore from a checkpoint failed; delete it"
                )))
            }
        }
    }

    /// The end of the restore [`Restore::begin`] began.
    pub fn end(&mut self, restored: bool) {
        *self = if restored {
            Restore::None
        } else {
            Restore::Failed
        };
    }

    /// For Delete: whether the task was created from a checkpoint and never restored (its
    /// restore pending, or failed), which it then forgets.
    pub fn abandon(&mut self) -> bool {
        let never = *self != Restore::None;
        *self = Restore::None;
        never
    }
}

impl Container {
    pub fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        crate::lock::lock(&self.execs)
    }

    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} of task {} not found", self.id)))
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn cgroup(&self) -> Option<PathBuf> {
        crate::lock::lock(&self.cgroup).clone()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Writes the crash-cleanup record: in the bundle, and as the container's entry in its
    /// sandbox's index (containerd may remove the bundle of a dead shim's task before the
    /// sandbox's `delete` runs, so the entry carries everything that `delete` needs).
    pub fn save(&self) -> Result<()> {
        let rec = record::encode(&TaskRecord {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            runtime: self.runc.binary.clone(),
            root: self.runc.root.clone(),
            systemd_cgroup: self.runc.systemd_cgroup,
            rootfs_mounted: self.rootfs_mounted,
        })?;
        record::write_atomic(&self.bundle.join(TASK_FILE), &rec)?;
        if let Some(entry) = &self.index {
            record::write_atomic(entry, &rec)?;
        }
        Ok(())
    }
}

/// The directory in a sandbox bundle that names the bundles of the sandbox's containers
/// (one file per container id, holding its bundle path): containerd runs `delete` only for
/// the sandbox when a sandbox's shim dies, and that `delete` cleans up its containers too.
pub const TASK_INDEX: &str = "cove-tasks";

/// The index entry of container `id` under the sandbox bundle `sandbox` (its directory is
/// made here; [`Container::save`] writes the entry).
pub fn index_task(sandbox: &Path, id: &str) -> Result<PathBuf> {
    let dir = sandbox.join(TASK_INDEX);
    std::fs::create_dir_all(&dir).context(|| format!("create {}", dir.display()))?;
    Ok(dir.join(id))
}

/// `delete` of a sandbox: cleans up every container its index names. Returns how many
/// containers it found to clean.
pub fn cleanup_indexed(sandbox: &Path, namespace: &str) -> Result<usize> {
    let dir = sandbox.join(TASK_INDEX);
    let mut n = 0;
    let mut first_err = None;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let rec = parse_record(&text, &e.path(), &name, namespace);
        let bundle = rec.bundle.clone();
        match cleanup_record(&rec, &bundle) {
            Ok(()) => {
                n += 1;
                let _ = std::fs::remove_file(e.path());
                let _ = std::fs::remove_file(bundle.join(TASK_FILE));
            }
            Err(err) => {
                log::warn!(
                    "clean up container {name} of sandbox bundle {}: {err}",
                    sandbox.display()
                );
                first_err.get_or_insert(err);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(n)
}

/// A crash-cleanup record; one that cannot be read is reported (as DATA_LOSS, in the shim
/// log and on stderr), and stands in for the container as containerd names it (`id` in
/// `namespace`, runc's default root, everything under the rootfs unmounted).
fn parse_record(text: &str, path: &Path, id: &str, namespace: &str) -> TaskRecord {
    match record::decode::<TaskRecord>(text, path) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("{e}; cleaning up task {id} with runc's defaults");
            log::warn!("{msg}");
            eprintln!("cove: {msg}");
            TaskRecord {
                id: id.to_owned(),
                bundle: PathBuf::new(),
                runtime: "runc".into(),
                root: Path::new(crate::task::runc::DEFAULT_ROOT).join(namespace),
                systemd_cgroup: false,
                rootfs_mounted: true,
            }
        }
    }
}

/// How long the tries of one container's `runc delete --force` may take together, one
/// try included (a poststop hook that hangs): containerd gives the whole `delete` command
/// 5 s, then kills it before it has unmounted the rootfs or said what runc said. A try is
/// not cut shorter than the budget: on a loaded node one `runc delete --force` took over
/// 3 s, and a try killed half-way gains nothing from the next.
const DELETE_BUDGET: std::time::Duration = std::time::Duration::from_secs(4);

/// Runs `cmd` with its output captured (a few pipe buffers of it at most: what runc prints
/// for `delete` and `features`); killed, and `TimedOut`, when still running at `limit`.
/// For the one-shot commands (`delete`, `-info`: no reaper, no async runtime), whose
/// children are their own.
pub(crate) fn output_within(
    mut cmd: std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_end(&mut stdout);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_end(&mut stderr);
            }
            return Ok(std::process::Output {
                status,
                stdout,
                stderr,
            });
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("did not finish within {}s; killed", limit.as_secs()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// How many times `delete` asks runc to delete a container it left behind.
const DELETE_TRIES: u32 = 10;

/// Where, in a container's bundle, the layers of an idmapped overlay rootfs are attached
/// while it is mounted.
pub const IDMAP_SCRATCH: &str = "idmapped-layers";

/// Unmounts everything under a container's rootfs.
pub fn unmount_rootfs(rootfs: &Path) -> Result<()> {
    let target = rootfs.to_string_lossy().into_owned();
    containerd_shim::mount::umount_recursive(Some(&target), libc::MNT_DETACH)
        .map_err(|e| Error::Internal(format!("unmount {target}: {e}")))
}

/// `delete` after a crash: force-delete the runc container and unmount its rootfs, if the
/// bundle holds a container cove created. Returns whether it did.
///
/// A record that cannot be read (truncated, edited by hand) must not make `delete` fail
/// forever: it is reported, and the container is cleaned up as containerd names it
/// (`id` in `namespace`, runc's default root) with everything under the rootfs unmounted.
pub fn cleanup_leftover(bundle: &Path, id: &str, namespace: &str) -> Result<bool> {
    let path = bundle.join(TASK_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let rec = parse_record(&text, &path, id, namespace);
    cleanup_record(&rec, bundle)?;
    let _ = std::fs::remove_file(&path);
    Ok(true)
}

/// Force-deletes the runc container a record names and unmounts its rootfs. The rootfs is
/// unmounted even when runc leaves its state behind, as containerd's runc shim does: a
/// `delete` that failed is not run again until containerd restarts, and the mount would
/// stay on the host until then. runc's failure is still the error.
fn cleanup_record(r: &TaskRecord, bundle: &Path) -> Result<()> {
    let deleted = runc_delete(r);
    if r.rootfs_mounted && !bundle.as_os_str().is_empty() && bundle.join("rootfs").exists() {
        unmount_rootfs(&bundle.join("rootfs"))?;
    }
    if !bundle.as_os_str().is_empty() {
        crate::idmap::clear_scratch(&bundle.join(IDMAP_SCRATCH));
    }
    deleted
}

/// `runc delete --force` of the container a record names, tried until runc's state is
/// gone, within [`DELETE_BUDGET`].
fn runc_delete(r: &TaskRecord) -> Result<()> {
    if r.id.is_empty() || r.runtime.is_empty() {
        return Ok(());
    }
    // runc can fail while the container's last processes are still exiting (a busy
    // cgroup); the state is gone only when runc says so, so try a few times and say what
    // runc said if it never does.
    let state = r.root.join(&r.id);
    let mut said = String::new();
    let deadline = std::time::Instant::now() + DELETE_BUDGET;
    for attempt in 0..DELETE_TRIES {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let mut c = std::process::Command::new(&r.runtime);
        c.arg("--root").arg(&r.root);
        if r.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.args(["delete", "--force", &r.id]);
        match output_within(c, left) {
            Ok(o) if o.status.success() => break,
            Ok(o) => said = String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => said = e.to_string(),
        }
        if !state.exists() {
            break;
        }
        if attempt + 1 < DELETE_TRIES {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    if state.exists() {
        return Err(Error::Internal(format!(
            "{} delete --force {} left {}: {said}",
            r.runtime,
            r.id,
            state.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `delete` after a crash, where runc cannot delete the container (here a runtime that
    /// fails, with its state left): the rootfs is unmounted all the same, and runc's
    /// failure is the error.
    #[test]
    #[ignore = "needs root (mounts); make test runs it"]
    fn a_rootfs_is_unmounted_even_when_runc_cannot_delete() {
        let dir = std::env::temp_dir().join(format!("cove-leftover-{}", std::process::id()));
        let (bundle, root) = (dir.join("bundle"), dir.join("runc"));
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::create_dir_all(root.join("c1")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &bundle.join("rootfs"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&*bundle.join("rootfs").to_string_lossy())
        };
        assert!(mounted());
        let r = TaskRecord {
            id: "c1".into(),
            bundle: bundle.clone(),
            runtime: "false".into(),
            root: root.clone(),
            systemd_cgroup: false,
            rootfs_mounted: true,
        };
        let err = cleanup_record(&r, &bundle).unwrap_err().to_string();
        let still = mounted();
        if still {
            let _ = unmount_rootfs(&bundle.join("rootfs"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!still, "the rootfs is still mounted");
        assert!(err.contains("delete --force c1 left"), "{err}");
    }

    #[test]
    fn task_records_of_this_and_an_older_cove_are_read() {
        // As cove wrote it before records were versioned.
        let old = r#"{"id":"c1","bundle":"/run/b/c1","runtime":"runc","root":"/run/containerd/runc/k8s.io","systemd_cgroup":false,"rootfs_mounted":true}"#;
        let r = parse_record(old, Path::new("old"), "c1", "k8s.io");
        assert_eq!(r.bundle, PathBuf::from("/run/b/c1"));
        assert!(r.rootfs_mounted);
        let text = record::encode(&r).unwrap();
        assert_eq!(parse_record(&text, Path::new("new"), "c1", "k8s.io"), r);
    }

    #[test]
    fn a_corrupt_task_record_stands_in_with_runcs_defaults() {
        let r = parse_record(
            r#"{"id":"c1","runtime":"runc","root":7}"#,
            Path::new("bad"),
            "c1",
            "moby",
        );
        assert_eq!(
            (r.runtime.as_str(), r.root.as_path(), r.rootfs_mounted),
            ("runc", Path::new("/run/containerd/runc/moby"), true)
        );
    }
}
