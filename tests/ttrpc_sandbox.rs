//! ttrpc round trips against the real `containerd-shim-cove-v1` binary: launched with
//! `start` as containerd launches it, called with the generated clients, cleaned with
//! `delete`. Needs root (namespaces, cgroups, mounts).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::shim::{create_req, ctx, pod_config_any, pod_options, run_start, Shim};
use common::{
    alive, cg_dir, cgroup_exists, cgroup_of, cgroup_v2, cove_bin, decode_metrics, eventually,
    layout, ns_of, unit_loaded,
};
use containerd_shim_protos::api::{
    ConnectRequest, CreateTaskRequest, KillRequest, ShutdownRequest, StartRequest, StateRequest,
    WaitRequest,
};
use containerd_shim_protos::sandbox_api::*;
use cove::protos::update::UpdateSandboxRequest;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use ttrpc::context;
use ttrpc::Code;

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test]
async fn version_and_info_answer() {
    let out = Command::new(cove_bin()).arg("-v").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(cove_bin())
        .arg("-info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let info =
        containerd_shim_protos::types::introspection::RuntimeInfo::parse_from_bytes(&out.stdout)
            .unwrap();
    assert_eq!(info.name, "io.containerd.cove.v1");
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    // The OCI runtime features of the runc cove runs, as containerd's runc shim reports
    // them: CRI reads recursive read-only mount and user namespace support from them.
    let features = info.features.as_ref().expect("runtime features");
    assert_eq!(
        features.type_url,
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
    );
    let ours: serde_json::Value = serde_json::from_slice(&features.value).unwrap();
    let runc = Command::new("runc").arg("features").output().unwrap();
    let runc: serde_json::Value = serde_json::from_slice(&runc.stdout).unwrap();
    assert_eq!(ours, runc);
}

#[tokio::test]
async fn full_lifecycle_with_pod_files_waiters_update_and_shutdown() {
    let shim = Shim::start("life");
    // A second start for the same id reuses the running server.
    assert_eq!(run_start(&shim.bundle, &shim.id), shim.address);
    let (sb, task, raw) = shim.clients().await;
    let parent = format!("/cove-test/{}", shim.id);
    // Task.Connect with an empty id asks who the shim is (containerd's tooling and tests
    // learn the shim's pid so, and the runc shim answers any id): its pid, and no task yet.
    let who = task.connect(ctx(), &ConnectRequest::new()).await.unwrap();
    assert_eq!(
        (who.shim_pid, who.task_pid, who.version.as_str()),
        (shim.server_pid() as u32, 0, "3")
    );

    let mut req = create_req(&shim.id, &shim.bundle);
    req.options = Some(pod_options("web-0", &parent)).into();
    sb.create_sandbox(ctx(), &req).await.unwrap();

    let mut st = StartSandboxRequest::new();
    st.sandbox_id = shim.id.clone();
    let started = sb.start_sandbox(ctx(), &st).await.unwrap();
    let pid = started.pid;
    assert!(pid > 0 && alive(pid));
    assert!(started.created_at.is_some());

    // The pause process: own uts/ipc/pid namespaces, host netns (no netns_path), pod cgroup,
    // hostname, sysctl, no capabilities, no_new_privs, PID 1 of its pid namespace.
    let me = std::process::id();
    for kind in ["uts", "ipc", "pid"] {
        assert_ne!(
            ns_of(pid, kind),
            ns_of(me, kind),
            "{kind} namespace is shared with the host"
        );
    }
    assert_eq!(ns_of(pid, "net"), ns_of(me, "net"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "pause is PID 1 of its namespace: {nspid}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "cove-pause"
    );
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // In every hierarchy, the cgroup v2 one included (the pause is born there).
    let leaf = format!(":{parent}/{}", shim.id);
    assert!(cg.lines().all(|l| l.ends_with(&leaf)), "{cg}");
    if cgroup_v2() {
        // A pure v2 host: the pod cgroup passes its controllers on to the pause's, and to
        // the containers that will sit beside it.
        let pod = cg_dir("memory", Path::new(&parent));
        let enabled = std::fs::read_to_string(pod.join("cgroup.subtree_control")).unwrap();
        for c in ["cpu", "memory", "pids", "io"] {
            assert!(
                enabled.split_whitespace().any(|e| e == c),
                "{c} not delegated: {enabled}"
            );
        }
    }
    let hostname = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "web-0");
    let shmmni = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-i",
            "cat",
            "/proc/sys/kernel/shmmni",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&shmmni.stdout).trim(), "1000");

    // Pod files where CRI looks for them.
    let files = shim
        .dir
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&shim.id);
    let shm = shim.pod_shm();
    assert_eq!(
        std::fs::read_to_string(files.join("hostname")).unwrap(),
        "web-0\n"
    );
    assert_eq!(
        std::fs::read_to_string(files.join("resolv.conf")).unwrap(),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\n"
    );
    assert!(files.join("hosts").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {} ", shm.display())) && l.contains(" - tmpfs ")),
        "shm is not a tmpfs"
    );

    // Status, platform, ping, Task.Connect/State for the sandbox id.
    let mut sreq = SandboxStatusRequest::new();
    sreq.sandbox_id = shim.id.clone();
    sreq.verbose = true;
    let s = sb.sandbox_status(ctx(), &sreq).await.unwrap();
    assert_eq!(
        (s.state.as_str(), s.pid, s.sandbox_id.as_str()),
        ("SANDBOX_READY", pid, shim.id.as_str())
    );
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert_eq!(info["pid"], pid);
    assert_eq!(info["hostname"], "web-0");
    let mut p = PlatformRequest::new();
    p.sandbox_id = shim.id.clone();
    let plat = sb.platform(ctx(), &p).await.unwrap();
    assert_eq!(plat.platform.os, "linux");
    assert_eq!(plat.platform.architecture, cove::sandbox::goarch());
    let mut ping = PingRequest::new();
    ping.sandbox_id = shim.id.clone();
    sb.ping_sandbox(ctx(), &ping).await.unwrap();
    let mut c = ConnectRequest::new();
    c.id = shim.id.clone();
    let conn = task.connect(ctx(), &c).await.unwrap();
    assert_eq!((conn.task_pid, conn.version.as_str()), (pid, "3"));
    // And once the sandbox runs, its pause is the task an empty id names.
    let who = task.connect(ctx(), &ConnectRequest::new()).await.unwrap();
    assert_eq!(
        (who.shim_pid, who.task_pid),
        (shim.server_pid() as u32, pid)
    );
    let mut tstate = StateRequest::new();
    tstate.id = shim.id.clone();
    assert_eq!(task.state(ctx(), &tstate).await.unwrap().pid, pid);

    // Metrics of the pod cgroup.
    let mut m = SandboxMetricsRequest::new();
    m.sandbox_id = shim.id.clone();
    let metrics = sb.sandbox_metrics(ctx(), &m).await.unwrap();
    let data = metrics.metrics.data.clone().unwrap();
    let (pids, usage) = decode_metrics(&data);
    assert!(pids >= 1, "the pause process is counted: {pids}");
    assert!(usage > 0);
    if cgroup_v2() {
        // No limit is reported as containerd reports it: u64::MAX, not 0.
        let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&data.value)
            .unwrap();
        assert_eq!((m.memory.usage_limit, m.pids.limit), (u64::MAX, u64::MAX));
    }

    // UpdateSandbox (containerd 2.4) as a direct ttrpc call: pod-level memory and pids limits.
    let mut up = UpdateSandboxRequest::new();
    up.sandbox_id = shim.id.clone();
    up.resources = Some(Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
        value: br#"{"memory":{"limit":268435456},"pids":{"limit":100}}"#.to_vec(),
        ..Default::default()
    })
    .into();
    up.annotations
        .insert("cove.test/updated".into(), "yes".into());
    let resp = raw
        .request(ttrpc::Request {
            service: "containerd.runtime.sandbox.v1.Sandbox".into(),
            method: "UpdateSandbox".into(),
            payload: up.write_to_bytes().unwrap(),
            timeout_nano: ctx().timeout_nano,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.status.code(), Code::OK, "{:?}", resp.status);
    let limit_file = if cgroup_v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit =
        std::fs::read_to_string(cg_dir("memory", Path::new(&parent)).join(limit_file)).unwrap();
    assert_eq!(limit.trim(), "268435456");
    let pids =
        std::fs::read_to_string(cg_dir("pids", Path::new(&parent)).join("pids.max")).unwrap();
    assert_eq!(pids.trim(), "100");
    let s = sb.sandbox_status(ctx(), &sreq).await.unwrap();
    assert!(s.info["info"].contains("cove.test/updated"));

    // UpdateSandbox as containerd 2.4's CRI sends UpdatePodSandboxResources: the sandbox
    // object, fields = ["extensions"], the resources in the `updated-resources` extension.
    // Kubelet has resized the pod cgroup already: cove records, and does not write it.
    let mut obj = cove::protos::update::SandboxObject::new();
    obj.sandbox_id = shim.id.clone();
    obj.extensions.insert(
        "updated-resources".into(),
        Any {
            type_url: "io.containerd.cri.v1/UpdatedResources".into(),
            value: br#"{"Overhead":{"memory_limit_in_bytes":16777216},"Resources":{"memory_limit_in_bytes":134217728}}"#.to_vec(),
            ..Default::default()
        },
    );
    let mut up = UpdateSandboxRequest::new();
    up.sandbox_id = shim.id.clone();
    up.sandbox = Some(obj).into();
    up.fields = vec!["extensions".into()];
    let resp = raw
        .request(ttrpc::Request {
            service: "containerd.runtime.sandbox.v1.Sandbox".into(),
            method: "UpdateSandbox".into(),
            payload: up.write_to_bytes().unwrap(),
            timeout_nano: ctx().timeout_nano,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.status.code(), Code::OK, "{:?}", resp.status);
    let limit =
        std::fs::read_to_string(cg_dir("memory", Path::new(&parent)).join(limit_file)).unwrap();
    assert_eq!(limit.trim(), "268435456", "the pod cgroup is kubelet's");
    let s = sb.sandbox_status(ctx(), &sreq).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert_eq!(
        info["updatedResources"]["Resources"]["memory_limit_in_bytes"],
        134217728
    );

    // Waiters before the exit, Stop, then a waiter after the exit.
    let mut w = WaitSandboxRequest::new();
    w.sandbox_id = shim.id.clone();
    let early: Vec<_> = (0..2)
        .map(|_| {
            let sb = sb.clone();
            let w = w.clone();
            tokio::spawn(async move { sb.wait_sandbox(context::Context::default(), &w).await })
        })
        .collect();
    // Task.Shutdown must not end a server whose sandbox is alive.
    task.shutdown(ctx(), &ShutdownRequest::new()).await.unwrap();
    let mut stop = StopSandboxRequest::new();
    stop.sandbox_id = shim.id.clone();
    sb.stop_sandbox(ctx(), &stop).await.unwrap();
    sb.stop_sandbox(ctx(), &stop)
        .await
        .expect("stop is idempotent");
    for h in early {
        let r = h.await.unwrap().unwrap();
        assert!(r.exited_at.is_some());
    }
    let late = sb.wait_sandbox(ctx(), &w).await.unwrap();
    assert!(late.exited_at.is_some());
    assert!(!alive(pid));
    let s = sb.sandbox_status(ctx(), &sreq).await.unwrap();
    assert_eq!((s.state.as_str(), s.pid), ("SANDBOX_NOTREADY", pid));
    assert!(s.exited_at.is_some());
    let mut restart = StartSandboxRequest::new();
    restart.sandbox_id = shim.id.clone();
    assert_eq!(
        code(sb.start_sandbox(ctx(), &restart).await),
        Code::FAILED_PRECONDITION
    );

    // Shutdown: the reply arrives, then everything is gone and the server exits.
    let mut sd = ShutdownSandboxRequest::new();
    sd.sandbox_id = shim.id.clone();
    sb.shutdown_sandbox(ctx(), &sd).await.unwrap();
    assert!(!files.join("hostname").exists() && !files.exists());
    assert!(!mountinfo_has(&shm));
    assert!(!cgroup_exists(Path::new(&parent)), "pod cgroup left behind");
    assert!(!shim.bundle.join(cove::state::STATE_FILE).exists());
    eventually("server socket removed", || !shim.socket().exists()).await;
    let out = shim.delete();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mountinfo_has(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&format!(" {} ", p.display()))
}

/// As containerd's Go shim: the socket is 0600 and a directory cove creates for it 0700,
/// whatever the umask; and a connection from another uid or gid (SO_PEERCRED) is closed
/// before any request is served, even where the file mode would let it connect.
#[tokio::test]
async fn the_socket_serves_the_shims_own_user_only() {
    use nix::unistd::{setegid, seteuid, Gid, Uid};
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let shim = Shim::start_in_socket_dir("peer");
    let socket = shim.socket();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    for d in [shim.dir.join("sockets"), shim.dir.join("sockets/shim")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let ping = |id: &str| {
        let mut p = PingRequest::new();
        p.sandbox_id = id.into();
        p
    };
    let (sb, _, _) = shim.clients().await;
    assert_eq!(
        code(sb.ping_sandbox(ctx(), &ping("nope")).await),
        Code::NOT_FOUND
    );

    // Past the file modes, the peer's credentials decide.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for d in [shim.dir.join("sockets"), shim.dir.join("sockets/shim")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    const NOBODY: u32 = 65534;
    for (uid, gid) in [(NOBODY, NOBODY), (0, NOBODY)] {
        // The kernel records the credentials at connect(2): connect as (uid, gid), then
        // take root back (the saved ids stay root's).
        let connect = || {
            setegid(Gid::from_raw(gid)).unwrap();
            seteuid(Uid::from_raw(uid)).unwrap();
            let r = (UnixStream::connect(&socket), UnixStream::connect(&socket));
            seteuid(Uid::from_raw(0)).unwrap();
            setegid(Gid::from_raw(0)).unwrap();
            r
        };
        let (raw, call) = connect();
        let (mut raw, call) = (raw.unwrap(), call.unwrap());
        // Closed without a word.
        raw.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        match raw.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("uid {uid} gid {gid}: connection not closed: {other:?}"),
        }
        // And a request on such a connection gets no answer.
        let client =
            ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::try_from(call).unwrap());
        let r = containerd_shim_protos::sandbox_async::SandboxClient::new(client)
            .ping_sandbox(ctx(), &ping("nope"))
            .await;
        assert!(
            matches!(r, Err(ref e) if !matches!(e, ttrpc::Error::RpcStatus(_))),
            "uid {uid} gid {gid}: served: {r:?}"
        );
    }
    let log = std::fs::read_to_string(shim.bundle.join("log")).unwrap();
    for (uid, gid) in [(NOBODY, NOBODY), (0, NOBODY)] {
        let refused = format!("refused a connection from uid {uid} gid {gid}");
        assert!(
            log.contains(&refused),
            "{refused:?} not in the shim log:\n{log}"
        );
    }
    // The shim's own user is still served.
    let (sb, _, _) = shim.clients().await;
    assert_eq!(
        code(sb.ping_sandbox(ctx(), &ping("nope")).await),
        Code::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_input_gets_clear_codes_and_the_shim_keeps_serving() {
    let shim = Shim::start("bad");
    let (sb, task, _) = shim.clients().await;
    let ping = |id: &str| {
        let mut p = PingRequest::new();
        p.sandbox_id = id.into();
        p
    };
    let long = "a".repeat(77);
    for bad in ["a/b", "..", "a\0b", long.as_str(), ""] {
        let r = sb
            .create_sandbox(ctx(), &create_req(bad, &shim.bundle))
            .await;
        assert_eq!(code(r), Code::INVALID_ARGUMENT, "id {bad:?}");
    }
    let mut r = create_req(&shim.id, &shim.bundle);
    r.netns_path = "/var/run/netns/cove-does-not-exist".into();
    assert_eq!(
        code(sb.create_sandbox(ctx(), &r).await),
        Code::INVALID_ARGUMENT
    );
    let mut r = create_req(&shim.id, &shim.bundle);
    r.netns_path = "/etc/hostname".into();
    assert_eq!(
        code(sb.create_sandbox(ctx(), &r).await),
        Code::INVALID_ARGUMENT,
        "not a namespace file"
    );
    let mut r = create_req(&shim.id, &shim.bundle);
    r.options = Some(Any {
        type_url: "runtime.v1.PodSandboxConfig".into(),
        value: vec![0xff; 8],
        ..Default::default()
    })
    .into();
    assert_eq!(
        code(sb.create_sandbox(ctx(), &r).await),
        Code::INVALID_ARGUMENT
    );
    for bad in [
        "kubepods--x.slice",
        "pods/relative",
        "/a/../b",
        "a.slice:cri:x",
    ] {
        let mut r = create_req(&shim.id, &shim.bundle);
        r.options = Some(pod_options("x", bad)).into();
        assert_eq!(
            code(sb.create_sandbox(ctx(), &r).await),
            Code::INVALID_ARGUMENT,
            "cgroup parent {bad:?}"
        );
    }

    // A network sysctl without a pod network namespace would be set on the host's.
    let mut cfg =
        cove::protos::cri::PodSandboxConfig::parse_from_bytes(&pod_options("n", "").value).unwrap();
    cfg.linux
        .mut_or_insert_default()
        .sysctls
        .insert("net.ipv4.ip_forward".into(), "1".into());
    let mut r = create_req(&shim.id, &shim.bundle);
    r.options = Some(pod_config_any(&cfg)).into();
    match sb.create_sandbox(ctx(), &r).await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), Code::INVALID_ARGUMENT);
            assert!(
                s.message().contains("net.ipv4.ip_forward"),
                "{}",
                s.message()
            );
        }
        other => panic!("a net sysctl without a netns: {other:?}"),
    }

    // A user-namespaced pod: malformed mappings, and mappings that leave out the ids the
    // pause runs as, are INVALID_ARGUMENT before anything is created.
    let userns = |uids: Vec<(u32, u32, u32)>| {
        use cove::protos::cri::*;
        let maps = |v: &[(u32, u32, u32)]| -> Vec<IDMapping> {
            v.iter()
                .map(|&(container_id, host_id, length)| IDMapping {
                    container_id,
                    host_id,
                    length,
                    ..Default::default()
                })
                .collect()
        };
        let mut cfg = PodSandboxConfig::parse_from_bytes(&pod_options("u", "").value).unwrap();
        let mut ns = NamespaceOption::new();
        ns.userns_options = Some(UserNamespace {
            mode: NamespaceMode::POD.into(),
            uids: maps(&uids),
            gids: maps(&[(0, 200_000, 65536)]),
            ..Default::default()
        })
        .into();
        cfg.linux
            .mut_or_insert_default()
            .security_context
            .mut_or_insert_default()
            .namespace_options = Some(ns).into();
        let mut r = create_req(&shim.id, &shim.bundle);
        r.options = Some(pod_config_any(&cfg)).into();
        r
    };
    for (uids, want) in [
        (vec![(0, 200_000, 1000)], Code::INVALID_ARGUMENT),
        (vec![(0, 200_000, 0)], Code::INVALID_ARGUMENT),
        (
            vec![(0, 200_000, 100), (50, 300_000, 100)],
            Code::INVALID_ARGUMENT,
        ),
        (vec![], Code::INVALID_ARGUMENT),
    ] {
        assert_eq!(
            code(sb.create_sandbox(ctx(), &userns(uids.clone())).await),
            want,
            "uid mappings {uids:?}"
        );
    }

    // Unknown sandbox, Start before Create.
    let mut st = StartSandboxRequest::new();
    st.sandbox_id = shim.id.clone();
    assert_eq!(code(sb.start_sandbox(ctx(), &st).await), Code::NOT_FOUND);
    assert_eq!(
        code(sb.ping_sandbox(ctx(), &ping("nope")).await),
        Code::NOT_FOUND
    );
    let mut s = SandboxStatusRequest::new();
    s.sandbox_id = "nope".into();
    assert_eq!(code(sb.sandbox_status(ctx(), &s).await), Code::NOT_FOUND);

    // Create twice.
    sb.create_sandbox(ctx(), &create_req(&shim.id, &shim.bundle))
        .await
        .unwrap();
    assert_eq!(
        code(
            sb.create_sandbox(ctx(), &create_req(&shim.id, &shim.bundle))
                .await
        ),
        Code::ALREADY_EXISTS
    );
    // A second sandbox: one cove shim serves one sandbox.
    let second = create_req("another-pod", &shim.bundle);
    match sb.create_sandbox(ctx(), &second).await {
        Err(ttrpc::Error::RpcStatus(st)) => {
            assert_eq!(st.code(), Code::FAILED_PRECONDITION);
            assert!(st.message.contains(&shim.id), "{}", st.message);
        }
        other => panic!("a second sandbox in one shim: {other:?}"),
    }
    // Metrics before Start.
    let mut m = SandboxMetricsRequest::new();
    m.sandbox_id = shim.id.clone();
    assert_eq!(
        code(sb.sandbox_metrics(ctx(), &m).await),
        Code::FAILED_PRECONDITION
    );
    // Task RPCs on unknown tasks are NOT_FOUND; malformed creates INVALID_ARGUMENT.
    let mut ts = StartRequest::new();
    ts.id = "c1".into();
    assert_eq!(code(task.start(ctx(), &ts).await), Code::NOT_FOUND);
    let mut k = KillRequest::new();
    k.id = "c1".into();
    k.signal = 9;
    assert_eq!(code(task.kill(ctx(), &k).await), Code::NOT_FOUND);
    let mut w = WaitRequest::new();
    w.id = "c1".into();
    assert_eq!(code(task.wait(ctx(), &w).await), Code::NOT_FOUND);
    let create_task = |id: &str, bundle: &str| {
        let mut r = CreateTaskRequest::new();
        r.id = id.into();
        r.bundle = bundle.into();
        r
    };
    let bundle = shim.bundle.to_string_lossy().into_owned();
    for (id, b, want, why) in [
        ("c/1", bundle.as_str(), Code::INVALID_ARGUMENT, "bad id"),
        (
            "c1",
            "relative/bundle",
            Code::INVALID_ARGUMENT,
            "relative bundle",
        ),
        (
            "c1",
            bundle.as_str(),
            Code::INVALID_ARGUMENT,
            "bundle without config.json",
        ),
        (
            shim.id.as_str(),
            bundle.as_str(),
            Code::ALREADY_EXISTS,
            "the sandbox's id",
        ),
    ] {
        assert_eq!(
            code(task.create(ctx(), &create_task(id, b)).await),
            want,
            "{why}"
        );
    }
    // Connect for an unknown task is NOT_FOUND.
    let mut c = ConnectRequest::new();
    c.id = "c1".into();
    assert_eq!(code(task.connect(ctx(), &c).await), Code::NOT_FOUND);

    // Still serving.
    sb.ping_sandbox(ctx(), &ping(&shim.id)).await.unwrap();
    let mut sd = ShutdownSandboxRequest::new();
    sd.sandbox_id = shim.id.clone();
    sb.shutdown_sandbox(ctx(), &sd).await.unwrap();
}

#[tokio::test]
async fn delete_cleans_up_after_a_crashed_shim() {
    let shim = Shim::start("crash");
    let (sb, _, _) = shim.clients().await;
    let parent = format!("/cove-test/{}", shim.id);
    let mut req = create_req(&shim.id, &shim.bundle);
    req.options = Some(pod_options("crash", &parent)).into();
    sb.create_sandbox(ctx(), &req).await.unwrap();
    let mut st = StartSandboxRequest::new();
    st.sandbox_id = shim.id.clone();
    let pid = sb.start_sandbox(ctx(), &st).await.unwrap().pid;
    let files = shim
        .dir
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&shim.id);
    assert!(files.join("hosts").exists());

    // Kill the server hard, as the OOM killer would.
    shim.kill_server().await;
    assert!(
        alive(pid),
        "the pause process outlives its shim until delete"
    );

    let out = shim.delete();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = containerd_shim_protos::api::DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(resp.pid, pid);
    assert_eq!(resp.exit_status, 137);
    assert!(!alive(pid));
    assert!(!files.exists());
    assert!(!cgroup_exists(Path::new(&parent)));
    assert!(!shim.socket().exists());
    // Idempotent.
    assert!(shim.delete().status.success());
}

/// A pod whose `cgroup_parent` is a systemd slice (kubelet's systemd cgroup driver). Where
/// systemd runs the host, the pause lives in `cri-containerd-<id>.scope` in that slice, a
/// unit systemd delegates; slices that appeared for it go with it; `delete` after a crash
/// stops them too. Where it does not, CreateSandbox says why and what to change.
#[tokio::test]
async fn a_systemd_slice_parent_gets_a_scope_or_a_clear_error() {
    let shim = Shim::start("slice");
    let (sb, _, _) = shim.clients().await;
    let tag = std::process::id();
    let slice = format!("covetest{tag}-covetest{tag}_pod.slice");
    let mut req = create_req(&shim.id, &shim.bundle);
    req.options = Some(pod_options("slice", &slice)).into();
    if !cove::cgroups::systemd::booted() {
        let server = shim.server_pid();
        let r = sb.create_sandbox(ctx(), &req).await;
        let Err(ttrpc::Error::RpcStatus(s)) = r else {
            panic!("a slice without systemd must fail: {r:?}");
        };
        assert_eq!(s.code(), Code::FAILED_PRECONDITION);
        assert!(
            s.message.contains("systemd does not run this host")
                && s.message.contains("cgroupDriver: cgroupfs"),
            "the error names the cause and the fix: {}",
            s.message
        );
        // containerd then shuts the sandbox down; the shim, holding nothing, exits.
        let mut sd = ShutdownSandboxRequest::new();
        sd.sandbox_id = shim.id.clone();
        assert_eq!(code(sb.shutdown_sandbox(ctx(), &sd).await), Code::NOT_FOUND);
        eventually("the shim exits", || {
            cove::state::proc_start_time(server).is_none()
        })
        .await;
        return;
    }
    sb.create_sandbox(ctx(), &req).await.unwrap();
    let mut st = StartSandboxRequest::new();
    st.sandbox_id = shim.id.clone();
    let pid = sb.start_sandbox(ctx(), &st).await.unwrap().pid;
    let scope = cove::cgroups::systemd::scope_name(&shim.id);
    let pod = cove::cgroups::systemd::expand(&slice).unwrap();
    assert_eq!(cgroup_of(pid), pod.join(&scope));
    let show = std::process::Command::new("systemctl")
        .args([
            "show",
            "-p",
            "Delegate",
            "-p",
            "ActiveState",
            "-p",
            "Slice",
            &scope,
        ])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    for want in [
        "Delegate=yes",
        "ActiveState=active",
        &format!("Slice={slice}"),
    ] {
        assert!(show.lines().any(|l| l == want), "{want} in {show}");
    }
    // Metrics read the pod slice.
    let mut m = SandboxMetricsRequest::new();
    m.sandbox_id = shim.id.clone();
    let data = sb
        .sandbox_metrics(ctx(), &m)
        .await
        .unwrap()
        .metrics
        .data
        .clone()
        .unwrap();
    assert!(decode_metrics(&data).0 >= 1);
    // Both slices appeared for this pod: shutdown stops the scope and them.
    let mut sd = ShutdownSandboxRequest::new();
    sd.sandbox_id = shim.id.clone();
    sb.shutdown_sandbox(ctx(), &sd).await.unwrap();
    assert!(!alive(pid));
    for unit in [
        scope.as_str(),
        slice.as_str(),
        &format!("covetest{tag}.slice"),
    ] {
        assert!(!unit_loaded(unit), "{unit} left behind");
    }
    assert!(layout().dirs(&pod).iter().all(|d| !d.exists()));

    // After a crash, `delete` stops the units the shim recorded.
    let crashed = Shim::start("slice-crash");
    let (sb, _, _) = crashed.clients().await;
    let mut req = create_req(&crashed.id, &crashed.bundle);
    req.options = Some(pod_options("slice", &slice)).into();
    sb.create_sandbox(ctx(), &req).await.unwrap();
    let mut st = StartSandboxRequest::new();
    st.sandbox_id = crashed.id.clone();
    let pid = sb.start_sandbox(ctx(), &st).await.unwrap().pid;
    crashed.kill_server().await;
    let out = crashed.delete();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!alive(pid));
    let scope = cove::cgroups::systemd::scope_name(&crashed.id);
    for unit in [scope.as_str(), slice.as_str()] {
        assert!(!unit_loaded(unit), "{unit} left behind after delete");
    }
}
