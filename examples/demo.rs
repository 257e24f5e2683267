//! `make demo`: a private containerd configured with cove, one pod through CRI on the
//! `cove` handler with two busybox containers, their status (READY, pause pid, IP,
//! namespaces, containers and what they see), then stop and remove.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cd = Containerd::start("demo").await;
    println!("containerd 2.x running privately at {}", cd.sock.display());
    let mut cfg = cd.pod_config("demo");
    cfg.hostname = "cove-demo".into();
    let started = std::time::Instant::now();
    let id = cd.run_pod(&cfg, "cove").await;
    let took = started.elapsed();
    let st = cd.pod_status(&id).await.status.expect("pod status");
    let pid = cd.sandbox_pid(&id, "shim").await;
    let me = std::process::id();
    println!("\nRunPodSandbox (handler cove) took {took:.1?}");
    println!("  pod id      {id}");
    println!(
        "  state       {}",
        k8s_cri::v1::PodSandboxState::try_from(st.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?")
    );
    println!(
        "  pause pid   {pid} ({})",
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
    );
    println!(
        "  pod IP      {}",
        st.network.map(|n| n.ip).unwrap_or_default()
    );
    println!(
        "  hostname    {}",
        nsenter(pid, &["-u"], &["hostname"]).trim()
    );
    for kind in ["net", "uts", "ipc", "pid"] {
        let ns = ns_of(pid, kind);
        let whose = if ns == ns_of(me, kind) { "host" } else { "pod" };
        println!("  {kind:<4} ns     {ns} ({whose})");
    }
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if let Some(mem) = cg.lines().find(|l| l.contains(":memory:")) {
        println!(
            "  cgroup      {}",
            mem.rsplit(':').next().unwrap_or_default()
        );
    }
    let shims = pids_with(&id).len();
    println!("  processes   {shims} (shim + pause)");

    let mut containers = Vec::new();
    println!("\nCreateContainer+StartContainer (busybox)");
    for (name, script) in [
        ("web", "echo serving; exec sleep 1000"),
        ("sidecar", "exec sleep 1000"),
    ] {
        let started = std::time::Instant::now();
        let c = cd
            .create_container(&id, &cfg, container_config(name, script))
            .await;
        cd.start_container(&c).await;
        let took = started.elapsed();
        let cpid = cd.tasks()[&c];
        let same = ["net", "uts", "ipc", "pid"]
            .iter()
            .all(|k| ns_of(cpid, k) == ns_of(pid, k));
        println!(
            "  {name:<8} {} started in {took:.1?}, pid {cpid}, {}",
            &c[..12],
            if same {
                "in the pod's namespaces"
            } else {
                "NOT in the pod's namespaces"
            }
        );
        containers.push(c);
    }
    let (host, _, _) = cd.exec_sync(&containers[0], &["hostname"]).await;
    let (ps, _, _) = cd
        .exec_sync(&containers[0], &["ps", "-o", "pid,comm"])
        .await;
    println!("ExecSync web: hostname -> {}", host.trim());
    println!("ExecSync web: ps (one pid namespace for the pod)\n{ps}");
    cd.stop_pod(&id).await;
    let st = cd.pod_status(&id).await.status.expect("pod status");
    println!(
        "\nStopPodSandbox -> {}",
        k8s_cri::v1::PodSandboxState::try_from(st.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?")
    );
    for c in &containers {
        cd.remove_container(c).await;
    }
    cd.remove_pod(&id).await;
    eventually("shim gone", || pids_with(&id).is_empty()).await;
    println!("RemoveContainer x2, RemovePodSandbox -> no shim, pause process, container, cgroup or pod files left");
}
