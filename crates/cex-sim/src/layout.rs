//! Lays a machine description out as a simulated node root and changes it
//! the way the kernel would on hot plug, unplug and state changes.
//!
//! The root receives `sys/bus/ap` (bus attributes, `devices/` and
//! `drivers/` symlinks), `sys/devices/ap/cardXX/XX.YYYY`,
//! `sys/class/zcrypt/{create,destroy}`, `sys/devices/virtual/zcrypt/`,
//! `dev/z90crypt` and `proc/sysinfo`, in the formats of the Linux AP bus
//! and zcrypt drivers. All symlinks are relative, so a root can be moved.
//! Attribute changes made after the layout replace each file by a rename,
//! so a concurrent reader sees the old or the new value, never a mix.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cex_ap::{Apqn, CexMode};

use crate::machines::{CardSpec, KernelFeatures, Machine, QueueSpec, Sysinfo};

/// A failure to lay out or change a simulated node.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The root already contains a node tree.
    #[error("{path} already exists; lay the node out in a root without sys, dev and proc")]
    RootInUse { path: PathBuf },
    /// A file system operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The machine has no AP bus, so it has no cards to change.
    #[error("machine {machine:?} has no AP bus")]
    NoApBus { machine: String },
    /// No card with this adapter id is plugged.
    #[error("card {adapter:02x} is not plugged in machine {machine:?}")]
    UnknownCard { machine: String, adapter: u8 },
    /// No queue with this APQN is present.
    #[error("queue {apqn} is not present in machine {machine:?}")]
    UnknownQueue { machine: String, apqn: Apqn },
    /// A card with this adapter id is already plugged.
    #[error("card {adapter:02x} is already plugged in machine {machine:?}")]
    CardPresent { machine: String, adapter: u8 },
}

type Result<T, E = LayoutError> = std::result::Result<T, E>;

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the whole node tree of `machine` below `root`. The root may contain
/// other files (a kubelet directory, say) but no `sys`, `dev` or `proc`.
pub fn lay_out(machine: &Machine, root: &Path) -> Result<()> {
    for top in ["sys", "dev", "proc"] {
        let path = root.join(top);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(LayoutError::RootInUse { path });
        }
    }
    for sub in ["sys/bus", "sys/devices", "sys/class", "dev", "proc"] {
        make_dir(&root.join(sub))?;
    }
    write_file(&root.join("proc/sysinfo"), &sysinfo_text(&machine.sysinfo))?;
    let Some(_) = &machine.ap_bus else {
        return Ok(());
    };
    let paths = Paths::new(root);
    make_dir(&paths.bus.join("devices"))?;
    for driver in drivers_in_use(machine) {
        let dir = paths.bus.join("drivers").join(driver);
        make_dir(&dir)?;
        for file in ["uevent", "bind", "unbind"] {
            write_file(&dir.join(file), "")?;
        }
    }
    write_file(&paths.bus.join("uevent"), "")?;
    write_file(&paths.bus.join("drivers_autoprobe"), "1\n")?;
    write_file(&paths.bus.join("drivers_probe"), "")?;
    write_bus_attributes(machine, &paths.bus, Write::Plain)?;
    make_dir(&paths.devices)?;
    write_file(&paths.devices.join("uevent"), "")?;
    for card in &machine.cards {
        write_card_dir(&paths.devices.join(card_name(card)), machine.kernel, card)?;
        link_card(&paths.bus, card)?;
    }
    if machine.kernel.zcrypt_multinode {
        let class = root.join("sys/class/zcrypt");
        make_dir(&class)?;
        write_file(&class.join("create"), "")?;
        write_file(&class.join("destroy"), "")?;
        make_dir(&root.join("sys/devices/virtual/zcrypt"))?;
    }
    write_file(&root.join("dev/z90crypt"), "")
}

/// The text of `/proc/sysinfo` for `sysinfo`: labels padded to column 22,
/// an LPAR block and one block per virtualization level, as the kernel
/// prints them.
pub fn sysinfo_text(sysinfo: &Sysinfo) -> String {
    let mut text = String::new();
    let mut field = |label: &str, value: &dyn Display| {
        text.push_str(&format!("{:<22}{value}\n", format!("{label}:")));
    };
    field("Manufacturer", &sysinfo.manufacturer);
    field("Type", &sysinfo.machine_type);
    field("Model", &sysinfo.model);
    field("Sequence Code", &sysinfo.sequence_code);
    field("Plant", &sysinfo.plant);
    field("Model Capacity", &sysinfo.model_capacity);
    let mut blocks = vec![vec![
        ("CPUs Total".to_string(), "8".to_string()),
        ("CPUs Configured".to_string(), "8".to_string()),
        ("CPUs Standby".to_string(), "0".to_string()),
        ("CPUs Reserved".to_string(), "0".to_string()),
    ]];
    if let Some(lpar) = &sysinfo.lpar {
        blocks.push(vec![
            ("LPAR Number".to_string(), lpar.number.to_string()),
            (
                "LPAR Characteristics".to_string(),
                lpar.characteristics.clone(),
            ),
            ("LPAR Name".to_string(), lpar.name.clone()),
            ("LPAR Adjustment".to_string(), "250".to_string()),
            ("LPAR CPUs Total".to_string(), "8".to_string()),
            ("LPAR CPUs Configured".to_string(), "8".to_string()),
        ]);
    }
    for (level, vm) in sysinfo.vm.iter().enumerate() {
        let label = |what: &str| format!("VM{level:02} {what}");
        blocks.push(vec![
            (label("Name"), vm.name.clone()),
            (label("Control Program"), vm.control_program.clone()),
            (label("Adjustment"), "62".to_string()),
            (label("CPUs Total"), "2".to_string()),
            (label("CPUs Configured"), "2".to_string()),
            (label("CPUs Standby"), "0".to_string()),
            (label("CPUs Reserved"), "0".to_string()),
        ]);
    }
    for block in blocks {
        text.push('\n');
        for (label, value) in block {
            text.push_str(&format!("{:<22}{value}\n", format!("{label}:")));
        }
    }
    text
}

/// The directories of one root that the layout writes into.
struct Paths {
    bus: PathBuf,
    devices: PathBuf,
}

impl Paths {
    fn new(root: &Path) -> Self {
        Self {
            bus: root.join("sys/bus/ap"),
            devices: root.join("sys/devices/ap"),
        }
    }
}

/// The write method for attribute files: plain while the tree is new,
/// by rename once readers may be looking.
#[derive(Clone, Copy)]
enum Write {
    Plain,
    Replace,
}

impl Write {
    fn attr(self, path: &Path, value: impl Display) -> Result<()> {
        let text = format!("{value}\n");
        match self {
            Write::Plain => write_file(path, &text),
            Write::Replace => replace_file(path, &text),
        }
    }
}

fn drivers_in_use(machine: &Machine) -> Vec<String> {
    let mut drivers = vec!["cex4card".to_string(), "cex4queue".to_string()];
    let used = machine.cards.iter().flat_map(|card| {
        card.driver
            .iter()
            .chain(card.queues.iter().filter_map(|queue| queue.driver.as_ref()))
    });
    for driver in used {
        if !drivers.contains(driver) {
            drivers.push(driver.clone());
        }
    }
    drivers
}

fn write_bus_attributes(machine: &Machine, bus_dir: &Path, write: Write) -> Result<()> {
    let Some(bus) = &machine.ap_bus else {
        return Ok(());
    };
    let mask = |mask: cex_ap::Mask256| {
        if bus.qci {
            mask.to_string()
        } else {
            "not supported".to_string()
        }
    };
    write.attr(&bus_dir.join("ap_domain"), bus.ap_domain)?;
    write.attr(&bus_dir.join("ap_max_domain_id"), bus.ap_max_domain_id)?;
    write.attr(&bus_dir.join("ap_adapter_mask"), mask(bus.adapter_mask))?;
    write.attr(
        &bus_dir.join("ap_usage_domain_mask"),
        mask(bus.usage_domain_mask),
    )?;
    write.attr(
        &bus_dir.join("ap_control_domain_mask"),
        mask(bus.control_domain_mask),
    )?;
    write.attr(&bus_dir.join("apmask"), bus.apmask)?;
    write.attr(&bus_dir.join("aqmask"), bus.aqmask)?;
    write.attr(&bus_dir.join("ap_interrupts"), u8::from(bus.ap_interrupts))?;
    write.attr(&bus_dir.join("poll_thread"), u8::from(bus.poll_thread))?;
    write.attr(&bus_dir.join("poll_timeout"), bus.poll_timeout)?;
    write.attr(&bus_dir.join("config_time"), bus.config_time)?;
    if machine.kernel.bindings_scans {
        write.attr(&bus_dir.join("ap_max_adapter_id"), bus.ap_max_adapter_id)?;
        write.attr(&bus_dir.join("scans"), bus.scans)?;
        write.attr(&bus_dir.join("bindings"), bindings_text(machine))?;
    }
    if machine.kernel.features {
        write.attr(&bus_dir.join("features"), &bus.features)?;
    }
    Ok(())
}

/// `<bound>/<queues>`, with ` (complete)` once every queue has a driver.
pub(crate) fn bindings_text(machine: &Machine) -> String {
    let queues = machine.cards.iter().flat_map(|card| card.queues.iter());
    let total = queues.clone().count();
    let bound = queues.filter(|queue| queue.driver.is_some()).count();
    if bound == total {
        format!("{bound}/{total} (complete)")
    } else {
        format!("{bound}/{total}")
    }
}

fn card_name(card: &CardSpec) -> String {
    format!("card{:02x}", card.adapter)
}

fn queue_name(card: &CardSpec, queue: &QueueSpec) -> String {
    Apqn::new(card.adapter, queue.domain).queue_dir_name()
}

fn uevent_text(card: &CardSpec, driver: Option<&str>, card_level: bool) -> String {
    let mut text = String::new();
    if let Some(driver) = driver {
        text.push_str(&format!("DRIVER={driver}\n"));
    }
    if card_level {
        text.push_str(&format!(
            "DEV_TYPE={:04X}\nMODALIAS=ap:t{:02X}\n",
            card.hwtype, card.hwtype
        ));
    }
    text.push_str(&format!("MODE={}\n", card.mode()));
    text
}

/// Writes a card directory with its queue directories. Only the depth of
/// `dir` below the root matters for the relative links inside it, so a
/// hot plug can build the card under a temporary name first.
fn write_card_dir(dir: &Path, kernel: KernelFeatures, card: &CardSpec) -> Result<()> {
    let write = Write::Plain;
    make_dir(&dir.join("power"))?;
    write.attr(&dir.join("hwtype"), card.hwtype)?;
    write.attr(&dir.join("raw_hwtype"), card.raw_hwtype)?;
    write.attr(&dir.join("depth"), card.depth)?;
    write.attr(
        &dir.join("ap_functions"),
        format_args!("0x{:08X}", card.ap_functions),
    )?;
    write.attr(&dir.join("request_count"), card.request_count)?;
    write.attr(&dir.join("requestq_count"), 0)?;
    write.attr(&dir.join("pendingq_count"), 0)?;
    write.attr(
        &dir.join("modalias"),
        format_args!("ap:t{:02X}", card.hwtype),
    )?;
    if kernel.max_msg_size {
        write.attr(&dir.join("max_msg_size"), card.max_msg_size)?;
    }
    write_file(
        &dir.join("uevent"),
        &uevent_text(card, card.driver.as_deref(), true),
    )?;
    make_symlink("../../../bus/ap", &dir.join("subsystem"))?;
    if let Some(driver) = &card.driver {
        make_symlink(
            &format!("../../../bus/ap/drivers/{driver}"),
            &dir.join("driver"),
        )?;
    }
    if card.is_zcrypt_bound() {
        write.attr(&dir.join("type"), card.card_type)?;
        write.attr(&dir.join("load"), 0)?;
        if card.mode() != CexMode::Accel {
            write.attr(&dir.join("serialnr"), &card.serialnr)?;
        }
        if let Some(ep11) = &card.ep11 {
            write.attr(&dir.join("API_ordinalnr"), ep11.api_ordinalnr)?;
            write.attr(&dir.join("FW_version"), &ep11.fw_version)?;
            write.attr(&dir.join("op_modes"), &ep11.op_modes)?;
        }
    }
    write_card_state(dir, kernel, card, write)?;
    for queue in &card.queues {
        write_queue_dir(&dir.join(queue_name(card, queue)), kernel, card, queue)?;
    }
    Ok(())
}

/// Writes the card files that state changes touch: `online`, `config`,
/// `chkstop`.
fn write_card_state(
    dir: &Path,
    kernel: KernelFeatures,
    card: &CardSpec,
    write: Write,
) -> Result<()> {
    if card.is_zcrypt_bound() {
        write.attr(&dir.join("online"), u8::from(card.reads_online()))?;
    }
    if kernel.config_chkstop {
        write.attr(&dir.join("config"), u8::from(card.config))?;
        write.attr(&dir.join("chkstop"), u8::from(card.chkstop))?;
    }
    Ok(())
}

fn write_queue_dir(
    dir: &Path,
    kernel: KernelFeatures,
    card: &CardSpec,
    queue: &QueueSpec,
) -> Result<()> {
    let write = Write::Plain;
    make_dir(&dir.join("power"))?;
    write.attr(&dir.join("requestq_count"), 0)?;
    write.attr(&dir.join("pendingq_count"), 0)?;
    write.attr(&dir.join("reset"), "No Reset Timer set.")?;
    if kernel.config_chkstop {
        write.attr(
            &dir.join("ap_functions"),
            format_args!("0x{:08X}", queue.ap_functions),
        )?;
    }
    write_file(
        &dir.join("uevent"),
        &uevent_text(card, queue.driver.as_deref(), false),
    )?;
    make_symlink("../../../../bus/ap", &dir.join("subsystem"))?;
    if let Some(driver) = &queue.driver {
        make_symlink(
            &format!("../../../../bus/ap/drivers/{driver}"),
            &dir.join("driver"),
        )?;
    }
    if queue.is_zcrypt_bound() {
        write.attr(&dir.join("load"), 0)?;
        if let Some(mkvps) = &queue.mkvps {
            let text = if mkvps.ends_with('\n') {
                mkvps.clone()
            } else {
                format!("{mkvps}\n")
            };
            write_file(&dir.join("mkvps"), &text)?;
        }
        if let Some(ep11) = &card.ep11 {
            write.attr(&dir.join("op_modes"), &ep11.op_modes)?;
        }
    }
    write_queue_state(dir, kernel, queue, write)
}

/// Writes the queue files that state changes touch: `online`, `config`,
/// `chkstop`, `request_count` (`-` while uninitialised) and `interrupt`.
fn write_queue_state(
    dir: &Path,
    kernel: KernelFeatures,
    queue: &QueueSpec,
    write: Write,
) -> Result<()> {
    if queue.is_uninitialised() {
        write.attr(&dir.join("request_count"), "-")?;
        write.attr(&dir.join("interrupt"), "Interrupts disabled.")?;
    } else {
        write.attr(&dir.join("request_count"), queue.request_count)?;
        write.attr(&dir.join("interrupt"), "Interrupts enabled.")?;
    }
    if queue.is_zcrypt_bound() {
        write.attr(&dir.join("online"), u8::from(queue.reads_online()))?;
    }
    if kernel.config_chkstop {
        write.attr(&dir.join("config"), u8::from(queue.config))?;
        write.attr(&dir.join("chkstop"), u8::from(queue.chkstop))?;
    }
    Ok(())
}

/// Adds the `bus/ap/devices` and `bus/ap/drivers/*` links of a card and
/// its queues.
fn link_card(bus_dir: &Path, card: &CardSpec) -> Result<()> {
    let name = card_name(card);
    make_symlink(
        &format!("../../../devices/ap/{name}"),
        &bus_dir.join("devices").join(&name),
    )?;
    if let Some(driver) = &card.driver {
        let link = bus_dir.join("drivers").join(driver).join(&name);
        make_symlink(&format!("../../../../devices/ap/{name}"), &link)?;
    }
    for queue in &card.queues {
        link_queue(bus_dir, card, queue)?;
    }
    Ok(())
}

fn link_queue(bus_dir: &Path, card: &CardSpec, queue: &QueueSpec) -> Result<()> {
    let name = queue_name(card, queue);
    let target = format!("devices/ap/{}/{name}", card_name(card));
    make_symlink(
        &format!("../../../{target}"),
        &bus_dir.join("devices").join(&name),
    )?;
    if let Some(driver) = &queue.driver {
        let link = bus_dir.join("drivers").join(driver).join(&name);
        make_symlink(&format!("../../../../{target}"), &link)?;
    }
    Ok(())
}

fn unlink_queue(bus_dir: &Path, card: &CardSpec, queue: &QueueSpec) -> Result<()> {
    let name = queue_name(card, queue);
    remove_link(&bus_dir.join("devices").join(&name))?;
    if let Some(driver) = &queue.driver {
        remove_link(&bus_dir.join("drivers").join(driver).join(&name))?;
    }
    Ok(())
}

/// A laid-out node with the description it was built from, changed in
/// step with its files.
///
/// The changes follow the kernel. Writing a card's `online` sets all its
/// queues the same way, and deconfiguring or check-stopping a card does
/// the same to its queues. An unplugged card loses its directory, its
/// links and its bit in `ap_adapter_mask`. Configuration and check-stop changes
/// and plugging count as a bus scan (`scans` goes up by one).
#[derive(Debug, Clone)]
pub struct SimNode {
    root: PathBuf,
    machine: Machine,
    unplugged: BTreeMap<u8, CardSpec>,
}

impl SimNode {
    /// Lays `machine` out below `root` (empty or absent).
    pub fn create(machine: Machine, root: &Path) -> Result<Self> {
        lay_out(&machine, root)?;
        Ok(Self::attach(machine, root))
    }

    /// Takes over a root that `lay_out` already wrote for `machine`.
    pub fn attach(machine: Machine, root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            machine,
            unplugged: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The description as the node shows it now.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Cards removed by `remove_card` and not plugged back.
    pub fn unplugged(&self) -> impl Iterator<Item = &CardSpec> {
        self.unplugged.values()
    }

    fn paths(&self) -> Paths {
        Paths::new(&self.root)
    }

    fn card_mut(&mut self, adapter: u8) -> Result<&mut CardSpec> {
        let machine = self.machine.name.clone();
        self.machine
            .card_mut(adapter)
            .ok_or(LayoutError::UnknownCard { machine, adapter })
    }

    /// Sets a card's software online flag and those of all its queues, as a
    /// write to the card's `online` does.
    pub fn set_card_online(&mut self, adapter: u8, online: bool) -> Result<()> {
        self.change_card(adapter, false, |card| {
            card.online = online;
            card.queues
                .iter_mut()
                .for_each(|queue| queue.online = online);
        })
    }

    /// Configures or deconfigures a card with all its queues.
    pub fn set_card_config(&mut self, adapter: u8, config: bool) -> Result<()> {
        self.change_card(adapter, true, |card| {
            card.config = config;
            card.queues
                .iter_mut()
                .for_each(|queue| queue.config = config);
        })
    }

    /// Check-stops a card with all its queues, or clears the check-stop.
    pub fn set_card_chkstop(&mut self, adapter: u8, chkstop: bool) -> Result<()> {
        self.change_card(adapter, true, |card| {
            card.chkstop = chkstop;
            card.queues
                .iter_mut()
                .for_each(|queue| queue.chkstop = chkstop);
        })
    }

    pub fn set_queue_online(&mut self, apqn: Apqn, online: bool) -> Result<()> {
        self.change_queue(apqn, false, |queue| queue.online = online)
    }

    pub fn set_queue_config(&mut self, apqn: Apqn, config: bool) -> Result<()> {
        self.change_queue(apqn, true, |queue| queue.config = config)
    }

    pub fn set_queue_chkstop(&mut self, apqn: Apqn, chkstop: bool) -> Result<()> {
        self.change_queue(apqn, true, |queue| queue.chkstop = chkstop)
    }

    fn change_card(
        &mut self,
        adapter: u8,
        scan: bool,
        change: impl FnOnce(&mut CardSpec),
    ) -> Result<()> {
        let kernel = self.machine.kernel;
        let dir = self.paths().devices.join(format!("card{adapter:02x}"));
        let card = self.card_mut(adapter)?;
        change(card);
        write_card_state(&dir, kernel, card, Write::Replace)?;
        for queue in &card.queues {
            write_queue_state(
                &dir.join(queue_name(card, queue)),
                kernel,
                queue,
                Write::Replace,
            )?;
        }
        if scan {
            self.count_scan()?;
        }
        Ok(())
    }

    fn change_queue(
        &mut self,
        apqn: Apqn,
        scan: bool,
        change: impl FnOnce(&mut QueueSpec),
    ) -> Result<()> {
        let kernel = self.machine.kernel;
        let dir = self
            .paths()
            .devices
            .join(apqn.card_dir_name())
            .join(apqn.queue_dir_name());
        let machine = self.machine.name.clone();
        let queue = self
            .card_mut(apqn.adapter)?
            .queues
            .iter_mut()
            .find(|queue| queue.domain == apqn.domain)
            .ok_or(LayoutError::UnknownQueue { machine, apqn })?;
        change(queue);
        write_queue_state(&dir, kernel, queue, Write::Replace)?;
        if scan {
            self.count_scan()?;
        }
        Ok(())
    }

    /// Counts one bus scan and rewrites the bus attributes.
    fn count_scan(&mut self) -> Result<()> {
        if let Some(bus) = &mut self.machine.ap_bus {
            bus.scans += 1;
        }
        write_bus_attributes(&self.machine, &self.paths().bus, Write::Replace)
    }

    /// Hot unplug: removes the card's links, then its directory with its
    /// queues, and clears its bit in `ap_adapter_mask`. `add_card` brings
    /// it back.
    pub fn remove_card(&mut self, adapter: u8) -> Result<()> {
        let position = self
            .machine
            .cards
            .iter()
            .position(|card| card.adapter == adapter);
        let Some(position) = position else {
            let machine = self.machine.name.clone();
            return Err(LayoutError::UnknownCard { machine, adapter });
        };
        let card = self.machine.cards.remove(position);
        let paths = self.paths();
        for queue in &card.queues {
            unlink_queue(&paths.bus, &card, queue)?;
        }
        let name = card_name(&card);
        if let Some(driver) = &card.driver {
            remove_link(&paths.bus.join("drivers").join(driver).join(&name))?;
        }
        remove_link(&paths.bus.join("devices").join(&name))?;
        // Move the directory out of `devices/ap` first so that it vanishes
        // in one step for a scanner listing the cards.
        let doomed = self.root.join(format!(".unplugged-{name}"));
        let dir = paths.devices.join(&name);
        fs::rename(&dir, &doomed).map_err(io_error("rename", &dir))?;
        fs::remove_dir_all(&doomed).map_err(io_error("remove", &doomed))?;
        if let Some(bus) = &mut self.machine.ap_bus {
            bus.adapter_mask.clear(adapter);
        }
        self.unplugged.insert(adapter, card);
        self.count_scan()
    }

    /// Hot plug of a card removed by `remove_card`, with the state it had.
    pub fn add_card(&mut self, adapter: u8) -> Result<()> {
        let Some(card) = self.unplugged.remove(&adapter) else {
            let machine = self.machine.name.clone();
            return Err(LayoutError::UnknownCard { machine, adapter });
        };
        self.plug_card(card)
    }

    /// Hot plug of `card`: the directory is built under a hidden name and
    /// renamed into place complete, then the bus links appear.
    pub fn plug_card(&mut self, card: CardSpec) -> Result<()> {
        let machine = self.machine.name.clone();
        if self.machine.ap_bus.is_none() {
            return Err(LayoutError::NoApBus { machine });
        }
        if self.machine.card(card.adapter).is_some() {
            return Err(LayoutError::CardPresent {
                machine,
                adapter: card.adapter,
            });
        }
        let paths = self.paths();
        let name = card_name(&card);
        let staging = paths.devices.join(format!(".plug-{name}"));
        write_card_dir(&staging, self.machine.kernel, &card)?;
        let dir = paths.devices.join(&name);
        fs::rename(&staging, &dir).map_err(io_error("rename", &staging))?;
        link_card(&paths.bus, &card)?;
        if let Some(bus) = &mut self.machine.ap_bus {
            bus.adapter_mask.set(card.adapter);
        }
        self.machine.cards.push(card);
        self.machine.cards.sort_by_key(|card| card.adapter);
        self.count_scan()
    }

    /// Removes one queue directory and its links, as when its domain
    /// leaves the configuration.
    pub fn remove_queue(&mut self, apqn: Apqn) -> Result<()> {
        let machine = self.machine.name.clone();
        let card = self.card_mut(apqn.adapter)?;
        let position = card
            .queues
            .iter()
            .position(|queue| queue.domain == apqn.domain);
        let Some(position) = position else {
            return Err(LayoutError::UnknownQueue { machine, apqn });
        };
        let queue = card.queues.remove(position);
        let card = card.clone();
        let paths = self.paths();
        unlink_queue(&paths.bus, &card, &queue)?;
        let dir = paths
            .devices
            .join(apqn.card_dir_name())
            .join(apqn.queue_dir_name());
        fs::remove_dir_all(&dir).map_err(io_error("remove", &dir))?;
        self.count_scan()
    }
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(io_error("create directory", path))
}

fn write_file(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content).map_err(io_error("write", path))
}

/// Replaces `path` by writing a sibling file and renaming it over `path`.
fn replace_file(path: &Path, content: &str) -> Result<()> {
    let Some(name) = path.file_name() else {
        return write_file(path, content);
    };
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(".new");
    let staging = path.with_file_name(staging_name);
    write_file(&staging, content)?;
    fs::rename(&staging, path).map_err(io_error("rename", &staging))
}

fn make_symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(io_error("create symlink", link))
}

fn remove_link(link: &Path) -> Result<()> {
    remove_file_if_present(link).map_err(io_error("remove", link))
}

/// Removes a file or symlink; one that is already gone is no error.
pub(crate) fn remove_file_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines;

    #[test]
    fn sysinfo_labels_pad_to_column_22() {
        let machine = machines::by_name("zvm-guest-one-card").expect("built in");
        let text = sysinfo_text(&machine.sysinfo);
        assert!(text.starts_with("Manufacturer:         IBM\nType:                 8561\n"));
        assert!(text.contains("\nSequence Code:        00000000000B81F0\n"));
        assert!(text.contains("\nVM00 Control Program: z/VM    7.3.0\n"));
        assert!(text.contains("\nLPAR Name:            VMLP003\n"));
    }

    #[test]
    fn root_with_node_tree_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("var")).expect("create var");
        let machine = machines::by_name("cex7-lpar").expect("built in");
        lay_out(&machine, dir.path()).expect("other files are allowed");
        let error = lay_out(&machine, dir.path()).expect_err("second layout");
        assert!(matches!(error, LayoutError::RootInUse { .. }), "{error}");
        assert!(error.to_string().contains("sys"), "{error}");
    }

    #[test]
    fn replaced_attribute_leaves_no_staging_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = machines::by_name("cex7-lpar").expect("built in");
        let mut node = SimNode::create(machine, dir.path()).expect("lay out");
        node.set_queue_online(Apqn::new(8, 0x31), false)
            .expect("change");
        let queue_dir = dir.path().join("sys/devices/ap/card08/08.0031");
        assert_eq!(
            fs::read_to_string(queue_dir.join("online")).expect("read"),
            "0\n"
        );
        let stray: Vec<_> = fs::read_dir(&queue_dir)
            .expect("list")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
}
