//! One process of a container (its init, or an exec) and its life: created, running,
//! paused, stopped. Its exit is seen once, by the reaper, and fanned out to every waiter.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::api::Status;
use tokio::sync::watch;

use crate::reaper::Exit;
use crate::task::stdio::{Io, Paths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl State {
    pub fn proto(self) -> Status {
        match self {
            State::Created => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Paused => Status::PAUSED,
            State::Stopped => Status::STOPPED,
        }
    }
}

struct Inner {
    pid: u32,
    state: State,
    io: Option<Arc<Io>>,
    deleted: bool,
    /// A Start of it is under way (or done): a second one is refused, not run twice.
    starting: bool,
    /// The process has been reaped: its pid may already be another process's, so it is
    /// never signalled again, though it shows as running until its output has drained.
    reaped: bool,
}

pub struct Process {
    pub exec_id: String,
    pub paths: Paths,
    /// An exec's OCI process (JSON), written for `runc exec` when it starts.
    pub spec: Vec<u8>,
    inner: Mutex<Inner>,
    exited: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, paths: Paths, spec: Vec<u8>) -> Arc<Process> {
        Arc::new(Process {
            exec_id: exec_id.to_owned(),
            paths,
            spec,
            inner: Mutex::new(Inner {
                pid: 0,
                state: State::Created,
                io: None,
                deleted: false,
                starting: false,
                reaped: false,
            }),
            exited: watch::channel(None).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock::lock(&self.inner)
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exited.borrow()
    }

    pub fn io(&self) -> Option<Arc<Io>> {
        self.lock().io.clone()
    }

    pub fn set_created(&self, pid: u32, io: Io) {
        let mut i = self.lock();
        i.pid = pid;
        i.io = Some(Arc::new(io));
    }

    /// Moves to `to` unless the process has stopped meanwhile; returns whether it did.
    pub fn transition(&self, to: State) -> bool {
        let mut i = self.lock();
        if i.state == State::Stopped {
            return false;
        }
        i.state = to;
        true
    }

    /// Records the exit and wakes every waiter.
    pub fn set_stopped(&self, exit: Exit) {
        self.lock().state = State::Stopped;
        self.exited.send_replace(Some(exit));
    }

    /// Claims the one Start of a created process; false if it is not created or another
    /// Start has claimed it.
    pub fn begin_start(&self) -> bool {
        let mut i = self.lock();
        if i.state != State::Created || i.starting {
            return false;
        }
        i.starting = true;
        true
    }

    /// A claimed Start failed: the process may be started again.
    pub fn start_failed(&self) {
        self.lock().starting = false;
    }

    /// The reaper has collected the process: no signal may go to its pid from now on.
    pub fn set_reaped(&self) {
        self.lock().reaped = true;
    }

    pub fn is_reaped(&self) -> bool {
        self.lock().reaped
    }

    /// Marks the process deleted (no exit event is published after this).
    pub fn mark_deleted(&self) -> bool {
        std::mem::replace(&mut self.lock().deleted, true)
    }

    /// Lets a failed delete be retried.
    pub fn unmark_deleted(&self) {
        self.lock().deleted = false;
    }

    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    pub async fn wait(&self) -> Exit {
        let mut rx = self.exited.subscribe();
        let exit = match rx.wait_for(|e| e.is_some()).await {
            Ok(v) => *v,
            Err(_) => None,
        };
        exit.unwrap_or(Exit {
            status: 255,
            at: SystemTime::now(),
        })
    }
}
