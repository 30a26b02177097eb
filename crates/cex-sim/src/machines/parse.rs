//! The JSON form of a machine description and its resolution into a
//! `Machine`: defaults filled in, ids parsed, values checked.
//!
//! Ids (adapters, domains) are numbers or strings with C base detection
//! (`41`, `"0x29"`). Id lists are arrays or range strings (`"0x29-0x2a,51"`).

use std::collections::BTreeSet;

use cex_ap::{CardType, CexMode, Mask256};
use serde::Deserialize;

use super::{ApBus, CardSpec, Ep11Info, KernelFeatures, Machine, MachineError, QueueSpec, Sysinfo};

/// `ap_functions` bit for CCA coprocessor mode.
const FUNCTION_CCA: u32 = 0x1000_0000;
/// `ap_functions` bit for accelerator mode.
const FUNCTION_ACCEL: u32 = 0x0800_0000;
/// `ap_functions` bit for EP11 coprocessor mode.
const FUNCTION_EP11: u32 = 0x0400_0000;

/// Default queue depth of the published CEX listings.
const DEFAULT_DEPTH: u32 = 8;
/// The kernel's `max_msg_size` when a card reports none.
const DEFAULT_MAX_MSG_SIZE: u32 = 12288;

#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdList {
    One(u64),
    Text(String),
    List(Vec<IdValue>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: String,
    summary: String,
    #[serde(default)]
    synthetic: bool,
    sysinfo: Sysinfo,
    #[serde(default)]
    kernel: RawKernel,
    ap_bus: Option<RawBus>,
    #[serde(default)]
    cards: Vec<RawCard>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    config_chkstop: Option<bool>,
    bindings_scans: Option<bool>,
    features: Option<bool>,
    max_msg_size: Option<bool>,
    zcrypt_multinode: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    qci: Option<bool>,
    ap_domain: Option<i32>,
    ap_max_domain_id: Option<u8>,
    ap_max_adapter_id: Option<u8>,
    adapters: Option<IdList>,
    usage_domains: Option<IdList>,
    control_domains: Option<IdList>,
    apmask: Option<String>,
    aqmask: Option<String>,
    ap_interrupts: Option<bool>,
    poll_thread: Option<bool>,
    poll_timeout: Option<u64>,
    config_time: Option<u32>,
    scans: Option<u64>,
    features: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    adapter: IdValue,
    #[serde(rename = "type")]
    card_type: String,
    hwtype: Option<u32>,
    raw_hwtype: Option<u32>,
    ap_functions: Option<String>,
    depth: Option<u32>,
    config: Option<bool>,
    chkstop: Option<bool>,
    online: Option<bool>,
    #[serde(default = "default_card_driver")]
    driver: Option<String>,
    serialnr: Option<String>,
    api_ordinalnr: Option<u32>,
    fw_version: Option<String>,
    op_modes: Option<String>,
    max_msg_size: Option<u32>,
    request_count: Option<u64>,
    mkvps: Option<String>,
    domains: Option<IdList>,
    #[serde(default)]
    queues: Vec<RawQueue>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    domain: Option<IdValue>,
    config: Option<bool>,
    chkstop: Option<bool>,
    online: Option<bool>,
    /// Absent: the card's default; `null`: unbound.
    #[serde(default, deserialize_with = "present_or_null")]
    driver: Option<Option<String>>,
    request_count: Option<u64>,
    ap_functions: Option<String>,
    /// Absent: the card's `mkvps`; `null`: no `mkvps` file.
    #[serde(default, deserialize_with = "present_or_null")]
    mkvps: Option<Option<String>>,
}

/// Keeps an explicit `null` apart from an absent field.
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn default_card_driver() -> Option<String> {
    Some("cex4card".to_string())
}

/// Parses and checks a machine description in the JSON schema of the
/// built-in files.
pub fn parse(text: &str) -> Result<Machine, MachineError> {
    let raw: RawMachine =
        serde_json::from_str(text).map_err(|source| MachineError::Json { source })?;
    Resolver {
        machine: raw.name.clone(),
    }
    .machine(raw)
}

struct Resolver {
    machine: String,
}

impl Resolver {
    fn invalid(&self, reason: String) -> MachineError {
        MachineError::Invalid {
            machine: self.machine.clone(),
            reason,
        }
    }

    fn machine(&self, raw: RawMachine) -> Result<Machine, MachineError> {
        let kernel = KernelFeatures {
            config_chkstop: raw.kernel.config_chkstop.unwrap_or(true),
            bindings_scans: raw.kernel.bindings_scans.unwrap_or(true),
            features: raw.kernel.features.unwrap_or(true),
            max_msg_size: raw.kernel.max_msg_size.unwrap_or(true),
            zcrypt_multinode: raw.kernel.zcrypt_multinode.unwrap_or(true),
        };
        let Some(raw_bus) = raw.ap_bus else {
            if !raw.cards.is_empty() {
                return Err(self.invalid("cards are listed but ap_bus is null".to_string()));
            }
            return Ok(Machine {
                name: raw.name,
                summary: raw.summary,
                synthetic: raw.synthetic,
                sysinfo: raw.sysinfo,
                kernel,
                ap_bus: None,
                cards: Vec::new(),
            });
        };
        let mut cards = Vec::with_capacity(raw.cards.len());
        let mut adapters = BTreeSet::new();
        for raw_card in raw.cards {
            let card = self.card(raw_card)?;
            if !adapters.insert(card.adapter) {
                return Err(self.invalid(format!("adapter {:02x} is listed twice", card.adapter)));
            }
            cards.push(card);
        }
        cards.sort_by_key(|card| card.adapter);
        let ap_bus = self.bus(raw_bus, &cards)?;
        Ok(Machine {
            name: raw.name,
            summary: raw.summary,
            synthetic: raw.synthetic,
            sysinfo: raw.sysinfo,
            kernel,
            ap_bus: Some(ap_bus),
            cards,
        })
    }

    fn bus(&self, raw: RawBus, cards: &[CardSpec]) -> Result<ApBus, MachineError> {
        let qci = raw.qci.unwrap_or(true);
        // Without QCI (or APXA) the kernel keeps its built-in limits 15 and 63.
        let ap_max_domain_id = raw.ap_max_domain_id.unwrap_or(if qci { 84 } else { 15 });
        let ap_max_adapter_id = raw.ap_max_adapter_id.unwrap_or(if qci { 84 } else { 63 });
        let domains: BTreeSet<u8> = cards
            .iter()
            .flat_map(|card| card.queues.iter().map(|queue| queue.domain))
            .collect();
        for card in cards {
            if card.adapter > ap_max_adapter_id {
                return Err(self.invalid(format!(
                    "adapter {:02x} is above ap_max_adapter_id {ap_max_adapter_id}",
                    card.adapter
                )));
            }
            if let Some(queue) = card
                .queues
                .iter()
                .find(|queue| queue.domain > ap_max_domain_id)
            {
                return Err(self.invalid(format!(
                    "queue {:02x}.{:04x} is above ap_max_domain_id {ap_max_domain_id}",
                    card.adapter, queue.domain
                )));
            }
        }
        let adapter_mask = match raw.adapters {
            Some(list) => self.mask_of(&self.ids(&list, "ap_bus.adapters")?),
            None => self.mask_of(&cards.iter().map(|card| card.adapter).collect::<Vec<_>>()),
        };
        let usage_domain_mask = match raw.usage_domains {
            Some(list) => self.mask_of(&self.ids(&list, "ap_bus.usage_domains")?),
            None => self.mask_of(&domains.iter().copied().collect::<Vec<_>>()),
        };
        let control_domain_mask = match raw.control_domains {
            Some(list) => self.mask_of(&self.ids(&list, "ap_bus.control_domains")?),
            None => usage_domain_mask,
        };
        let first_domain = domains
            .iter()
            .next()
            .map_or(-1, |domain| i32::from(*domain));
        Ok(ApBus {
            qci,
            ap_domain: raw.ap_domain.unwrap_or(first_domain),
            ap_max_domain_id,
            ap_max_adapter_id,
            adapter_mask,
            usage_domain_mask,
            control_domain_mask,
            apmask: self.bus_mask(raw.apmask.as_deref(), "ap_bus.apmask")?,
            aqmask: self.bus_mask(raw.aqmask.as_deref(), "ap_bus.aqmask")?,
            ap_interrupts: raw.ap_interrupts.unwrap_or(true),
            poll_thread: raw.poll_thread.unwrap_or(false),
            poll_timeout: raw.poll_timeout.unwrap_or(250_000),
            config_time: raw.config_time.unwrap_or(30),
            scans: raw.scans.unwrap_or(1),
            features: raw
                .features
                .unwrap_or_else(|| if qci { "APSC APXA QACT" } else { "-" }.to_string()),
        })
    }

    fn bus_mask(&self, text: Option<&str>, field: &str) -> Result<Mask256, MachineError> {
        match text {
            None => Ok(Mask256::full()),
            Some(text) => Mask256::parse_kernel(text, &Mask256::full())
                .map_err(|error| self.invalid(format!("{field}: {error}"))),
        }
    }

    fn mask_of(&self, bits: &[u8]) -> Mask256 {
        let mut mask = Mask256::empty();
        for bit in bits {
            mask.set(*bit);
        }
        mask
    }

    fn card(&self, raw: RawCard) -> Result<CardSpec, MachineError> {
        let adapter = self.id(&raw.adapter, "card adapter")?;
        let what = format!("card {adapter:02x}");
        let card_type: CardType = raw
            .card_type
            .parse()
            .map_err(|error| self.invalid(format!("{what}: {error}")))?;
        let generation_hwtype = card_type.generation + 6;
        let hwtype = raw.hwtype.unwrap_or(generation_hwtype);
        if !(4..=8).contains(&card_type.generation) || hwtype != generation_hwtype {
            return Err(self.invalid(format!(
                "{what}: hwtype {hwtype} does not match type {card_type} (CEX4..CEX8 are 10..14)"
            )));
        }
        let raw_hwtype = raw.raw_hwtype.unwrap_or(hwtype);
        if raw_hwtype < hwtype {
            return Err(self.invalid(format!(
                "{what}: raw_hwtype {raw_hwtype} is below hwtype {hwtype}"
            )));
        }
        let ap_functions = match &raw.ap_functions {
            Some(text) => self.functions(text, &what)?,
            None => default_functions(card_type.mode),
        };
        if mode_of_functions(ap_functions) != Some(card_type.mode) {
            return Err(self.invalid(format!(
                "{what}: ap_functions 0x{ap_functions:08X} do not give the mode of {card_type}"
            )));
        }
        let config = raw.config.unwrap_or(true);
        let chkstop = raw.chkstop.unwrap_or(false);
        let online = raw.online.unwrap_or(config && !chkstop);
        let ep11 = (card_type.mode == CexMode::Ep11).then(|| Ep11Info {
            api_ordinalnr: raw.api_ordinalnr.unwrap_or(4),
            fw_version: raw.fw_version.clone().unwrap_or_default(),
            op_modes: raw.op_modes.clone().unwrap_or_default(),
        });
        let mut card = CardSpec {
            adapter,
            card_type,
            hwtype,
            raw_hwtype,
            ap_functions,
            depth: raw.depth.unwrap_or(DEFAULT_DEPTH),
            config,
            chkstop,
            online,
            driver: raw.driver.clone(),
            serialnr: raw.serialnr.clone().unwrap_or_default(),
            ep11,
            max_msg_size: raw.max_msg_size.unwrap_or(DEFAULT_MAX_MSG_SIZE),
            request_count: raw.request_count.unwrap_or(0),
            queues: Vec::new(),
        };
        card.queues = self.queues(&raw, &card, &what)?;
        Ok(card)
    }

    fn queues(
        &self,
        raw: &RawCard,
        card: &CardSpec,
        what: &str,
    ) -> Result<Vec<QueueSpec>, MachineError> {
        let mut by_domain: std::collections::BTreeMap<u8, &RawQueue> = Default::default();
        let shorthand = RawQueue::default();
        if let Some(list) = &raw.domains {
            for domain in self.ids(list, &format!("{what} domains"))? {
                by_domain.insert(domain, &shorthand);
            }
        }
        for queue in &raw.queues {
            let Some(domain) = &queue.domain else {
                return Err(self.invalid(format!("{what}: a queue has no domain")));
            };
            let domain = self.id(domain, &format!("{what} queue domain"))?;
            by_domain.insert(domain, queue);
        }
        let default_mkvps = raw.mkvps.clone().or_else(|| unknown_mkvps(card.mode()));
        let mut queues = Vec::with_capacity(by_domain.len());
        for (domain, queue) in by_domain {
            let config = queue.config.unwrap_or(card.config);
            let chkstop = queue.chkstop.unwrap_or(card.chkstop);
            let default_driver = card.driver.as_ref().map(|_| "cex4queue".to_string());
            let driver = queue.driver.clone().unwrap_or(default_driver);
            if let Some(name) = driver.as_deref() {
                if name != "cex4queue" && name != "vfio_ap" {
                    return Err(self.invalid(format!(
                        "{what}: queue driver {name:?} is not cex4queue or vfio_ap"
                    )));
                }
            }
            let ap_functions = match &queue.ap_functions {
                Some(text) => self.functions(text, what)?,
                None => card.ap_functions,
            };
            queues.push(QueueSpec {
                domain,
                config,
                chkstop,
                online: queue
                    .online
                    .unwrap_or(card.reads_online() && config && !chkstop),
                driver,
                request_count: queue.request_count.unwrap_or(0),
                ap_functions,
                mkvps: queue.mkvps.clone().unwrap_or_else(|| default_mkvps.clone()),
            });
        }
        Ok(queues)
    }

    fn functions(&self, text: &str, what: &str) -> Result<u32, MachineError> {
        let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
        digits
            .and_then(|digits| u32::from_str_radix(digits, 16).ok())
            .ok_or_else(|| {
                self.invalid(format!(
                    "{what}: ap_functions {text:?} is not 0x and 8 hex digits"
                ))
            })
    }

    fn id(&self, value: &IdValue, what: &str) -> Result<u8, MachineError> {
        let number = match value {
            IdValue::Number(number) => Some(*number),
            IdValue::Text(text) => parse_c_number(text.trim()),
        };
        number
            .and_then(|number| u8::try_from(number).ok())
            .ok_or_else(|| {
                let shown = match value {
                    IdValue::Number(number) => number.to_string(),
                    IdValue::Text(text) => format!("{text:?}"),
                };
                self.invalid(format!("{what}: id {shown} is not a number in 0..255"))
            })
    }

    fn ids(&self, list: &IdList, what: &str) -> Result<Vec<u8>, MachineError> {
        let mut out = BTreeSet::new();
        match list {
            IdList::One(number) => {
                out.insert(self.id(&IdValue::Number(*number), what)?);
            }
            IdList::Text(text) => out.extend(self.id_ranges(text, what)?),
            IdList::List(items) => {
                for item in items {
                    match item {
                        IdValue::Text(text) => out.extend(self.id_ranges(text, what)?),
                        IdValue::Number(_) => {
                            out.insert(self.id(item, what)?);
                        }
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Parses `"0-3,0x29,41"` into ids.
    fn id_ranges(&self, text: &str, what: &str) -> Result<Vec<u8>, MachineError> {
        let mut out = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (first, last),
                None => (part, part),
            };
            let first = self.id(&IdValue::Text(first.to_string()), what)?;
            let last = self.id(&IdValue::Text(last.to_string()), what)?;
            if first > last {
                return Err(self.invalid(format!("{what}: empty range {part:?}")));
            }
            out.extend(first..=last);
        }
        Ok(out)
    }
}

fn parse_c_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The mode the kernel derives from `ap_functions`: accelerator first,
/// then CCA, then EP11.
pub(super) fn mode_of_functions(functions: u32) -> Option<CexMode> {
    if functions & FUNCTION_ACCEL != 0 {
        Some(CexMode::Accel)
    } else if functions & FUNCTION_CCA != 0 {
        Some(CexMode::Cca)
    } else if functions & FUNCTION_EP11 != 0 {
        Some(CexMode::Ep11)
    } else {
        None
    }
}

/// `ap_functions` of published listings: CCA `S--D--NF-`, EP11
/// `-----XN-F-`, accelerators M, C, A and N.
pub(super) fn default_functions(mode: CexMode) -> u32 {
    match mode {
        CexMode::Cca => 0x9280_0000,
        CexMode::Ep11 => 0x0680_0000,
        CexMode::Accel => 0x6A00_0000,
    }
}

/// The `mkvps` text of a queue whose master keys are not known.
pub(super) fn unknown_mkvps(mode: CexMode) -> Option<String> {
    match mode {
        CexMode::Cca => Some(
            ["AES", "APKA"]
                .iter()
                .flat_map(|key| ["NEW", "CUR", "OLD"].map(|slot| format!("{key} {slot}: - -\n")))
                .collect(),
        ),
        CexMode::Ep11 => Some("WK CUR: - -\nWK NEW: - -\n".to_string()),
        CexMode::Accel => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(cards: &str) -> String {
        format!(
            r#"{{"name": "t", "summary": "s",
               "sysinfo": {{"manufacturer": "IBM", "type": "3931", "model": "m",
                 "model_capacity": "c", "sequence_code": "0000000000000001", "plant": "02"}},
               "ap_bus": {{}}, "cards": {cards}}}"#
        )
    }

    #[test]
    fn shorthand_domains_and_queue_overrides_merge() {
        let text = minimal(
            r#"[{"adapter": "0x0a", "type": "CEX6C", "domains": "0x33-0x34",
                 "queues": [{"domain": 52, "config": false}]}]"#,
        );
        let machine = parse(&text).expect("valid");
        let card = machine.card(10).expect("card 0a");
        assert_eq!(card.queues.len(), 2);
        let deconfigured = card.queue(52).expect("queue 0a.0034");
        assert!(!deconfigured.config);
        assert!(!deconfigured.reads_online());
        assert!(card.queue(51).expect("queue 0a.0033").reads_online());
        let bus = machine.ap_bus.expect("bus");
        assert_eq!(bus.ap_domain, 51);
        assert_eq!(bus.adapter_mask.bits().collect::<Vec<_>>(), vec![10]);
        assert_eq!(
            bus.usage_domain_mask.bits().collect::<Vec<_>>(),
            vec![51, 52]
        );
    }

    #[test]
    fn offline_card_takes_its_queues_offline() {
        let text =
            minimal(r#"[{"adapter": 9, "type": "CEX6C", "online": false, "domains": [51]}]"#);
        let machine = parse(&text).expect("valid");
        let queue = machine
            .card(9)
            .and_then(|card| card.queue(51))
            .expect("queue");
        assert!(!queue.online);
    }

    #[test]
    fn inconsistent_cards_are_rejected_with_the_value() {
        let cases = [
            (
                r#"[{"adapter": 1, "type": "CEX8C", "hwtype": 13}]"#,
                "hwtype 13",
            ),
            (
                r#"[{"adapter": 1, "type": "CEX8C", "ap_functions": "0x06800000"}]"#,
                "0x06800000",
            ),
            (r#"[{"adapter": 256, "type": "CEX8C"}]"#, "256"),
            (r#"[{"adapter": 1, "type": "CEX8X"}]"#, "CEX8X"),
            (
                r#"[{"adapter": 1, "type": "CEX8C"}, {"adapter": 1, "type": "CEX8A"}]"#,
                "twice",
            ),
            (r#"[{"adapter": 90, "type": "CEX8C"}]"#, "ap_max_adapter_id"),
            (
                r#"[{"adapter": 1, "type": "CEX8C", "domains": "5-3"}]"#,
                "empty range",
            ),
            (
                r#"[{"adapter": 1, "type": "CEX8C", "domains": [85]}]"#,
                "ap_max_domain_id",
            ),
        ];
        for (cards, expected) in cases {
            let error = parse(&minimal(cards)).expect_err(cards).to_string();
            assert!(error.contains(expected), "{cards}: {error}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = minimal(r#"[{"adapter": 1, "type": "CEX8C", "onlin": false}]"#);
        assert!(parse(&text).is_err());
    }
}
