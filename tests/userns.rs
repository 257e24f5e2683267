//! User-namespaced pods (`hostUsers: false`) through CRI: a pod with two containers and a
//! volume on cove and, side by side in the same containerd, on containerd's runc pod path.
//! Both need a runc with idmapped mounts (1.2 or later): `make test` puts one from
//! `../shared/runc` first on PATH; with an older runc the test fails and says so.

mod common;

use std::path::Path;

use common::*;
use k8s_cri::v1::{IdMapping, Mount, NamespaceMode, UserNamespace};

/// kubelet's mapping for a pod: 65536 ids from a multiple of 65536 (here one no other pod
/// or test uses).
const HOST_ID: u32 = 65536 * 41;
const LEN: u32 = 65536;

/// What a user checks on a user-namespaced pod.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// `/proc/<pid>/uid_map` and `gid_map` of the sandbox.
    sandbox_maps: (String, String),
    /// What the pod's two containers show, or why CRI could not run them.
    containers: Result<Containers, String>,
    /// Whether RunPodSandbox takes a pod with each of a few sysctls: namespaced ones the
    /// pod's user namespace may set, and one that exists only for the host's
    /// (`net.ipv4.neigh.default.*`, hidden in a network namespace a user namespace owns).
    sysctls: Vec<(String, bool)>,
    left_behind: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
struct Containers {
    /// `/proc/<pid>/uid_map` and `gid_map` of each container.
    maps: Vec<(String, String)>,
    /// Every container's user namespace is the sandbox's, and none is the host's.
    one_pod_userns: bool,
    /// The UTS, IPC and PID namespaces the containers join are owned by the pod's user
    /// namespace (the kernel's `NS_GET_USERNS`).
    ns_owned_by_pod_userns: bool,
    /// The host uid and gid of root in a container (`/proc/<pid>/status`).
    root_on_host: (String, String),
    /// `id` inside a container.
    id_inside: String,
    /// Owner (host ids) of a file root in a container wrote to the volume.
    volume_file_owner: (u32, u32),
    /// What root in a container may do with the pod files: write /etc/hosts and
    /// /dev/shm, read /etc/resolv.conf and /etc/hostname.
    pod_files: String,
}

fn userns_options() -> UserNamespace {
    let map = IdMapping {
        host_id: HOST_ID,
        container_id: 0,
        length: LEN,
    };
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    }
}

fn with_userns(cfg: &mut k8s_cri::v1::PodSandboxConfig) {
    let ns = cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("pod config has namespace options");
    ns.userns_options = Some(userns_options());
}

fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

/// The first value of each `/proc/<pid>/status` field in `keys` (`"Uid:"`, ...), and the
/// whole file for messages.
fn status_fields<const N: usize>(pid: u32, keys: [&str; N]) -> ([String; N], String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    let fields = keys.map(field);
    (fields, s)
}

fn status_ids(pid: u32) -> (String, String) {
    let ([uid, gid], _) = status_fields(pid, ["Uid:", "Gid:"]);
    (uid, gid)
}

fn maps(pid: u32) -> (String, String) {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (read("uid_map"), read("gid_map"))
}

async fn exercise(cd: &Containerd, handler: &str) -> Seen {
    let name = format!("userns-{handler}");
    let mut pod_cfg = cd.pod_config(&name);
    with_userns(&mut pod_cfg);
    let logs = cd.dir.join("logs").join(&name);
    std::fs::create_dir_all(&logs).unwrap();
    pod_cfg.log_directory = logs.to_string_lossy().into_owned();
    let pod = cd.run_pod(&pod_cfg, handler).await;
    let sandboxer = if handler == "cove" {
        "shim"
    } else {
        "podsandbox"
    };
    let sandbox_pid = cd.sandbox_pid(&pod, sandboxer).await;
    let sandbox_maps = maps(sandbox_pid);

    let volume = cd.dir.join("volumes").join(&name);
    std::fs::create_dir_all(&volume).unwrap();
    let mut ids = Vec::new();
    let mut failed = None;
    for c in ["one", "two"] {
        let mut cfg = container_config(c, "echo ready; exec sleep 1000");
        let l = cfg.linux.get_or_insert_with(Default::default);
        let sc = l.security_context.get_or_insert_with(Default::default);
        let ns = sc.namespace_options.get_or_insert_with(Default::default);
        ns.pid = NamespaceMode::Pod as i32;
        ns.userns_options = Some(userns_options());
        // What kubelet gives a volume of a user-namespaced pod: an idmapped bind mount.
        let u = userns_options();
        cfg.mounts.push(Mount {
            container_path: "/data".into(),
            host_path: volume.to_string_lossy().into_owned(),
            uid_mappings: u.uids.clone(),
            gid_mappings: u.gids.clone(),
            ..Default::default()
        });
        match create_and_start(cd, &pod, &pod_cfg, cfg).await {
            Ok(id) => ids.push(id),
            Err((id, e)) => {
                ids.extend(id);
                failed = Some(normalized(&e, handler));
                break;
            }
        }
    }
    let containers = match failed {
        Some(e) => Err(e),
        None => Ok(observe(cd, handler, sandbox_pid, &ids, &volume).await),
    };
    if handler == "cove" {
        // cove's pause is confined in the pod's user namespace as on the host: the pause
        // image's user (65535 in the pod), no_new_privs, a seccomp filter.
        let (fields, status) =
            status_fields(sandbox_pid, ["Uid:", "Gid:", "NoNewPrivs:", "Seccomp:"]);
        let pause_id = (HOST_ID + 65535).to_string();
        assert_eq!(
            fields,
            [pause_id.clone(), pause_id, "1".into(), "2".into()],
            "{status}"
        );
    }

    // `sleep` is not the pod's PID 1, so SIGTERM ends it within the grace period, and
    // StopContainer returns once containerd has deleted the task. A one-second grace
    // period raced that delete under emulation: the SIGKILL that follows the grace period
    // was still in flight when containerd closed the task's connection after the delete,
    // and StopContainer failed with "ttrpc: closed" on either handler.
    for c in &ids {
        cd.stop_container(c, GRACE).await;
        cd.remove_container(c).await;
    }
    cd.stop_pod(&pod).await;
    cd.remove_pod(&pod).await;

    let sysctls = sysctls_taken(cd, &pod_cfg, handler).await;

    if handler == "cove" {
        eventually("the cove shim exits", || cd.cove_shims().is_empty()).await;
    }
    let mut left_behind = Vec::new();
    for c in &ids {
        if Path::new(&format!("/run/containerd/runc/{NS}/{c}")).exists() {
            left_behind.push(format!("runc state of {c}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mounts.lines() {
        if ids.iter().chain([&pod]).any(|i| l.contains(i.as_str())) {
            left_behind.push(format!("mount {l}"));
        }
    }
    Seen {
        sandbox_maps,
        containers,
        sysctls,
        left_behind,
    }
}

/// CreateContainer then StartContainer; on failure, the id (if it was created) and the
/// error.
async fn create_and_start(
    cd: &Containerd,
    pod: &str,
    pod_cfg: &k8s_cri::v1::PodSandboxConfig,
    cfg: k8s_cri::v1::ContainerConfig,
) -> Result<String, (Option<String>, String)> {
    let id = cd
        .rt()
        .create_container(k8s_cri::v1::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .map_err(|e| (None, format!("CreateContainer: {}", e.message())))?
        .into_inner()
        .container_id;
    match cd
        .rt()
        .start_container(k8s_cri::v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
    {
        Ok(_) => Ok(id),
        Err(e) => Err((Some(id), format!("StartContainer: {}", e.message()))),
    }
}

/// An error message without what differs between runs and handlers (ids, names).
fn normalized(e: &str, handler: &str) -> String {
    without_ids(&e.replace(&format!("userns-{handler}"), "userns-POD"))
}

async fn observe(
    cd: &Containerd,
    handler: &str,
    sandbox_pid: u32,
    ids: &[String],
    volume: &Path,
) -> Containers {
    let tasks = cd.tasks();
    let pids: Vec<u32> = ids.iter().map(|c| tasks[c]).collect();
    let me = std::process::id();
    let pod_userns = ns_of(sandbox_pid, "user");
    let one_pod_userns =
        pod_userns != ns_of(me, "user") && pids.iter().all(|&p| ns_of(p, "user") == pod_userns);
    let ns_owned_by_pod_userns = ["uts", "ipc", "pid"]
        .iter()
        .all(|k| pids.iter().all(|&p| owning_userns(p, k) == pod_userns));

    let root_on_host = status_ids(pids[0]);
    let id_inside = cd.exec_sync(&ids[0], &["id"]).await.0.trim().to_string();
    let wrote = cd
        .exec_sync(&ids[1], &["sh", "-c", "echo hi > /data/by-two"])
        .await;
    assert_eq!(wrote.2, 0, "{handler}: write to the volume: {wrote:?}");
    let volume_file_owner = owner(&volume.join("by-two"));
    let pod_files = cd
        .exec_sync(
            &ids[0],
            &[
                "sh",
                "-c",
                "for f in /etc/hosts /etc/resolv.conf /etc/hostname; do \
                   test -r $f && echo r:$f; ls -ln $f | awk '{print \"owner:\" $3 \":\" $4}'; done; \
                 echo 10.0.0.9 extra >> /etc/hosts && echo w:/etc/hosts; \
                 echo x > /dev/shm/x && echo w:/dev/shm; ls -ln /dev/shm/x | awk '{print \"shm:\" $3}'",
            ],
        )
        .await
        .0;
    Containers {
        maps: pids.iter().map(|&p| maps(p)).collect(),
        one_pod_userns,
        ns_owned_by_pod_userns,
        root_on_host,
        id_inside,
        volume_file_owner,
        pod_files,
    }
}

async fn sysctls_taken(
    cd: &Containerd,
    pod_cfg: &k8s_cri::v1::PodSandboxConfig,
    handler: &str,
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (i, (key, value)) in [
        ("kernel.shm_rmid_forced", "1"),
        ("net.ipv4.ip_unprivileged_port_start", "80"),
        ("net.ipv4.neigh.default.gc_thresh1", "128"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cfg = pod_cfg.clone();
        let meta = cfg.metadata.as_mut().unwrap();
        meta.name = format!("{}-sysctl-{i}", meta.name);
        meta.uid = format!("{}-sysctl-{i}", meta.uid);
        cfg.linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert(key.into(), value.into());
        let r = cd
            .rt()
            .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: handler.into(),
            })
            .await;
        match r {
            Ok(r) => {
                let id = r.into_inner().pod_sandbox_id;
                cd.stop_pod(&id).await;
                cd.remove_pod(&id).await;
                out.push((key.to_string(), true));
            }
            Err(e) => {
                eprintln!("{handler}: {key}={value}: {e}");
                if handler == "cove" {
                    assert!(
                        e.message().contains("user-namespaced pod may not set it"),
                        "cove says why: {e}"
                    );
                }
                assert!(
                    e.message().contains(key),
                    "{handler}: the error names the sysctl: {e}"
                );
                out.push((key.to_string(), false));
            }
        }
    }
    out
}

/// The inode of the user namespace that owns `/proc/<pid>/ns/<kind>`, as `user:[N]`.
fn owning_userns(pid: u32, kind: &str) -> String {
    use std::os::fd::AsRawFd;
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let f = std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).unwrap();
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS) };
    assert!(fd >= 0, "NS_GET_USERNS on {pid}/{kind}");
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // SAFETY: fd was returned by the ioctl above and is ours.
    unsafe { libc::close(fd) };
    link
}

/// Whether the runc on PATH has idmapped mounts (`runc features`), which the containers
/// of a user-namespaced pod need on both handlers.
fn runc_has_idmapped_mounts() -> bool {
    let out = std::process::Command::new("runc")
        .arg("features")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|f| f["linux"]["mountExtensions"]["idmap"]["enabled"].as_bool())
        .unwrap_or(false)
}

/// Whether this kernel can idmap the filesystem under `/tmp`, where the test's containerd
/// keeps its snapshots and CRI's pod files: tmpfs only from Linux 6.3.
fn tmp_can_be_idmapped() -> bool {
    let tmpfs = nix::sys::statfs::statfs("/tmp")
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    !tmpfs || (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 3)
}

#[tokio::test]
async fn a_user_namespaced_pod_on_cove_is_as_on_the_runc_pod_path() {
    require(
        "a runc with idmapped mounts (1.2 or later) first on PATH: make test takes one from \
         ../shared/runc; the test filter leaves this test out with an older runc",
        runc_has_idmapped_mounts(),
    );
    require(
        "a /tmp this kernel can idmap (tmpfs needs Linux 6.3; the test guests put an ext4 \
         filesystem there)",
        tmp_can_be_idmapped(),
    );
    let cd = Containerd::start("userns").await;
    let runc = exercise(&cd, "runc").await;
    eprintln!("runc: {runc:#?}");
    let cove = exercise(&cd, "cove").await;
    eprintln!("cove: {cove:#?}");
    assert_eq!(cove, runc);
    let c = cove.containers.as_ref().expect("the pod's containers run");
    assert_eq!(c.root_on_host, (HOST_ID.to_string(), HOST_ID.to_string()));
    let want = (format!("0 {HOST_ID} {LEN}"), format!("0 {HOST_ID} {LEN}"));
    assert_eq!(cove.sandbox_maps, want);
    assert!(c.maps.iter().all(|m| *m == want), "{c:#?}");
    assert!(c.one_pod_userns && c.ns_owned_by_pod_userns, "{c:#?}");
    assert!(cove.left_behind.is_empty(), "{:?}", cove.left_behind);
}
