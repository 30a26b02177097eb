use std::fmt;

/// One AP queue: an (adapter, domain) pair, the unit a container receives.
///
/// `Display` prints the kernel's sysfs queue name, `XX.YYYY` in lowercase
/// hex (`0a.0014`), which is how operators read APQNs in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Apqn {
    pub adapter: u8,
    pub domain: u8,
}

impl Apqn {
    pub const fn new(adapter: u8, domain: u8) -> Self {
        Self { adapter, domain }
    }

    /// The card directory name below `/sys/devices/ap`: `cardXX`.
    pub fn card_dir_name(&self) -> String {
        format!("card{:02x}", self.adapter)
    }

    /// The queue directory name below the card directory: `XX.YYYY`.
    pub fn queue_dir_name(&self) -> String {
        format!("{:02x}.{:04x}", self.adapter, self.domain)
    }
}

impl fmt::Display for Apqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.{:04x}", self.adapter, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_lowercase_hex() {
        let apqn = Apqn::new(10, 20);
        assert_eq!(apqn.card_dir_name(), "card0a");
        assert_eq!(apqn.queue_dir_name(), "0a.0014");
        assert_eq!(apqn.to_string(), "0a.0014");
    }
}
