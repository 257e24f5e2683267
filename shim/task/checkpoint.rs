//! Task.Checkpoint through `runc checkpoint` (CRIU), and the plain reason when CRIU cannot
//! run on the host. Restoring (`runc restore`, at the Start of a task created from a
//! checkpoint) is in `lifecycle.rs`; what it checks of a checkpoint and its errors are here.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::CheckpointTaskRequest;
use protobuf::Message;

use super::{runc, Inner};
use crate::error::{Error, Result};
use crate::protos::runc::CheckpointOptions;

impl Inner {
    pub(super) async fn checkpoint(&self, r: &CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&r.id)?;
        let opts = match r.options.as_ref() {
            Some(a) if a.type_url.ends_with("CheckpointOptions") => {
                CheckpointOptions::parse_from_bytes(&a.value)
                    .map_err(|e| Error::InvalidArgument(format!("checkpoint options: {e}")))?
            }
            _ => CheckpointOptions::default(),
        };
        let args = runc_args(&opts, &r.path).ok_or_else(|| {
            Error::InvalidArgument(format!("checkpoint of task {} needs an image path", r.id))
        })?;
        match c.runc.checkpoint(&r.id, &c.bundle, &args).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = self
                    .criu_failed(&format!("checkpoint of task {}", r.id), e)
                    .await;
                // CRIU's work directory: containerd's, or the image directory (a fresh
                // one containerd made for this checkpoint).
                let work = match opts.work_path.as_str() {
                    "" => image_of(&opts, &r.path),
                    w => w,
                };
                Err(keep_log(&c.bundle, work.as_ref(), "dump.log").await(e))
            }
        }
    }

    /// A runc error of a checkpoint or restore, with the reason when CRIU itself cannot
    /// work here (FAILED_PRECONDITION), which runc's message does not say.
    pub(super) async fn criu_failed(&self, what: &str, err: Error) -> Error {
        if !on_path("criu") {
            return Error::FailedPrecondition(format!(
                "{what} needs CRIU, and no criu binary is installed on this host ({err})"
            ));
        }
        let mut check = std::process::Command::new("criu");
        check.arg("check");
        if let Ok(out) = runc::run_command(&self.reaper, check, None).await {
            if out.status != 0 {
                let text = String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout);
                let why = text
                    .lines()
                    .rev()
                    .find(|l| l.contains("Error"))
                    .unwrap_or("failed");
                return Error::FailedPrecondition(format!(
                    "{what} needs CRIU, and CRIU cannot run on this host: `criu check`: {} ({err})",
                    why.trim()
                ));
            }
        }
        err
    }
}

/// Where CRIU's log of a failed checkpoint or restore (`log`: `dump.log`, `restore.log`)
/// can be read, noted on the error: runc's error says only that CRIU failed. CRIU writes
/// it to its work directory `work`, which containerd may remove when the call fails (an
/// image directory) or reuse for the next call (its `criu_work_path`), so the log is
/// copied to `criu-<log>` in the bundle (where containerd's runc shim keeps it too; it goes
/// with the bundle at Task.Delete).
pub(super) async fn keep_log(bundle: &Path, work: &Path, log: &str) -> impl FnOnce(Error) -> Error {
    let (from, kept) = (work.join(log), bundle.join(format!("criu-{log}")));
    let to = kept.clone();
    let at = tokio::task::spawn_blocking(move || copy_log(&from, &to))
        .await
        .is_ok_and(|r| r.is_ok())
        .then_some(kept);
    move |e: Error| match at {
        Some(p) => e.noting(&format!("CRIU's log: {}", p.display())),
        None => e,
    }
}

/// CRIU's work directory for a restore: containerd's `criu_work_path` if it names one,
/// else a fresh `criu-work` in the bundle (root's alone), whose removal is the caller's.
/// Never the image directory, which for CRI's restore comes from an archive someone else
/// wrote: CRIU opens its log there as root, through whatever link the archive put there.
pub(super) fn restore_work(bundle: &Path, given: Option<&Path>) -> Result<(PathBuf, bool)> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(w) = given {
        return Ok((w.to_owned(), false));
    }
    let dir = bundle.join("criu-work");
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(format!("remove {}", dir.display()), e))
        }
        _ => {}
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    Ok((dir, true))
}

/// The most of a CRIU log kept: its end (CRIU's verbose logs run to megabytes).
const LOG_KEPT: u64 = 4 << 20;

/// Copies CRIU's log `from` to `to` (its last [`LOG_KEPT`] bytes: CRIU's errors are at
/// its end), never through a symbolic link at either end and only from a regular file,
/// readable by root alone. Nothing else is opened: a device or FIFO is refused unopened.
fn copy_log(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::OpenOptionsExt;
    let not_a_file = || std::io::Error::other("not a regular file");
    if !std::fs::symlink_metadata(from)?.is_file() {
        return Err(not_a_file());
    }
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(from)?;
    let meta = src.metadata()?;
    if !meta.is_file() {
        return Err(not_a_file());
    }
    if meta.len() > LOG_KEPT {
        src.seek(std::io::SeekFrom::Start(meta.len() - LOG_KEPT))?;
    }
    match std::fs::remove_file(to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    std::io::copy(&mut src.take(LOG_KEPT), &mut dst).map(drop)
}

/// The files every checkpoint `runc checkpoint` writes holds: CRIU's inventory and runc's
/// record of the init's descriptors.
const CHECKPOINT_FILES: [&str; 2] = ["inventory.img", "descriptors.json"];

/// Checks that `dir` (Task.Create's checkpoint) is a checkpoint runc wrote, before a task
/// is created from it: an absolute path to a directory holding [`CHECKPOINT_FILES`].
pub fn check_image(id: &str, dir: &str) -> Result<()> {
    let path = std::path::Path::new(dir);
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "task {id}: checkpoint {dir:?} must be an absolute path"
        )));
    }
    for f in CHECKPOINT_FILES {
        if !path.join(f).is_file() {
            return Err(Error::InvalidArgument(format!(
                "task {id}: {dir} is not a checkpoint runc wrote: it has no {f}"
            )));
        }
    }
    Ok(())
}

/// `runc checkpoint`'s arguments for containerd's options and image path; `None` when
/// neither names an image path.
fn runc_args(opts: &CheckpointOptions, path: &str) -> Option<Vec<String>> {
    let image = image_of(opts, path).to_owned();
    if image.is_empty() {
        return None;
    }
    let mut args = vec!["--image-path".to_owned(), image];
    if !opts.work_path.is_empty() {
        args.extend(["--work-path".to_owned(), opts.work_path.clone()]);
    }
    if !opts.exit {
        args.push("--leave-running".into());
    }
    for (on, flag) in [
        (opts.open_tcp, "--tcp-established"),
        (opts.external_unix_sockets, "--ext-unix-sk"),
        (opts.terminal, "--shell-job"),
        (opts.file_locks, "--file-locks"),
    ] {
        if on {
            args.push(flag.into());
        }
    }
    for ns in &opts.empty_namespaces {
        args.extend(["--empty-ns".to_owned(), ns.clone()]);
    }
    Some(args)
}

/// The image directory of a checkpoint: the options' if they name one, else the request's.
fn image_of<'a>(opts: &'a CheckpointOptions, path: &'a str) -> &'a str {
    if opts.image_path.is_empty() {
        path
    } else {
        &opts.image_path
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_criu_log_is_kept_only_from_a_regular_file_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cove-criu-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (log, kept) = (dir.join("restore.log"), dir.join("criu-restore.log"));
        std::fs::write(&log, "Error (criu/cr-restore.c:1): no\n").unwrap();
        std::fs::write(&kept, "an earlier one").unwrap();
        copy_log(&log, &kept).unwrap();
        assert_eq!(
            std::fs::read_to_string(&kept).unwrap(),
            "Error (criu/cr-restore.c:1): no\n"
        );
        assert_eq!(
            std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A link to a file elsewhere (an archive's entry) is not followed.
        let secret = dir.join("secret");
        std::fs::write(&secret, "host").unwrap();
        let link = dir.join("dump.log");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(copy_log(&link, &dir.join("criu-dump.log")).is_err());
        assert!(!dir.join("criu-dump.log").exists());
        // Nor a link where the copy goes.
        let out = dir.join("criu-out.log");
        std::os::unix::fs::symlink(&secret, &out).unwrap();
        copy_log(&log, &out).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host");
        // Of a long log, its end is kept (where CRIU says what failed).
        let long = dir.join("long.log");
        let mut text = "x".repeat(LOG_KEPT as usize + 100);
        text.push_str("Error (criu/cr-restore.c:2): the end\n");
        std::fs::write(&long, &text).unwrap();
        copy_log(&long, &kept).unwrap();
        let got = std::fs::read_to_string(&kept).unwrap();
        assert_eq!(got.len() as u64, LOG_KEPT);
        assert!(got.ends_with("the end\n"));
        // A FIFO is not read (it would block).
        let fifo = dir.join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(copy_log(&fifo, &dir.join("criu-fifo.log")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkpoint_options_become_runc_flags() {
        assert_eq!(runc_args(&CheckpointOptions::default(), ""), None);
        assert_eq!(
            runc_args(&CheckpointOptions::default(), "/ck").unwrap(),
            ["--image-path", "/ck", "--leave-running"]
        );
        let opts = CheckpointOptions {
            exit: true,
            open_tcp: true,
            terminal: true,
            image_path: "/img".into(),
            work_path: "/work".into(),
            empty_namespaces: vec!["network".into()],
            ..Default::default()
        };
        assert_eq!(
            runc_args(&opts, "/ignored").unwrap(),
            [
                "--image-path",
                "/img",
                "--work-path",
                "/work",
                "--tcp-established",
                "--shell-job",
                "--empty-ns",
                "network"
            ]
        );
    }
}
