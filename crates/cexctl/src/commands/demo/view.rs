//! What a container that received a device sees: the zcrypt node's masks
//! decoded, and the AP bus of its shadow sysfs listed the way `lszcrypt`
//! lists it.
//!
//! The listing resolves paths as the container would: each path is
//! mapped through the allocation's mounts (longest container path
//! first), and symlinks are followed inside the container's view, so a
//! relative link in the shadow tree and the live-sysfs mount of the real
//! queue directory both land where they would in the container.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use cex_ap::{CexMode, Mask256};
use cex_kubelet_api::deviceplugin::v1beta1::ContainerAllocateResponse;

/// Linux's limit of symlinks followed in one path lookup (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// The masks of one zcrypt node, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMasks {
    pub adapters: Vec<u8>,
    pub usage_domains: Vec<u8>,
    pub control_domains: Vec<u8>,
    pub ioctls: u32,
}

/// Reads and decodes `apmask`, `aqmask`, `admask` and `ioctlmask` of the
/// zcrypt node attribute directory `dir`.
pub fn read_masks(dir: &Path) -> anyhow::Result<NodeMasks> {
    let read = |name: &str| -> anyhow::Result<Mask256> {
        let path = dir.join(name);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Mask256::parse_kernel(text.trim(), &Mask256::empty())
            .with_context(|| format!("invalid mask in {}", path.display()))
    };
    Ok(NodeMasks {
        adapters: read("apmask")?.bits().collect(),
        usage_domains: read("aqmask")?.bits().collect(),
        control_domains: read("admask")?.bits().collect(),
        ioctls: read("ioctlmask")?.count(),
    })
}

/// A container's file system view below `/sys`, built from the mounts of
/// an allocation.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// (container path components, host path), longest first.
    mounts: Vec<(Vec<String>, PathBuf)>,
}

impl ContainerView {
    pub fn new(response: &ContainerAllocateResponse) -> Self {
        let mut mounts: Vec<(Vec<String>, PathBuf)> = response
            .mounts
            .iter()
            .map(|mount| {
                let parts = normal_parts(Path::new(&mount.container_path));
                (parts, PathBuf::from(&mount.host_path))
            })
            .collect();
        mounts.sort_by_key(|(parts, _)| std::cmp::Reverse(parts.len()));
        Self { mounts }
    }

    /// Maps resolved container path components to the host path behind
    /// them, or `None` when no mount covers them.
    fn host_path(&self, parts: &[String]) -> Option<PathBuf> {
        let (prefix, host) = self
            .mounts
            .iter()
            .find(|(prefix, _)| parts.starts_with(prefix))?;
        Some(
            parts[prefix.len()..]
                .iter()
                .fold(host.clone(), |path, part| path.join(part)),
        )
    }

    /// Resolves `container_path` to the host file the container reads,
    /// following symlinks inside the container's view.
    pub fn resolve(&self, container_path: &str) -> io::Result<PathBuf> {
        let not_visible = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{container_path} is not visible in the container"),
            )
        };
        let mut pending: VecDeque<String> = normal_parts(Path::new(container_path)).into();
        let mut resolved: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                resolved.pop();
                continue;
            }
            resolved.push(part);
            // Directories above the mounts (`/sys`, `/sys/bus`) come from
            // the container's own tree and are no symlinks.
            let Some(host) = self.host_path(&resolved) else {
                continue;
            };
            let is_link = fs::symlink_metadata(&host).is_ok_and(|meta| meta.is_symlink());
            if !is_link {
                continue;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::other(format!(
                    "too many symlinks resolving {container_path}"
                )));
            }
            let target = fs::read_link(&host)?;
            resolved.pop();
            if target.is_absolute() {
                resolved.clear();
            }
            for part in normal_parts(&target).into_iter().rev() {
                pending.push_front(part);
            }
        }
        self.host_path(&resolved).ok_or_else(not_visible)
    }

    fn read(&self, container_path: &str) -> Option<String> {
        let host = self.resolve(container_path).ok()?;
        fs::read_to_string(host)
            .ok()
            .map(|text| text.trim().to_string())
    }

    /// Lists `/sys/bus/ap/devices` as `lszcrypt` does: one row per card
    /// and queue with CARD.DOMAIN, TYPE, MODE, STATUS and REQUESTS.
    pub fn lszcrypt_rows(&self) -> anyhow::Result<Vec<[String; 5]>> {
        let dir = self
            .resolve("/sys/bus/ap/devices")
            .context("the container has no /sys/bus/ap/devices")?;
        let names: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        let mut rows: Vec<[String; 5]> = names.iter().filter_map(|name| self.row(name)).collect();
        // Cards (`03`) sort before their queues (`03.0011`), as in lszcrypt.
        rows.sort();
        Ok(rows)
    }

    fn row(&self, device: &str) -> Option<[String; 5]> {
        let (id, card) = match device.strip_prefix("card") {
            Some(card) => (card.to_string(), card.to_string()),
            None => (device.to_string(), device.split('.').next()?.to_string()),
        };
        let base = format!("/sys/bus/ap/devices/{device}");
        let card_type = self
            .read(&format!("/sys/bus/ap/devices/card{card}/type"))
            .unwrap_or_else(|| "-".into());
        let mode = card_type
            .chars()
            .last()
            .and_then(CexMode::from_type_letter)
            .map_or("-", mode_column);
        let status = match self.read(&format!("{base}/online")).as_deref() {
            Some("1") => "online",
            Some("0") => "offline",
            _ => "-",
        };
        let requests = self
            .read(&format!("{base}/request_count"))
            .unwrap_or_else(|| "-".into());
        Some([
            id,
            card_type,
            mode.to_string(),
            status.to_string(),
            requests,
        ])
    }
}

/// The MODE column of `lszcrypt` for a card mode.
fn mode_column(mode: CexMode) -> &'static str {
    match mode {
        CexMode::Ep11 => "EP11-Coproc",
        CexMode::Cca => "CCA-Coproc",
        CexMode::Accel => "Accelerator",
    }
}

/// Formats rows under the `lszcrypt` header.
pub fn format_rows(rows: &[[String; 5]]) -> String {
    let mut text = format!(
        "{:<11} {:<5} {:<11} {:<7} {:>8}\n",
        "CARD.DOMAIN", "TYPE", "MODE", "STATUS", "REQUESTS"
    );
    text.push_str(&"-".repeat(46));
    text.push('\n');
    for [id, card_type, mode, status, requests] in rows {
        text.push_str(&format!(
            "{id:<11} {card_type:<5} {mode:<11} {status:<7} {requests:>8}\n"
        ));
    }
    text
}

/// Splits a path into its normal components and `..`, dropping the root
/// and `.`.
fn normal_parts(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cex_kubelet_api::deviceplugin::v1beta1::Mount;
    use std::os::unix::fs::symlink;

    fn mount(container: &str, host: &Path) -> Mount {
        Mount {
            container_path: container.to_string(),
            host_path: host.display().to_string(),
            read_only: true,
        }
    }

    #[test]
    fn resolve_follows_links_inside_the_view() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = dir.path().join("shadow/bus/ap");
        let devices = dir.path().join("shadow/devices/ap");
        let live = dir.path().join("live-queue");
        fs::create_dir_all(bus.join("devices")).expect("bus dir");
        fs::create_dir_all(devices.join("card03/03.0011")).expect("devices dir");
        fs::create_dir_all(&live).expect("live dir");
        fs::write(devices.join("card03/type"), "CEX8P\n").expect("type");
        fs::write(live.join("online"), "1\n").expect("online");
        fs::write(live.join("request_count"), "7\n").expect("count");
        symlink("../../../devices/ap/card03", bus.join("devices/card03")).expect("card link");
        symlink(
            "../../../devices/ap/card03/03.0011",
            bus.join("devices/03.0011"),
        )
        .expect("queue link");
        fs::write(devices.join("card03/online"), "1\n").expect("card online");
        fs::write(devices.join("card03/request_count"), "0\n").expect("card count");
        let response = ContainerAllocateResponse {
            mounts: vec![
                mount("/sys/bus/ap", &bus),
                mount("/sys/devices/ap", &devices),
                mount("/sys/bus/ap/devices/03.0011", &live),
            ],
            ..Default::default()
        };
        let view = ContainerView::new(&response);

        assert_eq!(
            view.resolve("/sys/bus/ap/devices/card03/type")
                .expect("type"),
            devices.join("card03/type")
        );
        assert_eq!(
            view.resolve("/sys/bus/ap/devices/03.0011/online")
                .expect("live"),
            live.join("online")
        );
        assert!(view.resolve("/sys/class/zcrypt").is_err());

        let rows = view.lszcrypt_rows().expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], "03");
        assert_eq!(rows[0][3], "online");
        assert_eq!(rows[1][0], "03.0011");
        assert_eq!(rows[1][2], "EP11-Coproc");
        assert_eq!(rows[1][4], "7");
    }

    #[test]
    fn masks_decode_to_bit_numbers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, mask: Mask256| {
            fs::write(dir.path().join(name), format!("{mask}\n")).expect("mask");
        };
        write("apmask", Mask256::single(3));
        write("aqmask", Mask256::single(17));
        write("admask", Mask256::empty());
        write("ioctlmask", Mask256::full());
        let masks = read_masks(dir.path()).expect("masks");
        assert_eq!(masks.adapters, vec![3]);
        assert_eq!(masks.usage_domains, vec![17]);
        assert!(masks.control_domains.is_empty());
        assert_eq!(masks.ioctls, 256);
    }
}
