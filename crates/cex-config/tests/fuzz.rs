//! Property tests: parsing never panics, and whatever it accepts keeps
//! the rules.

use std::collections::BTreeSet;

use cex_config::{parse, ConfigError, MAX_OVERCOMMIT};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Generates any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,10}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Generates a field value that is often of the right type and near a limit.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..300).prop_map(|n| json!(n)),
        prop_oneof![
            Just("cca"),
            Just("ep11"),
            Just("accel"),
            Just("cex3"),
            Just("cex10"),
            Just("")
        ]
        .prop_map(|text| json!(text)),
        "[a-zA-Z0-9_.-]{0,8}".prop_map(Value::String),
        any_json(),
    ]
}

/// Generates a set whose fields are drawn from the known names plus a typo.
fn set_like() -> impl Strategy<Value = Value> {
    let names = prop_oneof![
        Just("setname"),
        Just("project"),
        Just("cexmode"),
        Just("mincexgen"),
        Just("overcommit"),
        Just("livesysfs"),
        Just("overcomit"),
    ];
    let apqn = (
        field_value(),
        field_value(),
        proptest::option::of(field_value()),
    )
        .prop_map(|(adapter, domain, machineid)| {
            let mut entry = json!({"adapter": adapter, "domain": domain});
            if let Some(machineid) = machineid {
                entry["machineid"] = machineid;
            }
            entry
        });
    (
        proptest::collection::btree_map(names, field_value(), 0..7),
        proptest::option::of(proptest::collection::vec(apqn, 0..5)),
    )
        .prop_map(|(fields, apqns)| {
            let mut set: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect();
            if let Some(apqns) = apqns {
                set.insert("apqns".to_string(), Value::Array(apqns));
            }
            Value::Object(set)
        })
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        let _ = parse(&value.to_string());
        let _ = parse(&json!({"cryptoconfigsets": [value]}).to_string());
    }

    #[test]
    fn accepted_configs_keep_the_rules(sets in proptest::collection::vec(set_like(), 0..4)) {
        let text = json!({"cryptoconfigsets": sets}).to_string();
        match parse(&text) {
            Ok(loaded) => {
                let mut names = BTreeSet::new();
                for set in &loaded.config.sets {
                    prop_assert!(names.insert(set.setname.clone()), "duplicate {}", set.setname);
                    prop_assert!(!set.setname.is_empty() && set.setname.len() <= 63);
                    prop_assert!(!set.project.is_empty() && set.project.chars().count() <= 63);
                    prop_assert!(!set.project.chars().any(|c| c.is_whitespace() || c.is_control()));
                    prop_assert!(set.overcommit.is_none_or(|n| n <= MAX_OVERCOMMIT));
                    prop_assert!(set.mincexgen.is_none_or(|gen| gen >= 4));
                }
                prop_assert_eq!(loaded.config.sets.len(), sets.len());
            }
            Err(ConfigError::Invalid { problems }) => prop_assert!(!problems.is_empty()),
            Err(ConfigError::Parse { .. }) => prop_assert!(false, "valid JSON rejected as syntax"),
        }
    }
}
