//! Crypto config sets: the cluster-wide `cex_resources.json` that groups
//! equivalent APQNs into sets, each offered to the kubelet as one resource
//! `cex.s390.ibm.com/<setname>`.

#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cex_ap::CexMode;

mod display;
mod duplicates;
mod summary;
mod validate;

pub use display::{quoted, truncated, Quoted, MAX_SHOWN_CHARS};
pub use summary::summary;

/// The resource name prefix; a set's resource is this plus its name.
pub const RESOURCE_PREFIX: &str = "cex.s390.ibm.com/";

/// The maximum `overcommit` of a set, the same limit as the agent's
/// `APQN_OVERCOMMIT_LIMIT`.
pub const MAX_OVERCOMMIT: u32 = 100;

/// The maximum length of a set name, so that it is a valid Kubernetes name
/// part.
pub const MAX_SETNAME_LEN: usize = 63;

/// The maximum length of a project, the length limit of a Kubernetes
/// namespace name.
pub const MAX_PROJECT_LEN: usize = 63;

/// The maximum length of an APQN entry's machine id. Real ids such as
/// `IBM-3906-00000000000829E7` are about 25 characters long.
pub const MAX_MACHINEID_LEN: usize = 64;

/// The number of problems a [`ConfigError::Invalid`] message lists; the
/// rest are counted. The `problems` field always contains every problem.
pub const MAX_LISTED_PROBLEMS: usize = 20;

/// A verified configuration and the warnings found on the way (unknown
/// fields), which the caller logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub config: CryptoConfig,
    pub warnings: Vec<String>,
}

/// One rule violation: where it is and what is wrong.
///
/// `Display` prints `<location>: <message>`, e.g.
/// `set "blue": apqns[1]: adapter 300 is out of range 0-255`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The set (`set "blue"`, or `cryptoconfigsets[2]` when it has no
    /// usable name), followed by the APQN entry when the problem is in one.
    pub location: String,
    /// The field, the offending value and the rule it breaks.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Formats problems as one line, separated by `; `, listing the first
/// [`MAX_LISTED_PROBLEMS`] and counting the rest.
struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(f, "{count} problem{}: ", if count == 1 { "" } else { "s" })?;
        for (index, problem) in self.0.iter().take(MAX_LISTED_PROBLEMS).enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        if count > MAX_LISTED_PROBLEMS {
            write!(f, "; and {} more", count - MAX_LISTED_PROBLEMS)?;
        }
        Ok(())
    }
}

/// Config text that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not an object with a `cryptoconfigsets` array.
    #[error("line {line}, column {column}: {message}")]
    Parse {
        line: usize,
        column: usize,
        message: String,
    },
    /// Valid JSON that breaks one or more rules; every problem is listed.
    #[error("{}", ProblemList(problems))]
    Invalid { problems: Vec<Problem> },
}

/// A config file that cannot be used. Each message starts with the path.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("{}: cannot read the file", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not JSON, or not an object with a `cryptoconfigsets`
    /// array.
    #[error("{}: line {line}, column {column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file breaks one or more rules; every problem is listed.
    #[error("{}: {}", path.display(), ProblemList(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// Parses and verifies config text (`cex_resources.json`).
///
/// Every rule of every set is checked and every problem is reported, not
/// just the first. Unknown fields are not errors: they come back as
/// warnings that name the field and where it is.
pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    validate::parse(text)
}

/// Reads and verifies a config file, following symlinks (a mounted
/// ConfigMap is a farm of symlinks into a `..data` directory).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let bytes = fs::read(path).map_err(|source| LoadError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(error) => {
            let (line, column) = line_and_column(&bytes[..error.valid_up_to()]);
            let message = "invalid UTF-8".to_string();
            return Err(LoadError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            });
        }
    };
    parse(text).map_err(|error| match error {
        ConfigError::Parse {
            line,
            column,
            message,
        } => LoadError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message,
        },
        ConfigError::Invalid { problems } => LoadError::Invalid {
            path: path.to_path_buf(),
            problems,
        },
    })
}

/// Computes the 1-based line and column of the byte just after `prefix`,
/// counting columns in bytes.
pub(crate) fn line_and_column(prefix: &[u8]) -> (usize, usize) {
    let line = 1 + prefix.iter().filter(|&&byte| byte == b'\n').count();
    let line_start = prefix
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |at| at + 1);
    (line, prefix.len() - line_start + 1)
}

/// A verified configuration: the sets in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CryptoConfig {
    pub sets: Vec<ConfigSet>,
}

/// One crypto config set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSet {
    pub setname: String,
    /// The namespace meant to use the set.
    pub project: String,
    /// Only APQNs on cards in this mode are announced.
    pub cexmode: Option<CexMode>,
    /// Only APQNs on cards of this generation or newer are announced.
    pub mincexgen: Option<u32>,
    /// Plug-in devices per APQN; 0 means 1; `None` takes the agent default.
    pub overcommit: Option<u32>,
    /// 0 static shadow sysfs, above 0 live; `None` takes the agent default.
    pub livesysfs: Option<u32>,
    pub apqns: Vec<ConfigApqn>,
}

/// One APQN entry of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigApqn {
    pub adapter: u8,
    pub domain: u8,
    /// `<Manufacturer>-<Type>-<Sequence Code>`; empty matches every machine.
    pub machineid: String,
}

impl ConfigSet {
    /// The extended resource name registered with the kubelet.
    pub fn resource_name(&self) -> String {
        format!("{RESOURCE_PREFIX}{}", self.setname)
    }
}

impl ConfigApqn {
    pub fn apqn(&self) -> cex_ap::Apqn {
        cex_ap::Apqn::new(self.adapter, self.domain)
    }

    /// Reports whether this entry applies on the machine `machine_id`.
    pub fn applies_to(&self, machine_id: &str) -> bool {
        self.machineid.is_empty() || self.machineid == machine_id
    }
}
