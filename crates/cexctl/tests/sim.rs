//! `cexctl sim`: laying out machines through the binary, listing them,
//! and the fake kernel of a running `sim node`.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cex_sim::machines;

fn cexctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .args(args)
        .output()
        .expect("run cexctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn machines_lists_every_builtin() {
    let output = cexctl(&["sim", "machines"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    for machine in machines::all() {
        let line = text
            .lines()
            .find(|line| line.split_whitespace().next() == Some(machine.name.as_str()))
            .unwrap_or_else(|| panic!("{} missing from:\n{text}", machine.name));
        assert!(line.ends_with(&machine.summary), "{line}");
        assert!(
            line.contains(&format!("{} APQNs", machine.apqn_count())),
            "{line}"
        );
    }
}

#[test]
fn node_help_lists_machine_names() {
    let output = cexctl(&["sim", "node", "--help"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    for name in machines::names() {
        assert!(text.contains(name), "{name} missing from help:\n{text}");
    }
}

#[test]
fn node_once_lays_out_the_machine() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("node");
    let root_text = root.to_str().expect("utf-8 path");
    let output = cexctl(&[
        "sim",
        "node",
        "--machine",
        "degraded-cex6-node",
        "--root",
        root_text,
        "--once",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains("IBM-3906-00000000000E27C3"),
        "{}",
        stdout(&output)
    );
    let devices = root.join("sys/devices/ap");
    assert_eq!(
        fs::read_to_string(devices.join("card09/online")).expect("read"),
        "0\n"
    );
    assert_eq!(
        fs::read_to_string(devices.join("card0a/0a.0034/chkstop")).expect("read"),
        "1\n"
    );

    let again = cexctl(&[
        "sim",
        "node",
        "--machine",
        "cex7-lpar",
        "--root",
        root_text,
        "--once",
    ]);
    assert!(
        !again.status.success(),
        "second layout over a node must fail"
    );
    let forced = cexctl(&[
        "sim",
        "node",
        "--machine",
        "cex7-lpar",
        "--root",
        root_text,
        "--once",
        "--force",
    ]);
    assert!(forced.status.success(), "{forced:?}");
    assert!(devices.join("card0c").is_dir());
    assert!(!devices.join("card09").exists());
}

#[test]
fn node_rejects_unknown_machine() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_str().expect("utf-8 path");
    let output = cexctl(&[
        "sim",
        "node",
        "--machine",
        "z99-lpar",
        "--root",
        root,
        "--once",
    ]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("z99-lpar"));
}

#[test]
fn node_reads_description_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tiny.json");
    fs::write(
        &file,
        r#"{"name": "tiny", "summary": "one card",
            "sysinfo": {"manufacturer": "IBM", "type": "3931", "model": "m",
              "model_capacity": "c", "sequence_code": "0000000000000042", "plant": "02"},
            "ap_bus": {}, "cards": [{"adapter": 5, "type": "CEX8P", "domains": [7]}]}"#,
    )
    .expect("write description");
    let root = dir.path().join("node");
    let output = cexctl(&[
        "sim",
        "node",
        "--machine-file",
        file.to_str().expect("utf-8"),
        "--root",
        root.to_str().expect("utf-8"),
        "--once",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert!(root.join("sys/devices/ap/card05/05.0007").is_dir());
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn running_node_serves_zcrypt_create() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("node");
    let child = Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .args(["sim", "node", "--machine", "zvm-guest-one-card", "--root"])
        .arg(&root)
        .stdout(Stdio::null())
        .spawn()
        .expect("start cexctl sim node");
    let mut running = Running(child);
    wait_for(&root.join("sys/class/zcrypt/create"));
    // The kernel thread starts after the layout; a write that lands before
    // it watches is still handled by its first poll.
    fs::write(root.join("sys/class/zcrypt/create"), "zcrypt-apqn-8-49-0\n").expect("write create");
    wait_for(&root.join("dev/zcrypt-apqn-8-49-0"));
    let dev = fs::read_to_string(root.join("sys/devices/virtual/zcrypt/zcrypt-apqn-8-49-0/dev"));
    assert_eq!(dev.expect("dev file"), "241:0\n");

    let pid = running.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exit = running.0.wait().expect("wait for cexctl");
    assert!(exit.success(), "{exit:?}");
}
