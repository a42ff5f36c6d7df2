//! Connection-state replication (`--conntrack-sync conntrackd`): the netfilter project's
//! conntrackd, run by the speaker, replicates the flows of Services that ask for it
//! (`ferrolb.io/replicate-connections`) to every node; a node taking such an address over commits
//! them into its kernel before it answers for the address, so established connections continue
//! through it (docs/SPEAKER.md, "Connections across a failover"). Pure: the daemon's configuration
//! (`config`) and the table that decides what is tracked and reported (`table`); I/O: here.

pub mod config;
pub mod table;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use table::Replicated;

/// Why replication could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A file could not be written or a program not run.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A program refused.
    #[error("{0} failed: {1}")]
    Refused(String, String),
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), SyncError> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SyncError::Io(what.clone(), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| SyncError::Io(what.clone(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| SyncError::Io(what.clone(), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SyncError::Refused(what, String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// The running replication of one node.
pub struct Replicator {
    conf: PathBuf,
    child: Child,
    applied: Option<Replicated>,
}

impl Replicator {
    /// Writes conntrackd's configuration into `dir` and starts it (it dies with the speaker; a
    /// restarted speaker starts a new one, which asks the others for their flows).
    pub fn start(node: &config::Node) -> Result<Self, SyncError> {
        std::fs::create_dir_all(node.dir).map_err(|e| SyncError::Io(node.dir.display().to_string(), e))?;
        let conf = node.dir.join("conntrackd.conf");
        std::fs::write(&conf, config::render(node)).map_err(|e| SyncError::Io(conf.display().to_string(), e))?;
        // A lock left by a conntrackd that died with a previous speaker would stop this one.
        let _ = std::fs::remove_file(config::lock(node.dir));
        let _ = std::fs::remove_file(config::socket(node.dir));
        let mut cmd = Command::new("conntrackd");
        cmd.arg("-C").arg(&conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: the hook only makes an async-signal-safe system call.
        unsafe { cmd.pre_exec(crate::child::die_with_parent) };
        let child = cmd.spawn().map_err(|e| SyncError::Io("conntrackd".into(), e))?;
        tracing::info!(conf = %conf.display(), group = config::GROUP, "replicating connections with conntrackd");
        Ok(Self { conf, child, applied: None })
    }

    fn control(&self, flag: &str) -> Result<(), SyncError> {
        let conf = self.conf.to_string_lossy();
        run("conntrackd", &["-C", &conf, flag], None)
    }

    /// Brings the table in line with `r` (what is replicated, what this node owns).
    pub fn set(&mut self, r: &Replicated) -> Result<(), SyncError> {
        if self.applied.as_ref() == Some(r) {
            return Ok(());
        }
        self.applied = None;
        run("nft", &["-f", "-"], Some(&table::render(r)))?;
        self.applied = Some(r.clone());
        Ok(())
    }

    /// Before this node answers for the replicated addresses `taken` (now in `r.owned`): forgets
    /// any entry of its own for them (packets it saw pass before it owned them), commits the
    /// flows the others replicated into the kernel, and starts tracking the addresses. Done in
    /// this order, before the first ARP answer, so that the first packet of every flow that
    /// moves here finds its state.
    pub fn take_over(&mut self, taken: &BTreeSet<IpAddr>, r: &Replicated) -> Result<(), SyncError> {
        let started = Instant::now();
        for ip in taken {
            let ip = ip.to_string();
            for side in ["-s", "-d"] {
                // "0 flow entries have been deleted" is an exit status of 1: nothing to forget.
                let _ = run("conntrack", &["-D", side, &ip], None);
            }
        }
        self.control("-c")?;
        self.set(r)?;
        tracing::info!(addresses = ?taken, took = ?started.elapsed(), "committed the replicated connections");
        Ok(())
    }

    /// Removes the table (the node is leaving for good).
    pub fn remove(&mut self) {
        let _ = run("nft", &["delete", "table", "inet", table::TABLE], None);
        self.applied = None;
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
