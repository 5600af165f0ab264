// Shared by the build scripts of crates whose binaries or tests link libtorch: bake the
// libtorch directory into the rpath so nothing needs LD_LIBRARY_PATH at run time.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PRUNE_CUDA");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
    // With --as-needed the linker drops libtorch_cuda.so (nothing references it directly),
    // which hides CUDA; GPU builds set PRUNE_CUDA=1 to keep it.
    if std::env::var("PRUNE_CUDA").map(|v| v == "1").unwrap_or(false) {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
