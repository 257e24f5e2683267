//! Task.Checkpoint through `runc checkpoint` (CRIU), and the plain reason when CRIU cannot
//! run on the host. Restoring (`runc restore`, at the Start of a task created from a
//! checkpoint) is in `lifecycle.rs`; what it checks of a checkpoint and its errors are here.

use std::path::Path;

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
                let (image, work) = (image_of(&opts, &r.path), &opts.work_path);
                Err(keep_log(
                    &c.bundle,
                    image.as_ref(),
                    work.as_ref(),
                    "dump.log",
                )
                .await(e))
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
/// it to its work directory, the image directory unless containerd named one; an image
/// directory is containerd's, removed when the call fails, so the log is copied to
/// `criu-<log>` in the bundle first (where containerd's runc shim keeps it too; it goes
/// with the bundle at Task.Delete).
pub(super) async fn keep_log(
    bundle: &Path,
    image: &Path,
    work: &Path,
    log: &str,
) -> impl FnOnce(Error) -> Error {
    let at = if !work.as_os_str().is_empty() {
        let p = work.join(log);
        tokio::fs::metadata(&p).await.is_ok().then_some(p)
    } else {
        let kept = bundle.join(format!("criu-{log}"));
        match tokio::fs::copy(image.join(log), &kept).await {
            Ok(_) => Some(kept),
            Err(_) => None,
        }
    };
    move |e: Error| match at {
        Some(p) => e.noting(&format!("CRIU's log: {}", p.display())),
        None => e,
    }
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
