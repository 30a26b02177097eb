//! The results page: each figure beside its target and the reference
//! product's value, the details behind it and how to reproduce the run.

use std::fmt::Write as _;
use std::time::Duration;

use super::host::HostInfo;

/// Whether a figure reached its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The measurement could not run, with the reason.
    NotMeasured(String),
}

impl Verdict {
    /// Returns `Met` when `ok`, else `Missed`.
    pub fn from_ok(ok: bool) -> Self {
        if ok {
            Self::Met
        } else {
            Self::Missed
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Met => "met".to_string(),
            Self::Missed => "**MISSED**".to_string(),
            Self::NotMeasured(reason) => format!("not measured: {reason}"),
        }
    }
}

/// One row of the summary table.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub measured: String,
    pub target: String,
    pub reference: String,
    pub verdict: Verdict,
}

/// The details of one measurement: method and every sample.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub lines: Vec<String>,
}

impl Section {
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            lines: Vec::new(),
        }
    }

    /// Adds one paragraph or list line.
    pub fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }
}

/// A whole benchmark run.
#[derive(Debug, Clone)]
pub struct Report {
    pub host: HostInfo,
    pub quick: bool,
    pub figures: Vec<Figure>,
    pub sections: Vec<Section>,
    pub elapsed: Duration,
    /// The load averages when the run ended.
    pub load_at_end: String,
}

/// The heading of the summary table.
const SUMMARY_HEADING: &str = "## Summary";

impl Report {
    /// Renders the page as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut page = String::new();
        self.write_header(&mut page);
        self.write_summary(&mut page);
        for section in &self.sections {
            let _ = writeln!(page, "\n## {}\n", section.title);
            for line in &section.lines {
                let _ = writeln!(page, "{line}");
            }
        }
        self.write_reproduce(&mut page);
        page
    }

    fn write_header(&self, page: &mut String) {
        let host = &self.host;
        let _ = writeln!(page, "# Benchmarks\n");
        let _ = writeln!(
            page,
            "Written by `cexctl bench`{} on simulated IBM Z nodes: the real agent \
             process against the simulated kubelet over real gRPC on Unix sockets. \
             Node trees live on `/dev/shm` (tmpfs) when present, because small-file \
             writes on this host's ext4 disk are much slower than on sysfs. Latencies \
             depend on what else runs on the host: the load averages below show how busy \
             it was.\n",
            if self.quick {
                " --quick (few samples, not for comparison)"
            } else {
                ""
            }
        );
        let _ = writeln!(page, "| host | |\n|---|---|");
        let _ = writeln!(page, "| CPU | {} |", host.cpu_model);
        let _ = writeln!(page, "| cores | {} |", host.cores);
        let _ = writeln!(page, "| memory | {} |", host.memory);
        let _ = writeln!(page, "| kernel | {} |", host.kernel);
        let _ = writeln!(page, "| build profile | {} |", host.profile);
        let _ = writeln!(page, "| date | {} |", host.date);
        let _ = writeln!(page, "| run time | {:.0} s |", self.elapsed.as_secs_f64());
        let _ = writeln!(
            page,
            "| load average (1, 5, 15 min) | {} at the start, {} at the end |",
            host.load_at_start, self.load_at_end
        );
    }

    fn write_summary(&self, page: &mut String) {
        let _ = writeln!(page, "\n{SUMMARY_HEADING}\n");
        let _ = writeln!(
            page,
            "| figure | measured | target | reference product | verdict |"
        );
        let _ = writeln!(page, "|---|---|---|---|---|");
        for figure in &self.figures {
            let _ = writeln!(
                page,
                "| {} | {} | {} | {} | {} |",
                figure.name,
                figure.measured,
                figure.target,
                figure.reference,
                figure.verdict.label()
            );
        }
        let missed = self
            .figures
            .iter()
            .filter(|figure| figure.verdict == Verdict::Missed)
            .count();
        let _ = writeln!(
            page,
            "\n{missed} of {} figures missed their target.",
            self.figures.len()
        );
    }

    fn write_reproduce(&self, page: &mut String) {
        let _ = writeln!(page, "\n## Reproduce\n");
        let _ = writeln!(
            page,
            "```sh\ncargo build --release -p cex-plugin  # also measure the shipped binary\n\
             cargo run --release -p cexctl -- bench\n```\n\n\
             This writes `docs/benchmarks.md` (`--output FILE` writes elsewhere). \
             {} Most of a full run is the 20 kubelet restarts spaced 5.5 s apart and \
             the 60 s idle window of each agent executable. `--quick` takes a few samples of each figure in \
             under a minute; the smoke test runs it.",
            if self.quick {
                format!("This quick run took {:.0} s.", self.elapsed.as_secs_f64())
            } else {
                format!("This run took {:.0} s.", self.elapsed.as_secs_f64())
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_figure_is_marked() {
        let report = Report {
            host: HostInfo::collect(),
            quick: true,
            figures: vec![Figure {
                name: "scan".to_string(),
                measured: "60 ms".to_string(),
                target: "<= 50 ms".to_string(),
                reference: "-".to_string(),
                verdict: Verdict::Missed,
            }],
            sections: Vec::new(),
            elapsed: Duration::from_secs(3),
            load_at_end: "0.00 0.00 0.00".to_string(),
        };
        let page = report.to_markdown();
        assert!(page.contains("| scan | 60 ms | <= 50 ms | - | **MISSED** |"));
        assert!(page.contains("1 of 1 figures missed their target."));
    }
}
