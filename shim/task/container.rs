//! A container: its bundle, rootfs mounts, runc state, init process and execs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::watch;

use crate::error::{Error, IoContext, Result};
use crate::task::oom::Oom;
use crate::task::process::Process;
use crate::task::runc::Runc;

/// The record in a container bundle that lets `delete` clean up after a shim crash.
pub const TASK_FILE: &str = "cove-task.json";

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
}

impl Container {
    pub fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
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
        self.cgroup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Writes the crash-cleanup record: in the bundle, and as the container's entry in its
    /// sandbox's index (containerd may remove the bundle of a dead shim's task before the
    /// sandbox's `delete` runs, so the entry carries everything that `delete` needs).
    pub fn save(&self) -> Result<()> {
        let rec = json!({
            "id": self.id,
            "bundle": self.bundle,
            "runtime": self.runc.binary,
            "root": self.runc.root,
            "systemd_cgroup": self.runc.systemd_cgroup,
            "rootfs_mounted": self.rootfs_mounted,
        })
        .to_string();
        write_atomic(&self.bundle.join(TASK_FILE), &rec)?;
        if let Some(entry) = &self.index {
            write_atomic(entry, &rec)?;
        }
        Ok(())
    }
}

/// The directory in a sandbox bundle that names the bundles of the sandbox's containers
/// (one file per container id, holding its bundle path): containerd runs `delete` only for
/// the sandbox when a sandbox's shim dies, and that `delete` cleans up its containers too.
pub const TASK_INDEX: &str = "cove-tasks";

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).context(|| format!("write {}", path.display()))?;
    std::fs::rename(&tmp, path).context(|| format!("write {}", path.display()))
}

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
        let bundle = rec
            .get("bundle")
            .and_then(|b| b.as_str())
            .map(PathBuf::from)
            .unwrap_or_default();
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

/// A crash-cleanup record; one that cannot be read is reported, and stands in for the
/// container as containerd names it (`id` in `namespace`, runc's default root).
fn parse_record(text: &str, path: &Path, id: &str, namespace: &str) -> serde_json::Value {
    match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!(
                "{} is corrupt ({e}); cleaning up task {id} with runc's defaults",
                path.display()
            );
            log::warn!("{msg}");
            eprintln!("cove: {msg}");
            json!({
                "id": id,
                "runtime": "runc",
                "root": Path::new(crate::task::runc::DEFAULT_ROOT).join(namespace),
                "rootfs_mounted": true,
            })
        }
    }
}

/// How many times `delete` asks runc to delete a container it left behind.
const DELETE_TRIES: u32 = 10;

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

/// Force-deletes the runc container a record names and unmounts its rootfs.
fn cleanup_record(v: &serde_json::Value, bundle: &Path) -> Result<()> {
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, runtime, root) = (s("id"), s("runtime"), s("root"));
    if !id.is_empty() && !runtime.is_empty() {
        // runc can fail while the container's last processes are still exiting (a busy
        // cgroup); the state is gone only when runc says so, so try a few times and say
        // what runc said if it never does.
        let state = Path::new(&root).join(&id);
        let mut said = String::new();
        for attempt in 0..DELETE_TRIES {
            let mut c = std::process::Command::new(&runtime);
            c.arg("--root").arg(&root);
            if v.get("systemd_cgroup").and_then(|x| x.as_bool()) == Some(true) {
                c.arg("--systemd-cgroup");
            }
            match c.args(["delete", "--force", &id]).output() {
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
                "{runtime} delete --force {id} left {}: {said}",
                state.display()
            )));
        }
    }
    if v.get("rootfs_mounted").and_then(|x| x.as_bool()) == Some(true)
        && !bundle.as_os_str().is_empty()
        && bundle.join("rootfs").exists()
    {
        unmount_rootfs(&bundle.join("rootfs"))?;
    }
    Ok(())
}
