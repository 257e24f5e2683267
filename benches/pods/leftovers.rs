//! What a pod may leave on the host, and the host's network namespaces.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// Anything of a pod left on the host: processes, cgroups, mounts, network namespaces,
/// bundles and CRI pod directories. Empty when nothing is left.
pub fn leftovers(cd: &Containerd) -> Vec<String> {
    // A removed pod's shim exits once containerd has closed its connection: give the
    // last ones a moment (bounded) before counting.
    for _ in 0..300 {
        if pids_with(&cd.sock.to_string_lossy()).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut left = Vec::new();
    let shims = pids_with(&cd.sock.to_string_lossy());
    if !shims.is_empty() {
        left.push(format!("{} shim or pause processes {shims:?}", shims.len()));
    }
    // Pod and container cgroups are named by their 64-hex ids.
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let root = h.path().join(cd.cgroup_root.trim_start_matches('/'));
        for d in walk_dirs(&root) {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
    }
    let dir = cd.dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mounts.lines() {
        if let Some(point) = l.split(' ').nth(4) {
            if point.starts_with(&dir) {
                left.push(format!("mount {point}"));
            }
        }
    }
    for id in runc_states_of(cd) {
        left.push(format!("runc state {id}"));
    }
    for sub in [
        "state/io.containerd.runtime.v2.task/k8s.io",
        "state/io.containerd.sandbox.controller.v1.shim/k8s.io",
        "state/io.containerd.grpc.v1.cri/sandboxes",
        "root/io.containerd.grpc.v1.cri/sandboxes",
        "root/io.containerd.grpc.v1.cri/containers",
    ] {
        for e in std::fs::read_dir(cd.dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
        }
    }
    left
}

/// runc containers (in containerd's runc root) whose bundle is this containerd's.
pub fn runc_states_of(cd: &Containerd) -> Vec<String> {
    let dir = cd.dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/run/containerd/runc/{NS}"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let state = std::fs::read_to_string(e.path().join("state.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        let bundle = v
            .get("config")
            .and_then(|c| c.get("labels"))
            .and_then(|l| l.as_array())
            .and_then(|l| {
                l.iter()
                    .filter_map(|x| x.as_str())
                    .find_map(|x| x.strip_prefix("bundle="))
            })
            .unwrap_or_default()
            .to_owned();
        if bundle.starts_with(&dir) {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Removes what the runc pod path left in runc's root after the churn (reported, then
/// cleaned so that runs do not pile up).
pub fn forget_runc_states(cd: &Containerd) {
    for id in runc_states_of(cd) {
        let _ = std::process::Command::new("runc")
            .args([
                "--root",
                &format!("/run/containerd/runc/{NS}"),
                "delete",
                "--force",
                &id,
            ])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
                out.push(e.path());
            }
        }
    }
    out
}

/// Network namespaces under /var/run/netns (containerd makes one per pod).
pub fn netns_entries() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
