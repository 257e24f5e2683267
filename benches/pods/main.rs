//! `make bench`: cove against containerd's default runc pod path, side by side, in one run.
//!
//! One private containerd (the e2e harness in `tests/common`) serves two CRI handlers:
//! `cove` (`sandboxer = "shim"`, this crate's shim) and `runc` (the `podsandbox` controller,
//! a pause container and `containerd-shim-runc-v2`). Everything is driven through CRI, as
//! the kubelet drives it, and the handlers alternate so that machine drift hits both alike.
//!
//! - **serial**: N rounds, each with a pod per handler, one after another (RunPodSandbox;
//!   CreateContainer+StartContainer of one busybox container; StopPodSandbox+
//!   RemovePodSandbox; p50/p90/p99 of each phase), a round of the shim alone and a round of
//!   the floors (below), in an order that rotates from round to round.
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
//! - **shim** (in the serial rounds): the shim alone over ttrpc, not through containerd:
//!   `start`, CreateSandbox+StartSandbox, Task.Create+Task.Start of a busybox container in
//!   the sandbox, StopSandbox+ShutdownSandbox.
//! - **floors** (`floor.rs`, in the serial rounds): the least the kernel and
//!   runc take for the same steps, with no containerd and no shim: exec of a static binary
//!   that exits at once (against `start`); a clone into new UTS, IPC and PID namespaces
//!   joining a network namespace made for the bench (which cove's pause joins too) and a
//!   new pod cgroup (against CreateSandbox+StartSandbox), then SIGKILL, reap and rmdir
//!   (against StopSandbox+ShutdownSandbox); `runc create` + `runc start` of the same
//!   container spec and image (against Task.Create+Task.Start). containerd's share of
//!   CreateContainer+StartContainer is the CRI calls' p50 minus the shim's Task.Create+
//!   Task.Start p50, so that cove's through CRI is compared with the floor plus that share.
//!
//! The report's goal column holds, among others: cove/runc of the p50 (RunPodSandbox
//! without the network setup ≤ 0.10, the teardown without the network teardown ≤ 0.15,
//! CreateContainer+StartContainer ≤ 1.0, runtime PSS per pod at all density pods
//! ≤ 0.05), the shim-alone CreateSandbox+StartSandbox p50 ≤ 2 ms, container start
//! through CRI within 10 % of the floor plus containerd's share, and three full runs of
//! the same commit and sizes in a row without a failure (`target/bench/runs.log`).
//! Goals are reported, never asserted.
//!
//! Sizes come from the environment: `COVE_BENCH_N` (50), `COVE_BENCH_BURST` (20),
//! `COVE_BENCH_DENSITY` (200), `COVE_BENCH_CHURN` (200), `COVE_BENCH_OUTPUT` (256).
//! `COVE_BENCH_ONLY=output` runs the output row alone, `COVE_BENCH_ONLY=density` the density
//! rows (COVE_BENCH_DENSITY pods per handler), `COVE_BENCH_ONLY=shim` the shim-alone rows
//! and their floors (COVE_BENCH_N rounds each). A failed call names the phase,
//! handler and pod it belonged to. The report goes to stdout, `target/bench/report.md` and
//! `target/bench/latency.svg`. Timings are reported, never asserted; a failed CRI call or
//! anything left behind fails the run.

#[path = "../../tests/common/mod.rs"]
mod common;

mod burst;
mod churn;
mod cri;
mod density;
mod doing;
mod floor;
mod leftovers;
mod output;
mod report;
mod runs;
mod serial;
mod shim_alone;
mod stats;
mod svg;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::*;

use burst::{burst, BURST_ROUNDS};
use churn::{churn, CHURN_KILL_EVERY};
use cri::{COVE, RUNC};
use density::{density, DENSITY_PARALLEL};
use doing::{name_failures, phase};
use leftovers::{forget_runc_states, leftovers, netns_entries};
use output::{output, OUTPUT_ROUNDS};
use report::{publish_part, Report};
use serial::{serial, WARMUP};
use shim_alone::shim_level;
use stats::env_size;

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
        phase(&format!(
            "shim alone over ttrpc and the floors: {n} rounds each, alternating"
        ));
        let shim = shim_level(n).await;
        let mut r = Report::default();
        r.shim_rows(&shim);
        publish_part(
            &out_dir,
            "shim",
            "the shim alone and its floors",
            &r,
            &format!("\n## Floors\n\n{}", report::floor_table(&shim, None)),
        );
        return;
    }
    let cd = Arc::new(Containerd::start_with("bench", "info", true).await);
    let output_phase =
        format!("output: {o} MiB to stdout through CRI's log, {OUTPUT_ROUNDS} rounds per handler");
    let density_phase =
        format!("density: {d} pods per handler, {DENSITY_PARALLEL} started at a time");
    if only == "density" {
        phase(&density_phase);
        let mut den = BTreeMap::new();
        for h in [COVE, RUNC] {
            den.insert(h, density(&cd, h, d).await);
        }
        drop(cd);
        let mut r = Report::default();
        r.density_rows(d, &den);
        publish_part(&out_dir, "density", "density", &r, "");
        return;
    }
    if only == "output" {
        phase(&output_phase);
        let out = output(&cd, o).await;
        drop(cd);
        let mut r = Report::default();
        r.output_row(o, &out);
        publish_part(&out_dir, "output", "output", &r, "");
        return;
    }
    let log = runs::RunLog::begin(
        &out_dir,
        format!(
            "cove={} N={n} BURST={m} DENSITY={d} CHURN={c} OUTPUT={o}",
            report::commit()
        ),
    );
    phase(&format!(
        "serial: {n} rounds of a pod per handler, a shim-alone round and a floor round, \
         rotating ({WARMUP} warm-up rounds not counted)"
    ));
    let (ser, shim) = serial(&cd, n).await;
    let left = leftovers(&cd);
    assert!(left.is_empty(), "after the serial run: {left:?}");
    phase(&format!(
        "burst: {m} pods at once, {BURST_ROUNDS} rounds per handler"
    ));
    let bur = burst(&cd, m).await;
    phase(&density_phase);
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

    let run = report::Run {
        ser,
        bur,
        den,
        chu,
        out,
        shim,
    };
    // cove must leave nothing; what the runc pod path leaves is reported, not judged.
    let churn_failed = &run.chu[&COVE].left;
    let finished = churn_failed.is_empty();
    report::publish(
        &out_dir,
        began,
        report::Sizes { n, m, d, c, o },
        &run,
        log.in_a_row(finished),
    );
    if finished {
        log.end();
    }
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
