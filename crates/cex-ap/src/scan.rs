//! AP bus scanner: reads the card and queue directories below the AP
//! devices directory (`/sys/devices/ap` on a host) into an [`Inventory`].
//!
//! Cards are `cardXX` directories (two lowercase hex digits) and queues are
//! `XX.YYYY` directories inside their card, as the kernel names them with
//! `dev_set_name` in `drivers/s390/crypto/ap_bus.c`. A scan reads the card
//! attributes `type`, `hwtype`, `raw_hwtype`, `online`, `config`, `chkstop`
//! and the queue attributes `online`, `config`, `chkstop`. A missing file
//! is `None`: `type` and `online` exist only while a zcrypt driver is
//! bound, `config` and `chkstop` only on kernels from the 5.10 era on.
//!
//! Sysfs changes under the scanner's feet (hot unplug, a driver unbinding),
//! so one bad card or queue never aborts the scan. It is recorded as a
//! [`ScanProblem`] and left out of the inventory, and everything else is
//! still reported. A device with an unreadable or malformed attribute is
//! left out as a whole rather than kept with a guessed state, because a
//! guess could mark an unusable APQN healthy. Queues of a left-out card
//! stay in the inventory, and [`Inventory::is_usable`] reports them
//! unusable because their card is missing.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};

use crate::{Apqn, Card, CardType, Inventory, Queue};

/// The result of one scan: what was found and what had to be skipped
/// (problems sorted by path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub inventory: Inventory,
    pub problems: Vec<ScanProblem>,
}

/// A card, queue or attribute that the scan skipped, with the path at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    pub path: PathBuf,
    pub kind: ProblemKind,
}

/// The fault found at a path during a scan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    /// The directory was listed but was gone when its attributes were read.
    #[error("vanished during the scan")]
    Vanished,
    /// Reading failed for another reason than the file being absent.
    #[error("cannot be read: {message}")]
    Unreadable {
        kind: io::ErrorKind,
        message: String,
    },
    /// An attribute contains a value the kernel never writes.
    #[error("invalid value {value:?}: expected {expected}")]
    Malformed {
        value: String,
        expected: &'static str,
    },
    /// A directory entry looks like a card or queue but does not follow the
    /// kernel's naming.
    #[error("unexpected name: expected {expected}")]
    ForeignName { expected: &'static str },
    /// A queue directory whose adapter part names another card.
    #[error("queue of adapter {queue_adapter:02x} inside the directory of card {card:02x}")]
    WrongCard { card: u8, queue_adapter: u8 },
}

/// The AP devices directory itself cannot be read: the node has no AP bus
/// (or the path is wrong).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Listing the AP devices directory failed.
    #[error("cannot read AP devices directory {}", path.display())]
    ReadDevicesDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl fmt::Display for ScanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

impl ScanProblem {
    fn new(path: impl Into<PathBuf>, kind: ProblemKind) -> Self {
        Self {
            path: path.into(),
            kind,
        }
    }

    fn io(path: impl Into<PathBuf>, error: &io::Error) -> Self {
        let kind = match error.kind() {
            io::ErrorKind::NotFound => ProblemKind::Vanished,
            kind => ProblemKind::Unreadable {
                kind,
                message: error.to_string(),
            },
        };
        Self::new(path, kind)
    }
}

const CARD_NAME_FORM: &str = "cardXX with two lowercase hex digits";
const QUEUE_NAME_FORM: &str = "XX.YYYY with lowercase hex digits and a domain up to 00ff";
const BOOL_FORM: &str = "0 or 1";
const HWTYPE_FORM: &str = "a decimal number";
const TYPE_FORM: &str = "CEX<generation><A|C|P>";

/// Scans the AP devices directory (`/sys/devices/ap` on a host).
///
/// Returns `Err` only when `devices_dir` itself cannot be listed; every
/// other failure becomes a [`ScanProblem`] in the report.
pub fn scan(devices_dir: &Path) -> Result<ScanReport, ScanError> {
    let mut report = ScanReport::default();
    let cards = list_cards(devices_dir, &mut report.problems)?;
    let workers = worker_count(cards.len());
    if workers <= 1 {
        for (adapter, card_dir) in &cards {
            scan_card(*adapter, card_dir, &mut report);
        }
    } else {
        scan_cards_in_parallel(&cards, workers, &mut report);
    }
    report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    tracing::debug!(
        cards = report.inventory.cards.len(),
        queues = report.inventory.queues.len(),
        problems = report.problems.len(),
        dir = %devices_dir.display(),
        "AP bus scanned"
    );
    Ok(report)
}

/// Lists the `cardXX` entries of the devices directory.
fn list_cards(
    devices_dir: &Path,
    problems: &mut Vec<ScanProblem>,
) -> Result<Vec<(u8, PathBuf)>, ScanError> {
    let entries = fs::read_dir(devices_dir).map_err(|source| ScanError::ReadDevicesDir {
        path: devices_dir.to_path_buf(),
        source,
    })?;
    let mut cards = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                problems.push(ScanProblem::io(devices_dir, &error));
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // The root device also contains `uevent`, `power` and driver-core links.
        if !name.starts_with("card") {
            continue;
        }
        match parse_card_name(&name) {
            Some(adapter) => cards.push((adapter, entry.path())),
            None => problems.push(ScanProblem::new(
                entry.path(),
                ProblemKind::ForeignName {
                    expected: CARD_NAME_FORM,
                },
            )),
        }
    }
    Ok(cards)
}

/// Cards per worker thread below which one thread is faster than
/// starting more.
const CARDS_PER_WORKER: usize = 8;
const MAX_WORKERS: usize = 8;

/// Scanning is bound by `open`/`read`/`close` system calls (about 4 µs per
/// attribute on an x86 test VM), so large trees are split across threads.
fn worker_count(cards: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
    cpus.min(MAX_WORKERS).min(cards / CARDS_PER_WORKER).max(1)
}

fn scan_cards_in_parallel(cards: &[(u8, PathBuf)], workers: usize, report: &mut ScanReport) {
    let chunk_len = cards.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = cards
            .chunks(chunk_len)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut partial = ScanReport::default();
                    for (adapter, card_dir) in chunk {
                        scan_card(*adapter, card_dir, &mut partial);
                    }
                    partial
                })
            })
            .collect();
        for handle in handles {
            let partial = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            report.inventory.cards.extend(partial.inventory.cards);
            report.inventory.queues.extend(partial.inventory.queues);
            report.problems.extend(partial.problems);
        }
    });
}

fn scan_card(adapter: u8, card_dir: &Path, report: &mut ScanReport) {
    let opened = open_dir(card_dir).and_then(|fd| Ok((fs::read_dir(card_dir)?, fd)));
    let (entries, card_fd) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            report.problems.push(ScanProblem::io(card_dir, &error));
            return;
        }
    };
    match read_card(adapter, card_dir, card_fd.as_fd()) {
        Ok(card) => {
            report.inventory.cards.insert(adapter, card);
        }
        Err(problem) => report.problems.push(problem),
    }
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                report.problems.push(ScanProblem::io(card_dir, &error));
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Card attributes never contain a dot; queue directories always do.
        if name.contains('.') {
            scan_queue(adapter, &name, &entry.path(), card_fd.as_fd(), report);
        }
    }
}

fn scan_queue(
    card: u8,
    name: &str,
    queue_dir: &Path,
    card_fd: BorrowedFd<'_>,
    report: &mut ScanReport,
) {
    let Some(apqn) = parse_queue_name(name) else {
        let kind = ProblemKind::ForeignName {
            expected: QUEUE_NAME_FORM,
        };
        report.problems.push(ScanProblem::new(queue_dir, kind));
        return;
    };
    if apqn.adapter != card {
        let kind = ProblemKind::WrongCard {
            card,
            queue_adapter: apqn.adapter,
        };
        report.problems.push(ScanProblem::new(queue_dir, kind));
        return;
    }
    match read_queue(apqn, queue_dir, card_fd, name) {
        Ok(queue) => {
            report.inventory.queues.insert(apqn, queue);
        }
        Err(problem) => report.problems.push(problem),
    }
}

/// Opens a directory so that its attributes are opened relative to it,
/// which spares the kernel a walk of the whole path for every file.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(CWD, path, flags, Mode::empty())?)
}

fn read_card(adapter: u8, dir: &Path, fd: BorrowedFd<'_>) -> Result<Card, ScanProblem> {
    let mut reader = AttributeReader::new(dir, fd, "");
    let card = Card {
        adapter,
        card_type: reader.parse("type", TYPE_FORM, |text| text.parse::<CardType>().ok())?,
        hwtype: reader.parse("hwtype", HWTYPE_FORM, parse_decimal)?,
        raw_hwtype: reader.parse("raw_hwtype", HWTYPE_FORM, parse_decimal)?,
        online: reader.parse("online", BOOL_FORM, parse_bool)?,
        config: reader.parse("config", BOOL_FORM, parse_bool)?,
        chkstop: reader.parse("chkstop", BOOL_FORM, parse_bool)?,
    };
    reader.check_present()?;
    Ok(card)
}

/// Reads the queue `queue_name` through its card's directory `card_fd`:
/// opening `XX.YYYY/online` relative to the card saves opening and closing
/// every queue directory.
fn read_queue(
    apqn: Apqn,
    dir: &Path,
    card_fd: BorrowedFd<'_>,
    queue_name: &str,
) -> Result<Queue, ScanProblem> {
    let prefix = format!("{queue_name}/");
    let mut reader = AttributeReader::new(dir, card_fd, &prefix);
    let queue = Queue {
        apqn,
        online: reader.parse("online", BOOL_FORM, parse_bool)?,
        config: reader.parse("config", BOOL_FORM, parse_bool)?,
        chkstop: reader.parse("chkstop", BOOL_FORM, parse_bool)?,
    };
    reader.check_present()?;
    Ok(queue)
}

/// Reads small sysfs attributes of one device directory.
struct AttributeReader<'a> {
    dir: &'a Path,
    /// The directory the attribute names are opened relative to.
    base: BorrowedFd<'a>,
    /// `XX.YYYY/` when `base` is the queue's card directory, else empty.
    prefix: &'a str,
    /// Set when an attribute was absent, so the directory itself must be
    /// checked: a vanished directory also makes every attribute absent.
    saw_missing: bool,
}

/// sysfs attributes the scanner reads are a few bytes long; anything that
/// fills this buffer is not a value the kernel writes.
const ATTRIBUTE_BUFFER_LEN: usize = 128;

impl<'a> AttributeReader<'a> {
    fn new(dir: &'a Path, base: BorrowedFd<'a>, prefix: &'a str) -> Self {
        Self {
            dir,
            base,
            prefix,
            saw_missing: false,
        }
    }

    /// Reads and parses attribute `name`; `Ok(None)` when the file is absent.
    fn parse<T>(
        &mut self,
        name: &str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ScanProblem> {
        let mut buffer = [0u8; ATTRIBUTE_BUFFER_LEN];
        let relative = format!("{}{name}", self.prefix);
        let len = match read_small_file(self.base, &relative, &mut buffer) {
            Ok(len) => len,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.saw_missing = true;
                return Ok(None);
            }
            Err(error) => {
                let kind = ProblemKind::Unreadable {
                    kind: error.kind(),
                    message: error.to_string(),
                };
                return Err(ScanProblem::new(self.dir.join(name), kind));
            }
        };
        let text = String::from_utf8_lossy(&buffer[..len]);
        let value = if len < buffer.len() {
            parse(&text)
        } else {
            None
        };
        match value {
            Some(value) => Ok(Some(value)),
            None => {
                let kind = ProblemKind::Malformed {
                    value: text.into_owned(),
                    expected,
                };
                Err(ScanProblem::new(self.dir.join(name), kind))
            }
        }
    }

    /// Fails with [`ProblemKind::Vanished`] when an absent attribute was in
    /// fact a directory removed during the scan.
    fn check_present(&self) -> Result<(), ScanProblem> {
        if !self.saw_missing {
            return Ok(());
        }
        match fs::metadata(self.dir) {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(ScanProblem::new(self.dir, ProblemKind::Vanished)),
            Err(error) => Err(ScanProblem::io(self.dir, &error)),
        }
    }
}

/// Reads attribute `name` of the directory `dir` with one `read`, without
/// the size query that `fs::read_to_string` makes: a sysfs `show` function
/// fills the whole value in one call, and fewer system calls keep large
/// scans fast.
fn read_small_file(dir: BorrowedFd<'_>, name: &str, buffer: &mut [u8]) -> io::Result<usize> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    loop {
        match rustix::io::read(&fd, &mut *buffer) {
            Err(rustix::io::Errno::INTR) => {}
            result => return Ok(result?),
        }
    }
}

pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text.trim_end_matches('\n') {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn parse_decimal(text: &str) -> Option<u32> {
    let digits = text.trim_end_matches('\n');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn parse_lower_hex(text: &str) -> Option<u16> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if text.is_empty() || !text.bytes().all(lower_hex) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

/// Parses `cardXX`, the kernel's `card%02x`.
pub(crate) fn parse_card_name(name: &str) -> Option<u8> {
    let digits = name.strip_prefix("card")?;
    if digits.len() != 2 {
        return None;
    }
    parse_lower_hex(digits).and_then(|value| u8::try_from(value).ok())
}

/// Parses `XX.YYYY`, the kernel's `%02x.%04x`.
pub(crate) fn parse_queue_name(name: &str) -> Option<Apqn> {
    let (adapter, domain) = name.split_once('.')?;
    if adapter.len() != 2 || domain.len() != 4 {
        return None;
    }
    let adapter = parse_lower_hex(adapter).and_then(|value| u8::try_from(value).ok())?;
    let domain = parse_lower_hex(domain).and_then(|value| u8::try_from(value).ok())?;
    Some(Apqn::new(adapter, domain))
}

/// Formats every queue of `inventory` as `(adapter,domain,gen,mode,online)`
/// for the start-up log, e.g. `(3,17,cex8,ep11,true)`.
///
/// Adapter and domain are decimal, as in the reference product's log line.
/// `gen` and `mode` read `unknown` when the card or its `type` is missing.
/// `online` is the queue's own `online` attribute.
pub fn format_apqns(inventory: &Inventory) -> String {
    let mut tuples = Vec::with_capacity(inventory.queues.len());
    for queue in inventory.queues.values() {
        let card_type = inventory
            .card(queue.apqn.adapter)
            .and_then(|card| card.card_type);
        let (generation, mode) = match card_type {
            Some(card_type) => (
                format!("cex{}", card_type.generation),
                card_type.mode.as_str(),
            ),
            None => ("unknown".to_string(), "unknown"),
        };
        let online = queue.online == Some(true);
        tuples.push(format!(
            "({},{},{generation},{mode},{online})",
            queue.apqn.adapter, queue.apqn.domain
        ));
    }
    tuples.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_names_follow_kernel_format() {
        assert_eq!(parse_card_name("card00"), Some(0));
        assert_eq!(parse_card_name("card0a"), Some(10));
        assert_eq!(parse_card_name("cardff"), Some(255));
        for bad in [
            "card", "card1", "card001", "card0A", "cardzz", "card+1", "card 1",
        ] {
            assert_eq!(parse_card_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn queue_names_follow_kernel_format() {
        assert_eq!(parse_queue_name("0a.0014"), Some(Apqn::new(10, 20)));
        assert_eq!(parse_queue_name("ff.00ff"), Some(Apqn::new(255, 255)));
        for bad in [
            "0a.014",
            "a.0014",
            "0a.0100",
            "0A.0014",
            "0a-0014",
            "0a.00x4",
            "0a.0014.1",
        ] {
            assert_eq!(parse_queue_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn attribute_values_parse_strictly() {
        assert_eq!(parse_bool("1\n"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("2\n"), None);
        assert_eq!(parse_bool(" 1\n"), None);
        assert_eq!(parse_bool(""), None);
        assert_eq!(parse_decimal("14\n"), Some(14));
        assert_eq!(parse_decimal("-1\n"), None);
        assert_eq!(parse_decimal("0x0e\n"), None);
        assert_eq!(parse_decimal("99999999999\n"), None);
    }
}
