//! Kubernetes Events on Services (events.k8s.io/v1). Like kube-runtime's Recorder, a repeat of the
//! same Event becomes a series on one object; unlike it, "the same" includes the message, so a
//! second `IPAllocated` with other addresses is its own Event instead of a bump of the first.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Mutex;

/// kube-apiserver refuses an Event whose note is longer than this (bytes).
pub const MAX_NOTE: usize = 1024;

/// `message` cut to what kube-apiserver accepts as a note, at a character boundary, marked "…".
pub fn note(message: &str) -> String {
    if message.len() <= MAX_NOTE {
        return message.to_string();
    }
    let mut end = MAX_NOTE - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Repeats within this window extend a series; later ones start a new Event.
const SERIES_WINDOW_SECS: i64 = 6 * 60;

/// (object uid, reason, message, type) — what makes two Events "the same".
type Key = (String, String, String, String);

/// The Event object written for a key, how often it was seen, and when last.
type Seen = HashMap<Key, (String, i32, Timestamp)>;

/// Writes Events as one reporting controller.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    /// A recorder reporting as `controller` (instance: this replica).
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Self { client, controller: controller.into(), instance: instance.into(), seen: Arc::default() }
    }

    /// Records `reason`/`message` on `regarding`.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let ns = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let key: Key = (
            regarding.uid.clone().unwrap_or_default(),
            reason.into(),
            message.into(),
            if warning { "W" } else { "N" }.into(),
        );
        let now = Timestamp::now();
        let mut seen = self.seen.lock().await;
        seen.retain(|_, (_, _, t)| now.as_second() - t.as_second() < SERIES_WINDOW_SECS);
        if let Some((name, count, _)) = seen.get(&key).cloned() {
            let series = EventSeries { count: count + 1, last_observed_time: MicroTime(now) };
            let patch = json!({"series": series});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            seen.insert(key, (name, count + 1, now));
            return Ok(());
        }
        let name = format!("{}.{:x}", regarding.name.as_deref().unwrap_or("ferrolb"), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns), ..ObjectMeta::default() },
            event_time: Some(MicroTime(now)),
            action: Some(action.into()),
            reason: Some(reason.into()),
            note: Some(note(message)),
            regarding: Some(ObjectReference { resource_version: None, ..regarding.clone() }),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        seen.insert(key, (name, 1, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_what_the_api_server_accepts() {
        assert_eq!(note("short"), "short");
        let exact = "x".repeat(MAX_NOTE);
        assert_eq!(note(&exact), exact);
        // 1,625 characters (the longest note a hostile review found), with multi-byte ones.
        let long = "é".repeat(1_625);
        let cut = note(&long);
        assert!(cut.len() <= MAX_NOTE, "{}", cut.len());
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
    }
}
