//! Thin ttrpc adapter: `containerd.runtime.sandbox.v1.Sandbox` onto [`Manager`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::sandbox_api::*;
use containerd_shim_protos::sandbox_async::Sandbox;
use containerd_shim_protos::types::platform::Platform;
use protobuf::well_known_types::timestamp::Timestamp;
use ttrpc::r#async::TtrpcContext;

use super::{goarch, CreateParams, Manager};
use crate::request::to_completion;

pub struct SandboxService {
    pub manager: Arc<Manager>,
}

#[async_trait]
impl Sandbox for SandboxService {
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        r: CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        log::debug!("CreateSandbox {}", r.sandbox_id);
        self.manager.create(CreateParams {
            id: r.sandbox_id,
            bundle: r.bundle_path,
            options: r.options.into_option(),
            netns_path: r.netns_path,
            annotations: r.annotations,
        })?;
        Ok(CreateSandboxResponse::new())
    }

    async fn start_sandbox(
        &self,
        _: &TtrpcContext,
        r: StartSandboxRequest,
    ) -> ttrpc::Result<StartSandboxResponse> {
        log::debug!("StartSandbox {}", r.sandbox_id);
        let manager = self.manager.clone();
        let id = r.sandbox_id;
        let (pid, at) = to_completion(async move { manager.start(&id).await }).await?;
        let mut resp = StartSandboxResponse::new();
        resp.pid = pid;
        resp.created_at = Some(Timestamp::from(at)).into();
        Ok(resp)
    }

    async fn platform(
        &self,
        _: &TtrpcContext,
        r: PlatformRequest,
    ) -> ttrpc::Result<PlatformResponse> {
        log::debug!("Platform {}", r.sandbox_id);
        self.manager.get(&r.sandbox_id)?;
        let mut p = Platform::new();
        p.os = std::env::consts::OS.into();
        p.architecture = goarch().into();
        let mut resp = PlatformResponse::new();
        resp.platform = Some(p).into();
        Ok(resp)
    }

    async fn stop_sandbox(
        &self,
        _: &TtrpcContext,
        r: StopSandboxRequest,
    ) -> ttrpc::Result<StopSandboxResponse> {
        log::debug!("StopSandbox {} timeout {}s", r.sandbox_id, r.timeout_secs);
        let grace = (r.timeout_secs > 0).then(|| Duration::from_secs(r.timeout_secs.into()));
        let manager = self.manager.clone();
        to_completion(async move { manager.stop(&r.sandbox_id, grace).await }).await?;
        Ok(StopSandboxResponse::new())
    }

    async fn wait_sandbox(
        &self,
        _: &TtrpcContext,
        r: WaitSandboxRequest,
    ) -> ttrpc::Result<WaitSandboxResponse> {
        log::debug!("WaitSandbox {}", r.sandbox_id);
        let exit = self.manager.wait(&r.sandbox_id).await?;
        let mut resp = WaitSandboxResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at = Some(Timestamp::from(exit.at)).into();
        Ok(resp)
    }

    async fn sandbox_status(
        &self,
        _: &TtrpcContext,
        r: SandboxStatusRequest,
    ) -> ttrpc::Result<SandboxStatusResponse> {
        log::debug!("SandboxStatus {}", r.sandbox_id);
        let st = self.manager.status(&r.sandbox_id, r.verbose)?;
        let mut resp = SandboxStatusResponse::new();
        resp.pid = st.phase.pid();
        resp.state = st.phase.state().into();
        resp.created_at = Some(Timestamp::from(match st.phase {
            super::Phase::Running { started_at, .. } => started_at,
            super::Phase::Stopped {
                started_at: Some(s),
                ..
            } => s,
            _ => st.created_at,
        }))
        .into();
        if let super::Phase::Stopped { exit, .. } = st.phase {
            resp.exited_at = Some(Timestamp::from(exit.at)).into();
        }
        if let Some(info) = st.info {
            resp.info.insert("info".into(), info);
        }
        resp.sandbox_id = r.sandbox_id;
        Ok(resp)
    }

    async fn ping_sandbox(&self, _: &TtrpcContext, r: PingRequest) -> ttrpc::Result<PingResponse> {
        self.manager.get(&r.sandbox_id)?;
        Ok(PingResponse::new())
    }

    async fn shutdown_sandbox(
        &self,
        _: &TtrpcContext,
        r: ShutdownSandboxRequest,
    ) -> ttrpc::Result<ShutdownSandboxResponse> {
        log::debug!("ShutdownSandbox {}", r.sandbox_id);
        let manager = self.manager.clone();
        to_completion(async move { manager.shutdown(&r.sandbox_id).await }).await?;
        Ok(ShutdownSandboxResponse::new())
    }

    async fn sandbox_metrics(
        &self,
        _: &TtrpcContext,
        r: SandboxMetricsRequest,
    ) -> ttrpc::Result<SandboxMetricsResponse> {
        log::debug!("SandboxMetrics {}", r.sandbox_id);
        let data = self.manager.metrics(&r.sandbox_id)?;
        let mut resp = SandboxMetricsResponse::new();
        let m = resp.mut_metrics();
        m.timestamp = Some(Timestamp::now()).into();
        m.id = r.sandbox_id;
        m.data = Some(data).into();
        Ok(resp)
    }
}
