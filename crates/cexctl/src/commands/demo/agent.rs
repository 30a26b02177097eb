//! The agent under demonstration: the real `cex-plugin` entry point run
//! as a child process (`cexctl agent ...`), with its log lines captured
//! from stderr so that steps can wait for them.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use cex_kubelet_api::deviceplugin::v1beta1::KUBELET_SOCKET;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The paths and intervals the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// Root of the simulated node (`sys/`, `dev/`, `proc/`).
    pub root: PathBuf,
    pub config_file: PathBuf,
    pub device_plugin_dir: PathBuf,
    pub pod_resources_socket: PathBuf,
    pub shadow_base_dir: PathBuf,
    /// Copy the agent's log lines to stderr as they arrive.
    pub echo: bool,
}

impl AgentSetup {
    /// Returns the agent flags: every path points into the simulated
    /// node and every interval is short, so changes show within seconds.
    fn flags(&self) -> Vec<(&'static str, String)> {
        let under_root = |relative: &str| self.root.join(relative).display().to_string();
        vec![
            ("--apqn-check-interval", "1".into()),
            ("--cryptoconfig-check-interval", "1".into()),
            ("--podlister-poll-interval", "1".into()),
            ("--resource-delete-unused", "2".into()),
            ("--nodename", "demo-node".into()),
            (
                "--shadowsysfs-basedir",
                self.shadow_base_dir.display().to_string(),
            ),
            ("--ccs-json-file", self.config_file.display().to_string()),
            ("--apsysfs-busdir", under_root("sys/bus/ap")),
            ("--apsysfs-devsdir", under_root("sys/devices/ap")),
            ("--zcrypt-classdir", under_root("sys/class/zcrypt")),
            (
                "--zcrypt-nodesdir",
                under_root("sys/devices/virtual/zcrypt"),
            ),
            ("--dev-dir", under_root("dev")),
            ("--proc-sysinfo-file", under_root("proc/sysinfo")),
            (
                "--kubelet-device-plugin-dir",
                self.device_plugin_dir.display().to_string(),
            ),
            (
                "--kubelet-pod-resources-socket",
                self.pod_resources_socket.display().to_string(),
            ),
        ]
    }
}

/// The agent's stderr lines so far, with a change counter to wait on.
#[derive(Debug)]
pub struct AgentLog {
    lines: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
}

impl AgentLog {
    fn new() -> Self {
        Self {
            lines: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        }
    }

    fn push(&self, line: String) {
        let mut lines = self
            .lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.push(line);
        let count = lines.len();
        drop(lines);
        self.count.send_replace(count);
    }

    /// Returns the number of lines so far, a mark for `wait_for`.
    pub fn mark(&self) -> usize {
        *self.count.borrow()
    }

    /// Returns the lines after `mark` that contain `needle`.
    pub fn matching_since(&self, mark: usize, needle: &str) -> Vec<String> {
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lines
            .iter()
            .skip(mark)
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits for a line after `mark` that contains `needle` and returns
    /// it from `needle` on (dropping the timestamp and level), or `None`
    /// after `timeout`.
    pub async fn wait_for(&self, mark: usize, needle: &str, timeout: Duration) -> Option<String> {
        let mut changes = self.count.subscribe();
        let search = async {
            loop {
                if let Some(line) = self.matching_since(mark, needle).into_iter().next() {
                    return Some(message_from(&line, needle));
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, search).await.ok().flatten()
    }
}

/// Cuts `line` to start at `needle`.
pub fn message_from(line: &str, needle: &str) -> String {
    line.find(needle)
        .map_or(line, |start| &line[start..])
        .to_string()
}

/// A running agent process.
pub struct AgentProcess {
    child: Child,
    log: Arc<AgentLog>,
    reader: JoinHandle<()>,
}

impl AgentProcess {
    /// Starts `<this executable> agent <flags>`.
    pub fn spawn(setup: &AgentSetup) -> anyhow::Result<Self> {
        let program = std::env::current_exe().context("cannot find the cexctl executable")?;
        let mut command = Command::new(&program);
        command.arg("agent");
        for (flag, value) in setup.flags() {
            command.arg(flag).arg(value);
        }
        command
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {} agent", program.display()))?;
        let stderr = child
            .stderr
            .take()
            .context("the agent's stderr is not captured")?;
        let log = Arc::new(AgentLog::new());
        let reader = tokio::spawn(read_lines(stderr, Arc::clone(&log), setup.echo));
        Ok(Self { child, log, reader })
    }

    /// Returns the process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Returns the captured log.
    pub fn log(&self) -> &AgentLog {
        &self.log
    }

    /// Returns the exit status when the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit, then kills
    /// the process. Returns the status, or an error when it had to be
    /// killed.
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            self.reader.abort();
            return Ok(status);
        }
        let pid = self
            .child
            .id()
            .and_then(|raw| rustix::process::Pid::from_raw(raw as i32));
        if let Some(pid) = pid {
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .with_context(|| format!("cannot send SIGTERM to agent process {pid:?}"))?;
        }
        let waited = tokio::time::timeout(timeout, self.child.wait()).await;
        let result = match waited {
            Ok(status) => status.context("cannot wait for the agent process"),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(anyhow::anyhow!(
                    "expected the agent to exit within {timeout:?} of SIGTERM, it did not and was killed"
                ))
            }
        };
        // The pipe closes with the process, so the reader ends by itself.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.reader).await;
        self.reader.abort();
        result
    }
}

async fn read_lines(stderr: ChildStderr, log: Arc<AgentLog>, echo: bool) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if echo {
            eprintln!("    agent| {line}");
        }
        log.push(line);
    }
}

/// Lists the `*.sock` files in `dir` other than the kubelet's own.
pub fn plugin_sockets(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sock") && name != KUBELET_SOCKET)
        .collect();
    names.sort();
    names
}
