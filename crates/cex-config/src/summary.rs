//! A condensed view of a configuration for the agent's start-up log.

use std::fmt::Write as _;

use crate::{quoted, ConfigSet, CryptoConfig, MAX_MACHINEID_LEN};

/// Formats `config` with one line per set: name, project, mode, minimum
/// generation, overcommit, live sysfs and the APQNs as `aa.dddd` in hex.
///
/// Fields the set leaves open read `any` (mode, generation) or `default`
/// (overcommit and live sysfs come from the agent's defaults). An APQN
/// bound to one machine reads `aa.dddd@<machine id>`.
pub fn summary(config: &CryptoConfig) -> String {
    if config.sets.is_empty() {
        return "no crypto config sets".to_string();
    }
    let lines: Vec<String> = config.sets.iter().map(set_line).collect();
    lines.join("\n")
}

fn set_line(set: &ConfigSet) -> String {
    let mode = set
        .cexmode
        .map_or("any".to_string(), |mode| mode.to_string());
    let generation = set
        .mincexgen
        .map_or("any".to_string(), |gen| format!("cex{gen}"));
    let overcommit = set
        .overcommit
        .map_or("default".to_string(), |count| count.to_string());
    let livesysfs = set
        .livesysfs
        .map_or("default".to_string(), |value| value.to_string());
    let mut apqns = String::new();
    for (index, entry) in set.apqns.iter().enumerate() {
        if index > 0 {
            apqns.push_str(", ");
        }
        // `fmt::Write` for `String` never returns an error.
        let _ = write!(apqns, "{}", entry.apqn());
        if !entry.machineid.is_empty() {
            let _ = write!(apqns, "@{}", shown_machine_id(&entry.machineid));
        }
    }
    format!(
        "set {}: project {}, cexmode {mode}, mincexgen {generation}, overcommit {overcommit}, \
         livesysfs {livesysfs}, apqns [{apqns}]",
        quoted(&set.setname),
        quoted(&set.project)
    )
}

/// Shows a machine id as it is when it has the verified shape, else
/// quoted and cut, so a config built in code cannot forge log lines.
fn shown_machine_id(machineid: &str) -> String {
    let plain =
        machineid.len() <= MAX_MACHINEID_LEN && machineid.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        machineid.to_string()
    } else {
        quoted(machineid).to_string()
    }
}
