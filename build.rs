//! Generates Rust for `protos/*.proto` into OUT_DIR with rust-protobuf's pure-Rust parser,
//! so building cove needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=protos");
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
