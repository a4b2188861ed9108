//! Load: wrk as the load generator, the Node.js peer, and stall detection
//! from per-second completion counts. Only errors and stalls are asserted
//! on; latency is the benchmarks' business.

use crate::cgroup::Cgroup;
use crate::env::peers_dir;
use crate::net::{free_port, wait_listening, wait_listening_in};
use crate::netns::Netns;
use crate::process::{self, Supervised, TempDir};
use crate::tls::TestCert;
use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// wrk's summary.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub timeouts: u64,
    /// "Non-2xx or 3xx responses".
    pub bad_status: u64,
    /// Unix time (s) when wrk started and ended.
    pub started: f64,
    pub ended: f64,
    /// `--latency` only: (percentile, seconds), e.g. (50.0, 0.000061).
    pub latency: Vec<(f64, f64)>,
    pub output: String,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The latency at percentile `p` (50, 75, 90 or 99) in seconds, when
    /// wrk ran with `--latency`.
    pub fn latency_at(&self, p: f64) -> Option<f64> {
        self.latency.iter().find(|(q, _)| *q == p).map(|(_, s)| *s)
    }

    pub fn errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.bad_status
    }

    /// Fails unless there were no socket errors, timeouts or non-2xx/3xx
    /// answers and at least `min_requests` requests completed.
    pub fn ensure_clean(&self, what: &str, min_requests: u64) -> Result<()> {
        if self.errors() != 0 || self.requests < min_requests {
            bail!(
                "{what}: wrk saw {} errors (connect {}, read {}, write {}, timeout {}, non-2xx/3xx {}) and {} requests (at least {min_requests} wanted)\n---- wrk output ----\n{}",
                self.errors(),
                self.connect_errors,
                self.read_errors,
                self.write_errors,
                self.timeouts,
                self.bad_status,
                self.requests,
                self.output
            );
        }
        Ok(())
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A running wrk.
pub struct Wrk {
    child: Option<Child>,
    started: f64,
    duration: Duration,
}

impl Wrk {
    /// Starts `wrk -t threads -c connections -d duration url` inside `cg`,
    /// with a 10 s per-request timeout so that a "timeout" means a stall,
    /// not a slow machine.
    pub fn spawn(
        cg: &Cgroup,
        url: &str,
        threads: usize,
        connections: usize,
        duration: Duration,
    ) -> Result<Self> {
        Self::start(
            cg,
            &mut Self::command(url, threads, connections, duration),
            duration,
        )
    }

    /// The command `spawn` runs, for callers that add options (`--latency`,
    /// `-H`, a script).
    pub fn command(url: &str, threads: usize, connections: usize, duration: Duration) -> Command {
        let mut cmd = Command::new("wrk");
        cmd.args(["-t", &threads.to_string()])
            .args(["-c", &connections.to_string()])
            .args(["-d", &format!("{}s", duration.as_secs())])
            .args(["--timeout", "10s"])
            .arg(url);
        cmd
    }

    /// Starts `cmd` (from `command`) inside `cg`; it should end after `duration`.
    pub fn start(cg: &Cgroup, cmd: &mut Command, duration: Duration) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = unix_now();
        let child = cg.spawn(cmd).context("starting wrk (is it installed?)")?;
        Ok(Wrk {
            child: Some(child),
            started,
            duration,
        })
    }

    /// Waits for wrk to end and parses its summary.
    pub fn finish(mut self) -> Result<WrkResult> {
        let child = self.child.take().context("wrk already finished")?;
        let out = process::collect(child, self.duration + Duration::from_secs(30))?.ok()?;
        let mut r = parse_wrk(&out.stdout)
            .with_context(|| format!("unexpected wrk output:\n{}\n{}", out.stdout, out.stderr))?;
        r.started = self.started;
        r.ended = unix_now();
        Ok(r)
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs wrk to completion (see `Wrk::spawn`).
pub fn wrk(
    cg: &Cgroup,
    url: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> Result<WrkResult> {
    Wrk::spawn(cg, url, threads, connections, duration)?.finish()
}

fn num_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    text[at..].split([',', ' ', '\n']).find(|w| !w.is_empty())
}

pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let line = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .context("no 'N requests in T' line")?;
    let mut w = line.split_whitespace();
    let requests = w.next().context("request count")?.parse()?;
    let seconds = w
        .nth(2)
        .context("duration")?
        .trim_end_matches(',')
        .to_string();
    let seconds = parse_duration(&seconds).with_context(|| format!("duration {seconds:?}"))?;
    let mut r = WrkResult {
        requests,
        seconds,
        output: out.to_string(),
        ..Default::default()
    };
    if let Some(errors) = out.lines().find(|l| l.contains("Socket errors:")) {
        let get =
            |k: &str| -> Result<u64> { Ok(num_after(errors, k).context(k.to_string())?.parse()?) };
        r.connect_errors = get("connect ")?;
        r.read_errors = get("read ")?;
        r.write_errors = get("write ")?;
        r.timeouts = get("timeout ")?;
    }
    if let Some(n) = num_after(out, "Non-2xx or 3xx responses:") {
        r.bad_status = n.parse()?;
    }
    r.latency = parse_latency_distribution(out)?;
    Ok(r)
}

/// The `--latency` block: lines `50%  61.00us` after `Latency Distribution`.
fn parse_latency_distribution(out: &str) -> Result<Vec<(f64, f64)>> {
    let Some(at) = out.find("Latency Distribution") else {
        return Ok(Vec::new());
    };
    let mut dist = Vec::new();
    for line in out[at..].lines().skip(1) {
        let mut w = line.split_whitespace();
        let (Some(pct), Some(value)) = (w.next(), w.next()) else {
            break;
        };
        let Some(pct) = pct.strip_suffix('%') else {
            break;
        };
        let pct: f64 = pct.parse().with_context(|| format!("percentile {pct:?}"))?;
        let secs = parse_duration(value).with_context(|| format!("latency {value:?}"))?;
        dist.push((pct, secs));
    }
    Ok(dist)
}

fn parse_duration(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    })
}

/// Completions per whole second in [`from`, `to`) (Unix seconds), from the
/// times requests finished; `Err` lists the seconds with none.
pub fn stalled_seconds(
    times: &[f64],
    from: f64,
    to: f64,
) -> std::result::Result<Vec<usize>, String> {
    let first = from.ceil() as i64;
    let last = to.floor() as i64;
    let mut counts = vec![0usize; (last - first).max(0) as usize];
    for &t in times {
        let s = t.floor() as i64;
        if s >= first && s < last {
            counts[(s - first) as usize] += 1;
        }
    }
    let empty: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] == 0).collect();
    if empty.is_empty() {
        Ok(counts)
    } else {
        Err(format!(
            "no request completed during seconds {:?} of the window (counts per second: {counts:?})",
            empty
        ))
    }
}

/// `tests/peers/node_service.js`: one downstream request per incoming request.
pub struct NodeService {
    /// The address it listens on (127.0.0.1 unless `NodeOpts::netns`).
    pub host: String,
    pub port: u16,
    scheme: &'static str,
    /// Held for its Drop, which stops the service.
    _proc: Supervised,
    _dir: TempDir,
}

/// How a `NodeService` differs from plain HTTP on 127.0.0.1.
#[derive(Clone, Copy, Default)]
pub struct NodeOpts<'a> {
    /// Serve HTTPS with this certificate.
    pub tls: Option<&'a TestCert>,
    /// Listen on this address inside this network namespace.
    pub netns: Option<(&'a Netns, &'a str)>,
}

impl NodeService {
    /// Listens on 127.0.0.1 inside `cg` and forwards every request as a GET
    /// of `downstream` (a full URL) on kept-alive connections.
    pub fn start(cg: &Cgroup, name: &str, downstream: &str) -> Result<Self> {
        Self::start_with(cg, name, downstream, NodeOpts::default())
    }

    /// `start`, adjusted by `opts`.
    pub fn start_with(
        cg: &Cgroup,
        name: &str,
        downstream: &str,
        opts: NodeOpts<'_>,
    ) -> Result<Self> {
        let dir = TempDir::new("node")?;
        let port = free_port()?;
        let host = opts.netns.map_or("127.0.0.1", |(_, addr)| addr);
        let mut cmd = Command::new("node");
        cmd.arg(peers_dir().join("node_service.js"))
            .args([&format!("{host}:{port}"), downstream])
            .env("OTEL_SERVICE_NAME", name);
        if let Some(c) = opts.tls {
            cmd.arg(&c.cert).arg(&c.key);
        }
        if let Some((ns, _)) = opts.netns {
            ns.enter(&mut cmd);
        }
        let proc = Supervised::start(name, &mut cmd, dir.join("node.log"), |c| cg.spawn(c))
            .context("starting node (is Node.js installed?)")?;
        let why_not = || proc.log_tail(40);
        match opts.netns {
            Some((_, addr)) => {
                let ip = addr
                    .parse()
                    .with_context(|| format!("bind address {addr}"))?;
                wait_listening_in(proc.pid(), ip, port, Duration::from_secs(20), why_not)?
            }
            None => wait_listening(port, Duration::from_secs(20), why_not)?,
        }
        Ok(NodeService {
            host: host.to_string(),
            port,
            scheme: if opts.tls.is_some() { "https" } else { "http" },
            _proc: proc,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        format!("{}://{host}:{}{path}", self.scheme, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:1/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   8.00ms   90.00%
    Req/Sec    12.00k     1.00k   14.00k    70.00%
  240000 requests in 10.01s, 50.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  23976.02
Transfer/sec:      5.00MB
";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 240000);
        assert!((r.seconds - 10.01).abs() < 1e-9);
        assert_eq!(
            (
                r.connect_errors,
                r.read_errors,
                r.write_errors,
                r.timeouts,
                r.bad_status
            ),
            (1, 2, 3, 4, 5)
        );
        let clean = parse_wrk("  9 requests in 1.00m, 1KB read\n").unwrap();
        assert_eq!((clean.errors(), clean.seconds), (0, 60.0));
        assert!(clean.latency.is_empty());
    }

    #[test]
    fn parses_latency_distribution() {
        let out = "Running 2s test @ http://127.0.0.1:1/index.html
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    94.12us   40.00us   2.10ms   95.00%
    Req/Sec    60.00k     1.00k   62.00k    70.00%
  Latency Distribution
     50%   61.00us
     75%   90.50us
     90%  150.00us
     99%    1.54ms
  120000 requests in 2.00s, 30.00MB read
Requests/sec:  60000.00
";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.latency.len(), 4);
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
        assert!(close(r.latency_at(50.0), 61e-6));
        assert!(close(r.latency_at(99.0), 1.54e-3));
        assert_eq!(r.latency_at(95.0), None);
        assert!(parse_wrk(&out.replace("61.00us", "61.00zz")).is_err());
    }

    #[test]
    fn finds_stalls() {
        assert_eq!(
            stalled_seconds(&[10.5, 11.2, 12.9], 9.5, 13.5),
            Ok(vec![1, 1, 1])
        );
        assert!(stalled_seconds(&[10.5, 12.9], 9.5, 13.5).is_err());
    }
}
