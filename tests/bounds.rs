//! The bounds on what cove waits for outside itself (docs/architecture.md, "What cove
//! waits for"): a runc call that does not finish within its bound is killed and fails
//! with a timeout, and takes nothing else with it.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_runc_call_past_its_bound_is_killed_and_fails_timed_out() {
    let reaper = cove::reaper::Reaper::start().expect("the reaper");
    let dir = std::env::temp_dir().join(format!("cove-bounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    // Stands in for a runc whose hook hangs: it says who it is, then never ends.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("echo $$ > {}; exec sleep 600", pid_file.display()));
    let r = cove::task::runc::run_command_within(&reaper, cmd, None, Duration::from_secs(3)).await;
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        Ok(o) => panic!("a call past its bound returned status {}", o.status),
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the command started")
        .trim()
        .parse()
        .unwrap();
    eventually("the command past its bound is killed and reaped", || {
        !alive(pid)
    })
    .await;
    // And a call within its bound is unaffected.
    let mut ok = std::process::Command::new("sh");
    ok.args(["-c", "echo fine; exit 3"]);
    let out = cove::task::runc::run_command_within(&reaper, ok, None, Duration::from_secs(60))
        .await
        .expect("a quick command");
    assert_eq!((out.status, out.stdout.as_slice()), (3, &b"fine\n"[..]));
    let _ = std::fs::remove_dir_all(&dir);
}
