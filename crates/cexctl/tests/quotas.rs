//! `cexctl quotas`: quotas built from sample configs, printed as YAML and
//! read back as Kubernetes ResourceQuota objects, and argument errors.
//! No test contacts a cluster.

#[path = "../src/commands/quotas.rs"]
#[allow(dead_code)]
mod quotas;

use std::collections::BTreeMap;

use clap::Parser;
use k8s_openapi::api::core::v1::ResourceQuota;
use serde::Deserialize;

use quotas::{build_quotas, parse_sets, quota_name, to_yaml, QuotasArgs};

/// The `quotas` arguments on their own, as the subcommand parses them.
#[derive(Debug, Parser)]
#[command(name = "quotas")]
struct Cli {
    #[command(flatten)]
    args: QuotasArgs,
}

const THREE_SETS: &str = r#"{ "cryptoconfigsets": [
    { "setname": "blue", "project": "blue", "cexmode": "ep11",
      "apqns": [ { "adapter": 1, "domain": 5 } ] },
    { "setname": "red", "project": "red", "apqns": [] },
    { "setname": "CCA_for_customer_1", "project": "customer-1", "overcommit": 3,
      "apqns": [ { "adapter": 2, "domain": 6, "machineid": "IBM-3906-00000000000829E7" } ] } ] }"#;

fn namespaces(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// Prints the quotas for `names` and reads the YAML stream back.
fn round_trip(config: &str, names: &[&str]) -> Vec<ResourceQuota> {
    let sets = parse_sets(config, "sample").expect("valid sample config");
    let quotas = build_quotas(&sets, &namespaces(names)).expect("valid namespaces");
    let yaml = to_yaml(&quotas).expect("serialisable quotas");
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|document| ResourceQuota::deserialize(document).expect("a ResourceQuota document"))
        .collect()
}

fn hard(quota: &ResourceQuota) -> BTreeMap<String, String> {
    let spec = quota.spec.as_ref().expect("spec");
    let hard = spec.hard.as_ref().expect("spec.hard");
    hard.iter()
        .map(|(key, value)| (key.clone(), value.0.clone()))
        .collect()
}

fn find<'a>(quotas: &'a [ResourceQuota], namespace: &str, set: &str) -> Option<&'a ResourceQuota> {
    let name = quota_name(namespace, set);
    quotas.iter().find(|quota| {
        quota.metadata.name.as_deref() == Some(name.as_str())
            && quota.metadata.namespace.as_deref() == Some(namespace)
    })
}

#[test]
fn each_namespace_gets_other_sets() {
    let quotas = round_trip(THREE_SETS, &["blue", "red", "customer-1"]);
    assert_eq!(quotas.len(), 6);
    let expected = [
        ("blue", "red"),
        ("blue", "CCA_for_customer_1"),
        ("red", "blue"),
        ("red", "CCA_for_customer_1"),
        ("customer-1", "blue"),
        ("customer-1", "red"),
    ];
    for (namespace, set) in expected {
        let quota = find(&quotas, namespace, set);
        assert!(
            quota.is_some(),
            "no quota for set {set} in namespace {namespace}"
        );
    }
}

#[test]
fn no_quota_for_own_set() {
    let quotas = round_trip(THREE_SETS, &["blue", "red", "customer-1"]);
    assert!(find(&quotas, "blue", "blue").is_none());
    assert!(find(&quotas, "red", "red").is_none());
    assert!(find(&quotas, "customer-1", "CCA_for_customer_1").is_none());
    for quota in &quotas {
        let namespace = quota.metadata.namespace.as_deref().expect("namespace");
        for key in hard(quota).keys() {
            assert!(
                !key.ends_with(&format!("/{namespace}")),
                "{namespace} forbids {key}"
            );
        }
    }
}

#[test]
fn hard_limits_are_zero() {
    let quotas = round_trip(THREE_SETS, &["blue"]);
    let quota = find(&quotas, "blue", "red").expect("quota for red in blue");
    let expected = BTreeMap::from([
        ("requests.cex.s390.ibm.com/red".to_string(), "0".to_string()),
        ("limits.cex.s390.ibm.com/red".to_string(), "0".to_string()),
    ]);
    assert_eq!(hard(quota), expected);
    assert_eq!(
        quota.metadata.name.as_deref(),
        Some("cex-blue-quota-no-red")
    );
}

#[test]
fn yaml_has_kind_and_api_version() {
    let sets = parse_sets(THREE_SETS, "sample").expect("valid sample config");
    let quotas = build_quotas(&sets, &namespaces(&["blue"])).expect("valid namespace");
    let yaml = to_yaml(&quotas).expect("serialisable quotas");
    assert_eq!(yaml.matches("---\n").count(), 2);
    assert_eq!(yaml.matches("apiVersion: v1\n").count(), 2);
    assert_eq!(yaml.matches("kind: ResourceQuota\n").count(), 2);
    assert!(
        yaml.contains("requests.cex.s390.ibm.com/CCA_for_customer_1: '0'"),
        "{yaml}"
    );
}

#[test]
fn set_names_become_valid_object_names() {
    let quotas = round_trip(THREE_SETS, &["blue"]);
    for quota in &quotas {
        let name = quota.metadata.name.as_deref().expect("name");
        let valid = name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        assert!(valid, "invalid object name {name:?}");
    }
}

#[test]
fn repeated_namespace_listed_once() {
    let quotas = round_trip(THREE_SETS, &["blue", "blue"]);
    assert_eq!(quotas.len(), 2);
}

#[test]
fn namespace_of_no_set_gets_all() {
    let quotas = round_trip(THREE_SETS, &["green"]);
    assert_eq!(quotas.len(), 3);
}

#[test]
fn empty_config_gives_no_quotas() {
    let sets = parse_sets(r#"{"cryptoconfigsets": []}"#, "sample").expect("valid config");
    let quotas = build_quotas(&sets, &namespaces(&["blue"])).expect("valid namespace");
    assert!(quotas.is_empty());
    assert_eq!(to_yaml(&quotas).expect("serialisable"), "");
}

#[test]
fn invalid_namespace_is_named() {
    let sets = parse_sets(THREE_SETS, "sample").expect("valid sample config");
    for bad in ["Blue", "blue_team", "-blue", "a.b", ""] {
        let error = build_quotas(&sets, &namespaces(&[bad])).expect_err(bad);
        let message = error.to_string();
        assert!(
            message.contains(&format!("invalid namespace {bad:?}")),
            "{message}"
        );
    }
}

#[test]
fn invalid_config_is_named() {
    let cases = [
        ("{", "invalid crypto config in sample"),
        (r#"{"sets": []}"#, "invalid crypto config in sample"),
        (
            r#"{"cryptoconfigsets": [{"setname": "a b", "project": "x"}]}"#,
            "\"a b\"",
        ),
        (
            r#"{"cryptoconfigsets": [{"setname": "a", "project": ""}]}"#,
            "empty project",
        ),
        (
            r#"{"cryptoconfigsets": [{"setname": "a", "project": "x"},
                                    {"setname": "a", "project": "y"}]}"#,
            "appears twice",
        ),
    ];
    for (config, expected) in cases {
        let error = parse_sets(config, "sample").expect_err(config);
        let message = format!("{error:#}");
        assert!(message.contains(expected), "{config}: {message}");
    }
}

#[test]
fn args_need_config_or_cluster() {
    let error = Cli::try_parse_from(["quotas", "blue"]).expect_err("no config source");
    assert_eq!(
        error.kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
}

#[test]
fn args_need_a_namespace() {
    let error = Cli::try_parse_from(["quotas", "--config", "c.json"]).expect_err("no namespace");
    assert_eq!(
        error.kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
}

#[test]
fn args_reject_both_sources() {
    let argv = ["quotas", "--config", "c.json", "--from-cluster", "blue"];
    let error = Cli::try_parse_from(argv).expect_err("two config sources");
    assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[test]
fn args_namespace_conflicts_with_config() {
    let argv = ["quotas", "--config", "c.json", "--namespace", "x", "blue"];
    let error = Cli::try_parse_from(argv).expect_err("--namespace without --from-cluster");
    assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[test]
fn args_from_cluster_defaults() {
    let cli = Cli::try_parse_from(["quotas", "--from-cluster", "blue", "red"]).expect("valid");
    assert!(cli.args.from_cluster);
    assert!(!cli.args.apply);
    assert_eq!(cli.args.namespace, None);
    assert_eq!(cli.args.namespaces, ["blue", "red"]);
    assert_eq!(cli.args.config, None);
}

#[tokio::test]
async fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.json");
    let path_text = path.display().to_string();
    let cli = Cli::try_parse_from(["quotas", "--config", &path_text, "blue"]).expect("valid");
    let error = quotas::run(&cli.args).await.expect_err("missing file");
    assert!(format!("{error:#}").contains(&path_text), "{error:#}");
}
