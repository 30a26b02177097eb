//! Agent settings: every knob as an environment variable and a flag.
//!
//! The variable names are those of the reference product so existing
//! DaemonSet manifests keep working. Intervals take whole seconds (`30`)
//! or a duration with a unit (`500ms`, `2s`, `1m`, `1h`). Values outside
//! their range are clamped and reported as warnings that name the
//! variable; only values that cannot be read at all are errors.
//!
//! Every host path the agent touches lives in [`Paths`], so tests and the
//! simulator point the agent at a temp tree.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The lowest interval accepted without a warning.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The lowest interval accepted at all, for fast tests and simulations.
const MIN_TEST_INTERVAL: Duration = Duration::from_millis(100);
/// The highest interval accepted: one day.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// The highest number of plug-in devices per APQN.
pub const MAX_OVERCOMMIT: u32 = 100;

/// A setting that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A duration that is neither whole seconds nor a number with a unit.
    #[error("invalid {variable} {value:?}: expected whole seconds or a duration such as 500ms, 2s or 1m")]
    Duration {
        variable: &'static str,
        value: String,
    },
    /// A value that must be a non-negative integer.
    #[error("invalid {variable} {value:?}: expected a non-negative integer")]
    Integer {
        variable: &'static str,
        value: String,
    },
    /// An address that is not `host:port`.
    #[error("invalid {variable} {value:?}: expected an address such as 0.0.0.0:9940")]
    Address {
        variable: &'static str,
        value: String,
    },
}

/// Format of the log lines written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Command line of the node agent. Each flag falls back to its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cex-plugin",
    version,
    about = "Kubernetes device plug-in for IBM Crypto Express APQNs"
)]
pub struct Args {
    /// AP bus rescan interval (seconds, or a duration such as 2s)
    #[arg(long, env = "APQN_CHECK_INTERVAL", default_value = "30")]
    pub apqn_check_interval: String,
    /// Default plug-in devices per APQN, 0..100 (0 means 1)
    #[arg(long, env = "APQN_OVERCOMMIT_LIMIT", default_value = "1")]
    pub apqn_overcommit_limit: String,
    /// Default shadow sysfs: 1 live, 0 static
    #[arg(long, env = "APQN_LIVE_SYSFS", default_value = "1")]
    pub apqn_live_sysfs: String,
    /// Config file re-read interval (seconds, or a duration)
    #[arg(long, env = "CRYPTOCONFIG_CHECK_INTERVAL", default_value = "120")]
    pub cryptoconfig_check_interval: String,
    /// Pod surveillance interval (seconds, or a duration)
    #[arg(long, env = "PODLISTER_POLL_INTERVAL", default_value = "30")]
    pub podlister_poll_interval: String,
    /// Delay before deleting a zcrypt node or shadow dir whose pod is gone
    #[arg(long, env = "RESOURCE_DELETE_UNUSED", default_value = "120")]
    pub resource_delete_unused: String,
    /// Delay before deleting a zcrypt node or shadow dir never seen in use
    #[arg(long, env = "RESOURCE_DELETE_NEVER_USED", default_value = "1800")]
    pub resource_delete_never_used: String,
    /// Metrics refresh interval (seconds, or a duration)
    #[arg(long, env = "METRICS_POLL_INTERVAL", default_value = "15")]
    pub metrics_poll_interval: String,
    /// This node's name, usually from the downward API
    #[arg(long, env = "NODENAME", default_value = "")]
    pub nodename: String,
    /// Base directory of the shadow sysfs trees
    #[arg(
        long,
        env = "SHADOWSYSFS_BASEDIR",
        default_value = "/var/tmp/shadowsysfs"
    )]
    pub shadowsysfs_basedir: PathBuf,
    /// Crypto config file (cex_resources.json)
    #[arg(
        long,
        env = "CCS_JSON_FILE",
        default_value = "/config/cex_resources.json"
    )]
    pub ccs_json_file: PathBuf,
    /// AP bus directory
    #[arg(long, env = "APSYSFS_BUSDIR", default_value = "/sys/bus/ap")]
    pub apsysfs_busdir: PathBuf,
    /// AP devices directory
    #[arg(long, env = "APSYSFS_DEVSDIR", default_value = "/sys/devices/ap")]
    pub apsysfs_devsdir: PathBuf,
    /// zcrypt class directory holding create and destroy
    #[arg(long, env = "ZCRYPT_CLASSDIR", default_value = "/sys/class/zcrypt")]
    pub zcrypt_classdir: PathBuf,
    /// Directory of the zcrypt node attribute directories
    #[arg(
        long,
        env = "ZCRYPT_NODESDIR",
        default_value = "/sys/devices/virtual/zcrypt"
    )]
    pub zcrypt_nodesdir: PathBuf,
    /// Directory where zcrypt device nodes appear
    #[arg(long, env = "DEV_DIR", default_value = "/dev")]
    pub dev_dir: PathBuf,
    /// File with the machine identity
    #[arg(long, env = "PROC_SYSINFO_FILE", default_value = "/proc/sysinfo")]
    pub proc_sysinfo_file: PathBuf,
    /// Kubelet device-plugin directory (kubelet.sock and plug-in sockets)
    #[arg(
        long,
        env = "KUBELET_DEVICE_PLUGIN_DIR",
        default_value = "/var/lib/kubelet/device-plugins"
    )]
    pub kubelet_device_plugin_dir: PathBuf,
    /// Kubelet pod-resources socket
    #[arg(
        long,
        env = "KUBELET_POD_RESOURCES_SOCKET",
        default_value = "/var/lib/kubelet/pod-resources/kubelet.sock"
    )]
    pub kubelet_pod_resources_socket: PathBuf,
    /// Address for the agent's own /metrics endpoint; empty turns it off
    #[arg(long, env = "METRICS_LISTEN", default_value = "")]
    pub metrics_listen: String,
    /// Log line format
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Every host path the agent reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub shadow_base_dir: PathBuf,
    pub config_file: PathBuf,
    pub ap_bus_dir: PathBuf,
    pub ap_devices_dir: PathBuf,
    pub zcrypt_class_dir: PathBuf,
    pub zcrypt_nodes_dir: PathBuf,
    pub dev_dir: PathBuf,
    pub sysinfo_file: PathBuf,
    pub device_plugin_dir: PathBuf,
    pub pod_resources_socket: PathBuf,
}

impl Paths {
    /// The host paths the allocation path works on.
    pub fn node_paths(&self) -> cex_node::NodePaths {
        cex_node::NodePaths {
            ap_bus_dir: self.ap_bus_dir.clone(),
            ap_devs_dir: self.ap_devices_dir.clone(),
            zcrypt_class_dir: self.zcrypt_class_dir.clone(),
            zcrypt_nodes_dir: self.zcrypt_nodes_dir.clone(),
            dev_dir: self.dev_dir.clone(),
            shadow_base: self.shadow_base_dir.clone(),
        }
    }
}

/// Validated settings of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub apqn_check_interval: Duration,
    /// Plug-in devices per APQN for sets without `overcommit`, 1..=100.
    pub overcommit_limit: u32,
    /// Live shadow sysfs for sets without `livesysfs`.
    pub live_sysfs: bool,
    pub config_check_interval: Duration,
    pub podlister_poll_interval: Duration,
    pub resource_delete_unused: Duration,
    pub resource_delete_never_used: Duration,
    pub metrics_poll_interval: Duration,
    pub node_name: String,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub paths: Paths,
}

/// Settings plus the clamping warnings to log once logging is set up.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub settings: Settings,
    pub warnings: Vec<String>,
}

impl Settings {
    /// Validates `args`, clamping out-of-range values with a warning.
    pub fn from_args(args: Args) -> Result<Parsed, SettingsError> {
        let mut warnings = Vec::new();
        let mut interval = |variable, value: &str| -> Result<Duration, SettingsError> {
            let parsed = parse_duration(variable, value)?;
            Ok(clamp_interval(variable, parsed, &mut warnings))
        };
        let apqn_check_interval = interval("APQN_CHECK_INTERVAL", &args.apqn_check_interval)?;
        let config_check_interval = interval(
            "CRYPTOCONFIG_CHECK_INTERVAL",
            &args.cryptoconfig_check_interval,
        )?;
        let podlister_poll_interval =
            interval("PODLISTER_POLL_INTERVAL", &args.podlister_poll_interval)?;
        let resource_delete_unused =
            interval("RESOURCE_DELETE_UNUSED", &args.resource_delete_unused)?;
        let resource_delete_never_used = interval(
            "RESOURCE_DELETE_NEVER_USED",
            &args.resource_delete_never_used,
        )?;
        let metrics_poll_interval = interval("METRICS_POLL_INTERVAL", &args.metrics_poll_interval)?;

        let overcommit = parse_integer("APQN_OVERCOMMIT_LIMIT", &args.apqn_overcommit_limit)?;
        let overcommit_limit = clamp_overcommit(overcommit, &mut warnings);
        let live = parse_integer("APQN_LIVE_SYSFS", &args.apqn_live_sysfs)?;
        let metrics_listen = parse_listen("METRICS_LISTEN", &args.metrics_listen)?;

        let settings = Settings {
            apqn_check_interval,
            overcommit_limit,
            live_sysfs: live > 0,
            config_check_interval,
            podlister_poll_interval,
            resource_delete_unused,
            resource_delete_never_used,
            metrics_poll_interval,
            node_name: args.nodename,
            metrics_listen,
            log_format: args.log_format,
            paths: Paths {
                shadow_base_dir: args.shadowsysfs_basedir,
                config_file: args.ccs_json_file,
                ap_bus_dir: args.apsysfs_busdir,
                ap_devices_dir: args.apsysfs_devsdir,
                zcrypt_class_dir: args.zcrypt_classdir,
                zcrypt_nodes_dir: args.zcrypt_nodesdir,
                dev_dir: args.dev_dir,
                sysinfo_file: args.proc_sysinfo_file,
                device_plugin_dir: args.kubelet_device_plugin_dir,
                pod_resources_socket: args.kubelet_pod_resources_socket,
            },
        };
        Ok(Parsed { settings, warnings })
    }
}

/// Parses whole seconds (`30`) or a number with a unit (`500ms`, `2s`,
/// `1m`, `1h`).
pub fn parse_duration(variable: &'static str, value: &str) -> Result<Duration, SettingsError> {
    let error = || SettingsError::Duration {
        variable,
        value: value.to_string(),
    };
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(error());
    }
    let number: u64 = digits.parse().map_err(|_| error())?;
    let millis_per_unit: u64 = match unit {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(error()),
    };
    let millis = number.checked_mul(millis_per_unit).ok_or_else(error)?;
    Ok(Duration::from_millis(millis))
}

fn parse_integer(variable: &'static str, value: &str) -> Result<u64, SettingsError> {
    value.trim().parse().map_err(|_| SettingsError::Integer {
        variable,
        value: value.to_string(),
    })
}

fn parse_listen(variable: &'static str, value: &str) -> Result<Option<SocketAddr>, SettingsError> {
    let text = value.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| SettingsError::Address {
        variable,
        value: value.to_string(),
    })
}

/// Keeps an interval within 100 ms .. 1 day; below 1 s is allowed for
/// tests and simulations but reported.
fn clamp_interval(variable: &str, value: Duration, warnings: &mut Vec<String>) -> Duration {
    if value < MIN_TEST_INTERVAL {
        warnings.push(format!(
            "{variable} {value:?} is below the minimum, using {MIN_TEST_INTERVAL:?}"
        ));
        MIN_TEST_INTERVAL
    } else if value < MIN_INTERVAL {
        warnings.push(format!(
            "{variable} {value:?} is below {MIN_INTERVAL:?}; meant for tests and simulations only"
        ));
        value
    } else if value > MAX_INTERVAL {
        warnings.push(format!(
            "{variable} {value:?} is above the maximum, using {MAX_INTERVAL:?}"
        ));
        MAX_INTERVAL
    } else {
        value
    }
}

/// Keeps the overcommit default within 1..=100; 0 means 1.
fn clamp_overcommit(value: u64, warnings: &mut Vec<String>) -> u32 {
    match u32::try_from(value) {
        Ok(0) => 1,
        Ok(limit) if limit <= MAX_OVERCOMMIT => limit,
        _ => {
            warnings.push(format!(
                "APQN_OVERCOMMIT_LIMIT {value} is above the maximum, using {MAX_OVERCOMMIT}"
            ));
            MAX_OVERCOMMIT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Parsed, SettingsError> {
        let mut argv = vec!["cex-plugin"];
        argv.extend_from_slice(flags);
        Settings::from_args(Args::try_parse_from(argv).expect("flags parse"))
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        let cases = [
            ("30", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            (" 7 ", Duration::from_secs(7)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration("X", text).expect(text), expected, "{text}");
        }
    }

    #[test]
    fn durations_reject_garbage() {
        for text in [
            "",
            "s",
            "-1",
            "1.5",
            "2 s",
            "1d",
            "ms5",
            "99999999999999999999",
        ] {
            assert!(
                parse_duration("X", text).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn defaults_match_reference_product() {
        let parsed = parse(&[]).expect("defaults are valid");
        let settings = parsed.settings;
        assert!(parsed.warnings.is_empty());
        assert_eq!(settings.apqn_check_interval, Duration::from_secs(30));
        assert_eq!(settings.config_check_interval, Duration::from_secs(120));
        assert_eq!(settings.podlister_poll_interval, Duration::from_secs(30));
        assert_eq!(settings.resource_delete_unused, Duration::from_secs(120));
        assert_eq!(
            settings.resource_delete_never_used,
            Duration::from_secs(1800)
        );
        assert_eq!(settings.metrics_poll_interval, Duration::from_secs(15));
        assert_eq!(settings.overcommit_limit, 1);
        assert!(settings.live_sysfs);
        assert_eq!(settings.metrics_listen, None);
        assert_eq!(
            settings.paths.ap_devices_dir,
            PathBuf::from("/sys/devices/ap")
        );
        assert_eq!(
            settings.paths.device_plugin_dir,
            PathBuf::from("/var/lib/kubelet/device-plugins")
        );
    }

    #[test]
    fn short_interval_is_kept_with_warning() {
        let parsed = parse(&["--apqn-check-interval", "200ms"]).expect("valid");
        assert_eq!(
            parsed.settings.apqn_check_interval,
            Duration::from_millis(200)
        );
        assert_eq!(parsed.warnings.len(), 1);
        assert!(
            parsed.warnings[0].contains("APQN_CHECK_INTERVAL"),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn out_of_range_intervals_are_clamped() {
        let parsed = parse(&[
            "--cryptoconfig-check-interval",
            "0",
            "--metrics-poll-interval",
            "2h",
        ])
        .expect("valid");
        assert_eq!(parsed.settings.config_check_interval, MIN_TEST_INTERVAL);
        assert_eq!(
            parsed.settings.metrics_poll_interval,
            Duration::from_secs(7200)
        );
        let parsed = parse(&["--podlister-poll-interval", "48h"]).expect("valid");
        assert_eq!(parsed.settings.podlister_poll_interval, MAX_INTERVAL);
        assert!(
            parsed.warnings[0].contains("PODLISTER_POLL_INTERVAL"),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn overcommit_is_clamped() {
        let cases = [
            ("0", 1, false),
            ("1", 1, false),
            ("100", 100, false),
            ("101", 100, true),
        ];
        for (text, expected, warned) in cases {
            let parsed = parse(&["--apqn-overcommit-limit", text]).expect(text);
            assert_eq!(parsed.settings.overcommit_limit, expected, "{text}");
            assert_eq!(!parsed.warnings.is_empty(), warned, "{text}");
        }
        assert!(parse(&["--apqn-overcommit-limit=-1"]).is_err());
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let error = parse(&["--apqn-check-interval", "soon"]).expect_err("invalid");
        assert!(error.to_string().contains("APQN_CHECK_INTERVAL"), "{error}");
        let error = parse(&["--metrics-listen", "port 9"]).expect_err("invalid");
        assert!(error.to_string().contains("METRICS_LISTEN"), "{error}");
    }

    #[test]
    fn metrics_listen_parses_address() {
        let parsed = parse(&["--metrics-listen", "127.0.0.1:9940"]).expect("valid");
        assert_eq!(
            parsed.settings.metrics_listen,
            Some("127.0.0.1:9940".parse().expect("addr"))
        );
    }
}
