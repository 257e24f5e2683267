//! What is done to a running container: signals, execs, state, pids, pause and resume,
//! resource updates, stats; and Connect/State for the sandbox id.

use std::collections::HashMap;

use containerd_shim_protos::api::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use protobuf::well_known_types::any::Any;
use protobuf::Message;

use super::container::Container;
use super::process::{Process, State};
use super::{name, stdio, ts, Inner, TASK_API_VERSION};
use crate::error::{Error, IoContext, Result};
use crate::lock::lock;
use crate::protos::runc::ProcessDetails;
use crate::sandbox::Phase;

impl Inner {
    pub(super) async fn kill(&self, r: &KillRequest) -> Result<()> {
        let c = self.container(&r.id)?;
        let p = c.process(&r.exec_id)?;
        let sig = Signal::try_from(r.signal as i32).map_err(|_| {
            Error::InvalidArgument(format!("signal {} is not a valid signal", r.signal))
        })?;
        if r.exec_id.is_empty() {
            c.open_gate();
            if r.all {
                return self.kill_all(&c, sig as i32).await;
            }
        }
        let finished = || {
            Error::NotFound(format!(
                "{}: process already finished",
                name(&r.id, &r.exec_id)
            ))
        };
        if p.is_reaped() {
            // Its pid may belong to another process by now.
            return Err(finished());
        }
        if p.pid() == 0 {
            // A task created from a checkpoint has no process until its Start restores it.
            return Err(Error::NotFound(format!(
                "{} has no process to signal: it is not restored yet",
                name(&r.id, &r.exec_id)
            )));
        }
        match p.state() {
            State::Stopped => return Err(finished()),
            State::Created if !r.exec_id.is_empty() => {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} of task {} was not started",
                    r.exec_id, r.id
                )))
            }
            _ => {}
        }
        match nix::sys::signal::kill(Pid::from_raw(p.pid() as i32), sig) {
            Ok(()) => Ok(()),
            Err(nix::Error::ESRCH) => Err(finished()),
            Err(e) => Err(Error::sys(format!("signal {}", name(&r.id, &r.exec_id)), e)),
        }
    }

    /// Signals every process of a container. SIGKILL goes straight to the container's
    /// cgroup; other signals go through `runc kill --all`, which freezes the cgroup first.
    pub(super) async fn kill_all(&self, c: &Container, sig: i32) -> Result<()> {
        let cgroup = lock(&c.cgroup).clone();
        match cgroup {
            Some(cg) if sig == libc::SIGKILL => self.layout.kill_all(&cg).map(drop),
            _ => c.runc.kill(&c.id, &c.bundle, sig, true).await,
        }
    }

    pub(super) fn exec(&self, r: &ExecProcessRequest) -> Result<()> {
        crate::ids::validate("exec id", &r.exec_id)?;
        let c = self.container(&r.id)?;
        if c.init.state() == State::Stopped {
            return Err(Error::FailedPrecondition(format!(
                "cannot exec in task {}: it has stopped",
                r.id
            )));
        }
        if c.init.pid() == 0 {
            return Err(Error::FailedPrecondition(format!(
                "cannot exec in task {}: it is not restored from its checkpoint yet",
                r.id
            )));
        }
        let spec = r.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec).map_err(|e| {
            Error::InvalidArgument(format!(
                "exec {} of task {}: process spec: {e}",
                r.exec_id, r.id
            ))
        })?;
        let mut execs = c.execs();
        if execs.contains_key(&r.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} of task {} already exists",
                r.exec_id, r.id
            )));
        }
        let p = Process::new(
            &r.exec_id,
            stdio::Paths {
                stdin: r.stdin.clone(),
                stdout: r.stdout.clone(),
                stderr: r.stderr.clone(),
                terminal: r.terminal,
            },
            spec,
        );
        execs.insert(r.exec_id.clone(), p);
        drop(execs);
        self.events.exec_added(&r.id, &r.exec_id);
        Ok(())
    }

    pub(super) fn state(&self, c: &Container, exec_id: &str) -> Result<StateResponse> {
        let p = c.process(exec_id)?;
        let mut resp = StateResponse::new();
        resp.id = c.id.clone();
        resp.exec_id = exec_id.to_owned();
        resp.bundle = c.bundle.to_string_lossy().into_owned();
        resp.pid = p.pid();
        resp.status = p.state().proto().into();
        resp.stdin = p.paths.stdin.clone();
        resp.stdout = p.paths.stdout.clone();
        resp.stderr = p.paths.stderr.clone();
        resp.terminal = p.paths.terminal;
        if let Some(exit) = p.exit() {
            resp.exit_status = exit.status;
            resp.exited_at = ts(exit.at);
        }
        Ok(resp)
    }

    pub(super) async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let c = self.container(id)?;
        let mut pids = c.runc.ps(id, &c.bundle).await?;
        // The init stays the task's process until the task is deleted, even once it has
        // died: on restart containerd takes a shim whose task lists no pid for a leaked
        // one and deletes the task, and CRI then reports the container's end as "Unknown"
        // (exit 255) instead of its exit code and reason, such as an OOM kill whose event
        // was still on its way to the restarting containerd.
        let init = c.init.pid();
        if init != 0 && !pids.contains(&init) {
            pids.insert(0, init);
        }
        let execs: HashMap<u32, String> = c
            .execs()
            .values()
            .filter(|p| p.pid() != 0)
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        let mut out = Vec::with_capacity(pids.len());
        for pid in pids {
            let mut info = ProcessInfo::new();
            info.pid = pid;
            if let Some(exec_id) = execs.get(&pid) {
                let d = ProcessDetails {
                    exec_id: exec_id.clone(),
                    ..Default::default()
                };
                info.info = Some(Any {
                    type_url: "containerd.runc.v1.ProcessDetails".into(),
                    value: d
                        .write_to_bytes()
                        .map_err(|e| Error::Internal(format!("encode process details: {e}")))?,
                    ..Default::default()
                })
                .into();
            }
            out.push(info);
        }
        Ok(out)
    }

    pub(super) async fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.container(id)?;
        let (from, to) = if pause {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        if c.init.state() != from {
            return Err(Error::FailedPrecondition(format!(
                "task {id} is {:?}, not {:?}",
                c.init.state(),
                from
            )));
        }
        if pause {
            c.runc.pause(id, &c.bundle).await?;
        } else {
            c.runc.resume(id, &c.bundle).await?;
        }
        if c.init.transition(to) {
            if pause {
                self.events.paused(id);
            } else {
                self.events.resumed(id);
            }
        }
        Ok(())
    }

    pub(super) async fn update(&self, r: &UpdateTaskRequest) -> Result<()> {
        let c = self.container(&r.id)?;
        let value = r
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        serde_json::from_slice::<LinuxResources>(&value).map_err(|e| {
            Error::InvalidArgument(format!("update of task {}: resources: {e}", r.id))
        })?;
        if c.init.state() == State::Stopped {
            return Err(Error::FailedPrecondition(format!(
                "cannot update task {}: it has stopped",
                r.id
            )));
        }
        let file = c.bundle.join("cove-update.json");
        std::fs::write(&file, &value).context(|| format!("write {}", file.display()))?;
        let res = c.runc.update(&r.id, &c.bundle, &file).await;
        let _ = std::fs::remove_file(&file);
        res
    }

    pub(super) fn stats(&self, id: &str) -> Result<Any> {
        let c = self.container(id)?;
        let Some(cg) = c.cgroup() else {
            return Err(Error::FailedPrecondition(format!(
                "task {id} has no cgroup to read"
            )));
        };
        crate::cgroups::stats::metrics_any(&self.layout, &cg)
    }

    /// Task.Connect: for a container, or for the sandbox id (containerd reconnects every
    /// bundle, the sandbox's included, with it on restart).
    /// Task.Connect. An empty id asks only who the shim is (containerd's tooling and tests
    /// learn the shim's pid that way; the runc shim answers any id): the shim's pid, and as
    /// the task pid the pause's while the shim's sandbox runs, or the init's of a shim
    /// serving one plain task, else 0. An unknown id is NOT_FOUND: containerd's restart
    /// cleans up a bundle whose Connect fails.
    pub(super) fn connect(&self, id: &str) -> Result<ConnectResponse> {
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.version = TASK_API_VERSION.into();
        if id.is_empty() {
            resp.task_pid = match self.manager.only().map(|sb| sb.phase()) {
                Some(Phase::Running { pid, .. }) => pid,
                Some(_) => 0,
                None => {
                    let all = lock(&self.containers);
                    match all.len() {
                        1 => all.values().next().map_or(0, |c| c.init.pid()),
                        _ => 0,
                    }
                }
            };
            return Ok(resp);
        }
        if let Ok(c) = self.container(id) {
            resp.task_pid = c.init.pid();
            return Ok(resp);
        }
        let sb = self
            .manager
            .get(id)
            .map_err(|_| Error::NotFound(format!("task {id} not found")))?;
        resp.task_pid = match sb.phase() {
            Phase::Running { pid, .. } => pid,
            _ => 0,
        };
        Ok(resp)
    }

    /// Task.State: for a container or one of its execs, or for the sandbox id (the pause
    /// process, as `ctr tasks ls` asks).
    pub(super) fn task_state(&self, id: &str, exec_id: &str) -> Result<StateResponse> {
        if let Ok(c) = self.container(id) {
            return self.state(&c, exec_id);
        }
        if !exec_id.is_empty() {
            return Err(Error::NotFound(format!(
                "exec {exec_id} of task {id} not found"
            )));
        }
        let sb = self
            .manager
            .get(id)
            .map_err(|_| Error::NotFound(format!("task {id} not found")))?;
        let mut resp = StateResponse::new();
        resp.id = id.to_owned();
        resp.bundle = sb.bundle.to_string_lossy().into_owned();
        let phase = sb.phase();
        resp.pid = phase.pid();
        resp.status = match phase {
            Phase::Created => Status::CREATED,
            Phase::Running { .. } => Status::RUNNING,
            Phase::Stopped { exit, .. } => {
                resp.exit_status = exit.status;
                resp.exited_at = ts(exit.at);
                Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }
}
