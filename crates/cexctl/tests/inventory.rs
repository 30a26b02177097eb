//! `cexctl inventory` on simulated nodes: the JSON output of every built-in
//! machine compared with its description, set membership from a config,
//! the table, a node without an AP bus and sysfs entries the scan skips.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cex_ap::Apqn;
use cex_sim::layout::lay_out;
use cex_sim::machines::{self, Machine};
use serde_json::Value;

fn cexctl_inventory(root: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .arg("inventory")
        .arg("--root")
        .arg(root)
        .args(extra)
        .output()
        .expect("run cexctl inventory")
}

fn inventory_json(root: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    let output = cexctl_inventory(root, &args);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Creates a temp dir on tmpfs when `/dev/shm` is usable, because the scale
/// machine writes about 100 000 files.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = shm
        .is_dir()
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten();
    on_tmpfs.unwrap_or_else(|| tempfile::tempdir().expect("temp dir"))
}

/// Lays out the built-in machine `name` in `dir/node` and returns it.
fn lay_out_machine(dir: &Path, name: &str) -> Machine {
    let machine = machines::by_name(name).expect("built in");
    lay_out(&machine, &dir.join("node")).expect("lay out");
    machine
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("cex_resources.json");
    fs::write(&path, text).expect("write config");
    path.to_str().expect("UTF-8 temp path").to_string()
}

/// Returns the `sets` array of the APQN `apqn` in an inventory report.
fn sets_of(report: &Value, apqn: Apqn) -> Vec<Value> {
    let entries = report["apqns"].as_array().expect("apqns array");
    let entry = entries
        .iter()
        .find(|entry| entry["apqn"] == Value::String(apqn.to_string()))
        .unwrap_or_else(|| panic!("APQN {apqn} not listed"));
    entry["sets"].as_array().expect("sets array").clone()
}

fn optional_flag(present: bool, value: bool) -> Value {
    if present {
        Value::Bool(value)
    } else {
        Value::Null
    }
}

fn check_machine(machine: &Machine) {
    let dir = scratch_dir();
    lay_out(machine, dir.path()).expect("lay out");
    let report = inventory_json(dir.path(), &[]);

    let name = &machine.name;
    assert_eq!(
        report["machine_id"],
        Value::String(machine.machine_id()),
        "{name}"
    );
    assert_eq!(
        report["ap_bus"],
        Value::Bool(machine.ap_bus.is_some()),
        "{name}"
    );
    assert_eq!(report["problems"], Value::Array(Vec::new()), "{name}");

    let entries = report["apqns"].as_array().expect("apqns array");
    let expected = machine.apqns();
    assert_eq!(entries.len(), expected.len(), "{name}: APQN count");
    let has_state_files = machine.kernel.config_chkstop;
    for (entry, (apqn, (card, queue))) in entries.iter().zip(&expected) {
        let what = format!("{name} {apqn}");
        assert_eq!(entry["apqn"], Value::String(apqn.to_string()), "{what}");
        assert_eq!(entry["adapter"], Value::from(apqn.adapter), "{what}");
        assert_eq!(entry["domain"], Value::from(apqn.domain), "{what}");
        assert_eq!(
            entry["card_type"],
            Value::String(card.card_type.to_string()),
            "{what}"
        );
        assert_eq!(
            entry["generation"],
            Value::from(card.card_type.generation),
            "{what}"
        );
        assert_eq!(
            entry["mode"],
            Value::String(card.mode().to_string()),
            "{what}"
        );
        assert_eq!(entry["online"], Value::Bool(queue.reads_online()), "{what}");
        assert_eq!(
            entry["card_online"],
            Value::Bool(card.reads_online()),
            "{what}"
        );
        assert_eq!(
            entry["config"],
            optional_flag(has_state_files, queue.config),
            "{what}"
        );
        assert_eq!(
            entry["chkstop"],
            optional_flag(has_state_files, queue.chkstop),
            "{what}"
        );
        let usable = queue.reads_online() && card.reads_online() && queue.config && !queue.chkstop;
        assert_eq!(entry["usable"], Value::Bool(usable), "{what}");
    }
}

#[test]
fn inventory_matches_every_machine() {
    for name in machines::names() {
        check_machine(&machines::by_name(name).expect("built in"));
    }
}

#[test]
fn inventory_names_sets_per_machine_id() {
    let dir = scratch_dir();
    let machine = lay_out_machine(dir.path(), "cex8-mixed-lpar");
    let text = format!(
        r#"{{ "cryptoconfigsets": [
            {{ "setname": "ep11-set", "project": "blue", "cexmode": "ep11",
               "apqns": [ {{ "adapter": 4, "domain": 41 }}, {{ "adapter": 0, "domain": 41 }} ] }},
            {{ "setname": "pinned", "project": "red",
               "apqns": [ {{ "adapter": 3, "domain": 17, "machineid": "{}" }},
                          {{ "adapter": 2, "domain": 42, "machineid": "IBM-3906-0000000000000001" }},
                          {{ "adapter": 9, "domain": 9, "machineid": "" }} ] }} ] }}"#,
        machine.machine_id()
    );
    let config = write_config(dir.path(), &text);
    let report = inventory_json(&dir.path().join("node"), &["--config", &config]);

    let on_ep11 = sets_of(&report, Apqn::new(4, 41));
    assert_eq!(on_ep11.len(), 1);
    assert_eq!(on_ep11[0]["setname"], "ep11-set");
    assert_eq!(on_ep11[0]["eligible"], true);
    assert_eq!(on_ep11[0]["reason"], Value::Null);

    let on_cca = sets_of(&report, Apqn::new(0, 41));
    assert_eq!(on_cca[0]["setname"], "ep11-set");
    assert_eq!(on_cca[0]["eligible"], false);
    let reason = on_cca[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("card mode cca"), "{reason}");
    assert!(reason.contains("cexmode ep11"), "{reason}");

    assert_eq!(sets_of(&report, Apqn::new(3, 17))[0]["setname"], "pinned");
    assert!(
        sets_of(&report, Apqn::new(2, 42)).is_empty(),
        "an entry pinned to another machine was applied"
    );
    assert!(sets_of(&report, Apqn::new(4, 42)).is_empty());

    let absent = report["absent_config_apqns"]
        .as_array()
        .expect("absent list");
    assert_eq!(absent.len(), 1);
    assert_eq!(absent[0]["setname"], "pinned");
    assert_eq!(absent[0]["apqn"], "09.0009");
}

#[test]
fn inventory_names_old_generation() {
    let dir = scratch_dir();
    lay_out_machine(dir.path(), "cex5-cex6-older-lpar");
    let config = write_config(
        dir.path(),
        r#"{ "cryptoconfigsets": [
            { "setname": "new-cca", "project": "blue", "mincexgen": "cex6",
              "apqns": [ { "adapter": 4, "domain": 19 }, { "adapter": 10, "domain": 19 } ] } ] }"#,
    );
    let report = inventory_json(&dir.path().join("node"), &["--config", &config]);

    let on_cex5 = sets_of(&report, Apqn::new(4, 19));
    assert_eq!(on_cex5[0]["eligible"], false);
    assert_eq!(
        on_cex5[0]["reason"],
        "card generation cex5, set mincexgen cex6"
    );
    let on_cex6 = sets_of(&report, Apqn::new(10, 19));
    assert_eq!(on_cex6[0]["eligible"], true);
}

#[test]
fn inventory_table_shows_hex_and_sets() {
    let dir = scratch_dir();
    let machine = lay_out_machine(dir.path(), "cex8-mixed-lpar");
    let config = write_config(
        dir.path(),
        r#"{ "cryptoconfigsets": [
            { "setname": "ep11-set", "project": "blue", "cexmode": "ep11",
              "apqns": [ { "adapter": 4, "domain": 42 }, { "adapter": 0, "domain": 42 },
                         { "adapter": 7, "domain": 1 } ] } ] }"#,
    );
    let output = cexctl_inventory(&dir.path().join("node"), &["--config", &config]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);

    assert!(
        text.starts_with(&format!("machine id: {}\n", machine.machine_id())),
        "{text}"
    );
    let header = text.lines().nth(1).expect("header line");
    for column in [
        "APQN", "ADAPTER", "DOMAIN", "GEN", "MODE", "ONLINE", "CONFIG", "CHKSTOP", "SETS",
    ] {
        assert!(header.contains(column), "{header}");
    }

    let row = |apqn: &str| {
        text.lines()
            .find(|line| line.starts_with(apqn))
            .unwrap_or_else(|| panic!("no row for {apqn} in:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        row("04.002a"),
        "04.002a 0x04 (4) 0x002a (42) cex8 ep11 yes yes no ep11-set"
    );
    assert_eq!(
        row("00.002a"),
        "00.002a 0x00 (0) 0x002a (42) cex8 cca yes yes no ep11-set (not announced: card mode \
         cca, set cexmode ep11)"
    );
    assert_eq!(
        row("03.0011"),
        "03.0011 0x03 (3) 0x0011 (17) cex8 ep11 yes yes no -"
    );

    let count = format!("{} APQNs", machine.apqn_count());
    assert!(text.lines().any(|line| line == count), "{text}");
    assert!(
        text.lines()
            .any(|line| line == "set ep11-set: APQN 07.0001 is not on this node"),
        "{text}"
    );
}

#[test]
fn inventory_without_ap_bus_is_empty() {
    let dir = scratch_dir();
    let machine = lay_out_machine(dir.path(), "no-ap-bus");
    let root = dir.path().join("node");
    let devices = root.join("sys/devices/ap");
    let message = format!(
        "no AP bus on this node: {} does not exist",
        devices.display()
    );

    let output = cexctl_inventory(&root, &[]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(
        text.contains(&format!("machine id: {}", machine.machine_id())),
        "{text}"
    );
    assert!(text.contains(&message), "{text}");

    let output = cexctl_inventory(&root, &["--output", "json"]);
    assert!(output.status.success(), "{output:?}");
    assert!(stderr(&output).contains(&message), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(report["ap_bus"], false);
    assert_eq!(report["apqns"], Value::Array(Vec::new()));
}

#[test]
fn inventory_warns_on_skipped_queue() {
    let dir = scratch_dir();
    lay_out_machine(dir.path(), "cex8-mixed-lpar");
    let root = dir.path().join("node");
    let online = root.join("sys/devices/ap/card04/04.0029/online");
    fs::write(&online, "maybe\n").expect("overwrite online");

    let output = cexctl_inventory(&root, &["--output", "json"]);
    assert!(output.status.success(), "{output:?}");
    let warnings = stderr(&output);
    let path = online.display().to_string();
    assert!(
        warnings
            .lines()
            .any(|line| line.starts_with("warning: skipped") && line.contains(&path)),
        "{warnings}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    let problems = report["problems"].as_array().expect("problems array");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let problem = problems[0].as_str().expect("problem text");
    assert!(problem.starts_with(&path), "{problem}");
    assert!(problem.contains("maybe"), "{problem}");
    let apqns = report["apqns"].as_array().expect("apqns array");
    assert!(apqns.iter().all(|entry| entry["apqn"] != "04.0029"));
    assert!(apqns.iter().any(|entry| entry["apqn"] == "04.002a"));
}

#[test]
fn inventory_reads_configmap_directory() {
    let dir = scratch_dir();
    lay_out_machine(dir.path(), "cex8-mixed-lpar");
    // A mounted ConfigMap: the key is a symlink into a `..data` directory.
    let mount = dir.path().join("config");
    let data = mount.join("..2024_01_01_00_00_00.000000000");
    fs::create_dir_all(&data).expect("create data dir");
    fs::write(
        data.join("cex_resources.json"),
        r#"{ "cryptoconfigsets": [ { "setname": "any", "project": "blue", "colour": "red",
             "apqns": [ { "adapter": 3, "domain": 17 } ] } ] }"#,
    )
    .expect("write config");
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.000000000", mount.join("..data"))
        .expect("link ..data");
    std::os::unix::fs::symlink(
        "..data/cex_resources.json",
        mount.join("cex_resources.json"),
    )
    .expect("link key");

    let mount_arg = mount.to_str().expect("UTF-8 temp path");
    let output = cexctl_inventory(
        &dir.path().join("node"),
        &["--output", "json", "--config", mount_arg],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(stderr(&output).contains("\"colour\""), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(sets_of(&report, Apqn::new(3, 17))[0]["setname"], "any");
}

#[test]
fn inventory_rejects_invalid_config() {
    let dir = scratch_dir();
    lay_out_machine(dir.path(), "cex8-mixed-lpar");
    let config = write_config(
        dir.path(),
        r#"{ "cryptoconfigsets": [ { "setname": "blue", "project": "blue",
             "apqns": [ { "adapter": 300, "domain": 1 } ] } ] }"#,
    );
    let output = cexctl_inventory(&dir.path().join("node"), &["--config", &config]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = stderr(&output);
    assert!(
        message.contains("set \"blue\": apqns[0]: adapter 300 is out of range 0-255"),
        "{message}"
    );
    assert!(stdout(&output).is_empty(), "{output:?}");
}

#[test]
fn inventory_rejects_missing_root() {
    let dir = scratch_dir();
    let root = dir.path().join("absent");
    let output = cexctl_inventory(&root, &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let expected = format!("node root {} is not a directory", root.display());
    assert!(stderr(&output).contains(&expected), "{output:?}");
}
