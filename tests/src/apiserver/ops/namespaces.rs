//! What a committed write does beyond its object: CRDs registered and unregistered, and the
//! namespace lifecycle (a terminating namespace is emptied, then removed).

use std::sync::Arc;

use serde_json::{Value, json};

use super::crds::*;
use super::*;
use crate::apiserver::error::ApiResult;
use crate::apiserver::meta;
use crate::apiserver::store::{CollectionKey, ObjectKey, Store};

/// Effects of a committed change on the rest of the server: CRDs (un)register their types,
/// namespaces take their contents with them.
pub(super) fn after_commit(
    store: &mut Store,
    t: &Target,
    new: Option<&Arc<Value>>,
    old: Option<&Arc<Value>>,
) -> ApiResult<()> {
    match (t.key.0.as_str(), t.key.1.as_str(), new) {
        ("apiextensions.k8s.io", "customresourcedefinitions", Some(crd)) => store.register(crd_resource(crd)),
        ("apiextensions.k8s.io", "customresourcedefinitions", None) => {
            if let Some(old) = old {
                let info = crd_resource(old);
                store.unregister(&(info.group, info.plural));
            }
        }
        ("", "namespaces", Some(ns)) if !ns["metadata"]["deletionTimestamp"].is_null() => {
            let name = ns["metadata"]["name"].as_str().unwrap_or_default().to_string();
            empty_namespace(store, &name);
        }
        _ => {}
    }
    // Deleting the last object of a terminating namespace finishes the namespace.
    if new.is_none()
        && let Some(ns) = old.and_then(|o| o["metadata"]["namespace"].as_str())
    {
        finish_namespace(store, ns);
    }
    Ok(())
}

pub(super) fn empty_namespace(store: &mut Store, ns: &str) {
    let keys: Vec<(CollectionKey, ObjectKey)> = store
        .collections
        .iter()
        .filter(|(_, c)| c.info.namespaced)
        .flat_map(|(ck, c)| c.objects.keys().filter(|k| k.0 == ns).map(move |k| (ck.clone(), k.clone())))
        .collect();
    for (ck, ok) in keys {
        let Some(obj) = store.collection(&ck).and_then(|c| c.objects.get(&ok)).cloned() else { continue };
        if obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                let mut marked = (*obj).clone();
                marked["metadata"]["deletionTimestamp"] = json!(meta::now());
                store.put(&ck, marked);
            }
        } else {
            store.remove(&ck, &ok);
        }
    }
    finish_namespace(store, ns);
}

pub(super) fn finish_namespace(store: &mut Store, ns: &str) {
    let nskey: CollectionKey = (String::new(), "namespaces".into());
    let terminating = store
        .collection(&nskey)
        .and_then(|c| c.objects.get(&(String::new(), ns.to_string())))
        .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
    let empty = store.collections.values().filter(|c| c.info.namespaced).all(|c| c.objects.keys().all(|k| k.0 != ns));
    if terminating && empty {
        store.remove(&nskey, &(String::new(), ns.to_string()));
    }
}
