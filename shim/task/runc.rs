//! The OCI runtime binary (runc by default), driven through its command line.
//!
//! Commands are started with `std::process::Command` and never waited on directly: the
//! shim's single reaper collects every child (`waitpid(-1)`), and each command's exit is
//! claimed through it. runc writes its errors as JSON lines to `<bundle>/log.json`; the
//! last error line a failed command wrote becomes the RPC's error message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext, Result};
use crate::reaper::{wait_exit, Reaper};
use crate::task::stdio::read_pipe;

/// Where runc keeps container state when the runtime options name no root.
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

#[derive(Clone)]
pub struct Runc {
    pub binary: String,
    /// runc's state directory, already joined with the namespace.
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub reaper: Reaper,
}

/// Options of `runc create` and `runc exec` that concern the new process.
#[derive(Default)]
pub struct Launch<'a> {
    pub pid_file: PathBuf,
    pub console_socket: Option<&'a Path>,
    pub stdio: Option<[Stdio; 3]>,
}

/// Where `runc restore` finds a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFrom {
    /// The checkpoint's image directory (Task.Create's `checkpoint`).
    pub image: PathBuf,
    /// CRIU's work directory (the runtime options' `criu_work_path`), if set.
    pub work: Option<PathBuf>,
    pub no_pivot: bool,
}

impl Runc {
    fn command(&self, log: &Path) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c
    }

    /// Runs one runc command to completion, within [`CALL_TIMEOUT`]; returns its stdout.
    async fn run(
        &self,
        cmd: Command,
        log: &Path,
        stdio: Option<[Stdio; 3]>,
        what: &str,
    ) -> Result<Vec<u8>> {
        self.run_within(cmd, log, stdio, what, CALL_TIMEOUT).await
    }

    async fn run_within(
        &self,
        cmd: Command,
        log: &Path,
        stdio: Option<[Stdio; 3]>,
        what: &str,
        limit: std::time::Duration,
    ) -> Result<Vec<u8>> {
        let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let out = match run_command_within(&self.reaper, cmd, stdio, limit).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(Error::DeadlineExceeded(format!(
                    "{what}: {} {e}",
                    self.binary
                )))
            }
            r => r.context(|| format!("{what}: run {}", self.binary))?,
        };
        if out.status == 0 {
            return Ok(out.stdout);
        }
        let msg = last_error(log, before)
            .or_else(|| {
                let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
                (!e.is_empty()).then_some(e)
            })
            .unwrap_or_else(|| format!("exit status {}", out.status));
        Err(classify(what, msg))
    }

    /// The part `runc create` and `runc exec` share: the subcommand and its own flags,
    /// then the pid file and console socket of the new process.
    fn launch_command(&self, log: &Path, args: &[&std::ffi::OsStr], l: &Launch<'_>) -> Command {
        let mut c = self.command(log);
        c.args(args).arg("--pid-file").arg(&l.pid_file);
        if let Some(s) = l.console_socket {
            c.arg("--console-socket").arg(s);
        }
        c
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        l: Launch<'_>,
        no_pivot: bool,
        no_new_keyring: bool,
    ) -> Result<()> {
        let log = bundle.join("log.json");
        let mut c = self.launch_command(
            &log,
            &["create".as_ref(), "--bundle".as_ref(), bundle.as_ref()],
            &l,
        );
        if no_pivot {
            c.arg("--no-pivot");
        }
        if no_new_keyring {
            c.arg("--no-new-keyring");
        }
        c.arg(id).current_dir(bundle);
        self.run(c, &log, l.stdio, &format!("create {id}"))
            .await
            .map(drop)
    }

    pub async fn exec(&self, id: &str, bundle: &Path, process: &Path, l: Launch<'_>) -> Result<()> {
        let log = bundle.join("log.json");
        let args: [&std::ffi::OsStr; 4] = [
            "exec".as_ref(),
            "--process".as_ref(),
            process.as_ref(),
            "--detach".as_ref(),
        ];
        let mut c = self.launch_command(&log, &args, &l);
        c.arg(id).current_dir(bundle);
        self.run(c, &log, l.stdio, &format!("exec in {id}"))
            .await
            .map(drop)
    }

    async fn simple(&self, bundle: &Path, args: &[&str], what: String) -> Result<Vec<u8>> {
        let log = bundle.join("log.json");
        let mut c = self.command(&log);
        c.args(args);
        self.run(c, &log, None, &what).await
    }

    pub async fn start(&self, id: &str, bundle: &Path) -> Result<()> {
        self.simple(bundle, &["start", id], format!("start {id}"))
            .await
            .map(drop)
    }

    pub async fn delete(&self, id: &str, bundle: &Path, force: bool) -> Result<()> {
        let args: &[&str] = if force {
            &["delete", "--force", id]
        } else {
            &["delete", id]
        };
        self.simple(bundle, args, format!("delete {id}"))
            .await
            .map(drop)
    }

    /// Whether runc keeps state for container `id` (its state directory exists).
    pub fn has_state(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    /// Deletes a stopped container as `runc delete` does for one with no poststop hooks
    /// under the cgroupfs driver: its cgroups (from runc's `state.json`), then its state
    /// directory, without the cost of running runc. Returns false, having removed at most
    /// some empty cgroups, when anything is unexpected (no or unreadable state, a process
    /// still in a cgroup, a cgroup that will not go); the caller then runs `runc delete`.
    pub fn remove_stopped(&self, id: &str) -> bool {
        let dir = self.root.join(id);
        let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
            return false;
        };
        let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let Some(paths) = state.get("cgroup_paths").and_then(|p| p.as_object()) else {
            return false;
        };
        let mut dirs: Vec<PathBuf> = paths
            .values()
            .filter_map(|p| p.as_str())
            .map(PathBuf::from)
            .filter(|p| p.starts_with("/sys/fs/cgroup"))
            .collect();
        dirs.sort();
        dirs.dedup();
        let busy = |d: &PathBuf| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty())
        };
        if dirs.iter().any(busy) {
            return false;
        }
        for d in &dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    log::debug!(
                        "remove cgroup {} of {id}: {e}; leaving it to runc",
                        d.display()
                    );
                    return false;
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                log::debug!("remove {}: {e}; leaving it to runc", dir.display());
                false
            }
        }
    }

    pub async fn kill(&self, id: &str, bundle: &Path, signal: i32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.simple(bundle, &args, format!("kill {id}"))
            .await
            .map(drop)
    }

    pub async fn pause(&self, id: &str, bundle: &Path) -> Result<()> {
        self.simple(bundle, &["pause", id], format!("pause {id}"))
            .await
            .map(drop)
    }

    pub async fn resume(&self, id: &str, bundle: &Path) -> Result<()> {
        self.simple(bundle, &["resume", id], format!("resume {id}"))
            .await
            .map(drop)
    }

    pub async fn update(&self, id: &str, bundle: &Path, resources: &Path) -> Result<()> {
        let r = resources.to_string_lossy();
        self.simple(
            bundle,
            &["update", "--resources", &r, id],
            format!("update {id}"),
        )
        .await
        .map(drop)
    }

    /// The pids of every process in the container.
    pub async fn ps(&self, id: &str, bundle: &Path) -> Result<Vec<u32>> {
        let out = self
            .simple(bundle, &["ps", "--format", "json", id], format!("ps {id}"))
            .await?;
        let pids: Option<Vec<u32>> = serde_json::from_slice(&out)
            .map_err(|e| Error::Internal(format!("runc ps {id}: {e}")))?;
        Ok(pids.unwrap_or_default())
    }

    pub async fn checkpoint(&self, id: &str, bundle: &Path, args: &[String]) -> Result<()> {
        let log = bundle.join("log.json");
        let mut c = self.command(&log);
        c.arg("checkpoint").args(args).arg(id);
        self.run_within(
            c,
            &log,
            None,
            &format!("checkpoint {id}"),
            CHECKPOINT_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// `runc restore --detach`: the container is recreated from its checkpoint and runs on.
    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        l: Launch<'_>,
        from: &RestoreFrom,
    ) -> Result<()> {
        let log = bundle.join("log.json");
        let args: [&std::ffi::OsStr; 5] = [
            "restore".as_ref(),
            "--detach".as_ref(),
            // The shim is the subreaper of what it runs.
            "--no-subreaper".as_ref(),
            "--bundle".as_ref(),
            bundle.as_ref(),
        ];
        let mut c = self.launch_command(&log, &args, &l);
        c.arg("--image-path").arg(&from.image);
        if let Some(w) = &from.work {
            c.arg("--work-path").arg(w);
        }
        if from.no_pivot {
            c.arg("--no-pivot");
        }
        c.arg(id).current_dir(bundle);
        self.run_within(
            c,
            &log,
            l.stdio,
            &format!("restore {id}"),
            CHECKPOINT_TIMEOUT,
        )
        .await
        .map(drop)
    }
}

pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How long one runc (or criu) call may take before it is killed and the request fails
/// with DEADLINE_EXCEEDED: kubelet's default runtime request timeout (2 minutes), which is
/// what bounds containerd's runc shim's runc calls (they run under the request's context).
/// A hook that hangs, or a container that stalls `runc exec` (a FUSE mount it serves as
/// the exec's cwd), holds its request no longer.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// A checkpoint writes the container's whole memory through CRIU: its own, longer bound.
pub const CHECKPOINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs a command to completion, its exit collected through the reaper, within
/// [`CALL_TIMEOUT`]. Without `stdio` its stdout and stderr are captured.
pub async fn run_command(
    reaper: &Reaper,
    cmd: Command,
    stdio: Option<[Stdio; 3]>,
) -> std::io::Result<Output> {
    run_command_within(reaper, cmd, stdio, CALL_TIMEOUT).await
}

/// [`run_command`] with its own bound: a command still running at `limit` is killed
/// (through a pidfd, so never a later process with its pid) and the call fails with
/// `TimedOut`.
pub async fn run_command_within(
    reaper: &Reaper,
    mut cmd: Command,
    stdio: Option<[Stdio; 3]>,
    limit: std::time::Duration,
) -> std::io::Result<Output> {
    let captured = stdio.is_none();
    match stdio {
        Some([i, o, e]) => {
            cmd.stdin(i).stdout(o).stderr(e);
        }
        None => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
    }
    let born = std::time::Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Before anything can reap it: the pidfd names this process only.
    let pidfd = crate::sys::pidfd_open(pid).ok();
    let mut exit = reaper.watch(pid, born);
    let pipes = if captured {
        child.stdout.take().zip(child.stderr.take())
    } else {
        None
    };
    drop(child);
    let finished = tokio::time::timeout(limit, async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        // Read on the shim's own event loop: no blocking-pool thread (and no malloc arena
        // of its own) per runc call.
        if let Some((o, e)) = pipes {
            let (ob, eb) = tokio::join!(read_pipe(o.into()), read_pipe(e.into()));
            (stdout, stderr) = (ob?, eb?);
        }
        let status = wait_exit(&mut exit).await.map(|e| e.status).unwrap_or(255);
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    })
    .await;
    match finished {
        Ok(out) => out,
        Err(_) => {
            match &pidfd {
                Some(fd) => {
                    let _ = crate::sys::pidfd_send_signal(
                        std::os::fd::AsFd::as_fd(fd),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                None => log::warn!("pid {pid} outlived its {limit:?} and could not be killed"),
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("did not finish within {}s; killed", limit.as_secs()),
            ))
        }
    }
}

/// runc's own words for a missing container become NOT_FOUND; the rest UNKNOWN, as
/// containerd reports runtime failures.
fn classify(what: &str, msg: String) -> Error {
    let m = msg.to_ascii_lowercase();
    if m.contains("does not exist") || m.contains("container not found") {
        Error::NotFound(format!("{what}: {msg}"))
    } else if m.contains("container not running") || m.contains("process already finished") {
        Error::NotFound(format!("{what}: process already finished ({msg})"))
    } else {
        Error::Unknown(format!("{what}: runc: {msg}"))
    }
}

/// The most of what a failed runc call appended to its log that is read for its error: the
/// error runc fails with is its last line, and a pod can make the log grow without bound
/// (a failing exec probe with a 100 kB argv, once a second).
const MAX_LOG_TAIL: u64 = 64 << 10;

/// The message of the last `"level":"error"` line runc appended to its log after `from`.
fn last_error(log: &Path, from: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    last_error_in(&mut f, from)
}

/// [`last_error`] on an open log: reads only what was appended after `from`, and of that
/// at most the last [`MAX_LOG_TAIL`] bytes (a line cut at the start of the window is
/// dropped).
fn last_error_in<R: std::io::Read + std::io::Seek>(log: &mut R, from: u64) -> Option<String> {
    use std::io::{Read, SeekFrom};
    let end = log.seek(SeekFrom::End(0)).ok()?;
    if end <= from {
        return None;
    }
    let start = from.max(end.saturating_sub(MAX_LOG_TAIL));
    log.seek(SeekFrom::Start(start)).ok()?;
    let mut data = Vec::new();
    log.take(end - start).read_to_end(&mut data).ok()?;
    let mut tail = data.as_slice();
    if start > from {
        let cut = tail
            .iter()
            .position(|b| *b == b'\n')
            .map_or(tail.len(), |i| i + 1);
        tail = &tail[cut..];
    }
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .find_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_after_the_offset_is_reported() {
        let dir = std::env::temp_dir().join(format!("cove-runc-log-{}", std::process::id()));
        std::fs::write(
            &dir,
            concat!(
                "{\"level\":\"error\",\"msg\":\"old\"}\n",
                "{\"level\":\"info\",\"msg\":\"x\"}\n",
                "{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n"
            ),
        )
        .unwrap();
        let off = "{\"level\":\"error\",\"msg\":\"old\"}\n".len() as u64;
        assert_eq!(
            last_error(&dir, off).as_deref(),
            Some("exec: \"nope\": not found")
        );
        assert_eq!(last_error(&dir, 10_000), None);
        let _ = std::fs::remove_file(&dir);
    }

    /// A log that refuses to hand out more than `budget` bytes in total, and counts them.
    struct Budgeted {
        inner: std::fs::File,
        read: u64,
        budget: u64,
    }

    impl std::io::Read for Budgeted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            if self.read > self.budget {
                return Err(std::io::Error::other("read past the budget"));
            }
            Ok(n)
        }
    }

    impl std::io::Seek for Budgeted {
        fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    fn error_line(msg: &str) -> String {
        format!("{}\n", serde_json::json!({"level": "error", "msg": msg}))
    }

    #[test]
    fn a_huge_log_is_read_only_in_its_bounded_appended_tail() {
        use std::io::{Seek, Write};
        let path = std::env::temp_dir().join(format!("cove-runc-biglog-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        // What earlier calls left: an error, then 8 GiB (sparse: no disk, no memory).
        f.write_all(error_line("old").as_bytes()).unwrap();
        let from = 8 << 30;
        f.set_len(from).unwrap();
        f.seek(std::io::SeekFrom::End(0)).unwrap();
        // What the failed call appended: 4 MiB of noise around the error that counts.
        let noise = format!(
            "{}\n",
            serde_json::json!({"level": "info", "msg": "x".repeat(1000)})
        );
        for _ in 0..(4 << 20) / noise.len() {
            f.write_all(noise.as_bytes()).unwrap();
        }
        f.write_all(error_line("exec: \"probe\": argument list too long").as_bytes())
            .unwrap();
        f.write_all(noise.as_bytes()).unwrap();
        drop(f);

        let mut log = Budgeted {
            inner: std::fs::File::open(&path).unwrap(),
            read: 0,
            budget: MAX_LOG_TAIL,
        };
        let found = last_error_in(&mut log, from);
        let read = log.read;
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            found.as_deref(),
            Some("exec: \"probe\": argument list too long")
        );
        assert!(read <= MAX_LOG_TAIL, "{read} bytes read");
    }

    #[test]
    fn nothing_appended_reads_nothing() {
        let path = std::env::temp_dir().join(format!("cove-runc-nolog-{}", std::process::id()));
        std::fs::write(&path, error_line("old")).unwrap();
        let mut log = Budgeted {
            inner: std::fs::File::open(&path).unwrap(),
            read: 0,
            budget: 0,
        };
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(last_error_in(&mut log, len), None);
        // A log that shrank below the offset (rotated, truncated) holds nothing of ours.
        assert_eq!(last_error_in(&mut log, len + 10), None);
        let _ = std::fs::remove_file(&path);
        assert_eq!(log.read, 0);
    }

    #[test]
    fn missing_containers_are_not_found() {
        assert!(matches!(
            classify("kill a", "container \"a\" does not exist".into()),
            Error::NotFound(_)
        ));
        assert!(matches!(
            classify("start a", "boom".into()),
            Error::Unknown(_)
        ));
    }
}
