//! One error type for the whole shim and its mapping onto ttrpc status codes.
//!
//! Semantic variants carry a lowercase message that names the id or path involved;
//! the source-carrying variants wrap what the kernel or a library said.

use ttrpc::Code;

/// Every failure cove can return to containerd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// A record cove wrote cannot be read back (DATA_LOSS).
    #[error("{0}")]
    Corrupt(String),
    /// The OCI runtime failed; containerd reports these as UNKNOWN.
    #[error("{0}")]
    Unknown(String),
    /// Something cove waited for (runc, the pause) did not finish within its bound.
    #[error("{0}")]
    DeadlineExceeded(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The same error, its message prefixed with what failed (once), keeping its code but
    /// NOT_FOUND: what failed within `what` is no sign that the object is gone.
    pub fn within(self, what: &str) -> Self {
        let msg = self.to_string();
        if msg.starts_with(what) {
            return self;
        }
        self.reworded(format!("{what}: {msg}"))
    }

    /// The same error, with the same code, and `note` after its message (e.g. where a
    /// log says more).
    pub fn noting(self, note: &str) -> Self {
        let m = format!("{self} ({note})");
        match self {
            Error::NotFound(_) => Error::NotFound(m),
            e => e.reworded(m),
        }
    }

    /// The same code (NOT_FOUND apart, see `within`) with message `m`.
    fn reworded(self, m: String) -> Self {
        match self {
            Error::NotFound(_) => Error::Unknown(m),
            Error::AlreadyExists(_) => Error::AlreadyExists(m),
            Error::InvalidArgument(_) => Error::InvalidArgument(m),
            Error::FailedPrecondition(_) => Error::FailedPrecondition(m),
            Error::Unimplemented(_) => Error::Unimplemented(m),
            Error::Corrupt(_) => Error::Corrupt(m),
            Error::DeadlineExceeded(_) => Error::DeadlineExceeded(m),
            Error::Io { .. } | Error::Sys { .. } | Error::Internal(_) => Error::Internal(m),
            Error::Unknown(_) => Error::Unknown(m),
        }
    }

    /// Wraps an I/O error with what cove was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an errno with what cove was doing.
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    /// The ttrpc (gRPC) status code containerd sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Io { .. } | Error::Sys { .. } | Error::Internal(_) => Code::INTERNAL,
            Error::Corrupt(_) => Code::DATA_LOSS,
            Error::Unknown(_) => Code::UNKNOWN,
            Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        log::error!("{e}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Extension to attach context to `std::io::Result`.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn semantic_variants_map_to_their_codes() {
        let cases = [
            (
                Error::NotFound("sandbox a not found".into()),
                Code::NOT_FOUND,
            ),
            (
                Error::AlreadyExists("sandbox a exists".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                Error::InvalidArgument("bad id".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::FailedPrecondition("not started".into()),
                Code::FAILED_PRECONDITION,
            ),
            (Error::Unimplemented("exec".into()), Code::UNIMPLEMENTED),
            (Error::Internal("boom".into()), Code::INTERNAL),
            (
                Error::DeadlineExceeded("runc start c did not finish within 120s".into()),
                Code::DEADLINE_EXCEEDED,
            ),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            assert_eq!(status(err), (code, msg));
        }
    }

    #[test]
    fn a_note_keeps_the_code_and_the_message() {
        let cases = [
            Error::NotFound("task t not found".into()),
            Error::FailedPrecondition("criu cannot run".into()),
            Error::Unknown("runc: criu failed".into()),
            Error::DeadlineExceeded("runc restore t did not finish".into()),
            Error::io("open /x", std::io::Error::from_raw_os_error(libc::EIO)),
        ];
        for err in cases {
            let (code, msg) = (err.code(), err.to_string());
            let noted = status(err.noting("CRIU's log: /b/criu-restore.log"));
            assert_eq!(
                noted,
                (code, format!("{msg} (CRIU's log: /b/criu-restore.log)"))
            );
        }
    }

    #[test]
    fn source_variants_are_internal_and_keep_the_cause() {
        let (code, msg) = status(Error::io(
            "open /x",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
        assert_eq!(code, Code::INTERNAL);
        assert!(msg.starts_with("open /x: "), "{msg}");
        let (code, msg) = status(Error::sys("setns /y", nix::Error::EPERM));
        assert_eq!(code, Code::INTERNAL);
        assert!(msg.contains("setns /y") && msg.contains("EPERM"), "{msg}");
    }
}
