use std::fmt;

/// A 256-bit AP mask (adapters, usage domains, control domains or ioctls).
///
/// The kernel numbers the bits MSB-first: bit 0 is the most significant bit
/// of the first byte, bit 8 the most significant bit of the second byte.
/// `Display` prints the sysfs form, `0x` and 64 lowercase hex digits,
/// without the trailing newline that sysfs adds. Storing bytes (not
/// integers) keeps the layout independent of the host's byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mask256([u8; 32]);

/// A mask string the kernel's mask parser would reject with EINVAL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mask {value:?}: {reason}")]
pub struct MaskError {
    pub value: String,
    pub reason: &'static str,
}

impl Mask256 {
    pub const BITS: usize = 256;

    pub const fn empty() -> Self {
        Self([0; 32])
    }

    pub const fn full() -> Self {
        Self([0xff; 32])
    }

    /// A mask with only `bit` set.
    pub fn single(bit: u8) -> Self {
        let mut mask = Self::empty();
        mask.set(bit);
        mask
    }

    pub fn set(&mut self, bit: u8) {
        self.0[usize::from(bit / 8)] |= 0x80 >> (bit % 8);
    }

    pub fn clear(&mut self, bit: u8) {
        self.0[usize::from(bit / 8)] &= !(0x80 >> (bit % 8));
    }

    pub fn is_set(&self, bit: u8) -> bool {
        self.0[usize::from(bit / 8)] & (0x80 >> (bit % 8)) != 0
    }

    pub fn count(&self) -> u32 {
        self.0.iter().map(|byte| byte.count_ones()).sum()
    }

    /// The set bits in ascending order.
    pub fn bits(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|bit| self.is_set(*bit))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses a mask the way the kernel's sysfs mask stores do.
    ///
    /// The absolute form is an optional `0x` or `x` prefix and up to 64 hex
    /// digits, filled MSB-first with missing digits taken as 0. The relative
    /// form starts with `+` or `-` and lists `+N`, `-N`, `+A-B`, `-A-B`
    /// items (C number syntax) applied to `current`. One trailing newline
    /// is allowed. On error nothing is changed, as in the kernel.
    pub fn parse_kernel(text: &str, current: &Mask256) -> Result<Mask256, MaskError> {
        let error = |reason| MaskError {
            value: text.to_string(),
            reason,
        };
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.starts_with('+') || body.starts_with('-') {
            return parse_relative(body, *current).map_err(error);
        }
        let digits = body
            .strip_prefix("0x")
            .or_else(|| body.strip_prefix("0X"))
            .or_else(|| body.strip_prefix('x'))
            .unwrap_or(body);
        if digits.len() > 64 {
            return Err(error("more than 64 hex digits"));
        }
        let mut mask = Mask256::empty();
        for (index, digit) in digits.chars().enumerate() {
            let value = digit.to_digit(16).ok_or_else(|| error("not a hex digit"))?;
            let nibble = u8::try_from(value).expect("a hex digit fits in u8");
            let byte = &mut mask.0[index / 2];
            if index % 2 == 0 {
                *byte |= nibble << 4;
            } else {
                *byte |= nibble;
            }
        }
        Ok(mask)
    }
}

fn parse_relative(body: &str, mut mask: Mask256) -> Result<Mask256, &'static str> {
    for item in body.split([',', '\n']).filter(|item| !item.is_empty()) {
        let (set, range) = if let Some(range) = item.strip_prefix('+') {
            (true, range)
        } else if let Some(range) = item.strip_prefix('-') {
            (false, range)
        } else {
            return Err("item does not start with + or -");
        };
        let (first, last) = match range.split_once('-') {
            Some((first, last)) => (parse_c_number(first)?, parse_c_number(last)?),
            None => {
                let bit = parse_c_number(range)?;
                (bit, bit)
            }
        };
        if first > last {
            return Err("range start above range end");
        }
        for bit in first..=last {
            if set {
                mask.set(bit);
            } else {
                mask.clear(bit);
            }
        }
    }
    Ok(mask)
}

/// Parses a bit number with C base detection: `0x` hex, leading `0` octal,
/// else decimal. Values above 255 are rejected.
fn parse_c_number(text: &str) -> Result<u8, &'static str> {
    let parsed = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        u32::from_str_radix(&text[1..], 8)
    } else {
        text.parse::<u32>()
    };
    let value = parsed.map_err(|_| "missing or invalid number")?;
    u8::try_from(value).map_err(|_| "bit number above 255")
}

impl fmt::Display for Mask256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Mask256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mask256({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bit_zero_is_msb_of_first_byte() {
        let mask = Mask256::single(0);
        assert_eq!(mask.as_bytes()[0], 0x80);
        assert!(mask.to_string().starts_with("0x80"));
        assert_eq!(mask.to_string().len(), 66);
    }

    #[test]
    fn single_bit_formats_like_sysfs() {
        let mask = Mask256::single(41);
        let text = mask.to_string();
        // Bit 41 is byte 5, bit value 0x40.
        assert_eq!(&text[2..14], "000000000040");
        assert_eq!(mask.bits().collect::<Vec<_>>(), vec![41]);
    }

    #[test]
    fn absolute_form_fills_missing_digits_with_zero() {
        let parsed = Mask256::parse_kernel("0x8", &Mask256::full()).expect("valid");
        assert_eq!(parsed, Mask256::single(0));
        let parsed = Mask256::parse_kernel("x0\n", &Mask256::full()).expect("valid");
        assert_eq!(parsed, Mask256::empty());
    }

    #[test]
    fn absolute_form_rejects_bad_input() {
        let too_long = format!("0x{}", "f".repeat(65));
        for text in [too_long.as_str(), "0xg", "0x1\n\n", "0x1 "] {
            assert!(
                Mask256::parse_kernel(text, &Mask256::empty()).is_err(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn relative_form_applies_to_current() {
        let parsed = Mask256::parse_kernel("+1,+3-5,-4", &Mask256::empty()).expect("valid");
        assert_eq!(parsed.bits().collect::<Vec<_>>(), vec![1, 3, 5]);
        let parsed = Mask256::parse_kernel("+0x29", &Mask256::empty()).expect("valid");
        assert_eq!(parsed.bits().collect::<Vec<_>>(), vec![41]);
        let parsed = Mask256::parse_kernel("-0-255\n", &Mask256::full()).expect("valid");
        assert_eq!(parsed, Mask256::empty());
        let parsed = Mask256::parse_kernel("+010", &Mask256::empty()).expect("octal");
        assert_eq!(parsed.bits().collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn relative_form_rejects_bad_input() {
        for text in ["+256", "+5-3", "+", "+1,", "+1,x2", "+0x"] {
            let result = Mask256::parse_kernel(text, &Mask256::empty());
            if text == "+1," {
                // An empty trailing item is skipped, as the kernel's splitter does.
                assert!(result.is_ok(), "{text:?}");
            } else {
                assert!(result.is_err(), "{text:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let mask = Mask256(bytes);
            let text = format!("{mask}\n");
            prop_assert_eq!(Mask256::parse_kernel(&text, &Mask256::empty()).expect("own output parses"), mask);
        }

        #[test]
        fn set_bits_are_reported(bits in proptest::collection::btree_set(any::<u8>(), 0..40)) {
            let mut mask = Mask256::empty();
            for bit in &bits {
                mask.set(*bit);
            }
            prop_assert_eq!(mask.bits().collect::<Vec<_>>(), bits.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(mask.count() as usize, bits.len());
        }
    }
}
