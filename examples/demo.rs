//! `make demo`: a private containerd configured with cove, one pod through CRI on the
//! `cove` handler, its status (READY, pause pid, IP, namespaces), then stop and remove.

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
    cd.stop_pod(&id).await;
    let st = cd.pod_status(&id).await.status.expect("pod status");
    println!(
        "\nStopPodSandbox -> {}",
        k8s_cri::v1::PodSandboxState::try_from(st.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?")
    );
    cd.remove_pod(&id).await;
    eventually("shim gone", || pids_with(&id).is_empty()).await;
    println!("RemovePodSandbox -> no shim, pause process, cgroup or pod files left");
}
