//! The stage of the demo: a simulated node in a directory of its own,
//! its fake kernel, the simulated kubelet and pod-resources server, and
//! the ConfigMap-style config directory, all in this process.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cex_sim::kernel::{FakeKernel, RunningKernel};
use cex_sim::kubelet::{FakeKubelet, PodResources};
use cex_sim::layout::SimNode;
use cex_sim::machines::Machine;
use tempfile::TempDir;

use super::agent::AgentSetup;
use super::configmap::ConfigMapDir;

/// Tmpfs used for the node tree when present: small-file writes on it
/// are much faster than on a disk file system.
const SHARED_MEMORY_DIR: &str = "/dev/shm";

/// The directory holding everything, removed at the end unless kept.
#[derive(Debug)]
enum RootDir {
    Temporary(TempDir),
    Kept(PathBuf),
}

/// Everything the agent runs against.
pub struct Scene {
    root_dir: RootDir,
    pub node: SimNode,
    kernel: Option<RunningKernel>,
    pub kubelet: FakeKubelet,
    pub pods: Option<PodResources>,
    pub config: ConfigMapDir,
    pub agent_setup: AgentSetup,
}

/// What `Scene::shut_down` left behind.
#[derive(Debug)]
pub struct ShutDown {
    pub root: PathBuf,
    pub removed: bool,
}

impl Scene {
    /// Lays out `machine` in a new temp dir (or in `keep`, which must be
    /// empty or absent), starts the fake kernel, the simulated kubelet and
    /// the pod-resources server, and writes `config_text` as the config.
    pub async fn build(
        machine: Machine,
        keep: Option<&Path>,
        config_text: &str,
        echo_agent_log: bool,
    ) -> anyhow::Result<Self> {
        let root_dir = make_root(keep)?;
        let root = match &root_dir {
            RootDir::Temporary(dir) => dir.path().to_path_buf(),
            RootDir::Kept(dir) => dir.clone(),
        };
        let name = machine.name.clone();
        let node = SimNode::create(machine, &root)
            .with_context(|| format!("cannot lay out machine {name:?}"))?;
        let kernel = FakeKernel::new(&root)
            .and_then(|kernel| kernel.start())
            .context("cannot start the fake kernel")?;

        let kubelet_dir = root.join("var/lib/kubelet");
        let device_plugin_dir = kubelet_dir.join("device-plugins");
        let pod_resources_socket = kubelet_dir.join("pod-resources/kubelet.sock");
        for dir in [
            &device_plugin_dir,
            &kubelet_dir.join("pod-resources"),
            &root.join("var/tmp"),
        ] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let kubelet = FakeKubelet::start(&device_plugin_dir)
            .await
            .context("cannot start the simulated kubelet")?;
        let pods = PodResources::start(&pod_resources_socket)
            .await
            .context("cannot start the simulated pod-resources server")?;
        let config = ConfigMapDir::create(&root.join("config"), config_text)?;

        let agent_setup = AgentSetup {
            root: root.clone(),
            config_file: config.config_file(),
            device_plugin_dir,
            pod_resources_socket,
            shadow_base_dir: root.join("var/tmp/shadowsysfs"),
            echo: echo_agent_log,
        };
        Ok(Self {
            root_dir,
            node,
            kernel: Some(kernel),
            kubelet,
            pods: Some(pods),
            config,
            agent_setup,
        })
    }

    /// Returns the root of the node tree.
    pub fn root(&self) -> &Path {
        &self.agent_setup.root
    }

    /// Returns the pod-resources server.
    pub fn pods(&self) -> anyhow::Result<&PodResources> {
        self.pods
            .as_ref()
            .context("the pod-resources server is stopped")
    }

    /// Stops the kubelet, the pod-resources server and the fake kernel,
    /// then removes the tree unless it is kept.
    pub async fn shut_down(mut self) -> anyhow::Result<ShutDown> {
        self.kubelet.stop().await;
        if let Some(pods) = self.pods.take() {
            pods.stop().await;
        }
        if let Some(kernel) = self.kernel.take() {
            kernel.stop();
        }
        match self.root_dir {
            RootDir::Temporary(dir) => {
                let root = dir.path().to_path_buf();
                dir.close()
                    .with_context(|| format!("cannot remove {}", root.display()))?;
                Ok(ShutDown {
                    removed: !root.exists(),
                    root,
                })
            }
            RootDir::Kept(root) => Ok(ShutDown {
                root,
                removed: false,
            }),
        }
    }
}

fn make_root(keep: Option<&Path>) -> anyhow::Result<RootDir> {
    if let Some(dir) = keep {
        let occupied = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        if occupied {
            bail!(
                "--keep {} is not empty; give an empty or new directory",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        return Ok(RootDir::Kept(dir));
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix("cex-demo-");
    let dir = if Path::new(SHARED_MEMORY_DIR).is_dir() {
        builder.tempdir_in(SHARED_MEMORY_DIR)
    } else {
        builder.tempdir()
    };
    Ok(RootDir::Temporary(dir.context(
        "cannot create a temp dir for the simulated node",
    )?))
}
