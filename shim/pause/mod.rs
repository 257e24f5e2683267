//! The pause process: how it is created and what it does as PID 1 of the pod.
//!
//! The shim server forks a **pause helper** while it is still single-threaded, before its
//! async runtime starts (design rule 4). The helper waits on a socket for one JSON request
//! per line. For each it forks a setup child that joins the pod cgroup, enters the pod
//! network namespace, unshares UTS/IPC/PID as asked, sets the hostname, the sysctls and the
//! OOM score, and forks the pause process: PID 1 of the new pid namespace. The setup child
//! lives outside that pid namespace, so the pod never sees it, and exits once the pause is
//! ready; the pause is reparented to the shim (a child subreaper) whose reaper sees its
//! exit.
//!
//! A container of a pod with a shared pid namespace reads `/proc/1/*` of the pause, so the
//! pause is confined before it says it is ready (see `confine.rs` and docs/security.md):
//! its own mount and cgroup namespaces, an empty read-only tmpfs as its root and cwd, the
//! shim binary re-exec'd through a read-only bind mount with no environment and the argv
//! `cove-pause`, then not dumpable, uid and gid 65535 with no groups and no capabilities,
//! no_new_privs, and a seccomp filter that lets it do nothing but wait for signals and
//! reap.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitPidFlag};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sys::{self, Forked};

mod confine;
pub use confine::{exec_main, PAUSE_ARGV0, PAUSE_GID, PAUSE_UID};

/// The process name the pause process shows in `ps -o comm` and `/proc/PID/comm`.
pub const PAUSE_COMM: &str = "cove-pause";

/// What the pause process must look like: the request the shim sends the helper, one JSON
/// line each (the same binary on both ends, so the message needs no version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseConfig {
    /// Network namespace to join; `None` keeps the shim's (the host's).
    pub netns: Option<PathBuf>,
    pub new_uts: bool,
    pub new_ipc: bool,
    pub new_pid: bool,
    /// Set inside the new UTS namespace; requires `new_uts`.
    pub hostname: Option<String>,
    /// `(key, value)` written under `/proc/sys` inside the pod namespaces.
    pub sysctls: Vec<(String, String)>,
    /// The pause process's cgroup directory in every hierarchy.
    pub cgroups: Vec<PathBuf>,
    /// The pod's user namespace (`hostUsers: false`): the pause is created in a new one
    /// with these mappings; `None` keeps the host's.
    pub userns: Option<crate::idmap::Mappings>,
    /// Where the pause's empty root is mounted inside its own mount namespace on a host
    /// without `/tmp` (the sandbox's bundle): nothing is mounted there in the host's.
    pub root: PathBuf,
}

/// A pause process as the helper made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Its host pid.
    pub pid: i32,
    /// The `oom_score_adj` it runs with: [`crate::oom_score::PAUSE_SCORE`], or the
    /// nearest the kernel allowed.
    pub oom_score_adj: i32,
}

/// Marks, in the text of a pause that could not be made, a request the kernel refused as
/// such (a sysctl a user-namespaced pod may not set): INVALID_ARGUMENT, not INTERNAL.
const REFUSED_INPUT: &str = "[refused] ";

/// The helper's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    Started(Started),
    Error(String),
}

/// The shim's end of a freshly forked pause helper.
pub struct HelperHandle {
    stream: UnixStream,
    pid: i32,
}

/// Forks the pause helper. Must be called while the process is single-threaded.
pub fn fork_helper() -> std::io::Result<HelperHandle> {
    let (ours, theirs) = UnixStream::pair()?;
    match sys::fork()? {
        Forked::Child => {
            drop(ours);
            helper_main(theirs)
        }
        Forked::Parent(pid) => Ok(HelperHandle {
            stream: ours,
            pid: pid.as_raw(),
        }),
    }
}

/// The shim-side client of the pause helper.
pub struct PauseSpawner {
    conn: tokio::sync::Mutex<Option<Conn>>,
}

struct Conn {
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    pid: i32,
}

impl PauseSpawner {
    /// Wraps a helper handle; needs a tokio runtime.
    pub fn new(handle: HelperHandle) -> std::io::Result<Self> {
        handle.stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(handle.stream)?;
        let (r, w) = stream.into_split();
        Ok(PauseSpawner {
            conn: tokio::sync::Mutex::new(Some(Conn {
                reader: tokio::io::BufReader::new(r),
                writer: w,
                pid: handle.pid,
            })),
        })
    }

    /// Creates a pause process.
    pub async fn spawn(&self, cfg: &PauseConfig) -> Result<Started> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut guard = self.conn.lock().await;
        let conn = guard.as_mut().ok_or_else(|| {
            Error::FailedPrecondition("this shim has already created its pause process".into())
        })?;
        let mut req = serde_json::to_string(cfg)
            .map_err(|e| Error::Internal(format!("encode pause request: {e}")))?;
        req.push('\n');
        let helper = conn.pid;
        let lost = |e: std::io::Error| Error::io(format!("pause helper (pid {helper})"), e);
        let mut line = String::new();
        let asked = tokio::time::timeout(HELPER_TIMEOUT, async {
            conn.writer.write_all(req.as_bytes()).await.map_err(lost)?;
            conn.reader.read_line(&mut line).await.map_err(lost)
        })
        .await;
        let read = match asked {
            Ok(r) => r?,
            Err(_) => {
                // Its setup child bounds its own wait for the pause; a helper that still
                // has not answered is stuck (a netns path that never opens): it goes, and
                // this shim makes no more pauses.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(helper),
                    nix::sys::signal::Signal::SIGKILL,
                );
                guard.take();
                return Err(Error::DeadlineExceeded(format!(
                    "pause helper (pid {helper}) did not answer within {}s; killed",
                    HELPER_TIMEOUT.as_secs()
                )));
            }
        };
        if read == 0 {
            return Err(Error::Internal(format!(
                "pause helper (pid {helper}) exited without answering"
            )));
        }
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Started(p)) if p.pid > 0 => Ok(p),
            Ok(Reply::Started(p)) => Err(Error::Internal(format!(
                "pause helper returned pid {}",
                p.pid
            ))),
            Ok(Reply::Error(msg)) if msg.contains(REFUSED_INPUT) => Err(Error::InvalidArgument(
                format!("create pause process: {}", msg.replace(REFUSED_INPUT, "")),
            )),
            Ok(Reply::Error(msg)) => Err(Error::Internal(format!("create pause process: {msg}"))),
            Err(e) => Err(Error::Internal(format!(
                "pause helper answered {line:?}: {e}"
            ))),
        }
    }

    /// The helper's pid, while it can still make the pause.
    pub async fn helper_pid(&self) -> Option<i32> {
        self.conn.lock().await.as_ref().map(|c| c.pid)
    }

    /// Lets the helper exit; later `spawn` calls fail.
    pub async fn close(&self) {
        self.conn.lock().await.take();
    }
}

// ---------------------------------------------------------------------------------------
// Everything below runs in the forked helper, its setup child or the pause process: plain
// single-threaded processes with no async runtime.

/// The helper's descriptor for its request stream after it tidies its fd table.
const HELPER_FD: i32 = 3;

fn helper_main(stream: UnixStream) -> ! {
    // Keep only stdio and the request stream: the helper must not hold the shim's
    // listening socket, its readiness pipe or the log fifo open.
    sys::run_alone(stream.into(), HELPER_FD, serve_requests)
}

fn serve_requests(stream: OwnedFd) -> ! {
    let stream = UnixStream::from(stream);
    let _ = nix::unistd::setsid();
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => sys::exit_now(0),
            Ok(_) => {}
        }
        let reply = match serde_json::from_str::<PauseConfig>(&line) {
            Ok(cfg) => match create_pause(&cfg) {
                Ok(p) => Reply::Started(p),
                Err(e) => Reply::Error(e),
            },
            Err(e) => Reply::Error(format!("bad pause request: {e}")),
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() {
            sys::exit_now(0);
        }
    }
}

/// Runs in the helper: forks the setup child and reports the pause process it created.
fn create_pause(cfg: &PauseConfig) -> std::result::Result<Started, String> {
    let netns = match &cfg.netns {
        Some(p) => Some(open_netns(p).map_err(|e| format!("open netns {}: {e}", p.display()))?),
        None => None,
    };
    if cfg.userns.is_none() {
        match clone_pause_directly(cfg, netns.as_ref()) {
            Direct::Done(result) => return result,
            Direct::Unsupported => {}
        }
    }
    let (rd, wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        Forked::Child => {
            drop(rd);
            let result = setup_and_fork_pause(cfg, netns.as_ref());
            let msg = match &result {
                Ok(p) => format!("ok {} {}", p.pid, p.oom_score_adj),
                Err(e) => format!("err {e}"),
            };
            let mut wr = File::from(wr);
            let _ = wr.write_all(msg.as_bytes());
            sys::exit_now(if result.is_ok() { 0 } else { 1 })
        }
        Forked::Parent(child) => {
            drop(wr);
            let mut msg = String::new();
            let _ = File::from(rd).read_to_string(&mut msg);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other,
                }
            };
            if let Some(ok) = msg.strip_prefix("ok ") {
                let mut it = ok.split_whitespace().map(str::parse::<i32>);
                return match (it.next(), it.next()) {
                    (Some(Ok(pid)), Some(Ok(oom_score_adj))) => Ok(Started { pid, oom_score_adj }),
                    _ => Err(format!("bad pause setup result {ok:?}")),
                };
            }
            if let Some(e) = msg.strip_prefix("err ") {
                return Err(e.to_owned());
            }
            Err(format!(
                "pause setup process ended without a result: {status:?}"
            ))
        }
    }
}

/// What [`clone_pause_directly`] did.
enum Direct {
    /// The pause was made, or could not be: the answer for the shim.
    Done(std::result::Result<Started, String>),
    /// This kernel cannot clone it so (no clone3, or no `CLONE_INTO_CGROUP`): the setup
    /// child makes it.
    Unsupported,
}

/// Runs in the helper, for a pod without a user namespace: clones the pause itself, as a
/// child of the shim (`CLONE_PARENT`), so that no setup child is forked and reaped on the
/// way. The pause then does, as its first steps, what the setup child would have done
/// before cloning it (join its v1 cgroups and the pod's network namespace, lower its OOM
/// score): it is still the host's root, in the host's mount namespace, and not yet
/// visible to any container. Its exit is the shim's to reap, as it is once a setup child
/// has gone; the helper only waits (bounded) for its readiness, and kills it when it
/// does not come.
fn clone_pause_directly(cfg: &PauseConfig, netns: Option<&File>) -> Direct {
    let (v1_dirs, v2_dir) = match split_cgroups(&cfg.cgroups) {
        Ok(split) => split,
        Err(e) => return Direct::Done(Err(e)),
    };
    let (ready_rd, ready_wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return Direct::Done(Err(format!("pipe: {e}"))),
    };
    let flags = pod_namespaces(cfg) | CloneFlags::CLONE_PARENT;
    let forked = match sys::fork_with(flags, v2_dir.as_ref().map(|(_, fd)| fd.as_fd())) {
        Err(nix::Error::ENOSYS | nix::Error::EINVAL | nix::Error::E2BIG) => {
            return Direct::Unsupported
        }
        Err(e) => return Direct::Done(Err(format!("clone the pause: {e}"))),
        Ok(f) => f,
    };
    match forked {
        Forked::Child => {
            drop(ready_rd);
            match first_steps(&v1_dirs, netns).and_then(|()| enter_pod(cfg, None)) {
                Ok(()) => confine::prepare_and_exec(ready_wr, &cfg.root),
                Err(e) => confine::fail(ready_wr, &e),
            }
        }
        Forked::Parent(pid) => {
            drop(ready_wr);
            Direct::Done(await_ready(pid, ready_rd, false).and_then(|()| {
                let oom_score_adj = crate::oom_score::read(Some(pid.as_raw() as u32))
                    .map_err(|e| format!("pause process {pid}: read its oom_score_adj: {e}"))?;
                Ok(Started {
                    pid: pid.as_raw(),
                    oom_score_adj,
                })
            }))
        }
    }
}

/// The direct path's pause, first: into its v1 cgroups (through `tasks`, as the setup
/// child does) and the pod's network namespace, and its OOM score lowered (inherited by
/// nothing: it is PID 1 and has no children yet).
fn first_steps(v1_dirs: &[&PathBuf], netns: Option<&File>) -> std::result::Result<(), String> {
    join_v1(v1_dirs)?;
    if let Some(ns) = netns {
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join network namespace: {e}"))?;
    }
    crate::oom_score::lower_own_towards(crate::oom_score::PAUSE_SCORE)
        .map(drop)
        .map_err(|e| format!("set oom_score_adj: {e}"))
}

/// The pause's cgroup directories by version. cgroup v1: the single-threaded process
/// that moves writes 0 to each `tasks` ([`join_v1`]), which spares the kernel the global
/// threadgroup lock (and its RCU grace period) that `cgroup.procs` takes; a process it
/// clones inherits them. cgroup v2 has no such file: its directory is opened, for the
/// pause to be born in it (clone3 CLONE_INTO_CGROUP).
type SplitCgroups<'a> = (Vec<&'a PathBuf>, Option<(&'a PathBuf, OwnedFd)>);

fn split_cgroups(dirs: &[PathBuf]) -> std::result::Result<SplitCgroups<'_>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut v1 = Vec::new();
    let mut v2 = None;
    for dir in dirs {
        if dir.join("tasks").exists() {
            v1.push(dir);
        } else {
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(dir)
                .map_err(|e| format!("open cgroup {}: {e}", dir.display()))?;
            v2 = Some((dir, OwnedFd::from(fd)));
        }
    }
    Ok((v1, v2))
}

/// Moves the calling (single-threaded) process into v1 cgroup directories `dirs`.
fn join_v1(dirs: &[&PathBuf]) -> std::result::Result<(), String> {
    for dir in dirs {
        std::fs::write(dir.join("tasks"), "0")
            .map_err(|e| format!("join cgroup {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// The namespaces the pause is cloned into, other than a user namespace.
fn pod_namespaces(cfg: &PauseConfig) -> CloneFlags {
    let mut flags = CloneFlags::empty();
    flags.set(CloneFlags::CLONE_NEWUTS, cfg.new_uts);
    flags.set(CloneFlags::CLONE_NEWIPC, cfg.new_ipc);
    flags.set(CloneFlags::CLONE_NEWPID, cfg.new_pid);
    flags
}

/// Waits for the pause's readiness byte ("1" once it is confined) or its reason for
/// failing, at most [`PAUSE_READY_TIMEOUT`]; a pause that says nothing by then is
/// killed. `reap`: the pause is the caller's child (the setup child's), to be reaped on
/// failure; else it is the shim's.
fn await_ready(
    pid: nix::unistd::Pid,
    ready_rd: OwnedFd,
    reap: bool,
) -> std::result::Result<(), String> {
    let mut said = Vec::new();
    let ready = File::from(ready_rd);
    let mut pfd = [nix::poll::PollFd::new(
        ready.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let timeout = nix::poll::PollTimeout::try_from(PAUSE_READY_TIMEOUT.as_millis() as i32)
        .unwrap_or(nix::poll::PollTimeout::MAX);
    let polled = loop {
        match nix::poll::poll(&mut pfd, timeout) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    if polled != Ok(0) {
        let _ = (&ready).take(4096).read_to_end(&mut said);
    } else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        if reap {
            let _ = waitpid(pid, None);
        }
        return Err(format!(
            "pause process {pid} was not ready within {}s; killed",
            PAUSE_READY_TIMEOUT.as_secs()
        ));
    }
    if said == b"1" {
        return Ok(());
    }
    let status = if reap {
        format!(": {:?}", waitpid(pid, Some(WaitPidFlag::WNOHANG)))
    } else {
        String::new()
    };
    if said.is_empty() {
        return Err(format!("pause process {pid} died during setup{status}"));
    }
    Err(format!(
        "pause process {pid}: {}",
        String::from_utf8_lossy(&said)
    ))
}

/// How long the shim waits for the pause helper's answer: the setup child's own bound on
/// the pause, and as long again for everything before it.
const HELPER_TIMEOUT: std::time::Duration = PAUSE_READY_TIMEOUT.saturating_mul(2);

/// How long the setup child waits for the pause to confine itself and say it is ready (an
/// exec and a few dozen system calls; seconds under emulation).
const PAUSE_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs in the setup child: enters the pod's namespaces and cgroup, forks the pause process.
fn setup_and_fork_pause(
    cfg: &PauseConfig,
    netns: Option<&File>,
) -> std::result::Result<Started, String> {
    // The pause inherits the v1 cgroups this child joins, and is born in the v2 one.
    let (v1_dirs, mut v2_dir) = split_cgroups(&cfg.cgroups)?;
    join_v1(&v1_dirs)?;
    if let Some(ns) = netns {
        // Joined while still the host's root: a network namespace CRI made inside a user
        // namespace of its own is not one the pod's user namespace may enter.
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join network namespace: {e}"))?;
    }
    let join_procs = |dir: &PathBuf| {
        std::fs::write(dir.join("cgroup.procs"), "0")
            .map_err(|e| format!("join cgroup {}: {e}", dir.display()))
    };
    let mut flags = pod_namespaces(cfg);
    // The pod's user namespace is made in the same clone, so that it owns the UTS, IPC
    // and PID namespaces (and the mount and cgroup ones the pause makes next).
    flags.set(CloneFlags::CLONE_NEWUSER, cfg.userns.is_some());
    // Inherited by the pause across its clone and exec.
    let oom_score_adj = crate::oom_score::lower_own_towards(crate::oom_score::PAUSE_SCORE)
        .map_err(|e| format!("set oom_score_adj: {e}"))?;
    // CRI creates a user-namespaced pod's network namespace inside a user namespace with
    // the pod's mappings: that one is the pod's (as the runc pod path's pause container
    // joins it), so that the pod's root owns its network namespace (sysfs, net sysctls).
    // Joined last: this process is no longer the host's root afterwards.
    if let (Some(maps), Some(ns)) = (&cfg.userns, netns) {
        let owner = sys::owning_user_namespace(ns.as_fd())
            .map_err(|e| format!("the network namespace's user namespace: {e}"))?;
        let host = nix::sys::stat::stat("/proc/self/ns/user")
            .map_err(|e| format!("stat /proc/self/ns/user: {e}"))?;
        let same = |fd: &OwnedFd| {
            nix::sys::stat::fstat(fd.as_raw_fd())
                .map(|st| (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino))
                .map_err(|e| format!("stat a user namespace: {e}"))
        };
        if !same(&owner)? {
            // What CRI makes: a child of the host's user namespace, created by root
            // (containerd 2.1, 2.2) or by the pod's root id (2.3 on). Its maps are read
            // from inside it below, relative to that parent.
            let parent = sys::parent_user_namespace(owner.as_fd())
                .map_err(|e| format!("the parent of the netns's user namespace: {e}"))?;
            let creator = sys::user_namespace_creator(owner.as_fd())
                .map_err(|e| format!("the creator of the netns's user namespace: {e}"))?;
            let pod_root = maps.host_uid(0);
            if !same(&parent)? || (creator != 0 && Some(creator) != pod_root) {
                return Err(format!(
                    "the pod's network namespace belongs to a user namespace that is not a \
                     child of the host's made by root or by the pod's root (creator uid \
                     {creator})"
                ));
            }
            if let Some((dir, _)) = v2_dir.take() {
                join_procs(dir)?;
            }
            // Nothing of this process is readable through /proc by the pod once it is in
            // the pod's user namespace.
            nix::sys::prctl::set_dumpable(false).map_err(|e| format!("not dumpable: {e}"))?;
            nix::sched::setns(owner.as_fd(), CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("join the network namespace's user namespace: {e}"))?;
            maps.check_own().map_err(|e| {
                format!("the pod's network namespace belongs to another user namespace: {e}")
            })?;
            flags.remove(CloneFlags::CLONE_NEWUSER);
        }
    }
    let (ready_rd, ready_wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // The pause waits on this until its user namespace is mapped (EOF: go on).
    let (mapped_rd, mapped_wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let forked = match &v2_dir {
        Some((dir, fd)) => match sys::fork_with(flags, Some(fd.as_fd())) {
            Err(nix::Error::EINVAL | nix::Error::E2BIG) => {
                join_procs(dir)?;
                sys::fork_with(flags, None)
            }
            r => r,
        },
        None => sys::fork_with(flags, None),
    };
    // No clone3 (Linux before 5.3): unshare, then fork. A user namespace needs clone3.
    let forked = match forked {
        Err(nix::Error::ENOSYS) if cfg.userns.is_none() => {
            if let Some((dir, _)) = &v2_dir {
                join_procs(dir)?;
            }
            if !flags.is_empty() {
                nix::sched::unshare(flags).map_err(|e| format!("unshare {flags:?}: {e}"))?;
            }
            sys::fork()
        }
        r => r,
    };
    match forked.map_err(|e| format!("fork pause: {e}"))? {
        Forked::Child => {
            drop(ready_rd);
            drop(mapped_wr);
            match enter_pod(cfg, Some(mapped_rd)) {
                Ok(()) => confine::prepare_and_exec(ready_wr, &cfg.root),
                Err(e) => confine::fail(ready_wr, &e),
            }
        }
        Forked::Parent(pid) => {
            drop(ready_wr);
            drop(mapped_rd);
            if let (Some(maps), true) = (&cfg.userns, flags.contains(CloneFlags::CLONE_NEWUSER)) {
                if let Err(e) = maps.write_for(pid.as_raw()) {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Err(format!("map the pod's user namespace: {e}"));
                }
            }
            drop(mapped_wr);
            // "1" once it is confined, or why it could not be; then EOF either way. A pause
            // that says nothing within PAUSE_READY_TIMEOUT is killed: StartSandbox (and the
            // pod's lock it holds) must not wait on it forever.
            await_ready(pid, ready_rd, true).map(|()| Started {
                pid: pid.as_raw(),
                oom_score_adj,
            })
        }
    }
}

/// Runs in the new pause, before it confines itself: once its user namespace (if any) is
/// mapped, it becomes root there, then sets the pod's hostname and sysctls, with the
/// kernel's checks for that namespace (a sysctl that needs the host's is refused, as on
/// the runc pod path, where the pause container's init writes them).
fn enter_pod(cfg: &PauseConfig, mapped: Option<OwnedFd>) -> std::result::Result<(), String> {
    if let (Some(_), Some(mapped)) = (&cfg.userns, &mapped) {
        let mut b = [0u8; 1];
        // EOF once the setup process wrote the maps (it kills this process if it could not).
        loop {
            match nix::unistd::read(mapped.as_raw_fd(), &mut b) {
                Err(nix::Error::EINTR) => continue,
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => return Err(format!("wait for the user namespace's maps: {e}")),
            }
        }
        let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(gid, gid, gid)
            .map_err(|e| format!("become root in the pod's user namespace (gid): {e}"))?;
        nix::unistd::setresuid(uid, uid, uid)
            .map_err(|e| format!("become root in the pod's user namespace (uid): {e}"))?;
    }
    drop(mapped);
    if let Some(h) = &cfg.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("set hostname {h:?}: {e}"))?;
    }
    for (key, value) in &cfg.sysctls {
        let path = sysctl_path(key);
        if let Err(e) = std::fs::write(&path, value) {
            use std::io::ErrorKind::{NotFound, PermissionDenied};
            // The kernel hides some network sysctls (net.core.somaxconn, for one) from a
            // network namespace a user namespace owns, and refuses others to it.
            return Err(match e.kind() {
                PermissionDenied | NotFound if cfg.userns.is_some() => format!(
                    "{REFUSED_INPUT}set sysctl {key}={value}: {e}: a user-namespaced pod may \
                     not set it (it needs the host's user namespace)"
                ),
                _ => format!("set sysctl {key}={value}: {e}"),
            });
        }
    }
    Ok(())
}

/// Opens a network namespace file without blocking (a fifo put at its path opens at once
/// and is then refused as not a namespace file).
pub fn open_netns(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// `/proc/sys` path of a sysctl written with dots (`net.ipv4.ip_forward`) or slashes.
pub fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    PathBuf::from("/proc/sys").join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip_and_bad_ones_fail() {
        let cfg = PauseConfig {
            netns: Some("/var/run/netns/cni-1".into()),
            new_uts: true,
            new_ipc: true,
            new_pid: false,
            hostname: Some("web-0".into()),
            sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())],
            cgroups: vec!["/sys/fs/cgroup/memory/p".into()],
            userns: Some(crate::idmap::Mappings {
                uids: vec![crate::idmap::Extent {
                    inside: 0,
                    host: 65536,
                    length: 65536,
                }],
                gids: vec![],
            }),
            root: "/run/containerd/b".into(),
        };
        let line = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<PauseConfig>(&line).unwrap(), cfg);
        assert!(serde_json::from_str::<PauseConfig>("{not json").is_err());
        // A wrong type is an error, not an absent field.
        assert!(serde_json::from_str::<PauseConfig>(r#"{"new_uts":"yes"}"#).is_err());
        let started = Started {
            pid: 42,
            oom_score_adj: -998,
        };
        for r in [Reply::Started(started), Reply::Error("no".into())] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), r);
        }
    }

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
    }
}
