//! Lays out every built-in machine and reads the tree back like a scanner
//! would, comparing each file with the description.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use cex_ap::{Apqn, CexMode, Mask256};
use cex_sim::layout::{lay_out, SimNode};
use cex_sim::machines::{self, CardSpec, Machine, QueueSpec};

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn read_mask(path: &Path) -> Mask256 {
    let text = read(path);
    assert_eq!(text.len(), 67, "{}: {text:?}", path.display());
    Mask256::parse_kernel(&text, &Mask256::empty()).expect("mask parses")
}

fn list_dir(path: &Path) -> BTreeSet<String> {
    fs::read_dir(path)
        .unwrap_or_else(|error| panic!("list {}: {error}", path.display()))
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Machine id from `proc/sysinfo`, read the way the agent reads it.
fn machine_id_of(sysinfo: &str) -> String {
    let field = |label: &str| {
        sysinfo
            .lines()
            .find_map(|line| line.strip_prefix(label)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {label} line"))
            .to_string()
    };
    format!(
        "{}-{}-{}",
        field("Manufacturer"),
        field("Type"),
        field("Sequence Code")
    )
}

fn flag(value: bool) -> String {
    format!("{}\n", u8::from(value))
}

fn check_card(root: &Path, machine: &Machine, card: &CardSpec) {
    let dir = root
        .join("sys/devices/ap")
        .join(format!("card{:02x}", card.adapter));
    let what = format!("{} card {:02x}", machine.name, card.adapter);
    assert_eq!(
        read(&dir.join("type")),
        format!("{}\n", card.card_type),
        "{what}"
    );
    assert_eq!(
        read(&dir.join("hwtype")),
        format!("{}\n", card.hwtype),
        "{what}"
    );
    assert_eq!(
        read(&dir.join("raw_hwtype")),
        format!("{}\n", card.raw_hwtype),
        "{what}"
    );
    assert_eq!(
        read(&dir.join("depth")),
        format!("{}\n", card.depth),
        "{what}"
    );
    assert_eq!(
        read(&dir.join("ap_functions")),
        format!("0x{:08X}\n", card.ap_functions),
        "{what}"
    );
    assert_eq!(
        read(&dir.join("online")),
        flag(card.reads_online()),
        "{what}"
    );
    if machine.kernel.config_chkstop {
        assert_eq!(read(&dir.join("config")), flag(card.config), "{what}");
        assert_eq!(read(&dir.join("chkstop")), flag(card.chkstop), "{what}");
    } else {
        assert!(
            !dir.join("config").exists(),
            "{what}: config without kernel support"
        );
        assert!(
            !dir.join("chkstop").exists(),
            "{what}: chkstop without kernel support"
        );
    }
    assert_eq!(
        dir.join("max_msg_size").exists(),
        machine.kernel.max_msg_size,
        "{what}"
    );
    match card.mode() {
        CexMode::Accel => assert!(!dir.join("serialnr").exists(), "{what}"),
        _ => assert_eq!(
            read(&dir.join("serialnr")),
            format!("{}\n", card.serialnr),
            "{what}"
        ),
    }
    match &card.ep11 {
        Some(ep11) => {
            assert_eq!(
                read(&dir.join("API_ordinalnr")),
                format!("{}\n", ep11.api_ordinalnr)
            );
            assert_eq!(
                read(&dir.join("FW_version")),
                format!("{}\n", ep11.fw_version)
            );
            assert_eq!(read(&dir.join("op_modes")), format!("{}\n", ep11.op_modes));
        }
        None => assert!(!dir.join("API_ordinalnr").exists(), "{what}"),
    }
    let queue_dirs: BTreeSet<String> = list_dir(&dir)
        .into_iter()
        .filter(|name| name.contains('.'))
        .collect();
    let expected: BTreeSet<String> = card
        .queues
        .iter()
        .map(|queue| Apqn::new(card.adapter, queue.domain).queue_dir_name())
        .collect();
    assert_eq!(queue_dirs, expected, "{what}: queue directories");
    for queue in &card.queues {
        check_queue(&dir, machine, card, queue);
    }
}

fn check_queue(card_dir: &Path, machine: &Machine, card: &CardSpec, queue: &QueueSpec) {
    let apqn = Apqn::new(card.adapter, queue.domain);
    let dir = card_dir.join(apqn.queue_dir_name());
    let what = format!("{} queue {apqn}", machine.name);
    assert_eq!(
        read(&dir.join("online")),
        flag(queue.reads_online()),
        "{what}"
    );
    let expected_count = if !queue.config || queue.chkstop {
        "-\n".to_string()
    } else {
        format!("{}\n", queue.request_count)
    };
    assert_eq!(read(&dir.join("request_count")), expected_count, "{what}");
    if machine.kernel.config_chkstop {
        assert_eq!(read(&dir.join("config")), flag(queue.config), "{what}");
        assert_eq!(read(&dir.join("chkstop")), flag(queue.chkstop), "{what}");
    }
    match &queue.mkvps {
        Some(mkvps) => assert_eq!(&read(&dir.join("mkvps")), mkvps, "{what}"),
        None => assert!(!dir.join("mkvps").exists(), "{what}"),
    }
    assert_eq!(
        dir.join("op_modes").exists(),
        card.mode() == CexMode::Ep11,
        "{what}"
    );
    for file in [
        "requestq_count",
        "pendingq_count",
        "reset",
        "interrupt",
        "load",
        "uevent",
    ] {
        assert!(dir.join(file).is_file(), "{what}: {file} missing");
    }
}

/// Every symlink below `dir`, found without following links.
fn symlinks_below(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("list") {
        let entry = entry.expect("entry");
        let kind = entry.file_type().expect("file type");
        if kind.is_symlink() {
            out.push(entry.path());
        } else if kind.is_dir() {
            symlinks_below(&entry.path(), out);
        }
    }
}

fn check_symlinks(root: &Path, machine: &Machine) {
    let canonical_root = root.canonicalize().expect("root");
    let mut links = Vec::new();
    symlinks_below(root, &mut links);
    for link in &links {
        let target = fs::read_link(link).expect("read link");
        assert!(
            target.is_relative(),
            "{}: absolute target {}",
            link.display(),
            target.display()
        );
        let resolved = link
            .canonicalize()
            .unwrap_or_else(|error| panic!("{}: dangling link: {error}", link.display()));
        assert!(
            resolved.starts_with(&canonical_root),
            "{} resolves outside the root",
            link.display()
        );
    }
    let bus_devices = root.join("sys/bus/ap/devices");
    if machine.ap_bus.is_some() {
        let expected = machine.cards.len() + machine.apqn_count();
        assert_eq!(
            list_dir(&bus_devices).len(),
            expected,
            "{}: bus/ap/devices",
            machine.name
        );
        for card in &machine.cards {
            let name = format!("card{:02x}", card.adapter);
            let via_bus = bus_devices.join(&name).canonicalize().expect("card link");
            let via_driver = root.join("sys/bus/ap/drivers/cex4card").join(&name);
            assert_eq!(via_driver.canonicalize().expect("driver link"), via_bus);
            let driver = root.join("sys/devices/ap").join(&name).join("driver");
            assert!(driver
                .canonicalize()
                .expect("driver")
                .ends_with("drivers/cex4card"));
        }
        let bound_queues = list_dir(&root.join("sys/bus/ap/drivers/cex4queue")).len();
        // Each driver directory also contains uevent, bind and unbind.
        assert_eq!(
            bound_queues - 3,
            machine.apqn_count(),
            "{}: cex4queue links",
            machine.name
        );
    }
}

fn check_bus(root: &Path, machine: &Machine) {
    let bus_dir = root.join("sys/bus/ap");
    let Some(bus) = &machine.ap_bus else {
        assert!(!bus_dir.exists(), "{}: bus without AP bus", machine.name);
        assert!(!root.join("dev/z90crypt").exists());
        assert!(!root.join("sys/class/zcrypt").exists());
        for dir in ["sys/bus", "sys/devices", "sys/class", "dev"] {
            assert!(root.join(dir).is_dir(), "{}: {dir} missing", machine.name);
        }
        return;
    };
    let adapters: Vec<u8> = machine.cards.iter().map(|card| card.adapter).collect();
    let adapter_mask = read_mask(&bus_dir.join("ap_adapter_mask"));
    assert_eq!(
        adapter_mask.bits().collect::<Vec<_>>(),
        adapters,
        "{}",
        machine.name
    );
    let domains: BTreeSet<u8> = machine.apqns().keys().map(|apqn| apqn.domain).collect();
    let usage = read_mask(&bus_dir.join("ap_usage_domain_mask"));
    assert_eq!(
        usage.bits().collect::<BTreeSet<_>>(),
        domains,
        "{}",
        machine.name
    );
    assert_eq!(
        read_mask(&bus_dir.join("ap_control_domain_mask")),
        bus.control_domain_mask
    );
    assert_eq!(read_mask(&bus_dir.join("apmask")), Mask256::full());
    assert_eq!(read_mask(&bus_dir.join("aqmask")), Mask256::full());
    assert_eq!(
        read(&bus_dir.join("ap_domain")),
        format!("{}\n", bus.ap_domain)
    );
    assert_eq!(
        bus_dir.join("scans").exists(),
        machine.kernel.bindings_scans
    );
    assert_eq!(bus_dir.join("features").exists(), machine.kernel.features);
    if machine.kernel.bindings_scans {
        let total = machine.apqn_count();
        assert_eq!(
            read(&bus_dir.join("bindings")),
            format!("{total}/{total} (complete)\n")
        );
    }
    assert!(root.join("dev/z90crypt").is_file());
    if machine.kernel.zcrypt_multinode {
        assert_eq!(read(&root.join("sys/class/zcrypt/create")), "");
        assert_eq!(read(&root.join("sys/class/zcrypt/destroy")), "");
        assert!(list_dir(&root.join("sys/devices/virtual/zcrypt")).is_empty());
    }
}

/// A temp dir for a layout: on tmpfs when `/dev/shm` is usable, because
/// the scale machine writes about 100 000 files and small-file creation on
/// a disk file system can take a minute.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = shm
        .is_dir()
        .then(|| tempfile::tempdir_in(shm).ok())
        .flatten();
    on_tmpfs.unwrap_or_else(|| tempfile::tempdir().expect("temp dir"))
}

fn check_machine(machine: &Machine) {
    let dir = scratch_dir();
    let root = dir.path();
    lay_out(machine, root).unwrap_or_else(|error| panic!("{}: {error}", machine.name));
    let sysinfo = read(&root.join("proc/sysinfo"));
    assert_eq!(
        machine_id_of(&sysinfo),
        machine.machine_id(),
        "{}",
        machine.name
    );
    check_bus(root, machine);
    if machine.ap_bus.is_some() {
        let card_dirs: BTreeSet<String> = list_dir(&root.join("sys/devices/ap"))
            .into_iter()
            .filter(|name| name.starts_with("card"))
            .collect();
        let expected: BTreeSet<String> = machine
            .cards
            .iter()
            .map(|card| format!("card{:02x}", card.adapter))
            .collect();
        assert_eq!(card_dirs, expected, "{}: card directories", machine.name);
        for card in &machine.cards {
            check_card(root, machine, card);
        }
    }
    check_symlinks(root, machine);
}

#[test]
fn every_machine_lays_out_as_described() {
    let names = machines::names();
    let small = names
        .iter()
        .filter(|name| **name != machines::SCALE_MACHINE);
    for name in small {
        check_machine(&machines::by_name(name).expect("built in"));
    }
}

#[test]
fn scale_machine_lays_out_as_described() {
    check_machine(&machines::by_name(machines::SCALE_MACHINE).expect("built in"));
}

#[test]
fn degraded_node_shows_its_faults() {
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = machines::by_name("degraded-cex6-node").expect("built in");
    lay_out(&machine, dir.path()).expect("lay out");
    let devices = dir.path().join("sys/devices/ap");
    assert_eq!(read(&devices.join("card09/online")), "0\n");
    assert_eq!(read(&devices.join("card09/09.0033/online")), "0\n");
    assert_eq!(read(&devices.join("card08/08.0034/config")), "0\n");
    assert_eq!(read(&devices.join("card08/08.0034/request_count")), "-\n");
    assert_eq!(read(&devices.join("card0a/0a.0034/chkstop")), "1\n");
    assert_eq!(read(&devices.join("card0a/0a.0034/online")), "0\n");
    assert_eq!(read(&devices.join("card0a/0a.0033/online")), "1\n");
}

#[test]
fn hot_unplug_and_plug_restore_the_card() {
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = machines::by_name("cex8-mixed-lpar").expect("built in");
    let mut node = SimNode::create(machine.clone(), dir.path()).expect("lay out");
    let root = dir.path();

    node.remove_card(4).expect("unplug");
    assert!(!root.join("sys/devices/ap/card04").exists());
    for link in [
        "devices/card04",
        "devices/04.0029",
        "drivers/cex4card/card04",
    ] {
        let path = root.join("sys/bus/ap").join(link);
        assert!(fs::symlink_metadata(&path).is_err(), "{link} still present");
    }
    let mask = read_mask(&root.join("sys/bus/ap/ap_adapter_mask"));
    assert_eq!(mask.bits().collect::<Vec<_>>(), vec![0, 2, 3]);
    assert!(node.machine().card(4).is_none());
    check_symlinks(root, node.machine());

    node.add_card(4).expect("plug");
    assert_eq!(
        node.machine(),
        &Machine {
            ..bump_scans(machine, 2)
        }
    );
    check_card(
        root,
        node.machine(),
        node.machine().card(4).expect("card 04"),
    );
    check_symlinks(root, node.machine());
    let names = list_dir(&root.join("sys/devices/ap"));
    assert!(names.iter().all(|name| !name.starts_with('.')), "{names:?}");
}

fn bump_scans(mut machine: Machine, scans: u64) -> Machine {
    if let Some(bus) = &mut machine.ap_bus {
        bus.scans += scans;
    }
    machine
}

#[test]
fn state_changes_rewrite_card_and_queues() {
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = machines::by_name("cex7-lpar").expect("built in");
    let mut node = SimNode::create(machine, dir.path()).expect("lay out");
    let card = dir.path().join("sys/devices/ap/card08");
    let scans = dir.path().join("sys/bus/ap/scans");

    node.set_card_config(8, false).expect("deconfigure");
    assert_eq!(read(&card.join("config")), "0\n");
    assert_eq!(read(&card.join("online")), "0\n");
    assert_eq!(read(&card.join("08.0031/config")), "0\n");
    assert_eq!(read(&card.join("08.0031/request_count")), "-\n");
    assert_eq!(read(&scans), "241\n");

    node.set_card_config(8, true).expect("configure");
    assert_eq!(read(&card.join("online")), "1\n");
    assert_eq!(read(&card.join("08.0031/online")), "1\n");

    node.set_card_chkstop(8, true).expect("check-stop");
    assert_eq!(read(&card.join("chkstop")), "1\n");
    assert_eq!(read(&card.join("08.0031/online")), "0\n");
    node.set_card_chkstop(8, false).expect("clear check-stop");

    node.set_card_online(8, false).expect("offline");
    assert_eq!(read(&card.join("online")), "0\n");
    assert_eq!(read(&card.join("08.0031/online")), "0\n");
    node.set_card_online(8, true).expect("online");

    let apqn = Apqn::new(8, 0x31);
    node.set_queue_chkstop(apqn, true)
        .expect("queue check-stop");
    assert_eq!(read(&card.join("08.0031/chkstop")), "1\n");
    assert_eq!(read(&card.join("online")), "1\n");
    node.set_queue_chkstop(apqn, false).expect("clear");
    node.set_queue_config(apqn, false)
        .expect("queue deconfigure");
    assert_eq!(read(&card.join("08.0031/config")), "0\n");
    node.set_queue_config(apqn, true).expect("queue configure");
    node.set_queue_online(apqn, false).expect("queue offline");
    assert_eq!(read(&card.join("08.0031/online")), "0\n");
    assert_eq!(read(&card.join("08.0031/request_count")), "13448\n");
}

#[test]
fn remove_queue_drops_directory_and_links() {
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = machines::by_name("zvm-guest-one-card").expect("built in");
    let mut node = SimNode::create(machine, dir.path()).expect("lay out");
    node.remove_queue(Apqn::new(8, 0x32)).expect("remove");
    let root = dir.path();
    assert!(!root.join("sys/devices/ap/card08/08.0032").exists());
    assert!(fs::symlink_metadata(root.join("sys/bus/ap/devices/08.0032")).is_err());
    assert!(fs::symlink_metadata(root.join("sys/bus/ap/drivers/cex4queue/08.0032")).is_err());
    assert!(root.join("sys/devices/ap/card08/08.0031").is_dir());
    assert_eq!(read(&root.join("sys/bus/ap/bindings")), "1/1 (complete)\n");
    check_symlinks(root, node.machine());
}

#[test]
fn unknown_card_and_queue_are_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let machine = machines::by_name("cex7-lpar").expect("built in");
    let mut node = SimNode::create(machine, dir.path()).expect("lay out");
    let error = node.remove_card(0x20).expect_err("no card 20");
    assert!(error.to_string().contains("card 20"), "{error}");
    let error = node
        .set_queue_online(Apqn::new(8, 5), true)
        .expect_err("no queue");
    assert!(error.to_string().contains("08.0005"), "{error}");
    let error = node
        .add_card(8)
        .expect_err("card 08 is plugged, not unplugged");
    assert!(error.to_string().contains("card 08"), "{error}");
}
