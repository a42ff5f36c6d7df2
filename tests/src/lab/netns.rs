//! Thin wrappers around iproute2 for building the lab: namespaces, links, addresses, routes,
//! sysctls. Everything the lab creates lives inside namespaces it created.

use std::process::Command;

/// Why a lab step failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root to create namespaces.
    #[error("the lab needs root (network namespaces); run it as root")]
    NotRoot,
    /// A tool is missing.
    #[error("{tool} is missing: install {package} (apt-get install {package})")]
    Missing {
        /// The command.
        tool: &'static str,
        /// The Debian package.
        package: &'static str,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// What ran.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// Anything else from the OS.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs a command; its stderr becomes the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    run_with_input(program, args, None)
}

/// Runs a command with `input` on its stdin (none: stdin is closed).
fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, LabError> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LabError::Command { command: program.into(), stderr: "not found".into() },
            _ => LabError::Io(e),
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` with arguments.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// `ip netns exec NS` with a command.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NS` with a command reading `input` on its stdin.
pub fn exec_stdin(ns: &str, program: &str, args: &[&str], input: &str) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run_with_input("ip", &all, Some(input))
}

/// `ip` inside a namespace.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Checks that we are root and that iproute2 and nftables are installed.
pub fn check_prerequisites() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(tool).is_file());
        if !found {
            return Err(LabError::Missing { tool, package });
        }
    }
    Ok(())
}

/// The network namespaces that exist now.
pub fn list() -> Result<Vec<String>, LabError> {
    Ok(ip(&["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect())
}

/// Creates a namespace with its loopback up.
pub fn add(ns: &str) -> Result<(), LabError> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a namespace (and with it every interface inside); missing ones are fine.
pub fn delete(ns: &str) {
    let _ = ip(&["netns", "delete", ns]);
}

/// Sets a sysctl inside a namespace.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    exec(ns, "sysctl", &["-qw", &format!("{key}={value}")]).map(|_| ())
}

/// A veth pair with one end in each namespace, both up.
pub fn veth(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> Result<(), LabError> {
    ip_in(ns_a, &["link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b])?;
    ip_in(ns_a, &["link", "set", name_a, "up"])?;
    ip_in(ns_b, &["link", "set", name_b, "up"])?;
    Ok(())
}

/// The MAC address of an interface.
pub fn mac(ns: &str, dev: &str) -> Result<[u8; 6], LabError> {
    let out = ip_in(ns, &["-j", "link", "show", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| LabError::Command { command: "ip -j link".into(), stderr: e.to_string() })?;
    let text = v[0]["address"].as_str().unwrap_or_default();
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    Ok(mac)
}

/// Runs `f` on a thread inside namespace `ns` (sockets it makes belong to that namespace).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd changes only this short-lived thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(LabError::Io(std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(LabError::Io(std::io::Error::other("the namespace thread panicked"))))
    })
}
