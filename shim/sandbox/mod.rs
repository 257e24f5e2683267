//! The Sandbox service: the pod state machine and the manager that owns every sandbox of
//! this shim. `service.rs` is the thin ttrpc adapter; `update.rs` serves containerd 2.4's
//! UpdateSandbox; `config.rs` decodes the pod config; `files.rs` writes CRI's pod files.

pub mod config;
pub mod files;
mod phase;
pub mod service;
pub mod update;
pub mod userns;

pub use phase::{Phase, SANDBOX_NOTREADY, SANDBOX_READY};

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protobuf::well_known_types::any::Any;
use tokio::sync::watch;

use crate::cgroups::systemd::Systemd;
use crate::cgroups::Layout;
use crate::error::{Error, Result};
use crate::lifetime::Lifetime;
use crate::lock::lock;
use crate::pause::{PauseConfig, PauseSpawner};
use crate::reaper::{wait_exit, Exit, Reaper};
use crate::state::Leftovers;
use config::PodSpec;
use files::PodFiles;

/// How long StopSandbox waits after SIGTERM when the caller gives no timeout (CRI gives 0).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);

/// How long StopSandbox and ShutdownSandbox wait for the pause after SIGKILL: runc's own
/// limit for a container's init after SIGKILL (100 tries, 100 ms apart).
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// Labels and annotations kept for the sandbox (from Create and Update).
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub extensions: Vec<String>,
    /// CRI's last UpdatePodSandboxResources (`{"Overhead": .., "Resources": ..}`).
    pub updated_resources: Option<serde_json::Value>,
}

/// One pod sandbox.
pub struct Sandbox {
    pub id: String,
    pub bundle: PathBuf,
    pub spec: PodSpec,
    pub netns: Option<PathBuf>,
    pub created_at: SystemTime,
    meta: Mutex<Meta>,
    phase: Mutex<Phase>,
    exited: watch::Sender<Option<Exit>>,
    /// What exists on the host; its lock also serializes Start, Stop and Shutdown.
    host: tokio::sync::Mutex<Leftovers>,
    /// How StopSandbox signals the pause process.
    pause: Mutex<PauseHandle>,
}

/// How the pause process is signalled. The reaper reaps its exit and the sandbox is
/// marked stopped in two steps; a signal by pid between them could reach a process the
/// kernel has since given that pid. A pidfd taken while the pause was unreaped cannot.
#[derive(Debug, Default)]
enum PauseHandle {
    /// Not pinned (no pause yet): signalled by pid.
    #[default]
    None,
    /// A pidfd of the pause.
    Pidfd(std::os::fd::OwnedFd),
    /// No pidfd here (Linux before 5.3): signalled by pid.
    Pid,
    /// Reaped before it could be pinned: not signalled.
    Reaped,
}

impl Sandbox {
    pub fn phase(&self) -> Phase {
        *lock(&self.phase)
    }

    pub fn meta(&self) -> Meta {
        lock(&self.meta).clone()
    }

    /// Signals the pause process through its pidfd (by `pid` only where there is none).
    fn signal_pause(&self, pid: Pid, sig: Signal) {
        use std::os::fd::AsFd;
        match &*lock(&self.pause) {
            PauseHandle::Pidfd(fd) => {
                let _ = crate::sys::pidfd_send_signal(fd.as_fd(), sig);
            }
            PauseHandle::Pid | PauseHandle::None => {
                let _ = kill(pid, sig);
            }
            PauseHandle::Reaped => {}
        }
    }

    fn set_exited(&self, exit: Exit) {
        let mut p = lock(&self.phase);
        *p = p.exited(exit);
        self.exited.send_replace(Some(exit));
    }

    /// Waits for the pause process to be gone.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exited.subscribe();
        // The sender lives as long as `self`, so this only ends with an exit.
        loop {
            if let Some(e) = wait_exit(&mut rx).await {
                return e;
            }
        }
    }

    async fn wait_for(&self, limit: Duration) -> Option<Exit> {
        tokio::time::timeout(limit, self.wait()).await.ok()
    }
}

/// The request data of CreateSandbox.
#[derive(Debug, Default, Clone)]
pub struct CreateParams {
    pub id: String,
    pub bundle: String,
    pub options: Option<Any>,
    pub netns_path: String,
    pub annotations: HashMap<String, String>,
}

/// A sandbox's status as SandboxStatus reports it.
#[derive(Debug, Clone)]
pub struct Status {
    pub phase: Phase,
    pub created_at: SystemTime,
    pub info: Option<String>,
}

/// The sandbox of this shim. The registry is a map because the state machine, status
/// and cleanup are per sandbox, but a shim serves exactly one: containerd starts a shim
/// per sandbox (its socket is named after the sandbox id), and the pause helper, forked
/// while the server is single-threaded, goes after the first StartSandbox. A CreateSandbox
/// for a second id is refused with FAILED_PRECONDITION. Serving many pods from one process
/// would take a helper that stays (or a pause made by a fresh helper per pod): the door is
/// this check and the helper's `close`.
pub struct Manager {
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    spawner: PauseSpawner,
    reaper: Reaper,
    layout: Layout,
    lifetime: Arc<Lifetime>,
    /// Ends the container tasks left in a sandbox (by its bundle) that is being shut down:
    /// the task service's, set once it exists.
    end_tasks: std::sync::OnceLock<EndTasks>,
}

/// The task service's end of the tasks left in a sandbox being shut down, by the
/// sandbox's bundle: they are killed and deleted.
pub type EndTasks = Box<
    dyn Fn(PathBuf) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

impl Manager {
    pub fn new(
        spawner: PauseSpawner,
        reaper: Reaper,
        layout: Layout,
        lifetime: Arc<Lifetime>,
    ) -> Manager {
        Manager {
            sandboxes: Mutex::default(),
            spawner,
            reaper,
            layout,
            lifetime,
            end_tasks: std::sync::OnceLock::new(),
        }
    }

    /// Sets how the tasks left in a sandbox being shut down are ended (once).
    pub fn on_shutdown_end_tasks(&self, end: EndTasks) {
        let _ = self.end_tasks.set(end);
    }

    /// A shim serving plain tasks (no sandbox) lets its pause helper go.
    pub async fn serving_tasks_only(&self) {
        if !self.has_sandboxes() {
            self.spawner.close().await;
        }
    }

    /// The lock on what sandbox `sb` made on the host, once it is free, while `sb` is still
    /// this manager's: a request that waited on it behind a ShutdownSandbox of the same
    /// sandbox finds it gone (NOT_FOUND), as a later request would, and neither remakes
    /// what the shutdown removed nor counts the sandbox out of the server's lifetime twice.
    async fn lock_host<'a>(
        &self,
        sb: &'a Sandbox,
    ) -> Result<tokio::sync::MutexGuard<'a, Leftovers>> {
        let host = sb.host.lock().await;
        match self.get(&sb.id) {
            Ok(current) if std::ptr::eq(&*current, sb) => Ok(host),
            _ => Err(Error::NotFound(format!("sandbox {} not found", sb.id))),
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Sandbox>> {
        lock(&self.sandboxes)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("sandbox {id} not found")))
    }

    /// The shim's sandbox, when it serves exactly one.
    pub fn only(&self) -> Option<Arc<Sandbox>> {
        let all = lock(&self.sandboxes);
        match all.len() {
            1 => all.values().next().cloned(),
            _ => None,
        }
    }

    /// The bundle of the sandbox a container task belongs to: the one CRI names in the
    /// task's annotations, else the shim's only sandbox.
    pub fn bundle_for_task(&self, sandbox_id: Option<&str>) -> Option<PathBuf> {
        let all = lock(&self.sandboxes);
        if let Some(sb) = sandbox_id.and_then(|id| all.get(id)) {
            return Some(sb.bundle.clone());
        }
        match all.len() {
            1 => all.values().next().map(|sb| sb.bundle.clone()),
            _ => None,
        }
    }

    /// Whether a sandbox of this shim is still alive (not yet shut down).
    pub fn has_sandboxes(&self) -> bool {
        !lock(&self.sandboxes).is_empty()
    }

    pub fn create(&self, p: CreateParams) -> Result<()> {
        crate::ids::validate("sandbox id", &p.id)?;
        let spec = PodSpec::from_options(p.options.as_ref())?;
        if spec.systemd() {
            crate::cgroups::systemd::check_available(&spec.cgroup_parent)?;
        }
        let netns = if p.netns_path.is_empty() {
            None
        } else {
            check_netns(Path::new(&p.netns_path))?;
            Some(PathBuf::from(&p.netns_path))
        };
        if spec.host_network && netns.is_some() {
            return Err(Error::InvalidArgument(format!(
                "sandbox {} asks for the host network but was given netns {}",
                p.id, p.netns_path
            )));
        }
        spec.check_network_sysctls(netns.is_some())?;
        let bundle = if p.bundle.is_empty() {
            std::env::current_dir().map_err(|e| Error::io("current directory", e))?
        } else {
            PathBuf::from(&p.bundle)
        };
        let mut all = lock(&self.sandboxes);
        if all.contains_key(&p.id) {
            return Err(Error::AlreadyExists(format!(
                "sandbox {} already exists",
                p.id
            )));
        }
        if let Some(other) = all.keys().next() {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {}: this shim serves sandbox {other}, and a cove shim serves one \
                 sandbox (containerd starts one per sandbox)",
                p.id
            )));
        }
        let mut annotations: BTreeMap<_, _> = p.annotations.into_iter().collect();
        annotations.extend(spec.annotations.clone());
        log::info!(
            "create sandbox {} (netns {:?}, cgroup parent {:?})",
            p.id,
            netns,
            spec.cgroup_parent
        );
        all.insert(
            p.id.clone(),
            Arc::new(Sandbox {
                id: p.id,
                bundle,
                spec,
                netns,
                created_at: SystemTime::now(),
                meta: Mutex::new(Meta {
                    annotations,
                    ..Default::default()
                }),
                phase: Mutex::new(Phase::Created),
                exited: watch::channel(None).0,
                host: tokio::sync::Mutex::new(Leftovers::default()),
                pause: Mutex::new(PauseHandle::None),
            }),
        );
        self.lifetime.sandbox_added();
        Ok(())
    }

    /// Creates the pod cgroup, pod files and the pause process. Returns (pid, start time).
    pub async fn start(&self, id: &str) -> Result<(u32, SystemTime)> {
        let sb = self.get(id)?;
        let mut host = self.lock_host(&sb).await?;
        sb.phase().check_start(id)?;
        let born = std::time::Instant::now();
        let result = self.start_locked(&sb, &mut host).await;
        if let Err(e) = &result {
            log::error!("start sandbox {id}: {e}; undoing what was made");
            if host.kill_pause() {
                if let Some((pid, _)) = host.pause {
                    let mut rx = self.reaper.watch(pid, born);
                    let _ = tokio::time::timeout(DEFAULT_STOP_GRACE, wait_exit(&mut rx)).await;
                }
            }
            let undone = match crate::cgroups::systemd::stop_units(&host.units, &self.layout).await
            {
                Ok(()) => host.clean_async().await,
                Err(e) => Err(e),
            };
            if let Err(ce) = undone {
                log::warn!("undo sandbox {id}: {ce}");
            } else {
                *host = Leftovers::default();
                let _ = Leftovers::forget(&sb.bundle);
            }
        }
        let (pid, at) = result?;
        let pid_u = pid as u32;
        let mut rx = self.reaper.watch(pid, born);
        // Pinned before anything is awaited: the reaper runs on this thread, so a pause it
        // has not reaped yet still holds its pid.
        *lock(&sb.pause) = if rx.borrow().is_some() {
            PauseHandle::Reaped
        } else {
            match crate::sys::pidfd_open(pid) {
                Ok(fd) => PauseHandle::Pidfd(fd),
                Err(_) => PauseHandle::Pid,
            }
        };
        {
            let mut p = lock(&sb.phase);
            *p = p.started(id, pid_u, at)?;
        }
        self.spawner.close().await;
        let watcher = sb.clone();
        tokio::spawn(async move {
            if let Some(exit) = wait_exit(&mut rx).await {
                log::info!(
                    "sandbox {} pause process {pid} exited with status {}",
                    watcher.id,
                    exit.status
                );
                watcher.set_exited(exit);
            }
        });
        log::info!("started sandbox {id}: pause pid {pid}");
        Ok((pid_u, at))
    }

    async fn start_locked(&self, sb: &Sandbox, host: &mut Leftovers) -> Result<(i32, SystemTime)> {
        let spec = &sb.spec;
        let pause_cg = spec.pause_cgroup(&sb.id);
        // cgroupfs: cove makes the directories and the pause is born in them. systemd: the
        // pause helper is moved into the pod's scope first, and the pause is born there.
        let systemd = if spec.systemd() {
            Some(Systemd::connect().await?)
        } else {
            None
        };
        let scope = crate::cgroups::systemd::scope_name(&sb.id);
        let pause_dirs = match &systemd {
            None => {
                let mut made = self.layout.create(&pause_cg)?;
                for d in self.layout.dirs(&pause_cg) {
                    if !made.contains(&d) {
                        made.push(d);
                    }
                }
                host.cgroups = made;
                host.pause_cgroups = self.layout.dirs(&pause_cg);
                self.layout.dirs(&pause_cg)
            }
            Some(sd) => {
                let mut created = sd.missing_slices(&spec.cgroup_parent).await?;
                created.reverse();
                host.units = std::iter::once(scope.clone()).chain(created).collect();
                Vec::new()
            }
        };
        host.save(&sb.bundle)?;
        let files = if spec.from_cri {
            let files = PodFiles::locate(&sb.bundle, &sb.id);
            if files.is_none() {
                log::warn!(
                    "sandbox {}: bundle {} is not laid out by containerd; no pod files written",
                    sb.id,
                    sb.bundle.display()
                );
            }
            files
        } else {
            None
        };
        let cfg = PauseConfig {
            netns: sb.netns.clone(),
            new_uts: spec.own_uts(),
            new_ipc: !spec.host_ipc,
            new_pid: !spec.host_pid,
            hostname: (spec.own_uts() && !spec.hostname.is_empty()).then(|| spec.hostname.clone()),
            sysctls: spec.sysctls.clone(),
            cgroups: pause_dirs,
            userns: spec.userns.clone(),
        };
        if let Some(sd) = &systemd {
            // The helper goes into the pod's scope, so that the pause is born in it and
            // makes its cgroup namespace there: made in the shim's cgroup and moved after,
            // the pause's namespace would be rooted at the shim's cgroup, which a container
            // allowed to enter it could then see and make cgroups in. The helper leaves the
            // scope when it exits, once the pause is made.
            let helper = self.spawner.helper_pid().await.ok_or_else(|| {
                Error::FailedPrecondition("this shim has already created its pause process".into())
            })?;
            let what = format!("cove pod sandbox {}", sb.id);
            sd.start_scope(&scope, &spec.cgroup_parent, helper as u32, &what)
                .await?;
        }
        crate::failpoint::hit(crate::failpoint::START_SANDBOX_BEFORE_PAUSE).await;
        // The pod files are written here while the helper, its setup child and the pause
        // (other processes, on other cores) make the pause: the request goes out first,
        // then the files, then the answer is read. Nothing of the pause needs the files.
        let (spawned, written) = tokio::join!(self.spawner.spawn(&cfg), async {
            match &files {
                Some(f) => f.create(spec, host),
                None => Ok(()),
            }
        });
        crate::failpoint::hit(crate::failpoint::START_SANDBOX_SPAWNED).await;
        // The pause is known to this start (so that undoing it kills the pause) and
        // recorded with the pod files in one write, while it confines itself.
        if let Ok(p) = &spawned {
            // The pause is this shim's child (CLONE_PARENT): a pid it already reaped (a
            // pause that failed at once) is not recorded as the pause's.
            host.pause = crate::state::child_start_time(p.pid).map(|start| (p.pid, start));
        }
        let saved = if files.is_some() || spawned.is_ok() {
            host.save(&sb.bundle)
        } else {
            Ok(())
        };
        let started = match spawned {
            Ok(s) => s.ready().await,
            Err(e) => Err(e),
        };
        let at = SystemTime::now();
        written?;
        let started = started?;
        saved?;
        if host.pause.is_none() {
            log::warn!(
                "sandbox {}: pause process {} exited right after it started",
                sb.id,
                started.pid
            );
        }
        let pid = started.pid;
        if started.oom_score_adj != crate::oom_score::PAUSE_SCORE {
            log::warn!(
                "sandbox {}: the kernel refused oom_score_adj {} for the pause process (no CAP_SYS_RESOURCE); it runs with {}, the lowest allowed",
                sb.id,
                crate::oom_score::PAUSE_SCORE,
                started.oom_score_adj
            );
        }
        crate::failpoint::hit(crate::failpoint::START_SANDBOX_AFTER_PAUSE).await;
        if systemd.is_some() && !in_scope(pid, &scope) {
            return Err(Error::Internal(format!(
                "pause process {pid} is not in its systemd scope {scope}"
            )));
        }
        Ok((pid, at))
    }

    /// SIGTERM to the pause process, SIGKILL after `grace`; returns once it is gone.
    pub async fn stop(&self, id: &str, grace: Option<Duration>) -> Result<()> {
        let sb = self.get(id)?;
        let _host = self.lock_host(&sb).await?;
        self.stop_locked(&sb, grace.unwrap_or(DEFAULT_STOP_GRACE))
            .await
    }

    async fn stop_locked(&self, sb: &Sandbox, grace: Duration) -> Result<()> {
        match sb.phase() {
            Phase::Stopped { .. } => Ok(()),
            Phase::Created => {
                sb.set_exited(Exit {
                    status: 0,
                    at: SystemTime::now(),
                });
                Ok(())
            }
            Phase::Running { pid, .. } => {
                let pid = Pid::from_raw(pid as i32);
                log::info!("stop sandbox {}: SIGTERM to pause process {pid}", sb.id);
                if !grace.is_zero() {
                    sb.signal_pause(pid, Signal::SIGTERM);
                    if sb.wait_for(grace).await.is_some() {
                        return Ok(());
                    }
                }
                log::info!("stop sandbox {}: SIGKILL to pause process {pid}", sb.id);
                sb.signal_pause(pid, Signal::SIGKILL);
                // The pause is init of the pod's pid namespace: it is gone only when every
                // process of the pod is, and one in uninterruptible sleep (a hung network
                // filesystem) holds it. The call (and the pod's lock) is let go after
                // KILL_WAIT, as runc gives up on a container's init; the exit is still
                // recorded when it comes.
                if sb.wait_for(KILL_WAIT).await.is_none() {
                    return Err(Error::DeadlineExceeded(format!(
                        "sandbox {}: pause process {pid} still running {}s after SIGKILL \
                         (a process of the pod that cannot die, in uninterruptible sleep?)",
                        sb.id,
                        KILL_WAIT.as_secs()
                    )));
                }
                Ok(())
            }
        }
    }

    pub async fn wait(&self, id: &str) -> Result<Exit> {
        let sb = self.get(id)?;
        Ok(sb.wait().await)
    }

    pub fn status(&self, id: &str, verbose: bool) -> Result<Status> {
        let sb = self.get(id)?;
        let phase = sb.phase();
        let info = verbose.then(|| self.info_json(&sb, &phase));
        Ok(Status {
            phase,
            created_at: sb.created_at,
            info,
        })
    }

    /// The verbose status, `info["info"]`. Its keys follow containerd's own sandbox info
    /// (`pid`, `processStatus`, `netNamespaceClosed`, `runtimeType`, `config`: the JSON of
    /// `internal/cri/types.SandboxInfo`), which CRI parses from containerd 2.3 on (and then
    /// keeps only those keys); cove's own details follow and show on 2.1 and 2.2.
    /// `sandboxMetadata` is left out: CRI reads it as its versioned store record.
    fn info_json(&self, sb: &Sandbox, phase: &Phase) -> String {
        let pid = phase.pid();
        let ns = |kind: &str| {
            if pid == 0 {
                return serde_json::Value::Null;
            }
            std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
                .map(|l| serde_json::Value::String(l.to_string_lossy().into_owned()))
                .unwrap_or(serde_json::Value::Null)
        };
        let meta = sb.meta();
        serde_json::json!({
            "pid": pid,
            "processStatus": match phase { Phase::Created => "created", Phase::Running { .. } => "running", Phase::Stopped { .. } => "stopped" },
            "netNamespaceClosed": sb.netns.as_ref().is_some_and(|p| !p.exists()),
            "runtimeType": crate::version::RUNTIME_NAME,
            "config": sb.spec.config,
            "netnsPath": sb.netns.as_ref().map(|p| p.to_string_lossy().into_owned()),
            "namespaces": { "net": ns("net"), "uts": ns("uts"), "ipc": ns("ipc"), "pid": ns("pid") },
            "hostname": sb.spec.hostname,
            "hostNetwork": sb.spec.host_network,
            "hostPID": sb.spec.host_pid,
            "hostIPC": sb.spec.host_ipc,
            "cgroupParent": sb.spec.cgroup_parent,
            "cgroupDriver": if sb.spec.systemd() { "systemd" } else { "cgroupfs" },
            "pauseCgroup": sb.spec.pause_cgroup(&sb.id),
            "bundle": sb.bundle,
            "pod": { "name": sb.spec.name, "namespace": sb.spec.namespace, "uid": sb.spec.uid },
            "labels": meta.labels,
            "annotations": meta.annotations,
            "updatedResources": meta.updated_resources,
        })
        .to_string()
    }

    /// Kills the pause process, removes everything the sandbox made and forgets it.
    /// The server exits once its last sandbox is shut down.
    pub async fn shutdown(&self, id: &str) -> Result<()> {
        let sb = match self.get(id) {
            Ok(sb) => sb,
            Err(e) => {
                // containerd shuts a shim down this way when CreateSandbox failed: with no
                // sandbox (and no task) left, the server must not linger.
                self.lifetime.asked();
                return Err(e);
            }
        };
        let mut host = match self.lock_host(&sb).await {
            Ok(host) => host,
            Err(e) => {
                // Shut down by a ShutdownSandbox this one waited behind.
                self.lifetime.asked();
                return Err(e);
            }
        };
        crate::failpoint::hit(crate::failpoint::SHUTDOWN_SANDBOX_LOCKED).await;
        // CRI removes a pod's containers before the pod; a task still here is one that
        // containerd no longer tracks (its delete failed, or was never sent), and would
        // keep this server, and its processes, after the pod is gone. It goes with the
        // sandbox, as `delete` takes a dead shim's sandbox's containers with it.
        if let Some(end) = self.end_tasks.get() {
            end(sb.bundle.clone()).await;
        }
        self.stop_locked(&sb, Duration::ZERO).await?;
        crate::cgroups::systemd::stop_units(&host.units, &self.layout).await?;
        host.clean_async().await?;
        *host = Leftovers::default();
        Leftovers::forget(&sb.bundle)?;
        lock(&self.sandboxes).remove(id);
        log::info!("shut down sandbox {id}");
        self.lifetime.sandbox_removed();
        Ok(())
    }

    /// The pod cgroup's stats, packed as containerd's cgroup Metrics.
    pub fn metrics(&self, id: &str) -> Result<Any> {
        let sb = self.get(id)?;
        if sb.phase() == Phase::Created {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {id} is not started: it has no cgroup yet"
            )));
        }
        crate::cgroups::metrics_any(&self.layout, &sb.spec.pod_cgroup(id))
    }

    /// Applies pod-level resources to the pod cgroup and keeps labels and annotations.
    pub fn update(&self, id: &str, change: update::Change) -> Result<()> {
        let sb = self.get(id)?;
        if let Some(res) = &change.resources {
            if sb.phase() == Phase::Created {
                return Err(Error::FailedPrecondition(format!(
                    "sandbox {id} is not started: it has no cgroup yet"
                )));
            }
            self.layout.apply(&sb.spec.pod_cgroup(id), res)?;
        }
        let mut meta = lock(&sb.meta);
        meta.annotations.extend(change.annotations);
        if let Some(labels) = change.labels {
            meta.labels = labels;
        }
        if let Some(ext) = change.extensions {
            meta.extensions = ext;
        }
        if let Some(r) = change.updated_resources {
            meta.updated_resources = Some(r);
        }
        log::info!("updated sandbox {id}");
        Ok(())
    }
}

/// A netns path must exist and be a namespace file.
fn check_netns(path: &Path) -> Result<()> {
    // Non-blocking: a fifo at that path must not stall the shim's one thread.
    let f = crate::pause::open_netns(path)
        .map_err(|e| Error::InvalidArgument(format!("netns path {}: {e}", path.display())))?;
    match crate::sys::is_namespace_file(f.as_fd()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::InvalidArgument(format!(
            "netns path {} is not a namespace file",
            path.display()
        ))),
        Err(e) => Err(Error::sys(format!("statfs {}", path.display()), e)),
    }
}

/// GOARCH name of the architecture cove was built for.
pub fn goarch() -> &'static str {
    goarch_of(std::env::consts::ARCH, cfg!(target_endian = "little"))
}

/// Go's GOARCH name for a Rust target architecture (`std::env::consts::ARCH`).
fn goarch_of(arch: &'static str, little_endian: bool) -> &'static str {
    match (arch, little_endian) {
        ("x86_64", _) => "amd64",
        ("x86", _) => "386",
        ("aarch64", _) => "arm64",
        ("powerpc64", true) => "ppc64le",
        ("powerpc64", false) => "ppc64",
        ("mips", true) => "mipsle",
        ("mips64", true) => "mips64le",
        ("loongarch64", _) => "loong64",
        // arm, mips, mips64, riscv64, s390x: the same name in Go.
        (other, _) => other,
    }
}

/// Whether process `pid` is in systemd scope `scope` (its unified or `name=systemd` path
/// ends with it).
fn in_scope(pid: i32, scope: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines().any(|l| {
            (l.starts_with("0::") || l.contains(":name=systemd:"))
                && l.trim_end().ends_with(&format!("/{scope}"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goarch_names_are_gos() {
        for (arch, le, go) in [
            ("x86_64", true, "amd64"),
            ("x86", true, "386"),
            ("aarch64", true, "arm64"),
            ("arm", true, "arm"),
            ("powerpc64", true, "ppc64le"),
            ("powerpc64", false, "ppc64"),
            ("mips", true, "mipsle"),
            ("mips64", false, "mips64"),
            ("riscv64", true, "riscv64"),
            ("s390x", false, "s390x"),
            ("loongarch64", true, "loong64"),
        ] {
            assert_eq!(goarch_of(arch, le), go, "{arch}");
        }
        // What this build reports is one of Go's architectures (`go tool dist list`).
        const GOARCHES: &[&str] = &[
            "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle",
            "ppc64", "ppc64le", "riscv64", "s390x",
        ];
        assert!(GOARCHES.contains(&goarch()), "{}", goarch());
    }
}
