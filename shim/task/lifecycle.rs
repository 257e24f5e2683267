//! A container's life: Task.Create (rootfs, the crash record, `runc create`), Start (of
//! the init or an exec), the exits the reaper reports, and Delete. A task created from a
//! checkpoint runs nothing at Create: its Start runs `runc restore`, as containerd's runc
//! shim does (a restored process runs at once; a created task must not).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api::*;
use oci_spec::runtime::Spec;

use super::container::{self, Container, Restore, TASK_FILE};
use super::process::{Process, State};
use super::runc::{Launch, RestoreFrom};
use super::spec::{
    has_poststop_or_rdt, parse_options, read_pid, shares_pid_namespace, uses_systemd_cgroups,
};
use super::{checkpoint, name, oom, stdio, ts, Inner, IO_DRAIN, OOM_FLUSH};
use crate::error::{Error, IoContext, Result};
use crate::lock::lock;
use crate::protos::runc::Options;
use crate::reaper::{wait_exit, Exit};

/// How long a task left in a sandbox being shut down gets to exit after SIGKILL (a process
/// in an uninterruptible sleep, on a hung mount, can take longer) before it is deleted
/// regardless.
const LEFT_TASK_EXIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How runc makes a task's init.
enum InitRun<'a> {
    Create(&'a Options),
    Restore(&'a RestoreFrom),
}

impl Inner {
    pub(super) async fn create(self: &Arc<Self>, r: CreateTaskRequest) -> Result<u32> {
        crate::ids::validate("task id", &r.id)?;
        if !r.parent_checkpoint.is_empty() {
            return Err(Error::Unimplemented(format!(
                "task {}: a restore from a parent checkpoint (incremental): runc restore has no such option",
                r.id
            )));
        }
        if !r.checkpoint.is_empty() {
            super::checkpoint::check_image(&r.id, &r.checkpoint)?;
        }
        if self.manager.get(&r.id).is_ok() || lock(&self.containers).contains_key(&r.id) {
            return Err(Error::AlreadyExists(format!(
                "task {} already exists",
                r.id
            )));
        }
        if !lock(&self.creating).insert(r.id.clone()) {
            return Err(Error::AlreadyExists(format!(
                "task {} is being created",
                r.id
            )));
        }
        let res = self.create_locked(&r).await;
        lock(&self.creating).remove(&r.id);
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
        if uses_systemd_cgroups(&spec) {
            runc.systemd_cgroup = true;
        }
        let plain_delete = !runc.systemd_cgroup && !has_poststop_or_rdt(&spec);

        let rootfs = bundle.join("rootfs");
        let rootfs_mounted = !r.rootfs.is_empty();
        let spec_maps = super::spec::id_mappings(&spec);
        if rootfs_mounted {
            std::fs::create_dir_all(&rootfs).context(|| format!("create {}", rootfs.display()))?;
            for m in &r.rootfs {
                if let Err(e) = crate::idmap::mount_rootfs(
                    &m.type_,
                    &m.source,
                    &m.options,
                    &rootfs,
                    &bundle.join(container::IDMAP_SCRATCH),
                    spec_maps.as_ref(),
                ) {
                    let _ = container::unmount_rootfs(&rootfs);
                    let why = format!(
                        "task {}: mount {} ({}) on the rootfs",
                        r.id, m.source, m.type_
                    );
                    return Err(match e {
                        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{why}: {m}")),
                        Error::Unimplemented(m) => Error::Unimplemented(format!("{why}: {m}")),
                        e => Error::Internal(format!("{why}: {e}")),
                    });
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
            restore: tokio::sync::Mutex::new(if r.checkpoint.is_empty() {
                Restore::None
            } else {
                Restore::Pending(RestoreFrom {
                    image: PathBuf::from(&r.checkpoint),
                    work: (!options.criu_work_path.is_empty())
                        .then(|| PathBuf::from(&options.criu_work_path)),
                    no_pivot: options.no_pivot_root,
                })
            }),
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
        if !r.checkpoint.is_empty() {
            // Nothing runs until Start; the task is created with no process (pid 0).
            self.register_init(&c, 0, &r.checkpoint).await;
            log::info!("created task {} from checkpoint {}", c.id, r.checkpoint);
            return Ok(0);
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

    /// Makes a created task known: to the task table, the server's lifetime, and containerd
    /// (`/tasks/create`, with the checkpoint it is restored from, if any).
    async fn register_init(self: &Arc<Self>, c: &Arc<Container>, pid: u32, checkpoint: &str) {
        lock(&self.containers).insert(c.id.clone(), c.clone());
        self.lifetime.task_added();
        self.manager.serving_tasks_only().await;
        let p = &c.init.paths;
        self.events.create(
            &c.id,
            &c.bundle.to_string_lossy(),
            pid,
            [&p.stdin, &p.stdout, &p.stderr],
            p.terminal,
            checkpoint,
        );
    }

    /// The stdio of a process of container `id`, prepared for the runc run that starts it.
    async fn prepare_stdio(&self, id: &str, paths: &stdio::Paths) -> Result<stdio::Prepared> {
        let owner = stdio::Owner {
            id,
            namespace: &self.namespace,
            reaper: &self.reaper,
        };
        stdio::prepare(paths, owner).await
    }

    async fn launch_init(self: &Arc<Self>, c: &Arc<Container>, options: &Options) -> Result<u32> {
        let (pid, exit) = self.run_init(c, InitRun::Create(options)).await?;
        self.register_init(c, pid, "").await;
        tokio::spawn(self.clone().on_init_exit(c.clone(), exit));
        log::info!("created task {} (pid {pid})", c.id);
        Ok(pid)
    }

    /// runc's run that makes the init (`create`, or `restore` of a checkpoint), then its
    /// adoption: its pid and the watch of its exit.
    async fn run_init(
        self: &Arc<Self>,
        c: &Arc<Container>,
        how: InitRun<'_>,
    ) -> Result<(u32, tokio::sync::watch::Receiver<Option<Exit>>)> {
        let mut prep = self.prepare_stdio(&c.id, &c.init.paths).await?;
        let pid_file = c.bundle.join("init.pid");
        let stdio = prep.stdio()?;
        let console = prep.console.as_ref().map(|s| s.path.clone());
        let launch = Launch {
            pid_file: pid_file.clone(),
            console_socket: console.as_deref(),
            stdio: Some(stdio),
        };
        let born = std::time::Instant::now();
        match how {
            InitRun::Create(options) => {
                c.runc
                    .create(
                        &c.id,
                        &c.bundle,
                        launch,
                        options.no_pivot_root,
                        options.no_new_keyring,
                    )
                    .await?;
            }
            InitRun::Restore(from) => {
                let what = format!("restore of task {} from {}", c.id, from.image.display());
                let (work, own) = checkpoint::restore_work(&c.bundle, from.work.as_deref())
                    .map_err(|e| e.within(&what))?;
                let from = RestoreFrom {
                    work: Some(work.clone()),
                    ..from.clone()
                };
                crate::failpoint::hit(crate::failpoint::TASK_START_RESTORE).await;
                let ran = c.runc.restore(&c.id, &c.bundle, launch, &from).await;
                let ran = match ran {
                    Err(e) => {
                        let e = self.criu_failed(&what, e).await;
                        Err(checkpoint::keep_log(&c.bundle, &work, "restore.log").await(
                            e,
                        ))
                    }
                    Ok(()) => Ok(()),
                };
                if own {
                    if let Err(e) = std::fs::remove_dir_all(&work) {
                        log::warn!("{what}: remove {}: {e}", work.display());
                    }
                }
                let restored = match ran {
                    Err(e) => Err(e),
                    Ok(()) => match read_pid(&pid_file) {
                        Ok(pid) => self.adopt_init(c, pid, born, prep).await.map(|e| (pid, e)),
                        Err(e) => Err(e),
                    },
                };
                // Whatever runc left of a restore that failed (a timed-out runc is killed
                // before it cleans up; a restored init whose adoption failed still runs).
                return match restored {
                    Ok(done) => Ok(done),
                    Err(e) => {
                        if let Err(d) = c.runc.delete(&c.id, &c.bundle, true).await {
                            if !matches!(d, Error::NotFound(_)) {
                                log::warn!("{what}: clean up: {d}");
                            }
                        }
                        Err(e.within(&what))
                    }
                };
            }
        }
        let pid = read_pid(&pid_file)?;
        crate::failpoint::hit(crate::failpoint::TASK_CREATE_AFTER_RUNC).await;
        let exit = self.adopt_init(c, pid, born, prep).await?;
        Ok((pid, exit))
    }

    /// What follows runc's launch of an init (`create` or `restore`): its exit is watched,
    /// its cgroup and OOM kills too, and its stdio copies begin.
    async fn adopt_init(
        self: &Arc<Self>,
        c: &Arc<Container>,
        pid: u32,
        born: std::time::Instant,
        prep: stdio::Prepared,
    ) -> Result<tokio::sync::watch::Receiver<Option<Exit>>> {
        let exit = self.reaper.watch(pid as i32, born);
        // The container's cgroup, read from its init's pid before anything is awaited: the
        // reaper runs on this thread, so an init it has not reaped yet keeps its pid (a
        // zombie at worst) and the pid names no other process. An init already reaped
        // (killed at once, by a sibling in a shared pid namespace) may have left its pid
        // to a host process, whose cgroup must never become the container's (a kill of
        // every process in it would follow the init's exit): none is read then.
        let cgroup = if exit.borrow().is_none() {
            crate::cgroups::cgroup_of(pid, &self.layout)
        } else {
            None
        };
        let io = prep.finish().await?;
        c.init.set_created(pid, io);
        if let Some(cg) = cgroup {
            *lock(&c.oom) = oom::Oom::watch(
                &self.layout,
                &cg,
                &c.id,
                pid as i32,
                self.events.clone(),
                c.index.is_some().then_some(&self.oom_ledgers),
            );
            *lock(&c.cgroup) = Some(cg);
        }
        Ok(exit)
    }

    /// Start of a task created from a checkpoint: `runc restore`, and the restored init is
    /// adopted as a created one would be.
    async fn restore_init(self: &Arc<Self>, c: &Arc<Container>, from: &RestoreFrom) -> Result<u32> {
        let (pid, exit) = self.run_init(c, InitRun::Restore(from)).await?;
        tokio::spawn(self.clone().on_init_exit(c.clone(), exit));
        log::info!("restored task {} (pid {pid})", c.id);
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
        // Looked for now, not once Start has returned: the init's pid is free from its
        // reaping on, and a kill of another process under that pid must not be read from
        // the kernel's log as this one's.
        let oom = lock(&c.oom).clone();
        let oom_killed = match oom {
            Some(oom) => {
                oom.check_exit(exit.status == 128 + libc::SIGKILL as u32)
                    .await
            }
            None => false,
        };
        let mut gate = c.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        if oom_killed {
            // CRI learns of the exit from Task.Wait, which returns once the init is marked
            // stopped below; its reason is OOMKilled only if /tasks/oom reached containerd
            // first, so an OOM kill is delivered before the exit is let out.
            self.events.flushed(OOM_FLUSH).await;
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
            io.settled(IO_DRAIN).await;
        }
        p.set_stopped(exit);
        self.events.exit(&c.id, &p.exec_id, p.pid(), exit);
    }

    pub(super) async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
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
            let mut restore = c.restore.lock().await;
            let res = match restore.begin(id)? {
                Some(from) => {
                    let res = self.restore_init(c, &from).await.map(drop);
                    restore.end(res.is_ok());
                    res
                }
                None => c.runc.start(id, &c.bundle).await,
            };
            drop(restore);
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
        let mut prep = self.prepare_stdio(id, &p.paths).await?;
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

    /// Kills and deletes the tasks left in the sandbox whose bundle is `sandbox`, as it is
    /// shut down (`sandbox::Manager::shutdown` says why), each in a task of its own so
    /// that one slow to go does not hold up the others. Each is deleted as Task.Delete
    /// deletes it, its exit and delete published; what fails is logged.
    pub(super) async fn end_tasks_of(self: &Arc<Self>, sandbox: &Path) {
        let left: Vec<Arc<Container>> = lock(&self.containers)
            .values()
            .filter(|c| c.index.as_ref().is_some_and(|i| i.starts_with(sandbox)))
            .cloned()
            .collect();
        let ending: Vec<_> = left
            .into_iter()
            .map(|c| tokio::spawn(self.clone().end_task(c)))
            .collect();
        for e in ending {
            let _ = e.await;
        }
    }

    async fn end_task(self: Arc<Self>, c: Arc<Container>) {
        log::warn!(
            "task {} is left in its sandbox as the sandbox is shut down: killing and deleting it",
            c.id
        );
        // A Start still running (its caller gave up) holds the restore lock until the
        // task is running or has failed to start: judged after it.
        drop(c.restore.lock().await);
        if c.init.state() == State::Paused {
            // A frozen process dies only once it is thawed (cgroup v1's freezer).
            if let Err(e) = c.runc.resume(&c.id, &c.bundle).await {
                log::warn!("resume task {} to kill it: {e}", c.id);
            }
        }
        if matches!(c.init.state(), State::Running | State::Paused) {
            if let Err(e) = self.kill_all(&c, libc::SIGKILL).await {
                log::warn!("kill task {}: {e}", c.id);
            }
            if tokio::time::timeout(LEFT_TASK_EXIT, c.init.wait())
                .await
                .is_err()
            {
                // Deleted regardless (`runc delete --force` kills what is left of it), as
                // the one-shot `delete` does: nobody else will delete it, and it would
                // keep the server after its pod. Its exit, if the reaper sees it later,
                // is not published once it is deleted.
                log::warn!(
                    "task {} has not exited {LEFT_TASK_EXIT:?} after SIGKILL; deleting it regardless",
                    c.id
                );
                c.init.set_stopped(Exit {
                    status: 128 + libc::SIGKILL as u32,
                    at: std::time::SystemTime::now(),
                });
            }
        }
        // Not a task made since under the same id.
        if !self.container(&c.id).is_ok_and(|now| Arc::ptr_eq(&now, &c)) {
            return;
        }
        if let Err(e) = self.delete(&c.id, "").await {
            log::warn!("delete task {} of a sandbox shut down: {e}", c.id);
        }
    }

    pub(super) async fn delete(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
    ) -> Result<DeleteResponse> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        // A task created from a checkpoint and never restored has no process (runc's
        // delete below finds nothing, or what a failed restore left). A Delete that comes
        // while a Start restores the task waits for that restore's end, and then finds the
        // task running, or never restored.
        let never_restored = exec_id.is_empty() && c.restore.lock().await.abandon();
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
        if never_restored {
            p.set_stopped(Exit {
                status: 0,
                at: std::time::SystemTime::now(),
            });
        }
        // A container whose processes are all gone needs no runc run to be deleted; nor
        // does a task never restored when runc keeps nothing of it (a failed restore's
        // state is removed as it fails). That Delete is containerd's cleanup of a failed
        // create, which it bounds: a needless `runc delete` was most of its ~1 s under
        // emulation.
        let removed = if never_restored {
            !c.runc.has_state(id)
        } else {
            c.plain_delete && p.exit().is_some() && c.runc.remove_stopped(id)
        };
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
        if let Some(oom) = lock(&c.oom).take() {
            oom.stop();
        }
        lock(&self.containers).remove(id);
        self.lifetime.task_removed();
        self.events.delete(id, resp.pid, Some(exit));
        resp.exit_status = exit.status;
        resp.exited_at = ts(exit.at);
        log::info!("deleted task {id}");
        Ok(resp)
    }
}
