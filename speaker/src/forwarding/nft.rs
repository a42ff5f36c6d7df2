//! Applies rendered tables and differences as atomic transactions — through the speaker's
//! libnftables context, or `nft -f -` (as kube-proxy's nftables mode does) when the library does
//! not load — reads the table back to notice changes made by others, and removes it.

use std::process::Stdio;
use std::sync::{Mutex, OnceLock};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::libnft::Nftables;
use super::render::TABLE;

/// Why nft failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be run.
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
    /// `nft` refused the input.
    #[error("nft failed: {0}")]
    Refused(String),
}

async fn nft(args: &[&str], input: Option<&str>) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(NftError::Refused(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The speaker's libnftables context, if the library loads; else the `nft` command is run.
static LIBRARY: OnceLock<Option<Mutex<Nftables>>> = OnceLock::new();

/// Applies `ruleset` (a whole table or a difference) as one atomic transaction.
pub async fn apply(ruleset: &str) -> Result<(), NftError> {
    let library = LIBRARY.get_or_init(|| match Nftables::open() {
        Ok(n) => Some(Mutex::new(n)),
        Err(e) => {
            tracing::warn!(error = %e, "programming nftables with the nft command instead of libnftables");
            None
        }
    });
    let Some(library) = library else { return nft(&["-f", "-"], Some(ruleset)).await.map(|_| ()) };
    let text = ruleset.to_string();
    tokio::task::spawn_blocking(move || library.lock().unwrap_or_else(|e| e.into_inner()).run(&text))
        .await
        .map_err(|e| NftError::Refused(e.to_string()))?
        .map_err(NftError::Refused)
}

/// The table as the kernel has it now, as JSON (to notice changes made by others).
pub async fn current() -> Result<String, NftError> {
    nft(&["-j", "list", "table", "inet", TABLE], None).await
}

/// Every chain on this host, as `nft -j list chains` prints them (for the firewall check).
pub async fn chains_json() -> Result<String, NftError> {
    nft(&["-j", "list", "chains"], None).await
}

/// Removes ferrolb's table (on exit, or with `--forwarding none`).
pub async fn remove() -> Result<(), NftError> {
    match nft(&["delete", "table", "inet", TABLE], None).await {
        Ok(_) => Ok(()),
        Err(NftError::Refused(e)) if e.contains("No such file") => Ok(()),
        Err(e) => Err(e),
    }
}
