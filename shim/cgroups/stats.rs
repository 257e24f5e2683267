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
        usage: num(dir, "memory.current"),
        usage_limit: num(dir, "memory.max"),
        swap_usage: num(dir, "memory.swap.current"),
        swap_limit: num(dir, "memory.swap.max"),
        max_usage: num(dir, "memory.peak"),
        ..Default::default()
    };
    m.memory = Some(mem).into();
    let ev = kv(dir, "memory.events");
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
    let c = kv(dir, "cpu.stat");
    let cg = |k: &str| c.get(k).copied().unwrap_or(0);
    m.cpu = Some(v2::CPUStat {
        usage_usec: cg("usage_usec"),
        user_usec: cg("user_usec"),
        system_usec: cg("system_usec"),
        nr_periods: cg("nr_periods"),
        nr_throttled: cg("nr_throttled"),
        throttled_usec: cg("throttled_usec"),
        ..Default::default()
    })
    .into();
    m.pids = Some(v2::PidsStat {
        current: num(dir, "pids.current"),
        limit: num(dir, "pids.max"),
        ..Default::default()
    })
    .into();
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
        std::fs::write(dir.join("cpu.stat"), "usage_usec 77\n").unwrap();
        let m = read_v2(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, 0, "\"max\" is no limit");
        assert_eq!((m.memory.anon, m.memory.file), (1024, 2048));
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.cpu.usage_usec, 77);
    }
}
