//! The end-to-end harness: a private containerd 2.x (own root, state, sockets and CNI
//! network in a temp dir) with two CRI handlers, `runc` (containerd's default podsandbox
//! path) and `cove` (`sandboxer = "shim"`, runtime_type = the freshly built binary), and a
//! real CRI gRPC client. Dropping it stops containerd and removes everything it made, also
//! when a test fails.
#![allow(dead_code)]

pub mod docker;
pub mod shim;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

/// The shim under test: `$COVE_BIN` when set (the release binary `make release` builds,
/// which `make test`, the matrix and the VM legs test; the demo's), else the binary cargo
/// built for this test run.
pub fn cove_bin() -> String {
    match (
        std::env::var("COVE_BIN"),
        option_env!("CARGO_BIN_EXE_containerd-shim-cove-v1"),
    ) {
        (Ok(b), _) if !b.is_empty() => b,
        (_, Some(b)) => b.to_string(),
        _ => panic!("set COVE_BIN to the absolute path of containerd-shim-cove-v1"),
    }
}
pub const NS: &str = "k8s.io";
/// StopContainer's timeout for containers that end on SIGTERM. It must not lapse while
/// containerd is still taking in the exit (seconds under emulation), or CRI kills a task
/// it is deleting and fails with "ttrpc: closed": a race in containerd's CRI, on both
/// handlers.
pub const GRACE: i64 = 30;
pub const BUSYBOX: &str = "cove.test/busybox:latest";
pub const PAUSE: &str = "cove.test/pause:latest";

/// The containerd on PATH (the matrix leg puts each version's directory first): its
/// (major, minor, patch), from `containerd --version`.
pub fn containerd_version() -> (u32, u32, u32) {
    static V: std::sync::OnceLock<(u32, u32, u32)> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        let out = Command::new("containerd")
            .arg("--version")
            .output()
            .expect("run containerd --version");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "containerd github.com/containerd/containerd/v2 v2.3.4 <commit>" or "2.1.9+unknown"
        let v = text
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("containerd --version: {text}"));
        let mut nums = v
            .trim_start_matches('v')
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse().unwrap_or(0));
        (
            nums.next().unwrap_or(0),
            nums.next().unwrap_or(0),
            nums.next().unwrap_or(0),
        )
    })
}

/// Whether the containerd under test is at least `major.minor.patch`.
pub fn containerd_at_least(major: u32, minor: u32, patch: u32) -> bool {
    containerd_version() >= (major, minor, patch)
}

/// Whether this run uses the systemd cgroup driver (`COVE_TEST_CGROUP_DRIVER=systemd`, set by
/// the VM leg whose PID 1 is systemd): pods get slice parents, as kubelet's systemd driver
/// gives them, and containerd's runc handler runs with `SystemdCgroup = true`.
pub fn systemd_driver() -> bool {
    let on = std::env::var("COVE_TEST_CGROUP_DRIVER").is_ok_and(|d| d == "systemd");
    if on {
        require(
            "the systemd cgroup driver needs systemd as PID 1",
            cove::cgroups::systemd::booted(),
        );
    }
    on
}

/// This host's cgroup layout (v1/hybrid or pure v2), as cove reads it.
pub fn layout() -> cove::cgroups::Layout {
    cove::cgroups::Layout::detect().expect("read the cgroup layout")
}

/// Whether this host runs pure cgroup v2.
pub fn cgroup_v2() -> bool {
    matches!(layout(), cove::cgroups::Layout::V2(_))
}

/// The directory of cgroup `rel` in the hierarchy that holds `controller`.
pub fn cg_dir(controller: &str, rel: &Path) -> PathBuf {
    layout()
        .controller_dir(controller, rel)
        .unwrap_or_else(|| panic!("no {controller} hierarchy on this host"))
}

/// The type URL containerd gives cgroup metrics on this host.
pub fn metrics_type() -> &'static str {
    if cgroup_v2() {
        cove::cgroups::stats::V2_METRICS_TYPE
    } else {
        cove::cgroups::stats::V1_METRICS_TYPE
    }
}

/// (pids.current, memory usage) from a `Metric.data` of this host's metrics type.
pub fn decode_metrics(data: &protobuf::well_known_types::any::Any) -> (u64, u64) {
    use protobuf::Message;
    assert_eq!(data.type_url, metrics_type());
    if cgroup_v2() {
        let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&data.value)
            .expect("decode cgroup v2 metrics");
        (m.pids.current, m.memory.usage)
    } else {
        let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&data.value)
            .expect("decode cgroup v1 metrics");
        (m.pids.current, m.memory.usage.usage)
    }
}

/// The cgroup of a process as cove and runc place it (the memory hierarchy's on v1).
pub fn cgroup_of(pid: u32) -> PathBuf {
    cove::cgroups::cgroup_of(pid, &layout())
        .unwrap_or_else(|| panic!("/proc/{pid}/cgroup names no cgroup"))
}

/// The cgroup path of a pod's `cgroup_parent` (a slice is expanded as systemd nests it).
pub fn pod_cgroup(cfg: &PodSandboxConfig) -> PathBuf {
    let parent = &cfg.linux.as_ref().expect("linux config").cgroup_parent;
    if cove::cgroups::systemd::is_slice(parent) {
        cove::cgroups::systemd::expand(parent).expect("a valid slice")
    } else {
        PathBuf::from(parent)
    }
}

/// Where a pod's sandbox (cove's pause, or the runc path's pause container) and its
/// containers live: `<parent>/<id>` under cgroupfs, `<slice>/cri-containerd-<id>.scope`
/// under systemd, as containerd's CRI names them.
pub fn task_cgroup(cfg: &PodSandboxConfig, id: &str) -> PathBuf {
    let pod = pod_cgroup(cfg);
    if systemd_driver() {
        pod.join(cove::cgroups::systemd::scope_name(id))
    } else {
        pod.join(id)
    }
}

/// Nothing of removed pod `pod` (config `cfg`, container `c`) is left: no process, no
/// mount, no runc state, and for cove no container cgroup. A shim may still be on its way
/// out when RemovePodSandbox returns: containerd's runc shim closes its server and then
/// waits up to 5 s for its shutdown callbacks (its event publisher's close among them);
/// one was still there 8 s after RemovePodSandbox under the VM legs' emulation. What is
/// left after [`EVENTUALLY`] is left.
pub fn assert_pod_gone(handler: &str, cfg: &PodSandboxConfig, pod: &str, c: &str) {
    let named = || -> Vec<String> {
        pids_with(pod)
            .iter()
            .map(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
            })
            .collect()
    };
    let mut left = named();
    if !left.is_empty() {
        let (first, since) = (left.clone(), std::time::Instant::now());
        if docker::poll_within(EVENTUALLY, || {
            left = named();
            left.is_empty()
        }) {
            eprintln!(
                "{handler}: {first:?}, still there when pod {pod} was removed, went after {:?}",
                since.elapsed()
            );
        }
    }
    assert!(
        left.is_empty(),
        "{handler}: a process of pod {pod} is left: {left:?}"
    );
    if handler == "cove" {
        assert!(!cgroup_exists(&task_cgroup(cfg, pod)));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(pod),
        "{handler}: a mount of pod {pod} is left"
    );
    assert!(
        !Path::new(&format!("/run/containerd/runc/{NS}/{c}")).exists(),
        "{handler}: runc state of {c} left"
    );
}

/// Whether any hierarchy still has cgroup `rel`.
pub fn cgroup_exists(rel: &Path) -> bool {
    layout().dirs(rel).iter().any(|d| d.exists())
}

/// Whether systemd still knows unit `name` (loaded in any state).
pub fn unit_loaded(name: &str) -> bool {
    let out = Command::new("systemctl")
        .args(["list-units", "--all", "--plain", "--no-legend", name])
        .output()
        .expect("run systemctl");
    String::from_utf8_lossy(&out.stdout).contains(name)
}

/// Fails with the reason when a prerequisite is missing: tests never skip silently.
pub fn require(what: &str, ok: bool) {
    assert!(ok, "cannot run: {what} (run `make deps` as root)");
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

static NEXT_NET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

fn bridge_name(n: u32) -> String {
    format!("cv{}n{n}", std::process::id() % 100_000)
}

pub struct Containerd {
    bridge_n: u32,
    pub dir: PathBuf,
    pub sock: PathBuf,
    /// Where this harness's pods live: a cgroupfs path, or (systemd driver) the slice that
    /// holds every pod slice of this harness.
    pub cgroup_root: String,
    /// containerd's Prometheus endpoint (`host:port`), when started with metrics.
    pub metrics: Option<String>,
    log_level: String,
    child: Option<Child>,
    pub channel: Channel,
}

/// Image archives, built once per checkout by tests/images/build.sh.
fn images_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/images");
    let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/build.sh"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "building the test images failed");
    dir
}

/// The first `bin` on PATH.
fn on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// `cp -a from to`: a tree with its modes, owners, times and extended attributes.
fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

/// A containerd root holding the test images (busybox and pause, in namespace `NS`,
/// unpacked for overlayfs), which each harness copies as its own root before it starts.
///
/// Importing the archives costs a harness seconds (under the VM legs' emulation about 15 s,
/// more than containerd's start), so it is done once per containerd build and image build
/// (the key: the containerd on PATH and both archives, by path, size and time) by a
/// containerd without CRI, stopped before the root is used. CRI, starting on a copy, takes
/// the images in as it takes in pulled images after a restart (its image check labels them
/// as its own and pins the pause image). Seeds live in `$COVE_E2E_SEEDS`, by default the
/// checkout's `target/seeds`, beside the image archives; the VM legs, whose checkout is
/// read-only, point it into the guest's /tmp. Concurrent tests build a seed once: the first
/// takes a lock, the others wait on it, and a seed appears only complete (renamed into
/// place).
async fn seeded_root() -> PathBuf {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let images = images_dir();
    let containerd =
        on_path("containerd").unwrap_or_else(|| panic!("cannot run: containerd on PATH"));
    let mut key = std::hash::DefaultHasher::new();
    // What the seed holds and how it is made: change it with the seeding below.
    "busybox+pause in k8s.io, overlayfs, ctr import --local, v1".hash(&mut key);
    for f in [
        containerd.clone(),
        images.join("busybox.tar"),
        images.join("pause.tar"),
    ] {
        let f = f.canonicalize().unwrap_or(f);
        let m = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        (&f, m.len(), m.mtime(), m.mtime_nsec()).hash(&mut key);
    }
    let seeds = std::env::var_os("COVE_E2E_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/seeds"));
    std::fs::create_dir_all(&seeds).unwrap_or_else(|e| panic!("{}: {e}", seeds.display()));
    let seed = seeds.join(format!("{:016x}", key.finish()));
    if seed.is_dir() {
        return seed.join("root");
    }
    let lock = std::fs::File::create(seeds.join("lock")).expect("the seeds' lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the seeds");
    if seed.is_dir() {
        return seed.join("root");
    }
    // The seed's root is built where the seed will be (its file system); its sockets and
    // state in a short directory of their own (a socket path has 108 bytes at most).
    let tmp = seeds.join(format!("{:016x}.tmp", key.finish()));
    let run = PathBuf::from(format!("/tmp/cove-seed-{}", std::process::id()));
    for d in [&tmp, &run] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    let sock = run.join("containerd.sock");
    std::fs::write(
        run.join("config.toml"),
        format!(
            r#"version = 3
root = "{root}"
state = "{run}/state"
disabled_plugins = ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.images', 'io.containerd.cri.v1.runtime', 'io.containerd.podsandbox.controller.v1.podsandbox', 'io.containerd.nri.v1.nri']
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
"#,
            root = tmp.join("root").display(),
            run = run.display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    /// The seed's containerd, stopped (SIGTERM, and SIGKILL if that fails) when seeding
    /// ends, also when it fails.
    struct Seeder(Child);
    impl Drop for Seeder {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = Seeder(spawn_containerd(&run, "info"));
    let log = || std::fs::read_to_string(run.join("containerd.log")).unwrap_or_default();
    let deadline = std::time::Instant::now() + EVENTUALLY;
    loop {
        if let Ok(ch) = containerd_client::connect(&sock).await {
            let mut v = containerd_client::services::v1::version_client::VersionClient::new(ch);
            if v.version(()).await.is_ok() {
                break;
            }
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("the seed's containerd ended with {st}; log:\n{}", log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the seed's containerd did not come up; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for img in ["busybox.tar", "pause.tar"] {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["-n", NS, "images", "import", "--local"])
            .arg(images.join(img))
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "seeding: ctr images import {img}: {}; log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            log()
        );
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let st = child.0.wait().expect("wait for the seed's containerd");
    assert!(
        st.success(),
        "the seed's containerd ended with {st}; log:\n{}",
        log()
    );
    // The server's identity (written when ctr asked for it) is each containerd's own.
    let _ = std::fs::remove_dir_all(tmp.join("root/io.containerd.grpc.v1.introspection"));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::rename(&tmp, &seed).expect("put the seed in place");
    seed.join("root")
}

impl Containerd {
    /// Starts a private containerd named after `tag` (unique per test), logging at debug.
    pub async fn start(tag: &str) -> Containerd {
        Containerd::start_with(tag, "debug", false).await
    }

    /// Starts a private containerd logging at `log_level` (benchmarks use `info`: debug
    /// logging costs containerd and the shims time on every call), optionally serving its
    /// Prometheus metrics on a free loopback port.
    pub async fn start_with(tag: &str, log_level: &str, metrics: bool) -> Containerd {
        Containerd::launch(tag, log_level, metrics, "").await
    }

    /// Starts a private containerd (logging at debug) with `runtime_toml` added to CRI's
    /// runtime section (`[plugins.'io.containerd.cri.v1.runtime']`), e.g.
    /// `drain_exec_sync_io_timeout = '10s'`.
    pub async fn start_with_runtime(tag: &str, runtime_toml: &str) -> Containerd {
        Containerd::launch(tag, "debug", false, runtime_toml).await
    }

    async fn launch(tag: &str, log_level: &str, metrics: bool, runtime_toml: &str) -> Containerd {
        require("root", nix::unistd::geteuid().is_root());
        for bin in ["containerd", "ctr", "runc", "nsenter", "ip"] {
            require(&format!("{bin} on PATH"), have(bin));
        }
        require(
            "CNI bridge plugin",
            Path::new("/usr/lib/cni/bridge").exists(),
        );
        let dir = PathBuf::from(format!("/tmp/cove-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni/net.d")).unwrap();
        let sock = dir.join("containerd.sock");
        // A bridge and a /24 per instance, so parallel harnesses never collide.
        let n = NEXT_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k = std::process::id() * 8 + n % 8;
        let subnet = format!("10.{}.{}.0/24", 64 + (k / 256) % 128, k % 256);
        let bridge = bridge_name(n);
        // No loopback plugin: CRI brings up a pod's `lo` itself (its CNI setup always adds
        // a loopback network), and a second run of the plugin costs each pod's setup and
        // teardown a Go binary (about 0.5 s of CPU under the VM legs' emulation).
        std::fs::write(
            dir.join("cni/net.d/10-cove.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": format!("cove-e2e-{tag}-{}", std::process::id()),
                "plugins": [
                    {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": dir.join("cni/ipam")}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let metrics = metrics.then(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            l.local_addr().expect("its address").to_string()
        });
        let metrics_cfg = metrics
            .as_ref()
            .map(|a| format!("[metrics]\n  address = \"{a}\"\n"))
            .unwrap_or_default();
        let cfg = format!(
            r#"version = 3
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins]
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{pause}'
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    {runtime_toml}
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = {systemd}
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.cove]
        runtime_type = '{cove}'
        sandboxer = 'shim'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.cove-pod]
        runtime_type = '{cove}'
        sandboxer = 'podsandbox'
      # The cove handler with an options table (containerd 2.3.1+ passes it to a shim
      # sandboxer; 2.1 and 2.2 fail StartContainer when one is set).
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.cove-opts]
        runtime_type = '{cove}'
        sandboxer = 'shim'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.cove-opts.options]
          Root = '{d}/cove-opts-runc'
          SystemdCgroup = {systemd}
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '{d}/cni/net.d'
"#,
            d = dir.display(),
            sock = sock.display(),
            pause = PAUSE,
            cove = cove_bin(),
            systemd = systemd_driver(),
            runtime_toml = runtime_toml,
        ) + &metrics_cfg;
        std::fs::write(dir.join("config.toml"), cfg).unwrap();
        // The test images, imported and unpacked: a copy of a seeded root.
        copy_tree(&seeded_root().await, &dir.join("root"));
        // `--runtime io.containerd.cove.v1` resolves to containerd-shim-cove-v1 on PATH.
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(cove_bin(), dir.join("bin/containerd-shim-cove-v1")).unwrap();
        let child = spawn_containerd(&dir, log_level);
        let cgroup_root = if systemd_driver() {
            format!(
                "cove_e2e_{}_{}.slice",
                tag.replace('-', "_"),
                std::process::id()
            )
        } else {
            format!("/cove-e2e-{tag}-{}", std::process::id())
        };
        let mut c = Containerd {
            bridge_n: n,
            cgroup_root,
            metrics,
            log_level: log_level.to_owned(),
            dir,
            sock: sock.clone(),
            child: Some(child),
            channel: Channel::from_static("http://[::]:50051").connect_lazy(),
        };
        c.channel = c.wait_ready().await;
        c
    }

    /// Stops containerd (SIGTERM, as systemd stops it; shims and pods live on) and starts
    /// it again with the same configuration, root and state.
    pub async fn restart(&mut self) {
        self.stop_daemon();
        self.start_daemon().await;
    }

    /// Stops containerd (SIGTERM), leaving its shims and their pods running.
    pub fn stop_daemon(&mut self) {
        use nix::sys::signal::{kill, Signal};
        if let Some(mut c) = self.child.take() {
            let _ = kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Starts containerd again on the same root and state, and waits until CRI is ready.
    pub async fn start_daemon(&mut self) {
        self.child = Some(spawn_containerd(&self.dir, &self.log_level));
        self.channel = self.wait_ready().await;
    }

    /// Waits until CRI reports the two conditions kubelet waits for, RuntimeReady and
    /// NetworkReady (newer containerd adds others, e.g. about deprecated configuration).
    async fn wait_ready(&self) -> Channel {
        let mut last = Vec::new();
        // Bounded, and generous: a containerd restarting with dozens of live shims under
        // emulation takes a while to load them.
        for _ in 0..6000 {
            if let Ok(ch) = containerd_client::connect(&self.sock).await {
                let mut rt = RuntimeServiceClient::new(ch.clone());
                if let Ok(st) = rt.status(StatusRequest { verbose: false }).await {
                    last = st
                        .into_inner()
                        .status
                        .map(|s| s.conditions)
                        .unwrap_or_default();
                    let ready = |t: &str| last.iter().any(|c| c.r#type == t && c.status);
                    if ready("RuntimeReady") && ready("NetworkReady") {
                        return ch;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "containerd did not become ready ({last:?}); log:\n{}",
            self.log()
        );
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("containerd is running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this containerd: (exit code, stdout, stderr).
    pub fn ctr_status(&self, args: &[&str]) -> (i32, String, String) {
        self.ctr_status_in(NS, args)
    }

    /// [`Containerd::ctr_status`] in containerd namespace `ns`.
    pub fn ctr_status_in(&self, ns: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["-n", ns])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `ctr` against this containerd and returns stdout; panics on failure.
    pub fn ctr(&self, args: &[&str]) -> String {
        self.ctr_in(NS, args)
    }

    /// [`Containerd::ctr`] in containerd namespace `ns`.
    pub fn ctr_in(&self, ns: &str, args: &[&str]) -> String {
        let (code, out, err) = self.ctr_status_in(ns, args);
        assert!(code == 0, "ctr -n {ns} {args:?}: {err}");
        out
    }

    /// cove shim processes of this containerd (their command lines name its socket; the
    /// pause processes run as `cove-pause` and are left out too).
    pub fn cove_shims(&self) -> Vec<i32> {
        let ours = pids_with(&self.sock.to_string_lossy());
        pids_with("containerd-shim-cove-v1")
            .into_iter()
            .filter(|p| ours.contains(p))
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() != cove::pause::PAUSE_COMM)
            })
            .collect()
    }

    /// Kills a `ctr run` task with SIGKILL, waits until it is stopped, and removes it and
    /// its container.
    pub async fn ctr_kill_and_remove(&self, id: &str) {
        let pid = self.tasks().get(id).copied();
        self.ctr(&["task", "kill", "-s", "KILL", id]);
        match pid {
            Some(pid) => self.stopped(id, pid).await,
            None => self.ctr_stopped(id).await,
        }
        self.ctr(&["task", "delete", id]);
        self.ctr(&["container", "rm", id]);
    }

    /// Waits until task `id`, whose process was `pid`, shows STOPPED: first until the
    /// process is gone (read in /proc, cheaply), then in `ctr task ls`.
    pub async fn stopped(&self, id: &str, pid: u32) {
        eventually(&format!("{id}'s process {pid} is gone"), || !alive(pid)).await;
        self.ctr_stopped(id).await;
    }

    /// Waits until `ctr task ls` shows task `id` STOPPED.
    pub async fn ctr_stopped(&self, id: &str) {
        eventually_every(
            &format!("{id} stops"),
            Backoff::every(CTR_POLL),
            EVENTUALLY,
            || {
                self.ctr(&["task", "ls"])
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            },
        )
        .await;
    }

    /// containerd's runc shims (v2) of this containerd: their command lines name its socket.
    pub fn runc_shims(&self) -> Vec<i32> {
        let ours = pids_with(&self.sock.to_string_lossy());
        pids_with("containerd-shim-runc-v2")
            .into_iter()
            .filter(|p| ours.contains(p))
            .collect()
    }

    /// The sum of a metric's samples on containerd's Prometheus endpoint (e.g. a timer's
    /// `_seconds_sum`); 0 when it has none yet.
    pub fn metric(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        let addr = self
            .metrics
            .as_ref()
            .expect("containerd started with metrics");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
        s.write_all(b"GET /v1/metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("ask for metrics");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read metrics");
        body.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn rt(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    /// A pod config with a unique name, the given hostname and a cgroup parent of this
    /// harness. Under the systemd driver the parent is a pod slice that exists before the
    /// pod, as kubelet creates it.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let cgroup_parent = if systemd_driver() {
            let slice = format!(
                "{}-{}.slice",
                self.cgroup_root.trim_end_matches(".slice"),
                name.replace('-', "_")
            );
            // What kubelet does before RunPodSandbox: the pod slice is started, so that it
            // is active (an empty scope in it makes systemd start it and its parents).
            let st = Command::new("systemd-run")
                .args(["--quiet", "--scope", "--slice", &slice, "true"])
                .status()
                .expect("run systemd-run");
            assert!(st.success(), "create pod slice {slice}");
            slice
        } else {
            format!("{}/{name}", self.cgroup_root)
        };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "cove-e2e".into(),
                attempt: 0,
            }),
            hostname: format!("{name}-host"),
            dns_config: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["cove-e2e.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub async fn run_pod(&self, cfg: &PodSandboxConfig, handler: &str) -> String {
        let r = self
            .rt()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", self.log_tail()));
        r.into_inner().pod_sandbox_id
    }

    pub async fn pod_status(&self, id: &str) -> PodSandboxStatusResponse {
        self.rt()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn stop_pod(&self, id: &str) {
        self.rt()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
    }

    pub async fn remove_pod(&self, id: &str) {
        self.rt()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// The sandbox pid as containerd's sandbox controller reports it.
    pub async fn sandbox_pid(&self, id: &str, sandboxer: &str) -> u32 {
        use containerd_client::services::v1::sandbox::controller_client::ControllerClient;
        use containerd_client::services::v1::sandbox::ControllerStatusRequest;
        let mut c = ControllerClient::new(self.channel.clone());
        let req = ns_request(ControllerStatusRequest {
            sandbox_id: id.into(),
            verbose: false,
            sandboxer: sandboxer.into(),
        });
        c.status(req).await.unwrap().into_inner().pid
    }

    /// Creates a busybox container running `sh -c script` in a pod.
    pub async fn create_container(
        &self,
        pod: &str,
        pod_cfg: &PodSandboxConfig,
        cfg: ContainerConfig,
    ) -> String {
        let name = cfg
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.rt()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", self.log_tail()))
            .into_inner()
            .container_id
    }

    pub async fn start_container(&self, id: &str) {
        self.rt()
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log_tail()));
    }

    pub async fn container_status(&self, id: &str) -> ContainerStatus {
        self.rt()
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    /// Waits until the container has exited and returns its status. CRI shows a container
    /// as exited only once containerd has deleted its task, and containerd retries a
    /// Delete that ran past its 10 s deadline: under emulation, runc's shim took over a
    /// minute to delete an OOM-killed container in a systemd scope. The bound is for a
    /// wedged runtime, not a slow one.
    pub async fn exited(&self, id: &str) -> ContainerStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let mut every = Backoff::new(POLL_FIRST, POLL_MAX);
        loop {
            let st = self.container_status(id).await;
            if st.state == ContainerState::ContainerExited as i32 {
                return st;
            }
            if std::time::Instant::now() > deadline {
                panic!("container {id} never exited\n{}", self.log_tail());
            }
            tokio::time::sleep(every.next()).await;
        }
    }

    pub async fn exec_sync(&self, id: &str, cmd: &[&str]) -> (String, String, i32) {
        let r = self
            .rt()
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"))
            .into_inner();
        (
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
            r.exit_code,
        )
    }

    pub async fn stop_container(&self, id: &str, timeout: i64) {
        self.rt()
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", self.log_tail()));
    }

    pub async fn remove_container(&self, id: &str) {
        self.rt()
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", self.log_tail()));
    }

    /// `ctr task ls` of the k8s.io namespace: task id to pid.
    pub fn tasks(&self) -> std::collections::HashMap<String, u32> {
        self.ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.parse().ok()?))
            })
            .collect()
    }

    /// After a containerd restart, CRI shows `pod` READY and its container `c` running,
    /// and exec in it works.
    pub async fn assert_back_after_restart(&self, handler: &str, pod: &str, c: &str) {
        let st = self.pod_status(pod).await.status.unwrap();
        assert_eq!(
            st.state,
            PodSandboxState::SandboxReady as i32,
            "{handler} pod {pod}: READY after the restart\n{}",
            self.log_tail()
        );
        let cs = self.container_status(c).await;
        assert_eq!(
            cs.state,
            ContainerState::ContainerRunning as i32,
            "{handler} pod {pod}: container running after the restart"
        );
        assert_eq!(
            self.exec_sync(c, &["echo", "after"]).await,
            ("after\n".to_string(), String::new(), 0),
            "{handler} pod {pod}: exec after the restart"
        );
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Starts containerd on `dir/config.toml`, logging (appending) to `dir/containerd.log`,
/// with the cove binary on its PATH.
fn spawn_containerd(dir: &Path, log_level: &str) -> Child {
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    Command::new("containerd")
        .env("PATH", path)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--log-level")
        .arg(log_level)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd")
}

/// A busybox container config running `sh -c script`, logging to `<name>.log`.
/// `cfg` limited to `bytes` of memory, swap included.
pub fn with_memory_limit(mut cfg: ContainerConfig, bytes: i64) -> ContainerConfig {
    cfg.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: bytes,
            memory_swap_limit_in_bytes: bytes,
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

pub fn container_config(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// A message without what differs between runs (containerd's 64-hex ids, as `<id>`).
pub fn without_ids(msg: &str) -> String {
    let mut out = String::new();
    let mut run = 0;
    for ch in msg.chars() {
        out.push(ch);
        if ch.is_ascii_hexdigit() {
            run += 1;
            if run == 64 {
                out.truncate(out.len() - 64);
                out.push_str("<id>");
                run = 0;
            }
        } else {
            run = 0;
        }
    }
    out
}

/// Adds containerd's namespace header.
pub fn ns_request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", NS.parse().unwrap());
    r
}

/// The `ns/<kind>` link of a process, e.g. `net:[4026531992]`.
pub fn ns_of(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// Runs a command inside the given namespaces of `pid`.
pub fn nsenter(pid: u32, ns: &[&str], cmd: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg("-t")
        .arg(pid.to_string())
        .args(ns)
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nsenter {ns:?} {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The descriptors (3 and up) of `pid` that are not close-on-exec: each one would reach
/// every runc, hook and log driver the process runs. Entries are `fd -> target`.
pub fn inheritable_fds(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(fd) = name.parse::<i32>() else {
            continue;
        };
        if fd < 3 {
            continue;
        }
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
        if flags.is_some_and(|f| f & libc::O_CLOEXEC as u32 == 0) {
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(format!("{fd} -> {target}"));
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    cove::state::proc_start_time(pid as i32).is_some()
}

/// Pids whose command line mentions `needle` (shims of this containerd name its socket),
/// and cove pause processes whose cgroup does (a pod's id): a pause's command line is only
/// `cove-pause`.
pub fn pids_with(needle: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let pause = cmd.strip_suffix(b"\0") == Some(cove::pause::PAUSE_ARGV0.as_bytes());
        let named = if pause {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
        } else {
            String::from_utf8_lossy(&cmd).into_owned()
        };
        if named.contains(needle) {
            v.push(pid);
        }
    }
    v
}

/// The median of some durations (sorts them).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// (RSS, PSS) in kB from /proc/PID/smaps_rollup.
pub fn rss_pss(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("Rss:"), get("Pss:"))
}

/// Polls for a state reached asynchronously; bounded, not a timing assertion.
pub async fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_every(what, Backoff::new(POLL_FIRST, POLL_MAX), EVENTUALLY, f).await
}

/// Whether `f` comes to hold within [`EVENTUALLY`], polled as [`eventually`] polls: for
/// what is recorded and compared rather than required (a process of the runc pod path
/// still on its way out is not a leak; one there after [`EVENTUALLY`] is).
pub async fn comes_to_hold(f: impl FnMut() -> bool) -> bool {
    holds_within(Backoff::new(POLL_FIRST, POLL_MAX), EVENTUALLY, f).await
}

/// Polls `f` at the intervals of `every` until it holds (true) or `bound` has passed
/// (false).
async fn holds_within(mut every: Backoff, bound: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(every.next()).await;
    }
}

/// A poll's first interval, and the most it grows to (see [`Backoff`]).
pub const POLL_FIRST: Duration = Duration::from_millis(5);
pub const POLL_MAX: Duration = Duration::from_millis(200);

/// The intervals of a poll: from `first`, half as long again each time, up to `max`. A
/// condition that holds soon is seen soon; one that takes long costs a few looks a second.
/// A look costs what it waits for CPU time: a scan of /proc, a CRI or Engine API call
/// (milliseconds each under the VM legs' emulation, where a 10 ms poll of a shim's exit
/// took a core from the shim and the test beside it).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// A poll at one fixed interval.
    pub fn every(interval: Duration) -> Backoff {
        Backoff::new(interval, interval)
    }

    /// The interval before the next look.
    pub fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 3 / 2).min(self.max);
        d
    }
}

/// How long [`eventually`] waits: for a wedged runtime, not a slow one. Under emulation,
/// with two tests at a time, containerd took over 10 s to notice a killed shim and clean
/// up after it.
pub const EVENTUALLY: Duration = Duration::from_secs(120);

/// How often a poll that runs `ctr` looks: every run starts a Go binary, which under
/// emulation takes seconds, so a tighter poll would crowd out what it waits for.
pub const CTR_POLL: Duration = Duration::from_millis(250);

/// Polls `f` at the intervals of `every` until it holds; panics after `bound`, which is for
/// a wedged runtime, not a slow one.
pub async fn eventually_every(
    what: &str,
    every: Backoff,
    bound: Duration,
    f: impl FnMut() -> bool,
) {
    if !holds_within(every, bound, f).await {
        panic!("never happened within {bound:?}: {what}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
        // Whatever a failed test left: shims of this containerd and every process in our cgroups.
        for pid in pids_with(&self.sock.to_string_lossy()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let root = if systemd_driver() {
            cove::cgroups::systemd::expand(&self.cgroup_root).unwrap_or_default()
        } else {
            PathBuf::from(&self.cgroup_root)
        };
        let cg_dirs: Vec<PathBuf> = layout()
            .dirs(&root)
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for f in $(find {dirs} -name cgroup.procs 2>/dev/null); do for p in $(cat $f); do kill -9 $p; done; done; \
                 for b in $(find {d}/state/io.containerd.runtime.v2.task {d}/state/io.containerd.sandbox.controller.v1.shim -mindepth 2 -maxdepth 2 -type d 2>/dev/null); do \
                   (cd $b && {cove} -id $(basename $b) -bundle $b delete >/dev/null 2>&1); done; \
                 grep ' {d}/' /proc/self/mountinfo | cut -d' ' -f5 | sort -r | xargs -r -n1 umount -l 2>/dev/null; \
                 for n in $(grep -l cove-e2e /var/run/netns/* 2>/dev/null); do :; done; true",
                dirs = if cg_dirs.is_empty() { "/nonexistent".into() } else { cg_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" ") },
                d = self.dir.display(),
                cove = cove_bin(),
            ))
            .status();
        if systemd_driver() {
            // The harness's slice, as kubelet removes pod slices: it takes every unit in it.
            let _ = Command::new("systemctl")
                .args(["stop", &self.cgroup_root])
                .status();
        }
        for d in cg_dirs {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "find {} -depth -type d -exec rmdir {{}} \\; 2>/dev/null",
                    d.display()
                ))
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &bridge_name(self.bridge_n)])
            .status();
        if !std::thread::panicking() && std::env::var_os("COVE_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "containerd log kept at {}",
                self.dir.join("containerd.log").display()
            );
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "rm -rf {}/root {}/state 2>/dev/null",
                    self.dir.display(),
                    self.dir.display()
                ))
                .status();
        }
    }
}
