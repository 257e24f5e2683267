//! The shim alone over ttrpc, without containerd, as containerd's shim sandbox controller
//! and task service call it, in rounds that alternate with the floors' (`floor.rs`): a
//! shim `start`, CreateSandbox+StartSandbox (the pause joins the bench's network namespace),
//! Task.Create+Task.Start of a busybox container in the sandbox (a bundle and an overlay
//! rootfs as containerd lays them out, output to fifos), its kill and delete,
//! StopSandbox+ShutdownSandbox.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{
    CreateTaskRequest, DeleteRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_shim_protos::sandbox_api::{
    ShutdownSandboxRequest, StartSandboxRequest, StopSandboxRequest,
};
use containerd_shim_protos::types::mount::Mount;

use crate::common::shim::{create_req, ctx, pod_config, pod_config_any, Shim};
use crate::common::*;
use crate::doing::doing;
use crate::floor::Floor;
use crate::serial::WARMUP;

pub const SHIM_START: &str = "shim `start` (spawn the server)";
pub const SHIM_UP: &str = "CreateSandbox+StartSandbox";
pub const SHIM_TASK: &str = "Task.Create+Task.Start";
pub const SHIM_DOWN: &str = "StopSandbox+ShutdownSandbox";
pub const FLOOR_SPAWN: &str = "floor: exec of a static binary that exits at once";
pub const FLOOR_UP: &str = "floor: clone into new namespaces, netns and cgroup";
pub const FLOOR_TASK: &str = "floor: runc create + runc start";
pub const FLOOR_DOWN: &str = "floor: SIGKILL, reap, rmdir";

/// Samples of the shim-alone rows and their floors, by row.
pub type ShimSamples = BTreeMap<&'static str, Vec<Duration>>;

/// The shim-alone rounds and the floor rounds, with what they share: the floors' setup
/// (network namespace, image, static binary) and the shim's pod cgroup parent.
pub struct Rounds {
    floor: Floor,
    parent: String,
    samples: ShimSamples,
}

impl Rounds {
    pub fn new() -> Rounds {
        Rounds {
            floor: Floor::prepare(),
            parent: format!("/cove-bench-{}", std::process::id()),
            samples: ShimSamples::new(),
        }
    }

    fn keep(&mut self, times: [(&'static str, Duration); 4]) {
        for (row, d) in times {
            self.samples.entry(row).or_default().push(d);
        }
    }

    /// Round `i` of cove's shim alone; its samples are kept if `counted`.
    pub async fn cove(&mut self, i: usize, counted: bool) {
        let times = doing(
            format!("shim alone: round {i}"),
            cove_round(&self.floor, &self.parent, i),
        )
        .await;
        if counted {
            self.keep(times);
        }
    }

    /// Round `i` of the floors; its samples are kept if `counted`.
    pub async fn floor(&mut self, i: usize, counted: bool) {
        let times = doing(format!("floors: round {i}"), async {
            floor_round(&self.floor, i)
        })
        .await;
        if counted {
            self.keep(times);
        }
    }

    /// The samples of the counted rounds, sorted.
    pub fn samples(&self) -> ShimSamples {
        let mut out = self.samples.clone();
        for v in out.values_mut() {
            v.sort();
        }
        out
    }
}

impl Drop for Rounds {
    /// The shims' pod cgroup parent (the floor cleans up after itself).
    fn drop(&mut self) {
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(self.parent.trim_start_matches('/')));
        }
    }
}

/// `COVE_BENCH_N` rounds of cove's shim and of the floors, alternating which goes first
/// (`COVE_BENCH_ONLY=shim`; a full run has them in its serial rounds).
pub async fn shim_level(n: usize) -> ShimSamples {
    let mut rounds = Rounds::new();
    for i in 0..WARMUP + n {
        let counted = i >= WARMUP;
        if i % 2 == 0 {
            rounds.cove(i, counted).await;
            rounds.floor(i, counted).await;
        } else {
            rounds.floor(i, counted).await;
            rounds.cove(i, counted).await;
        }
    }
    rounds.samples()
}

/// One round of cove's shim: its `start`, the sandbox, a container in it, the teardown.
async fn cove_round(floor: &Floor, parent: &str, i: usize) -> [(&'static str, Duration); 4] {
    // No TTRPC_ADDRESS: with no containerd to publish to, the shim drops its task events
    // instead of retrying them in the background. The bundle is laid out beforehand, as
    // containerd does before it runs `start`.
    let (shim, start) = Shim::start_timed(&format!("bench{i}"), &[("TTRPC_ADDRESS", "")]);
    let (sb, task, _) = shim.clients().await;
    let pod = format!("{parent}/{i}");
    let mut req = create_req(&shim.id, &shim.bundle);
    req.netns_path = floor.netns.to_string_lossy().into_owned();
    req.options = Some(pod_config_any(&pod_config("bench", &pod))).into();
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

    // The container's bundle, rootfs mount and fifos, as containerd makes them before it
    // calls Task.Create.
    let cid = format!("bench-c{i}");
    let bundle = shim
        .dir
        .join("state/io.containerd.runtime.v2.task/cove-test")
        .join(&cid);
    std::fs::create_dir_all(&bundle).expect("create the container's bundle");
    let spec = floor.spec(
        pid as i32,
        &Path::new(&pod).join(&cid),
        serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": shim.id,
        }),
    );
    std::fs::write(bundle.join("config.json"), spec.to_string())
        .expect("write the container's config.json");
    let (stdout, _stdout_reader) = floor.fifo(&format!("{cid}-stdout"));
    let (stderr, _stderr_reader) = floor.fifo(&format!("{cid}-stderr"));
    let snapshot = format!("cove-{i}");
    let mut rootfs = Mount::new();
    rootfs.type_ = "overlay".into();
    rootfs.source = "overlay".into();
    rootfs.options = floor.overlay(&snapshot);
    let mut create = CreateTaskRequest::new();
    create.id = cid.clone();
    create.bundle = bundle.to_string_lossy().into_owned();
    create.rootfs = vec![rootfs];
    create.stdout = stdout.to_string_lossy().into_owned();
    create.stderr = stderr.to_string_lossy().into_owned();
    let mut start_task = StartRequest::new();
    start_task.id = cid.clone();
    let t = Instant::now();
    task.create(ctx(), &create).await.expect("Task.Create");
    task.start(ctx(), &start_task).await.expect("Task.Start");
    let task_up = t.elapsed();

    let mut kill = KillRequest::new();
    kill.id = cid.clone();
    kill.signal = libc::SIGKILL as u32;
    task.kill(ctx(), &kill).await.expect("Task.Kill");
    let mut wait = WaitRequest::new();
    wait.id = cid.clone();
    task.wait(ctx(), &wait).await.expect("Task.Wait");
    let mut delete = DeleteRequest::new();
    delete.id = cid.clone();
    task.delete(ctx(), &delete).await.expect("Task.Delete");
    floor.forget_overlay(&snapshot);

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
    [
        (SHIM_START, start),
        (SHIM_UP, up),
        (SHIM_TASK, task_up),
        (SHIM_DOWN, down),
    ]
}

/// One round of the floors, in the order of cove's round.
fn floor_round(floor: &Floor, i: usize) -> [(&'static str, Duration); 4] {
    let spawn = floor.spawn();
    let (sb, up) = floor.sandbox(i);
    let (c, task_up) = floor.container(&sb, i);
    floor.container_down(c);
    let down = floor.sandbox_down(sb);
    [
        (FLOOR_SPAWN, spawn),
        (FLOOR_UP, up),
        (FLOOR_TASK, task_up),
        (FLOOR_DOWN, down),
    ]
}
