use std::fmt;
use std::str::FromStr;

/// The function mode of a Crypto Express card, as the set field `cexmode`
/// and the last letter of the sysfs `type` attribute name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CexMode {
    /// EP11 coprocessor, type letter `P`.
    Ep11,
    /// CCA coprocessor, type letter `C`.
    Cca,
    /// Accelerator, type letter `A`.
    Accel,
}

impl CexMode {
    /// The spelling used by the config field `cexmode` and by the kernel's
    /// `MODE=` uevent key.
    pub fn as_str(&self) -> &'static str {
        match self {
            CexMode::Ep11 => "ep11",
            CexMode::Cca => "cca",
            CexMode::Accel => "accel",
        }
    }

    /// The letter that ends the sysfs `type` value (`CEX8P`).
    pub fn type_letter(&self) -> char {
        match self {
            CexMode::Ep11 => 'P',
            CexMode::Cca => 'C',
            CexMode::Accel => 'A',
        }
    }

    pub fn from_type_letter(letter: char) -> Option<Self> {
        match letter {
            'P' => Some(CexMode::Ep11),
            'C' => Some(CexMode::Cca),
            'A' => Some(CexMode::Accel),
            _ => None,
        }
    }
}

impl fmt::Display for CexMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CexMode {
    type Err = ();

    /// Parses the config spelling (`ep11`, `cca`, `accel`), ignoring case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "ep11" => Ok(CexMode::Ep11),
            "cca" => Ok(CexMode::Cca),
            "accel" => Ok(CexMode::Accel),
            _ => Err(()),
        }
    }
}

/// A card type as the sysfs `type` attribute shows it: `CEX<generation><mode>`.
///
/// Generations are numbers, so `CEX10P` is newer than `CEX9P`; the kernel
/// only reports 4 to 8 today, but later generations must parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CardType {
    pub generation: u32,
    pub mode: CexMode,
}

/// A sysfs `type` value that is not `CEX<generation><A|C|P>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid card type {value:?}: expected CEX<generation><A|C|P> such as CEX8P")]
pub struct CardTypeError {
    pub value: String,
}

impl FromStr for CardType {
    type Err = CardTypeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CardTypeError {
            value: text.to_string(),
        };
        let rest = text.trim().strip_prefix("CEX").ok_or_else(error)?;
        let letter = rest.chars().last().ok_or_else(error)?;
        let mode = CexMode::from_type_letter(letter).ok_or_else(error)?;
        let digits = &rest[..rest.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let generation = digits.parse().map_err(|_| error())?;
        Ok(CardType { generation, mode })
    }
}

impl fmt::Display for CardType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CEX{}{}", self.generation, self.mode.type_letter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_type_parses_generation_and_mode() {
        let cases = [
            ("CEX8P", 8, CexMode::Ep11),
            ("CEX7C", 7, CexMode::Cca),
            ("CEX6A", 6, CexMode::Accel),
            ("CEX10P", 10, CexMode::Ep11),
            ("CEX4C\n", 4, CexMode::Cca),
        ];
        for (text, generation, mode) in cases {
            let parsed: CardType = text.parse().expect(text);
            assert_eq!(parsed.generation, generation, "{text}");
            assert_eq!(parsed.mode, mode, "{text}");
        }
    }

    #[test]
    fn card_type_rejects_malformed() {
        for text in [
            "", "CEX", "CEXP", "CEX8", "CEX8X", "cex8p", "CEX-8P", "CEX8 P",
        ] {
            assert!(
                text.parse::<CardType>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn card_type_round_trips() {
        let parsed: CardType = "CEX12A".parse().expect("valid type");
        assert_eq!(parsed.to_string(), "CEX12A");
    }
}
