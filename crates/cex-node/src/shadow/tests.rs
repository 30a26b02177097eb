use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

use cex_ap::{Apqn, Mask256};

use super::*;
use crate::test_node::{lay_out_ap_bus, node_tree};

struct Fixture {
    _temp: tempfile::TempDir,
    paths: NodePaths,
    base: ShadowBase,
}

fn fixture() -> Fixture {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    lay_out_ap_bus(&paths);
    let base = ShadowBase::open(&paths.shadow_base).expect("base");
    Fixture {
        _temp: temp,
        paths,
        base,
    }
}

/// Walks `root` and maps each relative path to "dir", the file text or
/// "link <target>", checking modes and that each symlink resolves inside `root`.
fn walk(root: &Path) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    let canonical_root = fs::canonicalize(root).expect("root");
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let relative = path
                .strip_prefix(root)
                .expect("below root")
                .display()
                .to_string();
            let meta = path.symlink_metadata().expect("stat");
            let mode = meta.permissions().mode() & 0o7777;
            let description = if meta.file_type().is_symlink() {
                let resolved = fs::canonicalize(&path).expect("symlink resolves");
                assert!(
                    resolved.starts_with(&canonical_root),
                    "{relative} leaves the tree"
                );
                format!("link {}", fs::read_link(&path).expect("link").display())
            } else if meta.is_dir() {
                assert_eq!(mode, 0o755, "{relative}");
                pending.push(path);
                "dir".to_string()
            } else {
                assert_eq!(mode, 0o444, "{relative}");
                fs::read_to_string(&path).expect("file")
            };
            entries.insert(relative, description);
        }
    }
    entries
}

fn mask_bits(text: &str) -> Vec<u8> {
    assert_eq!(text.len(), 67, "0x + 64 hex digits + newline: {text:?}");
    Mask256::parse_kernel(text, &Mask256::empty())
        .expect("mask")
        .bits()
        .collect()
}

#[test]
fn static_tree_shows_one_apqn() {
    let fixture = fixture();
    let id = DeviceId::new(Apqn::new(3, 0x2a), 1);

    let shadow = fixture
        .base
        .build(&fixture.paths, &id, SysfsVariant::Static)
        .expect("built");

    assert_eq!(
        shadow.path,
        fixture.paths.shadow_base.join("sysfs-apqn-3-42-1")
    );
    assert_eq!(shadow.bus_ap, shadow.path.join("bus/ap"));
    assert_eq!(shadow.devices_ap, shadow.path.join("devices/ap"));
    let tree = walk(&shadow.path);
    let text = |name: &str| {
        tree.get(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .as_str()
    };

    assert_eq!(text("bus/ap/ap_domain"), "42\n");
    assert_eq!(mask_bits(text("bus/ap/ap_adapter_mask")), vec![3]);
    assert_eq!(mask_bits(text("bus/ap/ap_usage_domain_mask")), vec![42]);
    assert!(mask_bits(text("bus/ap/ap_control_domain_mask")).is_empty());
    assert_eq!(mask_bits(text("bus/ap/apmask")).len(), 256);
    assert_eq!(mask_bits(text("bus/ap/aqmask")).len(), 256);
    assert_eq!(text("bus/ap/poll_timeout"), "250000\n");
    assert_eq!(text("bus/ap/ap_max_adapter_id"), "84\n");
    assert_eq!(
        text("bus/ap/devices/card03"),
        "link ../../../devices/ap/card03"
    );
    assert_eq!(
        text("bus/ap/devices/03.002a"),
        "link ../../../devices/ap/card03/03.002a"
    );
    assert_eq!(
        text("bus/ap/drivers/cex4card/card03"),
        "link ../../../../devices/ap/card03"
    );
    assert_eq!(
        text("bus/ap/drivers/cex4queue/03.002a"),
        "link ../../../../devices/ap/card03/03.002a"
    );

    assert_eq!(text("devices/ap/card03/type"), "CEX8P\n");
    assert_eq!(text("devices/ap/card03/FW_version"), "8.2\n");
    assert_eq!(text("devices/ap/card03/load"), "0\n");
    assert_eq!(text("devices/ap/card03/request_count"), "0\n");
    assert_eq!(text("devices/ap/card03/online"), "1\n");
    assert_eq!(
        text("devices/ap/card03/driver"),
        "link ../../../bus/ap/drivers/cex4card"
    );
    assert_eq!(text("devices/ap/card03/subsystem"), "link ../../../bus/ap");
    assert_eq!(
        text("devices/ap/card03/03.002a/reset"),
        "No Reset Timer set.\n"
    );
    assert_eq!(text("devices/ap/card03/03.002a/request_count"), "0\n");
    assert_eq!(text("devices/ap/card03/03.002a/load"), "0\n");
    assert!(text("devices/ap/card03/03.002a/mkvps").starts_with("WK CUR"));
    assert_eq!(
        text("devices/ap/card03/03.002a/driver"),
        "link ../../../../bus/ap/drivers/cex4queue"
    );

    assert!(
        !tree.contains_key("devices/ap/card00"),
        "other cards are hidden"
    );
    assert!(
        !tree.contains_key("devices/ap/card03/03.0029"),
        "other queues are hidden"
    );
    assert!(
        !tree.contains_key("devices/ap/card03/03.002a/op_modes"),
        "absent on host"
    );
    assert!(
        !tree.contains_key("devices/ap/card03/03.002a/config"),
        "not part of the tree"
    );
}

#[test]
fn cca_card_lacks_ep11_attributes() {
    let fixture = fixture();
    let id = DeviceId::new(Apqn::new(0, 0x29), 0);

    let shadow = fixture
        .base
        .build(&fixture.paths, &id, SysfsVariant::Static)
        .expect("built");

    let tree = walk(&shadow.path);
    assert_eq!(tree["devices/ap/card00/serialnr"], "99FAKE01\n");
    assert!(!tree.contains_key("devices/ap/card00/FW_version"));
    assert!(!tree.contains_key("devices/ap/card00/API_ordinalnr"));
}

#[test]
fn live_tree_links_card_counters_to_queue() {
    let fixture = fixture();
    let id = DeviceId::new(Apqn::new(0, 0x29), 0);

    let shadow = fixture
        .base
        .build(&fixture.paths, &id, SysfsVariant::Live)
        .expect("built");

    let tree = walk(&shadow.path);
    for name in [
        "online",
        "pendingq_count",
        "request_count",
        "requestq_count",
    ] {
        assert_eq!(
            tree[&format!("devices/ap/card00/{name}")],
            format!("link 00.0029/{name}")
        );
    }
    assert_eq!(tree["devices/ap/card00/load"], "0\n");
}

#[test]
fn build_replaces_existing_tree() {
    let fixture = fixture();
    let id = DeviceId::new(Apqn::new(0, 0x29), 0);
    let first = fixture
        .base
        .build(&fixture.paths, &id, SysfsVariant::Live)
        .expect("first");

    let second = fixture
        .base
        .build(&fixture.paths, &id, SysfsVariant::Static)
        .expect("second");

    assert_eq!(first.path, second.path);
    assert_eq!(walk(&second.path)["devices/ap/card00/online"], "1\n");
    assert_eq!(fixture.base.list().expect("list"), vec![id]);
    assert_eq!(
        fs::read_dir(&fixture.paths.shadow_base)
            .expect("base")
            .count(),
        1
    );
}

#[test]
fn missing_host_attribute_leaves_nothing() {
    let fixture = fixture();
    fs::remove_file(fixture.paths.ap_devs_dir.join("card00/hwtype")).expect("remove");
    let id = DeviceId::new(Apqn::new(0, 0x29), 0);

    let error = fixture
        .base
        .build(&fixture.paths, &id, SysfsVariant::Static)
        .expect_err("fails");

    assert!(error.to_string().contains("card00/hwtype"), "{error}");
    assert_eq!(
        fs::read_dir(&fixture.paths.shadow_base)
            .expect("base")
            .count(),
        0
    );
}

#[test]
fn unknown_apqn_leaves_nothing() {
    let fixture = fixture();
    let id = DeviceId::new(Apqn::new(9, 9), 0);

    let error = fixture
        .base
        .build(&fixture.paths, &id, SysfsVariant::Static)
        .expect_err("fails");

    assert!(error.to_string().contains("card09"), "{error}");
    assert_eq!(
        fs::read_dir(&fixture.paths.shadow_base)
            .expect("base")
            .count(),
        0
    );
}

#[test]
fn base_symlink_is_rejected() {
    let temp = tempfile::tempdir().expect("temp dir");
    let elsewhere = temp.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    let base = temp.path().join("shadowsysfs");
    symlink(&elsewhere, &base).expect("plant symlink");

    let error = ShadowBase::open(&base).expect_err("symlink base");

    assert!(matches!(error, ShadowError::UnsafeBase { .. }), "{error}");
    assert!(error.to_string().contains("symbolic link"), "{error}");
    assert!(
        error.to_string().contains(&base.display().to_string()),
        "{error}"
    );
}

#[test]
fn base_below_symlink_is_rejected() {
    let temp = tempfile::tempdir().expect("temp dir");
    let elsewhere = temp.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("mkdir");
    symlink(&elsewhere, temp.path().join("tmp")).expect("plant symlink");

    let error = ShadowBase::open(&temp.path().join("tmp/shadowsysfs")).expect_err("symlink");

    assert!(matches!(error, ShadowError::UnsafeBase { .. }), "{error}");
    assert!(!elsewhere.join("shadowsysfs").exists());
}

#[test]
fn base_writable_by_others_is_rejected() {
    let temp = tempfile::tempdir().expect("temp dir");
    let base = temp.path().join("shadowsysfs");
    fs::create_dir(&base).expect("mkdir");
    fs::set_permissions(&base, fs::Permissions::from_mode(0o777)).expect("chmod");

    let error = ShadowBase::open(&base).expect_err("world-writable");

    assert!(
        error.to_string().contains("writable by group or others"),
        "{error}"
    );
}

#[test]
fn base_of_other_owner_is_rejected() {
    let temp = tempfile::tempdir().expect("temp dir");
    let owner = fs::metadata(temp.path()).expect("stat").uid();

    let error = ShadowBase::open_owned_by(temp.path(), owner + 1).expect_err("other owner");

    assert!(
        error.to_string().contains(&format!("owned by uid {owner}")),
        "{error}"
    );
}

#[test]
fn missing_base_is_created_0755() {
    let temp = tempfile::tempdir().expect("temp dir");
    let base = temp.path().join("var/tmp/shadowsysfs");

    let opened = ShadowBase::open(&base).expect("created");

    assert_eq!(opened.path(), base);
    let mode = fs::metadata(&base).expect("stat").permissions().mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[test]
fn remove_does_not_follow_planted_symlink() {
    let fixture = fixture();
    let outside = fixture.paths.ap_devs_dir.clone();
    let id = DeviceId::new(Apqn::new(0, 0x29), 0);
    symlink(
        &outside,
        fixture.paths.shadow_base.join(id.shadow_dir_name()),
    )
    .expect("plant");

    assert!(remove_shadow_dir(&fixture.paths.shadow_base, &id).expect("removed"));

    assert!(outside.join("card00/hwtype").exists());
    assert!(!remove_shadow_dir(&fixture.paths.shadow_base, &id).expect("already gone"));
}

#[test]
fn stale_builds_of_other_processes_are_removed() {
    let fixture = fixture();
    let base = &fixture.paths.shadow_base;
    fs::create_dir_all(base.join(".build-sysfs-apqn-1-5-0-999999999-3/bus")).expect("stale");
    let own = format!(".build-sysfs-apqn-1-5-1-{}-0", std::process::id());
    fs::create_dir(base.join(&own)).expect("own");

    assert_eq!(fixture.base.remove_stale_builds().expect("removed"), 1);

    assert!(base.join(&own).exists());
    assert!(!base.join(".build-sysfs-apqn-1-5-0-999999999-3").exists());
}
