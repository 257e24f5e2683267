//! The report: one table, cove against runc with their ratio and the goal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::burst::BURST_ROUNDS;
use crate::churn::{Churn, CHURN_KILL_EVERY};
use crate::cri::{Handler, COVE, RUNC};
use crate::density::{Density, DENSITY_PARALLEL};
use crate::output::OUTPUT_ROUNDS;
use crate::serial::*;
use crate::shim_alone::*;
use crate::stats::{median, ms, pct, pods};
use crate::svg::svg;

/// Writes the report of a partial run (`COVE_BENCH_ONLY`) to `target/bench/<file>.md` and
/// stdout: the table, then `more` (markdown) if any.
pub fn publish_part(out_dir: &Path, file: &str, title: &str, r: &Report, more: &str) {
    let report = format!(
        "# cove benchmark: {title}\n\nMeasured on {}.\n\n{}\n{more}",
        machine(),
        r.markdown()
    );
    std::fs::write(out_dir.join(format!("{file}.md")), &report)
        .unwrap_or_else(|e| panic!("write {file}.md: {e}"));
    println!("\n{report}");
}

#[derive(Default)]
pub struct Report {
    rows: Vec<[String; 5]>,
}

pub fn ratio(cove: f64, runc: f64) -> String {
    if runc > 0.0 {
        format!("{:.2}", cove / runc)
    } else {
        "—".into()
    }
}

pub fn verdict_zero(n: usize) -> String {
    if n == 0 {
        "0 ✓".into()
    } else {
        "0 ✗".into()
    }
}

pub fn verdict(r: f64, goal: f64) -> String {
    if r <= goal {
        format!("≤ {goal} ✓")
    } else {
        format!("≤ {goal} ✗")
    }
}

/// An absolute goal in ms.
pub fn verdict_ms(v: f64, goal: f64) -> String {
    if v <= goal {
        format!("≤ {goal} ms ✓")
    } else {
        format!("≤ {goal} ms ✗")
    }
}

/// Full runs in a row that must finish without a failure.
const RUNS_GOAL: usize = 3;
/// The shim-alone CreateSandbox+StartSandbox p50 at most.
const SHIM_UP_GOAL_MS: f64 = 2.0;
/// cove's CreateContainer+StartContainer at most this times the floor plus containerd's
/// share.
const START_FLOOR_GOAL: f64 = 1.1;

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
    pub fn shim_rows(&mut self, shim: &ShimSamples) {
        for phase in [SHIM_START, SHIM_UP, SHIM_TASK, SHIM_DOWN] {
            let v = &shim[phase];
            let goal = if phase == SHIM_UP {
                verdict_ms(ms(pct(v, 50.0)), SHIM_UP_GOAL_MS)
            } else {
                String::new()
            };
            self.row(
                &format!("Shim alone over ttrpc: {phase} p50 / p99"),
                format!("{:.1} / {:.1} ms", ms(pct(v, 50.0)), ms(pct(v, 99.0))),
                "—".into(),
                String::new(),
                goal,
            );
        }
    }

    /// What containerd itself spends of cove's RunPodSandbox and teardown without the
    /// network: the CRI p50 minus the p50 of the shim's own steps, measured alone over
    /// ttrpc in the same rounds. Against runc's figure, that share is the least ratio any
    /// shim could reach there, one that cost nothing; with the shim's steps at their floors
    /// added, the least one that does the same work could.
    fn containerd_share_rows(&mut self, ser: &Samples, shim: &ShimSamples) {
        let p50 = |row: &str| pct(&shim[row], 50.0);
        let rows = [
            (
                RUN_REST,
                p50(SHIM_START) + p50(SHIM_UP),
                p50(FLOOR_SPAWN) + p50(FLOOR_UP),
                "shim `start` and CreateSandbox+StartSandbox",
            ),
            (
                DOWN_REST,
                p50(SHIM_DOWN),
                p50(FLOOR_DOWN),
                "StopSandbox+ShutdownSandbox",
            ),
        ];
        for (phase, shim_own, floors, steps) in rows {
            let cri = pct(&ser[&(phase, COVE)], 50.0);
            let share = cri.saturating_sub(shim_own);
            let runc = pct(&ser[&(phase, RUNC)], 50.0);
            self.ms_row(
                &format!(
                    "{phase}: containerd's own share on cove (the p50 above minus the shim's \
                     {steps}, alone): the least ratio a shim that cost nothing could reach"
                ),
                share,
                runc,
                None,
            );
            self.ms_row(
                &format!(
                    "{phase}: containerd's share plus the floors of the shim's {steps}: the \
                     least ratio a shim doing that work could reach"
                ),
                share + floors,
                runc,
                None,
            );
        }
    }

    /// The density rows: memory per pod at each mark, the start and the teardown of all.
    pub fn density_rows(&mut self, d: usize, den: &BTreeMap<Handler, Density>) {
        let (dc, du) = (&den[&COVE], &den[&RUNC]);
        let last = dc.mem.len().saturating_sub(1);
        for (k, (mc, mu)) in dc.mem.iter().zip(du.mem.iter()).enumerate() {
            // At all the density pods (200 by default) ≤ 0.05; at 50 ≤ 0.2.
            let goal = match k {
                0 => None,
                k if k == last => Some(0.05),
                _ => Some(0.2),
            };
            let q = mc.pss_per_pod() / mu.pss_per_pod();
            self.row(
                &format!("Runtime PSS per pod at {}", pods(mc.pods)),
                format!("{:.0} kB", mc.pss_per_pod()),
                format!("{:.0} kB", mu.pss_per_pod()),
                ratio(mc.pss_per_pod(), mu.pss_per_pod()),
                goal.map(|g| verdict(q, g)).unwrap_or_default(),
            );
            self.row(
                &format!("Runtime RSS per pod at {}", pods(mc.pods)),
                format!("{:.0} kB", mc.rss_per_pod()),
                format!("{:.0} kB", mu.rss_per_pod()),
                ratio(mc.rss_per_pod(), mu.rss_per_pod()),
                String::new(),
            );
            self.row(
                &format!("Runtime processes at {}", pods(mc.pods)),
                mc.procs.to_string(),
                mu.procs.to_string(),
                ratio(mc.procs as f64, mu.procs as f64),
                String::new(),
            );
        }
        self.ms_row(
            &format!("Density: start {d} pods, {DENSITY_PARALLEL} at a time"),
            dc.start,
            du.start,
            None,
        );
        self.ms_row(
            &format!("Density: tear down {d} pods, {DENSITY_PARALLEL} at a time"),
            dc.down,
            du.down,
            None,
        );
        self.row(
            &format!("Density: failures, and anything left after {d} pods"),
            "none".into(),
            "none".into(),
            String::new(),
            String::new(),
        );
    }

    pub fn output_row(&mut self, mib: usize, out: &BTreeMap<Handler, Vec<f64>>) {
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

/// The output of shell command `c`, trimmed; empty if it fails.
fn sh(c: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", c])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The checkout's commit, `-dirty` when it has changes.
pub fn commit() -> String {
    sh(&format!(
        "git -C {} describe --always --dirty 2>/dev/null",
        env!("CARGO_MANIFEST_DIR")
    ))
}

pub fn machine() -> String {
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
        commit(),
    )
}

/// The sizes of a full run.
#[derive(Clone, Copy)]
pub struct Sizes {
    /// Serial pods per handler.
    pub n: usize,
    /// Pods per burst.
    pub m: usize,
    /// Density pods per handler.
    pub d: usize,
    /// Churned pods per handler.
    pub c: usize,
    /// MiB a container writes to stdout.
    pub o: usize,
}

/// What a full run measured.
pub struct Run {
    pub ser: Samples,
    pub bur: BTreeMap<Handler, Vec<Duration>>,
    pub den: BTreeMap<Handler, Density>,
    pub chu: BTreeMap<Handler, Churn>,
    pub out: BTreeMap<Handler, Vec<f64>>,
    pub shim: ShimSamples,
}

/// Writes the report of a full run to `target/bench/report.md` (with its chart,
/// `latency.svg`) and stdout.
/// `in_a_row`: how many full runs of these sizes in a row finished, this one included.
pub fn publish(out_dir: &Path, began: Instant, sizes: Sizes, run: &Run, in_a_row: usize) {
    let Sizes { n, m, d, c, o } = sizes;
    let Run {
        ser,
        bur,
        den,
        chu,
        out,
        shim,
    } = run;
    let mut r = Report { rows: Vec::new() };
    let goals = [(RUN, Some(0.4)), (START, Some(1.0)), (DOWN, Some(0.5))];
    for (phase, goal) in goals {
        let (c, u) = (&ser[&(phase, COVE)], &ser[&(phase, RUNC)]);
        r.ms_row(&format!("{phase} p50"), pct(c, 50.0), pct(u, 50.0), goal);
        r.ms_row(&format!("{phase} p90"), pct(c, 90.0), pct(u, 90.0), None);
        r.ms_row(&format!("{phase} p99"), pct(c, 99.0), pct(u, 99.0), None);
    }
    let goals = [
        (RUN_NET, None),
        (RUN_REST, Some(0.10)),
        (DOWN_NET, None),
        (DOWN_REST, Some(0.15)),
    ];
    for (phase, goal) in goals {
        let (c, u) = (&ser[&(phase, COVE)], &ser[&(phase, RUNC)]);
        r.ms_row(&format!("{phase} p50"), pct(c, 50.0), pct(u, 50.0), goal);
    }
    r.containerd_share_rows(ser, shim);
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
    r.density_rows(d, den);
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
    r.output_row(o, out);
    r.shim_rows(shim);
    r.row(
        "`make bench` runs of this commit and these sizes in a row without a failure, this one \
         included (`target/bench/runs.log`)",
        in_a_row.to_string(),
        String::new(),
        String::new(),
        if in_a_row >= RUNS_GOAL {
            format!("{RUNS_GOAL} in a row ✓")
        } else {
            format!("{RUNS_GOAL} in a row ✗")
        },
    );

    let report = format!(
        "# cove benchmark\n\nMeasured {date} on {machine}.\n\nBoth handlers run in one private containerd, \
         driven through CRI and alternating. Serial: {n} rounds ({WARMUP} warm-up rounds not \
         counted), each with a pod per handler with one busybox container, a round of the shim \
         alone and a round of the floors (below), in an order that rotates. Burst: {m} pods at once. Density: {d} pods with \
         a sleeping container, {DENSITY_PARALLEL} started at a time. Runtime memory is the sum of \
         `Pss`/`Rss` in `/proc/PID/smaps_rollup` over the shim processes of each runtime and the \
         pods' sandbox processes (cove: its shims and pause processes; runc: \
         containerd-shim-runc-v2 and the pause containers), divided by the number of pods; the app \
         containers are not counted. Churn: {c} pods per handler created and removed \
         {DENSITY_PARALLEL} at a time, every {CHURN_KILL_EVERY}th with its shim killed (SIGKILL) before \
         its removal, while a long-lived pod of the handler runs a container alongside each. runc \
         has no sandbox API, so the shim-alone rows have no runc figure. Goals are reported, \
         never asserted: a ratio is cove/runc of the p50 unless the row says otherwise.\n\n{table}\n\
         ## Floors\n\nWhat cove does against the least it takes, with no containerd and no shim, \
         measured in the serial rounds, p50. Shim spawn: fork, exec and wait of a static binary \
         that exits at once. Sandbox: mkdir of the pod cgroup and the pause's in \
         every hierarchy, a clone3 into new UTS, IPC and PID namespaces whose child joins a \
         network namespace made for the bench (`ip netns add`, which cove's pause joins too) and \
         its cgroup, sets the hostname and writes a byte to a pipe; its teardown is SIGKILL, \
         reap, rmdir. Container: `runc create` + `runc start` (the runc on PATH) of the busybox \
         image as an overlay mounted beforehand, in the floor sandbox's namespaces, with the same \
         spec as cove's shim-alone container (`runc spec` with the pod's namespaces, pod files \
         and cgroup); cove's Task.Create also mounts that overlay, sets up its output fifos and \
         records the task.\n\n{floors}\n\
         ![latency distributions](latency.svg)\n\nTotal run time: {total:.0} s.\n",
        date = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        machine = machine(),
        table = r.markdown(),
        floors = floor_table(shim, Some(pct(&ser[&(START, COVE)], 50.0))),
        total = began.elapsed().as_secs_f64(),
    );
    std::fs::write(out_dir.join("report.md"), &report).expect("write report.md");
    std::fs::write(out_dir.join("latency.svg"), svg(ser, shim)).expect("write latency.svg");
    println!("\n{report}");
}

/// One floor row: cove's p50 and its floor's.
struct FloorRow {
    /// What the largest-gap sentence calls it.
    name: &'static str,
    what: String,
    cove: Duration,
    floor: Duration,
    goal: String,
}

/// The floors table (cove's figure, its floor, the gap and the ratio, p50 of each) and
/// which gap is the largest. `cri_start`: the p50 of cove's CreateContainer+StartContainer
/// through CRI, in a full run.
pub fn floor_table(shim: &ShimSamples, cri_start: Option<Duration>) -> String {
    let p50 = |row: &str| pct(&shim[row], 50.0);
    let mut rows = vec![
        FloorRow {
            name: "the shim spawn",
            what: "Shim spawn: cove's shim `start` (spawns its server and waits until it \
                   serves) / exec of a static binary that exits at once"
                .into(),
            cove: p50(SHIM_START),
            floor: p50(FLOOR_SPAWN),
            goal: String::new(),
        },
        FloorRow {
            name: "the sandbox start",
            what: "Sandbox: CreateSandbox+StartSandbox, the shim alone / a clone into new UTS, \
                   IPC and PID namespaces that joins the network namespace and a new pod cgroup"
                .into(),
            cove: p50(SHIM_UP),
            floor: p50(FLOOR_UP),
            goal: String::new(),
        },
        FloorRow {
            name: "the sandbox teardown",
            what: "Sandbox teardown: StopSandbox+ShutdownSandbox, the shim alone / SIGKILL, reap, \
                   rmdir"
                .into(),
            cove: p50(SHIM_DOWN),
            floor: p50(FLOOR_DOWN),
            goal: String::new(),
        },
        FloorRow {
            name: "the container start",
            what: "Container start, cove's share (CreateContainer+StartContainer minus \
                   containerd's share): Task.Create+Task.Start, the shim alone / `runc create` + \
                   `runc start`"
                .into(),
            cove: p50(SHIM_TASK),
            floor: p50(FLOOR_TASK),
            goal: String::new(),
        },
    ];
    // Its gap is the shim's by construction: the largest gap is looked for above it.
    let compared = rows.len();
    let mut share_text = String::new();
    if let Some(cri) = cri_start {
        let share = cri.saturating_sub(p50(SHIM_TASK));
        let floor = p50(FLOOR_TASK) + share;
        let q = ms(cri) / ms(floor);
        rows.push(FloorRow {
            name: "the container start through CRI",
            what: format!(
                "Container start through CRI: cove's CreateContainer+StartContainer / the floor \
                 plus containerd's share ({:.1} ms)",
                ms(share)
            ),
            cove: cri,
            floor,
            goal: verdict(q, START_FLOOR_GOAL),
        });
        share_text = format!(
            "containerd's share of cove's CreateContainer+StartContainer is {:.1} ms: the p50 of \
             the CRI calls ({:.1} ms) minus the p50 of the shim's own Task.Create+Task.Start \
             alone over ttrpc ({:.1} ms), in the same rounds. ",
            ms(share),
            ms(cri),
            ms(p50(SHIM_TASK)),
        );
    }
    let mut s = String::from(
        "| | cove | floor | cove − floor | cove/floor | goal |\n|---|---:|---:|---:|---:|---|\n",
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
            r.what,
            ms(r.cove),
            ms(r.floor),
            ms(r.cove) - ms(r.floor),
            ratio(ms(r.cove), ms(r.floor)),
            r.goal
        );
    }
    let gap = |r: &FloorRow| ms(r.cove) - ms(r.floor);
    let rel = |r: &FloorRow| ms(r.cove) / ms(r.floor).max(1e-3);
    let by_gap = rows[..compared]
        .iter()
        .max_by(|a, b| gap(a).total_cmp(&gap(b)));
    let by_ratio = rows[..compared]
        .iter()
        .max_by(|a, b| rel(a).total_cmp(&rel(b)));
    if let (Some(g), Some(q)) = (by_gap, by_ratio) {
        let _ = write!(
            s,
            "\n{share_text}Largest gap in ms: {} ({:.2} ms over its floor, {:.1}×). Largest ratio to \
             its floor: {} ({:.1}×, {:.2} ms).\n",
            g.name,
            gap(g),
            rel(g),
            q.name,
            rel(q),
            gap(q),
        );
    }
    s
}
