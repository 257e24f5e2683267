//! Density: many pods with a sleeping container each; what the runtime adds per pod in
//! memory, and the time to start and tear them all down.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::cri::{assert_ready, start_pods, teardown_pods, Handler};
use crate::leftovers::leftovers;

/// Pods started and torn down at the same time in the density run.
pub const DENSITY_PARALLEL: usize = 8;

#[derive(Default, Clone, Copy)]
pub struct Mem {
    pub pods: usize,
    pub procs: usize,
    pub rss_kb: u64,
    pub pss_kb: u64,
}

impl Mem {
    pub fn pss_per_pod(&self) -> f64 {
        self.pss_kb as f64 / self.pods.max(1) as f64
    }
    pub fn rss_per_pod(&self) -> f64 {
        self.rss_kb as f64 / self.pods.max(1) as f64
    }
}

/// What the runtime adds for `pods`: its shim processes for this containerd (cove's pause
/// processes are forked from the shim and carry its command line) and each pod's sandbox
/// process as containerd's sandbox controller reports it (runc's pause container).
pub async fn runtime_memory(cd: &Containerd, h: Handler, pods: &[String]) -> Mem {
    let mut procs: BTreeSet<i32> = BTreeSet::new();
    let sock = cd.sock.to_string_lossy().into_owned();
    for pid in pids_with(&sock) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(h.shim) {
            procs.insert(pid);
        }
    }
    for pod in pods {
        let pid = cd.sandbox_pid(pod, h.sandboxer).await;
        assert!(pid > 0, "{} pod {pod} has no sandbox pid", h.name);
        procs.insert(pid as i32);
    }
    let mut m = Mem {
        pods: pods.len(),
        procs: procs.len(),
        ..Default::default()
    };
    for pid in procs {
        let (rss, pss) = rss_pss(pid);
        m.rss_kb += rss;
        m.pss_kb += pss;
    }
    m
}

pub struct Density {
    pub mem: Vec<Mem>,
    pub start: Duration,
    pub down: Duration,
}

pub async fn density(cd: &Arc<Containerd>, h: Handler, total: usize) -> Density {
    let mut pods = Vec::new();
    let mut mem = Vec::new();
    let mut start = Duration::ZERO;
    let mut marks: Vec<usize> = [1, 50, total].into_iter().filter(|m| *m <= total).collect();
    marks.dedup();
    for mark in marks {
        let t = Instant::now();
        let more = start_pods(cd, h, "d", pods.len()..mark, DENSITY_PARALLEL).await;
        start += t.elapsed();
        pods.extend(more);
        // Both runtimes get the same second to settle before their memory is read.
        tokio::time::sleep(Duration::from_secs(1)).await;
        mem.push(runtime_memory(cd, h, &pods).await);
    }
    assert_ready(cd, &pods).await;
    let t = Instant::now();
    teardown_pods(cd, pods, DENSITY_PARALLEL).await;
    let down = t.elapsed();
    let left = leftovers(cd);
    assert!(left.is_empty(), "after {total} {} pods: {left:?}", h.name);
    Density { mem, start, down }
}
