//! Request handlers that finish what they start.
//!
//! ttrpc drops a handler's future when the caller's deadline passes (containerd passes
//! CRI's deadline through). A handler dropped between two awaits would leave half-done
//! state: an id stuck in "being created", a pause process nobody recorded, a reply left in
//! the pause helper's socket. So every handler that changes state runs as a task of its
//! own: the caller may stop waiting, but the work runs to its end and undoes itself on
//! failure exactly as it would with a patient caller.

use std::future::Future;

use crate::error::{Error, Result};

/// Runs `work` to completion even if the request that started it is abandoned.
pub async fn to_completion<T, F>(work: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let done = tokio::spawn(async move {
        let r = work.await;
        // Its request may have been abandoned: the work's end is activity of its own.
        crate::idle::request_done();
        r
    });
    match done.await {
        Ok(r) => r,
        Err(e) => Err(Error::Internal(format!("request handler ended early: {e}"))),
    }
}
