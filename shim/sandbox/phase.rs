//! A sandbox's state machine: Created, then Running (the pause process lives), then
//! Stopped (for good). Each transition is a method; an invalid one is FAILED_PRECONDITION.

use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::reaper::Exit;

/// CRI's literal sandbox states (`runtime.v1.PodSandboxState` names).
pub const SANDBOX_READY: &str = "SANDBOX_READY";
pub const SANDBOX_NOTREADY: &str = "SANDBOX_NOTREADY";

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// CreateSandbox recorded it; nothing runs yet.
    Created,
    /// The pause process is alive.
    Running { pid: u32, started_at: SystemTime },
    /// The pause process has exited (or the sandbox was stopped before it started).
    Stopped {
        pid: u32,
        started_at: Option<SystemTime>,
        exit: Exit,
    },
}

impl Phase {
    /// May the pause process be started now?
    pub fn check_start(&self, id: &str) -> Result<()> {
        match self {
            Phase::Created => Ok(()),
            Phase::Running { .. } => Err(Error::FailedPrecondition(format!(
                "sandbox {id} is already started"
            ))),
            Phase::Stopped { .. } => Err(Error::FailedPrecondition(format!(
                "sandbox {id} is stopped and cannot be started again"
            ))),
        }
    }

    /// The pause process `pid` started.
    pub fn started(&self, id: &str, pid: u32, at: SystemTime) -> Result<Phase> {
        self.check_start(id)?;
        Ok(Phase::Running {
            pid,
            started_at: at,
        })
    }

    /// The pause process exited, or a never-started sandbox was stopped.
    pub fn exited(&self, exit: Exit) -> Phase {
        match *self {
            Phase::Created => Phase::Stopped {
                pid: 0,
                started_at: None,
                exit,
            },
            Phase::Running { pid, started_at } => Phase::Stopped {
                pid,
                started_at: Some(started_at),
                exit,
            },
            stopped @ Phase::Stopped { .. } => stopped,
        }
    }

    pub fn state(&self) -> &'static str {
        match self {
            Phase::Running { .. } => SANDBOX_READY,
            _ => SANDBOX_NOTREADY,
        }
    }

    pub fn pid(&self) -> u32 {
        match *self {
            Phase::Created => 0,
            Phase::Running { pid, .. } | Phase::Stopped { pid, .. } => pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn created_can_start_once() {
        let p = Phase::Created;
        p.check_start("a").unwrap();
        let r = p.started("a", 7, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(r.state(), SANDBOX_READY);
        assert_eq!(r.pid(), 7);
        assert!(matches!(
            r.started("a", 8, SystemTime::UNIX_EPOCH),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn running_exits_into_stopped_and_keeps_pid() {
        let r = Phase::Running {
            pid: 7,
            started_at: SystemTime::UNIX_EPOCH,
        };
        let s = r.exited(exit(137));
        assert_eq!(s.state(), SANDBOX_NOTREADY);
        assert_eq!(s.pid(), 7);
        assert!(matches!(
            s,
            Phase::Stopped {
                exit: Exit { status: 137, .. },
                ..
            }
        ));
    }

    #[test]
    fn stopped_is_final() {
        let s = Phase::Created.exited(exit(0));
        assert_eq!(s.pid(), 0);
        assert_eq!(s.exited(exit(9)), s, "a second exit changes nothing");
        assert!(matches!(
            s.check_start("a"),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn states_are_cri_enum_names() {
        assert_eq!(Phase::Created.state(), "SANDBOX_NOTREADY");
        assert_eq!(
            Phase::Running {
                pid: 1,
                started_at: SystemTime::UNIX_EPOCH
            }
            .state(),
            "SANDBOX_READY"
        );
    }
}
