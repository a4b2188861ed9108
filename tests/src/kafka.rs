//! A Kafka broker (tansu, built and cached by `cargo xtask test`) and the
//! client peers (`tests/peers/kafka_client.py`: kafka-python, or
//! confluent-kafka's librdkafka), each in a cgroup: the test's own when
//! Clew is to trace it, else one of its own.

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python};
use crate::net::{free_port, wait_listening_local};
use crate::process::{Supervised, TempDir};
use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The client library a peer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    /// Pure Python; polls and processes records on the application's thread.
    KafkaPython,
    /// librdkafka (confluent-kafka): fetches on threads of its own.
    Confluent,
}

impl Library {
    fn arg(self) -> &'static str {
        match self {
            Library::KafkaPython => "kafka-python",
            Library::Confluent => "confluent",
        }
    }
}

/// `$CLEW_TEST_TANSU`, set by `cargo xtask test`.
fn tansu() -> Result<PathBuf> {
    let path = std::env::var_os("CLEW_TEST_TANSU")
        .map(PathBuf::from)
        .context("CLEW_TEST_TANSU is not set: run the tests with `cargo xtask test`, which builds the Kafka broker")?;
    ensure!(path.exists(), "{} does not exist", path.display());
    Ok(path)
}

pub struct Broker {
    pub port: u16,
    proc: Supervised,
    _cg: Option<Cgroup>,
    _dir: TempDir,
}

impl Broker {
    /// A broker Clew does not trace.
    pub fn start() -> Result<Self> {
        let cg = Cgroup::new("kafka-broker")?;
        let mut b = Self::start_in(&cg)?;
        b._cg = Some(cg);
        Ok(b)
    }

    /// A broker inside `cg` (traced when `cg` is).
    pub fn start_in(cg: &Cgroup) -> Result<Self> {
        let dir = TempDir::new("kafka-broker")?;
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tansu()?);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("RUST_LOG", "warn");
        let proc = Supervised::start("tansu", &mut cmd, dir.join("broker.log"), |c| cg.spawn(c))?;
        wait_listening_local(port, START_TIMEOUT, || proc.log_tail(40))?;
        Ok(Broker {
            port,
            proc,
            _cg: None,
            _dir: dir,
        })
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        self.proc.log_tail(40)
    }

    /// Waits until a request sits unread in one of the broker's sockets
    /// (the broker stopped: nothing reads it).
    pub fn wait_unread_request(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        let filter = format!("( sport = :{} )", self.port);
        loop {
            let out = Command::new("ss")
                .args(["-Htn", "state", "established", &filter])
                .output()
                .context("running ss")?;
            let text = String::from_utf8_lossy(&out.stdout);
            // Columns: Recv-Q Send-Q Local Peer.
            let unread = text.lines().any(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|q| q.parse::<u64>().ok())
                    .is_some_and(|q| q > 0)
            });
            if unread {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                let all = Command::new("ss")
                    .args(["-Htanp", &filter])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                bail!("no request reached the broker's sockets:\n{text}\nits sockets in any state:\n{all}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends the broker process `signal` (SIGSTOP to stall it, SIGKILL to
    /// make the kernel close its connections).
    pub fn signal(&self, signal: i32) -> Result<()> {
        // SAFETY: a signal to a child process this broker owns.
        let rc = unsafe { libc::kill(self.proc.pid() as i32, signal) };
        ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Creates `topic` with `partitions` partitions (a client outside any
    /// traced cgroup does it).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let cg = Cgroup::new("kafka-admin")?;
        let out = cg.run(
            peer(&[
                "create-topic",
                "--bootstrap",
                &self.bootstrap(),
                "--topic",
                topic,
            ])?
            .args(["--partitions", &partitions.to_string()]),
            CLIENT_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!(
                "creating topic {topic} failed:\n{}\n{}",
                out.stderr,
                self.log()
            );
        }
        Ok(())
    }
}

fn peer(args: &[&str]) -> Result<Command> {
    let py = python()?;
    let mut cmd = Command::new(&py.path);
    cmd.arg(peers_dir().join("kafka_client.py"))
        .args(args)
        .env("PYTHONUNBUFFERED", "1");
    Ok(cmd)
}

/// Peer subcommand `sub` of `library` on `topic` of `broker`.
fn client(sub: &str, broker: &Broker, topic: &str, library: Library) -> Result<Command> {
    peer(&[
        sub,
        "--bootstrap",
        &broker.bootstrap(),
        "--topic",
        topic,
        "--library",
        library.arg(),
    ])
}

/// One acknowledged record, as the producer printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

/// One record as the consumer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Received {
    /// Values of header `name`, as text.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
}

/// A producer run: which records, and how.
pub struct Produce<'a> {
    pub library: Library,
    pub topic: &'a str,
    pub values: &'a [&'a str],
    pub partition: Option<u32>,
    pub compression: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
    /// `OTEL_SERVICE_NAME` of the producer process.
    pub service: &'a str,
}

impl<'a> Produce<'a> {
    pub fn new(library: Library, topic: &'a str, values: &'a [&'a str], service: &'a str) -> Self {
        Produce {
            library,
            topic,
            values,
            partition: None,
            compression: None,
            traceparent: None,
            headers: &[],
            service,
        }
    }

    /// Runs the producer in `cg` until every record is acknowledged.
    pub fn run(&self, cg: &Cgroup, broker: &Broker) -> Result<Vec<Acked>> {
        let mut cmd = client("produce", broker, self.topic, self.library)?;
        cmd.env("OTEL_SERVICE_NAME", self.service);
        if let Some(p) = self.partition {
            cmd.args(["--partition", &p.to_string()]);
        }
        if let Some(c) = self.compression {
            cmd.args(["--compression", c]);
        }
        if let Some(tp) = self.traceparent {
            cmd.args(["--traceparent", tp]);
        }
        for (k, v) in self.headers {
            cmd.args(["--header", &format!("{k}={v}")]);
        }
        cmd.args(self.values);
        run_producer(cg, &mut cmd, broker)
    }
}

/// kafka-python sends every record of `values` but the last, acknowledged;
/// then `before_last` runs (the producer waiting), then the last record is
/// sent and `after_last` runs. Then the producer is killed, whatever it
/// made of what they did.
pub fn produce_with_pause(
    cg: &Cgroup,
    broker: &Broker,
    topic: &str,
    values: &[&str],
    service: &str,
    before_last: impl FnOnce() -> Result<()>,
    after_last: impl FnOnce() -> Result<()>,
) -> Result<()> {
    use std::io::BufRead;
    let dir = TempDir::new("kafka-pause")?;
    let go = dir.join("go");
    let stderr = dir.join("stderr.log");
    let mut cmd = client("produce", broker, topic, Library::KafkaPython)?;
    cmd.env("OTEL_SERVICE_NAME", service)
        .arg("--pause-file")
        .arg(&go)
        .args(values)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr)?);
    let mut child = cg.spawn(&mut cmd)?;
    let stdout = child.stdout.take().context("producer stdout")?;
    let mut lines = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok);
    if !lines.any(|l| l.contains("\"paused\"")) {
        let _ = child.kill();
        bail!("the producer ended before pausing\n{}", broker.log());
    }
    let acted = before_last().and_then(|()| {
        std::fs::write(&go, b"")?;
        after_last()
    });
    let _ = child.kill();
    let _ = child.wait();
    // What the producer said after its pause, for a failure to explain.
    acted.map_err(|e| {
        let after: Vec<String> = lines.collect();
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        e.context(format!(
            "the producer after its pause: stdout {after:?}\nstderr:\n{err}\nbroker:\n{}",
            broker.log()
        ))
    })
}

/// Runs peer `cmd` (a `what`) in `cg` to its end; the JSON lines it printed.
fn run_peer(
    cg: &Cgroup,
    cmd: &mut Command,
    broker: &Broker,
    what: &str,
) -> Result<Vec<serde_json::Value>> {
    let out = cg.run(cmd, CLIENT_TIMEOUT)?;
    if !out.status.success() {
        bail!("{what} failed:\n{}\n{}", out.stderr, broker.log());
    }
    out.stdout
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Runs a producer peer to its end; the acknowledgements it printed.
fn run_producer(cg: &Cgroup, cmd: &mut Command, broker: &Broker) -> Result<Vec<Acked>> {
    run_peer(cg, cmd, broker, "producer")?
        .into_iter()
        .map(|v| {
            Ok(Acked {
                partition: v["partition"].as_i64().context("partition")? as i32,
                offset: v["offset"].as_i64().context("offset")?,
            })
        })
        .collect()
}

/// kafka-python sends `count` records of `size` bytes to `topic` from
/// `cg`, each once the one before was acknowledged; their
/// acknowledgements, in order.
pub fn produce_load(
    cg: &Cgroup,
    broker: &Broker,
    topic: &str,
    count: usize,
    size: usize,
    service: &str,
) -> Result<Vec<Acked>> {
    let mut cmd = client("produce-load", broker, topic, Library::KafkaPython)?;
    cmd.env("OTEL_SERVICE_NAME", service).args([
        "--count",
        &count.to_string(),
        "--size",
        &size.to_string(),
    ]);
    run_producer(cg, &mut cmd, broker)
}

/// One record to produce, exactly as the application sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Sends `records` to `topic` all at once from `cg`, so that the client
/// batches them (several records per batch, several partitions per
/// request); their acknowledgements, in order.
pub fn produce_records(
    cg: &Cgroup,
    broker: &Broker,
    library: Library,
    topic: &str,
    records: &[Record],
    compression: Option<&str>,
) -> Result<Vec<Acked>> {
    let dir = TempDir::new("kafka-records")?;
    let spec = dir.join("records.json");
    let hex = |b: &Option<Vec<u8>>| b.as_ref().map(hex::encode);
    let json: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "partition": r.partition,
                "key": hex(&r.key),
                "value": hex(&r.value),
                "headers": r.headers.iter().map(|(k, v)| [k.clone(), hex::encode(v)]).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(&spec, serde_json::to_vec(&json)?)?;
    let mut cmd = client("produce-records", broker, topic, library)?;
    cmd.args(["--spec", &spec.to_string_lossy()]);
    if let Some(c) = compression {
        cmd.args(["--compression", c]);
    }
    run_producer(cg, &mut cmd, broker)
}

/// Runs a consumer in `cg` until it received `count` records of `topic`;
/// with `downstream`, it GETs that URL for each record before it polls again.
pub fn consume(
    cg: &Cgroup,
    broker: &Broker,
    library: Library,
    topic: &str,
    count: usize,
    downstream: Option<&str>,
    service: &str,
) -> Result<Vec<Received>> {
    let group = format!("{topic}-readers");
    let mut cmd = client("consume", broker, topic, library)?;
    cmd.args(["--group", &group]);
    cmd.args(["--count", &count.to_string()])
        .env("OTEL_SERVICE_NAME", service);
    if let Some(d) = downstream {
        cmd.args(["--downstream", d]);
    }
    run_peer(cg, &mut cmd, broker, "consumer")?
        .into_iter()
        .map(|v| {
            let bytes = |v: &serde_json::Value| -> Result<Option<Vec<u8>>> {
                v.as_str().map(hex::decode).transpose().map_err(Into::into)
            };
            let headers = v["headers"]
                .as_array()
                .context("headers")?
                .iter()
                .map(|h| {
                    let k = h[0].as_str().unwrap_or_default().to_owned();
                    Ok((k, hex::decode(h[1].as_str().unwrap_or_default())?))
                })
                .collect::<Result<_>>()?;
            Ok(Received {
                partition: v["partition"].as_i64().context("partition")? as i32,
                offset: v["offset"].as_i64().context("offset")?,
                key: bytes(&v["key"])?,
                value: bytes(&v["value"])?,
                headers,
            })
        })
        .collect()
}
