//! Task events to containerd (`/tasks/*`), published in the order they are queued.
//!
//! Requests never wait on containerd: events go into a bounded queue that one task
//! forwards to containerd's event service (`containerd.services.events.ttrpc.v1.Events`)
//! at `TTRPC_ADDRESS`, connecting on the first event and again after a failure. Each
//! event is encoded where it is queued, with its type name written out, so the shim never
//! builds protobuf reflection tables (they cost every shim a few hundred kB of heap) and
//! never needs a blocking thread to connect.
//!
//! containerd restarts: every connect and forward is bounded by [`CALL_TIMEOUT`], and a
//! failed event is retried, in order, with a growing pause. How long depends on why it
//! failed:
//! - containerd is away (no connection, a broken one, or no answer): for [`AWAY_WINDOW`].
//!   A restarting containerd takes a while to serve again: it loads every plugin and
//!   recovers every pod first (25 s on a 2-core emulated guest with a handful of pods).
//!   containerd's own shims try for about 15 s and lose what happened meanwhile, an OOM
//!   kill's reason among it.
//! - containerd answers with an error: for [`REFUSED_WINDOW`], then the event is dropped
//!   with an error, so that one event it will not take does not hold up the rest.
//!
//! Events queued meanwhile wait behind it, so none overtakes another. A queue of
//! [`QUEUE_LIMIT`] events is full: a further event is dropped with an error rather than
//! grow without bound while containerd stays away. Without `TTRPC_ADDRESS` (the shim
//! driven directly over ttrpc) events are logged and dropped.

use std::time::Duration;

use containerd_shim_protos::events::task::*;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use containerd_shim_protos::topics::*;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::Message;
use tokio::sync::mpsc;

use crate::reaper::Exit;

/// (topic, protobuf type name, encoded event, when it happened)
type Item = (&'static str, &'static str, Vec<u8>, Timestamp);

/// What the queue carries: an event, or a barrier answered once everything queued before
/// it has been forwarded (or dropped).
enum Msg {
    Event(Item),
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// How long one connect or forward may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an event is retried while containerd cannot be reached, before it is dropped.
pub const AWAY_WINDOW: Duration = Duration::from_secs(300);
/// How long an event is retried while containerd answers it with an error.
pub const REFUSED_WINDOW: Duration = Duration::from_secs(20);
/// The pause after an event's first failure (doubled each time, up to `MAX_PAUSE`).
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// Events waiting for containerd at most.
pub const QUEUE_LIMIT: usize = 4096;

#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Msg>,
    /// Tests keep what would be published, and the OOM events seen so far.
    #[cfg(test)]
    kept: Option<std::sync::Arc<std::sync::Mutex<Kept>>>,
}

/// What detached events keep: the queue, and the OOM events read from it so far.
#[cfg(test)]
type Kept = (mpsc::Receiver<Msg>, Vec<String>);

impl Events {
    /// Starts the publishing task for `namespace`.
    pub fn start(namespace: String) -> Events {
        let (tx, rx) = mpsc::channel(QUEUE_LIMIT);
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        tokio::spawn(drain(rx, address, namespace));
        Events {
            tx,
            #[cfg(test)]
            kept: None,
        }
    }

    /// Events that go nowhere but can be read back with [`Events::sent_oom`].
    #[cfg(test)]
    pub fn detached(_namespace: &str) -> Events {
        let (tx, rx) = mpsc::channel(QUEUE_LIMIT);
        Events {
            tx,
            kept: Some(std::sync::Arc::new(std::sync::Mutex::new((rx, Vec::new())))),
        }
    }

    /// The container ids of the `/tasks/oom` events queued so far, in order.
    #[cfg(test)]
    pub fn sent_oom(&self) -> Vec<String> {
        let kept = self.kept.as_ref().expect("detached events");
        let mut k = kept.lock().unwrap();
        while let Ok(msg) = k.0.try_recv() {
            let Msg::Event((topic, _, bytes, _)) = msg else {
                continue;
            };
            if topic == TASK_OOM_EVENT_TOPIC {
                let e = TaskOOM::parse_from_bytes(&bytes).expect("a TaskOOM");
                k.1.push(e.container_id);
            }
        }
        k.1.clone()
    }

    fn send<M: Message>(&self, topic: &'static str, type_name: &'static str, event: &M) {
        log::debug!("event {topic}");
        match event.write_to_bytes() {
            Ok(bytes) => {
                let now = Timestamp::from(std::time::SystemTime::now());
                if let Err(e) = self.tx.try_send(Msg::Event((topic, type_name, bytes, now))) {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "the queue is full",
                        mpsc::error::TrySendError::Closed(_) => "the publisher is gone",
                    };
                    log::error!(
                        "dropped {topic}: {why} (containerd has not taken events for a while)"
                    );
                }
            }
            Err(e) => log::warn!("encode {topic}: {e}"),
        }
    }

    /// Waits (at most `limit`) until every event queued so far has left for containerd.
    pub async fn flushed(&self, limit: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.try_send(Msg::Flushed(tx)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }

    pub fn create(
        &self,
        id: &str,
        bundle: &str,
        pid: u32,
        stdio: [&str; 3],
        terminal: bool,
        checkpoint: &str,
    ) {
        let mut e = TaskCreate::new();
        e.container_id = id.into();
        e.bundle = bundle.into();
        e.pid = pid;
        e.checkpoint = checkpoint.into();
        let mut io = TaskIO::new();
        io.stdin = stdio[0].into();
        io.stdout = stdio[1].into();
        io.stderr = stdio[2].into();
        io.terminal = terminal;
        e.io = Some(io).into();
        self.send(TASK_CREATE_EVENT_TOPIC, "containerd.events.TaskCreate", &e);
    }

    pub fn start_(&self, id: &str, pid: u32) {
        let mut e = TaskStart::new();
        e.container_id = id.into();
        e.pid = pid;
        self.send(TASK_START_EVENT_TOPIC, "containerd.events.TaskStart", &e);
    }

    pub fn exit(&self, id: &str, exec_id: &str, pid: u32, exit: Exit) {
        let mut e = TaskExit::new();
        e.container_id = id.into();
        e.id = if exec_id.is_empty() { id } else { exec_id }.into();
        e.pid = pid;
        e.exit_status = exit.status;
        e.exited_at = Some(Timestamp::from(exit.at)).into();
        self.send(TASK_EXIT_EVENT_TOPIC, "containerd.events.TaskExit", &e);
    }

    pub fn oom(&self, id: &str) {
        let mut e = TaskOOM::new();
        e.container_id = id.into();
        self.send(TASK_OOM_EVENT_TOPIC, "containerd.events.TaskOOM", &e);
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
        self.send(TASK_DELETE_EVENT_TOPIC, "containerd.events.TaskDelete", &e);
    }

    pub fn exec_added(&self, id: &str, exec_id: &str) {
        let mut e = TaskExecAdded::new();
        e.container_id = id.into();
        e.exec_id = exec_id.into();
        self.send(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            "containerd.events.TaskExecAdded",
            &e,
        );
    }

    pub fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        let mut e = TaskExecStarted::new();
        e.container_id = id.into();
        e.exec_id = exec_id.into();
        e.pid = pid;
        self.send(
            TASK_EXEC_STARTED_EVENT_TOPIC,
            "containerd.events.TaskExecStarted",
            &e,
        );
    }

    pub fn paused(&self, id: &str) {
        let mut e = TaskPaused::new();
        e.container_id = id.into();
        self.send(TASK_PAUSED_EVENT_TOPIC, "containerd.events.TaskPaused", &e);
    }

    pub fn resumed(&self, id: &str) {
        let mut e = TaskResumed::new();
        e.container_id = id.into();
        self.send(
            TASK_RESUMED_EVENT_TOPIC,
            "containerd.events.TaskResumed",
            &e,
        );
    }
}

async fn drain(mut rx: mpsc::Receiver<Msg>, address: String, namespace: String) {
    let mut client: Option<EventsClient> = None;
    while let Some(msg) = rx.recv().await {
        let (topic, type_name, value, at) = match msg {
            Msg::Event(item) => item,
            Msg::Flushed(done) => {
                let _ = done.send(());
                continue;
            }
        };
        if address.is_empty() {
            log::debug!("no event publisher; dropped {topic}");
            continue;
        }
        let mut env = Envelope::new();
        env.timestamp = Some(at).into();
        env.namespace = namespace.clone();
        env.topic = topic.into();
        env.event = Some(Any {
            type_url: type_name.into(),
            value,
            ..Default::default()
        })
        .into();
        let mut req = ForwardRequest::new();
        req.envelope = Some(env).into();
        let first_try = tokio::time::Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut attempt = 0u32;
        // When containerd first answered this event with an error: from then on it has
        // REFUSED_WINDOW, however long it was away before.
        let mut refused_since = None;
        loop {
            attempt += 1;
            match forward(&mut client, &address, &req).await {
                Ok(()) => {
                    if attempt > 1 {
                        log::info!("published {topic} after {attempt} attempts");
                    }
                    break;
                }
                Err(e) => {
                    log::warn!("publish {topic} (attempt {attempt}): {e}");
                    client = None;
                    if matches!(e, Failure::Refused(_)) {
                        refused_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
            }
            let (since, window) = match refused_since {
                Some(at) => (at, REFUSED_WINDOW),
                None => (first_try, AWAY_WINDOW),
            };
            if since.elapsed() + pause > window {
                log::error!(
                    "dropped {topic}: containerd did not take it for {:?} ({attempt} attempts)",
                    first_try.elapsed()
                );
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// Why a forward failed.
enum Failure {
    /// containerd could not be reached, the connection broke, or no answer came.
    Away(String),
    /// containerd answered with an error status.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Away(e) => write!(f, "{e}"),
            Failure::Refused(e) => write!(f, "containerd refused it: {e}"),
        }
    }
}

/// One forward, connecting first if needed; both bounded by [`CALL_TIMEOUT`].
async fn forward(
    client: &mut Option<EventsClient>,
    address: &str,
    req: &ForwardRequest,
) -> Result<(), Failure> {
    if client.is_none() {
        let url = format!("unix://{address}");
        match tokio::time::timeout(CALL_TIMEOUT, ttrpc::r#async::Client::connect(&url)).await {
            Ok(Ok(c)) => *client = Some(EventsClient::new(c)),
            Ok(Err(e)) => {
                return Err(Failure::Away(format!(
                    "connect to containerd at {address}: {e}"
                )))
            }
            Err(_) => {
                return Err(Failure::Away(format!(
                    "connect to containerd at {address}: timed out"
                )))
            }
        }
    }
    let Some(c) = client.as_ref() else {
        return Err(Failure::Away("no connection".into()));
    };
    let ctx = ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64);
    match tokio::time::timeout(CALL_TIMEOUT, c.forward(ctx, req)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e @ ttrpc::error::Error::RpcStatus(_))) => Err(Failure::Refused(e.to_string())),
        Ok(Err(e)) => Err(Failure::Away(e.to_string())),
        Err(_) => Err(Failure::Away("timed out".into())),
    }
}
