include!("../scripts/rpath-build.rs");
