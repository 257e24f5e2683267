//! Pod cgroups: finding the hierarchies, creating and removing a pod's directories,
//! applying resource limits, and reading stats into containerd's Metrics types
//! (`io.containerd.cgroups.v1.Metrics` / `io.containerd.cgroups.v2.Metrics`).
//!
//! Paths are cgroupfs paths relative to each hierarchy root, e.g. `/kubepods/pod1/<id>`.
//! On a cgroup v1 (or hybrid) host every mounted hierarchy gets the directory, as runc
//! does; on a unified host there is one tree.

pub mod stats;
pub mod systemd;

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, IoContext, Result};

pub use stats::metrics_any;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// Controllers bound to it (`memory`, `cpu`, ...); empty for named or unified ones.
    pub controllers: Vec<String>,
}

/// The cgroup layout of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1 hierarchies (plus the unified one of a hybrid host, without controllers).
    V1(Vec<Hierarchy>),
    /// A single cgroup v2 tree.
    V2(PathBuf),
}

impl Layout {
    /// Reads the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .context(|| "read /proc/self/mountinfo".into())?;
        Layout::parse(&info)
    }

    /// One mount per hierarchy: a hierarchy can be mounted more than once (CRIU mounts
    /// every one in a yard of its own while it restores a container; an administrator may
    /// mount one elsewhere). Of the mounts of a hierarchy, the one of its whole tree
    /// (`root` `/`) under `/sys/fs/cgroup` is taken, else one of its whole tree, else the
    /// first; and where hierarchies are mounted under `/sys/fs/cgroup`, one mounted only
    /// elsewhere is none of the host's.
    fn parse(mountinfo: &str) -> Result<Layout> {
        // Each v1 hierarchy with what tells it apart (its controllers, or a named one's
        // name) and how good its mount is.
        let mut v1: Vec<(String, u8, Hierarchy)> = Vec::new();
        let mut unified: Option<(u8, PathBuf)> = None;
        let canonical = |p: &Path| p.starts_with("/sys/fs/cgroup");
        for line in mountinfo.lines() {
            // fields: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut l = left.split(' ');
            let whole = l.nth(3) == Some("/");
            let mountpoint = PathBuf::from(unescape_mountinfo(l.next().unwrap_or_default()));
            let score = u8::from(whole) * 2 + u8::from(whole && canonical(&mountpoint));
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or_default();
            let superopts = r.nth(1).unwrap_or_default();
            match fstype {
                "cgroup" => {
                    let controllers: Vec<String> = superopts
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro")
                                && !o.contains('=')
                                && !o.starts_with("clone_children")
                                && *o != "noprefix"
                                && *o != "xattr"
                        })
                        .map(str::to_owned)
                        .collect();
                    let name = superopts.split(',').find(|o| o.starts_with("name="));
                    let key = format!("{}{}", controllers.join(","), name.unwrap_or_default());
                    match v1.iter_mut().find(|(k, _, _)| *k == key) {
                        Some((_, best, h)) if score > *best => {
                            *best = score;
                            h.mountpoint = mountpoint;
                        }
                        Some(_) => {}
                        None => v1.push((
                            key,
                            score,
                            Hierarchy {
                                mountpoint,
                                controllers,
                            },
                        )),
                    }
                }
                "cgroup2" if unified.as_ref().is_none_or(|(best, _)| score > *best) => {
                    unified = Some((score, mountpoint));
                }
                _ => {}
            }
        }
        let any_canonical = v1.iter().any(|(_, s, _)| *s == 3);
        let mut v1: Vec<Hierarchy> = v1
            .into_iter()
            .filter(|(_, s, _)| !any_canonical || *s == 3)
            .map(|(_, _, h)| h)
            .collect();
        let unified = unified.map(|(_, u)| u);
        match (v1.is_empty(), unified) {
            (true, Some(root)) => Ok(Layout::V2(root)),
            (false, unified) => {
                if let Some(u) = unified {
                    v1.push(Hierarchy {
                        mountpoint: u,
                        controllers: vec![],
                    });
                }
                Ok(Layout::V1(v1))
            }
            (true, None) => Err(Error::Internal("no cgroup filesystem is mounted".into())),
        }
    }

    /// The directory of `rel` in every hierarchy.
    pub fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        match self {
            Layout::V1(hs) => hs.iter().map(|h| h.mountpoint.join(rel)).collect(),
            Layout::V2(root) => vec![root.join(rel)],
        }
    }

    /// SIGKILLs every process in cgroup `rel`, as `runc kill --all` does, without the cost
    /// of running runc. cgroup v2 uses `cgroup.kill`. On v1 `cgroup.procs` is read and
    /// each pid killed until a read shows no pid not already killed: a process with
    /// SIGKILL pending cannot fork, so every child forked before the kill shows up in a
    /// later read. Each pid is pinned with a pidfd and signalled only if the cgroup still
    /// lists it afterwards, so a pid reused outside the cgroup is never signalled (see
    /// `kill_listed`). A cgroup that is gone holds nothing. Returns how many pids were
    /// signalled (v2: 0).
    pub fn kill_all(&self, rel: &Path) -> Result<usize> {
        let Some(dir) = self
            .controller_dir("pids", rel)
            .or_else(|| self.controller_dir("memory", rel))
        else {
            return Ok(0);
        };
        let kill_file = dir.join("cgroup.kill");
        if matches!(self, Layout::V2(_)) && kill_file.exists() {
            return match std::fs::write(&kill_file, "1") {
                Ok(()) => Ok(0),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(Error::io(format!("write {}", kill_file.display()), e)),
            };
        }
        match kill_listed(&dir) {
            Ok(Listed::Gone(n)) => Ok(n),
            Ok(Listed::Settled(n)) => {
                // runc thaws after signalling: frozen tasks would never act on a SIGKILL.
                if let Some(f) = self.controller_dir("freezer", rel) {
                    let state = f.join("freezer.state");
                    if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() != "THAWED") {
                        std::fs::write(&state, "THAWED")
                            .context(|| format!("thaw {}", state.display()))?;
                    }
                }
                Ok(n)
            }
            Ok(Listed::KeptGaining) => Err(Error::Internal(format!(
                "cgroup {} kept gaining processes while they were killed",
                rel.display()
            ))),
            Err(e) => Err(Error::io(
                format!("read {}", dir.join("cgroup.procs").display()),
                e,
            )),
        }
    }

    /// The directory of `rel` in the hierarchy holding `controller` (v2: the one tree).
    pub fn controller_dir(&self, controller: &str, rel: &Path) -> Option<PathBuf> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        match self {
            Layout::V1(hs) => hs
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == controller))
                .map(|h| h.mountpoint.join(rel)),
            Layout::V2(root) => Some(root.join(rel)),
        }
    }

    /// Creates `rel` (and missing ancestors) in every hierarchy. Returns the directories
    /// this call created, parents before children, so the caller can remove exactly those.
    /// A directory that already exists is set up too where it is not yet (see
    /// [`Layout::init_dir`]): another pod's start may have made it a moment ago, under the
    /// same new parent, and not have set it up yet.
    pub fn create(&self, rel: &Path) -> Result<Vec<PathBuf>> {
        validate_path(rel)?;
        let mut created = Vec::new();
        let roots: Vec<(PathBuf, bool)> = match self {
            Layout::V1(hs) => hs
                .iter()
                .map(|h| {
                    (
                        h.mountpoint.clone(),
                        h.controllers.iter().any(|c| c == "cpuset"),
                    )
                })
                .collect(),
            Layout::V2(root) => vec![(root.clone(), false)],
        };
        for (root, cpuset) in roots {
            let mut dir = root.clone();
            for comp in rel
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
            {
                let parent = dir.clone();
                dir.push(comp);
                let fresh = match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        created.push(dir.clone());
                        true
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                    Err(e) => {
                        let _ = remove_dirs(&created);
                        return Err(Error::io(format!("create cgroup {}", dir.display()), e));
                    }
                };
                if let Err(e) = self.init_dir(&parent, &dir, cpuset, fresh) {
                    let _ = remove_dirs(&created);
                    return Err(e);
                }
            }
        }
        Ok(created)
    }

    /// What a directory needs before a process can join it, where it does not have it
    /// yet (`fresh`: just made, so it has nothing). `cpuset`: the directory is in the v1
    /// cpuset hierarchy.
    fn init_dir(&self, parent: &Path, dir: &Path, cpuset: bool, fresh: bool) -> Result<()> {
        match self {
            // A v1 cpuset starts with no cpus and mems (joining it fails with ENOSPC);
            // inherit the parent's.
            Layout::V1(_) if cpuset => {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    if !fresh {
                        let now = std::fs::read_to_string(dir.join(f))
                            .context(|| format!("read {}", dir.join(f).display()))?;
                        if !now.trim().is_empty() {
                            continue;
                        }
                    }
                    let v = std::fs::read_to_string(parent.join(f))
                        .context(|| format!("read {}", parent.join(f).display()))?;
                    std::fs::write(dir.join(f), v.trim())
                        .context(|| format!("write {}", dir.join(f).display()))?;
                }
                Ok(())
            }
            // On v2 the parent must delegate controllers to its children.
            Layout::V2(_) => {
                let avail =
                    std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                let delegated = if fresh {
                    String::new()
                } else {
                    std::fs::read_to_string(parent.join("cgroup.subtree_control"))
                        .unwrap_or_default()
                };
                let want: Vec<String> = avail
                    .split_whitespace()
                    .filter(|c| {
                        matches!(*c, "cpu" | "cpuset" | "memory" | "pids" | "io" | "hugetlb")
                            && !delegated.split_whitespace().any(|d| d == *c)
                    })
                    .map(|c| format!("+{c}"))
                    .collect();
                if !want.is_empty() {
                    if let Err(e) =
                        std::fs::write(parent.join("cgroup.subtree_control"), want.join(" "))
                    {
                        log::warn!("enable controllers in {}: {e}", parent.display());
                    }
                }
                Ok(())
            }
            Layout::V1(_) => Ok(()),
        }
    }

    /// Applies OCI Linux resources to `rel`.
    pub fn apply(&self, rel: &Path, res: &LinuxResources) -> Result<()> {
        let write = |controller: &str, file: &str, value: String| -> Result<()> {
            let dir = self.controller_dir(controller, rel).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "the {controller} cgroup controller is not mounted"
                ))
            })?;
            std::fs::write(dir.join(file), &value)
                .context(|| format!("write {value:?} to {}", dir.join(file).display()))
        };
        let v2 = matches!(self, Layout::V2(_));
        if let Some(mem) = res.memory() {
            if let Some(limit) = mem.limit() {
                if v2 {
                    write("memory", "memory.max", max_or(limit))?;
                } else {
                    write("memory", "memory.limit_in_bytes", limit.to_string())?;
                }
            }
            if let Some(r) = mem.reservation() {
                if v2 {
                    write("memory", "memory.low", max_or(r))?;
                } else {
                    write("memory", "memory.soft_limit_in_bytes", r.to_string())?;
                }
            }
        }
        if let Some(cpu) = res.cpu() {
            if let Some(shares) = cpu.shares() {
                if v2 {
                    write("cpu", "cpu.weight", shares_to_weight(shares).to_string())?;
                } else {
                    write("cpu", "cpu.shares", shares.to_string())?;
                }
            }
            if v2 {
                if cpu.quota().is_some() || cpu.period().is_some() {
                    let quota = cpu
                        .quota()
                        .filter(|q| *q > 0)
                        .map_or("max".to_string(), |q| q.to_string());
                    write(
                        "cpu",
                        "cpu.max",
                        format!("{quota} {}", cpu.period().unwrap_or(100_000)),
                    )?;
                }
            } else {
                if let Some(p) = cpu.period() {
                    write("cpu", "cpu.cfs_period_us", p.to_string())?;
                }
                if let Some(q) = cpu.quota() {
                    write("cpu", "cpu.cfs_quota_us", q.to_string())?;
                }
            }
            if let Some(cpus) = cpu.cpus() {
                write("cpuset", "cpuset.cpus", cpus.clone())?;
            }
            if let Some(mems) = cpu.mems() {
                write("cpuset", "cpuset.mems", mems.clone())?;
            }
        }
        if let Some(pids) = res.pids() {
            let limit = pids.limit();
            write(
                "pids",
                "pids.max",
                if limit > 0 {
                    limit.to_string()
                } else {
                    "max".into()
                },
            )?;
        }
        Ok(())
    }
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// cgroup v1 cpu.shares [2, 262144] to v2 cpu.weight [1, 10000], as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Rejects cgroupfs paths cove will not build: relative paths (a bare `x.slice` is a
/// systemd slice, see [`systemd`]), runc's `slice:prefix:name` form, and `.` or `..`.
pub fn validate_path(rel: &Path) -> Result<()> {
    let s = rel.to_string_lossy();
    if s.contains(':') {
        return Err(Error::InvalidArgument(format!(
            "cgroup parent {s:?} is neither a cgroupfs path nor a systemd slice name"
        )));
    }
    if !rel.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "cgroup parent {s:?} must be an absolute cgroupfs path"
        )));
    }
    if rel
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(Error::InvalidArgument(format!(
            "cgroup parent {s:?} must not contain . or .."
        )));
    }
    Ok(())
}

/// The kernel writes a mount point into mountinfo with space, tab, newline and backslash
/// as octal escapes (`\040`); this undoes them.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(c) = u8::try_from(v) {
                out.push(c);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// SIGKILLs every process in the cgroup directory `dir` itself (`cgroup.kill` where the
/// kernel has it, else each pid of `cgroup.procs` until none is new). Best effort, for a
/// leaf cgroup that holds nothing but what is to die; a missing directory holds nothing.
pub fn kill_procs_in(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() && std::fs::write(&kill_file, "1").is_ok() {
        return;
    }
    let _ = kill_listed(dir);
}

/// How SIGKILLing the pids listed in a cgroup's `cgroup.procs` ended.
enum Listed {
    /// A read showed no pid not already killed; this many were signalled.
    Settled(usize),
    /// The cgroup went away (it holds nothing); this many were signalled before.
    Gone(usize),
    /// New pids kept appearing for `KILL_ROUNDS` reads.
    KeptGaining,
}

/// SIGKILLs each pid `dir/cgroup.procs` lists until a read shows none not already killed:
/// a process with SIGKILL pending cannot fork, so every child forked before the kill shows
/// up in a later read.
///
/// A listed pid may be reused by a process outside the cgroup before it is signalled (its
/// process exited after the read). So each new pid is first pinned with a pidfd (which
/// names the process holding the pid at that moment), `cgroup.procs` is read again, and
/// only pids still listed then are signalled, through their pidfds: a pidfd whose process
/// has been reaped since signals nobody. (runc freezes the cgroup instead; that needs a
/// freezer hierarchy, waits for tasks to freeze, and would thaw a container its user
/// paused.) A kernel without pidfd_open (before 5.3) gets kill(2) after the second read.
fn kill_listed(dir: &Path) -> std::io::Result<Listed> {
    use nix::sys::signal::{kill, Signal};
    use std::os::fd::AsFd;
    let procs = dir.join("cgroup.procs");
    let read = || -> std::io::Result<Option<Vec<i32>>> {
        match std::fs::read_to_string(&procs) {
            Ok(t) => Ok(Some(
                t.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    };
    let mut killed = std::collections::HashSet::new();
    let Some(mut listed) = read()? else {
        return Ok(Listed::Gone(0));
    };
    let batch_size = pidfd_batch();
    for _ in 0..KILL_ROUNDS {
        let new: Vec<i32> = listed
            .iter()
            .copied()
            .filter(|p| !killed.contains(p))
            .collect();
        if new.is_empty() {
            return Ok(Listed::Settled(killed.len()));
        }
        // In batches, so that a crowded cgroup never holds the shim near its descriptor
        // limit.
        for batch in new.chunks(batch_size) {
            let pinned: Vec<(i32, nix::Result<std::os::fd::OwnedFd>)> = batch
                .iter()
                .map(|&p| (p, crate::sys::pidfd_open(p)))
                .collect();
            let Some(now) = read()? else {
                return Ok(Listed::Gone(killed.len()));
            };
            // A set: a crowded cgroup is looked up once per pinned pid.
            let still: std::collections::HashSet<i32> = now.iter().copied().collect();
            for (pid, fd) in pinned {
                if !still.contains(&pid) {
                    continue;
                }
                let sent = match fd {
                    Ok(fd) => crate::sys::pidfd_send_signal(fd.as_fd(), Signal::SIGKILL),
                    Err(nix::Error::ENOSYS) => {
                        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
                    }
                    // Gone before it was pinned; a process listed under its pid since
                    // is new to the next round.
                    Err(e) => Err(e),
                };
                if sent.is_ok() {
                    killed.insert(pid);
                }
            }
            listed = now;
        }
    }
    Ok(Listed::KeptGaining)
}

/// Removes cgroup directories, children first. A created parent that now holds other
/// cgroups (another pod's, when cove made a missing `cgroup_parent` on a fresh host) is in
/// use by others: it stays, and that is not a failure. A directory still busy with tasks
/// after a short, bounded retry (its last task is still exiting) is reported.
///
/// This one sleeps between tries: for `delete` and tests. The server uses
/// [`remove_dirs_async`], which never blocks its runtime thread.
pub fn remove_dirs(dirs: &[PathBuf]) -> Result<()> {
    let mut pending = dirs.to_vec();
    for attempt in 0..=REMOVE_RETRIES {
        match remove_pass(&pending, attempt == REMOVE_RETRIES) {
            std::ops::ControlFlow::Break(r) => return r,
            std::ops::ControlFlow::Continue(busy) => pending = busy,
        }
        std::thread::sleep(REMOVE_RETRY_PAUSE);
    }
    Ok(())
}

/// [`remove_dirs`] for the server: waits between tries without holding up other requests.
pub async fn remove_dirs_async(dirs: &[PathBuf]) -> Result<()> {
    let mut pending = dirs.to_vec();
    for attempt in 0..=REMOVE_RETRIES {
        match remove_pass(&pending, attempt == REMOVE_RETRIES) {
            std::ops::ControlFlow::Break(r) => return r,
            std::ops::ControlFlow::Continue(busy) => pending = busy,
        }
        tokio::time::sleep(REMOVE_RETRY_PAUSE).await;
    }
    Ok(())
}

/// One pass over `dirs`, deepest first. Breaks with the outcome when nothing is left to
/// retry; continues with the directories still busy with exiting tasks (and their
/// ancestors among `dirs`, which cannot go before them). On the `last` pass a busy
/// directory is an error.
fn remove_pass(dirs: &[PathBuf], last: bool) -> std::ops::ControlFlow<Result<()>, Vec<PathBuf>> {
    let mut sorted: Vec<&PathBuf> = dirs.iter().collect();
    sorted.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let mut first_err = None;
    let mut busy: Vec<PathBuf> = Vec::new();
    for d in sorted {
        if busy.iter().any(|b| b.starts_with(d)) {
            busy.push(d.clone());
            continue;
        }
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && has_child_cgroups(d) => {
                log::debug!("cgroup {} holds other cgroups; kept", d.display());
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !last => busy.push(d.clone()),
            Err(e) => {
                log::warn!("remove cgroup {}: {e}", d.display());
                first_err.get_or_insert(Error::io(format!("remove cgroup {}", d.display()), e));
            }
        }
    }
    match first_err {
        Some(e) => std::ops::ControlFlow::Break(Err(e)),
        None if busy.is_empty() => std::ops::ControlFlow::Break(Ok(())),
        None => std::ops::ControlFlow::Continue(busy),
    }
}

pub(crate) fn has_child_cgroups(d: &Path) -> bool {
    std::fs::read_dir(d)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
}

/// Reads of `cgroup.procs` before kill_all gives up on a cgroup that keeps growing.
const KILL_ROUNDS: usize = 1000;

/// How many pids kill_all pins with pidfds at a time: a quarter of the descriptors the
/// shim may open, between [`PIDFD_BATCH_MIN`] and [`PIDFD_BATCH_MAX`]. Each batch costs a
/// read of `cgroup.procs`, so a cgroup of 100k processes takes a few reads where
/// containerd's shims run with a high limit, not hundreds.
fn pidfd_batch() -> usize {
    crate::sys::open_files_limit()
        .map_or(PIDFD_BATCH_MIN, |l| {
            usize::try_from(l / 4).unwrap_or(PIDFD_BATCH_MAX)
        })
        .clamp(PIDFD_BATCH_MIN, PIDFD_BATCH_MAX)
}

const PIDFD_BATCH_MIN: usize = 256;
const PIDFD_BATCH_MAX: usize = 16384;

/// How often removal retries a busy cgroup, and how long it pauses between tries.
const REMOVE_RETRIES: u32 = 50;
const REMOVE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// The cgroup (relative to the hierarchy root) that process `pid` is in: on v1 the path
/// in the memory hierarchy (runc's cgroupfs driver uses one path in all of them), on v2
/// the unified path.
pub fn cgroup_of(pid: u32, layout: &Layout) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text, matches!(layout, Layout::V2(_)))
}

fn parse_proc_cgroup(text: &str, v2: bool) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if v2 {
            id == "0" && ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == "memory")
        };
        hit.then(|| PathBuf::from(path))
    })
}

#[cfg(test)]
mod tests;
