//! `cexctl inventory`: the APQNs of a node with their state and the config
//! sets they belong to.
//!
//! The AP bus is read with the agent's scanner below `<root>/sys/devices/ap`
//! and the machine id from `<root>/proc/sysinfo`, so the command shows what
//! the agent would see on that node (or on a simulated node root). With a
//! config, each APQN lists the sets whose entries name it on this machine,
//! and whether the set's `cexmode` and `mincexgen` let it be announced.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use cex_ap::{Apqn, Card, Inventory, Queue, ScanError, ScanReport};
use cex_config::{ConfigSet, CryptoConfig};
use serde::Serialize;

/// The AP devices directory below the node root.
const AP_DEVICES_DIR: &str = "sys/devices/ap";

/// The file with the machine id below the node root.
const SYSINFO_FILE: &str = "proc/sysinfo";

/// Arguments of `cexctl inventory`.
#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    /// Root of the node: the AP bus is read below DIR/sys/devices/ap and the
    /// machine id from DIR/proc/sysinfo.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Config whose sets are matched against the APQNs: a
    /// cex_resources.json file, or a mounted ConfigMap directory that
    /// contains one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Output formats of `cexctl inventory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One aligned row per APQN.
    Table,
    /// One JSON document (the `InventoryReport` fields).
    Json,
}

/// The inventory of one node, as printed with `--output json`.
#[derive(Debug, Serialize)]
pub struct InventoryReport {
    /// `<Manufacturer>-<Type>-<Sequence Code>`, `None` when unreadable.
    pub machine_id: Option<String>,
    /// False when the node has no AP devices directory.
    pub ap_bus: bool,
    pub apqns: Vec<ApqnEntry>,
    /// Config entries for this machine whose APQN the node does not have.
    pub absent_config_apqns: Vec<AbsentApqn>,
    /// Cards, queues or attributes the scan skipped.
    pub problems: Vec<String>,
}

/// One APQN with its card's type and the states of queue and card.
///
/// States are `None` where the kernel has no such file: `online` needs a
/// bound zcrypt driver, `config` and `chkstop` a kernel from the 5.10 era
/// on.
#[derive(Debug, Serialize)]
pub struct ApqnEntry {
    /// Queue name `XX.YYYY` in hex.
    pub apqn: String,
    pub adapter: u8,
    pub domain: u8,
    pub card_type: Option<String>,
    pub generation: Option<u32>,
    pub mode: Option<String>,
    pub online: Option<bool>,
    pub config: Option<bool>,
    pub chkstop: Option<bool>,
    pub card_online: Option<bool>,
    pub card_config: Option<bool>,
    pub card_chkstop: Option<bool>,
    /// Queue and card online, configured and not check-stopped.
    pub usable: bool,
    pub sets: Vec<SetMembership>,
}

/// A set whose APQN list names this APQN on this machine.
#[derive(Debug, Serialize)]
pub struct SetMembership {
    pub setname: String,
    /// False when the set's `cexmode` or `mincexgen` excludes the card.
    pub eligible: bool,
    pub reason: Option<String>,
}

/// An APQN that a set names for this machine but the node lacks.
#[derive(Debug, Serialize)]
pub struct AbsentApqn {
    pub setname: String,
    pub apqn: String,
    pub adapter: u8,
    pub domain: u8,
}

/// Runs `cexctl inventory`: prints the report on stdout, and config
/// warnings and skipped sysfs entries on stderr.
pub fn run(args: &InventoryArgs) -> anyhow::Result<ExitCode> {
    if !args.root.is_dir() {
        anyhow::bail!("node root {} is not a directory", args.root.display());
    }
    let config = match &args.config {
        Some(path) => Some(read_config(path)?),
        None => None,
    };
    let report = build_report(&args.root, config.as_ref())?;
    for problem in &report.problems {
        eprintln!("warning: skipped {problem}");
    }
    match args.output {
        OutputFormat::Json => {
            if !report.ap_bus {
                eprintln!("{}", no_ap_bus_message(&args.root));
            }
            let text = serde_json::to_string_pretty(&report)
                .context("failed to encode the inventory as JSON")?;
            println!("{text}");
        }
        OutputFormat::Table if !report.ap_bus => {
            println!("{}", machine_line(&report));
            println!("{}", no_ap_bus_message(&args.root));
        }
        OutputFormat::Table => print!("{}", table(&report)),
    }
    Ok(ExitCode::SUCCESS)
}

fn no_ap_bus_message(root: &Path) -> String {
    format!(
        "no AP bus on this node: {} does not exist, so there are no APQNs",
        root.join(AP_DEVICES_DIR).display()
    )
}

fn machine_line(report: &InventoryReport) -> String {
    format!(
        "machine id: {}",
        report.machine_id.as_deref().unwrap_or("unknown")
    )
}

/// Reads and verifies the config at `path` (a file, or a mounted ConfigMap
/// directory) and prints its warnings on stderr.
fn read_config(path: &Path) -> anyhow::Result<CryptoConfig> {
    let file = super::validate::config_file(path);
    let loaded = cex_config::load(&file)
        .with_context(|| format!("failed to load config {}", path.display()))?;
    for warning in &loaded.warnings {
        eprintln!("warning: {}: {warning}", file.display());
    }
    Ok(loaded.config)
}

/// Reads the machine id, or `None` (with a warning) when sysinfo lacks it.
fn machine_id(root: &Path) -> Option<String> {
    match cex_ap::read_machine_id(&root.join(SYSINFO_FILE)) {
        Ok(id) => Some(id),
        Err(error) => {
            let error = anyhow::Error::new(error);
            eprintln!(
                "warning: machine id unknown, so config entries with a machineid are not \
                 matched: {error:#}"
            );
            None
        }
    }
}

/// Scans the AP bus below `root`, returning `None` when the node has no AP
/// devices directory.
fn scan_node(root: &Path) -> anyhow::Result<Option<ScanReport>> {
    let devices = root.join(AP_DEVICES_DIR);
    match cex_ap::scan(&devices) {
        Ok(report) => Ok(Some(report)),
        Err(ScanError::ReadDevicesDir { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(error) => Err(anyhow::Error::new(error)),
    }
}

fn build_report(root: &Path, config: Option<&CryptoConfig>) -> anyhow::Result<InventoryReport> {
    let machine_id = machine_id(root);
    let scanned = scan_node(root)?;
    let ap_bus = scanned.is_some();
    let ScanReport {
        inventory,
        problems,
    } = scanned.unwrap_or_default();
    let machine = machine_id.as_deref().unwrap_or("");
    let apqns = inventory
        .queues
        .values()
        .map(|queue| {
            let card = inventory.card(queue.apqn.adapter);
            let sets = config.map_or_else(Vec::new, |config| {
                memberships(config, machine, queue.apqn, card)
            });
            entry(&inventory, queue, card, sets)
        })
        .collect();
    let absent_config_apqns =
        config.map_or_else(Vec::new, |config| absent_apqns(config, machine, &inventory));
    Ok(InventoryReport {
        machine_id,
        ap_bus,
        apqns,
        absent_config_apqns,
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

fn entry(
    inventory: &Inventory,
    queue: &Queue,
    card: Option<&Card>,
    sets: Vec<SetMembership>,
) -> ApqnEntry {
    let card_type = card.and_then(|card| card.card_type);
    ApqnEntry {
        apqn: queue.apqn.to_string(),
        adapter: queue.apqn.adapter,
        domain: queue.apqn.domain,
        card_type: card_type.map(|card_type| card_type.to_string()),
        generation: card_type.map(|card_type| card_type.generation),
        mode: card_type.map(|card_type| card_type.mode.to_string()),
        online: queue.online,
        config: queue.config,
        chkstop: queue.chkstop,
        card_online: card.and_then(|card| card.online),
        card_config: card.and_then(|card| card.config),
        card_chkstop: card.and_then(|card| card.chkstop),
        usable: inventory.is_usable(queue.apqn),
        sets,
    }
}

/// Lists the sets that name `apqn` on machine `machine_id`, each with
/// whether it announces the APQN.
fn memberships(
    config: &CryptoConfig,
    machine_id: &str,
    apqn: Apqn,
    card: Option<&Card>,
) -> Vec<SetMembership> {
    config
        .sets
        .iter()
        .filter(|set| {
            set.apqns
                .iter()
                .any(|entry| entry.apqn() == apqn && entry.applies_to(machine_id))
        })
        .map(|set| {
            let reason = exclusion(set, card);
            SetMembership {
                setname: set.setname.clone(),
                eligible: reason.is_none(),
                reason,
            }
        })
        .collect()
}

/// Explains why `set` does not announce APQNs of `card`, or returns `None`
/// when it does.
fn exclusion(set: &ConfigSet, card: Option<&Card>) -> Option<String> {
    if set.cexmode.is_none() && set.mincexgen.is_none() {
        return None;
    }
    let Some(card_type) = card.and_then(|card| card.card_type) else {
        return Some("card type unknown".to_string());
    };
    if let Some(mode) = set.cexmode {
        if mode != card_type.mode {
            return Some(format!("card mode {}, set cexmode {mode}", card_type.mode));
        }
    }
    if let Some(minimum) = set.mincexgen {
        if card_type.generation < minimum {
            return Some(format!(
                "card generation cex{}, set mincexgen cex{minimum}",
                card_type.generation
            ));
        }
    }
    None
}

fn absent_apqns(config: &CryptoConfig, machine_id: &str, inventory: &Inventory) -> Vec<AbsentApqn> {
    let mut absent = Vec::new();
    for set in &config.sets {
        for entry in &set.apqns {
            if entry.applies_to(machine_id) && inventory.queue(entry.apqn()).is_none() {
                absent.push(AbsentApqn {
                    setname: set.setname.clone(),
                    apqn: entry.apqn().to_string(),
                    adapter: entry.adapter,
                    domain: entry.domain,
                });
            }
        }
    }
    absent
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn set_list(sets: &[SetMembership]) -> String {
    if sets.is_empty() {
        return "-".to_string();
    }
    let names: Vec<String> = sets
        .iter()
        .map(|set| match &set.reason {
            None => set.setname.clone(),
            Some(reason) => format!("{} (not announced: {reason})", set.setname),
        })
        .collect();
    names.join(", ")
}

const TABLE_HEADER: [&str; 9] = [
    "APQN", "ADAPTER", "DOMAIN", "GEN", "MODE", "ONLINE", "CONFIG", "CHKSTOP", "SETS",
];

fn table_row(entry: &ApqnEntry) -> Vec<String> {
    vec![
        entry.apqn.clone(),
        format!("0x{:02x} ({})", entry.adapter, entry.adapter),
        format!("0x{:04x} ({})", entry.domain, entry.domain),
        entry
            .generation
            .map_or("-".to_string(), |generation| format!("cex{generation}")),
        entry.mode.clone().unwrap_or_else(|| "-".to_string()),
        yes_no(entry.online).to_string(),
        yes_no(entry.config).to_string(),
        yes_no(entry.chkstop).to_string(),
        set_list(&entry.sets),
    ]
}

/// Pads each cell to its column's width, two spaces between columns.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Formats the report as aligned columns, one row per APQN, followed by
/// the config entries that name APQNs the node lacks.
pub fn table(report: &InventoryReport) -> String {
    let mut rows: Vec<Vec<String>> = vec![TABLE_HEADER.iter().map(ToString::to_string).collect()];
    rows.extend(report.apqns.iter().map(table_row));
    let mut out = format!("{}\n{}", machine_line(report), align(&rows));
    out.push_str(&format!("{} APQNs\n", report.apqns.len()));
    for absent in &report.absent_config_apqns {
        out.push_str(&format!(
            "set {}: APQN {} is not on this node\n",
            absent.setname, absent.apqn
        ));
    }
    out
}
