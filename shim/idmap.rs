//! Id mappings of user-namespaced pods, and the idmapped mounts their containers' root
//! filesystems need.
//!
//! A snapshotter that remaps ids (containerd's overlayfs, where the kernel can idmap
//! overlay's layers) hands the shim its mounts with the options `uidmap=C:H:L[,C:H:L...]`
//! and `gidmap=...`: a mount the shim must make so that files owned by `C` on disk appear
//! owned by host id `H`, which the pod's user namespace maps back to `C`. containerd's
//! runc shim does it in `mount.All`; cove does the same here:
//!
//! - **overlay**: each `lowerdir` is cloned (`open_tree`), the clone gets the mapping
//!   (`mount_setattr(MOUNT_ATTR_IDMAP)` with a user namespace holding it), is attached on a
//!   private directory of the bundle, and the overlay is mounted over those. The clones are
//!   detached again at once: the overlay keeps its own references to them. The upper
//!   directory is already owned by the mapped root (the snapshotter chowned it).
//! - **bind**: the source is cloned, mapped and attached on the target directly.
//!
//! The user namespace that carries a mapping is held by a child made for it (a
//! `clone(CLONE_NEWUSER)` that only waits), whose maps the shim writes, and whose
//! namespace it opens before killing it.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// One extent of a uid or gid mapping: `length` ids from `inside` (in the user namespace)
/// are `host` and up on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    pub inside: u32,
    pub host: u32,
    pub length: u32,
}

/// A user namespace's mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mappings {
    pub uids: Vec<Extent>,
    pub gids: Vec<Extent>,
}

impl Mappings {
    /// The id `inside` maps to on the host, if it is mapped.
    pub fn host_uid(&self, inside: u32) -> Option<u32> {
        host_id(&self.uids, inside)
    }

    pub fn host_gid(&self, inside: u32) -> Option<u32> {
        host_id(&self.gids, inside)
    }

    /// Writes the mappings of the (not yet mapped) user namespace of `pid`: gid_map, then
    /// uid_map, as `newuidmap` does. The writer must be privileged in the parent namespace.
    pub fn write_for(&self, pid: i32) -> std::io::Result<()> {
        std::fs::write(format!("/proc/{pid}/gid_map"), proc_format(&self.gids))?;
        std::fs::write(format!("/proc/{pid}/uid_map"), proc_format(&self.uids))
    }

    /// [`Mappings::write_for`] through `proc`, a descriptor of a `/proc` directory.
    pub fn write_for_at(&self, proc: BorrowedFd<'_>, pid: i32) -> std::io::Result<()> {
        use std::io::Write;
        let w = nix::fcntl::OFlag::O_WRONLY;
        let gids = proc_format(&self.gids);
        sys::open_at(proc, &format!("{pid}/gid_map"), w)?.write_all(gids.as_bytes())?;
        let uids = proc_format(&self.uids);
        sys::open_at(proc, &format!("{pid}/uid_map"), w)?.write_all(uids.as_bytes())
    }
}

impl Mappings {
    /// Whether the caller's own user namespace has exactly these mappings (its
    /// `/proc/self/uid_map` and `gid_map`, read from inside it).
    pub fn check_own(&self, proc: BorrowedFd<'_>) -> std::result::Result<(), String> {
        use std::io::Read;
        for (file, want) in [("uid_map", &self.uids), ("gid_map", &self.gids)] {
            let path = format!("self/{file}");
            let mut text = String::new();
            sys::open_at(proc, &path, nix::fcntl::OFlag::O_RDONLY)
                .map_err(std::io::Error::from)
                .and_then(|mut f| f.read_to_string(&mut text))
                .map_err(|e| format!("/proc/{path}: {e}"))?;
            let mut got: Vec<Vec<&str>> = text
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            let text_want = proc_format(want);
            let mut wanted: Vec<Vec<&str>> = text_want
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            got.sort();
            wanted.sort();
            if got != wanted {
                return Err(format!(
                    "its {file} is {:?}, the pod asks for {:?}",
                    text.trim(),
                    text_want.trim()
                ));
            }
        }
        Ok(())
    }
}

fn host_id(extents: &[Extent], inside: u32) -> Option<u32> {
    extents.iter().find_map(|e| {
        let off = inside.checked_sub(e.inside)?;
        (off < e.length).then(|| e.host + off)
    })
}

/// `/proc/PID/uid_map` text: one `inside host length` line per extent.
fn proc_format(extents: &[Extent]) -> String {
    extents
        .iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.host, e.length))
        .collect()
}

/// Parses a mount option's value (`0:100000:65536[,65536:300000:10]`), containerd's form.
fn parse_option(kind: &str, value: &str) -> Result<Vec<Extent>> {
    let bad =
        |why: &str| Error::InvalidArgument(format!("rootfs mount option {kind}={value}: {why}"));
    let mut out = Vec::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let nums: Vec<u32> = part
            .split(':')
            .map(|n| n.parse::<u32>().map_err(|_| bad("not inside:host:length")))
            .collect::<Result<_>>()?;
        let [inside, host, length] = nums[..] else {
            return Err(bad("not inside:host:length"));
        };
        if length == 0 {
            return Err(bad("an extent of length 0"));
        }
        out.push(Extent {
            inside,
            host,
            length,
        });
    }
    if out.is_empty() {
        return Err(bad("no extent"));
    }
    Ok(out)
}

/// A mount's options with `uidmap=`/`gidmap=` taken out, and the mappings they held.
pub fn split_options(options: &[String]) -> Result<(Vec<String>, Option<Mappings>)> {
    let mut rest = Vec::with_capacity(options.len());
    let (mut uids, mut gids) = (None, None);
    for o in options {
        if let Some(v) = o.strip_prefix("uidmap=") {
            uids = Some(parse_option("uidmap", v)?);
        } else if let Some(v) = o.strip_prefix("gidmap=") {
            gids = Some(parse_option("gidmap", v)?);
        } else {
            rest.push(o.clone());
        }
    }
    match (uids, gids) {
        (None, None) => Ok((rest, None)),
        (Some(uids), Some(gids)) => Ok((rest, Some(Mappings { uids, gids }))),
        _ => Err(Error::InvalidArgument(
            "rootfs mount: uidmap and gidmap must be given together".into(),
        )),
    }
}

/// A user namespace with `maps`, held open. Safe to call from a multi-threaded process:
/// the child made for it makes raw system calls only until it is killed.
pub fn user_namespace(maps: &Mappings) -> Result<OwnedFd> {
    let child = sys::spawn_waiting_child(libc::CLONE_NEWUSER as u64)
        .map_err(|e| Error::Internal(format!("create a user namespace: {e}")))?;
    let pid = child.pid;
    let result = maps
        .write_for(pid)
        .and_then(|()| File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from))
        .map_err(|e| Error::Internal(format!("map the user namespace of {pid}: {e}")));
    // Still alive now, so /proc/{pid} above was this child and no later process with its
    // pid: its pidfd is not readable until it exits.
    let mut pfd = [nix::poll::PollFd::new(
        child.pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let alive = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO) == Ok(0);
    // The shim's reaper collects it (it is the shim's child).
    let _ = sys::pidfd_send_signal(child.pidfd.as_fd(), nix::sys::signal::Signal::SIGKILL);
    if !alive {
        return Err(Error::Internal(format!(
            "the process holding a new user namespace ({pid}) died before it was mapped"
        )));
    }
    result
}

/// The `MOUNT_ATTR_*` flags of an idmapped bind mount's options, and whether it is
/// recursive; an option cove cannot apply that way is UNIMPLEMENTED, never dropped.
fn bind_attrs(options: &[String]) -> Result<(u64, bool)> {
    let (mut attrs, mut recursive) = (0, false);
    for o in options {
        match o.as_str() {
            "ro" => attrs |= sys::MOUNT_ATTR_RDONLY,
            "nosuid" => attrs |= sys::MOUNT_ATTR_NOSUID,
            "nodev" => attrs |= sys::MOUNT_ATTR_NODEV,
            "noexec" => attrs |= sys::MOUNT_ATTR_NOEXEC,
            "rbind" => recursive = true,
            // A detached clone is private; "rw" is the default.
            "rw" | "bind" | "private" | "rprivate" => {}
            other => {
                return Err(Error::Unimplemented(format!(
                    "idmapped bind mount option {other:?}"
                )))
            }
        }
    }
    Ok((attrs, recursive))
}

/// Mounts one of containerd's rootfs mounts on `target`, with id mappings when its
/// options carry them. `scratch` is where idmapped overlay layers are attached while the
/// overlay is mounted; `expected` the container's own mappings (its spec's), which those
/// of the mount must be.
pub fn mount_rootfs(
    type_: &str,
    source: &str,
    options: &[String],
    target: &Path,
    scratch: &Path,
    expected: Option<&Mappings>,
) -> Result<()> {
    let (options, maps) = split_options(options)?;
    let Some(maps) = maps else {
        return containerd_shim::mount::mount_rootfs(Some(type_), Some(source), &options, target)
            .map_err(|e| Error::Internal(e.to_string()));
    };
    if let Some(want) = expected.filter(|w| **w != maps) {
        return Err(Error::InvalidArgument(format!(
            "the rootfs is idmapped with {maps:?}, the container's user namespace maps {want:?}"
        )));
    }
    let userns = user_namespace(&maps)?;
    let failed = |what: String| move |e: nix::Error| Error::Internal(format!("{what}: {e}"));
    match type_ {
        "bind" | "rbind" => {
            let (attrs, recursive) = bind_attrs(&options)?;
            let tree = sys::idmapped_clone(
                Path::new(source),
                userns.as_fd(),
                recursive || type_ == "rbind",
                attrs,
            )
            .map_err(failed(format!("idmapped clone of {source}")))?;
            sys::attach_mount(tree.as_fd(), target).map_err(failed(format!(
                "attach the idmapped {source} on {}",
                target.display()
            )))
        }
        "overlay" => mount_idmapped_overlay(source, &options, target, scratch, userns.as_fd()),
        other => Err(Error::Unimplemented(format!(
            "rootfs mount of type {other} with uidmap/gidmap: cove idmaps bind and overlay mounts"
        ))),
    }
}

/// Unmounts whatever is still attached under `scratch` (a shim that died while mounting
/// an idmapped overlay) and removes it, never recursing into a mount.
pub fn clear_scratch(scratch: &Path) {
    if !scratch.exists() {
        return;
    }
    let target = scratch.to_string_lossy().into_owned();
    let _ = containerd_shim::mount::umount_recursive(Some(&target), libc::MNT_DETACH);
    if let Ok(entries) = std::fs::read_dir(scratch) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    let _ = std::fs::remove_dir(scratch);
}

fn mount_idmapped_overlay(
    source: &str,
    options: &[String],
    target: &Path,
    scratch: &Path,
    userns: BorrowedFd<'_>,
) -> Result<()> {
    let failed = |what: String| move |e: nix::Error| Error::Internal(format!("{what}: {e}"));
    let Some(idx) = options.iter().position(|o| o.starts_with("lowerdir=")) else {
        return Err(Error::InvalidArgument(
            "overlay rootfs mount without lowerdir".into(),
        ));
    };
    let lowers: Vec<&str> = options[idx]["lowerdir=".len()..]
        .split(':')
        .filter(|l| !l.is_empty())
        .collect();
    clear_scratch(scratch);
    std::fs::create_dir_all(scratch)
        .map_err(|e| Error::io(format!("create {}", scratch.display()), e))?;
    let mut made = Vec::with_capacity(lowers.len());
    let result = (|| {
        for (i, lower) in lowers.iter().enumerate() {
            let at = scratch.join(i.to_string());
            std::fs::create_dir(&at)
                .map_err(|e| Error::io(format!("create {}", at.display()), e))?;
            made.push(at.clone());
            // Read-only: the overlay never writes a lower layer, and nothing else may
            // reach the image's shared layers through this mount.
            let tree = sys::idmapped_clone(Path::new(lower), userns, false, sys::MOUNT_ATTR_RDONLY)
                .map_err(failed(format!("idmapped clone of layer {lower}")))?;
            sys::attach_mount(tree.as_fd(), &at).map_err(failed(format!("attach layer {i}")))?;
        }
        let mut opts: Vec<String> = options.to_vec();
        opts[idx] = format!(
            "lowerdir={}",
            made.iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join(":")
        );
        containerd_shim::mount::mount_rootfs(Some("overlay"), Some(source), &opts, target)
            .map_err(|e| Error::Internal(format!("mount the idmapped overlay: {e}")))
    })();
    // The overlay holds its own references to the layers: their mounts go, and the
    // directories are removed one by one (a mount still there makes rmdir fail, where a
    // recursive removal would delete the image's files through it).
    for at in &made {
        let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(at);
    }
    let _ = std::fs::remove_dir(scratch);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_mappings_and_the_rest() {
        let opts: Vec<String> = [
            "index=off",
            "uidmap=0:2686976:65536",
            "gidmap=0:2686976:65536,65536:100:1",
            "lowerdir=/a:/b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (rest, maps) = split_options(&opts).unwrap();
        assert_eq!(rest, vec!["index=off", "lowerdir=/a:/b"]);
        let maps = maps.unwrap();
        assert_eq!(maps.host_uid(0), Some(2686976));
        assert_eq!(maps.host_uid(65535), Some(2686976 + 65535));
        assert_eq!(maps.host_uid(65536), None);
        assert_eq!(maps.host_gid(65536), Some(100));
        assert_eq!(proc_format(&maps.gids), "0 2686976 65536\n65536 100 1\n");
        let none = split_options(&["ro".to_string()]).unwrap();
        assert_eq!(none, (vec!["ro".to_string()], None));
    }

    #[test]
    fn bad_mapping_options_are_invalid_arguments() {
        for bad in [
            vec!["uidmap=0:1:1"],
            vec!["uidmap=0:1", "gidmap=0:1:1"],
            vec!["uidmap=0:1:0", "gidmap=0:1:1"],
            vec!["uidmap=a:b:c", "gidmap=0:1:1"],
            vec!["uidmap=", "gidmap=0:1:1"],
        ] {
            let opts: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(
                matches!(split_options(&opts), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
