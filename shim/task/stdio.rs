//! A process's stdio as containerd names it: named fifos (plain paths), `file://` paths,
//! `binary://` log drivers, or a terminal through runc's console socket.
//!
//! Without a terminal, stdout and stderr fifos are handed to the process itself, opened
//! read-write: the kernel keeps whatever the process wrote until containerd reads it (so
//! output written just before an exit is never lost), the process never takes SIGPIPE
//! while containerd restarts, and the shim is never in the data path. stdin goes through
//! a pipe the shim feeds from the fifo, so that `CloseIO` can end it. With a terminal,
//! the shim copies between the fifos and the pty master in both directions; a slow or
//! absent reader stalls only that copy, never the shim.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, IoContext, Result};
use crate::lock::lock;
use crate::reaper::Reaper;
use crate::task::uri::{parse_target, Target};

/// How long `Create` waits for a `binary://` logger to say it is ready, and for runc to
/// hand over a pty master.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context(|| "create a pipe".into())
}

/// Opens a fifo read-write (never blocks, never EPIPE); `nonblocking` for the shim's own use.
fn open_fifo(path: &PathBuf, nonblocking: bool) -> Result<OwnedFd> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if nonblocking {
        o.custom_flags(libc::O_NONBLOCK);
    }
    o.open(path)
        .map(OwnedFd::from)
        .context(|| format!("open fifo {}", path.display()))
}

fn open_file(path: &PathBuf) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(|| format!("create {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .context(|| format!("open log file {}", path.display()))
}

/// A destination the shim writes output to (terminal mode).
enum Dest {
    Async(AsyncFd<OwnedFd>),
    File(std::fs::File),
}

impl Dest {
    fn from_fd(fd: OwnedFd) -> io::Result<Dest> {
        set_nonblocking(&fd)?;
        Ok(Dest::Async(crate::sys::async_fd(fd)?))
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Dest::File(f) => f.write_all(buf),
            Dest::Async(fd) => write_all(fd, buf).await,
        }
    }
}

async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|i| nix::unistd::read(i.as_raw_fd(), buf).map_err(io::Error::from)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|i| nix::unistd::write(i.get_ref(), buf).map_err(io::Error::from)) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Copies `src` to `dest` until end of input (EIO on a pty master whose slave is gone).
/// When `dest` fails the copy keeps draining `src`, so the process never blocks on it.
async fn copy_out(src: AsyncFd<OwnedFd>, mut dest: Dest) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut dest_ok = true;
    loop {
        match read_some(&src, &mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if dest_ok {
                    if let Err(e) = dest.write_all(&buf[..n]).await {
                        log::warn!("stdio output copy: {e}; discarding further output");
                        dest_ok = false;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.raw_os_error() != Some(libc::EIO) {
                    log::warn!("stdio output copy: {e}");
                }
                return;
            }
        }
    }
}

/// Feeds the process's stdin from the fifo until `CloseIO` (then drains what is already
/// in the fifo and closes), or until the process stops reading.
async fn copy_in(src: AsyncFd<OwnedFd>, dst: AsyncFd<OwnedFd>, mut close: oneshot::Receiver<()>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            r = read_some(&src, &mut buf) => match r {
                Ok(0) => return,
                Ok(n) => if write_all(&dst, &buf[..n]).await.is_err() { return },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            },
            _ = &mut close => break,
        }
    }
    // CloseIO: pass on what the client wrote before it closed, then end the input.
    loop {
        match nix::unistd::read(src.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if write_all(&dst, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where console sockets live: root's, mode 0700, on tmpfs.
pub const CONSOLE_DIR: &str = "/run/cove/console";

/// The socket runc sends a new pty master to (`--console-socket`).
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ConsoleSocket {
    /// Binds in [`CONSOLE_DIR`], a directory only root can enter, not the world-shared
    /// /tmp where another user could race for the name.
    fn new() -> Result<ConsoleSocket> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(CONSOLE_DIR)
            .context(|| format!("create {CONSOLE_DIR}"))?;
        let path = Path::new(CONSOLE_DIR).join(format!(
            "{}-{}.sock",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .context(|| format!("listen on console socket {}", path.display()))?;
        Ok(ConsoleSocket { path, listener })
    }

    async fn receive(&self) -> Result<OwnedFd> {
        let (stream, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| Error::Internal("runc did not send the pty master".into()))?
            .context(|| "accept on console socket".into())?;
        loop {
            stream
                .readable()
                .await
                .context(|| "console socket".into())?;
            match crate::sys::recv_fd(stream.as_raw_fd()) {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => return Err(Error::Internal("runc sent no pty master".into())),
                Err(nix::Error::EAGAIN) => continue,
                Err(e) => return Err(Error::sys("receive the pty master", e)),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The shim side of a process's stdio, kept for its lifetime.
#[derive(Default)]
pub struct Io {
    stdin_close: Mutex<Option<oneshot::Sender<()>>>,
    copies: Mutex<Vec<JoinHandle<()>>>,
    master: Mutex<Option<OwnedFd>>,
}

impl Io {
    /// Ends the process's stdin (after passing on what is already written).
    pub fn close_stdin(&self) {
        if let Some(tx) = lock(&self.stdin_close).take() {
            let _ = tx.send(());
        }
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let guard = lock(&self.master);
        let Some(master) = guard.as_ref() else {
            return Err(Error::FailedPrecondition(
                "the process has no terminal to resize".into(),
            ));
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        crate::sys::set_winsize(master.as_fd(), &ws).context(|| "resize the terminal".into())
    }

    /// Waits (bounded) until the output copies have passed on everything the process wrote.
    pub async fn drained(&self, limit: Duration) {
        let handles: Vec<_> = lock(&self.copies).drain(..).collect();
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Stops every copy and releases the terminal.
    pub fn shutdown(&self) {
        self.close_stdin();
        for h in lock(&self.copies).drain(..) {
            h.abort();
        }
        lock(&self.master).take();
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Stdio made ready before `runc create`/`runc exec`; `finish` completes it afterwards.
pub struct Prepared {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub console: Option<ConsoleSocket>,
    /// Terminal mode: the fifo the client writes stdin into, and where output goes.
    term_in: Option<OwnedFd>,
    term_out: Option<Dest>,
    io: Io,
}

impl Prepared {
    /// Descriptors for runc's stdio (`/dev/null` where there are none).
    pub fn stdio(&mut self) -> Result<[Stdio; 3]> {
        let take = |fd: Option<OwnedFd>| -> Result<Stdio> {
            match fd {
                Some(fd) => Ok(Stdio::from(fd)),
                None => null_file().map(Stdio::from),
            }
        };
        Ok([
            take(self.stdin.take())?,
            take(self.stdout.take())?,
            take(self.stderr.take())?,
        ])
    }

    /// After runc has made the process: receive the pty master and start the copies.
    pub async fn finish(mut self) -> Result<Io> {
        if let Some(console) = self.console.take() {
            let master = console.receive().await?;
            drop(console);
            let out = master.try_clone().context(|| "dup pty master".into())?;
            set_nonblocking(&out).context(|| "pty master".into())?;
            let out = crate::sys::async_fd(out).context(|| "register pty master".into())?;
            if let Some(dest) = self.term_out.take() {
                lock(&self.io.copies).push(tokio::spawn(copy_out(out, dest)));
            } else {
                lock(&self.io.copies).push(tokio::spawn(copy_out(out, Dest::File(null_file()?))));
            }
            if let Some(src) = self.term_in.take() {
                let input = master.try_clone().context(|| "dup pty master".into())?;
                let input = crate::sys::async_fd(input).context(|| "register pty master".into())?;
                let src = crate::sys::async_fd(src).context(|| "register stdin fifo".into())?;
                let (tx, rx) = oneshot::channel();
                *lock(&self.io.stdin_close) = Some(tx);
                tokio::spawn(copy_in(src, input, rx));
            }
            *lock(&self.io.master) = Some(master);
        }
        Ok(std::mem::take(&mut self.io))
    }
}

fn null_file() -> Result<std::fs::File> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context(|| "open /dev/null".into())
}

/// Identity passed to `binary://` loggers.
pub struct Owner<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub reaper: &'a Reaper,
}

/// Sets up stdio for a new process.
pub async fn prepare(paths: &Paths, owner: Owner<'_>) -> Result<Prepared> {
    let out = parse_target(&paths.stdout)?;
    let err = parse_target(&paths.stderr)?;
    let mut p = Prepared {
        stdin: None,
        stdout: None,
        stderr: None,
        console: None,
        term_in: None,
        term_out: None,
        io: Io::default(),
    };
    let stdin_fifo = match paths.stdin.as_str() {
        "" => None,
        s => match parse_target(s)? {
            Target::Fifo(path) => Some(open_fifo(&path, true)?),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "stdin {s:?} must be a fifo path"
                )))
            }
        },
    };

    // A binary logger reads both streams from pipes; start it first.
    let mut logger_pipes = None;
    if let Target::Binary { path, args } = &out {
        logger_pipes = Some(spawn_logger(path, args, &owner).await?);
    }

    if paths.terminal {
        p.console = Some(ConsoleSocket::new()?);
        p.term_in = stdin_fifo;
        p.term_out = match out {
            Target::Null => None,
            Target::Fifo(path) => {
                Some(Dest::from_fd(open_fifo(&path, true)?).context(|| "stdout fifo".into())?)
            }
            Target::File(path) => Some(Dest::File(open_file(&path)?)),
            Target::Binary { .. } => match logger_pipes.take() {
                Some((o, _e)) => Some(Dest::from_fd(o).context(|| "logger pipe".into())?),
                None => None,
            },
        };
        return Ok(p);
    }

    if let Some(src) = stdin_fifo {
        let (r, w) = pipe()?;
        set_nonblocking(&w).context(|| "stdin pipe".into())?;
        let src = crate::sys::async_fd(src).context(|| "register stdin fifo".into())?;
        let w = crate::sys::async_fd(w).context(|| "register stdin pipe".into())?;
        let (tx, rx) = oneshot::channel();
        *lock(&p.io.stdin_close) = Some(tx);
        tokio::spawn(copy_in(src, w, rx));
        p.stdin = Some(r);
    }
    if let Some((o, e)) = logger_pipes {
        p.stdout = Some(o);
        p.stderr = Some(e);
        return Ok(p);
    }
    p.stdout = direct(out)?;
    p.stderr = direct(err)?;
    Ok(p)
}

/// An output target the process writes to itself.
fn direct(t: Target) -> Result<Option<OwnedFd>> {
    match t {
        Target::Null => Ok(None),
        Target::Fifo(path) => open_fifo(&path, false).map(Some),
        Target::File(path) => Ok(Some(OwnedFd::from(open_file(&path)?))),
        Target::Binary { .. } => Err(Error::InvalidArgument(
            "a binary:// logger must be given as stdout".into(),
        )),
    }
}

/// Starts a `binary://` logger (containerd's protocol: fd 3 stdout, fd 4 stderr, fd 5 is
/// closed when the logger is ready; CONTAINER_ID and CONTAINER_NAMESPACE its only
/// environment) and returns the write ends for the process.
async fn spawn_logger(
    path: &PathBuf,
    args: &[String],
    owner: &Owner<'_>,
) -> Result<(OwnedFd, OwnedFd)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(path);
    // containerd's NewBinaryCmd: the driver's environment is these two variables alone,
    // none of the shim's.
    cmd.args(args)
        .env_clear()
        .env("CONTAINER_ID", owner.id)
        .env("CONTAINER_NAMESPACE", owner.namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::sys::pass_fds(&mut cmd, fds.to_vec(), 3);
    let born = std::time::Instant::now();
    let child = cmd
        .spawn()
        .context(|| format!("start log driver {}", path.display()))?;
    let _ = owner.reaper.watch(child.id() as i32, born);
    drop((out_r, err_r, ready_w));
    // The driver closes its end (fd 5) when it is ready; read until EOF on the event loop.
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_pipe(ready_r)).await {
        Ok(_) => Ok((out_w, err_w)),
        Err(_) => Err(Error::Internal(format!(
            "log driver {} did not become ready",
            path.display()
        ))),
    }
}

/// Reads a pipe until EOF on the event loop (no blocking-pool thread).
pub async fn read_pipe(fd: OwnedFd) -> io::Result<Vec<u8>> {
    let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd's `NewBinaryCmd` gives a log driver an environment of exactly
    /// CONTAINER_ID and CONTAINER_NAMESPACE; the shim's own (its TTRPC_ADDRESS, PATH,
    /// whatever containerd was started with) is none of the driver's business.
    #[tokio::test(flavor = "current_thread")]
    async fn a_binary_logger_gets_only_the_container_id_and_namespace() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cove-logger-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("logger");
        let dump = dir.join("environ");
        // The environment execve gave the driver, not the one its shell exports.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n/bin/cat /proc/$$/environ > {}\n",
                dump.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            std::env::vars().count() > 0,
            "the test has an environment to leak"
        );
        let reaper = Reaper::start().unwrap();
        let paths = Paths {
            stdout: format!("binary://{}", script.display()),
            ..Default::default()
        };
        let owner = Owner {
            id: "c1",
            namespace: "k8s.io",
            reaper: &reaper,
        };
        // The driver is ready when it closes fd 5: here, when it exits.
        let prepared = prepare(&paths, owner).await.unwrap();
        drop(prepared);
        let env = std::fs::read(&dump).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut vars: Vec<String> = env
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        vars.sort();
        assert_eq!(vars, ["CONTAINER_ID=c1", "CONTAINER_NAMESPACE=k8s.io"]);
    }
}
