//! Docker on cove: a real `dockerd` (Debian's docker.io) on the harness's private
//! containerd runs one script with `--runtime runc` (Docker's default: containerd's runc
//! shim) and with `--runtime cove`, and every observation a Docker user makes is compared
//! between the two. Two scripts: what a container's life shows through the CLI (exit codes
//! and output, logs, exec plain, under a pty and with stdin closed, signals, stop, restart
//! policies, a health check), and what the cgroup driver is part of (pause, stats, update,
//! top, restart, kill, an OOM kill); each with its `docker events` and what `docker rm -f`
//! leaves on the host. A third test restarts dockerd with `live-restore` under running
//! containers. (The VM's cgroupfs leg runs only the cgroup script: see the README.)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::docker::*;
use common::*;

const IMAGE: &str = BUSYBOX;

/// What a Docker user sees of a container's life that no cgroup is part of, gathered the
/// same way for each runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// `docker run --rm`: exit code and stdout (the last line has no newline and must
    /// still arrive).
    run_rm: (i32, String),
    /// `docker run --rm -it` under a 33x101 terminal: what it shows.
    run_tty: (i32, String),
    /// `docker run -d`, `docker wait`, `docker logs`: exit code, stdout, stderr.
    detached: (String, String, String),
    exec: (i32, String),
    /// `docker exec -it` under a 24x80 terminal.
    exec_tty: (i32, String),
    /// A detached terminal resized through the API, for the container and for an exec in
    /// it: the size each saw before and after, and the API's status codes.
    resized: (String, String, u16, u16),
    /// `docker exec -i` fed two lines, then stdin closed: cat ends.
    exec_stdin_closed: (i32, String),
    /// `docker kill -s USR1` on a trapping container: (still running, handler ran).
    kill_usr1: (String, bool),
    /// `docker stop` of a TERM-trapping container: exit code, handler ran.
    stop_trapped: (String, bool),
    /// `docker stop -t 1` of a TERM-ignoring container: exit code after the KILL.
    stop_ignored: String,
    /// `--restart on-failure:2`: restart count, final status, exit code, log.
    restarts: (String, String, String, String),
    /// A health check: the status it reaches.
    health: String,
    /// `docker events` of the script, per container (runtime suffix removed).
    events: BTreeMap<String, Vec<String>>,
    /// What `docker rm -f` and `--rm` left of every container of the script.
    left_behind: Vec<String>,
    /// Shims of this runtime still running after everything was removed.
    shims_left: usize,
}

/// What a Docker user sees where the cgroup driver is part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupSeen {
    /// `.State.Status` while paused, then after unpause; whether a paused container's
    /// processes are frozen (a counter does not advance), and thawed after unpause (it
    /// advances again).
    pause: (String, String, bool, bool),
    /// `docker stats --no-stream`: PIDs, memory limit, whether usage is above zero.
    stats: (String, String, bool),
    /// `docker update --memory`: Docker's record, and the limit seen inside.
    update: (String, String),
    /// `docker top`: (UID, CMD) rows, and whether its PID is `.State.Pid`.
    top: (Vec<(String, String)>, bool),
    /// `docker restart`, three times at once after another (a new task under the same id
    /// each time): status, a new init each time, exec afterwards.
    restart: (String, bool, (i32, String)),
    /// `docker kill` (SIGKILL by default): exit code.
    kill: String,
    /// An OOM kill: `docker run`'s exit code, `.State.OOMKilled`, `.State.ExitCode`.
    oom: (i32, String, String),
    events: BTreeMap<String, Vec<String>>,
    left_behind: Vec<String>,
    shims_left: usize,
}

fn limit_file() -> &'static str {
    if cgroup_v2() {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    }
}

/// One runtime's run of a script: its containers are named `<base>-<runtime>`, and every
/// one it made is removed and looked for on the host at the end.
struct Script<'a> {
    cd: &'a Containerd,
    d: &'a Dockerd,
    rt: &'a str,
    ids: Vec<String>,
}

impl Script<'_> {
    fn n(&self, base: &str) -> String {
        format!("{base}-{}", self.rt)
    }

    /// `docker run` of the image with `sh -c script`.
    fn run(&self, name: &str, extra: &[&str], script: &str) -> Out {
        let name = self.n(name);
        let mut args = vec![
            "run",
            "--pull",
            "never",
            "--runtime",
            self.rt,
            "--name",
            &name,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "-c", script]);
        self.d.docker(&args)
    }

    /// `docker run -d`, which must succeed: the container's name.
    fn run_d(&mut self, name: &str, extra: &[&str], script: &str) -> String {
        let mut e = vec!["-d"];
        e.extend_from_slice(extra);
        let (code, out, err) = self.run(name, &e, script);
        assert_eq!(
            code,
            0,
            "{}: docker run -d {name}: {err}\n{}",
            self.rt,
            self.d.log_tail()
        );
        self.ids.push(out.trim().to_string());
        self.n(name)
    }

    /// Removes every container of the script: what is left of them on the host, and how
    /// many of the runtime's shims still run.
    fn finish(self) -> (Vec<String>, usize) {
        let (cd, d, rt) = (self.cd, self.d, self.rt);
        for id in &self.ids {
            d.remove(id);
        }
        // The shims leave once containerd has closed their connections.
        poll_until(|| d.shims(cd, rt).is_empty());
        let shims_left = d.shims(cd, rt).len();
        let left = self
            .ids
            .iter()
            .flat_map(|id| d.left_of(cd, rt, id))
            .collect();
        (left, shims_left)
    }
}

/// The script of what no cgroup is part of, for one runtime.
fn exercise(mut s: Script) -> Seen {
    let d = s.d;
    let rt = s.rt;
    let (code, out, _) = s.run(
        "once",
        &["--rm"],
        "for i in 1 2 3; do echo line $i; done; printf 'last words'; exit 3",
    );
    let run_rm = (code, out);

    let tty = s.n("tty");
    let (code, out, _) = d.docker_tty(
        &[
            "run",
            "--rm",
            "-it",
            "--pull",
            "never",
            "--runtime",
            rt,
            "--name",
            &tty,
            IMAGE,
            "-c",
            "tty; stty size; exit 4",
        ],
        33,
        101,
    );
    // The daemon's own warning about this host's forwarding reaches the terminal too.
    let out: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("WARNING: IPv4 forwarding is disabled"))
        .collect();
    let run_tty = (code, out.join("\n"));

    let logs = s.run_d("logs", &[], "echo to-stdout; echo to-stderr >&2; exit 2");
    let wait_code = d.wait(&logs);
    // Docker marks a container exited after waiting at most 2 s for its output copies,
    // which go on after: on a busy host `docker logs` once had the runc side's stderr
    // line and not yet its stdout line. Read once both have landed (or after a while).
    let (mut lout, mut lerr) = (String::new(), String::new());
    poll_until(|| {
        (_, lout, lerr) = d.docker(&["logs", &logs]);
        lout.contains("to-stdout") && lerr.contains("to-stderr")
    });
    let detached = (wait_code, lout, lerr);

    let app = s.run_d(
        "app",
        &[],
        "trap 'echo got-usr1' USR1; trap 'echo got-term; exit 42' TERM; echo started; \
         while true; do sleep 1; done",
    );
    let (code, out) = d.exec(&app, &["sh", "-c", "echo in-exec; exit 5"]);
    let exec = (code, out);
    let (code, out, _) = d.docker_tty(&["exec", "-it", &app, "sh", "-c", "tty; stty size"], 24, 80);
    let exec_tty = (code, out);
    // A detached terminal, resized through the Engine API as an attached client would on
    // SIGWINCH (Task.ResizePty for the container, then for an exec in it).
    // (busybox `stty size` prints nothing for a terminal that has no size yet.)
    const UNTIL_RESIZED: &str =
        "sz() { s=$(stty size 2>/dev/null); echo ${s:-unsized}; }; sz; i=0; \
         until [ \"$(sz)\" = '30 90' ] || [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done; sz";
    let term = s.run_d(
        "term",
        &["-t"],
        &format!("{UNTIL_RESIZED}; exec sleep 1000"),
    );
    // Resized once the script has looked at its size (not before: it would never see the
    // terminal unsized).
    let term_logs = || d.stdout_of(&term).replace('\r', "");
    poll_until(|| term_logs().contains("unsized"));
    let code_init = d
        .api("POST", &format!("/containers/{term}/resize?h=30&w=90"))
        .0;
    poll_until(|| term_logs().lines().count() >= 2);
    let init_sizes = term_logs();
    // `docker exec -d -t`.
    let script = format!("({UNTIL_RESIZED}) > /tmp/sizes");
    let id = d.exec_create(
        &term,
        &serde_json::json!({"Tty": true, "Cmd": ["sh", "-c", script]}),
    );
    let (code, body) = d.api_json(
        "POST",
        &format!("/exec/{id}/start"),
        &serde_json::json!({"Detach": true, "Tty": true}),
    );
    assert_eq!(code, 200, "exec start in {term}: {body}");
    let exec_ids = || d.inspect(&term, "{{range .ExecIDs}}{{.}}{{end}}");
    poll_until(|| !exec_ids().is_empty());
    let exec_id = exec_ids();
    // The exec's first look at its size, read through the container's root (an exec to
    // read it would show in the events a varying number of times).
    let sizes = format!(
        "/proc/{}/root/tmp/sizes",
        d.inspect(&term, "{{.State.Pid}}")
    );
    poll_until(|| std::fs::read_to_string(&sizes).is_ok_and(|t| t.contains("unsized")));
    let code_exec = d
        .api("POST", &format!("/exec/{exec_id}/resize?h=30&w=90"))
        .0;
    poll_until(|| {
        let (_, body) = d.api("GET", &format!("/exec/{exec_id}/json"));
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["Running"] == false)
    });
    let exec_sizes = d.exec(&term, &["cat", "/tmp/sizes"]).1;
    let resized = (init_sizes, exec_sizes, code_init, code_exec);

    let (code, out, _) = d.docker_stdin(&["exec", "-i", &app, "cat"], "one\ntwo\n");
    let exec_stdin_closed = (code, out);

    d.post(&format!("/containers/{app}/kill?signal=USR1"));
    let usr1 = poll_until(|| d.stdout_of(&app).contains("got-usr1"));
    let kill_usr1 = (d.inspect(&app, "{{.State.Status}}"), usr1);

    let stop_grace = GRACE.to_string();
    d.post(&format!("/containers/{app}/stop?t={stop_grace}"));
    // Docker marks a container exited after waiting at most 2 s for its output copy: the
    // last line may land in its log after the stop has returned.
    let stop_trapped = (
        d.inspect(&app, "{{.State.ExitCode}}"),
        poll_until(|| d.stdout_of(&app).contains("got-term")),
    );
    let stubborn = s.run_d(
        "stubborn",
        &[],
        "trap '' TERM; echo trapped; while true; do sleep 1; done",
    );
    // `docker run -d` returns once runc's start has let the init go, which may be before
    // it has exec'd the shell: a SIGTERM then ends runc's init (143), on any runtime (seen
    // on a host busy with the guest legs). The stop waits until the trap is set.
    assert!(
        poll_until(|| d.stdout_of(&stubborn).contains("trapped")),
        "{}: the stubborn container never set its trap",
        s.rt
    );
    d.post(&format!("/containers/{stubborn}/stop?t=1"));
    let stop_ignored = d.inspect(&stubborn, "{{.State.ExitCode}}");

    let flaky = s.run_d("flaky", &["--restart", "on-failure:2"], "echo run; exit 1");
    d.wait_for(&flaky, "{{.RestartCount}} {{.State.Status}}", "2 exited");
    // The last run's line may land after its exit, as above.
    poll_until(|| d.stdout_of(&flaky).matches("run").count() >= 3);
    let restarts = (
        d.inspect(&flaky, "{{.RestartCount}}"),
        d.inspect(&flaky, "{{.State.Status}}"),
        d.inspect(&flaky, "{{.State.ExitCode}}"),
        d.stdout_of(&flaky),
    );

    let health = s.run_d(
        "health",
        &[
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
        "touch /tmp/ok; exec sleep 1000",
    );
    d.wait_for(&health, "{{.State.Health.Status}}", "healthy");
    let health = d.inspect(&health, "{{.State.Health.Status}}");

    let (left_behind, shims_left) = s.finish();
    Seen {
        run_rm,
        run_tty,
        detached,
        exec,
        exec_tty,
        resized,
        exec_stdin_closed,
        kill_usr1,
        stop_trapped,
        stop_ignored,
        restarts,
        health,
        events: BTreeMap::new(),
        left_behind,
        shims_left,
    }
}

/// The script of what the cgroup driver is part of, for one runtime.
fn exercise_cgroups(mut s: Script) -> CgroupSeen {
    let d = s.d;
    // A counter that a frozen container cannot advance.
    let counter = s.run_d(
        "counter",
        &[],
        // Renamed into place, so that a freeze between two writes still leaves a number.
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; \
         sleep 0.05; done",
    );
    let pid = d.inspect(&counter, "{{.State.Pid}}");
    let read_n = || std::fs::read_to_string(format!("/proc/{pid}/root/tmp/n")).unwrap_or_default();
    poll_until(|| !read_n().is_empty());
    d.post(&format!("/containers/{counter}/pause"));
    let paused = d.inspect(&counter, "{{.State.Status}}");
    let before = read_n();
    std::thread::sleep(Duration::from_millis(300));
    let frozen = before == read_n() && !before.is_empty();
    d.post(&format!("/containers/{counter}/unpause"));
    let thawed = poll_until(|| read_n() != before);
    let pause = (
        paused,
        d.inspect(&counter, "{{.State.Status}}"),
        frozen,
        thawed,
    );
    // Killed now, not at the end: its loop forks twenty times a second, which under
    // emulation costs what the rest of the script needs.
    d.post(&format!("/containers/{counter}/kill"));
    d.wait_for(&counter, "{{.State.Status}}", "exited");
    let kill = d.inspect(&counter, "{{.State.ExitCode}}");

    let sleeper = s.run_d("sleeper", &["-m", "32m"], "exec sleep 1000");
    // The CLI gives dockerd 2 s to deliver the first sample, and then fails with "timeout
    // waiting for stats" (on either runtime); under emulation beside other work that is
    // not always enough. A user runs it again, and so does the script.
    let stats_args = [
        "stats",
        "--no-stream",
        "--format",
        "{{.PIDs}}|{{.MemUsage}}",
        &sleeper,
    ];
    let mut st = String::new();
    let mut last = String::new();
    let answered = poll_within(EVENTUALLY, || {
        let (code, out, err) = d.docker(&stats_args);
        if code == 0 {
            st = out.trim().to_string();
            return true;
        }
        assert!(
            err.contains("timeout waiting for stats"),
            "docker {stats_args:?}: {err}\n{}",
            d.log_tail()
        );
        last = err;
        false
    });
    assert!(answered, "docker {stats_args:?}: {last}");
    let mut f = st.split('|');
    let pids = f.next().unwrap_or_default().to_string();
    let mem = f.next().unwrap_or_default();
    let (usage, limit) = mem.split_once(" / ").unwrap_or((mem, ""));
    let stats = (pids, limit.to_string(), !usage.starts_with("0B"));

    let (code, body) = d.api_json(
        "POST",
        &format!("/containers/{sleeper}/update"),
        &serde_json::json!({"Memory": 64 << 20, "MemorySwap": 64 << 20}),
    );
    assert_eq!(code, 200, "docker update {sleeper}: {body}");
    let update = (
        d.inspect(&sleeper, "{{.HostConfig.Memory}}"),
        d.exec(&sleeper, &["cat", limit_file()])
            .1
            .trim()
            .to_string(),
    );

    let top_out = d.ok(&["top", &sleeper]);
    let init = d.inspect(&sleeper, "{{.State.Pid}}");
    let mut rows = Vec::new();
    let mut top_pid_is_init = false;
    for l in top_out.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 8 {
            top_pid_is_init |= f[1] == init;
            rows.push((f[0].to_string(), f[7..].join(" ")));
        }
    }
    let top = (rows, top_pid_is_init);

    let mut inits = vec![init];
    for _ in 0..3 {
        d.post(&format!("/containers/{sleeper}/restart?t=0"));
        inits.push(d.inspect(&sleeper, "{{.State.Pid}}"));
    }
    let all_new = inits.iter().collect::<std::collections::HashSet<_>>().len() == inits.len();
    let (code, out) = d.exec(&sleeper, &["echo", "restarted"]);
    let restart = (
        d.inspect(&sleeper, "{{.State.Status}}"),
        all_new,
        (code, out),
    );

    let (code, _, _) = s.run(
        "hog",
        &["-m", "16m", "--memory-swap", "16m"],
        "tail /dev/zero",
    );
    let hog = s.n("hog");
    s.ids.push(d.inspect(&hog, "{{.Id}}"));
    // Docker sets OOMKilled when it handles the `oom` event, which containerd's runc shim
    // may publish after the exit (below): the flag is read once it is set, or after a
    // while (a shim that missed the kill never sets it; that case is put right below).
    poll_within(Duration::from_secs(20), || {
        d.inspect(&hog, "{{.State.OOMKilled}}") == "true"
    });
    let oom = (
        code,
        d.inspect(&hog, "{{.State.OOMKilled}}"),
        d.inspect(&hog, "{{.State.ExitCode}}"),
    );

    let (left_behind, shims_left) = s.finish();
    CgroupSeen {
        pause,
        stats,
        update,
        top,
        restart,
        kill,
        oom,
        events: BTreeMap::new(),
        left_behind,
        shims_left,
    }
}

fn unix_now() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// The container events of `docker events`, streamed (dockerd keeps only its last 256
/// events for a later `--since` query, fewer than the script makes), until a container
/// named `end_marker` is created.
struct EventStream {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<serde_json::Value>>,
}

impl EventStream {
    fn start(d: &Dockerd, since: &str, end_marker: &str) -> EventStream {
        use std::io::BufRead;
        let mut child = d.spawn(&[
            "events",
            "--since",
            since,
            "--filter",
            "type=container",
            "--format",
            "{{json .}}",
        ]);
        let out = child.stdout.take().expect("events stdout");
        let marker = end_marker.to_string();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).expect("an event as JSON");
                let end = v["Actor"]["Attributes"]["name"] == marker.as_str();
                seen.push(v);
                if end {
                    break;
                }
            }
            seen
        });
        EventStream { child, reader }
    }

    /// Creates the end marker, waits for its event and stops the stream: every event.
    fn finish(mut self, d: &Dockerd, end_marker: &str) -> Vec<serde_json::Value> {
        d.ok(&["create", "--pull", "never", "--name", end_marker, IMAGE]);
        let seen = self.reader.join().expect("the events reader");
        let _ = self.child.kill();
        let _ = self.child.wait();
        d.ok(&["rm", end_marker]);
        seen
    }
}

/// The events of runtime `rt`'s containers, per container (name suffix removed), in
/// order. The health check's own execs run on a timer, so how many there were depends on
/// timing: they, repeated health statuses and those after the container was killed are
/// left out.
fn events_of(all: &[serde_json::Value], rt: &str) -> BTreeMap<String, Vec<String>> {
    let suffix = format!("-{rt}");
    let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut health_execs = std::collections::HashSet::new();
    for v in all {
        let attrs = &v["Actor"]["Attributes"];
        let name = attrs["name"].as_str().unwrap_or_default();
        let Some(base) = name.strip_suffix(&suffix) else {
            continue;
        };
        let action = v["Action"].as_str().unwrap_or_default().to_string();
        let exec_id = attrs["execID"].as_str().unwrap_or_default().to_string();
        if action.starts_with("exec_") && action.contains("test -f /tmp/ok") {
            health_execs.insert(exec_id);
            continue;
        }
        if action == "exec_die" && health_execs.contains(&exec_id) {
            continue;
        }
        let list = per.entry(base.to_string()).or_default();
        if action.starts_with("health_status") && list.last() == Some(&action) {
            continue;
        }
        // A check that runs while `rm -f` kills the container fails (`unhealthy` between
        // `kill` and `die`) or does not run at all, as the timer falls: seen with cove.
        if action.starts_with("health_status") && list.iter().any(|a| a == "kill") {
            continue;
        }
        // `run -it`: the CLI resizes the terminal once the container has started; a
        // container that is already gone by then gets no resize (a race of the CLI's, seen
        // with both runtimes). The detached terminal is resized deterministically.
        if base == "tty" && action == "resize" {
            continue;
        }
        list.push(action);
    }
    // `docker stop` and `restart` publish `stop` when the stop call returns and `die` when
    // the exit reaches the daemon: two goroutines, either first (seen with both runtimes
    // in the systemd guest). The pair is put in one order.
    for list in per.values_mut() {
        for i in 1..list.len() {
            if list[i - 1] == "stop" && list[i] == "die" {
                list.swap(i - 1, i);
            }
        }
    }
    per
}

/// Runs `script` for runc and for cove at once on one dockerd (tagged `tag`) with its
/// `docker events` streamed: (runc's, cove's, every container event).
fn side_by_side<T: Send>(tag: &str, script: fn(Script) -> T) -> (T, T, Vec<serde_json::Value>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cd = rt.block_on(Containerd::start(tag));
    let d = Dockerd::start(&cd, "script");
    let events = EventStream::start(&d, &unix_now(), "end-of-script");
    let (runc, cove) = std::thread::scope(|s| {
        let side = |r| {
            let (cd, d) = (&cd, &d);
            move || {
                script(Script {
                    cd,
                    d,
                    rt: r,
                    ids: Vec::new(),
                })
            }
        };
        let runc = s.spawn(side("runc"));
        let cove = s.spawn(side("cove"));
        (runc.join().unwrap(), cove.join().unwrap())
    });
    let events = events.finish(&d, "end-of-script");
    (runc, cove, events)
}

#[test]
fn docker_behaves_the_same_on_cove_as_on_runc() {
    let (mut runc, mut cove, events) = side_by_side("docker", exercise);
    runc.events = events_of(&events, "runc");
    cove.events = events_of(&events, "cove");
    eprintln!("cove: {cove:#?}");

    // What a Docker user expects, checked on cove itself...
    assert_eq!(
        cove.run_rm,
        (3, "line 1\nline 2\nline 3\nlast words".into())
    );
    assert_eq!(cove.run_tty, (4, "/dev/pts/0\n33 101".into()));
    assert_eq!(
        cove.detached,
        ("2".into(), "to-stdout\n".into(), "to-stderr\n".into())
    );
    assert_eq!(cove.exec, (5, "in-exec\n".into()));
    assert_eq!(cove.exec_tty, (0, "/dev/pts/0\n24 80\n".into()));
    assert_eq!(
        cove.resized,
        (
            "unsized\n30 90\n".into(),
            "unsized\n30 90\n".into(),
            200,
            200
        )
    );
    assert_eq!(cove.exec_stdin_closed, (0, "one\ntwo\n".into()));
    assert_eq!(cove.kill_usr1, ("running".into(), true));
    assert_eq!(cove.stop_trapped, ("42".into(), true));
    assert_eq!(cove.stop_ignored, "137");
    assert_eq!(
        cove.restarts,
        (
            "2".into(),
            "exited".into(),
            "1".into(),
            "run\nrun\nrun\n".into()
        )
    );
    assert_eq!(cove.health, "healthy");
    let names: Vec<&str> = cove.events.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        ["app", "flaky", "health", "logs", "once", "stubborn", "term", "tty"],
        "events of every container"
    );
    let count = |c: &str, a: &str| cove.events[c].iter().filter(|e| *e == a).count();
    assert_eq!((count("flaky", "start"), count("flaky", "die")), (3, 3));
    assert_eq!(count("app", "exec_die"), 3);
    assert_eq!(count("health", "health_status: healthy"), 1);
    assert!(cove.left_behind.is_empty(), "{:?}", cove.left_behind);
    assert_eq!(cove.shims_left, 0);

    // ...and the same as Docker's default runtime, observation by observation.
    assert_eq!(cove, runc);
}

/// Pause, stats, update, top, restart, kill and an OOM kill, where the cgroup driver
/// (cgroupfs or systemd, v1 or v2) is part of what a user sees.
#[test]
fn docker_cgroup_behaviour_is_the_same_on_cove_as_on_runc() {
    let (mut runc, mut cove, events) = side_by_side("dockercg", exercise_cgroups);
    runc.events = events_of(&events, "runc");
    cove.events = events_of(&events, "cove");
    eprintln!("cove: {cove:#?}");

    assert_eq!(cove.pause, ("paused".into(), "running".into(), true, true));
    assert_eq!(cove.stats.0, "1");
    assert_eq!(cove.stats.1, "32MiB");
    assert!(cove.stats.2, "memory usage reported: {:?}", cove.stats);
    assert_eq!(
        cove.update,
        ((64u64 << 20).to_string(), (64u64 << 20).to_string())
    );
    assert_eq!(cove.top, (vec![("root".into(), "sleep 1000".into())], true));
    assert_eq!(
        cove.restart,
        ("running".into(), true, (0, "restarted\n".into()))
    );
    assert_eq!(cove.kill, "137");
    assert_eq!(cove.oom, (137, "true".into(), "137".into()));
    let names: Vec<&str> = cove.events.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        ["counter", "hog", "sleeper"],
        "events of every container"
    );
    let count = |c: &str, a: &str| cove.events[c].iter().filter(|e| *e == a).count();
    assert_eq!(
        (count("counter", "pause"), count("counter", "unpause")),
        (1, 1)
    );
    assert_eq!(count("sleeper", "restart"), 3);
    let hog = &cove.events["hog"];
    assert!(hog.contains(&"oom".to_string()), "an oom event: {hog:?}");
    let at = |a: &str| hog.iter().position(|e| e == a);
    assert!(
        at("oom").is_some() && at("oom") < at("die"),
        "oom before die: {hog:?}"
    );
    assert!(cove.left_behind.is_empty(), "{:?}", cove.left_behind);
    assert_eq!(cove.shims_left, 0);

    // containerd's runc shim publishes an OOM kill from its own event loop, apart from the
    // exit, so Docker may see `die` before `oom` (seen here once, on a host busy with a
    // build). cove's order is asserted above; runc's pair is put in cove's order.
    if let Some(list) = runc.events.get_mut("hog") {
        if let Some(i) = list.windows(2).position(|w| w == ["die", "oom"]) {
            list.swap(i, i + 1);
        }
    }
    // Under the systemd driver containerd's runc shim can miss the OOM kill altogether
    // (no `oom` event, OOMKilled false: seen in the systemd guest), as the CRI tests name
    // for the runc pod path. cove's are asserted above; runc's are then put as cove's.
    if runc.oom.1 == "false"
        && !runc
            .events
            .get("hog")
            .is_some_and(|l| l.iter().any(|e| e == "oom"))
    {
        runc.oom = cove.oom.clone();
        if let Some(list) = runc.events.get_mut("hog") {
            if let Some(i) = list.iter().position(|e| e == "die") {
                list.insert(i, "oom".to_string());
            }
        }
    }
    // ...and the same as Docker's default runtime, observation by observation.
    assert_eq!(cove, runc);
}

/// What a user sees of a running container across a dockerd restart with live-restore.
#[derive(Debug, PartialEq, Eq)]
struct Restored {
    /// The same init process before and after, and `.State.Status` after.
    same_pid: bool,
    status: String,
    /// `docker exec` after the restart.
    exec: (i32, String),
    /// Output written after the restart reaches `docker logs` (the daemon reopened the
    /// container's stdio).
    logs_go_on: bool,
    /// `docker stop` after the restart: exit code, and the TERM handler's last words.
    stop: (String, bool),
    left_behind: Vec<String>,
    shims_left: usize,
}

/// The highest `tick N` in a log.
fn last_tick(log: &str) -> i64 {
    log.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .max()
        .unwrap_or(-1)
}

#[test]
fn containers_outlive_a_dockerd_restart_with_live_restore() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cd = rt.block_on(Containerd::start("dlive"));
    let mut d = Dockerd::start(&cd, "live");
    let runtimes = ["runc", "cove"];
    let mut before = Vec::new();
    for r in runtimes {
        let name = format!("ticker-{r}");
        let id = d.ok(&[
            "run",
            "-d",
            "--pull",
            "never",
            "--runtime",
            r,
            "--name",
            &name,
            IMAGE,
            "-c",
            "trap 'echo bye; exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); \
             sleep 0.2; done",
        ]);
        d.wait_for(&name, "{{.State.Status}}", "running");
        before.push((name, id));
    }
    let pids: Vec<String> = before
        .iter()
        .map(|(n, _)| d.inspect(n, "{{.State.Pid}}"))
        .collect();
    let ticks: Vec<i64> = before
        .iter()
        .map(|(n, _)| last_tick(&d.stdout_of(n)))
        .collect();
    d.restart();

    let mut seen = Vec::new();
    for (i, (name, id)) in before.iter().enumerate() {
        let r = runtimes[i];
        let same_pid = d.inspect(name, "{{.State.Pid}}") == pids[i];
        let status = d.inspect(name, "{{.State.Status}}");
        let (code, out) = d.exec(name, &["echo", "after"]);
        let logs_go_on = poll_until(|| last_tick(&d.stdout_of(name)) > ticks[i] + 5);
        d.post(&format!("/containers/{name}/stop?t={GRACE}"));
        let stop = (
            d.inspect(name, "{{.State.ExitCode}}"),
            poll_until(|| d.stdout_of(name).contains("bye")),
        );
        // `docker rm` (not forced): the container has stopped.
        let (rm, body) = d.api("DELETE", &format!("/containers/{name}"));
        assert_eq!(rm, 204, "docker rm {name}: {body}");
        poll_until(|| d.shims(&cd, r).is_empty());
        let shims_left = d.shims(&cd, r).len();
        seen.push(Restored {
            same_pid,
            status,
            exec: (code, out),
            logs_go_on,
            stop,
            left_behind: d.left_of(&cd, r, id),
            shims_left,
        });
    }
    let (runc, cove) = (&seen[0], &seen[1]);
    eprintln!("cove: {cove:#?}");
    assert_eq!(
        cove,
        &Restored {
            same_pid: true,
            status: "running".into(),
            exec: (0, "after\n".into()),
            logs_go_on: true,
            stop: ("0".into(), true),
            left_behind: vec![],
            shims_left: 0,
        }
    );
    assert_eq!(cove, runc);
}
