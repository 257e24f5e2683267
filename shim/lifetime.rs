//! When the shim server exits: the policy both services answer to.
//!
//! containerd asks a shim to go with Task.Shutdown (after task deletes; from containerd
//! 2.2 after every one, with tasks or the sandbox still alive), with the ShutdownSandbox of
//! its sandbox, or with a ShutdownSandbox after a failed CreateSandbox. The server exits
//! once it has been asked (now or before) and serves neither a sandbox nor a container
//! task; asked while some are alive, it exits when the last one goes. The server owns one
//! `Lifetime`; the sandbox manager counts sandboxes in it, the task service tasks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Lifetime {
    exit: watch::Sender<bool>,
    asked: AtomicBool,
    sandboxes: AtomicUsize,
    tasks: AtomicUsize,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            exit: watch::channel(false).0,
            asked: AtomicBool::new(false),
            sandboxes: AtomicUsize::new(0),
            tasks: AtomicUsize::new(0),
        }
    }
}

impl Lifetime {
    /// Resolves (to `true`) when the server should exit.
    pub fn exit_requested(&self) -> watch::Receiver<bool> {
        self.exit.subscribe()
    }

    pub fn sandbox_added(&self) {
        self.sandboxes.fetch_add(1, SeqCst);
    }

    /// A sandbox was shut down; the server goes if it was the last thing it served
    /// (ShutdownSandbox is itself the request to go).
    pub fn sandbox_removed(&self) {
        self.sandboxes.fetch_sub(1, SeqCst);
        self.asked();
    }

    pub fn task_added(&self) {
        self.tasks.fetch_add(1, SeqCst);
    }

    pub fn task_removed(&self) {
        self.tasks.fetch_sub(1, SeqCst);
        self.check();
    }

    pub fn has_sandboxes(&self) -> bool {
        self.sandboxes.load(SeqCst) > 0
    }

    /// containerd asked the shim to go (Task.Shutdown, or a ShutdownSandbox).
    pub fn asked(&self) {
        self.asked.store(true, SeqCst);
        self.check();
    }

    /// Whether the server has been asked to go and serves nothing any more.
    pub fn done(&self) -> bool {
        self.asked.load(SeqCst) && self.sandboxes.load(SeqCst) == 0 && self.tasks.load(SeqCst) == 0
    }

    fn check(&self) {
        if !self.done() {
            return;
        }
        // Let the reply to the request that let the shim go leave first.
        let tx = self.exit.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send_replace(true);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the exit was requested once the tasks spawned so far have run (the request
    /// is sent from a task that first lets the current reply go).
    async fn exits(l: &Lifetime) -> bool {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let requested = *l.exit_requested().borrow();
        requested
    }

    #[tokio::test]
    async fn asked_with_nothing_to_serve_it_goes() {
        let l = Lifetime::default();
        l.asked();
        assert!(l.done());
        assert!(exits(&l).await);
    }

    #[tokio::test]
    async fn asked_while_a_task_lives_it_goes_with_the_last_task() {
        let l = Lifetime::default();
        l.task_added();
        l.task_added();
        l.asked();
        assert!(!l.done());
        l.task_removed();
        assert!(!l.done());
        l.task_removed();
        assert!(l.done());
        assert!(exits(&l).await);
    }

    #[tokio::test]
    async fn a_task_deleted_before_anyone_asked_keeps_it() {
        let l = Lifetime::default();
        l.task_added();
        l.task_removed();
        assert!(!l.done());
        assert!(!exits(&l).await);
    }

    #[tokio::test]
    async fn task_shutdown_with_a_live_sandbox_waits_for_its_shutdown() {
        let l = Lifetime::default();
        l.sandbox_added();
        l.asked();
        assert!(!l.done());
        assert!(l.has_sandboxes());
        l.sandbox_removed();
        assert!(l.done());
        assert!(exits(&l).await);
    }
}
