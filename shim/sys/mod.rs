//! Every raw system call cove makes that `nix` does not wrap safely. The crate denies
//! `unsafe` everywhere else (`#![deny(unsafe_code)]` in `lib.rs`): this module is the one
//! place it is allowed, and every `unsafe` block here says why it is sound.
//!
//! A call whose soundness depends on its caller is an `unsafe fn` with a `# Safety`
//! section; the rest of cove reaches it only through a safe function here that establishes
//! the precondition itself: [`fork`] checks that the process has one thread,
//! [`adopt_inherited`] that a descriptor was inherited and is unowned, and [`run_alone`]
//! closes descriptors only on the way into a function that never returns.

mod idmap;
pub use idmap::{
    attach_mount, idmapped_clone, spawn_waiting_child, WaitingChild, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::unistd::Pid;

/// Result of a fork, mirroring `nix::unistd::ForkResult`.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// How many threads the calling process has: the link count of `/proc/self/task` less 2
/// (procfs counts one link per thread), through `proc`, a descriptor of a `/proc`
/// directory, where given (the pause helper has no `/proc` of its own). A stat, not a
/// read: no text about the process (its host pids) is left in its memory, which a pause
/// cloned from the helper inherits.
pub fn thread_count(proc: Option<BorrowedFd<'_>>) -> nix::Result<usize> {
    let st = match proc {
        Some(p) => nix::sys::stat::fstatat(
            Some(p.as_raw_fd()),
            "self/task",
            nix::fcntl::AtFlags::empty(),
        )?,
        None => nix::sys::stat::stat("/proc/self/task")?,
    };
    (st.st_nlink as usize)
        .checked_sub(2)
        .filter(|n| *n > 0)
        .ok_or(nix::Error::EIO)
}

/// Forks the calling process, which must have exactly one thread: a child forked from a
/// multi-threaded process could inherit locks held by threads that do not exist in it.
/// Fails with `EDEADLK` (and forks nothing) when the process has more threads.
///
/// cove forks only before its async runtime starts, and inside the pause helper, which
/// never starts threads; the child may then allocate and use the standard library freely.
pub fn fork(proc: Option<BorrowedFd<'_>>) -> nix::Result<Forked> {
    if thread_count(proc)? != 1 {
        return Err(nix::Error::EDEADLK);
    }
    // SAFETY: the process has one thread (checked above), the precondition of
    // fork_single_threaded.
    unsafe { fork_single_threaded() }
}

/// [`fork`], with the child in new namespaces (`namespaces`: `CLONE_NEW*` flags; with
/// `CLONE_NEWUSER` the others are owned by the new user namespace) and, when `cgroup` is
/// given, born in that cgroup v2 directory (see [`clone_into`]). Same precondition check.
pub fn fork_with(
    proc: Option<BorrowedFd<'_>>,
    namespaces: nix::sched::CloneFlags,
    cgroup: Option<BorrowedFd<'_>>,
) -> nix::Result<Forked> {
    if thread_count(proc)? != 1 {
        return Err(nix::Error::EDEADLK);
    }
    // SAFETY: the process has one thread (checked above).
    unsafe { clone_into(namespaces, cgroup) }
}

/// Forks the calling process.
///
/// # Safety
///
/// The calling process must have exactly one thread, so that no lock (the allocator's,
/// stdio's, the environment's) can be held by a thread that the child does not have.
pub unsafe fn fork_single_threaded() -> nix::Result<Forked> {
    // SAFETY: the caller guarantees a single-threaded process, which makes every
    // operation in the child as safe as it was in the parent.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// clone3(2)'s arguments (`struct clone_args`, up to `cgroup`: Linux 5.7).
#[repr(C)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

impl CloneArgs {
    /// A clone like fork(2): no flags, no stack of its own, SIGCHLD at the child's exit.
    pub(crate) fn forking() -> CloneArgs {
        CloneArgs {
            flags: 0,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: 0,
            stack_size: 0,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: 0,
        }
    }
}

/// clone3(2) with `args`: 0 in the child, the child's pid in the parent, -1 on error.
///
/// # Safety
///
/// With no stack given (`args.stack` 0) both processes return here, as after fork(2): the
/// caller makes sure the child does only what is safe in it (one thread, or async-signal-
/// safe calls alone). Pointers in `args` (the pidfd's) must outlive the call.
pub(crate) unsafe fn clone3(args: &CloneArgs) -> libc::c_long {
    // SAFETY: the kernel reads `args` (of the size given) and writes only through the
    // pointers it holds; the rest is the caller's (above).
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    }
}

/// Like [`fork_single_threaded`] (clone3, Linux 5.3+), with the child in new namespaces
/// (and, with `CLONE_PARENT` among `namespaces`, a child of the caller's parent) and,
/// when `cgroup` is given, born in that cgroup v2 directory (`CLONE_INTO_CGROUP`,
/// Linux 5.7+). Being born there costs the kernel no migration: writing a pid into
/// `cgroup.procs` takes a global lock whose first writer waits for an RCU grace period
/// (~10 ms on a busy 2-core VM). Fails with ENOSYS, or EINVAL/E2BIG for the cgroup, where
/// the kernel cannot do it; callers then join by writing `cgroup.procs`.
///
/// # Safety
///
/// As for [`fork_single_threaded`]: the calling process must have exactly one thread.
pub unsafe fn clone_into(
    namespaces: nix::sched::CloneFlags,
    cgroup: Option<BorrowedFd<'_>>,
) -> nix::Result<Forked> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut flags = namespaces.bits() as u32 as u64;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let mut args = CloneArgs {
        flags,
        cgroup: cgroup.map_or(0, |c| c.as_raw_fd() as u64),
        ..CloneArgs::forking()
    };
    if namespaces.contains(nix::sched::CloneFlags::CLONE_PARENT) {
        // The child is the caller's sibling; clone3 takes no exit signal then (EINVAL):
        // the kernel gives the child the caller's own (SIGCHLD for a forked caller).
        args.exit_signal = 0;
    }
    // SAFETY: with no stack given, clone3 duplicates the caller like fork(2) and both
    // return here. The caller's guarantee (one thread, so no lock is held by another)
    // makes the child as safe as after fork(2).
    let ret = unsafe { clone3(&args) };
    match ret {
        -1 => Err(nix::Error::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(nix::unistd::Pid::from_raw(pid as i32))),
    }
}

/// Closes every file descriptor numbered `first` or above.
///
/// # Safety
///
/// The caller owns every descriptor numbered `first` or above, and nothing in the process
/// (an `OwnedFd`, a `File`, a static) uses or closes any of them afterwards: a later close
/// of a number that has been reused would close someone else's descriptor.
pub unsafe fn close_fds_from(first: RawFd) -> nix::Result<()> {
    // SAFETY: close_range only closes descriptors; the caller guarantees that no owner
    // of any of them is left to use it.
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

/// Becomes a process that holds only stdio and `keep`: moves `keep` to descriptor `at`,
/// closes every descriptor above it, and runs `main` with it. Never returns, so no frame
/// of the caller, and no owner of a closed descriptor in it, runs again; `main` is a plain
/// function and carries none. What a forked child (the pause helper, the pause process)
/// calls first. Exits with status 1 if the descriptors cannot be arranged.
///
/// cove holds no descriptor in a static before the server's runtime (and its shim log)
/// starts, which is where these children are forked from.
pub fn run_alone(keep: OwnedFd, at: RawFd, main: fn(OwnedFd) -> !) -> ! {
    fn call(fd: OwnedFd, main: fn(OwnedFd) -> !) -> ! {
        main(fd)
    }
    run_alone_with(keep, at, true, main, call)
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

/// The calling process's soft limit on open descriptors (RLIMIT_NOFILE).
pub fn open_files_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some(r.rlim_cur)
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
///
/// # Safety
///
/// `fd` was handed to this process for the caller alone: no `OwnedFd`, `File` or other
/// owner in the process refers to it, and it is adopted only once.
pub unsafe fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: the fd is open (checked above), and the caller guarantees that nothing else
    // in this process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of descriptor `fd`, which the process that exec'd this one left open
/// for it (the server's listener and readiness pipe, from `start`), and makes it
/// close-on-exec.
///
/// Returns `None` unless `fd` is open and inheritable. That is how an inherited descriptor
/// is told from one this process owns: everything cove opens (through std, tokio and nix)
/// is close-on-exec, so an open descriptor without the flag came across the exec and has
/// no owner here; setting the flag on adoption makes a second adoption fail. Call it
/// before anything marks inherited descriptors close-on-exec.
pub fn adopt_inherited(fd: RawFd) -> Option<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).ok()?);
    if flags.contains(FdFlag::FD_CLOEXEC) {
        return None;
    }
    fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC)).ok()?;
    // SAFETY: the descriptor is open and was inheritable (checked above), so it came
    // across the exec with no owner in this process; it is now close-on-exec, so it is
    // never adopted again.
    unsafe { adopt_inherited_fd(fd) }
}

/// This process's standard input read to its end, at most `limit` bytes; `None` when it
/// is a terminal. `std::io::stdin()` would leave its 8 kB buffer allocated for the life of
/// the process, and the server `start` forks would carry it in every pod.
pub fn read_stdin(limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{IsTerminal, Read};
    // SAFETY: the standard library opens /dev/null on any of fds 0-2 that is closed before
    // main, so fd 0 is open; it is only borrowed here (duplicated, never closed).
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut input = Vec::new();
    match File::from(stdin.try_clone_to_owned()?)
        .take(limit)
        .read_to_end(&mut input)
    {
        // Open, but not for reading: nothing to read, as std's stdin has it.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(Some(Vec::new())),
        Err(e) => Err(e),
        Ok(_) => Ok(Some(input)),
    }
}

/// The filesystem magic of nsfs, the filesystem of `/proc/<pid>/ns/*` and their bind mounts.
pub const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether the open file is a namespace file.
pub fn is_namespace_file(fd: BorrowedFd<'_>) -> nix::Result<bool> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    Ok(st.filesystem_type().0 as i64 == NSFS_MAGIC)
}

/// The user namespace that owns the namespace open as `ns` (`ioctl(NS_GET_USERNS)`,
/// Linux 4.9+); the descriptor is close-on-exec.
pub fn owning_user_namespace(ns: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    ns_ioctl_fd(ns, NS_GET_USERNS)
}

/// The parent of the user namespace open as `userns` (`ioctl(NS_GET_PARENT)`).
pub fn parent_user_namespace(userns: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    const NS_GET_PARENT: libc::c_ulong = 0xb702;
    ns_ioctl_fd(userns, NS_GET_PARENT)
}

fn ns_ioctl_fd(ns: BorrowedFd<'_>, request: libc::c_ulong) -> nix::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: NS_GET_USERNS and NS_GET_PARENT take no argument and return a new
    // descriptor or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), request) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The uid (in the caller's user namespace) that created the user namespace open as
/// `userns` (`ioctl(NS_GET_OWNER_UID)`).
pub fn user_namespace_creator(userns: BorrowedFd<'_>) -> nix::Result<u32> {
    const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which outlives the
    // call.
    let r = unsafe { libc::ioctl(userns.as_raw_fd(), NS_GET_OWNER_UID, &mut uid) };
    if r < 0 {
        return Err(nix::Error::last());
    }
    Ok(uid)
}

/// A descriptor for the process that holds `pid` now (pidfd_open(2), Linux 5.3+; the
/// descriptor is close-on-exec). A signal sent through it reaches that process or, once it
/// has been reaped, nobody: never a later process given the same pid. ESRCH when no
/// process holds `pid`, ENOSYS on an older kernel.
pub fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags (none) by value and touches no memory of
    // ours; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the kernel has just returned this descriptor to this process; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process `pidfd` refers to (pidfd_send_signal(2), Linux 5.1+).
/// ESRCH once that process has been reaped.
pub fn pidfd_send_signal(
    pidfd: BorrowedFd<'_>,
    signal: nix::sys::signal::Signal,
) -> nix::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call (borrowed); a null
    // siginfo makes the kernel fill in one as kill(2) does; no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// How much of the stack below the caller's frame [`release_unused_stack`] keeps: a page
/// for its own call of madvise, far more than that and the ABI's red zone need.
const STACK_KEPT_BELOW: usize = 4096;

/// Gives the kernel back the pages of the main thread's stack that lie below the caller's
/// frame, less [`STACK_KEPT_BELOW`]: a request's deepest calls leave them dirty, and a
/// long-lived process keeps that high-water mark for its whole life otherwise. `maps` is
/// the text of `/proc/self/maps`. Returns the bytes released. Nothing is done unless this
/// frame is in the `[stack]` mapping (the kernel names only the main thread's stack so):
/// that check is the guard, as the thread-id one only covers a thread of this process.
///
/// Sound because nothing in cove lends memory below a live frame of the main thread to
/// anything else (no `CLONE_VM` child or thread is given a stack inside it): below the
/// caller's frame, the main stack holds only frames that have returned. Not inlined, so
/// that `here` is in this function's own frame, above the madvise call's.
#[inline(never)]
pub fn release_unused_stack(maps: &str) -> usize {
    if nix::unistd::gettid() != nix::unistd::getpid() {
        return 0;
    }
    let here = 0u8;
    let sp = std::hint::black_box(&here) as *const u8 as usize;
    let Some((low, _)) = maps
        .lines()
        .filter(|l| l.ends_with(" [stack]"))
        .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
        .filter_map(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .find(|(low, high)| (*low..*high).contains(&sp))
    else {
        return 0;
    };
    let page = 4096;
    let end = sp.saturating_sub(STACK_KEPT_BELOW) & !(page - 1);
    if end <= low || low % page != 0 {
        return 0;
    }
    // SAFETY: [low, end) is part of this thread's own stack mapping and lies wholly below
    // the current frame (by STACK_KEPT_BELOW, well past any red zone): no live frame, and
    // so no Rust object or reference, is in it, and no other thread runs on this stack.
    // MADV_DONTNEED on private anonymous memory only makes those pages read back as zeros
    // when the stack next grows into them, which is what a fresh stack page is.
    let rc = unsafe { libc::madvise(low as *mut libc::c_void, end - low, libc::MADV_DONTNEED) };
    if rc == 0 {
        end - low
    } else {
        0
    }
}

/// Gives the free memory of the allocator's heap back to the kernel (glibc's
/// `malloc_trim(0)`: the free top of the heap, and the whole free pages inside it);
/// whether anything was given back. What a request allocated and freed would otherwise
/// stay resident for the pod's life.
pub fn release_free_heap() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes the allocator's own locks and touches only memory
        // that is free; no Rust object lives in it.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
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

/// The most descriptors [`place_fds`] moves at once.
const MAX_PLACED: usize = 8;

/// Moves each `(source, target)` descriptor to its target number, inheritable across an
/// exec. Sources may repeat and may sit at target numbers: every source is first copied
/// (close-on-exec) above every target, so that no dup2 overwrites a source a later one
/// still needs. Allocates nothing and makes only async-signal-safe calls (fcntl, dup2), so
/// it may run between fork and exec. EINVAL for more than [`MAX_PLACED`] pairs.
fn place_fds(pairs: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    if pairs.len() > MAX_PLACED {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut high = [0 as RawFd; MAX_PLACED];
    for (slot, (src, _)) in high.iter_mut().zip(pairs) {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the caller holds; async-signal-safe.
        let h = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *slot = h;
    }
    for (h, (_, at)) in high.iter().zip(pairs) {
        // SAFETY: dup2 is async-signal-safe; the new descriptor has FD_CLOEXEC cleared.
        if unsafe { libc::dup2(*h, *at) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Arranges for `cmd`'s child to find `fds` at descriptors `first`, `first + 1`, ...
/// (inheritable across its exec), as log drivers expect their pipes at 3, 4 and 5.
pub fn pass_fds(cmd: &mut std::process::Command, fds: Vec<RawFd>, first: RawFd) {
    use std::os::unix::process::CommandExt;
    let pairs: Vec<(RawFd, RawFd)> = fds
        .into_iter()
        .enumerate()
        .map(|(i, fd)| (fd, first + i as RawFd))
        .collect();
    // SAFETY: the hook runs between fork and exec; place_fds allocates nothing and only
    // makes async-signal-safe calls on descriptors captured by value.
    unsafe {
        cmd.pre_exec(move || place_fds(&pairs));
    }
}

/// Receives one descriptor sent with SCM_RIGHTS on a unix socket (runc's console socket).
pub fn recv_fd(sock: RawFd) -> nix::Result<Option<OwnedFd>> {
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
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    Ok(got)
}

/// Registers an owned descriptor with the async runtime's reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, so the descriptor stays open for as
    // long as it is registered and is closed only after deregistration.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Becomes the program at `path`: moves each `(source, target)` descriptor to its target
/// number (inheritable), closes every other descriptor, and execs `path` with `argv` and an
/// empty environment. Never returns; exits with status 127 if anything fails. Sources may
/// repeat (one descriptor at several targets) and may sit at target numbers.
pub fn exec_alone(
    path: &std::ffi::CStr,
    argv: &[&std::ffi::CStr],
    fds: &[(BorrowedFd<'_>, RawFd)],
) -> ! {
    let pairs: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, at)| (f.as_raw_fd(), *at)).collect();
    if place_fds(&pairs).is_err() {
        exit_now(127);
    }
    let last = pairs.iter().map(|(_, at)| *at).fold(2, RawFd::max);
    // SAFETY: this function never returns: the process either becomes `path` or exits, so
    // no owner of a descriptor closed here (the callers' and place_fds' copies) runs again.
    if unsafe { close_fds_from(last + 1) }.is_err() {
        exit_now(127);
    }
    let env: [&std::ffi::CStr; 0] = [];
    let _ = nix::unistd::execve(path, argv, &env);
    exit_now(127)
}

/// Empties the calling thread's capability bounding set (needs CAP_SETPCAP) and its
/// ambient set, so that nothing it runs can regain a capability.
pub fn drop_bounding_and_ambient_capabilities() -> nix::Result<()> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            match nix::Error::last() {
                // Past the last capability the kernel knows.
                nix::Error::EINVAL if cap > 0 => break,
                e => return Err(e),
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integers only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Puts every catchable signal back to its default action. In a pid namespace's init, a
/// default action is ignored for signals sent from inside the namespace, so no signal from
/// a container reaches a handler the process inherited (or that its runtime installed,
/// as Rust's standard library does for SIGSEGV and SIGBUS).
pub fn reset_signal_handlers() -> nix::Result<()> {
    use nix::sys::signal::{SigHandler, Signal};
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL installs no code of ours as a handler, so no handler can run
        // with any of this process's state in an unexpected condition.
        unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }?;
    }
    Ok(())
}

/// Opens `path`, relative to directory `dir` (openat(2)), as a file. The pause helper
/// reaches `/proc` only this way: its own root is an empty tmpfs.
pub fn open_at(dir: BorrowedFd<'_>, path: &str, flags: nix::fcntl::OFlag) -> nix::Result<File> {
    use std::os::fd::FromRawFd;
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        path,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: openat just returned this descriptor to us alone.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The most descriptors one SCM_RIGHTS message carries (the kernel's `SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Receives one message (a SOCK_SEQPACKET record) into `buf` with the descriptors sent
/// along (SCM_RIGHTS, close-on-exec). Returns its length (0: the peer is gone) and the
/// descriptors; a record longer than `buf` is EMSGSIZE.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    // Room for the most descriptors one SCM_RIGHTS message can carry (the kernel's
    // SCM_MAX_FD), so that none is installed without a slot here to be owned from.
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(got) = c {
            for fd in got {
                // SAFETY: the kernel just installed `fd` in our table for us alone.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Err(nix::Error::EMSGSIZE);
    }
    Ok((msg.bytes, fds))
}

/// Sends `data` as one message with `fds` (SCM_RIGHTS).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [std::io::IoSlice::new(data)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != data.len() {
        return Err(nix::Error::EMSGSIZE);
    }
    Ok(())
}

/// [`run_alone`] with state for `main` (which owns no descriptor), and descriptors 0-2
/// closed too when `stdio` is false: what the pause process calls once it has used
/// everything its helper handed it, so that it keeps nothing but its readiness pipe.
pub fn run_alone_with<T>(
    keep: OwnedFd,
    at: RawFd,
    stdio: bool,
    state: T,
    main: fn(OwnedFd, T) -> !,
) -> ! {
    if keep.as_raw_fd() != at {
        if nix::unistd::dup2(keep.as_raw_fd(), at).is_err() {
            exit_now(1);
        }
        drop(keep);
    } else {
        std::mem::forget(keep);
    }
    // SAFETY: as in run_alone: this function never returns, so no frame of the caller
    // (and no owner of a descriptor closed here) runs again; `state` owns no descriptor.
    if unsafe { close_fds_from(at + 1) }.is_err() {
        exit_now(1);
    }
    if !stdio {
        for fd in 0..at.min(3) {
            // SAFETY: as above; the standard descriptors have no owner in cove's code.
            let _ = unsafe { libc::close(fd) };
        }
    }
    // SAFETY: `at` was just made a duplicate that nothing owns, adopted once, here.
    match unsafe { adopt_inherited_fd(at) } {
        Some(fd) => main(fd, state),
        None => exit_now(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn thread_count_follows_the_threads_by_path_and_by_proc_descriptor() {
        let proc = OwnedFd::from(File::open("/proc").unwrap());
        let before = thread_count(None).unwrap();
        assert!(before >= 1);
        assert_eq!(thread_count(Some(proc.as_fd())).unwrap(), before);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv().ok());
        assert_eq!(thread_count(None).unwrap(), before + 1);
        assert_eq!(thread_count(Some(proc.as_fd())).unwrap(), before + 1);
        drop(tx);
        t.join().unwrap();
    }

    /// What was allocated and freed stays resident in the heap until it is given back.
    #[cfg(target_env = "gnu")]
    #[test]
    fn the_heap_pages_freed_inside_are_given_back() {
        fn rss_anon_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        }
        // 8 MB in blocks below the mmap threshold, so they come from the heap, and one
        // block after them that stays: what is freed is inside the heap, not at its top
        // (where free() would trim it by itself).
        let blocks: Vec<Vec<u8>> = (0..8192).map(|i| vec![(i % 251) as u8 + 1; 1000]).collect();
        let kept = vec![1u8; 1000];
        let filled = rss_anon_kb();
        drop(blocks);
        let freed = rss_anon_kb();
        assert!(
            freed + 4096 > filled,
            "free() alone gave the pages back ({filled} kB, then {freed} kB): nothing to test"
        );
        assert!(release_free_heap(), "nothing was given back");
        let after = rss_anon_kb();
        assert!(
            after + 4096 <= freed,
            "RssAnon {freed} kB before, {after} kB after"
        );
        assert_eq!(kept[999], 1);
    }

    #[test]
    fn descriptors_cross_a_seqpacket_pair_with_their_message() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let f = File::open("/dev/null").unwrap();
        send_with_fds(a.as_fd(), b"hello", &[f.as_fd(), f.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        // A record longer than the buffer is refused, not cut.
        send_with_fds(a.as_fd(), &[7u8; 32], &[]).unwrap();
        assert_eq!(
            recv_with_fds(b.as_fd(), &mut buf).err(),
            Some(nix::Error::EMSGSIZE)
        );
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf).unwrap().0, 0);
    }
}
