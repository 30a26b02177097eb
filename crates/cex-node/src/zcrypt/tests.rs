use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use cex_ap::Apqn;

use super::*;
use crate::test_node::{node_tree, CreateBehaviour, TestKernel};

const TIMEOUT: Duration = Duration::from_secs(5);

fn read_mask(node: &ZcryptNode, file: &str) -> Mask256 {
    let text = fs::read_to_string(node.attr_dir.join(file)).expect("mask file");
    Mask256::parse_kernel(&text, &Mask256::empty()).expect("mask parses")
}

#[test]
fn ensure_creates_restricted_node() {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    let _kernel = TestKernel::start(&paths, CreateBehaviour::Normal);
    let nodes = ZcryptNodes::new(&paths, TIMEOUT);
    let id = DeviceId::new(Apqn::new(3, 0x29), 2);

    let node = nodes.ensure(&id).expect("node");

    assert!(node.created);
    assert_eq!(node.name, "zcrypt-apqn-3-41-2");
    assert_eq!(node.dev_path, paths.dev_dir.join("zcrypt-apqn-3-41-2"));
    let mode = fs::metadata(&node.dev_path)
        .expect("dev node")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    assert_eq!(
        read_mask(&node, "apmask").bits().collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(
        read_mask(&node, "aqmask").bits().collect::<Vec<_>>(),
        vec![41]
    );
    assert_eq!(read_mask(&node, "admask"), Mask256::empty());
    assert_eq!(read_mask(&node, "ioctlmask"), Mask256::full());
    let raw = fs::read_to_string(node.attr_dir.join("apmask")).expect("apmask");
    assert_eq!(raw.len(), 67, "0x + 64 hex digits + newline: {raw:?}");
    assert_eq!(nodes.list().expect("list"), vec![id]);
}

#[test]
fn ensure_reuses_node_and_reapplies_masks() {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    let _kernel = TestKernel::start(&paths, CreateBehaviour::Normal);
    let nodes = ZcryptNodes::new(&paths, TIMEOUT);
    let id = DeviceId::new(Apqn::new(0, 17), 0);
    let first = nodes.ensure(&id).expect("first");
    fs::write(
        first.attr_dir.join("aqmask"),
        format!("{}\n", Mask256::full()),
    )
    .expect("tamper");

    let second = nodes.ensure(&id).expect("second");

    assert!(!second.created);
    assert_eq!(read_mask(&second, "aqmask"), Mask256::single(17));
}

#[test]
fn ensure_times_out_when_kernel_refuses() {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    let _kernel = TestKernel::start(&paths, CreateBehaviour::Refuse);
    let nodes = ZcryptNodes::new(&paths, Duration::from_millis(200));
    let id = DeviceId::new(Apqn::new(1, 5), 0);

    let error = nodes.ensure(&id).expect_err("no node");

    assert!(matches!(error, ZcryptError::NotCreated { .. }), "{error}");
    assert!(error.to_string().contains("zcrypt-apqn-1-5-0"), "{error}");
    assert!(!paths.zcrypt_nodes_dir.join("zcrypt-apqn-1-5-0").exists());
    assert!(!paths.dev_dir.join("zcrypt-apqn-1-5-0").exists());
}

#[test]
fn ensure_destroys_node_without_dev_node() {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    let _kernel = TestKernel::start(&paths, CreateBehaviour::NoDevNode);
    let nodes = ZcryptNodes::new(&paths, Duration::from_millis(200));
    let id = DeviceId::new(Apqn::new(1, 5), 0);

    let error = nodes.ensure(&id).expect_err("no dev node");

    assert!(
        error.to_string().contains("dev/zcrypt-apqn-1-5-0"),
        "{error}"
    );
    assert!(!paths.zcrypt_nodes_dir.join("zcrypt-apqn-1-5-0").exists());
}

#[test]
fn ensure_reports_missing_multi_node_support() {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    fs::remove_file(paths.zcrypt_class_dir.join("create")).expect("remove create");
    let nodes = ZcryptNodes::new(&paths, TIMEOUT);

    assert!(!nodes.multi_node_supported());
    let error = nodes
        .ensure(&DeviceId::new(Apqn::new(1, 5), 0))
        .expect_err("unsupported");
    assert!(matches!(error, ZcryptError::NotSupported { .. }), "{error}");
}

#[test]
fn mask_read_back_must_match() {
    let file = Path::new("apmask");
    let mask = Mask256::single(1);
    assert!(verify_read_back("n", file, format!("{mask}\n"), &mask).is_ok());
    let error = verify_read_back("n", file, format!("{}\n", Mask256::full()), &mask)
        .expect_err("different mask");
    assert!(matches!(error, ZcryptError::MaskMismatch { .. }), "{error}");
    let error = verify_read_back("n", file, "garbage\n".to_string(), &mask).expect_err("garbage");
    assert!(error.to_string().contains("garbage"), "{error}");
}

#[test]
fn mask_write_does_not_follow_symlink() {
    let temp = tempfile::tempdir().expect("temp dir");
    let target = temp.path().join("target");
    fs::write(&target, "").expect("target");
    std::os::unix::fs::symlink(&target, temp.path().join("apmask")).expect("symlink");
    let error =
        write_mask("n", &temp.path().join("apmask"), &Mask256::single(1)).expect_err("link");
    assert!(matches!(error, ZcryptError::Write { .. }), "{error}");
    assert_eq!(fs::read_to_string(&target).expect("target"), "");
}

#[test]
fn destroy_removes_node() {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    let _kernel = TestKernel::start(&paths, CreateBehaviour::Normal);
    let nodes = ZcryptNodes::new(&paths, TIMEOUT);
    let node = nodes
        .ensure(&DeviceId::new(Apqn::new(1, 5), 0))
        .expect("node");

    nodes.destroy(&node.name).expect("destroyed");

    assert!(!node.attr_dir.exists());
    assert!(nodes.list().expect("list").is_empty());
}

#[test]
fn concurrent_creates_never_share_the_create_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let paths = node_tree(temp.path());
    let kernel = TestKernel::start(&paths, CreateBehaviour::Normal);
    let nodes = Arc::new(ZcryptNodes::new(&paths, TIMEOUT));
    let threads: Vec<_> = (0..16u8)
        .map(|domain| {
            let nodes = nodes.clone();
            std::thread::spawn(move || nodes.ensure(&DeviceId::new(Apqn::new(1, domain), 0)))
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread").expect("node");
    }

    assert_eq!(nodes.list().expect("list").len(), 16);
    assert!(kernel.anomalies.lock().expect("anomalies").is_empty());
}
