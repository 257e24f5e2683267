//! cove as a plain task shim: `ctr run --runtime io.containerd.cove.v1` and the `ctr task`
//! commands Docker-style clients rely on, with their exit codes and `/tasks/*` events.

mod common;

use std::process::{Command, Stdio};

use common::*;

const RUNTIME: &str = "io.containerd.cove.v1";

/// `ctr events` of every namespace, printing to a pipe.
fn ctr_events(cd: &Containerd) -> std::process::Child {
    Command::new("ctr")
        .arg("--address")
        .arg(&cd.sock)
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn ctr_run_exec_signal_pause_metrics_and_delete() {
    let cd = Containerd::start("ctr").await;
    let events = ctr_events(&cd);

    // Attached, exit code and the last words before the exit.
    let (code, out, _) = cd.ctr_status(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        "once",
        "sh",
        "-c",
        "echo last words; exit 3",
    ]);
    assert_eq!((code, out.as_str()), (3, "last words\n"));

    // Detached.
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        "svc",
        "sleep",
        "1000",
    ]);
    let pid = cd.tasks()["svc"];
    assert!(alive(pid));
    let (code, out, _) = cd.ctr_status(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo in-exec; exit 5",
    ]);
    assert_eq!((code, out.as_str()), (5, "in-exec\n"));
    let ps = cd.ctr(&["task", "ps", "svc"]);
    assert!(ps.contains(&pid.to_string()), "{ps}");

    cd.ctr(&["task", "pause", "svc"]);
    assert!(cd.ctr(&["task", "ls"]).contains("PAUSED"));
    cd.ctr(&["task", "resume", "svc"]);
    assert!(cd.ctr(&["task", "ls"]).contains("RUNNING"));
    let metrics = cd.ctr(&["task", "metrics", "svc"]);
    // ctr prints cgroup v1 and v2 metrics under different names.
    let usage_key = if cgroup_v2() {
        "memory.usage"
    } else {
        "memory.usage_in_bytes"
    };
    let usage: u64 = metrics
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(usage_key)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {usage_key} in {metrics}"));
    assert!(usage > 0, "{metrics}");
    assert!(metrics.contains("pids.current"), "{metrics}");

    // Checkpoint goes through runc. Where CRIU cannot run (our hosts: its kernel feature
    // check fails) the error says so; where it can (the guest kernels), runc and CRIU have
    // their say, and the task keeps running either way.
    let criu_runs = Command::new("criu")
        .arg("check")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let (code, _, err) = cd.ctr_status(&["task", "checkpoint", "svc"]);
    if criu_runs {
        assert!(code == 0 || err.contains("criu"), "{err}");
    } else {
        assert_ne!(code, 0);
        assert!(err.contains("needs CRIU"), "{err}");
    }
    assert!(cd.ctr(&["task", "ls"]).contains("RUNNING"));

    // sleep is PID 1 of its own pid namespace, where SIGTERM has no default action.
    cd.ctr(&["task", "kill", "-s", "KILL", "svc"]);
    cd.ctr_stopped("svc").await;
    let (code, _, err) = cd.ctr_status(&["task", "delete", "svc"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("137"),
        "exit status of SIGKILL reported: {err}"
    );
    cd.ctr(&["container", "rm", "svc"]);

    // A terminal: the pty master is copied both ways.
    let script = format!(
        "ctr --address {} -n {NS} run --rm -t --runtime {RUNTIME} {BUSYBOX} term sh -c 'tty; echo bye'",
        cd.sock.display()
    );
    let out = Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (bsdutils) gives ctr a terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/0") && text.contains("bye"),
        "{text}"
    );

    eventually("every cove shim has exited", || cd.cove_shims().is_empty()).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(events.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = events.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(seen.contains(topic), "no {topic} event in:\n{seen}");
    }
}

#[tokio::test]
async fn a_crashed_shim_leaves_no_container_or_mount_behind() {
    let cd = Containerd::start("crash").await;
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX,
        "doomed",
        "sleep",
        "1000",
    ]);
    let pid = cd.tasks()["doomed"];
    let shims = cd.cove_shims();
    assert_eq!(shims.len(), 1);
    let rootfs = cd
        .dir
        .join("state/io.containerd.runtime.v2.task")
        .join(NS)
        .join("doomed/rootfs");
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&*rootfs.to_string_lossy())
    };
    assert!(mounted());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd notices the dead shim and runs `containerd-shim-cove-v1 delete`.
    eventually("the container process is gone", || !alive(pid)).await;
    eventually("the rootfs is unmounted", || !mounted()).await;
    let runc_state = format!("/run/containerd/runc/{NS}/doomed");
    eventually("runc forgot the container", || {
        !std::path::Path::new(&runc_state).exists()
    })
    .await;
    cd.ctr(&["container", "rm", "doomed"]);
}

/// A container's output reaches a `file://` log through a pipe the shim copies, on cove as
/// on containerd's runc shim: the container cannot chmod the host's file through its
/// fd 1 (it once made it setuid: a root container could have written an ELF there), and
/// it sees pipes, not the host path. An exec whose background child keeps its output open
/// still ends (its exit and Delete wait a bounded time), on both.
#[tokio::test]
async fn output_to_a_file_goes_through_pipes_as_with_runc() {
    use std::os::unix::fs::PermissionsExt;
    let cd = Containerd::start("filelog").await;
    for (tag, runtime) in [("runc", "io.containerd.runc.v2"), ("cove", RUNTIME)] {
        let log = cd.dir.join(format!("logs/{tag}.log"));
        let uri = format!("file://{}", log.display());
        let id = format!("filelog-{tag}");
        let (code, _, err) = cd.ctr_status(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--log-uri",
            &uri,
            BUSYBOX,
            &id,
            "sh",
            "-c",
            "echo hi; readlink /proc/self/fd/1; readlink /proc/self/fd/2; \
             chmod 4755 /proc/self/fd/1 /proc/self/fd/2; echo chmod=$?",
        ]);
        assert_eq!(code, 0, "{tag}: {err}");
        let meta = std::fs::metadata(&log).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o644,
            "{tag}: the container changed the host's log file {}",
            log.display()
        );
        // Everything goes to stdout, one stream in order: containerd's runc shim copies
        // stdout and stderr apart and, with `ctr run --rm`, lost the stderr line in one run
        // (containerd 2.1.9). `ctr run` returns at the exit; that shim may still be copying
        // into the file then (cove drains its copies before it reports the exit).
        let complete = || std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 4);
        if tag == "runc" {
            comes_to_hold(complete).await;
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"hi"), "{tag}: {text}");
        let fds: Vec<&str> = lines
            .iter()
            .filter(|l| !l.starts_with("hi") && !l.starts_with("chmod="))
            .copied()
            .collect();
        assert_eq!(fds.len(), 2, "{tag}: {text}");
        assert!(
            fds.iter().all(|l| l.starts_with("pipe:[")),
            "{tag}: the container's fd 1 and 2 are not pipes: {text}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("chmod=")),
            "{tag}: {text}"
        );

        // An exec leaves a child holding its stdout; the exec still ends, with its output
        // (were its exit held until the child ends, nextest would end the test).
        let svc = format!("svc-{tag}");
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            BUSYBOX,
            &svc,
            "sleep",
            "1000",
        ]);
        let (code, out, err) = cd.ctr_status(&[
            "task",
            "exec",
            "--exec-id",
            "bg",
            &svc,
            "sh",
            "-c",
            "sleep 1000 & echo from-exec",
        ]);
        // The output is checked on cove: containerd's runc shim once returned an exec's
        // exit with none of its output (tests/exec_drain.rs).
        assert_eq!(code, 0, "{tag}: {err}");
        if tag == "cove" {
            assert_eq!(out, "from-exec\n", "{tag}: {err}");
        } else if out != "from-exec\n" {
            eprintln!("{tag}: the exec's output was {out:?}");
        }
        cd.ctr_kill_and_remove(&svc).await;
    }
    eventually("every cove shim has exited", || cd.cove_shims().is_empty()).await;
}

/// An OOM-killed container whose cgroup is gone before the shim looks at it, as systemd
/// removes a container's scope the moment its last process is gone (in the systemd guest,
/// before the shim had read the kill counter for about a third of Docker's OOM-killed
/// containers, on containerd's runc shim as on cove): the kill is still reported, and
/// before the exit. Here the shim is stopped while its container is killed and the scope
/// removed, so that it cannot look earlier.
#[tokio::test]
async fn an_oom_kill_is_reported_when_the_scope_is_gone_before_the_shim_looks() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::BufRead;
    // What the shim reads instead of the removed cgroup.
    let init_pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .is_ok_and(|l| l.to_string_lossy() == "pid:[4026531836]");
    assert!(
        init_pid_ns && std::fs::File::open("/dev/kmsg").is_ok(),
        "this test needs the kernel's log (/dev/kmsg) and the initial pid namespace"
    );
    let cd = Containerd::start("oomscope").await;
    let mut events = ctr_events(&cd);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines = std::io::BufReader::new(events.stdout.take().unwrap());
    let sink = seen.clone();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    // A cgroupfs path (whatever the harness's driver), named as systemd names a
    // container's unit, under the harness's root (which its end removes).
    let parent = if systemd_driver() {
        format!("/cove-e2e-oomscope-{}", std::process::id())
    } else {
        cd.cgroup_root.clone()
    };
    let scope = format!("{parent}/hog.scope");
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &(16u64 << 20).to_string(),
        "--cgroup",
        &scope,
        BUSYBOX,
        "hog",
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; exec tail /dev/zero",
    ]);
    let pid = cd.tasks()["hog"];
    // No swap for it either (`ctr` has no flag for that): at its limit it is killed.
    for d in layout().dirs(std::path::Path::new(&scope)) {
        for (file, value) in [
            ("memory.memsw.limit_in_bytes", (16u64 << 20).to_string()),
            ("memory.swap.max", "0".to_string()),
        ] {
            if d.join(file).exists() {
                std::fs::write(d.join(file), value).unwrap();
            }
        }
    }
    let shims = cd.cove_shims();
    assert_eq!(shims.len(), 1);
    let shim = Pid::from_raw(shims[0]);
    let state = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')')?.1.trim_start().chars().next())
    };

    kill(shim, Signal::SIGSTOP).unwrap();
    eventually("the shim is stopped", || state(shims[0]) == Some('T')).await;
    std::fs::write(format!("/proc/{pid}/root/tmp/go"), "").unwrap();
    // Killed, and not reaped: a zombie of the stopped shim.
    eventually("the hog is OOM-killed", || state(pid as i32) == Some('Z')).await;
    // What systemd does with a scope whose last process is gone.
    let dirs: Vec<_> = layout()
        .dirs(std::path::Path::new(&scope))
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(!dirs.is_empty(), "the container's cgroup exists");
    for d in &dirs {
        std::fs::remove_dir(d).unwrap_or_else(|e| panic!("rmdir {}: {e}", d.display()));
    }
    kill(shim, Signal::SIGCONT).unwrap();

    let at = |topic: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .position(|l| l.contains(topic) && l.contains("\"hog\""))
    };
    eventually("the hog's exit is published", || {
        at("/tasks/exit").is_some()
    })
    .await;
    cd.ctr(&["task", "delete", "hog"]);
    cd.ctr(&["container", "rm", "hog"]);
    let _ = events.kill();
    let _ = events.wait();
    if systemd_driver() {
        for d in layout().dirs(std::path::Path::new(&parent)) {
            let _ = std::fs::remove_dir(d);
        }
    }
    let all = seen.lock().unwrap().join("\n");
    assert!(
        at("/tasks/oom").is_some(),
        "no /tasks/oom for hog in:\n{all}"
    );
    assert!(
        at("/tasks/oom") < at("/tasks/exit"),
        "oom before exit:\n{all}"
    );
}
