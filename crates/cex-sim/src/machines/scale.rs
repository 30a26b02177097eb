//! The generated scale machine: a z16 LPAR with 64 CEX8 cards, each
//! holding all 85 domains (0..84) that `ap_max_domain_id` 84 allows, so
//! 5440 APQNs. A JSON file of that size would only repeat one pattern.

use cex_ap::{CardType, CexMode, Mask256};

use super::parse::{default_functions, unknown_mkvps};
use super::{ApBus, CardSpec, Ep11Info, KernelFeatures, Lpar, Machine, QueueSpec, Sysinfo};

pub(super) const NAME: &str = "big-lpar-scale";

const ADAPTERS: u8 = 64;
const MAX_DOMAIN_ID: u8 = 84;

/// Builds the scale machine: adapters 0x00-0x0f EP11, 0x10-0x2f CCA,
/// 0x30-0x3f accelerators.
pub(super) fn generate() -> Machine {
    let cards: Vec<CardSpec> = (0..ADAPTERS).map(card).collect();
    let mut adapter_mask = Mask256::empty();
    for adapter in 0..ADAPTERS {
        adapter_mask.set(adapter);
    }
    let mut domain_mask = Mask256::empty();
    for domain in 0..=MAX_DOMAIN_ID {
        domain_mask.set(domain);
    }
    Machine {
        name: NAME.to_string(),
        summary: format!(
            "Synthetic z16 LPAR near the hardware maximum: {ADAPTERS} CEX8 cards (16 EP11, 32 CCA, \
             16 accelerators) x {} domains = {} APQNs",
            u32::from(MAX_DOMAIN_ID) + 1,
            u32::from(ADAPTERS) * (u32::from(MAX_DOMAIN_ID) + 1)
        ),
        synthetic: true,
        sysinfo: Sysinfo {
            manufacturer: "IBM".to_string(),
            machine_type: "3931".to_string(),
            model: "MAX200           A01".to_string(),
            model_capacity: "7K0              00061500".to_string(),
            sequence_code: "00000000000E5A90".to_string(),
            plant: "02".to_string(),
            lpar: Some(Lpar {
                number: 2,
                name: "SCALE01".to_string(),
                characteristics: "Dedicated".to_string(),
            }),
            vm: Vec::new(),
        },
        kernel: KernelFeatures {
            config_chkstop: true,
            bindings_scans: true,
            features: true,
            max_msg_size: true,
            zcrypt_multinode: true,
        },
        ap_bus: Some(ApBus {
            qci: true,
            ap_domain: 0,
            ap_max_domain_id: MAX_DOMAIN_ID,
            ap_max_adapter_id: 84,
            adapter_mask,
            usage_domain_mask: domain_mask,
            control_domain_mask: domain_mask,
            apmask: Mask256::full(),
            aqmask: Mask256::full(),
            ap_interrupts: true,
            poll_thread: false,
            poll_timeout: 250_000,
            config_time: 30,
            scans: 412,
            features: "APSC APXA QACT RC8A".to_string(),
        }),
        cards,
    }
}

fn card(adapter: u8) -> CardSpec {
    let mode = match adapter {
        0..=15 => CexMode::Ep11,
        16..=47 => CexMode::Cca,
        _ => CexMode::Accel,
    };
    let ap_functions = default_functions(mode);
    let serialnr = match mode {
        CexMode::Ep11 => format!("93SIM{adapter:011X}"),
        CexMode::Cca => format!("93SIM{adapter:03X}"),
        CexMode::Accel => String::new(),
    };
    let mkvps = mkvps(mode, adapter);
    let queues = (0..=MAX_DOMAIN_ID)
        .map(|domain| QueueSpec {
            domain,
            config: true,
            chkstop: false,
            online: true,
            driver: Some("cex4queue".to_string()),
            request_count: u64::from(adapter) * 100 + u64::from(domain),
            ap_functions,
            mkvps: mkvps.clone(),
        })
        .collect();
    CardSpec {
        adapter,
        card_type: CardType {
            generation: 8,
            mode,
        },
        hwtype: 14,
        raw_hwtype: 14,
        ap_functions,
        depth: 8,
        config: true,
        chkstop: false,
        online: true,
        driver: Some("cex4card".to_string()),
        serialnr,
        ep11: (mode == CexMode::Ep11).then(|| Ep11Info {
            api_ordinalnr: 4,
            fw_version: "8.2".to_string(),
            op_modes: String::new(),
        }),
        max_msg_size: 12288,
        request_count: 0,
        queues,
    }
}

/// A made-up but well-formed verification pattern per card.
fn mkvps(mode: CexMode, adapter: u8) -> Option<String> {
    let pattern = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(u64::from(adapter) + 1);
    match mode {
        CexMode::Ep11 => Some(format!(
            "WK CUR: valid 0x{pattern:016x}{:016x}{pattern:016x}{:016x}\nWK NEW: empty -\n",
            !pattern, !pattern
        )),
        CexMode::Cca => Some(format!(
            "AES NEW: empty 0x0000000000000000\nAES CUR: valid 0x{pattern:016x}\n\
             AES OLD: invalid 0x0000000000000000\nAPKA NEW: empty 0x0000000000000000\n\
             APKA CUR: valid 0x{:016x}\nAPKA OLD: invalid 0x0000000000000000\n",
            !pattern
        )),
        CexMode::Accel => unknown_mkvps(mode),
    }
}
