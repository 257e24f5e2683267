//! What a pod asks for: CRI's `runtime.v1.PodSandboxConfig` (from CreateSandboxRequest.options)
//! decoded and checked into a [`PodSpec`].

use std::path::PathBuf;

use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::error::{Error, Result};
use crate::protos::cri::{NamespaceMode, PodSandboxConfig};

/// The type name CRI puts in `options.type_url` (no `type.googleapis.com/` prefix).
pub const POD_SANDBOX_CONFIG_TYPE: &str = "runtime.v1.PodSandboxConfig";

/// The longest hostname the kernel accepts (HOST_NAME_MAX).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// DNS settings for the pod's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    /// resolv.conf text, in the order and form CRI itself writes it.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out += &format!("search {}\n", self.searches.join(" "));
        }
        for s in &self.servers {
            out += &format!("nameserver {s}\n");
        }
        if !self.options.is_empty() {
            out += &format!("options {}\n", self.options.join(" "));
        }
        out
    }
}

/// The pod-level settings cove acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSpec {
    /// True when `options` held a PodSandboxConfig (the sandbox comes from CRI).
    pub from_cri: bool,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub hostname: String,
    pub dns: Option<Dns>,
    /// The pod cgroup as CRI names it: a cgroupfs path, a systemd slice
    /// (`kubepods-besteffort-pod<uid>.slice`), or empty when the client gave none.
    pub cgroup_parent: String,
    /// Where a systemd slice parent lives in the cgroup tree; `None` for cgroupfs.
    pub slice_path: Option<PathBuf>,
    pub sysctls: Vec<(String, String)>,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// The pod's own user namespace (`hostUsers: false`); `None`: the host's.
    pub userns: Option<crate::idmap::Mappings>,
    /// Pod annotations CRI carries inside the config (2.1.x sends none in the request).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The pod config as JSON in the form of CRI's Go types (what `crictl inspectp` shows
    /// under `info.config`); null for non-CRI clients.
    pub config: serde_json::Value,
}

impl PodSpec {
    /// Decodes `options`. Absent options (non-CRI clients) give a default pod.
    pub fn from_options(options: Option<&Any>) -> Result<PodSpec> {
        let Some(any) = options.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(PodSpec::default());
        };
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        if name != POD_SANDBOX_CONFIG_TYPE {
            return Err(Error::InvalidArgument(format!(
                "unsupported sandbox options type {:?}: cove understands {POD_SANDBOX_CONFIG_TYPE} or no options",
                any.type_url
            )));
        }
        let cfg = PodSandboxConfig::parse_from_bytes(&any.value).map_err(|e| {
            Error::InvalidArgument(format!(
                "decode sandbox options as {POD_SANDBOX_CONFIG_TYPE}: {e}"
            ))
        })?;
        PodSpec::from_cri(&cfg)
    }

    fn from_cri(cfg: &PodSandboxConfig) -> Result<PodSpec> {
        let linux = cfg.linux.as_ref();
        let ns = linux
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let node = |m: Option<protobuf::EnumOrUnknown<NamespaceMode>>| {
            m.map(|m| m == protobuf::EnumOrUnknown::new(NamespaceMode::NODE))
                .unwrap_or(false)
        };
        let userns = super::userns::check(
            &cfg.metadata.name,
            ns.and_then(|n| n.userns_options.as_ref()),
        )?;
        let mut sysctls: Vec<(String, String)> = linux
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        sysctls.sort();
        let mut spec = PodSpec {
            from_cri: true,
            name: cfg.metadata.name.clone(),
            namespace: cfg.metadata.namespace.clone(),
            uid: cfg.metadata.uid.clone(),
            hostname: cfg.hostname.clone(),
            dns: cfg.dns_config.as_ref().map(|d| Dns {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
            cgroup_parent: linux.map(|l| l.cgroup_parent.clone()).unwrap_or_default(),
            slice_path: None,
            sysctls,
            host_network: node(ns.map(|n| n.network)),
            host_pid: node(ns.map(|n| n.pid)),
            host_ipc: node(ns.map(|n| n.ipc)),
            userns,
            annotations: cfg
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config: config_json(cfg),
        };
        spec.validate()?;
        if crate::cgroups::systemd::is_slice(&spec.cgroup_parent) {
            spec.slice_path = Some(crate::cgroups::systemd::expand(&spec.cgroup_parent)?);
        }
        Ok(spec)
    }

    /// Checks what the kernel would otherwise reject halfway through StartSandbox.
    pub fn validate(&self) -> Result<()> {
        if self.hostname.len() > MAX_HOSTNAME_LEN || self.hostname.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "hostname {:?} is longer than {MAX_HOSTNAME_LEN} bytes or contains NUL",
                self.hostname
            )));
        }
        if crate::cgroups::systemd::is_slice(&self.cgroup_parent) {
            crate::cgroups::systemd::validate_slice(&self.cgroup_parent)?;
        } else if !self.cgroup_parent.is_empty() {
            crate::cgroups::validate_path(std::path::Path::new(&self.cgroup_parent))?;
        }
        for (k, _) in &self.sysctls {
            self.check_sysctl(k)?;
        }
        Ok(())
    }

    /// Only namespaced sysctls may be set, and only in a namespace the pod owns.
    fn check_sysctl(&self, key: &str) -> Result<()> {
        let bad = |why: &str| Err(Error::InvalidArgument(format!("sysctl {key:?}: {why}")));
        let norm = key.replace('/', ".");
        if norm.is_empty()
            || !norm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            || norm.split('.').any(|c| c.is_empty())
        {
            return bad("not a valid sysctl name");
        }
        let ipc = [
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shmall",
            "kernel.shm_rmid_forced",
            "kernel.msgmax",
            "kernel.msgmni",
            "kernel.msgmnb",
            "kernel.sem",
        ];
        if norm.starts_with("net.") {
            if self.host_network {
                return bad("network sysctls cannot be set in a pod on the host network");
            }
        } else if ipc.contains(&norm.as_str()) || norm.starts_with("fs.mqueue.") {
            if self.host_ipc {
                return bad("IPC sysctls cannot be set in a pod sharing the host IPC namespace");
            }
        } else if norm == "kernel.domainname" || norm == "kernel.hostname" {
            if self.host_network {
                return bad("UTS sysctls cannot be set in a pod on the host network");
            }
        } else {
            return bad("not namespaced: it would change the whole node");
        }
        Ok(())
    }

    /// Network sysctls are written by the pause process once it has joined the pod's
    /// network namespace; with no netns path it stays in the host's, where they would
    /// change the whole node. `has_netns`: CreateSandbox named one.
    pub fn check_network_sysctls(&self, has_netns: bool) -> Result<()> {
        if has_netns {
            return Ok(());
        }
        match self
            .sysctls
            .iter()
            .find(|(k, _)| k.replace('/', ".").starts_with("net."))
        {
            Some((k, _)) => Err(Error::InvalidArgument(format!(
                "sysctl {k:?}: network sysctls need the pod's own network namespace, and \
                 this sandbox was given no netns path (it would be set on the host)"
            ))),
            None => Ok(()),
        }
    }

    /// The pod's UTS namespace is its own unless it is on the host network (as CRI does).
    pub fn own_uts(&self) -> bool {
        !self.host_network
    }

    /// Whether the pod's cgroups are systemd's (a slice parent): the systemd cgroup driver.
    pub fn systemd(&self) -> bool {
        self.slice_path.is_some()
    }

    /// The cgroup of the pause process: `<cgroup_parent>/<id>`, or `/cove/<id>` without a
    /// parent; under systemd the scope `cri-containerd-<id>.scope` in the pod's slice.
    pub fn pause_cgroup(&self, id: &str) -> PathBuf {
        if let Some(slice) = &self.slice_path {
            return slice.join(crate::cgroups::systemd::scope_name(id));
        }
        let parent = if self.cgroup_parent.is_empty() {
            "/cove"
        } else {
            &self.cgroup_parent
        };
        PathBuf::from(parent).join(id)
    }

    /// The pod cgroup that metrics read and updates write: `cgroup_parent`, which holds the
    /// pause process and every container of the pod; the pause cgroup when there is none.
    pub fn pod_cgroup(&self, id: &str) -> PathBuf {
        if let Some(slice) = &self.slice_path {
            slice.clone()
        } else if self.cgroup_parent.is_empty() {
            self.pause_cgroup(id)
        } else {
            PathBuf::from(&self.cgroup_parent)
        }
    }
}

/// A PodSandboxConfig as Go's encoding/json writes CRI's generated type (the json tags of
/// k8s.io/cri-api: snake_case names, enums as numbers, empty fields left out), for the
/// fields cove decodes.
fn config_json(cfg: &PodSandboxConfig) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Number(n) => n.as_u64() == Some(0),
            Value::Bool(b) => !b,
        };
        if !empty {
            m.insert(k.into(), v);
        }
    }
    let mut top = Map::new();
    if let Some(md) = cfg.metadata.as_ref() {
        let mut m = Map::new();
        put(&mut m, "name", json!(md.name));
        put(&mut m, "uid", json!(md.uid));
        put(&mut m, "namespace", json!(md.namespace));
        put(&mut m, "attempt", json!(md.attempt));
        top.insert("metadata".into(), Value::Object(m));
    }
    put(&mut top, "hostname", json!(cfg.hostname));
    put(&mut top, "log_directory", json!(cfg.log_directory));
    if let Some(d) = cfg.dns_config.as_ref() {
        let mut m = Map::new();
        put(&mut m, "servers", json!(d.servers));
        put(&mut m, "searches", json!(d.searches));
        put(&mut m, "options", json!(d.options));
        top.insert("dns_config".into(), Value::Object(m));
    }
    put(&mut top, "labels", json!(cfg.labels));
    put(&mut top, "annotations", json!(cfg.annotations));
    if let Some(l) = cfg.linux.as_ref() {
        let mut m = Map::new();
        put(&mut m, "cgroup_parent", json!(l.cgroup_parent));
        if let Some(sc) = l.security_context.as_ref() {
            let mut s = Map::new();
            if let Some(ns) = sc.namespace_options.as_ref() {
                let mut n = Map::new();
                put(&mut n, "network", json!(ns.network.value()));
                put(&mut n, "pid", json!(ns.pid.value()));
                put(&mut n, "ipc", json!(ns.ipc.value()));
                put(&mut n, "target_id", json!(ns.target_id));
                s.insert("namespace_options".into(), Value::Object(n));
            }
            put(&mut s, "privileged", json!(sc.privileged));
            m.insert("security_context".into(), Value::Object(s));
        }
        put(&mut m, "sysctls", json!(l.sysctls));
        top.insert("linux".into(), Value::Object(m));
    }
    Value::Object(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::cri::{
        DNSConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption,
        PodSandboxMetadata,
    };

    fn any(cfg: &PodSandboxConfig) -> Any {
        Any {
            type_url: POD_SANDBOX_CONFIG_TYPE.into(),
            value: cfg.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    fn cri(host_net: bool, sysctls: &[(&str, &str)], parent: &str) -> PodSandboxConfig {
        let mut ns = NamespaceOption::new();
        if host_net {
            ns.network = NamespaceMode::NODE.into();
        }
        ns.pid = NamespaceMode::NODE.into();
        let mut sc = LinuxSandboxSecurityContext::new();
        sc.namespace_options = Some(ns).into();
        let mut linux = LinuxPodSandboxConfig::new();
        linux.cgroup_parent = parent.into();
        linux.security_context = Some(sc).into();
        linux.sysctls = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut md = PodSandboxMetadata::new();
        md.name = "web".into();
        md.namespace = "default".into();
        let mut dns = DNSConfig::new();
        dns.servers = vec!["10.0.0.10".into()];
        dns.searches = vec!["svc.cluster.local".into()];
        dns.options = vec!["ndots:5".into()];
        let mut cfg = PodSandboxConfig::new();
        cfg.metadata = Some(md).into();
        cfg.hostname = "web-0".into();
        cfg.dns_config = Some(dns).into();
        cfg.linux = Some(linux).into();
        cfg
    }

    #[test]
    fn absent_options_give_a_default_pod() {
        assert_eq!(PodSpec::from_options(None).unwrap(), PodSpec::default());
        assert!(!PodSpec::from_options(Some(&Any::new())).unwrap().from_cri);
    }

    #[test]
    fn decodes_cri_config() {
        let s = PodSpec::from_options(Some(&any(&cri(
            false,
            &[("net.ipv4.ip_forward", "1")],
            "/kubepods/pod1",
        ))))
        .unwrap();
        assert!(s.from_cri);
        assert_eq!((s.name.as_str(), s.hostname.as_str()), ("web", "web-0"));
        assert!(!s.host_network && s.host_pid && !s.host_ipc);
        assert_eq!(
            s.sysctls,
            vec![("net.ipv4.ip_forward".to_string(), "1".to_string())]
        );
        assert_eq!(s.pause_cgroup("abc"), PathBuf::from("/kubepods/pod1/abc"));
        assert_eq!(s.pod_cgroup("abc"), PathBuf::from("/kubepods/pod1"));
        assert_eq!(
            s.dns.clone().unwrap().resolv_conf(),
            "search svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        // The config as CRI's Go types write it: snake_case, enums as numbers, no empties.
        assert_eq!(
            s.config,
            serde_json::json!({
                "metadata": {"name": "web", "namespace": "default"},
                "hostname": "web-0",
                "dns_config": {
                    "servers": ["10.0.0.10"],
                    "searches": ["svc.cluster.local"],
                    "options": ["ndots:5"]
                },
                "linux": {
                    "cgroup_parent": "/kubepods/pod1",
                    "security_context": {"namespace_options": {"pid": 2}},
                    "sysctls": {"net.ipv4.ip_forward": "1"}
                }
            })
        );
    }

    #[test]
    fn rejects_bad_options() {
        let wrong = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![],
            ..Default::default()
        };
        let garbage = Any {
            type_url: POD_SANDBOX_CONFIG_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
            ..Default::default()
        };
        for a in [wrong, garbage] {
            assert!(matches!(
                PodSpec::from_options(Some(&a)),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn rejects_unsafe_sysctls_and_parents() {
        for (host_net, key, parent) in [
            (false, "kernel.panic", ""),
            (true, "net.ipv4.ip_forward", ""),
            (false, "net..x", ""),
            (false, "net.ipv4.ip_forward", "kubepods--x.slice"),
            (false, "net.ipv4.ip_forward", "pods/a"),
        ] {
            let r = PodSpec::from_options(Some(&any(&cri(host_net, &[(key, "1")], parent))));
            assert!(
                matches!(r, Err(Error::InvalidArgument(_))),
                "{key} {parent}"
            );
        }
    }

    #[test]
    fn network_sysctls_need_a_pod_network_namespace() {
        for key in ["net.ipv4.ip_forward", "net/ipv4/conf/all/forwarding"] {
            let s = PodSpec::from_options(Some(&any(&cri(
                false,
                &[("kernel.shmmni", "1000"), (key, "1")],
                "",
            ))))
            .unwrap();
            s.check_network_sysctls(true).unwrap();
            match s.check_network_sysctls(false) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(key), "{m}"),
                other => panic!("{key} without a netns: {other:?}"),
            }
        }
        // Other namespaced sysctls do not depend on the network namespace.
        let s = PodSpec::from_options(Some(&any(&cri(false, &[("kernel.shmmni", "1000")], ""))))
            .unwrap();
        s.check_network_sysctls(false).unwrap();
        PodSpec::default().check_network_sysctls(false).unwrap();
    }

    #[test]
    fn slice_parents_select_the_systemd_driver() {
        let s = PodSpec::from_options(Some(&any(&cri(
            false,
            &[],
            "kubepods-besteffort-pod1a.slice",
        ))))
        .unwrap();
        assert!(s.systemd());
        assert_eq!(
            s.pod_cgroup("abc"),
            PathBuf::from(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a.slice"
            )
        );
        assert_eq!(
            s.pause_cgroup("abc"),
            s.pod_cgroup("abc").join("cri-containerd-abc.scope")
        );
        let fs = PodSpec::from_options(Some(&any(&cri(false, &[], "/kubepods/pod1")))).unwrap();
        assert!(!fs.systemd());
    }

    #[test]
    fn default_pod_has_cove_cgroup() {
        let s = PodSpec::default();
        assert_eq!(s.pause_cgroup("x"), PathBuf::from("/cove/x"));
        assert_eq!(s.pod_cgroup("x"), PathBuf::from("/cove/x"));
    }

    proptest::proptest! {
        #[test]
        fn any_pod_config_bytes_decode_or_get_invalid_argument(
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let a = Any {
                type_url: format!("type.googleapis.com/{POD_SANDBOX_CONFIG_TYPE}"),
                value,
                ..Default::default()
            };
            if let Err(e) = PodSpec::from_options(Some(&a)) {
                proptest::prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            }
        }

        #[test]
        fn any_pod_config_fields_are_accepted_or_refused_clearly(
            hostname in "\\PC{0,80}",
            parent in "\\PC{0,80}",
            sysctls in proptest::collection::btree_map("\\PC{0,30}", "\\PC{0,30}", 0..4),
        ) {
            let mut linux = LinuxPodSandboxConfig::new();
            linux.cgroup_parent = parent;
            linux.sysctls = sysctls.into_iter().collect();
            let mut cfg = PodSandboxConfig::new();
            cfg.hostname = hostname;
            cfg.linux = Some(linux).into();
            let a = Any {
                type_url: POD_SANDBOX_CONFIG_TYPE.into(),
                value: cfg.write_to_bytes().unwrap(),
                ..Default::default()
            };
            if let Err(e) = PodSpec::from_options(Some(&a)) {
                proptest::prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            }
        }
    }
}
