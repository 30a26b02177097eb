//! A simulated node for one benchmark: the node tree (plain files with
//! the fake kernel, or FUSE), the simulated kubelet and pod-resources
//! server, and a ConfigMap-style config directory, all in one temp dir.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use cex_sim::fuse::{FuseError, FuseNode};
use cex_sim::kernel::{FakeKernel, RunningKernel};
use cex_sim::kubelet::{FakeKubelet, PodResources};
use cex_sim::layout::SimNode;
use cex_sim::machines::Machine;
use tempfile::TempDir;

/// Tmpfs used for node trees when present: this is where small-file
/// writes are fast, as on sysfs.
pub const SHARED_MEMORY_DIR: &str = "/dev/shm";

/// The config file name in the ConfigMap.
const CONFIG_KEY: &str = "cex_resources.json";

/// How the node's sysfs is served.
pub enum NodeTree {
    /// Plain files with the fake kernel reacting to `create`/`destroy`.
    Files {
        node: SimNode,
        kernel: RunningKernel,
    },
    /// A FUSE mount where `create` makes the node before the write returns.
    Fuse(FuseNode),
}

/// Where the agent keeps its shadow sysfs directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowPlace {
    /// Inside the node's temp dir (tmpfs when `/dev/shm` exists).
    WithNode,
    /// In a temp dir under `/var/tmp`, on disk as on a real node.
    Disk,
}

/// Everything one agent runs against.
pub struct BenchNode {
    base: TempDir,
    /// A separate temp dir for the shadow base when it is on disk.
    shadow_dir: Option<TempDir>,
    pub tree: Option<NodeTree>,
    pub kubelet: Arc<FakeKubelet>,
    pods: Option<PodResources>,
    config_versions: u32,
}

/// Creates a temp dir under `/dev/shm` when present, else under the
/// default temp dir.
pub fn fast_temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    let dir = if Path::new(SHARED_MEMORY_DIR).is_dir() {
        builder.tempdir_in(SHARED_MEMORY_DIR)
    } else {
        builder.tempdir()
    };
    dir.context("cannot create a temp dir for the simulated node")
}

impl BenchNode {
    /// Lays out `machine` in plain files and starts the fake kernel.
    pub async fn files(
        machine: Machine,
        config: &str,
        shadow: ShadowPlace,
    ) -> anyhow::Result<Self> {
        let base = fast_temp_dir("cex-bench-")?;
        let root = base.path().join("node");
        let name = machine.name.clone();
        let node = SimNode::create(machine, &root)
            .with_context(|| format!("cannot lay out machine {name:?}"))?;
        let kernel = FakeKernel::new(&root)
            .and_then(|kernel| kernel.start())
            .context("cannot start the fake kernel")?;
        Self::finish(base, NodeTree::Files { node, kernel }, config, shadow).await
    }

    /// Serves `machine` through FUSE; `Ok(None)` when this host cannot
    /// mount FUSE file systems.
    pub async fn fuse(machine: Machine, config: &str) -> anyhow::Result<Option<Self>> {
        let base = fast_temp_dir("cex-bench-fuse-")?;
        let root = base.path().join("node");
        fs::create_dir(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let fuse = match FuseNode::mount(machine, &root) {
            Ok(fuse) => fuse,
            Err(FuseError::Unavailable { reason }) => {
                tracing::warn!(%reason, "FUSE node not available, skipping its figures");
                return Ok(None);
            }
            Err(error) => return Err(error).context("cannot mount the FUSE node"),
        };
        Self::finish(base, NodeTree::Fuse(fuse), config, ShadowPlace::WithNode)
            .await
            .map(Some)
    }

    async fn finish(
        base: TempDir,
        tree: NodeTree,
        config: &str,
        shadow: ShadowPlace,
    ) -> anyhow::Result<Self> {
        let kubelet_dir = base.path().join("kubelet");
        for dir in [
            kubelet_dir.join("device-plugins"),
            kubelet_dir.join("pod-resources"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let kubelet = FakeKubelet::start(kubelet_dir.join("device-plugins"))
            .await
            .context("cannot start the simulated kubelet")?;
        let kubelet = Arc::new(kubelet);
        let pods = PodResources::start(kubelet_dir.join("pod-resources/kubelet.sock"))
            .await
            .context("cannot start the simulated pod-resources server")?;
        let shadow_dir = match shadow {
            ShadowPlace::WithNode => None,
            ShadowPlace::Disk => Some(
                tempfile::Builder::new()
                    .prefix("cex-bench-shadow-")
                    .tempdir_in("/var/tmp")
                    .context("cannot create a shadow base temp dir under /var/tmp")?,
            ),
        };
        let mut node = Self {
            base,
            shadow_dir,
            tree: Some(tree),
            kubelet,
            pods: Some(pods),
            config_versions: 0,
        };
        fs::create_dir(node.config_dir())
            .with_context(|| format!("cannot create {}", node.config_dir().display()))?;
        node.write_config(config)?;
        let key_link = node.config_file();
        symlink(Path::new("..data").join(CONFIG_KEY), &key_link)
            .with_context(|| format!("cannot create symlink {}", key_link.display()))?;
        Ok(node)
    }

    /// Returns the root of the node tree (`sys/`, `dev/`, `proc/`).
    pub fn root(&self) -> PathBuf {
        self.base.path().join("node")
    }

    fn config_dir(&self) -> PathBuf {
        self.base.path().join("config")
    }

    /// Returns the config path the agent reads.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join(CONFIG_KEY)
    }

    /// Returns the shadow sysfs base dir the agent uses.
    pub fn shadow_base(&self) -> PathBuf {
        self.shadow_dir.as_ref().map_or_else(
            || self.base.path().join("shadow"),
            |dir| dir.path().join("shadow"),
        )
    }

    /// Publishes `text` as a new config version the way the kubelet
    /// updates a mounted ConfigMap: a new `..<version>` dir, a new
    /// `..data` symlink renamed over the old one, the old dir removed.
    pub fn write_config(&mut self, text: &str) -> anyhow::Result<()> {
        let dir = self.config_dir();
        self.config_versions += 1;
        let version = format!("..version_{}", self.config_versions);
        let version_dir = dir.join(&version);
        fs::create_dir(&version_dir)
            .with_context(|| format!("cannot create {}", version_dir.display()))?;
        let file = version_dir.join(CONFIG_KEY);
        fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        let temp_link = dir.join("..data_tmp");
        symlink(&version, &temp_link)
            .with_context(|| format!("cannot create symlink {}", temp_link.display()))?;
        let data_link = dir.join("..data");
        fs::rename(&temp_link, &data_link)
            .with_context(|| format!("cannot swap {}", data_link.display()))?;
        if self.config_versions > 1 {
            let old = dir.join(format!("..version_{}", self.config_versions - 1));
            fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
        }
        Ok(())
    }

    /// Returns the agent flags that point every path into this node.
    pub fn agent_paths(&self) -> Vec<(&'static str, String)> {
        let root = self.root();
        let under_root = |relative: &str| root.join(relative).display().to_string();
        let kubelet_dir = self.base.path().join("kubelet");
        vec![
            (
                "--shadowsysfs-basedir",
                self.shadow_base().display().to_string(),
            ),
            ("--ccs-json-file", self.config_file().display().to_string()),
            ("--apsysfs-busdir", under_root("sys/bus/ap")),
            ("--apsysfs-devsdir", under_root("sys/devices/ap")),
            ("--zcrypt-classdir", under_root("sys/class/zcrypt")),
            (
                "--zcrypt-nodesdir",
                under_root("sys/devices/virtual/zcrypt"),
            ),
            ("--dev-dir", under_root("dev")),
            ("--proc-sysinfo-file", under_root("proc/sysinfo")),
            (
                "--kubelet-device-plugin-dir",
                kubelet_dir.join("device-plugins").display().to_string(),
            ),
            (
                "--kubelet-pod-resources-socket",
                kubelet_dir
                    .join("pod-resources/kubelet.sock")
                    .display()
                    .to_string(),
            ),
        ]
    }

    /// Stops the kubelet, the pod-resources server and the node tree,
    /// then removes the temp dirs.
    pub async fn shut_down(mut self) -> anyhow::Result<()> {
        self.kubelet.stop().await;
        if let Some(pods) = self.pods.take() {
            pods.stop().await;
        }
        match self.tree.take() {
            Some(NodeTree::Files { kernel, .. }) => kernel.stop(),
            Some(NodeTree::Fuse(fuse)) => fuse.unmount().context("cannot unmount the FUSE node")?,
            None => {}
        }
        if let Some(dir) = self.shadow_dir.take() {
            dir.close()
                .context("cannot remove the shadow base temp dir")?;
        }
        self.base.close().context("cannot remove the node temp dir")
    }
}
