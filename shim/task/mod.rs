//! The `containerd.task.v3.Task` service: the containers of this shim's pods (and of plain
//! `ctr run --runtime io.containerd.cove.v1` tasks), run with runc.
//!
//! For a sandbox id, `Connect` and `State` answer for the pause process, as containerd asks
//! on restart and in `ctr tasks ls`. Every other RPC is about containers.

pub mod container;
pub mod events;
pub mod oom;
pub mod process;
pub mod runc;
pub mod stdio;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api::*;
use containerd_shim_protos::shim_async::Task;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::Message;
use ttrpc::r#async::TtrpcContext;

use crate::cgroups::Layout;
use crate::error::{Error, IoContext, Result};
use crate::protos::runc::{CheckpointOptions, Options, ProcessDetails};
use crate::reaper::{wait_exit, Exit, Reaper};
use crate::request::to_completion;
use crate::sandbox::{Manager, Phase};
use container::{Container, TASK_FILE};
use events::Events;
use process::{Process, State};
use runc::{Launch, Runc};

pub const TASK_API_VERSION: &str = "3";

/// How long an exit waits for the process's output copies to finish (a background
/// process can keep a terminal open past its parent's exit).
const IO_DRAIN: Duration = Duration::from_secs(2);

/// How long an OOM-killed init's exit waits for its `/tasks/oom` to reach containerd: as
/// long as the event is retried, so that a containerd restart does not lose the reason.
const OOM_FLUSH: Duration = events::RETRY_WINDOW;

pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    manager: Arc<Manager>,
    reaper: Reaper,
    layout: Layout,
    namespace: String,
    events: Events,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    oom_ledgers: oom::Ledgers,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ts(at: std::time::SystemTime) -> protobuf::MessageField<Timestamp> {
    Some(Timestamp::from(at)).into()
}

impl TaskService {
    pub fn new(manager: Arc<Manager>, reaper: Reaper, layout: Layout, namespace: &str) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                manager,
                reaper,
                layout,
                namespace: namespace.to_owned(),
                events: Events::start(namespace.to_owned()),
                containers: Mutex::default(),
                creating: Mutex::default(),
                oom_ledgers: oom::Ledgers::default(),
            }),
        }
    }
}

impl Inner {
    fn container(&self, id: &str) -> Result<Arc<Container>> {
        locked(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))
    }

    fn runc_for(&self, options: &Options) -> Runc {
        let binary = if options.binary_name.is_empty() {
            "runc".to_owned()
        } else {
            options.binary_name.clone()
        };
        let root = if options.root.is_empty() {
            PathBuf::from(runc::DEFAULT_ROOT)
        } else {
            PathBuf::from(&options.root)
        };
        Runc {
            binary,
            root: root.join(&self.namespace),
            systemd_cgroup: options.systemd_cgroup,
            reaper: self.reaper.clone(),
        }
    }

    async fn create(self: &Arc<Self>, r: CreateTaskRequest) -> Result<u32> {
        crate::ids::validate("task id", &r.id)?;
        if !r.checkpoint.is_empty() {
            return Err(Error::Unimplemented(format!(
                "task {}: restoring from a checkpoint needs CRIU, which cove does not drive",
                r.id
            )));
        }
        if self.manager.get(&r.id).is_ok() || locked(&self.containers).contains_key(&r.id) {
            return Err(Error::AlreadyExists(format!(
                "task {} already exists",
                r.id
            )));
        }
        if !locked(&self.creating).insert(r.id.clone()) {
            return Err(Error::AlreadyExists(format!(
                "task {} is being created",
                r.id
            )));
        }
        let res = self.create_locked(&r).await;
        locked(&self.creating).remove(&r.id);
        res
    }

    async fn create_locked(self: &Arc<Self>, r: &CreateTaskRequest) -> Result<u32> {
        let bundle = PathBuf::from(&r.bundle);
        if r.bundle.is_empty() || !bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "task {}: bundle {:?} must be an absolute path",
                r.id, r.bundle
            )));
        }
        let options = parse_options(r.options.as_ref())?;
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            Error::InvalidArgument(format!("task {}: read the bundle's config.json: {e}", r.id))
        })?;
        let kill_all_on_exit = shares_pid_namespace(&spec);
        let mut runc = self.runc_for(&options);
        // CRI writes `<slice>:cri-containerd:<id>` for pods under the systemd cgroup driver;
        // runc then needs its systemd driver, whatever the runtime options say.
        if spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .is_some_and(|p| crate::cgroups::systemd::is_systemd_cgroups_path(&p.to_string_lossy()))
        {
            runc.systemd_cgroup = true;
        }
        let plain_delete = !runc.systemd_cgroup && !has_poststop_or_rdt(&spec);

        let rootfs = bundle.join("rootfs");
        let rootfs_mounted = !r.rootfs.is_empty();
        if rootfs_mounted {
            std::fs::create_dir_all(&rootfs).context(|| format!("create {}", rootfs.display()))?;
            for m in &r.rootfs {
                if let Err(e) = containerd_shim::mount::mount_rootfs(
                    Some(m.type_.as_str()),
                    Some(m.source.as_str()),
                    &m.options,
                    &rootfs,
                ) {
                    let _ = container::unmount_rootfs(&rootfs);
                    return Err(Error::Internal(format!(
                        "task {}: mount {} ({}) on the rootfs: {e}",
                        r.id, m.source, m.type_
                    )));
                }
            }
        }
        let sandbox_id = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get("io.kubernetes.cri.sandbox-id").cloned());
        let index = match self.manager.bundle_for_task(sandbox_id.as_deref()) {
            Some(sb) => match container::index_task(&sb, &r.id) {
                Ok(e) => Some(e),
                Err(e) => {
                    if rootfs_mounted {
                        let _ = container::unmount_rootfs(&rootfs);
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        let init = Process::new(
            "",
            stdio::Paths {
                stdin: r.stdin.clone(),
                stdout: r.stdout.clone(),
                stderr: r.stderr.clone(),
                terminal: r.terminal,
            },
            Vec::new(),
        );
        let c = Arc::new(Container {
            id: r.id.clone(),
            bundle: bundle.clone(),
            runc,
            init: init.clone(),
            execs: Mutex::default(),
            rootfs_mounted,
            index,
            kill_all_on_exit,
            plain_delete,
            cgroup: Mutex::default(),
            oom: Mutex::default(),
            gate: tokio::sync::watch::channel(false).0,
        });
        // Written before runc runs, so that `delete` cleans up whatever this leaves: run
        // for the task, or for its sandbox (the only one containerd runs when a sandbox's
        // shim dies), which finds the task through its index.
        if let Err(e) = c.save() {
            if let Some(entry) = &c.index {
                let _ = std::fs::remove_file(entry);
            }
            if rootfs_mounted {
                let _ = container::unmount_rootfs(&rootfs);
            }
            return Err(e);
        }
        crate::failpoint::hit(crate::failpoint::TASK_CREATE_BEFORE_RUNC).await;
        match self.launch_init(&c, &options).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                let _ = c.runc.delete(&c.id, &bundle, true).await;
                if rootfs_mounted {
                    let _ = container::unmount_rootfs(&rootfs);
                }
                let _ = std::fs::remove_file(bundle.join(TASK_FILE));
                if let Some(entry) = &c.index {
                    let _ = std::fs::remove_file(entry);
                }
                Err(e)
            }
        }
    }

    async fn launch_init(self: &Arc<Self>, c: &Arc<Container>, options: &Options) -> Result<u32> {
        let mut prep = stdio::prepare(
            &c.init.paths,
            stdio::Owner {
                id: &c.id,
                namespace: &self.namespace,
                reaper: &self.reaper,
            },
        )
        .await?;
        let pid_file = c.bundle.join("init.pid");
        let stdio = prep.stdio()?;
        let console = prep.console.as_ref().map(|s| s.path.clone());
        let born = std::time::Instant::now();
        c.runc
            .create(
                &c.id,
                &c.bundle,
                Launch {
                    pid_file: pid_file.clone(),
                    console_socket: console.as_deref(),
                    stdio: Some(stdio),
                },
                options.no_pivot_root,
                options.no_new_keyring,
            )
            .await?;
        let pid = read_pid(&pid_file)?;
        crate::failpoint::hit(crate::failpoint::TASK_CREATE_AFTER_RUNC).await;
        let exit = self.reaper.watch(pid as i32, born);
        let io = prep.finish().await?;
        c.init.set_created(pid, io);
        if let Some(cg) = crate::cgroups::cgroup_of(pid, &self.layout) {
            *locked(&c.oom) = oom::Oom::watch(
                &self.layout,
                &cg,
                &c.id,
                self.events.clone(),
                &self.oom_ledgers,
            );
            *locked(&c.cgroup) = Some(cg);
        }
        locked(&self.containers).insert(c.id.clone(), c.clone());
        self.manager.tasks_changed(true);
        self.manager.serving_tasks_only().await;
        let p = &c.init.paths;
        self.events.create(
            &c.id,
            &c.bundle.to_string_lossy(),
            pid,
            [&p.stdin, &p.stdout, &p.stderr],
            p.terminal,
        );
        tokio::spawn(self.clone().on_init_exit(c.clone(), exit));
        log::info!("created task {} (pid {pid})", c.id);
        Ok(pid)
    }

    async fn on_init_exit(
        self: Arc<Self>,
        c: Arc<Container>,
        mut rx: tokio::sync::watch::Receiver<Option<Exit>>,
    ) {
        let Some(exit) = wait_exit(&mut rx).await else {
            return;
        };
        c.init.set_reaped();
        let mut gate = c.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let oom = locked(&c.oom).clone();
        if let Some(oom) = oom {
            // CRI learns of the exit from Task.Wait, which returns once the init is marked
            // stopped below; its reason is OOMKilled only if /tasks/oom reached containerd
            // first, so an OOM kill is delivered before the exit is let out.
            if oom.check_exit(exit.status == 128 + libc::SIGKILL as u32) {
                self.events.flushed(OOM_FLUSH).await;
            }
        }
        if c.kill_all_on_exit {
            if let Err(e) = self.kill_all(&c, libc::SIGKILL).await {
                log::debug!("kill the rest of {}: {e}", c.id);
            }
        }
        if let Some(io) = c.init.io() {
            io.drained(IO_DRAIN).await;
        }
        c.init.set_stopped(exit);
        if !c.init.is_deleted() {
            self.events.exit(&c.id, "", c.init.pid(), exit);
        }
        log::info!("task {} exited with status {}", c.id, exit.status);
    }

    async fn on_exec_exit(
        self: Arc<Self>,
        c: Arc<Container>,
        p: Arc<Process>,
        mut rx: tokio::sync::watch::Receiver<Option<Exit>>,
    ) {
        let Some(exit) = wait_exit(&mut rx).await else {
            return;
        };
        p.set_reaped();
        if let Some(io) = p.io() {
            io.drained(IO_DRAIN).await;
        }
        p.set_stopped(exit);
        self.events.exit(&c.id, &p.exec_id, p.pid(), exit);
    }

    async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if (!exec_id.is_empty() && p.pid() != 0) || !p.begin_start() {
            return Err(Error::FailedPrecondition(format!(
                "{} was already started",
                name(id, exec_id)
            )));
        }
        let res = self.start_claimed(&c, &p, id, exec_id).await;
        if res.is_err() {
            p.start_failed();
        }
        res
    }

    async fn start_claimed(
        self: &Arc<Self>,
        c: &Arc<Container>,
        p: &Arc<Process>,
        id: &str,
        exec_id: &str,
    ) -> Result<u32> {
        if exec_id.is_empty() {
            let res = c.runc.start(id, &c.bundle).await;
            if res.is_ok() && p.transition(State::Running) {
                self.events.start_(id, p.pid());
            }
            c.open_gate();
            res?;
            log::info!("started task {id}");
            return Ok(p.pid());
        }
        if c.init.state() != State::Running {
            return Err(Error::FailedPrecondition(format!(
                "cannot start exec {exec_id}: task {id} is not running"
            )));
        }
        let mut prep = stdio::prepare(
            &p.paths,
            stdio::Owner {
                id,
                namespace: &self.namespace,
                reaper: &self.reaper,
            },
        )
        .await?;
        let spec_file = c.bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = c.bundle.join(format!("exec-{exec_id}.pid"));
        std::fs::write(&spec_file, &p.spec).context(|| format!("write {}", spec_file.display()))?;
        let stdio = prep.stdio()?;
        let console = prep.console.as_ref().map(|s| s.path.clone());
        let born = std::time::Instant::now();
        let res = c
            .runc
            .exec(
                id,
                &c.bundle,
                &spec_file,
                Launch {
                    pid_file: pid_file.clone(),
                    console_socket: console.as_deref(),
                    stdio: Some(stdio),
                },
            )
            .await;
        let _ = std::fs::remove_file(&spec_file);
        let pid = res.and_then(|_| read_pid(&pid_file));
        let _ = std::fs::remove_file(&pid_file);
        let pid = pid?;
        let exit = self.reaper.watch(pid as i32, born);
        let io = prep.finish().await?;
        p.set_created(pid, io);
        p.transition(State::Running);
        self.events.exec_started(id, exec_id, pid);
        tokio::spawn(self.clone().on_exec_exit(c.clone(), p.clone(), exit));
        Ok(pid)
    }

    async fn delete(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if matches!(p.state(), State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "{} is still running; kill it before deleting",
                name(id, exec_id)
            )));
        }
        let mut resp = DeleteResponse::new();
        resp.pid = p.pid();
        if !exec_id.is_empty() {
            c.execs().remove(exec_id);
            if let Some(io) = p.io() {
                io.shutdown();
            }
            if let Some(exit) = p.exit() {
                resp.exit_status = exit.status;
                resp.exited_at = ts(exit.at);
            }
            return Ok(resp);
        }
        if p.mark_deleted() {
            return Err(Error::NotFound(format!("task {id} is being deleted")));
        }
        c.open_gate();
        // A container whose processes are all gone needs no runc run to be deleted.
        let removed = c.plain_delete && p.exit().is_some() && c.runc.remove_stopped(id);
        if !removed {
            if let Err(e) = c.runc.delete(id, &c.bundle, true).await {
                if !matches!(e, Error::NotFound(_)) {
                    log::warn!("{e}");
                }
            }
        }
        let exit = match p.exit() {
            Some(e) => e,
            None => tokio::time::timeout(IO_DRAIN, p.wait())
                .await
                .unwrap_or(Exit {
                    status: 128 + libc::SIGKILL as u32,
                    at: std::time::SystemTime::now(),
                }),
        };
        for e in c.execs().drain() {
            if let Some(io) = e.1.io() {
                io.shutdown();
            }
        }
        if let Some(io) = p.io() {
            io.shutdown();
        }
        if c.rootfs_mounted {
            let unmounted = if crate::failpoint::fails(crate::failpoint::TASK_DELETE_UNMOUNT) {
                Err(Error::Internal(format!(
                    "unmount {}: failpoint",
                    c.rootfs().display()
                )))
            } else {
                container::unmount_rootfs(&c.rootfs())
            };
            if let Err(e) = unmounted {
                // Keep the container, and let containerd's retry delete it again.
                p.unmark_deleted();
                return Err(e);
            }
        }
        let _ = std::fs::remove_file(c.bundle.join(TASK_FILE));
        if let Some(entry) = &c.index {
            let _ = std::fs::remove_file(entry);
        }
        if let Some(oom) = locked(&c.oom).take() {
            oom.stop();
        }
        locked(&self.containers).remove(id);
        self.manager.tasks_changed(false);
        self.events.delete(id, resp.pid, Some(exit));
        resp.exit_status = exit.status;
        resp.exited_at = ts(exit.at);
        log::info!("deleted task {id}");
        self.manager.exit_if_idle(false);
        Ok(resp)
    }

    async fn kill(&self, r: &KillRequest) -> Result<()> {
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
    async fn kill_all(&self, c: &Container, sig: i32) -> Result<()> {
        let cgroup = locked(&c.cgroup).clone();
        match cgroup {
            Some(cg) if sig == libc::SIGKILL => self.layout.kill_all(&cg).map(drop),
            _ => c.runc.kill(&c.id, &c.bundle, sig, true).await,
        }
    }

    fn exec(&self, r: &ExecProcessRequest) -> Result<()> {
        crate::ids::validate("exec id", &r.exec_id)?;
        let c = self.container(&r.id)?;
        if c.init.state() == State::Stopped {
            return Err(Error::FailedPrecondition(format!(
                "cannot exec in task {}: it has stopped",
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

    fn state(&self, c: &Container, exec_id: &str) -> Result<StateResponse> {
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

    async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
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

    async fn pause(&self, id: &str, pause: bool) -> Result<()> {
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

    async fn update(&self, r: &UpdateTaskRequest) -> Result<()> {
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

    async fn checkpoint(&self, r: &CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&r.id)?;
        let opts = match r.options.as_ref() {
            Some(a) if a.type_url.ends_with("CheckpointOptions") => {
                CheckpointOptions::parse_from_bytes(&a.value)
                    .map_err(|e| Error::InvalidArgument(format!("checkpoint options: {e}")))?
            }
            _ => CheckpointOptions::default(),
        };
        let image = if opts.image_path.is_empty() {
            r.path.clone()
        } else {
            opts.image_path.clone()
        };
        if image.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "checkpoint of task {} needs an image path",
                r.id
            )));
        }
        let mut args = vec!["--image-path".to_owned(), image];
        if !opts.work_path.is_empty() {
            args.extend(["--work-path".to_owned(), opts.work_path.clone()]);
        }
        if !opts.exit {
            args.push("--leave-running".into());
        }
        for (on, flag) in [
            (opts.open_tcp, "--tcp-established"),
            (opts.external_unix_sockets, "--ext-unix-sk"),
            (opts.terminal, "--shell-job"),
            (opts.file_locks, "--file-locks"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        for ns in &opts.empty_namespaces {
            args.extend(["--empty-ns".to_owned(), ns.clone()]);
        }
        let err = match c.runc.checkpoint(&r.id, &c.bundle, &args).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Say why when CRIU itself cannot work here, which runc's message does not.
        if !on_path("criu") {
            return Err(Error::FailedPrecondition(format!(
                "checkpoint of task {} needs CRIU, and no criu binary is installed on this host ({err})",
                r.id
            )));
        }
        let mut check = std::process::Command::new("criu");
        check.arg("check");
        if let Ok(out) = runc::run_command(&self.reaper, check, None).await {
            if out.status != 0 {
                let text = String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout);
                let why = text
                    .lines()
                    .rev()
                    .find(|l| l.contains("Error"))
                    .unwrap_or("failed");
                return Err(Error::FailedPrecondition(format!(
                    "checkpoint of task {} needs CRIU, and CRIU cannot run on this host: `criu check`: {} ({err})",
                    r.id,
                    why.trim()
                )));
            }
        }
        Err(err)
    }

    fn stats(&self, id: &str) -> Result<Any> {
        let c = self.container(id)?;
        let Some(cg) = c.cgroup() else {
            return Err(Error::FailedPrecondition(format!(
                "task {id} has no cgroup to read"
            )));
        };
        crate::cgroups::stats::metrics_any(&self.layout, &cg)
    }
}

fn name(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("task {id}")
    } else {
        format!("exec {exec_id} of task {id}")
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn read_pid(file: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(file).context(|| format!("read {}", file.display()))?;
    text.trim()
        .parse()
        .map_err(|e| Error::Internal(format!("pid file {}: {e}", file.display())))
}

/// runc `Options` from a create request (runc's own type, or CRI's generic TOML body).
fn parse_options(any: Option<&Any>) -> Result<Options> {
    crate::options::runc_options(any)
}

/// Whether `runc delete` would do more than remove state and cgroups for this spec.
fn has_poststop_or_rdt(spec: &Spec) -> bool {
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

/// Whether the container's pid namespace is shared (joined by path, or the host's).
fn shares_pid_namespace(spec: &Spec) -> bool {
    let Some(ns) = spec.linux().as_ref().and_then(|l| l.namespaces().clone()) else {
        return true;
    };
    match ns.iter().find(|n| n.typ() == LinuxNamespaceType::Pid) {
        None => true,
        Some(n) => n.path().is_some(),
    }
}

#[async_trait]
impl Task for TaskService {
    async fn connect(&self, _: &TtrpcContext, r: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        log::debug!("Task.Connect {}", r.id);
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.version = TASK_API_VERSION.into();
        if let Ok(c) = self.inner.container(&r.id) {
            resp.task_pid = c.init.pid();
            return Ok(resp);
        }
        let sb = self
            .inner
            .manager
            .get(&r.id)
            .map_err(|_| Error::NotFound(format!("task {} not found", r.id)))?;
        resp.task_pid = match sb.phase() {
            Phase::Running { pid, .. } => pid,
            _ => 0,
        };
        Ok(resp)
    }

    async fn state(&self, _: &TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        log::debug!("Task.State {} {}", r.id, r.exec_id);
        if let Ok(c) = self.inner.container(&r.id) {
            return Ok(self.inner.state(&c, &r.exec_id)?);
        }
        if !r.exec_id.is_empty() {
            return Err(
                Error::NotFound(format!("exec {} of task {} not found", r.exec_id, r.id)).into(),
            );
        }
        let sb = self
            .inner
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
                resp.exited_at = ts(exit.at);
                Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }

    async fn shutdown(&self, _: &TtrpcContext, r: ShutdownRequest) -> ttrpc::Result<Empty> {
        log::debug!("Task.Shutdown {}", r.id);
        self.inner.manager.exit_if_idle(true);
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

#[cfg(test)]
mod tests {
    use super::*;

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
