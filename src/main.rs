//! `weaver`: parse the command line, run the command, and map its error to
//! an exit code (the only place that does).

use clap::Parser;

use weaver::cli::Cli;
use weaver::error::Kind;
use weaver::{commands, output, render};

fn main() {
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
    std::process::exit(code);
}
