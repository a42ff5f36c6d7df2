//! The heartbeat key, re-read when its file changes: the chart mounts it from a Secret, and the
//! kubelet rewrites a mounted Secret in place, so a corrected or rotated key reaches a running
//! speaker without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The key every heartbeat is signed and checked with (none: unauthenticated).
#[derive(Debug, Clone, Default)]
pub struct Key {
    current: Arc<RwLock<Option<Vec<u8>>>>,
    path: Option<PathBuf>,
}

/// A key file's content, trimmed; an empty file is an error (it would switch authentication off).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = bytes.trim_ascii().to_vec();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(key)
}

impl Key {
    /// No key.
    pub fn none() -> Self {
        Self::default()
    }

    /// The key in `path`.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let key = read(path)?;
        Ok(Self { current: Arc::new(RwLock::new(Some(key))), path: Some(path.to_path_buf()) })
    }

    /// The key now.
    pub fn get(&self) -> Option<Vec<u8>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether heartbeats are authenticated.
    pub fn is_some(&self) -> bool {
        self.path.is_some()
    }

    /// Reads the file again; Ok(true) when the key changed. A file that cannot be read or is
    /// empty leaves the key as it was.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.path else { return Ok(false) };
        let key = read(path)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = current.as_deref() != Some(key.as_slice());
        *current = Some(key);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_changes_the_key_an_empty_or_missing_one_does_not() {
        let path = std::env::temp_dir().join(format!("ferrolb-key-test-{}", std::process::id()));
        std::fs::write(&path, "one\n").unwrap();
        let key = Key::from_file(&path).unwrap();
        assert_eq!(key.get().as_deref(), Some(&b"one"[..]));
        assert_eq!(key.reload(), Ok(false));
        std::fs::write(&path, "two").unwrap();
        assert_eq!(key.reload(), Ok(true));
        assert_eq!(key.clone().get().as_deref(), Some(&b"two"[..]), "clones share the key");
        std::fs::write(&path, "  \n").unwrap();
        assert!(key.reload().unwrap_err().contains("is empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(key.reload().is_err());
        assert_eq!(key.get().as_deref(), Some(&b"two"[..]), "kept");
        assert!(Key::none().get().is_none() && Key::none().reload() == Ok(false));
    }
}
