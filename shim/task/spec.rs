//! What the task service reads from a container's OCI spec and from containerd's
//! create request: runc options, the pid namespace, the cgroup driver, hooks.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use protobuf::well_known_types::any::Any;

use crate::error::{Error, IoContext, Result};
use crate::protos::runc::Options;

pub fn read_pid(file: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(file).context(|| format!("read {}", file.display()))?;
    match text.trim().parse() {
        // Pid 0 names no process: signalled, it would be the shim's own process group.
        Ok(0) => Err(Error::Internal(format!(
            "pid file {}: pid 0",
            file.display()
        ))),
        Ok(pid) => Ok(pid),
        Err(e) => Err(Error::Internal(format!("pid file {}: {e}", file.display()))),
    }
}

/// runc `Options` from a create request (runc's own type, or CRI's generic TOML body).
pub fn parse_options(any: Option<&Any>) -> Result<Options> {
    crate::options::runc_options(any)
}

/// Whether `runc delete` would do more than remove state and cgroups for this spec.
pub fn has_poststop_or_rdt(spec: &Spec) -> bool {
    let poststop = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststop().as_ref())
        .is_some_and(|v| !v.is_empty());
    let rdt = spec
        .linux()
        .as_ref()
        .is_some_and(|l| l.intel_rdt().is_some());
    poststop || rdt
}

/// The container's own user namespace mappings (`linux.uidMappings`/`gidMappings`), if
/// it has any.
pub fn id_mappings(spec: &Spec) -> Option<crate::idmap::Mappings> {
    let linux = spec.linux().as_ref()?;
    let conv = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<crate::idmap::Extent> {
        m.iter()
            .flatten()
            .map(|e| crate::idmap::Extent {
                inside: e.container_id(),
                host: e.host_id(),
                length: e.size(),
            })
            .collect()
    };
    let maps = crate::idmap::Mappings {
        uids: conv(linux.uid_mappings()),
        gids: conv(linux.gid_mappings()),
    };
    (!maps.uids.is_empty() || !maps.gids.is_empty()).then_some(maps)
}

/// Whether the container's pid namespace is shared (joined by path, or the host's).
pub fn shares_pid_namespace(spec: &Spec) -> bool {
    let Some(ns) = spec.linux().as_ref().and_then(|l| l.namespaces().clone()) else {
        return true;
    };
    match ns.iter().find(|n| n.typ() == LinuxNamespaceType::Pid) {
        None => true,
        Some(n) => n.path().is_some(),
    }
}

/// Whether CRI (or Docker) gave the container a systemd cgroups path
/// (`<slice>:<prefix>:<name>`): runc then needs its systemd driver, whatever the runtime
/// options say.
pub fn uses_systemd_cgroups(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .is_some_and(|p| crate::cgroups::systemd::is_systemd_cgroups_path(&p.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::runc::Options;
    use protobuf::Message;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn joined_or_host_pid_namespaces_are_shared() {
        let own = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#,
        );
        let joined = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid","path":"/proc/7/ns/pid"}]}}"#,
        );
        let host = spec(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"mount"}]}}"#);
        assert!(!shares_pid_namespace(&own));
        assert!(shares_pid_namespace(&joined));
        assert!(shares_pid_namespace(&host));
    }

    #[test]
    fn runc_options_are_read_and_others_ignored() {
        let o = Options {
            binary_name: "crun".into(),
            root: "/run/x".into(),
            ..Default::default()
        };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let got = parse_options(Some(&any)).unwrap();
        assert_eq!(
            (got.binary_name.as_str(), got.root.as_str()),
            ("crun", "/run/x")
        );
        let other = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![10, 1, b'x'],
            ..Default::default()
        };
        assert_eq!(parse_options(Some(&other)).unwrap(), Options::default());
        assert_eq!(parse_options(None).unwrap(), Options::default());
    }
}
