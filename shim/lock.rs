//! The one way cove takes a `std::sync::Mutex`.
//!
//! A lock is poisoned only by a panic while it was held, and a panic aborts the shim
//! (`shim/panic.rs`), so a poisoned lock is never seen in a running shim. Where unwinding
//! happens (tests), every update under cove's locks is a single assignment or insertion,
//! so the value behind a poisoned lock is still consistent: it is used as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
