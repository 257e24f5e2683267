//! cove: a containerd runtime v2 shim that serves the shim-side Sandbox API with pause
//! processes and the Task v3 API on one ttrpc socket. See `docs/` and the README.
//!
//! `unsafe` code lives in [`sys`] only; the compiler refuses it anywhere else.
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod cgroups;
pub mod error;
pub mod failpoint;
pub mod idle;
pub mod idmap;
pub mod ids;
pub mod kmsg;
pub mod lifetime;
pub mod lock;
pub mod oom_score;
pub mod options;
pub mod panic;
pub mod pause;
pub mod reaper;
pub mod record;
pub mod request;
pub mod sandbox;
pub mod server;
pub mod state;
#[allow(unsafe_code)]
pub mod sys;
pub mod task;
pub mod version;

/// Code generated from `protos/`.
pub mod protos {
    include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
}
