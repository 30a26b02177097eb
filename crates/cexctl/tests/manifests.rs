//! Checks the deployment manifests under `deploy/` and the Prometheus
//! rules under `docs/prometheus/`: every overlay renders with
//! `kubectl kustomize` into objects that match their API schema, and the
//! DaemonSet, RBAC, ConfigMaps, SCC and PodMonitor carry what the agent
//! needs on a node. Tests print a SKIPPED line and pass when kubectl or
//! promtool is not installed. No test contacts a cluster.

mod manifests {
    pub mod render;
    pub mod tools;
}

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_yaml::Value;

use manifests::render::{overlay_names, render, repo_root, skip, str_field, Rendered};
use manifests::tools::{assert_success, contract_metrics, metric_names_in, promtool};

const NAMESPACE: &str = "cex-device-plugin";
const DAEMONSET: &str = "cex-plugin-daemonset";
const SERVICE_ACCOUNT: &str = "cex-plugin-sa";
const CRYPTO_CONFIG: &str = "cex-resources-config";
const CRYPTO_CONFIG_KEY: &str = "cex_resources.json";

/// The agent's environment variables and their defaults, except
/// NODENAME, which has no default and comes from the downward API.
const SETTINGS: &[(&str, &str)] = &[
    ("APQN_CHECK_INTERVAL", "30"),
    ("APQN_OVERCOMMIT_LIMIT", "1"),
    ("APQN_LIVE_SYSFS", "1"),
    ("CRYPTOCONFIG_CHECK_INTERVAL", "120"),
    ("PODLISTER_POLL_INTERVAL", "30"),
    ("RESOURCE_DELETE_UNUSED", "120"),
    ("RESOURCE_DELETE_NEVER_USED", "1800"),
    ("METRICS_POLL_INTERVAL", "15"),
    ("SHADOWSYSFS_BASEDIR", "/var/tmp/shadowsysfs"),
    ("CCS_JSON_FILE", "/config/cex_resources.json"),
    ("APSYSFS_BUSDIR", "/sys/bus/ap"),
    ("APSYSFS_DEVSDIR", "/sys/devices/ap"),
    ("ZCRYPT_CLASSDIR", "/sys/class/zcrypt"),
    ("ZCRYPT_NODESDIR", "/sys/devices/virtual/zcrypt"),
    ("DEV_DIR", "/dev"),
    ("PROC_SYSINFO_FILE", "/proc/sysinfo"),
    (
        "KUBELET_DEVICE_PLUGIN_DIR",
        "/var/lib/kubelet/device-plugins",
    ),
    (
        "KUBELET_POD_RESOURCES_SOCKET",
        "/var/lib/kubelet/pod-resources/kubelet.sock",
    ),
    ("METRICS_LISTEN", "0.0.0.0:9810"),
];

/// Settings that name a host path the agent must see at the same path,
/// because it hands these paths to the kubelet or watches them there.
const HOST_PATH_SETTINGS: &[&str] = &[
    "SHADOWSYSFS_BASEDIR",
    "APSYSFS_BUSDIR",
    "APSYSFS_DEVSDIR",
    "ZCRYPT_CLASSDIR",
    "ZCRYPT_NODESDIR",
    "DEV_DIR",
    "KUBELET_DEVICE_PLUGIN_DIR",
    "KUBELET_POD_RESOURCES_SOCKET",
];

// === helpers ===

fn daemonset(rendered: &Rendered) -> DaemonSet {
    rendered.one::<DaemonSet>("DaemonSet", DAEMONSET)
}

fn pod_spec(daemonset: &DaemonSet) -> PodSpec {
    let spec = daemonset.spec.clone();
    spec.template.spec.expect("pod template has a spec")
}

fn agent_container(pod: &PodSpec) -> Container {
    let found = pod.containers.iter().find(|c| c.name == "cex-plugin");
    found.cloned().expect("pod has the cex-plugin container")
}

fn init_container(pod: &PodSpec) -> Container {
    let inits = pod.init_containers.clone().unwrap_or_default();
    let found = inits.into_iter().find(|c| c.name == "shadowsysfs");
    found.expect("pod has the shadowsysfs init container")
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let found = volumes.iter().find(|v| v.name == name);
    found.unwrap_or_else(|| panic!("pod has no volume {name}"))
}

/// Returns the host path mounted at exactly `mount_path`, if that mount is a
/// hostPath volume.
fn host_path_at(pod: &PodSpec, container: &Container, mount_path: &str) -> Option<String> {
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let mount = mounts.iter().find(|m| m.mount_path == mount_path)?;
    let host_path = volume(pod, &mount.name).host_path.as_ref()?;
    Some(host_path.path.clone())
}

/// Reads the settings ConfigMap that the agent's envFrom refers to.
fn settings(rendered: &Rendered, container: &Container) -> BTreeMap<String, String> {
    let sources = container.env_from.as_deref().unwrap_or_default();
    let name = sources
        .iter()
        .find_map(|source| source.config_map_ref.as_ref())
        .map(|reference| reference.name.clone())
        .expect("agent takes its settings from a ConfigMap");
    let config_map = rendered.one::<ConfigMap>("ConfigMap", &name);
    config_map.data.expect("settings ConfigMap has data")
}

/// Renders the first-install overlay and returns it with the agent's pod spec.
fn installed_pod(test: &str) -> Option<(Rendered, PodSpec)> {
    let rendered = render(test, "overlays/first-install")?;
    let pod = pod_spec(&daemonset(&rendered));
    Some((rendered, pod))
}

fn all_rules(rendered: &Rendered) -> Vec<(String, PolicyRule)> {
    let mut rules = Vec::new();
    for role in rendered.typed::<Role>("Role") {
        let name = role.metadata.name.unwrap_or_default();
        rules.extend(
            role.rules
                .unwrap_or_default()
                .into_iter()
                .map(|r| (name.clone(), r)),
        );
    }
    for role in rendered.typed::<ClusterRole>("ClusterRole") {
        let name = role.metadata.name.unwrap_or_default();
        rules.extend(
            role.rules
                .unwrap_or_default()
                .into_iter()
                .map(|r| (name.clone(), r)),
        );
    }
    rules
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

// === rendering ===

#[test]
fn every_overlay_renders_typed_objects() {
    let overlays = overlay_names();
    for expected in ["config-update", "first-install", "monitoring", "openshift"] {
        assert!(
            overlays.iter().any(|o| o == expected),
            "overlay {expected} is missing"
        );
    }
    for overlay in overlays {
        let Some(rendered) = render(
            "every_overlay_renders_typed_objects",
            &format!("overlays/{overlay}"),
        ) else {
            return;
        };
        assert!(
            !rendered.objects.is_empty(),
            "overlay {overlay} renders nothing"
        );
        for object in &rendered.objects {
            check_schema(&overlay, object);
        }
    }
}

/// Parses one rendered object into its typed API struct, or checks the
/// API group of the custom resources that k8s-openapi does not model.
fn check_schema(overlay: &str, object: &Value) {
    let kind = str_field(object, "kind");
    let api_version = str_field(object, "apiVersion");
    let parsed = match kind {
        "Namespace" => serde_yaml::from_value::<Namespace>(object.clone()).map(drop),
        "ServiceAccount" => serde_yaml::from_value::<ServiceAccount>(object.clone()).map(drop),
        "ConfigMap" => serde_yaml::from_value::<ConfigMap>(object.clone()).map(drop),
        "DaemonSet" => serde_yaml::from_value::<DaemonSet>(object.clone()).map(drop),
        "Role" => serde_yaml::from_value::<Role>(object.clone()).map(drop),
        "ClusterRole" => serde_yaml::from_value::<ClusterRole>(object.clone()).map(drop),
        "RoleBinding" => serde_yaml::from_value::<RoleBinding>(object.clone()).map(drop),
        "ClusterRoleBinding" => {
            serde_yaml::from_value::<ClusterRoleBinding>(object.clone()).map(drop)
        }
        "SecurityContextConstraints" => {
            assert_eq!(
                api_version, "security.openshift.io/v1",
                "SCC apiVersion in {overlay}"
            );
            Ok(())
        }
        "PodMonitor" => {
            assert_eq!(
                api_version, "monitoring.coreos.com/v1",
                "PodMonitor apiVersion in {overlay}"
            );
            Ok(())
        }
        other => panic!("overlay {overlay} renders an unexpected kind {other:?}"),
    };
    if let Err(err) = parsed {
        panic!("{kind} in overlay {overlay} does not match its API schema: {err}");
    }
}

#[test]
fn namespaced_objects_use_reference_namespace() {
    let Some(rendered) = render(
        "namespaced_objects_use_reference_namespace",
        "overlays/first-install",
    ) else {
        return;
    };
    for object in &rendered.objects {
        let kind = str_field(object, "kind");
        if matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding") {
            continue;
        }
        let namespace = object.get("metadata").map(|m| str_field(m, "namespace"));
        assert_eq!(namespace, Some(NAMESPACE), "namespace of {kind}");
    }
}

// === DaemonSet ===

#[test]
fn daemonset_schedules_on_s390x_as_node_critical() {
    let Some((_, pod)) = installed_pod("daemonset_schedules_on_s390x_as_node_critical") else {
        return;
    };
    let selector = pod.node_selector.clone().unwrap_or_default();
    assert_eq!(
        selector.get("kubernetes.io/arch").map(String::as_str),
        Some("s390x")
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some(SERVICE_ACCOUNT));
    assert_eq!(pod.automount_service_account_token, Some(false));

    let tolerations = pod.tolerations.clone().unwrap_or_default();
    let tolerated: Vec<String> = tolerations.iter().filter_map(|t| t.key.clone()).collect();
    for key in [
        "CriticalAddonsOnly",
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/network-unavailable",
        "node-role.kubernetes.io/control-plane",
    ] {
        assert!(
            tolerated.iter().any(|k| k == key),
            "no toleration for taint {key}"
        );
    }
    for toleration in &tolerations {
        assert_eq!(
            toleration.operator.as_deref(),
            Some("Exists"),
            "toleration {toleration:?}"
        );
    }
}

#[test]
fn daemonset_mounts_host_paths_at_same_path() {
    let Some((_, pod)) = installed_pod("daemonset_mounts_host_paths_at_same_path") else {
        return;
    };
    let agent = agent_container(&pod);
    for path in [
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet/pod-resources",
        "/sys",
        "/dev",
        "/var/tmp/shadowsysfs",
    ] {
        assert_eq!(
            host_path_at(&pod, &agent, path).as_deref(),
            Some(path),
            "mount {path}"
        );
    }

    let mounts = agent.volume_mounts.clone().unwrap_or_default();
    let config = mounts
        .iter()
        .find(|m| m.mount_path == "/config")
        .expect("config mount");
    assert_eq!(
        config.sub_path, None,
        "a subPath mount never sees ConfigMap updates"
    );
    assert_eq!(config.read_only, Some(true));
    let source = volume(&pod, &config.name)
        .config_map
        .clone()
        .expect("config is a ConfigMap");
    assert_eq!(source.name, CRYPTO_CONFIG);
    assert_eq!(source.items, None, "the whole ConfigMap is mounted");

    let pod_resources = mounts
        .iter()
        .find(|m| m.mount_path == "/var/lib/kubelet/pod-resources");
    assert_eq!(pod_resources.and_then(|m| m.read_only), Some(true));
}

#[test]
fn daemonset_env_reaches_every_setting() {
    let Some((rendered, pod)) = installed_pod("daemonset_env_reaches_every_setting") else {
        return;
    };
    let agent = agent_container(&pod);
    let data = settings(&rendered, &agent);
    for (name, default) in SETTINGS {
        assert_eq!(
            data.get(*name).map(String::as_str),
            Some(*default),
            "setting {name}"
        );
    }
    for name in data.keys() {
        let known = SETTINGS.iter().any(|(setting, _)| setting == name) || name == "RUST_LOG";
        assert!(known, "settings ConfigMap has unknown key {name}");
    }
    assert!(
        !data.contains_key("NODENAME"),
        "NODENAME must come from the downward API"
    );

    let env = agent.env.clone().unwrap_or_default();
    let nodename = env
        .iter()
        .find(|var| var.name == "NODENAME")
        .expect("NODENAME is set");
    let field = nodename
        .value_from
        .as_ref()
        .and_then(|source| source.field_ref.as_ref());
    assert_eq!(field.map(|f| f.field_path.as_str()), Some("spec.nodeName"));

    let args = agent.args.clone().unwrap_or_default();
    assert!(
        args.windows(2).any(|pair| pair == ["--log-format", "json"]),
        "args {args:?}"
    );
}

#[test]
fn daemonset_mounts_every_configured_path() {
    let Some((rendered, pod)) = installed_pod("daemonset_mounts_every_configured_path") else {
        return;
    };
    let agent = agent_container(&pod);
    let data = settings(&rendered, &agent);
    for name in HOST_PATH_SETTINGS {
        let path = data
            .get(*name)
            .unwrap_or_else(|| panic!("setting {name} missing"));
        let served = Path::new(path).ancestors().any(|dir| {
            let dir = dir.to_string_lossy();
            host_path_at(&pod, &agent, &dir).as_deref() == Some(&*dir)
        });
        assert!(
            served,
            "{name}={path} is not under a host path mounted at the same path"
        );
    }

    let config_file = Path::new(&data["CCS_JSON_FILE"]);
    let dir = config_file.parent().expect("config file has a directory");
    let key = config_file.file_name().expect("config file has a name");
    assert_eq!(dir, Path::new("/config"));
    assert_eq!(key.to_string_lossy(), CRYPTO_CONFIG_KEY);
}

#[test]
fn daemonset_probes_use_metrics_port() {
    let Some((rendered, pod)) = installed_pod("daemonset_probes_use_metrics_port") else {
        return;
    };
    let agent = agent_container(&pod);
    let listen = settings(&rendered, &agent)["METRICS_LISTEN"].clone();
    let port: i32 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    let ports = agent.ports.clone().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics port");
    assert_eq!(
        metrics.container_port, port,
        "container port matches METRICS_LISTEN {listen}"
    );

    let probes = [
        ("liveness", agent.liveness_probe.clone(), "/healthz"),
        ("readiness", agent.readiness_probe.clone(), "/readyz"),
    ];
    for (kind, probe, path) in probes {
        let get = probe
            .and_then(|p| p.http_get)
            .unwrap_or_else(|| panic!("{kind} probe is an HTTP GET"));
        assert_eq!(get.path.as_deref(), Some(path), "{kind} probe path");
        assert_eq!(
            get.port,
            IntOrString::String("metrics".to_owned()),
            "{kind} probe port"
        );
    }
}

#[test]
fn daemonset_containers_set_resources() {
    let Some((_, pod)) = installed_pod("daemonset_containers_set_resources") else {
        return;
    };
    let mut containers = pod.containers.clone();
    containers.extend(pod.init_containers.clone().unwrap_or_default());
    for container in containers {
        let resources = container.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        for resource in ["cpu", "memory"] {
            assert!(
                requests.contains_key(resource),
                "{} requests {resource}",
                container.name
            );
            assert!(
                limits.contains_key(resource),
                "{} limits {resource}",
                container.name
            );
        }
        let security = container.security_context.clone().unwrap_or_default();
        assert_eq!(
            security.read_only_root_filesystem,
            Some(true),
            "{} root fs",
            container.name
        );
    }
}

// === init container ===

/// A temp dir laid out like the init container's view of the host, with
/// a `chcon` stand-in on PATH that records its arguments.
struct InitSandbox {
    dir: tempfile::TempDir,
}

impl InitSandbox {
    fn new(selinux: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let var_tmp = dir.path().join("host/var/tmp");
        std::fs::create_dir_all(&var_tmp).expect("var/tmp");
        std::fs::set_permissions(&var_tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::create_dir_all(dir.path().join("host/sys/fs")).expect("sys/fs");
        if selinux {
            std::fs::create_dir_all(dir.path().join("host/sys/fs/selinux")).expect("selinux");
            std::fs::write(dir.path().join("host/sys/fs/selinux/enforce"), "1\n").expect("enforce");
        }
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let log = dir.path().join("chcon.log");
        let stub = format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display());
        std::fs::write(bin.join("chcon"), stub).expect("chcon stub");
        std::fs::set_permissions(bin.join("chcon"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Self { dir }
    }

    fn base(&self) -> std::path::PathBuf {
        self.dir.path().join("host/var/tmp/shadowsysfs")
    }

    fn chcon_calls(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("chcon.log")).ok()
    }

    /// Runs the init script with `/host/` moved into this sandbox.
    fn run(&self, script: &str) -> std::process::Output {
        let host = format!("{}/host/", self.dir.path().display());
        let script = script.replace("/host/", &host);
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env("PATH", path)
            .output();
        output.expect("run init script")
    }
}

fn init_script(test: &str) -> Option<String> {
    let rendered = render(test, "overlays/first-install")?;
    let pod = pod_spec(&daemonset(&rendered));
    let init = init_container(&pod);
    assert_eq!(
        init.command.as_deref(),
        Some(&strings(&["/bin/sh", "-c"])[..])
    );
    let args = init.args.clone().unwrap_or_default();
    assert_eq!(args.len(), 1, "init container runs one script");

    let mounts = init.volume_mounts.clone().unwrap_or_default();
    assert_eq!(
        host_path_at(&pod, &init, "/host/var/tmp").as_deref(),
        Some("/var/tmp")
    );
    assert_eq!(
        host_path_at(&pod, &init, "/host/sys").as_deref(),
        Some("/sys")
    );
    assert!(mounts
        .iter()
        .any(|m| m.mount_path == "/host/sys" && m.read_only == Some(true)));
    Some(args[0].clone())
}

/// Returns the init script for a run that creates the directory. The
/// script's owner check accepts only uid 0, so such runs need root.
fn init_script_as_root(test: &str) -> Option<String> {
    let script = init_script(test)?;
    let probe = tempfile::tempfile().expect("temp file");
    if probe.metadata().expect("metadata").uid() != 0 {
        skip(test, "the init script's owner check needs root");
        return None;
    }
    Some(script)
}

#[test]
fn init_script_skips_label_without_selinux() {
    let Some(script) = init_script_as_root("init_script_skips_label_without_selinux") else {
        return;
    };
    let sandbox = InitSandbox::new(false);
    let output = sandbox.run(&script);
    assert!(
        output.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta = std::fs::symlink_metadata(sandbox.base()).expect("base dir created");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!(meta.uid(), 0);
    assert_eq!(
        sandbox.chcon_calls(),
        None,
        "chcon must not run without SELinux"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("SELinux not enabled"));
}

#[test]
fn init_script_labels_base_with_selinux() {
    let Some(script) = init_script_as_root("init_script_labels_base_with_selinux") else {
        return;
    };
    let sandbox = InitSandbox::new(true);
    std::fs::create_dir(sandbox.base()).expect("pre-existing base");
    std::fs::set_permissions(sandbox.base(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    let output = sandbox.run(&script);
    assert!(
        output.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta = std::fs::symlink_metadata(sandbox.base()).expect("base dir");
    assert_eq!(meta.mode() & 0o7777, 0o755, "mode is reset to 0755");
    let expected = format!("-h -t container_file_t {}\n", sandbox.base().display());
    assert_eq!(sandbox.chcon_calls(), Some(expected));
}

#[test]
fn init_script_rejects_planted_symlink() {
    let Some(script) = init_script("init_script_rejects_planted_symlink") else {
        return;
    };
    let sandbox = InitSandbox::new(true);
    let target = sandbox.dir.path().join("elsewhere");
    std::fs::create_dir(&target).expect("target dir");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::symlink(&target, sandbox.base()).expect("plant symlink");

    let output = sandbox.run(&script);
    assert!(
        !output.status.success(),
        "a symlinked base must be rejected"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a plain directory"));
    let mode = std::fs::metadata(&target).expect("target").mode() & 0o7777;
    assert_eq!(mode, 0o700, "the symlink target is left alone");
    assert_eq!(sandbox.chcon_calls(), None);
}

#[test]
fn init_script_rejects_planted_file() {
    let Some(script) = init_script("init_script_rejects_planted_file") else {
        return;
    };
    let sandbox = InitSandbox::new(false);
    std::fs::write(sandbox.base(), "not a dir").expect("plant file");
    let output = sandbox.run(&script);
    assert!(
        !output.status.success(),
        "a file in place of the base must be rejected"
    );
    assert!(
        sandbox.base().is_file(),
        "the file is left for the operator to inspect"
    );
}

// === RBAC and service account ===

#[test]
fn rbac_rules_have_no_wildcards() {
    for overlay in overlay_names() {
        let Some(rendered) = render(
            "rbac_rules_have_no_wildcards",
            &format!("overlays/{overlay}"),
        ) else {
            return;
        };
        for (role, rule) in all_rules(&rendered) {
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            for value in groups.iter().chain(&resources).chain(&rule.verbs) {
                assert!(
                    !value.contains('*'),
                    "role {role} in {overlay} has wildcard {value:?}"
                );
            }
            for verb in &rule.verbs {
                let dangerous = [
                    "escalate",
                    "bind",
                    "impersonate",
                    "delete",
                    "deletecollection",
                ];
                assert!(
                    !dangerous.contains(&verb.as_str()),
                    "role {role} grants {verb}"
                );
            }
            assert_eq!(
                rule.non_resource_urls, None,
                "role {role} grants non-resource URLs"
            );
        }
    }
}

#[test]
fn quota_roles_grant_only_what_cexctl_needs() {
    let Some(rendered) = render(
        "quota_roles_grant_only_what_cexctl_needs",
        "overlays/first-install",
    ) else {
        return;
    };
    let reader = rendered.one::<Role>("Role", "cexctl-quotas-config-reader");
    let rules = reader.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].resources, Some(strings(&["configmaps"])));
    assert_eq!(rules[0].resource_names, Some(strings(&[CRYPTO_CONFIG])));
    assert_eq!(rules[0].verbs, strings(&["get"]));

    let writer = rendered.one::<ClusterRole>("ClusterRole", "cexctl-quotas-writer");
    let mut granted: Vec<(String, String)> = Vec::new();
    for rule in writer.rules.unwrap_or_default() {
        assert_eq!(rule.api_groups, Some(strings(&[""])), "core group only");
        for resource in rule.resources.unwrap_or_default() {
            granted.extend(
                rule.verbs
                    .iter()
                    .map(|verb| (resource.clone(), verb.clone())),
            );
        }
    }
    granted.sort();
    let expected = [
        ("resourcequotas", "create"),
        ("resourcequotas", "get"),
        ("resourcequotas", "patch"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(r, v)| ((*r).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(granted, expected);
}

#[test]
fn agent_account_has_no_api_access() {
    let Some(rendered) = render("agent_account_has_no_api_access", "overlays/first-install") else {
        return;
    };
    let account = rendered.one::<ServiceAccount>("ServiceAccount", SERVICE_ACCOUNT);
    assert_eq!(account.automount_service_account_token, Some(false));
    assert!(
        rendered.raw_of_kind("RoleBinding").is_empty(),
        "the base binds no role"
    );
    assert!(
        rendered.raw_of_kind("ClusterRoleBinding").is_empty(),
        "the base binds no cluster role"
    );
}

// === crypto configuration ===

#[test]
fn sample_config_holds_two_valid_sets() {
    let Some(rendered) = render(
        "sample_config_holds_two_valid_sets",
        "overlays/first-install",
    ) else {
        return;
    };
    let config_map = rendered.one::<ConfigMap>("ConfigMap", CRYPTO_CONFIG);
    let data = config_map.data.unwrap_or_default();
    let text = data
        .get(CRYPTO_CONFIG_KEY)
        .expect("ConfigMap has cex_resources.json");
    let loaded = cex_config::parse(text).unwrap_or_else(|err| panic!("sample config: {err}"));
    assert_eq!(loaded.warnings, Vec::<String>::new(), "no unknown fields");
    let names: Vec<&str> = loaded
        .config
        .sets
        .iter()
        .map(|set| set.setname.as_str())
        .collect();
    assert_eq!(names, ["CCA_for_customer_1", "EP11_for_customer_2"]);
    for set in &loaded.config.sets {
        assert!(!set.apqns.is_empty(), "set {} lists APQNs", set.setname);
    }
}

#[test]
fn sample_config_file_loads() {
    let path = repo_root()
        .join("deploy/crypto-config")
        .join(CRYPTO_CONFIG_KEY);
    let loaded = cex_config::load(&path).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(loaded.config.sets.len(), 2);
}

#[test]
fn config_update_renders_only_crypto_config() {
    let test = "config_update_renders_only_crypto_config";
    let Some(update) = render(test, "overlays/config-update") else {
        return;
    };
    let Some(install) = render(test, "overlays/first-install") else {
        return;
    };
    assert_eq!(update.kinds(), vec!["ConfigMap"]);
    let updated = update.one::<ConfigMap>("ConfigMap", CRYPTO_CONFIG);
    assert_eq!(updated.metadata.namespace.as_deref(), Some(NAMESPACE));
    let installed = install.one::<ConfigMap>("ConfigMap", CRYPTO_CONFIG);
    assert_eq!(
        updated.data, installed.data,
        "both overlays carry the same configuration"
    );
}

// === OpenShift ===

#[test]
fn openshift_scc_admits_daemonset() {
    let Some(rendered) = render("openshift_scc_admits_daemonset", "overlays/openshift") else {
        return;
    };
    let sccs = rendered.raw_of_kind("SecurityContextConstraints");
    assert_eq!(sccs.len(), 1);
    let scc = sccs[0];
    for (field, expected) in [
        ("allowPrivilegedContainer", true),
        ("allowHostDirVolumePlugin", true),
        ("readOnlyRootFilesystem", true),
        ("allowHostNetwork", false),
        ("allowHostPID", false),
        ("allowHostIPC", false),
        ("allowHostPorts", false),
    ] {
        assert_eq!(
            scc.get(field).and_then(Value::as_bool),
            Some(expected),
            "SCC {field}"
        );
    }
    let run_as = &scc["runAsUser"];
    assert_eq!(
        (str_field(run_as, "type"), run_as["uid"].as_u64()),
        ("MustRunAs", Some(0))
    );

    let allowed: Vec<&str> = scc["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let pod = pod_spec(&daemonset(&rendered));
    let mut used: Vec<&str> = Vec::new();
    for volume in pod.volumes.as_deref().unwrap_or_default() {
        let kind = match (&volume.host_path, &volume.config_map) {
            (Some(_), None) => "hostPath",
            (None, Some(_)) => "configMap",
            _ => panic!("volume {} is neither hostPath nor configMap", volume.name),
        };
        used.push(kind);
    }
    used.sort_unstable();
    used.dedup();
    let mut allowed_sorted = allowed.clone();
    allowed_sorted.sort_unstable();
    assert_eq!(
        allowed_sorted, used,
        "the SCC allows exactly the volume types the pod uses"
    );
}

#[test]
fn openshift_scc_bound_to_agent_account() {
    let Some(rendered) = render("openshift_scc_bound_to_agent_account", "overlays/openshift")
    else {
        return;
    };
    let scc = rendered.raw_of_kind("SecurityContextConstraints")[0];
    let scc_name = str_field(&scc["metadata"], "name").to_owned();

    let bindings = rendered.typed::<RoleBinding>("RoleBinding");
    assert_eq!(bindings.len(), 1);
    let binding = &bindings[0];
    assert_eq!(binding.metadata.namespace.as_deref(), Some(NAMESPACE));
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, SERVICE_ACCOUNT);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));

    assert_eq!(binding.role_ref.kind, "ClusterRole");
    let role = rendered.one::<ClusterRole>("ClusterRole", &binding.role_ref.name);
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups,
        Some(strings(&["security.openshift.io"]))
    );
    assert_eq!(
        rules[0].resources,
        Some(strings(&["securitycontextconstraints"]))
    );
    assert_eq!(rules[0].resource_names, Some(vec![scc_name]));
    assert_eq!(rules[0].verbs, strings(&["use"]));
}

// === monitoring ===

#[test]
fn pod_monitor_scrapes_agent_pods() {
    let Some(rendered) = render("pod_monitor_scrapes_agent_pods", "overlays/monitoring") else {
        return;
    };
    let daemonset = daemonset(&rendered);
    let template = daemonset.spec.clone().template;
    let metadata = template.metadata.clone().unwrap_or_default();
    let labels = metadata.labels.unwrap_or_default();
    let annotations = metadata.annotations.unwrap_or_default();
    let agent = agent_container(&pod_spec(&daemonset));
    let port = agent
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"));
    let port = port.expect("metrics port");

    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&port.container_port.to_string())
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );

    let monitors = rendered.raw_of_kind("PodMonitor");
    assert_eq!(monitors.len(), 1);
    let spec = &monitors[0]["spec"];
    let selector = spec["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    for (key, value) in selector {
        let key = key.as_str().expect("label key");
        assert_eq!(
            labels.get(key).map(String::as_str),
            value.as_str(),
            "pod label {key}"
        );
    }
    let namespaces = &spec["namespaceSelector"]["matchNames"];
    assert_eq!(namespaces[0].as_str(), Some(NAMESPACE));
    let endpoint = &spec["podMetricsEndpoints"][0];
    assert_eq!(str_field(endpoint, "port"), "metrics");
    assert_eq!(str_field(endpoint, "path"), "/metrics");
    let relabel = &endpoint["relabelings"][0];
    assert_eq!(
        str_field(relabel, "targetLabel"),
        "node",
        "alerts group by node"
    );
}

// === Prometheus rules and dashboard ===

#[test]
fn prometheus_rules_pass_promtool() {
    let test = "prometheus_rules_pass_promtool";
    let dir = repo_root().join("docs/prometheus");
    let Some(check) = promtool(
        test,
        &dir,
        &["check", "rules", "recording.rules.yml", "alerts.rules.yml"],
    ) else {
        return;
    };
    assert_success(&check, "check rules");
    let Some(unit) = promtool(test, &dir, &["test", "rules", "rules_test.yml"]) else {
        return;
    };
    assert_success(&unit, "test rules");
}

#[test]
fn dashboard_queries_parse() {
    let text =
        std::fs::read_to_string(repo_root().join("docs/prometheus/cex-plugin-dashboard.json"))
            .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("target has an expr")
                .replace("$setname", ".*")
        })
        .collect();
    assert!(!exprs.is_empty(), "the dashboard has queries");

    // promtool has no query linter, so wrap each query in a recording
    // rule and let `check rules` parse it.
    let groups: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({"record": format!("dashboard:query{i}"), "expr": expr}))
        .collect();
    let rules = serde_json::json!({"groups": [{"name": "dashboard", "rules": groups}]});
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("dashboard.rules.yml"), rules.to_string()).expect("write rules");
    let Some(check) = promtool(
        "dashboard_queries_parse",
        dir.path(),
        &["check", "rules", "dashboard.rules.yml"],
    ) else {
        return;
    };
    assert_success(&check, "check rules on the dashboard queries");
}

#[test]
fn rules_and_dashboard_use_contract_metrics() {
    let contract = contract_metrics();
    for name in [
        "cex_plugin_plugindevs_available",
        "cex_plugin_plugindevs_used",
        "cex_plugin_plugindevs_healthy",
        "cex_plugin_request_counter",
        "cex_plugin_config_valid",
        "cex_plugin_project_mismatches_total",
        "cex_plugin_allocation_errors_total",
        "cex_plugin_total_plugindevs_available",
        "cex_plugin_total_plugindevs_used",
        "cex_plugin_total_request_counter",
    ] {
        assert!(
            contract.iter().any(|c| c == name),
            "README contract lists {name}"
        );
    }
    for file in [
        "recording.rules.yml",
        "alerts.rules.yml",
        "rules_test.yml",
        "cex-plugin-dashboard.json",
    ] {
        let text = std::fs::read_to_string(repo_root().join("docs/prometheus").join(file))
            .expect("readable");
        for name in metric_names_in(&text) {
            assert!(
                contract.contains(&name),
                "{file} uses {name}, which the README does not list"
            );
        }
    }
}
