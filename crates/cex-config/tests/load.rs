//! Loading config files: read errors, parse errors with the path, the
//! kubelet's ConfigMap symlink farm, and the start-up summary.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::Path;

use cex_config::{load, parse, summary, LoadError};

const BASE_CONFIG: &str = r#"{"cryptoconfigsets": [
  {"setname": "blue", "project": "blue",
   "apqns": [{"adapter": 1, "domain": 5}, {"adapter": 2, "domain": 5}]}
]}"#;

/// Lays out a directory as the kubelet's atomic writer does for a
/// mounted ConfigMap: a timestamped dir, `..data` pointing at it, and the
/// file as a link through `..data`.
fn configmap_dir(dir: &Path, content: &str) {
    let data = dir.join("..2026_01_01_00_00_00.1");
    fs::create_dir(&data).expect("create data dir");
    fs::write(data.join("cex_resources.json"), content).expect("write config");
    symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("link ..data");
    symlink("..data/cex_resources.json", dir.join("cex_resources.json")).expect("link file");
}

#[test]
fn load_follows_configmap_links() {
    let dir = tempfile::tempdir().expect("temp dir");
    configmap_dir(dir.path(), BASE_CONFIG);
    let loaded = load(&dir.path().join("cex_resources.json")).expect("valid config");
    assert_eq!(loaded.config.sets.len(), 1);
    assert_eq!(loaded.config.sets[0].apqns.len(), 2);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn missing_file_is_open_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cex_resources.json");
    let error = load(&path).expect_err("missing file");
    let LoadError::Open {
        path: reported,
        source,
    } = &error
    else {
        panic!("expected an open error, got {error:?}");
    };
    assert_eq!(reported, &path);
    assert_eq!(source.kind(), ErrorKind::NotFound);
    assert_eq!(
        error.to_string(),
        format!("{}: cannot read the file", path.display())
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn directory_is_open_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let error = load(dir.path()).expect_err("a directory");
    assert!(matches!(error, LoadError::Open { .. }), "{error:?}");
}

#[test]
fn parse_error_names_path_and_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cex_resources.json");
    fs::write(&path, "{\"cryptoconfigsets\": [\n  {\"setname\": }\n]}").expect("write");
    let error = load(&path).expect_err("not JSON");
    assert!(
        matches!(
            error,
            LoadError::Parse {
                line: 2,
                column: 15,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("{}: line 2, column 15: expected value", path.display())
    );
}

#[test]
fn invalid_utf8_is_parse_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cex_resources.json");
    fs::write(&path, b"{\"cryptoconfigsets\":\n [\"\xff\"]}").expect("write");
    let error = load(&path).expect_err("not UTF-8");
    assert!(
        matches!(&error, LoadError::Parse { line: 2, column: 4, message, .. } if message == "invalid UTF-8"),
        "{error:?}"
    );
}

#[test]
fn invalid_config_lists_problems_with_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cex_resources.json");
    let text = BASE_CONFIG.replace("\"adapter\": 2", "\"adapter\": 300");
    fs::write(&path, text).expect("write");
    let error = load(&path).expect_err("invalid");
    let LoadError::Invalid { problems, .. } = &error else {
        panic!("expected an invalid config, got {error:?}");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(
        error.to_string(),
        format!(
            "{}: 1 problem: set \"blue\": apqns[1]: adapter 300 is out of range 0-255",
            path.display()
        )
    );
}

#[test]
fn summary_has_one_line_per_set() {
    let text = r#"{"cryptoconfigsets": [
        {"setname": "blue", "project": "blue",
         "apqns": [{"adapter": 1, "domain": 5}, {"adapter": 10, "domain": 41}]},
        {"setname": "CCA_for_customer_1", "project": "customer-1", "cexmode": "cca",
         "mincexgen": "cex6", "overcommit": 3, "livesysfs": 0,
         "apqns": [{"adapter": 1, "domain": 6, "machineid": "IBM-3906-00000000000829E7"}]},
        {"setname": "empty", "project": "nobody", "apqns": []}
    ]}"#;
    let loaded = parse(text).expect("valid");
    assert_eq!(
        summary(&loaded.config),
        "set \"blue\": project \"blue\", cexmode any, mincexgen any, overcommit default, \
         livesysfs default, apqns [01.0005, 0a.0029]\n\
         set \"CCA_for_customer_1\": project \"customer-1\", cexmode cca, mincexgen cex6, \
         overcommit 3, livesysfs 0, apqns [01.0006@IBM-3906-00000000000829E7]\n\
         set \"empty\": project \"nobody\", cexmode any, mincexgen any, overcommit default, \
         livesysfs default, apqns []"
    );
}

#[test]
fn summary_of_empty_config() {
    let loaded = parse(r#"{"cryptoconfigsets": []}"#).expect("valid");
    assert_eq!(summary(&loaded.config), "no crypto config sets");
}
