//! The `containerd.task.v3.Task` service: the containers of this shim's pods (and of plain
//! `ctr run --runtime io.containerd.cove.v1` or Docker tasks), run with runc.
//!
//! This file holds the task manager's state (`Inner`: the containers, the event queue, the
//! shim's lifetime); its methods live by what they do: `lifecycle.rs` (create, start,
//! exits, delete), `control.rs` (kill, exec, state, pids, pause, update, stats),
//! `checkpoint.rs`. `service.rs` is the thin ttrpc adapter. For a sandbox id, `Connect` and
//! `State` answer for the pause process, as containerd asks on restart and in `ctr tasks
//! ls`; every other RPC is about containers.

mod checkpoint;
pub mod container;
mod control;
pub mod events;
mod lifecycle;
pub mod oom;
pub mod process;
pub mod runc;
mod service;
mod spec;
pub mod stdio;
mod uri;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::well_known_types::timestamp::Timestamp;

use crate::cgroups::Layout;
use crate::error::{Error, Result};
use crate::lifetime::Lifetime;
use crate::lock::lock;
use crate::protos::runc::Options;
use crate::reaper::Reaper;
use crate::sandbox::Manager;
use container::Container;
use events::Events;
use runc::Runc;

pub const TASK_API_VERSION: &str = "3";

/// How long an exit waits for the process's output copies to reach the end of input
/// before it is published, so that an exit never overtakes the output before it. A
/// background child can keep a pipe or a terminal open past its parent's exit, and
/// neither the exit event nor Delete may wait for it. A container's init: its output
/// targets are closed then (`stdio::Io::drained`); containerd's runc shim waits as long
/// for a process's I/O on delete (`waitTimeout(ctx, &p.wg, 2*time.Second)`), then closes
/// it. An exec: its output is still copied until the exec is deleted (`Io::settled`), as
/// the runc shim does; CRI bounds its own wait for it (`drain_exec_sync_io_timeout`).
const IO_DRAIN: Duration = Duration::from_secs(2);

/// How long an OOM-killed init's exit waits for its `/tasks/oom` to reach containerd: as
/// long as the event is retried, so that a containerd restart does not lose the reason.
/// Nobody waits on the exit meanwhile but containerd, and only once it is back.
const OOM_FLUSH: Duration = events::AWAY_WINDOW;

pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    manager: Arc<Manager>,
    lifetime: Arc<Lifetime>,
    reaper: Reaper,
    layout: Layout,
    namespace: String,
    events: Events,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    oom_ledgers: oom::Ledgers,
}

fn ts(at: std::time::SystemTime) -> protobuf::MessageField<Timestamp> {
    Some(Timestamp::from(at)).into()
}

impl TaskService {
    pub fn new(
        manager: Arc<Manager>,
        lifetime: Arc<Lifetime>,
        reaper: Reaper,
        layout: Layout,
        namespace: &str,
    ) -> Self {
        let inner = Arc::new(Inner {
            manager: manager.clone(),
            lifetime,
            reaper,
            layout,
            namespace: namespace.to_owned(),
            events: Events::start(namespace.to_owned()),
            containers: Mutex::default(),
            creating: Mutex::default(),
            oom_ledgers: oom::Ledgers::default(),
        });
        let tasks = Arc::downgrade(&inner);
        manager.on_shutdown_end_tasks(Box::new(move |sandbox| {
            let tasks = tasks.clone();
            Box::pin(async move {
                if let Some(inner) = tasks.upgrade() {
                    inner.end_tasks_of(&sandbox).await;
                }
            })
        }));
        TaskService { inner }
    }
}

impl Inner {
    fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
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
}

fn name(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("task {id}")
    } else {
        format!("exec {exec_id} of task {id}")
    }
}
