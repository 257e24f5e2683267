//! Floors: the least the kernel and runc take for what cove does, with no containerd and no
//! shim, measured in the same run as cove's figure and alternating with it.
//!
//! - **shim spawn**: fork and exec of a static binary that exits at once, waited for (a shim
//!   `start` spawns its server and waits for it to say it serves).
//! - **sandbox**: the pod cgroup and the pause's cgroup under it made in every hierarchy,
//!   then a clone3 into new UTS, IPC and PID namespaces whose child joins the network
//!   namespace made for the bench (`ip netns add`) and its cgroup, sets the hostname and
//!   says so on a pipe; timed until that byte arrives. Its teardown: SIGKILL, reap, rmdir.
//! - **container**: `runc create` + `runc start` (the runc on PATH, as containerd's and
//!   cove's) of the bench's busybox image, unpacked from the archive the harness imports and
//!   mounted beforehand as an overlay (as containerd's snapshotter hands it to a shim), in
//!   the floor sandbox's namespaces; then `runc delete --force`.
//!
//! The container spec is `runc spec`'s with CRI's shape: the sandbox's network, IPC, UTS
//! and PID namespaces joined, a new mount namespace, the pod files bind-mounted, a cgroup
//! under the pod's. cove's shim-alone container gets the same spec, so the two differ only
//! in who runs runc.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// clone3's flag to start the child in a cgroup v2 directory (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// How long a removed cgroup may stay busy after its last process was reaped.
const RMDIR_TRIES: usize = 500;

/// What the floors share: the bench's network namespace, the image's root filesystem, the
/// spec template, the static binary and the cgroup they live under.
pub struct Floor {
    /// Scratch space on the disk the harness uses (`/tmp`): image, bundles, snapshots.
    dir: PathBuf,
    /// runc's state (`--root`), on a tmpfs as containerd's.
    runc_root: PathBuf,
    netns_name: String,
    /// The network namespace every sandbox joins, cove's pause and the floor's alike.
    pub netns: PathBuf,
    netns_file: File,
    /// The busybox image's root filesystem, the lower layer of every container's overlay.
    image: PathBuf,
    /// Files a pod's containers bind-mount (CRI's hosts, resolv.conf, hostname, shm).
    pod_files: PathBuf,
    /// `runc spec`'s default spec.
    template: serde_json::Value,
    /// A static binary that exits at once.
    exit_at_once: PathBuf,
    /// The cgroup every floor sandbox and container is made under.
    cgroup_root: PathBuf,
}

/// A floor sandbox: its waiting child and its cgroup directories, deepest first.
pub struct Sandbox {
    pub pid: i32,
    cgroups: Vec<PathBuf>,
}

/// A floor container: its id, bundle (with its overlay mounted on `rootfs`) and init.
pub struct Container {
    id: String,
    bundle: PathBuf,
    pid: i32,
}

/// Makes the bench a child subreaper (or not), as a shim is one: a container's init, whose
/// runc parents exit, is then the bench's to reap. Otherwise it is the host init's, whose
/// reaping a PID namespace's end waits for (a second here).
fn subreaper(on: bool) {
    nix::sys::prctl::set_child_subreaper(on)
        .unwrap_or_else(|e| panic!("PR_SET_CHILD_SUBREAPER {on}: {e}"));
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The file of an OCI layout's blob `sha256:<hex>`.
fn blob(layout: &Path, digest: &serde_json::Value) -> PathBuf {
    let d = digest
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .unwrap_or_else(|| panic!("a sha256 digest in the image, not {digest}"));
    layout.join("blobs/sha256").join(d)
}

fn mkdirs(p: &Path) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
}

impl Floor {
    /// Makes the network namespace, unpacks the image, builds the static binary.
    pub fn prepare() -> Floor {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("cove-bench-floor-{pid}"));
        let runc_root = PathBuf::from(format!("/run/cove-bench-floor-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        mkdirs(&dir);
        mkdirs(&runc_root);
        let netns_name = format!("cove-bench-{pid}");
        run(
            "ip netns add (the floors' network namespace)",
            Command::new("ip").args(["netns", "add", &netns_name]),
        );
        let netns = Path::new("/var/run/netns").join(&netns_name);
        let netns_file =
            File::open(&netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));

        // The busybox image the harness imports, built by tests/images/build.sh (which
        // keeps an archive newer than its inputs).
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        run(
            "tests/images/build.sh (the busybox image)",
            Command::new(root.join("tests/images/build.sh")).arg(root.join("target/images")),
        );
        let layout = dir.join("oci");
        mkdirs(&layout);
        run(
            "unpack the busybox image archive",
            Command::new("tar")
                .arg("-xf")
                .arg(root.join("target/images/busybox.tar"))
                .arg("-C")
                .arg(&layout),
        );
        let index = read_json(&layout.join("index.json"));
        let manifest = read_json(&blob(&layout, &index["manifests"][0]["digest"]));
        let image = dir.join("image");
        mkdirs(&image);
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        assert!(!layers.is_empty(), "the busybox image has no layer");
        for layer in &layers {
            run(
                "unpack the busybox image's layer",
                Command::new("tar")
                    .arg("-xf")
                    .arg(blob(&layout, &layer["digest"]))
                    .arg("-C")
                    .arg(&image),
            );
        }
        let _ = std::fs::remove_dir_all(&layout);

        let pod_files = dir.join("pod");
        mkdirs(&pod_files.join("shm"));
        for (f, text) in [
            ("hosts", "127.0.0.1 localhost\n"),
            ("resolv.conf", "nameserver 10.96.0.10\n"),
            ("hostname", "bench\n"),
        ] {
            std::fs::write(pod_files.join(f), text)
                .unwrap_or_else(|e| panic!("write the pod file {f}: {e}"));
        }

        let spec_dir = dir.join("spec");
        mkdirs(&spec_dir);
        run(
            "runc spec",
            Command::new("runc")
                .arg("spec")
                .arg("--bundle")
                .arg(&spec_dir),
        );
        let template = read_json(&spec_dir.join("config.json"));

        let src = dir.join("exit-at-once.c");
        std::fs::write(&src, "int main(void) { return 0; }\n")
            .unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
        let exit_at_once = dir.join("exit-at-once");
        run(
            "gcc -static (the shim spawn floor's binary; make deps installs gcc and libc6-dev)",
            Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&exit_at_once)
                .arg(&src),
        );

        let cgroup_root = PathBuf::from(format!("/cove-bench-floor-{pid}"));
        Floor {
            dir,
            runc_root,
            netns_name,
            netns,
            netns_file,
            image,
            pod_files,
            template,
            exit_at_once,
            cgroup_root,
        }
    }

    /// Shim spawn floor: fork, exec and wait for a static binary that exits at once.
    pub fn spawn(&self) -> Duration {
        let t = Instant::now();
        let st = Command::new(&self.exit_at_once)
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("exec {}: {e}", self.exit_at_once.display()));
        let took = t.elapsed();
        assert!(st.success(), "{}: {st}", self.exit_at_once.display());
        took
    }

    /// Options of an overlay of the image with a fresh upper layer `name`, as containerd's
    /// overlayfs snapshotter gives a container's rootfs.
    pub fn overlay(&self, name: &str) -> Vec<String> {
        let snap = self.dir.join("snapshots").join(name);
        let _ = std::fs::remove_dir_all(&snap);
        mkdirs(&snap.join("fs"));
        mkdirs(&snap.join("work"));
        vec![
            "index=off".into(),
            format!("workdir={}", snap.join("work").display()),
            format!("upperdir={}", snap.join("fs").display()),
            format!("lowerdir={}", self.image.display()),
        ]
    }

    /// Removes an overlay's upper layer once it is unmounted.
    pub fn forget_overlay(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.dir.join("snapshots").join(name));
    }

    /// A container's spec: `runc spec`'s, running a sleeping busybox shell, in the network,
    /// IPC, UTS and PID namespaces of sandbox process `sandbox`, with the pod files, in
    /// cgroup `cgroup` (`/`-rooted, as CRI writes it).
    pub fn spec(
        &self,
        sandbox: i32,
        cgroup: &Path,
        annotations: serde_json::Value,
    ) -> serde_json::Value {
        let mut s = self.template.clone();
        s["process"]["terminal"] = false.into();
        s["process"]["args"] = serde_json::json!(["sh", "-c", "exec sleep 100000"]);
        s["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
        if let Some(o) = s.as_object_mut() {
            o.remove("hostname");
        }
        let ns = |kind: &str, file: &str| serde_json::json!({"type": kind, "path": format!("/proc/{sandbox}/ns/{file}")});
        s["linux"]["namespaces"] = serde_json::json!([
            ns("pid", "pid"),
            ns("network", "net"),
            ns("ipc", "ipc"),
            ns("uts", "uts"),
            {"type": "mount"},
        ]);
        s["linux"]["cgroupsPath"] = cgroup.to_string_lossy().into_owned().into();
        let bind = |dest: &str, file: &str| {
            serde_json::json!({
                "destination": dest,
                "type": "bind",
                "source": self.pod_files.join(file),
                "options": ["rbind", "rprivate", "rw"],
            })
        };
        if let Some(m) = s["mounts"].as_array_mut() {
            m.push(bind("/etc/hosts", "hosts"));
            m.push(bind("/etc/resolv.conf", "resolv.conf"));
            m.push(bind("/etc/hostname", "hostname"));
            m.retain(|x| x["destination"] != "/dev/shm");
            m.push(bind("/dev/shm", "shm"));
        }
        s["annotations"] = annotations;
        s
    }

    /// The pod cgroup of floor sandbox `i` (its pause's is `pause` under it).
    fn pod_cgroup(&self, i: usize) -> PathBuf {
        self.cgroup_root.join(i.to_string())
    }

    /// Sandbox floor: the pod cgroup and the pause's made in every hierarchy, a clone into
    /// new UTS, IPC and PID namespaces, the child in the network namespace and its cgroup
    /// with its hostname set; timed until the child says it is in place.
    pub fn sandbox(&self, i: usize) -> (Sandbox, Duration) {
        let pod = self.pod_cgroup(i);
        let pause = pod.join("pause");
        let hostname = format!("floor-{i}");
        let layout = layout();
        let t = Instant::now();
        // As cove's StartSandbox for a pod cgroup parent that does not exist yet: every
        // missing level is made, and removed at the teardown.
        let mut made = Vec::new();
        for rel in [&self.cgroup_root, &pod, &pause] {
            for d in layout.dirs(rel) {
                if make_cgroup(&d) {
                    made.push(d);
                }
            }
        }
        // A v1 hierarchy: the child writes 0 to its `tasks` (a thread's move, without
        // cgroup.procs's global lock, as cove's setup child does); a v2 one: it is born
        // there.
        let mut join = Vec::new();
        let mut into = None;
        for d in layout.dirs(&pause) {
            let tasks = d.join("tasks");
            if tasks.exists() {
                join.push(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&tasks)
                        .unwrap_or_else(|e| panic!("open {}: {e}", tasks.display())),
                );
            } else {
                into = Some(File::open(&d).unwrap_or_else(|e| panic!("open {}: {e}", d.display())));
            }
        }
        let (ready_rd, ready_wr) = nix::unistd::pipe().expect("sandbox floor: pipe");
        let join_fds: Vec<i32> = join.iter().map(|f| f.as_raw_fd()).collect();
        let pid = clone_waiting_child(
            self.netns_file.as_raw_fd(),
            &join_fds,
            into.as_ref().map(|f| f.as_raw_fd()),
            hostname.as_bytes(),
            ready_wr.as_raw_fd(),
        );
        drop(ready_wr);
        let mut byte = [0u8; 1];
        let n = loop {
            match nix::unistd::read(ready_rd.as_raw_fd(), &mut byte) {
                Err(nix::Error::EINTR) => continue,
                other => break other,
            }
        };
        let took = t.elapsed();
        let sb = Sandbox {
            pid,
            cgroups: made.into_iter().rev().collect(),
        };
        if n != Ok(1) {
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            panic!("the sandbox floor's child did not get in place: {n:?}, {status:?}");
        }
        (sb, took)
    }

    /// The sandbox floor's teardown: SIGKILL, reap, rmdir of its cgroups.
    pub fn sandbox_down(&self, sb: Sandbox) -> Duration {
        let pid = nix::unistd::Pid::from_raw(sb.pid);
        let t = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
            .unwrap_or_else(|e| panic!("kill the sandbox floor's child {pid}: {e}"));
        loop {
            match nix::sys::wait::waitpid(pid, None) {
                Err(nix::Error::EINTR) => continue,
                Ok(_) => break,
                Err(e) => panic!("reap the sandbox floor's child {pid}: {e}"),
            }
        }
        for d in &sb.cgroups {
            remove_cgroup(d);
        }
        t.elapsed()
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.runc_root);
        c
    }

    /// Container floor: `runc create` + `runc start` of busybox in sandbox `sb`'s
    /// namespaces; the bundle and its overlay are made first, untimed.
    pub fn container(&self, sb: &Sandbox, i: usize) -> (Container, Duration) {
        let id = format!("floor-{i}");
        let bundle = self.dir.join("bundles").join(&id);
        let _ = std::fs::remove_dir_all(&bundle);
        mkdirs(&bundle.join("rootfs"));
        let spec = self.spec(sb.pid, &self.pod_cgroup(i).join(&id), serde_json::json!({}));
        std::fs::write(bundle.join("config.json"), spec.to_string())
            .unwrap_or_else(|e| panic!("write the floor container's spec: {e}"));
        let data = self.overlay(&id).join(",");
        nix::mount::mount(
            Some("overlay"),
            &bundle.join("rootfs"),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount the floor container's overlay: {e}"));
        let err = bundle.join("runc.stderr");
        let stderr =
            || File::create(&err).unwrap_or_else(|e| panic!("create {}: {e}", err.display()));
        let failed = |what: &str| {
            panic!(
                "{what} of the floor container: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            )
        };
        subreaper(true);
        let t = Instant::now();
        let st = self
            .runc()
            .arg("create")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--pid-file")
            .arg(bundle.join("init.pid"))
            .arg(&id)
            .current_dir(&bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr())
            .status()
            .unwrap_or_else(|e| panic!("run runc create: {e}"));
        if !st.success() {
            failed("runc create");
        }
        let st = self
            .runc()
            .arg("start")
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr())
            .status()
            .unwrap_or_else(|e| panic!("run runc start: {e}"));
        let took = t.elapsed();
        if !st.success() {
            failed("runc start");
        }
        let pid = std::fs::read_to_string(bundle.join("init.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the floor container's init.pid"));
        (Container { id, bundle, pid }, took)
    }

    /// `runc delete --force` and the init reaped; then the overlay and the bundle go.
    pub fn container_down(&self, c: Container) {
        run(
            "runc delete --force (the floor container)",
            self.runc().args(["delete", "--force", &c.id]),
        );
        loop {
            match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(c.pid), None) {
                Err(nix::Error::EINTR) => continue,
                Ok(_) | Err(nix::Error::ECHILD) => break,
                Err(e) => panic!("reap the floor container's init {}: {e}", c.pid),
            }
        }
        subreaper(false);
        nix::mount::umount2(&c.bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH)
            .unwrap_or_else(|e| panic!("unmount the floor container's overlay: {e}"));
        self.forget_overlay(&c.id);
        let _ = std::fs::remove_dir_all(&c.bundle);
    }

    /// A fifo for a container's output, as CRI makes them, and its reader (held open as
    /// containerd holds it).
    pub fn fifo(&self, name: &str) -> (PathBuf, File) {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.dir.join("fifo");
        mkdirs(&dir);
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
        let r = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        (p, r)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // Whatever a failure left: floor containers, mounts, the netns, the cgroups.
        for e in std::fs::read_dir(&self.runc_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self
                .runc()
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
        }
        let dir = self.dir.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by(|a, b| b.cmp(a));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns_name])
            .status();
        for root in layout().dirs(&self.cgroup_root) {
            let mut dirs: Vec<PathBuf> = vec![root.clone()];
            let mut k = 0;
            while k < dirs.len() {
                for e in std::fs::read_dir(&dirs[k]).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs.push(e.path());
                    }
                }
                k += 1;
            }
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.runc_root);
    }
}

/// mkdir of a cgroup; a v1 cpuset gets its parent's cpus and mems, without which nothing
/// can join it. Whether it made the directory.
fn make_cgroup(d: &Path) -> bool {
    match std::fs::create_dir(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return false,
        Err(e) => panic!("create cgroup {}: {e}", d.display()),
    }
    if d.join("cpuset.cpus").exists() && !d.join("cgroup.controllers").exists() {
        let parent = d.parent().unwrap_or(d);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let v = std::fs::read_to_string(parent.join(f))
                .unwrap_or_else(|e| panic!("read {}: {e}", parent.join(f).display()));
            std::fs::write(d.join(f), v.trim())
                .unwrap_or_else(|e| panic!("write {}: {e}", d.join(f).display()));
        }
    }
    true
}

/// rmdir of a cgroup, retried while the kernel still counts a reaped process in it.
fn remove_cgroup(d: &Path) {
    for _ in 0..RMDIR_TRIES {
        match std::fs::remove_dir(d) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("remove cgroup {}: {e}", d.display()),
        }
    }
    panic!("cgroup {} stayed busy", d.display());
}

/// clone3 into new UTS, IPC and PID namespaces (and, on cgroup v2, into cgroup `into`).
/// The child joins network namespace `netns` and the v1 cgroups whose `tasks` files are
/// `join`, sets `hostname`, writes one byte to `ready` and waits for its SIGKILL. Between
/// the clone and its end it makes only system calls: it is a copy of a process that may
/// have other threads, whose locks it must not touch.
fn clone_waiting_child(
    netns: i32,
    join: &[i32],
    into: Option<i32>,
    hostname: &[u8],
    ready: i32,
) -> i32 {
    let mut flags = (libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID) as u64;
    if into.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = libc::clone_args {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: into.map_or(0, |fd| fd as u64),
    };
    // SAFETY: with no stack given clone3 forks; the child below makes only raw system
    // calls on memory prepared before the clone and ends in _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid == 0 {
        // SAFETY: system calls on descriptors and bytes the parent prepared; no
        // allocation, no lock, no return.
        unsafe {
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                libc::_exit(2);
            }
            for fd in join {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(3);
                }
            }
            if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                libc::_exit(4);
            }
            if libc::write(ready, b"1".as_ptr().cast(), 1) != 1 {
                libc::_exit(5);
            }
            loop {
                libc::pause();
            }
        }
    }
    assert!(
        pid > 0,
        "clone3 of the sandbox floor's child: {}",
        std::io::Error::last_os_error()
    );
    pid as i32
}
