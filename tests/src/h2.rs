//! HTTP/2 peers: nghttp2's `nghttpd` server and `h2load` load generator
//! (Debian nghttp2-server, nghttp2-client), Node.js `http2`
//! (`tests/peers/node_h2.js`), and the Python `h2` witness that records
//! every header list it decodes (`tests/peers/h2_server.py`), all run
//! inside a test's cgroup.

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python};
use crate::net::{free_port, wait_listening, wait_listening_local};
use crate::process::{Supervised, TempDir};
use crate::tls::TestCert;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `service.name` of the nghttp2 peers' spans.
pub const NGHTTPD: &str = "nghttpd";
pub const H2LOAD: &str = "h2load";

/// `nghttpd --no-tls` serving a directory of small files.
pub struct Nghttpd {
    pub port: u16,
    root: PathBuf,
    _proc: Supervised,
    _dir: TempDir,
}

impl Nghttpd {
    /// Serves `/a.txt` .. `/f.txt` (a few bytes each) and `/index.html`.
    pub fn start(cg: &Cgroup) -> Result<Self> {
        let dir = TempDir::new("nghttpd")?;
        let root = dir.join("www");
        std::fs::create_dir(&root)?;
        for name in ["a", "b", "c", "d", "e", "f"] {
            std::fs::write(root.join(format!("{name}.txt")), format!("{name}\n"))?;
        }
        std::fs::write(root.join("index.html"), "<html>clew h2</html>\n")?;
        let port = free_port()?;
        let mut cmd = Command::new("nghttpd");
        cmd.args(["--no-tls", "--address", "127.0.0.1", "-d"])
            .arg(&root)
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", NGHTTPD);
        let proc = Supervised::start("nghttpd", &mut cmd, dir.join("nghttpd.log"), |c| {
            cg.spawn(c)
        })
        .context("starting nghttpd (apt-get install nghttp2-server)")?;
        wait_listening_local(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(Nghttpd {
            port,
            root,
            _proc: proc,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// `n` distinct header values of `len` bytes each (`-H` arguments for
/// h2load): together larger than HPACK's default 4 KiB dynamic table, so
/// every request evicts entries the previous one inserted.
pub fn evicting_headers(n: usize, len: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let fill: String = (0..len)
                .map(|j| char::from(b'a' + ((i * 7 + j) % 26) as u8))
                .collect();
            format!("x-clew-long-{i}: {fill}")
        })
        .collect()
}

/// h2load's summary.
#[derive(Clone, Debug, Default)]
pub struct H2LoadResult {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    pub seconds: f64,
    pub status_2xx: u64,
    pub output: String,
}

impl H2LoadResult {
    pub fn errors(&self) -> u64 {
        self.failed + self.errored + self.timeout
    }
}

/// An `h2load` command line: `clients` connections, `streams` concurrent
/// streams each, `requests` requests in all (`None`: timed, see `-D`).
pub fn h2load_command(urls: &[String], clients: usize, streams: usize) -> Command {
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", &clients.to_string()])
        .args(["-m", &streams.to_string()])
        // The default, stated: the eviction in `evicting_headers` relies on it.
        .args(["--encoder-header-table-size", "4096"])
        .env("OTEL_SERVICE_NAME", H2LOAD);
    cmd.args(urls);
    cmd
}

/// Runs `cmd` (from `h2load_command`) to completion inside `cg`.
pub fn run_h2load(cg: &Cgroup, cmd: &mut Command, timeout: Duration) -> Result<H2LoadResult> {
    let out = cg
        .run(cmd, timeout)
        .context("running h2load (apt-get install nghttp2-client)")?;
    let r = parse_h2load(&out.stdout).with_context(|| {
        format!(
            "unexpected h2load output ({}):\n{}\n{}",
            out.status, out.stdout, out.stderr
        )
    })?;
    Ok(r)
}

fn num_before(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)?;
    text[..at]
        .split([' ', ','])
        .rfind(|w| !w.is_empty())?
        .parse()
        .ok()
}

pub fn parse_h2load(out: &str) -> Result<H2LoadResult> {
    let req = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("no 'requests:' line")?;
    let get = |k: &str| num_before(req, k).with_context(|| format!("{k:?} in {req:?}"));
    let finished = out
        .lines()
        .find(|l| l.starts_with("finished in "))
        .context("no 'finished in' line")?;
    let took = finished["finished in ".len()..]
        .split(',')
        .next()
        .unwrap_or("");
    let seconds = if let Some(ms) = took.strip_suffix("ms") {
        ms.parse::<f64>()? / 1e3
    } else if let Some(us) = took.strip_suffix("us") {
        us.parse::<f64>()? / 1e6
    } else if let Some(s) = took.strip_suffix('s') {
        s.parse::<f64>()?
    } else {
        bail!("duration {took:?}")
    };
    let status_2xx = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .and_then(|l| num_before(l, " 2xx"))
        .unwrap_or(0);
    Ok(H2LoadResult {
        total: get(" total")?,
        succeeded: get(" succeeded")?,
        failed: get(" failed")?,
        errored: get(" errored")?,
        timeout: get(" timeout")?,
        seconds,
        status_2xx,
        output: out.to_string(),
    })
}

/// Request latencies in ns, sorted, from an `h2load --log-file`:
/// tab-separated start (µs since the epoch), status, duration (µs).
pub fn h2load_latencies_ns(log: &Path) -> Result<Vec<u64>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut v: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<u64>().ok())
        .map(|us| us * 1000)
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// `h2_server.py` on 127.0.0.1: every request's header list exactly as
/// its HPACK decoder produced it, and every connection error.
pub struct H2Witness {
    pub port: u16,
    record: PathBuf,
    _proc: Supervised,
    _dir: TempDir,
}

impl H2Witness {
    pub fn start(cg: &Cgroup) -> Result<Self> {
        let py = python()?;
        let dir = TempDir::new("h2-witness")?;
        let port = free_port()?;
        let record = dir.join("received.jsonl");
        let mut cmd = Command::new(&py.path);
        cmd.arg(peers_dir().join("h2_server.py"))
            .args(["--port", &port.to_string()])
            .arg("--record")
            .arg(&record)
            .env("PYTHONUNBUFFERED", "1");
        let proc = Supervised::start("h2 server", &mut cmd, dir.join("server.log"), |c| {
            cg.spawn(c)
        })?;
        wait_listening(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(H2Witness {
            port,
            record,
            _proc: proc,
            _dir: dir,
        })
    }

    /// What it recorded so far, one JSON object per request (`peer`,
    /// `stream`, `headers`: name and value pairs) or error (`error`).
    pub fn records(&self) -> Result<Vec<serde_json::Value>> {
        std::fs::read_to_string(&self.record)
            .with_context(|| format!("reading {}", self.record.display()))?
            .lines()
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }
}

/// `service.name` of the Node.js http2 client's spans.
pub const NODE_H2_CLIENT: &str = "node-h2-client";

/// `tests/peers/node_h2.js server`: answers /work and /fail itself, any
/// other path with one GET of its downstream on one http2 session.
pub struct NodeH2 {
    pub port: u16,
    pub scheme: &'static str,
    _proc: Supervised,
    _dir: TempDir,
}

impl NodeH2 {
    pub fn start(
        cg: &Cgroup,
        name: &str,
        downstream: Option<&str>,
        tls: Option<&TestCert>,
    ) -> Result<Self> {
        let dir = TempDir::new("node-h2")?;
        let port = free_port()?;
        let mut cmd = Command::new("node");
        cmd.arg(peers_dir().join("node_h2.js"))
            .args(["server", &format!("127.0.0.1:{port}")])
            .env("OTEL_SERVICE_NAME", name);
        if let Some(d) = downstream {
            cmd.args(["--downstream", d]);
        }
        if let Some(c) = tls {
            cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
        }
        let proc = Supervised::start(name, &mut cmd, dir.join("node.log"), |c| cg.spawn(c))
            .context("starting node (is Node.js installed?)")?;
        wait_listening_local(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(NodeH2 {
            port,
            scheme: if tls.is_some() { "https" } else { "http" },
            _proc: proc,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }
}

/// `node_h2.js client`: `count` GETs of `url` on one http2 session,
/// `concurrency` at a time; fails unless all answered 200.
pub fn node_h2_client(cg: &Cgroup, url: &str, count: usize, concurrency: usize) -> Result<()> {
    let mut cmd = Command::new("node");
    cmd.arg(peers_dir().join("node_h2.js"))
        .args(["client", url, &count.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .env("OTEL_SERVICE_NAME", NODE_H2_CLIENT);
    let out = cg.run(&mut cmd, Duration::from_secs(60))?;
    let out = out
        .ok()
        .with_context(|| format!("node_h2.js client {url}"))?;
    let n = out.stdout.lines().filter(|l| l.trim() == "200").count();
    if n != count {
        bail!(
            "node_h2.js client {url}: {n} of {count} answered 200\n{}",
            out.stdout
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_output() {
        let out = "starting benchmark...
progress: 100% done

finished in 254.33ms, 19659.50 req/s, 596.77KB/s
requests: 5000 total, 5000 started, 4998 done, 4990 succeeded, 10 failed, 2 errored, 1 timeout
status codes: 4990 2xx, 0 3xx, 0 4xx, 8 5xx
traffic: 151.78KB (155420) total, 49.14KB (50324) headers (space savings 94.25%), 14.65KB (15000) data
";
        let r = parse_h2load(out).unwrap();
        assert_eq!(
            (
                r.total,
                r.succeeded,
                r.failed,
                r.errored,
                r.timeout,
                r.status_2xx
            ),
            (5000, 4990, 10, 2, 1, 4990)
        );
        assert!((r.seconds - 0.25433).abs() < 1e-9);
        assert_eq!(r.errors(), 13);
        let secs = parse_h2load(&out.replace("254.33ms", "2.01s")).unwrap();
        assert!((secs.seconds - 2.01).abs() < 1e-9);
        assert!(parse_h2load("nothing").is_err());
    }

    #[test]
    fn headers_overflow_the_dynamic_table() {
        let h = evicting_headers(6, 900);
        assert_eq!(h.len(), 6);
        // HPACK entry size: name + value + 32.
        let size: usize = h
            .iter()
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                k.len() + v.len() + 32
            })
            .sum();
        assert!(size > 4096, "{size}");
        let distinct: std::collections::HashSet<_> = h.iter().collect();
        assert_eq!(distinct.len(), 6);
    }
}
