//! `cexctl validate`: checks a `cex_resources.json` with the agent's own
//! parser and prints every problem, every warning and, for a valid file, a
//! summary of its sets.
//!
//! Exit codes: 0 valid (warnings allowed), 1 invalid (not JSON or a broken
//! rule), 2 unreadable (missing, no permission, a directory without the
//! config key).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cex_config::LoadError;

/// The ConfigMap key, and the file name inside a mounted ConfigMap.
pub const CONFIG_KEY: &str = "cex_resources.json";

/// Exit code for a config that is not JSON or breaks a rule.
const EXIT_INVALID: u8 = 1;

/// Exit code for a config file that cannot be read.
const EXIT_UNREADABLE: u8 = 2;

/// Arguments of `cexctl validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The config file, or a mounted ConfigMap directory whose
    /// cex_resources.json is read.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Returns the config file for `path`: `path` itself, or
/// `<path>/cex_resources.json` when `path` is a directory.
pub fn config_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CONFIG_KEY)
    } else {
        path.to_path_buf()
    }
}

/// Runs `cexctl validate`: the summary goes to stdout, warnings and
/// problems to stderr, one per line.
pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let file = config_file(&args.file);
    let error = match cex_config::load(&file) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {}: {warning}", file.display());
            }
            let count = loaded.config.sets.len();
            println!(
                "{}: valid, {count} set{}",
                file.display(),
                if count == 1 { "" } else { "s" }
            );
            println!("{}", cex_config::summary(&loaded.config));
            return Ok(ExitCode::SUCCESS);
        }
        Err(error) => error,
    };
    Ok(ExitCode::from(report_error(&args.file, &error)))
}

/// Prints `error` on stderr and returns the exit code for it.
fn report_error(requested: &Path, error: &LoadError) -> u8 {
    match error {
        LoadError::Open { path, source } => {
            eprintln!("error: {}: cannot read the file: {source}", path.display());
            if path != requested {
                eprintln!(
                    "note: {} is a directory, so its key {CONFIG_KEY} was read",
                    requested.display()
                );
            }
            EXIT_UNREADABLE
        }
        LoadError::Parse { .. } => {
            eprintln!("error: {error}");
            EXIT_INVALID
        }
        LoadError::Invalid { path, problems } => {
            // NOTE: cex_config drops the unknown-field warnings of an
            // invalid file, so only its problems are printed here.
            for problem in problems {
                eprintln!("error: {}: {problem}", path.display());
            }
            let count = problems.len();
            eprintln!(
                "{}: invalid, {count} problem{}",
                path.display(),
                if count == 1 { "" } else { "s" }
            );
            EXIT_INVALID
        }
    }
}
