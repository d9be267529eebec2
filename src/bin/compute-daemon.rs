//! `compute-daemon`: the C compute daemon (`compute-daemon/src`) as a Cargo
//! binary. All the work is in `wc_daemon_main`; this only hands it argv and
//! exits with its code.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    std::process::exit(weaver::ffi::daemon_main(&args));
}
