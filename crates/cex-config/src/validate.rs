//! Verification of `cex_resources.json`: every rule of every set is checked
//! by hand on a `serde_json::Value`, so that a value of the wrong type is
//! reported like any other problem instead of stopping at the first one.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::duplicates::duplicate_keys;
use crate::{
    quoted, truncated, ConfigApqn, ConfigError, ConfigSet, CryptoConfig, Loaded, Problem,
    MAX_MACHINEID_LEN, MAX_OVERCOMMIT, MAX_PROJECT_LEN, MAX_SETNAME_LEN,
};
use cex_ap::CexMode;

const TOP_LEVEL_FIELDS: &[&str] = &["cryptoconfigsets"];
const SET_FIELDS: &[&str] = &[
    "setname",
    "project",
    "cexmode",
    "mincexgen",
    "overcommit",
    "livesysfs",
    "apqns",
];
const APQN_FIELDS: &[&str] = &["adapter", "domain", "machineid"];

/// The maximum length of a parse message, because serde quotes offending
/// values whole.
const MAX_PARSE_MESSAGE_LEN: usize = 256;

/// The oldest generation the product supports (CEX4, hwtype 10).
const MIN_CEX_GENERATION: u32 = 4;

/// The top level of the file, read with serde so that a wrong shape is
/// reported with its line and column.
#[derive(Deserialize)]
struct TopLevel {
    cryptoconfigsets: Vec<Value>,
}

pub(crate) fn parse(text: &str) -> Result<Loaded, ConfigError> {
    let root: Value = serde_json::from_str(text).map_err(parse_error)?;
    let Value::Object(root_fields) = &root else {
        // serde would also accept a struct written as an array, so the
        // object check comes first.
        let start = text.len() - text.trim_start().len();
        let (line, column) = crate::line_and_column(&text.as_bytes()[..start]);
        let message = format!(
            "expected an object with a \"cryptoconfigsets\" array, found {}",
            describe(&root)
        );
        return Err(ConfigError::Parse {
            line,
            column,
            message,
        });
    };
    let top: TopLevel = serde_json::from_str(text).map_err(parse_error)?;
    let mut checker = Checker::default();
    checker.warn_unknown(root_fields, TOP_LEVEL_FIELDS, "at the top level");
    checker.report_duplicate_keys(text);
    let sets: Vec<Option<ConfigSet>> = top
        .cryptoconfigsets
        .iter()
        .enumerate()
        .map(|(index, value)| checker.check_set(index, value))
        .collect();
    if !checker.problems.is_empty() {
        return Err(ConfigError::Invalid {
            problems: checker.problems,
        });
    }
    let sets = sets.into_iter().flatten().collect();
    Ok(Loaded {
        config: CryptoConfig { sets },
        warnings: checker.warnings,
    })
}

fn parse_error(error: serde_json::Error) -> ConfigError {
    // serde_json appends " at line L column C" to its message; the
    // position is reported in separate fields instead.
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = truncated(
        message.strip_suffix(&suffix).unwrap_or(&message),
        MAX_PARSE_MESSAGE_LEN,
    );
    ConfigError::Parse {
        line: error.line(),
        column: error.column(),
        message,
    }
}

/// An APQN entry seen earlier, for the duplicate rule.
struct SeenApqn {
    set_label: String,
    set_index: usize,
    entry_index: usize,
    machineid: String,
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    warnings: Vec<String>,
    /// Set names seen so far, with the index of their set.
    setnames: BTreeMap<String, usize>,
    /// APQN entries seen so far, by adapter and domain.
    apqns: BTreeMap<(u8, u8), Vec<SeenApqn>>,
}

impl Checker {
    fn problem(&mut self, location: &str, message: String) {
        self.problems.push(Problem {
            location: location.to_string(),
            message,
        });
    }

    /// Reports `value` of `field` as not being of the `expected` type.
    fn wrong_type(&mut self, location: &str, field: &str, expected: &str, value: &Value) {
        let message = format!("{field} must be {expected}, found {}", describe(value));
        self.problem(location, message);
    }

    fn warn_unknown(&mut self, fields: &Map<String, Value>, known: &[&str], place: &str) {
        for name in fields.keys().filter(|name| !known.contains(&name.as_str())) {
            let hint = closest_field(name, known)
                .map(|field| format!(" (did you mean {field:?}?)"))
                .unwrap_or_default();
            self.warnings.push(format!(
                "unknown field {} {place} is ignored{hint}",
                quoted(name)
            ));
        }
    }

    /// Reports every key written twice in one object: JSON parsers keep
    /// one of the values, so the file does not say what it means.
    fn report_duplicate_keys(&mut self, text: &str) {
        for duplicate in duplicate_keys(text) {
            let location = if duplicate.path.is_empty() {
                "top level".to_string()
            } else {
                truncated(&duplicate.path, MAX_PARSE_MESSAGE_LEN)
            };
            let message = format!(
                "key {} appears more than once in one object",
                quoted(&duplicate.key)
            );
            self.problem(&location, message);
        }
    }

    /// Checks one set; returns it when it has no problem.
    fn check_set(&mut self, index: usize, value: &Value) -> Option<ConfigSet> {
        let Value::Object(fields) = value else {
            let location = format!("cryptoconfigsets[{index}]");
            self.wrong_type(&location, "set", "an object", value);
            return None;
        };
        let label = set_label(index, fields);
        let before = self.problems.len();
        self.warn_unknown(fields, SET_FIELDS, &format!("in {label}"));

        let setname = self.check_setname(index, &label, fields.get("setname"));
        let project = self.check_project(&label, fields.get("project"));
        let cexmode = self.check_cexmode(&label, fields.get("cexmode"));
        let mincexgen = self.check_mincexgen(&label, fields.get("mincexgen"));
        let overcommit = self.check_count(
            &label,
            "overcommit",
            fields.get("overcommit"),
            MAX_OVERCOMMIT,
        );
        let livesysfs = self.check_count(&label, "livesysfs", fields.get("livesysfs"), u32::MAX);
        let apqns = self.check_apqns(index, &label, fields.get("apqns"));

        if self.problems.len() > before {
            return None;
        }
        Some(ConfigSet {
            setname: setname?,
            project: project?,
            cexmode,
            mincexgen,
            overcommit,
            livesysfs,
            apqns,
        })
    }

    fn check_setname(
        &mut self,
        index: usize,
        label: &str,
        value: Option<&Value>,
    ) -> Option<String> {
        let name = self.required_string(label, "setname", value)?;
        if let Some(rule) = setname_rule_broken(name) {
            self.problem(label, format!("setname {} {rule}", quoted(name)));
            return None;
        }
        if let Some(first) = self.setnames.get(name) {
            let message = format!(
                "setname {} is already used by cryptoconfigsets[{first}]",
                quoted(name)
            );
            self.problem(label, message);
            return None;
        }
        self.setnames.insert(name.to_string(), index);
        Some(name.to_string())
    }

    fn check_project(&mut self, label: &str, value: Option<&Value>) -> Option<String> {
        let project = self.required_string(label, "project", value)?;
        if project.is_empty() {
            self.problem(label, "project must not be empty".to_string());
            return None;
        }
        if project.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let message = format!(
                "project {} must not contain whitespace or control characters",
                quoted(project)
            );
            self.problem(label, message);
            return None;
        }
        if project.chars().count() > MAX_PROJECT_LEN {
            let message = format!(
                "project {} is longer than {MAX_PROJECT_LEN} characters, the limit of a \
                 namespace name",
                quoted(project)
            );
            self.problem(label, message);
            return None;
        }
        // Configs written for the reference plug-in may carry such a project
        // and must keep loading, so this is a warning and not a problem.
        if !is_namespace_name(project) {
            self.warnings.push(format!(
                "{label}: project {} is not a Kubernetes namespace name (1-{MAX_PROJECT_LEN} \
                 lowercase letters, digits and '-', starting and ending with a letter or \
                 digit), so every pod using the set is reported as a project mismatch",
                quoted(project)
            ));
        }
        Some(project.to_string())
    }

    fn required_string<'v>(
        &mut self,
        label: &str,
        field: &str,
        value: Option<&'v Value>,
    ) -> Option<&'v str> {
        match value {
            None => {
                self.problem(label, format!("{field} is missing"));
                None
            }
            Some(Value::String(text)) => Some(text),
            Some(other) => {
                self.wrong_type(label, field, "a string", other);
                None
            }
        }
    }

    /// Reads an optional string field; `null` and `""` count as absent, as
    /// the reference product's configs use them for "no restriction".
    fn optional_string<'v>(
        &mut self,
        label: &str,
        field: &str,
        value: Option<&'v Value>,
    ) -> Option<&'v str> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.is_empty() => None,
            Some(Value::String(text)) => Some(text),
            Some(other) => {
                self.wrong_type(label, field, "a string", other);
                None
            }
        }
    }

    fn check_cexmode(&mut self, label: &str, value: Option<&Value>) -> Option<CexMode> {
        let text = self.optional_string(label, "cexmode", value)?;
        let mode = text.parse().ok();
        if mode.is_none() {
            self.problem(
                label,
                format!(
                    "cexmode {} is invalid, expected ep11, cca or accel",
                    quoted(text)
                ),
            );
        }
        mode
    }

    fn check_mincexgen(&mut self, label: &str, value: Option<&Value>) -> Option<u32> {
        let text = self.optional_string(label, "mincexgen", value)?;
        let generation = parse_generation(text).filter(|&gen| gen >= MIN_CEX_GENERATION);
        if generation.is_none() {
            let message = format!(
                "mincexgen {} is invalid, expected cex4 or a later generation such as cex8",
                quoted(text)
            );
            self.problem(label, message);
        }
        generation
    }

    /// Checks an optional non-negative integer field up to `max`.
    fn check_count(
        &mut self,
        label: &str,
        field: &str,
        value: Option<&Value>,
        max: u32,
    ) -> Option<u32> {
        let value = value.filter(|value| !value.is_null())?;
        let range = format!("0-{max}");
        let Some(number) = as_integer(value) else {
            self.wrong_type(label, field, &format!("an integer {range}"), value);
            return None;
        };
        let count = u32::try_from(number).ok().filter(|&count| count <= max);
        if count.is_none() {
            self.problem(label, format!("{field} {number} is out of range {range}"));
        }
        count
    }

    fn check_apqns(
        &mut self,
        set_index: usize,
        label: &str,
        value: Option<&Value>,
    ) -> Vec<ConfigApqn> {
        let entries = match value {
            Some(Value::Array(entries)) => entries,
            None => {
                self.problem(
                    label,
                    "apqns is missing (use [] for a set without APQNs)".to_string(),
                );
                return Vec::new();
            }
            Some(other) => {
                self.wrong_type(label, "apqns", "an array", other);
                return Vec::new();
            }
        };
        let mut apqns = Vec::with_capacity(entries.len());
        for (entry_index, entry) in entries.iter().enumerate() {
            let location = format!("{label}: apqns[{entry_index}]");
            if let Some(apqn) = self.check_apqn(&location, entry) {
                self.check_duplicate(label, set_index, entry_index, &location, &apqn);
                apqns.push(apqn);
            }
        }
        apqns
    }

    fn check_apqn(&mut self, location: &str, value: &Value) -> Option<ConfigApqn> {
        let Value::Object(fields) = value else {
            self.wrong_type(location, "entry", "an object", value);
            return None;
        };
        self.warn_unknown(fields, APQN_FIELDS, &format!("in {location}"));
        let adapter = self.check_id(location, "adapter", fields.get("adapter"));
        let domain = self.check_id(location, "domain", fields.get("domain"));
        let machineid = self.check_machineid(location, fields.get("machineid"));
        Some(ConfigApqn {
            adapter: adapter?,
            domain: domain?,
            machineid: machineid?,
        })
    }

    /// Checks an optional machine id: absent, `null` or `""` match every
    /// machine; anything else must read `<Manufacturer>-<Type>-<Sequence
    /// Code>`.
    fn check_machineid(&mut self, location: &str, value: Option<&Value>) -> Option<String> {
        match value {
            None | Some(Value::Null) => Some(String::new()),
            Some(Value::String(text)) if text.is_empty() || is_machine_id(text) => {
                Some(text.clone())
            }
            Some(Value::String(text)) => {
                let message = format!(
                    "machineid {} is invalid, expected <Manufacturer>-<Type>-<Sequence Code> \
                     such as \"IBM-3906-00000000000829E7\": up to {MAX_MACHINEID_LEN} printable \
                     characters without spaces",
                    quoted(text)
                );
                self.problem(location, message);
                None
            }
            Some(other) => {
                self.wrong_type(location, "machineid", "a string", other);
                None
            }
        }
    }

    /// Checks a required adapter or domain number 0-255.
    fn check_id(&mut self, location: &str, field: &str, value: Option<&Value>) -> Option<u8> {
        let Some(value) = value else {
            self.problem(location, format!("{field} is missing"));
            return None;
        };
        let Some(number) = as_integer(value) else {
            self.wrong_type(location, field, "an integer 0-255", value);
            return None;
        };
        let id = u8::try_from(number).ok();
        if id.is_none() {
            self.problem(location, format!("{field} {number} is out of range 0-255"));
        }
        id
    }

    /// Reports an entry that names an APQN already listed in this or an
    /// earlier set. Entries with the same adapter and domain are the same
    /// APQN unless both carry machine ids and the ids differ.
    fn check_duplicate(
        &mut self,
        set_label: &str,
        set_index: usize,
        entry_index: usize,
        location: &str,
        apqn: &ConfigApqn,
    ) {
        let seen = self.apqns.entry((apqn.adapter, apqn.domain)).or_default();
        let conflict = seen.iter().find(|earlier| {
            earlier.machineid.is_empty()
                || apqn.machineid.is_empty()
                || earlier.machineid == apqn.machineid
        });
        let message = conflict.map(|earlier| {
            let place = if earlier.set_index == set_index {
                format!("apqns[{}]", earlier.entry_index)
            } else {
                format!("{} apqns[{}]", earlier.set_label, earlier.entry_index)
            };
            format!("{} is already listed at {place}", describe_apqn(apqn))
        });
        seen.push(SeenApqn {
            set_label: set_label.to_string(),
            set_index,
            entry_index,
            machineid: apqn.machineid.clone(),
        });
        if let Some(message) = message {
            self.problem(location, message);
        }
    }
}

/// Names a set in problems: `set "blue"`, or `cryptoconfigsets[2]` when
/// `setname` is missing, empty or not a string.
fn set_label(index: usize, fields: &Map<String, Value>) -> String {
    match fields.get("setname") {
        Some(Value::String(name)) if !name.is_empty() => format!("set {}", quoted(name)),
        _ => format!("cryptoconfigsets[{index}]"),
    }
}

/// Returns the rule a set name breaks, if any: 1-63 characters of
/// `[A-Za-z0-9_.-]`, starting and ending with a letter or digit.
fn setname_rule_broken(name: &str) -> Option<String> {
    let length = name.chars().count();
    if length == 0 || length > MAX_SETNAME_LEN {
        return Some(format!(
            "is {length} characters long, expected 1-{MAX_SETNAME_LEN}"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        return Some(format!(
            "contains {bad:?}, expected only letters, digits, '_', '.' and '-'"
        ));
    }
    let alphanumeric_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !alphanumeric_ends {
        return Some("must start and end with a letter or digit".to_string());
    }
    None
}

/// Reports whether `name` is a Kubernetes namespace name (an RFC 1123
/// label): 1-63 lowercase letters, digits and '-', starting and ending
/// with a letter or digit.
fn is_namespace_name(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    (1..=MAX_PROJECT_LEN).contains(&bytes.len())
        && bytes.iter().all(|&b| allowed(b))
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
}

/// Reports whether `text` looks like `<Manufacturer>-<Type>-<Sequence
/// Code>`: three non-empty parts joined by '-', printable ASCII without
/// spaces, at most [`MAX_MACHINEID_LEN`] characters.
fn is_machine_id(text: &str) -> bool {
    let printable = text.len() <= MAX_MACHINEID_LEN && text.bytes().all(|b| b.is_ascii_graphic());
    let parts: Vec<&str> = text.splitn(3, '-').collect();
    printable && parts.len() == 3 && parts.iter().all(|part| !part.is_empty())
}

/// Returns a JSON number that is an integer, at any size JSON allows.
fn as_integer(value: &Value) -> Option<i128> {
    value
        .as_i64()
        .map(i128::from)
        .or(value.as_u64().map(i128::from))
}

/// Parses `cex<N>` (any case) into N; `None` for anything else.
fn parse_generation(text: &str) -> Option<u32> {
    let prefix = text.get(..3)?;
    let digits = &text[3..];
    let valid = prefix.eq_ignore_ascii_case("cex")
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit());
    if valid {
        digits.parse().ok()
    } else {
        None
    }
}

fn describe_apqn(apqn: &ConfigApqn) -> String {
    let mut text = format!(
        "APQN {} (adapter {}, domain {})",
        apqn.apqn(),
        apqn.adapter,
        apqn.domain
    );
    if !apqn.machineid.is_empty() {
        text.push_str(&format!(" on machine {}", quoted(&apqn.machineid)));
    }
    text
}

/// Describes a JSON value for a problem message: strings quoted and cut
/// (see [`quoted`]), numbers and literals as written, containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => quoted(text).to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
        other => other.to_string(),
    }
}

/// Finds the known field a misspelt name most likely means: one at most
/// two edits away.
fn closest_field<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .iter()
        .map(|field| (edit_distance(&name, field), *field))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, field)| field)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
