//! The fake kernel on a laid-out node: create and destroy requests step
//! by step, the background thread, and the injected faults.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cex_sim::kernel::{FakeKernel, KernelEvent, Rejection};
use cex_sim::layout::lay_out;
use cex_sim::machines;

const ZERO_MASK: &str = "0x0000000000000000000000000000000000000000000000000000000000000000\n";

fn node() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = machines::by_name("cex8-mixed-lpar").expect("built in");
    lay_out(&machine, dir.path()).expect("lay out");
    dir
}

fn write_control(root: &Path, file: &str, text: &str) {
    fs::write(root.join("sys/class/zcrypt").join(file), text).expect("write control file");
}

fn assert_node_complete(root: &Path, name: &str, minor: u32) {
    let dir = root.join("sys/devices/virtual/zcrypt").join(name);
    for mask in ["apmask", "aqmask", "admask", "ioctlmask"] {
        assert_eq!(
            fs::read_to_string(dir.join(mask)).expect("mask"),
            ZERO_MASK,
            "{name} {mask}"
        );
    }
    assert_eq!(
        fs::read_to_string(dir.join("dev")).expect("dev"),
        format!("241:{minor}\n")
    );
    let link = root.join("sys/class/zcrypt").join(name);
    let target = fs::read_link(&link).expect("class link");
    assert_eq!(target, Path::new("../../devices/virtual/zcrypt").join(name));
    assert_eq!(
        link.canonicalize().expect("link resolves"),
        dir.canonicalize().expect("dir")
    );
    let dev = fs::metadata(root.join("dev").join(name)).expect("dev node");
    assert!(dev.is_file());
    assert_eq!(dev.len(), 0);
}

fn assert_node_absent(root: &Path, name: &str) {
    assert!(
        !root.join("sys/devices/virtual/zcrypt").join(name).exists(),
        "{name} dir"
    );
    assert!(
        fs::symlink_metadata(root.join("sys/class/zcrypt").join(name)).is_err(),
        "{name} link"
    );
    assert!(!root.join("dev").join(name).exists(), "{name} dev node");
}

fn control_is_empty(root: &Path, file: &str) -> bool {
    fs::read_to_string(root.join("sys/class/zcrypt").join(file))
        .expect("read")
        .is_empty()
}

#[test]
fn create_with_newline() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    write_control(dir.path(), "create", "zcrypt-apqn-0-41-0\n");
    let events = kernel.handle_pending_once().expect("handle");
    let created = KernelEvent::Created {
        name: "zcrypt-apqn-0-41-0".into(),
        minor: 0,
    };
    assert_eq!(events, vec![created]);
    assert_node_complete(dir.path(), "zcrypt-apqn-0-41-0", 0);
    assert!(control_is_empty(dir.path(), "create"));
}

#[test]
fn create_without_newline_and_with_spaces() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    write_control(dir.path(), "create", "  first");
    kernel.handle_pending_once().expect("handle");
    write_control(dir.path(), "create", "second \n");
    kernel.handle_pending_once().expect("handle");
    assert_node_complete(dir.path(), "first", 0);
    assert_node_complete(dir.path(), "second", 1);
}

#[test]
fn long_name_is_cut_to_31_characters() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    let long = "n".repeat(40);
    write_control(dir.path(), "create", &long);
    kernel.handle_pending_once().expect("handle");
    assert_node_complete(dir.path(), &long[..31], 0);
}

#[test]
fn empty_name_gets_minor_name() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    write_control(dir.path(), "create", "taken\n");
    kernel.handle_pending_once().expect("handle");
    write_control(dir.path(), "create", "\n");
    let events = kernel.handle_pending_once().expect("handle");
    assert_eq!(
        events,
        vec![KernelEvent::Created {
            name: "zcrypt_1".into(),
            minor: 1
        }]
    );
    assert_node_complete(dir.path(), "zcrypt_1", 1);
}

#[test]
fn duplicate_create_is_rejected() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    write_control(dir.path(), "create", "twice\n");
    kernel.handle_pending_once().expect("handle");
    write_control(dir.path(), "create", "twice\n");
    let events = kernel.handle_pending_once().expect("handle");
    let rejected = KernelEvent::CreateRejected {
        name: "twice".into(),
        reason: Rejection::Exists,
    };
    assert_eq!(events, vec![rejected]);
    assert_node_complete(dir.path(), "twice", 0);
    assert_eq!(
        fs::read_dir(dir.path().join("sys/devices/virtual/zcrypt"))
            .expect("list")
            .count(),
        1
    );
}

#[test]
fn unusable_name_is_rejected() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    write_control(dir.path(), "create", "../escape\n");
    let events = kernel.handle_pending_once().expect("handle");
    let reason = Rejection::InvalidName;
    assert_eq!(
        events,
        vec![KernelEvent::CreateRejected {
            name: "../escape".into(),
            reason
        }]
    );
    assert!(!dir.path().join("sys/devices/virtual/escape").exists());
}

#[test]
fn destroy_removes_node_and_frees_minor() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    write_control(dir.path(), "create", "a\nb\n");
    kernel.handle_pending_once().expect("handle");
    write_control(dir.path(), "destroy", "a");
    let events = kernel.handle_pending_once().expect("handle");
    assert_eq!(events, vec![KernelEvent::Destroyed { name: "a".into() }]);
    assert_node_absent(dir.path(), "a");
    assert_node_complete(dir.path(), "b", 1);
    assert!(control_is_empty(dir.path(), "destroy"));
    write_control(dir.path(), "create", "c\n");
    kernel.handle_pending_once().expect("handle");
    assert_node_complete(dir.path(), "c", 0);
}

#[test]
fn unknown_destroy_is_rejected() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    write_control(dir.path(), "destroy", "ghost\n");
    let events = kernel.handle_pending_once().expect("handle");
    let reason = Rejection::NotFound;
    assert_eq!(
        events,
        vec![KernelEvent::DestroyRejected {
            name: "ghost".into(),
            reason
        }]
    );
    assert!(control_is_empty(dir.path(), "destroy"));
}

#[test]
fn minors_exhausted_after_256_nodes() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    let names: String = (0..256).map(|index| format!("node-{index}\n")).collect();
    write_control(dir.path(), "create", &names);
    let events = kernel.handle_pending_once().expect("handle");
    assert_eq!(events.len(), 256);
    assert!(events
        .iter()
        .all(|event| matches!(event, KernelEvent::Created { .. })));
    assert_node_complete(dir.path(), "node-255", 255);

    write_control(dir.path(), "create", "one-more\n");
    let events = kernel.handle_pending_once().expect("handle");
    let reason = Rejection::NoFreeMinor;
    assert_eq!(
        events,
        vec![KernelEvent::CreateRejected {
            name: "one-more".into(),
            reason
        }]
    );
    assert_node_absent(dir.path(), "one-more");

    write_control(dir.path(), "destroy", "node-7\n");
    kernel.handle_pending_once().expect("handle");
    write_control(dir.path(), "create", "one-more\n");
    let events = kernel.handle_pending_once().expect("handle");
    assert_eq!(
        events,
        vec![KernelEvent::Created {
            name: "one-more".into(),
            minor: 7
        }]
    );
}

#[test]
fn injected_create_failure_leaves_no_node() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    kernel.fail_next_create();
    write_control(dir.path(), "create", "doomed\n");
    let events = kernel.handle_pending_once().expect("handle");
    let reason = Rejection::Injected;
    assert_eq!(
        events,
        vec![KernelEvent::CreateRejected {
            name: "doomed".into(),
            reason
        }]
    );
    assert_node_absent(dir.path(), "doomed");
    write_control(dir.path(), "create", "doomed\n");
    kernel.handle_pending_once().expect("handle");
    assert_node_complete(dir.path(), "doomed", 0);
}

#[test]
fn delayed_dev_node_appears_later() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    kernel.set_dev_node_delay(Some(Duration::from_millis(200)));
    write_control(dir.path(), "create", "slow\n");
    kernel.handle_pending_once().expect("handle");
    assert!(dir
        .path()
        .join("sys/devices/virtual/zcrypt/slow/dev")
        .is_file());
    assert!(
        !dir.path().join("dev/slow").exists(),
        "dev node before the delay"
    );
    std::thread::sleep(Duration::from_millis(250));
    kernel.handle_pending_once().expect("handle");
    assert_node_complete(dir.path(), "slow", 0);
}

#[test]
fn node_without_multinode_support_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = machines::by_name("no-ap-bus").expect("built in");
    lay_out(&machine, dir.path()).expect("lay out");
    let error = FakeKernel::new(dir.path()).expect_err("no zcrypt class");
    assert!(
        error.to_string().contains("sys/class/zcrypt/create"),
        "{error}"
    );
}

fn wait_for(path: &Path, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() != present {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn background_kernel_serves_writes() {
    let dir = node();
    let kernel = FakeKernel::new(dir.path()).expect("kernel");
    let running = kernel.start().expect("start");
    for index in 0..5 {
        let name = format!("zcrypt-apqn-0-41-{index}");
        write_control(dir.path(), "create", &name);
        wait_for(&dir.path().join("dev").join(&name), true);
        assert_node_complete(dir.path(), &name, index);
    }
    kernel.fail_next_create();
    write_control(dir.path(), "create", "never\n");
    let root = dir.path().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !control_is_empty(&root, "create") {
        assert!(Instant::now() < deadline, "create request not consumed");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_node_absent(dir.path(), "never");
    write_control(dir.path(), "destroy", "zcrypt-apqn-0-41-0\n");
    wait_for(&dir.path().join("dev/zcrypt-apqn-0-41-0"), false);
    running.stop();
    write_control(dir.path(), "create", "after-stop\n");
    std::thread::sleep(Duration::from_millis(100));
    assert_node_absent(dir.path(), "after-stop");
}
