//! Kernel uevents of the AP bus, as read from the kernel's uevent netlink
//! socket (`NETLINK_KOBJECT_UEVENT`, multicast group 1).
//!
//! A kernel message is `<action>@<devpath>\0` followed by `KEY=VALUE\0`
//! entries (`lib/kobject_uevent.c`). The udev daemon re-sends events on
//! group 2 with a binary header that starts with `libudev\0`. Such messages
//! are rejected with [`UEventError::UdevMessage`], because the kernel group
//! carries the same events without depending on udev.
//!
//! [`ap_change`] classifies an event of subsystem `ap` (the AP root device
//! `/devices/ap`, its cards `cardXX` and queues `XX.YYYY`) so that the
//! agent can rescan the bus. The keys it reads come from
//! `drivers/s390/crypto/ap_bus.c` (`ap_uevent`, `ap_send_config_uevent`,
//! `ap_send_online_uevent`, `ap_send_init_scan_done_uevent`,
//! `ap_send_bindings_complete_uevent`, `ap_send_mask_changed_uevent`).
//! Check-stop transitions send no uevent, so events never replace the
//! periodic rescan.

use std::collections::BTreeMap;

use crate::scan::{parse_bool, parse_card_name, parse_queue_name};
use crate::{Apqn, CexMode, Mask256};

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UEvent {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `move`, `online` or
    /// `offline`.
    pub action: String,
    /// The device path below `/sys`, e.g. `/devices/ap/card08/08.0031`.
    pub devpath: String,
    /// The `SUBSYSTEM` key, e.g. `ap` or `zcrypt`.
    pub subsystem: Option<String>,
    /// Every `KEY=VALUE` entry, including `ACTION`, `DEVPATH`, `SUBSYSTEM`
    /// and `SEQNUM`.
    pub env: BTreeMap<String, String>,
}

/// A netlink message that is not a well-formed kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UEventError {
    /// The message has no bytes.
    #[error("empty uevent message")]
    Empty,
    /// A message from the udev daemon, not from the kernel.
    #[error("udev daemon message (libudev header): expected a kernel uevent")]
    UdevMessage,
    /// The message is not valid UTF-8.
    #[error("uevent message is not valid UTF-8 at byte {offset}")]
    NotUtf8 { offset: usize },
    /// The first entry is not `<action>@<devpath>`.
    #[error("invalid uevent header {header:?}: expected <action>@<devpath>")]
    InvalidHeader { header: String },
    /// An entry after the header is not `KEY=VALUE`.
    #[error("invalid uevent entry {entry:?}: expected KEY=VALUE")]
    InvalidEntry { entry: String },
    /// An `ACTION` or `DEVPATH` entry disagrees with the header.
    #[error("uevent {key}={value:?} disagrees with the header value {header:?}")]
    HeaderMismatch {
        key: &'static str,
        value: String,
        header: String,
    },
}

/// The AP bus change an event announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApChange {
    /// An event of the AP root device `/devices/ap`.
    Bus(BusEvent),
    /// An event of card `cardXX`.
    Card { adapter: u8, event: DeviceEvent },
    /// An event of queue `XX.YYYY`.
    Queue { apqn: Apqn, event: DeviceEvent },
    /// An event of subsystem `ap` for a device path of another shape.
    Other { devpath: String, action: String },
}

/// The change to one card or queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A scan found the device; `mode` is the `MODE` key (kernels from 5.10).
    Add { mode: Option<CexMode> },
    /// The device left the configuration or changed its type.
    Remove,
    /// A driver was bound; `driver` is the `DRIVER` key.
    Bind { driver: Option<String> },
    /// The driver was unbound.
    Unbind,
    /// `ONLINE=0|1`: the online state was written.
    Online(bool),
    /// `CONFIG=0|1`: the configured state changed.
    Config(bool),
    /// Another action, or a `change` without a known key.
    Other { action: String },
}

/// The change to the AP bus as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// `INITSCAN=done`: the first bus scan after boot finished.
    InitScanDone,
    /// `BINDINGS=complete`: every queue device has a driver; `count` is
    /// `COMPLETECOUNT`.
    BindingsComplete { count: Option<u64> },
    /// `APMASK=`: the bus `apmask` changed; `None` when the value does
    /// not parse.
    ApMask(Option<Mask256>),
    /// `AQMASK=`: the bus `aqmask` changed; `None` when the value does
    /// not parse.
    AqMask(Option<Mask256>),
    /// Another root device event.
    Other { action: String },
}

/// The prefix of a message that the udev daemon sends.
const UDEV_MAGIC: &[u8] = b"libudev\0";

impl UEvent {
    /// Parses one netlink message.
    pub fn parse(message: &[u8]) -> Result<Self, UEventError> {
        if message.is_empty() {
            return Err(UEventError::Empty);
        }
        if message.starts_with(UDEV_MAGIC) {
            return Err(UEventError::UdevMessage);
        }
        let text = std::str::from_utf8(message).map_err(|error| UEventError::NotUtf8 {
            offset: error.valid_up_to(),
        })?;
        let mut entries = text.split('\0');
        let header = entries.next().unwrap_or_default();
        let (action, devpath) = parse_header(header)?;
        let mut env = BTreeMap::new();
        for entry in entries.filter(|entry| !entry.is_empty()) {
            let (key, value) = entry
                .split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .ok_or_else(|| UEventError::InvalidEntry {
                    entry: entry.to_string(),
                })?;
            env.insert(key.to_string(), value.to_string());
        }
        check_agrees(&env, "ACTION", action)?;
        check_agrees(&env, "DEVPATH", devpath)?;
        Ok(UEvent {
            action: action.to_string(),
            devpath: devpath.to_string(),
            subsystem: env.get("SUBSYSTEM").cloned(),
            env,
        })
    }

    /// Looks up the value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }
}

fn parse_header(header: &str) -> Result<(&str, &str), UEventError> {
    let invalid = || UEventError::InvalidHeader {
        header: header.to_string(),
    };
    let (action, devpath) = header.split_once('@').ok_or_else(invalid)?;
    let action_ok = !action.is_empty() && action.bytes().all(|b| b.is_ascii_lowercase());
    if !action_ok || !devpath.starts_with('/') {
        return Err(invalid());
    }
    Ok((action, devpath))
}

fn check_agrees(
    env: &BTreeMap<String, String>,
    key: &'static str,
    header: &str,
) -> Result<(), UEventError> {
    match env.get(key) {
        Some(value) if value != header => Err(UEventError::HeaderMismatch {
            key,
            value: value.clone(),
            header: header.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The AP root device path.
const AP_ROOT_DEVPATH: &str = "/devices/ap";

/// Classifies `event` as an AP bus change, or `None` when it concerns
/// another subsystem (a zcrypt node, a network card).
pub fn ap_change(event: &UEvent) -> Option<ApChange> {
    if event.subsystem.as_deref() != Some("ap") {
        return None;
    }
    if event.devpath == AP_ROOT_DEVPATH {
        return Some(ApChange::Bus(bus_event(event)));
    }
    let other = || ApChange::Other {
        devpath: event.devpath.clone(),
        action: event.action.clone(),
    };
    let Some(name) = event.devpath.rsplit('/').next() else {
        return Some(other());
    };
    if let Some(adapter) = parse_card_name(name) {
        return Some(ApChange::Card {
            adapter,
            event: device_event(event),
        });
    }
    if let Some(apqn) = parse_queue_name(name) {
        return Some(ApChange::Queue {
            apqn,
            event: device_event(event),
        });
    }
    Some(other())
}

fn device_event(event: &UEvent) -> DeviceEvent {
    match event.action.as_str() {
        "add" => DeviceEvent::Add {
            mode: event.get("MODE").and_then(|m| m.parse().ok()),
        },
        "remove" => DeviceEvent::Remove,
        "bind" => DeviceEvent::Bind {
            driver: event.get("DRIVER").map(str::to_string),
        },
        "unbind" => DeviceEvent::Unbind,
        "change" => {
            if let Some(online) = event.get("ONLINE").and_then(parse_bool) {
                DeviceEvent::Online(online)
            } else if let Some(config) = event.get("CONFIG").and_then(parse_bool) {
                DeviceEvent::Config(config)
            } else {
                DeviceEvent::Other {
                    action: event.action.clone(),
                }
            }
        }
        action => DeviceEvent::Other {
            action: action.to_string(),
        },
    }
}

fn bus_event(event: &UEvent) -> BusEvent {
    let parse_mask = |value: &str| Mask256::parse_kernel(value, &Mask256::empty()).ok();
    if event.action == "change" {
        if event.get("INITSCAN") == Some("done") {
            return BusEvent::InitScanDone;
        }
        if event.get("BINDINGS") == Some("complete") {
            let count = event
                .get("COMPLETECOUNT")
                .and_then(|count| count.parse().ok());
            return BusEvent::BindingsComplete { count };
        }
        if let Some(mask) = event.get("APMASK") {
            return BusEvent::ApMask(parse_mask(mask));
        }
        if let Some(mask) = event.get("AQMASK") {
            return BusEvent::AqMask(parse_mask(mask));
        }
    }
    BusEvent::Other {
        action: event.action.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a message the way `lib/kobject_uevent.c` lays it out.
    fn kernel_message(action: &str, devpath: &str, subsystem: &str, keys: &[&str]) -> Vec<u8> {
        let mut message = format!("{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0");
        message.push_str(&format!("SUBSYSTEM={subsystem}\0"));
        for key in keys {
            message.push_str(key);
            message.push('\0');
        }
        message.push_str("SEQNUM=4711\0");
        message.into_bytes()
    }

    fn classify(message: &[u8]) -> Option<ApChange> {
        ap_change(&UEvent::parse(message).expect("well-formed message"))
    }

    #[test]
    fn card_add_carries_mode() {
        let message = kernel_message(
            "add",
            "/devices/ap/card03",
            "ap",
            &["DEV_TYPE=000E", "MODALIAS=ap:t0E", "MODE=ep11"],
        );
        let event = UEvent::parse(&message).expect("valid");
        assert_eq!(event.action, "add");
        assert_eq!(event.devpath, "/devices/ap/card03");
        assert_eq!(event.subsystem.as_deref(), Some("ap"));
        assert_eq!(event.get("MODALIAS"), Some("ap:t0E"));
        assert_eq!(event.get("SEQNUM"), Some("4711"));
        let expected = ApChange::Card {
            adapter: 3,
            event: DeviceEvent::Add {
                mode: Some(CexMode::Ep11),
            },
        };
        assert_eq!(ap_change(&event), Some(expected));
    }

    #[test]
    fn queue_remove() {
        let message = kernel_message("remove", "/devices/ap/card08/08.0031", "ap", &["MODE=cca"]);
        let expected = ApChange::Queue {
            apqn: Apqn::new(8, 0x31),
            event: DeviceEvent::Remove,
        };
        assert_eq!(classify(&message), Some(expected));
    }

    #[test]
    fn queue_online_change() {
        let message = kernel_message("change", "/devices/ap/card0a/0a.0034", "ap", &["ONLINE=0"]);
        let expected = ApChange::Queue {
            apqn: Apqn::new(10, 0x34),
            event: DeviceEvent::Online(false),
        };
        assert_eq!(classify(&message), Some(expected));
    }

    #[test]
    fn card_config_change() {
        let message = kernel_message("change", "/devices/ap/card09", "ap", &["CONFIG=1"]);
        let expected = ApChange::Card {
            adapter: 9,
            event: DeviceEvent::Config(true),
        };
        assert_eq!(classify(&message), Some(expected));
    }

    #[test]
    fn bind_and_unbind() {
        let bind = kernel_message("bind", "/devices/ap/card02", "ap", &["DRIVER=cex4card"]);
        let expected = ApChange::Card {
            adapter: 2,
            event: DeviceEvent::Bind {
                driver: Some("cex4card".to_string()),
            },
        };
        assert_eq!(classify(&bind), Some(expected));
        let unbind = kernel_message("unbind", "/devices/ap/card02/02.0029", "ap", &[]);
        let expected = ApChange::Queue {
            apqn: Apqn::new(2, 0x29),
            event: DeviceEvent::Unbind,
        };
        assert_eq!(classify(&unbind), Some(expected));
    }

    #[test]
    fn root_device_events() {
        let initscan = kernel_message("change", "/devices/ap", "ap", &["INITSCAN=done"]);
        assert_eq!(
            classify(&initscan),
            Some(ApChange::Bus(BusEvent::InitScanDone))
        );

        let bindings = kernel_message(
            "change",
            "/devices/ap",
            "ap",
            &["BINDINGS=complete", "COMPLETECOUNT=2"],
        );
        let expected = ApChange::Bus(BusEvent::BindingsComplete { count: Some(2) });
        assert_eq!(classify(&bindings), Some(expected));

        let apmask = format!("APMASK=0x{}\n", "f".repeat(64));
        let message = kernel_message("change", "/devices/ap", "ap", &[&apmask]);
        assert_eq!(
            classify(&message),
            Some(ApChange::Bus(BusEvent::ApMask(Some(Mask256::full()))))
        );

        let aqmask = format!("AQMASK=0x8{}\n", "0".repeat(63));
        let message = kernel_message("change", "/devices/ap", "ap", &[&aqmask]);
        let expected = ApChange::Bus(BusEvent::AqMask(Some(Mask256::single(0))));
        assert_eq!(classify(&message), Some(expected));

        let junk_mask = kernel_message("change", "/devices/ap", "ap", &["AQMASK=junk"]);
        assert_eq!(
            classify(&junk_mask),
            Some(ApChange::Bus(BusEvent::AqMask(None)))
        );
    }

    #[test]
    fn change_without_known_key_is_still_ap() {
        let message = kernel_message("change", "/devices/ap/card09", "ap", &["ONLINE=7"]);
        let expected = ApChange::Card {
            adapter: 9,
            event: DeviceEvent::Other {
                action: "change".to_string(),
            },
        };
        assert_eq!(classify(&message), Some(expected));
    }

    #[test]
    fn zcrypt_node_add_is_not_ap() {
        let message = kernel_message(
            "add",
            "/devices/virtual/zcrypt/zcrypt-apqn-1-5-0",
            "zcrypt",
            &["MAJOR=241", "MINOR=1", "DEVNAME=zcrypt-apqn-1-5-0"],
        );
        let event = UEvent::parse(&message).expect("valid");
        assert_eq!(event.subsystem.as_deref(), Some("zcrypt"));
        assert_eq!(ap_change(&event), None);
    }

    #[test]
    fn event_without_subsystem_is_not_ap() {
        let event = UEvent::parse(b"add@/devices/ap/card01\0ACTION=add\0").expect("valid");
        assert_eq!(event.subsystem, None);
        assert_eq!(ap_change(&event), None);
    }

    #[test]
    fn unknown_ap_device_path_is_reported() {
        let message = kernel_message("add", "/devices/ap/something", "ap", &[]);
        let expected = ApChange::Other {
            devpath: "/devices/ap/something".to_string(),
            action: "add".to_string(),
        };
        assert_eq!(classify(&message), Some(expected));
    }

    #[test]
    fn udev_message_is_rejected() {
        let mut message = b"libudev\0".to_vec();
        message.extend_from_slice(&0xfeed_cafe_u32.to_be_bytes());
        message.extend_from_slice(&[40, 0, 0, 0, 40, 0, 0, 0, 0xff, 0x13]);
        message.extend_from_slice(b"ACTION=add\0SUBSYSTEM=ap\0");
        assert_eq!(UEvent::parse(&message), Err(UEventError::UdevMessage));
    }

    #[test]
    fn garbage_is_rejected() {
        let cases: [(&[u8], UEventError); 7] = [
            (b"", UEventError::Empty),
            (b"\xff\xfe\x00add", UEventError::NotUtf8 { offset: 0 }),
            (
                b"hello world",
                UEventError::InvalidHeader {
                    header: "hello world".to_string(),
                },
            ),
            (
                b"@/devices/ap\0",
                UEventError::InvalidHeader {
                    header: "@/devices/ap".to_string(),
                },
            ),
            (
                b"add@devices\0",
                UEventError::InvalidHeader {
                    header: "add@devices".to_string(),
                },
            ),
            (
                b"add@/devices/ap\0NOEQUALS\0",
                UEventError::InvalidEntry {
                    entry: "NOEQUALS".to_string(),
                },
            ),
            (
                b"add@/devices/ap\0ACTION=remove\0",
                UEventError::HeaderMismatch {
                    key: "ACTION",
                    value: "remove".to_string(),
                    header: "add".to_string(),
                },
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(UEvent::parse(message), Err(expected), "{message:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(message in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(event) = UEvent::parse(&message) {
                let _ = ap_change(&event);
            }
        }

        #[test]
        fn parse_never_panics_on_near_valid(
            action in "[a-z]{0,8}",
            devpath in "/devices/ap(/card[0-9a-fA-F]{0,3}(/[0-9a-f]{0,3}\\.[0-9a-f]{0,5})?)?",
            keys in proptest::collection::vec("[A-Z_]{0,10}=?[ -~]{0,70}", 0..6),
        ) {
            let mut text = format!("{action}@{devpath}\0SUBSYSTEM=ap\0");
            for key in keys {
                text.push_str(&key);
                text.push('\0');
            }
            if let Ok(event) = UEvent::parse(text.as_bytes()) {
                let _ = ap_change(&event);
            }
        }
    }
}
