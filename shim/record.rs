//! What cove writes to disk for its own later reading: serde-derived structs, each stored
//! as one JSON object with a `version` field beside the record's own fields, written
//! atomically (a temporary file, then a rename), and decoded strictly: a wrong type, a
//! malformed file or a version newer than this cove knows is [`Error::Corrupt`], never a
//! field silently taken as absent.
//!
//! A newer cove reads an older record: fields are only ever added (with a default, for
//! records that lack them), and a record with no `version` is version 0, the layout cove
//! wrote before records carried one (the same field names).
//!
//! There is no fsync: the records guard against a crash of the shim, which leaves the page
//! cache intact. A crash of the host takes the pause processes, mounts and cgroups with it,
//! and the records live in containerd's state directory, which does not outlive a boot.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// A record type: its name in messages, and the newest layout version this cove writes.
pub trait Record: Serialize + DeserializeOwned {
    const KIND: &'static str;
    const VERSION: u32;
}

#[derive(Serialize)]
struct Stored<'a, T> {
    version: u32,
    #[serde(flatten)]
    record: &'a T,
}

#[derive(Deserialize)]
struct Version {
    #[serde(default)]
    version: u32,
}

/// The record as stored.
pub fn encode<T: Record>(record: &T) -> Result<String> {
    serde_json::to_string(&Stored {
        version: T::VERSION,
        record,
    })
    .map_err(|e| Error::Internal(format!("encode {}: {e}", T::KIND)))
}

/// Reads a stored record; `origin` names where it came from, for the error.
pub fn decode<T: Record>(text: &str, origin: &Path) -> Result<T> {
    let corrupt =
        |e: String| Error::Corrupt(format!("{} {} is corrupt: {e}", T::KIND, origin.display()));
    let v: Version = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    if v.version > T::VERSION {
        return Err(corrupt(format!(
            "version {} is newer than this cove reads ({})",
            v.version,
            T::VERSION
        )));
    }
    serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))
}

/// Writes `text` to `path` atomically: readers see the old file or the new one, whole.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    std::fs::write(tmp, text).context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(tmp, path).context(|| format!("rename to {}", path.display()))
}

/// Stores `record` at `path`.
pub fn save<T: Record>(record: &T, path: &Path) -> Result<()> {
    write_atomic(path, &encode(record)?)
}

/// The record at `path`; `None` when there is none.
pub fn load<T: Record>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// Removes the record at `path`; a missing one is fine.
pub fn forget(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        #[serde(default)]
        added_later: Vec<u32>,
    }

    impl Record for Sample {
        const KIND: &'static str = "sample record";
        const VERSION: u32 = 2;
    }

    fn here() -> &'static Path {
        Path::new("/x/sample.json")
    }

    #[test]
    fn a_record_round_trips_with_its_version() {
        let s = Sample {
            name: "a".into(),
            added_later: vec![1],
        };
        let text = encode(&s).unwrap();
        assert!(text.contains(r#""version":2"#), "{text}");
        assert_eq!(decode::<Sample>(&text, here()).unwrap(), s);
    }

    #[test]
    fn an_older_record_is_read_with_defaults() {
        let old = decode::<Sample>(r#"{"name":"a"}"#, here()).unwrap();
        assert_eq!(
            old,
            Sample {
                name: "a".into(),
                added_later: vec![]
            }
        );
        decode::<Sample>(r#"{"version":1,"name":"a"}"#, here()).unwrap();
    }

    #[test]
    fn corrupt_records_are_errors_not_absences() {
        for bad in [
            r#"{"name":7}"#,
            r#"{"name":"a","added_later":"x"}"#,
            r#"{"version":"one","name":"a"}"#,
            r#"{"version":3,"name":"a"}"#,
            "{trunc",
            "",
        ] {
            match decode::<Sample>(bad, here()) {
                Err(Error::Corrupt(m)) => assert!(m.contains("/x/sample.json"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn save_load_forget() {
        let dir = std::env::temp_dir().join(format!("cove-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        assert!(load::<Sample>(&path).unwrap().is_none());
        let s = Sample {
            name: "b".into(),
            added_later: vec![],
        };
        save(&s, &path).unwrap();
        assert_eq!(load::<Sample>(&path).unwrap(), Some(s));
        forget(&path).unwrap();
        forget(&path).unwrap();
        assert!(load::<Sample>(&path).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
