//! Task events to containerd (`/tasks/*`), published in the order they are queued.
//!
//! Requests never wait on containerd: events go into an unbounded queue that one task
//! drains into containerd-shim's `RemotePublisher` (which retries on its own). The
//! connection is made on the first event, from `TTRPC_ADDRESS` as containerd sets it;
//! without it (the shim driven directly over ttrpc) events are logged and dropped.

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::events::task::*;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics::*;
use protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::mpsc;

use crate::reaper::Exit;

type Item = (&'static str, Box<dyn MessageDyn>);

#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Item>,
}

impl Events {
    /// Starts the publishing task for `namespace`.
    pub fn start(namespace: String) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        tokio::spawn(drain(rx, address, namespace));
        Events { tx }
    }

    fn send(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        log::debug!("event {topic}");
        let _ = self.tx.send((topic, event));
    }

    pub fn create(&self, id: &str, bundle: &str, pid: u32, stdio: [&str; 3], terminal: bool) {
        let mut e = TaskCreate::new();
        e.container_id = id.into();
        e.bundle = bundle.into();
        e.pid = pid;
        let mut io = TaskIO::new();
        io.stdin = stdio[0].into();
        io.stdout = stdio[1].into();
        io.stderr = stdio[2].into();
        io.terminal = terminal;
        e.io = Some(io).into();
        self.send(TASK_CREATE_EVENT_TOPIC, Box::new(e));
    }

    pub fn start_(&self, id: &str, pid: u32) {
        let mut e = TaskStart::new();
        e.container_id = id.into();
        e.pid = pid;
        self.send(TASK_START_EVENT_TOPIC, Box::new(e));
    }

    pub fn exit(&self, id: &str, exec_id: &str, pid: u32, exit: Exit) {
        let mut e = TaskExit::new();
        e.container_id = id.into();
        e.id = if exec_id.is_empty() { id } else { exec_id }.into();
        e.pid = pid;
        e.exit_status = exit.status;
        e.exited_at = Some(Timestamp::from(exit.at)).into();
        self.send(TASK_EXIT_EVENT_TOPIC, Box::new(e));
    }

    pub fn oom(&self, id: &str) {
        let mut e = TaskOOM::new();
        e.container_id = id.into();
        self.send(TASK_OOM_EVENT_TOPIC, Box::new(e));
    }

    pub fn delete(&self, id: &str, pid: u32, exit: Option<Exit>) {
        let mut e = TaskDelete::new();
        e.container_id = id.into();
        e.id = id.into();
        e.pid = pid;
        if let Some(x) = exit {
            e.exit_status = x.status;
            e.exited_at = Some(Timestamp::from(x.at)).into();
        }
        self.send(TASK_DELETE_EVENT_TOPIC, Box::new(e));
    }

    pub fn exec_added(&self, id: &str, exec_id: &str) {
        let mut e = TaskExecAdded::new();
        e.container_id = id.into();
        e.exec_id = exec_id.into();
        self.send(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e));
    }

    pub fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        let mut e = TaskExecStarted::new();
        e.container_id = id.into();
        e.exec_id = exec_id.into();
        e.pid = pid;
        self.send(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e));
    }

    pub fn paused(&self, id: &str) {
        let mut e = TaskPaused::new();
        e.container_id = id.into();
        self.send(TASK_PAUSED_EVENT_TOPIC, Box::new(e));
    }

    pub fn resumed(&self, id: &str) {
        let mut e = TaskResumed::new();
        e.container_id = id.into();
        self.send(TASK_RESUMED_EVENT_TOPIC, Box::new(e));
    }
}

async fn drain(mut rx: mpsc::UnboundedReceiver<Item>, address: String, namespace: String) {
    let mut publisher: Option<RemotePublisher> = None;
    while let Some((topic, event)) = rx.recv().await {
        if publisher.is_none() && !address.is_empty() {
            match RemotePublisher::new(&address).await {
                Ok(p) => publisher = Some(p),
                Err(e) => log::warn!("connect to containerd at {address} for events: {e}"),
            }
        }
        let Some(p) = &publisher else {
            log::debug!("no event publisher; dropped {topic}");
            continue;
        };
        if let Err(e) = p
            .publish(ttrpc::context::Context::default(), topic, &namespace, event)
            .await
        {
            log::warn!("publish {topic}: {e}");
        }
    }
}
