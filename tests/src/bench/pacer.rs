//! Open-loop load at a fixed request rate, for latency. wrk only runs
//! closed loops; its `delay()` hook has millisecond timers that send
//! requests in bursts, which would turn the agent's per-request cost into
//! queueing. Here every request has its own send time, evenly spaced.
//!
//! Worker threads each own one connection (kept alive, or a new one per
//! request) and the send times `start + (worker + k * workers) / rate`.
//! Latency is measured from the actual send to the end of the response;
//! sends that started more than `LATE` after their time are counted, so a
//! generator or server falling behind shows instead of hiding.

use anyhow::{bail, Context, Result};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A send that starts this much after its time counts as late.
const LATE: Duration = Duration::from_millis(1);
/// Requests per second one worker is given at most.
const PER_WORKER: u32 = 1000;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Spec {
    pub addr: SocketAddr,
    pub path: String,
    pub tls: bool,
    pub keepalive: bool,
    pub rate: u32,
    pub duration: Duration,
    /// CPU the workers are pinned to.
    pub cpu: Option<usize>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub completed: u64,
    pub errors: u64,
    pub late: u64,
    pub seconds: f64,
    /// Latencies in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
}

impl Outcome {
    /// The latency at percentile `p` (0-100), in seconds.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        percentile_ns(&self.latencies_ns, p).map(|ns| ns as f64 / 1e9)
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile_ns(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn run(spec: &Spec) -> Result<Outcome> {
    if spec.rate == 0 {
        bail!("a paced run needs a rate above 0");
    }
    let workers = spec.rate.div_ceil(PER_WORKER);
    let tls = if spec.tls {
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        // The server's certificate is a throw-away self-signed one.
        b.set_verify(SslVerifyMode::NONE);
        Some(b.build())
    } else {
        None
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: clew-bench\r\n{}\r\n",
        spec.path,
        spec.addr,
        if spec.keepalive {
            ""
        } else {
            "Connection: close\r\n"
        }
    );
    // Leave the workers time to start before the first send.
    let start = Instant::now() + Duration::from_millis(50);
    let period = Duration::from_secs_f64(workers as f64 / spec.rate as f64);
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let worker = Worker {
                spec: spec.clone(),
                tls: tls.clone(),
                request: request.clone(),
                first: start + Duration::from_secs_f64(w as f64 / spec.rate as f64),
                period,
                end: start + spec.duration,
            };
            std::thread::Builder::new()
                .name(format!("pacer-{w}"))
                .spawn(move || worker.run())
        })
        .collect::<std::io::Result<_>>()?;
    let mut total = Outcome {
        seconds: spec.duration.as_secs_f64(),
        ..Outcome::default()
    };
    for h in handles {
        let o = h
            .join()
            .map_err(|_| anyhow::anyhow!("a pacer thread panicked"))??;
        total.completed += o.completed;
        total.errors += o.errors;
        total.late += o.late;
        total.latencies_ns.extend(o.latencies_ns);
    }
    total.latencies_ns.sort_unstable();
    Ok(total)
}

struct Worker {
    spec: Spec,
    tls: Option<SslConnector>,
    request: String,
    first: Instant,
    period: Duration,
    end: Instant,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Worker {
    fn run(self) -> Result<Outcome> {
        if let Some(cpu) = self.spec.cpu {
            super::procfs::pin_self(cpu).context("pinning a pacer thread")?;
        }
        // The default 50 µs timer slack would blur the send times.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
        let mut out = Outcome::default();
        let mut conn: Option<Box<dyn Stream>> = None;
        let mut buf = Vec::with_capacity(16 << 10);
        let mut due = self.first;
        while due < self.end {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let sent = Instant::now();
            if sent - due > LATE {
                out.late += 1;
            }
            match self.exchange(&mut conn, &mut buf) {
                Ok(200) => {
                    out.completed += 1;
                    out.latencies_ns.push(sent.elapsed().as_nanos() as u64);
                }
                Ok(_) | Err(_) => {
                    out.errors += 1;
                    conn = None;
                }
            }
            if !self.spec.keepalive {
                conn = None;
            }
            due += self.period;
        }
        Ok(out)
    }

    /// Sends one request (connecting first when needed) and reads the
    /// response; returns its status.
    fn exchange(&self, conn: &mut Option<Box<dyn Stream>>, buf: &mut Vec<u8>) -> Result<u16> {
        if conn.is_none() {
            *conn = Some(self.connect()?);
        }
        let s = conn.as_mut().expect("connected above");
        s.write_all(self.request.as_bytes())?;
        buf.clear();
        let mut chunk = [0u8; 16 << 10];
        loop {
            if let Some(status) = response_complete(buf)? {
                return Ok(status);
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed mid-response");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn connect(&self) -> Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(self.spec.addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(match &self.tls {
            Some(c) => {
                let mut cfg = c.configure()?;
                cfg.set_verify_hostname(false);
                let s: SslStream<TcpStream> = cfg
                    .connect("127.0.0.1", tcp)
                    .map_err(|e| anyhow::anyhow!("TLS handshake: {e}"))?;
                Box::new(s)
            }
            None => Box::new(tcp),
        })
    }
}

/// `Some(status)` once `buf` holds a whole response (head plus a
/// Content-Length or chunked body), `None` while more is needed.
pub fn response_complete(buf: &[u8]) -> Result<Option<u16>> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let body = &buf[head_len + 4..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().context("bad Content-Length")?;
            return Ok((body.len() >= len).then_some(status));
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            // The peers send small bodies; the last chunk ends the response.
            return Ok(body.ends_with(b"0\r\n\r\n").then_some(status));
        }
    }
    bail!("response without Content-Length or chunked body: {head:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_responses() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(response_complete(whole).unwrap(), Some(200));
        assert_eq!(response_complete(&whole[..whole.len() - 1]).unwrap(), None);
        assert_eq!(response_complete(&whole[..10]).unwrap(), None);
        let chunked =
            b"HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(response_complete(chunked).unwrap(), Some(502));
        assert_eq!(
            response_complete(&chunked[..chunked.len() - 2]).unwrap(),
            None
        );
        assert!(response_complete(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(response_complete(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_ns(&v, 50.0), Some(50));
        assert_eq!(percentile_ns(&v, 99.0), Some(99));
        assert_eq!(percentile_ns(&v, 100.0), Some(100));
        assert_eq!(percentile_ns(&[7], 50.0), Some(7));
        assert_eq!(percentile_ns(&[], 50.0), None);
    }
}
