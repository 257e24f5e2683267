//! Output: a container writes to its stdout through the handler's stdio path and CRI's
//! log copy into its log file; MB/s per handler.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;

use crate::common::*;
use crate::cri::{teardown, Handler, COVE, RUNC};
use crate::doing::doing;

/// Output rounds per handler; the median throughput is reported.
pub const OUTPUT_ROUNDS: usize = 5;

/// Output throughput in MB/s per round and handler: one pod per round whose container
/// writes `mib` MiB to stdout into its CRI log; the first round of each is not counted.
pub async fn output(cd: &Containerd, mib: usize) -> BTreeMap<Handler, Vec<f64>> {
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
