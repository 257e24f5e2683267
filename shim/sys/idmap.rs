//! The new mount API (`open_tree`, `mount_setattr`, `move_mount`) for idmapped mounts,
//! and a child that only holds namespaces.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A child cloned into new namespaces that only waits: its pid, and a pidfd that names it
/// and no later process with the same pid.
pub struct WaitingChild {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Clones the caller with `namespaces` (`CLONE_NEW*` flags); the child closes every
/// descriptor it inherited, has default signal handlers (`CLONE_CLEAR_SIGHAND`, Linux
/// 5.5+), dies with its parent and otherwise waits to be killed.
pub fn spawn_waiting_child(namespaces: u64) -> nix::Result<WaitingChild> {
    const CLONE_PIDFD: u64 = 0x1000;
    const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
    let mut pidfd: libc::c_int = -1;
    let parent = nix::unistd::getpid().as_raw();
    let args = super::CloneArgs {
        flags: namespaces | CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        ..super::CloneArgs::forking()
    };
    // SAFETY: with no stack given, clone3 duplicates the caller like fork(2); the kernel
    // writes the pidfd into `pidfd`, which outlives the call. The child (a copy of one
    // thread of a possibly multi-threaded process) makes raw system calls only, which take
    // no lock and touch no shared state, and never returns from this block.
    let ret = unsafe { super::clone3(&args) };
    match ret {
        -1 => Err(nix::Error::last()),
        0 => {
            // SAFETY: raw system calls only (see above).
            unsafe {
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The parent died before the death signal was armed.
                if libc::getppid() != parent {
                    libc::_exit(0);
                }
                loop {
                    libc::pause();
                }
            }
        }
        pid => Ok(WaitingChild {
            pid: pid as i32,
            // SAFETY: the kernel gave the caller this new descriptor (CLONE_PIDFD).
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> nix::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)
}

/// A detached copy of the mount tree at `source` (recursive when `recursive`), with the
/// id mapping of `userns` and the `MOUNT_ATTR_*` flags in `attrs` (read-only, nosuid, ...).
pub fn idmapped_clone(
    source: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
    attrs: u64,
) -> nix::Result<OwnedFd> {
    let src = cpath(source)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree takes a dirfd, a NUL-terminated path and flags; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let mut at = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        at |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: mount_setattr reads `attr` (of the size given) and the empty path.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(nix::Error::last());
    }
    Ok(tree)
}

/// Attaches a detached mount tree on `target`.
pub fn attach_mount(tree: BorrowedFd<'_>, target: &Path) -> nix::Result<()> {
    let dst = cpath(target)?;
    // SAFETY: move_mount reads the two NUL-terminated paths.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}
