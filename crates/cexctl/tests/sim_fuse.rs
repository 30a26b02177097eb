//! `cexctl sim node --fuse`: the node served through FUSE by the binary.
//! A write to `create` makes the node before it returns, a bad mask gets
//! EINVAL, and SIGTERM unmounts.
//!
//! The test prints `SKIPPED: <reason>` and passes when the host cannot
//! mount FUSE file systems.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous wait for a mount or an exit that takes milliseconds.
const WAIT: Duration = Duration::from_secs(20);
/// Linux errno of a rejected value, the same on every architecture.
const EINVAL: i32 = 22;

/// A running `cexctl sim node --fuse`. Dropping it kills the process and
/// detaches any mount left behind, so a failing test leaves no stale mount.
struct Served {
    child: Child,
    root: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.root) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.root)
                .status();
        }
    }
}

impl Served {
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(stderr) = self.child.stderr.as_mut() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }

    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("send SIGTERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait for cexctl") {
                return exit;
            }
            assert!(Instant::now() < deadline, "cexctl ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reports whether `path` is a mount point, from `/proc/self/mountinfo`
/// (field 5 is the mount point).
fn is_mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let expected = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| point == expected)
}

/// Starts the binary and waits for the AP bus to appear in the mount.
/// Returns `None` after printing `SKIPPED` when FUSE is not available.
fn serve(machine: &str, root: &Path, test: &str) -> Option<Served> {
    let child = Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .args(["sim", "node", "--machine", machine, "--fuse", "--root"])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cexctl sim node --fuse");
    let mut served = Served {
        child,
        root: root.to_path_buf(),
    };
    let deadline = Instant::now() + WAIT;
    while !root.join("sys/devices/ap").is_dir() {
        if let Some(exit) = served.child.try_wait().expect("poll cexctl") {
            let stderr = served.stderr();
            if stderr.contains("FUSE is not available") {
                println!("SKIPPED: {test}: {}", stderr.trim());
                return None;
            }
            panic!("cexctl exited with {exit} before mounting: {stderr}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for the mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(served)
}

/// Writes `value` with one `write()` and returns the errno, if any.
fn write_errno(path: &Path, value: &str) -> Option<i32> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .err()
        .map(|error| error.raw_os_error().expect("an OS error"))
}

#[test]
fn fuse_node_serves_create_and_unmounts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("node");
    let Some(mut served) = serve(
        "cex8-mixed-lpar",
        &root,
        "fuse_node_serves_create_and_unmounts",
    ) else {
        return;
    };
    assert!(is_mounted(&root), "{} is no mount point", root.display());
    assert!(root.join("sys/devices/ap/card04/04.002a").is_dir());

    let name = "zcrypt-apqn-4-42-0";
    assert_eq!(
        write_errno(&root.join("sys/class/zcrypt/create"), &format!("{name}\n")),
        None
    );
    // No polling: the node exists as soon as the write returned.
    let attr_dir = root.join("sys/devices/virtual/zcrypt").join(name);
    assert!(attr_dir.join("apmask").is_file(), "no attribute dir");
    let dev = fs::symlink_metadata(root.join("dev").join(name)).expect("dev node");
    assert!(dev.file_type().is_char_device());

    let before = fs::read_to_string(attr_dir.join("apmask")).expect("apmask");
    assert_eq!(
        write_errno(&attr_dir.join("apmask"), "0xnot-a-mask\n"),
        Some(EINVAL)
    );
    assert_eq!(
        fs::read_to_string(attr_dir.join("apmask")).expect("apmask"),
        before,
        "a rejected mask changed the node"
    );
    assert_eq!(write_errno(&attr_dir.join("apmask"), "+4\n"), None);

    let exit = served.terminate();
    assert!(exit.success(), "{exit:?}: {}", served.stderr());
    assert!(!is_mounted(&root), "mount left after SIGTERM");
    assert!(!root.join("sys").exists(), "node files left after SIGTERM");
}

#[test]
fn fuse_conflicts_with_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_cexctl"))
        .args(["sim", "node", "--machine", "cex7-lpar", "--fuse", "--once"])
        .arg("--root")
        .arg(dir.path())
        .output()
        .expect("run cexctl");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--once"), "{stderr}");
}
