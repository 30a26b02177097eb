//! The FUSE-served simulated node seen through plain `std::fs` calls. The
//! tests cover each kernel error path with its real errno, zcrypt node
//! create and destroy, masks read back, and the online and config state
//! machine. They also check that the tree, the scanned inventory and the
//! `lszcrypt` output equal those of the plain-file layout of the machine.
//!
//! Each test prints `SKIPPED: <reason>` and passes when the host cannot
//! mount FUSE file systems.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cex_ap::{Apqn, Mask256};
use cex_sim::fuse::{CreateFault, FuseError, FuseNode};
use cex_sim::machines;

/// A mounted node with its mount point; the node unmounts first.
struct Mounted {
    node: FuseNode,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn path(&self, relative: &str) -> PathBuf {
        self.node.root().join(relative)
    }
}

fn mount(machine: &str, test: &str) -> Option<Mounted> {
    let machine = machines::by_name(machine).expect("built-in machine");
    let dir = tempfile::tempdir().expect("temp dir");
    match FuseNode::mount(machine, dir.path()) {
        Ok(node) => Some(Mounted { node, _dir: dir }),
        Err(FuseError::Unavailable { reason }) => {
            println!("SKIPPED: {test}: {reason}");
            None
        }
        Err(error) => panic!("mount failed: {error}"),
    }
}

/// Writes `value` with one `write()` on a file opened with truncation, as
/// the agent does, and returns the errno of the open or the write.
fn write_errno(path: &Path, value: &str) -> Option<i32> {
    let result = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write(value.as_bytes()));
    match result {
        Ok(written) => {
            assert_eq!(written, value.len(), "short write to {}", path.display());
            None
        }
        Err(error) => Some(error.raw_os_error().expect("an OS error")),
    }
}

fn write_ok(path: &Path, value: &str) {
    assert_eq!(
        write_errno(path, value),
        None,
        "write {value:?} to {}",
        path.display()
    );
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn read_mask(path: &Path) -> Mask256 {
    let text = read(path);
    assert_eq!(text.len(), 67, "{}: {text:?}", path.display());
    Mask256::parse_kernel(&text, &Mask256::empty()).expect("mask parses")
}

fn names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .unwrap_or_else(|error| panic!("list {}: {error}", path.display()))
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

// === zcrypt nodes ===

#[test]
fn create_and_destroy_round_trip() {
    let Some(node) = mount("cex8-mixed-lpar", "create_and_destroy_round_trip") else {
        return;
    };
    write_ok(
        &node.path("sys/class/zcrypt/create"),
        "zcrypt-apqn-4-42-0\n",
    );

    let attr_dir = node.path("sys/devices/virtual/zcrypt/zcrypt-apqn-4-42-0");
    for mask in ["apmask", "aqmask", "admask", "ioctlmask"] {
        assert_eq!(read_mask(&attr_dir.join(mask)), Mask256::empty(), "{mask}");
    }
    assert_eq!(read(&attr_dir.join("dev")), "241:0\n");
    let dev = node.path("dev/zcrypt-apqn-4-42-0");
    let meta = fs::symlink_metadata(&dev).expect("dev node");
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), libc::makedev(241, 0));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let link = node.path("sys/class/zcrypt/zcrypt-apqn-4-42-0");
    assert_eq!(
        fs::read_link(&link).expect("class link"),
        Path::new("../../devices/virtual/zcrypt/zcrypt-apqn-4-42-0")
    );
    assert!(fs::canonicalize(&link)
        .expect("link resolves")
        .ends_with("zcrypt-apqn-4-42-0"));

    fs::set_permissions(&dev, fs::Permissions::from_mode(0o666)).expect("chmod");
    let mode = fs::symlink_metadata(&dev)
        .expect("dev node")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);

    write_ok(
        &node.path("sys/class/zcrypt/destroy"),
        "zcrypt-apqn-4-42-0\n",
    );
    assert!(!attr_dir.exists());
    assert!(fs::symlink_metadata(&dev).is_err());
    assert!(fs::symlink_metadata(&link).is_err());
    assert_eq!(names(&node.path("dev")), ["z90crypt"]);
    assert!(node.node.control().zcrypt_node_names().is_empty());
}

#[test]
fn create_and_destroy_errors() {
    let Some(node) = mount("cex8-mixed-lpar", "create_and_destroy_errors") else {
        return;
    };
    let create = node.path("sys/class/zcrypt/create");
    let destroy = node.path("sys/class/zcrypt/destroy");
    write_ok(&create, "  first \n");
    assert_eq!(write_errno(&create, "first"), Some(libc::EEXIST));
    assert_eq!(write_errno(&destroy, "second\n"), Some(libc::ENOENT));
    assert_eq!(names(&node.path("sys/devices/virtual/zcrypt")), ["first"]);

    // An empty name takes the first free minor as its name.
    write_ok(&create, "\n");
    assert!(node.path("sys/devices/virtual/zcrypt/zcrypt_1").is_dir());
    for index in 2..256 {
        write_ok(&create, &format!("node-{index}\n"));
    }
    assert_eq!(write_errno(&create, "one-too-many\n"), Some(libc::ENOSPC));
    assert!(!node
        .path("sys/devices/virtual/zcrypt/one-too-many")
        .exists());
    assert_eq!(names(&node.path("sys/devices/virtual/zcrypt")).len(), 256);

    // A freed minor is taken again.
    write_ok(&destroy, "node-77\n");
    write_ok(&create, "again\n");
    assert_eq!(
        read(&node.path("sys/devices/virtual/zcrypt/again/dev")),
        "241:77\n"
    );
}

#[test]
fn control_files_are_write_only() {
    let Some(node) = mount("cex8-mixed-lpar", "control_files_are_write_only") else {
        return;
    };
    for file in ["create", "destroy"] {
        let path = node.path(&format!("sys/class/zcrypt/{file}"));
        let error = fs::read(&path).expect_err("write-only");
        assert_eq!(error.raw_os_error(), Some(libc::EACCES), "{file}");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o200, "{file}");
    }
}

#[test]
fn node_masks_read_back() {
    let Some(node) = mount("cex8-mixed-lpar", "node_masks_read_back") else {
        return;
    };
    write_ok(&node.path("sys/class/zcrypt/create"), "masked\n");
    let dir = node.path("sys/devices/virtual/zcrypt/masked");

    write_ok(&dir.join("apmask"), "+4\n");
    write_ok(&dir.join("aqmask"), &format!("{}\n", Mask256::single(42)));
    write_ok(&dir.join("ioctlmask"), "+0-255");
    write_ok(&dir.join("admask"), "0x8");
    assert_eq!(read_mask(&dir.join("apmask")), Mask256::single(4));
    assert_eq!(read_mask(&dir.join("aqmask")), Mask256::single(42));
    assert_eq!(read_mask(&dir.join("ioctlmask")), Mask256::full());
    assert_eq!(read_mask(&dir.join("admask")), Mask256::single(0));

    for bad in [
        "+256\n",
        "+5-3",
        "0xzz",
        &format!("0x{}", "f".repeat(65)),
        "+",
    ] {
        assert_eq!(
            write_errno(&dir.join("apmask"), bad),
            Some(libc::EINVAL),
            "{bad:?}"
        );
        assert_eq!(
            read_mask(&dir.join("apmask")),
            Mask256::single(4),
            "after {bad:?}"
        );
    }
    assert_eq!(write_errno(&dir.join("dev"), "1:1\n"), Some(libc::EACCES));
}

#[test]
fn injected_create_faults() {
    let Some(node) = mount("cex8-mixed-lpar", "injected_create_faults") else {
        return;
    };
    let control = node.node.control();
    let create = node.path("sys/class/zcrypt/create");
    let nodes_dir = node.path("sys/devices/virtual/zcrypt");

    control.fail_next_create(CreateFault::Errno(libc::ENOMEM));
    assert_eq!(write_errno(&create, "refused\n"), Some(libc::ENOMEM));
    control.fail_next_create(CreateFault::Silent);
    write_ok(&create, "lost\n");
    assert!(names(&nodes_dir).is_empty());

    control.set_dev_node_delay(Some(Duration::from_millis(300)));
    let start = Instant::now();
    write_ok(&create, "late\n");
    assert!(
        nodes_dir.join("late").is_dir(),
        "attribute dir is made at once"
    );
    let mut appeared = false;
    while start.elapsed() < Duration::from_secs(10) {
        if node.path("dev/late").symlink_metadata().is_ok() {
            appeared = true;
            break;
        }
        assert_eq!(names(&node.path("dev")), ["z90crypt"]);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(appeared, "the delayed /dev node never appeared");
    assert!(start.elapsed() >= Duration::from_millis(300));
}

// === AP bus attributes ===

#[test]
fn bus_masks_and_domain() {
    let Some(node) = mount("cex8-mixed-lpar", "bus_masks_and_domain") else {
        return;
    };
    let apmask = node.path("sys/bus/ap/apmask");
    let aqmask = node.path("sys/bus/ap/aqmask");
    assert_eq!(read_mask(&apmask), Mask256::full());

    write_ok(&apmask, "-0-255\n");
    assert_eq!(read_mask(&apmask), Mask256::empty());
    write_ok(&apmask, "+1,+3-5,-4");
    assert_eq!(read_mask(&apmask).bits().collect::<Vec<_>>(), [1, 3, 5]);
    assert_eq!(write_errno(&apmask, "+1,+x"), Some(libc::EINVAL));
    assert_eq!(read_mask(&apmask).bits().collect::<Vec<_>>(), [1, 3, 5]);

    write_ok(&aqmask, "0x0000000000400000");
    assert_eq!(read_mask(&aqmask), Mask256::single(41));
    let domain = node.path("sys/bus/ap/ap_domain");
    write_ok(&domain, "0x29\n");
    assert_eq!(read(&domain), "41\n");
    assert_eq!(
        write_errno(&domain, "42\n"),
        Some(libc::EINVAL),
        "domain not in aqmask"
    );
    assert_eq!(read(&domain), "41\n");

    let config_time = node.path("sys/bus/ap/config_time");
    assert_eq!(write_errno(&config_time, "4\n"), Some(libc::EINVAL));
    write_ok(&config_time, "60\n");
    assert_eq!(read(&config_time), "60\n");
    let scans = node.path("sys/bus/ap/scans");
    let before: u64 = read(&scans).trim().parse().expect("scans");
    write_ok(&scans, "1\n");
    assert_eq!(read(&scans), format!("{}\n", before + 1));
}

#[test]
fn read_only_files_reject_writes() {
    let Some(node) = mount("cex8-mixed-lpar", "read_only_files_reject_writes") else {
        return;
    };
    let files = [
        "sys/bus/ap/ap_max_domain_id",
        "sys/bus/ap/ap_adapter_mask",
        "sys/bus/ap/bindings",
        "sys/devices/ap/card04/hwtype",
        "sys/devices/ap/card04/chkstop",
        "sys/devices/ap/card04/type",
        "sys/devices/ap/card04/04.002a/config",
        "sys/devices/ap/card04/04.002a/mkvps",
        "proc/sysinfo",
    ];
    for file in files {
        let path = node.path(file);
        let before = read(&path);
        assert_eq!(write_errno(&path, "1\n"), Some(libc::EACCES), "{file}");
        assert_eq!(read(&path), before, "{file}");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o444, "{file}");
    }
    let mode = fs::metadata(node.path("sys/devices/ap/card04/online"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let error = fs::create_dir(node.path("sys/bus/ap/extra")).expect_err("no mkdir");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM));
    let error = fs::write(node.path("sys/bus/ap/extra"), "x").expect_err("no new files");
    assert_eq!(error.raw_os_error(), Some(libc::EACCES));
}

// === card and queue state ===

#[test]
fn online_and_config_state_machine() {
    let Some(node) = mount("cex8-mixed-lpar", "online_and_config_state_machine") else {
        return;
    };
    let card = node.path("sys/devices/ap/card04");
    let queue = card.join("04.002a");
    let other = card.join("04.0029");
    assert_eq!(read(&card.join("online")), "1\n");

    for bad in ["2\n", "-1\n", "yes\n", "\n"] {
        assert_eq!(
            write_errno(&card.join("online"), bad),
            Some(libc::EINVAL),
            "{bad:?}"
        );
        assert_eq!(
            write_errno(&queue.join("online"), bad),
            Some(libc::EINVAL),
            "{bad:?}"
        );
        assert_eq!(
            write_errno(&card.join("config"), bad),
            Some(libc::EINVAL),
            "{bad:?}"
        );
    }

    // A card's online write sets all its queues.
    write_ok(&card.join("online"), "0\n");
    assert_eq!(read(&queue.join("online")), "0\n");
    assert_eq!(read(&other.join("online")), "0\n");
    assert_eq!(
        write_errno(&queue.join("online"), "1\n"),
        Some(libc::EINVAL),
        "card offline"
    );
    write_ok(&card.join("online"), "1\n");
    assert_eq!(read(&queue.join("online")), "1\n");
    write_ok(&queue.join("online"), "0\n");
    assert_eq!(read(&queue.join("online")), "0\n");
    assert_eq!(read(&other.join("online")), "1\n");
    write_ok(&queue.join("online"), "1\n");

    // Deconfigured: online reads 0 and cannot be set.
    write_ok(&card.join("config"), "0\n");
    assert_eq!(read(&card.join("config")), "0\n");
    assert_eq!(read(&queue.join("config")), "0\n");
    assert_eq!(read(&card.join("online")), "0\n");
    assert_eq!(read(&queue.join("online")), "0\n");
    assert_eq!(read(&queue.join("request_count")), "-\n");
    assert_eq!(write_errno(&card.join("online"), "1\n"), Some(libc::ENODEV));
    assert_eq!(
        write_errno(&queue.join("online"), "1\n"),
        Some(libc::ENODEV)
    );
    write_ok(&card.join("online"), "0\n");
    write_ok(&card.join("config"), "1\n");
    assert_eq!(
        read(&card.join("online")),
        "0\n",
        "the online flag stays as written"
    );
    write_ok(&card.join("online"), "1\n");
    assert_eq!(read(&queue.join("online")), "1\n");

    // Check-stop from the hardware side.
    let control = node.node.control();
    control
        .set_queue_chkstop(Apqn::new(4, 0x2a), true)
        .expect("chkstop");
    assert_eq!(read(&queue.join("chkstop")), "1\n");
    assert_eq!(read(&queue.join("online")), "0\n");
    assert_eq!(read(&queue.join("interrupt")), "Interrupts disabled.\n");
    assert_eq!(
        write_errno(&queue.join("online"), "1\n"),
        Some(libc::ENODEV)
    );
    control
        .set_queue_chkstop(Apqn::new(4, 0x2a), false)
        .expect("clear");
    assert_eq!(read(&queue.join("online")), "1\n");
    control.set_card_chkstop(4, true).expect("card chkstop");
    assert_eq!(read(&card.join("online")), "0\n");
    assert_eq!(write_errno(&card.join("online"), "1\n"), Some(libc::ENODEV));
}

#[test]
fn request_counters_reset_on_write() {
    let Some(node) = mount("degraded-cex6-node", "request_counters_reset_on_write") else {
        return;
    };
    let card = node.path("sys/devices/ap/card08");
    let queue = card.join("08.0033");
    let machine = node.node.control().machine();
    let spec = machine.card(8).expect("card 08");
    assert_eq!(
        read(&card.join("request_count")),
        format!("{}\n", spec.request_count)
    );
    write_ok(&queue.join("request_count"), "0\n");
    assert_eq!(read(&queue.join("request_count")), "0\n");
    write_ok(&card.join("request_count"), "anything");
    assert_eq!(read(&card.join("request_count")), "0\n");
}

#[test]
fn vanished_devices_fail_writes() {
    let Some(node) = mount("cex8-mixed-lpar", "vanished_devices_fail_writes") else {
        return;
    };
    let control = node.node.control();
    let queue = node.path("sys/devices/ap/card04/04.002a");
    let mut queue_online = OpenOptions::new()
        .write(true)
        .open(queue.join("online"))
        .expect("open queue online");
    let mut card_online = OpenOptions::new()
        .write(true)
        .open(node.path("sys/devices/ap/card00/online"))
        .expect("open card online");

    control
        .remove_queue(Apqn::new(4, 0x2a))
        .expect("remove queue");
    let error = queue_online.write(b"0\n").expect_err("queue gone");
    assert_eq!(error.raw_os_error(), Some(libc::ENODEV));
    let error = fs::read_dir(&queue).expect_err("dir gone");
    assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(
        write_errno(&queue.join("online"), "0\n"),
        Some(libc::ENOENT)
    );
    let devices = names(&node.path("sys/bus/ap/devices"));
    assert!(!devices.contains(&"04.002a".to_string()), "{devices:?}");
    assert!(devices.contains(&"04.0029".to_string()), "{devices:?}");

    control.remove_card(0).expect("remove card");
    let error = card_online.write(b"1\n").expect_err("card gone");
    assert_eq!(error.raw_os_error(), Some(libc::ENODEV));
    assert!(!node.path("sys/devices/ap/card00").exists());
    let devices = names(&node.path("sys/bus/ap/devices"));
    assert!(devices
        .iter()
        .all(|name| !name.starts_with("card00") && !name.starts_with("00.")));
    assert!(!read_mask(&node.path("sys/bus/ap/ap_adapter_mask")).is_set(0));
    assert!(names(&node.path("sys/bus/ap/drivers/cex4card"))
        .iter()
        .all(|n| n != "card00"));
}

// === same view as the plain-file layout ===

/// Describes every entry below `root` without following symlinks: "dir",
/// "link <target>", "char" or the file text.
fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            let relative = path
                .strip_prefix(root)
                .expect("below root")
                .display()
                .to_string();
            let file_type = fs::symlink_metadata(&path).expect("lstat").file_type();
            let description = if file_type.is_symlink() {
                format!("link {}", fs::read_link(&path).expect("readlink").display())
            } else if file_type.is_dir() {
                pending.push(path);
                "dir".to_string()
            } else if file_type.is_char_device() {
                "char".to_string()
            } else {
                match fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(error) => format!("unreadable: {}", error.raw_os_error().unwrap_or(0)),
                }
            };
            entries.insert(relative, description);
        }
    }
    entries
}

#[test]
fn tree_matches_plain_layout() {
    for machine in machines::names() {
        if machine == machines::SCALE_MACHINE {
            continue;
        }
        let Some(node) = mount(machine, "tree_matches_plain_layout") else {
            return;
        };
        let plain = tempfile::tempdir().expect("temp dir");
        let description = machines::by_name(machine).expect("built in");
        cex_sim::layout::lay_out(&description, plain.path()).expect("lay out");

        let mut expected = describe_tree(plain.path());
        for file in ["sys/class/zcrypt/create", "sys/class/zcrypt/destroy"] {
            if let Some(text) = expected.get_mut(file) {
                *text = format!("unreadable: {}", libc::EACCES);
            }
        }
        for (path, text) in expected.iter_mut() {
            let write_only = path.ends_with("/bind")
                || path.ends_with("/unbind")
                || path.starts_with("sys/bus/ap/drivers/") && path.ends_with("/uevent")
                || path == "sys/bus/ap/uevent"
                || path == "sys/bus/ap/drivers_probe";
            if write_only {
                *text = format!("unreadable: {}", libc::EACCES);
            }
        }
        if let Some(text) = expected.get_mut("dev/z90crypt") {
            *text = "char".to_string();
        }
        let served = describe_tree(node.node.root());
        let only_plain: Vec<_> = expected
            .keys()
            .filter(|k| !served.contains_key(*k))
            .collect();
        let only_served: Vec<_> = served
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        assert!(only_plain.is_empty(), "{machine}: missing {only_plain:?}");
        assert!(only_served.is_empty(), "{machine}: extra {only_served:?}");
        for (path, text) in &expected {
            assert_eq!(&served[path], text, "{machine}: {path}");
        }
    }
}

#[test]
fn scanner_sees_plain_layout_inventory() {
    // The machine near the hardware maximum takes most of a minute to lay
    // out on a slow disk, twice here, so it is left to the layout tests.
    for machine in machines::names() {
        if machine == machines::SCALE_MACHINE {
            continue;
        }
        let Some(node) = mount(machine, "scanner_sees_plain_layout_inventory") else {
            return;
        };
        let plain = tempfile::tempdir().expect("temp dir");
        let description = machines::by_name(machine).expect("built in");
        cex_sim::layout::lay_out(&description, plain.path()).expect("lay out");

        let devices = "sys/devices/ap";
        let expected = cex_ap::scan::scan(&plain.path().join(devices));
        let served = cex_ap::scan::scan(&node.path(devices));
        match (expected, served) {
            (Ok(expected), Ok(served)) => {
                assert!(
                    served.problems.is_empty(),
                    "{machine}: {:?}",
                    served.problems
                );
                assert_eq!(served.inventory, expected.inventory, "{machine}");
                assert_eq!(
                    served.inventory.queues.len(),
                    description.apqn_count(),
                    "{machine}"
                );
            }
            (Err(_), Err(_)) => assert!(description.ap_bus.is_none(), "{machine}"),
            (expected, served) => panic!("{machine}: plain {expected:?}, FUSE {served:?}"),
        }
    }
}

#[test]
fn ls_lists_links_and_devices() {
    let Some(node) = mount("cex8-mixed-lpar", "ls_lists_links_and_devices") else {
        return;
    };
    write_ok(&node.path("sys/class/zcrypt/create"), "listed\n");
    let output = Command::new("ls")
        .arg("-l")
        .arg(node.path("sys/bus/ap/devices"))
        .arg(node.path("dev"))
        .output()
        .expect("run ls");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("04.002a -> ../../../devices/ap/card04/04.002a"),
        "{stdout}"
    );
    let listed = stdout
        .lines()
        .find(|line| line.ends_with(" listed"))
        .expect("dev line");
    let fields: Vec<&str> = listed.split_whitespace().collect();
    assert_eq!(fields[0], "crw-------", "{listed}");
    assert_eq!(fields[4..6], ["241,", "0"], "{listed}");
}

#[test]
fn lszcrypt_output_matches_plain_layout() {
    let tools = match cex_sim::lszcrypt::probe() {
        Ok(tools) => tools,
        Err(error) => {
            println!("SKIPPED: lszcrypt_output_matches_plain_layout: {error}");
            return;
        }
    };
    let Some(node) = mount("degraded-cex6-node", "lszcrypt_output_matches_plain_layout") else {
        return;
    };
    let plain = tempfile::tempdir().expect("temp dir");
    let description = machines::by_name("degraded-cex6-node").expect("built in");
    cex_sim::layout::lay_out(&description, plain.path()).expect("lay out");

    let view = |root: &Path| {
        [
            cex_sim::lszcrypt::ViewMount::read_only(root.join("sys/bus/ap"), "/sys/bus/ap"),
            cex_sim::lszcrypt::ViewMount::read_only(root.join("sys/devices/ap"), "/sys/devices/ap"),
        ]
    };
    for args in [&["-V"][..], &["-d"][..], &["-b"][..]] {
        let run = |root: &Path| {
            let output = cex_sim::lszcrypt::run_lszcrypt_in_view(&tools, &view(root), args)
                .expect("lszcrypt runs");
            (
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let expected = run(plain.path());
        let served = run(node.node.root());
        assert!(!expected.0.is_empty(), "{args:?}: {}", expected.1);
        assert_eq!(served, expected, "lszcrypt {args:?}");
    }
}

// === unmounting ===

fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("mount table");
    let path = path.display().to_string();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(path.as_str()))
}

#[test]
fn panic_unmounts_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mountpoint = dir.path().to_path_buf();
    let inner = mountpoint.clone();
    let outcome = std::thread::spawn(move || {
        let machine = machines::by_name("cex7-lpar").expect("built in");
        let node = match FuseNode::mount(machine, &inner) {
            Ok(node) => node,
            Err(FuseError::Unavailable { reason }) => return Some(reason),
            Err(error) => panic!("mount failed: {error}"),
        };
        assert!(is_mounted(node.root()));
        panic!("a failing test holding a mounted node");
    })
    .join();
    if let Ok(Some(reason)) = outcome {
        println!("SKIPPED: panic_unmounts_node: {reason}");
        return;
    }
    assert!(outcome.is_err(), "the thread panicked");
    assert!(!is_mounted(&mountpoint));
}

#[test]
fn busy_node_is_detached() {
    let Some(node) = mount("cex7-lpar", "busy_node_is_detached") else {
        return;
    };
    let mountpoint = node.node.root().to_path_buf();
    let open = fs::File::open(node.path("proc/sysinfo")).expect("open sysinfo");
    drop(node);
    assert!(!is_mounted(&mountpoint));
    drop(open);
}
