//! What the pause process is, and how it is locked down before any container of its pod
//! can see it. The pause is cloned from the pause helper, and the helper is made clean and
//! confined once, when the shim starts, on either side of one exec:
//!
//! - [`start_helper`] runs in the helper the shim server has just forked (still root, in
//!   the host's namespaces): a new mount namespace in which nothing propagates to or from
//!   the host, a small tmpfs mounted on `/tmp` of that namespace holding one file, a
//!   read-only, nosuid bind mount of the shim binary on it, a descriptor of the host's
//!   `/proc`; then the exec of that file with the argv [`PAUSE_ARGV0`] and no environment.
//!   The exec replaces the shim's memory, argv and environment (which `/proc/1/{cmdline,
//!   environ,mem}` of a pause would show) and makes the executable a file on a read-only
//!   mount, so even a container that may ptrace the pause cannot chmod or write the host's
//!   binary through `/proc/1/exe`.
//! - [`exec_main`] is the re-exec'd helper: it pivots into the tmpfs, detaches the host's
//!   whole tree and the binary's bind mount, removes the file, makes the root read-only,
//!   puts every signal handler back to its default, compiles the pause's seccomp filter,
//!   and serves the shim's requests. The host's files are out of its reach but for
//!   `/proc`, through its descriptor, and what a request passes it (the pod's network
//!   namespace, its cgroups).
//! - [`become_pause`] runs in each pause the helper clones, once it has joined the pod's
//!   cgroups and namespaces: its own mount namespace (a copy of the helper's: the empty
//!   read-only root alone) and cgroup namespace, no descriptor but its readiness pipe, uid
//!   and gid 65535 with no groups and no capabilities (bounding and ambient sets too),
//!   no_new_privs, not dumpable, the seccomp filter; only then does it say it is ready.
//!   It is PID 1 of the pod: it reaps orphans and exits on SIGTERM, SIGINT or SIGHUP.
//!
//! Nothing of the host is left in a pause's mount namespace: `/proc/1/root` and
//! `/proc/1/cwd` are an empty read-only tmpfs, `/proc/1/mountinfo` has that one line. Its
//! memory is the helper's: the binary's, what the standard library's start-up left, and
//! the requests the helper read (the pod's hostname, sysctls and id mappings).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use crate::sys;

/// The pause's argv (its only element): how `main` tells the re-exec'd pause from a shim.
pub const PAUSE_ARGV0: &str = "cove-pause";
/// The ids the pause runs as: those of the Kubernetes pause image (`USER 65535:65535`).
pub const PAUSE_UID: u32 = 65535;
pub const PAUSE_GID: u32 = 65535;

/// The descriptors the re-exec'd helper finds: its request socket, the directory its root
/// is mounted on and the host's `/proc`. 0-2 are an empty pipe (the standard library of
/// the new image expects them open); each pause closes them.
const HELPER_FD: i32 = 3;
const ROOT_FD: i32 = 4;
const PROC_FD: i32 = 5;
/// The pause's readiness pipe, the one descriptor it keeps.
const READY_FD: i32 = 3;
/// The binary's name inside the helper's root, while it is mounted there.
const EXE_NAME: &str = "pause";
/// The helper's (and so the pause's) root: one inode for the file above, a few pages at
/// most, no device nodes, no setuid, nothing to execute once the binary is gone.
const ROOT_OPTIONS: &str = "size=4k,nr_inodes=4,mode=0555";

/// Runs in the freshly forked helper: confines and execs it (never returns). A helper that
/// cannot be made so answers every request with the reason.
pub(super) fn start_helper(stream: OwnedFd) -> ! {
    let _ = nix::unistd::setsid();
    match prepare() {
        Ok((exe, root_dir, proc_dir, empty)) => sys::exec_alone(
            &exe,
            &[c"cove-pause"],
            &[
                (empty.as_fd(), 0),
                (empty.as_fd(), 1),
                (empty.as_fd(), 2),
                (stream.as_fd(), HELPER_FD),
                (root_dir.as_fd(), ROOT_FD),
                (proc_dir.as_fd(), PROC_FD),
            ],
        ),
        Err(e) => sys::run_alone_with(stream, HELPER_FD, true, e, super::refuse_requests),
    }
}

/// Tells the helper (or setup child) why the pause could not be made, and exits.
pub(super) fn fail(ready: OwnedFd, why: &str) -> ! {
    let _ = File::from(ready).write_all(why.as_bytes());
    sys::exit_now(1)
}

trait Step<T> {
    /// Names the step that failed.
    fn step(self, what: &str) -> Result<T, String>;
}

impl<T> Step<T> for nix::Result<T> {
    fn step(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Whether this binary is statically linked (glibc's `crt-static`, as `make build` and
/// `make release` link it). A dynamically linked pause would map the host's shared
/// libraries (libc, the loader) from their host mounts, and a container allowed to
/// ptrace it and holding CAP_CHECKPOINT_RESTORE could open those mappings for writing
/// through `/proc/1/map_files`: a write to the node's libc. A static pause maps only its
/// own binary, from a read-only mount.
const STATIC: bool = cfg!(target_feature = "crt-static");

/// Why a dynamically linked shim makes no pause.
const DYNAMIC_REFUSED: &str = "this containerd-shim-cove-v1 is dynamically linked, and its \
     pause would map the host's shared libraries where a container could reach them \
     (/proc/1/map_files); build it statically (make build, or RUSTFLAGS=\"-C \
     target-feature=+crt-static\" cargo build --release --target <triple>)";

/// Where the pause's root is mounted inside its own mount namespace: a directory every
/// host has and whose name says nothing about it. The name shows in the pause's own
/// `/proc/self/maps` while its runtime starts (glibc reads it to find the main stack), and
/// so stays in its freed memory, which a container allowed to ptrace the pause could read;
/// the sandbox directory would put the pod's host path there. Hosts without it use the
/// sandbox directory.
const NEUTRAL_MOUNT_POINT: &str = "/tmp";

type Prepared = (std::ffi::CString, OwnedFd, OwnedFd, OwnedFd);

fn prepare() -> Result<Prepared, String> {
    if !STATIC {
        return Err(DYNAMIC_REFUSED.into());
    }
    let neutral = Path::new(NEUTRAL_MOUNT_POINT);
    let cwd;
    let root = if neutral.is_dir() {
        neutral
    } else {
        cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
        &cwd
    };
    // The binary by path: a bind mount's source must be in the caller's mount namespace,
    // and this process's executable is still held through the host's.
    let host_exe =
        std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    if host_exe.to_string_lossy().ends_with(" (deleted)") {
        return Err(format!(
            "the running shim's binary {} was replaced or removed on disk; a new shim serves new pods",
            host_exe.display()
        ));
    }
    let want = nix::sys::stat::stat("/proc/self/exe").step("stat /proc/self/exe")?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).step("unshare the mount namespace")?;
    // Nothing mounted from here on reaches the host, nor the other way round.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .step("make the mount namespace private")?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(ROOT_OPTIONS),
    )
    .step("mount the pause root")?;
    let exe = root.join(EXE_NAME);
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&exe)
            .map_err(|e| format!("create {}: {e}", exe.display()))?,
    );
    mount(
        Some(&host_exe),
        &exe,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| match e {
        // In a user-namespaced pod this process is the pod's root: an unprivileged id on
        // the host, which must be able to reach the binary.
        nix::Error::EACCES => format!(
            "bind the shim binary: {e}: every directory on the path of {} must be \
             searchable (x) by others for user-namespaced pods",
            host_exe.display()
        ),
        e => format!("bind the shim binary: {e}"),
    })?;
    mount(
        None::<&str>,
        &exe,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .step("make the binary's mount read-only")?;
    let got = nix::sys::stat::stat(&exe).step("stat the bound binary")?;
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino) {
        return Err(format!(
            "{} is no longer the running shim's binary (replaced on disk?)",
            host_exe.display()
        ));
    }
    let root_dir = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root)
            .map(OwnedFd::from)
            .map_err(|e| format!("open {}: {e}", root.display()))?
    };
    let proc_dir = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
            .open("/proc")
            .map(OwnedFd::from)
            .map_err(|e| format!("open /proc: {e}"))?
    };
    let (empty, writer) = nix::unistd::pipe().step("pipe")?;
    drop(writer);
    // Exec'd through the root's descriptor (placed at ROOT_FD by then), so that the
    // filename the kernel keeps on the new stack (AT_EXECFN) names no host path.
    let exe = std::ffi::CString::new(format!("/proc/self/fd/{ROOT_FD}/{EXE_NAME}"))
        .map_err(|_| "exec path".to_string())?;
    Ok((exe, root_dir, proc_dir, empty))
}

/// The re-exec'd helper: `main` calls this when its argv is exactly [`PAUSE_ARGV0`].
pub fn exec_main() -> ! {
    // fds 3-5 were placed, inheritable, by `start_helper` for this process alone.
    let Some(stream) = sys::adopt_inherited(HELPER_FD) else {
        sys::exit_now(1)
    };
    let (root, proc) = (sys::adopt_inherited(ROOT_FD), sys::adopt_inherited(PROC_FD));
    let made = match (root, proc) {
        (Some(root), Some(proc)) => confine_helper(root).and_then(|()| {
            let filter = seccomp_program().map_err(|e| format!("seccomp filter: {e}"))?;
            let oom_score_adj =
                crate::oom_score::lower_own_towards_at(proc.as_fd(), crate::oom_score::PAUSE_SCORE)
                    .map_err(|e| format!("set oom_score_adj: {e}"))?;
            Ok(super::Helper {
                proc,
                filter,
                oom_score_adj,
            })
        }),
        _ => Err("the helper was not given its root and /proc".into()),
    };
    match made {
        Ok(helper) => super::serve_requests(stream, helper),
        Err(e) => super::refuse_requests(stream, e),
    }
}

/// The helper, once exec'd: into the tmpfs, with the host's tree detached behind it.
fn confine_helper(root: OwnedFd) -> Result<(), String> {
    nix::unistd::fchdir(root.as_raw_fd()).step("enter the pause root")?;
    drop(root);
    nix::unistd::pivot_root(".", ".").step("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).step("detach the host's tree")?;
    nix::unistd::chdir("/").step("chdir /")?;
    // The binary is in use as this process's executable; its mount goes, and with it the
    // last path to a host file.
    umount2(EXE_NAME, MntFlags::MNT_DETACH).step("detach the binary")?;
    nix::unistd::unlink(EXE_NAME).step("remove the binary's mount point")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .step("make the pause root read-only")?;
    // Inherited by every pause: in a pid namespace's init a default action is ignored for
    // signals sent from inside the namespace, so no signal from a container reaches a
    // handler (the standard library installs some for SIGSEGV and SIGBUS).
    sys::reset_signal_handlers().step("reset signal handlers")?;
    nix::sys::prctl::set_name(c"cove-helper").step("set the name")?;
    Ok(())
}

/// Runs in a pause once it is in the pod's cgroups and namespaces (never returns; exits 1
/// on failure, which its maker reports as a pause that died during setup): its own mount
/// and cgroup namespaces, then nothing but the readiness pipe.
pub(super) fn become_pause(
    ready: OwnedFd,
    filter: &seccompiler::BpfProgram,
    oom_score_adj: i32,
) -> ! {
    // The cgroup namespace is rooted at the cgroup it has just joined.
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP) {
        fail(ready, &format!("unshare mount and cgroup namespaces: {e}"));
    }
    // Written in one piece once it is confined: readiness and the OOM score it runs with.
    let said = format!("1 {oom_score_adj}").into_bytes();
    sys::run_alone_with(ready, READY_FD, false, (filter.clone(), said), pause_main)
}

fn pause_main(ready: OwnedFd, (filter, said): (seccompiler::BpfProgram, Vec<u8>)) -> ! {
    if let Err(e) = drop_identity() {
        fail(ready, &e);
    }
    let waited = waited_signals();
    // From here on only the calls the filter allows: one write and a close of fd 3, made
    // directly (std's descriptor types may check a descriptor with fcntl on drop).
    if seccompiler::apply_filter(&filter).is_err()
        || nix::unistd::write(&ready, &said) != Ok(said.len())
    {
        sys::exit_now(1);
    }
    let _ = nix::unistd::close(ready.into_raw_fd());
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => reap_orphans(),
            Ok(_) => sys::exit_now(0),
            Err(_) => continue,
        }
    }
}

fn drop_identity() -> Result<(), String> {
    // The bounding set needs CAP_SETPCAP, so it goes while the process is root; the uid
    // change then clears the permitted and effective sets, and capset makes sure.
    sys::drop_bounding_and_ambient_capabilities().step("drop the bounding set")?;
    nix::unistd::setgroups(&[]).step("setgroups")?;
    let (uid, gid) = (Uid::from_raw(PAUSE_UID), Gid::from_raw(PAUSE_GID));
    nix::unistd::setresgid(gid, gid, gid).step("setresgid")?;
    nix::unistd::setresuid(uid, uid, uid).step("setresuid")?;
    sys::drop_all_capabilities().step("capset")?;
    nix::sys::prctl::set_no_new_privs().step("no_new_privs")?;
    nix::sys::prctl::set_dumpable(false).step("not dumpable")?;
    nix::sys::prctl::set_name(c"cove-pause").step("set the name")?;
    Ok(())
}

/// The signals the pause acts on. Blocked signals are queued even for a pid-namespace init,
/// which would otherwise drop signals it has no handler for; sigwait then receives them.
fn waited_signals() -> SigSet {
    let mut waited = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        waited.add(s);
    }
    if waited.thread_block().is_err() {
        sys::exit_now(1);
    }
    waited
}

fn reap_orphans() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// The system calls the pause makes once it is confined, and nothing else: waiting for a
/// signal, reaping, one write of its readiness byte to fd 3 and its close, and exiting.
/// Any other call kills it (a pause that did something else was not running this code).
fn seccomp_rules() -> Result<BTreeMap<i64, Vec<seccompiler::SeccompRule>>, seccompiler::BackendError>
{
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let only_ready_fd = vec![SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        READY_FD as u64,
    )?])?];
    let mut rules = BTreeMap::new();
    for nr in [
        libc::SYS_rt_sigtimedwait,
        libc::SYS_wait4,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigreturn,
        libc::SYS_restart_syscall,
    ] {
        rules.insert(nr, Vec::new());
    }
    rules.insert(libc::SYS_write, only_ready_fd.clone());
    rules.insert(libc::SYS_close, only_ready_fd);
    Ok(rules)
}

fn target_arch() -> Option<seccompiler::TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(seccompiler::TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(seccompiler::TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Some(seccompiler::TargetArch::riscv64)
    } else {
        None
    }
}

fn seccomp_program() -> Result<seccompiler::BpfProgram, String> {
    let arch = target_arch().ok_or("no seccomp filter for this architecture")?;
    let filter = seccompiler::SeccompFilter::new(
        seccomp_rules().map_err(|e| e.to_string())?,
        seccompiler::SeccompAction::KillProcess,
        seccompiler::SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test builds link dynamically: the pause refuses before it touches a namespace.
    #[cfg(not(target_feature = "crt-static"))]
    #[test]
    fn a_dynamically_linked_shim_makes_no_pause() {
        let refused = prepare().map(drop).unwrap_err();
        assert_eq!(refused, DYNAMIC_REFUSED);
        assert!(refused.contains("map_files"));
    }

    #[test]
    fn the_filter_compiles_for_this_architecture() {
        let prog = seccomp_program().unwrap();
        assert!(!prog.is_empty());
    }

    #[test]
    fn the_filter_allows_only_the_pause_loop() {
        let rules = seccomp_rules().unwrap();
        let allowed: Vec<i64> = rules.keys().copied().collect();
        for nr in [
            libc::SYS_execve,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_mount,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_kill,
            libc::SYS_process_vm_writev,
            libc::SYS_read,
        ] {
            assert!(!allowed.contains(&nr), "syscall {nr} must not be allowed");
        }
        assert!(
            rules[&libc::SYS_write].len() == 1,
            "write only to the ready fd"
        );
    }

    #[test]
    fn argv0_matches_the_exec() {
        assert_eq!(PAUSE_ARGV0.as_bytes(), c"cove-pause".to_bytes());
    }
}
