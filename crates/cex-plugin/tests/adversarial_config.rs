//! Hostile config files against the running agent binary. Each bad file
//! must produce the SPEC log line with the set, field and value. The agent
//! then runs without any configuration (no set offers devices), and the
//! next valid file brings the devices back.

mod adversarial_support;
mod agent_support;

use std::fs;

use adversarial_support::{blue_healthy, started};
use agent_support::{wait_until, Node, BASE_CONFIG, BLUE, WAIT};

const PARSE: &str = "CryptoConfig: Error parsing config file";
const OPEN: &str = "CryptoConfig: Can't open config file";
const VERIFY: &str = "Config Watcher: failed to verify new configuration!";

/// Returns a config with one set `blue` whose object ends with `extra`.
fn blue_with(extra: &str) -> String {
    format!(
        r#"{{"cryptoconfigsets":[{{"setname":"blue","project":"blue",
        "apqns":[{{"adapter":1,"domain":5}},{{"adapter":2,"domain":5}}]{extra}}}]}}"#
    )
}

fn named(setname: &str) -> String {
    format!(
        r#"{{"cryptoconfigsets":[{{"setname":{setname},"project":"blue",
        "apqns":[{{"adapter":1,"domain":5}}]}}]}}"#
    )
}

/// How a bad config is put in place.
enum Plant {
    Text(String),
    Bytes(Vec<u8>),
    Directory,
    SymlinkLoop,
}

fn plant(node: &Node, content: &Plant) {
    let path = node.config_file();
    let _ = fs::remove_dir_all(&path);
    let _ = fs::remove_file(&path);
    match content {
        Plant::Text(text) => node.write_config(text),
        Plant::Bytes(bytes) => {
            let temp = path.with_extension("tmp");
            fs::write(&temp, bytes).expect("config bytes");
            fs::rename(&temp, &path).expect("rename");
        }
        Plant::Directory => fs::create_dir(&path).expect("dir"),
        Plant::SymlinkLoop => {
            let other = path.with_extension("loop");
            let _ = fs::remove_file(&other);
            std::os::unix::fs::symlink(&other, &path).expect("link");
            std::os::unix::fs::symlink(&path, &other).expect("link back");
        }
    }
}

fn restore(node: &Node) {
    let path = node.config_file();
    let _ = fs::remove_dir_all(&path);
    let _ = fs::remove_file(&path);
    node.write_config(BASE_CONFIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_serve_nothing() {
    let node = Node::new();

    let (kubelet, mut agent) = started(&node, &[]).await;
    let long_name = format!("\"{}\"", "a".repeat(64));
    let cases: Vec<(&str, Plant, &str, Vec<&str>)> = vec![
        ("invalid JSON", Plant::Text("{\"cryptoconfigsets\": [".into()), PARSE, vec![]),
        ("empty file", Plant::Text(String::new()), PARSE, vec![]),
        ("BOM", Plant::Bytes([b"\xEF\xBB\xBF".as_slice(), BASE_CONFIG.as_bytes()].concat()), PARSE, vec![]),
        ("NUL bytes", Plant::Bytes(b"{\"cryptoconfigsets\":[]}\0\0".to_vec()), PARSE, vec![]),
        ("directory", Plant::Directory, OPEN, vec![]),
        ("symlink loop", Plant::SymlinkLoop, OPEN, vec![]),
        ("overcommit string", Plant::Text(blue_with(r#","overcommit":"3""#)), VERIFY, vec!["blue", "overcommit", "\"3\""]),
        ("overcommit huge", Plant::Text(blue_with(r#","overcommit":99999999999999999999999"#)), VERIFY, vec!["blue", "overcommit"]),
        ("overcommit negative", Plant::Text(blue_with(r#","overcommit":-1"#)), VERIFY, vec!["blue", "overcommit", "-1"]),
        ("overcommit 101", Plant::Text(blue_with(r#","overcommit":101"#)), VERIFY, vec!["blue", "overcommit", "101"]),
        ("overcommit float", Plant::Text(blue_with(r#","overcommit":1.5"#)), VERIFY, vec!["blue", "overcommit", "1.5"]),
        ("setname slash", Plant::Text(named("\"a/b\"")), VERIFY, vec!["setname", "a/b"]),
        ("setname dotdot", Plant::Text(named("\"..\"")), VERIFY, vec!["setname", ".."]),
        ("setname space", Plant::Text(named("\"a b\"")), VERIFY, vec!["setname", "a b"]),
        ("setname 64", Plant::Text(named(&long_name)), VERIFY, vec!["setname"]),
        ("setname unicode", Plant::Text(named("\"bl\u{e4}u\"")), VERIFY, vec!["setname", "bl\u{e4}u"]),
        ("adapter 256", Plant::Text(r#"{"cryptoconfigsets":[{"setname":"blue","project":"blue","apqns":[{"adapter":256,"domain":5}]}]}"#.into()), VERIFY, vec!["blue", "adapter", "256"]),
        ("duplicate set", Plant::Text(r#"{"cryptoconfigsets":[{"setname":"blue","project":"b","apqns":[]},{"setname":"blue","project":"c","apqns":[]}]}"#.into()), VERIFY, vec!["blue"]),
        ("duplicate APQN across sets", Plant::Text(r#"{"cryptoconfigsets":[{"setname":"blue","project":"b","apqns":[{"adapter":1,"domain":5}]},{"setname":"red","project":"c","apqns":[{"adapter":1,"domain":5,"machineid":"IBM-3931-00000000000ABCDE"}]}]}"#.into()), VERIFY, vec!["red"]),
        ("duplicate APQN in one set", Plant::Text(r#"{"cryptoconfigsets":[{"setname":"blue","project":"b","apqns":[{"adapter":1,"domain":5},{"adapter":1,"domain":5}]}]}"#.into()), VERIFY, vec!["blue"]),
        ("apqns missing", Plant::Text(r#"{"cryptoconfigsets":[{"setname":"blue","project":"b"}]}"#.into()), VERIFY, vec!["blue", "apqns"]),
        ("top-level array", Plant::Text("[]".into()), PARSE, vec![]),
    ];

    let mut failures = Vec::new();

    for (what, content, line, names) in cases {
        let before = agent.log_text().matches(line).count();
        plant(&node, &content);
        let logged = wait_until(|| agent.log_text().matches(line).count() > before).await;
        let emptied = kubelet
            .wait_for(WAIT, |recorded| {
                recorded
                    .messages(BLUE)
                    .last()
                    .filter(|m| m.devices.is_empty())
                    .map(|_| ())
            })
            .await;
        let log = agent.log_text();
        let error_line = log
            .lines()
            .rev()
            .find(|l| l.contains(line))
            .unwrap_or("")
            .to_string();
        println!("{what}: {error_line}");
        if !logged {
            failures.push(format!("{what}: no {line:?} line"));
        }
        if emptied.is_none() {
            failures.push(format!("{what}: blue still offers devices"));
        }
        for name in names {
            if !error_line.contains(name) {
                failures.push(format!("{what}: error line does not name {name:?}"));
            }
        }
        assert!(agent.alive(), "{what}: agent exited:\n{log}");
        restore(&node);
        let back = blue_healthy(&kubelet, 2).await;
        if !back {
            failures.push(format!("{what}: valid config not picked up again"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_configs_accepted() {
    let node = Node::new();

    let (kubelet, mut agent) = started(&node, &[]).await;
    // Same APQN on two different machines is two APQNs.
    let machines = r#"{"cryptoconfigsets":[
      {"setname":"blue","project":"b","overcomit":3,"apqns":[{"adapter":1,"domain":5,"machineid":"IBM-3931-00000000000ABCDE"}]},
      {"setname":"red","project":"c","apqns":[{"adapter":1,"domain":5,"machineid":"IBM-8561-0000000000000001"}]}]}"#;
    node.write_config(machines);
    let red = kubelet
        .wait_registration("cex.s390.ibm.com/red", 0, WAIT)
        .await;
    assert!(red.is_some(), "log:\n{}", agent.log_text());

    let log = agent.log_text();
    assert!(log.contains("overcomit"), "unknown field not named:\n{log}");
    assert!(agent.alive());
}
