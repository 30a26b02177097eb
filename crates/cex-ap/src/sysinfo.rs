//! Machine id from `/proc/sysinfo`: `<Manufacturer>-<Type>-<Sequence Code>`,
//! e.g. `IBM-3906-00000000000829E7`.
//!
//! The kernel prints these three lines from STSI 1.1.1 as a label padded to
//! column 22 and a space-padded value (`arch/s390/kernel/sysinfo.c`). They
//! are the same in every LPAR and guest of one machine, so config sets can
//! pin an APQN entry to a machine.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The machine id cannot be read from the sysinfo file.
#[derive(Debug, thiserror::Error)]
pub enum SysinfoError {
    /// The file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file lacks a non-empty `Manufacturer:`, `Type:` or
    /// `Sequence Code:` line.
    #[error("{} has no machine id: expected non-empty Manufacturer, Type and Sequence Code lines", path.display())]
    MissingFields { path: PathBuf },
}

/// Reads the machine id from a sysinfo file (`/proc/sysinfo` on a host).
pub fn read_machine_id(path: &Path) -> Result<String, SysinfoError> {
    let text = fs::read_to_string(path).map_err(|source| SysinfoError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_machine_id(&text).ok_or_else(|| SysinfoError::MissingFields {
        path: path.to_path_buf(),
    })
}

/// Builds `<Manufacturer>-<Type>-<Sequence Code>` from sysinfo text.
///
/// Takes the first line of each label, trims the padding around the value
/// and returns `None` when a field is absent or empty.
pub fn parse_machine_id(text: &str) -> Option<String> {
    let manufacturer = field(text, "Manufacturer")?;
    let machine_type = field(text, "Type")?;
    let sequence_code = field(text, "Sequence Code")?;
    Some(format!("{manufacturer}-{machine_type}-{sequence_code}"))
}

/// Finds the trimmed value of the first line `<label>:`, if non-empty.
fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(label)?.strip_prefix(':'))?
        .trim();
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LPAR: &str = "\
Manufacturer:         IBM             
Type:                 3931
Model:                704              A01
Sequence Code:        00000000000F4E21
Plant:                02
Model Capacity:       704              00002900

LPAR Number:          18
LPAR Characteristics: Shared 
LPAR Name:            LNXK8S01
LPAR Adjustment:      250
LPAR CPUs Total:      16
";

    const ZVM_GUEST: &str = "\
Manufacturer:         IBM             
Type:                 8561
Model:                716              T01
Sequence Code:        000000000003C7A8
Plant:                02
Model Capacity:       716              00001620

LPAR Number:          5
LPAR Characteristics: Shared 
LPAR Name:            ZVM73A  
LPAR CPUs Total:      32

VM00 Name:            K8SWRK02
VM00 Control Program: z/VM    7.3.0   
VM00 Adjustment:      83
VM00 CPUs Total:      4
";

    const KVM_GUEST: &str = "\
Manufacturer:         IBM
Type:                 3932
Model:                A02              LA1
Sequence Code:        0000000000012AB9
Plant:                02

LPAR Number:          2
LPAR Name:            KVMHOST1

VM00 Name:            worker-3
VM00 Control Program: KVM/Linux       
VM00 Adjustment:      1000
VM00 CPUs Total:      2
";

    #[test]
    fn machine_id_from_lpar() {
        assert_eq!(
            parse_machine_id(LPAR).as_deref(),
            Some("IBM-3931-00000000000F4E21")
        );
    }

    #[test]
    fn machine_id_from_zvm_guest() {
        assert_eq!(
            parse_machine_id(ZVM_GUEST).as_deref(),
            Some("IBM-8561-000000000003C7A8")
        );
    }

    #[test]
    fn machine_id_from_kvm_guest() {
        assert_eq!(
            parse_machine_id(KVM_GUEST).as_deref(),
            Some("IBM-3932-0000000000012AB9")
        );
    }

    #[test]
    fn machine_id_needs_all_three_fields() {
        let without_type = LPAR.replace("Type:                 3931\n", "");
        assert_eq!(parse_machine_id(&without_type), None);
        let empty_sequence = LPAR.replace("00000000000F4E21", "   ");
        assert_eq!(parse_machine_id(&empty_sequence), None);
        assert_eq!(parse_machine_id(""), None);
        assert_eq!(parse_machine_id("garbage\n\0\u{1}"), None);
    }

    #[test]
    fn machine_type_label_is_matched_exactly() {
        // `LPAR Characteristics:` or `VM00 Control Program:` must not be
        // taken for a field, and the first `Type:` wins.
        let text =
            "Type of thing: x\nManufacturer: IBM\nType: 3906\nType: 9999\nSequence Code: 1\n";
        assert_eq!(parse_machine_id(text).as_deref(), Some("IBM-3906-1"));
    }

    #[test]
    fn read_reports_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sysinfo");
        let error = read_machine_id(&path).expect_err("missing file");
        assert!(matches!(error, SysinfoError::Read { .. }));
        assert!(error.to_string().contains(&path.display().to_string()));

        fs::write(&path, "Manufacturer: IBM\n").expect("write");
        let error = read_machine_id(&path).expect_err("incomplete file");
        assert!(matches!(error, SysinfoError::MissingFields { .. }));

        fs::write(&path, LPAR).expect("write");
        assert_eq!(
            read_machine_id(&path).expect("valid"),
            "IBM-3931-00000000000F4E21"
        );
    }
}
