//! The bench's own load generator, for what wrk cannot do: open-loop load
//! at a fixed request rate (latency), and any load of Kafka Produce
//! requests. wrk only runs closed loops; its `delay()` hook has millisecond
//! timers that send requests in bursts, which would turn the agent's
//! per-request cost into queueing. Here every request has its own send
//! time, evenly spaced.
//!
//! Worker threads each own one connection (kept alive, or a new one per
//! request) and, at a fixed rate, the send times
//! `start + (worker + k * workers) / rate`; in a closed loop each sends
//! its next request as soon as the last one is answered. Latency is
//! measured from the actual send to the end of the response; sends that
//! started more than `LATE` after their time are counted, so a generator or
//! server falling behind shows instead of hiding.

use super::produce;
use super::scenario::Load;
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

/// What each request is.
#[derive(Clone, Debug)]
pub enum Request {
    Http(Http),
    /// One record to partition 0 of `topic`, acknowledged by the leader.
    KafkaProduce {
        topic: String,
    },
}

/// `GET path` over HTTP/1.1, 200 expected.
#[derive(Clone, Debug)]
pub struct Http {
    pub path: String,
    pub tls: bool,
    pub keepalive: bool,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub addr: SocketAddr,
    pub request: Request,
    /// A fixed rate, or a closed loop over `connections`.
    pub load: Load,
    pub connections: usize,
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
    let (workers, period) = match spec.load {
        Load::Rate(0) => bail!("a paced run needs a rate above 0"),
        Load::Rate(rate) => {
            let workers = rate.div_ceil(PER_WORKER);
            let period = Duration::from_secs_f64(workers as f64 / rate as f64);
            (workers as usize, Some(period))
        }
        Load::Max => (spec.connections.max(1), None),
    };
    let client = ClientSpec::new(spec)?;
    // Leave the workers time to start before the first send.
    let start = Instant::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let worker = Worker {
                client: client.clone(),
                cpu: spec.cpu,
                first: start + period.map_or(Duration::ZERO, |p| p * w as u32 / workers as u32),
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
    client: ClientSpec,
    cpu: Option<usize>,
    first: Instant,
    /// Between two sends; `None` in a closed loop.
    period: Option<Duration>,
    end: Instant,
}

impl Worker {
    fn run(self) -> Result<Outcome> {
        if let Some(cpu) = self.cpu {
            super::procfs::pin_self(cpu).context("pinning a pacer thread")?;
        }
        // The default 50 µs timer slack would blur the send times.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
        let mut out = Outcome::default();
        let mut client = Client::new(&self.client);
        let mut due = self.first;
        while due < self.end {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let sent = Instant::now();
            if self.period.is_some() && sent - due > LATE {
                out.late += 1;
            }
            match client.exchange() {
                Ok(()) => {
                    out.completed += 1;
                    out.latencies_ns.push(sent.elapsed().as_nanos() as u64);
                }
                Err(_) => {
                    out.errors += 1;
                    client.conn = None;
                }
            }
            due = match self.period {
                Some(p) => due + p,
                None => Instant::now(),
            };
        }
        Ok(out)
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// What the workers share: how to connect, and the request's bytes.
#[derive(Clone)]
struct ClientSpec {
    addr: SocketAddr,
    request: Request,
    tls: Option<SslConnector>,
    bytes: Vec<u8>,
}

impl ClientSpec {
    fn new(spec: &Spec) -> Result<Self> {
        let (tls, bytes) = match &spec.request {
            Request::Http(Http {
                path,
                tls,
                keepalive,
            }) => {
                let close = if *keepalive {
                    ""
                } else {
                    "Connection: close\r\n"
                };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: clew-bench\r\n{close}\r\n",
                    spec.addr
                );
                let connector = if *tls {
                    let mut b = SslConnector::builder(SslMethod::tls_client())?;
                    // The server's certificate is a throw-away self-signed one.
                    b.set_verify(SslVerifyMode::NONE);
                    Some(b.build())
                } else {
                    None
                };
                (connector, request.into_bytes())
            }
            Request::KafkaProduce { topic } => (None, produce::request(topic, b"clew-bench")?),
        };
        Ok(ClientSpec {
            addr: spec.addr,
            request: spec.request.clone(),
            tls,
            bytes,
        })
    }
}

/// One worker's connection and request.
struct Client<'a> {
    spec: &'a ClientSpec,
    conn: Option<Box<dyn Stream>>,
    bytes: Vec<u8>,
    buf: Vec<u8>,
    /// Kafka correlation id of the next request.
    next_id: i32,
}

impl<'a> Client<'a> {
    fn new(spec: &'a ClientSpec) -> Self {
        Client {
            spec,
            conn: None,
            bytes: spec.bytes.clone(),
            buf: Vec::with_capacity(16 << 10),
            next_id: 0,
        }
    }

    /// Sends one request (connecting first when needed) and reads its
    /// response; an error unless it succeeded.
    fn exchange(&mut self) -> Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match &self.spec.request {
            Request::Http(Http { keepalive, .. }) => {
                conn.write_all(&self.bytes)?;
                let status = read_response(conn, &mut self.buf)?;
                if !keepalive {
                    self.conn = None;
                }
                if status != 200 {
                    bail!("HTTP status {status}");
                }
            }
            Request::KafkaProduce { .. } => {
                self.next_id = self.next_id.wrapping_add(1);
                produce::exchange(conn, &mut self.bytes, self.next_id, &mut self.buf)?;
            }
        }
        Ok(())
    }

    fn connect(&self) -> Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(self.spec.addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(match &self.spec.tls {
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

/// Reads one HTTP response into `buf`; its status.
fn read_response(conn: &mut Box<dyn Stream>, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(status) = response_complete(buf)? {
            return Ok(status);
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
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
