//! The two CRI handlers and the pod lifecycle every section drives through CRI.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1::{ContainerState, PodSandboxState};
use tokio::task::JoinSet;

use crate::common::*;
use crate::doing::doing;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Handler {
    /// The CRI runtime handler.
    pub name: &'static str,
    /// Its sandbox controller, for containerd's sandbox API.
    pub sandboxer: &'static str,
    /// What its shim processes have in their command line.
    pub shim: &'static str,
}

pub const COVE: Handler = Handler {
    name: "cove",
    sandboxer: "shim",
    shim: "containerd-shim-cove-v1",
};
pub const RUNC: Handler = Handler {
    name: "runc",
    sandboxer: "podsandbox",
    shim: "containerd-shim-runc-v2",
};

pub fn sleeper(name: &str) -> k8s_cri::v1::ContainerConfig {
    container_config(name, "exec sleep 100000")
}

/// RunPodSandbox, then CreateContainer+StartContainer of one sleeping busybox container.
pub async fn pod_with_container(
    cd: &Containerd,
    h: Handler,
    name: &str,
) -> (String, Duration, Duration) {
    doing(
        format!("start of {} pod {name}", h.name),
        pod_with_container_(cd, h, name),
    )
    .await
}

async fn pod_with_container_(
    cd: &Containerd,
    h: Handler,
    name: &str,
) -> (String, Duration, Duration) {
    let cfg = cd.pod_config(name);
    let t = Instant::now();
    let pod = cd.run_pod(&cfg, h.name).await;
    let run = t.elapsed();
    let t = Instant::now();
    let c = cd.create_container(&pod, &cfg, sleeper("app")).await;
    cd.start_container(&c).await;
    (pod, run, t.elapsed())
}

pub async fn teardown(cd: &Containerd, pod: &str) -> Duration {
    doing(format!("teardown of pod {pod}"), async {
        let t = Instant::now();
        cd.stop_pod(pod).await;
        cd.remove_pod(pod).await;
        t.elapsed()
    })
    .await
}

/// Every pod READY and every container in it RUNNING, as CRI reports them.
pub async fn assert_ready(cd: &Containerd, pods: &[String]) {
    let containers = cd
        .rt()
        .list_containers(k8s_cri::v1::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    for pod in pods {
        let st = cd.pod_status(pod).await.status.expect("pod status");
        assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "pod {pod}");
        let mine: Vec<_> = containers
            .iter()
            .filter(|c| &c.pod_sandbox_id == pod)
            .collect();
        assert_eq!(mine.len(), 1, "pod {pod} has one container");
        assert_eq!(
            mine[0].state,
            ContainerState::ContainerRunning as i32,
            "container of pod {pod}"
        );
    }
}

/// Starts `count` pods, at most `parallel` at a time; returns their ids.
pub async fn start_pods(
    cd: &Arc<Containerd>,
    h: Handler,
    prefix: &str,
    range: std::ops::Range<usize>,
    parallel: usize,
) -> Vec<String> {
    let mut set = JoinSet::new();
    let mut pods = Vec::new();
    for k in range {
        if set.len() >= parallel {
            if let Some(r) = set.join_next().await {
                pods.push(r.expect("pod task"));
            }
        }
        let cd = cd.clone();
        let name = format!("{prefix}{k}-{}", h.name);
        set.spawn(async move { pod_with_container(&cd, h, &name).await.0 });
    }
    while let Some(r) = set.join_next().await {
        pods.push(r.expect("pod task"));
    }
    pods
}

pub async fn teardown_pods(cd: &Arc<Containerd>, pods: Vec<String>, parallel: usize) {
    let mut set = JoinSet::new();
    for pod in pods {
        if set.len() >= parallel {
            set.join_next().await.map(|r| r.expect("teardown task"));
        }
        let cd = cd.clone();
        set.spawn(async move { teardown(&cd, &pod).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("teardown task");
    }
}
