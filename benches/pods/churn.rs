//! Churn: pods created and removed, some with their shim killed, while a long-lived pod
//! runs a container alongside each; what is left, and what the long-lived shim holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::common::*;
use crate::cri::{sleeper, teardown, Handler};
use crate::density::DENSITY_PARALLEL;
use crate::doing::doing;
use crate::leftovers::leftovers;

/// Stop and remove a pod whose shim was killed, retrying RemovePodSandbox as kubelet does
/// (once a second, here at most 30 times). Returns how many calls failed first.
pub async fn teardown_retrying(cd: &Containerd, pod: &str) -> usize {
    doing(
        format!("teardown of pod {pod}, whose shim was killed"),
        async {
            cd.stop_pod(pod).await;
            let mut failed = 0;
            loop {
                let r = cd
                    .rt()
                    .remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                        pod_sandbox_id: pod.into(),
                    })
                    .await;
                match r {
                    Ok(_) => return failed,
                    Err(e) if failed < 30 => {
                        failed += 1;
                        if failed == 1 {
                            println!(
                                "  RemovePodSandbox {pod}: {}; retrying as kubelet does",
                                e.message()
                            );
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => panic!("RemovePodSandbox {pod} failed {failed} times: {e}"),
                }
            }
        },
    )
    .await
}

/// Every how many churned pods one has its shim killed.
pub const CHURN_KILL_EVERY: usize = 10;

/// What the churn run saw for one handler.
pub struct Churn {
    pub pods: usize,
    pub killed: usize,
    /// RemovePodSandbox calls that failed for a pod whose shim was killed, retried as
    /// kubelet retries them.
    pub remove_retries: usize,
    pub wall: Duration,
    /// The long-lived pod's shim: (open descriptors, RSS kB) before and after.
    pub fds: (usize, usize),
    pub rss_kb: (u64, u64),
    pub left: Vec<String>,
}

/// The server process of a pod's shim (not the pause processes forked from it).
pub fn shim_of(h: Handler, pod: &str) -> Option<i32> {
    pids_with(pod).into_iter().find(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        String::from_utf8_lossy(&cmd).contains(h.shim)
            && comm.trim() != cove::pause::PAUSE_COMM
            && String::from_utf8_lossy(&cmd).contains(&format!("-id\0{pod}"))
    })
}

pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub async fn churn(cd: &Arc<Containerd>, h: Handler, total: usize) -> Churn {
    let long_cfg = cd.pod_config(&format!("long-{}", h.name));
    let long = doing(
        format!("churn: start of the long-lived {} pod", h.name),
        cd.run_pod(&long_cfg, h.name),
    )
    .await;
    // Settle the long-lived shim (first container, first runc run) before measuring it.
    let warm = cd
        .create_container(&long, &long_cfg, container_config("warm", "true"))
        .await;
    cd.start_container(&warm).await;
    cd.exited(&warm).await;
    cd.remove_container(&warm).await;
    let long_shim = shim_of(h, &long).expect("the long-lived pod's shim");
    let fds_before = open_fds(long_shim);
    let rss_before = rss_pss(long_shim).0;

    let t = Instant::now();
    let mut killed = 0;
    let retries = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..total {
        if set.len() >= DENSITY_PARALLEL {
            if let Some(r) = set.join_next().await {
                r.expect("churn task");
            }
        }
        let kill = i % CHURN_KILL_EVERY == CHURN_KILL_EVERY - 1;
        killed += kill as usize;
        let cd = cd.clone();
        let (long, long_cfg) = (long.clone(), long_cfg.clone());
        let retries = retries.clone();
        set.spawn(async move {
            let name = format!("churn{i}-{}", h.name);
            let (pod, app) = doing(format!("churn: start of {} pod {name}", h.name), async {
                let cfg = cd.pod_config(&name);
                let pod = cd.run_pod(&cfg, h.name).await;
                let app = cd.create_container(&pod, &cfg, sleeper("app")).await;
                cd.start_container(&app).await;
                (pod, app)
            })
            .await;
            doing(
                format!("churn: container {i} in the long-lived {} pod", h.name),
                async {
                    let c = cd
                        .create_container(
                            &long,
                            &long_cfg,
                            container_config(&format!("c{i}"), "true"),
                        )
                        .await;
                    cd.start_container(&c).await;
                    cd.exited(&c).await;
                    cd.remove_container(&c).await;
                },
            )
            .await;
            if kill {
                doing(
                    format!("churn: kill the shim of {} pod {pod}", h.name),
                    async {
                        let shim = shim_of(h, &pod).expect("the pod's shim");
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(shim),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        eventually("the killed shim is gone", || !alive(shim as u32)).await;
                        // As kubelet does: the pod is torn down once CRI has seen the
                        // container end (containerd reports the exit of a dead shim's tasks,
                        // retrying until its task service lets go of the shim).
                        cd.exited(&app).await;
                    },
                )
                .await;
            }
            if kill {
                retries.fetch_add(teardown_retrying(&cd, &pod).await, Ordering::SeqCst);
            } else {
                teardown(&cd, &pod).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("churn task");
    }
    let wall = t.elapsed();
    // The long-lived shim has served `total` containers: what it holds now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_after = open_fds(long_shim);
    let rss_after = rss_pss(long_shim).0;
    teardown(cd, &long).await;
    Churn {
        pods: total,
        killed,
        remove_retries: retries.load(Ordering::SeqCst),
        wall,
        fds: (fds_before, fds_after),
        rss_kb: (rss_before, rss_after),
        left: leftovers(cd),
    }
}
