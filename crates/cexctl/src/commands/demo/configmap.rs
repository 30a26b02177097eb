//! A config directory laid out the way the kubelet mounts a ConfigMap.
//!
//! The kubelet's atomic writer keeps each version of the data in a
//! hidden directory `..<timestamp>`, points the symlink `..data` at the
//! current one and exposes each key as `<key> -> ..data/<key>`. An update
//! writes a new version directory, swaps `..data` with a rename (one
//! atomic step for readers) and then removes the old version.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

/// The key of the config in the ConfigMap, and so its file name.
pub const CONFIG_KEY: &str = "cex_resources.json";

const DATA_LINK: &str = "..data";
const DATA_LINK_TEMP: &str = "..data_tmp";

/// A ConfigMap-style directory holding `cex_resources.json`.
#[derive(Debug)]
pub struct ConfigMapDir {
    dir: PathBuf,
    current: Option<String>,
    versions: u32,
}

impl ConfigMapDir {
    /// Creates the directory with its first version holding `text`.
    pub fn create(dir: &Path, text: &str) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut config = Self {
            dir: dir.to_path_buf(),
            current: None,
            versions: 0,
        };
        config.update(text)?;
        let key_link = dir.join(CONFIG_KEY);
        symlink(Path::new(DATA_LINK).join(CONFIG_KEY), &key_link)
            .with_context(|| format!("cannot create symlink {}", key_link.display()))?;
        Ok(config)
    }

    /// Returns the path the agent reads: `<dir>/cex_resources.json`.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join(CONFIG_KEY)
    }

    /// Returns the name of the current version directory.
    pub fn current_version(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Publishes `text` as a new version and swaps `..data` to it.
    pub fn update(&mut self, text: &str) -> anyhow::Result<()> {
        self.versions += 1;
        let version = version_name(SystemTime::now(), self.versions);
        let version_dir = self.dir.join(&version);
        fs::create_dir(&version_dir)
            .with_context(|| format!("cannot create {}", version_dir.display()))?;
        let file = version_dir.join(CONFIG_KEY);
        fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;

        let temp_link = self.dir.join(DATA_LINK_TEMP);
        symlink(&version, &temp_link)
            .with_context(|| format!("cannot create symlink {}", temp_link.display()))?;
        let data_link = self.dir.join(DATA_LINK);
        fs::rename(&temp_link, &data_link)
            .with_context(|| format!("cannot swap {}", data_link.display()))?;

        if let Some(old) = self.current.replace(version) {
            let old_dir = self.dir.join(old);
            fs::remove_dir_all(&old_dir)
                .with_context(|| format!("cannot remove {}", old_dir.display()))?;
        }
        Ok(())
    }
}

/// Names a version directory as the kubelet does,
/// `..2006_01_02_15_04_05.<9 digits>` in UTC. The nanosecond field also
/// carries `sequence` so that two updates in one nanosecond tick differ.
fn version_name(now: SystemTime, sequence: u32) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let nanos = since_epoch.subsec_micros() * 1000 + sequence % 1000;
    format!(
        "..{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.{nanos:09}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) date of the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn version_name_has_kubelet_shape() {
        let at = UNIX_EPOCH + Duration::new(1_709_210_096, 123_456_789);
        assert_eq!(version_name(at, 7), "..2024_02_29_12_34_56.123456007");
    }

    #[test]
    fn update_swaps_data_and_drops_old_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("config");
        let mut config = ConfigMapDir::create(&root, "one").expect("create");
        let first = config.current_version().expect("version").to_string();
        assert_eq!(
            fs::read_to_string(config.config_file()).expect("read"),
            "one"
        );

        config.update("two").expect("update");
        assert_eq!(
            fs::read_to_string(config.config_file()).expect("read"),
            "two"
        );
        assert!(!root.join(&first).exists(), "old version {first} is left");
        let data = fs::read_link(root.join(DATA_LINK)).expect("..data link");
        assert_eq!(data, Path::new(config.current_version().expect("version")));
        assert!(!root.join(DATA_LINK_TEMP).exists());
    }
}
