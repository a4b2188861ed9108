//! The pods of this node, as the last list and the watch since say. Filled
//! by the watch task, read by the pipeline (one thread: the lock is never
//! contended, it only makes the sharing explicit).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::pod::Pod;

/// Pods cached at most. A node runs a few hundred at the very most (the
/// kubelet's `maxPods` defaults to 110); a watch returning more than this
/// is not this node's, and the excess is dropped and counted.
pub const MAX_PODS: usize = 2048;

#[derive(Default)]
pub struct Pods {
    by_uid: HashMap<String, Arc<Pod>>,
    /// Static pods: config hash (their cgroups' uid) → mirror pod uid.
    mirrors: HashMap<String, String>,
    /// Bumped on every change, so readers know when to look again.
    generation: u64,
    /// Whether a list has completed since start.
    synced: bool,
}

/// What applying a change did, for the counters.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Stored,
    /// The cache was full.
    Dropped,
}

impl Pods {
    /// The pod whose cgroups carry `uid` (its own, or a static pod's hash).
    pub fn get(&self, uid: &str) -> Option<Arc<Pod>> {
        let uid = self.mirrors.get(uid).map_or(uid, String::as_str);
        self.by_uid.get(uid).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    /// An added or modified pod.
    pub fn upsert(&mut self, pod: Pod) -> Applied {
        if !self.by_uid.contains_key(&pod.uid) && self.by_uid.len() >= MAX_PODS {
            return Applied::Dropped;
        }
        if let Some(hash) = &pod.mirror_of {
            self.mirrors.insert(hash.clone(), pod.uid.clone());
        }
        self.generation += 1;
        self.by_uid.insert(pod.uid.clone(), Arc::new(pod));
        Applied::Stored
    }

    pub fn remove(&mut self, uid: &str) {
        if let Some(p) = self.by_uid.remove(uid) {
            if let Some(hash) = &p.mirror_of {
                self.mirrors.remove(hash);
            }
            self.generation += 1;
        }
    }

    /// A fresh list replaces everything: pods deleted while the watch was
    /// down are gone from it. Returns how many did not fit.
    pub fn replace(&mut self, pods: Vec<Pod>) -> usize {
        self.by_uid.clear();
        self.mirrors.clear();
        let mut dropped = 0;
        for p in pods {
            if self.upsert(p) == Applied::Dropped {
                dropped += 1;
            }
        }
        self.generation += 1;
        self.synced = true;
        dropped
    }
}

/// The cache as shared between the watch task and the pipeline.
#[derive(Clone, Default)]
pub struct SharedPods(Arc<Mutex<Pods>>);

impl SharedPods {
    pub fn lock(&self) -> MutexGuard<'_, Pods> {
        // A panic while holding the lock left a consistent map behind
        // (every change is one insert or remove): keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, mirror: Option<&str>) -> Pod {
        Pod {
            mirror_of: mirror.map(str::to_owned),
            ..Pod::named(uid, &format!("pod-{uid}"), "ns")
        }
    }

    #[test]
    fn lookups_by_uid_and_by_static_hash() {
        let mut pods = Pods::default();
        assert_eq!(pods.upsert(pod("a", None)), Applied::Stored);
        assert_eq!(pods.upsert(pod("m", Some("hash"))), Applied::Stored);
        assert_eq!(pods.get("a").unwrap().name, "pod-a");
        assert_eq!(pods.get("hash").unwrap().uid, "m");
        assert!(pods.get("b").is_none());
        let g = pods.generation();
        pods.remove("m");
        assert!(pods.get("hash").is_none());
        assert!(pods.generation() > g);
        pods.remove("never-there");
    }

    #[test]
    fn a_list_replaces_and_marks_synced() {
        let mut pods = Pods::default();
        pods.upsert(pod("gone", None));
        assert!(!pods.synced());
        assert_eq!(pods.replace(vec![pod("a", None), pod("b", None)]), 0);
        assert!(pods.synced());
        assert!(pods.get("gone").is_none());
        assert_eq!(pods.len(), 2);
    }

    #[test]
    fn bounded() {
        let mut pods = Pods::default();
        let many: Vec<Pod> = (0..MAX_PODS + 3)
            .map(|i| pod(&i.to_string(), None))
            .collect();
        assert_eq!(pods.replace(many), 3);
        assert_eq!(pods.len(), MAX_PODS);
        assert_eq!(pods.upsert(pod("extra", None)), Applied::Dropped);
        // Updates of pods already held still apply.
        assert_eq!(pods.upsert(pod("0", None)), Applied::Stored);
    }
}
