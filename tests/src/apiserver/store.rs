//! The object store: every collection, one global resourceVersion counter, and a bounded history
//! of changes per collection that watches resume from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use super::resources::ResourceInfo;
use super::services::ServiceNetwork;

/// Identifies a collection: API group and plural.
pub type CollectionKey = (String, String);

/// Identifies an object in its collection: namespace ("" when cluster-scoped) and name.
pub type ObjectKey = (String, String);

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// One entry in a collection's history.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for deletions: as it was, stamped with the deletion's rv).
    pub object: Arc<Value>,
    /// The object before the change, so filtered watches can tell objects that left the filter.
    pub old: Option<Arc<Value>>,
}

/// All objects of one type.
#[derive(Debug)]
pub struct Collection {
    /// What type it holds.
    pub info: Arc<ResourceInfo>,
    /// The objects, ordered by namespace and name (lists and `continue` tokens rely on it).
    pub objects: BTreeMap<ObjectKey, Arc<Value>>,
    /// Recent changes, oldest first.
    pub history: VecDeque<Change>,
    /// Changes at or below this resourceVersion may have been dropped from `history`.
    pub compacted: u64,
}

/// The whole state of the server.
#[derive(Debug)]
pub struct Store {
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Every collection, keyed by group and plural.
    pub collections: BTreeMap<CollectionKey, Collection>,
    /// How many changes each collection remembers.
    pub history_limit: usize,
    /// ClusterIP and NodePort allocations.
    pub services: ServiceNetwork,
}

impl Store {
    /// An empty store serving `types`.
    pub fn new(types: Vec<ResourceInfo>, history_limit: usize, services: ServiceNetwork) -> Self {
        let mut store = Self { rv: 1, collections: BTreeMap::new(), history_limit, services };
        for info in types {
            store.register(info);
        }
        store
    }

    /// Adds (or, for a CRD update, refreshes) a type, keeping its objects.
    pub fn register(&mut self, info: ResourceInfo) {
        let key = (info.group.clone(), info.plural.clone());
        let info = Arc::new(info);
        match self.collections.get_mut(&key) {
            Some(c) => c.info = info,
            None => {
                let compacted = self.rv;
                self.collections
                    .insert(key, Collection { info, objects: BTreeMap::new(), history: VecDeque::new(), compacted });
            }
        }
    }

    /// Removes a type and all of its objects; open watches see them deleted first.
    pub fn unregister(&mut self, key: &CollectionKey) {
        let names: Vec<ObjectKey> = match self.collections.get(key) {
            Some(c) => c.objects.keys().cloned().collect(),
            None => return,
        };
        for name in names {
            self.remove(key, &name);
        }
        self.collections.remove(key);
    }

    /// Finds a type by group and plural.
    pub fn collection(&self, key: &CollectionKey) -> Option<&Collection> {
        self.collections.get(key)
    }

    /// Stores `object` (stamped with a new resourceVersion) and records the change.
    pub fn put(&mut self, key: &CollectionKey, mut object: Value) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let okey = object_key(&object);
        let object = Arc::new(object);
        let history_limit = self.history_limit;
        let Some(c) = self.collections.get_mut(key) else { return object };
        let old = c.objects.insert(okey, object.clone());
        let kind = if old.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        if key.1 == "services" && key.0.is_empty() {
            self.services.release(old.as_deref());
            self.services.reserve(&object);
        }
        let c = self.collections.get_mut(key).expect("collection present");
        record(c, history_limit, Change { rv, kind, object: object.clone(), old });
        object
    }

    /// Deletes an object and records the change; returns it as it was, stamped with the new rv.
    pub fn remove(&mut self, key: &CollectionKey, okey: &ObjectKey) -> Option<Arc<Value>> {
        let history_limit = self.history_limit;
        let c = self.collections.get_mut(key)?;
        let old = c.objects.remove(okey)?;
        self.rv += 1;
        let mut last = (*old).clone();
        last["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let last = Arc::new(last);
        record(
            c,
            history_limit,
            Change { rv: self.rv, kind: ChangeKind::Deleted, object: last.clone(), old: Some(old.clone()) },
        );
        if key.1 == "services" && key.0.is_empty() {
            self.services.release(Some(&old));
        }
        Some(last)
    }

    /// Forgets the history of every collection (or of `only`), so that resuming a watch from a
    /// version older than now gets 410.
    pub fn compact(&mut self, only: Option<&CollectionKey>) {
        let rv = self.rv;
        for (key, c) in &mut self.collections {
            if only.is_none_or(|o| o == key) {
                c.history.clear();
                c.compacted = rv;
            }
        }
    }
}

fn record(c: &mut Collection, limit: usize, change: Change) {
    c.history.push_back(change);
    while c.history.len() > limit {
        if let Some(dropped) = c.history.pop_front() {
            c.compacted = dropped.rv;
        }
    }
}

/// The namespace and name of an object.
pub fn object_key(object: &Value) -> ObjectKey {
    let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    (s("/metadata/namespace"), s("/metadata/name"))
}
