//! Reading: one object, and lists with label and field selectors, `limit`, `continue` and
//! `resourceVersionMatch=Exact`.

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::apiserver::error::{ApiError, ApiResult};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::apiserver::store::{ChangeKind, Collection, ObjectKey, Store, object_key};

/// GET of one object.
pub fn get(store: &Store, t: &Target) -> ApiResult<Value> {
    let c = collection(store, t)?;
    c.objects.get(&t.object_key()).map(|o| t.to_wire(o)).ok_or_else(|| t.not_found())
}

/// The collection as it was at `rv`: the current objects with every later change undone.
fn as_of(c: &Collection, rv: u64) -> BTreeMap<ObjectKey, Arc<Value>> {
    let mut objects = c.objects.clone();
    for change in c.history.iter().rev().take_while(|ch| ch.rv > rv) {
        let key = object_key(change.old.as_deref().unwrap_or(&change.object));
        match (change.kind, &change.old) {
            (ChangeKind::Added, _) => {
                objects.remove(&key);
            }
            (_, Some(old)) => {
                objects.insert(key, old.clone());
            }
            (_, None) => {}
        }
    }
    objects
}

/// LIST, with selectors and `limit`/`continue` paging. `resourceVersionMatch=Exact` lists the
/// collection as it was at that version — 410 once the history no longer reaches back to it —
/// as kube-apiserver does; any other resourceVersion is served the newest state.
pub fn list(store: &Store, t: &Target, q: &ListQuery) -> ApiResult<Value> {
    let c = collection(store, t)?;
    let (list_rv, start) = match &q.continue_token {
        Some(tok) => decode_continue(tok)?,
        None => (store.rv, None),
    };
    let exact = match (q.exact, q.resource_version) {
        (true, Some(rv)) if rv < c.compacted => {
            return Err(ApiError::gone("The resourceVersion for the provided list is too old."));
        }
        (true, Some(rv)) if q.continue_token.is_none() => Some((rv, as_of(c, rv))),
        _ => None,
    };
    let list_rv = exact.as_ref().map_or(list_rv, |(rv, _)| *rv);
    let objects = exact.as_ref().map_or(&c.objects, |(_, o)| o);
    let ns = t.namespace.clone();
    let mut items = Vec::new();
    let mut next: Option<ObjectKey> = None;
    let mut remaining = 0usize;
    for (k, obj) in objects {
        if ns.as_ref().is_some_and(|n| *n != k.0) || start.as_ref().is_some_and(|s| k <= s) || !q.matches(obj) {
            continue;
        }
        if q.limit > 0 && items.len() == q.limit {
            remaining += 1;
            continue;
        }
        items.push(t.to_wire(obj));
        if q.limit > 0 && items.len() == q.limit {
            next = Some(k.clone());
        }
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0
        && let Some(last) = next
    {
        metadata["continue"] = json!(encode_continue(list_rv, &last));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "apiVersion": t.api_version(),
        "kind": format!("{}List", t.info.kind),
        "metadata": metadata,
        "items": items,
    }))
}

pub(super) fn encode_continue(rv: u64, last: &ObjectKey) -> String {
    let raw = json!({"rv": rv, "ns": last.0, "name": last.1}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub(super) fn decode_continue(tok: &str) -> ApiResult<(u64, Option<ObjectKey>)> {
    let bad = || ApiError::bad_request(format!("invalid continue token {tok:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tok).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let s = |k: &str| v[k].as_str().map(String::from).ok_or_else(bad);
    Ok((v["rv"].as_u64().ok_or_else(bad)?, Some((s("ns")?, s("name")?))))
}
