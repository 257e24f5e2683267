//! What no request may do to a shim: wedge it, crash it, leak from it, or leave half-done
//! state behind. The real `containerd-shim-cove-v1` over its ttrpc socket, real runc
//! containers (a busybox rootfs bind-mounted as containerd would mount a snapshot), and
//! `delete` after a shim killed at each step of StartSandbox and Task.Create. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::shim::{create_req, ctx, pod_options, Shim};
use common::{
    alive, cgroup_exists, eventually, inheritable_fds, Backoff, EVENTUALLY, POLL_FIRST, POLL_MAX,
};
use containerd_shim_protos::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, PauseRequest, StartRequest,
    StateRequest, Status, WaitRequest,
};
use containerd_shim_protos::sandbox_api::*;
use containerd_shim_protos::sandbox_async::SandboxClient;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::types::mount::Mount;
use protobuf::well_known_types::any::Any;
use ttrpc::Code;

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// Whether a call ended at its deadline: the server's DEADLINE_EXCEEDED, or the client's
/// own timer, whichever came first.
fn deadline_passed<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> bool {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code() == Code::DEADLINE_EXCEEDED,
        Err(ttrpc::Error::Others(m)) => m.contains("deadline"),
        _ => false,
    }
}

/// A bounded poll's deadline (for a wedged shim, not a slow one) and its intervals.
fn poll() -> (Instant, Backoff) {
    (
        Instant::now() + EVENTUALLY,
        Backoff::new(POLL_FIRST, POLL_MAX),
    )
}

fn short_ctx(ms: u64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_millis(ms).as_nanos() as i64)
}

/// A busybox root filesystem, shared by the containers of one test.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (make deps)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for tool in ["sh", "sleep", "ls", "cat", "echo", "true"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(tool));
    }
    root
}

/// A container bundle as containerd lays one out: config.json (from `runc spec`, with
/// `args`, a cgroup under `/cove-test`, and `hooks` if given) and an empty rootfs directory
/// the shim mounts the image on.
fn bundle(dir: &Path, id: &str, args: &[&str], hooks: Option<serde_json::Value>) -> PathBuf {
    let b = dir.join("bundles").join(id);
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    let out = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "runc spec: {out:?}");
    let path = b.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = false.into();
    spec["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
    spec["linux"]["cgroupsPath"] = format!("/cove-test/{id}").into();
    if let Some(h) = hooks {
        spec["hooks"] = h;
    }
    std::fs::write(&path, spec.to_string()).unwrap();
    b
}

fn create_task(id: &str, bundle: &Path, rootfs: &Path) -> CreateTaskRequest {
    let mut r = CreateTaskRequest::new();
    r.id = id.into();
    r.bundle = bundle.to_string_lossy().into_owned();
    let mut m = Mount::new();
    m.type_ = "bind".into();
    m.source = rootfs.to_string_lossy().into_owned();
    m.options = vec!["rbind".into(), "rw".into()];
    r.rootfs = vec![m];
    r
}

fn mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&*p.to_string_lossy())
}

fn runc_state(id: &str) -> PathBuf {
    Path::new("/run/containerd/runc/cove-test").join(id)
}

fn fd_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let t = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{} -> {}", e.file_name().to_string_lossy(), t.display())
        })
        .collect()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn start_pod(sb: &SandboxClient, shim: &Shim) -> u32 {
    let mut req = create_req(&shim.id, &shim.bundle);
    req.options = Some(pod_options("hostile", &format!("/cove-test/{}", shim.id))).into();
    sb.create_sandbox(ctx(), &req).await.unwrap();
    let mut st = StartSandboxRequest::new();
    st.sandbox_id = shim.id.clone();
    sb.start_sandbox(ctx(), &st).await.unwrap().pid
}

async fn start_task(task: &TaskClient, id: &str) {
    let mut s = StartRequest::new();
    s.id = id.into();
    task.start(ctx(), &s).await.unwrap();
}

/// SIGKILL to the task's init (to every process with `all`), then its exit.
async fn kill_and_wait(task: &TaskClient, id: &str, all: bool) {
    let mut k = KillRequest::new();
    k.id = id.into();
    k.signal = 9;
    k.all = all;
    task.kill(ctx(), &k).await.unwrap();
    let mut w = WaitRequest::new();
    w.id = id.into();
    task.wait(ctx(), &w).await.unwrap();
}

fn delete_req(id: &str) -> DeleteRequest {
    let mut d = DeleteRequest::new();
    d.id = id.into();
    d
}

async fn run_to_end(task: &TaskClient, id: &str) {
    start_task(task, id).await;
    kill_and_wait(task, id, true).await;
    task.delete(ctx(), &delete_req(id)).await.unwrap();
}

async fn shutdown(sb: &SandboxClient, shim: &Shim) {
    let mut sd = ShutdownSandboxRequest::new();
    sd.sandbox_id = shim.id.clone();
    sb.shutdown_sandbox(ctx(), &sd).await.unwrap();
}

/// A caller that stops waiting (ttrpc drops the handler at the deadline) must not leave
/// an id "being created", a pause nobody recorded, or a reply in the pause helper's socket.
#[tokio::test]
async fn requests_abandoned_at_their_deadline_finish_and_leave_nothing() {
    let shim = Shim::start_with(
        "deadline",
        &[(
            "COVE_FAILPOINT",
            "start-sandbox:before-pause=sleep:1500,task-create:before-runc=sleep:1500",
        )],
    );
    let (sb, task, _) = shim.clients().await;
    let mut req = create_req(&shim.id, &shim.bundle);
    req.options = Some(pod_options("deadline", &format!("/cove-test/{}", shim.id))).into();
    sb.create_sandbox(ctx(), &req).await.unwrap();
    let mut st = StartSandboxRequest::new();
    st.sandbox_id = shim.id.clone();
    assert!(deadline_passed(sb.start_sandbox(short_ctx(300), &st).await));
    // The start goes on without its caller and ends READY, once.
    let mut status = SandboxStatusRequest::new();
    status.sandbox_id = shim.id.clone();
    let mut pid = 0;
    let (deadline, mut every) = poll();
    while Instant::now() < deadline {
        let s = sb.sandbox_status(ctx(), &status).await.unwrap();
        if s.state == "SANDBOX_READY" {
            pid = s.pid;
            break;
        }
        tokio::time::sleep(every.next()).await;
    }
    assert!(pid > 0 && alive(pid), "the abandoned StartSandbox finished");
    assert_eq!(
        code(sb.start_sandbox(ctx(), &st).await),
        Code::FAILED_PRECONDITION,
        "started once"
    );

    let rootfs = rootfs(&shim.dir);
    let b = bundle(&shim.dir, "c1", &["sleep", "1000"], None);
    assert!(deadline_passed(
        task.create(short_ctx(300), &create_task("c1", &b, &rootfs))
            .await
    ));
    // The create finishes in the background: the id is a task, not "being created".
    let mut state = StateRequest::new();
    state.id = "c1".into();
    let mut created = false;
    let (deadline, mut every) = poll();
    while Instant::now() < deadline {
        if task.state(ctx(), &state).await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(every.next()).await;
    }
    assert!(created, "the abandoned Task.Create finished");
    assert_eq!(
        code(task.create(ctx(), &create_task("c1", &b, &rootfs)).await),
        Code::ALREADY_EXISTS
    );
    run_to_end(&task, "c1").await;
    assert!(!mounted(&b.join("rootfs")), "rootfs unmounted");
    assert!(!runc_state("c1").exists(), "runc state removed");
    assert!(!cgroup_exists(Path::new("/cove-test/c1")));

    shutdown(&sb, &shim).await;
    assert!(!alive(pid));
    assert!(!cgroup_exists(Path::new(&format!(
        "/cove-test/{}",
        shim.id
    ))));
}

/// A hook that lists its open descriptors: it must see its stdio and nothing of the shim.
#[tokio::test]
async fn hooks_see_no_shim_descriptor() {
    let shim = Shim::start("hookfds");
    let (sb, task, _) = shim.clients().await;
    start_pod(&sb, &shim).await;
    let out = shim.dir.join("hook-fds");
    let hooks = serde_json::json!({
        "createRuntime": [{
            "path": "/bin/sh",
            // `exec`: the shell applies the redirection for good and becomes ls, so
            // what is listed is exactly what the hook process inherited (and ls's own
            // handle on the /proc directory it reads).
            "args": ["sh", "-c", format!("exec ls -l /proc/$$/fd > {}", out.display())],
        }]
    });
    let rootfs = rootfs(&shim.dir);
    let b = bundle(&shim.dir, "hooked", &["sleep", "1000"], Some(hooks));
    task.create(ctx(), &create_task("hooked", &b, &rootfs))
        .await
        .unwrap();
    let listing = std::fs::read_to_string(&out).expect("the hook ran");
    let mut fds: Vec<i32> = listing
        .lines()
        .filter_map(|l| {
            let (name, target) = l.split_once(" -> ")?;
            let fd = name.split_whitespace().last()?.parse().ok()?;
            (!target.starts_with("/proc/")).then_some(fd)
        })
        .collect();
    fds.sort();
    assert_eq!(fds, vec![0, 1, 2], "the hook's descriptors:\n{listing}");
    let server = shim.server_pid();
    assert_eq!(inheritable_fds(server), Vec::<String>::new());
    run_to_end(&task, "hooked").await;
    shutdown(&sb, &shim).await;
}

/// Bad and hostile input over the socket: every request gets a status, the shim keeps
/// serving, and its descriptors are what they were.
#[tokio::test]
async fn hostile_requests_get_a_status_and_leak_nothing() {
    let shim = Shim::start("hostile");
    let (sb, task, _) = shim.clients().await;
    start_pod(&sb, &shim).await;
    let server = shim.server_pid();
    let rootfs = rootfs(&shim.dir);

    // Warm up once (first runc run, first console dir...), then count descriptors.
    let b = bundle(&shim.dir, "warm", &["true"], None);
    task.create(ctx(), &create_task("warm", &b, &rootfs))
        .await
        .unwrap();
    run_to_end(&task, "warm").await;
    let fds_before = open_fds(server);

    // Ids: path separators, dot-dot, NUL, 10 kB, empty.
    let long = "x".repeat(10_000);
    for bad in ["a/b", "..", "a\0b", long.as_str(), ""] {
        assert_eq!(
            code(task.create(ctx(), &create_task(bad, &b, &rootfs)).await),
            Code::INVALID_ARGUMENT,
            "task id {:?}",
            &bad[..bad.len().min(8)]
        );
        assert_eq!(
            code(
                sb.create_sandbox(ctx(), &create_req(bad, &shim.bundle))
                    .await
            ),
            Code::INVALID_ARGUMENT
        );
    }
    // Options: garbage in runc's type, and a type cove does not know.
    let b2 = bundle(&shim.dir, "opts", &["sleep", "1000"], None);
    let mut r = create_task("opts", &b2, &rootfs);
    r.options = Some(Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: vec![0xff; 16],
        ..Default::default()
    })
    .into();
    assert_eq!(code(task.create(ctx(), &r).await), Code::INVALID_ARGUMENT);
    assert!(
        !mounted(&b2.join("rootfs")),
        "a refused create mounts nothing"
    );
    // Malformed and non-ASCII stdio URIs.
    let out_file = shim.dir.join("out%aé");
    for (uri, want) in [
        ("http://example", Some(Code::INVALID_ARGUMENT)),
        ("binary://", Some(Code::INVALID_ARGUMENT)),
        (&*format!("file://{}/out%aé", shim.dir.display()), None),
    ] {
        let mut r = create_task("uri", &b2, &rootfs);
        r.stdout = uri.into();
        let got = task.create(ctx(), &r).await;
        match want {
            Some(c) => assert_eq!(code(got), c, "{uri}"),
            None => {
                got.unwrap_or_else(|e| panic!("{uri}: {e:?}"));
                assert!(out_file.exists(), "stdout went to the decoded path");
                kill_and_wait(&task, "uri", false).await;
                task.delete(ctx(), &delete_req("uri")).await.unwrap();
            }
        }
    }
    // An exec whose process spec is not JSON, for a task that does not exist and one that does.
    let mut e = ExecProcessRequest::new();
    e.id = "nope".into();
    e.exec_id = "e1".into();
    assert_eq!(code(task.exec(ctx(), &e).await), Code::NOT_FOUND);
    // A message over ttrpc's 4 MiB limit is refused, and the connection still works.
    let mut huge = create_req(&shim.id, &shim.bundle);
    huge.annotations.insert("big".into(), "x".repeat(5 << 20));
    assert!(sb.create_sandbox(ctx(), &huge).await.is_err());

    // Concurrent creates of one id: exactly one wins, the others are told it exists.
    let b3 = bundle(&shim.dir, "race", &["sleep", "1000"], None);
    let mut calls = Vec::new();
    for _ in 0..5 {
        let t = task.clone();
        let r = create_task("race", &b3, &rootfs);
        calls.push(tokio::spawn(async move { t.create(ctx(), &r).await }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(code::<()>(Err(e)), Code::ALREADY_EXISTS),
        }
    }
    assert_eq!(ok, 1, "one create of the id succeeds");
    // Concurrent deletes of a stopped task: one wins, the others get NOT_FOUND.
    start_task(&task, "race").await;
    kill_and_wait(&task, "race", false).await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let t = task.clone();
        calls.push(tokio::spawn(async move {
            t.delete(ctx(), &delete_req("race")).await
        }));
    }
    let mut deleted = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => deleted += 1,
            Err(e) => assert_eq!(code::<()>(Err(e)), Code::NOT_FOUND),
        }
    }
    assert_eq!(deleted, 1, "one delete of the task succeeds");
    assert!(!mounted(&b3.join("rootfs")));
    assert!(!runc_state("race").exists());

    // Concurrent starts of one created task: one starts it, the others are refused.
    let b4 = bundle(&shim.dir, "starts", &["sleep", "1000"], None);
    task.create(ctx(), &create_task("starts", &b4, &rootfs))
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let t = task.clone();
        calls.push(tokio::spawn(async move {
            let mut s = StartRequest::new();
            s.id = "starts".into();
            t.start(ctx(), &s).await
        }));
    }
    let mut started = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => started += 1,
            Err(e) => assert_eq!(code::<()>(Err(e)), Code::FAILED_PRECONDITION),
        }
    }
    assert_eq!(started, 1, "one start of the task succeeds");
    kill_and_wait(&task, "starts", false).await;
    task.delete(ctx(), &delete_req("starts")).await.unwrap();
    // Task.Shutdown while a sandbox lives: the shim stays, and serves.
    task.shutdown(ctx(), &Default::default()).await.unwrap();

    // Still serving, and nothing leaked.
    let mut p = PingRequest::new();
    p.sandbox_id = shim.id.clone();
    sb.ping_sandbox(ctx(), &p).await.unwrap();
    let mut fds_after = 0;
    // Exits drain their output for a moment and the event forwarder reconnects now and
    // then: wait (bounded) for the count to settle.
    let (deadline, mut every) = poll();
    while Instant::now() < deadline {
        fds_after = open_fds(server);
        if fds_after <= fds_before {
            break;
        }
        tokio::time::sleep(every.next()).await;
    }
    assert!(
        fds_after <= fds_before,
        "the shim's open descriptors: {fds_before} before, {fds_after} after: {:?}",
        fd_targets(server)
    );
    shutdown(&sb, &shim).await;
    // After the last ShutdownSandbox: a request gets an answer or a closed connection,
    // never a hang, and the shim is gone.
    let after = tokio::time::timeout(Duration::from_secs(10), sb.ping_sandbox(ctx(), &p)).await;
    assert!(
        matches!(after, Ok(Err(_))),
        "a request after shutdown: {after:?}"
    );
    eventually("the shim exits", || {
        cove::state::proc_start_time(server).is_none()
    })
    .await;
    assert!(!shim.socket().exists(), "the socket is removed");
}

/// A Task.Delete that fails (its rootfs would not unmount) can be retried: the task is not
/// left "being deleted" forever, with its shim and pause never exiting.
#[tokio::test]
async fn a_failed_delete_can_be_retried() {
    let armed = format!("{}=fail", cove::failpoint::TASK_DELETE_UNMOUNT);
    let shim = Shim::start_with("delretry", &[("COVE_FAILPOINT", armed.as_str())]);
    let (sb, task, _) = shim.clients().await;
    start_pod(&sb, &shim).await;
    let rootfs = rootfs(&shim.dir);
    let b = bundle(&shim.dir, "retried", &["sleep", "1000"], None);
    task.create(ctx(), &create_task("retried", &b, &rootfs))
        .await
        .unwrap();
    kill_and_wait(&task, "retried", false).await;
    let d = delete_req("retried");
    assert_eq!(code(task.delete(ctx(), &d).await), Code::INTERNAL);
    task.delete(ctx(), &d).await.expect("the retried delete");
    assert!(!mounted(&b.join("rootfs")));
    assert!(!runc_state("retried").exists());
    shutdown(&sb, &shim).await;
}

/// Where a test crashes the shim, and what exists at that moment.
const CRASH_POINTS: [&str; 5] = [
    cove::failpoint::START_SANDBOX_BEFORE_PAUSE,
    cove::failpoint::START_SANDBOX_SPAWNED,
    cove::failpoint::START_SANDBOX_AFTER_PAUSE,
    cove::failpoint::TASK_CREATE_BEFORE_RUNC,
    cove::failpoint::TASK_CREATE_AFTER_RUNC,
];

/// The shim dies at each step of StartSandbox and Task.Create, by SIGKILL and by a panic
/// (crash-only: abort); containerd's `delete` for the sandbox leaves nothing behind.
#[tokio::test]
async fn delete_after_a_crash_at_any_step_leaves_nothing() {
    for (point, how) in CRASH_POINTS
        .into_iter()
        .flat_map(|p| [(p, "kill"), (p, "panic")])
    {
        let tag = format!("{}{how}", point.replace([':', '-'], ""));
        let armed = if how == "kill" {
            format!("{point}=kill")
        } else {
            point.to_string()
        };
        let shim = Shim::start_with(&tag, &[("COVE_FAILPOINT", &armed)]);
        let server = shim.server_pid();
        let (sb, task, _) = shim.clients().await;
        let parent = PathBuf::from(format!("/cove-test/{}", shim.id));
        let mut req = create_req(&shim.id, &shim.bundle);
        req.options = Some(pod_options("crash", &parent.to_string_lossy())).into();
        sb.create_sandbox(ctx(), &req).await.unwrap();
        let mut st = StartSandboxRequest::new();
        st.sandbox_id = shim.id.clone();
        let started = sb.start_sandbox(ctx(), &st).await;
        let in_task = point.starts_with("task-create");
        assert_eq!(started.is_ok(), in_task, "{point}: StartSandbox");
        let rootfs = rootfs(&shim.dir);
        let b = bundle(&shim.dir, &format!("c-{tag}"), &["sleep", "1000"], None);
        let cid = format!("c-{tag}");
        if in_task {
            assert!(
                task.create(ctx(), &create_task(&cid, &b, &rootfs))
                    .await
                    .is_err(),
                "{point}: Task.Create"
            );
        }
        eventually(&format!("{point}: the shim is gone"), || {
            cove::state::proc_start_time(server).is_none()
        })
        .await;
        // What the crash left: every process in the pod's and the container's cgroups.
        let procs = |rel: &Path| -> Vec<u32> {
            let d = common::cg_dir("memory", rel);
            let mut v = Vec::new();
            for e in walk(&d) {
                let t = std::fs::read_to_string(e.join("cgroup.procs")).unwrap_or_default();
                v.extend(t.lines().filter_map(|l| l.parse::<u32>().ok()));
            }
            v
        };
        let left_procs: Vec<u32> = procs(&parent)
            .into_iter()
            .chain(procs(Path::new(&format!("/cove-test/{cid}"))))
            .collect();
        // Before the pause is ready, the crash may take it along: a pause whose readiness
        // pipe has no reader left exits.
        if ![
            cove::failpoint::START_SANDBOX_BEFORE_PAUSE,
            cove::failpoint::START_SANDBOX_SPAWNED,
        ]
        .contains(&point)
        {
            assert!(!left_procs.is_empty(), "{point}: the crash left processes");
        }

        // When a sandbox's shim dies, containerd runs `delete` for the sandbox only (its
        // containers' tasks get no `delete` of their own): that one must clean up both.
        let out = shim.delete();
        if !out.status.success() {
            let d = common::cg_dir("cpu", &parent.join(&shim.id));
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            let tasks = std::fs::read_to_string(d.join("tasks")).unwrap_or_default();
            let stats: Vec<String> = procs
                .lines()
                .chain(tasks.lines())
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/status"))
                        .unwrap_or_default()
                        .lines()
                        .take(8)
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect();
            panic!("{point}: sandbox delete: {out:?}\nprocs {procs:?} tasks {tasks:?}\n{stats:#?}");
        }

        for pid in &left_procs {
            eventually(&format!("{point}: process {pid} is gone"), || !alive(*pid)).await;
        }
        assert!(!mounted(&b.join("rootfs")), "{point}: rootfs unmounted");
        assert!(!runc_state(&cid).exists(), "{point}: runc state removed");
        assert!(
            !cgroup_exists(Path::new(&format!("/cove-test/{cid}"))),
            "{point}: container cgroup removed"
        );
        assert!(!cgroup_exists(&parent), "{point}: pod cgroup removed");
        // The pod's /dev/shm, which StartSandbox mounts beside the pause.
        assert!(
            !mounted(&shim.pod_shm()),
            "{point}: the pod's shm unmounted"
        );
        for f in [
            shim.bundle.join(cove::state::STATE_FILE),
            b.join(cove::task::container::TASK_FILE),
        ] {
            assert!(!f.exists(), "{point}: {} removed", f.display());
        }
        assert!(!shim.socket().exists(), "{point}: socket removed");
    }
}

/// A record that cannot be read does not make `delete` fail forever.
#[tokio::test]
async fn delete_survives_corrupt_records() {
    let shim = Shim::start("corrupt");
    let (sb, _, _) = shim.clients().await;
    let pause = start_pod(&sb, &shim).await;
    shim.kill_server().await;
    let record = shim.bundle.join(cove::state::STATE_FILE);
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, &text[..text.len() / 2]).unwrap();
    std::fs::write(
        shim.bundle.join(cove::task::container::TASK_FILE),
        "{\"id\": ",
    )
    .unwrap();
    let out = shim.delete();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("corrupt"),
        "delete says what it found: {said}"
    );
    assert!(!record.exists());
    assert!(shim.delete().status.success(), "and again");
    // The pod's /dev/shm sits where the bundle's layout puts it: unmounted all the same.
    assert!(
        !mounted(&shim.pod_shm()),
        "delete unmounts the pod's shm without a record"
    );
    // What it could not name is still there: the pause and its cgroup.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pause as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the pause is gone", || !alive(pause)).await;
    let parent = PathBuf::from(format!("/cove-test/{}", shim.id));
    let mut dirs: Vec<PathBuf> = common::layout().dirs(&parent.join(&shim.id));
    dirs.extend(common::layout().dirs(&parent));
    let _ = cove::cgroups::remove_dirs(&dirs);
}

/// Every directory under `d`, `d` first.
fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![d.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// A shim told to go (Task.Shutdown, nothing left to serve) that still has a client
/// connected must not be found by the next `start` for the same id: Docker restarts a
/// container under the same id at once. That `start` gets a new server, and the new
/// server's socket outlives the old server's exit.
#[tokio::test]
async fn a_start_for_the_same_id_after_shutdown_gets_a_new_server() {
    let shim = Shim::start("again");
    let old = shim.server_pid();
    // The old server and the pause helper it forked.
    let old_procs = shim.procs();
    let (_, task, c) = shim.clients().await;
    // A second client that stays connected: the old server waits (bounded) for it.
    let (_, _, lingering) = shim.clients().await;
    task.shutdown(ctx(), &Default::default()).await.unwrap();
    let address = common::shim::run_start(&shim.bundle, &shim.id);
    assert_eq!(address, shim.address, "the same id gets the same address");
    let servers: Vec<i32> = shim.servers().into_iter().filter(|p| *p != old).collect();
    assert_eq!(servers.len(), 1, "a new server, not the exiting one");
    let new = servers[0];
    drop((task, c, lingering));
    eventually("the old server and its helper exit", || {
        old_procs
            .iter()
            .all(|p| cove::state::proc_start_time(*p).is_none())
    })
    .await;
    assert!(
        shim.socket().exists(),
        "the new server's socket is left alone"
    );
    let (_, task, _c) = shim.clients().await;
    let mut st = StateRequest::new();
    st.id = "none".into();
    assert_eq!(
        code(task.state(ctx(), &st).await),
        Code::NOT_FOUND,
        "the new server answers"
    );
    assert_eq!(shim.server_pid(), new);
}

/// `start` writes the server's address in the bundle while the server comes up. When it
/// cannot (here a directory is in the way), `start` fails, and the server it forked goes
/// with it: containerd never learns its address, so nothing would ever ask it to exit.
#[tokio::test]
async fn a_start_that_cannot_record_the_address_leaves_no_server() {
    common::shim::require_root();
    let id = format!("cove-t-noaddr-{}", std::process::id());
    let bundle = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(bundle.join("address")).unwrap();
    let socket = common::shim::socket_for(&id);
    let out = std::process::Command::new(common::cove_bin())
        .args(common::shim::start_args(&id))
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", "")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start succeeded: {stderr}");
    assert!(
        stderr.contains("address"),
        "the error names the address: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no reply printed");
    assert!(!socket.exists(), "its socket {} was left", socket.display());
    // The server is reaped before `start` returns; the pause helper it forked may still
    // carry its command line until the helper's exec, and goes once the server is gone.
    // (The helper's command line is `cove-pause` once it has exec'd, and it leaves the
    // bundle for its own root just after: both are waited for.)
    eventually("the server and its pause helper exit", || {
        common::pids_with(&id).is_empty()
            && !std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c == bundle))
    })
    .await;
    assert!(
        bundle.join("address").is_dir(),
        "what was in the way is left alone"
    );
    let _ = std::fs::remove_dir_all(&bundle);
}

/// A server whose `start` was killed after it bound its socket (containerd's deadline
/// passed) is known to nobody: containerd removes the bundle, so no `delete` will find it.
/// It exits, removing its socket, when no request has come within its bound; a connection
/// that sends none (as `start` makes to see whether a server is there) does not hold it.
#[tokio::test]
async fn a_server_no_request_ever_comes_to_exits_and_removes_its_socket() {
    let shim = Shim::start_with("norequest", &[("COVE_FIRST_REQUEST_WITHIN_MS", "2000")]);
    let socket = PathBuf::from(shim.address.trim_start_matches("unix://"));
    let _silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    // The server, and the pause helper it forked before it said it was ready (the helper
    // carries the server's command line until its exec).
    let mut pids = common::pids_with(&shim.id);
    pids.extend(children_of(&pids));
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 2, "a server and its helper: {pids:?}");
    // Exited: gone, or a zombie its new parent has yet to reap.
    eventually("the server and its pause helper exit", || {
        pids.iter()
            .all(|p| cove::state::proc_start_time(*p).is_none())
    })
    .await;
    assert!(!socket.exists(), "its socket {} was left", socket.display());
}

/// `start` connects to see whether a server is already there, then prints its address; a
/// connection gives containerd the bound again to send its request, but does not claim the
/// server: with connections coming and no request, it stays, and goes once they stop.
#[tokio::test]
async fn connections_postpone_but_do_not_claim_a_new_server() {
    let shim = Shim::start_with("probed", &[("COVE_FIRST_REQUEST_WITHIN_MS", "3000")]);
    let socket = PathBuf::from(shim.address.trim_start_matches("unix://"));
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(5) {
        if let Err(e) = std::os::unix::net::UnixStream::connect(&socket) {
            panic!(
                "the server went while connections kept coming ({:?} in: {e})",
                began.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !common::pids_with(&shim.id).is_empty(),
        "the server went while connections kept coming"
    );
    eventually("the server exits and removes its socket", || {
        common::pids_with(&shim.id).is_empty() && !socket.exists()
    })
    .await;
}

/// The processes whose parent is one of `parents`.
fn children_of(parents: &[i32]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: i32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            parents.contains(&ppid).then_some(pid)
        })
        .collect()
}

/// The same bound does not touch a server that has had a request, however long it then
/// goes without another.
#[tokio::test]
async fn a_server_with_a_request_outlives_its_first_request_bound() {
    let shim = Shim::start_with("onerequest", &[("COVE_FIRST_REQUEST_WITHIN_MS", "2000")]);
    let (sb, _task, _c) = shim.clients().await;
    start_pod(&sb, &shim).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut st = SandboxStatusRequest::new();
    st.sandbox_id = shim.id.clone();
    let status = sb.sandbox_status(ctx(), &st).await.unwrap();
    assert_eq!(status.state, "SANDBOX_READY");
}

/// containerd reads the shim log from the bundle's `log` fifo; a `start` it has given up
/// on finds that fifo with no reader. The server comes up without its log instead of
/// blocking in the fifo's open before it could say it serves (where `start` gave up on it
/// after 20 s, or, killed itself, left it blocked there for good).
#[tokio::test]
async fn a_log_fifo_nobody_reads_does_not_hold_the_server_up() {
    common::shim::require_root();
    let id = format!("cove-t-deaflog-{}", std::process::id());
    let bundle = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&bundle).unwrap();
    nix::unistd::mkfifo(
        &bundle.join("log"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let socket = common::shim::socket_for(&id);
    let address =
        common::shim::run_start_with(&bundle, &id, &[("COVE_FIRST_REQUEST_WITHIN_MS", "1000")]);
    assert_eq!(
        Path::new(address.trim_start_matches("unix://")),
        socket,
        "start replied with its address"
    );
    // Nobody asks this server anything: it goes by itself.
    eventually("the server exits and removes its socket", || {
        common::pids_with(&id).is_empty() && !socket.exists()
    })
    .await;
    let _ = std::fs::remove_dir_all(&bundle);
}

/// Task.Create from a checkpoint runs nothing until Start restores it. A path that is not
/// absolute, or a directory runc's checkpoint did not write, is refused at Create; a
/// corrupt checkpoint (or a host where CRIU cannot run) fails that Start with the reason,
/// and the task, never restored, is deleted leaving nothing.
#[tokio::test]
async fn a_restore_from_a_corrupt_checkpoint_gets_an_error_and_leaves_nothing() {
    let shim = Shim::start("restore");
    let (sb, task, _) = shim.clients().await;
    start_pod(&sb, &shim).await;
    let rootfs = rootfs(&shim.dir);
    let b = bundle(&shim.dir, "restored", &["sleep", "1000"], None);

    let mut r = create_task("restored", &b, &rootfs);
    r.checkpoint = "relative/checkpoint".into();
    assert_eq!(code(task.create(ctx(), &r).await), Code::INVALID_ARGUMENT);
    // runc restores no incremental checkpoint.
    r.parent_checkpoint = "/parent".into();
    assert_eq!(code(task.create(ctx(), &r).await), Code::UNIMPLEMENTED);
    r.parent_checkpoint.clear();
    assert!(!mounted(&b.join("rootfs")));

    let image = shim.dir.join("corrupt-checkpoint");
    std::fs::create_dir_all(&image).unwrap();
    r.checkpoint = image.to_string_lossy().into_owned();
    assert_eq!(
        code(task.create(ctx(), &r).await),
        Code::INVALID_ARGUMENT,
        "an empty directory"
    );
    assert!(!mounted(&b.join("rootfs")));
    std::fs::write(image.join("inventory.img"), b"garbage").unwrap();
    std::fs::write(image.join("descriptors.json"), b"garbage").unwrap();
    assert_eq!(
        task.create(ctx(), &r).await.unwrap().pid,
        0,
        "no process yet"
    );
    let mut st = StateRequest::new();
    st.id = "restored".into();
    let state = task.state(ctx(), &st).await.unwrap();
    assert_eq!(
        (state.status.value(), state.pid),
        (Status::CREATED as i32, 0)
    );
    let mut k = KillRequest::new();
    k.id = "restored".into();
    k.signal = 9;
    assert_eq!(
        code(task.kill(ctx(), &k).await),
        Code::NOT_FOUND,
        "no process to kill"
    );

    let mut s = StartRequest::new();
    s.id = "restored".into();
    let err = task.start(ctx(), &s).await.unwrap_err();
    eprintln!("restore: {err:?}");
    assert!(
        format!("{err:?}").contains("restore of task restored"),
        "{err:?}"
    );
    assert!(!runc_state("restored").exists(), "runc keeps no container");
    let state = task.state(ctx(), &st).await.unwrap();
    assert_eq!(
        (state.status.value(), state.pid),
        (Status::CREATED as i32, 0)
    );
    // A failed restore is final: its output went with it.
    assert_eq!(
        code(task.start(ctx(), &s).await),
        Code::FAILED_PRECONDITION,
        "a second Start"
    );

    let d = task.delete(ctx(), &delete_req("restored")).await.unwrap();
    assert_eq!((d.pid, d.exit_status), (0, 0));
    assert!(!mounted(&b.join("rootfs")), "the rootfs is unmounted");
    assert!(!b.join("cove-task.json").exists(), "no task record is left");
    assert_eq!(code(task.state(ctx(), &st).await), Code::NOT_FOUND);
    shutdown(&sb, &shim).await;
}

/// A Delete that comes while a Start restores the task from its checkpoint (containerd's
/// cleanup after a Start whose caller gave up) waits for the restore's end, then deletes
/// the task, never restored; it is not refused, which would leave the task, and the
/// server with it, for good. Then the pod's shutdown lets the server exit.
#[tokio::test]
async fn a_delete_during_a_restore_waits_for_its_end_and_the_server_exits_after() {
    let armed = format!("{}=sleep:2000", cove::failpoint::TASK_START_RESTORE);
    let shim = Shim::start_with("delrestore", &[("COVE_FAILPOINT", armed.as_str())]);
    let (sb, task, _) = shim.clients().await;
    start_pod(&sb, &shim).await;
    let rootfs = rootfs(&shim.dir);
    let b = bundle(&shim.dir, "restoring", &["sleep", "1000"], None);
    let image = shim.dir.join("corrupt-checkpoint");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("inventory.img"), b"garbage").unwrap();
    std::fs::write(image.join("descriptors.json"), b"garbage").unwrap();
    let mut r = create_task("restoring", &b, &rootfs);
    r.checkpoint = image.to_string_lossy().into_owned();
    assert_eq!(task.create(ctx(), &r).await.unwrap().pid, 0);

    let starting = {
        let task = task.clone();
        tokio::spawn(async move {
            let mut s = StartRequest::new();
            s.id = "restoring".into();
            task.start(ctx(), &s).await
        })
    };
    // The restore has begun once CRIU's work directory is there.
    let work = b.join("criu-work");
    eventually("the restore has begun", || work.exists()).await;
    let d = task.delete(ctx(), &delete_req("restoring")).await;
    let started = starting.await.unwrap();
    let err = started.expect_err("a restore of garbage");
    assert!(
        format!("{err:?}").contains("restore of task restoring"),
        "{err:?}"
    );
    let d = d.expect("the Delete that waited for the restore");
    assert_eq!((d.pid, d.exit_status), (0, 0));
    let mut st = StateRequest::new();
    st.id = "restoring".into();
    assert_eq!(code(task.state(ctx(), &st).await), Code::NOT_FOUND);
    assert!(!mounted(&b.join("rootfs")), "the rootfs is unmounted");
    assert!(!work.exists(), "CRIU's work directory is removed");
    assert!(!runc_state("restoring").exists(), "runc keeps no container");

    shutdown(&sb, &shim).await;
    eventually("the server has exited", || shim.servers().is_empty()).await;
}

/// A pod shut down with tasks still in it (a delete that failed, or was never sent) takes
/// them along: their processes killed (a paused one thawed first), their rootfs unmounted,
/// runc's state removed, the tasks gone; and the server exits, as after any pod. Two
/// ShutdownSandbox at once (a retry while the first still runs) are both answered, the
/// second, which waited behind the first, as the sandbox gone (NOT_FOUND): the pod is
/// shut down and counted out of the server's lifetime once.
#[tokio::test]
async fn a_pod_shut_down_twice_at_once_with_tasks_left_takes_them_along() {
    let armed = format!("{}=sleep:1000", cove::failpoint::SHUTDOWN_SANDBOX_LOCKED);
    let shim = Shim::start_with("tasksleft", &[("COVE_FAILPOINT", armed.as_str())]);
    let (sb, task, _) = shim.clients().await;
    start_pod(&sb, &shim).await;
    let rootfs = rootfs(&shim.dir);
    let mut left = Vec::new();
    for id in ["running", "paused"] {
        let b = bundle(&shim.dir, id, &["sleep", "1000"], None);
        let pid = task
            .create(ctx(), &create_task(id, &b, &rootfs))
            .await
            .unwrap()
            .pid;
        start_task(&task, id).await;
        left.push((id, b, pid));
    }
    let mut p = PauseRequest::new();
    p.id = "paused".into();
    task.pause(ctx(), &p).await.unwrap();

    let mut sd = ShutdownSandboxRequest::new();
    sd.sandbox_id = shim.id.clone();
    // On two connections, as a retry comes on a new one.
    let (sb2, _, _) = shim.clients().await;
    let (a, b) = tokio::join!(
        sb.shutdown_sandbox(ctx(), &sd),
        sb2.shutdown_sandbox(ctx(), &sd)
    );
    let codes: Vec<Code> = [a, b]
        .into_iter()
        .map(|r| match r {
            Ok(_) => Code::OK,
            Err(ttrpc::Error::RpcStatus(s)) => s.code(),
            Err(e) => panic!("ShutdownSandbox: {e:?}"),
        })
        .collect();
    assert!(
        codes.contains(&Code::OK) && codes.contains(&Code::NOT_FOUND),
        "one shut the pod down, the other found it gone: {codes:?}"
    );
    for (id, b, pid) in &left {
        assert!(!alive(*pid), "{id}: its process is killed");
        assert!(!mounted(&b.join("rootfs")), "{id}: its rootfs is unmounted");
        assert!(!runc_state(id).exists(), "{id}: runc keeps no container");
        assert!(!b.join("cove-task.json").exists(), "{id}: no task record");
        assert!(!cgroup_exists(Path::new(&format!("/cove-test/{id}"))));
    }
    eventually("the server has exited", || shim.servers().is_empty()).await;
    assert!(!shim.socket().exists(), "the server's socket is removed");
}
