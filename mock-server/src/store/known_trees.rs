//! The trees this server made jobs from, per CN, so that a client building the same
//! tree again names its root alone (`TreePart.root_only`) instead of sending every
//! directory again: an unchanged tree costs one small call. Each tree is kept as its
//! checked plan; a tree is known to the CN that sent it and to no other, so naming a
//! root reveals nothing about other users' trees. Held in memory, bounded in trees and
//! in the files their plans hold; a restarted server knows none, and the client sends
//! the tree when told to (`send_tree`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use lrpymrpc_cas::Plan;

/// Trees remembered for one CN at most (the steps of one build use several).
const MAX_TREES_PER_CN: usize = 16;

/// Trees remembered in all at most.
const MAX_TREES: usize = 256;

/// Files in all remembered plans at most: about 150 bytes each in memory.
const MAX_FILES: usize = 1_000_000;

#[derive(Debug, Default)]
pub struct KnownTrees {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (CN, root hash) -> the plan and when it was last made or used.
    trees: HashMap<(String, String), (Arc<Plan>, u64)>,
    clock: u64,
    files: usize,
}

impl KnownTrees {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The plan of the tree named `root` that `cn` made a job from, if remembered.
    pub fn get(&self, cn: &str, root: &str) -> Option<Arc<Plan>> {
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        let (plan, used) = inner.trees.get_mut(&(cn.to_string(), root.to_string()))?;
        *used = now;
        Some(plan.clone())
    }

    /// Remembers that `cn` made a job from `plan`'s tree; the least recently used trees
    /// (of this CN first) make room.
    pub fn remember(&self, cn: &str, plan: Arc<Plan>) {
        if plan.files.len() > MAX_FILES / 4 || plan.root.is_empty() {
            return;
        }
        let mut inner = self.inner();
        inner.clock += 1;
        let now = inner.clock;
        let key = (cn.to_string(), plan.root.clone());
        let files = plan.files.len();
        if let Some((_, used)) = inner.trees.get_mut(&key) {
            *used = now;
            return;
        }
        inner.trees.insert(key, (plan, now));
        inner.files += files;
        let of_cn = inner.trees.keys().filter(|(owner, _)| owner == cn).count();
        if of_cn > MAX_TREES_PER_CN {
            inner.forget_oldest(Some(cn));
        }
        while inner.trees.len() > MAX_TREES || inner.files > MAX_FILES {
            inner.forget_oldest(None);
        }
    }
}

impl Inner {
    /// Forgets the least recently used tree (of `cn` only, when given).
    fn forget_oldest(&mut self, cn: Option<&str>) {
        let oldest = self
            .trees
            .iter()
            .filter(|((owner, _), _)| cn.is_none_or(|cn| owner == cn))
            .min_by_key(|(_, (_, used))| *used)
            .map(|(key, _)| key.clone());
        if let Some(key) = oldest
            && let Some((plan, _)) = self.trees.remove(&key)
        {
            self.files -= plan.files.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(root: &str, files: usize) -> Arc<Plan> {
        let file = (std::path::PathBuf::from("f"), Default::default(), false);
        Arc::new(Plan { root: root.into(), files: vec![file; files], ..Plan::default() })
    }

    #[test]
    fn a_tree_is_known_to_its_cn_only_and_the_oldest_make_room() {
        let known = KnownTrees::default();
        known.remember("alice", plan("r0", 1));
        assert!(known.get("alice", "r0").is_some());
        assert!(known.get("bob", "r0").is_none(), "another CN does not know alice's tree");
        for n in 1..=MAX_TREES_PER_CN {
            known.remember("alice", plan(&format!("r{n}"), 1));
        }
        assert!(known.get("alice", "r0").is_none(), "the least recently used went");
        assert!(known.get("alice", &format!("r{MAX_TREES_PER_CN}")).is_some());
        // Files are bounded too: a large plan pushes out older ones.
        known.remember("bob", plan("big", MAX_FILES / 4));
        known.remember("carol", plan("big", MAX_FILES / 4));
        known.remember("dave", plan("big", MAX_FILES / 4));
        known.remember("erin", plan("big", MAX_FILES / 4));
        assert!(known.inner().files <= MAX_FILES);
        assert!(known.get("erin", "big").is_some());
    }
}
