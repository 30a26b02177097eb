//! Runs `promtool` on the rule files in `docs/prometheus`, and reads the
//! metric contract table from that folder's README.

use std::path::Path;
use std::process::{Command, Output};

use super::render::{repo_root, skip};

/// Runs `promtool <args>` in `dir`. Returns `None` after printing a
/// SKIPPED line when promtool is not installed.
pub fn promtool(test: &str, dir: &Path, args: &[&str]) -> Option<Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            skip(test, "promtool not found");
            None
        }
        Err(err) => panic!("failed to run promtool {args:?}: {err}"),
    }
}

/// Asserts that a promtool run succeeded, showing its output otherwise.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "promtool {what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Metric names listed in backquotes in the first column of the tables
/// in `docs/prometheus/README.md`: the per-node series and the recorded
/// totals.
pub fn contract_metrics() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("docs/prometheus/README.md"))
        .expect("docs/prometheus/README.md is readable");
    readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.starts_with("cex_plugin_"))
        .map(str::to_owned)
        .collect()
}

/// Every `cex_plugin_...` identifier in `text`.
pub fn metric_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("cex_plugin_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
