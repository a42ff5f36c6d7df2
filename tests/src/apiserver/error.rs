//! API errors, rendered as the `Status` objects kube-apiserver returns.

use serde_json::{Value, json};

/// A failed request: HTTP code, `reason`, message and optional details.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
    /// `details` of the Status (name, group, kind, causes).
    pub details: Option<Value>,
}

/// The field of an object that a validation error concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `spec.addresses[0]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Cause {
    /// A cause for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for `<resource>.<group> "<name>"`.
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found")).with_details(name, resource)
    }

    /// 404 for a path that names no resource.
    pub fn no_route(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 409 AlreadyExists.
    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{resource} \"{name}\" already exists")).with_details(name, resource)
    }

    /// 409 Conflict on a stale resourceVersion or a failed precondition.
    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"))
            .with_details(name, resource)
    }

    /// 422 Invalid with one entry per offending field, worded as kube-apiserver words it.
    pub fn invalid(kind_group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let rendered: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let list = if rendered.len() == 1 { rendered[0].clone() } else { format!("[{}]", rendered.join(", ")) };
        let mut e = Self::new(422, "Invalid", format!("{kind_group} \"{name}\" is invalid: {list}"));
        // As kube-apiserver writes StatusDetails: the kind and the group apart (no group for core
        // kinds), and each cause with the field path it concerns.
        let (kind, group) = kind_group.split_once('.').unwrap_or((kind_group, ""));
        let mut details = json!({
            "name": name,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({"reason": "FieldValueInvalid", "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        e.details = Some(details);
        e
    }

    /// 422 for a request that is well-formed but cannot be carried out (a failed JSON-patch `test`).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 410 Gone for an expired resourceVersion (sent in-band on watches).
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 504 for a read at a resourceVersion the server did not reach in time.
    pub fn too_large_resource_version(wanted: u64, current: u64) -> Self {
        let mut e = Self::new(504, "Timeout", format!("Too large resource version: {wanted}, current: {current}"));
        e.details =
            Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1}));
        e
    }

    /// 415 for a body or patch type we do not read.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// An injected fault (500 or 429).
    pub fn injected(code: u16) -> Self {
        match code {
            429 => Self::new(429, "TooManyRequests", "injected fault: too many requests, please try again later"),
            _ => Self::new(
                code,
                "InternalError",
                "injected fault: an error on the server has prevented the request from succeeding",
            ),
        }
    }

    fn with_details(mut self, name: &str, resource: &str) -> Self {
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

/// Shorthand for results in the server.
pub type ApiResult<T> = Result<T, ApiError>;
