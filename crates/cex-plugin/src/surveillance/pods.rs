//! The assignment of CEX plug-in devices to containers, read from one
//! kubelet pod-resources `List` response.

use std::collections::{BTreeMap, BTreeSet};

use cex_ap::DeviceId;
use cex_config::RESOURCE_PREFIX;
use cex_kubelet_api::podresources::v1::ListPodResourcesResponse;

/// One container holding one CEX plug-in device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The set named by the resource, `cex.s390.ibm.com/<set>`.
    pub set: String,
    pub device: DeviceId,
}

/// A device id under a CEX resource that is not a canonical plug-in id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InvalidDevice {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub resource: String,
    pub value: String,
}

/// The CEX devices in use on this node according to one `List` response.
///
/// The kubelet also reports pods in a terminal phase, so one device id can
/// appear under two pods: `holders` keeps both, `used` counts it once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// Every (container, device) pair in response order, without repeats.
    pub holders: Vec<Holder>,
    /// Distinct device ids in use, per set as named by the resource.
    pub used: BTreeMap<String, BTreeSet<DeviceId>>,
    /// Ids under a CEX resource that failed the strict parse.
    pub invalid: Vec<InvalidDevice>,
}

impl PodUsage {
    /// Collects the containers holding `cex.s390.ibm.com/<set>` devices.
    ///
    /// Other resources are ignored. Device ids are parsed strictly, so a
    /// malformed id never reaches cleanup or a file name.
    pub fn from_response(response: &ListPodResourcesResponse) -> Self {
        let mut usage = PodUsage::default();
        let mut seen = BTreeSet::new();
        for pod in &response.pod_resources {
            for container in &pod.containers {
                for devices in &container.devices {
                    let Some(set) = devices.resource_name.strip_prefix(RESOURCE_PREFIX) else {
                        continue;
                    };
                    for value in &devices.device_ids {
                        let Ok(device) = value.parse::<DeviceId>() else {
                            usage.invalid.push(InvalidDevice {
                                namespace: pod.namespace.clone(),
                                pod: pod.name.clone(),
                                container: container.name.clone(),
                                resource: devices.resource_name.clone(),
                                value: value.clone(),
                            });
                            continue;
                        };
                        let holder = Holder {
                            namespace: pod.namespace.clone(),
                            pod: pod.name.clone(),
                            container: container.name.clone(),
                            set: set.to_string(),
                            device,
                        };
                        if seen.insert(holder.clone()) {
                            usage
                                .used
                                .entry(holder.set.clone())
                                .or_default()
                                .insert(device);
                            usage.holders.push(holder);
                        }
                    }
                }
            }
        }
        usage
    }

    /// Reports whether any listed container was assigned `device`, in any set.
    pub fn is_used(&self, device: &DeviceId) -> bool {
        self.used.values().any(|devices| devices.contains(device))
    }

    /// Distinct device ids in use over all sets.
    pub fn used_devices(&self) -> BTreeSet<DeviceId> {
        self.used.values().flatten().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cex_kubelet_api::podresources::v1::{ContainerDevices, ContainerResources, PodResources};

    fn pod(namespace: &str, name: &str, resource: &str, ids: &[&str]) -> PodResources {
        PodResources {
            name: name.to_string(),
            namespace: namespace.to_string(),
            containers: vec![ContainerResources {
                name: "main".to_string(),
                devices: vec![ContainerDevices {
                    resource_name: resource.to_string(),
                    device_ids: ids.iter().map(|id| id.to_string()).collect(),
                    topology: None,
                }],
                ..Default::default()
            }],
        }
    }

    fn id(text: &str) -> DeviceId {
        text.parse().expect("test id is canonical")
    }

    #[test]
    fn collects_only_cex_resources() {
        let response = ListPodResourcesResponse {
            pod_resources: vec![
                pod("blue", "p1", "cex.s390.ibm.com/blue", &["apqn-1-5-0"]),
                pod("gpu", "p2", "nvidia.com/gpu", &["GPU-0"]),
            ],
        };
        let usage = PodUsage::from_response(&response);
        assert_eq!(usage.holders.len(), 1);
        assert_eq!(usage.holders[0].pod, "p1");
        assert_eq!(usage.holders[0].set, "blue");
        assert!(usage.invalid.is_empty());
    }

    #[test]
    fn same_device_under_two_pods_counts_once() {
        let response = ListPodResourcesResponse {
            pod_resources: vec![
                pod("blue", "p1", "cex.s390.ibm.com/blue", &["apqn-1-5-0"]),
                pod("red", "p2", "cex.s390.ibm.com/blue", &["apqn-1-5-0"]),
            ],
        };
        let usage = PodUsage::from_response(&response);
        assert_eq!(usage.holders.len(), 2);
        assert_eq!(usage.used["blue"].len(), 1);
        assert!(usage.is_used(&id("apqn-1-5-0")));
        assert!(!usage.is_used(&id("apqn-1-5-1")));
    }

    #[test]
    fn malformed_ids_are_kept_apart() {
        let bad = ["apqn-01-5-0", "../apqn-1-5-0", "apqn-1-5-0/x", "apqn-1-5"];
        let response = ListPodResourcesResponse {
            pod_resources: vec![pod("blue", "p1", "cex.s390.ibm.com/blue", &bad)],
        };
        let usage = PodUsage::from_response(&response);
        assert!(usage.holders.is_empty());
        assert!(usage.used.is_empty());
        let values: Vec<&str> = usage.invalid.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(values, bad);
    }

    #[test]
    fn repeated_entries_are_collapsed() {
        let mut p1 = pod(
            "blue",
            "p1",
            "cex.s390.ibm.com/blue",
            &["apqn-1-5-0", "apqn-1-5-0"],
        );
        p1.containers.push(p1.containers[0].clone());
        let response = ListPodResourcesResponse {
            pod_resources: vec![p1],
        };
        let usage = PodUsage::from_response(&response);
        assert_eq!(usage.holders.len(), 1);
    }
}
