//! The binary users install: `make build` links it static, so that it runs on any Linux
//! host whatever its C library. Here it runs in a chroot that holds nothing but itself:
//! `-v` names the version, the commit and a static build, and `-info` answers containerd's
//! introspection (without `runc` there, so without runtime features).

mod common;

use std::process::{Command, Stdio};

use common::*;
use protobuf::Message;

/// `BINARY ARGS` in a chroot holding only the binary: (exit code, stdout, stderr).
fn in_empty_root(args: &[&str]) -> (i32, Vec<u8>, String) {
    let root = std::env::temp_dir().join(format!("cove-release-root-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(cove_bin(), root.join("containerd-shim-cove-v1")).unwrap();
    let out = Command::new("chroot")
        .arg(&root)
        .arg("/containerd-shim-cove-v1")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chroot");
    std::fs::remove_dir_all(&root).unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_release_binary_runs_with_no_c_library_and_says_what_it_is() {
    require(
        "COVE_BIN naming the static binary `make build` links (`make test` sets it)",
        std::env::var("COVE_BIN").is_ok_and(|b| !b.is_empty()),
    );
    let (code, out, err) = in_empty_root(&["-v"]);
    let v = String::from_utf8_lossy(&out);
    assert_eq!(
        code, 0,
        "-v in an empty root (a dynamic binary finds no loader there): {err}"
    );
    let field = |name: &str| {
        v.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("-v has no {name}: {v}"))
            .to_string()
    };
    assert!(v.starts_with("containerd-shim-cove-v1:\n"), "{v}");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Runtime"), "io.containerd.cove.v1");
    let features = field("Features");
    assert!(
        features.split(", ").any(|f| f == "static") && features.contains("release"),
        "a static release build: {features}"
    );
    // The commit it was built from: this checkout's HEAD (abbreviated by `git describe`,
    // with `-dirty` for uncommitted changes).
    let rev = field("Revision");
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = rev.strip_suffix("-dirty").unwrap_or(&rev);
    assert!(
        commit.len() >= 7 && head.starts_with(commit),
        "Revision {rev} is not HEAD {head}"
    );

    let (code, out, err) = in_empty_root(&["-info"]);
    assert_eq!(code, 0, "-info in an empty root: {err}");
    let info = containerd_shim_protos::types::introspection::RuntimeInfo::parse_from_bytes(&out)
        .expect("-info writes a RuntimeInfo");
    assert_eq!(info.name, "io.containerd.cove.v1");
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    assert!(
        info.features.is_none(),
        "no runc in the root, so no runtime features"
    );
}
