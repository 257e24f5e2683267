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

    /// Writes the crash-cleanup record.
    pub fn save(&self) -> Result<()> {
        let rec = json!({
            "id": self.id,
            "runtime": self.runc.binary,
            "root": self.runc.root,
            "systemd_cgroup": self.runc.systemd_cgroup,
            "rootfs_mounted": self.rootfs_mounted,
        });
        let tmp = self.bundle.join(format!("{TASK_FILE}.tmp"));
        std::fs::write(&tmp, rec.to_string()).context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, self.bundle.join(TASK_FILE)).context(|| format!("write {TASK_FILE}"))
    }
}

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
    let v: serde_json::Value = match serde_json::from_str(&text) {
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
    };
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, runtime, root) = (s("id"), s("runtime"), s("root"));
    if !id.is_empty() && !runtime.is_empty() {
        let mut c = std::process::Command::new(&runtime);
        c.arg("--root").arg(&root);
        if v.get("systemd_cgroup").and_then(|x| x.as_bool()) == Some(true) {
            c.arg("--systemd-cgroup");
        }
        let out = c.args(["delete", "--force", &id]).output();
        if let Ok(o) = out {
            if !o.status.success() {
                log::debug!(
                    "{runtime} delete {id}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
    if v.get("rootfs_mounted").and_then(|x| x.as_bool()) == Some(true) {
        unmount_rootfs(&bundle.join("rootfs"))?;
    }
    let _ = std::fs::remove_file(&path);
    Ok(true)
}
