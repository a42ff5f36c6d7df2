//! One Service's reconciliation, decided without I/O: what the allocator gives it, and the status,
//! annotation and Events that follow. The loop carries the result out (`write.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::annotations::reasons;
use k8s_openapi::api::core::v1::Service;

use super::read::{self, allocated_from as annotation};
use crate::allocator::{Allocator, Outcome};

/// Which Services the controller handles.
#[derive(Debug, Clone)]
pub struct Handling {
    /// `--lb-class`.
    pub lb_class: String,
    /// `--lb-class-only`.
    pub class_only: bool,
}

/// An Event to put on the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// `IPAllocated`, `AllocationFailed`, `IPReleased`.
    pub reason: &'static str,
    /// The words.
    pub message: String,
}

/// Why a Service got no (or no new) address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The metrics label.
    pub reason: &'static str,
    /// The words.
    pub error: String,
    /// The Service keeps the address it has.
    pub kept: bool,
}

/// What should happen to one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// New `status.loadBalancer.ingress` addresses, when they must change.
    pub status: Option<Vec<IpAddr>>,
    /// New `ferrolb.io/allocated-from` value (None inside: remove it), when it must change.
    pub annotation: Option<Option<String>>,
    /// Events to record.
    pub notes: Vec<Note>,
    /// The allocator freed addresses: Services waiting for space should try again.
    pub freed: bool,
    /// The Service is handled but holds nothing: it waits for space.
    pub waiting: bool,
    /// Why the request could not be met, if it could not (announced by [`failure_note`]).
    pub failure: Option<Failure>,
    /// The pool a new address came from, if one was handed out.
    pub allocated_from: Option<String>,
}

/// The first pass after a restart: take over what the Service's status shows.
pub fn restore(alloc: &mut Allocator, svc: &Service, ns_labels: &BTreeMap<String, String>, h: &Handling) -> bool {
    if !read::is_handled(svc, &h.lb_class, h.class_only) {
        return false;
    }
    let current = read::status_ips(svc);
    match read::request_or_plain(svc, ns_labels).0 {
        Some(req) if !current.is_empty() => alloc.restore(&req, &current, annotation(svc)),
        _ => false,
    }
}

/// Decides for the Service `key` (None when it was deleted): what the allocator gives it and what
/// must be written. Changes only the allocator.
pub fn update(
    alloc: &mut Allocator,
    key: &str,
    svc: Option<&Service>,
    ns_labels: &BTreeMap<String, String>,
    h: &Handling,
) -> Update {
    let mut d = Update::default();
    let Some(svc) = svc else {
        d.freed = !alloc.release(key).is_empty();
        return d;
    };
    let current = read::status_ips(svc);
    if !read::is_handled(svc, &h.lb_class, h.class_only) {
        let released = alloc.release(key);
        d.freed = !released.is_empty();
        // Another implementation's load balancer is never written to, whatever annotations it
        // carries (a copied manifest may carry ours). What stopped being a load balancer is
        // cleaned up when we had given it something.
        let theirs = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        if !theirs && (d.freed || annotation(svc).is_some()) {
            if !current.is_empty() {
                d.status = Some(Vec::new());
                d.notes.push(released_note(&current));
            }
            d.annotation = Some(None);
        }
        return d;
    }
    let (req, parse_error) = read::request_or_plain(svc, ns_labels);
    let outcome = match (&req, &parse_error) {
        (_, Some(_)) | (None, _) => {
            // Bad annotations change nothing: keep whatever is held (or take over the status).
            match (alloc.assignment(key).cloned(), req) {
                (Some(a), _) => Outcome { assignment: Some(a), released: Vec::new(), error: None },
                (None, Some(r)) if !current.is_empty() && alloc.restore(&r, &current, annotation(svc)) => {
                    Outcome { assignment: alloc.assignment(key).cloned(), released: Vec::new(), error: None }
                }
                _ => Outcome { assignment: None, released: Vec::new(), error: None },
            }
        }
        (Some(r), None) => alloc.assign(r, &current, annotation(svc)),
    };
    d.freed = !outcome.released.is_empty();
    let desired: Vec<IpAddr> = outcome.assignment.as_ref().map(|a| a.ips.clone()).unwrap_or_default();
    d.waiting = desired.is_empty();
    if desired != current {
        d.status = Some(desired.clone());
        if let Some(a) = &outcome.assignment {
            let list = a.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            d.notes.push(Note {
                warning: false,
                reason: reasons::IP_ALLOCATED,
                message: format!("Assigned {list} from IPPool {}", a.pool),
            });
            d.allocated_from = Some(a.pool.clone());
        } else if !current.is_empty() {
            d.notes.push(released_note(&current));
        }
    }
    let pool = outcome.assignment.as_ref().map(|a| a.pool.clone());
    if annotation(svc) != pool.as_deref() {
        d.annotation = Some(pool);
    }
    let error = parse_error.or_else(|| outcome.error.as_ref().map(ToString::to_string));
    d.failure = error.map(|error| Failure {
        reason: outcome.error.as_ref().map_or("bad_annotation", |e| e.reason()),
        error,
        kept: !desired.is_empty(),
    });
    d
}

/// The Warning Event for a failure, unless the same failure was announced last time.
pub fn failure_note(previous: Option<&str>, failure: &Failure) -> Option<Note> {
    if previous == Some(failure.error.as_str()) {
        return None;
    }
    let kept = if failure.kept { "; the Service keeps its current address" } else { "" };
    Some(Note { warning: true, reason: reasons::ALLOCATION_FAILED, message: format!("{}{kept}", failure.error) })
}

fn released_note(ips: &[IpAddr]) -> Note {
    let list = ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    Note { warning: false, reason: reasons::IP_RELEASED, message: format!("Released {list}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::PoolConfig;
    use ferrolb_crds::addresses::parse_entry;
    use serde_json::json;

    fn svc(extra: serde_json::Value) -> Service {
        let mut v = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"], "ports": [{"port": 80}]}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn setup() -> (Allocator, Handling, ()) {
        let mut a = Allocator::new();
        a.set_pool(
            "home",
            PoolConfig { ranges: vec![parse_entry("198.51.100.0/30").unwrap()], ..PoolConfig::default() },
        );
        (a, Handling { lb_class: "ferrolb.io/lb".into(), class_only: false }, ())
    }

    #[test]
    fn allocation_writes_status_annotation_and_one_event() {
        let (mut a, h, ()) = setup();
        let d = update(&mut a, "default/web", Some(&svc(json!({}))), &BTreeMap::new(), &h);
        assert_eq!(d.status, Some(vec!["198.51.100.0".parse().unwrap()]));
        assert_eq!(d.annotation, Some(Some("home".into())));
        assert_eq!(d.notes[0].reason, "IPAllocated");
        let settled = svc(json!({"metadata": {"annotations": {"ferrolb.io/allocated-from": "home"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.0"}]}}}));
        assert_eq!(update(&mut a, "default/web", Some(&settled), &BTreeMap::new(), &h), Update::default());
    }

    #[test]
    fn garbage_annotations_change_nothing_but_are_reported_once() {
        let (mut a, h, ()) = setup();
        let settled = svc(
            json!({"metadata": {"annotations": {"ferrolb.io/allocated-from": "home", "ferrolb.io/ips": "garbage"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}}}),
        );
        let d = update(&mut a, "default/web", Some(&settled), &BTreeMap::new(), &h);
        assert_eq!((d.status, d.annotation), (None, None));
        assert!(d.notes.is_empty());
        let failure = d.failure.unwrap();
        let note = failure_note(None, &failure).unwrap();
        assert!(note.warning && note.message.contains("not an IP address"));
        assert!(note.message.contains("keeps its current address"));
        let again = update(&mut a, "default/web", Some(&settled), &BTreeMap::new(), &h).failure.unwrap();
        assert_eq!(failure_note(Some(&failure.error), &again), None, "a repeated failure is not announced again");
        assert_eq!(a.assignment("default/web").unwrap().ips, ["198.51.100.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn foreign_services_are_never_written_and_ours_are_cleaned_up() {
        let (mut a, h, ()) = setup();
        let foreign = svc(
            json!({"spec": {"loadBalancerClass": "other.io/lb"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}),
        );
        assert_eq!(update(&mut a, "default/web", Some(&foreign), &BTreeMap::new(), &h), Update::default());
        let annotated = svc(json!({"spec": {"loadBalancerClass": "other.io/lb"},
            "metadata": {"annotations": {"ferrolb.io/allocated-from": "home"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}));
        assert_eq!(update(&mut a, "default/web", Some(&annotated), &BTreeMap::new(), &h), Update::default());
        update(&mut a, "default/web", Some(&svc(json!({}))), &BTreeMap::new(), &h);
        let now_cluster_ip = svc(
            json!({"spec": {"type": "ClusterIP"}, "metadata": {"annotations": {"ferrolb.io/allocated-from": "home"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.0"}]}}}),
        );
        let d = update(&mut a, "default/web", Some(&now_cluster_ip), &BTreeMap::new(), &h);
        assert_eq!((d.status, d.annotation, d.freed), (Some(vec![]), Some(None), true));
        assert_eq!(d.notes[0].reason, "IPReleased");
    }
}
