//! ValidatingAdmissionPolicy evaluation (pure), to test the chart's policies against the requests
//! ferrolb's binaries make and the ones they must not: matching by resource rule and operation,
//! `matchConditions`, `variables` in order, then `validations` — with kube-cel (the CEL library
//! and Kubernetes' extension functions). Unlike kube-apiserver it does not type-check expressions
//! against the resources' schemas (CEL is dynamically typed here) and knows no `authorizer` or
//! `params`; docs/TESTING.md says so.

use std::collections::HashMap;

use kube_cel::KubeCelExt;
use kube_cel::cel::{Context, Program, Value as Cel};
use serde_json::{Value, json};

/// The node-name key Kubernetes puts in a pod's ServiceAccount token's extra user information.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// One admission request, as a policy sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// CREATE, UPDATE or DELETE (a PATCH is an UPDATE).
    pub operation: &'static str,
    /// The user (`system:serviceaccount:<ns>:<name>` for a pod).
    pub user: String,
    /// The node its token is bound to, if any.
    pub node: Option<String>,
    /// API group ("" for the core group).
    pub group: &'static str,
    /// Resource, with its subresource: `services/status`.
    pub resource: &'static str,
    /// The object before (UPDATE, DELETE).
    pub old: Option<Value>,
    /// The object after (CREATE, UPDATE).
    pub object: Option<Value>,
}

/// What a policy decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Its rules or conditions do not select the request.
    NotMatched,
    /// Every validation passed.
    Allowed,
    /// A validation failed, with its message.
    Denied(String),
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn run(source: &str, ctx: &Context) -> Result<Cel, String> {
    let program = Program::compile(source).map_err(|e| format!("{source}: {e}"))?;
    program.execute(ctx).map_err(|e| format!("{source}: {e}"))
}

/// Evaluates `policy` (a ValidatingAdmissionPolicy object) for `req`.
pub fn evaluate(policy: &Value, req: &Request) -> Result<Verdict, String> {
    let spec = &policy["spec"];
    let matched = spec["matchConstraints"]["resourceRules"].as_array().into_iter().flatten().any(|rule| {
        let has = |field: &str, want: &str| strings(&rule[field]).iter().any(|v| *v == want || *v == "*");
        has("apiGroups", req.group) && has("operations", req.operation) && has("resources", req.resource)
    });
    if !matched {
        return Ok(Verdict::NotMatched);
    }
    let (resource, sub) = req.resource.split_once('/').unwrap_or((req.resource, ""));
    let mut extra = serde_json::Map::new();
    if let Some(node) = &req.node {
        extra.insert(NODE_NAME_EXTRA.into(), json!([node]));
    }
    let request = json!({
        "operation": req.operation,
        "userInfo": {"username": req.user, "extra": extra},
        "resource": {"group": req.group, "resource": resource},
        "subResource": sub,
    });
    let mut ctx = Context::default().with_all();
    let bind = |ctx: &mut Context, name: &str, v: &Value| ctx.add_variable(name, v).map_err(|e| format!("{name}: {e}"));
    bind(&mut ctx, "object", req.object.as_ref().unwrap_or(&Value::Null))?;
    bind(&mut ctx, "oldObject", req.old.as_ref().unwrap_or(&Value::Null))?;
    bind(&mut ctx, "request", &request)?;
    for condition in spec["matchConditions"].as_array().into_iter().flatten() {
        if run(condition["expression"].as_str().unwrap_or("false"), &ctx)? != Cel::Bool(true) {
            return Ok(Verdict::NotMatched);
        }
    }
    let mut variables: HashMap<String, Cel> = HashMap::new();
    for v in spec["variables"].as_array().into_iter().flatten() {
        let value = run(v["expression"].as_str().unwrap_or("null"), &ctx)?;
        variables.insert(v["name"].as_str().unwrap_or_default().to_string(), value);
        ctx.add_variable_from_value("variables", variables.clone());
    }
    for check in spec["validations"].as_array().into_iter().flatten() {
        if run(check["expression"].as_str().unwrap_or("false"), &ctx)? != Cel::Bool(true) {
            let message = match check["messageExpression"].as_str() {
                Some(m) => match run(m, &ctx)? {
                    Cel::String(s) => s.to_string(),
                    other => format!("{other:?}"),
                },
                None => check["message"].as_str().unwrap_or("denied").to_string(),
            };
            return Ok(Verdict::Denied(message));
        }
    }
    Ok(Verdict::Allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Value {
        json!({"spec": {
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "operations": ["UPDATE"], "resources": ["configmaps"]}]},
            "matchConditions": [{"name": "me", "expression": "request.userInfo.username == 'me'"}],
            "variables": [{"name": "node", "expression": "'authentication.kubernetes.io/node-name' in request.userInfo.extra ? request.userInfo.extra['authentication.kubernetes.io/node-name'][0] : ''"},
                          {"name": "wanted", "expression": "'cm-' + variables.node"}],
            "validations": [{"expression": "object.metadata.name == variables.wanted", "messageExpression": "'only ' + variables.wanted"}]
        }})
    }

    fn req(user: &str, resource: &'static str, name: &str) -> Request {
        Request {
            operation: "UPDATE",
            user: user.into(),
            node: Some("n1".into()),
            group: "",
            resource,
            old: Some(json!({"metadata": {"name": name}})),
            object: Some(json!({"metadata": {"name": name}})),
        }
    }

    #[test]
    fn rules_conditions_variables_and_validations_in_turn() {
        let p = policy();
        assert_eq!(evaluate(&p, &req("me", "secrets", "cm-n1")).unwrap(), Verdict::NotMatched);
        assert_eq!(evaluate(&p, &req("you", "configmaps", "cm-n1")).unwrap(), Verdict::NotMatched);
        assert_eq!(evaluate(&p, &req("me", "configmaps", "cm-n1")).unwrap(), Verdict::Allowed);
        assert_eq!(evaluate(&p, &req("me", "configmaps", "cm-n2")).unwrap(), Verdict::Denied("only cm-n1".into()));
        let unbound = Request { node: None, ..req("me", "configmaps", "cm-n1") };
        assert_eq!(evaluate(&p, &unbound).unwrap(), Verdict::Denied("only cm-".into()));
        let mut broken = p.clone();
        broken["spec"]["validations"][0]["expression"] = json!("object.metadata.(");
        assert!(evaluate(&broken, &req("me", "configmaps", "x")).is_err());
    }
}
