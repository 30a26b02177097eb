//! Resident memory and CPU time of an idle agent with 8 sets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::agent::Agent;
use super::node::BenchNode;
use super::page::{Figure, Section, Verdict};
use super::sets::{self, SetPlan};
use super::Plan;

/// Linux reports `utime` and `stime` in USER_HZ ticks, 100 per second on
/// every architecture Kubernetes runs on (x86_64, arm64, s390x, ppc64le).
const TICKS_PER_SECOND: f64 = 100.0;

/// Time for start-up work to settle before the window opens.
const SETTLE: Duration = Duration::from_secs(2);

const REGISTER_WAIT: Duration = Duration::from_secs(10);

/// Memory and CPU figures of one process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcessUsage {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    /// Resident pages mapped from the agent's own executable.
    executable_kib: u64,
    threads: u64,
    cpu_ticks: u64,
}

/// One idle window of one agent executable.
struct IdleRun {
    /// How the page names the executable.
    label: String,
    before: ProcessUsage,
    after: ProcessUsage,
    window: Duration,
}

/// Measures `cexctl agent` (or `--agent-binary`) idle on `node`, and also
/// the `cex-plugin` executable beside this one when there is one, because
/// that smaller executable is what ships.
pub async fn measure(
    node: &BenchNode,
    sets: &[SetPlan],
    plan: &Plan,
) -> anyhow::Result<(Vec<Figure>, Section)> {
    let mut runs = Vec::new();
    let label = match &plan.agent_binary {
        Some(binary) => format!("`{}`", binary.display()),
        None => "`cexctl agent`".to_string(),
    };
    runs.push(measure_one(node, sets, plan, plan.agent_binary.as_deref(), label).await?);
    let sibling = sibling_agent();
    if let (None, Some(binary)) = (&plan.agent_binary, &sibling) {
        let label = "`cex-plugin` binary".to_string();
        runs.push(measure_one(node, sets, plan, Some(binary), label).await?);
    }

    let figures = runs
        .iter()
        .map(|run| idle_figure(run, sets.len()))
        .collect();
    let mut section = Section::new("Idle agent: memory and CPU");
    section.line(format!(
        "The agent runs with every interval at its default (APQN rescan 30 s, config \
         check 120 s, pod list 30 s, metrics 15 s) and {} registered sets. After the \
         registrations and {} s to settle, `VmRSS`, `VmHWM` and `Threads` come from \
         `/proc/<pid>/status`, the resident pages of the executable from \
         `/proc/<pid>/smaps`, and CPU time (utime + stime) from `/proc/<pid>/stat` at \
         the start and end of a {:.0} s window. `cexctl agent` runs the agent code of \
         the `cex-plugin` binary inside the larger `cexctl` executable, so its file-backed \
         pages are more. The `cex-plugin` binary found beside `cexctl` is measured too, as \
         last built: build it from the same sources first (see below).\n",
        sets.len(),
        SETTLE.as_secs(),
        plan.idle_window.as_secs_f64(),
    ));
    for run in &runs {
        let after = &run.after;
        section.line(format!(
            "- {}: VmRSS {} KiB, of which RssAnon {} KiB (heap and stacks) and RssFile {} \
             KiB (mapped files, {} KiB from the executable itself); VmHWM {} KiB; {} \
             threads; CPU time in the window {} ticks of 1/100 s",
            run.label,
            after.rss_kib,
            after.anon_kib,
            after.file_kib,
            after.executable_kib,
            after.hwm_kib,
            after.threads,
            after.cpu_ticks.saturating_sub(run.before.cpu_ticks)
        ));
    }
    Ok((figures, section))
}

fn idle_figure(run: &IdleRun, set_count: usize) -> Figure {
    let ticks = run.after.cpu_ticks.saturating_sub(run.before.cpu_ticks);
    let cpu_seconds = ticks as f64 / TICKS_PER_SECOND;
    Figure {
        name: format!(
            "idle agent, {set_count} sets, {:.0} s ({})",
            run.window.as_secs_f64(),
            run.label
        ),
        measured: format!(
            "RSS {:.1} MiB (peak {:.1} MiB), CPU {cpu_seconds:.2} s ({:.3} %)",
            run.after.rss_kib as f64 / 1024.0,
            run.after.hwm_kib as f64 / 1024.0,
            cpu_seconds / run.window.as_secs_f64() * 100.0
        ),
        target: "RSS <= 8 MiB".to_string(),
        reference: "RSS 15 to 17 MiB".to_string(),
        verdict: Verdict::from_ok(run.after.rss_kib <= 8 * 1024),
    }
}

/// Returns the `cex-plugin` executable beside this one, if built.
fn sibling_agent() -> Option<PathBuf> {
    let sibling = std::env::current_exe().ok()?.with_file_name("cex-plugin");
    sibling.is_file().then_some(sibling)
}

/// Runs `binary` (`None`: `cexctl agent`) with the default intervals on
/// `node` for the idle window and reads its `/proc` figures.
async fn measure_one(
    node: &BenchNode,
    sets: &[SetPlan],
    plan: &Plan,
    binary: Option<&Path>,
    label: String,
) -> anyhow::Result<IdleRun> {
    let seen = sets::registration_counts(&node.kubelet, sets);
    let agent = Agent::spawn(binary, &node.agent_paths(), &[])?;
    let pid = agent.pid().context("the agent exited at once")?;
    let registered = sets::wait_registered(&node.kubelet, sets, &seen, REGISTER_WAIT).await;
    if registered.is_none() {
        let log = agent.last_lines();
        agent.stop().await?;
        anyhow::bail!(
            "the idle agent {label} did not register every set; its last log lines:\n{log}"
        );
    }
    tokio::time::sleep(SETTLE).await;
    let before = read_usage(pid);
    let opened = Instant::now();
    tokio::time::sleep(plan.idle_window).await;
    let after = read_usage(pid);
    let window = opened.elapsed();
    agent.stop().await?;
    Ok(IdleRun {
        label,
        before: before?,
        after: after?,
        window,
    })
}

fn read_usage(pid: u32) -> anyhow::Result<ProcessUsage> {
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("cannot read {status_path}"))?;
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    let exe_path = format!("/proc/{pid}/exe");
    let executable =
        std::fs::read_link(&exe_path).with_context(|| format!("cannot read {exe_path}"))?;
    let smaps_path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&smaps_path)
        .with_context(|| format!("cannot read {smaps_path}"))?;
    Ok(ProcessUsage {
        executable_kib: mapped_rss_kib(&smaps, &executable.to_string_lossy()),
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_field(&status, "VmHWM:").unwrap_or(0),
        anon_kib: status_field(&status, "RssAnon:").unwrap_or(0),
        file_kib: status_field(&status, "RssFile:").unwrap_or(0),
        threads: status_field(&status, "Threads:").unwrap_or(0),
        cpu_ticks: cpu_ticks(&stat)
            .with_context(|| format!("cannot parse {stat_path}: {stat:?}"))?,
    })
}

/// Sums the `Rss:` of the mappings of file `path` in `/proc/<pid>/smaps`
/// text, where each mapping starts with a line ending in its path.
fn mapped_rss_kib(smaps: &str, path: &str) -> u64 {
    let mut total = 0;
    let mut in_file = false;
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if in_file {
                total += rss
                    .split_whitespace()
                    .next()
                    .and_then(|kib| kib.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|first| first.contains('-') && !first.ends_with(':'))
        {
            in_file = line.ends_with(path);
        }
    }
    total
}

/// Returns the number after `name` in `/proc/<pid>/status` text.
fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// Returns utime + stime from `/proc/<pid>/stat` text. The command name
/// in brackets may contain spaces, so fields count from the last `)`:
/// utime and stime are fields 14 and 15, the 12th and 13th after it.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_command_name() {
        let stat = "42 (cexctl agent) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(12));
    }

    #[test]
    fn smaps_rss_sums_one_file() {
        let smaps = "\
55d0-55e0 r--p 00000000 fd:00 12 /usr/bin/agent
Rss:                 100 kB
55e0-55f0 r-xp 00010000 fd:00 12 /usr/bin/agent
Rss:                 300 kB
7f00-7f10 r-xp 00000000 fd:00 13 /usr/lib/libc.so.6
Rss:                 900 kB
7ff0-7ff8 rw-p 00000000 00:00 0 [stack]
Rss:                  20 kB
";
        assert_eq!(mapped_rss_kib(smaps, "/usr/bin/agent"), 400);
        assert_eq!(mapped_rss_kib(smaps, "/usr/lib/libc.so.6"), 900);
    }

    #[test]
    fn status_field_reads_kib() {
        let status = "Name:\tcexctl\nVmHWM:\t    9000 kB\nVmRSS:\t    7000 kB\nThreads:\t4\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(7000));
        assert_eq!(status_field(status, "VmHWM:"), Some(9000));
        assert_eq!(status_field(status, "Threads:"), Some(4));
    }
}
