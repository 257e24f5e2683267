//! Validation of the ids containerd hands us (sandbox and task ids).
//!
//! The rule is containerd's own (`pkg/identifiers`): at most 76 bytes of
//! `[A-Za-z0-9]+` groups joined by single `.`, `_` or `-`. It rules out `/`, `..`,
//! NUL and anything else that could escape a path built from the id.

use crate::error::{Error, Result};

/// The longest id containerd accepts.
pub const MAX_ID_LEN: usize = 76;

/// Checks `id` against containerd's identifier rule; `what` names it in the error.
pub fn validate(what: &str, id: &str) -> Result<()> {
    let invalid = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "invalid {what} {id:?}: {why}"
        )))
    };
    if id.is_empty() {
        return invalid("must not be empty");
    }
    if id.len() > MAX_ID_LEN {
        return invalid(&format!("longer than {MAX_ID_LEN} bytes"));
    }
    let mut prev_sep = true; // the first byte must be alphanumeric
    for b in id.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => prev_sep = false,
            b'.' | b'_' | b'-' if !prev_sep => prev_sep = true,
            _ => return invalid("must match [A-Za-z0-9]+([._-][A-Za-z0-9]+)*"),
        }
    }
    if prev_sep {
        return invalid("must not end with a separator");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_style_ids() {
        for id in [
            "a",
            "abc123",
            "pod.1_x-y",
            &"f".repeat(64),
            &"a".repeat(MAX_ID_LEN),
        ] {
            validate("sandbox id", id).unwrap();
        }
    }

    #[test]
    fn rejects_paths_nul_and_overlong() {
        for id in [
            "",
            "a/b",
            "..",
            "a..b",
            "../x",
            "a\0b",
            ".a",
            "a-",
            "a b",
            &"a".repeat(MAX_ID_LEN + 1),
        ] {
            let err = validate("sandbox id", id).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{id:?}: {err}");
            assert!(err.to_string().contains("sandbox id"), "{err}");
        }
    }
}
