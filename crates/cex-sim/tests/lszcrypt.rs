//! IBM's `lszcrypt` (s390-tools for s390x, under qemu-user) reads each
//! built-in simulated machine, laid out in a temp dir and shown read-only
//! at `/sys/bus/ap` and `/sys/devices/ap` in a private mount namespace,
//! and lists exactly the described cards and queues.
//!
//! The expected rows follow the rules of `lszcrypt` 2.16. A card or queue
//! is listed when it has `type` and `online`, that is when zcrypt is bound.
//! The mode comes from the card's `ap_functions`. A device whose `online`
//! reads 0 is `deconfig` when its `config` reads 0, else `offline`.
//!
//! NOTE: Debian 12 ships s390-tools 2.16, which shows a check-stopped
//! device as `offline`; the `chkstop` status (2.25 and later) is not
//! checked here.
//!
//! Each test prints `SKIPPED: <reason>` and passes when qemu-user, the
//! unpacked tool (scripts/fetch-s390-tools.sh), `unshare` or root is
//! missing.

use std::fs;

use cex_ap::CexMode;
use cex_sim::layout::lay_out;
use cex_sim::lszcrypt::{
    parse_devices, parse_domains, run_in_view, run_lszcrypt_in_view, success_stdout, tools_or_skip,
    Row, Tools, ViewMount,
};
use cex_sim::machines::{self, CardSpec, KernelFeatures, Machine};

/// Makes a temp dir for a node tree, on tmpfs when `/dev/shm` exists,
/// because the largest built-in machine has some 100 000 files.
fn node_temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let temp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    temp.expect("temp dir")
}

/// Returns the two mounts of a host's AP bus below a laid-out root.
fn node_mounts(root: &std::path::Path) -> [ViewMount; 2] {
    [
        ViewMount::read_only(root.join("sys/bus/ap"), "/sys/bus/ap"),
        ViewMount::read_only(root.join("sys/devices/ap"), "/sys/devices/ap"),
    ]
}

fn mode_name(mode: CexMode) -> &'static str {
    match mode {
        CexMode::Ep11 => "EP11-Coproc",
        CexMode::Cca => "CCA-Coproc",
        CexMode::Accel => "Accelerator",
    }
}

fn status(kernel: KernelFeatures, reads_online: bool, config: bool) -> &'static str {
    match (reads_online, kernel.config_chkstop, config) {
        (true, _, _) => "online",
        (false, true, false) => "deconfig",
        _ => "offline",
    }
}

/// The `(id, type, mode, status, requests)` rows `lszcrypt` should print.
fn expected_rows(machine: &Machine) -> Vec<(String, String, String, String, String)> {
    let mut rows = Vec::new();
    for card in machine.cards.iter().filter(|card| card.is_zcrypt_bound()) {
        let kind = card.card_type.to_string();
        let mode = mode_name(card.mode()).to_string();
        rows.push((
            format!("{:02x}", card.adapter),
            kind.clone(),
            mode.clone(),
            status(machine.kernel, card.reads_online(), card.config).to_string(),
            card.request_count.to_string(),
        ));
        for queue in card.queues.iter().filter(|queue| queue.is_zcrypt_bound()) {
            let requests = if queue.is_uninitialised() {
                "-".to_string()
            } else {
                queue.request_count.to_string()
            };
            rows.push((
                format!("{:02x}.{:04x}", card.adapter, queue.domain),
                kind.clone(),
                mode.clone(),
                status(machine.kernel, queue.reads_online(), queue.config).to_string(),
                requests,
            ));
        }
    }
    rows
}

fn as_tuples(rows: &[Row]) -> Vec<(String, String, String, String, String)> {
    rows.iter()
        .map(|row| {
            let [id, kind, mode, status, requests] = row.columns().map(str::to_string);
            (id, kind, mode, status, requests)
        })
        .collect()
}

/// `lszcrypt` stops with "no subdevices found" at a listed card that has
/// no queue directory at all.
fn lists_without_error(machine: &Machine) -> bool {
    machine
        .cards
        .iter()
        .all(|card| !card.is_zcrypt_bound() || !card.queues.is_empty())
}

fn check_default_listing(tools: &Tools, machine: &Machine, mounts: &[ViewMount]) {
    let output = run_lszcrypt_in_view(tools, mounts, &[]).expect("lszcrypt runs");
    let name = &machine.name;
    if !lists_without_error(machine) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("no subdevices found"), "{name}: {stderr}");
        return;
    }
    let stdout = success_stdout(&output, &format!("{name}: lszcrypt")).expect("lszcrypt succeeds");
    let rows = parse_devices(&stdout).expect("device table");
    assert_eq!(
        as_tuples(&rows),
        expected_rows(machine),
        "{name}:\n{stdout}"
    );
}

fn functions_letters(ap_functions: u32) -> String {
    let bits = [
        (0x8000_0000, 'S'),
        (0x4000_0000, 'M'),
        (0x2000_0000, 'C'),
        (0x1000_0000, 'D'),
        (0x0800_0000, 'A'),
        (0x0400_0000, 'X'),
        (0x0200_0000, 'N'),
        (0x0080_0000, 'F'),
        (0x0040_0000, 'R'),
    ];
    bits.iter()
        .map(|(mask, letter)| {
            if ap_functions & mask != 0 {
                *letter
            } else {
                '-'
            }
        })
        .collect()
}

/// With `-V` every card and queue directory is listed, bound or not, with
/// the card's hardware type, queue depth, functions and the driver.
fn check_verbose_listing(tools: &Tools, machine: &Machine, mounts: &[ViewMount]) {
    if !lists_without_error(machine) {
        return;
    }
    let name = &machine.name;
    let output = run_lszcrypt_in_view(tools, mounts, &["-V"]).expect("lszcrypt -V runs");
    let stdout =
        success_stdout(&output, &format!("{name}: lszcrypt -V")).expect("lszcrypt -V succeeds");
    let rows = parse_devices(&stdout).expect("verbose device table");
    let expected: Vec<(String, String, String, String, String)> =
        machine.cards.iter().flat_map(verbose_rows).collect();
    let actual: Vec<(String, String, String, String, String)> = rows
        .iter()
        .map(|row| {
            let verbose = row.verbose.clone().expect("verbose columns");
            (
                row.id.clone(),
                verbose.hwtype,
                verbose.queue_depth,
                verbose.functions,
                verbose.driver,
            )
        })
        .collect();
    assert_eq!(actual, expected, "{name}:\n{stdout}");
}

fn verbose_rows(card: &CardSpec) -> Vec<(String, String, String, String, String)> {
    let driver = |bound: &Option<String>| bound.clone().unwrap_or_else(|| "-no-driver-".into());
    let common = (
        card.hwtype.to_string(),
        format!("{:02}", card.depth + 1),
        functions_letters(card.ap_functions),
    );
    let mut rows = vec![(
        format!("{:02x}", card.adapter),
        common.0.clone(),
        common.1.clone(),
        common.2.clone(),
        driver(&card.driver),
    )];
    for queue in &card.queues {
        rows.push((
            format!("{:02x}.{:04x}", card.adapter, queue.domain),
            common.0.clone(),
            common.1.clone(),
            common.2.clone(),
            driver(&queue.driver),
        ));
    }
    rows
}

/// `-d` (with the `C` filter of newer versions ignored by 2.16) prints the
/// control and usage domains from the bus masks, or fails without QCI.
fn check_domains(tools: &Tools, machine: &Machine, mounts: &[ViewMount]) {
    let name = &machine.name;
    let bus = machine.ap_bus.as_ref().expect("machine with an AP bus");
    let output = run_lszcrypt_in_view(tools, mounts, &["-d", "C"]).expect("lszcrypt -d runs");
    if !bus.qci {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("domain mask not available"),
            "{name}: {stderr}"
        );
        return;
    }
    let stdout =
        success_stdout(&output, &format!("{name}: lszcrypt -d C")).expect("lszcrypt -d succeeds");
    let letters = parse_domains(&stdout).expect("domain table");
    for domain in 0..=255u8 {
        let control = bus.control_domain_mask.is_set(domain);
        let usage = bus.usage_domain_mask.is_set(domain);
        let expected = match (control, usage) {
            (true, true) => 'B',
            (true, false) => 'C',
            (false, true) => 'U',
            (false, false) => '.',
        };
        assert_eq!(
            letters[usize::from(domain)],
            expected,
            "{name}: domain {domain:#04x}"
        );
    }
}

#[test]
fn builtin_machines_listed_as_described() {
    let Some(tools) = tools_or_skip("builtin_machines_listed_as_described") else {
        return;
    };
    let machines = machines::all();
    assert!(machines.iter().any(|machine| machine.ap_bus.is_some()));
    for machine in machines.iter().filter(|machine| machine.ap_bus.is_some()) {
        let temp = node_temp_dir();
        let root = temp.path().join("node");
        lay_out(machine, &root).expect("lay out");
        let mounts = node_mounts(&root);
        check_default_listing(&tools, machine, &mounts);
        check_verbose_listing(&tools, machine, &mounts);
        check_domains(&tools, machine, &mounts);
    }
}

#[test]
fn machine_without_ap_bus_reports_no_driver() {
    let Some(tools) = tools_or_skip("machine_without_ap_bus_reports_no_driver") else {
        return;
    };
    for machine in machines::all()
        .iter()
        .filter(|machine| machine.ap_bus.is_none())
    {
        let temp = node_temp_dir();
        let root = temp.path().join("node");
        lay_out(machine, &root).expect("lay out");
        assert!(!root.join("sys/bus/ap").exists(), "{}", machine.name);
        let output = run_lszcrypt_in_view(&tools, &[], &[]).expect("lszcrypt runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{}: {stderr}", machine.name);
        assert!(
            stderr.contains("Crypto device driver not available"),
            "{}: {stderr}",
            machine.name
        );
    }
}

#[test]
fn view_read_only_host_mounts_unchanged() {
    let Some(tools) = tools_or_skip("view_read_only_host_mounts_unchanged") else {
        return;
    };
    let machine = machines::by_name("cex8-mixed-lpar").expect("built in");
    let temp = node_temp_dir();
    let root = temp.path().join("node");
    lay_out(&machine, &root).expect("lay out");
    let before = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");

    let write = "echo 0 > /sys/devices/ap/card00/online";
    let output = run_in_view(&tools, &node_mounts(&root), "sh", ["-c", write]).expect("sh runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "write succeeded");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let online = fs::read_to_string(root.join("sys/devices/ap/card00/online")).expect("online");
    assert_eq!(online, "1\n");

    let after = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert_eq!(before, after, "host mounts changed");
}
