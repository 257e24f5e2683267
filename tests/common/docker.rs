//! A private Docker daemon on the harness's containerd: Debian's `dockerd` (docker.io 28.x
//! from Debian unstable: `runtimeType` in `daemon.json` needs Docker 23 or newer, and
//! bookworm ships 20.10) with its own socket, data root, exec root, containerd namespace
//! and bridge, and the `cove` runtime (`runtimeType: io.containerd.cove.v1`, which
//! containerd resolves to `containerd-shim-cove-v1` on its PATH, as on a user's node)
//! beside Docker's default `runc`. Images come from the test archives (`docker load`), never
//! from a registry: every `run` says `--pull never`. Dropping it removes every container,
//! stops the daemon and removes what it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

/// Debian's Docker, by absolute path: a `docker` elsewhere on PATH may be another build.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The containerd namespace Docker's containers live in.
pub const DOCKER_NS: &str = "moby";

static NEXT_BRIDGE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub struct Dockerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    bridge: String,
    containerd_sock: PathBuf,
    child: Option<Child>,
}

/// (exit code, stdout, stderr) of a command.
pub type Out = (i32, String, String);

impl Dockerd {
    /// Starts dockerd against `cd`, with the `cove` runtime configured, `live-restore` on,
    /// and the busybox test image loaded.
    pub fn start(cd: &Containerd, tag: &str) -> Dockerd {
        Dockerd::start_with(cd, tag, false)
    }

    /// As `start`, with Docker's experimental features on when `experimental` (what
    /// `docker checkpoint` needs).
    pub fn start_with(cd: &Containerd, tag: &str, experimental: bool) -> Dockerd {
        require(
            "Debian's docker.io (dockerd and docker in /usr/sbin, /usr/bin)",
            Path::new(DOCKERD).exists() && Path::new(DOCKER).exists(),
        );
        let v = Command::new(DOCKERD)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // "Docker version 28.5.2+dfsg4, build ..."
        let major: u32 = v
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        require(
            &format!(
                "dockerd 23 or newer for runtimeType runtimes (found: {})",
                v.trim()
            ),
            major >= 23,
        );
        let dir = PathBuf::from(format!("/tmp/cove-docker-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cli")).unwrap();
        // A bridge and a /24 of our own per daemon, outside the ranges the CNI harness
        // hands out (10.64-191.*), so that parallel tests never collide.
        let n = NEXT_BRIDGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bridge = format!("cd{}n{n}", std::process::id() % 100_000);
        let k = std::process::id() * 4 + n % 4;
        let gw = format!("10.{}.{}.1/24", 192 + (k / 256) % 32, k % 256);
        let _ = Command::new("ip")
            .args(["link", "del", &bridge])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["link", "add", &bridge, "type", "bridge"],
            vec!["addr", "add", &gw, "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            let st = Command::new("ip").args(&args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        let mut daemon = serde_json::json!({
            "runtimes": {"cove": {"runtimeType": "io.containerd.cove.v1"}},
            "live-restore": true,
        });
        if experimental {
            daemon["experimental"] = serde_json::json!(true);
        }
        if systemd_driver() {
            daemon["exec-opts"] = serde_json::json!(["native.cgroupdriver=systemd"]);
        }
        std::fs::write(dir.join("daemon.json"), daemon.to_string()).unwrap();
        let mut d = Dockerd {
            sock: dir.join("docker.sock"),
            dir,
            bridge,
            containerd_sock: cd.sock.clone(),
            child: None,
        };
        d.start_daemon();
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/images/busybox.tar");
        let (code, _, err) = d.docker(&["load", "-i", images.to_str().unwrap()]);
        assert_eq!(code, 0, "docker load: {err}");
        d
    }

    fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let d = &self.dir;
        let child = Command::new(DOCKERD)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--containerd")
            .arg(&self.containerd_sock)
            .arg("--containerd-namespace")
            .arg(DOCKER_NS)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(["--bridge", &self.bridge])
            // Nothing of the host's network configuration is touched.
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        // As long as containerd's start may take (a restart restores live containers).
        let up = poll_within(EVENTUALLY * 2, || {
            self.request("GET", "/_ping", None)
                .is_some_and(|(c, _)| c == 200)
        });
        if !up {
            panic!("dockerd did not come up; log:\n{}", self.log_tail());
        }
    }

    /// Stops dockerd (SIGTERM; with live-restore its containers keep running) and starts it
    /// again on the same configuration and data.
    pub fn restart(&mut self) {
        self.stop_daemon();
        self.start_daemon();
    }

    fn stop_daemon(&mut self) {
        use nix::sys::signal::{kill, Signal};
        if let Some(mut c) = self.child.take() {
            let _ = kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn cli(&self) -> Command {
        let mut c = self.cli_as(DOCKER);
        c.stdin(Stdio::null());
        c
    }

    /// `program` with the environment that points the docker CLI at this daemon.
    fn cli_as(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .env("DOCKER_CLI_HINTS", "false");
        c
    }

    /// Runs `docker ARGS`: (exit code, stdout, stderr).
    pub fn docker(&self, args: &[&str]) -> Out {
        output(self.cli().args(args))
    }

    /// Starts `docker ARGS` with its stdout piped (a stream, e.g. `docker events`).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cli()
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a docker command")
    }

    /// Runs `docker ARGS` with `input` on its stdin (then closed).
    pub fn docker_stdin(&self, args: &[&str], input: &str) -> Out {
        use std::io::Write;
        let mut child = self
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `docker ARGS` under a pseudo-terminal of `rows`x`cols` (util-linux `script`), as
    /// a person at a terminal does: what the terminal shows, carriage returns removed, and
    /// so is the `^@` that a terminal shows when it echoes a NUL: the docker CLI writes one
    /// to the container's terminal as it attaches, and whether the echo is still on by then
    /// is a race of the CLI's (seen with both runtimes).
    pub fn docker_tty(&self, args: &[&str], rows: u16, cols: u16) -> Out {
        let quoted: Vec<String> = args
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        let cmd = format!(
            "stty rows {rows} cols {cols}; exec {DOCKER} {}",
            quoted.join(" ")
        );
        let (code, out, err) = output(
            self.cli_as("script")
                .args(["-qec", &cmd, "/dev/null"])
                .stdin(Stdio::null()),
        );
        (code, out.replace('\r', "").replace("^@", ""), err)
    }

    /// `docker ARGS`, which must succeed: its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.docker(args);
        assert_eq!(code, 0, "docker {args:?}: {err}\n{}", self.log_tail());
        out.trim().to_string()
    }

    /// `METHOD path` on the Engine API, for what the CLI has no command for (resizing a
    /// detached terminal, an exec's state): the HTTP status code and the body.
    pub fn api(&self, method: &str, path: &str) -> (u16, String) {
        let (code, body) = self.api_bytes(method, path);
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// `METHOD path` on the Engine API: the HTTP status code and the body's bytes.
    fn api_bytes(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        self.answer(method, path, None)
    }

    /// `METHOD path` with a JSON body on the Engine API: the status code and the body.
    pub fn api_json(&self, method: &str, path: &str, body: &serde_json::Value) -> (u16, String) {
        let (code, reply) = self.answer(method, path, Some(body));
        (code, String::from_utf8_lossy(&reply).into_owned())
    }

    /// [`Dockerd::request`], which must get a reply.
    fn answer(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, Vec<u8>) {
        self.request(method, path, body).unwrap_or_else(|| {
            panic!("{method} {path}: no reply from dockerd (none, none in time, or not HTTP)")
        })
    }

    /// `POST /containers/NAME/exec` of `config` (what `docker exec` sends: the command,
    /// what is attached, whether it has a terminal): the new exec's id.
    pub fn exec_create(&self, name: &str, config: &serde_json::Value) -> String {
        let (code, body) = self.api_json("POST", &format!("/containers/{name}/exec"), config);
        assert_eq!(code, 201, "exec in {name}: {body}\n{}", self.log_tail());
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["Id"].as_str().map(String::from))
            .unwrap_or_else(|| panic!("exec in {name}: {body}"))
    }

    /// One HTTP/1.0 request on dockerd's socket (the connection ends with the reply, also
    /// a hijacked stream's): the status code and the body, or None if nothing answers.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Option<(u16, Vec<u8>)> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.sock).ok()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        // Bounded: for a wedged daemon, not a slow one (an exec or a wait ends with what it
        // runs or waits for, seconds here).
        s.set_read_timeout(Some(EVENTUALLY * 2)).ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).ok()?;
        let split = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&reply[..split]).into_owned();
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, reply[split + 4..].to_vec()))
    }

    /// `POST path` of a container action that must succeed (`/containers/NAME/stop?t=1`,
    /// `kill?signal=USR1`, `pause`, `unpause`, `restart?t=0`): what the CLI's command of
    /// that name sends, and what it takes as success (any 2xx or 3xx: a stop of a stopped
    /// container is 304). The Engine API, not the CLI, wherever the CLI's own part (terminal,
    /// attach, formatting) is not what is looked at: every CLI run starts a Go binary
    /// (measured with process accounting in the systemd leg: 1.7 s of CPU per run under
    /// emulation, a quarter of the Docker tests' CPU).
    pub fn post(&self, path: &str) {
        let (code, body) = self.api("POST", path);
        assert!(
            (200..400).contains(&code),
            "POST {path}: {code} {body}\n{}",
            self.log_tail()
        );
    }

    /// `docker rm -f NAME` through the Engine API.
    pub fn remove(&self, name: &str) {
        let (code, body) = self.api("DELETE", &format!("/containers/{name}?force=1"));
        assert!(
            code == 204 || code == 404,
            "remove {name}: {code} {body}\n{}",
            self.log_tail()
        );
    }

    /// `docker wait NAME` through the Engine API: the exit code, as the CLI prints it.
    pub fn wait(&self, name: &str) -> String {
        let (code, body) = self.api("POST", &format!("/containers/{name}/wait"));
        assert_eq!(code, 200, "wait {name}: {body}\n{}", self.log_tail());
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("wait {name}: {e}: {body}"));
        v["StatusCode"].to_string()
    }

    /// `docker exec NAME CMD...` (no terminal, no stdin) through the Engine API: the exit
    /// code and what the command wrote to its stdout.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> (i32, String) {
        let id = self.exec_create(
            name,
            &serde_json::json!({"AttachStdout": true, "AttachStderr": true, "Cmd": cmd}),
        );
        // Attached: the stream ends when the command has ended and its output is copied.
        let (code, out) = self.answer(
            "POST",
            &format!("/exec/{id}/start"),
            Some(&serde_json::json!({"Detach": false, "Tty": false})),
        );
        assert_eq!(code, 200, "exec start in {name}\n{}", self.log_tail());
        let mut exit = -1;
        let ended = poll_until(|| {
            let (_, body) = self.api("GET", &format!("/exec/{id}/json"));
            let v = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
            exit = v["ExitCode"].as_i64().unwrap_or(-1) as i32;
            v["Running"] == false
        });
        assert!(ended, "exec {cmd:?} in {name} never ended");
        (
            exit,
            String::from_utf8_lossy(&demux_stdout(&out)).into_owned(),
        )
    }

    /// What `docker logs NAME` prints on its stdout (the container's stdout; with a
    /// terminal, everything), read from the Engine API: for polls, where a CLI run per look
    /// (seconds under emulation) would crowd out what the poll waits for.
    pub fn stdout_of(&self, name: &str) -> String {
        let tty = self.inspect(name, "{{.Config.Tty}}") == "true";
        let (code, body) = self.api_bytes("GET", &format!("/containers/{name}/logs?stdout=1"));
        assert_eq!(code, 200, "logs of {name}\n{}", self.log_tail());
        if tty {
            return String::from_utf8_lossy(&body).into_owned();
        }
        String::from_utf8_lossy(&demux_stdout(&body)).into_owned()
    }

    /// `docker inspect -f FORMAT NAME` of a container, read from the Engine API's
    /// `GET /containers/NAME/json` (the same document the CLI formats): the script inspects
    /// and polls containers a few hundred times, and every CLI call starts a Go binary,
    /// which under emulation takes seconds. FORMAT is the subset of Go templates the tests
    /// use: `{{.Field.Field}}` and `{{range .List}}{{.}}{{end}}`, between literal text.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        let (code, body) = self.api("GET", &format!("/containers/{name}/json"));
        assert_eq!(code, 200, "inspect {name}: {body}\n{}", self.log_tail());
        let doc: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("inspect {name}: {e}: {body}"));
        render_template(format, &doc)
    }

    /// Polls `docker inspect` until `format` of `name` reads `want`; bounded, not timing.
    pub fn wait_for(&self, name: &str, format: &str, want: &str) {
        let mut last = String::new();
        if !poll_until(|| {
            last = self.inspect(name, format);
            last == want
        }) {
            panic!("{name}: {format} stayed {last:?}, never {want:?}");
        }
    }

    /// Where Docker puts a container's cgroup (relative to each hierarchy's root).
    pub fn cgroup_of(&self, id: &str) -> PathBuf {
        if systemd_driver() {
            PathBuf::from(format!("system.slice/docker-{id}.scope"))
        } else {
            PathBuf::from(format!("docker/{id}"))
        }
    }

    /// What is left on the host of container `id` run by `runtime`: processes, mounts,
    /// cgroups, the containerd bundle and the OCI runtime's state.
    pub fn left_of(&self, cd: &Containerd, runtime: &str, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mounts.lines().filter(|l| l.contains(id)) {
            left.push(format!("mount {l}"));
        }
        if !pids_with(id).is_empty() {
            left.push(format!("process naming {id}"));
        }
        for d in layout().dirs(&self.cgroup_of(id)) {
            if d.exists() {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        let bundle = cd
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(DOCKER_NS)
            .join(id);
        if bundle.exists() {
            left.push(format!("bundle {}", bundle.display()));
        }
        // Docker gives its runc runtime a root of its own; cove's runc keeps containerd's.
        let state = if runtime == "runc" {
            self.dir.join("exec/runtime-runc").join(DOCKER_NS).join(id)
        } else {
            Path::new("/run/containerd/runc").join(DOCKER_NS).join(id)
        };
        if state.exists() {
            left.push(format!("runc state {}", state.display()));
        }
        let scope = format!("docker-{id}.scope");
        if systemd_driver() && unit_loaded(&scope) {
            left.push(format!("unit {scope}"));
        }
        left
    }

    /// Shim processes of this containerd for `runtime`: cove's servers, or containerd's
    /// runc shims (v2) serving Docker's namespace.
    pub fn shims(&self, cd: &Containerd, runtime: &str) -> Vec<i32> {
        if runtime == "cove" {
            cd.cove_shims()
        } else {
            cd.runc_shims()
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Polls `f` until it holds, at the intervals of a [`Backoff`]: bounded (a minute, for
/// guests under emulation), not a timing assertion. Returns whether it came to hold; the
/// caller asserts what it observed.
pub fn poll_until(f: impl FnMut() -> bool) -> bool {
    poll_within(Duration::from_secs(60), f)
}

/// [`poll_until`] with a bound of its own.
pub fn poll_within(bound: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + bound;
    let mut every = Backoff::new(POLL_FIRST, POLL_MAX);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(every.next());
    }
}

/// The stdout frames of a stream without a terminal, which the Engine API frames: a
/// stream byte (1 for stdout), three zeros, a big-endian length, then that many bytes.
fn demux_stdout(body: &[u8]) -> Vec<u8> {
    let (mut out, mut rest) = (Vec::new(), body);
    while rest.len() >= 8 {
        let n = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + n).min(rest.len());
        if rest[0] == 1 {
            out.extend_from_slice(&rest[8..end]);
        }
        rest = &rest[end..];
    }
    out
}

fn output(cmd: &mut Command) -> Out {
    let out = cmd.output().expect("run a docker command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // live-restore keeps containers across a daemon stop: remove them first.
        if self.child.is_some() {
            if let Some((200, body)) = self.request("GET", "/containers/json?all=1", None) {
                let list: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                for c in list.as_array().into_iter().flatten() {
                    if let Some(id) = c["Id"].as_str() {
                        let _ = self.request("DELETE", &format!("/containers/{id}?force=1"), None);
                    }
                }
            }
        }
        self.stop_daemon();
        let d = self.dir.display().to_string();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep ' {d}/' /proc/self/mountinfo | cut -d' ' -f5 | sort -r | xargs -r -n1 umount -l 2>/dev/null; true"
            ))
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        if !std::thread::panicking() && std::env::var_os("COVE_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("dockerd log kept at {d}/dockerd.log");
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("rm -rf {d}/data {d}/exec 2>/dev/null"))
                .status();
        }
    }
}

/// `format` (see [`Dockerd::inspect`]) applied to `doc` as `docker inspect -f` prints it.
fn render_template(format: &str, doc: &serde_json::Value) -> String {
    fn field<'a>(doc: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
        let path = path
            .trim()
            .strip_prefix('.')
            .unwrap_or_else(|| panic!("field {path:?}"));
        path.split('.')
            .fold(doc, |v, key| v.get(key).unwrap_or(&serde_json::Value::Null))
    }
    fn text(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "<no value>".into(),
            other => other.to_string(),
        }
    }
    let mut out = String::new();
    let mut rest = format;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find("}}")
            .map(|c| open + c)
            .unwrap_or_else(|| panic!("unclosed action in {format:?}"));
        let action = rest[open + 2..close].trim();
        rest = &rest[close + 2..];
        if let Some(list) = action.strip_prefix("range ") {
            let (body, after) = rest
                .split_once("{{end}}")
                .unwrap_or_else(|| panic!("range without end in {format:?}"));
            assert_eq!(
                body, "{{.}}",
                "only {{{{range .X}}}}{{{{.}}}}{{{{end}}}} is supported"
            );
            for item in field(doc, list).as_array().into_iter().flatten() {
                out.push_str(&text(item));
            }
            rest = after;
        } else {
            out.push_str(&text(field(doc, action)));
        }
    }
    out.push_str(rest);
    out
}
