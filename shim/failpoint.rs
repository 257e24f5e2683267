//! Named points in the request paths where a test can make the server crash or stall, to
//! check what containerd's `delete` and a caller's deadline leave behind.
//!
//! `COVE_FAILPOINT=<name>` makes the server panic at that point (with cove's crash-only
//! panic policy the process aborts there); `<name>=kill` makes it SIGKILL itself there, as
//! the OOM killer or an operator would; `<name>=sleep:<ms>` stalls it; several are
//! separated by commas. The variable is read once; unset, a point
//! costs one check of an empty list.

use std::sync::OnceLock;
use std::time::Duration;

/// The failpoints, in the order a request reaches them.
pub const START_SANDBOX_BEFORE_PAUSE: &str = "start-sandbox:before-pause";
/// The pause process exists, and its pid is not recorded yet.
pub const START_SANDBOX_SPAWNED: &str = "start-sandbox:spawned";
pub const START_SANDBOX_AFTER_PAUSE: &str = "start-sandbox:after-pause";
pub const TASK_CREATE_BEFORE_RUNC: &str = "task-create:before-runc";
pub const TASK_CREATE_AFTER_RUNC: &str = "task-create:after-runc";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Panic,
    Kill,
    Sleep(Duration),
}

fn parse(var: &str) -> Option<(String, Action)> {
    let (name, action) = match var.split_once('=') {
        None => (var, Action::Panic),
        Some((name, "kill")) => (name, Action::Kill),
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
        None => {}
    }
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
        assert_eq!(parse("a=explode"), None);
        assert_eq!(parse("=sleep:1"), None);
        assert_eq!(parse(""), None);
    }
}
