//! The thin ttrpc adapter of the Task service: each method logs, hands the request data to
//! the task manager (`Inner`), and turns its `Result` into a ttrpc status. Handlers that
//! change state run to completion past their caller's deadline (`crate::request`).

use async_trait::async_trait;
use containerd_shim_protos::api::*;
use containerd_shim_protos::shim_async::Task;
use ttrpc::r#async::TtrpcContext;

use super::{name, ts, TaskService};
use crate::error::Error;
use crate::request::to_completion;

#[async_trait]
impl Task for TaskService {
    async fn connect(&self, _: &TtrpcContext, r: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        log::debug!("Task.Connect {}", r.id);
        Ok(self.inner.connect(&r.id)?)
    }

    async fn state(&self, _: &TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        log::debug!("Task.State {} {}", r.id, r.exec_id);
        Ok(self.inner.task_state(&r.id, &r.exec_id)?)
    }

    async fn shutdown(&self, _: &TtrpcContext, r: ShutdownRequest) -> ttrpc::Result<Empty> {
        log::debug!("Task.Shutdown {}", r.id);
        self.inner.lifetime.asked();
        Ok(Empty::new())
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        r: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        log::debug!("Task.Create {} bundle {}", r.id, r.bundle);
        let inner = self.inner.clone();
        let pid = to_completion(async move { inner.create(r).await }).await?;
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn start(&self, _: &TtrpcContext, r: StartRequest) -> ttrpc::Result<StartResponse> {
        log::debug!("Task.Start {} {}", r.id, r.exec_id);
        let inner = self.inner.clone();
        let pid = to_completion(async move { inner.start(&r.id, &r.exec_id).await }).await?;
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn delete(&self, _: &TtrpcContext, r: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        log::debug!("Task.Delete {} {}", r.id, r.exec_id);
        let inner = self.inner.clone();
        Ok(to_completion(async move { inner.delete(&r.id, &r.exec_id).await }).await?)
    }

    async fn pids(&self, _: &TtrpcContext, r: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let mut resp = PidsResponse::new();
        resp.processes = self.inner.pids(&r.id).await?;
        Ok(resp)
    }

    async fn pause(&self, _: &TtrpcContext, r: PauseRequest) -> ttrpc::Result<Empty> {
        let inner = self.inner.clone();
        to_completion(async move { inner.pause(&r.id, true).await }).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, r: ResumeRequest) -> ttrpc::Result<Empty> {
        let inner = self.inner.clone();
        to_completion(async move { inner.pause(&r.id, false).await }).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, r: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        let inner = self.inner.clone();
        to_completion(async move { inner.checkpoint(&r).await }).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, r: KillRequest) -> ttrpc::Result<Empty> {
        log::debug!(
            "Task.Kill {} {} signal {} all {}",
            r.id,
            r.exec_id,
            r.signal,
            r.all
        );
        let inner = self.inner.clone();
        to_completion(async move { inner.kill(&r).await }).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        log::debug!("Task.Exec {} {}", r.id, r.exec_id);
        self.inner.exec(&r)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, r: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let c = self.inner.container(&r.id)?;
        let p = c.process(&r.exec_id)?;
        let io = p.io().ok_or_else(|| {
            Error::FailedPrecondition(format!("{} has not started", name(&r.id, &r.exec_id)))
        })?;
        io.resize(r.width, r.height)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, r: CloseIORequest) -> ttrpc::Result<Empty> {
        let c = self.inner.container(&r.id)?;
        let p = c.process(&r.exec_id)?;
        if r.stdin {
            if let Some(io) = p.io() {
                io.close_stdin();
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, r: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let inner = self.inner.clone();
        to_completion(async move { inner.update(&r).await }).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, r: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let c = self.inner.container(&r.id)?;
        let p = c.process(&r.exec_id)?;
        let exit = p.wait().await;
        let mut resp = WaitResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at = ts(exit.at);
        Ok(resp)
    }

    async fn stats(&self, _: &TtrpcContext, r: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let mut resp = StatsResponse::new();
        resp.stats = Some(self.inner.stats(&r.id)?).into();
        Ok(resp)
    }
}
