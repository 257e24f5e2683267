//! The pod files CRI bind-mounts into every container of the pod when they exist:
//! `<root>/io.containerd.grpc.v1.cri/sandboxes/<id>/{hostname,hosts,resolv.conf}` and the
//! `/dev/shm` tmpfs at `<state>/io.containerd.grpc.v1.cri/sandboxes/<id>/shm`
//! (containerd v2.1.9 `internal/cri/server/helpers.go`, `plugins/cri/runtime/plugin.go`).
//!
//! containerd's `root` and `state` are found from the sandbox bundle, which containerd puts
//! at `<state>/io.containerd.sandbox.controller.v1.shim/<ns>/<id>` with a `work` symlink to
//! `<root>/io.containerd.sandbox.controller.v1.shim/<ns>/<id>`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::config::PodSpec;
use crate::error::{Error, IoContext, Result};
use crate::state::Leftovers;

const CONTROLLER_DIR: &str = "io.containerd.sandbox.controller.v1.shim";
const CRI_DIR: &str = "io.containerd.grpc.v1.cri";
/// CRI's default size of a pod's /dev/shm (`defaultShmSize`).
pub const SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Where CRI looks for this pod's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub root_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl PodFiles {
    /// Finds CRI's sandbox directories from the bundle, or `None` when the bundle is not
    /// laid out by containerd's shim sandbox controller.
    pub fn locate(bundle: &Path, id: &str) -> Option<PodFiles> {
        let state = containerd_dir(bundle, id)?;
        let work = std::fs::read_link(bundle.join("work")).ok()?;
        let root = containerd_dir(&work, id)?;
        let sub = Path::new(CRI_DIR).join("sandboxes").join(id);
        Some(PodFiles {
            root_dir: root.join(&sub),
            state_dir: state.join(&sub),
        })
    }

    pub fn shm(&self) -> PathBuf {
        self.state_dir.join("shm")
    }

    /// Writes hostname, hosts and resolv.conf and mounts the shm tmpfs (unless the pod
    /// shares the host IPC namespace). Everything made is recorded in `made` as it is made,
    /// so a failure halfway leaves a complete list to clean.
    pub fn create(&self, spec: &PodSpec, made: &mut Leftovers) -> Result<()> {
        for dir in [&self.root_dir, &self.state_dir] {
            mkdirs(dir, 0o700, made)?;
        }
        let hostname = if spec.hostname.is_empty() {
            nix::unistd::gethostname()
                .context(|| "read the host's hostname".into())?
                .to_string_lossy()
                .into_owned()
        } else {
            spec.hostname.clone()
        };
        let resolv = match &spec.dns {
            Some(dns) => dns.resolv_conf(),
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        let hosts = std::fs::read_to_string("/etc/hosts").context(|| "read /etc/hosts".into())?;
        for (name, text) in [
            ("hostname", format!("{hostname}\n")),
            ("hosts", hosts),
            ("resolv.conf", resolv),
        ] {
            let path = self.root_dir.join(name);
            made.files.push(path.clone());
            std::fs::write(&path, text).context(|| format!("write {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .context(|| format!("chmod {}", path.display()))?;
        }
        if !spec.host_ipc {
            let shm = self.shm();
            mkdirs(&shm, 0o700, made)?;
            nix::mount::mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
            )
            .context(|| format!("mount shm tmpfs on {}", shm.display()))?;
            made.shm = Some(shm);
        }
        Ok(())
    }
}

/// `<dir>` from `<dir>/io.containerd.sandbox.controller.v1.shim/<ns>/<id>`.
fn containerd_dir(path: &Path, id: &str) -> Option<PathBuf> {
    if path.file_name()? != id {
        return None;
    }
    let controller = path.parent()?.parent()?;
    if controller.file_name()? != CONTROLLER_DIR {
        return None;
    }
    controller.parent().map(Path::to_path_buf)
}

/// Creates `dir` and missing parents, recording the ones it created.
fn mkdirs(dir: &Path, mode: u32, made: &mut Leftovers) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for m in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(&m) {
            Ok(()) => made.dirs.push(m),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("create {}", m.display()), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_cri_dirs_from_a_containerd_bundle() {
        let tmp = std::env::temp_dir().join(format!("cove-files-{}", std::process::id()));
        let bundle = tmp
            .join("state")
            .join(CONTROLLER_DIR)
            .join("k8s.io")
            .join("sb1");
        let work = tmp
            .join("root")
            .join(CONTROLLER_DIR)
            .join("k8s.io")
            .join("sb1");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::os::unix::fs::symlink(&work, bundle.join("work")).unwrap();
        let f = PodFiles::locate(&bundle, "sb1");
        let other = PodFiles::locate(&bundle, "sb2");
        std::fs::remove_dir_all(&tmp).unwrap();
        let f = f.unwrap();
        assert_eq!(
            f.root_dir,
            tmp.join("root").join(CRI_DIR).join("sandboxes").join("sb1")
        );
        assert_eq!(
            f.shm(),
            tmp.join("state")
                .join(CRI_DIR)
                .join("sandboxes")
                .join("sb1")
                .join("shm")
        );
        assert_eq!(other, None, "a bundle named for another id is not ours");
        assert_eq!(PodFiles::locate(Path::new("/tmp/x/sb1"), "sb1"), None);
    }
}
