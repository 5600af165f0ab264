// Compiles pruning.proto with the vendored protoc (no system protoc needed) into client and
// server code, and writes the encoded file descriptor set that server reflection serves.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // JSON for the dashboard (`prune-server --http`) straight from the messages.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .file_descriptor_set_path(out.join("pruning_descriptor.bin"))
        .compile_protos(&["pruning/v1/pruning.proto"], &["."])?;
    println!("cargo:rerun-if-changed=pruning/v1/pruning.proto");
    Ok(())
}
