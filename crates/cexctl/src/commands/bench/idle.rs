//! Resident memory and CPU time of an idle agent with 8 sets.

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

/// Runs an agent with the default intervals on `node` for the idle
/// window and reads its `/proc` figures.
pub async fn measure(
    node: &BenchNode,
    sets: &[SetPlan],
    plan: &Plan,
) -> anyhow::Result<(Figure, Section)> {
    let seen = sets::registration_counts(&node.kubelet, sets);
    let agent = Agent::spawn(plan.agent_binary.as_deref(), &node.agent_paths(), &[])?;
    let pid = agent.pid().context("the agent exited at once")?;
    let registered = sets::wait_registered(&node.kubelet, sets, &seen, REGISTER_WAIT).await;
    if registered.is_none() {
        let log = agent.last_lines();
        agent.stop().await?;
        anyhow::bail!("the idle agent did not register every set; its last log lines:\n{log}");
    }
    tokio::time::sleep(SETTLE).await;
    let before = read_usage(pid);
    let opened = Instant::now();
    tokio::time::sleep(plan.idle_window).await;
    let after = read_usage(pid);
    let window = opened.elapsed();
    agent.stop().await?;
    let (before, after) = (before?, after?);

    let cpu_seconds = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SECOND;
    let rss_mib = after.rss_kib as f64 / 1024.0;

    let figure = Figure {
        name: format!(
            "idle agent, {} sets, {:.0} s",
            sets.len(),
            window.as_secs_f64()
        ),
        measured: format!(
            "RSS {rss_mib:.1} MiB (peak {:.1} MiB), CPU {cpu_seconds:.2} s ({:.3} %)",
            after.hwm_kib as f64 / 1024.0,
            cpu_seconds / window.as_secs_f64() * 100.0
        ),
        target: "RSS <= 8 MiB".to_string(),
        reference: "RSS 15 to 17 MiB".to_string(),
        verdict: Verdict::from_ok(after.rss_kib <= 8 * 1024),
    };

    let mut section = Section::new("Idle agent: memory and CPU");
    section.line(format!(
        "The agent runs with every interval at its default (APQN rescan 30 s, config \
         check 120 s, pod list 30 s, metrics 15 s) and {} registered sets. After the \
         registrations and {} s to settle, `VmRSS`, `VmHWM` and `Threads` come from \
         `/proc/<pid>/status` and CPU time (utime + stime) from `/proc/<pid>/stat` at \
         the start and end of a {:.0} s window. The process is {}.\n",
        sets.len(),
        SETTLE.as_secs(),
        window.as_secs_f64(),
        match &plan.agent_binary {
            Some(binary) => format!("`{}`", binary.display()),
            None => "`cexctl agent`: the agent code of the `cex-plugin` binary inside the \
                     larger `cexctl` executable"
                .to_string(),
        }
    ));
    section.line(format!(
        "- VmRSS {} KiB: RssAnon {} KiB (heap and stacks) and RssFile {} KiB (mapped \
         files), of which {} KiB from the agent's executable; VmHWM {} KiB; {} threads \
         at the end",
        after.rss_kib,
        after.anon_kib,
        after.file_kib,
        after.executable_kib,
        after.hwm_kib,
        after.threads
    ));
    section.line(format!(
        "- CPU time in the window: {cpu_seconds:.2} s ({} ticks of 1/100 s)",
        after.cpu_ticks.saturating_sub(before.cpu_ticks)
    ));
    Ok((figure, section))
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
