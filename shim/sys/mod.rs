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

/// Like [`fork_single_threaded`], with the child born in the cgroup v2 directory open as
/// `cgroup` (clone3 with `CLONE_INTO_CGROUP`, Linux 5.7+). Being born there costs the
/// kernel no migration: writing a pid into `cgroup.procs` takes a global lock whose first
/// writer waits for an RCU grace period (~10 ms on a busy 2-core VM). Fails with ENOSYS
/// or EINVAL where the kernel cannot do it; callers then join by writing `cgroup.procs`.
pub fn fork_into_cgroup(cgroup: BorrowedFd<'_>) -> nix::Result<Forked> {
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
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.as_raw_fd() as u64,
    };
    // SAFETY: with no stack given, clone3 duplicates the caller like fork(2) and both
    // return here. The precondition of fork_single_threaded (one thread, so no lock is
    // held by another) makes the child as safe as after fork(2); the args outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(nix::Error::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(nix::unistd::Pid::from_raw(pid as i32))),
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

/// Sets FD_CLOEXEC so that `fd` does not survive an exec.
pub fn close_on_exec(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD)?);
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC),
    )?;
    Ok(())
}

/// Marks every open descriptor from `first` up close-on-exec: whatever a process inherited
/// (from containerd, or whoever started containerd) then stays out of what it runs.
pub fn close_on_exec_from(first: RawFd) -> nix::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it
    // closes nothing, so no owner in this process loses its descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk /proc/self/fd.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: the number was listed as open a moment ago; setting FD_CLOEXEC on a
        // descriptor that has since closed fails harmlessly with EBADF.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = close_on_exec(fd);
    }
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

/// Sets a terminal's window size (TIOCSWINSZ).
pub fn set_winsize(fd: BorrowedFd<'_>, ws: &libc::winsize) -> nix::Result<()> {
    // SAFETY: TIOCSWINSZ reads one `winsize` from the valid pointer we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws as *const libc::winsize) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Arranges for `cmd`'s child to find `fds` at descriptors `first`, `first + 1`, ...
/// (inheritable across its exec), as log drivers expect their pipes at 3, 4 and 5.
pub fn pass_fds(cmd: &mut std::process::Command, fds: Vec<RawFd>, first: RawFd) {
    use std::os::unix::process::CommandExt;
    let hook = move || -> std::io::Result<()> {
        // Move every source above the targets first, so no dup2 clobbers a later source.
        let mut high = [0 as RawFd; 8];
        let n = fds.len().min(high.len());
        for (slot, fd) in high.iter_mut().zip(&fds[..n]) {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own; async-signal-safe.
            let h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) };
            if h < 0 {
                return Err(std::io::Error::last_os_error());
            }
            *slot = h;
        }
        for (i, h) in high[..n].iter().enumerate() {
            // SAFETY: dup2 is async-signal-safe; the new fd has FD_CLOEXEC cleared.
            if unsafe { libc::dup2(*h, first + i as RawFd) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec, allocates nothing and only makes
    // async-signal-safe calls (fcntl, dup2) on descriptors captured by value.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Receives one descriptor sent with SCM_RIGHTS on a unix socket (runc's console socket).
pub fn recv_fd(sock: RawFd) -> nix::Result<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut got = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in our table for us alone.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    Ok(got)
}

/// Registers an owned descriptor with the async runtime's reactor.
pub fn async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, so the descriptor stays open for as
    // long as it is registered and is closed only after deregistration.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
