//! containerd restarts while cove pods live, through CRI, with containerd's runc pod path
//! as the oracle in the same run: an OOM kill while containerd is down keeps its reason,
//! and twenty pods with containers come back whole (READY, running, exec, one shim each)
//! and leave nothing when removed.

mod common;

use std::time::Duration;

use common::*;
use k8s_cri::v1::*;

/// A container that waits for `/tmp/oom-now` (written from the host) and then eats memory
/// past its 16 MiB limit.
fn hog(marker: &str) -> ContainerConfig {
    with_memory_limit(
        container_config(
            "hog",
            &format!(
                "while [ ! -e /tmp/oom-now ]; do sleep 0.05; done; echo {marker}; exec tail /dev/zero"
            ),
        ),
        16 << 20,
    )
}

/// A container that waits for `/tmp/quit-now` and then exits with status 3.
fn quitter(marker: &str) -> ContainerConfig {
    container_config(
        "quitter",
        &format!("while [ ! -e /tmp/quit-now ]; do sleep 0.05; done; echo {marker}; exit 3"),
    )
}

/// Waits for the process whose command line holds `marker`.
async fn pid_of(marker: &str) -> i32 {
    let mut pid = None;
    eventually(&format!("{marker} starts"), || {
        pid = pids_with(marker).first().copied();
        pid.is_some()
    })
    .await;
    pid.unwrap_or_default()
}

#[tokio::test]
async fn containers_that_end_while_containerd_restarts_keep_their_reason() {
    let mut cd = Containerd::start("restart-oom").await;
    let mut pods = Vec::new();
    for handler in ["runc", "cove"] {
        let cfg = cd.pod_config(&format!("oom-{handler}"));
        let pod = cd.run_pod(&cfg, handler).await;
        let tag = format!("{handler}-{}", std::process::id());
        let hog_c = cd
            .create_container(&pod, &cfg, hog(&format!("hog-{tag}")))
            .await;
        cd.start_container(&hog_c).await;
        let quit_c = cd
            .create_container(&pod, &cfg, quitter(&format!("quit-{tag}")))
            .await;
        cd.start_container(&quit_c).await;
        let hog_pid = pid_of(&format!("hog-{tag}")).await;
        let quit_pid = pid_of(&format!("quit-{tag}")).await;
        pods.push((
            handler,
            pod,
            [(hog_c, hog_pid, "oom-now"), (quit_c, quit_pid, "quit-now")],
        ));
    }

    // containerd goes away; one container of each pod is OOM-killed and the other exits 3
    // while it is gone.
    cd.stop_daemon();
    let down = std::time::Instant::now();
    for (_, _, cs) in &pods {
        for (_, pid, file) in cs {
            std::fs::write(format!("/proc/{pid}/root/tmp/{file}"), "").unwrap();
        }
    }
    for (handler, _, cs) in &pods {
        for (c, pid, _) in cs {
            let pid = *pid as u32;
            eventually(&format!("{handler}: {c} ends"), || !alive(pid)).await;
        }
    }
    // Down for 3 s, as in the report: longer than the old forwarder's patience.
    if let Some(rest) = Duration::from_secs(3).checked_sub(down.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    cd.start_daemon().await;

    let mut seen = Vec::new();
    for (_, _, cs) in &pods {
        let mut ends = Vec::new();
        for (c, _, _) in cs {
            let st = cd.exited(c).await;
            ends.push((st.reason.clone(), st.exit_code));
        }
        seen.push(ends);
    }
    let (runc, cove) = (&seen[0], &seen[1]);
    assert_eq!(
        cove,
        &vec![("OOMKilled".to_string(), 137), ("Error".to_string(), 3)],
        "cove: each container's end survives the restart (runc pod path: {runc:?})\n{}",
        cd.log_tail()
    );
    // containerd's runc shim lists no pid for a task whose init has died, so containerd
    // takes its shim for a leaked one when it restarts and deletes the task: CRI loses the
    // exit code (255) and, depending on the version, the reason ("Unknown" on 2.1 and 2.2;
    // 2.3 and 2.4 keep an OOMKilled that arrives later). cove keeps the init listed until
    // the task is deleted, and loses neither.
    for (i, end) in runc.iter().enumerate() {
        assert!(end == &cove[i] || end.1 == 255, "runc pod path: {runc:?}");
    }
    if runc != cove {
        eprintln!("the runc pod path lost the ends across the restart: {runc:?}");
    }

    for (_, pod, cs) in &pods {
        for (c, _, _) in cs {
            cd.remove_container(c).await;
        }
        cd.stop_pod(pod).await;
        cd.remove_pod(pod).await;
    }
    // A shim may still be on its way out (containerd's runc shim waits up to 5 s for its
    // shutdown callbacks after its server closes): what is there after EVENTUALLY is left.
    eventually("the cove shim exits", || cd.cove_shims().is_empty()).await;
    comes_to_hold(|| pods.iter().all(|(_, pod, _)| pids_with(pod).is_empty())).await;
    for (handler, pod, _) in &pods {
        assert!(
            pids_with(pod).is_empty(),
            "{handler}: a process of the pod is left"
        );
    }
}

/// Pods per handler in the restart test: 20, or `COVE_TEST_RESTART_PODS` (the VM legs,
/// under emulation, use fewer).
fn pods_per_handler() -> usize {
    std::env::var("COVE_TEST_RESTART_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[tokio::test]
async fn twenty_live_pods_per_handler_come_back_whole_after_a_restart() {
    let mut cd = Containerd::start("restart-many").await;
    let n = pods_per_handler();
    let mut pods = Vec::new();
    for i in 0..n {
        for handler in ["runc", "cove"] {
            let cfg = cd.pod_config(&format!("many-{handler}-{i}"));
            let pod = cd.run_pod(&cfg, handler).await;
            let c = cd
                .create_container(&pod, &cfg, container_config("app", "sleep 1000"))
                .await;
            cd.start_container(&c).await;
            pods.push((handler, cfg, pod, c));
        }
    }
    let shims_before = cd.cove_shims();
    assert_eq!(shims_before.len(), n, "one cove shim per cove pod");

    cd.restart().await;

    for (handler, _, pod, c) in &pods {
        cd.assert_back_after_restart(handler, pod, c).await;
    }
    let mut after = cd.cove_shims();
    let mut before = shims_before.clone();
    after.sort();
    before.sort();
    assert_eq!(after, before, "the same cove shims serve the pods");

    // All pods torn down at once: under load a shim must still let its ShutdownSandbox
    // reply out before it exits (a cut-off reply fails RemovePodSandbox).
    let cd = std::sync::Arc::new(cd);
    let mut teardown = tokio::task::JoinSet::new();
    for (_, _, pod, c) in &pods {
        let (cd, pod, c) = (cd.clone(), pod.clone(), c.clone());
        teardown.spawn(async move {
            cd.stop_container(&c, GRACE).await;
            cd.remove_container(&c).await;
            cd.stop_pod(&pod).await;
            cd.remove_pod(&pod).await;
        });
    }
    while let Some(r) = teardown.join_next().await {
        r.expect("teardown of a pod");
    }
    eventually("every cove shim exits", || cd.cove_shims().is_empty()).await;
    for (handler, cfg, pod, c) in &pods {
        assert_pod_gone(handler, cfg, pod, c);
    }
}
