//! Watches: newline-delimited JSON events resumed from a collection's history, bookmarks, the
//! client's `timeoutSeconds`, and an expired resourceVersion answered in-band with ERROR/410.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::error::ApiError;
use super::ops::{ListQuery, Target};
use super::store::{ChangeKind, Collection};
use super::tables;

/// Options of one watch request.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// `resourceVersion`; None or "0" starts with the current objects as ADDED events.
    pub resource_version: Option<String>,
    /// When the server closes the stream.
    pub timeout: Duration,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents` (streaming lists): ends the initial events with a marked bookmark.
    pub send_initial_events: bool,
    /// Render objects as Tables (`kubectl get -w`).
    pub table: bool,
    /// Include the whole object in Table rows.
    pub include_object: bool,
}

type Tx = mpsc::Sender<Result<Bytes, Infallible>>;

/// Starts a watch and returns the streaming response.
pub fn respond(shared: Arc<Shared>, t: Target, q: ListQuery, opts: WatchOptions) -> Response {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(shared, t, q, opts, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Transfer-Encoding", "chunked")
        .body(body)
        .unwrap_or_default()
}

async fn send(tx: &Tx, kind: &str, object: Value) -> bool {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    tx.send(Ok(Bytes::from(line))).await.is_ok()
}

fn in_scope(t: &Target, q: &ListQuery, obj: &Value) -> bool {
    let ns_ok = t.namespace.as_ref().is_none_or(|n| obj["metadata"]["namespace"].as_str() == Some(n));
    ns_ok && q.matches(obj)
}

fn render(t: &Target, opts: &WatchOptions, obj: &Value, coll: &Collection) -> Value {
    let wire = t.to_wire(obj);
    if opts.table {
        tables::table(
            &coll.info,
            &t.version,
            &[wire],
            json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
            opts.include_object,
        )
    } else {
        wire
    }
}

fn bookmark(t: &Target, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"apiVersion": t.api_version(), "kind": t.info.kind, "metadata": meta})
}

fn expired(rv: u64) -> Value {
    ApiError::gone(format!("too old resource version: {rv}")).to_status()
}

/// What one pass over the store found for this watch.
enum Pass {
    Events(Vec<(&'static str, Value)>, u64),
    Expired(u64),
    Gone,
}

fn collect(shared: &Shared, t: &Target, q: &ListQuery, opts: &WatchOptions, cursor: u64) -> Pass {
    let store = shared.lock();
    let Some(coll) = store.collection(&t.key) else { return Pass::Gone };
    if cursor < coll.compacted {
        return Pass::Expired(cursor);
    }
    let start = coll.history.partition_point(|c| c.rv <= cursor);
    let mut out = Vec::new();
    for change in coll.history.iter().skip(start) {
        let now_in = in_scope(t, q, &change.object);
        let was_in = change.old.as_ref().is_some_and(|o| in_scope(t, q, o));
        let kind = match change.kind {
            ChangeKind::Added if now_in => "ADDED",
            ChangeKind::Modified if now_in && was_in => "MODIFIED",
            ChangeKind::Modified if now_in => "ADDED",
            ChangeKind::Modified if was_in => "DELETED",
            ChangeKind::Deleted if was_in => "DELETED",
            _ => continue,
        };
        out.push((kind, render(t, opts, &change.object, coll)));
    }
    Pass::Events(out, store.rv)
}

async fn run(shared: Arc<Shared>, t: Target, q: ListQuery, opts: WatchOptions, tx: Tx) {
    let mut changes = shared.changes.subscribe();
    let mut drops = shared.drops.subscribe();
    drops.mark_unchanged();
    let deadline = Instant::now() + opts.timeout;
    let requested = opts.resource_version.as_deref().filter(|r| !r.is_empty() && *r != "0");
    let mut cursor = match requested.map(str::parse::<u64>) {
        Some(Ok(rv)) => rv,
        Some(Err(_)) => {
            send(&tx, "ERROR", ApiError::bad_request("invalid resourceVersion").to_status()).await;
            return;
        }
        None => {
            // Start from now with every current object as ADDED, as the real server does.
            let (initial, rv) = {
                let store = shared.lock();
                let Some(coll) = store.collection(&t.key) else { return };
                let items: Vec<Value> =
                    coll.objects.values().filter(|o| in_scope(&t, &q, o)).map(|o| render(&t, &opts, o, coll)).collect();
                (items, store.rv)
            };
            for obj in initial {
                if !send(&tx, "ADDED", obj).await {
                    return;
                }
            }
            if opts.send_initial_events && !send(&tx, "BOOKMARK", bookmark(&t, rv, true)).await {
                return;
            }
            rv
        }
    };
    let mut ticker = tokio::time::interval(shared.bookmark_interval);
    ticker.tick().await;
    loop {
        match collect(&shared, &t, &q, &opts, cursor) {
            Pass::Gone => return,
            Pass::Expired(rv) => {
                shared.expired_watches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                send(&tx, "ERROR", expired(rv)).await;
                return;
            }
            Pass::Events(events, rv) => {
                for (kind, obj) in events {
                    if !send(&tx, kind, obj).await {
                        return;
                    }
                }
                cursor = rv;
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = drops.changed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = ticker.tick(), if opts.bookmarks => {
                if !send(&tx, "BOOKMARK", bookmark(&t, cursor, false)).await {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
