//! Runs IBM's `lszcrypt` against a simulated AP bus, as a container or a
//! host would see it.
//!
//! The tool is the s390x build from Debian's `s390-tools` package, unpacked
//! by `scripts/fetch-s390-tools.sh` into `target/s390-tools` and run under
//! `qemu-s390x-static` with the s390x C library of `libc6-s390x-cross`
//! (`/usr/s390x-linux-gnu`).
//!
//! `lszcrypt` finds sysfs through the first `sysfs` line of `/proc/mounts`
//! and reads `/sys/bus/ap` and `/sys/devices/ap` below it. To show it a
//! simulated tree at those paths without touching the host's mounts, each
//! run happens in a private mount namespace (`unshare --mount
//! --propagation private`, so root is needed): a tmpfs covers `/sys`, and
//! the given directories are bind-mounted read-only on their container
//! paths, in the order a container runtime applies them (fewer path
//! components first). The `sysfs` line of `/proc/mounts` stays, so the
//! tool still takes `/sys` as the sysfs root.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cex_kubelet_api::deviceplugin::v1beta1::ContainerAllocateResponse;

/// Overrides where the unpacked `s390-tools` tree is looked for.
pub const TOOLS_DIR_ENV: &str = "CEX_S390_TOOLS_DIR";
/// Overrides the s390x C library root (`lib/ld64.so.1`, `lib/libc.so.6`).
pub const SYSROOT_ENV: &str = "CEX_S390X_SYSROOT";

const DEFAULT_SYSROOT: &str = "/usr/s390x-linux-gnu";
const QEMU_NAMES: [&str; 2] = ["qemu-s390x-static", "qemu-s390x"];

/// The shell program run inside the new mount namespace. Its arguments
/// are `HOST CONTAINER ro|rw` triples, then `--`, then the command.
const VIEW_SCRIPT: &str = r#"set -eu
mount -t tmpfs -o mode=0755,size=4m cex-view /sys
while [ "$1" != -- ]; do
    host=$1 target=$2 access=$3
    shift 3
    [ -e "$target" ] || mkdir -p "$target"
    mount --bind "$host" "$target"
    if [ "$access" = ro ]; then mount -o remount,bind,ro "$target"; fi
done
shift
exec "$@"
"#;

/// A failure to find or run `lszcrypt`.
#[derive(Debug, thiserror::Error)]
pub enum LszcryptError {
    /// A program or file the run needs is missing, or this process may not
    /// make a mount namespace.
    #[error("lszcrypt cannot run here: {reason}")]
    Unavailable { reason: String },
    /// A mount would cover a path outside `/sys`.
    #[error("rejected mount of {host} on {container_path:?}: {reason}")]
    InvalidMount {
        host: PathBuf,
        container_path: String,
        reason: &'static str,
    },
    /// A program could not be started.
    #[error("failed to start {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A command ran but exited with an error.
    #[error("{command} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    /// The output is not in the format of `lszcrypt` 2.x.
    #[error("unexpected lszcrypt output line {line:?}: {reason}")]
    Parse { line: String, reason: &'static str },
}

type Result<T, E = LszcryptError> = std::result::Result<T, E>;

fn unavailable(reason: impl Into<String>) -> LszcryptError {
    LszcryptError::Unavailable {
        reason: reason.into(),
    }
}

/// The programs and files one `lszcrypt` run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `qemu-s390x-static` (or `qemu-s390x`).
    pub qemu: PathBuf,
    /// The s390x C library root holding `lib/ld64.so.1`.
    pub sysroot: PathBuf,
    /// The unpacked `s390-tools` tree.
    pub tools_dir: PathBuf,
    /// `<tools_dir>/sbin/lszcrypt`, an s390x program.
    pub lszcrypt: PathBuf,
    /// `unshare` of util-linux.
    pub unshare: PathBuf,
}

/// Returns the default unpack directory, `target/s390-tools` of this
/// workspace.
pub fn default_tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/s390-tools")
}

/// Returns the path of this workspace's fetch script.
pub fn fetch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-s390-tools.sh")
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Locates qemu-user, the s390x C library, the unpacked `lszcrypt` and
/// `unshare`, or returns an error naming the one that is missing.
pub fn find_tools() -> Result<Tools> {
    let qemu = QEMU_NAMES
        .iter()
        .find_map(|name| on_path(name))
        .ok_or_else(|| {
            unavailable("qemu-s390x-static not found on PATH (apt-get install qemu-user-static)")
        })?;
    let sysroot = std::env::var_os(SYSROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSROOT));
    if !sysroot.join("lib/ld64.so.1").exists() {
        return Err(unavailable(format!(
            "no s390x C library in {} (apt-get install libc6-s390x-cross)",
            sysroot.display()
        )));
    }
    let tools_dir = std::env::var_os(TOOLS_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(default_tools_dir);
    let lszcrypt = tools_dir.join("sbin/lszcrypt");
    if !lszcrypt.is_file() {
        return Err(unavailable(format!(
            "{} not found (run scripts/fetch-s390-tools.sh)",
            lszcrypt.display()
        )));
    }
    let unshare = on_path("unshare").ok_or_else(|| unavailable("unshare not found on PATH"))?;
    Ok(Tools {
        qemu,
        sysroot,
        tools_dir,
        lszcrypt,
        unshare,
    })
}

/// Probes the tools for the test `test`, printing `SKIPPED: <test>:
/// <reason>` and returning `None` when they cannot run here.
pub fn tools_or_skip(test: &str) -> Option<Tools> {
    match probe() {
        Ok(tools) => Some(tools),
        Err(error) => {
            println!("SKIPPED: {test}: {error}");
            None
        }
    }
}

/// Returns the standard output of `command` when it exited with success,
/// else an error holding its exit status and both outputs.
pub fn success_stdout(output: &Output, command: &str) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    Err(LszcryptError::Failed {
        command: command.to_string(),
        status: output.status,
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs the fetch script when the tools are missing, then looks again.
pub fn find_or_fetch_tools() -> Result<Tools> {
    if let Ok(tools) = find_tools() {
        return Ok(tools);
    }
    let script = fetch_script();
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .map_err(|source| LszcryptError::Spawn {
            program: script.clone(),
            source,
        })?;
    tracing::info!(script = %script.display(), %status, "fetch script finished");
    find_tools()
}

/// Finds the tools and checks that they run here: `lszcrypt -v` under
/// qemu, and an empty private mount namespace. Tests call this to decide
/// whether to skip.
pub fn probe() -> Result<Tools> {
    let tools = find_tools()?;
    let version =
        tools
            .lszcrypt_command(["-v"])
            .output()
            .map_err(|source| LszcryptError::Spawn {
                program: tools.qemu.clone(),
                source,
            })?;
    if !version.status.success() {
        return Err(unavailable(format!(
            "lszcrypt -v under qemu failed: {}",
            String::from_utf8_lossy(&version.stderr).trim()
        )));
    }
    let namespace = run_in_view(&tools, &[], "true", Vec::<&str>::new())?;
    if !namespace.status.success() {
        return Err(unavailable(format!(
            "cannot make a private mount namespace (root needed): {}",
            String::from_utf8_lossy(&namespace.stderr).trim()
        )));
    }
    Ok(tools)
}

impl Tools {
    /// Builds the command that runs `lszcrypt ARGS` under qemu in this
    /// mount namespace.
    fn lszcrypt_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.qemu);
        command.args(self.qemu_args()).args(args);
        command.env_remove("SYSFS_ROOT");
        command
    }

    /// qemu's arguments up to and including the `lszcrypt` path: qemu
    /// runs the s390x dynamic loader, which loads `lszcrypt` with the C
    /// library root and the unpacked tree as library path. qemu's `-L`
    /// is not used: it maps every absolute path that also exists below
    /// the root into the root.
    fn qemu_args(&self) -> Vec<OsString> {
        let library_path = [
            self.sysroot.join("lib"),
            self.tools_dir.join("lib/s390x-linux-gnu"),
            self.tools_dir.join("usr/lib/s390x-linux-gnu"),
        ]
        .iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
        vec![
            self.sysroot.join("lib/ld64.so.1").into_os_string(),
            "--library-path".into(),
            library_path.into(),
            self.lszcrypt.clone().into_os_string(),
        ]
    }
}

/// One mount of a container view: a host directory shown at a path
/// below `/sys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

impl ViewMount {
    /// Makes a read-only mount, as every mount of an allocation is.
    pub fn read_only(host_path: impl Into<PathBuf>, container_path: &str) -> Self {
        Self {
            host_path: host_path.into(),
            container_path: container_path.to_string(),
            read_only: true,
        }
    }

    fn check(&self) -> Result<()> {
        let reject = |reason| LszcryptError::InvalidMount {
            host: self.host_path.clone(),
            container_path: self.container_path.clone(),
            reason,
        };
        if !self.container_path.starts_with("/sys/") {
            return Err(reject("only paths below /sys can be shown"));
        }
        if self.container_path.split('/').any(|part| part == "..") {
            return Err(reject("the container path contains .."));
        }
        if !self.host_path.is_dir() {
            return Err(reject("the host path is not a directory"));
        }
        Ok(())
    }

    fn depth(&self) -> usize {
        self.container_path
            .split('/')
            .filter(|part| !part.is_empty())
            .count()
    }
}

/// Converts the mounts of one container of an `Allocate` response.
pub fn container_mounts(response: &ContainerAllocateResponse) -> Vec<ViewMount> {
    response
        .mounts
        .iter()
        .map(|mount| ViewMount {
            host_path: PathBuf::from(&mount.host_path),
            container_path: mount.container_path.clone(),
            read_only: mount.read_only,
        })
        .collect()
}

/// Runs `program ARGS` in a private mount namespace where `/sys` is a
/// tmpfs holding only `mounts`. The host's mounts are not changed.
pub fn run_in_view<I, S>(
    tools: &Tools,
    mounts: &[ViewMount],
    program: impl AsRef<OsStr>,
    args: I,
) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut ordered = mounts.to_vec();
    for mount in &ordered {
        mount.check()?;
    }
    ordered.sort_by_key(ViewMount::depth);
    let mut command = Command::new(&tools.unshare);
    command.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        VIEW_SCRIPT,
        "sh",
    ]);
    for mount in &ordered {
        command
            .arg(&mount.host_path)
            .arg(&mount.container_path)
            .arg(if mount.read_only { "ro" } else { "rw" });
    }
    command.arg("--").arg(program).args(args);
    command.env_remove("SYSFS_ROOT");
    tracing::debug!(
        mounts = ordered.len(),
        "running in a private mount namespace"
    );
    command.output().map_err(|source| LszcryptError::Spawn {
        program: tools.unshare.clone(),
        source,
    })
}

/// Runs the real `lszcrypt ARGS` with `mounts` as the only content of
/// `/sys`.
pub fn run_lszcrypt_in_view(tools: &Tools, mounts: &[ViewMount], args: &[&str]) -> Result<Output> {
    let mut full = tools.qemu_args();
    full.extend(args.iter().map(OsString::from));
    run_in_view(tools, mounts, &tools.qemu, full)
}

/// Runs the real `lszcrypt ARGS` with `root_sys_bus_ap` shown read-only
/// at `/sys/bus/ap` and `root_sys_devices_ap` at `/sys/devices/ap`.
pub fn run_lszcrypt(
    root_sys_bus_ap: &Path,
    root_sys_devices_ap: &Path,
    args: &[&str],
) -> Result<Output> {
    let tools = find_tools()?;
    let mounts = [
        ViewMount::read_only(root_sys_bus_ap, "/sys/bus/ap"),
        ViewMount::read_only(root_sys_devices_ap, "/sys/devices/ap"),
    ];
    run_lszcrypt_in_view(&tools, &mounts, args)
}

/// Returns what `lszcrypt -V` and `lszcrypt -d` print inside a container
/// that got `response`, with each command line before its output.
pub fn describe_container_view(response: &ContainerAllocateResponse) -> Result<String> {
    let tools = find_tools()?;
    let mounts = container_mounts(response);
    let mut text = String::new();
    for args in [&["-V"][..], &["-d"][..]] {
        let output = run_lszcrypt_in_view(&tools, &mounts, args)?;
        text.push_str(&format!("$ lszcrypt {}\n", args.join(" ")));
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        text.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    Ok(text)
}

/// One line of the device table of `lszcrypt` (with `-V`, the verbose
/// columns are filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `XX` for a card, `XX.YYYY` for a queue.
    pub id: String,
    pub card_type: String,
    /// `CCA-Coproc`, `EP11-Coproc`, `Accelerator` or `Unknown`.
    pub mode: String,
    /// `online`, `offline` or `deconfig` (from version 2.25 also `chkstop`).
    pub status: String,
    pub requests: String,
    pub verbose: Option<Verbose>,
}

/// The extra columns of `lszcrypt -V`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verbose {
    pub pending: String,
    pub hwtype: String,
    pub queue_depth: String,
    pub functions: String,
    pub driver: String,
}

impl Row {
    /// Returns the default columns: id, type, mode, status and requests.
    pub fn columns(&self) -> [&str; 5] {
        [
            &self.id,
            &self.card_type,
            &self.mode,
            &self.status,
            &self.requests,
        ]
    }

    pub fn is_queue(&self) -> bool {
        self.id.contains('.')
    }
}

/// Parses the device table printed by `lszcrypt` or `lszcrypt -V`: a
/// header line, a dashed line, then one line per card and queue.
pub fn parse_devices(stdout: &str) -> Result<Vec<Row>> {
    let mut lines = stdout.lines().filter(|line| !line.trim().is_empty());
    let Some(header) = lines.next() else {
        return Ok(Vec::new());
    };
    if !header.starts_with("CARD.DOMAIN") {
        return Err(parse_error(header, "expected the CARD.DOMAIN header"));
    }
    let mut rows = Vec::new();
    for line in lines {
        if line.starts_with('-') {
            continue;
        }
        rows.push(parse_row(line)?);
    }
    Ok(rows)
}

fn parse_error(line: &str, reason: &'static str) -> LszcryptError {
    LszcryptError::Parse {
        line: line.to_string(),
        reason,
    }
}

fn parse_row(line: &str) -> Result<Row> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let field = |index: usize| fields[index].to_string();
    let verbose = match fields.len() {
        5 => None,
        10 => Some(Verbose {
            pending: field(5),
            hwtype: field(6),
            queue_depth: field(7),
            functions: field(8),
            driver: field(9),
        }),
        _ => return Err(parse_error(line, "expected 5 or 10 columns")),
    };
    Ok(Row {
        id: field(0),
        card_type: field(1),
        mode: field(2),
        status: field(3),
        requests: field(4),
        verbose,
    })
}

/// Parses the domain table of `lszcrypt -d` into one letter per domain
/// 0..=255: `B` (control and usage), `C`, `U` or `.`.
pub fn parse_domains(stdout: &str) -> Result<Vec<char>> {
    let mut letters = Vec::with_capacity(256);
    for line in stdout.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        let Ok(base) = usize::from_str_radix(first, 16) else {
            continue;
        };
        if first.len() != 2 || base != letters.len() {
            return Err(parse_error(line, "domain rows out of order"));
        }
        let row: Vec<char> = fields.filter_map(|field| field.chars().next()).collect();
        if row.len() != 16 || row.iter().any(|letter| !"BCU.".contains(*letter)) {
            return Err(parse_error(line, "expected 16 of B, C, U or ."));
        }
        letters.extend(row);
    }
    if letters.len() != 256 {
        return Err(parse_error(stdout, "expected 16 domain rows"));
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
CARD.DOMAIN TYPE  MODE        STATUS  REQUESTS
----------------------------------------------
03          CEX8P EP11-Coproc online         4
03.0011     CEX8P EP11-Coproc offline        -
";

    #[test]
    fn device_table_parses_cards_and_queues() {
        let rows = parse_devices(TABLE).expect("parses");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "03");
        assert!(!rows[0].is_queue());
        assert_eq!(rows[1].card_type, "CEX8P");
        assert_eq!(rows[1].mode, "EP11-Coproc");
        assert_eq!(rows[1].status, "offline");
        assert_eq!(rows[1].requests, "-");
        assert!(rows[1].is_queue());
    }

    #[test]
    fn verbose_columns_are_read() {
        let text = "\
CARD.DOMAIN TYPE  MODE        STATUS  REQUESTS  PENDING HWTYPE QDEPTH FUNCTIONS  DRIVER
-------------------------------------------------------------------------------------------
00          CEX8C CCA-Coproc  online         2        0     14     09 S--D--N--  cex4card
";
        let rows = parse_devices(text).expect("parses");
        let verbose = rows[0].verbose.clone().expect("verbose");
        assert_eq!(verbose.hwtype, "14");
        assert_eq!(verbose.queue_depth, "09");
        assert_eq!(verbose.functions, "S--D--N--");
        assert_eq!(verbose.driver, "cex4card");
    }

    #[test]
    fn bad_header_and_short_rows_rejected() {
        assert!(parse_devices("NAME TYPE\n").is_err());
        let short = "CARD.DOMAIN TYPE\n---\n03 CEX8P\n";
        assert!(matches!(
            parse_devices(short),
            Err(LszcryptError::Parse { line, .. }) if line == "03 CEX8P"
        ));
    }

    #[test]
    fn domain_table_gives_one_letter_per_domain() {
        let mut text = String::from("DOMAIN 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f\n");
        text.push_str("------------------------------------------------------\n");
        for row in 0..16 {
            let letters: Vec<&str> = (0..16)
                .map(|column| match (row, column) {
                    (1, 1) => "B",
                    (2, 9) => "U",
                    (5, 4) => "C",
                    _ => ".",
                })
                .collect();
            text.push_str(&format!("    {:02x}  {}\n", row * 16, letters.join("  ")));
        }
        text.push_str(
            "------------------------------------------------------\nC: Control domain\n",
        );
        let letters = parse_domains(&text).expect("parses");
        assert_eq!(letters.len(), 256);
        assert_eq!(letters[0x11], 'B');
        assert_eq!(letters[0x29], 'U');
        assert_eq!(letters[0x54], 'C');
        assert_eq!(letters.iter().filter(|letter| **letter != '.').count(), 3);
    }

    #[test]
    fn mounts_outside_sys_rejected() {
        let dir = std::env::temp_dir();
        for path in ["/etc", "/sys/../etc", "sys/bus/ap"] {
            let mount = ViewMount::read_only(&dir, path);
            assert!(
                matches!(mount.check(), Err(LszcryptError::InvalidMount { .. })),
                "{path}"
            );
        }
        assert!(ViewMount::read_only(&dir, "/sys/bus/ap").check().is_ok());
    }
}
