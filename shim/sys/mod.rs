//! Every raw system call cove makes that `nix` does not wrap safely, each behind a small
//! safe function. Nothing outside this module contains `unsafe`.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::unistd::Pid;

/// Result of [`fork`], mirroring `nix::unistd::ForkResult`.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// Forks the calling process.
///
/// Callers must be single-threaded at this point (cove forks only before its async runtime
/// starts, or inside the pause helper, which never starts threads), so the child may allocate
/// and use the standard library freely.
pub fn fork_single_threaded() -> nix::Result<Forked> {
    // SAFETY: the documented precondition (a single-threaded caller) makes every
    // operation in the child as safe as it was in the parent.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Closes every file descriptor numbered `first` or above.
pub fn close_fds_from(first: RawFd) -> nix::Result<()> {
    // SAFETY: close_range only closes descriptors; callers own every fd at or above
    // `first` and do not use them afterwards.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Drops every capability from the effective, permitted and inheritable sets of the
/// calling thread.
pub fn drop_all_capabilities() -> nix::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data are valid, correctly laid out (version 3 takes two data
    // structs) and outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Clears FD_CLOEXEC so that `fd` survives an exec.
pub fn inherit_across_exec(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD)?);
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFD(flags - FdFlag::FD_CLOEXEC),
    )?;
    Ok(())
}

/// Takes ownership of a descriptor number inherited from the parent process.
///
/// Returns `None` unless `fd` is open in this process.
pub fn adopt_inherited_fd(fd: RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: the fd is open (checked above) and was passed to us by number for us
    // alone to own; nothing else in this process refers to it.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The filesystem magic of nsfs, the filesystem of `/proc/<pid>/ns/*` and their bind mounts.
pub const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether the open file is a namespace file.
pub fn is_namespace_file(fd: BorrowedFd<'_>) -> nix::Result<bool> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    Ok(st.filesystem_type().0 as i64 == NSFS_MAGIC)
}

/// Ends the calling process at once, without running exit handlers or flushing stdio
/// (what a forked child must do).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and takes no pointers.
    unsafe { libc::_exit(code) }
}
