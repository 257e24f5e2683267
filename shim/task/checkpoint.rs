//! Task.Checkpoint through `runc checkpoint` (CRIU), and the plain reason when CRIU cannot
//! run on the host. Restoring answers UNIMPLEMENTED (in Task.Create).

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
        let err = match c.runc.checkpoint(&r.id, &c.bundle, &args).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Say why when CRIU itself cannot work here, which runc's message does not.
        if !on_path("criu") {
            return Err(Error::FailedPrecondition(format!(
                "checkpoint of task {} needs CRIU, and no criu binary is installed on this host ({err})",
                r.id
            )));
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
                return Err(Error::FailedPrecondition(format!(
                    "checkpoint of task {} needs CRIU, and CRIU cannot run on this host: `criu check`: {} ({err})",
                    r.id,
                    why.trim()
                )));
            }
        }
        Err(err)
    }
}

/// `runc checkpoint`'s arguments for containerd's options and image path; `None` when
/// neither names an image path.
fn runc_args(opts: &CheckpointOptions, path: &str) -> Option<Vec<String>> {
    let image = if opts.image_path.is_empty() {
        path.to_owned()
    } else {
        opts.image_path.clone()
    };
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
