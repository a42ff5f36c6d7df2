//! One Service's reconciliation, decided without I/O: what the allocator gives it, and the status,
//! annotation and Events that follow. `mod.rs` carries the result out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::annotations::{ALLOCATED_FROM, IPS, POOL, SHARING_KEY, reasons};
use k8s_openapi::api::core::v1::Service;

use crate::allocator::{Allocator, Outcome, Request, request};

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

/// What should happen to one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
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
    /// The metrics label of a failure, if any.
    pub failure: Option<&'static str>,
    /// The pool a new address came from, if one was handed out.
    pub allocated_from: Option<String>,
}

fn annotation(svc: &Service) -> Option<&str> {
    svc.metadata.annotations.as_ref()?.get(ALLOCATED_FROM).map(String::as_str)
}

/// The request, or — when the Service's annotations are bad — the request without them, so a
/// Service keeps what it has while its annotations are fixed; the error is returned beside it.
fn request_of(svc: &Service, ns_labels: &BTreeMap<String, String>) -> (Option<Request>, Option<String>) {
    match request::parse(svc, ns_labels) {
        Ok(r) => (Some(r), None),
        Err(e) => {
            let mut plain = svc.clone();
            if let Some(a) = plain.metadata.annotations.as_mut() {
                for name in IPS.names().chain(POOL.names()).chain(SHARING_KEY.names()) {
                    a.remove(name);
                }
            }
            if let Some(spec) = plain.spec.as_mut() {
                spec.load_balancer_ip = None;
            }
            (request::parse(&plain, ns_labels).ok(), Some(e))
        }
    }
}

/// The first pass after a restart: take over what the Service's status shows.
pub fn restore(alloc: &mut Allocator, svc: &Service, ns_labels: &BTreeMap<String, String>, h: &Handling) -> bool {
    if !request::is_handled(svc, &h.lb_class, h.class_only) {
        return false;
    }
    let current = request::status_ips(svc);
    match request_of(svc, ns_labels).0 {
        Some(req) if !current.is_empty() => alloc.restore(&req, &current, annotation(svc)),
        _ => false,
    }
}

/// Decides for the Service `key` (None when it was deleted). `last_error` remembers the last
/// failure message per Service so that a repeated failure is not announced again.
pub fn decide(
    alloc: &mut Allocator,
    key: &str,
    svc: Option<&Service>,
    ns_labels: &BTreeMap<String, String>,
    h: &Handling,
    last_error: &mut BTreeMap<String, String>,
) -> Decision {
    let mut d = Decision::default();
    let Some(svc) = svc else {
        last_error.remove(key);
        d.freed = !alloc.release(key).is_empty();
        return d;
    };
    let current = request::status_ips(svc);
    if !request::is_handled(svc, &h.lb_class, h.class_only) {
        last_error.remove(key);
        let released = alloc.release(key);
        d.freed = !released.is_empty();
        // Only what we wrote is taken back; other Services are never written to.
        if d.freed || annotation(svc).is_some() {
            if !current.is_empty() {
                d.status = Some(Vec::new());
                d.notes.push(released_note(&current));
            }
            d.annotation = Some(None);
        }
        return d;
    }
    let (req, parse_error) = request_of(svc, ns_labels);
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
    match error {
        Some(e) => {
            d.failure = Some(outcome.error.as_ref().map_or("bad_annotation", |e| e.reason()));
            if last_error.get(key) != Some(&e) {
                let kept =
                    if desired.is_empty() { String::new() } else { "; the Service keeps its current address".into() };
                d.notes.push(Note { warning: true, reason: reasons::ALLOCATION_FAILED, message: format!("{e}{kept}") });
                last_error.insert(key.to_string(), e);
            }
        }
        None => {
            last_error.remove(key);
        }
    }
    d
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

    fn setup() -> (Allocator, Handling, BTreeMap<String, String>) {
        let mut a = Allocator::new();
        a.set_pool(
            "home",
            PoolConfig { ranges: vec![parse_entry("198.51.100.0/30").unwrap()], ..PoolConfig::default() },
        );
        (a, Handling { lb_class: "ferrolb.io/lb".into(), class_only: false }, BTreeMap::new())
    }

    #[test]
    fn allocation_writes_status_annotation_and_one_event() {
        let (mut a, h, mut errs) = setup();
        let d = decide(&mut a, "default/web", Some(&svc(json!({}))), &BTreeMap::new(), &h, &mut errs);
        assert_eq!(d.status, Some(vec!["198.51.100.0".parse().unwrap()]));
        assert_eq!(d.annotation, Some(Some("home".into())));
        assert_eq!(d.notes[0].reason, "IPAllocated");
        let settled = svc(json!({"metadata": {"annotations": {"ferrolb.io/allocated-from": "home"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.0"}]}}}));
        assert_eq!(decide(&mut a, "default/web", Some(&settled), &BTreeMap::new(), &h, &mut errs), Decision::default());
    }

    #[test]
    fn garbage_annotations_change_nothing_but_are_reported_once() {
        let (mut a, h, mut errs) = setup();
        let settled = svc(
            json!({"metadata": {"annotations": {"ferrolb.io/allocated-from": "home", "ferrolb.io/ips": "garbage"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}}}),
        );
        let d = decide(&mut a, "default/web", Some(&settled), &BTreeMap::new(), &h, &mut errs);
        assert_eq!((d.status, d.annotation), (None, None));
        assert_eq!(d.notes.len(), 1);
        assert!(d.notes[0].warning && d.notes[0].message.contains("not an IP address"));
        assert!(d.notes[0].message.contains("keeps its current address"));
        let again = decide(&mut a, "default/web", Some(&settled), &BTreeMap::new(), &h, &mut errs);
        assert!(again.notes.is_empty(), "a repeated failure is not announced again");
        assert_eq!(a.assignment("default/web").unwrap().ips, ["198.51.100.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn foreign_services_are_never_written_and_ours_are_cleaned_up() {
        let (mut a, h, mut errs) = setup();
        let foreign = svc(
            json!({"spec": {"loadBalancerClass": "other.io/lb"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}),
        );
        assert_eq!(decide(&mut a, "default/web", Some(&foreign), &BTreeMap::new(), &h, &mut errs), Decision::default());
        decide(&mut a, "default/web", Some(&svc(json!({}))), &BTreeMap::new(), &h, &mut errs);
        let now_cluster_ip = svc(
            json!({"spec": {"type": "ClusterIP"}, "metadata": {"annotations": {"ferrolb.io/allocated-from": "home"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.0"}]}}}),
        );
        let d = decide(&mut a, "default/web", Some(&now_cluster_ip), &BTreeMap::new(), &h, &mut errs);
        assert_eq!((d.status, d.annotation, d.freed), (Some(vec![]), Some(None), true));
        assert_eq!(d.notes[0].reason, "IPReleased");
    }
}
