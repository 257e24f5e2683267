//! A process's stdio as containerd names it: named fifos (plain paths), `file://` paths,
//! `binary://` log drivers, or a terminal through runc's console socket.
//!
//! No container ever holds a descriptor to a host file: every stream of a process is a
//! pipe (or a pty) whose other end the shim holds, and the shim moves the data.
//!
//! Without a terminal, stdout and stderr are each a pipe: the process gets the write end,
//! and a copy on the event loop splices the read end into the target fifo (zero copy),
//! or reads it and appends to a `file://` target (splice(2) refuses a file opened with
//! O_APPEND). Once containerd's reader has the fifo open, the shim holds it open
//! read-write, so the process never takes SIGPIPE while containerd restarts: a full fifo
//! only makes the copy wait for room, and then the pipe fills and the process's writes
//! wait. Before the reader comes, the output waits in the pipe (`fifo_sink`). A copy runs
//! until end of input, when every writer of the pipe (the process and any child that
//! inherited it) has closed it, and then closes the target, which is how containerd's
//! reader learns the stream ended. An exit waits for that, bounded: past the bound a
//! container's init has its targets closed anyway (`Io::drained`), and what still arrives
//! is drained and dropped until Delete closes the pipe; an exec's output is copied on
//! until the exec is deleted (`Io::settled`), as the runc shim does.
//! stdin goes through a pipe the shim feeds from the fifo, so that `CloseIO` can end it.
//! `binary://` loggers read pipes too, and a stream with no target is a pipe as well,
//! never the host's `/dev/null`. With a terminal, the shim copies between the fifos
//! and the pty master in both directions. A slow or absent reader stalls only its copy,
//! never the shim.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, IoContext, Result};
use crate::lock::lock;
use crate::reaper::Reaper;
use crate::task::uri::{parse_target, Target};

/// How long `Create` waits for a `binary://` logger to say it is ready, and for runc to
/// hand over a pty master.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most one splice(2) asks to move: more than a pipe holds by default (64 KiB), so
/// one call moves whatever the pipe has.
const SPLICE_CHUNK: usize = 1 << 20;

/// The buffer of a copy that reads and writes (a pty master, a `file://` target).
const COPY_BUFFER: usize = 64 * 1024;

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

/// Opens a fifo for the shim, read-write (the open never waits for a peer, a write never
/// meets EPIPE) and nonblocking.
fn open_fifo(path: &Path) -> io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(OwnedFd::from)
}

/// How long an output copy first waits before it looks again for the reader of its
/// target fifo, and the longest it waits between two looks.
const READER_POLL_FIRST: Duration = Duration::from_millis(1);
const READER_POLL_MAX: Duration = Duration::from_millis(100);

/// An output fifo as a sink. containerd opens its reading end asynchronously (its fifo
/// package opens `O_RDONLY` in a goroutine and returns at once), so the reader may come
/// after the process has written everything and exited. A fifo held only by the shim
/// loses what it holds when the shim closes it, and a reader that opens it afterwards
/// waits for a writer that never comes: containerd then never sees the end of that
/// output (an exec's stdout, in one run after a containerd restart). So the shim opens
/// the fifo read-write only once a reader has it open; until then the sink waits for
/// one (see [`reader_opened`]), and the output stays in the process's pipe, as the runc
/// shim's blocking `O_WRONLY` open holds it.
fn fifo_sink(path: &Path) -> Result<Sink> {
    with_reader(path)
        .map(|sink| sink.unwrap_or_else(|| Sink::AwaitReader(path.to_owned())))
        .context(|| format!("open fifo {}", path.display()))
}

/// The fifo at `path` opened read-write for the shim if a reader has it open, `None`
/// while none has. The write-only descriptor that tells is held until the read-write one
/// is open, so that the reader never sees the writers fall to none.
fn with_reader(path: &Path) -> io::Result<Option<Sink>> {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(_writer) => open_fifo(path).and_then(Sink::pipe).map(Some),
        // ENXIO: no reader has it open.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until a reader has opened the fifo at `path`, looking again after 1 ms, then
/// twice as long each time up to 100 ms (the copy that waits is ended by the process's
/// output being released, or by Delete); then opens it read-write for the shim.
async fn reader_opened(path: &Path) -> io::Result<Sink> {
    let mut pause = READER_POLL_FIRST;
    loop {
        if let Some(sink) = with_reader(path)? {
            return Ok(sink);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(READER_POLL_MAX);
    }
}

/// Opens a `file://` target for the shim to append to (mode 0644 when it is created);
/// only the shim ever holds it.
fn open_file(path: &PathBuf) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(|| format!("create {}", dir.display()))?;
    }
    // Non-blocking, and only a regular file: a fifo or a device at that path would make
    // the open, or later writes, wait on the shim's one thread.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .context(|| format!("open log file {}", path.display()))?;
    let meta = f
        .metadata()
        .context(|| format!("stat log file {}", path.display()))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "log file {} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// Where an output copy puts what it reads.
enum Sink {
    /// A fifo (opened read-write once its reader came) or a logger's pipe, nonblocking.
    Pipe(AsyncFd<OwnedFd>),
    /// A fifo no reader has opened yet: the copy waits for one before it reads input.
    AwaitReader(PathBuf),
    /// A `file://` target, opened for appending.
    File(std::fs::File),
    /// Nowhere: the target is closed (released, or it failed); input is still drained so
    /// that no writer blocks on a full pipe.
    Discard,
}

impl Sink {
    fn pipe(fd: OwnedFd) -> io::Result<Sink> {
        set_nonblocking(&fd)?;
        Ok(Sink::Pipe(crate::sys::async_fd(fd)?))
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            // A regular file's write goes to the page cache; it does not wait for a peer.
            Sink::File(f) => f.write_all(buf),
            Sink::Pipe(fd) => write_all(fd, buf).await,
            Sink::Discard => Ok(()),
            // `transfer` opens the fifo before it reads any input.
            Sink::AwaitReader(path) => Err(io::Error::other(format!(
                "fifo {} written before its reader came",
                path.display()
            ))),
        }
    }
}

/// Which side of a copy failed.
enum Fault {
    Source(io::Error),
    Sink(io::Error),
}

/// Whether a pipe has data to read now (or no writer left: a read would not wait).
fn has_input(fd: &AsyncFd<OwnedFd>) -> bool {
    polls(fd, PollFlags::POLLIN)
}

/// Whether a pipe has room for a write now (or no reader left: a write would not wait).
fn has_room(fd: &AsyncFd<OwnedFd>) -> bool {
    polls(fd, PollFlags::POLLOUT)
}

fn polls(fd: &AsyncFd<OwnedFd>, what: PollFlags) -> bool {
    let mut fds = [PollFd::new(fd.get_ref().as_fd(), what)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// A side of a splice.
#[derive(Debug, PartialEq)]
enum Side {
    Input,
    Room,
}

/// After a splice met EAGAIN: the side whose readiness to forget, none if both are
/// ready again.
fn not_ready(input: bool, room: bool) -> Option<Side> {
    match (input, room) {
        (false, _) => Some(Side::Input),
        (true, false) => Some(Side::Room),
        (true, true) => None,
    }
}

/// Moves what `src` holds into `dst` with splice(2), pipe to pipe, without copying it
/// through the shim; waits on the event loop for input and for room. Returns 0 at end of
/// input.
async fn splice_some(
    src: &AsyncFd<OwnedFd>,
    dst: &AsyncFd<OwnedFd>,
) -> std::result::Result<usize, Fault> {
    loop {
        let mut input = src.readable().await.map_err(Fault::Source)?;
        let mut room = dst.writable().await.map_err(Fault::Sink)?;
        match nix::fcntl::splice(
            src.get_ref(),
            None,
            dst.get_ref(),
            None,
            SPLICE_CHUNK,
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            // Either side may be the one that is not ready: forget the readiness of the
            // one that is not now, so that its next edge wakes the copy (an edge that came
            // after the readiness was taken is kept by the reactor). If both are ready by
            // now (input came after the splice), splice again: forgetting the target's
            // room then would wait for room that nothing makes.
            Err(Errno::EAGAIN) => match not_ready(has_input(src), has_room(dst)) {
                Some(Side::Input) => input.clear_ready(),
                Some(Side::Room) => room.clear_ready(),
                None => {}
            },
            Err(e) => return Err(Fault::Sink(e.into())),
        }
    }
}

/// Moves some input to the sink; 0 at end of input.
async fn transfer(
    src: &AsyncFd<OwnedFd>,
    sink: &mut Sink,
    buf: &mut Vec<u8>,
    spliced: bool,
) -> std::result::Result<usize, Fault> {
    if let Sink::AwaitReader(path) = &*sink {
        *sink = reader_opened(path).await.map_err(Fault::Sink)?;
    }
    if let (true, Sink::Pipe(dst)) = (spliced, &*sink) {
        return splice_some(src, dst).await;
    }
    if buf.is_empty() {
        buf.resize(COPY_BUFFER, 0);
    }
    let n = read_some(src, buf).await.map_err(Fault::Source)?;
    sink.write_all(&buf[..n]).await.map_err(Fault::Sink)?;
    Ok(n)
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

/// Copies `src` (a pipe, or a pty master: `spliced` says which) to `sink` until end of
/// input (EIO on a pty master whose slave is gone), then closes the sink. When `release`
/// turns true, or the sink fails, the sink is closed and the copy keeps draining `src`,
/// so that no writer ever blocks on it.
async fn copy_out(
    src: AsyncFd<OwnedFd>,
    mut sink: Sink,
    spliced: bool,
    mut release: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    let mut released = false;
    loop {
        tokio::select! {
            biased;
            _ = release.wait_for(|r| *r), if !released => {
                released = true;
                sink = Sink::Discard;
            }
            r = transfer(&src, &mut sink, &mut buf, spliced) => match r {
                Ok(0) => return,
                Ok(_) => {}
                Err(Fault::Sink(e)) => {
                    log::warn!("stdio output copy: {e}; discarding further output");
                    sink = Sink::Discard;
                }
                Err(Fault::Source(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(Fault::Source(e)) => {
                    if e.raw_os_error() != Some(libc::EIO) {
                        log::warn!("stdio output copy: {e}");
                    }
                    return;
                }
            },
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

    /// The pty master runc sends, within [`HANDSHAKE_TIMEOUT`] for the whole exchange.
    async fn receive(&self) -> Result<OwnedFd> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.receive_unbounded())
            .await
            .map_err(|_| Error::Internal("runc did not send the pty master".into()))?
    }

    async fn receive_unbounded(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .await
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
pub struct Io {
    stdin_close: Mutex<Option<oneshot::Sender<()>>>,
    copies: Mutex<Vec<JoinHandle<()>>>,
    master: Mutex<Option<OwnedFd>>,
    /// Tells the output copies to close their targets (see [`Io::drained`]).
    release: watch::Sender<bool>,
    /// How many output copies are still running.
    running: watch::Sender<usize>,
}

/// Counts one running output copy, until it ends or is aborted.
struct Running(watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Default for Io {
    fn default() -> Io {
        Io {
            stdin_close: Mutex::default(),
            copies: Mutex::default(),
            master: Mutex::default(),
            release: watch::channel(false).0,
            running: watch::channel(0).0,
        }
    }
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

    /// Starts an output copy from `src` into `sink` (see [`copy_out`]).
    fn copy_out(&self, src: AsyncFd<OwnedFd>, sink: Sink, spliced: bool) {
        self.running.send_modify(|n| *n += 1);
        let running = Running(self.running.clone());
        let copy = copy_out(src, sink, spliced, self.release.subscribe());
        lock(&self.copies).push(tokio::spawn(async move {
            copy.await;
            drop(running);
        }));
    }

    /// Waits until the output copies have passed on everything written to them: until
    /// every writer has closed them (the process and whatever inherited its stdio), then
    /// their targets are closed and containerd's readers see the end. A child that keeps
    /// them open past `limit` does not hold the caller: the targets are closed then, and
    /// what still comes is dropped until [`Io::shutdown`].
    pub async fn drained(&self, limit: Duration) {
        if !self.copies_end_within(limit).await {
            log::debug!("stdio output still open after {limit:?}: closing its targets");
            self.release.send_replace(true);
        }
    }

    /// Waits, at most `limit`, until the output copies have passed on everything written
    /// to them, as [`Io::drained`], but leaves the targets open past `limit`: an exec's
    /// output is still copied after its exit is published, until its last writer closes
    /// it (a child it left behind) or the exec is deleted ([`Io::shutdown`]), as
    /// containerd's runc shim does. A client that waits for the end of the output (CRI's
    /// `drain_exec_sync_io_timeout`) then bounds the wait itself.
    pub async fn settled(&self, limit: Duration) {
        if !self.copies_end_within(limit).await {
            log::debug!(
                "exec output still open after {limit:?}: it is copied until the exec is deleted"
            );
        }
    }

    /// Whether every output copy reached the end of its input within `limit`.
    async fn copies_end_within(&self, limit: Duration) -> bool {
        let mut running = self.running.subscribe();
        let ended = tokio::time::timeout(limit, running.wait_for(|n| *n == 0)).await;
        ended.is_ok()
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
    term_out: Option<Sink>,
    io: Io,
}

impl Prepared {
    /// Descriptors for runc's stdio. Without a terminal, a stream with no target is still
    /// a pipe, never the host's `/dev/null` (a device inode the container could chmod
    /// through `/proc/self/fd`): stdin one whose writer is gone, so reads see the end; an
    /// output one the shim drains. With a terminal the process gets the pty, and runc
    /// alone sees these (`/dev/null`).
    pub fn stdio(&mut self) -> Result<[Stdio; 3]> {
        let terminal = self.console.is_some();
        let null = |fd: Option<OwnedFd>| -> Result<Option<OwnedFd>> {
            match (fd, terminal) {
                (Some(fd), _) => Ok(Some(fd)),
                (None, true) => null_file().map(|f| Some(f.into())),
                (None, false) => Ok(None),
            }
        };
        let stdin = match null(self.stdin.take())? {
            Some(fd) => fd,
            None => pipe()?.0,
        };
        let output = |fd: Option<OwnedFd>| -> Result<OwnedFd> {
            match null(fd)? {
                Some(fd) => Ok(fd),
                None => {
                    let (r, w) = pipe()?;
                    set_nonblocking(&r).context(|| "output pipe".into())?;
                    let r = crate::sys::async_fd(r).context(|| "register output pipe".into())?;
                    self.io.copy_out(r, Sink::Discard, false);
                    Ok(w)
                }
            }
        };
        let stdout = output(self.stdout.take())?;
        let stderr = output(self.stderr.take())?;
        Ok([stdin.into(), stdout.into(), stderr.into()])
    }

    /// After runc has made the process: receive the pty master and start the copies.
    pub async fn finish(mut self) -> Result<Io> {
        if let Some(console) = self.console.take() {
            let master = console.receive().await?;
            drop(console);
            let out = master.try_clone().context(|| "dup pty master".into())?;
            set_nonblocking(&out).context(|| "pty master".into())?;
            let out = crate::sys::async_fd(out).context(|| "register pty master".into())?;
            let sink = self.term_out.take().unwrap_or(Sink::Discard);
            self.io.copy_out(out, sink, false);
            if let Some(src) = self.term_in.take() {
                let input = master.try_clone().context(|| "dup pty master".into())?;
                let input = crate::sys::async_fd(input).context(|| "register pty master".into())?;
                let src = crate::sys::async_fd(src).context(|| "register stdin fifo".into())?;
                let (tx, rx) = oneshot::channel();
                *lock(&self.io.stdin_close) = Some(tx);
                // Aborted on shutdown like the output copies: a child that holds the
                // terminal without reading must not keep it past Delete.
                lock(&self.io.copies).push(tokio::spawn(copy_in(src, input, rx)));
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
            Target::Fifo(path) => {
                Some(open_fifo(&path).context(|| format!("open fifo {}", path.display()))?)
            }
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
            Target::Fifo(path) => Some(fifo_sink(&path)?),
            Target::File(path) => Some(Sink::File(open_file(&path)?)),
            Target::Binary { .. } => match logger_pipes.take() {
                Some((o, _e)) => Some(Sink::pipe(o).context(|| "logger pipe".into())?),
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
        // Aborted on shutdown: a child that holds stdin open without reading must not keep
        // the copy (and the client's fifo) past Delete.
        lock(&p.io.copies).push(tokio::spawn(copy_in(src, w, rx)));
        p.stdin = Some(r);
    }
    if let Some((o, e)) = logger_pipes {
        p.stdout = Some(o);
        p.stderr = Some(e);
        return Ok(p);
    }
    p.stdout = piped(out, &p.io)?;
    p.stderr = piped(err, &p.io)?;
    Ok(p)
}

/// Puts a pipe in front of an output target: returns the write end for the process and
/// starts the copy from the read end into the target, which only the shim holds.
fn piped(t: Target, io: &Io) -> Result<Option<OwnedFd>> {
    let (sink, spliced) = match t {
        Target::Null => return Ok(None),
        Target::Fifo(path) => (fifo_sink(&path)?, true),
        // splice(2) refuses a file opened with O_APPEND (EINVAL), and appending is what
        // keeps two writers of one log (stdout and stderr) from overwriting each other.
        Target::File(path) => (Sink::File(open_file(&path)?), false),
        Target::Binary { .. } => {
            return Err(Error::InvalidArgument(
                "a binary:// logger must be given as stdout".into(),
            ))
        }
    };
    let (r, w) = pipe()?;
    set_nonblocking(&r).context(|| "output pipe".into())?;
    let r = crate::sys::async_fd(r).context(|| "register output pipe".into())?;
    io.copy_out(r, sink, spliced);
    Ok(Some(w))
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
    let pidfd = crate::sys::pidfd_open(child.id() as i32).ok();
    let _ = owner.reaper.watch(child.id() as i32, born);
    drop((out_r, err_r, ready_w));
    // The driver closes its end (fd 5) when it is ready; read until EOF on the event loop.
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_pipe(ready_r)).await {
        Ok(_) => Ok((out_w, err_w)),
        Err(_) => {
            // As containerd does: a driver that never became ready is killed.
            if let Some(fd) = &pidfd {
                let _ =
                    crate::sys::pidfd_send_signal(fd.as_fd(), nix::sys::signal::Signal::SIGKILL);
            }
            Err(Error::Internal(format!(
                "log driver {} did not become ready within {}s; killed",
                path.display(),
                HANDSHAKE_TIMEOUT.as_secs()
            )))
        }
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
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cove-stdio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn owner(reaper: &Reaper) -> Owner<'_> {
        Owner {
            id: "t",
            namespace: "ns",
            reaper,
        }
    }

    fn paths(stdout: &Path, stderr: &Path) -> Paths {
        Paths {
            stdin: String::new(),
            stdout: stdout.to_string_lossy().into_owned(),
            stderr: stderr.to_string_lossy().into_owned(),
            terminal: false,
        }
    }

    /// A process's stdio with stdout to a new fifo (nothing opened on it yet) and no
    /// stderr: the scratch directory, the fifo, the write end for the process, its Io.
    async fn stdout_to_a_fifo(name: &str) -> (PathBuf, PathBuf, OwnedFd, Io) {
        let d = scratch(name);
        let out = d.join("out");
        nix::unistd::mkfifo(&out, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let reaper = Reaper::default();
        let mut p = prepare(&paths(&out, Path::new("")), owner(&reaper))
            .await
            .unwrap();
        assert!(p.stderr.is_none());
        let w = p.stdout.take().unwrap();
        (d, out, w, p.finish().await.unwrap())
    }

    /// What a reader of the fifo gets until end of input (every writer gone).
    fn read_fifo(path: &Path) -> std::thread::JoinHandle<Vec<u8>> {
        let path = path.to_owned();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            std::fs::File::open(path)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            got
        })
    }

    /// A process's output goes through pipes; a fifo smaller than what is written makes
    /// the copy wait for room (never the event loop), and the end of input closes it.
    #[tokio::test]
    async fn output_reaches_fifos_through_pipes_and_ends_with_them() {
        let d = scratch("fifo");
        let (out, err) = (d.join("out"), d.join("err"));
        for f in [&out, &err] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        let reaper = Reaper::default();
        let mut p = prepare(&paths(&out, &err), owner(&reaper)).await.unwrap();
        let (w_out, w_err) = (p.stdout.take().unwrap(), p.stderr.take().unwrap());
        for w in [&w_out, &w_err] {
            let st = nix::sys::stat::fstat(w.as_raw_fd()).unwrap();
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO);
            let link = std::fs::read_link(format!("/proc/self/fd/{}", w.as_raw_fd())).unwrap();
            assert!(link.to_string_lossy().starts_with("pipe:"), "{link:?}");
        }
        let io = p.finish().await.unwrap();
        let (r_out, r_err) = (read_fifo(&out), read_fifo(&err));
        // Four times a pipe's default size, from another thread as a process would.
        let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w_out);
            f.write_all(&sent).unwrap();
            let mut e = std::fs::File::from(w_err);
            e.write_all(b"to stderr\n").unwrap();
        });
        io.drained(Duration::from_secs(30)).await;
        writer.join().unwrap();
        assert_eq!(r_out.join().unwrap(), data);
        assert_eq!(r_err.join().unwrap(), b"to stderr\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// After a splice meets EAGAIN, only a side that is not ready now has its readiness
    /// forgotten: input that came after the splice is spliced at once, never taken for
    /// a full target (whose room no event would bring back: nothing reads an empty fifo).
    #[test]
    fn a_splice_that_could_not_go_on_forgets_only_a_side_that_is_not_ready() {
        assert_eq!(not_ready(false, true), Some(Side::Input));
        assert_eq!(not_ready(false, false), Some(Side::Input));
        assert_eq!(not_ready(true, false), Some(Side::Room));
        assert_eq!(not_ready(true, true), None);
    }

    /// containerd opens its end of an output fifo in a goroutine of its own, which may
    /// run only after the process has written everything and exited. That output, and
    /// its end, still reach the reader: the shim held the fifo alone, wrote into it and
    /// closed it, and the late reader then waited for a writer that never came.
    #[tokio::test]
    async fn a_reader_that_comes_after_the_process_is_gone_gets_its_output_and_end() {
        let (d, out, w, io) = stdout_to_a_fifo("late").await;
        // The process writes all it has and is gone.
        std::fs::File::from(w).write_all(b"all of it\n").unwrap();
        // Time for the copy to reach the end of its input, were it not waiting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (tx, rx) = std::sync::mpsc::channel();
        let late = out.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let read = std::fs::File::open(late).and_then(|mut f| f.read_to_end(&mut got));
            let _ = tx.send(read.map(|_| got));
        });
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap();
        if got.is_err() {
            // Let the reader's open go, so the test ends.
            drop(
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&out),
            );
        }
        assert_eq!(
            got.map(|r| r.unwrap()),
            Ok(b"all of it\n".to_vec()),
            "the late reader never got the output and its end"
        );
        io.drained(Duration::from_secs(30)).await;
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A file target is the shim's own: created 0644, appended to by both streams.
    #[tokio::test]
    async fn a_file_target_is_appended_to_by_the_shim() {
        let d = scratch("file");
        let log = d.join("sub/t.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, b"before\n").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fresh = d.join("new/t.log");
        let reaper = Reaper::default();
        for (file, want_mode) in [(&log, 0o600), (&fresh, 0o644)] {
            let uri = format!("file://{}", file.display());
            let mut p = prepare(
                &Paths {
                    stdin: String::new(),
                    stdout: uri.clone(),
                    stderr: uri,
                    terminal: false,
                },
                owner(&reaper),
            )
            .await
            .unwrap();
            let (w_out, w_err) = (p.stdout.take().unwrap(), p.stderr.take().unwrap());
            let io = p.finish().await.unwrap();
            let mut o = std::fs::File::from(w_out);
            let mut e = std::fs::File::from(w_err);
            o.write_all(b"out\n").unwrap();
            e.write_all(b"err\n").unwrap();
            drop((o, e));
            io.drained(Duration::from_secs(30)).await;
            let text = std::fs::read_to_string(file).unwrap();
            let mut lines: Vec<_> = text.lines().collect();
            if file == &log {
                assert_eq!(lines.remove(0), "before", "{text}");
            }
            lines.sort();
            assert_eq!(lines, ["err", "out"], "{text}");
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, want_mode, "{}", file.display());
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A child that keeps the output open holds an exit only as long as the bound: then
    /// the target is closed (its reader sees the end) and the child's writes still go
    /// somewhere, never to EPIPE.
    #[tokio::test]
    async fn an_output_held_open_is_let_go_at_the_bound() {
        let (d, out, w, io) = stdout_to_a_fifo("held").await;
        let reader = read_fifo(&out);
        let mut w = std::fs::File::from(w);
        w.write_all(b"first\n").unwrap();
        let began = std::time::Instant::now();
        io.drained(Duration::from_millis(300)).await;
        assert!(began.elapsed() < Duration::from_secs(5));
        // The reader ends although the writer is still open.
        let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert_eq!(got, b"first\n");
        for _ in 0..64 {
            w.write_all(&[0u8; 4096]).unwrap();
            tokio::task::yield_now().await;
        }
        io.shutdown();
        drop(w);
        let _ = std::fs::remove_dir_all(&d);
    }

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
