//! Renders the kustomize trees under `deploy/` with `kubectl kustomize`
//! and looks objects up by kind and name. `kubectl kustomize` only reads
//! files; the tests point `KUBECONFIG` at a missing file as well, so no
//! cluster is ever contacted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

/// The repository root, two levels above this crate.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes a skip notice straight to stderr, past the test harness's
/// output capture, so it shows in a plain `cargo test` run.
pub fn skip(test: &str, reason: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "SKIPPED: {reason} ({test})");
}

/// The objects of one rendered kustomization, in output order.
pub struct Rendered {
    pub objects: Vec<Value>,
}

/// Renders `deploy/<dir>` and splits the output into objects. Returns
/// `None` after printing a SKIPPED line when kubectl is not installed.
pub fn render(test: &str, dir: &str) -> Option<Rendered> {
    let path = repo_root().join("deploy").join(dir);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .env("KUBECONFIG", repo_root().join("target/no-kubeconfig"))
        .output();
    let output = match output {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            skip(test, "kubectl not found");
            return None;
        }
        Err(err) => panic!("failed to run kubectl kustomize {}: {err}", path.display()),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kustomize output is UTF-8");
    Some(Rendered {
        objects: split_documents(&text),
    })
}

/// Splits a multi-document YAML stream, dropping empty documents.
pub fn split_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("rendered YAML parses"))
        .filter(|value| !value.is_null())
        .collect()
}

/// Names of the overlays under `deploy/overlays`, sorted.
pub fn overlay_names() -> Vec<String> {
    let dir = repo_root().join("deploy/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.expect("readable overlay entry"))
        .filter(|entry| entry.path().join("kustomization.yaml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Reads a string field of a YAML mapping, or "" when absent.
pub fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

impl Rendered {
    /// The `kind` of every object, in output order.
    pub fn kinds(&self) -> Vec<&str> {
        self.objects
            .iter()
            .map(|object| str_field(object, "kind"))
            .collect()
    }

    /// Every object of `kind`, as raw YAML.
    pub fn raw_of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|object| str_field(object, "kind") == kind)
            .collect()
    }

    /// Every object of `kind`, parsed into the typed API struct `T`.
    pub fn typed<T: DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.raw_of_kind(kind)
            .into_iter()
            .map(|object| {
                serde_yaml::from_value(object.clone())
                    .unwrap_or_else(|err| panic!("{kind} does not match its API schema: {err}"))
            })
            .collect()
    }

    /// The one object of `kind` named `name`, parsed into `T`.
    pub fn one<T: DeserializeOwned>(&self, kind: &str, name: &str) -> T {
        let matches: Vec<&Value> = self
            .raw_of_kind(kind)
            .into_iter()
            .filter(|object| object.get("metadata").map(|m| str_field(m, "name")) == Some(name))
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "expected one {kind} named {name}, found {}",
            matches.len()
        );
        serde_yaml::from_value(matches[0].clone())
            .unwrap_or_else(|err| panic!("{kind} {name} does not match its API schema: {err}"))
    }
}
