//! Containers through CRI: the same container configs in a `cove` pod (sandboxer = "shim")
//! and in a `runc` pod (containerd's podsandbox path), compared observation by observation;
//! and cove as the runtime of a `podsandbox` pod (handler `cove-pod`).

mod common;

use std::path::Path;

use common::*;
use k8s_cri::v1::*;

/// Everything a user would look at, gathered the same way for each handler.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    shares_pod_namespaces: bool,
    hostname: String,
    hosts_has_localhost: bool,
    resolv_conf: String,
    shm: String,
    exec_sync: (String, String, i32),
    streamed_exec: (String, String, String),
    attach_echo: String,
    stats_have_memory_and_cpu: bool,
    updated_memory_limit: String,
    in_pod_cgroup: bool,
    log_has_stdout_and_stderr: bool,
    /// What the app's fd 1 and 2 are (`pipe`, or a path), and whether containerd's fifos
    /// were found unchanged on the host after the app ran `chmod 4777` through them.
    stdio: (String, String, bool),
    /// What the app's fd 0 is: it has no stdin.
    no_stdin: String,
    sigterm_exit: (i32, bool),
    sigkill_exit: i32,
    oom: (String, i32),
    shim_fds_inherited: Vec<String>,
    left_behind: Vec<String>,
}

async fn exercise(cd: &Containerd, handler: &str) -> Seen {
    let name = format!("ctr-{handler}");
    let mut pod_cfg = cd.pod_config(&name);
    let logs = cd.dir.join("logs").join(handler);
    std::fs::create_dir_all(&logs).unwrap();
    pod_cfg.log_directory = logs.to_string_lossy().into_owned();
    let pod = cd.run_pod(&pod_cfg, handler).await;

    let app = cd
        .create_container(
            &pod,
            &pod_cfg,
            container_config(
                "app",
                "printf fd0=; readlink /proc/self/fd/0; \
                 printf fd1=; readlink /proc/self/fd/1; printf fd2= >&2; \
                 readlink /proc/self/fd/2 >&2; chmod 4777 /proc/self/fd/1 /proc/self/fd/2; \
                 echo chmod=$?; echo started; echo to-stderr >&2; \
                 trap 'echo got-term; exit 42' TERM; while true; do sleep 0.1; done",
            ),
        )
        .await;
    cd.start_container(&app).await;
    // The app's stdout and stderr are pipes the shim copies into containerd's fifos: no
    // descriptor of a host file, nothing a chmod through /proc/self/fd reaches.
    let app_log = logs.join("app.log");
    let read_log = || std::fs::read_to_string(&app_log).unwrap_or_default();
    eventually("the app's first lines reach its log", || {
        let l = read_log();
        l.contains("fd2=") && l.contains("chmod=")
    })
    .await;
    let first_lines = read_log();
    let kind = |key: &str| {
        first_lines
            .lines()
            .find_map(|l| {
                l.split_once(key)
                    .map(|(_, v)| v.split(':').next().unwrap_or(v))
            })
            .unwrap_or_default()
            .to_string()
    };
    let fifos = fifo_modes(
        &cd.dir
            .join("state/io.containerd.grpc.v1.cri/containers")
            .join(&app),
    );
    let stdio = (
        kind("fd1="),
        kind("fd2="),
        !fifos.is_empty() && fifos.iter().all(|m| m & 0o7077 == 0),
    );
    let no_stdin = kind("fd0=");
    let tasks = cd.tasks();
    let (app_pid, pod_pid) = (tasks[&app], tasks[&pod]);
    let shares_pod_namespaces = ["net", "ipc", "uts", "pid"]
        .iter()
        .all(|k| ns_of(app_pid, k) == ns_of(pod_pid, k));

    // No descriptor of the shim (its own, or one it inherited) reaches the runc, hook and
    // log driver processes it runs.
    let shims = if handler == "cove" {
        cd.cove_shims()
    } else {
        cd.runc_shims()
    };
    assert!(!shims.is_empty(), "{handler}: no shim found");
    let shim_fds_inherited: Vec<String> = shims.iter().flat_map(|&p| inheritable_fds(p)).collect();

    let hostname = cd.exec_sync(&app, &["hostname"]).await.0;
    let hosts = cd.exec_sync(&app, &["cat", "/etc/hosts"]).await.0;
    let resolv_conf = cd.exec_sync(&app, &["cat", "/etc/resolv.conf"]).await.0;
    let shm = cd
        .exec_sync(
            &app,
            &[
                "sh",
                "-c",
                "df -k /dev/shm | tail -1 | awk '{print $1, $2}'",
            ],
        )
        .await
        .0;
    let exec_sync = cd
        .exec_sync(&app, &["sh", "-c", "echo out; echo err >&2; exit 3"])
        .await;

    // Streaming Exec through CRI's streaming server.
    let url = cd
        .rt()
        .exec(ExecRequest {
            container_id: app.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo streamed; echo e >&2; exit 7".into(),
            ],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let streamed_exec = tokio::task::spawn_blocking(move || ws::Ws::connect(&url).collect())
        .await
        .unwrap();

    // Attach to a container that answers on stdin. containerd's CRI starts copying the
    // attach's stdin before it adds the attach's stdout to the container's output (both
    // handlers): an answer that comes back in between reaches only the log. So the answer
    // is repeated every second, and the first line the attach sees is taken.
    let mut echo_cfg = container_config(
        "echo",
        "while read l; do while true; do echo got:$l; sleep 1; done; done",
    );
    echo_cfg.stdin = true;
    let echo = cd.create_container(&pod, &pod_cfg, echo_cfg).await;
    cd.start_container(&echo).await;
    let url = cd
        .rt()
        .attach(AttachRequest {
            container_id: echo.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let attach_echo = tokio::task::spawn_blocking(move || {
        let mut ws = ws::Ws::connect(&url);
        ws.send(0, b"hello\n");
        let mut out = String::new();
        while !out.contains('\n') {
            match ws.recv() {
                Some((1, d)) => out.push_str(&String::from_utf8_lossy(&d)),
                Some(_) => {}
                None => break,
            }
        }
        out.split_inclusive('\n')
            .next()
            .unwrap_or_default()
            .to_string()
    })
    .await
    .unwrap();

    let stats = cd
        .rt()
        .container_stats(ContainerStatsRequest {
            container_id: app.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let stats_have_memory_and_cpu = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .is_some_and(|v| v.value > 0)
        && stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .is_some();

    cd.rt()
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: app.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // Inside the container (its own cgroup namespace) its memory limit file.
    let limit_file = if cgroup_v2() {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    let updated_memory_limit = cd.exec_sync(&app, &["cat", limit_file]).await.0;
    // CRI's cgroupsPath: `<parent>/<id>`, or `<slice>:cri-containerd:<id>` under systemd.
    let in_pod_cgroup = cgroup_of(app_pid) == task_cgroup(&pod_cfg, &app);

    // StopContainer: SIGTERM handled by the app; SIGKILL after the timeout otherwise.
    cd.stop_container(&app, GRACE).await;
    let st = cd.exited(&app).await;
    let log = std::fs::read_to_string(logs.join("app.log")).unwrap_or_default();
    let log_has_stdout_and_stderr =
        log.contains(" stdout F started") && log.contains(" stderr F to-stderr");
    let sigterm_exit = (st.exit_code, log.contains("stdout F got-term"));

    let stubborn = cd
        .create_container(
            &pod,
            &pod_cfg,
            container_config(
                "stubborn",
                "trap '' TERM; echo trapped; while true; do sleep 0.1; done",
            ),
        )
        .await;
    cd.start_container(&stubborn).await;
    // The shell is not the pid namespace's init (the pod shares one): a TERM sent before
    // it has run its trap kills it (143). Stop it once the trap is set.
    eventually("the stubborn container has set its trap", || {
        std::fs::read_to_string(logs.join("stubborn.log"))
            .is_ok_and(|l| l.contains(" stdout F trapped"))
    })
    .await;
    cd.stop_container(&stubborn, 1).await;
    let sigkill_exit = cd.exited(&stubborn).await.exit_code;

    let hog_cfg = with_memory_limit(container_config("hog", "tail /dev/zero"), 16 << 20);
    let hog = cd.create_container(&pod, &pod_cfg, hog_cfg).await;
    cd.start_container(&hog).await;
    let st = cd.exited(&hog).await;
    let oom = (st.reason.clone(), st.exit_code);

    cd.stop_container(&echo, GRACE).await;
    for c in [&app, &echo, &stubborn, &hog] {
        cd.remove_container(c).await;
    }
    let still: Vec<String> = cd.tasks().into_keys().filter(|t| t != &pod).collect();
    assert!(
        still.is_empty(),
        "tasks left after RemoveContainer: {still:?}"
    );
    cd.stop_pod(&pod).await;
    cd.remove_pod(&pod).await;

    // Nothing of the pod's containers is left: processes, mounts, bundles, runc state,
    // cgroups. A cove shim exits once containerd has taken ShutdownSandbox's reply and
    // closed its connection, and containerd's runc shim up to 5 s after its server closes
    // (its shutdown callbacks): processes are counted once gone, or after EVENTUALLY.
    eventually("the cove shim exits", || cd.cove_shims().is_empty()).await;
    let ids = [&app, &echo, &stubborn, &hog, &pod];
    comes_to_hold(|| ids.iter().all(|c| pids_with(c).is_empty())).await;
    let mut left_behind = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for c in ids {
        if mounts.contains(c.as_str()) {
            left_behind.push(format!("mount of {c}"));
        }
        if !pids_with(c).is_empty() {
            left_behind.push(format!("process of {c}"));
        }
        let bundle = cd
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(NS)
            .join(c);
        if bundle.exists() {
            left_behind.push(format!("bundle {}", bundle.display()));
        }
        // runc's state and the container's cgroups (and systemd units), whoever removed them.
        let state = std::path::Path::new("/run/containerd/runc")
            .join(NS)
            .join(c);
        if state.exists() {
            left_behind.push(format!("runc state {}", state.display()));
        }
        for d in layout().dirs(&task_cgroup(&pod_cfg, c)) {
            if d.exists() {
                left_behind.push(format!("cgroup {}", d.display()));
            }
        }
        let scope = cove::cgroups::systemd::scope_name(c);
        if systemd_driver() && unit_loaded(&scope) {
            left_behind.push(format!("unit {scope}"));
        }
    }
    Seen {
        shares_pod_namespaces,
        hostname,
        hosts_has_localhost: hosts.contains("127.0.0.1") && hosts.contains("localhost"),
        resolv_conf,
        shm,
        exec_sync,
        streamed_exec,
        attach_echo,
        stats_have_memory_and_cpu,
        updated_memory_limit,
        in_pod_cgroup,
        log_has_stdout_and_stderr,
        stdio,
        no_stdin,
        sigterm_exit,
        sigkill_exit,
        oom,
        shim_fds_inherited,
        left_behind,
    }
}

/// The permission bits of every fifo under `dir`.
fn fifo_modes(dir: &Path) -> Vec<u32> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut modes = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                todo.push(e.path());
            } else if m.file_type().is_fifo() {
                modes.push(m.permissions().mode() & 0o7777);
            }
        }
    }
    modes
}

#[tokio::test]
async fn containers_in_cove_pods_behave_as_in_runc_pods() {
    let cd = Containerd::start("tasks").await;
    let runc = exercise(&cd, "runc").await;
    let cove = exercise(&cd, "cove").await;
    eprintln!("cove: {cove:#?}");
    // What a user expects, checked on cove itself...
    assert!(cove.shares_pod_namespaces, "{cove:#?}");
    assert!(cove.hosts_has_localhost, "{cove:#?}");
    assert_eq!(cove.hostname.trim(), "ctr-cove-host");
    assert!(
        cove.resolv_conf.contains("nameserver 10.96.0.10"),
        "{cove:#?}"
    );
    assert!(cove.shm.starts_with("shm 65536"), "{cove:#?}");
    assert_eq!(cove.exec_sync, ("out\n".into(), "err\n".into(), 3));
    assert_eq!(cove.streamed_exec.0, "streamed\n");
    assert_eq!(cove.streamed_exec.1, "e\n");
    assert!(
        cove.streamed_exec.2.contains("NonZeroExitCode"),
        "{cove:#?}"
    );
    assert_eq!(cove.attach_echo, "got:hello\n");
    assert!(cove.stats_have_memory_and_cpu);
    assert_eq!(cove.updated_memory_limit.trim(), (64u64 << 20).to_string());
    assert!(cove.in_pod_cgroup);
    assert!(cove.log_has_stdout_and_stderr);
    assert_eq!(
        cove.stdio,
        ("pipe".into(), "pipe".into(), true),
        "{cove:#?}"
    );
    assert_eq!(cove.no_stdin, "pipe", "{cove:#?}");
    assert_eq!(cove.sigterm_exit, (42, true));
    assert_eq!(cove.sigkill_exit, 137);
    assert_eq!(cove.oom, ("OOMKilled".into(), 137));
    assert!(cove.left_behind.is_empty(), "{:?}", cove.left_behind);
    assert!(
        cove.shim_fds_inherited.is_empty(),
        "{:?}",
        cove.shim_fds_inherited
    );
    // ...and the same as containerd's runc pod path, observation by observation.
    let mut runc = runc;
    runc.hostname = runc.hostname.replace("ctr-runc", "ctr-cove");
    // containerd's runc shim sometimes misses an OOM kill and reports none (no TaskOOM at
    // all: reason "Error"): under the systemd driver, which removes the scope before the
    // shim reads memory.events (seen in the systemd guest), and under load on cgroup v1
    // (seen on this host, about one run in five of the full suite). cove does not miss it
    // (asserted above, exactly); the oracle's miss is named, not copied.
    if runc.oom == ("Error".to_string(), 137) {
        eprintln!("the runc pod path missed the OOM kill");
        runc.oom = cove.oom.clone();
    }
    // containerd's runc shim gives a container without stdin the host's /dev/null as its
    // fd 0 (a device inode it could chmod through /proc/self/fd/0); cove an empty pipe
    // (asserted above).
    if runc.no_stdin == "/dev/null" {
        eprintln!("the runc shim gives the host's /dev/null as stdin");
        runc.no_stdin = cove.no_stdin.clone();
    }
    // containerd's runc shim passes on whatever descriptors containerd inherited (seen
    // here: the test runner's); cove closes them to its children (asserted above).
    if !runc.shim_fds_inherited.is_empty() {
        eprintln!(
            "the runc shim's children inherit {:?}",
            runc.shim_fds_inherited
        );
        runc.shim_fds_inherited.clear();
    }
    assert_eq!(cove, runc);
}

#[tokio::test]
async fn cove_runs_podsandbox_pods_pause_and_containers_in_one_shim() {
    let cd = Containerd::start("podsb").await;
    let pod_cfg = cd.pod_config("pods");
    let pod = cd.run_pod(&pod_cfg, "cove-pod").await;
    let app = cd
        .create_container(
            &pod,
            &pod_cfg,
            container_config("app", "echo hi; exec sleep 1000"),
        )
        .await;
    cd.start_container(&app).await;
    let shims = cd.cove_shims();
    assert_eq!(
        shims.len(),
        1,
        "one cove shim serves the pause container and the app"
    );
    let tasks = cd.tasks();
    assert_eq!(ns_of(tasks[&app], "net"), ns_of(tasks[&pod], "net"));
    assert_eq!(
        cd.exec_sync(&app, &["hostname"]).await.0.trim(),
        "pods-host"
    );
    assert_eq!(
        cd.exec_sync(&app, &["sh", "-c", "exit 9"]).await.2,
        9,
        "exit codes pass through"
    );
    cd.stop_container(&app, GRACE).await;
    assert_eq!(
        cd.exited(&app).await.exit_code,
        143,
        "sleep dies of SIGTERM"
    );
    cd.remove_container(&app).await;
    cd.stop_pod(&pod).await;
    cd.remove_pod(&pod).await;
    eventually("the cove shim exits after the pod is removed", || {
        cd.cove_shims().is_empty()
    })
    .await;
    assert!(!Path::new(&format!("/run/containerd/runc/{NS}/{app}")).exists());
}
