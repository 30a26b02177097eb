//! The allocation path: `Allocate` and `GetPreferredAllocation` of one
//! config set.
//!
//! Each container request names one device id, which is checked against
//! what the set announces now. The allocator then makes the zcrypt node
//! `zcrypt-apqn-<a>-<d>-<n>` and the shadow sysfs `sysfs-apqn-<a>-<d>-<n>`.
//! The response maps the node to `/dev/z90crypt` and mounts the shadow
//! trees read-only over `/sys/bus/ap` and `/sys/devices/ap`. A request
//! that fails leaves nothing behind that it created.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use cex_ap::{Apqn, DeviceId};
use cex_config::quoted;
use cex_kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, ContainerPreferredAllocationResponse, DeviceSpec, Mount,
    PreferredAllocationRequest, PreferredAllocationResponse,
};
use cex_node::zcrypt::DEFAULT_CREATE_TIMEOUT;
use cex_node::{
    NodePaths, ShadowBase, ShadowDir, ShadowError, SysfsVariant, ZcryptError, ZcryptNode,
    ZcryptNodes,
};
use tonic::Status;

use crate::devices::SetSnapshot;

/// The container path of the zcrypt node.
const CONTAINER_DEVICE: &str = "/dev/z90crypt";
/// The container mount point of the shadow `bus/ap` tree.
const CONTAINER_BUS_AP: &str = "/sys/bus/ap";
/// The container mount point of the shadow `devices/ap` tree.
const CONTAINER_DEVICES_AP: &str = "/sys/devices/ap";
/// The number of ids of a request quoted in an error or a log line; the
/// rest are counted.
const SHOWN_IDS: usize = 4;

/// Settings of an [`Allocator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorOptions {
    /// Bound on each wait for the kernel: a new node's attribute dir, its
    /// `/dev` node, a node's removal.
    pub create_timeout: Duration,
    /// The uid that must own the shadow base dir. `None` means the
    /// effective uid of the agent, which is root in production.
    pub shadow_owner: Option<u32>,
}

impl Default for AllocatorOptions {
    fn default() -> Self {
        Self {
            create_timeout: DEFAULT_CREATE_TIMEOUT,
            shadow_owner: None,
        }
    }
}

/// One plug-in device handed to a container by this agent process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationRecord {
    pub id: DeviceId,
    /// The config set the device was allocated from.
    pub set: String,
    /// When the allocation finished.
    pub created_at: SystemTime,
    /// The zcrypt node name, `zcrypt-apqn-<a>-<d>-<n>`.
    pub node: String,
    /// The shadow sysfs dir, `<base>/sysfs-apqn-<a>-<d>-<n>`.
    pub shadow_dir: std::path::PathBuf,
}

/// Serialises node set-up by `Allocate` (shared: allocations run side
/// by side) with node removal by cleanup (exclusive). An `Allocate` holds
/// it from before its first node is made until its records are written,
/// so cleanup never removes a node that is being set up, and sees every
/// allocation that finished before it got the lock.
pub type SetupLock = Arc<tokio::sync::RwLock<()>>;

/// A snapshot of the allocations this agent process made, by device id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    pub records: BTreeMap<DeviceId, AllocationRecord>,
}

impl Allocations {
    /// Counts the recorded allocations of each APQN.
    pub fn count_per_apqn(&self) -> BTreeMap<Apqn, usize> {
        let mut counts = BTreeMap::new();
        for id in self.records.keys() {
            *counts.entry(id.apqn).or_insert(0) += 1;
        }
        counts
    }
}

/// A device made ready for one container, kept until the whole request
/// succeeds so that a later failure can undo it.
#[derive(Debug)]
struct Prepared {
    id: DeviceId,
    node: ZcryptNode,
    shadow: ShadowDir,
}

/// Serves `Allocate` and `GetPreferredAllocation` for every set of a node.
///
/// Each container request must name exactly one device id. A container
/// request with two or more devices of one set is rejected with
/// `InvalidArgument`, because `/dev/z90crypt` in a container can map only
/// one zcrypt node and one shadow sysfs can show only one APQN. A workload
/// that needs several APQNs must use several containers.
#[derive(Debug, Clone)]
pub struct Allocator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    paths: NodePaths,
    zcrypt: ZcryptNodes,
    shadow_owner: Option<u32>,
    records: Mutex<BTreeMap<DeviceId, AllocationRecord>>,
    setup: SetupLock,
}

impl Allocator {
    pub fn new(paths: NodePaths, options: AllocatorOptions) -> Self {
        let inner = Inner {
            zcrypt: ZcryptNodes::new(&paths, options.create_timeout),
            paths,
            shadow_owner: options.shadow_owner,
            records: Mutex::new(BTreeMap::new()),
            setup: SetupLock::default(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Returns the zcrypt nodes of this host, so that cleanup destroys
    /// nodes through the same serialised writes.
    pub fn zcrypt_nodes(&self) -> &ZcryptNodes {
        &self.inner.zcrypt
    }

    /// Opens the shadow base dir with the checks every allocation makes.
    pub fn shadow_base(&self) -> Result<ShadowBase, ShadowError> {
        let base = &self.inner.paths.shadow_base;
        match self.inner.shadow_owner {
            Some(owner) => ShadowBase::open_owned_by(base, owner),
            None => ShadowBase::open(base),
        }
    }

    /// Returns the lock that cleanup takes exclusively around removals.
    pub fn setup_lock(&self) -> SetupLock {
        Arc::clone(&self.inner.setup)
    }

    /// Takes a snapshot of the allocations made by this process.
    pub fn allocations(&self) -> Allocations {
        Allocations {
            records: self.inner.lock_records().clone(),
        }
    }

    /// Drops the record of `id`, once cleanup has removed its node and
    /// shadow dir. Returns the record if there was one.
    pub fn forget(&self, id: &DeviceId) -> Option<AllocationRecord> {
        self.inner.lock_records().remove(id)
    }

    /// Handles `Allocate` for `set`: checks every id first, then makes a
    /// zcrypt node and a shadow sysfs per container. On failure whatever
    /// this request created is destroyed and the error names the id.
    pub async fn allocate(
        &self,
        set: &SetSnapshot,
        request: AllocateRequest,
    ) -> Result<AllocateResponse, Status> {
        let ids = check_request(set, &request).inspect_err(|status| {
            let set_name = &set.name;
            let requested = request
                .container_requests
                .iter()
                .map(|container| id_list(&container.devices_i_ds))
                .take(SHOWN_IDS)
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(set = %set_name, containers = request.container_requests.len(),
                requested = %requested, error = %status.message(),
                "Plugin['{set_name}']: Allocate rejected: {}", status.message());
        })?;
        let _setting_up = self.inner.setup.read().await;
        let variant = if set.live_sysfs {
            SysfsVariant::Live
        } else {
            SysfsVariant::Static
        };

        let mut prepared = Vec::with_capacity(ids.len());
        for id in ids {
            match self.prepare(id, variant).await {
                Ok(ready) => prepared.push(ready),
                Err(status) => {
                    let set_name = &set.name;
                    tracing::error!(set = %set_name, device = %id, error = %status.message(),
                        "Plugin['{set_name}']: Allocate: device {id} failed: {}", status.message());
                    self.undo(prepared).await;
                    return Err(status);
                }
            }
        }

        let mut responses = Vec::with_capacity(prepared.len());
        for ready in &prepared {
            self.record(set, ready);
            responses.push(self.container_response(ready, variant));
        }
        Ok(AllocateResponse {
            container_responses: responses,
        })
    }

    /// Makes the zcrypt node and shadow sysfs of `id` on a blocking thread.
    async fn prepare(&self, id: DeviceId, variant: SysfsVariant) -> Result<Prepared, Status> {
        let inner = self.inner.clone();
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let node = inner
                .zcrypt
                .ensure(&id)
                .map_err(|error| zcrypt_status(&id, &error))?;
            match this.build_shadow(&id, variant) {
                Ok(shadow) => Ok(Prepared { id, node, shadow }),
                Err(status) => {
                    if node.created {
                        destroy_node(&inner.zcrypt, &node.name);
                    }
                    Err(status)
                }
            }
        })
        .await
        .map_err(|error| Status::internal(format!("allocation of {id} did not finish: {error}")))?
    }

    fn build_shadow(&self, id: &DeviceId, variant: SysfsVariant) -> Result<ShadowDir, Status> {
        let status = |error: ShadowError| shadow_status(id, &error);
        let base = self.shadow_base().map_err(status)?;
        base.build(&self.inner.paths, id, variant).map_err(status)
    }

    /// Removes the shadow dirs and the nodes this request created, for
    /// containers whose part succeeded before another part failed.
    async fn undo(&self, prepared: Vec<Prepared>) {
        if prepared.is_empty() {
            return;
        }
        let this = self.clone();
        let undone = tokio::task::spawn_blocking(move || {
            for ready in prepared {
                this.undo_one(&ready);
            }
        })
        .await;
        if let Err(error) = undone {
            tracing::warn!(%error, "undoing a failed allocation did not finish");
        }
    }

    fn undo_one(&self, ready: &Prepared) {
        let removed = self.shadow_base().and_then(|base| base.remove(&ready.id));
        if let Err(error) = removed {
            tracing::warn!(device = %ready.id, %error, "failed to remove a shadow sysfs dir");
        }
        if ready.node.created {
            destroy_node(&self.inner.zcrypt, &ready.node.name);
        }
    }

    fn record(&self, set: &SetSnapshot, ready: &Prepared) {
        let set_name = &set.name;
        tracing::info!(
            set = %set_name,
            device = %ready.id,
            node = %ready.node.name,
            shadow_dir = %ready.shadow.path.display(),
            created = ready.node.created,
            "Plugin['{set_name}']: Allocate: device {} gets zcrypt node {} and shadow sysfs {}",
            ready.id,
            ready.node.name,
            ready.shadow.path.display()
        );
        let record = AllocationRecord {
            id: ready.id,
            set: set.name.clone(),
            created_at: SystemTime::now(),
            node: ready.node.name.clone(),
            shadow_dir: ready.shadow.path.clone(),
        };
        self.inner.lock_records().insert(ready.id, record);
    }

    fn container_response(
        &self,
        ready: &Prepared,
        variant: SysfsVariant,
    ) -> ContainerAllocateResponse {
        let mount = |container_path: String, host_path: &std::path::Path| Mount {
            container_path,
            host_path: host_path.display().to_string(),
            read_only: true,
        };
        let mut mounts = vec![
            mount(CONTAINER_BUS_AP.to_string(), &ready.shadow.bus_ap),
            mount(CONTAINER_DEVICES_AP.to_string(), &ready.shadow.devices_ap),
        ];
        if variant == SysfsVariant::Live {
            // Inside the shadow tree `/sys/bus/ap/devices/XX.YYYY` resolves
            // to the queue dir, so the real queue dir shows through there.
            let apqn = ready.id.apqn;
            let host_queue = self
                .inner
                .paths
                .ap_devs_dir
                .join(apqn.card_dir_name())
                .join(apqn.queue_dir_name());
            let container_queue = format!("{CONTAINER_BUS_AP}/devices/{}", apqn.queue_dir_name());
            mounts.push(mount(container_queue, &host_queue));
        }
        ContainerAllocateResponse {
            devices: vec![DeviceSpec {
                container_path: CONTAINER_DEVICE.to_string(),
                host_path: ready.node.dev_path.display().to_string(),
                permissions: "rw".to_string(),
            }],
            mounts,
            ..Default::default()
        }
    }

    /// Handles `GetPreferredAllocation` for `set`: keeps the
    /// `must_include` ids and fills up with available ids on the APQNs
    /// that carry the fewest allocated devices, so containers spread over
    /// the set's APQNs. A device counts as allocated when its zcrypt node
    /// exists or this process recorded it.
    ///
    /// Every `must_include` id must be announced by the set; repeated ids
    /// count once. The response never contains more than `allocation_size`
    /// ids, nor more than the distinct ids offered.
    pub fn preferred_allocation(
        &self,
        set: &SetSnapshot,
        request: PreferredAllocationRequest,
    ) -> Result<PreferredAllocationResponse, Status> {
        let mut load = self.apqn_load();
        let mut responses = Vec::new();
        for container in &request.container_requests {
            responses.push(ContainerPreferredAllocationResponse {
                device_i_ds: prefer(set, container, &mut load)?,
            });
        }
        Ok(PreferredAllocationResponse {
            container_responses: responses,
        })
    }

    /// Counts allocated devices per APQN: existing zcrypt nodes and
    /// recorded allocations, each device once.
    fn apqn_load(&self) -> BTreeMap<Apqn, usize> {
        let mut allocated: BTreeSet<DeviceId> = self.inner.lock_records().keys().copied().collect();
        match self.inner.zcrypt.list() {
            Ok(ids) => allocated.extend(ids),
            Err(error) => tracing::warn!(%error, "counting zcrypt nodes failed"),
        }
        let mut load = BTreeMap::new();
        for id in allocated {
            *load.entry(id.apqn).or_insert(0) += 1;
        }
        load
    }
}

impl Inner {
    fn lock_records(&self) -> std::sync::MutexGuard<'_, BTreeMap<DeviceId, AllocationRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Chooses the ids of one container: the `must_include` ids, then the
/// least loaded healthy available ones, up to the allocation size. The
/// result is sized by what is chosen, never by the requested size.
fn prefer(
    set: &SetSnapshot,
    container: &ContainerPreferredAllocationRequest,
    load: &mut BTreeMap<Apqn, usize>,
) -> Result<Vec<String>, Status> {
    let size = usize::try_from(container.allocation_size).map_err(|_| {
        Status::invalid_argument(format!(
            "invalid allocation size {} for set {:?}",
            container.allocation_size, set.name
        ))
    })?;
    let mut chosen: BTreeSet<DeviceId> = BTreeSet::new();
    let mut order = Vec::new();
    for text in &container.must_include_device_i_ds {
        let id = parse_id(set, text)?;
        if set.device(&id).is_none() {
            return Err(Status::invalid_argument(format!(
                "must_include device {} is not announced by set {:?}",
                quoted(text),
                set.name
            )));
        }
        if chosen.insert(id) {
            *load.entry(id.apqn).or_insert(0) += 1;
            order.push(id);
        }
    }
    if order.len() > size {
        return Err(Status::invalid_argument(format!(
            "must_include names {} devices of set {:?}, more than the allocation size {size}: {}",
            order.len(),
            set.name,
            id_list(&container.must_include_device_i_ds)
        )));
    }
    let mut candidates: Vec<DeviceId> = container
        .available_device_i_ds
        .iter()
        .filter_map(|text| text.parse::<DeviceId>().ok())
        .filter(|id| set.device(id).is_some_and(|device| device.healthy))
        .filter(|id| !chosen.contains(id))
        .collect::<BTreeSet<DeviceId>>()
        .into_iter()
        .collect();
    while order.len() < size {
        let Some(best) = pick_least_loaded(&mut candidates, load) else {
            break;
        };
        *load.entry(best.apqn).or_insert(0) += 1;
        order.push(best);
    }
    Ok(order.iter().map(ToString::to_string).collect())
}

/// Shows a list of requested ids bounded: the first few quoted and the
/// count, e.g. `["apqn-1-5-0", "apqn-1-5-1", ... 1000 ids]`.
fn id_list(ids: &[String]) -> String {
    let shown: Vec<String> = ids
        .iter()
        .take(SHOWN_IDS)
        .map(|id| quoted(id).to_string())
        .collect();
    if ids.len() > SHOWN_IDS {
        format!("[{}, ... {} ids]", shown.join(", "), ids.len())
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// Removes and returns the candidate on the least loaded APQN (the
/// lowest id among equals).
fn pick_least_loaded(
    candidates: &mut Vec<DeviceId>,
    load: &BTreeMap<Apqn, usize>,
) -> Option<DeviceId> {
    let load_of = |id: &DeviceId| load.get(&id.apqn).copied().unwrap_or(0);
    let (index, _) = candidates
        .iter()
        .enumerate()
        .min_by_key(|(_, id)| (load_of(id), **id))?;
    Some(candidates.swap_remove(index))
}

/// Checks every container request: exactly one id each, canonical,
/// announced by `set` now, healthy, and not repeated across containers.
fn check_request(set: &SetSnapshot, request: &AllocateRequest) -> Result<Vec<DeviceId>, Status> {
    if request.container_requests.is_empty() {
        return Err(Status::invalid_argument(format!(
            "allocate request for set {:?} has no container requests",
            set.name
        )));
    }
    let mut ids = Vec::with_capacity(request.container_requests.len());
    for container in &request.container_requests {
        let [text] = container.devices_i_ds.as_slice() else {
            return Err(Status::invalid_argument(format!(
                "a container must request exactly one device of set {:?}, got {}: \
                 /dev/z90crypt can map only one zcrypt node",
                set.name,
                id_list(&container.devices_i_ds)
            )));
        };
        let id = parse_id(set, text)?;
        let device = set.device(&id).ok_or_else(|| {
            Status::invalid_argument(format!(
                "device {} is not announced by set {:?}",
                quoted(text),
                set.name
            ))
        })?;
        if !device.healthy {
            return Err(Status::failed_precondition(format!(
                "device {} of set {:?} is unhealthy",
                quoted(text),
                set.name
            )));
        }
        if ids.contains(&id) {
            return Err(Status::invalid_argument(format!(
                "device {} of set {:?} is requested by two containers",
                quoted(text),
                set.name
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Parses a requested id; the error quotes the id bounded, as a client
/// may send any text.
fn parse_id(set: &SetSnapshot, text: &str) -> Result<DeviceId, Status> {
    text.parse::<DeviceId>().map_err(|_| {
        Status::invalid_argument(format!(
            "set {:?}: invalid device id {}: expected apqn-<adapter 0-255>-<domain 0-255>-<n> \
             in decimal",
            set.name,
            quoted(text)
        ))
    })
}

fn destroy_node(zcrypt: &ZcryptNodes, name: &str) {
    if let Err(error) = zcrypt.destroy(name) {
        tracing::warn!(node = %name, %error, "failed to destroy a zcrypt node of a failed allocation");
    }
}

fn zcrypt_status(id: &DeviceId, error: &ZcryptError) -> Status {
    let message = format!("allocation of {id} failed: {error}");
    match error {
        ZcryptError::NotSupported { .. } => Status::failed_precondition(message),
        _ => Status::internal(message),
    }
}

fn shadow_status(id: &DeviceId, error: &ShadowError) -> Status {
    let message = format!("allocation of {id} failed: {error}");
    match error {
        ShadowError::UnsafeBase { .. } => Status::failed_precondition(message),
        _ => Status::internal(message),
    }
}
