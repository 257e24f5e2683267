//! `make bench`: cove against containerd's default runc pod path, side by side, in one run.
//!
//! One private containerd (the e2e harness in `tests/common`) serves two CRI handlers:
//! `cove` (`sandboxer = "shim"`, this crate's shim) and `runc` (the `podsandbox` controller,
//! a pause container and `containerd-shim-runc-v2`). Everything is driven through CRI, as
//! the kubelet drives it, and the handlers alternate so that machine drift hits both alike.
//!
//! - **serial**: N pods, one after another: RunPodSandbox; CreateContainer+StartContainer of
//!   one busybox container; StopPodSandbox+RemovePodSandbox. p50/p90/p99 of each phase.
//! - **burst**: M pods started at once; wall time until every pod is READY with a running
//!   container.
//! - **density**: D pods with a sleeping container each, started 8 at a time. The memory of
//!   what the runtime adds per pod (its shim processes and its pause processes, the app
//!   containers excluded) is read from `/proc/PID/smaps_rollup` at 1, 50 and D pods; then all
//!   are torn down, timed, and the host is checked for anything left behind.
//! - **churn**: C pods per handler created and removed, 8 at a time, every 10th with its
//!   shim killed (SIGKILL) before the pod is removed, while a long-lived pod of each
//!   handler gets a container created, started and removed alongside each one. Reports
//!   anything left on the host (must be nothing) and the long-lived pod's shim descriptors
//!   and memory before and after.
//! - **output**: a container writes `COVE_BENCH_OUTPUT` MiB of zeros to its stdout
//!   (`dd bs=64k`), through the handler's stdio path and CRI's log copy into its log file;
//!   from StartContainer until CRI reports it exited (which it does once the log copy has
//!   seen the end), MB/s, the median of `OUTPUT_ROUNDS` per handler, alternating.
//! - **shim**: the shim alone over ttrpc, without containerd: `start`,
//!   CreateSandbox+StartSandbox, StopSandbox+ShutdownSandbox.
//!
//! Sizes come from the environment: `COVE_BENCH_N` (50), `COVE_BENCH_BURST` (20),
//! `COVE_BENCH_DENSITY` (200), `COVE_BENCH_CHURN` (200), `COVE_BENCH_OUTPUT` (256).
//! `COVE_BENCH_ONLY=output` runs the output row alone, `COVE_BENCH_ONLY=shim` the shim-alone
//! rows (COVE_BENCH_N sandboxes). A failed call names the phase,
//! handler and pod it belonged to. The report goes to stdout, `target/bench/report.md` and
//! `target/bench/latency.svg`. Timings are reported, never asserted; a failed CRI call or
//! anything left behind fails the run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::shim::{create_req, ctx, pod_options, Shim};
use common::*;
use containerd_shim_protos::sandbox_api::{
    ShutdownSandboxRequest, StartSandboxRequest, StopSandboxRequest,
};
use k8s_cri::v1::{ContainerState, PodSandboxState};
use tokio::task::JoinSet;

tokio::task_local! {
    /// What a bench task is doing (phase, handler, pod), for the message of a failed call.
    static DOING: String;
}

/// The bench's phase, for failures outside a labelled task.
static PHASE: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn phase(p: &str) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = p.to_owned();
    println!("{p}");
}

/// Runs `f` labelled with what it does; a panic inside says so.
async fn doing<T>(what: String, f: impl std::future::Future<Output = T>) -> T {
    DOING.scope(what, f).await
}

/// Every failure says where it happened before the run ends.
fn name_failures() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let what = DOING
            .try_with(|d| d.clone())
            .unwrap_or_else(|_| PHASE.lock().map(|p| p.clone()).unwrap_or_default());
        eprintln!("bench failed during: {what}");
        default(info);
    }));
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Handler {
    /// The CRI runtime handler.
    name: &'static str,
    /// Its sandbox controller, for containerd's sandbox API.
    sandboxer: &'static str,
    /// What its shim processes have in their command line.
    shim: &'static str,
}

const COVE: Handler = Handler {
    name: "cove",
    sandboxer: "shim",
    shim: "containerd-shim-cove-v1",
};
const RUNC: Handler = Handler {
    name: "runc",
    sandboxer: "podsandbox",
    shim: "containerd-shim-runc-v2",
};

/// Pods started and torn down at the same time in the density run.
const DENSITY_PARALLEL: usize = 8;
/// Serial rounds run first and not counted (cold caches, first CNI call).
const WARMUP: usize = 2;
/// Burst rounds per handler; the median wall time is reported.
const BURST_ROUNDS: usize = 3;
/// Output rounds per handler; the median throughput is reported.
const OUTPUT_ROUNDS: usize = 5;

const RUN: &str = "RunPodSandbox";
const START: &str = "CreateContainer+StartContainer";
const DOWN: &str = "StopPodSandbox+RemovePodSandbox";
/// The network share of RunPodSandbox and of the teardown (netns and CNI, done by
/// containerd alike for both handlers), from containerd's own timers, and the rest.
const RUN_NET: &str = "RunPodSandbox: network setup (containerd: netns + CNI ADD)";
const RUN_REST: &str = "RunPodSandbox without the network setup";
const DOWN_NET: &str = "Teardown: network teardown (containerd: CNI DEL, netns)";
const DOWN_REST: &str = "Teardown without the network teardown";
const NET_UP: &str = "containerd_cri_sandbox_create_network_seconds_sum";
const NET_DOWN: &str = "containerd_cri_sandbox_delete_network_seconds_sum";

fn env_size(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn pods(n: usize) -> String {
    if n == 1 {
        "1 pod".into()
    } else {
        format!("{n} pods")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sleeper(name: &str) -> k8s_cri::v1::ContainerConfig {
    container_config(name, "exec sleep 100000")
}

/// RunPodSandbox, then CreateContainer+StartContainer of one sleeping busybox container.
async fn pod_with_container(
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

async fn teardown(cd: &Containerd, pod: &str) -> Duration {
    doing(format!("teardown of pod {pod}"), async {
        let t = Instant::now();
        cd.stop_pod(pod).await;
        cd.remove_pod(pod).await;
        t.elapsed()
    })
    .await
}

/// Every pod READY and every container in it RUNNING, as CRI reports them.
async fn assert_ready(cd: &Containerd, pods: &[String]) {
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

type Samples = BTreeMap<(&'static str, Handler), Vec<Duration>>;

async fn serial(cd: &Containerd, n: usize) -> Samples {
    let mut s = Samples::new();
    for i in 0..WARMUP + n {
        let order = if i % 2 == 0 {
            [COVE, RUNC]
        } else {
            [RUNC, COVE]
        };
        for h in order {
            let up0 = cd.metric(NET_UP);
            let (pod, run, start) = pod_with_container(cd, h, &format!("s{i}-{}", h.name)).await;
            let net_up = Duration::from_secs_f64(cd.metric(NET_UP) - up0);
            let down0 = cd.metric(NET_DOWN);
            let down = teardown(cd, &pod).await;
            let net_down = Duration::from_secs_f64(cd.metric(NET_DOWN) - down0);
            if i >= WARMUP {
                for (phase, d) in [
                    (RUN, run),
                    (START, start),
                    (DOWN, down),
                    (RUN_NET, net_up),
                    (RUN_REST, run.saturating_sub(net_up)),
                    (DOWN_NET, net_down),
                    (DOWN_REST, down.saturating_sub(net_down)),
                ] {
                    s.entry((phase, h)).or_default().push(d);
                }
            }
        }
    }
    for v in s.values_mut() {
        v.sort();
    }
    s
}

/// Starts `count` pods, at most `parallel` at a time; returns their ids.
async fn start_pods(
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

async fn teardown_pods(cd: &Arc<Containerd>, pods: Vec<String>, parallel: usize) {
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

/// Wall time of M pods started at once until all are READY with a running container.
async fn burst(cd: &Arc<Containerd>, m: usize) -> BTreeMap<Handler, Vec<Duration>> {
    let mut out = BTreeMap::<Handler, Vec<Duration>>::new();
    for round in 0..BURST_ROUNDS {
        let order = if round % 2 == 0 {
            [COVE, RUNC]
        } else {
            [RUNC, COVE]
        };
        for h in order {
            let t = Instant::now();
            let pods = start_pods(cd, h, &format!("b{round}-"), 0..m, m).await;
            out.entry(h).or_default().push(t.elapsed());
            assert_ready(cd, &pods).await;
            teardown_pods(cd, pods, m).await;
            let left = leftovers(cd);
            assert!(left.is_empty(), "after a {} burst: {left:?}", h.name);
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

#[derive(Default, Clone, Copy)]
struct Mem {
    pods: usize,
    procs: usize,
    rss_kb: u64,
    pss_kb: u64,
}

impl Mem {
    fn pss_per_pod(&self) -> f64 {
        self.pss_kb as f64 / self.pods.max(1) as f64
    }
    fn rss_per_pod(&self) -> f64 {
        self.rss_kb as f64 / self.pods.max(1) as f64
    }
}

/// What the runtime adds for `pods`: its shim processes for this containerd (cove's pause
/// processes are forked from the shim and carry its command line) and each pod's sandbox
/// process as containerd's sandbox controller reports it (runc's pause container).
async fn runtime_memory(cd: &Containerd, h: Handler, pods: &[String]) -> Mem {
    let mut procs: BTreeSet<i32> = BTreeSet::new();
    let sock = cd.sock.to_string_lossy().into_owned();
    for pid in pids_with(&sock) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(h.shim) {
            procs.insert(pid);
        }
    }
    for pod in pods {
        let pid = cd.sandbox_pid(pod, h.sandboxer).await;
        assert!(pid > 0, "{} pod {pod} has no sandbox pid", h.name);
        procs.insert(pid as i32);
    }
    let mut m = Mem {
        pods: pods.len(),
        procs: procs.len(),
        ..Default::default()
    };
    for pid in procs {
        let (rss, pss) = rss_pss(pid);
        m.rss_kb += rss;
        m.pss_kb += pss;
    }
    m
}

struct Density {
    mem: Vec<Mem>,
    start: Duration,
    down: Duration,
}

async fn density(cd: &Arc<Containerd>, h: Handler, total: usize) -> Density {
    let mut pods = Vec::new();
    let mut mem = Vec::new();
    let mut start = Duration::ZERO;
    let mut marks: Vec<usize> = [1, 50, total].into_iter().filter(|m| *m <= total).collect();
    marks.dedup();
    for mark in marks {
        let t = Instant::now();
        let more = start_pods(cd, h, "d", pods.len()..mark, DENSITY_PARALLEL).await;
        start += t.elapsed();
        pods.extend(more);
        // Both runtimes get the same second to settle before their memory is read.
        tokio::time::sleep(Duration::from_secs(1)).await;
        mem.push(runtime_memory(cd, h, &pods).await);
    }
    assert_ready(cd, &pods).await;
    let t = Instant::now();
    teardown_pods(cd, pods, DENSITY_PARALLEL).await;
    let down = t.elapsed();
    let left = leftovers(cd);
    assert!(left.is_empty(), "after {total} {} pods: {left:?}", h.name);
    Density { mem, start, down }
}

/// Anything of a pod left on the host: processes, cgroups, mounts, network namespaces,
/// bundles and CRI pod directories. Empty when nothing is left.
fn leftovers(cd: &Containerd) -> Vec<String> {
    // A removed pod's shim exits once containerd has closed its connection: give the
    // last ones a moment (bounded) before counting.
    for _ in 0..300 {
        if pids_with(&cd.sock.to_string_lossy()).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut left = Vec::new();
    let shims = pids_with(&cd.sock.to_string_lossy());
    if !shims.is_empty() {
        left.push(format!("{} shim or pause processes {shims:?}", shims.len()));
    }
    // Pod and container cgroups are named by their 64-hex ids.
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let root = h.path().join(cd.cgroup_root.trim_start_matches('/'));
        for d in walk_dirs(&root) {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
    }
    let dir = cd.dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mounts.lines() {
        if let Some(point) = l.split(' ').nth(4) {
            if point.starts_with(&dir) {
                left.push(format!("mount {point}"));
            }
        }
    }
    for id in runc_states_of(cd) {
        left.push(format!("runc state {id}"));
    }
    for sub in [
        "state/io.containerd.runtime.v2.task/k8s.io",
        "state/io.containerd.sandbox.controller.v1.shim/k8s.io",
        "state/io.containerd.grpc.v1.cri/sandboxes",
        "root/io.containerd.grpc.v1.cri/sandboxes",
        "root/io.containerd.grpc.v1.cri/containers",
    ] {
        for e in std::fs::read_dir(cd.dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    left
}

/// runc containers (in containerd's runc root) whose bundle is this containerd's.
fn runc_states_of(cd: &Containerd) -> Vec<String> {
    let dir = cd.dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/run/containerd/runc/{NS}"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let state = std::fs::read_to_string(e.path().join("state.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        let bundle = v
            .get("config")
            .and_then(|c| c.get("labels"))
            .and_then(|l| l.as_array())
            .and_then(|l| {
                l.iter()
                    .filter_map(|x| x.as_str())
                    .find_map(|x| x.strip_prefix("bundle="))
            })
            .unwrap_or_default()
            .to_owned();
        if bundle.starts_with(&dir) {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Removes what the runc pod path left in runc's root after the churn (reported, then
/// cleaned so that runs do not pile up).
fn forget_runc_states(cd: &Containerd) {
    for id in runc_states_of(cd) {
        let _ = std::process::Command::new("runc")
            .args([
                "--root",
                &format!("/run/containerd/runc/{NS}"),
                "delete",
                "--force",
                &id,
            ])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
                out.push(e.path());
            }
        }
    }
    out
}

/// Network namespaces under /var/run/netns (containerd makes one per pod).
fn netns_entries() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Stop and remove a pod whose shim was killed, retrying RemovePodSandbox as kubelet does
/// (once a second, here at most 30 times). Returns how many calls failed first.
async fn teardown_retrying(cd: &Containerd, pod: &str) -> usize {
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
const CHURN_KILL_EVERY: usize = 10;

/// What the churn run saw for one handler.
struct Churn {
    pods: usize,
    killed: usize,
    /// RemovePodSandbox calls that failed for a pod whose shim was killed, retried as
    /// kubelet retries them.
    remove_retries: usize,
    wall: Duration,
    /// The long-lived pod's shim: (open descriptors, RSS kB) before and after.
    fds: (usize, usize),
    rss_kb: (u64, u64),
    left: Vec<String>,
}

/// The server process of a pod's shim (not the pause processes forked from it).
fn shim_of(h: Handler, pod: &str) -> Option<i32> {
    pids_with(pod).into_iter().find(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        String::from_utf8_lossy(&cmd).contains(h.shim)
            && comm.trim() != cove::pause::PAUSE_COMM
            && String::from_utf8_lossy(&cmd).contains(&format!("-id\0{pod}"))
    })
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn churn(cd: &Arc<Containerd>, h: Handler, total: usize) -> Churn {
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

const SHIM_START: &str = "shim `start` (spawn the server)";
const SHIM_UP: &str = "CreateSandbox+StartSandbox";
const SHIM_DOWN: &str = "StopSandbox+ShutdownSandbox";

/// Writes the report of a partial run (`COVE_BENCH_ONLY`) to `target/bench/<file>.md` and
/// stdout.
fn publish_part(out_dir: &Path, file: &str, title: &str, r: &Report) {
    let report = format!(
        "# cove benchmark: {title}\n\nMeasured on {}.\n\n{}\n",
        machine(),
        r.markdown()
    );
    std::fs::write(out_dir.join(format!("{file}.md")), &report)
        .unwrap_or_else(|e| panic!("write {file}.md: {e}"));
    println!("\n{report}");
}

/// The shim alone, over ttrpc, as containerd's shim sandbox controller calls it.
async fn shim_level(n: usize) -> BTreeMap<&'static str, Vec<Duration>> {
    let mut out = BTreeMap::<&str, Vec<Duration>>::new();
    let parent = format!("/cove-bench-{}", std::process::id());
    for i in 0..WARMUP + n {
        let t = Instant::now();
        let shim = Shim::start(&format!("bench{i}"));
        let start = t.elapsed();
        let (sb, _, _) = shim.clients().await;
        let mut req = create_req(&shim.id, &shim.bundle);
        req.options = Some(pod_options("bench", &format!("{parent}/{i}"))).into();
        let t = Instant::now();
        sb.create_sandbox(ctx(), &req).await.expect("CreateSandbox");
        let mut st = StartSandboxRequest::new();
        st.sandbox_id = shim.id.clone();
        let pid = sb
            .start_sandbox(ctx(), &st)
            .await
            .expect("StartSandbox")
            .pid;
        let up = t.elapsed();
        assert!(alive(pid), "pause process {pid} is running");
        let t = Instant::now();
        let mut stop = StopSandboxRequest::new();
        stop.sandbox_id = shim.id.clone();
        sb.stop_sandbox(ctx(), &stop).await.expect("StopSandbox");
        let mut sd = ShutdownSandboxRequest::new();
        sd.sandbox_id = shim.id.clone();
        sb.shutdown_sandbox(ctx(), &sd)
            .await
            .expect("ShutdownSandbox");
        let down = t.elapsed();
        assert!(!alive(pid), "pause process {pid} is gone");
        drop(shim);
        if i >= WARMUP {
            out.entry(SHIM_START).or_default().push(start);
            out.entry(SHIM_UP).or_default().push(up);
            out.entry(SHIM_DOWN).or_default().push(down);
        }
    }
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(h.path().join(parent.trim_start_matches('/')));
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Output throughput in MB/s per round and handler: one pod per round whose container
/// writes `mib` MiB to stdout into its CRI log; the first round of each is not counted.
async fn output(cd: &Containerd, mib: usize) -> BTreeMap<Handler, Vec<f64>> {
    let mut out = BTreeMap::<Handler, Vec<f64>>::new();
    let logs = cd.dir.join("bench-logs");
    for i in 0..=OUTPUT_ROUNDS {
        let order = if i % 2 == 0 {
            [COVE, RUNC]
        } else {
            [RUNC, COVE]
        };
        for h in order {
            let name = format!("out{i}-{}", h.name);
            let mbs = doing(format!("output of {} pod {name}", h.name), async {
                let dir = logs.join(&name);
                std::fs::create_dir_all(&dir).expect("create the pod's log directory");
                let mut cfg = cd.pod_config(&name);
                cfg.log_directory = dir.to_string_lossy().into_owned();
                let pod = cd.run_pod(&cfg, h.name).await;
                let script = format!("dd if=/dev/zero bs=64k count={} 2>/dev/null", mib * 16);
                let c = cd
                    .create_container(&pod, &cfg, container_config("dd", &script))
                    .await;
                let t = Instant::now();
                cd.start_container(&c).await;
                loop {
                    let st = cd.container_status(&c).await;
                    if st.state == ContainerState::ContainerExited as i32 {
                        assert_eq!(st.exit_code, 0, "dd in {name}");
                        break;
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(600),
                        "dd in {name} never ended"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let took = t.elapsed();
                let logged = std::fs::metadata(dir.join("dd.log")).map_or(0, |m| m.len());
                assert!(
                    logged >= (mib as u64) << 20,
                    "{name}: {logged} bytes logged of {mib} MiB"
                );
                teardown(cd, &pod).await;
                let _ = std::fs::remove_dir_all(&dir);
                (mib as f64 * 1.048_576) / took.as_secs_f64()
            })
            .await;
            if i > 0 {
                out.entry(h).or_default().push(mbs);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
    for v in out.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    out
}

/// The median of sorted samples.
fn median(sorted: &[f64]) -> f64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

// ---------------------------------------------------------------- report

struct Report {
    rows: Vec<[String; 5]>,
}

fn ratio(cove: f64, runc: f64) -> String {
    if runc > 0.0 {
        format!("{:.2}", cove / runc)
    } else {
        "—".into()
    }
}

fn verdict_zero(n: usize) -> String {
    if n == 0 {
        "0 ✓".into()
    } else {
        "0 ✗".into()
    }
}

fn verdict(r: f64, goal: f64) -> String {
    if r <= goal {
        format!("≤ {goal} ✓")
    } else {
        format!("≤ {goal} ✗")
    }
}

impl Report {
    fn row(&mut self, what: &str, cove: String, runc: String, ratio: String, goal: String) {
        self.rows.push([what.into(), cove, runc, ratio, goal]);
    }

    fn ms_row(&mut self, what: &str, c: Duration, r: Duration, goal: Option<f64>) {
        let q = ms(c) / ms(r);
        self.row(
            what,
            format!("{:.1} ms", ms(c)),
            format!("{:.1} ms", ms(r)),
            ratio(ms(c), ms(r)),
            goal.map(|g| verdict(q, g)).unwrap_or_default(),
        );
    }

    /// The shim-alone rows (no runc figure: runc has no sandbox API).
    fn shim_rows(&mut self, shim: &BTreeMap<&'static str, Vec<Duration>>) {
        for phase in [SHIM_START, SHIM_UP, SHIM_DOWN] {
            let v = &shim[phase];
            self.row(
                &format!("Shim alone over ttrpc: {phase} p50 / p99"),
                format!("{:.1} / {:.1} ms", ms(pct(v, 50.0)), ms(pct(v, 99.0))),
                "—".into(),
                String::new(),
                String::new(),
            );
        }
    }

    fn output_row(&mut self, mib: usize, out: &BTreeMap<Handler, Vec<f64>>) {
        let (c, u) = (median(&out[&COVE]), median(&out[&RUNC]));
        self.row(
            &format!(
                "Output: a container writes {mib} MiB to stdout into its CRI log (median of {OUTPUT_ROUNDS})"
            ),
            format!("{c:.0} MB/s"),
            format!("{u:.0} MB/s"),
            ratio(c, u),
            String::new(),
        );
    }

    fn markdown(&self) -> String {
        let mut s =
            String::from("| | cove | runc | cove/runc | goal |\n|---|---:|---:|---:|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
        s
    }
}

fn machine() -> String {
    let sh = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else {
        "cgroup v1"
    };
    format!(
        "{} CPUs ({}), {} MB RAM, kernel {}, {}; {}; runc {}; cove {} ({}), release build",
        sh("nproc"),
        cpu.trim(),
        sh("free -m | awk '/Mem:/{print $2}'"),
        sh("uname -r"),
        cgroup,
        sh("containerd --version | awk '{print $1, $3}'"),
        sh("runc --version | awk 'NR==1{print $3}'"),
        env!("CARGO_PKG_VERSION"),
        sh(&format!(
            "git -C {} describe --always --dirty 2>/dev/null",
            env!("CARGO_MANIFEST_DIR")
        )),
    )
}

/// Empirical distribution functions of each phase, cove and runc, one panel per phase.
fn svg(serial: &Samples, shim: &BTreeMap<&'static str, Vec<Duration>>) -> String {
    const BLUE: &str = "#1f77b4";
    const ORANGE: &str = "#ff7f0e";
    let pair = |phase: &'static str| -> Vec<(&'static str, &'static str, &Vec<Duration>)> {
        vec![
            ("cove", BLUE, &serial[&(phase, COVE)]),
            ("runc", ORANGE, &serial[&(phase, RUNC)]),
        ]
    };
    let panels = [
        (RUN, pair(RUN)),
        (START, pair(START)),
        (DOWN, pair(DOWN)),
        (
            "cove shim alone over ttrpc",
            vec![
                (SHIM_UP, BLUE, &shim[SHIM_UP]),
                (SHIM_DOWN, "#2ca02c", &shim[SHIM_DOWN]),
            ],
        ),
    ];
    let (pw, ph, ml, mb, mt) = (360.0, 240.0, 50.0, 40.0, 30.0);
    let width = pw * 2.0 + 20.0;
    let height = (ph + 20.0) * 2.0 + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="18" font-size="13">Latency distributions: share of calls done within x ms</text>
"#
    );
    for (i, (title, series)) in panels.iter().enumerate() {
        let ox = 10.0 + (i % 2) as f64 * (pw + 10.0);
        let oy = 30.0 + (i / 2) as f64 * (ph + 20.0);
        let max = series
            .iter()
            .flat_map(|(_, _, v)| v.iter())
            .map(|d| ms(*d))
            .fold(1.0_f64, f64::max);
        let xmax = nice_ceiling(max);
        let (x0, x1, y0, y1) = (ox + ml, ox + pw - 10.0, oy + ph - mb, oy + mt);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{}</text>
<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>"##,
            ox + ml,
            oy + 18.0,
            xml_escape(title)
        );
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let x = x0 + f * (x1 - x0);
            let y = y0 - f * (y0 - y1);
            let _ = writeln!(
                s,
                r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{:.0}</text>
<text x="{}" y="{}" text-anchor="end">{:.2}</text>"##,
                y0 + 14.0,
                f * xmax,
                x0 - 4.0,
                y + 4.0,
                f
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">ms</text>"#,
            (x0 + x1) / 2.0,
            y0 + 28.0
        );
        for (j, (label, color, v)) in series.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
                x0 + 8.0,
                y1 + 4.0 + j as f64 * 14.0,
                x0 + 22.0,
                y1 + 13.0 + j as f64 * 14.0,
                xml_escape(label)
            );
            let mut pts = format!("{x0},{y0}");
            for (k, d) in v.iter().enumerate() {
                let x = x0 + ms(*d) / xmax * (x1 - x0);
                let ya = y0 - (k as f64 / v.len() as f64) * (y0 - y1);
                let yb = y0 - ((k + 1) as f64 / v.len() as f64) * (y0 - y1);
                let _ = write!(pts, " {x:.1},{ya:.1} {x:.1},{yb:.1}");
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>"#
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let n = env_size("COVE_BENCH_N", 50);
    let m = env_size("COVE_BENCH_BURST", 20);
    let d = env_size("COVE_BENCH_DENSITY", 200);
    let began = Instant::now();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).expect("create target/bench");
    let netns_before = netns_entries();

    name_failures();
    let c = env_size("COVE_BENCH_CHURN", 200);
    let o = env_size("COVE_BENCH_OUTPUT", 256);
    let only = std::env::var("COVE_BENCH_ONLY").unwrap_or_default();
    if only == "shim" {
        phase(&format!("shim alone over ttrpc: {n} sandboxes"));
        let shim = shim_level(n).await;
        let mut r = Report { rows: Vec::new() };
        r.shim_rows(&shim);
        publish_part(&out_dir, "shim", "the shim alone", &r);
        return;
    }
    let cd = Arc::new(Containerd::start_with("bench", "info", true).await);
    let output_phase =
        format!("output: {o} MiB to stdout through CRI's log, {OUTPUT_ROUNDS} rounds per handler");
    if only == "output" {
        phase(&output_phase);
        let out = output(&cd, o).await;
        drop(cd);
        let mut r = Report { rows: Vec::new() };
        r.output_row(o, &out);
        publish_part(&out_dir, "output", "output", &r);
        return;
    }
    phase(&format!(
        "serial: {n} pods per handler, alternating ({WARMUP} warm-up rounds not counted)"
    ));
    let ser = serial(&cd, n).await;
    let left = leftovers(&cd);
    assert!(left.is_empty(), "after the serial run: {left:?}");
    phase(&format!(
        "burst: {m} pods at once, {BURST_ROUNDS} rounds per handler"
    ));
    let bur = burst(&cd, m).await;
    phase(&format!(
        "density: {d} pods per handler, {DENSITY_PARALLEL} started at a time"
    ));
    let mut den = BTreeMap::new();
    for h in [COVE, RUNC] {
        den.insert(h, density(&cd, h, d).await);
    }
    phase(&format!(
        "churn: {c} pods per handler, {DENSITY_PARALLEL} at a time, every {CHURN_KILL_EVERY}th shim killed"
    ));
    let mut chu = BTreeMap::new();
    for h in [COVE, RUNC] {
        chu.insert(h, churn(&cd, h, c).await);
    }
    phase(&output_phase);
    let out = output(&cd, o).await;
    forget_runc_states(&cd);
    let netns_left: Vec<_> = netns_entries().difference(&netns_before).cloned().collect();
    assert!(
        netns_left.is_empty(),
        "network namespaces left: {netns_left:?}"
    );
    drop(cd);
    phase(&format!("shim alone: {n} sandboxes over ttrpc"));
    let shim = shim_level(n).await;

    let mut r = Report { rows: Vec::new() };
    let goals = [(RUN, Some(0.4)), (START, Some(1.0)), (DOWN, Some(0.5))];
    for (phase, goal) in goals {
        let (c, u) = (&ser[&(phase, COVE)], &ser[&(phase, RUNC)]);
        r.ms_row(&format!("{phase} p50"), pct(c, 50.0), pct(u, 50.0), goal);
        r.ms_row(&format!("{phase} p90"), pct(c, 90.0), pct(u, 90.0), None);
        r.ms_row(&format!("{phase} p99"), pct(c, 99.0), pct(u, 99.0), None);
    }
    for phase in [RUN_NET, RUN_REST, DOWN_NET, DOWN_REST] {
        let (c, u) = (&ser[&(phase, COVE)], &ser[&(phase, RUNC)]);
        r.ms_row(&format!("{phase} p50"), pct(c, 50.0), pct(u, 50.0), None);
    }
    let (bc, bu) = (pct(&bur[&COVE], 50.0), pct(&bur[&RUNC], 50.0));
    r.ms_row(
        &format!("Burst of {m}: all READY with a running container (median of {BURST_ROUNDS})"),
        bc,
        bu,
        None,
    );
    let per_s = |t: Duration| m as f64 / t.as_secs_f64();
    r.row(
        &format!("Burst of {m}: pods/s"),
        format!("{:.1}", per_s(bc)),
        format!("{:.1}", per_s(bu)),
        ratio(per_s(bc), per_s(bu)),
        String::new(),
    );
    let (dc, du) = (&den[&COVE], &den[&RUNC]);
    for (k, (mc, mu)) in dc.mem.iter().zip(du.mem.iter()).enumerate() {
        let goal = (k > 0).then_some(0.2);
        let q = mc.pss_per_pod() / mu.pss_per_pod();
        r.row(
            &format!("Runtime PSS per pod at {}", pods(mc.pods)),
            format!("{:.0} kB", mc.pss_per_pod()),
            format!("{:.0} kB", mu.pss_per_pod()),
            ratio(mc.pss_per_pod(), mu.pss_per_pod()),
            goal.map(|g| verdict(q, g)).unwrap_or_default(),
        );
        r.row(
            &format!("Runtime RSS per pod at {}", pods(mc.pods)),
            format!("{:.0} kB", mc.rss_per_pod()),
            format!("{:.0} kB", mu.rss_per_pod()),
            ratio(mc.rss_per_pod(), mu.rss_per_pod()),
            String::new(),
        );
        r.row(
            &format!("Runtime processes at {}", pods(mc.pods)),
            mc.procs.to_string(),
            mu.procs.to_string(),
            ratio(mc.procs as f64, mu.procs as f64),
            String::new(),
        );
    }
    r.ms_row(
        &format!("Density: start {d} pods, {DENSITY_PARALLEL} at a time"),
        dc.start,
        du.start,
        None,
    );
    r.ms_row(
        &format!("Density: tear down {d} pods, {DENSITY_PARALLEL} at a time"),
        dc.down,
        du.down,
        None,
    );
    r.row(
        &format!("Density: failures, and anything left after {d} pods"),
        "none".into(),
        "none".into(),
        String::new(),
        String::new(),
    );
    let (cc, cu) = (&chu[&COVE], &chu[&RUNC]);
    r.ms_row(
        &format!(
            "Churn: {} pods created and removed, {} of their shims killed",
            cc.pods, cc.killed
        ),
        cc.wall,
        cu.wall,
        None,
    );
    // A count per kind (the list itself goes to stdout): "220 (200 cgroup, 20 runc state)".
    let leaks = |c: &Churn| {
        if c.left.is_empty() {
            return "0".to_string();
        }
        let mut kinds = BTreeMap::<String, usize>::new();
        for l in &c.left {
            let kind = if l.starts_with("runc state") {
                "runc state".to_string()
            } else {
                l.split(' ').next().unwrap_or_default().to_string()
            };
            *kinds.entry(kind).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        format!("{} ({})", c.left.len(), kinds.join(", "))
    };
    for (h, c) in [(COVE, cc), (RUNC, cu)] {
        if !c.left.is_empty() {
            println!("left by the {} churn: {:?}", h.name, c.left);
        }
    }
    r.row(
        "Churn: RemovePodSandbox retries for the pods whose shim was killed",
        cc.remove_retries.to_string(),
        cu.remove_retries.to_string(),
        String::new(),
        String::new(),
    );
    r.row(
        "Churn: anything left on the host (processes, cgroups, mounts, bundles)",
        leaks(cc),
        leaks(cu),
        String::new(),
        verdict_zero(cc.left.len()),
    );
    r.row(
        &format!(
            "Churn: the long-lived pod's shim, open descriptors before / after {} containers",
            cc.pods
        ),
        format!("{} / {}", cc.fds.0, cc.fds.1),
        format!("{} / {}", cu.fds.0, cu.fds.1),
        String::new(),
        String::new(),
    );
    r.row(
        &format!(
            "Churn: the long-lived pod's shim, RSS before / after {} containers",
            cc.pods
        ),
        format!("{} / {} kB", cc.rss_kb.0, cc.rss_kb.1),
        format!("{} / {} kB", cu.rss_kb.0, cu.rss_kb.1),
        String::new(),
        String::new(),
    );
    r.output_row(o, &out);
    r.shim_rows(&shim);

    // cove must leave nothing; what the runc pod path leaves is reported, not judged.
    let churn_failed = chu[&COVE].left.clone();
    let report = format!(
        "# cove benchmark\n\nMeasured {date} on {machine}.\n\nBoth handlers run in one private containerd, \
         driven through CRI and alternating. Serial: {n} pods per handler ({WARMUP} warm-up rounds \
         not counted), one busybox container each. Burst: {m} pods at once. Density: {d} pods with \
         a sleeping container, {DENSITY_PARALLEL} started at a time. Runtime memory is the sum of \
         `Pss`/`Rss` in `/proc/PID/smaps_rollup` over the shim processes of each runtime and the \
         pods' sandbox processes (cove: its shims and pause processes; runc: \
         containerd-shim-runc-v2 and the pause containers), divided by the number of pods; the app \
         containers are not counted. Churn: {c} pods per handler created and removed \
         {DENSITY_PARALLEL} at a time, every {CHURN_KILL_EVERY}th with its shim killed (SIGKILL) before \
         its removal, while a long-lived pod of the handler runs a container alongside each. runc \
         has no sandbox API, so the shim-alone rows have no runc figure.\n\n{table}\n![latency distributions](latency.svg)\n\nTotal run time: {total:.0} s.\n",
        date = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        machine = machine(),
        table = r.markdown(),
        total = began.elapsed().as_secs_f64(),
    );
    std::fs::write(out_dir.join("report.md"), &report).expect("write report.md");
    std::fs::write(out_dir.join("latency.svg"), svg(&ser, &shim)).expect("write latency.svg");
    println!("\n{report}");
    assert!(
        churn_failed.is_empty(),
        "the churn run left something behind: {churn_failed:?}"
    );
    println!(
        "written: {} and {}",
        out_dir.join("report.md").display(),
        out_dir.join("latency.svg").display()
    );
}
