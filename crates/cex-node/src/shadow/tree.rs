//! The contents of one shadow sysfs tree.
//!
//! The layout follows the host's: `bus/ap/devices/*` and
//! `bus/ap/drivers/*/*` are relative symlinks into `devices/ap`, and each
//! device dir has `driver` and `subsystem` links back into `bus/ap`, so
//! every link resolves inside the tree and, once mounted, inside the
//! container's `/sys`. Files are 0444 and directories 0755.

use std::fs;
use std::io;
use std::path::Path;

use cex_ap::{Apqn, Mask256};

use super::{ShadowError, SysfsVariant};
use crate::fsat::DirHandle;
use crate::NodePaths;

const FILE_MODE: u32 = 0o444;
const DIR_MODE: u32 = 0o755;

/// Bus attributes copied from the host; the first list is required.
const BUS_COPIES: [&str; 4] = [
    "ap_interrupts",
    "ap_max_domain_id",
    "poll_thread",
    "poll_timeout",
];
const BUS_OPTIONAL: [&str; 1] = ["ap_max_adapter_id"];
/// Card attributes copied from the host; the first list is required.
const CARD_COPIES: [&str; 5] = ["ap_functions", "depth", "hwtype", "raw_hwtype", "type"];
const CARD_OPTIONAL: [&str; 4] = ["API_ordinalnr", "FW_version", "op_modes", "serialnr"];
/// Queue attributes copied from the host; the first list is required.
const QUEUE_COPIES: [&str; 2] = ["interrupt", "reset"];
const QUEUE_OPTIONAL: [&str; 2] = ["mkvps", "op_modes"];
/// Attributes that a live tree links from the card dir into the queue dir.
const LIVE_COUNTERS: [&str; 4] = [
    "online",
    "pendingq_count",
    "request_count",
    "requestq_count",
];

/// Fills the empty dir `root` with `bus/ap` and `devices/ap` for `apqn`.
pub(super) fn build(
    root: &DirHandle,
    paths: &NodePaths,
    apqn: Apqn,
    variant: SysfsVariant,
) -> Result<(), ShadowError> {
    build_bus(root, &paths.ap_bus_dir, apqn)?;
    let card_source = paths.ap_devs_dir.join(apqn.card_dir_name());
    let devices = root.create_dirs(&["devices", "ap"], DIR_MODE)?;
    let card = devices.create_dir(apqn.card_dir_name(), DIR_MODE)?;
    build_card(&card, &card_source, apqn, variant)?;
    let queue = card.create_dir(apqn.queue_dir_name(), DIR_MODE)?;
    build_queue(&queue, &card_source.join(apqn.queue_dir_name()))
}

fn build_bus(root: &DirHandle, source: &Path, apqn: Apqn) -> Result<(), ShadowError> {
    let bus = root.create_dirs(&["bus", "ap"], DIR_MODE)?;
    copy_attributes(&bus, source, &BUS_COPIES, &BUS_OPTIONAL)?;
    bus.write_file(
        "ap_domain",
        format!("{}\n", apqn.domain).as_bytes(),
        FILE_MODE,
    )?;
    let masks = [
        ("ap_adapter_mask", Mask256::single(apqn.adapter)),
        ("ap_usage_domain_mask", Mask256::single(apqn.domain)),
        ("ap_control_domain_mask", Mask256::empty()),
        ("apmask", Mask256::full()),
        ("aqmask", Mask256::full()),
    ];
    for (name, mask) in masks {
        bus.write_file(name, format!("{mask}\n").as_bytes(), FILE_MODE)?;
    }

    let card = apqn.card_dir_name();
    let queue = apqn.queue_dir_name();
    let devices = bus.create_dir("devices", DIR_MODE)?;
    devices.symlink(&card, &format!("../../../devices/ap/{card}"))?;
    devices.symlink(&queue, &format!("../../../devices/ap/{card}/{queue}"))?;
    let card_driver = bus.create_dirs(&["drivers", "cex4card"], DIR_MODE)?;
    card_driver.symlink(&card, &format!("../../../../devices/ap/{card}"))?;
    let queue_driver = bus.create_dirs(&["drivers", "cex4queue"], DIR_MODE)?;
    queue_driver.symlink(&queue, &format!("../../../../devices/ap/{card}/{queue}"))?;
    Ok(())
}

fn build_card(
    card: &DirHandle,
    source: &Path,
    apqn: Apqn,
    variant: SysfsVariant,
) -> Result<(), ShadowError> {
    copy_attributes(card, source, &CARD_COPIES, &CARD_OPTIONAL)?;
    card.write_file("load", b"0\n", FILE_MODE)?;
    match variant {
        SysfsVariant::Static => write_counters(card)?,
        SysfsVariant::Live => {
            let queue = apqn.queue_dir_name();
            for name in LIVE_COUNTERS {
                card.symlink(name, &format!("{queue}/{name}"))?;
            }
        }
    }
    card.symlink("driver", "../../../bus/ap/drivers/cex4card")?;
    card.symlink("subsystem", "../../../bus/ap")?;
    Ok(())
}

fn build_queue(queue: &DirHandle, source: &Path) -> Result<(), ShadowError> {
    copy_attributes(queue, source, &QUEUE_COPIES, &QUEUE_OPTIONAL)?;
    queue.write_file("load", b"0\n", FILE_MODE)?;
    write_counters(queue)?;
    queue.symlink("driver", "../../../../bus/ap/drivers/cex4queue")?;
    queue.symlink("subsystem", "../../../../bus/ap")?;
    Ok(())
}

/// Writes the static `online` (1) and zero counters.
fn write_counters(dir: &DirHandle) -> Result<(), ShadowError> {
    dir.write_file("online", b"1\n", FILE_MODE)?;
    for name in ["pendingq_count", "request_count", "requestq_count"] {
        dir.write_file(name, b"0\n", FILE_MODE)?;
    }
    Ok(())
}

/// Copies the `required` attributes of the host dir `source` into `dir`,
/// and each `optional` one that exists.
fn copy_attributes(
    dir: &DirHandle,
    source: &Path,
    required: &[&str],
    optional: &[&str],
) -> Result<(), ShadowError> {
    let required = required.iter().map(|name| (*name, true));
    let optional = optional.iter().map(|name| (*name, false));
    for (name, is_required) in required.chain(optional) {
        let path = source.join(name);
        match fs::read(&path) {
            Ok(contents) => dir.write_file(name, &contents, FILE_MODE)?,
            Err(error) if !is_required && error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ShadowError::ReadSource { path, source }),
        }
    }
    Ok(())
}
