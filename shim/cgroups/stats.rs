//! Reading a cgroup's counters into containerd's Metrics protos.

use std::collections::HashMap;
use std::path::Path;

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use protobuf::well_known_types::any::Any;
use protobuf::Message;

use super::Layout;
use crate::error::{Error, Result};

/// The type URLs containerd registers for its cgroup metrics (containerd/cgroups).
pub const V1_METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// Stats of `rel` packed as containerd expects them in a `Metric.data`.
pub fn metrics_any(layout: &Layout, rel: &Path) -> Result<Any> {
    let (type_url, value) = match layout {
        Layout::V1(_) => (V1_METRICS_TYPE, read_v1(layout, rel)?.write_to_bytes()),
        Layout::V2(root) => (
            V2_METRICS_TYPE,
            read_v2(&root.join(rel.strip_prefix("/").unwrap_or(rel)))?.write_to_bytes(),
        ),
    };
    let value = value.map_err(|e| Error::Internal(format!("encode cgroup metrics: {e}")))?;
    Ok(Any {
        type_url: type_url.into(),
        value,
        ..Default::default()
    })
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn num(dir: &Path, file: &str) -> u64 {
    read(dir, file)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn kv(dir: &Path, file: &str) -> HashMap<String, u64> {
    read(dir, file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn read_v1(layout: &Layout, rel: &Path) -> Result<v1::Metrics> {
    let mut m = v1::Metrics::new();
    let mem_dir = layout.controller_dir("memory", rel).ok_or_else(|| {
        Error::FailedPrecondition("the memory cgroup controller is not mounted".into())
    })?;
    if !mem_dir.exists() {
        return Err(Error::NotFound(format!(
            "cgroup {} does not exist",
            mem_dir.display()
        )));
    }
    let s = kv(&mem_dir, "memory.stat");
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    let entry = |prefix: &str| {
        let mut e = v1::MemoryEntry::new();
        e.usage = num(&mem_dir, &format!("{prefix}.usage_in_bytes"));
        e.max = num(&mem_dir, &format!("{prefix}.max_usage_in_bytes"));
        e.limit = num(&mem_dir, &format!("{prefix}.limit_in_bytes"));
        e.failcnt = num(&mem_dir, &format!("{prefix}.failcnt"));
        e
    };
    let mem = v1::MemoryStat {
        cache: g("cache"),
        rss: g("rss"),
        rss_huge: g("rss_huge"),
        mapped_file: g("mapped_file"),
        dirty: g("dirty"),
        writeback: g("writeback"),
        pg_pg_in: g("pgpgin"),
        pg_pg_out: g("pgpgout"),
        pg_fault: g("pgfault"),
        pg_maj_fault: g("pgmajfault"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        hierarchical_memory_limit: g("hierarchical_memory_limit"),
        hierarchical_swap_limit: g("hierarchical_memsw_limit"),
        total_cache: g("total_cache"),
        total_rss: g("total_rss"),
        total_rss_huge: g("total_rss_huge"),
        total_mapped_file: g("total_mapped_file"),
        total_dirty: g("total_dirty"),
        total_writeback: g("total_writeback"),
        total_pg_pg_in: g("total_pgpgin"),
        total_pg_pg_out: g("total_pgpgout"),
        total_pg_fault: g("total_pgfault"),
        total_pg_maj_fault: g("total_pgmajfault"),
        total_inactive_anon: g("total_inactive_anon"),
        total_active_anon: g("total_active_anon"),
        total_inactive_file: g("total_inactive_file"),
        total_active_file: g("total_active_file"),
        total_unevictable: g("total_unevictable"),
        usage: Some(entry("memory")).into(),
        swap: Some(entry("memory.memsw")).into(),
        kernel: Some(entry("memory.kmem")).into(),
        kernel_tcp: Some(entry("memory.kmem.tcp")).into(),
        ..Default::default()
    };
    m.memory = Some(mem).into();

    if let Some(dir) = layout.controller_dir("cpuacct", rel) {
        let mut usage = v1::CPUUsage::new();
        usage.total = num(&dir, "cpuacct.usage");
        usage.per_cpu = read(&dir, "cpuacct.usage_percpu")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let ticks = kv(&dir, "cpuacct.stat");
        let ns_per_tick = 1_000_000_000 / clock_ticks();
        usage.user = ticks.get("user").copied().unwrap_or(0) * ns_per_tick;
        usage.kernel = ticks.get("system").copied().unwrap_or(0) * ns_per_tick;
        let mut cpu = v1::CPUStat::new();
        cpu.usage = Some(usage).into();
        if let Some(cdir) = layout.controller_dir("cpu", rel) {
            let st = kv(&cdir, "cpu.stat");
            let mut t = v1::Throttle::new();
            t.periods = st.get("nr_periods").copied().unwrap_or(0);
            t.throttled_periods = st.get("nr_throttled").copied().unwrap_or(0);
            t.throttled_time = st.get("throttled_time").copied().unwrap_or(0);
            cpu.throttling = Some(t).into();
        }
        m.cpu = Some(cpu).into();
    }
    if let Some(dir) = layout.controller_dir("pids", rel) {
        let mut p = v1::PidsStat::new();
        p.current = num(&dir, "pids.current");
        p.limit = num(&dir, "pids.max");
        m.pids = Some(p).into();
    }
    Ok(m)
}

/// A single-value cgroup v2 file as containerd reads it: `max` is `u64::MAX`, a missing or
/// unreadable file is 0 (containerd/cgroups `getStatFileContentUint64`).
fn v2_num(dir: &Path, file: &str) -> u64 {
    match read(dir, file) {
        Some(s) if s.trim() == "max" => u64::MAX,
        Some(s) => s.trim().parse().unwrap_or(0),
        None => 0,
    }
}

/// A pressure file (`cpu.pressure`, ...): `some`/`full` lines of `avg10=.. avg60=.. avg300=.. total=..`.
fn psi(dir: &Path, file: &str) -> protobuf::MessageField<v2::PSIStats> {
    let Some(text) = read(dir, file) else {
        return protobuf::MessageField::none();
    };
    let mut out = v2::PSIStats::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let slot = match parts.next() {
            Some("some") => &mut out.some,
            Some("full") => &mut out.full,
            _ => continue,
        };
        let mut d = v2::PSIData::new();
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            match k {
                "avg10" => d.avg10 = v.parse().unwrap_or(0.0),
                "avg60" => d.avg60 = v.parse().unwrap_or(0.0),
                "avg300" => d.avg300 = v.parse().unwrap_or(0.0),
                "total" => d.total = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        *slot = Some(d).into();
    }
    Some(out).into()
}

/// `io.stat`: one line per device, `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
fn io_entries(dir: &Path) -> Vec<v2::IOEntry> {
    read(dir, "io.stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (major, minor) = parts.next()?.split_once(':')?;
            let mut e = v2::IOEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for kv in parts {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

/// The host's huge page sizes as cgroup v2 names them (`2MB`, `1GB`).
fn hugepage_sizes() -> Vec<String> {
    let mut sizes: Vec<(u64, String)> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let kb: u64 = e
                .file_name()
                .to_str()?
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let name = match kb {
                k if k >= 1 << 20 && k % (1 << 20) == 0 => format!("{}GB", k >> 20),
                k if k >= 1 << 10 && k % (1 << 10) == 0 => format!("{}MB", k >> 10),
                k => format!("{k}KB"),
            };
            Some((kb, name))
        })
        .collect();
    sizes.sort();
    sizes.into_iter().map(|(_, n)| n).collect()
}

fn read_v2(dir: &Path) -> Result<v2::Metrics> {
    if !dir.exists() {
        return Err(Error::NotFound(format!(
            "cgroup {} does not exist",
            dir.display()
        )));
    }
    let mut m = v2::Metrics::new();
    let s = kv(dir, "memory.stat");
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    let mem = v2::MemoryStat {
        anon: g("anon"),
        file: g("file"),
        kernel_stack: g("kernel_stack"),
        slab: g("slab"),
        sock: g("sock"),
        shmem: g("shmem"),
        file_mapped: g("file_mapped"),
        file_dirty: g("file_dirty"),
        file_writeback: g("file_writeback"),
        anon_thp: g("anon_thp"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        slab_reclaimable: g("slab_reclaimable"),
        slab_unreclaimable: g("slab_unreclaimable"),
        pgfault: g("pgfault"),
        pgmajfault: g("pgmajfault"),
        workingset_refault: g("workingset_refault"),
        workingset_activate: g("workingset_activate"),
        workingset_nodereclaim: g("workingset_nodereclaim"),
        pgrefill: g("pgrefill"),
        pgscan: g("pgscan"),
        pgsteal: g("pgsteal"),
        pgactivate: g("pgactivate"),
        pgdeactivate: g("pgdeactivate"),
        pglazyfree: g("pglazyfree"),
        pglazyfreed: g("pglazyfreed"),
        thp_fault_alloc: g("thp_fault_alloc"),
        thp_collapse_alloc: g("thp_collapse_alloc"),
        usage: v2_num(dir, "memory.current"),
        usage_limit: v2_num(dir, "memory.max"),
        swap_usage: v2_num(dir, "memory.swap.current"),
        swap_limit: v2_num(dir, "memory.swap.max"),
        max_usage: v2_num(dir, "memory.peak"),
        swap_max_usage: v2_num(dir, "memory.swap.peak"),
        psi: psi(dir, "memory.pressure"),
        ..Default::default()
    };
    m.memory = Some(mem).into();
    let ev = kv(dir, "memory.events");
    if !ev.is_empty() {
        let e = |k: &str| ev.get(k).copied().unwrap_or(0);
        m.memory_events = Some(v2::MemoryEvents {
            low: e("low"),
            high: e("high"),
            max: e("max"),
            oom: e("oom"),
            oom_kill: e("oom_kill"),
            oom_group_kill: e("oom_group_kill"),
            ..Default::default()
        })
        .into();
    }
    let c = kv(dir, "cpu.stat");
    let cg = |k: &str| c.get(k).copied().unwrap_or(0);
    m.cpu = Some(v2::CPUStat {
        usage_usec: cg("usage_usec"),
        user_usec: cg("user_usec"),
        system_usec: cg("system_usec"),
        nr_periods: cg("nr_periods"),
        nr_throttled: cg("nr_throttled"),
        throttled_usec: cg("throttled_usec"),
        nr_bursts: cg("nr_bursts"),
        burst_usec: cg("burst_usec"),
        psi: psi(dir, "cpu.pressure"),
        ..Default::default()
    })
    .into();
    m.pids = Some(v2::PidsStat {
        current: v2_num(dir, "pids.current"),
        limit: v2_num(dir, "pids.max"),
        ..Default::default()
    })
    .into();
    m.io = Some(v2::IOStat {
        usage: io_entries(dir),
        psi: psi(dir, "io.pressure"),
        ..Default::default()
    })
    .into();
    m.hugetlb = hugepage_sizes()
        .into_iter()
        .map(|size| v2::HugeTlbStat {
            current: v2_num(dir, &format!("hugetlb.{size}.current")),
            max: v2_num(dir, &format!("hugetlb.{size}.max")),
            failcnt: kv(dir, &format!("hugetlb.{size}.events"))
                .get("max")
                .copied()
                .unwrap_or(0),
            pagesize: size,
            ..Default::default()
        })
        .collect();
    Ok(m)
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100, |t| t as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_counters_are_read_from_files() {
        let dir = std::env::temp_dir().join(format!("cove-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 1024\nfile 2048\n").unwrap();
        std::fs::write(dir.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        std::fs::write(dir.join("pids.max"), "max\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 77\n").unwrap();
        std::fs::write(
            dir.join("io.stat"),
            "8:0 rbytes=512 wbytes=1024 rios=1 wios=2 dbytes=0 dios=0\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("cpu.pressure"),
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        )
        .unwrap();
        let m = read_v2(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(
            m.memory.usage_limit,
            u64::MAX,
            "\"max\" is reported as containerd reports it"
        );
        assert_eq!(m.pids.limit, u64::MAX);
        assert_eq!(m.memory.swap_limit, 0, "an absent file reads as 0");
        assert_eq!(
            (
                m.io.usage[0].major,
                m.io.usage[0].rbytes,
                m.io.usage[0].wios
            ),
            (8, 512, 2)
        );
        assert_eq!(m.cpu.psi.some.avg10, 1.5);
        assert_eq!(m.cpu.psi.full.total, 7);
        assert_eq!((m.memory.anon, m.memory.file), (1024, 2048));
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.cpu.usage_usec, 77);
    }
}
