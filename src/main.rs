//! `weaver`: parse the command line, run the command, and map its error to
//! an exit code (the only place that does).

use clap::Parser;

use weaver::cli::Cli;
use weaver::{commands, render};

fn main() {
    let code = match commands::run(Cli::parse()) {
        Ok(()) => 0,
        Err(e) => {
            eprint!("{}", render::error(&e));
            e.exit_code()
        }
    };
    std::process::exit(code);
}
