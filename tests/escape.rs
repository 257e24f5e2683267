//! An adversarial pod, on cove and on containerd's runc pod path side by side: a container
//! in a pod with a shared pid namespace probes every process it sees that is not one of
//! its pod's containers (`tests/images/probe.c`): `/proc/<pid>/{root,cwd,exe,environ,
//! cmdline,mountinfo,cgroup,fd,maps,mem,status}`, ptrace, process_vm_readv, signals, a
//! host marker file, a file created through `/proc/<pid>/root`, and containerd's socket.
//! It runs as root with the default capabilities, as root with SYS_PTRACE added, and as a
//! non-root uid. cove must expose nothing that the runc pause does not, and on cove the
//! host must be out of reach whatever the runc pause shows.
mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_cri::v1::*;

/// `pid -> probe -> result` ("denied:<errno>" or "ok:<what was seen>").
type Probes = BTreeMap<i32, BTreeMap<String, String>>;

fn parse(out: &str) -> Probes {
    let mut m = Probes::new();
    for line in out.lines() {
        let mut f = line.splitn(3, ' ');
        let (Some(pid), Some(probe), Some(res)) = (f.next(), f.next(), f.next()) else {
            panic!("probe line {line:?}");
        };
        m.entry(pid.parse().expect("pid"))
            .or_default()
            .insert(probe.to_string(), res.to_string());
    }
    m
}

struct Who {
    name: &'static str,
    uid: Option<i64>,
    caps: &'static [&'static str],
}

const WHO: [Who; 3] = [
    Who {
        name: "root",
        uid: None,
        caps: &[],
    },
    Who {
        name: "ptrace",
        uid: None,
        caps: &["SYS_PTRACE"],
    },
    Who {
        name: "user",
        uid: Some(1000),
        caps: &[],
    },
];

fn shared_pid(cfg: &mut PodSandboxConfig) {
    let ns = cfg
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    ns.pid = NamespaceMode::Pod as i32;
}

fn prober(name: &str, who: &Who) -> ContainerConfig {
    let mut c = container_config(name, "exec sleep 3600");
    let linux = c.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        run_as_user: who.uid.map(|value| Int64Value { value }),
        capabilities: Some(Capability {
            add_capabilities: who.caps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// What each identity sees of the pod's non-container processes, per handler.
async fn probe_pod(
    cd: &Containerd,
    handler: &str,
    marker: &str,
) -> (String, BTreeMap<&'static str, Probes>) {
    let mut cfg = cd.pod_config(&format!("escape-{handler}"));
    shared_pid(&mut cfg);
    let pod = cd.run_pod(&cfg, handler).await;
    let sock = cd.sock.to_string_lossy().into_owned();
    let mut seen = BTreeMap::new();
    let mut root = None;
    for who in &WHO {
        let c = cd
            .create_container(&pod, &cfg, prober(&format!("{handler}-{}", who.name), who))
            .await;
        cd.start_container(&c).await;
        let (out, err, code) = cd.exec_sync(&c, &["cove-probe", marker, &sock]).await;
        assert_eq!(code, 0, "{handler}/{}: cove-probe failed: {err}", who.name);
        seen.insert(who.name, parse(&out));
        if who.uid.is_none() && who.caps.is_empty() {
            root = Some(c);
        }
    }
    // Every signal but those that end a pause (TERM, INT, HUP) and those no process can
    // catch, sent to PID 1 by root in a container: the pause lives on, as runc's does. A
    // handler the pause kept (its runtime's SIGSEGV one) would run into its seccomp filter.
    // Where an LSM confines the container (AppArmor's profile for CRI containers, in the
    // guests: it lets the container signal only processes under the same profile), the
    // signals may be refused, and only the pause's life is asked for; an unconfined
    // container must have sent every one.
    let c = root.expect("a root container");
    let signals = "QUIT ILL TRAP ABRT BUS FPE USR1 SEGV USR2 PIPE ALRM STKFLT CHLD CONT \
        TSTP TTIN TTOU URG XCPU XFSZ VTALRM PROF WINCH IO PWR SYS";
    let script = format!(
        "cat /proc/self/attr/current 2>/dev/null | tr -d '\\0'; echo; \
         for s in {signals}; do kill -$s 1 2>/dev/null && echo sent; done; sleep 1"
    );
    let (out, err, code) = cd.exec_sync(&c, &["sh", "-c", &script]).await;
    assert_eq!(code, 0, "{handler}: signalling PID 1: {err}");
    let label = out.lines().next().unwrap_or("").trim().to_string();
    let sent = out.lines().filter(|l| *l == "sent").count();
    if label.is_empty() || label == "unconfined" {
        assert_eq!(
            sent,
            signals.split_whitespace().count(),
            "{handler}: every signal reached PID 1"
        );
    }
    let sandboxer = if handler == "cove" {
        "shim"
    } else {
        "podsandbox"
    };
    let pause = cd.sandbox_pid(&pod, sandboxer).await;
    assert!(
        alive(pause),
        "{handler}: the pause outlives every signal but TERM, INT and HUP"
    );
    if handler == "cove" {
        // The pause's cgroup namespace is rooted at its own cgroup: seen from inside that
        // namespace, the pause's cgroup is the root in every hierarchy. Rooted higher (at
        // the shim's cgroup, where the pause was before systemd moved it into its scope),
        // a container allowed to enter it would see, and make cgroups in, the shim's.
        let own = cgroups_seen_from_own_namespace(pause);
        assert!(
            !own.is_empty() && own.lines().all(|l| l.ends_with(":/")),
            "{handler}: the pause's cgroup namespace is rooted at its own cgroup:\n{own}"
        );
        // What a container allowed to ptrace the pause could read of its memory: nothing
        // of the shim's arguments, environment or paths (containerd's addresses, in the
        // shim's -address and its TTRPC_ADDRESS and GRPC_ADDRESS, start with the socket
        // path; its -id and bundle path hold the pod id).
        let mem = readable_memory(pause);
        for needle in [sock.as_str(), pod.as_str()] {
            assert!(
                !mem.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "the pause's memory holds {needle:?}"
            );
        }
    }
    (pod, seen)
}

/// `/proc/<pid>/cgroup` as a process in `pid`'s cgroup namespace reads it: each
/// hierarchy's path of `pid` relative to that namespace's root.
fn cgroups_seen_from_own_namespace(pid: u32) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--cgroup=/proc/{pid}/ns/cgroup"))
        .args(["cat", &format!("/proc/{pid}/cgroup")])
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter into the cgroup namespace of {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every readable mapping of `pid`'s memory, read as root from the host.
fn readable_memory(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vvar_vclock]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            all.extend_from_slice(&buf);
        }
    }
    assert!(!all.is_empty(), "read the pause's memory");
    all
}

/// A host file that a pod must not reach; removed also when the test fails.
struct Marker(String);

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn denied(r: &str) -> bool {
    r.starts_with("denied:")
}

/// A `/proc/<pid>/status` field.
fn status_field<'a>(probes: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    let st = probes.get("status").map(String::as_str).unwrap_or("");
    let mut it = st.split('|').skip_while(|f| *f != format!("{key}:"));
    it.next();
    it.find(|f| !f.is_empty()).unwrap_or("")
}

#[tokio::test]
async fn a_pod_sees_no_more_of_cove_than_of_the_runc_pause() {
    let cd = Containerd::start("escape").await;
    let marker = Marker(format!(
        "/var/tmp/cove-escape-{}.marker",
        std::process::id()
    ));
    std::fs::write(&marker.0, "host-secret").unwrap();
    let marker_path = marker.0.clone();
    let before_tmp: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();

    let (runc_pod, runc) = probe_pod(&cd, "runc", &marker_path).await;
    let (cove_pod, cove) = probe_pod(&cd, "cove", &marker_path).await;
    drop(marker);

    let mut leaks = Vec::new();
    for who in &WHO {
        let r = &runc[who.name];
        let c = &cove[who.name];
        // The only process of cove's a pod sees is its pause, PID 1 (never the setup
        // child, never the shim).
        let cove_pids: Vec<(i32, &str)> = c
            .iter()
            .map(|(p, m)| (*p, m.get("comm").map(String::as_str).unwrap_or("")))
            .collect();
        assert_eq!(
            cove_pids,
            vec![(1, "ok:cove-pause")],
            "{}: the cove processes a container sees",
            who.name
        );
        let rp = r
            .get(&1)
            .unwrap_or_else(|| panic!("{}: runc pod has no PID 1: {r:?}", who.name));
        let cp = &c[&1];
        for (probe, cres) in cp {
            let rres = rp.get(probe).map(String::as_str).unwrap_or("denied:absent");
            // Nothing the runc pause denies may cove allow.
            if denied(rres) && !denied(cres) {
                leaks.push(format!("{}: {probe}: runc {rres}, cove {cres}", who.name));
            }
        }
        // Whatever the runc pause shows, cove's shows nothing of the host.
        let get = |p: &str| cp.get(p).map(String::as_str).unwrap_or("missing");
        for probe in ["marker", "create", "containerd", "exe-chmod"] {
            if !denied(get(probe)) {
                leaks.push(format!("{}: {probe}: cove {}", who.name, get(probe)));
            }
        }
        for probe in ["root", "cwd", "environ", "fd"] {
            let v = get(probe);
            if !(denied(v) || v == "ok:") {
                leaks.push(format!("{}: {probe} is not empty on cove: {v}", who.name));
            }
        }
        if get("cmdline") != "ok:cove-pause|" {
            leaks.push(format!("{}: cmdline on cove: {}", who.name, get("cmdline")));
        }
        let mi = get("mountinfo");
        // One mount (one " - " separator in mountinfo), a tmpfs.
        let one_tmpfs = mi.matches("|-|").count() == 1 && mi.contains("|-|tmpfs|");
        if !denied(mi) && !one_tmpfs {
            leaks.push(format!(
                "{}: mountinfo on cove is not one empty tmpfs: {mi}",
                who.name
            ));
        }
        for (key, want) in [
            ("Uid", "65535"),
            ("Gid", "65535"),
            ("CapEff", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapBnd", "0000000000000000"),
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
        ] {
            let got = status_field(cp, key);
            if got != want {
                leaks.push(format!(
                    "{}: cove pause {key} is {got:?}, want {want}",
                    who.name
                ));
            }
        }
        if status_field(cp, "Groups") != "NStgid:" {
            // "Groups:" is followed by its (empty) list, then the next field.
            leaks.push(format!(
                "{}: cove pause has supplementary groups: {}",
                who.name, cp["status"]
            ));
        }
        // The runc side is the oracle: its probes ran and saw its pause.
        assert!(
            rp.contains_key("root") && rp.contains_key("ptrace"),
            "{}: runc probes: {rp:?}",
            who.name
        );
    }
    assert!(
        leaks.is_empty(),
        "cove exposes more than the runc pause:\n{}\n\nrunc saw: {runc:#?}\ncove saw: {cove:#?}",
        leaks.join("\n")
    );
    // Nothing was created on the host through any pause.
    let after_tmp: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let new: Vec<_> = after_tmp
        .iter()
        .filter(|n| !before_tmp.contains(n) && n.to_string_lossy().starts_with("cove-probe-"))
        .collect();
    assert!(new.is_empty(), "files created in the host's /tmp: {new:?}");

    for pod in [runc_pod, cove_pod] {
        cd.stop_pod(&pod).await;
        cd.remove_pod(&pod).await;
    }
}

/// OOM protection as the runc pod path has it: the pause gets CRI's -998 or, where the
/// kernel refuses a lower score (no CAP_SYS_RESOURCE, as on our hosts), the nearest it
/// allows, never more than the runc pause gets; a shim is one above containerd, as
/// containerd's runc shim is.
#[tokio::test]
async fn the_pause_and_the_shim_are_protected_from_the_oom_killer_as_on_the_runc_path() {
    let cd = Containerd::start("oomscore").await;
    let score = |pid: u32| -> i32 {
        cove::oom_score::read(Some(pid)).unwrap_or_else(|e| panic!("oom_score_adj of {pid}: {e}"))
    };
    let containerd = score(cd.pid());
    let mut pauses = BTreeMap::new();
    let mut pods = Vec::new();
    for (handler, sandboxer) in [("runc", "podsandbox"), ("cove", "shim")] {
        let cfg = cd.pod_config(&format!("oom-{handler}"));
        let pod = cd.run_pod(&cfg, handler).await;
        pauses.insert(handler, score(cd.sandbox_pid(&pod, sandboxer).await));
        pods.push(pod);
    }
    let runc_shims = cd.runc_shims();
    let cove_shims = cd.cove_shims();
    assert!(!runc_shims.is_empty() && !cove_shims.is_empty());
    for p in runc_shims.iter().chain(&cove_shims) {
        assert_eq!(
            score(*p as u32),
            cove::oom_score::shim_score(containerd),
            "shim {p}: containerd's score ({containerd}) + 1"
        );
    }
    // Could this host lower a score? Then the pause has exactly CRI's value.
    let can_lower = Command::new("sh")
        .args(["-c", "echo -999 > /proc/self/oom_score_adj"])
        .status()
        .unwrap()
        .success();
    if can_lower {
        assert_eq!(pauses["cove"], cove::oom_score::PAUSE_SCORE);
    } else {
        // The nearest allowed: no lower than what this unprivileged host allows, which is
        // what CRI's restrict_oom_score_adj gives the runc pause.
        assert_eq!(pauses["cove"], pauses["runc"], "where lowering is refused");
        assert!(
            cd.log().contains("the kernel refused oom_score_adj -998"),
            "the shim warns when the kernel refuses the pause's score"
        );
    }
    assert!(
        pauses["cove"] <= pauses["runc"],
        "cove's pause is at least as protected as runc's: {pauses:?}"
    );
    for pod in pods {
        cd.stop_pod(&pod).await;
        cd.remove_pod(&pod).await;
    }
}

use std::process::Command;
