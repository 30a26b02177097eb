//! Test fixtures: a host AP sysfs laid out in a temp dir, and a kernel
//! emulation (a thread that reacts to names written to `create` and
//! `destroy`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::NodePaths;

/// How the emulated kernel handles a `create` write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateBehaviour {
    /// Make the attribute dir and the `/dev` node.
    Normal,
    /// Make nothing, as when the kernel rejects the name.
    Refuse,
    /// Make the attribute dir but never the `/dev` node.
    NoDevNode,
}

pub(crate) struct TestKernel {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every value read from `create` or `destroy` that was not exactly one
    /// name and a newline, i.e. two writes that met in one file.
    pub(crate) anomalies: Arc<Mutex<Vec<String>>>,
}

/// Lays out an empty node tree (zcrypt class, nodes dir, dev dir) in `root`.
pub(crate) fn node_tree(root: &Path) -> NodePaths {
    let paths = NodePaths::under_root(root, &root.join("shadow"));
    fs::create_dir_all(&paths.zcrypt_class_dir).expect("class dir");
    fs::create_dir_all(&paths.zcrypt_nodes_dir).expect("nodes dir");
    fs::create_dir_all(&paths.dev_dir).expect("dev dir");
    fs::write(paths.zcrypt_class_dir.join("create"), "").expect("create file");
    fs::write(paths.zcrypt_class_dir.join("destroy"), "").expect("destroy file");
    paths
}

impl TestKernel {
    pub(crate) fn start(paths: &NodePaths, behaviour: CreateBehaviour) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let anomalies = Arc::new(Mutex::new(Vec::new()));
        let state = (paths.clone(), stop.clone(), anomalies.clone());
        let thread = thread::spawn(move || {
            let (paths, stop, anomalies) = state;
            while !stop.load(Ordering::SeqCst) {
                for (file, is_create) in [("create", true), ("destroy", false)] {
                    let Some(name) = take(&paths.zcrypt_class_dir.join(file), &anomalies) else {
                        continue;
                    };
                    if is_create {
                        create(&paths, &name, behaviour);
                    } else {
                        let _ = fs::remove_dir_all(paths.zcrypt_nodes_dir.join(&name));
                        let _ = fs::remove_file(paths.dev_dir.join(&name));
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        Self {
            stop,
            thread: Some(thread),
            anomalies,
        }
    }
}

fn take(file: &PathBuf, anomalies: &Mutex<Vec<String>>) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    if text.is_empty() {
        return None;
    }
    fs::write(file, "").expect("truncate");
    let name = text.strip_suffix('\n').unwrap_or(&text);
    if name.is_empty() || name.contains('\n') {
        anomalies.lock().expect("anomalies").push(text.clone());
    }
    Some(name.lines().next().unwrap_or_default().to_string())
}

fn create(paths: &NodePaths, name: &str, behaviour: CreateBehaviour) {
    if behaviour == CreateBehaviour::Refuse || paths.zcrypt_nodes_dir.join(name).exists() {
        return;
    }
    let temp = paths.zcrypt_nodes_dir.join(format!(".new-{name}"));
    fs::create_dir_all(&temp).expect("node dir");
    for mask in ["apmask", "aqmask", "admask", "ioctlmask"] {
        fs::write(temp.join(mask), format!("0x{}\n", "0".repeat(64))).expect("mask");
    }
    fs::rename(&temp, paths.zcrypt_nodes_dir.join(name)).expect("rename");
    if behaviour == CreateBehaviour::Normal {
        fs::write(paths.dev_dir.join(name), "").expect("dev node");
    }
}

impl Drop for TestKernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes a sysfs-style attribute: the value and a newline.
fn attribute(dir: &Path, name: &str, value: &str) {
    fs::create_dir_all(dir).expect("attribute dir");
    fs::write(dir.join(name), format!("{value}\n")).expect("attribute");
}

fn link(target: &str, at: &Path) {
    fs::create_dir_all(at.parent().expect("parent")).expect("link dir");
    std::os::unix::fs::symlink(target, at).expect("symlink");
}

/// Lays out the AP bus of a z16 LPAR in `paths`: a CEX8C card 00 and a
/// CEX8P (EP11) card 03, both with queues in domains 0x29 and 0x2a.
pub(crate) fn lay_out_ap_bus(paths: &NodePaths) {
    let bus = &paths.ap_bus_dir;
    for (name, value) in [
        ("ap_domain", "41"),
        ("ap_max_domain_id", "84"),
        ("ap_max_adapter_id", "84"),
        ("ap_interrupts", "1"),
        ("poll_thread", "0"),
        ("poll_timeout", "250000"),
        (
            "ap_adapter_mask",
            "0x90000000000000000000000000000000000000000000000000000000000000",
        ),
        ("apmask", &format!("0x{}", "f".repeat(64))),
        ("aqmask", &format!("0x{}", "f".repeat(64))),
    ] {
        attribute(bus, name, value);
    }
    for (adapter, kind, functions) in [(0u8, "CEX8C", "0x92800000"), (3, "CEX8P", "0x06800000")] {
        let card = format!("card{adapter:02x}");
        let card_dir = paths.ap_devs_dir.join(&card);
        for (name, value) in [
            ("type", kind),
            ("hwtype", "14"),
            ("raw_hwtype", "14"),
            ("depth", "8"),
            ("ap_functions", functions),
            ("online", "1"),
            ("load", "7"),
            ("request_count", "12"),
            ("requestq_count", "0"),
            ("pendingq_count", "0"),
            ("serialnr", "99FAKE01"),
        ] {
            attribute(&card_dir, name, value);
        }
        if kind == "CEX8P" {
            attribute(&card_dir, "API_ordinalnr", "4");
            attribute(&card_dir, "FW_version", "8.2");
            attribute(&card_dir, "op_modes", "");
        }
        link("../../../bus/ap", &card_dir.join("subsystem"));
        link("../../../bus/ap/drivers/cex4card", &card_dir.join("driver"));
        link(
            &format!("../../../devices/ap/{card}"),
            &bus.join("devices").join(&card),
        );
        for domain in [0x29u8, 0x2a] {
            let queue = format!("{adapter:02x}.{domain:04x}");
            let queue_dir = card_dir.join(&queue);
            for (name, value) in [
                ("online", "1"),
                ("load", "3"),
                ("request_count", "5"),
                ("requestq_count", "0"),
                ("pendingq_count", "0"),
                ("interrupt", "Interrupts enabled."),
                ("reset", "No Reset Timer set."),
                ("config", "1"),
                ("chkstop", "0"),
            ] {
                attribute(&queue_dir, name, value);
            }
            fs::write(
                queue_dir.join("mkvps"),
                "WK CUR: valid 0x5a17\nWK NEW: empty -\n",
            )
            .expect("mkvps");
            link("../../../../bus/ap", &queue_dir.join("subsystem"));
            let relative = format!("../../../devices/ap/{card}/{queue}");
            link(&relative, &bus.join("devices").join(&queue));
        }
    }
}
