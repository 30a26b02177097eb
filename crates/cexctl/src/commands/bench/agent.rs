//! The agent under measurement: the real `cex-plugin` entry point run as
//! a child process (`cexctl agent ...`), its stderr drained so that a
//! long log line never blocks it.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

/// The number of last log lines kept for error messages.
const KEPT_LINES: usize = 20;

/// Interval flags of a responsive agent: the shortest rescan and pod
/// poll, and the default config check (120 s), so a config change can
/// only arrive fast through the file watch.
pub const FAST_INTERVALS: &[(&str, &str)] = &[
    ("--apqn-check-interval", "1"),
    ("--cryptoconfig-check-interval", "120"),
    ("--podlister-poll-interval", "1"),
];

/// A running agent process.
pub struct Agent {
    child: Child,
    spawned_at: Instant,
    first_line_at: Arc<OnceLock<Instant>>,
    last_lines: Arc<Mutex<VecDeque<String>>>,
    reader: JoinHandle<()>,
}

impl Agent {
    /// Starts `<this executable> agent`, or `binary` when given (a
    /// `cex-plugin` executable), with `paths` and `intervals`.
    pub fn spawn(
        binary: Option<&Path>,
        paths: &[(&'static str, String)],
        intervals: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut command = match binary {
            Some(binary) => Command::new(binary),
            None => {
                let cexctl =
                    std::env::current_exe().context("cannot find the cexctl executable")?;
                let mut command = Command::new(cexctl);
                command.arg("agent");
                command
            }
        };
        let program = command.as_std().get_program().to_owned();
        command.args(["--nodename", "bench-node"]);
        for (flag, value) in paths {
            command.arg(flag).arg(value);
        }
        for (flag, value) in intervals {
            command.arg(flag).arg(value);
        }
        command
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned_at = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the agent {}", program.display()))?;
        let stderr = child
            .stderr
            .take()
            .context("the agent's stderr is not captured")?;
        let first_line_at = Arc::new(OnceLock::new());
        let last_lines = Arc::new(Mutex::new(VecDeque::new()));
        let reader = tokio::spawn(drain(
            stderr,
            Arc::clone(&first_line_at),
            Arc::clone(&last_lines),
        ));
        Ok(Self {
            child,
            spawned_at,
            first_line_at,
            last_lines,
            reader,
        })
    }

    /// Returns the time just before the process was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Returns when the first log line arrived, if one did.
    pub fn first_line_at(&self) -> Option<Instant> {
        self.first_line_at.get().copied()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Returns the last log lines, for error messages.
    pub fn last_lines(&self) -> String {
        let lines = self
            .last_lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Sends SIGTERM and waits up to 5 s for the exit, then kills it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .and_then(|raw| rustix::process::Pid::from_raw(raw as i32));
        if let Some(pid) = pid {
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .with_context(|| format!("cannot send SIGTERM to agent process {pid:?}"))?;
        }
        let waited = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        if waited.is_err() {
            let _ = self.child.kill().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.reader).await;
        self.reader.abort();
        match waited {
            Ok(status) => status
                .map(|_| ())
                .context("cannot wait for the agent process"),
            Err(_) => anyhow::bail!("the agent did not exit within 5 s of SIGTERM and was killed"),
        }
    }
}

async fn drain(
    stderr: ChildStderr,
    first_line_at: Arc<OnceLock<Instant>>,
    last_lines: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        let _ = first_line_at.set(Instant::now());
        line.truncate(line.floor_char_boundary(400));
        let mut kept = last_lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}
