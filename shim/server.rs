//! The shim server: one process per pod sandbox (or plain task), serving the Sandbox and
//! Task v3 services on one ttrpc socket until its [`Lifetime`] says it is done.
//!
//! `start` forks it (no exec) with the bound listener and a readiness pipe. Before its
//! runtime starts it becomes a child subreaper and forks the pause helper (while it has
//! one thread).
//! It serves only connections from its own effective uid and gid (`SameUser`).
//! Asked to go, it unlinks its socket (so the next `start` for its id makes a new server),
//! waits (bounded) for its clients to take their last replies and close, and exits.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use containerd_shim::Flags;

use crate::bootstrap::socket_path;
use crate::error::{Error, IoContext, Result};
use crate::lifetime::Lifetime;

/// The server: runs until its last sandbox is shut down (or Task.Shutdown with none alive).
pub fn serve(flags: &Flags, listener: UnixListener, ready: OwnedFd) -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context(|| "become a child subreaper".into())?;
    // Nothing else this process inherited goes on to runc, hooks or log drivers.
    if let Err(e) = crate::sys::close_on_exec_from(3) {
        eprintln!("cove: close-on-exec on inherited descriptors: {e}");
    }
    // Read before the helper exists: its mount namespace and mounts, made beside the
    // server's start-up, hold the lock /proc/self/mountinfo's reader waits for (~0.1 ms).
    let layout = crate::cgroups::Layout::detect();
    // Fork the pause helper while this process has exactly one thread.
    let helper = crate::pause::fork_helper().context(|| "fork the pause helper".into())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(IO_EVENTS_PER_TICK)
        .build()
        .context(|| "build the async runtime".into())?;
    runtime.block_on(run_server(flags, listener, ready, helper, layout))
}

/// The shim log: the bundle's `log` fifo, which containerd reads (none in a bundle
/// without one). Opened without blocking: a fifo with no reader (containerd gave up on
/// this `start` and closed its end) would block the open, before the server says it
/// serves, for good. The log is then left off; writes to an opened fifo block, as
/// containerd's Go shims' do. The level is `RUST_LOG`'s, else info (debug with -debug).
fn init_log(debug: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let flags = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_GETFL,
    )?);
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_SETFL(flags - nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let level = std::env::var(containerd_shim::logger::LOG_ENV)
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    log::set_max_level(if debug {
        level.max(log::LevelFilter::Debug)
    } else {
        level
    });
    log::set_boxed_logger(Box::new(containerd_shim::logger::FifoLogger::with_file(
        file,
    )))
    .map_err(std::io::Error::other)
}

/// How many ready descriptors one poll of the event loop takes (tokio's default, 1024,
/// keeps a 12 kB buffer in every shim). A pod's server watches a few dozen at most; any
/// more are taken by the next poll, as the kernel keeps them ready.
const IO_EVENTS_PER_TICK: usize = 64;

async fn run_server(
    flags: &Flags,
    listener: UnixListener,
    ready: OwnedFd,
    helper: crate::pause::HelperHandle,
    layout: Result<crate::cgroups::Layout>,
) -> Result<()> {
    if let Err(e) = init_log(flags.debug) {
        eprintln!("cove: shim log: {e}");
    }
    tokio::spawn(crate::idle::give_back_when_idle());
    let reaper = crate::reaper::Reaper::start().context(|| "watch SIGCHLD".into())?;
    let spawner = crate::pause::PauseSpawner::new(helper).context(|| "pause helper".into())?;
    let layout = layout?;
    let lifetime = Arc::new(Lifetime::default());
    let manager = Arc::new(crate::sandbox::Manager::new(
        spawner,
        reaper.clone(),
        layout.clone(),
        lifetime.clone(),
    ));

    listener
        .set_nonblocking(true)
        .context(|| "nonblocking listener".into())?;
    let listener =
        tokio::net::UnixListener::from_std(listener).context(|| "register the listener".into())?;
    let admitted = Arc::new(tokio::sync::Notify::new());
    let listener =
        ttrpc::r#async::transport::Listener::new(SameUser::new(listener, admitted.clone()));

    let mut sandbox = containerd_shim_protos::sandbox_async::create_sandbox(Arc::new(
        crate::sandbox::service::SandboxService {
            manager: manager.clone(),
        },
    ));
    for svc in sandbox.values_mut() {
        svc.methods.insert(
            crate::sandbox::update::METHOD.to_string(),
            Box::new(crate::sandbox::update::UpdateMethod {
                manager: manager.clone(),
            }),
        );
    }
    let mut task =
        containerd_shim_protos::shim_async::create_task(Arc::new(crate::task::TaskService::new(
            manager.clone(),
            lifetime.clone(),
            reaper,
            layout,
            &flags.namespace,
        )));
    // A request's end is activity: the stack it used is given back once they stop.
    crate::idle::watch(&mut sandbox);
    crate::idle::watch(&mut task);
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener)
        .register_service(sandbox)
        .register_service(task);
    server
        .start()
        .await
        .map_err(|e| Error::Internal(format!("start ttrpc server: {e}")))?;
    let _ = std::fs::File::from(ready).write_all(crate::bootstrap::READY);
    log::info!(
        "cove {} serving {} on {}",
        env!("CARGO_PKG_VERSION"),
        flags.id,
        flags.socket
    );

    let path = socket_path(&flags.socket);
    let socket_file = crate::bootstrap::file_identity(Path::new(path));
    let mut exit = lifetime.exit_requested();
    let within = first_request_within();
    let abandoned = tokio::select! {
        _ = exit.wait_for(|e| *e) => false,
        () = unclaimed(within, &admitted) => {
            log::warn!(
                "no request within {within:?} of this server's start or of the last \
                 connection to it (was the `start` that printed its address killed before \
                 containerd had it?): exiting, as nothing would ever ask it to"
            );
            true
        }
    };
    // From here on no new client may find this server: a `start` for the same id (Docker
    // restarting a container, a restart policy) must launch a new server, not hand out
    // the address of one that is about to go. Connections already made are served on.
    // The path is unlinked only while it is still this server's socket file: a new
    // server may already have bound its own there.
    if socket_file.is_some() && crate::bootstrap::file_identity(Path::new(path)) == socket_file {
        let _ = std::fs::remove_file(path);
    }
    // The reply to the request that let the shim go (ShutdownSandbox, Task.Shutdown) is
    // still on its way out: exiting now can cut it off ("ttrpc: closed" in containerd).
    // containerd closes its connection once it has the reply; wait for that, bounded.
    let waited = std::time::Instant::now();
    while !abandoned && connected_peers(path) > 0 && waited.elapsed() < REPLY_FLUSH {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    log::info!(
        "shim for {} exiting ({} connection(s) open after {:?})",
        flags.id,
        connected_peers(path),
        waited.elapsed()
    );
    let _ = server.shutdown().await;
    Ok(())
}

/// How long a server waits for its first request. containerd connects once `start` has
/// printed the address and sends one (CreateSandbox, Task.Create; Task.Connect after its
/// own restart), at most after running `-info` (for a container with idmapped mounts,
/// `runc features`, bounded at 10 s); a `start` killed before containerd had the address
/// (its caller's deadline passed) leaves a server that nothing knows of, with no bundle
/// for `delete` to find.
const FIRST_REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The least `COVE_FIRST_REQUEST_WITHIN_MS` may set.
const FIRST_REQUEST_WITHIN_MIN: std::time::Duration = std::time::Duration::from_secs(1);

/// [`FIRST_REQUEST_WITHIN`], or `COVE_FIRST_REQUEST_WITHIN_MS` from the environment (at
/// least [`FIRST_REQUEST_WITHIN_MIN`]; 0: no bound, the server waits for ever).
fn first_request_within() -> Option<std::time::Duration> {
    first_request_within_from(
        std::env::var("COVE_FIRST_REQUEST_WITHIN_MS")
            .ok()
            .as_deref(),
    )
}

/// [`first_request_within`] for the variable's value `v`, if set.
fn first_request_within_from(v: Option<&str>) -> Option<std::time::Duration> {
    let Some(v) = v else {
        return Some(FIRST_REQUEST_WITHIN);
    };
    match v.parse::<u64>() {
        Ok(0) => None,
        Ok(ms) => Some(std::time::Duration::from_millis(ms).max(FIRST_REQUEST_WITHIN_MIN)),
        Err(_) => {
            log::warn!(
                "COVE_FIRST_REQUEST_WITHIN_MS={v:?} is not a number of milliseconds: \
                 {FIRST_REQUEST_WITHIN:?} it is"
            );
            Some(FIRST_REQUEST_WITHIN)
        }
    }
}

/// Resolves if no request has come within `within` of the server's start or of the last
/// connection admitted; never once one has, or with no bound. A connection postpones but
/// does not claim: `start` connects to see whether a server is already there, and
/// containerd's request follows once that `start` has printed the address, unless that
/// `start` too is killed.
async fn unclaimed(within: Option<std::time::Duration>, admitted: &tokio::sync::Notify) {
    if let Some(within) = within {
        loop {
            tokio::select! {
                biased;
                () = crate::idle::first_request() => break,
                () = admitted.notified() => continue,
                () = tokio::time::sleep(within) => {}
            }
            // The timer and a connection can come in the same turn of the event loop, and
            // this future is polled before the listener's task: let that task run, then
            // look once more.
            tokio::task::yield_now().await;
            tokio::select! {
                biased;
                () = crate::idle::first_request() => break,
                () = admitted.notified() => continue,
                () = std::future::ready(()) => return,
            }
        }
    }
    std::future::pending::<()>().await
}

/// The server's accepted connections: only those whose peer (SO_PEERCRED, as recorded at
/// connect) has this process's effective uid and gid, as Go ttrpc's
/// `UnixSocketRequireSameUser` handshaker lets through in containerd's shims. Any other
/// is closed before ttrpc reads a byte from it. (ttrpc 0.10 has an accept hook only
/// behind its `security_extension` feature, which also brings in payload transforms; a
/// listener of our own needs neither that nor a raw descriptor.)
struct SameUser {
    listener: tokio::net::UnixListener,
    uid: u32,
    gid: u32,
    /// Told of every connection let through.
    admitted: Arc<tokio::sync::Notify>,
}

/// Refused connections one poll of [`SameUser`] handles before it lets other tasks run.
const REFUSALS_PER_POLL: usize = 32;

impl SameUser {
    fn new(listener: tokio::net::UnixListener, admitted: Arc<tokio::sync::Notify>) -> SameUser {
        SameUser {
            listener,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            admitted,
        }
    }

    /// Whether the peer of `stream` may be served; says why not in the log.
    fn admits(&self, stream: &tokio::net::UnixStream) -> bool {
        match stream.peer_cred() {
            Ok(c) if c.uid() == self.uid && c.gid() == self.gid => true,
            Ok(c) => {
                log::warn!(
                    "refused a connection from uid {} gid {} (pid {}): this shim serves uid {} gid {} only",
                    c.uid(),
                    c.gid(),
                    c.pid().map_or_else(|| "unknown".into(), |p| p.to_string()),
                    self.uid,
                    self.gid
                );
                false
            }
            Err(e) => {
                log::warn!("refused a connection whose peer credentials cannot be read: {e}");
                false
            }
        }
    }
}

impl futures_core::Stream for SameUser {
    type Item = std::io::Result<tokio::net::UnixStream>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        for _ in 0..REFUSALS_PER_POLL {
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, _))) if this.admits(&stream) => {
                    this.admitted.notify_one();
                    return Poll::Ready(Some(Ok(stream)));
                }
                // Dropped here: closed unread.
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// How long an exiting server waits for its clients to take their last replies and close.
const REPLY_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// How many connections to this server's socket at `path` are open: its accepted sockets,
/// as `/proc/net/unix` lists them (connected, named by the listener's path), that this
/// process holds. A successor server bound at the same path has its own.
fn connected_peers(path: &str) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return 0;
    };
    count_connected(&table, path, &own_socket_inodes())
}

/// The inodes of the sockets among this process's descriptors.
fn own_socket_inodes() -> std::collections::HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn count_connected(table: &str, path: &str, ours: &std::collections::HashSet<u64>) -> usize {
    const SS_CONNECTED: &str = "03";
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8
                && f[5] == SS_CONNECTED
                && f[7] == path
                && f[6].parse().is_ok_and(|ino: u64| ours.contains(&ino))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_request_bound_is_30_s_unless_set_and_never_under_1_s() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        for (value, bound) in [
            (None, Some(ms(30_000))),
            (Some("0"), None),
            (Some("2500"), Some(ms(2500))),
            (Some("10"), Some(ms(1000))),
            (Some("30s"), Some(ms(30_000))),
            (Some("-1"), Some(ms(30_000))),
        ] {
            assert_eq!(first_request_within_from(value), bound, "{value:?}");
        }
    }

    #[test]
    fn connected_server_sockets_are_counted_by_path_and_owner() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/c/s/abc
0000000000000000: 00000003 00000000 00000000 0001 03 101 /run/c/s/abc
0000000000000000: 00000003 00000000 00000000 0001 03 102
0000000000000000: 00000003 00000000 00000000 0001 03 103 /run/c/s/other
0000000000000000: 00000003 00000000 00000000 0001 03 104 /run/c/s/abc
";
        let all = [100, 101, 102, 103, 104].into_iter().collect();
        assert_eq!(count_connected(table, "/run/c/s/abc", &all), 2);
        assert_eq!(count_connected(table, "/run/c/s/none", &all), 0);
        assert_eq!(count_connected("", "/run/c/s/abc", &all), 0);
        // A successor server's connections at the same path are not ours.
        let mine = [100, 101].into_iter().collect();
        assert_eq!(count_connected(table, "/run/c/s/abc", &mine), 1);
    }

    #[tokio::test]
    async fn a_live_connection_is_seen_until_its_peer_closes() {
        let dir = std::env::temp_dir().join(format!("cove-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(connected_peers(p), 0);
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        assert_eq!(connected_peers(p), 1);
        drop(client);
        drop(server_side);
        assert_eq!(connected_peers(p), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
