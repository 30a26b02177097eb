//! The state behind the FUSE mount: the machine description as the node
//! shows it now, the zcrypt nodes, and the injected faults. Attribute
//! reads render from it and attribute writes are its `store` calls, each
//! returning the errno the kernel returns (drivers/s390/crypto/ap_bus.c,
//! ap_card.c, ap_queue.c, zcrypt_card.c, zcrypt_queue.c, zcrypt_api.c).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cex_ap::{Apqn, Mask256};
use fuser::Errno;

use super::tree::Tree;
use crate::layout;
use crate::machines::{ApBus, CardSpec, Machine, QueueSpec};

/// The maximum bus `poll_timeout` in nanoseconds.
const MAX_POLL_TIMEOUT: u64 = 120_000_000_000;

/// A file whose content the model computes or stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    Bus(BusAttr),
    Card(u8, CardAttr),
    Queue(Apqn, QueueAttr),
    /// `sys/class/zcrypt/create`.
    Create,
    /// `sys/class/zcrypt/destroy`.
    Destroy,
    /// A mask file of a zcrypt node.
    NodeMask(String, NodeMask),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BusAttr {
    ApDomain,
    AdapterMask,
    UsageDomainMask,
    ControlDomainMask,
    Apmask,
    Aqmask,
    PollThread,
    PollTimeout,
    ConfigTime,
    Scans,
    Bindings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CardAttr {
    Online,
    Config,
    Chkstop,
    RequestCount,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueAttr {
    Online,
    Config,
    Chkstop,
    RequestCount,
    Interrupt,
}

/// The four masks of a zcrypt node, in the order of `ZNode::masks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeMask {
    Ap = 0,
    Aq = 1,
    Ad = 2,
    Ioctl = 3,
}

impl NodeMask {
    pub const ALL: [(NodeMask, &'static str); 4] = [
        (NodeMask::Ap, "apmask"),
        (NodeMask::Aq, "aqmask"),
        (NodeMask::Ad, "admask"),
        (NodeMask::Ioctl, "ioctlmask"),
    ];
}

/// The failure injected into the next write to `create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFault {
    /// The write fails with this errno and no node is made.
    Errno(i32),
    /// The write succeeds but no node ever appears.
    Silent,
}

/// One zcrypt node made through `create`.
#[derive(Debug, Clone)]
pub(crate) struct ZNode {
    pub minor: u32,
    pub masks: [Mask256; 4],
}

/// Everything the mount serves, behind one lock.
#[derive(Debug)]
pub(crate) struct Sim {
    pub tree: Tree,
    pub machine: Machine,
    pub nodes: BTreeMap<String, ZNode>,
    pub create_faults: VecDeque<CreateFault>,
    /// Errnos for the next writes to zcrypt node mask files, one each.
    pub mask_write_faults: VecDeque<i32>,
    pub dev_node_delay: Option<Duration>,
}

fn flag(value: bool) -> String {
    format!("{}\n", u8::from(value))
}

/// Parses a sysfs integer write: one decimal number and an optional
/// trailing newline.
fn parse_int(data: &[u8]) -> Result<i64, Errno> {
    let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
    let text = text.strip_suffix('\n').unwrap_or(text).trim_start();
    text.parse().map_err(|_| Errno::EINVAL)
}

/// Parses the `0`/`1` of an `online` or `config` write.
fn parse_flag(data: &[u8]) -> Result<bool, Errno> {
    match parse_int(data)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Errno::EINVAL),
    }
}

/// Parses an integer with C base detection (`%i`): `0x` hex, leading `0`
/// octal, else decimal.
fn parse_c_int(data: &[u8]) -> Result<i64, Errno> {
    let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
    let text = text.strip_suffix('\n').unwrap_or(text).trim_start();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16)
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8)
    } else {
        digits.parse()
    }
    .map_err(|_| Errno::EINVAL)?;
    Ok(if negative { -value } else { value })
}

/// Parses a kernel boolean (`kstrtobool`).
fn parse_bool(data: &[u8]) -> Result<bool, Errno> {
    let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
    match text.strip_suffix('\n').unwrap_or(text) {
        "1" | "y" | "Y" | "on" | "On" | "ON" => Ok(true),
        "0" | "n" | "N" | "off" | "Off" | "OFF" => Ok(false),
        _ => Err(Errno::EINVAL),
    }
}

/// Parses a mask write with the kernel's syntax, relative to `current`.
pub(crate) fn parse_mask(data: &[u8], current: &Mask256) -> Result<Mask256, Errno> {
    let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
    Mask256::parse_kernel(text, current).map_err(|_| Errno::EINVAL)
}

impl Sim {
    fn bus(&self) -> Result<&ApBus, Errno> {
        self.machine.ap_bus.as_ref().ok_or(Errno::ENODEV)
    }

    fn bus_mut(&mut self) -> Result<&mut ApBus, Errno> {
        self.machine.ap_bus.as_mut().ok_or(Errno::ENODEV)
    }

    fn card(&self, adapter: u8) -> Result<&CardSpec, Errno> {
        self.machine.card(adapter).ok_or(Errno::ENODEV)
    }

    fn card_mut(&mut self, adapter: u8) -> Result<&mut CardSpec, Errno> {
        self.machine.card_mut(adapter).ok_or(Errno::ENODEV)
    }

    fn queue(&self, apqn: Apqn) -> Result<(&CardSpec, &QueueSpec), Errno> {
        let card = self.card(apqn.adapter)?;
        Ok((card, card.queue(apqn.domain).ok_or(Errno::ENODEV)?))
    }

    fn queue_mut(&mut self, apqn: Apqn) -> Result<&mut QueueSpec, Errno> {
        let card = self.card_mut(apqn.adapter)?;
        card.queues
            .iter_mut()
            .find(|queue| queue.domain == apqn.domain)
            .ok_or(Errno::ENODEV)
    }

    /// Counts one bus scan, as a configuration change triggers one.
    pub fn count_scan(&mut self) {
        if let Some(bus) = &mut self.machine.ap_bus {
            bus.scans += 1;
        }
    }

    /// The text a read of `attr` returns.
    pub fn show(&self, attr: &Attr) -> Result<String, Errno> {
        match attr {
            Attr::Bus(attr) => self.show_bus(*attr),
            Attr::Card(adapter, attr) => {
                let card = self.card(*adapter)?;
                Ok(match attr {
                    CardAttr::Online => flag(card.reads_online()),
                    CardAttr::Config => flag(card.config),
                    CardAttr::Chkstop => flag(card.chkstop),
                    CardAttr::RequestCount => format!("{}\n", card.request_count),
                })
            }
            Attr::Queue(apqn, attr) => {
                let (_, queue) = self.queue(*apqn)?;
                Ok(show_queue(queue, *attr))
            }
            // Write-only files: open for reading is rejected before this.
            Attr::Create | Attr::Destroy => Err(Errno::EACCES),
            Attr::NodeMask(name, mask) => {
                let node = self.nodes.get(name).ok_or(Errno::ENODEV)?;
                Ok(format!("{}\n", node.masks[*mask as usize]))
            }
        }
    }

    fn show_bus(&self, attr: BusAttr) -> Result<String, Errno> {
        let bus = self.bus()?;
        let qci_mask = |mask: Mask256| {
            if bus.qci {
                format!("{mask}\n")
            } else {
                "not supported\n".to_string()
            }
        };
        Ok(match attr {
            BusAttr::ApDomain => format!("{}\n", bus.ap_domain),
            BusAttr::AdapterMask => qci_mask(bus.adapter_mask),
            BusAttr::UsageDomainMask => qci_mask(bus.usage_domain_mask),
            BusAttr::ControlDomainMask => qci_mask(bus.control_domain_mask),
            BusAttr::Apmask => format!("{}\n", bus.apmask),
            BusAttr::Aqmask => format!("{}\n", bus.aqmask),
            BusAttr::PollThread => flag(bus.poll_thread),
            BusAttr::PollTimeout => format!("{}\n", bus.poll_timeout),
            BusAttr::ConfigTime => format!("{}\n", bus.config_time),
            BusAttr::Scans => format!("{}\n", bus.scans),
            BusAttr::Bindings => format!("{}\n", layout::bindings_text(&self.machine)),
        })
    }

    /// Handles one write of `data` to `attr`.
    pub fn store(&mut self, attr: &Attr, data: &[u8]) -> Result<(), Errno> {
        match attr {
            Attr::Bus(attr) => self.store_bus(*attr, data),
            Attr::Card(adapter, attr) => self.store_card(*adapter, *attr, data),
            Attr::Queue(apqn, attr) => self.store_queue(*apqn, *attr, data),
            Attr::Create => self.create(data),
            Attr::Destroy => self.destroy(data),
            Attr::NodeMask(name, mask) => {
                if let Some(errno) = self.mask_write_faults.pop_front() {
                    return Err(Errno::from_i32(errno));
                }
                let node = self.nodes.get_mut(name).ok_or(Errno::ENODEV)?;
                let slot = &mut node.masks[*mask as usize];
                *slot = parse_mask(data, slot)?;
                Ok(())
            }
        }
    }

    fn store_bus(&mut self, attr: BusAttr, data: &[u8]) -> Result<(), Errno> {
        let bus = self.bus_mut()?;
        match attr {
            // NOTE: a changed bus mask does not unbind or bind queues here;
            // the kernel moves the affected queues between cex4queue and
            // vfio_ap.
            BusAttr::Apmask => bus.apmask = parse_mask(data, &bus.apmask)?,
            BusAttr::Aqmask => bus.aqmask = parse_mask(data, &bus.aqmask)?,
            BusAttr::ApDomain => {
                let domain = parse_c_int(data)?;
                let allowed = u8::try_from(domain)
                    .ok()
                    .filter(|domain| *domain <= bus.ap_max_domain_id && bus.aqmask.is_set(*domain));
                let domain = allowed.ok_or(Errno::EINVAL)?;
                bus.ap_domain = i32::from(domain);
            }
            BusAttr::PollThread => bus.poll_thread = parse_bool(data)?,
            BusAttr::PollTimeout => {
                let timeout = u64::try_from(parse_int(data)?).map_err(|_| Errno::EINVAL)?;
                if timeout > MAX_POLL_TIMEOUT {
                    return Err(Errno::EINVAL);
                }
                bus.poll_timeout = timeout;
            }
            BusAttr::ConfigTime => {
                let seconds = parse_int(data)?;
                bus.config_time = u32::try_from(seconds)
                    .ok()
                    .filter(|seconds| (5..=120).contains(seconds))
                    .ok_or(Errno::EINVAL)?;
            }
            // Any write forces a synchronous rescan.
            BusAttr::Scans => bus.scans += 1,
            BusAttr::AdapterMask
            | BusAttr::UsageDomainMask
            | BusAttr::ControlDomainMask
            | BusAttr::Bindings => return Err(Errno::EACCES),
        }
        Ok(())
    }

    fn store_card(&mut self, adapter: u8, attr: CardAttr, data: &[u8]) -> Result<(), Errno> {
        let card = self.card_mut(adapter)?;
        match attr {
            CardAttr::Online => {
                let online = parse_flag(data)?;
                if online && (!card.config || card.chkstop) {
                    return Err(Errno::ENODEV);
                }
                card.online = online;
                card.queues
                    .iter_mut()
                    .for_each(|queue| queue.online = online);
            }
            CardAttr::Config => {
                let config = parse_flag(data)?;
                card.config = config;
                card.queues
                    .iter_mut()
                    .for_each(|queue| queue.config = config);
                self.count_scan();
            }
            CardAttr::RequestCount => {
                card.request_count = 0;
                card.queues
                    .iter_mut()
                    .for_each(|queue| queue.request_count = 0);
            }
            CardAttr::Chkstop => return Err(Errno::EACCES),
        }
        Ok(())
    }

    fn store_queue(&mut self, apqn: Apqn, attr: QueueAttr, data: &[u8]) -> Result<(), Errno> {
        match attr {
            QueueAttr::Online => {
                let online = parse_flag(data)?;
                let (card, queue) = self.queue(apqn)?;
                if online && (!queue.config || !card.config || queue.chkstop || card.chkstop) {
                    return Err(Errno::ENODEV);
                }
                if online && !card.online {
                    return Err(Errno::EINVAL);
                }
                self.queue_mut(apqn)?.online = online;
            }
            QueueAttr::RequestCount => self.queue_mut(apqn)?.request_count = 0,
            QueueAttr::Config | QueueAttr::Chkstop | QueueAttr::Interrupt => {
                return Err(Errno::EACCES)
            }
        }
        Ok(())
    }
}

fn show_queue(queue: &QueueSpec, attr: QueueAttr) -> String {
    match attr {
        QueueAttr::Online => flag(queue.reads_online()),
        QueueAttr::Config => flag(queue.config),
        QueueAttr::Chkstop => flag(queue.chkstop),
        QueueAttr::RequestCount if queue.is_uninitialised() => "-\n".to_string(),
        QueueAttr::RequestCount => format!("{}\n", queue.request_count),
        QueueAttr::Interrupt if queue.is_uninitialised() => "Interrupts disabled.\n".to_string(),
        QueueAttr::Interrupt => "Interrupts enabled.\n".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_writes_parse_like_sysfs() {
        assert_eq!(parse_flag(b"1\n"), Ok(true));
        assert_eq!(parse_flag(b"0"), Ok(false));
        assert_eq!(parse_flag(b"2\n"), Err(Errno::EINVAL));
        assert_eq!(parse_flag(b"on\n"), Err(Errno::EINVAL));
        assert_eq!(parse_c_int(b"0x29\n"), Ok(41));
        assert_eq!(parse_c_int(b"051"), Ok(41));
        assert_eq!(parse_c_int(b"-1"), Ok(-1));
        assert_eq!(parse_bool(b"off\n"), Ok(false));
        assert_eq!(parse_bool(b"2"), Err(Errno::EINVAL));
    }

    #[test]
    fn bad_mask_keeps_value() {
        let current = Mask256::single(3);
        assert_eq!(parse_mask(b"+300\n", &current), Err(Errno::EINVAL));
        assert_eq!(parse_mask(b"+4\n", &current).map(|m| m.count()), Ok(2));
    }
}
