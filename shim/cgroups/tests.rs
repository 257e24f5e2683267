//! Unit tests of the cgroup layer. Those that create real cgroups need root: they are
//! `#[ignore]`d, so that `cargo test` as a normal user runs the rest, and `make test` (as
//! root) runs them as well (`--run-ignored all`).

use super::*;

const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

#[test]
fn parses_hybrid_and_unified_layouts() {
    let Layout::V1(hs) = Layout::parse(HYBRID).unwrap() else {
        panic!("not v1")
    };
    assert_eq!(hs.len(), 5);
    assert_eq!(hs[0].controllers, vec!["cpu"]);
    assert!(
        hs[2].controllers.is_empty(),
        "named hierarchy has no controllers"
    );
    assert_eq!(hs[4].mountpoint, PathBuf::from("/sys/fs/cgroup/unified"));
    assert_eq!(hs[3].controllers, vec!["cpu", "cpuacct"]);
    let v2 = "40 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
    assert_eq!(
        Layout::parse(v2).unwrap(),
        Layout::V2("/sys/fs/cgroup".into())
    );
    assert!(Layout::parse("").is_err());
}

#[test]
fn another_mount_of_a_hierarchy_is_not_taken_for_it() {
    // CRIU, restoring a container, mounts every hierarchy again in a yard of its own; a
    // container's bind of a subtree is no hierarchy's top either.
    let yard = "/run/ck/.criu.cgyard.4X8DmA";
    let v2 = format!(
        "50 60 0:40 / /mnt/early rw - cgroup2 cgroup2 rw\n\
         40 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n\
         70 40 0:30 /kubepods /var/lib/x/cgroup rw - cgroup2 cgroup2 rw\n\
         90 80 0:30 / {yard}/unified rw - cgroup2 cgroup2 rw\n"
    );
    assert_eq!(
        Layout::parse(&v2).unwrap(),
        Layout::V2("/sys/fs/cgroup".into())
    );
    let hybrid = format!(
        "{HYBRID}\
         91 80 0:28 / {yard}/memory rw - cgroup cgroup rw,memory\n\
         92 80 0:29 / {yard}/systemd rw - cgroup cgroup rw,name=systemd\n\
         93 80 0:30 / {yard}/unified rw - cgroup2 cgroup2 rw\n\
         94 80 0:32 / {yard}/pids rw - cgroup cgroup rw,pids\n"
    );
    let Layout::V1(hs) = Layout::parse(&hybrid).unwrap() else {
        panic!("not v1")
    };
    // A hierarchy mounted only in the yard is none of the host's.
    assert_eq!(Layout::V1(hs), Layout::parse(HYBRID).unwrap());
    // Where a hierarchy is mounted only as a subtree (a node in a container), that mount
    // is still taken.
    let subtree = "60 1 0:30 /kubelet /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    assert_eq!(
        Layout::parse(subtree).unwrap(),
        Layout::V2("/sys/fs/cgroup".into())
    );
}

#[test]
fn controller_dirs_follow_the_layout() {
    let l = Layout::parse(HYBRID).unwrap();
    assert_eq!(
        l.controller_dir("memory", Path::new("/pod/x")),
        Some(PathBuf::from("/sys/fs/cgroup/memory/pod/x"))
    );
    assert_eq!(l.controller_dir("pids", Path::new("/pod")), None);
    assert_eq!(l.dirs(Path::new("/p")).len(), 5);
}

#[test]
fn rejects_systemd_relative_and_dotdot_parents() {
    for p in ["kubepods.slice", "system.slice:cri:1", "pods/a", "/a/../b"] {
        assert!(
            matches!(validate_path(Path::new(p)), Err(Error::InvalidArgument(_))),
            "{p}"
        );
    }
    validate_path(Path::new("/kubepods/burstable/pod1")).unwrap();
}

/// This host's layout, for a test that creates cgroups (as root only).
fn root_layout() -> Layout {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates cgroups: run it as root"
    );
    Layout::detect().unwrap()
}

#[test]
#[ignore = "needs root (creates cgroups); make test runs it"]
fn a_created_parent_holding_other_cgroups_is_kept_without_error() {
    let layout = root_layout();
    let top = PathBuf::from(format!("/cove-unit-{}", std::process::id()));
    let mine = layout.create(&top.join("pod").join("mine")).unwrap();
    let theirs = top.join("pod").join("theirs");
    layout.create(&theirs).unwrap();
    assert!(
        mine.len() >= 3,
        "parents and the leaf were created: {mine:?}"
    );
    let kept = remove_dirs(&mine);
    let leaf_gone = layout
        .dirs(&top.join("pod/mine"))
        .iter()
        .all(|d| !d.exists());
    let parent_kept = layout.dirs(&top.join("pod")).iter().all(|d| d.exists());
    let mut all = layout.dirs(&theirs);
    all.extend(layout.dirs(&top.join("pod")));
    all.extend(layout.dirs(&top));
    remove_dirs(&all).unwrap();
    assert!(kept.is_ok(), "{kept:?}");
    assert!(leaf_gone, "our own cgroup is removed");
    assert!(parent_kept, "the parent other cgroups use stays");
}

/// Two pods started at once under one new parent: one makes the parent and has not set
/// it up yet (no cpus in its v1 cpuset, no controllers delegated on v2) when the other
/// finds it made. The other sets it up itself, and its pause can join its own cgroup: it
/// failed with ENOSPC (v1 cpuset) when both tests of `exec_drain` ran at once.
#[test]
#[ignore = "needs root (creates cgroups); make test runs it"]
fn a_parent_another_start_made_and_has_not_set_up_yet_is_set_up() {
    use std::process::Command;
    let layout = root_layout();
    let top = PathBuf::from(format!("/cove-unit-half-{}", std::process::id()));
    // What the other start has done so far: the directories, nothing in them.
    let half: Vec<PathBuf> = layout
        .dirs(&top)
        .into_iter()
        .chain(layout.dirs(&top.join("pod")))
        .collect();
    for d in &half {
        std::fs::create_dir(d).unwrap();
    }
    let leaf = top.join("pod").join("pause");
    let made = layout.create(&leaf);
    // A process joins the leaf in every hierarchy, as the pause does.
    let join = |dirs: Vec<PathBuf>| {
        let script = dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs", d.display()))
            .collect::<Vec<_>>()
            .join(" && ");
        Command::new("sh").args(["-c", &script]).status().unwrap()
    };
    let joined = made.as_ref().ok().map(|_| join(layout.dirs(&leaf)));
    let controllers = match &layout {
        Layout::V2(root) => {
            let read = |d: &Path| std::fs::read_to_string(d.join("cgroup.controllers")).unwrap();
            Some((
                read(root),
                read(&root.join(leaf.strip_prefix("/").unwrap())),
            ))
        }
        Layout::V1(_) => None,
    };
    let mut all = layout.dirs(&leaf);
    all.extend(half.iter().rev().cloned());
    remove_dirs(&all).unwrap();
    let made = made.unwrap();
    assert_eq!(
        made.len(),
        layout.dirs(&leaf).len(),
        "only the leaves were made"
    );
    assert!(
        joined.is_some_and(|s| s.success()),
        "a process joins the new cgroup in every hierarchy"
    );
    if let Some((root, leaf)) = controllers {
        for c in ["memory", "pids", "cpu"] {
            if root.split_whitespace().any(|r| r == c) {
                assert!(
                    leaf.split_whitespace().any(|l| l == c),
                    "{c} reaches the leaf: {leaf:?}"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs root (creates cgroups); make test runs it"]
fn kill_all_reaches_processes_forked_into_the_cgroup() {
    use std::process::Command;
    let layout = root_layout();
    let rel = PathBuf::from(format!("/cove-unit-kill-{}", std::process::id()));
    let made = layout.create(&rel).unwrap();
    // A shell in the cgroup that keeps a child and a grandchild.
    let script = format!(
        "for d in {}; do echo $$ > $d/cgroup.procs; done; sleep 1000 & (sleep 1000 & wait) & wait",
        layout
            .dirs(&rel)
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut sh = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let dir = layout.controller_dir("memory", &rel).unwrap();
    let count = || {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    for _ in 0..500 {
        if count() >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        count() >= 4,
        "the shell, a subshell and two sleeps are in the cgroup"
    );
    // Paused, as `ctr task pause` leaves it: the kill must still take effect.
    let v2 = matches!(layout, Layout::V2(_));
    let freezer = layout.controller_dir("freezer", &rel);
    let (freeze_file, frozen, thawed) = if v2 {
        ("cgroup.freeze", "1", "0")
    } else {
        ("freezer.state", "FROZEN", "THAWED")
    };
    if let Some(f) = &freezer {
        std::fs::write(f.join(freeze_file), frozen).unwrap();
    }
    let killed = layout.kill_all(&rel).unwrap();
    let mut status = None;
    for _ in 0..500 {
        status = sh.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let Some(status) = status else {
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join(freeze_file), thawed);
        }
        let _ = sh.kill();
        panic!("the killed shell never exited");
    };
    for _ in 0..500 {
        if count() == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let left = count();
    remove_dirs(&made).unwrap();
    // cgroup v2 kills the whole cgroup at once (cgroup.kill) and counts nobody.
    assert!(v2 || killed >= 4, "{killed} killed");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_eq!(left, 0, "nothing is left in the cgroup");
}

/// A stand-in for a cgroup directory whose `cgroup.procs` is a fifo: each read of it gets
/// the next listing (the last one from then on), so a test decides what the cgroup holds
/// at each read.
struct ScriptedProcs {
    dir: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<std::thread::JoinHandle<usize>>,
}

impl ScriptedProcs {
    fn new(tag: &str, listings: Vec<String>) -> ScriptedProcs {
        let dir = std::env::temp_dir().join(format!("cove-procs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pod")).unwrap();
        let fifo = dir.join("pod/cgroup.procs");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut served = 0;
            loop {
                // Blocks until a reader opens the fifo.
                let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
                    return served;
                };
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return served;
                }
                let text = &listings[served.min(listings.len() - 1)];
                let _ = f.write_all(text.as_bytes());
                served += 1;
            }
        });
        ScriptedProcs {
            dir,
            stop,
            writer: Some(writer),
        }
    }

    /// A v1 layout with one `pids` hierarchy, in which cgroup `/pod` is this directory.
    fn layout(&self) -> Layout {
        Layout::V1(vec![Hierarchy {
            mountpoint: self.dir.clone(),
            controllers: vec!["pids".into()],
        }])
    }
}

impl Drop for ScriptedProcs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Meet the writer waiting in open, so that it sees the stop.
        let _ = std::fs::File::open(self.dir.join("pod/cgroup.procs"));
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// kill_all must not signal a pid that the cgroup listed but no longer holds by the time
/// of the kill: the pid may have been given to a process outside the cgroup, a host
/// process. Here the "cgroup" lists the test's own child once, then nothing, as when its
/// process exits right after the read and the pid is reused outside.
#[test]
fn kill_all_spares_a_pid_the_cgroup_no_longer_lists() {
    let mut outsider = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let procs = ScriptedProcs::new("spare", vec![format!("{}\n", outsider.id()), String::new()]);
    let r = procs.layout().kill_all(Path::new("/pod"));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let alive = outsider.try_wait().unwrap().is_none();
    let _ = outsider.kill();
    let _ = outsider.wait();
    drop(procs);
    assert!(alive, "a pid the cgroup no longer listed was killed");
    assert_eq!(r.unwrap(), 0, "no pid was the cgroup's at the kill");
}

/// ... and a pid the cgroup still lists is killed.
#[test]
fn kill_all_kills_a_pid_the_cgroup_still_lists() {
    let mut member = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let procs = ScriptedProcs::new("kill", vec![format!("{}\n", member.id())]);
    let r = procs.layout().kill_all(Path::new("/pod"));
    let status = member.wait().unwrap();
    drop(procs);
    assert_eq!(r.unwrap(), 1);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "needs root (creates cgroups); make test runs it"]
async fn removing_a_busy_cgroup_lets_other_tasks_run() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let layout = root_layout();
    let rel = PathBuf::from(format!("/cove-unit-busy-{}", std::process::id()));
    let made = layout.create(&rel).unwrap();
    let dirs = layout.dirs(&rel);
    // A process that stays in the cgroup until it is killed once removal has begun (a
    // container's last process, exiting as its cgroup is removed). Killed, not timed: under
    // emulation a process meant to live 0.2 s outlived the removal's retries.
    let script = format!(
        "for d in {}; do echo $$ > $d/cgroup.procs; done; exec sleep 1000",
        dirs.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut sh = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let procs = layout
        .controller_dir("memory", &rel)
        .unwrap()
        .join("cgroup.procs");
    for _ in 0..500 {
        if std::fs::read_to_string(&procs).is_ok_and(|t| !t.trim().is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let victim = nix::unistd::Pid::from_raw(sh.id() as i32);
    let reaper = std::thread::spawn(move || sh.wait());
    // On this single-threaded runtime, a ticker only advances while removal waits
    // without blocking the thread; its first tick kills the process.
    let ticks = std::sync::Arc::new(AtomicUsize::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            if t.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGKILL);
            }
        }
    });
    let busy_at_start = std::fs::read_to_string(&procs).is_ok_and(|t| !t.trim().is_empty());
    let removed = remove_dirs_async(&made).await;
    let ticked = ticks.load(Ordering::SeqCst);
    ticker.abort();
    let _ = reaper.join();
    let _ = remove_dirs(&made);
    removed.unwrap();
    assert!(
        busy_at_start,
        "the cgroup held a process when removal began"
    );
    assert!(dirs.iter().all(|d| !d.exists()), "the cgroup is gone");
    assert!(ticked > 0, "other tasks ran while the cgroup was busy");
}

#[test]
fn shares_convert_like_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
}

/// How the kernel escapes a mount point in mountinfo.
fn escape(p: &str) -> String {
    p.bytes()
        .map(|b| match b {
            b' ' | b'\t' | b'\n' | b'\\' => format!("\\{b:03o}"),
            _ => (b as char).to_string(),
        })
        .collect()
}

proptest::proptest! {
    #[test]
    fn mount_points_come_back_as_mounted(
        dir in "/[a-z \\t\\\\]{1,20}",
        v2 in proptest::bool::ANY,
    ) {
        let line = if v2 {
            format!("30 1 0:26 / {} rw,nosuid - cgroup2 cgroup2 rw\n", escape(&dir))
        } else {
            format!("31 1 0:27 / {} rw - cgroup cgroup rw,memory\n", escape(&dir))
        };
        let l = Layout::parse(&line).unwrap();
        let want = Path::new(&dir).join("pod");
        proptest::prop_assert_eq!(l.controller_dir("memory", Path::new("/pod")), Some(want));
    }

    #[test]
    fn any_mountinfo_text_parses_or_errs_without_panicking(text in "\\PC{0,300}") {
        let _ = Layout::parse(&text);
    }
}

#[test]
fn proc_cgroup_lines_pick_the_right_hierarchy() {
    let t = "12:cpu,cpuacct:/k8s.io/abc\n5:memory:/k8s.io/abc\n0::/unified/x\n";
    assert_eq!(
        parse_proc_cgroup(t, false),
        Some(PathBuf::from("/k8s.io/abc"))
    );
    assert_eq!(
        parse_proc_cgroup(t, true),
        Some(PathBuf::from("/unified/x"))
    );
    assert_eq!(parse_proc_cgroup("1:name=systemd:/\n", false), None);
}
