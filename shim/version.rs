//! What cove is called and which build it is: the runtime name containerd knows it by,
//! and the `-v` text.

/// The runtime name cove registers as (containerd's `runtime_type`).
pub const RUNTIME_NAME: &str = "io.containerd.cove.v1";

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (see `build.rs`).
pub const REVISION: &str = env!("COVE_REVISION");

/// The build's features: how it is linked, optimized and for which target, by which
/// compiler.
pub fn features() -> Vec<String> {
    let mut f = vec![
        if cfg!(target_feature = "crt-static") {
            "static".to_string()
        } else {
            "dynamic".to_string()
        },
        if cfg!(debug_assertions) {
            "debug".to_string()
        } else {
            "release".to_string()
        },
        env!("COVE_TARGET").to_string(),
    ];
    f.retain(|s| !s.is_empty());
    f
}

/// `-v`: the shim's name, version, commit, runtime name and build, in the layout of
/// containerd's shims' `-v`.
pub fn text(binary: &str) -> String {
    format!(
        "{binary}:\n  Version:  {VERSION}\n  Revision: {REVISION}\n  Runtime:  {RUNTIME_NAME}\n  Features: {}\n  Rust:     {}\n",
        features().join(", "),
        env!("COVE_RUSTC")
    )
}
