//! An exec whose output outlives it: `sh -c 'sleep 365d &'` exits at once and leaves a
//! child holding its stdout and stderr. Through `ctr task exec` with fifos, on cove and on
//! containerd's runc shim in one containerd: each must end the call the same way and leave
//! the container as usable.

mod common;

use std::time::Instant;

use common::*;

/// The background child the exec leaves behind.
const LEAVES_CHILD: &str = "sleep 365d &";

#[tokio::test]
async fn ctr_task_exec_with_fifos_ends_as_on_the_runc_shim() {
    let cd = Containerd::start("ctrexec").await;
    let mut seen = Vec::new();
    for (name, runtime) in [
        ("runc", "io.containerd.runc.v2"),
        ("cove", "io.containerd.cove.v1"),
    ] {
        let id = format!("bg-{name}");
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            BUSYBOX,
            &id,
            "sleep",
            "1000",
        ]);
        // `ctr task exec` wires the exec's stdio through fifos; it is ended after a
        // minute if it hangs, which fails the comparison below for the handler that hung.
        let t = Instant::now();
        let out = std::process::Command::new("timeout")
            .args(["60", "ctr", "--address"])
            .arg(&cd.sock)
            .args(["-n", NS, "task", "exec", "--exec-id", "bg", &id])
            .args(["sh", "-c", LEAVES_CHILD])
            .output()
            .expect("run ctr");
        let took = t.elapsed();
        // ctr's own warnings (containerd 2.2+ warns about cgroup v1) carry a timestamp.
        let stderr: String = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| match l.strip_prefix("time=\"") {
                Some(rest) => rest.split_once("\" ").map_or(l, |(_, after)| after),
                None => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let exec = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            without_ids(&stderr),
        );
        let next = cd.ctr_status(&["task", "exec", "--exec-id", "next", &id, "echo", "next"]);
        let ps = cd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "ps",
            &id,
            "ps",
            "-o",
            "ppid,args",
        ]);
        let left: Vec<String> = ps
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.contains("ps -o"))
            .collect();
        eprintln!("{name}: ctr task exec took {took:?}: {exec:?}; left {left:?}");
        cd.ctr_kill_and_remove(&id).await;
        seen.push((exec, (next.0, next.1), left));
    }
    assert_eq!(seen[1], seen[0]);
    assert_eq!(
        seen[1].0 .0, 0,
        "ctr task exec returns once the shell exits"
    );
    assert_eq!(seen[1].1, (0, "next\n".to_string()));
}
