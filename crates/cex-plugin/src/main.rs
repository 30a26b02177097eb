//! `cex-plugin`: the node agent binary. Parses the settings, sets up
//! logging and runs the agent until SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    cex_plugin::run_main(std::env::args_os())
}
