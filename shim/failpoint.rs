//! Named points in the request paths where a test can make the server crash or stall, to
//! check what containerd's `delete` and a caller's deadline leave behind.
//!
//! `COVE_FAILPOINT=<name>` makes the server panic at that point (with cove's crash-only
//! panic policy the process aborts there); `<name>=kill` makes it SIGKILL itself there, as
//! the OOM killer or an operator would; `<name>=sleep:<ms>` stalls it; `<name>=fail` makes
//! the step fail once, where a step can fail; several are separated by commas. The variable is read once; unset, a point
//! costs one check of an empty list.

use std::sync::OnceLock;
use std::time::Duration;

/// The failpoints, in the order a request reaches them.
pub const START_SANDBOX_BEFORE_PAUSE: &str = "start-sandbox:before-pause";
/// The pause process has been cloned (it may still be confining itself: a pause whose
/// shim is gone before it is ready cannot say so, and exits) and the pod files (the shm
/// mount too) exist; none of them is recorded yet.
pub const START_SANDBOX_SPAWNED: &str = "start-sandbox:spawned";
pub const START_SANDBOX_AFTER_PAUSE: &str = "start-sandbox:after-pause";
pub const TASK_CREATE_BEFORE_RUNC: &str = "task-create:before-runc";
pub const TASK_CREATE_AFTER_RUNC: &str = "task-create:after-runc";
/// ShutdownSandbox, holding its sandbox's lock (`sleep` only): what comes for the same
/// sandbox meanwhile waits behind it.
pub const SHUTDOWN_SANDBOX_LOCKED: &str = "shutdown-sandbox:locked";
/// Task.Start of a task created from a checkpoint: CRIU's work directory (`criu-work` in
/// the bundle, when containerd names none) exists, and `runc restore` has not run.
pub const TASK_START_RESTORE: &str = "task-start:restore";
/// Task.Delete unmounting the container's rootfs (`fail` only).
pub const TASK_DELETE_UNMOUNT: &str = "task-delete:unmount";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Panic,
    Kill,
    Fail,
    Sleep(Duration),
}

fn parse(var: &str) -> Option<(String, Action)> {
    let (name, action) = match var.split_once('=') {
        None => (var, Action::Panic),
        Some((name, "kill")) => (name, Action::Kill),
        Some((name, "fail")) => (name, Action::Fail),
        Some((name, a)) => {
            let ms = a.strip_prefix("sleep:")?.parse().ok()?;
            (name, Action::Sleep(Duration::from_millis(ms)))
        }
    };
    (!name.is_empty()).then(|| (name.to_owned(), action))
}

fn armed() -> &'static [(String, Action)] {
    static POINTS: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("COVE_FAILPOINT")
            .unwrap_or_default()
            .split(',')
            .filter_map(parse)
            .collect()
    })
}

/// Passes point `name`: panics or stalls when it is armed.
pub async fn hit(name: &str) {
    match armed().iter().find(|(n, _)| n == name).map(|(_, a)| a) {
        Some(Action::Panic) => panic!("failpoint {name}"),
        Some(Action::Kill) => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        Some(Action::Sleep(d)) => {
            log::warn!("failpoint {name}: sleeping {d:?}");
            tokio::time::sleep(*d).await
        }
        Some(Action::Fail) | None => {}
    }
}

/// Whether step `name` is to fail now: true once if it is armed with `fail`.
pub fn fails(name: &str) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    armed().iter().any(|(n, a)| n == name && *a == Action::Fail)
        && !FIRED.swap(true, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_actions_are_parsed() {
        assert_eq!(parse("a:b"), Some(("a:b".into(), Action::Panic)));
        assert_eq!(
            parse("a=sleep:250"),
            Some(("a".into(), Action::Sleep(Duration::from_millis(250))))
        );
        assert_eq!(parse("a=kill"), Some(("a".into(), Action::Kill)));
        assert_eq!(parse("a=fail"), Some(("a".into(), Action::Fail)));
        assert_eq!(parse("a=explode"), None);
        assert_eq!(parse("=sleep:1"), None);
        assert_eq!(parse(""), None);
    }
}
