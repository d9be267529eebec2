//! `weaver`: parse the command line, run the command, and map its error to
//! an exit code (the only place that does).
//!
//! `main` is the C entry point itself (`no_main`): std's start-up adds
//! nothing weaver uses but a main-thread stack guard, found by parsing
//! `/proc/self/maps`, a measurable part of a command's whole run
//! (docs/performance.md). What weaver relies on from it is done here:
//! SIGPIPE ignored, so that a closed pipe or socket is an `EPIPE` error
//! and not death (children get the default back, as std's spawn resets
//! it). Arguments still come through `std::env::args_os`, which glibc
//! hands to std before `main`.
// Under `cargo test` the harness brings its own `main`.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    use clap::Parser;
    use weaver::cli::Cli;
    use weaver::error::Kind;
    use weaver::{commands, output, render};

    // SAFETY: setting a signal's disposition to ignore, before any thread
    // exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = match commands::run(Cli::parse()) {
        Ok(()) => 0,
        Err(e) => {
            // A closed stdout ends the command quietly: whoever closed it
            // wanted no more.
            if !matches!(e.kind, Kind::StdoutClosed | Kind::Reported(_)) {
                output::eprint(&render::error(&e));
            }
            e.exit_code()
        }
    };
    // Flushes stdout as returning from std's main would.
    std::process::exit(code);
}
