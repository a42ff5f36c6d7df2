//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), read
//! into the JSON the store keeps, for the built-in kinds clients send that way: `kubectl create
//! namespace|service|deployment|secret|configmap` and Helm's Secret-backed release records. The
//! envelope is the 4-byte magic `k8s\0` and a `runtime.Unknown` (type meta, raw bytes); the
//! messages are read through tables of their fields (tag numbers from Kubernetes' generated.proto,
//! as k8s-pb carries them). A field a table does not know is refused (415, naming the message and
//! tag) rather than dropped. Zero values are left out, as the JSON encoding's `omitempty` does;
//! `status` is skipped (a create or update of the main resource ignores it).

use serde_json::{Map, Value, json};

/// The magic prefix of every Kubernetes protobuf body.
pub const MAGIC: &[u8] = b"k8s\0";

/// How a field's value is read.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Msg(&'static Schema),
    /// `map<string, string>`.
    StrMap,
    /// `map<string, bytes>` (base64 values).
    BytesMap,
    /// `map<string, Quantity>` (a Quantity is a message holding its string).
    QuantityMap,
    /// `metav1.Time`: seconds and nanos, RFC 3339 in JSON.
    Time,
    /// `intstr.IntOrString`.
    IntOrString,
    /// Read past, not kept (status on create and update).
    Skip,
}

/// One field of a message: tag, JSON name, kind, whether repeated.
struct Field(u32, &'static str, Kind, bool);

/// A message: its name (for errors) and fields.
struct Schema(&'static str, &'static [Field]);

use Kind::*;

static OWNER_REFERENCE: Schema = Schema(
    "OwnerReference",
    &[
        Field(1, "kind", Str, false),
        Field(3, "name", Str, false),
        Field(4, "uid", Str, false),
        Field(5, "apiVersion", Str, false),
        Field(6, "controller", Bool, false),
        Field(7, "blockOwnerDeletion", Bool, false),
    ],
);
static OBJECT_META: Schema = Schema(
    "ObjectMeta",
    &[
        Field(1, "name", Str, false),
        Field(2, "generateName", Str, false),
        Field(3, "namespace", Str, false),
        Field(4, "selfLink", Str, false),
        Field(5, "uid", Str, false),
        Field(6, "resourceVersion", Str, false),
        Field(7, "generation", Int, false),
        Field(8, "creationTimestamp", Time, false),
        Field(9, "deletionTimestamp", Time, false),
        Field(10, "deletionGracePeriodSeconds", Int, false),
        Field(11, "labels", StrMap, false),
        Field(12, "annotations", StrMap, false),
        Field(13, "ownerReferences", Msg(&OWNER_REFERENCE), true),
        Field(14, "finalizers", Str, true),
        Field(17, "managedFields", Skip, true),
    ],
);
static NAMESPACE_SPEC: Schema = Schema("NamespaceSpec", &[Field(1, "finalizers", Str, true)]);
static NAMESPACE: Schema = Schema(
    "Namespace",
    &[
        Field(1, "metadata", Msg(&OBJECT_META), false),
        Field(2, "spec", Msg(&NAMESPACE_SPEC), false),
        Field(3, "status", Skip, false),
    ],
);
static SECRET: Schema = Schema(
    "Secret",
    &[
        Field(1, "metadata", Msg(&OBJECT_META), false),
        Field(2, "data", BytesMap, false),
        Field(3, "type", Str, false),
        Field(4, "stringData", StrMap, false),
        Field(5, "immutable", Bool, false),
    ],
);
static CONFIG_MAP: Schema = Schema(
    "ConfigMap",
    &[
        Field(1, "metadata", Msg(&OBJECT_META), false),
        Field(2, "data", StrMap, false),
        Field(3, "binaryData", BytesMap, false),
        Field(4, "immutable", Bool, false),
    ],
);
static SERVICE_PORT: Schema = Schema(
    "ServicePort",
    &[
        Field(1, "name", Str, false),
        Field(2, "protocol", Str, false),
        Field(3, "port", Int, false),
        Field(4, "targetPort", IntOrString, false),
        Field(5, "nodePort", Int, false),
        Field(6, "appProtocol", Str, false),
    ],
);
static SERVICE_SPEC: Schema = Schema(
    "ServiceSpec",
    &[
        Field(1, "ports", Msg(&SERVICE_PORT), true),
        Field(2, "selector", StrMap, false),
        Field(3, "clusterIP", Str, false),
        Field(4, "type", Str, false),
        Field(5, "externalIPs", Str, true),
        Field(7, "sessionAffinity", Str, false),
        Field(8, "loadBalancerIP", Str, false),
        Field(9, "loadBalancerSourceRanges", Str, true),
        Field(10, "externalName", Str, false),
        Field(11, "externalTrafficPolicy", Str, false),
        Field(12, "healthCheckNodePort", Int, false),
        Field(13, "publishNotReadyAddresses", Bool, false),
        Field(17, "ipFamilyPolicy", Str, false),
        Field(18, "clusterIPs", Str, true),
        Field(19, "ipFamilies", Str, true),
        Field(20, "allocateLoadBalancerNodePorts", Bool, false),
        Field(21, "loadBalancerClass", Str, false),
        Field(22, "internalTrafficPolicy", Str, false),
        Field(23, "trafficDistribution", Str, false),
    ],
);
static SERVICE: Schema = Schema(
    "Service",
    &[
        Field(1, "metadata", Msg(&OBJECT_META), false),
        Field(2, "spec", Msg(&SERVICE_SPEC), false),
        Field(3, "status", Skip, false),
    ],
);
static SELECTOR_REQUIREMENT: Schema = Schema(
    "LabelSelectorRequirement",
    &[Field(1, "key", Str, false), Field(2, "operator", Str, false), Field(3, "values", Str, true)],
);
static LABEL_SELECTOR: Schema = Schema(
    "LabelSelector",
    &[Field(1, "matchLabels", StrMap, false), Field(2, "matchExpressions", Msg(&SELECTOR_REQUIREMENT), true)],
);
static CONTAINER_PORT: Schema = Schema(
    "ContainerPort",
    &[
        Field(1, "name", Str, false),
        Field(2, "hostPort", Int, false),
        Field(3, "containerPort", Int, false),
        Field(4, "protocol", Str, false),
        Field(5, "hostIP", Str, false),
    ],
);
static ENV_VAR: Schema = Schema("EnvVar", &[Field(1, "name", Str, false), Field(2, "value", Str, false)]);
static RESOURCES: Schema =
    Schema("ResourceRequirements", &[Field(1, "limits", QuantityMap, false), Field(2, "requests", QuantityMap, false)]);
static CONTAINER: Schema = Schema(
    "Container",
    &[
        Field(1, "name", Str, false),
        Field(2, "image", Str, false),
        Field(3, "command", Str, true),
        Field(4, "args", Str, true),
        Field(5, "workingDir", Str, false),
        Field(6, "ports", Msg(&CONTAINER_PORT), true),
        Field(7, "env", Msg(&ENV_VAR), true),
        Field(8, "resources", Msg(&RESOURCES), false),
        Field(13, "terminationMessagePath", Str, false),
        Field(14, "imagePullPolicy", Str, false),
        Field(16, "stdin", Bool, false),
        Field(17, "stdinOnce", Bool, false),
        Field(18, "tty", Bool, false),
        Field(20, "terminationMessagePolicy", Str, false),
    ],
);
static POD_SPEC: Schema = Schema(
    "PodSpec",
    &[
        Field(2, "containers", Msg(&CONTAINER), true),
        Field(3, "restartPolicy", Str, false),
        Field(4, "terminationGracePeriodSeconds", Int, false),
        Field(6, "dnsPolicy", Str, false),
        Field(7, "nodeSelector", StrMap, false),
        Field(8, "serviceAccountName", Str, false),
        Field(9, "serviceAccount", Str, false),
        Field(10, "nodeName", Str, false),
        Field(11, "hostNetwork", Bool, false),
        Field(12, "hostPID", Bool, false),
        Field(13, "hostIPC", Bool, false),
        Field(16, "hostname", Str, false),
        Field(17, "subdomain", Str, false),
        Field(19, "schedulerName", Str, false),
        Field(24, "priorityClassName", Str, false),
    ],
);
static POD_TEMPLATE: Schema = Schema(
    "PodTemplateSpec",
    &[Field(1, "metadata", Msg(&OBJECT_META), false), Field(2, "spec", Msg(&POD_SPEC), false)],
);
static STRATEGY: Schema = Schema("DeploymentStrategy", &[Field(1, "type", Str, false)]);
static DEPLOYMENT_SPEC: Schema = Schema(
    "DeploymentSpec",
    &[
        Field(1, "replicas", Int, false),
        Field(2, "selector", Msg(&LABEL_SELECTOR), false),
        Field(3, "template", Msg(&POD_TEMPLATE), false),
        Field(4, "strategy", Msg(&STRATEGY), false),
        Field(5, "minReadySeconds", Int, false),
        Field(6, "revisionHistoryLimit", Int, false),
        Field(7, "paused", Bool, false),
        Field(9, "progressDeadlineSeconds", Int, false),
    ],
);
static DEPLOYMENT: Schema = Schema(
    "Deployment",
    &[
        Field(1, "metadata", Msg(&OBJECT_META), false),
        Field(2, "spec", Msg(&DEPLOYMENT_SPEC), false),
        Field(3, "status", Skip, false),
    ],
);

/// The messages a body may carry, by apiVersion and kind.
fn schema_of(api_version: &str, kind: &str) -> Option<&'static Schema> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "Secret") => &SECRET,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Service") => &SERVICE,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        _ => return None,
    })
}

/// A raw protobuf field: its tag and value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or("a varint runs past the end")?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "a tag out of range")?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "a length out of range")?;
                if len > self.0.len() {
                    return Err("a length-delimited field runs past the end".into());
                }
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                Wire::Bytes(bytes)
            }
            1 => {
                let bytes = self.0.get(..8).ok_or("a fixed64 runs past the end")?;
                self.0 = &self.0[8..];
                Wire::Bytes(bytes)
            }
            5 => {
                let bytes = self.0.get(..4).ok_or("a fixed32 runs past the end")?;
                self.0 = &self.0[4..];
                Wire::Bytes(bytes)
            }
            w => return Err(format!("wire type {w} is not used by Kubernetes' messages")),
        };
        Ok(Some((tag, value)))
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".into())
}

fn bytes_of<'a>(w: &Wire<'a>, what: &str) -> Result<&'a [u8], String> {
    match w {
        Wire::Bytes(b) => Ok(b),
        Wire::Varint(_) => Err(format!("{what}: expected a length-delimited field")),
    }
}

fn int_of(w: &Wire<'_>, what: &str) -> Result<i64, String> {
    match w {
        // int32 and int64 are varints holding the two's complement.
        Wire::Varint(v) => Ok(*v as i64),
        Wire::Bytes(_) => Err(format!("{what}: expected a varint")),
    }
}

/// The (key, value) of a map entry message.
fn entry(b: &[u8]) -> Result<(String, Option<Wire<'_>>), String> {
    let (mut key, mut value) = (String::new(), None);
    let mut r = Reader(b);
    while let Some((tag, w)) = r.next()? {
        match tag {
            1 => key = text(bytes_of(&w, "a map key")?)?,
            2 => value = Some(w),
            t => return Err(format!("a map entry has a field {t}")),
        }
    }
    Ok((key, value))
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn time(b: &[u8]) -> Result<Option<Value>, String> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    let mut r = Reader(b);
    while let Some((tag, w)) = r.next()? {
        match tag {
            1 => seconds = int_of(&w, "Time.seconds")?,
            2 => nanos = int_of(&w, "Time.nanos")?,
            t => return Err(format!("Time: unknown field {t}")),
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(None);
    }
    let ts = jiff::Timestamp::new(seconds, nanos as i32).map_err(|e| e.to_string())?;
    Ok(Some(json!(ts.to_string())))
}

fn int_or_string(b: &[u8]) -> Result<Value, String> {
    let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
    let mut r = Reader(b);
    while let Some((tag, w)) = r.next()? {
        match tag {
            1 => is_string = int_of(&w, "IntOrString.type")? == 1,
            2 => int = int_of(&w, "IntOrString.intVal")?,
            3 => string = text(bytes_of(&w, "IntOrString.strVal")?)?,
            t => return Err(format!("IntOrString: unknown field {t}")),
        }
    }
    Ok(if is_string { json!(string) } else { json!(int as i32) })
}

fn quantity(b: &[u8]) -> Result<String, String> {
    let mut r = Reader(b);
    let mut s = String::new();
    while let Some((tag, w)) = r.next()? {
        match tag {
            1 => s = text(bytes_of(&w, "Quantity.string")?)?,
            t => return Err(format!("Quantity: unknown field {t}")),
        }
    }
    Ok(s)
}

fn message(schema: &Schema, b: &[u8]) -> Result<Value, String> {
    let mut out = Map::new();
    let mut r = Reader(b);
    while let Some((tag, w)) = r.next()? {
        let Some(Field(_, name, kind, repeated)) = schema.1.iter().find(|f| f.0 == tag) else {
            return Err(format!("field {tag} of {} (sim-apiserver reads only the fields its tables list)", schema.0));
        };
        let what = format!("{}.{name}", schema.0);
        let value: Option<Value> = match kind {
            Str => Some(json!(text(bytes_of(&w, &what)?)?)).filter(|v| *v != json!("") || *repeated),
            Int => Some(json!(int_of(&w, &what)?)).filter(|v| *v != json!(0)),
            Bool => Some(json!(int_of(&w, &what)? != 0)).filter(|v| *v != json!(false)),
            Msg(inner) => Some(message(inner, bytes_of(&w, &what)?)?),
            Time => time(bytes_of(&w, &what)?)?,
            IntOrString => Some(int_or_string(bytes_of(&w, &what)?)?),
            Skip => None,
            StrMap | BytesMap | QuantityMap => {
                let (k, v) = entry(bytes_of(&w, &what)?)?;
                let v = match (kind, v) {
                    (_, None) => json!(""),
                    (StrMap, Some(v)) => json!(text(bytes_of(&v, &what)?)?),
                    (BytesMap, Some(v)) => json!(base64(bytes_of(&v, &what)?)),
                    (_, Some(v)) => json!(quantity(bytes_of(&v, &what)?)?),
                };
                let map = out.entry(name.to_string()).or_insert_with(|| json!({}));
                map[k] = v;
                continue;
            }
        };
        let Some(value) = value else { continue };
        if *repeated {
            match out.entry(name.to_string()).or_insert_with(|| json!([])) {
                Value::Array(items) => items.push(value),
                _ => return Err(format!("{what}: repeated and not")),
            }
        } else {
            out.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Why a protobuf body was not read.
#[derive(Debug, Clone, PartialEq)]
pub enum Unread {
    /// The bytes are not a well-formed message (kube-apiserver: 400).
    Malformed(String),
    /// Well-formed, but a kind or field sim-apiserver's tables lack (415: a limit of the double).
    Unsupported(String),
}

/// Reads a protobuf request body into the object's JSON (with `apiVersion` and `kind`).
pub fn decode(body: &[u8]) -> Result<Value, Unread> {
    let raw = body.strip_prefix(MAGIC).ok_or_else(|| {
        Unread::Malformed("the body does not start with Kubernetes' protobuf magic \"k8s\\0\"".into())
    })?;
    let (api_version, kind, object) = envelope(raw).map_err(Unread::Malformed)?;
    let schema = schema_of(&api_version, &kind)
        .ok_or_else(|| Unread::Unsupported(format!("sim-apiserver does not read {api_version} {kind} in protobuf")))?;
    let mut v = message(schema, object).map_err(|e| {
        if e.contains("sim-apiserver reads only") { Unread::Unsupported(e) } else { Unread::Malformed(e) }
    })?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

/// The `runtime.Unknown` envelope: apiVersion, kind, the object's bytes.
fn envelope(raw: &[u8]) -> Result<(String, String, &[u8]), String> {
    let (mut api_version, mut kind, mut object) = (String::new(), String::new(), None);
    let mut r = Reader(raw);
    while let Some((tag, w)) = r.next()? {
        match tag {
            1 => {
                let mut t = Reader(bytes_of(&w, "Unknown.typeMeta")?);
                while let Some((tag, w)) = t.next()? {
                    match tag {
                        1 => api_version = text(bytes_of(&w, "TypeMeta.apiVersion")?)?,
                        2 => kind = text(bytes_of(&w, "TypeMeta.kind")?)?,
                        t => return Err(format!("TypeMeta: unknown field {t}")),
                    }
                }
            }
            2 => object = Some(bytes_of(&w, "Unknown.raw")?),
            3 | 4 => {}
            t => return Err(format!("Unknown: unknown field {t}")),
        }
    }
    Ok((api_version, kind, object.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(tag) << 3 | 2, &mut out);
        varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    fn int(tag: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(tag) << 3, &mut out);
        varint(v, &mut out);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), field(1, &type_meta), field(2, raw), field(3, b""), field(4, b"")].concat()
    }

    #[test]
    fn a_secret_as_helm_stores_its_releases() {
        let labels = [field(1, b"owner"), field(2, b"helm")].concat();
        let meta = [field(1, b"sh.helm.release.v1.lb.v1"), field(2, b""), field(11, &labels), field(8, b""), int(7, 0)]
            .concat();
        let data = [field(1, b"release"), field(2, &[0, 1, 2])].concat();
        let secret = [field(1, &meta), field(2, &data), field(3, b"helm.sh/release.v1")].concat();
        let v = decode(&envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1", "data": {"release": "AAEC"},
                "metadata": {"name": "sh.helm.release.v1.lb.v1", "labels": {"owner": "helm"}}})
        );
    }

    #[test]
    fn a_service_with_a_named_and_a_numbered_target_port() {
        let named = [int(1, 1), field(3, b"http")].concat();
        let numbered = [int(1, 0), int(2, 8080)].concat();
        let p1 = [field(1, b"a"), field(2, b"TCP"), int(3, 80), field(4, &named), int(5, 0)].concat();
        let p2 = [field(1, b"b"), field(2, b"UDP"), int(3, 53), field(4, &numbered)].concat();
        let spec = [field(1, &p1), field(1, &p2), field(4, b"LoadBalancer")].concat();
        let status = field(1, b"");
        let svc = [field(1, &field(1, b"web")), field(2, &spec), field(3, &status)].concat();
        let v = decode(&envelope("v1", "Service", &svc)).unwrap();
        assert_eq!(v["spec"]["ports"][0], json!({"name": "a", "protocol": "TCP", "port": 80, "targetPort": "http"}));
        assert_eq!(v["spec"]["ports"][1]["targetPort"], json!(8080));
        assert_eq!(v["spec"]["type"], "LoadBalancer");
        assert!(v.get("status").is_none());
    }

    #[test]
    fn what_it_cannot_read_is_refused_not_dropped() {
        let says = |r: Result<Value, Unread>| match r {
            Err(Unread::Malformed(m)) => format!("400 {m}"),
            Err(Unread::Unsupported(m)) => format!("415 {m}"),
            Ok(v) => panic!("read {v}"),
        };
        assert!(says(decode(b"{\"kind\":\"Namespace\"}")).starts_with("400 the body does not start"));
        assert!(says(decode(&envelope("v1", "Pod", b""))).starts_with("415 sim-apiserver does not read v1 Pod"));
        let unknown = [field(1, &field(1, b"x")), field(9, b"?")].concat();
        assert!(says(decode(&envelope("v1", "Namespace", &unknown))).starts_with("415 field 9 of Namespace"));
        assert!(says(decode(&[MAGIC, &[0x0a, 0x05, 0x01][..]].concat())).starts_with("400"), "truncated");
        let time = [int(1, 1_764_547_200)].concat();
        let meta = [field(1, b"n"), field(8, &time)].concat();
        let v = decode(&envelope("v1", "Namespace", &field(1, &meta))).unwrap();
        assert_eq!(v["metadata"]["creationTimestamp"], "2025-12-01T00:00:00Z");
    }
}
