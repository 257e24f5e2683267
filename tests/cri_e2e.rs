//! End to end: a private containerd 2.x driven through CRI with a real gRPC client, pods on
//! the `cove` handler (sandboxer = "shim") and, side by side, on containerd's runc path.

mod common;

use common::*;
use k8s_cri::v1::{NamespaceMode, PodSandboxState};

#[tokio::test]
async fn cove_pod_is_ready_in_its_cni_netns_with_its_own_namespaces() {
    let cd = Containerd::start("ready").await;
    let mut cfg = cd.pod_config("web");
    cfg.linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
    let id = cd.run_pod(&cfg, "cove").await;
    let st = cd.pod_status(&id).await;
    let status = st.status.clone().unwrap();
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    let ip = status.network.clone().unwrap().ip;
    assert!(!ip.is_empty(), "the pod has an IP");

    let pid = cd.sandbox_pid(&id, "shim").await;
    assert!(pid > 0 && alive(pid));
    // In the CNI netns: the pod IP is on its eth0, and it is not the host's netns.
    let me = std::process::id();
    assert_ne!(ns_of(pid, "net"), ns_of(me, "net"));
    let addrs = nsenter(pid, &["-n"], &["ip", "-o", "-4", "addr", "show"]);
    assert!(
        addrs.contains(&format!("inet {ip}/")),
        "pod ip {ip} not in the pause netns: {addrs}"
    );
    for kind in ["uts", "ipc", "pid"] {
        assert_ne!(ns_of(pid, kind), ns_of(me, kind), "{kind} is the host's");
    }
    assert_eq!(nsenter(pid, &["-u"], &["hostname"]).trim(), "web-host");
    assert_eq!(
        nsenter(
            pid,
            &["-n"],
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        )
        .trim(),
        "80"
    );
    // In its cgroup: `<parent>/<id>`, or `<pod slice>/cri-containerd-<id>.scope` under the
    // systemd driver; on v1 in every hierarchy, as runc places containers.
    assert_eq!(cgroup_of(pid), task_cgroup(&cfg, &id));
    let procs: Vec<bool> = layout()
        .dirs(&task_cgroup(&cfg, &id))
        .iter()
        .map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == pid.to_string())
        })
        .collect();
    assert!(
        procs.iter().all(|&p| p),
        "pause in every hierarchy: {procs:?}"
    );

    // The pod files CRI mounts into containers.
    let files = cd
        .dir
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&id);
    assert_eq!(
        std::fs::read_to_string(files.join("hostname")).unwrap(),
        "web-host\n"
    );
    assert_eq!(
        std::fs::read_to_string(files.join("resolv.conf")).unwrap(),
        "search cove-e2e.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    let shm = cd
        .dir
        .join("state/io.containerd.grpc.v1.cri/sandboxes")
        .join(&id)
        .join("shm");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts
        .lines()
        .any(|l| l.contains(&format!(" {} ", shm.display())) && l.contains(" - tmpfs ")));

    // Verbose status carries cove's info JSON through CRI.
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["pid"], pid);

    cd.stop_pod(&id).await;
    cd.remove_pod(&id).await;
}

/// Pods that share the host pid or IPC namespace, through CRI.
#[tokio::test]
async fn host_pid_and_ipc_pods_share_exactly_those_namespaces() {
    let cd = Containerd::start("hostns").await;
    let me = std::process::id();
    // (pid, ipc) = NODE where true; the network stays the pod's own (see the next test).
    for (name, pid_ns, ipc) in [
        ("hostpid", true, false),
        ("hostipc", false, true),
        ("both", true, true),
    ] {
        let mut cfg = cd.pod_config(name);
        host_namespaces(&mut cfg, false, pid_ns, ipc);
        let id = cd.run_pod(&cfg, "cove").await;
        let st = cd.pod_status(&id).await.status.unwrap();
        assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "{name}");
        let pid = cd.sandbox_pid(&id, "shim").await;
        let shared = |kind: &str| ns_of(pid, kind) == ns_of(me, kind);
        assert!(
            !shared("net") && !shared("uts"),
            "{name}: net and uts are the pod's"
        );
        assert_eq!(shared("pid"), pid_ns, "{name}: pid");
        assert_eq!(shared("ipc"), ipc, "{name}: ipc");
        let shm = cd
            .dir
            .join("state/io.containerd.grpc.v1.cri/sandboxes")
            .join(&id)
            .join("shm");
        assert_eq!(
            shm.exists(),
            !ipc,
            "{name}: a pod on the host IPC namespace uses the host /dev/shm"
        );
        cd.stop_pod(&id).await;
        cd.remove_pod(&id).await;
    }
}

/// Puts the pod's network, pid and IPC namespaces on the host where the flag is true.
fn host_namespaces(cfg: &mut k8s_cri::v1::PodSandboxConfig, net: bool, pid: bool, ipc: bool) {
    let sc = cfg
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default);
    let ns = sc.namespace_options.get_or_insert_with(Default::default);
    ns.network = node(net);
    ns.pid = node(pid);
    ns.ipc = node(ipc);
}

fn node(b: bool) -> i32 {
    if b {
        NamespaceMode::Node as i32
    } else {
        NamespaceMode::Pod as i32
    }
}

/// A hostNetwork/hostPID/hostIPC pod. containerd 2.1.9's CRI crashes on any hostNetwork pod
/// with `sandboxer = "shim"` before it reaches the shim (nil spec in NewBundle, fixed in
/// containerd 2.3.0 by b32cecd31), so this pod goes through containerd's sandbox controller
/// gRPC API with the same PodSandboxConfig CRI would send.
#[tokio::test]
async fn host_network_pod_shares_exactly_the_host_namespaces() {
    use containerd_client::services::v1::sandbox::controller_client::ControllerClient;
    use containerd_client::services::v1::sandbox::store_client::StoreClient;
    use containerd_client::services::v1::sandbox::*;
    use containerd_client::types::{sandbox::Runtime, Sandbox};
    use prost::Message;
    let cd = Containerd::start("hostnet").await;
    let mut cfg = cd.pod_config("hostnet");
    host_namespaces(&mut cfg, true, true, true);
    let id = format!("hostnet{}", std::process::id());
    let sandbox = Sandbox {
        sandbox_id: id.clone(),
        runtime: Some(Runtime {
            name: cove_bin(),
            options: None,
        }),
        sandboxer: "shim".into(),
        ..Default::default()
    };
    let mut store = StoreClient::new(cd.channel.clone());
    store
        .create(ns_request(StoreCreateRequest {
            sandbox: Some(sandbox.clone()),
        }))
        .await
        .unwrap();
    let mut ctl = ControllerClient::new(cd.channel.clone());
    let options = prost_types::Any {
        type_url: "runtime.v1.PodSandboxConfig".into(),
        value: cfg.encode_to_vec(),
    };
    ctl.create(ns_request(ControllerCreateRequest {
        sandbox_id: id.clone(),
        options: Some(options),
        sandbox: Some(sandbox),
        sandboxer: "shim".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let pid = ctl
        .start(ns_request(ControllerStartRequest {
            sandbox_id: id.clone(),
            sandboxer: "shim".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .pid;
    let me = std::process::id();
    for kind in ["net", "uts", "pid", "ipc"] {
        assert_eq!(
            ns_of(pid, kind),
            ns_of(me, kind),
            "{kind} must be the host's"
        );
    }
    ctl.stop(ns_request(ControllerStopRequest {
        sandbox_id: id.clone(),
        sandboxer: "shim".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    ctl.shutdown(ns_request(ControllerShutdownRequest {
        sandbox_id: id.clone(),
        sandboxer: "shim".into(),
    }))
    .await
    .unwrap();
    store
        .delete(ns_request(StoreDeleteRequest {
            sandbox_id: id.clone(),
        }))
        .await
        .unwrap();
    eventually("no cove shim left", || pids_with(&id).is_empty()).await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn stop_and_remove_leave_nothing_behind_for_cove_and_runc() {
    let cd = Containerd::start("remove").await;
    for handler in ["cove", "runc"] {
        let name = format!("gone-{handler}");
        let cfg = cd.pod_config(&name);
        let id = cd.run_pod(&cfg, handler).await;
        let st = cd.pod_status(&id).await.status.unwrap();
        assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "{handler}");
        assert!(!st.network.unwrap().ip.is_empty(), "{handler}: pod ip");
        let sandboxer = if handler == "cove" {
            "shim"
        } else {
            "podsandbox"
        };
        let pid = cd.sandbox_pid(&id, sandboxer).await;
        assert!(alive(pid), "{handler}: sandbox process");

        cd.stop_pod(&id).await;
        let st = cd.pod_status(&id).await.status.unwrap();
        assert_eq!(
            st.state,
            PodSandboxState::SandboxNotready as i32,
            "{handler}: NOTREADY after stop"
        );
        eventually("sandbox process gone after stop", || !alive(pid)).await;

        cd.remove_pod(&id).await;
        let gone = cd
            .rt()
            .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await;
        assert_eq!(
            gone.unwrap_err().code(),
            tonic::Code::NotFound,
            "{handler}: pod removed"
        );
        if handler == "cove" {
            eventually("no cove shim left", || pids_with(&id).is_empty()).await;
            let pause_cg = task_cgroup(&cfg, &id);
            assert!(
                !cgroup_exists(&pause_cg),
                "{} left behind",
                pause_cg.display()
            );
            if systemd_driver() {
                // The pod slice is kubelet's (here the harness's); the pause scope was cove's.
                let scope = cove::cgroups::systemd::scope_name(&id);
                assert!(!unit_loaded(&scope), "unit {scope} left behind");
            } else {
                // cove made the missing cgroup parent, and removes it.
                let pod = pod_cgroup(&cfg);
                assert!(
                    !cgroup_exists(&pod),
                    "pod cgroup {} left behind",
                    pod.display()
                );
            }
            for dir in [
                cd.dir
                    .join("state/io.containerd.sandbox.controller.v1.shim")
                    .join(NS)
                    .join(&id),
                cd.dir
                    .join("root/io.containerd.grpc.v1.cri/sandboxes")
                    .join(&id),
                cd.dir
                    .join("state/io.containerd.grpc.v1.cri/sandboxes")
                    .join(&id),
            ] {
                assert!(!dir.exists(), "{} left behind", dir.display());
            }
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(!mounts.contains(&id), "a mount of the pod is left: {id}");
        }
    }
}

#[tokio::test]
async fn sandbox_metrics_through_containerds_controller_api() {
    use containerd_client::services::v1::sandbox::controller_client::ControllerClient;
    use containerd_client::services::v1::sandbox::ControllerMetricsRequest;
    let cd = Containerd::start("metrics").await;
    let cfg = cd.pod_config("stats");
    let id = cd.run_pod(&cfg, "cove").await;
    let mut c = ControllerClient::new(cd.channel.clone());
    let resp = c
        .metrics(ns_request(ControllerMetricsRequest {
            sandbox_id: id.clone(),
            sandboxer: "shim".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let metric = resp.metrics.expect("a metric");
    assert_eq!(metric.id, id);
    let data = metric.data.expect("metric data");
    let data = protobuf::well_known_types::any::Any {
        type_url: data.type_url,
        value: data.value,
        ..Default::default()
    };
    // The pod cgroup's own counters, in the type containerd uses on this host.
    let (pids, usage) = decode_metrics(&data);
    assert!(pids >= 1, "the pause process is in the pod cgroup");
    let file = if cgroup_v2() {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let on_disk: u64 = std::fs::read_to_string(cg_dir("memory", &pod_cgroup(&cfg)).join(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(usage > 0 && on_disk > 0, "usage {usage}, {file} {on_disk}");
    cd.stop_pod(&id).await;
    cd.remove_pod(&id).await;
}

/// The [stack] mapping's resident size of a process, in kB.
fn stack_kb(pid: i32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut lines = smaps.lines().skip_while(|l| !l.ends_with(" [stack]"));
    lines.next()?;
    lines
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A pod's shim keeps only its idle stack: the pages its deepest requests (StartSandbox,
/// a container's create) dirtied are given back once requests stop, not kept for the
/// pod's life (they were 52-60 kB of every shim's memory).
#[tokio::test]
async fn an_idle_shim_gives_back_the_stack_its_requests_used() {
    let cd = Containerd::start("idle").await;
    let cfg = cd.pod_config("idle");
    let id = cd.run_pod(&cfg, "cove").await;
    let c = cd
        .create_container(&id, &cfg, container_config("idle", "exec sleep 1000"))
        .await;
    cd.start_container(&c).await;
    let shims = cd.cove_shims();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let shim = shims[0];
    eventually("the idle shim's stack is 32 kB or less", || {
        stack_kb(shim).is_some_and(|kb| kb <= 32)
    })
    .await;
    // Given back by the shim, not merely never used: it says so in its (debug) log, which
    // reaches containerd's through a fifo, after the release.
    eventually("the shim logs the release of its stack", || {
        cd.log().contains("idle: released ")
    })
    .await;
    // And it still serves: the next request's frames fault back in.
    let (out, _, code) = cd.exec_sync(&c, &["echo", "awake"]).await;
    assert_eq!((out.trim(), code), ("awake", 0));
    eventually("the shim gives its stack back again", || {
        stack_kb(shim).is_some_and(|kb| kb <= 32)
    })
    .await;
    cd.stop_pod(&id).await;
    cd.remove_pod(&id).await;
}
