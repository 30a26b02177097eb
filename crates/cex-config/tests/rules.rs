//! Table-driven tests of every config rule, with the exact problem texts.

use cex_ap::CexMode;
use cex_config::{parse, ConfigError, Loaded};
use serde_json::{json, Value};

/// Builds a valid set that each case changes one field of.
fn blue() -> Value {
    json!({
        "setname": "blue",
        "project": "blue",
        "apqns": [{"adapter": 1, "domain": 5}, {"adapter": 2, "domain": 5}]
    })
}

fn with(mut set: Value, field: &str, value: Value) -> Value {
    set[field] = value;
    set
}

fn without(mut set: Value, field: &str) -> Value {
    set.as_object_mut().expect("set is an object").remove(field);
    set
}

fn config(sets: Vec<Value>) -> String {
    json!({ "cryptoconfigsets": sets }).to_string()
}

fn parse_ok(text: &str) -> Loaded {
    match parse(text) {
        Ok(loaded) => loaded,
        Err(error) => panic!("expected a valid config, got: {error}\n{text}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { problems }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected problems, got {other:?}\n{text}"),
    }
}

#[test]
fn spec_example_is_valid() {
    let text = r#"{ "cryptoconfigsets": [
        { "setname": "CCA_for_customer_1", "project": "customer-1",
          "cexmode": "cca", "mincexgen": "cex6", "overcommit": 3,
          "livesysfs": 1,
          "apqns": [ { "adapter": 1, "domain": 6, "machineid": "" } ] } ] }"#;
    let loaded = parse_ok(text);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let set = &loaded.config.sets[0];
    assert_eq!(set.setname, "CCA_for_customer_1");
    assert_eq!(set.project, "customer-1");
    assert_eq!(set.cexmode, Some(CexMode::Cca));
    assert_eq!(set.mincexgen, Some(6));
    assert_eq!(set.overcommit, Some(3));
    assert_eq!(set.livesysfs, Some(1));
    assert_eq!(set.apqns.len(), 1);
    assert_eq!(set.apqns[0].adapter, 1);
    assert_eq!(set.apqns[0].domain, 6);
    assert_eq!(set.apqns[0].machineid, "");
    assert_eq!(set.resource_name(), "cex.s390.ibm.com/CCA_for_customer_1");
}

#[test]
fn optional_fields_default_to_none() {
    let set = json!({"setname": "s", "project": "p", "apqns": []});
    let loaded = parse_ok(&config(vec![set]));
    let set = &loaded.config.sets[0];
    assert_eq!(set.cexmode, None);
    assert_eq!(set.mincexgen, None);
    assert_eq!(set.overcommit, None);
    assert_eq!(set.livesysfs, None);
    assert!(set.apqns.is_empty());
}

#[test]
fn empty_set_list_is_valid() {
    assert!(parse_ok(r#"{"cryptoconfigsets": []}"#)
        .config
        .sets
        .is_empty());
}

/// A check of one parsed set.
type SetCheck = dyn Fn(&cex_config::ConfigSet) -> bool;

#[test]
fn valid_field_values() {
    let cases: Vec<(&str, Value, &SetCheck)> = vec![
        ("setname", json!("a"), &|s| s.setname == "a"),
        ("setname", json!("A.b_c-9"), &|s| s.setname == "A.b_c-9"),
        ("setname", json!("x".repeat(63)), &|s| s.setname.len() == 63),
        ("project", json!("p"), &|s| s.project == "p"),
        ("cexmode", json!("ep11"), &|s| {
            s.cexmode == Some(CexMode::Ep11)
        }),
        ("cexmode", json!("accel"), &|s| {
            s.cexmode == Some(CexMode::Accel)
        }),
        ("cexmode", json!("CCA"), &|s| {
            s.cexmode == Some(CexMode::Cca)
        }),
        ("cexmode", json!(""), &|s| s.cexmode.is_none()),
        ("cexmode", Value::Null, &|s| s.cexmode.is_none()),
        ("mincexgen", json!("cex4"), &|s| s.mincexgen == Some(4)),
        ("mincexgen", json!("cex9"), &|s| s.mincexgen == Some(9)),
        ("mincexgen", json!("cex10"), &|s| s.mincexgen == Some(10)),
        ("mincexgen", json!("CEX8"), &|s| s.mincexgen == Some(8)),
        ("mincexgen", json!(""), &|s| s.mincexgen.is_none()),
        ("overcommit", json!(0), &|s| s.overcommit == Some(0)),
        ("overcommit", json!(100), &|s| s.overcommit == Some(100)),
        ("overcommit", Value::Null, &|s| s.overcommit.is_none()),
        ("livesysfs", json!(0), &|s| s.livesysfs == Some(0)),
        ("livesysfs", json!(4294967295u64), &|s| {
            s.livesysfs == Some(u32::MAX)
        }),
        ("apqns", json!([]), &|s| s.apqns.is_empty()),
        (
            "apqns",
            json!([{"adapter": 0, "domain": 0}, {"adapter": 255, "domain": 255}]),
            &|s| s.apqns.len() == 2 && s.apqns[1].adapter == 255 && s.apqns[1].domain == 255,
        ),
        (
            "apqns",
            json!([{"adapter": 1, "domain": 5, "machineid": null}]),
            &|s| s.apqns[0].machineid.is_empty(),
        ),
    ];
    for (field, value, check) in cases {
        let text = config(vec![with(blue(), field, value.clone())]);
        let loaded = parse_ok(&text);
        assert!(check(&loaded.config.sets[0]), "{field} = {value}");
        assert!(
            loaded.warnings.is_empty(),
            "{field} = {value}: {:?}",
            loaded.warnings
        );
    }
}

#[test]
fn invalid_field_values() {
    let long_name = "x".repeat(64);
    let cases: Vec<(Value, &str)> = vec![
        (without(blue(), "setname"), "cryptoconfigsets[0]: setname is missing"),
        (with(blue(), "setname", json!(5)), "cryptoconfigsets[0]: setname must be a string, found 5"),
        (
            with(blue(), "setname", json!("")),
            "cryptoconfigsets[0]: setname \"\" is 0 characters long, expected 1-63",
        ),
        (
            with(blue(), "setname", json!(long_name)),
            "set \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\": setname \
             \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" is 64 characters \
             long, expected 1-63",
        ),
        (
            with(blue(), "setname", json!("a b")),
            "set \"a b\": setname \"a b\" contains ' ', expected only letters, digits, '_', '.' and '-'",
        ),
        (
            with(blue(), "setname", json!("blue/red")),
            "set \"blue/red\": setname \"blue/red\" contains '/', expected only letters, digits, '_', '.' and '-'",
        ),
        (
            with(blue(), "setname", json!("-blue")),
            "set \"-blue\": setname \"-blue\" must start and end with a letter or digit",
        ),
        (
            with(blue(), "setname", json!("blue.")),
            "set \"blue.\": setname \"blue.\" must start and end with a letter or digit",
        ),
        (without(blue(), "project"), "set \"blue\": project is missing"),
        (with(blue(), "project", json!("")), "set \"blue\": project must not be empty"),
        (with(blue(), "project", json!(7)), "set \"blue\": project must be a string, found 7"),
        (
            with(blue(), "cexmode", json!("ep12")),
            "set \"blue\": cexmode \"ep12\" is invalid, expected ep11, cca or accel",
        ),
        (with(blue(), "cexmode", json!(1)), "set \"blue\": cexmode must be a string, found 1"),
        (
            with(blue(), "mincexgen", json!("cex3")),
            "set \"blue\": mincexgen \"cex3\" is invalid, expected cex4 or a later generation such as cex8",
        ),
        (
            with(blue(), "mincexgen", json!("cexx")),
            "set \"blue\": mincexgen \"cexx\" is invalid, expected cex4 or a later generation such as cex8",
        ),
        (
            with(blue(), "mincexgen", json!("8")),
            "set \"blue\": mincexgen \"8\" is invalid, expected cex4 or a later generation such as cex8",
        ),
        (
            with(blue(), "mincexgen", json!("cex")),
            "set \"blue\": mincexgen \"cex\" is invalid, expected cex4 or a later generation such as cex8",
        ),
        (
            with(blue(), "mincexgen", json!("cex-5")),
            "set \"blue\": mincexgen \"cex-5\" is invalid, expected cex4 or a later generation such as cex8",
        ),
        (with(blue(), "mincexgen", json!(8)), "set \"blue\": mincexgen must be a string, found 8"),
        (with(blue(), "overcommit", json!(-1)), "set \"blue\": overcommit -1 is out of range 0-100"),
        (with(blue(), "overcommit", json!(101)), "set \"blue\": overcommit 101 is out of range 0-100"),
        (
            with(blue(), "overcommit", json!(1.5)),
            "set \"blue\": overcommit must be an integer 0-100, found 1.5",
        ),
        (
            with(blue(), "overcommit", json!("3")),
            "set \"blue\": overcommit must be an integer 0-100, found \"3\"",
        ),
        (
            with(blue(), "overcommit", json!(true)),
            "set \"blue\": overcommit must be an integer 0-100, found true",
        ),
        (
            with(blue(), "livesysfs", json!(-1)),
            "set \"blue\": livesysfs -1 is out of range 0-4294967295",
        ),
        (
            with(blue(), "livesysfs", json!(4294967296u64)),
            "set \"blue\": livesysfs 4294967296 is out of range 0-4294967295",
        ),
        (
            with(blue(), "livesysfs", json!("1")),
            "set \"blue\": livesysfs must be an integer 0-4294967295, found \"1\"",
        ),
        (
            without(blue(), "apqns"),
            "set \"blue\": apqns is missing (use [] for a set without APQNs)",
        ),
        (with(blue(), "apqns", Value::Null), "set \"blue\": apqns must be an array, found null"),
        (with(blue(), "apqns", json!({})), "set \"blue\": apqns must be an array, found an object"),
        (
            with(blue(), "apqns", json!([5])),
            "set \"blue\": apqns[0]: entry must be an object, found 5",
        ),
        (
            with(blue(), "apqns", json!([{"adapter": 1, "domain": 5}, {"adapter": 300, "domain": 5}])),
            "set \"blue\": apqns[1]: adapter 300 is out of range 0-255",
        ),
        (
            with(blue(), "apqns", json!([{"adapter": -1, "domain": 5}])),
            "set \"blue\": apqns[0]: adapter -1 is out of range 0-255",
        ),
        (
            with(blue(), "apqns", json!([{"adapter": "1", "domain": 5}])),
            "set \"blue\": apqns[0]: adapter must be an integer 0-255, found \"1\"",
        ),
        (
            with(blue(), "apqns", json!([{"domain": 5}])),
            "set \"blue\": apqns[0]: adapter is missing",
        ),
        (
            with(blue(), "apqns", json!([{"adapter": 1, "domain": 256}])),
            "set \"blue\": apqns[0]: domain 256 is out of range 0-255",
        ),
        (
            with(blue(), "apqns", json!([{"adapter": 1, "domain": 2.0}])),
            "set \"blue\": apqns[0]: domain must be an integer 0-255, found 2.0",
        ),
        (
            with(blue(), "apqns", json!([{"adapter": 1}])),
            "set \"blue\": apqns[0]: domain is missing",
        ),
        (
            with(blue(), "apqns", json!([{"adapter": 1, "domain": 5, "machineid": 3906}])),
            "set \"blue\": apqns[0]: machineid must be a string, found 3906",
        ),
        (
            json!("blue"),
            "cryptoconfigsets[0]: set must be an object, found \"blue\"",
        ),
    ];
    for (set, expected) in cases {
        let text = config(vec![set]);
        assert_eq!(problems(&text), vec![expected.to_string()], "{text}");
    }
}

#[test]
fn duplicate_set_names() {
    let text = config(vec![blue(), with(blue(), "apqns", json!([]))]);
    assert_eq!(
        problems(&text),
        vec!["set \"blue\": setname \"blue\" is already used by cryptoconfigsets[0]"]
    );
}

#[test]
fn duplicate_apqn_in_one_set() {
    let set = with(
        blue(),
        "apqns",
        json!([{"adapter": 1, "domain": 5}, {"adapter": 2, "domain": 5}, {"adapter": 1, "domain": 5}]),
    );
    assert_eq!(
        problems(&config(vec![set])),
        vec!["set \"blue\": apqns[2]: APQN 01.0005 (adapter 1, domain 5) is already listed at apqns[0]"]
    );
}

#[test]
fn duplicate_apqn_across_sets() {
    let red = json!({"setname": "red", "project": "red", "apqns": [{"adapter": 2, "domain": 5}]});
    assert_eq!(
        problems(&config(vec![blue(), red])),
        vec![
            "set \"red\": apqns[0]: APQN 02.0005 (adapter 2, domain 5) is already listed at \
             set \"blue\" apqns[1]"
        ]
    );
}

#[test]
fn machine_ids_decide_apqn_identity() {
    let entry = |machineid: &str| json!({"adapter": 1, "domain": 5, "machineid": machineid});
    let pair = |first: &str, second: &str| {
        let blue = with(blue(), "apqns", json!([entry(first)]));
        let red = json!({"setname": "red", "project": "red", "apqns": [entry(second)]});
        config(vec![blue, red])
    };

    // Two different machines: two different APQNs.
    parse_ok(&pair(
        "IBM-3931-00000000000F4E21",
        "IBM-8561-000000000003C7A8",
    ));

    // An empty machine id matches every machine, so it collides.
    let expected_any = "set \"red\": apqns[0]: APQN 01.0005 (adapter 1, domain 5) on machine \
                        \"IBM-3931-00000000000F4E21\" is already listed at set \"blue\" apqns[0]";
    assert_eq!(
        problems(&pair("", "IBM-3931-00000000000F4E21")),
        vec![expected_any]
    );
    let expected_empty = "set \"red\": apqns[0]: APQN 01.0005 (adapter 1, domain 5) is already \
                          listed at set \"blue\" apqns[0]";
    assert_eq!(
        problems(&pair("IBM-3931-00000000000F4E21", "")),
        vec![expected_empty]
    );
    assert_eq!(problems(&pair("", "")), vec![expected_empty]);

    // The same machine twice is the same APQN.
    assert_eq!(
        problems(&pair(
            "IBM-3931-00000000000F4E21",
            "IBM-3931-00000000000F4E21"
        )),
        vec![expected_any]
    );
}

#[test]
fn every_problem_is_reported() {
    let bad = json!({
        "setname": "bad name",
        "project": "",
        "cexmode": "fast",
        "mincexgen": "cex3",
        "overcommit": 500,
        "livesysfs": -2,
        "apqns": [{"adapter": 256, "domain": -1}, "x"]
    });
    let nameless = json!({"project": "p", "apqns": [{"adapter": 1, "domain": 5}]});
    assert_eq!(
        problems(&config(vec![blue(), bad, nameless])),
        vec![
            "set \"bad name\": setname \"bad name\" contains ' ', expected only letters, digits, '_', '.' and '-'",
            "set \"bad name\": project must not be empty",
            "set \"bad name\": cexmode \"fast\" is invalid, expected ep11, cca or accel",
            "set \"bad name\": mincexgen \"cex3\" is invalid, expected cex4 or a later generation such as cex8",
            "set \"bad name\": overcommit 500 is out of range 0-100",
            "set \"bad name\": livesysfs -2 is out of range 0-4294967295",
            "set \"bad name\": apqns[0]: adapter 256 is out of range 0-255",
            "set \"bad name\": apqns[0]: domain -1 is out of range 0-255",
            "set \"bad name\": apqns[1]: entry must be an object, found \"x\"",
            "cryptoconfigsets[2]: setname is missing",
            "cryptoconfigsets[2]: apqns[0]: APQN 01.0005 (adapter 1, domain 5) is already listed at \
             set \"blue\" apqns[0]",
        ]
    );
}

#[test]
fn invalid_display_lists_all_problems() {
    let set = without(with(blue(), "overcommit", json!(101)), "project");
    let error = parse(&config(vec![set.clone()])).expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "2 problems: set \"blue\": project is missing; \
         set \"blue\": overcommit 101 is out of range 0-100"
    );
    let error = parse(&config(vec![without(set, "overcommit")])).expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "1 problem: set \"blue\": project is missing"
    );
}

#[test]
fn unknown_fields_are_warnings() {
    let mut set = with(blue(), "overcomit", json!(3));
    set["colour"] = json!("blue");
    set["apqns"][0]["machinid"] = json!("IBM-3931-00000000000F4E21");
    let text = json!({"cryptoconfigsets": [set], "version": 2}).to_string();
    let loaded = parse_ok(&text);
    assert_eq!(
        loaded.warnings,
        vec![
            "unknown field \"version\" at the top level is ignored",
            "unknown field \"colour\" in set \"blue\" is ignored",
            "unknown field \"overcomit\" in set \"blue\" is ignored (did you mean \"overcommit\"?)",
            "unknown field \"machinid\" in set \"blue\": apqns[0] is ignored (did you mean \"machineid\"?)",
        ]
    );
    assert_eq!(loaded.config.sets[0].overcommit, None);
}

#[test]
fn syntax_errors_give_line_and_column() {
    let cases = [
        ("", 1, 0, "EOF while parsing a value"),
        (
            "{\n  \"cryptoconfigsets\": [\n    {\"setname\": \"a\",}\n  ]\n}",
            3,
            21,
            "trailing comma",
        ),
        ("not json", 1, 2, "expected ident"),
        ("{\"cryptoconfigsets\": []} x", 1, 26, "trailing characters"),
    ];
    for (text, line, column, message) in cases {
        assert_eq!(
            parse(text),
            Err(ConfigError::Parse {
                line,
                column,
                message: message.to_string()
            }),
            "{text:?}"
        );
    }
}

#[test]
fn wrong_top_level_shape_is_a_parse_error() {
    let cases = [
        (
            "[]",
            1,
            1,
            "expected an object with a \"cryptoconfigsets\" array, found an array",
        ),
        (
            "\n  [[{\"setname\": \"a\", \"project\": \"a\", \"apqns\": []}]]",
            2,
            3,
            "expected an object with a \"cryptoconfigsets\" array, found an array",
        ),
        (
            "\"cryptoconfigsets\"",
            1,
            1,
            "expected an object with a \"cryptoconfigsets\" array, found \"cryptoconfigsets\"",
        ),
        ("{}", 1, 2, "missing field `cryptoconfigsets`"),
        (
            "{\"cryptoconfigsets\": 5}",
            1,
            22,
            "invalid type: integer `5`, expected a sequence",
        ),
        (
            "{\"cryptoconfigsets\": null}",
            1,
            25,
            "invalid type: null, expected a sequence",
        ),
    ];
    for (text, line, column, message) in cases {
        assert_eq!(
            parse(text),
            Err(ConfigError::Parse {
                line,
                column,
                message: message.to_string()
            }),
            "{text:?}"
        );
    }
}

#[test]
fn project_outside_namespace_rules_is_a_warning() {
    for valid in ["p", "customer-1", "a1", &"n".repeat(63)] {
        let loaded = parse_ok(&config(vec![with(blue(), "project", json!(valid))]));
        assert!(
            loaded.warnings.is_empty(),
            "{valid:?}: {:?}",
            loaded.warnings
        );
    }
    let rule = "is not a Kubernetes namespace name (1-63 lowercase letters, digits and '-', \
                starting and ending with a letter or digit), so every pod using the set is \
                reported as a project mismatch";
    for odd in ["Customer", "team_a", "-team", "team-", "a.b"] {
        let loaded = parse_ok(&config(vec![with(blue(), "project", json!(odd))]));
        assert_eq!(loaded.config.sets[0].project, odd);
        assert_eq!(
            loaded.warnings,
            vec![format!("set \"blue\": project {odd:?} {rule}")]
        );
    }
}

#[test]
fn project_with_whitespace_is_rejected() {
    let rule = "must not contain whitespace or control characters";
    for invalid in ["a b", "ns\n", "tab\there"] {
        assert_eq!(
            problems(&config(vec![with(blue(), "project", json!(invalid))])),
            vec![format!("set \"blue\": project {invalid:?} {rule}")],
        );
    }
}

#[test]
fn project_longer_than_namespace_is_rejected() {
    let long = "n".repeat(64);
    assert_eq!(
        problems(&config(vec![with(blue(), "project", json!(long))])),
        vec![format!(
            "set \"blue\": project {long:?} is longer than 63 characters, the limit of a \
             namespace name"
        )],
    );
}

#[test]
fn machineid_must_have_the_sysinfo_shape() {
    let entry = |machineid: &str| json!([{"adapter": 1, "domain": 5, "machineid": machineid}]);
    for valid in ["IBM-3906-00000000000829E7", "IBM-8561-0000000000000001", ""] {
        parse_ok(&config(vec![with(blue(), "apqns", entry(valid))]));
    }
    let rule = "is invalid, expected <Manufacturer>-<Type>-<Sequence Code> such as \
                \"IBM-3906-00000000000829E7\": up to 64 printable characters without spaces";
    let long = format!("IBM-3906-{}", "0".repeat(56));
    for invalid in [
        "IBM-3906",
        "IBM 3906 0001",
        "IBM-3906-0001\nforged line",
        "--",
        "IBM--0001",
        &long,
    ] {
        assert_eq!(
            problems(&config(vec![with(blue(), "apqns", entry(invalid))])),
            vec![format!(
                "set \"blue\": apqns[0]: machineid {} {rule}",
                cex_config::quoted(invalid)
            )],
        );
    }
}

#[test]
fn duplicate_keys_are_problems() {
    let text = r#"{"cryptoconfigsets": [{"setname": "blue", "project": "a", "project": "b",
        "apqns": [{"adapter": 1, "domain": 5, "domain": 6}]}]}"#;
    assert_eq!(
        problems(text),
        vec![
            "cryptoconfigsets[0]: key \"project\" appears more than once in one object",
            "cryptoconfigsets[0].apqns[0]: key \"domain\" appears more than once in one object",
        ]
    );
}

#[test]
fn huge_and_hostile_values_are_quoted_bounded() {
    let huge = "P".repeat(1 << 20);
    let shown = format!("\"{}\"... ({} bytes)", "P".repeat(64), huge.len());
    let error = parse(&config(vec![with(blue(), "project", json!(huge))])).expect_err("invalid");
    let text = error.to_string();
    assert!(text.len() < 1024, "{} bytes", text.len());
    assert!(text.contains(&shown), "{text}");

    let mut set = with(blue(), "setname", json!(huge));
    set[huge.as_str()] = json!(1);
    let error = parse(&config(vec![set])).expect_err("invalid");
    assert!(error.to_string().len() < 1024);

    let forged = with(blue(), "cexmode", json!("cca\nINFO forged"));
    assert_eq!(
        problems(&config(vec![forged])),
        vec!["set \"blue\": cexmode \"cca\\nINFO forged\" is invalid, expected ep11, cca or accel"]
    );

    let wrong_shape = json!({"cryptoconfigsets": huge}).to_string();
    match parse(&wrong_shape) {
        Err(ConfigError::Parse { message, .. }) => {
            assert!(message.len() < 512, "{} bytes", message.len())
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn invalid_display_counts_problems_past_the_listed_ones() {
    let sets: Vec<Value> = (0..30)
        .map(|n| json!({"setname": format!("s{n}"), "project": "", "apqns": []}))
        .collect();
    let error = parse(&config(sets)).expect_err("invalid");
    let ConfigError::Invalid { problems } = &error else {
        panic!("expected problems, got {error:?}");
    };
    assert_eq!(problems.len(), 30);
    let text = error.to_string();
    assert!(
        text.starts_with("30 problems: set \"s0\": project must not be empty"),
        "{text}"
    );
    assert!(
        text.ends_with("set \"s19\": project must not be empty; and 10 more"),
        "{text}"
    );
}
