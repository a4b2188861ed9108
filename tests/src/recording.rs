//! The byte-level peers: `recording_server.py`, an untraced witness of
//! every byte received, and `wire_client.py`, which replays planned sends
//! one system call each (see `wire` for what the bytes must become).

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python};
use crate::net::{free_port, wait_listening};
use crate::process::{self, Supervised, TempDir};
use crate::wire::escape;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What the server answers each request it can frame with.
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// One connection as the recording server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub peer_port: u16,
    pub data: Vec<u8>,
    /// Responses it sent.
    pub answered: usize,
}

/// `recording_server.py` on 127.0.0.1, in a cgroup no agent traces.
pub struct RecordingServer {
    pub port: u16,
    record: PathBuf,
    _proc: Supervised,
    _dir: TempDir,
}

impl RecordingServer {
    pub fn start(cg: &Cgroup) -> Result<Self> {
        let py = python()?;
        let dir = TempDir::new("recording")?;
        let port = free_port()?;
        let record = dir.join("record.jsonl");
        let mut cmd = Command::new(&py.path);
        cmd.arg(peers_dir().join("recording_server.py"))
            .args(["--port", &port.to_string()])
            .arg("--record")
            .arg(&record)
            .env("PYTHONUNBUFFERED", "1");
        let proc = Supervised::start("recording server", &mut cmd, dir.join("server.log"), |c| {
            cg.spawn(c)
        })?;
        wait_listening(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(RecordingServer {
            port,
            record,
            _proc: proc,
            _dir: dir,
        })
    }

    /// The records once `done` holds for them. A client that does not read
    /// until EOF (a traced service's HTTP client) can see its response
    /// before the server has written the connection's record.
    pub fn wait_for(
        &self,
        done: impl Fn(&[Recorded]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Recorded>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records()?;
            if done(&records) || Instant::now() > deadline {
                return Ok(records);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every connection closed so far, in the order they closed.
    pub fn records(&self) -> Result<Vec<Recorded>> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let peer = v["peer"].as_str().context("peer")?;
            let peer_port: u16 = peer.rsplit(':').next().unwrap_or("").parse()?;
            let data = hex::decode(v["data"].as_str().context("data")?)?;
            let answered = v["answered"].as_u64().unwrap_or(0) as usize;
            out.push(Recorded {
                peer_port,
                data,
                answered,
            });
        }
        Ok(out)
    }
}

/// One step of a planned connection.
#[derive(Clone, Debug)]
pub enum Step {
    /// Exactly one send() with these bytes.
    Send(Vec<u8>),
    /// Read this many responses.
    Await(usize),
}

/// A connection for `wire_client.py`.
#[derive(Clone, Debug)]
pub struct PlannedConn {
    pub id: usize,
    pub steps: Vec<Step>,
}

impl PlannedConn {
    pub fn sends(&self) -> impl Iterator<Item = &[u8]> {
        self.steps.iter().filter_map(|s| match s {
            Step::Send(b) => Some(&b[..]),
            Step::Await(_) => None,
        })
    }

    fn to_json(&self) -> String {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Send(b) => serde_json::json!(["send", hex::encode(b)]),
                Step::Await(n) => serde_json::json!(["await", n]),
            })
            .collect();
        serde_json::json!({"id": self.id, "steps": steps}).to_string()
    }
}

/// A connection as the client opened it.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub id: usize,
    pub local_port: u16,
    /// SO_COOKIE: the key the kernel side's socket map uses.
    pub cookie: u64,
}

/// A running `wire_client.py`.
pub struct WireClient {
    child: Option<Child>,
    out: PathBuf,
    hold: Option<PathBuf>,
    stdout: PathBuf,
    stderr: PathBuf,
    total: usize,
    _dir: TempDir,
}

impl WireClient {
    /// Starts the client inside `cg` (as `service`), replaying `conns`
    /// against 127.0.0.1:`port` with `threads` connections at a time. With
    /// `hold`, every connection stays open after its steps until `release`.
    pub fn spawn(
        cg: &Cgroup,
        service: &str,
        port: u16,
        conns: &[PlannedConn],
        threads: usize,
        hold: bool,
    ) -> Result<Self> {
        let py = python()?;
        let dir = TempDir::new("wire-client")?;
        let plan = dir.join("plan.jsonl");
        let mut text = String::new();
        for c in conns {
            text.push_str(&c.to_json());
            text.push('\n');
        }
        std::fs::write(&plan, text)?;
        let out = dir.join("opened.jsonl");
        let (stdout, stderr) = (dir.join("stdout.log"), dir.join("stderr.log"));
        let hold = hold.then(|| dir.join("release"));
        let mut cmd = Command::new(&py.path);
        cmd.arg(peers_dir().join("wire_client.py"))
            .arg("--plan")
            .arg(&plan)
            .arg("--out")
            .arg(&out)
            .args(["--port", &port.to_string()])
            .args(["--threads", &threads.to_string()])
            .env("OTEL_SERVICE_NAME", service)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?);
        if let Some(h) = &hold {
            cmd.arg("--hold").arg(h);
        }
        let child = cg.spawn(&mut cmd)?;
        Ok(WireClient {
            child: Some(child),
            out,
            hold,
            stdout,
            stderr,
            total: conns.len(),
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The connections opened so far.
    pub fn opened(&self) -> Result<Vec<Opened>> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                Ok(Opened {
                    id: v["id"].as_u64().context("id")? as usize,
                    local_port: v["local_port"].as_u64().context("local_port")? as u16,
                    cookie: v["cookie"].as_u64().context("cookie")?,
                })
            })
            .collect()
    }

    /// Waits until every planned connection is open (for `hold` clients).
    pub fn wait_all_open(&mut self, timeout: Duration) -> Result<Vec<Opened>> {
        let deadline = Instant::now() + timeout;
        loop {
            let opened = self.opened()?;
            if opened.len() == self.total {
                return Ok(opened);
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("wire client exited early ({status})\n{}", self.output());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} connections open after {timeout:?}\n{}",
                    opened.len(),
                    self.total,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lets held connections close.
    pub fn release(&self) -> Result<()> {
        if let Some(h) = &self.hold {
            std::fs::write(h, b"")?;
        }
        Ok(())
    }

    /// Waits for the client to exit 0 (releasing held connections first);
    /// returns the connections it opened, in the order it opened them.
    pub fn finish(mut self, timeout: Duration) -> Result<Vec<Opened>> {
        self.release()?;
        let mut child = self.child.take().context("already finished")?;
        match process::wait_deadline(&mut child, timeout)? {
            Some(s) if s.success() => {}
            Some(s) => bail!("wire client exited with {s}\n{}", self.output()),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "wire client did not finish within {timeout:?}\n{}",
                    self.output()
                );
            }
        }
        let opened = self.opened()?;
        if opened.len() != self.total {
            bail!(
                "wire client opened {} of {} connections\n{}",
                opened.len(),
                self.total,
                self.output()
            );
        }
        Ok(opened)
    }

    fn output(&self) -> String {
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "---- wire client stdout ----\n{}---- wire client stderr ----\n{}---- end ----",
            read(&self.stdout),
            read(&self.stderr)
        )
    }
}

impl Drop for WireClient {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What `server` recorded for each connection in `opened` (in the order
/// they were opened), or an error naming those never recorded.
///
/// Matched by the client's port. Loopback may reuse a port for a later
/// connection, but only after the earlier one closed, and the server
/// records a connection before it closes its side: the k-th connection
/// opened from a port is the k-th recorded from it.
pub fn recorded_for(
    server: &RecordingServer,
    opened: &[Opened],
) -> Result<HashMap<usize, Recorded>> {
    let mut by_port: HashMap<u16, std::collections::VecDeque<Recorded>> = HashMap::new();
    for r in server.records()? {
        by_port.entry(r.peer_port).or_default().push_back(r);
    }
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for o in opened {
        match by_port.get_mut(&o.local_port).and_then(|q| q.pop_front()) {
            Some(r) => {
                out.insert(o.id, r);
            }
            None => missing.push(format!("{} (port {})", o.id, o.local_port)),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} connections were never recorded by the server: {}",
            missing.len(),
            missing
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

/// Short printable form of a connection's sends, for failure messages.
pub fn describe_sends(conn: &PlannedConn) -> String {
    conn.sends()
        .enumerate()
        .map(|(i, s)| {
            let shown = if s.len() > 300 {
                format!("{}...({} bytes)", escape(&s[..300]), s.len())
            } else {
                escape(s)
            };
            format!("    send {i}: {shown}\n")
        })
        .collect()
}
