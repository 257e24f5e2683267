//! Generates Rust for `protos/*.proto` into OUT_DIR with rust-protobuf's pure-Rust parser,
//! so building cove needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=protos");
    revision();
    // What `-v` says of the build: the target and the compiler.
    println!(
        "cargo:rustc-env=COVE_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=COVE_RUSTC={}", rustc_version.trim());
    // The shim is linked as a position-dependent executable. A PIE is relocated at every
    // start, which dirties ~400 kB of its read-only data (pointer tables) in each shim
    // process. Linked at a fixed address, those pages stay clean and are shared by all
    // shims and pause processes on the host, and startup skips ~16k relocations.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("protos")
        .inputs([
            "protos/cri.proto",
            "protos/update.proto",
            "protos/runc.proto",
            "protos/runtimeoptions.proto",
        ])
        .cargo_out_dir("protos")
        .run_from_script();
}

/// The git commit `-v` reports: `COVE_REVISION` when set (`make release` passes `git
/// describe --always --dirty`, which knows uncommitted changes), else the checkout's HEAD,
/// else "unknown" (a source tree without git).
fn revision() {
    println!("cargo:rerun-if-env-changed=COVE_REVISION");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    // A new commit moves HEAD or the branch it names: rebuild then.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
                println!("cargo:rerun-if-changed={common}/{head}");
            }
        }
    }
    let rev = std::env::var("COVE_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=COVE_REVISION={rev}");
}
