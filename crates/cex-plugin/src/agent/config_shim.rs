//! Config file reading used until `cex_config::load` exists.
//!
//! NOTE: parses the JSON shape only; field checks (set names, APQN
//! ranges, duplicates) come with `cex_config::load`.

use std::path::{Path, PathBuf};

use cex_config::{ConfigApqn, ConfigSet, CryptoConfig};
use serde::Deserialize;

/// A config file that was read, with warnings for accepted oddities.
pub(crate) struct Loaded {
    pub(crate) config: CryptoConfig,
    pub(crate) warnings: Vec<String>,
}

/// Failure to use a config file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot read {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid configuration in {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct FileConfig {
    cryptoconfigsets: Vec<FileSet>,
}

#[derive(Deserialize)]
struct FileSet {
    setname: String,
    project: String,
    cexmode: Option<String>,
    mincexgen: Option<String>,
    overcommit: Option<u32>,
    livesysfs: Option<u32>,
    apqns: Vec<FileApqn>,
}

#[derive(Deserialize)]
struct FileApqn {
    adapter: u8,
    domain: u8,
    #[serde(default)]
    machineid: String,
}

pub(crate) fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let file: FileConfig = serde_json::from_str(&text).map_err(|source| LoadError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: String| LoadError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut sets = Vec::new();
    for set in file.cryptoconfigsets {
        let cexmode = match set.cexmode.as_deref() {
            None => None,
            Some(mode) => Some(mode.parse().map_err(|()| {
                invalid(format!("set {:?}: invalid cexmode {mode:?}", set.setname))
            })?),
        };
        let mincexgen = match set.mincexgen.as_deref() {
            None => None,
            Some(generation) => Some(
                generation
                    .strip_prefix("cex")
                    .and_then(|digits| digits.parse().ok())
                    .ok_or_else(|| {
                        invalid(format!(
                            "set {:?}: invalid mincexgen {generation:?}",
                            set.setname
                        ))
                    })?,
            ),
        };
        let apqns = set
            .apqns
            .into_iter()
            .map(|apqn| ConfigApqn {
                adapter: apqn.adapter,
                domain: apqn.domain,
                machineid: apqn.machineid,
            })
            .collect();
        sets.push(ConfigSet {
            setname: set.setname,
            project: set.project,
            cexmode,
            mincexgen,
            overcommit: set.overcommit,
            livesysfs: set.livesysfs,
            apqns,
        });
    }
    Ok(Loaded {
        config: CryptoConfig { sets },
        warnings: Vec::new(),
    })
}

/// Formats one entry per set: name, project and APQNs.
pub(crate) fn summary(config: &CryptoConfig) -> String {
    let sets: Vec<String> = config
        .sets
        .iter()
        .map(|set| {
            let apqns: Vec<String> = set
                .apqns
                .iter()
                .map(|apqn| format!("{}.{}", apqn.adapter, apqn.domain))
                .collect();
            format!(
                "{} (project {}, apqns {})",
                set.setname,
                set.project,
                apqns.join(" ")
            )
        })
        .collect();
    sets.join("; ")
}
