//! Scanner tests on AP devices trees shaped like real machines.

mod fixture;

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use cex_ap::{format_apqns, scan, Apqn, CardType, CexMode, ProblemKind, ScanError};
use fixture::{Attributes, CardFixture, NodeFixture, QueueFixture};

fn card_type(text: &str) -> Option<CardType> {
    Some(text.parse().expect("valid card type"))
}

fn problem_texts(node: &NodeFixture, report: &cex_ap::ScanReport) -> Vec<String> {
    let prefix = format!("{}/", node.devices_dir().display());
    let mut texts: Vec<String> = report
        .problems
        .iter()
        .map(|problem| problem.to_string().replace(&prefix, ""))
        .collect();
    texts.sort();
    texts
}

/// z16 LPAR: CEX8C 00 and CEX8A 02 in domains 0x29/0x2a, CEX8P 03 in
/// domain 0x11, CEX8P 04 in domains 0x29/0x2a.
fn mixed_cex8_lpar() -> NodeFixture {
    NodeFixture::build(&[
        CardFixture::bound(0x00, "CEX8C", 14).domains([0x29, 0x2a]),
        CardFixture::bound(0x02, "CEX8A", 14).domains([0x29, 0x2a]),
        CardFixture::bound(0x03, "CEX8P", 14).domains([0x11]),
        CardFixture::bound(0x04, "CEX8P", 14).domains([0x29, 0x2a]),
    ])
}

#[test]
fn mixed_cex8_lpar_scans_completely() {
    let node = mixed_cex8_lpar();
    let report = scan(&node.devices_dir()).expect("scan");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let inventory = &report.inventory;
    assert_eq!(
        inventory.cards.keys().copied().collect::<Vec<_>>(),
        vec![0, 2, 3, 4]
    );
    assert_eq!(inventory.queues.len(), 7);
    let card = inventory.card(3).expect("card 03");
    assert_eq!(card.card_type, card_type("CEX8P"));
    assert_eq!(card.hwtype, Some(14));
    assert_eq!(card.raw_hwtype, Some(14));
    assert_eq!(card.online, Some(true));
    assert_eq!(card.config, Some(true));
    assert_eq!(card.chkstop, Some(false));
    assert_eq!(
        inventory.card(2).and_then(|card| card.card_type),
        card_type("CEX8A")
    );
    for apqn in inventory.queues.keys() {
        assert!(inventory.is_usable(*apqn), "{apqn}");
    }
    assert!(inventory.queue(Apqn::new(3, 0x11)).is_some());
    assert!(inventory.queue(Apqn::new(3, 0x29)).is_none());
}

#[test]
fn apqn_summary_lists_tuples() {
    let node = mixed_cex8_lpar();
    let report = scan(&node.devices_dir()).expect("scan");
    assert_eq!(
        format_apqns(&report.inventory),
        "(0,41,cex8,cca,true), (0,42,cex8,cca,true), (2,41,cex8,accel,true), \
         (2,42,cex8,accel,true), (3,17,cex8,ep11,true), (4,41,cex8,ep11,true), \
         (4,42,cex8,ep11,true)"
    );
}

#[test]
fn older_kernel_without_config_and_chkstop() {
    let node = NodeFixture::build(&[
        CardFixture::bound(0x04, "CEX5C", 11)
            .domains([0x13])
            .queue(QueueFixture::bound(0x14).with("online", "0"))
            .old_kernel(),
        CardFixture::bound(0x05, "CEX5P", 11)
            .domains([0x13, 0x14])
            .old_kernel(),
        CardFixture::bound(0x0a, "CEX6C", 12)
            .domains([0x13])
            .queue(QueueFixture::bound(0x14).with("online", "0"))
            .old_kernel(),
    ]);
    let report = scan(&node.devices_dir()).expect("scan");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let inventory = &report.inventory;
    assert_eq!(inventory.cards.len(), 3);
    assert_eq!(inventory.queues.len(), 6);
    let card = inventory.card(0x0a).expect("card 0a");
    assert_eq!(card.card_type, card_type("CEX6C"));
    assert_eq!(card.hwtype, Some(12));
    assert_eq!(card.config, None);
    assert_eq!(card.chkstop, None);
    let queue = inventory.queue(Apqn::new(5, 0x14)).expect("queue 05.0014");
    assert_eq!(queue.config, None);
    assert_eq!(queue.chkstop, None);
    assert_eq!(queue.online, Some(true));
    assert!(inventory.is_usable(Apqn::new(5, 0x14)));
    assert!(!inventory.is_usable(Apqn::new(4, 0x14)));
    assert!(!inventory.is_usable(Apqn::new(0x0a, 0x14)));
    assert!(inventory.is_usable(Apqn::new(0x0a, 0x13)));
}

#[test]
fn zvm_guest_with_one_card() {
    let node = NodeFixture::build(&[CardFixture::bound(0x08, "CEX7C", 13).domains([0x31, 0x32])]);
    let report = scan(&node.devices_dir()).expect("scan");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let inventory = &report.inventory;
    assert_eq!(inventory.cards.len(), 1);
    assert_eq!(
        inventory.queues.keys().copied().collect::<Vec<_>>(),
        vec![Apqn::new(8, 0x31), Apqn::new(8, 0x32)]
    );
    assert_eq!(
        format_apqns(inventory),
        "(8,49,cex7,cca,true), (8,50,cex7,cca,true)"
    );
}

#[test]
fn degraded_node_reports_each_state() {
    let node = NodeFixture::build(&[
        CardFixture::bound(0x06, "CEX6A", 12).domains([51, 52]),
        CardFixture::bound(0x08, "CEX6C", 12).domains([51]).queue(
            QueueFixture::bound(52)
                .with("config", "0")
                .with("online", "0"),
        ),
        CardFixture::bound(0x09, "CEX6C", 12)
            .with("online", "0")
            .domains([51, 52]),
        CardFixture::bound(0x0a, "CEX6P", 12).domains([51]).queue(
            QueueFixture::bound(52)
                .with("chkstop", "1")
                .with("online", "0"),
        ),
        CardFixture::bound(0x0b, "CEX6P", 12)
            .with("config", "0")
            .with("online", "0")
            .domains([51]),
        CardFixture::bound(0x0c, "CEX6C", 12)
            .with("chkstop", "1")
            .domains([51]),
    ]);
    let report = scan(&node.devices_dir()).expect("scan");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let inventory = &report.inventory;
    assert_eq!(inventory.cards.len(), 6);
    assert_eq!(inventory.queues.len(), 10);
    assert_eq!(inventory.card(9).and_then(|card| card.online), Some(false));
    assert_eq!(
        inventory
            .queue(Apqn::new(9, 51))
            .and_then(|queue| queue.online),
        Some(false)
    );
    assert_eq!(
        inventory
            .queue(Apqn::new(8, 52))
            .and_then(|queue| queue.config),
        Some(false)
    );
    assert_eq!(
        inventory
            .queue(Apqn::new(0x0a, 52))
            .and_then(|queue| queue.chkstop),
        Some(true)
    );
    assert_eq!(
        inventory.card(0x0b).and_then(|card| card.config),
        Some(false)
    );
    assert_eq!(
        inventory.card(0x0c).and_then(|card| card.chkstop),
        Some(true)
    );

    let usable: Vec<Apqn> = inventory
        .queues
        .keys()
        .copied()
        .filter(|apqn| inventory.is_usable(*apqn))
        .collect();
    assert_eq!(
        usable,
        vec![
            Apqn::new(6, 51),
            Apqn::new(6, 52),
            Apqn::new(8, 51),
            Apqn::new(0x0a, 51)
        ]
    );
}

#[test]
fn future_generation_card() {
    // A later card reports a raw type above CEX8 and a compatible hwtype.
    let node = NodeFixture::build(&[CardFixture::bound(0x10, "CEX10P", 14)
        .with("raw_hwtype", "16")
        .domains([0x05])]);
    let report = scan(&node.devices_dir()).expect("scan");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let card = report.inventory.card(0x10).expect("card 10");
    assert_eq!(card.card_type.map(|t| t.generation), Some(10));
    assert_eq!(card.card_type.map(|t| t.mode), Some(CexMode::Ep11));
    assert_eq!(card.hwtype, Some(14));
    assert_eq!(card.raw_hwtype, Some(16));
    assert_eq!(format_apqns(&report.inventory), "(16,5,cex10,ep11,true)");
}

#[test]
fn unbound_card_has_no_type_or_online() {
    let node = NodeFixture::build(&[
        CardFixture::unbound(0x01, 14).queue(QueueFixture::unbound(0x05)),
        CardFixture::bound(0x02, "CEX8P", 14).domains([0x05]),
    ]);
    let report = scan(&node.devices_dir()).expect("scan");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let inventory = &report.inventory;
    let card = inventory.card(1).expect("card 01");
    assert_eq!(card.card_type, None);
    assert_eq!(card.online, None);
    assert_eq!(card.hwtype, Some(14));
    let queue = inventory.queue(Apqn::new(1, 5)).expect("queue 01.0005");
    assert_eq!(queue.online, None);
    assert_eq!(queue.config, Some(true));
    assert!(!inventory.is_usable(Apqn::new(1, 5)));
    assert!(inventory.is_usable(Apqn::new(2, 5)));
    assert_eq!(
        format_apqns(inventory),
        "(1,5,unknown,unknown,false), (2,5,cex8,ep11,true)"
    );
}

/// Reads the CPU time (user and system, all threads) of this process from
/// `/proc/self/stat`, in clock ticks of 10 ms. Wall time alone is noisy on
/// a busy machine.
fn process_cpu_time() -> Option<Duration> {
    let text = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name in parentheses; utime and stime are
    // fields 14 and 15 of the whole line.
    let after_name = text.rsplit_once(") ")?.1;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

#[test]
fn large_lpar_scan_time() {
    let cards: Vec<CardFixture> = (0u8..64)
        .map(|adapter| {
            let card_type = ["CEX8C", "CEX8P", "CEX8A"][usize::from(adapter % 3)];
            let mut card = CardFixture::bound(adapter, card_type, 14);
            for domain in 0u8..85 {
                card = card.queue(QueueFixture::lean(domain));
            }
            card
        })
        .collect();
    let started = Instant::now();
    let node = NodeFixture::build(&cards);
    println!("built 64 x 85 tree in {:?}", started.elapsed());

    let first = scan(&node.devices_dir()).expect("scan");
    assert!(first.problems.is_empty(), "{:?}", first.problems.first());
    assert_eq!(first.inventory.cards.len(), 64);
    assert_eq!(first.inventory.queues.len(), 64 * 85);

    // Debug builds only check that the scan completes; the figure that
    // counts comes from `cargo test --release`.
    let rounds = if cfg!(debug_assertions) { 1 } else { 20u32 };
    let cpu_started = process_cpu_time();
    let started = Instant::now();
    for _ in 0..rounds {
        let report = scan(&node.devices_dir()).expect("scan");
        assert_eq!(report.inventory.queues.len(), 64 * 85);
    }
    let wall = started.elapsed() / rounds;
    let cpu = process_cpu_time()
        .zip(cpu_started)
        .map(|(end, start)| (end - start) / rounds);
    println!(
        "scan of 64 cards x 85 domains (5440 queues), mean of {rounds}: \
         {wall:?} wall, {cpu:?} CPU per scan"
    );
}

#[test]
fn missing_devices_dir_is_an_error() {
    let node = NodeFixture::build(&[]);
    let missing = node.root().join("sys/devices/nothing");
    let error = scan(&missing).expect_err("no AP bus");
    assert!(matches!(error, ScanError::ReadDevicesDir { .. }));
    assert_eq!(
        error.to_string(),
        format!("cannot read AP devices directory {}", missing.display())
    );
}

#[test]
fn empty_bus_scans_to_empty_inventory() {
    let node = NodeFixture::build(&[]);
    let report = scan(&node.devices_dir()).expect("scan");
    assert!(report.problems.is_empty());
    assert!(report.inventory.cards.is_empty());
    assert!(report.inventory.queues.is_empty());
}

#[test]
fn dangling_card_link_is_reported_as_vanished() {
    let node = mixed_cex8_lpar();
    symlink("card99-gone", node.devices_dir().join("card07")).expect("dangling link");
    let report = scan(&node.devices_dir()).expect("scan");

    assert_eq!(
        problem_texts(&node, &report),
        vec!["card07: vanished during the scan"]
    );
    assert_eq!(report.problems[0].kind, ProblemKind::Vanished);
    assert_eq!(report.inventory.cards.len(), 4);
    assert_eq!(report.inventory.queues.len(), 7);
}

#[test]
fn unreadable_queue_dir_is_skipped() {
    let node = mixed_cex8_lpar();
    // A queue entry that is a plain file: opening its attributes fails
    // with ENOTDIR.
    fs::write(node.card_dir(3).join("03.0012"), "").expect("write file");
    let report = scan(&node.devices_dir()).expect("scan");

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.path, node.queue_dir(3, 0x12).join("online"));
    assert!(
        matches!(
            problem.kind,
            ProblemKind::Unreadable {
                kind: std::io::ErrorKind::NotADirectory,
                ..
            }
        ),
        "{problem}"
    );
    assert!(
        problem
            .to_string()
            .contains("03.0012/online: cannot be read: "),
        "{problem}"
    );
    assert_eq!(report.inventory.queues.len(), 7);
}

#[test]
fn attribute_that_is_a_directory_is_unreadable() {
    let node = mixed_cex8_lpar();
    let online = node.queue_dir(4, 0x29).join("online");
    fs::remove_file(&online).expect("remove online");
    fs::create_dir(&online).expect("online as dir");
    let report = scan(&node.devices_dir()).expect("scan");

    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].path, online);
    assert!(matches!(
        report.problems[0].kind,
        ProblemKind::Unreadable { .. }
    ));
    assert!(report.inventory.queue(Apqn::new(4, 0x29)).is_none());
    assert_eq!(report.inventory.queues.len(), 6);
}

#[test]
fn junk_values_skip_only_their_device() {
    let node = mixed_cex8_lpar();
    node.write("card00/type", "CEXfoo\n");
    node.write("card02/02.0029/online", "yes\n");
    node.write("card03/hwtype", "\n");
    node.write("card04/04.002a/chkstop", "2\n");
    node.write("card04/04.0029/config", &"1".repeat(300));
    let report = scan(&node.devices_dir()).expect("scan");

    let long_value = "1".repeat(128);
    assert_eq!(
        problem_texts(&node, &report),
        vec![
            "card00/type: invalid value \"CEXfoo\\n\": expected CEX<generation><A|C|P>".to_string(),
            "card02/02.0029/online: invalid value \"yes\\n\": expected 0 or 1".to_string(),
            "card03/hwtype: invalid value \"\\n\": expected a decimal number".to_string(),
            format!("card04/04.0029/config: invalid value \"{long_value}\": expected 0 or 1"),
            "card04/04.002a/chkstop: invalid value \"2\\n\": expected 0 or 1".to_string(),
        ]
    );
    let inventory = &report.inventory;
    assert_eq!(
        inventory.cards.keys().copied().collect::<Vec<_>>(),
        vec![2, 4]
    );
    // Queues of a skipped card stay listed but are not usable.
    assert!(inventory.queue(Apqn::new(0, 0x29)).is_some());
    assert!(!inventory.is_usable(Apqn::new(0, 0x29)));
    assert!(inventory.queue(Apqn::new(3, 0x11)).is_some());
    assert!(inventory.queue(Apqn::new(2, 0x29)).is_none());
    assert!(inventory.queue(Apqn::new(4, 0x29)).is_none());
    assert!(inventory.queue(Apqn::new(4, 0x2a)).is_none());
    assert!(inventory.is_usable(Apqn::new(2, 0x2a)));
}

#[test]
fn foreign_names_are_reported_and_others_ignored() {
    let node = mixed_cex8_lpar();
    let devices = node.devices_dir();
    for name in ["card1", "card0A", "cardzz", "card100"] {
        fs::create_dir(devices.join(name)).expect("create dir");
    }
    symlink("../../bus/ap", devices.join("subsystem")).expect("subsystem link");
    fs::write(devices.join("modalias"), "x\n").expect("write");
    fs::create_dir(node.card_dir(3).join("05.0011")).expect("queue of other card");
    fs::create_dir(node.card_dir(3).join("03.0100")).expect("domain above 255");
    fs::create_dir(node.card_dir(3).join("03.11")).expect("short domain");
    let report = scan(&node.devices_dir()).expect("scan");

    let card_form = "unexpected name: expected cardXX with two lowercase hex digits";
    let queue_form =
        "unexpected name: expected XX.YYYY with lowercase hex digits and a domain up to 00ff";
    assert_eq!(
        problem_texts(&node, &report),
        vec![
            format!("card03/03.0100: {queue_form}"),
            format!("card03/03.11: {queue_form}"),
            "card03/05.0011: queue of adapter 05 inside the directory of card 03".to_string(),
            format!("card0A: {card_form}"),
            format!("card100: {card_form}"),
            format!("card1: {card_form}"),
            format!("cardzz: {card_form}"),
        ]
    );
    assert_eq!(report.inventory.cards.len(), 4);
    assert_eq!(report.inventory.queues.len(), 7);
}

#[test]
fn removed_card_during_scans_never_loses_the_rest() {
    let node = mixed_cex8_lpar();
    let hotplug = CardFixture::bound(0x20, "CEX8P", 14).domains(0u8..40);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                node.add_card(&hotplug);
                fs::remove_dir_all(node.card_dir(0x20)).expect("unplug card");
            }
        });
        for _ in 0..50 {
            let report = scan(&node.devices_dir()).expect("scan");
            for apqn in mixed_cex8_lpar_apqns() {
                assert!(
                    report.inventory.is_usable(apqn),
                    "{apqn} lost: {:?}",
                    report.problems
                );
            }
            for problem in &report.problems {
                assert!(problem.path.starts_with(node.card_dir(0x20)), "{problem}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

fn mixed_cex8_lpar_apqns() -> Vec<Apqn> {
    [
        (0, 0x29),
        (0, 0x2a),
        (2, 0x29),
        (2, 0x2a),
        (3, 0x11),
        (4, 0x29),
        (4, 0x2a),
    ]
    .into_iter()
    .map(|(adapter, domain)| Apqn::new(adapter, domain))
    .collect()
}
