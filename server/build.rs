// sqlx::migrate! embeds the migrations at compile time but notices only changes to files that
// already exist: a new migration file must rebuild the server too.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
