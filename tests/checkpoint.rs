//! Checkpoint and restore (CRIU through `runc checkpoint` and `runc restore`), on cove and on
//! containerd's runc shim in the same containerd, compared. CRIU runs where `criu check`
//! passes: not on every host (bookworm's CRIU 3.17 fails on kernel 6.18: "vdso: Unexpected
//! rt vDSO area bounds"), but in the guest kernel of `make test-vm`. Where it does not,
//! `scripts/test-filter.sh` leaves this suite out and says why; nextest reports it skipped.

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
    /// `ctr task kill -s KILL` of the restored task: the exit code `ctr task delete` says.
    killed: String,
    /// Shims of this runtime left once everything is removed.
    shims_left: usize,
}

fn count(cd: &Containerd, id: &str) -> Option<(String, u64)> {
    let pid = *cd.tasks().get(id)?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/root/tmp/count")).ok()?;
    let (token, n) = text.trim().split_once(' ')?;
    Some((token.to_owned(), n.parse().ok()?))
}

async fn through_ctr(cd: &Containerd, rt: &str) -> Seen {
    let short = if rt == COVE { "cove" } else { "runc" };
    let (id, restored, image) = (
        format!("ck-{short}"),
        format!("ck-{short}-restored"),
        format!("cove.test/checkpoint-{short}:latest"),
    );
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        rt,
        BUSYBOX,
        &id,
        "sh",
        "-c",
        COUNTER,
    ]);
    eventually(&format!("{id} counts"), || {
        count(cd, &id).is_some_and(|(_, n)| n >= 3)
    })
    .await;
    let (token, before) = count(cd, &id).expect("the counter's file");
    let (code, _, err) = cd.ctr_status(&["container", "checkpoint", "--task", &id, &image]);
    assert!(code == 0 || rt == COVE, "{rt}: checkpoint: {err}");
    let after = count(cd, &id);
    let ran_on = within(|| count(cd, &id).is_some_and(|c| Some(&c) != after.as_ref())).await;
    cd.ctr_kill_and_remove(&id).await;

    let (rcode, _, rerr) = cd.ctr_status(&["container", "restore", "--live", &restored, &image]);
    assert!(rcode == 0 || rt == COVE, "{rt}: restore: {rerr}");
    let status = cd
        .ctr(&["task", "ls"])
        .lines()
        .find(|l| l.starts_with(&restored))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| format!("no task ({rerr})"));
    let (mut same_process, mut goes_on) = (false, false);
    if status == "RUNNING" {
        eventually(&format!("{restored} writes its count"), || {
            count(cd, &restored).is_some()
        })
        .await;
        // The count it was checkpointed at is at least the one read before.
        let first = count(cd, &restored).expect("the restored counter's file");
        same_process = first.0 == token && first.1 >= before;
        eventually(&format!("{restored} counts on"), || {
            count(cd, &restored).is_some_and(|c| c.1 > first.1)
        })
        .await;
        goes_on = count(cd, &restored).is_some_and(|c| c.0 == token);
    }
    let mut killed = String::new();
    if cd.tasks().contains_key(&restored) {
        cd.ctr(&["task", "kill", "-s", "KILL", &restored]);
        eventually(&format!("{restored} stops"), || {
            cd.ctr(&["task", "ls"])
                .lines()
                .any(|l| l.starts_with(&restored) && l.contains("STOPPED"))
        })
        .await;
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
        killed,
        shims_left: if shims_gone { 0 } else { cd.cove_shims().len() },
    }
}

/// `ctr container checkpoint --task` of a running counter, then `ctr container restore
/// --live` into a new container: the restored counter is the same process, going on from
/// where it was, and is killed and removed like any other; on cove as on runc's shim.
#[tokio::test]
async fn a_counter_checkpointed_and_restored_through_ctr_goes_on_as_on_runc() {
    let cd = Containerd::start("checkpoint").await;
    let runc = through_ctr(&cd, RUNC).await;
    let cove = through_ctr(&cd, COVE).await;
    eprintln!("runc: {runc:#?}\ncove: {cove:#?}");
    assert_eq!(cove.checkpoint, (0, true));
    assert_eq!(cove.restore, (0, "RUNNING".to_string()));
    assert!(cove.same_process && cove.goes_on, "{cove:?}");
    assert_eq!(cove.killed, "137");
    assert_eq!(cove.shims_left, 0);
    assert_eq!(cove, runc);
}

/// What a user sees of CRI's CheckpointContainer (kubelet's forensic container checkpoint).
#[derive(Debug, PartialEq, Eq)]
struct CriSeen {
    /// Its result.
    result: Result<(), String>,
    /// Which of the entries a restore reads the archive holds: CRIU's images, the
    /// container's config and spec, its rootfs changes.
    archive: Vec<&'static str>,
    /// The container runs on after its checkpoint (with its counter's state).
    runs_on: bool,
}

const ARCHIVE: [&str; 4] = [
    "checkpoint/inventory.img",
    "config.dump",
    "spec.dump",
    "rootfs-diff.tar",
];

async fn through_cri(cd: &Containerd, handler: &str) -> CriSeen {
    use k8s_cri::v1::CheckpointContainerRequest;
    let cfg = cd.pod_config(&format!("ck-{handler}"));
    let pod = cd.run_pod(&cfg, handler).await;
    let c = cd
        .create_container(&pod, &cfg, container_config("counter", COUNTER))
        .await;
    cd.start_container(&c).await;
    let read = || async {
        let (out, _, _) = cd.exec_sync(&c, &["cat", "/tmp/count"]).await;
        let (t, n) = out.trim().split_once(' ')?;
        Some((t.to_owned(), n.parse::<u64>().ok()?))
    };
    let mut before = None;
    for _ in 0..100 {
        before = read().await;
        if before.as_ref().is_some_and(|b| b.1 >= 3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (token, n) = before.expect("the counter counts");
    let location = cd.dir.join(format!("checkpoint-{handler}.tar"));
    let result = cd
        .rt()
        .checkpoint_container(CheckpointContainerRequest {
            container_id: c.clone(),
            location: location.to_string_lossy().into_owned(),
            timeout: 300,
        })
        .await
        .map(drop)
        .map_err(|e| e.message().to_owned());
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
    let mut runs_on = false;
    for _ in 0..100 {
        if read().await.is_some_and(|a| a.0 == token && a.1 > n) {
            runs_on = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cd.stop_container(&c, 0).await;
    cd.remove_container(&c).await;
    cd.stop_pod(&pod).await;
    cd.remove_pod(&pod).await;
    let _ = std::fs::remove_file(&location);
    CriSeen {
        result,
        archive,
        runs_on,
    }
}

/// CRI's CheckpointContainer of a counter in a pod writes an archive holding what a
/// restore needs, and the container runs on; on cove as on the runc pod path.
#[tokio::test]
async fn a_container_in_a_pod_checkpointed_through_cri_runs_on_as_on_runc() {
    let cd = Containerd::start("cricheckpoint").await;
    let runc = through_cri(&cd, "runc").await;
    let cove = through_cri(&cd, "cove").await;
    eprintln!("runc: {runc:#?}\ncove: {cove:#?}");
    assert_eq!(cove.result, Ok(()));
    assert_eq!(cove.archive, ARCHIVE.to_vec());
    assert!(cove.runs_on);
    assert_eq!(cove, runc);
    eventually("cove's shims have exited", || cd.cove_shims().is_empty()).await;
}
