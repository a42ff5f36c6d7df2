//! The speakers' heartbeat key, made in the cluster. A chart cannot render a random key that stays
//! the same without Helm's `lookup`, which offline renders (`helm template`, GitOps tools) do not
//! have: every render would rotate the key. So the chart renders no key; the controller creates
//! the Secret when it is missing and never changes one that exists (MetalLB's controller makes its
//! memberlist Secret the same way). Speakers mount it and start once it exists.

use std::io::Read as _;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

/// The data key the speakers read (`--peer-secret-file=…/key`).
pub const KEY: &str = "key";

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It made the Secret.
    Created,
    /// A Secret with a key was there (made by another replica, an earlier run, or the user).
    Existing,
    /// A Secret of that name is there without a usable key; it is left alone.
    Unusable(String),
}

/// A new key: 32 random bytes as 64 hex characters (text, so that no trailing newline or
/// encoding question arises when a file is read).
pub fn new_key(random: &[u8; 32]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Secret to create.
pub fn secret(namespace: &str, name: &str, key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "ferrolb-controller".to_string())].into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(KEY.to_string(), ByteString(key.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

/// Whether an existing Secret carries a key the speakers can use; the reason when not.
pub fn judge(existing: &Secret) -> Outcome {
    match existing.data.as_ref().and_then(|d| d.get(KEY)) {
        Some(v) if !v.0.trim_ascii().is_empty() => Outcome::Existing,
        Some(_) => Outcome::Unusable(format!("its data {KEY:?} is empty")),
        None => Outcome::Unusable(format!("it has no data {KEY:?}")),
    }
}

fn random() -> std::io::Result<[u8; 32]> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Creates Secret `namespace/name` with a new key unless it exists.
pub async fn ensure(client: kube::Client, namespace: &str, name: &str) -> Result<Outcome, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(existing) = api.get_opt(name).await? {
        return Ok(judge(&existing));
    }
    let key = new_key(&random().map_err(|e| kube::Error::Service(e.into()))?);
    match api.create(&PostParams::default(), &secret(namespace, name, &key)).await {
        Ok(_) => Ok(Outcome::Created),
        // Another replica made it first: theirs is the key.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(judge(&api.get(name).await?)),
        Err(e) => Err(e),
    }
}

/// [`ensure`] until it succeeds (the API may not answer yet), logging what it found.
pub async fn run(client: kube::Client, namespace: String, name: String) {
    let (first, max) = (Duration::from_millis(500), Duration::from_secs(30));
    let outcome = ferrolb_process::retry::until_ok("ensuring the heartbeat key", first, max, || {
        ensure(client.clone(), &namespace, &name)
    })
    .await;
    match outcome {
        Outcome::Created => tracing::info!(secret = %name, "created the speakers' heartbeat key"),
        Outcome::Existing => tracing::debug!(secret = %name, "the speakers' heartbeat key exists"),
        Outcome::Unusable(why) => {
            tracing::error!(secret = %name, reason = %why, "the heartbeat key Secret is unusable and left alone: speakers cannot authenticate heartbeats until it is fixed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_hex_characters_of_the_random_bytes() {
        let k = new_key(&[0xab; 32]);
        assert_eq!(k.len(), 64);
        assert_eq!(&k[..4], "abab");
        assert_ne!(new_key(&random().unwrap()), new_key(&random().unwrap()));
    }

    #[test]
    fn an_existing_secret_is_judged_not_changed() {
        let s = secret("ns", "k", "00ff");
        assert_eq!(judge(&s), Outcome::Existing);
        let mut empty = s.clone();
        empty.data = Some([(KEY.to_string(), ByteString(b" \n".to_vec()))].into());
        assert!(matches!(judge(&empty), Outcome::Unusable(w) if w.contains("empty")));
        let mut other = s;
        other.data = Some([("password".to_string(), ByteString(b"x".to_vec()))].into());
        assert!(matches!(judge(&other), Outcome::Unusable(w) if w.contains("no data")));
    }
}
