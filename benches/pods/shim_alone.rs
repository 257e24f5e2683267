//! The shim alone over ttrpc, without containerd, as containerd's shim sandbox
//! controller calls it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use containerd_shim_protos::sandbox_api::{
    ShutdownSandboxRequest, StartSandboxRequest, StopSandboxRequest,
};

use crate::common::shim::{create_req, ctx, pod_options, Shim};
use crate::common::*;
use crate::serial::WARMUP;

pub const SHIM_START: &str = "shim `start` (spawn the server)";
pub const SHIM_UP: &str = "CreateSandbox+StartSandbox";
pub const SHIM_DOWN: &str = "StopSandbox+ShutdownSandbox";

/// The shim alone, over ttrpc, as containerd's shim sandbox controller calls it.
pub async fn shim_level(n: usize) -> BTreeMap<&'static str, Vec<Duration>> {
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
