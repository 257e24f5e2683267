//! The runtime options containerd hands a shim: with `CreateTaskRequest.options`, on the
//! stdin of `start` (inside containerd 2.3's `BootstrapParams`) and of `-info`.
//!
//! For `io.containerd.runc.v2` they are runc's `Options` protobuf. For any other runtime
//! type, cove's included, CRI sends `runtimeoptions.v1.Options`: the runtime's `options`
//! table from containerd's config as a TOML body (`GenerateRuntimeOptions` in
//! internal/cri/config). cove reads the runc keys from either (`BinaryName`, `Root`,
//! `SystemdCgroup`, `NoPivotRoot`, `NoNewKeyring`), so a
//! `[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.cove.options]` table works
//! as it does for runc (containerd 2.3.1 and later accept one with `sandboxer = "shim"`).

use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::error::{Error, Result};
use crate::protos::runc::Options;

/// runc's options type, and CRI's generic one.
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The runc options an Any carries; other types (or none) give the defaults.
pub fn runc_options(any: Option<&Any>) -> Result<Options> {
    let Some(a) = any else {
        return Ok(Options::default());
    };
    let name = a.type_url.rsplit('/').next().unwrap_or_default();
    match name {
        RUNC_OPTIONS_TYPE => Options::parse_from_bytes(&a.value)
            .map_err(|e| Error::InvalidArgument(format!("runtime options ({name}): {e}"))),
        RUNTIME_OPTIONS_TYPE => {
            let generic = crate::protos::runtimeoptions::Options::parse_from_bytes(&a.value)
                .map_err(|e| Error::InvalidArgument(format!("runtime options ({name}): {e}")))?;
            let body = if !generic.config_body.is_empty() {
                String::from_utf8(generic.config_body).map_err(|e| {
                    Error::InvalidArgument(format!("runtime options: TOML body: {e}"))
                })?
            } else if !generic.config_path.is_empty() {
                std::fs::read_to_string(&generic.config_path).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "runtime options: config_path {}: {e}",
                        generic.config_path
                    ))
                })?
            } else {
                return Ok(Options::default());
            };
            from_toml(&body)
        }
        _ => Ok(Options::default()),
    }
}

/// The runc keys of an `options` table, as containerd's config spells them.
fn from_toml(body: &str) -> Result<Options> {
    let table: toml::Table = body
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("runtime options: TOML body: {e}")))?;
    let text = |k: &str| -> Result<String> {
        match table.get(k) {
            None => Ok(String::new()),
            Some(v) => v.as_str().map(str::to_owned).ok_or_else(|| {
                Error::InvalidArgument(format!("runtime options: {k} must be a string"))
            }),
        }
    };
    let flag = |k: &str| -> Result<bool> {
        match table.get(k) {
            None => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::InvalidArgument(format!("runtime options: {k} must be true or false"))
            }),
        }
    };
    Ok(Options {
        binary_name: text("BinaryName")?,
        root: text("Root")?,
        systemd_cgroup: flag("SystemdCgroup")?,
        no_pivot_root: flag("NoPivotRoot")?,
        no_new_keyring: flag("NoNewKeyring")?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(body: &str) -> Any {
        let o = crate::protos::runtimeoptions::Options {
            type_url: "io.containerd.cove.v1".into(),
            config_body: body.as_bytes().to_vec(),
            ..Default::default()
        };
        Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn runc_keys_come_from_either_type() {
        let runc = Options {
            binary_name: "crun".into(),
            root: "/run/x".into(),
            ..Default::default()
        };
        let any = Any {
            type_url: RUNC_OPTIONS_TYPE.into(),
            value: runc.write_to_bytes().unwrap(),
            ..Default::default()
        };
        assert_eq!(runc_options(Some(&any)).unwrap(), runc);
        let got = runc_options(Some(&generic(
            "BinaryName = '/usr/sbin/runc'\nRoot = \"/run/cove-runc\"\nSystemdCgroup = true\nIoUid = 0\n",
        )))
        .unwrap();
        assert_eq!(
            (
                got.binary_name.as_str(),
                got.root.as_str(),
                got.systemd_cgroup
            ),
            ("/usr/sbin/runc", "/run/cove-runc", true)
        );
        assert_eq!(runc_options(None).unwrap(), Options::default());
        let other = Any {
            type_url: "io.example.Other".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert_eq!(runc_options(Some(&other)).unwrap(), Options::default());
    }

    #[test]
    fn malformed_options_are_invalid_arguments() {
        for body in ["SystemdCgroup = 'yes'", "BinaryName = 3", "not toml ==="] {
            assert!(
                matches!(
                    runc_options(Some(&generic(body))),
                    Err(Error::InvalidArgument(_))
                ),
                "{body}"
            );
        }
        let garbage = Any {
            type_url: RUNC_OPTIONS_TYPE.into(),
            value: vec![0xff; 4],
            ..Default::default()
        };
        assert!(matches!(
            runc_options(Some(&garbage)),
            Err(Error::InvalidArgument(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_options_bytes_decode_or_get_invalid_argument(
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            runc in proptest::bool::ANY,
        ) {
            let a = Any {
                type_url: if runc { RUNC_OPTIONS_TYPE } else { RUNTIME_OPTIONS_TYPE }.into(),
                value,
                ..Default::default()
            };
            if let Err(e) = runc_options(Some(&a)) {
                proptest::prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            }
        }

        #[test]
        fn any_toml_body_decodes_or_gets_invalid_argument(body in "\\PC{0,200}") {
            if let Err(e) = from_toml(&body) {
                proptest::prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            }
        }
    }
}
