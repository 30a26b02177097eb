//! `cexctl demo`: the whole product on a simulated node, run through the
//! binary with `--json`. The checks read the facts of each step (device
//! counts, decoded masks, removed paths), not the printed wording, and
//! make sure the run leaves no process and no directory behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `cexctl demo ARGS --json` in a fresh working directory.
fn run_demo(args: &[&str]) -> (Output, Value) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .arg("demo")
        .args(args)
        .arg("--json")
        .current_dir(cwd.path())
        .output()
        .expect("run cexctl demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is no JSON summary ({error}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, summary)
}

fn step(summary: &Value, number: usize) -> &Value {
    &summary["steps"][number - 1]
}

fn facts(summary: &Value, number: usize) -> &Value {
    &step(summary, number)["facts"]
}

fn count(value: &Value) -> u64 {
    value.as_u64().expect("device count")
}

/// Returns the device counts of `[resource, count]` pairs by resource.
fn counts(list: &Value) -> Vec<(String, u64)> {
    list.as_array()
        .expect("count list")
        .iter()
        .map(|pair| {
            let resource = pair[0].as_str().expect("resource").to_string();
            (resource, count(&pair[1]))
        })
        .collect()
}

/// Lists processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn assert_nothing_left(summary: &Value, root: &Path) {
    assert!(!root.exists(), "{} is left behind", root.display());
    let left = processes_mentioning(&root.display().to_string());
    assert!(left.is_empty(), "processes left: {left:?}");
    if let Some(pid) = summary["agent_pid"].as_u64() {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let status = fs::read_to_string(proc_dir.join("cmdline")).unwrap_or_default();
        assert!(
            !status.contains("agent"),
            "agent process {pid} still runs: {status:?}"
        );
    }
}

#[test]
fn demo_steps_reach_their_states() {
    let (output, summary) = run_demo(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stderr}");
    assert_eq!(summary["ok"], true, "{summary:#}");
    let steps = summary["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 9, "{summary:#}");
    for step in steps {
        assert_eq!(step["ok"], true, "step failed: {step:#}");
        assert!(step["millis"].is_u64(), "{step:#}");
    }

    // Step 1 names the sets; step 2 sees one device per APQN of each.
    let sets = facts(&summary, 1)["sets"].as_array().expect("sets");
    assert_eq!(sets.len(), 2);
    let registered = counts(&facts(&summary, 2)["devices"]);
    for (set, (resource, devices)) in sets.iter().zip(&registered) {
        let name = set["name"].as_str().expect("set name");
        assert_eq!(resource, &format!("cex.s390.ibm.com/{name}"));
        let apqns = set["apqns"].as_array().expect("apqns").len() as u64;
        assert_eq!(*devices, apqns, "{resource}");
    }

    // Step 3: the zcrypt node reaches exactly the allocated APQN.
    let allocation = facts(&summary, 3);
    let adapter = allocation["adapter"].as_u64().expect("adapter");
    let domain = allocation["domain"].as_u64().expect("domain");
    assert_eq!(allocation["apmask_adapters"], serde_json::json!([adapter]));
    assert_eq!(allocation["aqmask_domains"], serde_json::json!([domain]));
    assert_eq!(allocation["admask_domains"], serde_json::json!([]));
    assert_eq!(allocation["ioctls"], 256);
    assert_eq!(allocation["device_spec"]["container_path"], "/dev/z90crypt");
    let device = allocation["device"].as_str().expect("device id");
    assert_eq!(device, format!("apqn-{adapter}-{domain}-0"));
    let shown: Vec<&str> = allocation["view_rows"]
        .as_array()
        .expect("view rows")
        .iter()
        .map(|row| row[0].as_str().expect("row id"))
        .collect();
    let card = format!("{adapter:02x}");
    let queue = format!("{adapter:02x}.{domain:04x}");
    assert_eq!(shown, vec![card.as_str(), queue.as_str()]);

    // Step 4: the mismatch names the device and the set's project.
    let mismatch = facts(&summary, 4);
    let project = mismatch["project"].as_str().expect("project");
    let line = mismatch["log_line"].as_str().expect("log line");
    assert!(line.starts_with("PodLister: Container"), "{line}");
    assert!(line.contains(device), "{line}");
    assert!(
        line.contains(&format!("marked for project {project}!")),
        "{line}"
    );

    // Step 5: the list shrinks while the card is out, then recovers.
    let unplug = facts(&summary, 5);
    assert!(
        count(&unplug["during"]) < count(&unplug["before"]),
        "{unplug:#}"
    );
    assert_eq!(unplug["after"], unplug["before"]);

    // Step 6: overcommit 3 triples the first set; a third set appears.
    let grown = facts(&summary, 6);
    let before = counts(&grown["before"]);
    let after = counts(&grown["after"]);
    assert_eq!(after.len(), 3);
    assert_eq!(after[0].1, 3 * before[0].1);
    assert_eq!(after[1], before[1]);
    assert_eq!(
        after[2].0,
        grown["new_resource"].as_str().expect("resource")
    );
    assert!(after[2].1 > 0);

    // Step 7: no devices while broken, the step-6 counts after repair.
    let broken = facts(&summary, 7);
    assert!(counts(&broken["broken"]).iter().all(|(_, n)| *n == 0));
    assert_eq!(counts(&broken["repaired"]), after);
    let error_line = broken["error_line"].as_str().expect("error line");
    assert!(error_line.starts_with("CryptoConfig: Error parsing config file"));
    let updated = broken["updated_line"].as_str().expect("updated line");
    assert!(updated.starts_with("CryptoConfig: updated configuration"));

    // Step 8: the pod's zcrypt node and shadow dir are removed.
    assert_eq!(facts(&summary, 8)["zcrypt_node_removed"], true);
    assert_eq!(facts(&summary, 8)["shadow_dir_removed"], true);

    // Step 9: clean stop, no sockets, no tree.
    let stop = facts(&summary, 9);
    assert_eq!(stop["exit_code"], 0);
    assert_eq!(stop["sockets_left"], serde_json::json!([]));
    assert_eq!(stop["root_removed"], true);
    let root = PathBuf::from(summary["root"].as_str().expect("root"));
    assert_nothing_left(&summary, &root);
}

#[test]
fn demo_keep_leaves_the_tree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kept = dir.path().join("node");
    let kept_arg = kept.display().to_string();
    let (output, summary) = run_demo(&["--quiet", "--keep", &kept_arg]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let kept = kept.canonicalize().expect("kept dir exists");
    assert_eq!(summary["kept"], kept.display().to_string());
    assert!(kept.join("sys/bus/ap").is_dir());
    assert!(kept.join("config/..data").is_symlink());
    assert!(kept.join("config/cex_resources.json").is_file());
    let left = processes_mentioning(&kept.display().to_string());
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[test]
fn unknown_machine_fails_with_names() {
    let (output, summary) = run_demo(&["--machine", "no-such-machine"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(summary["ok"], false);
    assert_eq!(step(&summary, 1)["ok"], false);
    let error = step(&summary, 1)["error"].as_str().expect("error");
    assert!(error.contains("\"no-such-machine\""), "{error}");
    assert!(error.contains("cex8-mixed-lpar"), "{error}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FAILED"), "{stderr}");
    assert!(summary["root"].is_null());
}

#[test]
fn one_mode_machine_fails_and_cleans_up() {
    let (output, summary) = run_demo(&["--machine", "zvm-guest-one-card"]);
    assert_eq!(output.status.code(), Some(1));
    let error = step(&summary, 1)["error"].as_str().expect("error");
    assert!(error.contains("zvm-guest-one-card"), "{error}");
    assert!(error.contains("three modes"), "{error}");
    assert_eq!(summary["steps"].as_array().expect("steps").len(), 1);
}
