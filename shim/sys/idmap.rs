//! The new mount API (`open_tree`, `mount_setattr`, `move_mount`) for idmapped mounts,
//! and a child that only holds namespaces.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Clones the caller with `flags` (namespaces only); the child waits for a signal (and
/// dies with its parent). Returns the child's pid.
pub fn spawn_waiting_child(flags: u64) -> nix::Result<i32> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    // SAFETY: with no stack given, clone3 duplicates the caller like fork(2). The child
    // (a copy of one thread of a possibly multi-threaded process) calls only prctl, pause
    // and _exit, which take no lock and touch no shared state.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(nix::Error::last()),
        0 => {
            // SAFETY: raw system calls only (see above).
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                loop {
                    libc::pause();
                }
            }
        }
        pid => Ok(pid as i32),
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
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
/// id mapping of `userns` (and read-only when `read_only`).
pub fn idmapped_clone(
    source: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
    read_only: bool,
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
        attr_set: MOUNT_ATTR_IDMAP | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
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
