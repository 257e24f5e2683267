//! UpdateSandbox (containerd v2.4, PR #14105): registered by hand on the generated Sandbox
//! service, since containerd-shim-protos 0.12 has no method for it. Pod-level resources
//! go to the pod cgroup; labels, annotations and extension names are kept.
//!
//! Resources come either in the deprecated `resources` field (an Any of OCI
//! `LinuxResources`, JSON as containerd's typeurl registers it) or in the sandbox object's
//! `spec` (an OCI runtime Spec, JSON) when the changed `fields` include `spec`; both are
//! written to the pod cgroup.
//!
//! CRI's UpdatePodSandboxResources (containerd 2.3+) reaches a shim as `fields =
//! ["extensions"]` with the extension `updated-resources` (type
//! `io.containerd.cri.v1/UpdatedResources`, JSON `{"Overhead": .., "Resources": ..}` of CRI
//! `LinuxContainerResources`; internal/cri/server/podsandbox/helpers.go). Kubelet has
//! resized the pod cgroup before it asks, so cove records them (verbose status shows them)
//! and leaves the cgroup as kubelet set it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use oci_spec::runtime::{LinuxResources, Spec};
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use ttrpc::r#async::{MethodHandler, TtrpcContext};

use super::Manager;
use crate::error::{Error, Result};
use crate::protos::update::{UpdateSandboxRequest, UpdateSandboxResponse};

/// The ttrpc method name under `containerd.runtime.sandbox.v1.Sandbox`.
pub const METHOD: &str = "UpdateSandbox";

/// What an UpdateSandbox request changes.
#[derive(Debug, Default)]
pub struct Change {
    pub resources: Option<LinuxResources>,
    pub annotations: BTreeMap<String, String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub extensions: Option<Vec<String>>,
    /// CRI's pod-level resources and overhead, as CRI sent them (recorded, not applied).
    pub updated_resources: Option<serde_json::Value>,
}

/// The sandbox extension CRI keeps UpdatePodSandboxResources in, and its type URL.
pub const UPDATED_RESOURCES_KEY: &str = "updated-resources";
pub const UPDATED_RESOURCES_TYPE: &str = "io.containerd.cri.v1/UpdatedResources";

fn json_any<T: serde::de::DeserializeOwned>(any: &Any, what: &str) -> Result<T> {
    serde_json::from_slice(&any.value).map_err(|e| {
        Error::InvalidArgument(format!("decode {what} ({}) as JSON: {e}", any.type_url))
    })
}

impl Change {
    pub fn from_request(r: &UpdateSandboxRequest) -> Result<Change> {
        let mut c = Change {
            annotations: r.annotations.clone().into_iter().collect(),
            ..Default::default()
        };
        if let Some(res) = r.resources.as_ref().filter(|a| !a.value.is_empty()) {
            if !res.type_url.ends_with("LinuxResources") {
                return Err(Error::InvalidArgument(format!(
                    "unsupported resources type {:?}: want OCI LinuxResources",
                    res.type_url
                )));
            }
            c.resources = Some(json_any(res, "resources")?);
        }
        if let Some(sb) = r.sandbox.as_ref() {
            let wants = |f: &str| {
                r.fields.is_empty()
                    || r.fields
                        .iter()
                        .any(|x| x == f || x.starts_with(&format!("{f}.")))
            };
            if wants("spec") && c.resources.is_none() {
                if let Some(spec) = sb.spec.as_ref().filter(|a| !a.value.is_empty()) {
                    let spec: Spec = json_any(spec, "sandbox spec")?;
                    c.resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
                }
            }
            if wants("labels") {
                c.labels = Some(sb.labels.clone().into_iter().collect());
            }
            if wants("extensions") {
                let mut keys: Vec<String> = sb.extensions.keys().cloned().collect();
                keys.sort();
                c.extensions = Some(keys);
                if let Some(ext) = sb.extensions.get(UPDATED_RESOURCES_KEY) {
                    if ext.type_url.rsplit('/').next() != UPDATED_RESOURCES_TYPE.rsplit('/').next()
                    {
                        return Err(Error::InvalidArgument(format!(
                            "extension {UPDATED_RESOURCES_KEY} has type {:?}, want {UPDATED_RESOURCES_TYPE}",
                            ext.type_url
                        )));
                    }
                    let v: serde_json::Value = json_any(ext, UPDATED_RESOURCES_KEY)?;
                    if !v.is_object() {
                        return Err(Error::InvalidArgument(format!(
                            "extension {UPDATED_RESOURCES_KEY} is not a JSON object: {v}"
                        )));
                    }
                    c.updated_resources = Some(v);
                }
            }
        }
        Ok(c)
    }
}

pub struct UpdateMethod {
    pub manager: Arc<Manager>,
}

impl UpdateMethod {
    fn serve(&self, payload: &[u8]) -> Result<UpdateSandboxResponse> {
        let r = UpdateSandboxRequest::parse_from_bytes(payload)
            .map_err(|e| Error::InvalidArgument(format!("decode UpdateSandboxRequest: {e}")))?;
        log::debug!("UpdateSandbox {} fields {:?}", r.sandbox_id, r.fields);
        let change = Change::from_request(&r)?;
        self.manager.update(&r.sandbox_id, change)?;
        Ok(UpdateSandboxResponse::new())
    }
}

#[async_trait]
impl MethodHandler for UpdateMethod {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let mut resp = ttrpc::Response::new();
        let status = match self.serve(&req.payload).map(|r| r.write_to_bytes()) {
            Ok(Ok(bytes)) => {
                resp.payload = bytes;
                ttrpc::get_status(ttrpc::Code::OK, "")
            }
            Ok(Err(e)) => ttrpc::get_status(
                ttrpc::Code::INTERNAL,
                format!("encode UpdateSandboxResponse: {e}"),
            ),
            Err(e) => {
                log::error!("{e}");
                ttrpc::get_status(e.code(), e.to_string())
            }
        };
        resp.status = Some(status).into();
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::update::SandboxObject;

    fn resources_any(json: &str) -> Any {
        Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: json.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn legacy_resources_field_is_decoded() {
        let mut r = UpdateSandboxRequest::new();
        r.resources = Some(resources_any(r#"{"memory":{"limit":268435456}}"#)).into();
        r.annotations.insert("a".into(), "b".into());
        let c = Change::from_request(&r).unwrap();
        assert_eq!(
            c.resources.unwrap().memory().unwrap().limit(),
            Some(268_435_456)
        );
        assert_eq!(c.annotations.get("a").map(String::as_str), Some("b"));
        assert!(c.labels.is_none());
    }

    #[test]
    fn sandbox_object_changes_follow_the_field_paths() {
        let mut sb = SandboxObject::new();
        sb.labels.insert("tier".into(), "web".into());
        sb.spec = Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2","linux":{"resources":{"pids":{"limit":64}}}}"#
                .to_vec(),
            ..Default::default()
        })
        .into();
        let mut r = UpdateSandboxRequest::new();
        r.sandbox = Some(sb).into();
        r.fields = vec!["labels".into()];
        let c = Change::from_request(&r).unwrap();
        assert!(c.resources.is_none(), "spec not among the changed fields");
        assert_eq!(
            c.labels.unwrap().get("tier").map(String::as_str),
            Some("web")
        );
        r.fields = vec!["spec".into()];
        let c = Change::from_request(&r).unwrap();
        assert_eq!(
            c.resources.unwrap().pids().as_ref().map(|p| p.limit()),
            Some(64)
        );
    }

    #[test]
    fn cri_pod_resources_arrive_in_the_updated_resources_extension() {
        let mut sb = SandboxObject::new();
        sb.extensions.insert(
            UPDATED_RESOURCES_KEY.into(),
            Any {
                type_url: UPDATED_RESOURCES_TYPE.into(),
                value: br#"{"Overhead":{"memory_limit_in_bytes":16777216},"Resources":{"cpu_shares":256,"memory_limit_in_bytes":268435456}}"#.to_vec(),
                ..Default::default()
            },
        );
        let mut r = UpdateSandboxRequest::new();
        r.sandbox = Some(sb).into();
        r.fields = vec!["extensions".into()];
        let c = Change::from_request(&r).unwrap();
        assert!(
            c.resources.is_none(),
            "nothing is written to the pod cgroup"
        );
        let u = c.updated_resources.unwrap();
        assert_eq!(u["Resources"]["memory_limit_in_bytes"], 268435456);
        assert_eq!(u["Overhead"]["memory_limit_in_bytes"], 16777216);
        assert_eq!(
            c.extensions.unwrap(),
            vec![UPDATED_RESOURCES_KEY.to_string()]
        );
    }

    #[test]
    fn bad_resources_are_invalid_arguments() {
        let mut r = UpdateSandboxRequest::new();
        r.resources = Some(resources_any("{not json")).into();
        assert!(matches!(
            Change::from_request(&r),
            Err(Error::InvalidArgument(_))
        ));
        r.resources = Some(Any {
            type_url: "x.Y".into(),
            value: b"{}".to_vec(),
            ..Default::default()
        })
        .into();
        assert!(matches!(
            Change::from_request(&r),
            Err(Error::InvalidArgument(_))
        ));
    }
}
