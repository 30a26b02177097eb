use std::fmt;
use std::str::FromStr;

use crate::Apqn;

/// A plug-in device id as announced to the kubelet: `apqn-<adapter>-<domain>-<n>`.
///
/// Adapter and domain are decimal, `n` counts the overcommit slots of the
/// APQN from 0. The strict parser accepts only the canonical spelling (no
/// sign, no leading zeros, no whitespace), so a name built from a parsed
/// id can never hold `/` or `..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId {
    pub apqn: Apqn,
    pub index: u32,
}

/// A device id that is not in the canonical `apqn-<a>-<d>-<n>` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device id {value:?}: expected apqn-<adapter 0-255>-<domain 0-255>-<n> in decimal")]
pub struct DeviceIdError {
    pub value: String,
}

impl DeviceId {
    pub const fn new(apqn: Apqn, index: u32) -> Self {
        Self { apqn, index }
    }

    /// The zcrypt node name: `zcrypt-apqn-<a>-<d>-<n>`.
    pub fn zcrypt_node_name(&self) -> String {
        format!("zcrypt-{self}")
    }

    /// The shadow sysfs directory name: `sysfs-apqn-<a>-<d>-<n>`.
    pub fn shadow_dir_name(&self) -> String {
        format!("sysfs-{self}")
    }

    /// Parses the id out of a zcrypt node name (`zcrypt-apqn-1-5-0`).
    pub fn from_zcrypt_node_name(name: &str) -> Option<Self> {
        name.strip_prefix("zcrypt-")?.parse().ok()
    }

    /// Parses the id out of a shadow dir name (`sysfs-apqn-1-5-0`).
    pub fn from_shadow_dir_name(name: &str) -> Option<Self> {
        name.strip_prefix("sysfs-")?.parse().ok()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "apqn-{}-{}-{}",
            self.apqn.adapter, self.apqn.domain, self.index
        )
    }
}

fn parse_canonical_decimal(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.len() <= 10
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical {
        text.parse().ok()
    } else {
        None
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || DeviceIdError {
            value: text.to_string(),
        };
        let rest = text.strip_prefix("apqn-").ok_or_else(error)?;
        let mut parts = rest.split('-');
        let (Some(adapter), Some(domain), Some(index), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(error());
        };
        let adapter = parse_canonical_decimal(adapter).and_then(|v| u8::try_from(v).ok());
        let domain = parse_canonical_decimal(domain).and_then(|v| u8::try_from(v).ok());
        let index = parse_canonical_decimal(index);
        match (adapter, domain, index) {
            (Some(adapter), Some(domain), Some(index)) => {
                Ok(DeviceId::new(Apqn::new(adapter, domain), index))
            }
            _ => Err(error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_in_decimal() {
        let id = DeviceId::new(Apqn::new(10, 41), 3);
        assert_eq!(id.to_string(), "apqn-10-41-3");
        assert_eq!(id.zcrypt_node_name(), "zcrypt-apqn-10-41-3");
        assert_eq!(id.shadow_dir_name(), "sysfs-apqn-10-41-3");
    }

    #[test]
    fn rejects_non_canonical_ids() {
        let bad = [
            "",
            "apqn-",
            "apqn-1-5",
            "apqn-1-5-0-1",
            "apqn-256-5-0",
            "apqn-1-256-0",
            "apqn-01-5-0",
            "apqn-1-5-+0",
            "apqn-1-5-0 ",
            "apqn-1-5-../0",
            "apqn-1-5-0/",
            "APQN-1-5-0",
            "apqn-0x1-5-0",
            "zcrypt-apqn-1-5-0",
            "apqn--1-5-0",
            "apqn-1-5-99999999999",
        ];
        for text in bad {
            assert!(
                text.parse::<DeviceId>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn parses_node_and_dir_names() {
        let id = DeviceId::new(Apqn::new(1, 5), 0);
        assert_eq!(
            DeviceId::from_zcrypt_node_name("zcrypt-apqn-1-5-0"),
            Some(id)
        );
        assert_eq!(DeviceId::from_shadow_dir_name("sysfs-apqn-1-5-0"), Some(id));
        assert_eq!(DeviceId::from_zcrypt_node_name("zcrypt_3"), None);
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(adapter: u8, domain: u8, index in 0u32..1000) {
            let id = DeviceId::new(Apqn::new(adapter, domain), index);
            prop_assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}") {
            let _ = text.parse::<DeviceId>();
        }
    }
}
