//! Steps 3, 4 and 8: a pod receives a device, is listed in the wrong
//! namespace, and ends, after which the agent removes what it made.

use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context as _};
use cex_ap::DeviceId;
use cex_kubelet_api::deviceplugin::v1beta1::ContainerAllocateResponse;
use cex_sim::kubelet::FakePod;
use serde_json::json;

use super::{latest_ids, shorten, strip_log_prefix, Demo, MISMATCH_LOG, POD, POLL, STEP_TIMEOUT};
use crate::commands::demo::report::Outcome;
use crate::commands::demo::view::{format_rows, read_masks, ContainerView, NodeMasks};

impl Demo {
    /// Step 3: allocates the first device of the first set and shows what
    /// the container gets.
    pub(super) async fn allocate(&mut self) -> anyhow::Result<Outcome> {
        let resource = self.sets.first.resource();
        let recorded = self.scene.kubelet.recorded();
        let text_id = latest_ids(&recorded, &resource)
            .and_then(|ids| ids.into_iter().next())
            .with_context(|| format!("expected devices of {resource}, saw none"))?;
        let id: DeviceId = text_id.parse()?;
        let response = self
            .scene
            .kubelet
            .allocate(&resource, vec![vec![text_id.clone()]])
            .await
            .map_err(|status| anyhow!("Allocate of {text_id} failed: {}", status.message()))?;
        let container = response
            .container_responses
            .into_iter()
            .next()
            .context("expected one container response, saw none")?;

        let mut outcome = Outcome::new(json!({}));
        outcome.line(format!("pod {POD} receives {id} of {resource}"));
        let device_facts = show_device(&container, &mut outcome)?;
        let masks = self.check_masks(id, &mut outcome)?;
        let rows = show_view(id, &container, &mut outcome)?;
        show_real_lszcrypt(&container, &mut outcome);
        outcome.facts = json!({
            "device": id.to_string(),
            "adapter": id.apqn.adapter,
            "domain": id.apqn.domain,
            "device_spec": device_facts,
            "apmask_adapters": masks.adapters,
            "aqmask_domains": masks.usage_domains,
            "admask_domains": masks.control_domains,
            "ioctls": masks.ioctls,
            "view_rows": rows,
        });
        self.allocation = Some(id);
        Ok(outcome)
    }

    /// Reads the zcrypt node's masks and checks that they reach exactly
    /// the allocated APQN.
    fn check_masks(&self, id: DeviceId, outcome: &mut Outcome) -> anyhow::Result<NodeMasks> {
        let dir = self
            .root()
            .join("sys/devices/virtual/zcrypt")
            .join(id.zcrypt_node_name());
        let masks = read_masks(&dir)?;
        outcome.line(format!(
            "zcrypt node {}: apmask adapters {}, aqmask domains {}, admask {}, ioctlmask {} of 256",
            id.zcrypt_node_name(),
            hex_list(&masks.adapters, 2),
            hex_list(&masks.usage_domains, 4),
            if masks.control_domains.is_empty() {
                "none".to_string()
            } else {
                hex_list(&masks.control_domains, 4)
            },
            masks.ioctls
        ));
        ensure!(
            masks.adapters == [id.apqn.adapter] && masks.usage_domains == [id.apqn.domain],
            "expected the masks to allow only adapter {} and domain {}, saw adapters {:?} and domains {:?}",
            id.apqn.adapter,
            id.apqn.domain,
            masks.adapters,
            masks.usage_domains
        );
        ensure!(
            masks.control_domains.is_empty(),
            "expected no control domain, saw {:?}",
            masks.control_domains
        );
        Ok(masks)
    }

    /// Step 4: lists the pod in another set's namespace and waits for the
    /// agent's mismatch report.
    pub(super) async fn mismatch(&mut self) -> anyhow::Result<Outcome> {
        let id = self.allocation.context("no device was allocated")?;
        let namespace = self.sets.second.project.clone();
        let project = self.sets.first.project.clone();
        let id = id.to_string();
        let mark = self.agent()?.log().mark();
        let pod = FakePod::with_devices(POD, &namespace, &self.sets.first.resource(), &[&id]);
        self.scene.pods()?.set_pods(vec![pod]);

        let line = self
            .agent()?
            .log()
            .wait_for(mark, MISMATCH_LOG, STEP_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "expected the agent to log \"{MISMATCH_LOG} ... marked for project {project}!\" \
                     within {STEP_TIMEOUT:?}, saw no such line"
                )
            })?;
        ensure!(
            line.contains(&id) && line.contains(&format!("marked for project {project}!")),
            "expected the mismatch line to name {id} and project {project}, saw {line:?}"
        );
        let mut outcome = Outcome::new(json!({
            "namespace": namespace,
            "project": project,
            "log_line": line,
        }));
        outcome.line(format!(
            "pod {POD} listed in namespace {namespace}, set project {project}"
        ));
        outcome.line(format!("agent log: {line}"));
        Ok(outcome)
    }

    /// Step 8: ends the pod and waits for the zcrypt node and the shadow
    /// dir to be removed.
    pub(super) async fn cleanup(&mut self) -> anyhow::Result<Outcome> {
        let id = self.allocation.context("no device was allocated")?;
        let node_name = id.zcrypt_node_name();
        let paths = [
            self.root().join("dev").join(&node_name),
            self.root()
                .join("sys/devices/virtual/zcrypt")
                .join(&node_name),
            self.scene
                .agent_setup
                .shadow_base_dir
                .join(id.shadow_dir_name()),
        ];
        for path in &paths {
            ensure!(
                path.exists(),
                "expected {} to exist while the pod runs, it is gone",
                path.display()
            );
        }
        let mark = self.agent()?.log().mark();
        self.scene.pods()?.set_pods(Vec::new());

        let started = Instant::now();
        while let Some(left) = paths.iter().find(|path| path.exists()) {
            if started.elapsed() > STEP_TIMEOUT {
                bail!(
                    "expected {} to be removed within {STEP_TIMEOUT:?} of the pod's end, it is still there",
                    left.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let removed_after = started.elapsed();
        let log = self.agent()?.log();
        let mut lines = log.matching_since(mark, &node_name);
        lines.extend(log.matching_since(mark, &id.shadow_dir_name()));

        let mut outcome = Outcome::new(json!({
            "zcrypt_node_removed": true,
            "shadow_dir_removed": true,
            "removed_ms": removed_after.as_millis(),
            "log_lines": lines,
        }));
        outcome.line(format!("pod {POD} removed from pod-resources"));
        for path in &paths {
            outcome.line(format!("  removed {}", path.display()));
        }
        for line in &lines {
            outcome.line(format!(
                "  agent log: {}",
                shorten(strip_log_prefix(line), 110)
            ));
        }
        Ok(outcome)
    }
}

/// Prints the device spec of the container and returns it as facts.
fn show_device(
    container: &ContainerAllocateResponse,
    outcome: &mut Outcome,
) -> anyhow::Result<serde_json::Value> {
    let device = container
        .devices
        .first()
        .context("expected a device spec in the Allocate response, saw none")?;
    outcome.line(format!(
        "device {} -> {} ({})",
        device.host_path, device.container_path, device.permissions
    ));
    ensure!(
        device.container_path == "/dev/z90crypt",
        "expected the device at /dev/z90crypt in the container, saw {}",
        device.container_path
    );
    for mount in &container.mounts {
        let access = if mount.read_only { "ro" } else { "rw" };
        outcome.line(format!(
            "mount  {} -> {} ({access})",
            mount.host_path, mount.container_path
        ));
    }
    Ok(json!({
        "host_path": device.host_path,
        "container_path": device.container_path,
        "permissions": device.permissions,
    }))
}

/// Prints the container's AP bus as `lszcrypt` columns and checks that
/// it shows only the allocated card and queue.
fn show_view(
    id: DeviceId,
    container: &ContainerAllocateResponse,
    outcome: &mut Outcome,
) -> anyhow::Result<Vec<[String; 5]>> {
    let rows = ContainerView::new(container).lszcrypt_rows()?;
    outcome.line("container view of the shadow sysfs (lszcrypt columns):");
    outcome.block(&format_rows(&rows));
    let mut listed_ids: Vec<&str> = rows.iter().map(|row| row[0].as_str()).collect();
    listed_ids.sort_unstable();
    let card = format!("{:02x}", id.apqn.adapter);
    let queue = id.apqn.to_string();
    let mut expected_ids = vec![card.as_str(), queue.as_str()];
    expected_ids.sort_unstable();
    ensure!(
        listed_ids == expected_ids,
        "expected the container to see only {card} and {queue}, saw {listed_ids:?}"
    );
    Ok(rows)
}

/// Runs IBM's `lszcrypt` in the container view when the s390x tools are
/// here, else prints how to fetch them.
fn show_real_lszcrypt(container: &ContainerAllocateResponse, outcome: &mut Outcome) {
    match cex_sim::lszcrypt::find_tools() {
        Ok(_) => match cex_sim::lszcrypt::describe_container_view(container) {
            Ok(text) => {
                outcome.line("real lszcrypt (s390x, under qemu) in the container view:");
                outcome.block(&drop_empty_domain_rows(&text));
            }
            Err(error) => outcome.line(format!("real lszcrypt did not run: {error}")),
        },
        Err(error) => outcome.line(format!(
            "real lszcrypt not run ({error}); fetch it with {}",
            cex_sim::lszcrypt::fetch_script().display()
        )),
    }
}

/// Drops the rows of the `lszcrypt -d` domain table that mark no domain
/// (`    20  .  .  . ...`), which would fill a screen.
fn drop_empty_domain_rows(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let label = fields.next().unwrap_or("");
            let marks: Vec<&str> = fields.collect();
            let empty_row = label.chars().all(|c| c.is_ascii_hexdigit())
                && !marks.is_empty()
                && marks.iter().all(|mark| *mark == ".");
            !empty_row
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

fn hex_list(values: &[u8], width: usize) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|value| format!("0x{value:0width$x}"))
        .collect();
    format!("[{}]", items.join(", "))
}
