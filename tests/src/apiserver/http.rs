//! The HTTP front: routing of REST paths to the verbs, content negotiation (JSON, Table,
//! PartialObjectMetadata), fault injection, and the `/_sim/` admin endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::discovery;
use super::error::{ApiError, ApiResult};
use super::ops::{self, ListQuery, Target};
use super::patch::{self, PatchType};
use super::protobuf;
use super::selectors::{FieldSelector, LabelSelector};
use super::tables;
use super::watch::{self, WatchOptions};

const MAX_BODY: usize = 64 << 20;

fn json_response(code: u16, body: &Value) -> Response {
    json_response_as(code, body, "application/json")
}

fn json_response_as(code: u16, body: &Value, content_type: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, content_type.to_string())], body.to_string()).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// How long a read waits for a resourceVersion the server has not reached (kube-apiserver: 3 s).
const FUTURE_VERSION_WAIT: Duration = Duration::from_secs(3);

/// A get or list at a `resourceVersion` newer than the server's waits for it, as kube-apiserver's
/// watch cache does, and fails with 504 "Too large resource version" when it does not come.
async fn read_not_before(
    shared: &Shared,
    method: &Method,
    watch: bool,
    query: &HashMap<String, String>,
) -> ApiResult<()> {
    let Some(wanted) = query.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()) else { return Ok(()) };
    if *method != Method::GET || watch || wanted == 0 {
        return Ok(());
    }
    let mut changes = shared.changes.subscribe();
    let reached = tokio::time::timeout(FUTURE_VERSION_WAIT, changes.wait_for(|rv| *rv >= wanted)).await;
    if matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    Err(ApiError::too_large_resource_version(wanted, shared.lock().rv))
}

/// The single handler behind every path.
pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let latency = shared.faults.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    let query: HashMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if watch {
        let _ = shared.faults.watches_held.subscribe().wait_for(|held| !*held).await;
    }
    let _ = shared
        .faults
        .requests_held
        .subscribe()
        .wait_for(|held| held.as_ref().is_none_or(|p| !path.contains(p.as_str())))
        .await;
    let response = match read_not_before(&shared, &parts.method, watch, &query).await {
        Err(e) => error_response(&e),
        Ok(()) => match route(&shared, &parts.method, &path, &query, &parts.headers, &body) {
            Ok(r) => r,
            Err(e) => error_response(&e),
        },
    };
    let record = super::RequestRecord {
        method: parts.method.to_string(),
        path,
        field_manager: query.get("fieldManager").cloned(),
        watch: query.get("watch").is_some_and(|w| w == "true" || w == "1"),
        code: response.status().as_u16(),
        user_agent,
    };
    shared.requests.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    response
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let store = || shared.lock();
    match path {
        "/version" => return Ok(json_response(200, &discovery::version())),
        "/healthz" | "/readyz" | "/livez" => return Ok((StatusCode::OK, "ok").into_response()),
        "/api" => return Ok(json_response(200, &discovery::core_versions())),
        "/apis" => return Ok(json_response(200, &discovery::group_list(&store()))),
        "/openapi/v3" => return Ok(json_response(200, &discovery::openapi_index(&store()))),
        _ => {}
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        return discovery::openapi_group(&store(), gv)
            .map(|d| json_response(200, &d))
            .ok_or_else(|| ApiError::no_route(path));
    }
    if let Some(action) = path.strip_prefix("/_sim/") {
        return admin(shared, action, query);
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group] => {
            return discovery::group(&store(), group)
                .map(|g| json_response(200, &g))
                .ok_or_else(|| ApiError::no_route(path));
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    if rest.is_empty() {
        return discovery::resource_list(&store(), group, version)
            .map(|l| json_response(200, &l))
            .ok_or_else(|| ApiError::no_route(path));
    }
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, more @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), *plural, more.first().map(|s| s.to_string()), more.get(1).copied())
        }
        [plural, more @ ..] => (None, *plural, more.first().map(|s| s.to_string()), more.get(1).copied()),
        [] => return Err(ApiError::no_route(path)),
    };
    let target = resolve(shared, path, group, version, namespace, plural, name, sub)?;
    serve(shared, method, target, query, headers, body)
}

#[allow(clippy::too_many_arguments)]
fn resolve(
    shared: &Shared,
    path: &str,
    group: &str,
    version: &str,
    namespace: Option<String>,
    plural: &str,
    name: Option<String>,
    sub: Option<&str>,
) -> ApiResult<Target> {
    let store = shared.lock();
    // events.k8s.io Events live with the core ones (see events.rs).
    let key = if group == "events.k8s.io" && plural == "events" {
        (String::new(), "events".to_string())
    } else {
        (group.to_string(), plural.to_string())
    };
    let served = store
        .collection(&(group.to_string(), plural.to_string()))
        .is_some_and(|c| c.info.versions.iter().any(|v| v == version));
    let info = match store.collection(&key) {
        Some(c) if served => c.info.clone(),
        _ => return Err(ApiError::no_route(path)),
    };
    if namespace.is_some() && !info.namespaced {
        return Err(ApiError::no_route(path));
    }
    let status = match sub {
        None => false,
        Some("status") if info.has_status(version) && name.is_some() => true,
        Some(_) => return Err(ApiError::no_route(path)),
    };
    Ok(Target { key, info, group: group.into(), version: version.into(), namespace, name, status })
}

fn list_query(query: &HashMap<String, String>) -> ApiResult<ListQuery> {
    let labels = query
        .get("labelSelector")
        .filter(|s| !s.is_empty())
        .map(|s| LabelSelector::parse(s))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let fields = query
        .get("fieldSelector")
        .filter(|s| !s.is_empty())
        .map(|s| FieldSelector::parse(s))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let continue_token = query.get("continue").filter(|c| !c.is_empty()).cloned();
    let resource_version = match query.get("resourceVersion").filter(|r| !r.is_empty()) {
        Some(r) => Some(r.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {r:?}")))?),
        None => None,
    };
    let exact = query.get("resourceVersionMatch").is_some_and(|m| m == "Exact");
    Ok(ListQuery { labels, fields, limit, continue_token, resource_version, exact })
}

/// A create or replace body, read by its Content-Type as kube-apiserver does: JSON (also when no
/// type is sent) and YAML; anything else is 415 with the accepted types. Protobuf, which kubectl
/// sends for built-in kinds, is among kube-apiserver's types but not readable here (see
/// docs/TESTING.md), so it is refused the same way rather than misread.
fn parse_object(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or_default();
    match ct.split(';').next().unwrap_or_default().trim() {
        "" | "application/json" | "*/*" => parse_json(body),
        "application/yaml" => serde_norway::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}"))),
        "application/vnd.kubernetes.protobuf" => protobuf::decode(body).map_err(|e| match e {
            protobuf::Unread::Malformed(m) => {
                ApiError::bad_request(format!("the request body is not valid protobuf: {m}"))
            }
            protobuf::Unread::Unsupported(m) => ApiError::unsupported_media_type(m),
        }),
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other:?})"
        ))),
    }
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).unwrap_or_default()
}

fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    t: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All");
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    let w = ops::Writer {
        dry_run,
        manager: query
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .cloned()
            .unwrap_or_else(|| agent.split('/').next().unwrap_or(agent).to_string()),
        force: query.get("force").is_some_and(|f| f == "true"),
    };
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    let accept = accept(headers);
    let table = accept.contains("as=Table");
    let include_object = query.get("includeObject").is_some_and(|v| v == "Object");
    let aimed = || {
        let only = shared.faults.fail_only.lock().unwrap_or_else(|e| e.into_inner());
        only.as_deref().is_none_or(|o| o == t.key.1 || (t.status && *o == format!("{}/status", t.key.1)))
    };
    if *method != Method::GET && aimed() {
        let pending = shared.faults.fail_writes.load(Ordering::SeqCst);
        if pending > 0
            && shared
                .faults
                .fail_writes
                .compare_exchange(pending, pending - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(ApiError::injected(shared.faults.fail_code.load(Ordering::SeqCst)));
        }
    }
    let write = |f: &dyn Fn(&mut super::store::Store) -> ApiResult<(u16, Value)>| -> ApiResult<Response> {
        let (code, out) = {
            let mut store = shared.lock();
            let before = store.rv;
            let result = f(&mut store)?;
            if store.rv != before {
                shared.changes.send_replace(store.rv);
            }
            result
        };
        Ok(json_response(code, &out))
    };
    match (method.clone(), t.name.is_some()) {
        (Method::GET, false) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            let opts = WatchOptions {
                resource_version: query.get("resourceVersion").cloned(),
                timeout: Duration::from_secs(query.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(1800)),
                bookmarks: query.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
                send_initial_events: query.get("sendInitialEvents").is_some_and(|b| b == "true"),
                table,
                include_object,
            };
            Ok(watch::respond(shared.clone(), t, list_query(query)?, opts))
        }
        (Method::GET, false) => {
            let list = ops::list(&shared.lock(), &t, &list_query(query)?)?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            if table {
                let tbl = tables::table(&t.info, &t.version, &items, list["metadata"].clone(), include_object);
                return Ok(json_response_as(200, &tbl, "application/json;as=Table;v=v1;g=meta.k8s.io"));
            }
            if accept.contains("as=PartialObjectMetadataList") {
                let metas: Vec<Value> = items.iter().map(partial).collect();
                let out = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list["metadata"], "items": metas});
                return Ok(json_response_as(
                    200,
                    &out,
                    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
                ));
            }
            Ok(json_response(200, &list))
        }
        (Method::GET, true) => {
            let obj = ops::get(&shared.lock(), &t)?;
            if table {
                let tbl = tables::table(&t.info, &t.version, &[obj], json!({}), include_object);
                return Ok(json_response_as(200, &tbl, "application/json;as=Table;v=v1;g=meta.k8s.io"));
            }
            if accept.contains("as=PartialObjectMetadata") {
                return Ok(json_response_as(
                    200,
                    &partial(&obj),
                    "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
                ));
            }
            Ok(json_response(200, &obj))
        }
        (Method::POST, false) => {
            if t.info.namespaced && t.namespace.is_none() {
                return Err(ApiError::method_not_allowed("create needs a namespace in the path"));
            }
            let body = parse_object(headers, body)?;
            strict_check(&t, &body, strict)?;
            write(&|s| Ok((201, ops::create(s, &t, body.clone(), &w)?)))
        }
        (Method::PUT, true) => {
            let body = parse_object(headers, body)?;
            strict_check(&t, &body, strict)?;
            write(&|s| Ok((200, ops::update(s, &t, body.clone(), &w)?)))
        }
        (Method::PATCH, true) => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|h| h.to_str().ok()).unwrap_or_default();
            let kind = PatchType::from_content_type(ct)?;
            let patch = patch::parse_body(kind, body)?;
            if kind == PatchType::Apply && query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::unprocessable(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            write(&|s| ops::patch(s, &t, kind, &patch, &w))
        }
        (Method::DELETE, true) => {
            let options = if body.is_empty() { Value::Null } else { parse_json(body)? };
            write(&|s| Ok((200, ops::delete(s, &t, &options, dry_run)?)))
        }
        (Method::DELETE, false) => {
            let q = list_query(query)?;
            write(&|s| Ok((200, ops::delete_collection(s, &t, &q, dry_run)?)))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!("{m} is not supported on {}", t.info.qualified()))),
    }
}

fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// `fieldValidation=Strict`: unknown fields of a custom resource are an error, not pruned.
fn strict_check(t: &Target, body: &Value, strict: bool) -> ApiResult<()> {
    if !strict {
        return Ok(());
    }
    let Some(schema) = t.info.crd.as_ref().and_then(|v| v.get(&t.version)).and_then(|v| v.schema.as_ref()) else {
        return Ok(());
    };
    let unknown = super::validation::unknown_fields(schema, body);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))))
}

fn admin(shared: &Shared, action: &str, query: &HashMap<String, String>) -> ApiResult<Response> {
    let num = |k: &str| query.get(k).and_then(|v| v.parse::<u64>().ok());
    match action {
        "drop-watches" => shared.drop_watches(),
        "compact" => shared.compact(),
        "hold-watches" => shared.hold_watches(true),
        "release-watches" => shared.hold_watches(false),
        "fail-writes" => shared.fail_next_writes(
            u32::try_from(num("count").unwrap_or(1)).unwrap_or(u32::MAX),
            u16::try_from(num("code").unwrap_or(500)).unwrap_or(500),
        ),
        "latency" => shared.set_latency(Duration::from_millis(num("ms").unwrap_or(0))),
        _ => return Err(ApiError::no_route(action)),
    }
    Ok(Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()).unwrap_or_default())
}
