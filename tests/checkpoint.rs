//! Checkpoint and restore (CRIU through `runc checkpoint` and `runc restore`), on cove and on
//! containerd's runc shim in the same containerd, compared. CRIU runs where `criu check`
//! passes: not on every host (bookworm's CRIU 3.17 fails on kernel 6.18: "vdso: Unexpected
//! rt vDSO area bounds"), but in the guest kernel of `make test-vm`. Where it does not,
//! `scripts/test-filter.sh` leaves this suite out and says why; nextest reports it skipped.
//!
//! Every path a client takes: `ctr` (checkpoint and restore, and the checkpoints that are
//! refused), CRI (CheckpointContainer, and containerd 2.1 to 2.3's restore of the archive
//! into a pod) and Docker (`docker checkpoint create`, `docker start --checkpoint`).

mod common;

use common::*;

const COVE: &str = "io.containerd.cove.v1";
const RUNC: &str = "io.containerd.runc.v2";

/// A counter whose state is only in its memory: a token drawn when it starts and a count,
/// written to a file of its rootfs every tick (whole: written aside, then renamed). A
/// restored counter goes on with the same token; a restarted one would draw a new token
/// and count from 1.
const COUNTER: &str = "t=$(cat /proc/sys/kernel/random/uuid); i=0; \
    while true; do i=$((i+1)); echo \"$t $i\" > /tmp/count.new; mv /tmp/count.new /tmp/count; \
    sleep 0.2; done";

/// Polls `f` for about 20 s: whether it came true.
async fn within(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// What a user sees of a checkpoint and restore through `ctr`.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// `ctr c checkpoint --task`: its exit code; then whether the task ran on.
    checkpoint: (i32, bool),
    /// `ctr c restore --live` into a new container: its exit code and the task's status.
    restore: (i32, String),
    /// The restored counter: the same token, and a count no lower than the one read
    /// before the checkpoint; and it counts on.
    same_process: bool,
    goes_on: bool,
    /// `ctr task checkpoint --exit --image-path DIR --work-path DIR` of the restored task
    /// (runc's CheckpointOptions as containerd passes them): its exit code, whether CRIU's
    /// images are in the image path and its log in the work path, and whether the task
    /// stopped after it.
    direct: (i32, bool, bool, bool),
    /// The exit code `ctr task delete` says of the restored task then (a `ctr task kill
    /// -s KILL` first, had it run on).
    killed: String,
    /// Shims of this runtime left once everything is removed.
    shims_left: usize,
}

/// The counter's token and count, read through the root of its process `pid`. Polls read
/// here, never through `ctr` or an exec: each of those starts a Go binary, which under
/// emulation takes seconds and would crowd out what the poll waits for.
fn count(pid: u32) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/root/tmp/count")).ok()?;
    let (token, n) = text.trim().split_once(' ')?;
    Some((token.to_owned(), n.parse().ok()?))
}

/// The pid of task `id` (one `ctr task ls`).
fn pid_of(cd: &Containerd, id: &str) -> Option<u32> {
    task_row(cd, id).map(|(pid, _)| pid)
}

/// The status `ctr task ls` shows for task `id` (RUNNING, PAUSED, ...).
fn task_status(cd: &Containerd, id: &str) -> Option<String> {
    task_row(cd, id).map(|(_, status)| status)
}

/// Task `id`'s pid and status, from one `ctr task ls` (its columns: TASK PID STATUS).
fn task_row(cd: &Containerd, id: &str) -> Option<(u32, String)> {
    cd.ctr(&["task", "ls"]).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == id).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.to_owned()))
    })
}

async fn through_ctr(cd: &Containerd, rt: &str) -> Seen {
    let short = if rt == COVE { "cove" } else { "runc" };
    let (id, restored, image) = (
        format!("ck-{short}"),
        format!("ck-{short}-restored"),
        format!("cove.test/checkpoint-{short}:latest"),
    );
    let pid = counter(cd, rt, &id, false).await;
    eventually(&format!("{id} counts"), || {
        count(pid).is_some_and(|(_, n)| n >= 3)
    })
    .await;
    let (token, before) = count(pid).expect("the counter's file");
    let (code, _, err) = cd.ctr_status(&["container", "checkpoint", "--task", &id, &image]);
    assert!(code == 0 || rt == COVE, "{rt}: checkpoint: {err}");
    let after = count(pid);
    let ran_on = within(|| count(pid).is_some_and(|c| Some(&c) != after.as_ref())).await;
    cd.ctr_kill_and_remove(&id).await;

    let (rcode, _, rerr) = cd.ctr_status(&["container", "restore", "--live", &restored, &image]);
    assert!(rcode == 0 || rt == COVE, "{rt}: restore: {rerr}");
    let row = task_row(cd, &restored);
    let rpid = row.as_ref().map(|(pid, _)| *pid);
    let status = row.map_or_else(|| format!("no task ({rerr})"), |(_, status)| status);
    let (mut same_process, mut goes_on) = (false, false);
    if let (true, Some(rpid)) = (status == "RUNNING", rpid) {
        eventually(&format!("{restored} writes its count"), || {
            count(rpid).is_some()
        })
        .await;
        // The count it was checkpointed at is at least the one read before.
        let first = count(rpid).expect("the restored counter's file");
        same_process = first.0 == token && first.1 >= before;
        eventually(&format!("{restored} counts on"), || {
            count(rpid).is_some_and(|c| c.1 > first.1)
        })
        .await;
        goes_on = count(rpid).is_some_and(|c| c.0 == token);
    }
    let (images, work) = (
        cd.dir.join(format!("{short}-images")),
        cd.dir.join(format!("{short}-work")),
    );
    let mut direct = (-1, false, false, false);
    let mut killed = String::new();
    if let Some(rpid) = rpid {
        let (code, _, err) = cd.ctr_status(&[
            "task",
            "checkpoint",
            "--exit",
            "--image-path",
            &images.to_string_lossy(),
            "--work-path",
            &work.to_string_lossy(),
            &restored,
        ]);
        eprintln!("{rt}: ctr task checkpoint --exit: {code} {}", err.trim());
        let stopped = within(|| !alive(rpid)).await;
        direct = (
            code,
            images.join("inventory.img").is_file(),
            work.join("dump.log").is_file(),
            stopped,
        );
        if !stopped {
            cd.ctr_status(&["task", "kill", "-s", "KILL", &restored]);
        }
        cd.stopped(&restored, rpid).await;
        // ctr says the exit code of a task that did not exit 0.
        let (_, out, err) = cd.ctr_status(&["task", "delete", &restored]);
        killed = format!("{out}{err}")
            .split_once("exit code ")
            .map(|(_, c)| c.trim().trim_end_matches('"').to_owned())
            .unwrap_or_else(|| format!("{out}{err}"));
    }
    cd.ctr_status(&["container", "rm", &restored]);
    cd.ctr_status(&["image", "rm", &image]);
    let shims_gone = rt != COVE || within(|| cd.cove_shims().is_empty()).await;
    Seen {
        checkpoint: (code, ran_on),
        restore: (rcode, status),
        same_process,
        goes_on,
        direct,
        killed,
        shims_left: if shims_gone { 0 } else { cd.cove_shims().len() },
    }
}

/// `ctr container checkpoint --task` of a running counter, then `ctr container restore
/// --live` into a new container: the restored counter is the same process, going on from
/// where it was. Then `ctr task checkpoint --exit` with an image and a work path of its
/// own: CRIU's images and log land there, the task stops (SIGKILLed by CRIU, its exit
/// reported like any other), and it is removed; on cove as on runc's shim.
#[tokio::test]
async fn a_counter_checkpointed_and_restored_through_ctr_goes_on_as_on_runc() {
    let cd = Containerd::start("checkpoint").await;
    let runc = through_ctr(&cd, RUNC).await;
    let cove = through_ctr(&cd, COVE).await;
    eprintln!("runc: {runc:#?}\ncove: {cove:#?}");
    assert_eq!(cove.checkpoint, (0, true));
    assert_eq!(cove.restore, (0, "RUNNING".to_string()));
    assert!(cove.same_process && cove.goes_on, "{cove:?}");
    assert_eq!(cove.direct, (0, true, true, true));
    assert_eq!(cove.killed, "137");
    assert_eq!(cove.shims_left, 0);
    assert_eq!(cove, runc);
}

/// The entries of CRI's checkpoint archive a restore reads: CRIU's images, the
/// container's config and spec, its rootfs changes.
const ARCHIVE: [&str; 4] = [
    "checkpoint/inventory.img",
    "config.dump",
    "spec.dump",
    "rootfs-diff.tar",
];

/// A registry on loopback (Debian's `docker-registry`, the distribution project's), holding
/// the busybox test image: containerd 2.1's CRI restore pulls the image a checkpoint was
/// taken from by its digest, as a node does. Stopped when dropped.
struct Registry {
    child: std::process::Child,
    /// The test image's name there, e.g. `127.0.0.1:40123/cove/busybox:latest`.
    image: String,
}

impl Registry {
    async fn start(cd: &Containerd) -> Registry {
        require(
            "docker-registry (Debian's package of the distribution registry)",
            std::process::Command::new("docker-registry")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let root = cd.dir.join("registry");
        let config = cd.dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.display()
            ),
        )
        .expect("write the registry's config");
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(cd.dir.join("registry.log")).expect("registry log"))
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            image: format!("127.0.0.1:{port}/cove/busybox:latest"),
        };
        eventually("the registry listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        cd.ctr(&["image", "tag", BUSYBOX, &registry.image]);
        cd.ctr(&["image", "push", "--plain-http", &registry.image]);
        cd.ctr(&["image", "rm", &registry.image]);
        // Pulled through CRI, as kubelet does: the image's reference then has its digest.
        k8s_cri::v1::image_service_client::ImageServiceClient::new(cd.channel.clone())
            .pull_image(k8s_cri::v1::PullImageRequest {
                image: Some(k8s_cri::v1::ImageSpec {
                    image: registry.image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("PullImage {}: {e}", registry.image));
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a user sees of a container restored through CRI from a checkpoint archive.
#[derive(Debug, PartialEq, Eq)]
struct CriRestored {
    /// CheckpointContainer: which of [`ARCHIVE`] its archive holds, and whether the
    /// container ran on after it.
    archive: Vec<&'static str>,
    runs_on: bool,
    /// CreateContainer with the archive as its image, then StartContainer: the first error.
    restore: Result<(), String>,
    /// CRI's state of the restored container once started.
    state: i32,
    /// The counter's token and a count no lower than before its checkpoint, read by an
    /// exec in the restored container; and it counts on.
    same_process: bool,
    goes_on: bool,
    /// The restored process is in the pod's network, IPC and UTS namespaces (those its
    /// checkpointed predecessor was in) and sees the pod's hostname.
    in_pod_namespaces: bool,
    /// StopContainer (SIGKILL at once): the exit code CRI reports.
    exit_code: i32,
    /// A corrupt archive (CRIU's inventory emptied) restored into the pod: StartContainer
    /// fails, and (cove) its error names CRIU's log; nothing of it is left.
    corrupt_refused: bool,
    corrupt_log_named: bool,
    /// The same archive restored into the pod once it is stopped: CreateContainer's or
    /// StartContainer's error.
    into_stopped_pod: Result<(), String>,
}

async fn restored_through_cri(cd: &Containerd, handler: &str, image: &str) -> CriRestored {
    use k8s_cri::v1::CheckpointContainerRequest;
    let cfg = cd.pod_config(&format!("rs-{handler}"));
    let pod = cd.run_pod(&cfg, handler).await;
    let mut ccfg = container_config("counter", COUNTER);
    if let Some(spec) = ccfg.image.as_mut() {
        spec.image = image.to_owned();
    }
    let c = cd.create_container(&pod, &cfg, ccfg).await;
    cd.start_container(&c).await;
    let pid = pid_of(cd, &c).expect("the counter's task");
    eventually("the counter counts", || {
        count(pid).is_some_and(|b| b.1 >= 3)
    })
    .await;
    let (token, n) = count(pid).expect("the counter's file");
    let spaces = |pid: u32| ["net", "ipc", "uts"].map(|k| ns_of(pid, k)).to_vec();
    let pod_spaces = spaces(pid);
    let location = cd.dir.join(format!("restore-{handler}.tar"));
    cd.rt()
        .checkpoint_container(CheckpointContainerRequest {
            container_id: c.clone(),
            location: location.to_string_lossy().into_owned(),
            timeout: 300,
        })
        .await
        .unwrap_or_else(|e| panic!("{handler}: CheckpointContainer: {e}"));
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&location)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let entries: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .collect();
    let archive = ARCHIVE
        .into_iter()
        .filter(|e| entries.contains(e))
        .collect();
    // The checkpointed container runs on (kubelet's checkpoint is forensic).
    let runs_on = within(|| count(pid).is_some_and(|a| a.0 == token && a.1 > n)).await;
    cd.stop_container(&c, 0).await;
    cd.remove_container(&c).await;

    // The archive as the image of a new container of the same pod.
    let (created, restore) = restore_into(cd, &pod, &cfg, "counter", 1, &location).await;
    let mut seen = CriRestored {
        archive,
        runs_on,
        restore,
        state: -1,
        same_process: false,
        goes_on: false,
        in_pod_namespaces: false,
        exit_code: -1,
        corrupt_refused: false,
        corrupt_log_named: false,
        into_stopped_pod: Ok(()),
    };
    if let Some(r) = &created {
        let r = r.clone();
        seen.state = cd.container_status(&r).await.state;
        if let (Ok(()), Some(rpid)) = (&seen.restore, pid_of(cd, &r)) {
            // The file may still hold the checkpoint's (from the archive's rootfs changes):
            // judged is the first value the restored counter writes.
            let stale = count(rpid);
            let mut next = None;
            within(|| {
                next = count(rpid).filter(|c| Some(c) != stale.as_ref());
                next.is_some()
            })
            .await;
            seen.same_process = next.as_ref().is_some_and(|f| f.0 == token && f.1 >= n);
            seen.goes_on = within(|| {
                count(rpid)
                    .is_some_and(|a| a.0 == token && next.as_ref().is_some_and(|f| a.1 > f.1))
            })
            .await;
            let (host, _, _) = cd.exec_sync(&r, &["hostname"]).await;
            seen.in_pod_namespaces = spaces(rpid) == pod_spaces && host.trim() == cfg.hostname;
            cd.stop_container(&r, 0).await;
            seen.exit_code = cd.exited(&r).await.exit_code;
        }
        cd.remove_container(&r).await;
    }
    // A restore from a corrupt archive (CRIU's inventory emptied) into the same pod.
    let corrupt = cd.dir.join(format!("corrupt-{handler}.tar"));
    let unpacked = cd.dir.join(format!("corrupt-{handler}"));
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "set -e; mkdir -p \"$2\"; tar -xf \"$1\" -C \"$2\"; \
             : > \"$2\"/checkpoint/inventory.img; \
             tar -cf \"$3\" -C \"$2\" .; rm -rf \"$2\"",
        )
        .args([
            "sh",
            &location.to_string_lossy(),
            &unpacked.to_string_lossy(),
        ])
        .arg(&corrupt)
        .status()
        .expect("run sh");
    assert!(st.success(), "{handler}: make the corrupt archive");
    let (broken, refused) = restore_into(cd, &pod, &cfg, "broken", 0, &corrupt).await;
    if let Err(e) = &refused {
        eprintln!("{handler}: restore from a corrupt archive: {e}");
        seen.corrupt_refused = true;
        seen.corrupt_log_named = named_log(e).is_some();
    }
    if let Some(b) = &broken {
        cd.remove_container(b).await;
    }
    let _ = std::fs::remove_file(&corrupt);

    // A restore into the pod once it is stopped: the user's error, and nothing made.
    cd.stop_pod(&pod).await;
    let (late, refused) = restore_into(cd, &pod, &cfg, "late", 0, &location).await;
    seen.into_stopped_pod = refused.map_err(|e| without_ids(&e).replace(handler, "<handler>"));
    if let Some(l) = &late {
        cd.remove_container(l).await;
    }
    cd.remove_pod(&pod).await;
    assert_pod_gone(handler, &cfg, &pod, &c);
    for c in created.iter().chain(&broken).chain(&late) {
        assert_pod_gone(handler, &cfg, &pod, c);
    }
    let _ = std::fs::remove_file(&location);
    seen
}

/// CRI's restore of `archive` into `pod` as container `name` (attempt `attempt`):
/// CreateContainer with the archive as its image, then StartContainer. The container's id
/// if it was created, and the first error.
async fn restore_into(
    cd: &Containerd,
    pod: &str,
    cfg: &k8s_cri::v1::PodSandboxConfig,
    name: &str,
    attempt: u32,
    archive: &std::path::Path,
) -> (Option<String>, Result<(), String>) {
    let mut c = container_config(name, COUNTER);
    if let Some(spec) = c.image.as_mut() {
        spec.image = archive.to_string_lossy().into_owned();
    }
    if let Some(m) = c.metadata.as_mut() {
        m.attempt = attempt;
    }
    let created = cd
        .rt()
        .create_container(k8s_cri::v1::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(cfg.clone()),
        })
        .await;
    let id = match created {
        Ok(r) => r.into_inner().container_id,
        Err(e) => return (None, Err(e.message().to_owned())),
    };
    let started = cd
        .rt()
        .start_container(k8s_cri::v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map(drop)
        .map_err(|e| e.message().to_owned());
    (Some(id), started)
}

/// CRI's CheckpointContainer (kubelet's forensic container checkpoint) of a counter in a
/// pod writes an archive holding what a restore needs, and the container runs on. Then
/// CRI's restore (containerd 2.1 to 2.3; deprecated in 2.3, gone in 2.4): the counter is
/// removed, and a new container of the same pod is
/// created with the archive as its image. It is the same process, going on from where it
/// was, in the pod's namespaces; it stops and is removed like any other, and nothing of
/// the pod is left. A restore from a corrupt archive fails (cove's error names CRIU's log)
/// and a restore into the pod once it is stopped fails, and neither leaves anything; on
/// cove as on the runc pod path.
#[tokio::test]
async fn a_container_checkpointed_and_restored_through_cri_goes_on_in_its_pod_as_on_runc() {
    // containerd 2.2.7 and 2.3 turn CRI's restore off unless this is set (2.1 has no
    // such switch, and ignores the key).
    let cd = Containerd::start_with_runtime(
        "crirestore",
        "enable_experimental_restore_via_create = true",
    )
    .await;
    require(
        "containerd 2.1 to 2.3 (CRI's restore from a checkpoint archive was removed in 2.4)",
        containerd_at_least(2, 1, 0) && !containerd_at_least(2, 4, 0),
    );
    let registry = Registry::start(&cd).await;
    let runc = restored_through_cri(&cd, "runc", &registry.image).await;
    let cove = restored_through_cri(&cd, "cove", &registry.image).await;
    eprintln!("runc: {runc:#?}\ncove: {cove:#?}");
    assert_eq!(cove.archive, ARCHIVE.to_vec());
    assert!(cove.runs_on);
    assert_eq!(cove.restore, Ok(()));
    assert_eq!(
        cove.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    assert!(
        cove.same_process && cove.goes_on && cove.in_pod_namespaces,
        "{cove:?}"
    );
    assert_eq!(cove.exit_code, 137);
    assert!(cove.into_stopped_pod.is_err(), "{cove:?}");
    // containerd's runc shim names CRIU's log only for a failed checkpoint.
    assert!(cove.corrupt_refused && cove.corrupt_log_named, "{cove:?}");
    assert_eq!(
        CriRestored {
            corrupt_log_named: runc.corrupt_log_named,
            ..cove
        },
        runc
    );
    eventually("cove's shims have exited", || cd.cove_shims().is_empty()).await;
}

/// What a user sees of a `ctr container checkpoint --task` that cannot be taken.
#[derive(Debug, PartialEq, Eq)]
struct Refused {
    /// ctr's exit code, and whether its error names the reason (CRIU's log, or runc's
    /// word on the state).
    code: i32,
    says_why: bool,
    /// The task's status afterwards, and whether its counter still counts (after a
    /// resume, for a paused one).
    status: String,
    counts_on: bool,
    /// Whether the checkpoint image was left in containerd.
    image_left: bool,
    /// A failed checkpoint's error names CRIU's log, and it can be read there while the
    /// task is.
    log_kept: bool,
}

/// The CRIU log an error names: cove's `(CRIU's log: PATH)`, runc's shim's `path= PATH`.
fn named_log(err: &str) -> Option<std::path::PathBuf> {
    let rest = err
        .split_once("CRIU's log: ")
        .or_else(|| err.split_once("path= "))?
        .1;
    let path = rest.split([')', ' ', '\n', '"']).next()?;
    Some(path.into())
}

/// Starts a counter `id` on runtime `rt`, with a terminal when `tty`: its pid.
async fn counter(cd: &Containerd, rt: &str, id: &str, tty: bool) -> u32 {
    if tty {
        // `ctr run -t` wants a terminal of its own: `script` gives it one.
        let cmd = format!(
            "ctr --address {} -n {NS} run -d -t --runtime {rt} {BUSYBOX} {id} sh -c \"$COUNTER\"",
            cd.sock.display()
        );
        let st = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("COUNTER", COUNTER)
            .stdin(std::process::Stdio::null())
            .status()
            .expect("run script");
        assert!(st.success(), "{rt}: ctr run -t: {st}");
    } else {
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            rt,
            BUSYBOX,
            id,
            "sh",
            "-c",
            COUNTER,
        ]);
    }
    let pid = pid_of(cd, id).unwrap_or_else(|| panic!("{rt}: no task {id}"));
    eventually(&format!("{id} counts"), || {
        count(pid).is_some_and(|(_, n)| n >= 2)
    })
    .await;
    pid
}

/// A checkpoint of counter `id` of runtime `rt` in state `case`: paused, with an exec
/// running, or as it is (a terminal's); the task is left as it was.
async fn refused(cd: &Containerd, rt: &str, id: &str, pid: u32, case: &str) -> Refused {
    let short = if rt == COVE { "cove" } else { "runc" };
    let image = format!("cove.test/refused-{case}-{short}:latest");
    let id = id.to_owned();
    match case {
        "paused" => {
            cd.ctr(&["task", "pause", &id]);
        }
        "exec" => {
            cd.ctr(&[
                "task",
                "exec",
                "-d",
                "--exec-id",
                "sleeper",
                &id,
                "sleep",
                "1000",
            ]);
        }
        _ => {}
    }
    let (code, out, err) = cd.ctr_status(&["container", "checkpoint", "--task", &id, &image]);
    let text = format!("{out}{err}").to_lowercase();
    let says_why = ["criu", "dump.log", "paused", "frozen", "tty", "terminal"]
        .iter()
        .any(|w| text.contains(w));
    eprintln!(
        "{rt} {case}: ctr exit {code}: {}",
        format!("{out}{err}").trim()
    );
    let status = task_status(cd, &id).unwrap_or_default();
    if case == "paused" {
        cd.ctr(&["task", "resume", &id]);
    }
    let now = count(pid);
    let counts_on = within(|| count(pid).is_some_and(|c| Some(&c) != now.as_ref())).await;
    let image_left = cd.ctr(&["image", "ls", "-q"]).lines().any(|l| l == image);
    let log_kept = named_log(&err).is_some_and(|p| {
        std::fs::read_to_string(p).is_ok_and(|t| t.contains("Error") || t.contains("error"))
    });
    cd.ctr_status(&["image", "rm", &image]);
    Refused {
        code,
        says_why,
        status,
        counts_on,
        image_left,
        log_kept,
    }
}

/// A checkpoint of a paused task, of a task with an exec running and of a task with a
/// terminal (CRIU needs `--shell-job` for a terminal, which `ctr` does not ask for): each
/// ends as on runc's shim (taken, or refused with the reason), the task
/// runs on, and once it is removed nothing of it is left.
#[tokio::test]
async fn checkpoints_of_paused_exec_and_terminal_tasks_end_as_on_runc() {
    let cd = Containerd::start("refused").await;
    let mut failed = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for rt in [RUNC, COVE] {
        let short = if rt == COVE { "cove" } else { "runc" };
        // One counter for the paused and the exec case, one with a terminal.
        let (plain, tty) = (format!("rf-{short}"), format!("rf-tty-{short}"));
        let pid = counter(&cd, rt, &plain, false).await;
        for case in ["paused", "exec"] {
            seen.insert((case, rt), refused(&cd, rt, &plain, pid, case).await);
        }
        cd.ctr_kill_and_remove(&plain).await;
        let pid = counter(&cd, rt, &tty, true).await;
        seen.insert(
            ("terminal", rt),
            refused(&cd, rt, &tty, pid, "terminal").await,
        );
        cd.ctr_kill_and_remove(&tty).await;
    }
    for case in ["paused", "exec", "terminal"] {
        let (runc, cove) = (&seen[&(case, RUNC)], &seen[&(case, COVE)]);
        eprintln!("{case}: runc {runc:?}\n{case}: cove {cove:?}");
        let why = cove.says_why && (cove.log_kept || case == "paused");
        if cove != runc || !cove.counts_on || (cove.code != 0 && !why) {
            failed.push(format!("{case}: cove {cove:?}, runc {runc:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    eventually("cove's shims have exited", || cd.cove_shims().is_empty()).await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains("rf-"), "a task's mount is left");
}

/// What a user sees of `docker checkpoint create` and `docker start --checkpoint`.
#[derive(Debug, PartialEq, Eq)]
struct DockerSeen {
    /// `docker checkpoint create`: its exit code, and whether the container still runs
    /// after it.
    checkpoint: i32,
    running_after: bool,
    /// `docker start --checkpoint` of the stopped container: its exit code, whether the
    /// counter is the checkpointed process going on, and whether `docker exec` works in it.
    start: i32,
    same_process: bool,
    goes_on: bool,
    exec: bool,
    /// What is left once the container is removed.
    left: Vec<String>,
}

async fn through_docker(cd: &Containerd, d: &common::docker::Dockerd, runtime: &str) -> DockerSeen {
    let name = format!("ck-{runtime}");
    // Read through the init's root, its pid from the Engine API once per start: a `docker
    // exec` per poll takes seconds under emulation.
    let pid = || {
        d.inspect(&name, "{{.State.Pid}}")
            .parse::<u32>()
            .unwrap_or(0)
    };
    d.ok(&[
        "run",
        "-d",
        "--pull",
        "never",
        "--runtime",
        runtime,
        "--name",
        &name,
        // Docker restores no container with a network namespace of its own, on any runtime:
        // it binds the netns of the pid a task created from a checkpoint has before its
        // Start, which is 0 ("bind-mount /proc/0/ns/net": containerd/containerd#12141).
        "--network",
        "host",
        BUSYBOX,
        "-c",
        COUNTER,
    ]);
    let id = d.inspect(&name, "{{.Id}}");
    let first = pid();
    eventually(&format!("{name} counts"), || {
        count(first).is_some_and(|c| c.1 >= 3)
    })
    .await;
    let (token, before) = count(first).expect("the counter's file");
    let blobs = docker_blobs(cd);
    let (checkpoint, _, err) = d.docker(&["checkpoint", "create", &name, "cp1"]);
    eprintln!(
        "{runtime}: docker checkpoint create: {checkpoint} {}",
        err.trim()
    );
    // Docker handles the exit a checkpoint makes (runc's, which exits after it) on its own
    // time: read once Docker's state agrees with the process's.
    let running = || d.inspect(&name, "{{.State.Running}}") == "true";
    common::docker::poll_until(|| running() == alive(first));
    let running_after = running();
    if running_after {
        d.post(&format!("/containers/{name}/stop?t=0"));
    }
    // Docker unpacks the checkpoint containerd made into its own directory and deletes
    // containerd's image of it; `docker start --checkpoint` uploads that directory again,
    // as the same tar byte for byte, and fails with "already exists" (moby's writeContent
    // takes no existing blob) until containerd's garbage collector, scheduled seconds
    // apart, has removed the first, on any runtime. Seen on the runc side, whose
    // container is not stopped in between: the wait is for that collection.
    eventually(
        &format!("{runtime}: containerd collects the checkpoint image Docker deleted"),
        || docker_blobs(cd).is_subset(&blobs),
    )
    .await;
    let (start, _, err) = d.docker(&["start", "--checkpoint", "cp1", &name]);
    eprintln!(
        "{runtime}: docker start --checkpoint: {start} {}",
        err.trim()
    );
    let (mut same_process, mut goes_on, mut exec) = (false, false, false);
    if start == 0 {
        // The file may still hold what was written before the stop (for cove, whose
        // container ran on after its checkpoint, a count past the checkpoint's): judged is
        // the first value the restored counter writes.
        let restored = pid();
        let stale = count(restored);
        let mut next = None;
        within(|| {
            next = count(restored).filter(|c| Some(c) != stale.as_ref());
            next.is_some()
        })
        .await;
        same_process = next.as_ref().is_some_and(|f| f.0 == token && f.1 >= before);
        goes_on = within(|| {
            count(restored)
                .is_some_and(|c| c.0 == token && next.as_ref().is_some_and(|f| c.1 > f.1))
        })
        .await;
        exec = d.exec(&name, &["echo", "in"]).1.trim() == "in";
    }
    d.remove(&name);
    // Docker's runc shim may still be on its way out (up to 5 s after its server closes):
    // what is there after EVENTUALLY is left.
    let mut left = Vec::new();
    comes_to_hold(|| {
        left = d.left_of(cd, runtime, &id);
        left.is_empty()
    })
    .await;
    DockerSeen {
        checkpoint,
        running_after,
        start,
        same_process,
        goes_on,
        exec,
        left,
    }
}

/// The blobs in the content store of Docker's containerd namespace.
fn docker_blobs(cd: &Containerd) -> std::collections::BTreeSet<String> {
    cd.ctr_in(common::docker::DOCKER_NS, &["content", "ls", "-q"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Docker's checkpoints (experimental mode): `docker checkpoint create`, then `docker start
/// --checkpoint` of the stopped container restores the counter, which goes on from where
/// it was; once removed nothing of it is left; on cove as on Docker's runc. One difference
/// is Docker's, not the shim's: Docker sends checkpoint options (among them "exit after
/// the checkpoint", its default) only to containerd's runc shim, so a cove container runs
/// on after `docker checkpoint create`, as one on containerd's runc shim does when sent
/// none; it is stopped before it is started from the checkpoint. The container is on the
/// host's network: Docker 28 cannot restore one with a network namespace of its own, on
/// any runtime.
#[tokio::test]
async fn a_counter_checkpointed_and_restored_through_docker_goes_on_as_on_runc() {
    let cd = Containerd::start("dockercheckpoint").await;
    let d = common::docker::Dockerd::start_with(&cd, "checkpoint", true);
    let runc = through_docker(&cd, &d, "runc").await;
    let cove = through_docker(&cd, &d, "cove").await;
    eprintln!("runc: {runc:#?}\ncove: {cove:#?}");
    assert_eq!((cove.checkpoint, cove.start), (0, 0), "{cove:?}");
    assert!(cove.same_process && cove.goes_on && cove.exec, "{cove:?}");
    assert!(cove.left.is_empty(), "{:?}", cove.left);
    assert!(
        !runc.running_after && cove.running_after,
        "Docker sends checkpoint options (exit after it) only to containerd's runc shim; \
         if it now sends them to every runtime, cove's container stops too: {cove:?}"
    );
    assert_eq!(
        cove,
        DockerSeen {
            running_after: true,
            ..runc
        }
    );
    eventually("cove's shims have exited", || cd.cove_shims().is_empty()).await;
}
