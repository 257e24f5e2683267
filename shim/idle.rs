//! Memory given back while the server is idle.
//!
//! The deepest calls of a request (a sandbox's start, a container's create, with their
//! parsing and their nested futures) leave tens of kilobytes of the main thread's stack
//! dirty. Kept, that high-water mark would stay with every pod's shim for the pod's whole
//! life. Once requests have stopped for [`IDLE_AFTER`], the server gives the stack's pages
//! below its idle frame back to the kernel, and the heap's free pages (what a request
//! allocated and freed); a later request faults in the few it uses.
//! What runs on the main thread outside a request (the reaper, stdio copies, OOM watches)
//! is shallow; a request ttrpc drops (its caller's deadline passed) counts when the work
//! it started ends, or at the next request.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use ttrpc::r#async::{MethodHandler, Service, TtrpcContext};

/// How long the server waits after the last request.
pub const IDLE_AFTER: Duration = Duration::from_millis(500);

static ACTIVITY: Notify = Notify::const_new();

/// Called when a request has finished (or the work of one its caller abandoned).
pub fn request_done() {
    ACTIVITY.notify_one();
}

static REQUESTED: Notify = Notify::const_new();

/// Resolves once a request has reached the server (at once if one has). A connection
/// alone does not count: `start` connects to see whether a server is already there.
pub async fn first_request() {
    REQUESTED.notified().await;
}

/// Wraps every method of `services` so that its start is seen by [`first_request`] and
/// its end counts as activity.
pub fn watch(services: &mut HashMap<String, Service>) {
    for svc in services.values_mut() {
        svc.methods = std::mem::take(&mut svc.methods)
            .into_iter()
            .map(|(name, inner)| (name, Box::new(Noticed(inner)) as Handler))
            .collect();
    }
}

type Handler = Box<dyn MethodHandler + Send + Sync>;

struct Noticed(Handler);

#[async_trait]
impl MethodHandler for Noticed {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        REQUESTED.notify_one();
        let r = self.0.handler(ctx, req).await;
        request_done();
        r
    }
}

/// Runs for the server's life (a task of its runtime, on the main thread).
pub async fn give_back_when_idle() {
    loop {
        ACTIVITY.notified().await;
        while tokio::time::timeout(IDLE_AFTER, ACTIVITY.notified())
            .await
            .is_ok()
        {}
        let released = match std::fs::read_to_string("/proc/self/maps") {
            Ok(maps) => crate::sys::release_unused_stack(&maps),
            Err(e) => {
                log::debug!("idle: read /proc/self/maps: {e}");
                0
            }
        };
        let heap = crate::sys::release_free_heap();
        if released > 0 || heap {
            log::debug!(
                "idle: released {} kB of stack{}",
                released / 1024,
                if heap {
                    " and the heap's free pages"
                } else {
                    ""
                }
            );
        }
    }
}
