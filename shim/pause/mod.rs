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
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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

/// What the pause process must look like, as the sandbox asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

/// The request the shim sends the helper: one message on their socket, with the
/// descriptors it names (the network namespace, then each cgroup v1 `tasks` file opened
/// for writing, then the cgroup v2 directory), which the shim opened for it: the helper
/// has no path to the host's files. One binary on both ends: no version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    new_uts: bool,
    new_ipc: bool,
    new_pid: bool,
    hostname: Option<String>,
    sysctls: Vec<(String, String)>,
    userns: Option<crate::idmap::Mappings>,
    netns: bool,
    v1_cgroups: usize,
    v2_cgroup: bool,
}

/// The descriptors that came with a [`Request`].
struct Passed {
    netns: Option<OwnedFd>,
    /// cgroup v1 `tasks` files, open for writing: the single-threaded process that moves
    /// writes 0 to each, which spares the kernel the global threadgroup lock (and its RCU
    /// grace period) that `cgroup.procs` takes; a process it clones inherits them.
    v1: Vec<OwnedFd>,
    /// The cgroup v2 directory, for the pause to be born in it (clone3 CLONE_INTO_CGROUP).
    v2: Option<OwnedFd>,
}

impl Passed {
    fn split(req: &Request, fds: Vec<OwnedFd>) -> std::result::Result<Passed, String> {
        let want = usize::from(req.netns) + req.v1_cgroups + usize::from(req.v2_cgroup);
        if fds.len() != want {
            return Err(format!(
                "bad pause request: {} descriptors for {want}",
                fds.len()
            ));
        }
        let mut it = fds.into_iter();
        let netns = if req.netns { it.next() } else { None };
        let v1 = it.by_ref().take(req.v1_cgroups).collect();
        let v2 = if req.v2_cgroup { it.next() } else { None };
        Ok(Passed { netns, v1, v2 })
    }
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
    /// Made and confined (by a setup child, which waited for it).
    Started(Started),
    /// Cloned: the message carries the read end of the pause's readiness pipe, and the
    /// shim waits for it (so that the reply and the shim's record of the pid overlap with
    /// the pause's confinement).
    Cloned {
        pid: i32,
    },
    Error(String),
}

/// A pause process the helper has made: its pid, and whether it is confined yet.
pub struct Spawned {
    pub pid: i32,
    state: Readiness,
}

enum Readiness {
    /// Ready, with its `oom_score_adj`.
    Ready(i32),
    /// The read end of its readiness pipe.
    Pending(OwnedFd),
}

impl Spawned {
    /// Waits until the pause has confined itself (at most [`PAUSE_READY_TIMEOUT`]; a pause
    /// that is not ready by then is killed), or has said why it could not.
    pub async fn ready(self) -> Result<Started> {
        let pid = self.pid;
        let fd = match self.state {
            Readiness::Ready(oom_score_adj) => return Ok(Started { pid, oom_score_adj }),
            Readiness::Pending(fd) => fd,
        };
        let kill = || {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        let read = tokio::time::timeout(PAUSE_READY_TIMEOUT, read_readiness(fd)).await;
        match read {
            Ok(Ok(said)) => parse_ready(pid, &said),
            // Not killed here: whether it is still this pid's process is not known; the
            // caller undoes the start through the recorded pid and start time.
            Ok(Err(e)) => Err(Error::io(format!("pause process {pid}: readiness pipe"), e)),
            Err(_) => {
                // Still holding its pipe open, so not exited (nor reaped): the shim's
                // child, whose exit its reaper collects.
                kill();
                Err(Error::DeadlineExceeded(format!(
                    "create pause process: pause process {pid} was not ready within {}s; killed",
                    PAUSE_READY_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

/// The most of a pause's readiness text that is read: `1 <oom_score_adj>` is a few bytes,
/// and why a pause could not be made is cut to this.
const READINESS_MAX: usize = 4096;

/// What a pause wrote on its readiness pipe: `1 <oom_score_adj>` once it is confined (one
/// write), or why it could not be made, then EOF; at most [`READINESS_MAX`] bytes of it.
async fn read_readiness(fd: OwnedFd) -> std::io::Result<Vec<u8>> {
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let fd = sys::async_fd(fd)?;
    let mut said = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let mut ready = fd.readable().await?;
        let got = ready
            .try_io(|f| nix::unistd::read(f.as_raw_fd(), &mut buf).map_err(std::io::Error::from));
        match got {
            Ok(Ok(0)) => return Ok(said),
            Ok(Ok(n)) => {
                let room = READINESS_MAX.saturating_sub(said.len());
                said.extend_from_slice(&buf[..n.min(room)]);
                if said.starts_with(b"1 ") || said.len() >= READINESS_MAX {
                    return Ok(said);
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

fn parse_ready(pid: i32, said: &[u8]) -> Result<Started> {
    if let Some(score) = said.strip_prefix(b"1 ") {
        return std::str::from_utf8(score)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(|oom_score_adj| Started { pid, oom_score_adj })
            .ok_or_else(|| {
                Error::Internal(format!(
                    "create pause process: pause process {pid} said {:?}",
                    String::from_utf8_lossy(said)
                ))
            });
    }
    if said.is_empty() {
        return Err(helper_error(format!(
            "pause process {pid} died during setup"
        )));
    }
    Err(helper_error(format!(
        "pause process {pid}: {}",
        String::from_utf8_lossy(said)
    )))
}

/// The error for a pause the helper could not make, by its text.
fn helper_error(msg: String) -> Error {
    if msg.contains(REFUSED_INPUT) {
        Error::InvalidArgument(format!(
            "create pause process: {}",
            msg.replace(REFUSED_INPUT, "")
        ))
    } else {
        Error::Internal(format!("create pause process: {msg}"))
    }
}

/// The longest request (its sysctls, mostly) and reply on the helper's socket.
const MESSAGE_MAX: usize = 64 * 1024;
/// The longest reply: a pid, or why a pause could not be made (cut to fit). Small, so that
/// the shim's buffer for it does not stay in its heap as 64 kB of touched pages.
const REPLY_MAX: usize = 4096;

/// The shim's end of a freshly forked pause helper.
pub struct HelperHandle {
    sock: OwnedFd,
    pid: i32,
}

/// Forks the pause helper, which makes itself a clean, confined process (see
/// `confine.rs`) while the shim goes on starting. Must be called while the process is
/// single-threaded.
pub fn fork_helper() -> std::io::Result<HelperHandle> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    match sys::fork(None)? {
        Forked::Child => {
            drop(ours);
            confine::start_helper(theirs)
        }
        Forked::Parent(pid) => Ok(HelperHandle {
            sock: ours,
            pid: pid.as_raw(),
        }),
    }
}

/// The shim-side client of the pause helper.
pub struct PauseSpawner {
    conn: tokio::sync::Mutex<Option<Conn>>,
}

struct Conn {
    sock: tokio::io::unix::AsyncFd<OwnedFd>,
    pid: i32,
}

impl PauseSpawner {
    /// Wraps a helper handle; needs a tokio runtime.
    pub fn new(handle: HelperHandle) -> std::io::Result<Self> {
        nix::fcntl::fcntl(
            handle.sock.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(PauseSpawner {
            conn: tokio::sync::Mutex::new(Some(Conn {
                sock: sys::async_fd(handle.sock)?,
                pid: handle.pid,
            })),
        })
    }

    /// Creates a pause process; [`Spawned::ready`] waits until it is confined.
    pub async fn spawn(&self, cfg: &PauseConfig) -> Result<Spawned> {
        let mut guard = self.conn.lock().await;
        let conn = guard.as_mut().ok_or_else(|| {
            Error::FailedPrecondition("this shim has already created its pause process".into())
        })?;
        let (req, fds) = request(cfg)?;
        let helper = conn.pid;
        let lost = |e: std::io::Error| Error::io(format!("pause helper (pid {helper})"), e);
        let asked = tokio::time::timeout(HELPER_TIMEOUT, async {
            let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            loop {
                let mut ready = conn.sock.writable().await.map_err(lost)?;
                let sent = ready.try_io(|s| {
                    sys::send_with_fds(s.as_fd(), &req, &fds).map_err(std::io::Error::from)
                });
                if let Ok(sent) = sent {
                    sent.map_err(lost)?;
                    break;
                }
            }
            let mut buf = vec![0u8; REPLY_MAX];
            loop {
                let mut ready = conn.sock.readable().await.map_err(lost)?;
                let got = ready.try_io(|s| {
                    sys::recv_with_fds(s.as_fd(), &mut buf).map_err(std::io::Error::from)
                });
                if let Ok(got) = got {
                    let (n, fds) = got.map_err(lost)?;
                    buf.truncate(n);
                    return Ok((buf, fds));
                }
            }
        })
        .await;
        let (line, mut fds) = match asked {
            Ok(r) => r?,
            Err(_) => {
                // Its setup child bounds its own wait for the pause; a helper that still
                // has not answered is stuck: it goes, and this shim makes no more pauses.
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
        if line.is_empty() {
            return Err(Error::Internal(format!(
                "pause helper (pid {helper}) exited without answering"
            )));
        }
        match serde_json::from_slice::<Reply>(&line) {
            Ok(Reply::Started(p)) if p.pid > 0 => Ok(Spawned {
                pid: p.pid,
                state: Readiness::Ready(p.oom_score_adj),
            }),
            Ok(Reply::Cloned { pid }) if pid > 0 && fds.len() == 1 => Ok(Spawned {
                pid,
                state: Readiness::Pending(fds.remove(0)),
            }),
            Ok(Reply::Cloned { pid }) if pid > 0 => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                Err(Error::Internal(format!(
                    "pause helper sent {} descriptors with pause {pid}; killed",
                    fds.len()
                )))
            }
            Ok(Reply::Started(Started { pid, .. }) | Reply::Cloned { pid }) => {
                Err(Error::Internal(format!("pause helper returned pid {pid}")))
            }
            Ok(Reply::Error(msg)) => Err(helper_error(msg)),
            Err(e) => Err(Error::Internal(format!(
                "pause helper answered {:?}: {e}",
                String::from_utf8_lossy(&line)
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

/// The helper's request for `cfg`, and the descriptors it names, opened here.
fn request(cfg: &PauseConfig) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut fds = Vec::new();
    if let Some(p) = &cfg.netns {
        let f = open_netns(p).map_err(|e| {
            Error::Internal(format!(
                "create pause process: open netns {}: {e}",
                p.display()
            ))
        })?;
        fds.push(OwnedFd::from(f));
    }
    let (mut v1, mut v2) = (Vec::new(), None);
    for dir in &cfg.cgroups {
        let failed = |e: std::io::Error| {
            Error::Internal(format!(
                "create pause process: open cgroup {}: {e}",
                dir.display()
            ))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("tasks"))
        {
            Ok(f) => v1.push(OwnedFd::from(f)),
            // cgroup v2 has no such file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && v2.is_none() => {
                let d = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(dir)
                    .map_err(failed)?;
                v2 = Some(OwnedFd::from(d));
            }
            Err(e) => return Err(failed(e)),
        }
    }
    let req = Request {
        new_uts: cfg.new_uts,
        new_ipc: cfg.new_ipc,
        new_pid: cfg.new_pid,
        hostname: cfg.hostname.clone(),
        sysctls: cfg.sysctls.clone(),
        userns: cfg.userns.clone(),
        netns: cfg.netns.is_some(),
        v1_cgroups: v1.len(),
        v2_cgroup: v2.is_some(),
    };
    fds.extend(v1);
    fds.extend(v2);
    let text = serde_json::to_vec(&req)
        .map_err(|e| Error::Internal(format!("encode pause request: {e}")))?;
    if text.len() > MESSAGE_MAX {
        return Err(Error::InvalidArgument(format!(
            "the pod's sysctls and hostname take {} bytes; at most {MESSAGE_MAX} are accepted",
            text.len()
        )));
    }
    Ok((text, fds))
}

// ---------------------------------------------------------------------------------------
// Everything below runs in the helper, its setup child or the pause process: plain
// single-threaded processes with no async runtime. The helper is exec'd afresh and
// confined (`confine.rs`) before it reads a request; it reaches `/proc` through the
// descriptor it was given, and the host's other files only through what a request passes.

/// What the confined helper holds for the pauses it makes.
pub(crate) struct Helper {
    /// The host's `/proc` (the pause's `oom_score_adj`, sysctls, a user namespace's maps).
    proc: OwnedFd,
    /// The pause's seccomp filter, compiled once.
    filter: seccompiler::BpfProgram,
    /// The helper's own `oom_score_adj`, lowered once towards the pause's
    /// ([`crate::oom_score::PAUSE_SCORE`]; without CAP_SYS_RESOURCE that is a bisection of
    /// a dozen writes), which every pause inherits.
    oom_score_adj: i32,
}

/// The helper's loop: one request, one pause, one reply, until the shim closes its end.
fn serve_requests(stream: OwnedFd, helper: Helper) -> ! {
    let _ = nix::unistd::setsid();
    loop {
        let made = match recv_request(&stream) {
            Ok((buf, _)) if buf.is_empty() => sys::exit_now(0),
            Ok((buf, fds)) => match serde_json::from_slice::<Request>(&buf) {
                Ok(req) => {
                    Passed::split(&req, fds).and_then(|passed| create_pause(&req, passed, &helper))
                }
                Err(e) => Err(format!("bad pause request: {e}")),
            },
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EMSGSIZE) => Err("pause request too long".into()),
            Err(nix::Error::ENOBUFS) => Err("pause request with too many descriptors".into()),
            Err(_) => sys::exit_now(0),
        };
        match made {
            Ok(Made::Started(p)) => answer(&stream, &Reply::Started(p), None),
            Ok(Made::Cloned(pid, ready)) => {
                answer(&stream, &Reply::Cloned { pid }, Some(ready.as_fd()))
            }
            Err(e) => answer(&stream, &Reply::Error(e), None),
        }
    }
}

/// The helper's loop when it could not confine itself: every request gets `why`.
fn refuse_requests(stream: OwnedFd, why: String) -> ! {
    loop {
        match recv_request(&stream) {
            Ok((buf, _)) if buf.is_empty() => sys::exit_now(0),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EMSGSIZE) | Ok(_) => answer(&stream, &Reply::Error(why.clone()), None),
            Err(_) => sys::exit_now(0),
        }
    }
}

/// The next request and its descriptors (empty: the shim closed its end), in a buffer of
/// its own size: a pause cloned from the helper inherits the helper's heap, and a 64 kB
/// zeroed buffer would be 16 pages of it, in every pod.
fn recv_request(stream: &OwnedFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recv, MsgFlags};
    let len = recv(
        stream.as_raw_fd(),
        &mut [0u8; 1],
        MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
    )?;
    // Longer than any request the shim sends: taken whole (so that it is gone), refused.
    let mut buf = vec![0u8; len.clamp(1, MESSAGE_MAX + 1)];
    let (n, fds) = sys::recv_with_fds(stream.as_fd(), &mut buf)?;
    if n > MESSAGE_MAX {
        return Err(nix::Error::EMSGSIZE);
    }
    buf.truncate(n);
    Ok((buf, fds))
}

fn answer(stream: &OwnedFd, reply: &Reply, fd: Option<BorrowedFd<'_>>) {
    let mut out = serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec());
    if let (true, Reply::Error(why)) = (out.len() > REPLY_MAX, reply) {
        // A pod's sysctl value can be long; the start of the reason is what matters.
        let cut: String = why.chars().take(REPLY_MAX / 8).collect();
        out = serde_json::to_vec(&Reply::Error(format!("{cut}..."))).unwrap_or_default();
    }
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    if sys::send_with_fds(stream.as_fd(), &out, &fds).is_err() {
        sys::exit_now(0);
    }
}

/// What the helper made for a request.
enum Made {
    /// A pause its setup child saw confined.
    Started(Started),
    /// A pause it cloned, and the read end of its readiness pipe.
    Cloned(i32, OwnedFd),
}

/// Runs in the helper: makes the pause process and reports it.
fn create_pause(
    req: &Request,
    passed: Passed,
    helper: &Helper,
) -> std::result::Result<Made, String> {
    if req.userns.is_none() {
        match clone_pause_directly(req, &passed, helper) {
            Direct::Done(result) => return result,
            Direct::Unsupported => {}
        }
    }
    let (rd, wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    match sys::fork(Some(helper.proc.as_fd())).map_err(|e| format!("fork: {e}"))? {
        Forked::Child => {
            drop(rd);
            let result = setup_and_fork_pause(req, &passed, helper);
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
                    (Some(Ok(pid)), Some(Ok(oom_score_adj))) => {
                        Ok(Made::Started(Started { pid, oom_score_adj }))
                    }
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
    /// The pause was cloned, or could not be: the answer for the shim.
    Done(std::result::Result<Made, String>),
    /// This kernel cannot clone it so (no clone3, or no `CLONE_INTO_CGROUP`): the setup
    /// child makes it.
    Unsupported,
}

/// Runs in the helper, for a pod without a user namespace: clones the pause itself, as a
/// child of the shim (`CLONE_PARENT`), so that no setup child is forked and reaped on the
/// way. The pause then does, as its first steps, what the setup child would have done
/// before cloning it (join its v1 cgroups and the pod's network namespace, lower its OOM
/// score): it is still the host's root, and not yet visible to any container. Its exit is
/// the shim's to reap, as it is once a setup child has gone, and so is its readiness: the
/// helper passes on its pipe and waits for nothing.
fn clone_pause_directly(req: &Request, passed: &Passed, helper: &Helper) -> Direct {
    let (ready_rd, ready_wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return Direct::Done(Err(format!("pipe: {e}"))),
    };
    let flags = pod_namespaces(req) | CloneFlags::CLONE_PARENT;
    let forked = match sys::fork_with(
        Some(helper.proc.as_fd()),
        flags,
        passed.v2.as_ref().map(|fd| fd.as_fd()),
    ) {
        Err(nix::Error::ENOSYS | nix::Error::EINVAL | nix::Error::E2BIG) => {
            return Direct::Unsupported
        }
        Err(e) => return Direct::Done(Err(format!("clone the pause: {e}"))),
        Ok(f) => f,
    };
    match forked {
        Forked::Child => {
            drop(ready_rd);
            let entered = first_steps(passed, helper)
                .and_then(|score| enter_pod(req, None, helper).map(|()| score));
            match entered {
                Ok(score) => confine::become_pause(ready_wr, &helper.filter, score),
                Err(e) => confine::fail(ready_wr, &e),
            }
        }
        Forked::Parent(pid) => {
            drop(ready_wr);
            Direct::Done(Ok(Made::Cloned(pid.as_raw(), ready_rd)))
        }
    }
}

/// The direct path's pause, first: into its v1 cgroups (through `tasks`, as the setup
/// child does) and the pod's network namespace. Its OOM score is the helper's, which it
/// returns.
fn first_steps(passed: &Passed, helper: &Helper) -> std::result::Result<i32, String> {
    join_v1(&passed.v1)?;
    if let Some(ns) = &passed.netns {
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join network namespace: {e}"))?;
    }
    Ok(helper.oom_score_adj)
}

/// Moves the calling (single-threaded) process into the v1 cgroups whose `tasks` files
/// `tasks` are.
fn join_v1(tasks: &[OwnedFd]) -> std::result::Result<(), String> {
    for (i, fd) in tasks.iter().enumerate() {
        nix::unistd::write(fd, b"0").map_err(|e| format!("join cgroup v1 hierarchy {i}: {e}"))?;
    }
    Ok(())
}

/// Moves the calling process into the cgroup v2 directory `dir` through `cgroup.procs`.
fn join_procs(dir: &OwnedFd) -> std::result::Result<(), String> {
    sys::open_at(dir.as_fd(), "cgroup.procs", nix::fcntl::OFlag::O_WRONLY)
        .map_err(std::io::Error::from)
        .and_then(|mut f| f.write_all(b"0"))
        .map_err(|e| format!("join cgroup v2: {e}"))
}

/// The namespaces the pause is cloned into, other than a user namespace.
fn pod_namespaces(req: &Request) -> CloneFlags {
    let mut flags = CloneFlags::empty();
    flags.set(CloneFlags::CLONE_NEWUTS, req.new_uts);
    flags.set(CloneFlags::CLONE_NEWIPC, req.new_ipc);
    flags.set(CloneFlags::CLONE_NEWPID, req.new_pid);
    flags
}

/// Waits, in a user-namespaced pod's setup child, for its pause's readiness ("1 <score>"
/// once it is confined) or its reason for failing, at most [`PAUSE_READY_TIMEOUT`]; a
/// pause that says nothing by then is killed and reaped.
fn await_ready(pid: nix::unistd::Pid, ready_rd: OwnedFd) -> std::result::Result<(), String> {
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
        let _ = (&ready).take(READINESS_MAX as u64).read_to_end(&mut said);
    } else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(format!(
            "pause process {pid} was not ready within {}s; killed",
            PAUSE_READY_TIMEOUT.as_secs()
        ));
    }
    if said.starts_with(b"1 ") {
        return Ok(());
    }
    let status = format!(": {:?}", waitpid(pid, Some(WaitPidFlag::WNOHANG)));
    if said.is_empty() {
        return Err(format!("pause process {pid} died during setup{status}"));
    }
    Err(format!(
        "pause process {pid}: {}",
        String::from_utf8_lossy(&said)
    ))
}

/// How long the shim waits for the pause helper's answer: a setup child's own bound on its
/// pause, and as long again for everything before it.
const HELPER_TIMEOUT: std::time::Duration = PAUSE_READY_TIMEOUT.saturating_mul(2);

/// How long the shim (or a setup child) waits for a pause to confine itself and say it is
/// ready (a few dozen system calls; seconds under emulation).
const PAUSE_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs in the setup child: enters the pod's namespaces and cgroup, forks the pause process.
fn setup_and_fork_pause(
    req: &Request,
    passed: &Passed,
    helper: &Helper,
) -> std::result::Result<Started, String> {
    let proc = helper.proc.as_fd();
    // The pause inherits the v1 cgroups this child joins, and is born in the v2 one.
    let mut v2_dir = passed.v2.as_ref();
    join_v1(&passed.v1)?;
    if let Some(ns) = &passed.netns {
        // Joined while still the host's root: a network namespace CRI made inside a user
        // namespace of its own is not one the pod's user namespace may enter.
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join network namespace: {e}"))?;
    }
    let mut flags = pod_namespaces(req);
    // The pod's user namespace is made in the same clone, so that it owns the UTS, IPC
    // and PID namespaces (and the mount and cgroup ones the pause makes next).
    flags.set(CloneFlags::CLONE_NEWUSER, req.userns.is_some());
    // The helper's, inherited by the pause across its clone.
    let oom_score_adj = helper.oom_score_adj;
    // CRI creates a user-namespaced pod's network namespace inside a user namespace with
    // the pod's mappings: that one is the pod's (as the runc pod path's pause container
    // joins it), so that the pod's root owns its network namespace (sysfs, net sysctls).
    // Joined last: this process is no longer the host's root afterwards.
    if let (Some(maps), Some(ns)) = (&req.userns, &passed.netns) {
        let owner = sys::owning_user_namespace(ns.as_fd())
            .map_err(|e| format!("the network namespace's user namespace: {e}"))?;
        let host = nix::sys::stat::fstatat(
            Some(proc.as_raw_fd()),
            "self/ns/user",
            nix::fcntl::AtFlags::empty(),
        )
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
            if let Some(dir) = v2_dir.take() {
                join_procs(dir)?;
            }
            // Nothing of this process is readable through /proc by the pod once it is in
            // the pod's user namespace.
            nix::sys::prctl::set_dumpable(false).map_err(|e| format!("not dumpable: {e}"))?;
            nix::sched::setns(owner.as_fd(), CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("join the network namespace's user namespace: {e}"))?;
            maps.check_own(proc).map_err(|e| {
                format!("the pod's network namespace belongs to another user namespace: {e}")
            })?;
            flags.remove(CloneFlags::CLONE_NEWUSER);
        }
    }
    let (ready_rd, ready_wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // The pause waits on this until its user namespace is mapped (EOF: go on).
    let (mapped_rd, mapped_wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let forked = match v2_dir {
        Some(dir) => match sys::fork_with(Some(proc), flags, Some(dir.as_fd())) {
            Err(nix::Error::EINVAL | nix::Error::E2BIG) => {
                join_procs(dir)?;
                sys::fork_with(Some(proc), flags, None)
            }
            r => r,
        },
        None => sys::fork_with(Some(proc), flags, None),
    };
    // No clone3 (Linux before 5.3): unshare, then fork. A user namespace needs clone3.
    let forked = match forked {
        Err(nix::Error::ENOSYS) if req.userns.is_none() => {
            if let Some(dir) = v2_dir {
                join_procs(dir)?;
            }
            if !flags.is_empty() {
                nix::sched::unshare(flags).map_err(|e| format!("unshare {flags:?}: {e}"))?;
            }
            sys::fork(Some(proc))
        }
        r => r,
    };
    match forked.map_err(|e| format!("fork pause: {e}"))? {
        Forked::Child => {
            drop(ready_rd);
            drop(mapped_wr);
            match enter_pod(req, Some(mapped_rd), helper) {
                Ok(()) => confine::become_pause(ready_wr, &helper.filter, oom_score_adj),
                Err(e) => confine::fail(ready_wr, &e),
            }
        }
        Forked::Parent(pid) => {
            drop(ready_wr);
            drop(mapped_rd);
            if let (Some(maps), true) = (&req.userns, flags.contains(CloneFlags::CLONE_NEWUSER)) {
                if let Err(e) = maps.write_for_at(proc, pid.as_raw()) {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Err(format!("map the pod's user namespace: {e}"));
                }
            }
            drop(mapped_wr);
            // "1" once it is confined, or why it could not be; then EOF either way. A pause
            // that says nothing within PAUSE_READY_TIMEOUT is killed: StartSandbox (and the
            // pod's lock it holds) must not wait on it forever.
            await_ready(pid, ready_rd).map(|()| Started {
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
fn enter_pod(
    req: &Request,
    mapped: Option<OwnedFd>,
    helper: &Helper,
) -> std::result::Result<(), String> {
    if let (Some(_), Some(mapped)) = (&req.userns, &mapped) {
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
    if let Some(h) = &req.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("set hostname {h:?}: {e}"))?;
    }
    for (key, value) in &req.sysctls {
        let written = sys::open_at(
            helper.proc.as_fd(),
            &sysctl_path(key),
            nix::fcntl::OFlag::O_WRONLY,
        )
        .map_err(std::io::Error::from)
        .and_then(|mut f| f.write_all(value.as_bytes()));
        if let Err(e) = written {
            use std::io::ErrorKind::{NotFound, PermissionDenied};
            // The kernel hides some network sysctls (net.core.somaxconn, for one) from a
            // network namespace a user namespace owns, and refuses others to it.
            return Err(match e.kind() {
                PermissionDenied | NotFound if req.userns.is_some() => format!(
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

/// The path under `/proc` of a sysctl written with dots (`net.ipv4.ip_forward`) or
/// slashes (names are checked when the sandbox is created: `sandbox/config.rs`).
pub fn sysctl_path(key: &str) -> String {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    format!("sys/{rel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip_and_bad_ones_fail() {
        let req = Request {
            new_uts: true,
            new_ipc: true,
            new_pid: false,
            hostname: Some("web-0".into()),
            sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())],
            userns: Some(crate::idmap::Mappings {
                uids: vec![crate::idmap::Extent {
                    inside: 0,
                    host: 65536,
                    length: 65536,
                }],
                gids: vec![],
            }),
            netns: true,
            v1_cgroups: 2,
            v2_cgroup: true,
        };
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        assert!(serde_json::from_str::<Request>("{not json").is_err());
        // A wrong type is an error, not an absent field.
        assert!(serde_json::from_str::<Request>(r#"{"new_uts":"yes"}"#).is_err());
        let started = Started {
            pid: 42,
            oom_score_adj: -998,
        };
        for r in [
            Reply::Started(started),
            Reply::Cloned { pid: 7 },
            Reply::Error("no".into()),
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), r);
        }
    }

    #[test]
    fn passed_descriptors_must_match_the_request() {
        let fd = || OwnedFd::from(File::open("/dev/null").unwrap());
        let req = Request {
            netns: true,
            v1_cgroups: 2,
            v2_cgroup: true,
            ..Default::default()
        };
        let p = Passed::split(&req, (0..4).map(|_| fd()).collect()).unwrap();
        assert!(p.netns.is_some() && p.v2.is_some());
        assert_eq!(p.v1.len(), 2);
        for n in [0, 3, 5] {
            let e = Passed::split(&req, (0..n).map(|_| fd()).collect()).err();
            assert_eq!(e, Some(format!("bad pause request: {n} descriptors for 4")));
        }
    }

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding"),
            "sys/net/ipv4/conf/eth0.100/forwarding"
        );
    }
}
