//! Long-lived TCP connections through the lab, as users have them (databases, websockets): a line
//! echo server in every pod, and a client that sends a line every 50 ms over one connection and
//! checks that each comes back — a stream is cut when the connection fails or falls silent. And a
//! prober that opens a new connection every 10 ms. Both run in the client's namespace on threads
//! of their own until stopped.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Lab;
use super::netns::{self, LabError};
use super::probe::tcp_once;

/// A stream falls silent for this long: cut (a connection that lost its state hangs like this).
const SILENCE: Duration = Duration::from_secs(5);

impl Lab {
    /// Starts a line echo server on `port` (TCP, both families) in every pod namespace.
    pub fn start_line_echo(&self, port: u16) -> Result<Vec<tokio::task::JoinHandle<()>>, LabError> {
        let mut tasks = Vec::new();
        for pod in &self.topology.pods {
            let tcp = netns::in_ns(&pod.namespace, || std::net::TcpListener::bind(("::", port)))??;
            tcp.set_nonblocking(true)?;
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            tasks.push(tokio::spawn(async move {
                while let Ok((mut s, _)) = tcp.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }));
        }
        Ok(tasks)
    }
}

/// What one stream saw.
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// Lines sent.
    pub sent: u64,
    /// Lines that came back.
    pub echoed: u64,
    /// Why the stream ended early, if it did.
    pub cut: Option<String>,
    /// The longest time without an echo while lines were outstanding.
    pub longest_stall: Duration,
}

/// A running stream; [`Stream::stop`] ends it and reports.
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<StreamReport>,
}

fn in_namespace(ns: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on a valid namespace fd changes only the calling thread, which is ours.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Stream {
    /// Opens a connection to `target` from namespace `ns` and starts sending.
    pub fn open(ns: &str, target: SocketAddr) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut report = StreamReport { sent: 0, echoed: 0, cut: None, longest_stall: Duration::ZERO };
            if let Err(e) = in_namespace(&ns) {
                report.cut = Some(format!("namespace: {e}"));
                return report;
            }
            match run(target, &flag, &mut report) {
                Ok(()) => {}
                Err(e) => report.cut = Some(e),
            }
            report
        });
        Stream { stop, thread }
    }

    /// Stops sending, waits for the outstanding echoes, and reports.
    pub fn stop(self) -> StreamReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| StreamReport {
            sent: 0,
            echoed: 0,
            cut: Some("the stream thread panicked".into()),
            longest_stall: Duration::ZERO,
        })
    }
}

fn run(target: SocketAddr, stop: &AtomicBool, r: &mut StreamReport) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(10))).map_err(|e| e.to_string())?;
    let mut next_send = Instant::now();
    let mut last_echo = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(now);
        }
        if stopped_at.is_none() && now >= next_send {
            s.write_all(format!("{}\n", r.sent).as_bytes()).map_err(|e| format!("write: {e}"))?;
            if r.sent == r.echoed {
                // Nothing was outstanding: a stall is measured from here.
                last_echo = now;
            }
            r.sent += 1;
            next_send += Duration::from_millis(50);
        }
        let read = s.read(&mut buf);
        let now = Instant::now();
        match read {
            Ok(0) => return Err("closed by the other side".into()),
            Ok(n) => {
                let lines = buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                if lines > 0 {
                    r.longest_stall = r.longest_stall.max(now.duration_since(last_echo));
                    last_echo = now;
                    r.echoed += lines;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if r.echoed < r.sent && now.duration_since(last_echo) > SILENCE {
            r.longest_stall = r.longest_stall.max(now.duration_since(last_echo));
            return Err(format!("silent for {SILENCE:?} with {} lines outstanding", r.sent - r.echoed));
        }
        if stopped_at.is_some() && r.echoed >= r.sent {
            return Ok(());
        }
    }
}

/// Opens connections to `target` from namespace `ns` one after another, as fast as they complete,
/// for `span`: (connections completed, connections failed). Each reads the backend's whole answer.
pub fn connect_back_to_back(ns: &str, target: SocketAddr, span: Duration) -> (u64, u64) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        if in_namespace(&ns).is_err() {
            return (0, 1);
        }
        let (mut ok, mut failed) = (0, 0);
        let started = Instant::now();
        let mut sink = Vec::new();
        while started.elapsed() < span {
            let done = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                sink.clear();
                s.read_to_end(&mut sink)
            });
            match done {
                Ok(n) if n > 0 => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    })
    .join()
    .unwrap_or((0, 1))
}

/// Opens a new connection every 10 ms, round robin over `targets`, until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, Vec<String>)>,
}

impl Prober {
    /// Starts probing from namespace `ns`.
    pub fn start(ns: &str, targets: Vec<SocketAddr>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let started = Instant::now();
            for target in targets.iter().cycle() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                match tcp_once(&ns, *target) {
                    Some(_) => ok += 1,
                    None => failed.push(format!("{target} at {:?}", started.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        });
        Prober { stop, thread }
    }

    /// Stops; the connections that succeeded and those that failed (which, and when).
    pub fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, vec!["the prober panicked".into()]))
    }
}
