//! Measures CreateContainer+StartContainer of one busybox container in a `cove` pod and in
//! a `runc` pod of one private containerd, alternating handlers so machine drift hits both
//! alike, then the RSS/PSS of a cove shim serving a pod with three containers.
//! Usage: `COVE_BIN=... cargo run --release --example container_start [N]`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let cd = Containerd::start("ctrstart").await;
    let mut times = std::collections::BTreeMap::<&str, Vec<Duration>>::new();
    for i in 0..n {
        for handler in ["cove", "runc"] {
            let cfg = cd.pod_config(&format!("{handler}{i}"));
            let pod = cd.run_pod(&cfg, handler).await;
            let t = Instant::now();
            let c = cd
                .create_container(&pod, &cfg, container_config("app", "exec sleep 1000"))
                .await;
            cd.start_container(&c).await;
            times.entry(handler).or_default().push(t.elapsed());
            cd.stop_pod(&pod).await;
            cd.remove_pod(&pod).await;
        }
    }
    for (h, v) in times.iter_mut() {
        println!(
            "CreateContainer+StartContainer {h}: median {:.1?} over {} runs",
            median(v),
            v.len()
        );
    }

    let cfg = cd.pod_config("three");
    let pod = cd.run_pod(&cfg, "cove").await;
    for name in ["a", "b", "c"] {
        let c = cd
            .create_container(&pod, &cfg, container_config(name, "exec sleep 1000"))
            .await;
        cd.start_container(&c).await;
    }
    // The pause process is forked from the shim, so it shares the shim's command line.
    let pause = cd.sandbox_pid(&pod, "shim").await as i32;
    let bin = cove_bin();
    for pid in pids_with(&pod) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).starts_with(&bin) {
            let (rss, pss) = rss_pss(pid);
            let what = if pid == pause {
                "its pause process"
            } else {
                "cove shim serving a pod with 3 containers"
            };
            println!("{what}: RSS {rss} kB, PSS {pss} kB");
        }
    }
    cd.stop_pod(&pod).await;
    cd.remove_pod(&pod).await;
}
