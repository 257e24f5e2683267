//! Measures RunPodSandbox for the `cove` and `runc` handlers of one private containerd,
//! alternating handlers so machine drift hits both alike, and the RSS/PSS of one cove shim
//! and its pause process. Usage: `COVE_BIN=... cargo run --release --example pod_start [N]`.
//! (`make bench` will grow into the full benchmark.)

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
    let cd = Containerd::start("podstart").await;
    let mut times = std::collections::BTreeMap::<&str, Vec<Duration>>::new();
    for i in 0..n {
        for handler in ["cove", "runc"] {
            let cfg = cd.pod_config(&format!("{handler}{i}"));
            let t = Instant::now();
            let id = cd.run_pod(&cfg, handler).await;
            times.entry(handler).or_default().push(t.elapsed());
            if handler == "cove" && i == n - 1 {
                let pause = cd.sandbox_pid(&id, "shim").await as i32;
                let shim = pids_with(&id)
                    .into_iter()
                    .find(|p| *p != pause)
                    .unwrap_or(0);
                let (sr, sp) = rss_pss(shim);
                let (pr, pp) = rss_pss(pause);
                println!("cove shim  pid {shim}: RSS {sr} kB, PSS {sp} kB");
                println!("cove pause pid {pause}: RSS {pr} kB, PSS {pp} kB");
            }
            cd.stop_pod(&id).await;
            cd.remove_pod(&id).await;
        }
    }
    for (h, v) in times.iter_mut() {
        println!(
            "RunPodSandbox {h}: median {:.1?} over {} runs",
            median(v),
            v.len()
        );
    }
}
