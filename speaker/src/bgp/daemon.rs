//! BIRD as a child of the speaker: its configuration file, the process (started, restarted when
//! it dies, killed with the speaker), and its control socket through `birdc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// A failure to run or talk to BIRD.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The file could not be written or a program not started.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// BIRD refused the configuration.
    #[error("BIRD refused the configuration: {0}")]
    Refused(String),
    /// birdc answered with an error.
    #[error("birdc {0:?}: {1}")]
    Control(String, String),
}

/// The BIRD daemon this speaker runs.
pub struct Bird {
    dir: PathBuf,
    child: Option<Child>,
    config: Option<String>,
    started: Option<Instant>,
    recover: bool,
}

impl Bird {
    /// A daemon whose files live in `dir` (created if missing).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), child: None, config: None, started: None, recover: false }
    }

    /// Starts the next BIRD in graceful restart recovery (`-R`): the routes of a previous run are
    /// still in the kernel table and the routers are keeping them; it tells them it has sent
    /// everything only once it has.
    pub fn recover(&mut self) {
        self.recover = true;
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    fn file(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    /// Runs `birdc` with `args` against our socket; its output, or the error it printed.
    pub async fn control(&self, args: &[&str]) -> Result<String, DaemonError> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .await
            .map_err(|e| DaemonError::Io("birdc".into(), e))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(DaemonError::Control(
                args.join(" "),
                format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            ));
        }
        Ok(text)
    }

    /// Makes BIRD run `config`: writes the file, starts BIRD if it is not running (again if it
    /// died, at most once a second), or reconfigures the running one when the text changed.
    /// BIRD keeps every session whose protocol's options did not change.
    pub async fn ensure(&mut self, config: &str) -> Result<(), DaemonError> {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::warn!(%status, "BIRD exited; starting it again");
            self.child = None;
        }
        let changed = self.config.as_deref() != Some(config);
        if changed {
            std::fs::create_dir_all(&self.dir).map_err(|e| DaemonError::Io(self.dir.display().to_string(), e))?;
            let tmp = self.dir.join("bird.conf.new");
            std::fs::write(&tmp, config).map_err(|e| DaemonError::Io(tmp.display().to_string(), e))?;
            // Checked before it replaces a working file: BIRD would refuse it, or not start.
            let check = Command::new("bird")
                .arg("-p")
                .arg("-c")
                .arg(&tmp)
                .output()
                .await
                .map_err(|e| DaemonError::Io("bird -p".into(), e))?;
            if !check.status.success() {
                return Err(DaemonError::Refused(String::from_utf8_lossy(&check.stderr).trim().to_string()));
            }
            std::fs::rename(&tmp, self.file()).map_err(|e| DaemonError::Io(self.file().display().to_string(), e))?;
        }
        if self.child.is_none() {
            if self.started.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(());
            }
            self.started = Some(Instant::now());
            // A socket left by a BIRD that died would make the new one refuse to start.
            let _ = std::fs::remove_file(self.socket());
            let mut cmd = Command::new("bird");
            cmd.arg("-f").arg("-c").arg(self.file()).arg("-s").arg(self.socket());
            if std::mem::take(&mut self.recover) {
                cmd.arg("-R");
            }
            cmd.stdin(Stdio::null()).kill_on_drop(true);
            // BIRD dies with the speaker, so that a dead speaker's routes leave the routers (BFD
            // or the hold timer notices).
            // SAFETY: the hook only makes an async-signal-safe system call.
            unsafe { cmd.pre_exec(crate::child::die_with_parent) };
            let child = cmd.spawn().map_err(|e| DaemonError::Io("bird".into(), e))?;
            tracing::info!(pid = child.id(), dir = %self.dir.display(), "started BIRD");
            self.child = Some(child);
            self.config = Some(config.to_string());
            return Ok(());
        }
        if changed {
            let out = self.control(&["configure"]).await?;
            if !out.contains("Reconfigured") && !out.contains("Reconfiguration in progress") {
                return Err(DaemonError::Refused(out.trim().to_string()));
            }
            tracing::info!("reconfigured BIRD");
            self.config = Some(config.to_string());
        }
        Ok(())
    }

    /// Stops BIRD (its sessions close; the routers drop the routes at once).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}
