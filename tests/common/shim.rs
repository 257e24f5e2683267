//! The shim driven directly, as containerd drives it: `start` in a bundle laid out as
//! containerd's shim sandbox controller lays it out, the generated ttrpc clients, `delete`.
//! Needs root (namespaces, cgroups, mounts).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim_protos::sandbox_api::CreateSandboxRequest;
use containerd_shim_protos::sandbox_async::SandboxClient;
use containerd_shim_protos::shim_async::TaskClient;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use ttrpc::context;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create namespaces and cgroups: run them as root"
    );
}

pub struct Shim {
    pub dir: PathBuf,
    pub bundle: PathBuf,
    pub id: String,
    pub address: String,
}

impl Shim {
    /// Runs `start` in a bundle laid out as containerd's shim sandbox controller lays it out.
    pub fn start(tag: &str) -> Shim {
        Shim::start_with(tag, &[])
    }

    /// [`Shim::start`] with extra environment for the server (e.g. `COVE_FAILPOINT`).
    pub fn start_with(tag: &str, env: &[(&str, &str)]) -> Shim {
        Shim::start_timed(tag, env).0
    }

    /// [`Shim::start_with`], and how long the `start` process took (the bundle's layout,
    /// containerd's work, is not counted).
    pub fn start_timed(tag: &str, env: &[(&str, &str)]) -> (Shim, Duration) {
        require_root();
        let id = format!("cove-t-{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let bundle = dir
            .join("state/io.containerd.sandbox.controller.v1.shim/cove-test")
            .join(&id);
        let work = dir
            .join("root/io.containerd.sandbox.controller.v1.shim/cove-test")
            .join(&id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::os::unix::fs::symlink(&work, bundle.join("work")).unwrap();
        let t = std::time::Instant::now();
        let address = run_start_with(&bundle, &id, env);
        let took = t.elapsed();
        let shim = Shim {
            dir,
            bundle,
            id,
            address,
        };
        (shim, took)
    }

    /// [`Shim::start`] as containerd 2.3+ starts it, with BootstrapParams on stdin naming
    /// the socket directory `<dir>/sockets/shim` (which does not exist yet), and under
    /// `umask 000`: the modes of the socket and of its directory are then cove's doing.
    /// The server logs to `<bundle>/log` (a plain file here, containerd's fifo otherwise).
    pub fn start_in_socket_dir(tag: &str) -> Shim {
        use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
        use std::io::Write;
        require_root();
        let id = format!("cove-t-{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("log"), "").unwrap();
        let params = BootstrapParams {
            instance_id: id.clone(),
            namespace: "cove-test".into(),
            containerd_ttrpc_address: "/run/cove-test/containerd.sock.ttrpc".into(),
            socket_dir: Some(dir.join("sockets/shim").to_string_lossy().into_owned()),
            ..Default::default()
        };
        let mut child = Command::new("/bin/sh")
            .args(["-c", "umask 000; exec \"$0\" \"$@\""])
            .arg(super::cove_bin())
            .args(start_args(&id))
            .current_dir(&bundle)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&params.write_to_bytes().unwrap()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply = BootstrapResult::parse_from_bytes(&out.stdout).unwrap();
        assert_eq!(reply.version, 3);
        Shim {
            dir,
            bundle,
            id,
            address: reply.address,
        }
    }

    /// The pod's /dev/shm mount point, where CRI looks for it in this shim's tree.
    pub fn pod_shm(&self) -> PathBuf {
        self.dir
            .join("state/io.containerd.grpc.v1.cri/sandboxes")
            .join(&self.id)
            .join("shm")
    }

    pub async fn clients(&self) -> (SandboxClient, TaskClient, ttrpc::r#async::Client) {
        let c = ttrpc::r#async::Client::connect(&self.address)
            .await
            .expect("connect to the shim");
        (SandboxClient::new(c.clone()), TaskClient::new(c.clone()), c)
    }

    pub fn delete(&self) -> std::process::Output {
        Command::new(super::cove_bin())
            .args([
                "-namespace",
                NAMESPACE,
                "-address",
                CONTAINERD_ADDRESS,
                "-id",
                &self.id,
                "-bundle",
            ])
            .arg(&self.bundle)
            .arg("delete")
            .current_dir(&self.bundle)
            .output()
            .unwrap()
    }

    /// The pid of the server listening on this shim's socket.
    pub fn server_pid(&self) -> i32 {
        *self
            .servers()
            .first()
            .unwrap_or_else(|| panic!("no server for {}", self.socket().display()))
    }

    /// This shim's processes: its servers (forked by `start`, whose command line they
    /// keep: it names the id), their pause helpers and pause processes.
    pub fn procs(&self) -> Vec<i32> {
        super::pids_with(&self.id)
    }

    /// The servers started for this shim's id (two while one is exiting and its successor
    /// is up). Pause processes and the pause helper are forked from a server; a server is
    /// the one whose parent is none of them.
    pub fn servers(&self) -> Vec<i32> {
        let all = self.procs();
        let parent = |pid: i32| -> Option<i32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        all.iter()
            .copied()
            .filter(|p| parent(*p).is_some_and(|pp| !all.contains(&pp)))
            .collect()
    }

    /// Kills the server hard, as the OOM killer would, and waits until it is gone.
    pub async fn kill_server(&self) {
        let server = self.server_pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        super::eventually("the shim server is gone", || {
            cove::state::proc_start_time(server).is_none()
        })
        .await;
    }

    pub fn socket(&self) -> PathBuf {
        PathBuf::from(self.address.trim_start_matches("unix://"))
    }
}

impl Drop for Shim {
    /// As containerd after a failure: the server (if a failed test left it running) is
    /// killed, then `delete` cleans up.
    fn drop(&mut self) {
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.delete();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The namespace and containerd address these tests give their shims.
const NAMESPACE: &str = "cove-test";
const CONTAINERD_ADDRESS: &str = "/run/cove-test/containerd.sock";

/// containerd's command line for `start` of shim `id` in the test namespace.
pub fn start_args(id: &str) -> [&str; 9] {
    [
        "-namespace",
        NAMESPACE,
        "-address",
        CONTAINERD_ADDRESS,
        "-publish-binary",
        "/bin/true",
        "-id",
        id,
        "start",
    ]
}

/// The socket `start` binds for shim `id` run with [`start_args`] outside a CRI pod.
pub fn socket_for(id: &str) -> PathBuf {
    let opts = containerd_shim::StartOpts {
        address: CONTAINERD_ADDRESS.into(),
        namespace: NAMESPACE.into(),
        ..Default::default()
    };
    PathBuf::from(opts.socket_address(id).trim_start_matches("unix://"))
}

pub fn run_start(bundle: &Path, id: &str) -> String {
    run_start_with(bundle, id, &[])
}

pub fn run_start_with(bundle: &Path, id: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(super::cove_bin())
        .args(start_args(id))
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", "/run/cove-test/containerd.sock.ttrpc")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "start wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("start prints only the JSON reply");
    assert_eq!(v["version"], 3);
    assert_eq!(v["protocol"], "ttrpc");
    v["address"].as_str().unwrap().to_string()
}

pub fn ctx() -> ttrpc::context::Context {
    context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

pub fn create_req(id: &str, bundle: &Path) -> CreateSandboxRequest {
    let mut r = CreateSandboxRequest::new();
    r.sandbox_id = id.into();
    r.bundle_path = bundle.to_string_lossy().into_owned();
    r
}

pub fn pod_options(hostname: &str, cgroup_parent: &str) -> Any {
    let mut cfg = pod_config(hostname, cgroup_parent);
    cfg.linux
        .mut_or_insert_default()
        .sysctls
        .insert("kernel.shmmni".into(), "1000".into());
    pod_config_any(&cfg)
}

/// A pod config as CRI sends one for a default pod: hostname, DNS, cgroup parent.
pub fn pod_config(hostname: &str, cgroup_parent: &str) -> cove::protos::cri::PodSandboxConfig {
    use cove::protos::cri::*;
    let mut linux = LinuxPodSandboxConfig::new();
    linux.cgroup_parent = cgroup_parent.into();
    let mut dns = DNSConfig::new();
    dns.servers = vec!["10.96.0.10".into()];
    dns.searches = vec!["default.svc.cluster.local".into()];
    let mut cfg = PodSandboxConfig::new();
    cfg.hostname = hostname.into();
    cfg.dns_config = Some(dns).into();
    cfg.linux = Some(linux).into();
    cfg
}

/// CreateSandbox's `options`: a PodSandboxConfig as containerd's CRI packs it.
pub fn pod_config_any(cfg: &cove::protos::cri::PodSandboxConfig) -> Any {
    Any {
        type_url: "runtime.v1.PodSandboxConfig".into(),
        value: cfg.write_to_bytes().unwrap(),
        ..Default::default()
    }
}
