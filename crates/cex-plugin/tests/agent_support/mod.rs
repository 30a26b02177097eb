//! Shared fixtures of the agent end-to-end tests: a temp node root laid
//! out like a host (AP bus sysfs, zcrypt class, `/dev`, `/proc/sysinfo`),
//! a config file, the kubelet device-plugin directory, and the real
//! `cex-plugin` binary running against them.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cex_sim::kubelet::{FakeKubelet, Message};

/// The machine id written to the fake `/proc/sysinfo`.
pub const MACHINE_ID: &str = "IBM-3931-00000000000ABCDE";

/// The resource of set `blue`.
pub const BLUE: &str = "cex.s390.ibm.com/blue";

/// Generous wait for events that take milliseconds on an idle machine.
pub const WAIT: Duration = Duration::from_secs(15);

/// One set `blue` with APQNs 1/5 and 2/5.
pub const BASE_CONFIG: &str = r#"{"cryptoconfigsets":[{"setname":"blue","project":"blue",
  "apqns":[{"adapter":1,"domain":5},{"adapter":2,"domain":5}]}]}"#;

/// A temp node root.
pub struct Node {
    pub root: tempfile::TempDir,
}

impl Node {
    /// card01 CEX8P with 01.0005 online, card02 CEX7C with 02.0005
    /// online, the machine id, an empty zcrypt class and BASE-CONFIG.
    pub fn new() -> Self {
        Self::new_in(&std::env::temp_dir())
    }

    /// Creates the node on `/dev/shm` when it exists, so that file timing
    /// in measured tests is not disk timing.
    pub fn on_tmpfs() -> Self {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            Self::new_in(shm)
        } else {
            Self::new()
        }
    }

    /// Creates the same node under `parent`.
    pub fn new_in(parent: &Path) -> Self {
        let root = tempfile::tempdir_in(parent).expect("temp dir");
        let node = Node { root };
        for dir in [
            "sys/bus/ap",
            "sys/class/zcrypt",
            "sys/devices/virtual/zcrypt",
            "dev",
            "proc",
        ] {
            fs::create_dir_all(node.path(dir)).expect("node dir");
        }
        fs::create_dir_all(node.plugin_dir()).expect("device-plugin dir");
        fs::write(node.path("sys/class/zcrypt/create"), "").expect("create file");
        fs::write(node.path("sys/class/zcrypt/destroy"), "").expect("destroy file");
        let sysinfo = "Manufacturer:         IBM\nType:                 3931\n\
                       Sequence Code:        00000000000ABCDE\n";
        fs::write(node.path("proc/sysinfo"), sysinfo).expect("sysinfo");
        let ones = format!("0x{}\n", "f".repeat(64));
        let bus = [
            ("ap_interrupts", "1\n".to_string()),
            ("ap_max_domain_id", "84\n".to_string()),
            ("poll_thread", "0\n".to_string()),
            ("poll_timeout", "250000\n".to_string()),
            ("ap_domain", "5\n".to_string()),
            ("apmask", ones.clone()),
            ("aqmask", ones),
        ];
        for (name, value) in bus {
            fs::write(node.path("sys/bus/ap").join(name), value).expect("bus attribute");
        }
        node.add_card(1, "CEX8P");
        node.add_queue(1, 5, true);
        node.add_card(2, "CEX7C");
        node.add_queue(2, 5, true);
        node.write_config(BASE_CONFIG);
        node
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.path("var/lib/kubelet/device-plugins")
    }

    pub fn config_file(&self) -> PathBuf {
        self.path("config/cex_resources.json")
    }

    pub fn card_dir(&self, adapter: u8) -> PathBuf {
        self.path(&format!("sys/devices/ap/card{adapter:02x}"))
    }

    pub fn queue_dir(&self, adapter: u8, domain: u8) -> PathBuf {
        self.card_dir(adapter)
            .join(format!("{adapter:02x}.{domain:04x}"))
    }

    pub fn add_card(&self, adapter: u8, card_type: &str) {
        let dir = self.card_dir(adapter);
        fs::create_dir_all(&dir).expect("card dir");
        for (name, value) in [
            ("type", card_type),
            ("hwtype", "14"),
            ("raw_hwtype", "14"),
            ("online", "1"),
            ("ap_functions", "0x00000000"),
            ("depth", "8"),
        ] {
            fs::write(dir.join(name), format!("{value}\n")).expect("card attribute");
        }
    }

    pub fn add_queue(&self, adapter: u8, domain: u8, online: bool) {
        let dir = self.queue_dir(adapter, domain);
        fs::create_dir_all(&dir).expect("queue dir");
        for name in ["request_count", "interrupt", "reset"] {
            fs::write(dir.join(name), "0\n").expect("queue attribute");
        }
        self.set_queue_online(adapter, domain, online);
    }

    pub fn set_queue_online(&self, adapter: u8, domain: u8, online: bool) {
        let value = if online { "1\n" } else { "0\n" };
        fs::write(self.queue_dir(adapter, domain).join("online"), value).expect("online");
    }

    /// Writes the config file through a temp file and a rename, so the
    /// agent never reads a half-written file.
    pub fn write_config(&self, json: &str) {
        let path = self.config_file();
        fs::create_dir_all(path.parent().expect("config dir")).expect("config dir");
        let temp = path.with_extension("tmp");
        fs::write(&temp, json).expect("config");
        fs::rename(&temp, &path).expect("config rename");
    }

    /// Starts the agent with 1 s intervals and `extra` environment.
    pub fn spawn_agent(&self, extra: &[(&str, &str)]) -> Agent {
        let log = self.path("agent.log");
        let log_file = fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cex-plugin"));
        command
            .env_clear()
            .env("RUST_LOG", "info")
            .env("APQN_CHECK_INTERVAL", "1")
            .env("CRYPTOCONFIG_CHECK_INTERVAL", "1")
            .env("PODLISTER_POLL_INTERVAL", "1")
            .env("NODENAME", "node-1")
            .env("SHADOWSYSFS_BASEDIR", self.path("var/tmp/shadowsysfs"))
            .env("CCS_JSON_FILE", self.config_file())
            .env("APSYSFS_BUSDIR", self.path("sys/bus/ap"))
            .env("APSYSFS_DEVSDIR", self.path("sys/devices/ap"))
            .env("ZCRYPT_CLASSDIR", self.path("sys/class/zcrypt"))
            .env("ZCRYPT_NODESDIR", self.path("sys/devices/virtual/zcrypt"))
            .env("DEV_DIR", self.path("dev"))
            .env("PROC_SYSINFO_FILE", self.path("proc/sysinfo"))
            .env("KUBELET_DEVICE_PLUGIN_DIR", self.plugin_dir())
            .env(
                "KUBELET_POD_RESOURCES_SOCKET",
                self.path("var/lib/kubelet/pod-resources/kubelet.sock"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("cex-plugin starts");
        Agent {
            child,
            log,
            started: Instant::now(),
        }
    }

    /// The pod-resources socket the agent of [`Node::spawn_agent`] lists
    /// pods on; its directory does not exist until a test makes it.
    pub fn pod_resources_socket(&self) -> PathBuf {
        self.path("var/lib/kubelet/pod-resources/kubelet.sock")
    }

    /// Names of the files in the device-plugin directory, sorted.
    pub fn plugin_dir_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.plugin_dir())
            .expect("device-plugin dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

/// A running `cex-plugin` process, killed on drop.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reports whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Counts the log lines that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) -> bool {
        wait_until(|| self.log_count(needle) > 0).await
    }

    /// CPU time (user + system) used so far, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name, which is in parentheses and may
        // contain spaces; utime and stime are fields 14 and 15.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
    }

    /// Sends SIGTERM and waits for the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf runs");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

/// Health strings of a message by id, sorted by id.
pub fn health(message: &Message) -> Vec<(String, String)> {
    let mut devices: Vec<(String, String)> = message
        .devices
        .iter()
        .map(|device| (device.id.clone(), device.health.clone()))
        .collect();
    devices.sort();
    devices
}

/// Waits for the first message of the newest stream of `resource` opened
/// after `streams_seen` streams.
pub async fn first_message_of_new_stream(
    kubelet: &FakeKubelet,
    resource: &str,
    streams_seen: usize,
) -> Option<Message> {
    kubelet
        .wait_for(WAIT, |recorded| {
            recorded
                .streams_of(resource)
                .get(streams_seen)
                .and_then(|stream| stream.messages.first().cloned())
        })
        .await
}

/// `(id, "Healthy")` pairs for `ids`.
pub fn all_healthy(ids: &[&str]) -> Vec<(String, String)> {
    ids.iter()
        .map(|id| (id.to_string(), "Healthy".to_string()))
        .collect()
}

/// Sleeps without blocking the runtime.
pub async fn pause(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Elapsed milliseconds since `start`, for printed figures.
pub fn millis_since(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Polls `condition` every 100 ms until it holds or [`WAIT`] passes, for
/// conditions on files that no recorded event announces.
pub async fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        pause(Duration::from_millis(100)).await;
    }
    condition()
}
