//! Steps 5, 6 and 7: hot unplug and plug, a config change that adds
//! overcommit and a set, and a broken config with its repair.

use serde_json::json;

use super::{describe_list, shorten, Demo, PARSE_ERROR_LOG, UPDATED_LOG};
use crate::commands::demo::report::Outcome;
use crate::commands::demo::sets::config_json;

impl Demo {
    /// Step 5: unplugs the card behind the second set and plugs it back.
    pub(super) async fn hot_unplug(&mut self, adapter: u8) -> anyhow::Result<Outcome> {
        let set = self.sets.second.clone();
        let before = set.expected_devices();
        let during = before - set.apqns_on_card(adapter);
        let resource = set.resource();

        self.scene.node.remove_card(adapter)?;
        let removed = self
            .wait_counts(
                &[(resource.clone(), during)],
                "the list without the unplugged card",
            )
            .await?;
        self.scene.node.add_card(adapter)?;
        let restored = self
            .wait_counts(
                &[(resource.clone(), before)],
                "the list with the card plugged back",
            )
            .await?;

        let mut outcome = Outcome::new(json!({
            "card": adapter,
            "before": before,
            "during": during,
            "after": before,
            "shrink_ms": removed.as_millis(),
            "recover_ms": restored.as_millis(),
        }));
        outcome.line(format!(
            "card {adapter:02x} unplugged: {resource} {before} -> {during} devices in {} ms",
            removed.as_millis()
        ));
        outcome.line(format!(
            "card {adapter:02x} plugged:   {resource} {during} -> {before} devices in {} ms",
            restored.as_millis()
        ));
        Ok(outcome)
    }

    /// Step 6: sets overcommit 3 on the first set and adds the third set.
    pub(super) async fn grow(&mut self) -> anyhow::Result<Outcome> {
        let before = self.expect(&[self.sets.first.clone(), self.sets.second.clone()]);
        self.sets.first.overcommit = Some(3);
        let sets = self.all_sets();
        self.scene.config.update(&config_json(&sets))?;
        let after = self.expect(&sets);
        let waited = self.wait_counts(&after, "the new device counts").await?;

        let mut outcome = Outcome::new(json!({
            "before": before,
            "after": after,
            "new_resource": self.sets.added.resource(),
        }));
        outcome.line(format!(
            "config swapped (..data -> {}) after {} ms:",
            self.scene.config.current_version().unwrap_or("?"),
            waited.as_millis()
        ));
        let recorded = self.scene.kubelet.recorded();
        for set in &sets {
            outcome.line(format!("  {}", describe_list(&recorded, &set.resource())));
        }
        Ok(outcome)
    }

    /// Step 7: swaps in invalid JSON, waits for every set to offer no
    /// devices, then repairs the config.
    pub(super) async fn break_config(&mut self) -> anyhow::Result<Outcome> {
        let sets = self.all_sets();
        let empty: Vec<(String, usize)> = sets.iter().map(|set| (set.resource(), 0)).collect();
        let mark = self.agent()?.log().mark();
        self.scene
            .config
            .update("{ \"cryptoconfigsets\": [ { \"setname\": ")?;
        let emptied = self
            .wait_counts(&empty, "no devices while the config is broken")
            .await?;
        let error_line = self.wait_log(mark, PARSE_ERROR_LOG).await?;

        let mark = self.agent()?.log().mark();
        self.scene.config.update(&config_json(&sets))?;
        let restored = self.expect(&sets);
        let repaired = self
            .wait_counts(&restored, "the devices back after the repair")
            .await?;
        let updated_line = self.wait_log(mark, UPDATED_LOG).await?;

        let mut outcome = Outcome::new(json!({
            "broken": empty,
            "error_line": error_line,
            "repaired": restored,
            "updated_line": updated_line,
            "empty_ms": emptied.as_millis(),
            "repair_ms": repaired.as_millis(),
        }));
        outcome.line(format!(
            "invalid JSON: every set 0 devices after {} ms",
            emptied.as_millis()
        ));
        outcome.line(format!("  agent log: {}", shorten(&error_line, 200)));
        outcome.line(format!(
            "repaired: devices back after {} ms",
            repaired.as_millis()
        ));
        outcome.line(format!("  agent log: {}", shorten(&updated_line, 100)));
        Ok(outcome)
    }
}
