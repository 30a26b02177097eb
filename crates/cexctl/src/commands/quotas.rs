//! `cexctl quotas`: ResourceQuota objects that keep namespaces away from
//! the config sets of other projects.
//!
//! The kubelet's `Allocate` call carries no namespace, so the plug-in
//! cannot refuse a container from the wrong namespace. A ResourceQuota
//! with `requests.cex.s390.ibm.com/<set>: 0` and
//! `limits.cex.s390.ibm.com/<set>: 0` in a namespace makes the API server
//! reject such pods before they are scheduled. For each namespace given,
//! this command builds one such quota per set whose project is another
//! namespace, prints them as YAML for `kubectl apply -f -`, or applies
//! them itself with `--apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// The resource name prefix of every CEX config set.
const RESOURCE_PREFIX: &str = "cex.s390.ibm.com/";
/// The ConfigMap the plug-in DaemonSet mounts its configuration from.
pub const CONFIG_MAP_NAME: &str = "cex-resources-config";
/// The key of the configuration in that ConfigMap.
pub const CONFIG_MAP_KEY: &str = "cex_resources.json";
/// The namespace the plug-in is deployed to by default.
pub const DEFAULT_NAMESPACE: &str = "cex-device-plugin";
/// The field manager named in server-side apply requests.
const FIELD_MANAGER: &str = "cexctl";
/// The label marking the objects this command makes.
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Arguments of `cexctl quotas`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuotasArgs {
    /// Read the config sets from this cex_resources.json file.
    #[arg(long, value_name = "FILE", required_unless_present = "from_cluster")]
    pub config: Option<PathBuf>,

    /// Read the config sets from the ConfigMap cex-resources-config (key
    /// cex_resources.json) in the cluster of the default kubeconfig.
    #[arg(long, conflicts_with = "config")]
    pub from_cluster: bool,

    /// Namespace of the ConfigMap read with --from-cluster
    /// [default: cex-device-plugin].
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "config")]
    pub namespace: Option<String>,

    /// Create or replace the quotas in the cluster of the default
    /// kubeconfig (server-side apply) instead of printing them.
    #[arg(long)]
    pub apply: bool,

    /// Namespaces to restrict: each gets a quota of 0 for every set whose
    /// project is another namespace.
    #[arg(required = true, value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
}

/// One set as far as quotas are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SetProject {
    pub setname: String,
    pub project: String,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    cryptoconfigsets: Vec<SetProject>,
}

/// Parses the set names and projects out of a `cex_resources.json` text;
/// `origin` names the file or ConfigMap in errors.
///
/// NOTE: only `setname` and `project` are checked here (present, unique
/// set names, a set name usable in a resource name). The rest of the file
/// is not verified, because cex-config offers no parser yet.
pub fn parse_sets(text: &str, origin: &str) -> anyhow::Result<Vec<SetProject>> {
    let file: ConfigFile =
        serde_json::from_str(text).with_context(|| format!("invalid crypto config in {origin}"))?;
    let mut names = BTreeSet::new();
    for set in &file.cryptoconfigsets {
        anyhow::ensure!(
            is_valid_set_name(&set.setname),
            "{origin}: invalid setname {:?}: expected 1-63 characters of [A-Za-z0-9_.-], \
             starting and ending alphanumeric",
            set.setname
        );
        anyhow::ensure!(
            !set.project.is_empty(),
            "{origin}: set {:?} has an empty project",
            set.setname
        );
        anyhow::ensure!(
            names.insert(&set.setname),
            "{origin}: set {:?} appears twice",
            set.setname
        );
    }
    Ok(file.cryptoconfigsets)
}

fn is_valid_set_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(allowed)
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Reports whether `name` is a valid namespace name (an RFC 1123 label).
fn is_valid_namespace(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(allowed)
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
}

/// Builds the quota name for `namespace` and `set`: `cex-<namespace>-quota-no-<set>`.
///
/// Object names allow only lowercase letters, digits, `-` and `.`, so a set
/// name with uppercase letters or `_` is lowercased, `_` becomes `-`, and
/// a hash of the original name is appended to keep two such sets apart.
pub fn quota_name(namespace: &str, set: &str) -> String {
    let lowered: String = set
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let mut name = format!("cex-{namespace}-quota-no-{lowered}");
    if lowered != set {
        let _ = write!(name, "-{:08x}", fnv1a32(set.as_bytes()));
    }
    name
}

/// FNV-1a, 32 bit: a stable hash that does not change between releases.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// Builds the quotas for `namespaces`: one per (namespace, set) where the
/// set's project is not that namespace, in argument and file order.
pub fn build_quotas(
    sets: &[SetProject],
    namespaces: &[String],
) -> anyhow::Result<Vec<ResourceQuota>> {
    let mut done = BTreeSet::new();
    let mut quotas = Vec::new();
    for namespace in namespaces {
        anyhow::ensure!(
            is_valid_namespace(namespace),
            "invalid namespace {namespace:?}: expected 1-63 characters of [a-z0-9-], \
             starting and ending alphanumeric"
        );
        if !done.insert(namespace) {
            continue;
        }
        for set in sets.iter().filter(|set| set.project != *namespace) {
            quotas.push(quota(namespace, &set.setname));
        }
    }
    Ok(quotas)
}

fn quota(namespace: &str, set: &str) -> ResourceQuota {
    let zero = || Quantity("0".to_string());
    let hard = BTreeMap::from([
        (format!("requests.{RESOURCE_PREFIX}{set}"), zero()),
        (format!("limits.{RESOURCE_PREFIX}{set}"), zero()),
    ]);
    ResourceQuota {
        metadata: ObjectMeta {
            name: Some(quota_name(namespace, set)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                FIELD_MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        status: None,
    }
}

/// Serialises `quotas` as a multi-document YAML stream.
pub fn to_yaml(quotas: &[ResourceQuota]) -> anyhow::Result<String> {
    let mut out = String::new();
    for quota in quotas {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(quota).context("serialising a ResourceQuota")?);
    }
    Ok(out)
}

/// Runs `cexctl quotas`.
pub async fn run(args: &QuotasArgs) -> anyhow::Result<()> {
    let sets = match &args.config {
        Some(path) => read_config_file(path)?,
        None => {
            let namespace = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            read_config_map(namespace).await?
        }
    };
    let quotas = build_quotas(&sets, &args.namespaces)?;
    if args.apply {
        apply(&quotas).await
    } else {
        print!("{}", to_yaml(&quotas)?);
        Ok(())
    }
}

fn read_config_file(path: &Path) -> anyhow::Result<Vec<SetProject>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_sets(&text, &path.display().to_string())
}

async fn read_config_map(namespace: &str) -> anyhow::Result<Vec<SetProject>> {
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client from the default kubeconfig")?;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let origin = format!("ConfigMap {namespace}/{CONFIG_MAP_NAME}");
    let map = api
        .get(CONFIG_MAP_NAME)
        .await
        .with_context(|| format!("cannot read {origin}"))?;
    let text = map
        .data
        .as_ref()
        .and_then(|data| data.get(CONFIG_MAP_KEY))
        .with_context(|| format!("{origin} has no key {CONFIG_MAP_KEY}"))?;
    parse_sets(text, &origin)
}

async fn apply(quotas: &[ResourceQuota]) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client from the default kubeconfig")?;
    let params = kube::api::PatchParams::apply(FIELD_MANAGER).force();
    for quota in quotas {
        let name = quota.metadata.name.as_deref().unwrap_or_default();
        let namespace = quota.metadata.namespace.as_deref().unwrap_or_default();
        let api: kube::Api<ResourceQuota> = kube::Api::namespaced(client.clone(), namespace);
        api.patch(name, &params, &kube::api::Patch::Apply(quota))
            .await
            .with_context(|| format!("cannot apply ResourceQuota {namespace}/{name}"))?;
        println!("resourcequota/{name} serverside-applied in namespace {namespace}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets() -> Vec<SetProject> {
        let text = r#"{"cryptoconfigsets": [
            {"setname": "blue", "project": "blue", "apqns": []},
            {"setname": "red", "project": "red", "apqns": []}]}"#;
        parse_sets(text, "test").expect("valid config")
    }

    #[test]
    fn no_quota_for_own_set() {
        let quotas = build_quotas(&sets(), &["blue".to_string()]).expect("valid namespace");
        assert_eq!(quotas.len(), 1);
        assert_eq!(
            quotas[0].metadata.name.as_deref(),
            Some("cex-blue-quota-no-red")
        );
    }

    #[test]
    fn quota_names_are_valid_object_names() {
        assert_eq!(quota_name("blue", "red"), "cex-blue-quota-no-red");
        let a = quota_name("blue", "CCA_for_customer_1");
        let b = quota_name("blue", "cca-for-customer-1");
        assert_ne!(a, b);
        assert!(a.starts_with("cex-blue-quota-no-cca-for-customer-1-"));
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
    }

    #[test]
    fn rejects_bad_namespaces() {
        for bad in ["", "Blue", "blue_1", "-blue", "a/b", &"x".repeat(64)] {
            let error = build_quotas(&sets(), &[bad.to_string()]).expect_err(bad);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn rejects_duplicate_and_invalid_sets() {
        let twice = r#"{"cryptoconfigsets": [{"setname": "a", "project": "x"},
                                               {"setname": "a", "project": "y"}]}"#;
        assert!(parse_sets(twice, "t").is_err());
        let bad_name = r#"{"cryptoconfigsets": [{"setname": "a/b", "project": "x"}]}"#;
        assert!(parse_sets(bad_name, "t").is_err());
        let no_project = r#"{"cryptoconfigsets": [{"setname": "a", "project": ""}]}"#;
        assert!(parse_sets(no_project, "t").is_err());
    }
}
