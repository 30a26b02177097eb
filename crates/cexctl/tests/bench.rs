//! `cexctl bench --quick`: the benchmark runs end to end on simulated
//! nodes and writes a results page with every figure. The figures
//! themselves are not checked; this host's speed is not the product's.

use std::process::Command;

/// The figure names the page must list, each at the start of a row.
const FIGURES: &[&str] = &[
    "agent start to first registration",
    "kubelet restart to re-registration",
    "config file change to new device list",
    "sysfs change to new device list",
    "Allocate, sequential (plain files + fake kernel, shadow on tmpfs)",
    "Allocate, 64 concurrent (plain files + fake kernel, shadow on tmpfs)",
    "Allocate, sequential (plain files + fake kernel, shadow on disk (/var/tmp))",
    "AP bus scan, 64 adapters x 85 domains (5440 APQNs)",
    "ListAndWatch message, 5440 APQNs x overcommit 100",
    "idle agent, 8 sets",
];

const HOST_ROWS: &[&str] = &["CPU", "cores", "memory", "kernel", "build profile", "date"];

/// Splits a Markdown table row into its trimmed cells.
fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split(" | ")
        .map(str::trim)
        .collect()
}

#[test]
fn quick_bench_writes_every_figure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let page_path = dir.path().join("pages/benchmarks.md");
    let output = Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .args(["bench", "--quick", "--output"])
        .arg(&page_path)
        .output()
        .expect("run cexctl bench");
    assert!(output.status.success(), "{output:?}");
    let page = std::fs::read_to_string(&page_path).expect("the page is written");

    assert!(page.starts_with("# Benchmarks\n"), "{page}");
    assert!(
        page.contains("--quick"),
        "a quick page must say so:\n{page}"
    );
    for row in HOST_ROWS {
        let found = page
            .lines()
            .any(|line| line.starts_with(&format!("| {row} | ")) && cells(line)[1] != "unknown");
        assert!(found, "host row {row:?} missing or unknown:\n{page}");
    }

    let summary_start = page.find("## Summary").expect("summary heading");
    let summary: Vec<&str> = page[summary_start..]
        .lines()
        .skip_while(|line| !line.starts_with("| figure |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .collect();
    for name in FIGURES {
        let row = summary
            .iter()
            .find(|line| line.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("figure {name:?} missing from the summary:\n{page}"));
        let cells = cells(row);
        assert_eq!(cells.len(), 5, "row {row:?}");
        assert_ne!(cells[1], "-", "figure {name:?} has no measured value");
        let verdict = cells[4];
        let known =
            verdict == "met" || verdict == "**MISSED**" || verdict.starts_with("not measured");
        assert!(known, "figure {name:?} has verdict {verdict:?}");
    }
    let missed = summary
        .iter()
        .filter(|row| row.ends_with("| **MISSED** |"))
        .count();
    let tally = format!("{missed} of {} figures missed their target.", summary.len());
    assert!(page.contains(&tally), "expected {tally:?} in:\n{page}");

    for heading in [
        "## Allocate latency",
        "## Idle agent: memory and CPU",
        "## Reproduce",
    ] {
        assert!(page.contains(heading), "{heading:?} missing:\n{page}");
    }
    assert!(page.contains("cargo run --release -p cexctl -- bench"));
}
