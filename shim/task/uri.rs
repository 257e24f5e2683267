//! containerd's stdio URIs, read as its Go code reads them: a plain path is a fifo,
//! `file://<path>` a file to append to, `binary://<path>?<args>` a log driver to start;
//! an empty one is nothing. Percent-encoding is decoded on bytes.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where one output stream goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

/// URL percent-decoding, as Go's url.PathUnescape / QueryUnescape read containerd's stdio
/// URIs. Works on bytes: `%` followed by anything but two hex digits stays as it is, and
/// non-ASCII input (a `%` before a multibyte character) is never split.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The target a stdio URI of containerd's names.
pub fn parse_target(s: &str) -> Result<Target> {
    if s.is_empty() {
        return Ok(Target::Null);
    }
    if let Some(rest) = s.strip_prefix("binary://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "stdio {s:?}: binary:// needs a path"
            )));
        }
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            args.push(percent_decode(k, true));
            if !v.is_empty() {
                args.push(percent_decode(v, true));
            }
        }
        return Ok(Target::Binary {
            path: PathBuf::from(percent_decode(path, false)),
            args,
        });
    }
    if let Some(rest) = s.strip_prefix("file://") {
        if rest.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "stdio {s:?}: file:// needs a path"
            )));
        }
        return Ok(Target::File(PathBuf::from(percent_decode(rest, false))));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(Error::InvalidArgument(format!(
            "stdio {s:?}: unsupported scheme {scheme:?} (use a fifo path, file:// or binary://)"
        )));
    }
    Ok(Target::Fifo(PathBuf::from(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_like_containerd() {
        assert_eq!(parse_target("").unwrap(), Target::Null);
        assert_eq!(
            parse_target("/run/x/stdout").unwrap(),
            Target::Fifo("/run/x/stdout".into())
        );
        assert_eq!(
            parse_target("file:///var/log/a%20b.log").unwrap(),
            Target::File("/var/log/a b.log".into())
        );
        assert_eq!(
            parse_target("binary:///usr/bin/logger?tag=web&verbose").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "web".into(), "verbose".into()]
            }
        );
        assert!(parse_target("http://x").is_err());
        assert!(parse_target("binary://").is_err());
    }

    #[test]
    fn percent_decoding_never_splits_a_character() {
        // A `%` right before a multibyte character once sliced the &str mid-character and
        // panicked Task.Create.
        assert_eq!(
            parse_target("file:///x%aé").unwrap(),
            Target::File("/x%aé".into())
        );
        assert_eq!(percent_decode("%é%", false), "%é%");
        assert_eq!(percent_decode("a%2", false), "a%2");
        assert_eq!(percent_decode("%C3%A9+x", true), "é x");
        assert_eq!(percent_decode("%zz", false), "%zz");
    }

    proptest::proptest! {
        #[test]
        fn any_stdio_uri_gets_a_target_or_a_clear_error(s in "\\PC{0,64}") {
            if let Err(e) = parse_target(&s) {
                proptest::prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            }
        }

        #[test]
        fn percent_encoded_paths_decode_to_themselves(p in "/[^\\x00]{0,48}") {
            let enc: String = p
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            proptest::prop_assert_eq!(
                parse_target(&format!("file://{enc}")).unwrap(),
                Target::File(p.clone().into())
            );
            let bin = parse_target(&format!("binary://{enc}?a={enc}")).unwrap();
            proptest::prop_assert_eq!(
                bin,
                Target::Binary { path: p.clone().into(), args: vec!["a".into(), p.clone()] }
            );
        }
    }
}
