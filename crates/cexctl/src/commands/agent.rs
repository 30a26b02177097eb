//! `cexctl agent`: runs the node agent (`cex-plugin`) in this process.
//!
//! The subcommand is hidden. It lets `cexctl demo` start the real agent
//! as a child process with the binary that `cargo run -p cexctl` built.
//! Every argument after `agent` goes to the agent unchanged, so
//! `cexctl agent --help` shows the agent's flags.

use std::ffi::OsString;
use std::process::ExitCode;

/// Arguments of `cexctl agent`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct AgentArgs {
    /// Flags of the agent (see `cexctl agent --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// Runs the agent with `args` until SIGTERM or SIGINT.
///
/// The agent also receives SIGTERM when the process that started it
/// exits, so an interrupted demo leaves no agent behind.
pub fn run(args: &AgentArgs) -> ExitCode {
    let parent_death = rustix::process::Signal::TERM;
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(parent_death)) {
        eprintln!("cexctl agent: cannot ask for SIGTERM on parent exit: {error}");
    }
    let program = std::iter::once(OsString::from("cex-plugin"));
    cex_plugin::run_main(program.chain(args.args.iter().cloned()))
}
