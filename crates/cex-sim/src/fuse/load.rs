//! Loads a node tree laid out in plain files (`layout::lay_out`) into the
//! inode table, giving each file the mode sysfs gives it and turning the
//! attributes the kernel computes or stores into model attributes.

use std::fs;
use std::io;
use std::path::Path;

use cex_ap::Apqn;

use super::model::{Attr, BusAttr, CardAttr, QueueAttr};
use super::tree::{Content, Ino, Kind, Tree, ROOT};
use super::FuseError;

/// `/dev/z90crypt`: the misc major; the kernel picks the minor at boot.
const Z90CRYPT_DEVICE: (u32, u32) = (10, 58);

/// Bus attributes with a `store` method (mode 0644).
const BUS_WRITABLE: [&str; 8] = [
    "ap_domain",
    "apmask",
    "aqmask",
    "poll_thread",
    "poll_timeout",
    "config_time",
    "scans",
    "drivers_autoprobe",
];
/// Card attributes with a `store` method.
const CARD_WRITABLE: [&str; 4] = ["online", "config", "request_count", "uevent"];
/// Queue attributes with a `store` method.
const QUEUE_WRITABLE: [&str; 4] = ["online", "reset", "request_count", "uevent"];

/// Copies the tree below `dir` into a new inode table.
pub(crate) fn load(dir: &Path) -> Result<Tree, FuseError> {
    let mut tree = Tree::new();
    load_dir(&mut tree, dir, ROOT, &mut Vec::new())?;
    Ok(tree)
}

fn load_dir(
    tree: &mut Tree,
    dir: &Path,
    ino: Ino,
    parts: &mut Vec<String>,
) -> Result<(), FuseError> {
    let read_error = |source| FuseError::Staging {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type().map_err(staging_error(&path))?;
        parts.push(name.clone());
        if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(staging_error(&path))?;
            tree.add_symlink(ino, &name, &target.to_string_lossy());
        } else if file_type.is_dir() {
            let child = tree.add_dir(ino, &name);
            load_dir(tree, &path, child, parts)?;
        } else {
            let data = fs::read(&path).map_err(staging_error(&path))?;
            add_file(tree, ino, parts, data);
        }
        parts.pop();
    }
    Ok(())
}

fn staging_error(path: &Path) -> impl FnOnce(io::Error) -> FuseError + '_ {
    move |source| FuseError::Staging {
        path: path.to_path_buf(),
        source,
    }
}

/// Adds the file at `parts` (its path below the root) with its sysfs mode
/// and content.
fn add_file(tree: &mut Tree, parent: Ino, parts: &[String], data: Vec<u8>) {
    let path: Vec<&str> = parts.iter().map(String::as_str).collect();
    let name = parts.last().map(String::as_str).unwrap_or_default();
    if path == ["dev", "z90crypt"] {
        let (major, minor) = Z90CRYPT_DEVICE;
        tree.add(parent, name, Kind::CharDevice { major, minor }, 0o666);
        return;
    }
    let (attr, perm) = classify(&path);
    let content = attr.map_or(Content::Fixed(data), Content::Attr);
    tree.add_file(parent, name, content, perm);
}

/// Returns the model attribute (if the model computes the file) and the
/// mode of the file at `path`.
fn classify(path: &[&str]) -> (Option<Attr>, u16) {
    match path {
        ["sys", "bus", "ap", name] => bus_file(name),
        ["sys", "bus", "ap", "drivers", _, _] => (None, 0o200),
        ["sys", "devices", "ap", "uevent"] => (None, 0o644),
        ["sys", "devices", "ap", card, name] => match card_adapter(card) {
            Some(adapter) => card_file(adapter, name),
            None => (None, 0o444),
        },
        ["sys", "devices", "ap", _, queue, name] => match queue_apqn(queue) {
            Some(apqn) => queue_file(apqn, name),
            None => (None, 0o444),
        },
        ["sys", "class", "zcrypt", "create"] => (Some(Attr::Create), 0o200),
        ["sys", "class", "zcrypt", "destroy"] => (Some(Attr::Destroy), 0o200),
        _ => (None, 0o444),
    }
}

fn bus_file(name: &str) -> (Option<Attr>, u16) {
    let attr = match name {
        "ap_domain" => Some(BusAttr::ApDomain),
        "ap_adapter_mask" => Some(BusAttr::AdapterMask),
        "ap_usage_domain_mask" => Some(BusAttr::UsageDomainMask),
        "ap_control_domain_mask" => Some(BusAttr::ControlDomainMask),
        "apmask" => Some(BusAttr::Apmask),
        "aqmask" => Some(BusAttr::Aqmask),
        "poll_thread" => Some(BusAttr::PollThread),
        "poll_timeout" => Some(BusAttr::PollTimeout),
        "config_time" => Some(BusAttr::ConfigTime),
        "scans" => Some(BusAttr::Scans),
        "bindings" => Some(BusAttr::Bindings),
        _ => None,
    };
    let perm = if BUS_WRITABLE.contains(&name) {
        0o644
    } else if matches!(name, "uevent" | "drivers_probe") {
        0o200
    } else {
        0o444
    };
    (attr.map(Attr::Bus), perm)
}

fn card_file(adapter: u8, name: &str) -> (Option<Attr>, u16) {
    let attr = match name {
        "online" => Some(CardAttr::Online),
        "config" => Some(CardAttr::Config),
        "chkstop" => Some(CardAttr::Chkstop),
        "request_count" => Some(CardAttr::RequestCount),
        _ => None,
    };
    let perm = if CARD_WRITABLE.contains(&name) {
        0o644
    } else {
        0o444
    };
    (attr.map(|attr| Attr::Card(adapter, attr)), perm)
}

fn queue_file(apqn: Apqn, name: &str) -> (Option<Attr>, u16) {
    let attr = match name {
        "online" => Some(QueueAttr::Online),
        "config" => Some(QueueAttr::Config),
        "chkstop" => Some(QueueAttr::Chkstop),
        "request_count" => Some(QueueAttr::RequestCount),
        "interrupt" => Some(QueueAttr::Interrupt),
        _ => None,
    };
    let perm = if QUEUE_WRITABLE.contains(&name) {
        0o644
    } else {
        0o444
    };
    (attr.map(|attr| Attr::Queue(apqn, attr)), perm)
}

/// Parses the adapter of a `cardXX` directory name.
pub(crate) fn card_adapter(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("card")?;
    (hex.len() == 2)
        .then(|| u8::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Parses the APQN of an `XX.YYYY` queue directory name.
pub(crate) fn queue_apqn(name: &str) -> Option<Apqn> {
    let (adapter, domain) = name.split_once('.')?;
    if adapter.len() != 2 || domain.len() != 4 {
        return None;
    }
    let adapter = u8::from_str_radix(adapter, 16).ok()?;
    let domain = u8::try_from(u16::from_str_radix(domain, 16).ok()?).ok()?;
    Some(Apqn::new(adapter, domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!(card_adapter("card3c"), Some(0x3c));
        assert_eq!(card_adapter("card3"), None);
        assert_eq!(queue_apqn("0a.0014"), Some(Apqn::new(0x0a, 0x14)));
        assert_eq!(queue_apqn("0a.0114"), None);
        assert_eq!(queue_apqn("power"), None);
    }

    #[test]
    fn modes_follow_sysfs() {
        assert_eq!(classify(&["sys", "bus", "ap", "apmask"]).1, 0o644);
        assert_eq!(classify(&["sys", "bus", "ap", "ap_max_domain_id"]).1, 0o444);
        assert_eq!(
            classify(&["sys", "devices", "ap", "card01", "hwtype"]).1,
            0o444
        );
        assert_eq!(
            classify(&["sys", "devices", "ap", "card01", "config"]).1,
            0o644
        );
        let chkstop = ["sys", "devices", "ap", "card01", "01.0005", "chkstop"];
        assert_eq!(classify(&chkstop).1, 0o444);
        assert_eq!(classify(&["sys", "class", "zcrypt", "create"]).1, 0o200);
        assert_eq!(classify(&["proc", "sysinfo"]).1, 0o444);
    }
}
