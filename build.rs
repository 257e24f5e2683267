//! Generates Rust for `protos/*.proto` into OUT_DIR with rust-protobuf's pure-Rust parser,
//! so building cove needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=protos");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("protos")
        .inputs([
            "protos/cri.proto",
            "protos/update.proto",
            "protos/runc.proto",
        ])
        .cargo_out_dir("protos")
        .run_from_script();
}
