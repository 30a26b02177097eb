//! `cexctl validate`: exit codes, problem and warning lines, the summary,
//! and the ConfigMap directory form.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cex_config::ConfigError;

fn cexctl_validate(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .arg("validate")
        .arg(path)
        .output()
        .expect("run cexctl validate")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("cex_resources.json");
    fs::write(&path, text).expect("write config");
    path
}

const VALID: &str = r#"{ "cryptoconfigsets": [
    { "setname": "CCA_for_customer_1", "project": "customer-1",
      "cexmode": "cca", "mincexgen": "cex6", "overcommit": 3, "livesysfs": 1,
      "apqns": [ { "adapter": 1, "domain": 6, "machineid": "" },
                 { "adapter": 2, "domain": 6, "machineid": "IBM-3931-00000000000C4A17" } ] },
    { "setname": "ep11", "project": "blue", "cexmode": "ep11",
      "apqns": [ { "adapter": 4, "domain": 41 } ] } ] }"#;

#[test]
fn validate_accepts_valid_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), VALID);
    let output = cexctl_validate(&path);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stderr(&output).is_empty(), "{output:?}");
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!("{}: valid, 2 sets\n", path.display())),
        "{text}"
    );
    let loaded = cex_config::parse(VALID).expect("valid config");
    let summary = cex_config::summary(&loaded.config);
    assert!(text.contains(&summary), "{text}");
    assert!(text.contains("set \"CCA_for_customer_1\""), "{text}");
    assert!(text.contains("set \"ep11\""), "{text}");
    assert!(
        text.contains("01.0006, 02.0006@IBM-3931-00000000000C4A17"),
        "{text}"
    );
}

#[test]
fn validate_warns_on_unknown_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        dir.path(),
        r#"{ "cryptoconfigsets": [ { "setname": "blue", "project": "blue",
             "overcomit": 2, "apqns": [] } ] }"#,
    );
    let output = cexctl_validate(&path);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let warnings = stderr(&output);
    let line = warnings
        .lines()
        .find(|line| line.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning in: {warnings}"));
    assert!(line.contains("\"overcomit\""), "{line}");
    assert!(line.contains("\"overcommit\""), "{line}");
    assert!(
        stdout(&output).contains("set \"blue\": project \"blue\""),
        "{output:?}"
    );
}

/// Invalid configs with problem texts that must appear, one per line.
const INVALID: &[(&str, &[&str])] = &[
    (
        r#"{ "cryptoconfigsets": [ { "setname": "blue", "project": "blue",
             "cexmode": "ep12", "apqns": [ { "adapter": 300, "domain": 1 } ] } ] }"#,
        &[
            "set \"blue\": cexmode \"ep12\" is invalid, expected ep11, cca or accel",
            "set \"blue\": apqns[0]: adapter 300 is out of range 0-255",
        ],
    ),
    (
        r#"{ "cryptoconfigsets": [
             { "setname": "blue", "project": "blue", "apqns": [] },
             { "setname": "blue", "project": "", "overcommit": 500, "apqns": [] } ] }"#,
        &[
            "set \"blue\": setname \"blue\" is already used by cryptoconfigsets[0]",
            "set \"blue\": project must not be empty",
            "set \"blue\": overcommit 500 is out of range 0-100",
        ],
    ),
    (
        r#"{ "cryptoconfigsets": [ { "project": "red", "mincexgen": "cex3", "apqns": {} } ] }"#,
        &[
            "cryptoconfigsets[0]: setname is missing",
            "mincexgen \"cex3\" is invalid",
            "apqns must be an array, found an object",
        ],
    ),
];

#[test]
fn validate_lists_every_problem() {
    for (text, expected) in INVALID {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_config(dir.path(), text);
        let output = cexctl_validate(&path);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(stdout(&output).is_empty(), "{output:?}");
        let lines = stderr(&output);
        let Err(ConfigError::Invalid { problems }) = cex_config::parse(text) else {
            panic!("config is not invalid: {text}");
        };
        let prefix = format!("error: {}: ", path.display());
        for problem in &problems {
            let line = format!("{prefix}{problem}");
            assert!(lines.lines().any(|found| found == line), "{line}\n{lines}");
        }
        for fragment in *expected {
            assert!(
                lines
                    .lines()
                    .any(|line| line.starts_with(&prefix) && line.contains(fragment)),
                "{fragment}\n{lines}"
            );
        }
        let count = format!("{}: invalid, {} problem", path.display(), problems.len());
        assert!(lines.contains(&count), "{count}\n{lines}");
    }
}

#[test]
fn validate_reports_parse_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        dir.path(),
        "{ \"cryptoconfigsets\": [\n  { \"setname\": } ] }",
    );
    let output = cexctl_validate(&path);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = stderr(&output);
    let prefix = format!("error: {}: line 2, column ", path.display());
    assert!(message.starts_with(&prefix), "{message}");
}

#[test]
fn validate_missing_file_is_unreadable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.json");
    let output = cexctl_validate(&path);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let message = stderr(&output);
    let expected = format!("error: {}: cannot read the file: ", path.display());
    assert!(message.starts_with(&expected), "{message}");
}

#[test]
fn validate_directory_without_key_is_unreadable() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("other.json"), VALID).expect("write other key");
    let output = cexctl_validate(dir.path());
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let message = stderr(&output);
    let key = dir.path().join("cex_resources.json");
    let expected = format!("error: {}: cannot read the file: ", key.display());
    assert!(message.starts_with(&expected), "{message}");
    assert!(
        message.contains(&format!("{} is a directory", dir.path().display())),
        "{message}"
    );
}

#[test]
fn validate_key_directory_is_unreadable() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::create_dir(dir.path().join("cex_resources.json")).expect("create dir");
    let output = cexctl_validate(dir.path());
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn validate_reads_configmap_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A mounted ConfigMap: the key is a symlink into a `..data` directory.
    let data = dir.path().join("..2024_01_01_00_00_00.000000000");
    fs::create_dir(&data).expect("create data dir");
    fs::write(data.join("cex_resources.json"), VALID).expect("write config");
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.000000000", dir.path().join("..data"))
        .expect("link ..data");
    std::os::unix::fs::symlink(
        "..data/cex_resources.json",
        dir.path().join("cex_resources.json"),
    )
    .expect("link key");
    let output = cexctl_validate(dir.path());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stdout(&output).contains("valid, 2 sets"), "{output:?}");
}
