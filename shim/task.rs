//! The Task service (`containerd.task.v3.Task`), the part a sandbox needs: Connect and
//! State for the sandbox id (containerd calls Connect on every bundle when it restarts,
//! and `ctr tasks ls` calls State), and Shutdown, which never ends the server while a
//! sandbox is alive. Every other RPC answers UNIMPLEMENTED, never the generated NOT_FOUND.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::*;
use containerd_shim_protos::shim_async::Task;
use protobuf::well_known_types::timestamp::Timestamp;
use ttrpc::r#async::TtrpcContext;

use crate::error::Error;
use crate::sandbox::{Manager, Phase};

/// The task API version cove serves (bootstrap version 3).
pub const TASK_API_VERSION: &str = "3";

pub struct TaskService {
    pub manager: Arc<Manager>,
}

fn unimplemented<T>(rpc: &str, id: &str) -> ttrpc::Result<T> {
    Err(Error::Unimplemented(format!(
        "task {rpc} for {id:?} is not implemented by cove yet"
    ))
    .into())
}

#[async_trait]
impl Task for TaskService {
    async fn connect(&self, _: &TtrpcContext, r: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        log::debug!("Task.Connect {}", r.id);
        let sb = self
            .manager
            .get(&r.id)
            .map_err(|_| Error::NotFound(format!("task {} not found", r.id)))?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = match sb.phase() {
            Phase::Running { pid, .. } => pid,
            _ => 0,
        };
        resp.version = TASK_API_VERSION.into();
        Ok(resp)
    }

    async fn state(&self, _: &TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        log::debug!("Task.State {}", r.id);
        if !r.exec_id.is_empty() {
            return Err(
                Error::NotFound(format!("exec {} of task {} not found", r.exec_id, r.id)).into(),
            );
        }
        let sb = self
            .manager
            .get(&r.id)
            .map_err(|_| Error::NotFound(format!("task {} not found", r.id)))?;
        let mut resp = StateResponse::new();
        resp.id = r.id;
        resp.bundle = sb.bundle.to_string_lossy().into_owned();
        let phase = sb.phase();
        resp.pid = phase.pid();
        resp.status = match phase {
            Phase::Created => Status::CREATED,
            Phase::Running { .. } => Status::RUNNING,
            Phase::Stopped { exit, .. } => {
                resp.exit_status = exit.status;
                resp.exited_at = Some(Timestamp::from(exit.at)).into();
                Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }

    async fn shutdown(&self, _: &TtrpcContext, r: ShutdownRequest) -> ttrpc::Result<Empty> {
        log::debug!("Task.Shutdown {}", r.id);
        if self.manager.has_sandboxes() {
            log::debug!(
                "Task.Shutdown {}: a sandbox is still alive; staying up",
                r.id
            );
        } else {
            self.manager.request_exit();
        }
        Ok(Empty::new())
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        r: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        unimplemented("Create", &r.id)
    }
    async fn start(&self, _: &TtrpcContext, r: StartRequest) -> ttrpc::Result<StartResponse> {
        unimplemented("Start", &r.id)
    }
    async fn delete(&self, _: &TtrpcContext, r: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        unimplemented("Delete", &r.id)
    }
    async fn pids(&self, _: &TtrpcContext, r: PidsRequest) -> ttrpc::Result<PidsResponse> {
        unimplemented("Pids", &r.id)
    }
    async fn pause(&self, _: &TtrpcContext, r: PauseRequest) -> ttrpc::Result<Empty> {
        unimplemented("Pause", &r.id)
    }
    async fn resume(&self, _: &TtrpcContext, r: ResumeRequest) -> ttrpc::Result<Empty> {
        unimplemented("Resume", &r.id)
    }
    async fn checkpoint(&self, _: &TtrpcContext, r: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        unimplemented("Checkpoint", &r.id)
    }
    async fn kill(&self, _: &TtrpcContext, r: KillRequest) -> ttrpc::Result<Empty> {
        unimplemented("Kill", &r.id)
    }
    async fn exec(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        unimplemented("Exec", &r.id)
    }
    async fn resize_pty(&self, _: &TtrpcContext, r: ResizePtyRequest) -> ttrpc::Result<Empty> {
        unimplemented("ResizePty", &r.id)
    }
    async fn close_io(&self, _: &TtrpcContext, r: CloseIORequest) -> ttrpc::Result<Empty> {
        unimplemented("CloseIO", &r.id)
    }
    async fn update(&self, _: &TtrpcContext, r: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        unimplemented("Update", &r.id)
    }
    async fn wait(&self, _: &TtrpcContext, r: WaitRequest) -> ttrpc::Result<WaitResponse> {
        unimplemented("Wait", &r.id)
    }
    async fn stats(&self, _: &TtrpcContext, r: StatsRequest) -> ttrpc::Result<StatsResponse> {
        unimplemented("Stats", &r.id)
    }
}
