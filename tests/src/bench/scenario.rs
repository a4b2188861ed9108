//! What is measured: the servers of each scenario (started in the traced
//! cgroup and pinned) and how load is sent to them.

use super::{pacer, procfs};
use crate::grpc::{GrpcService, SERVICE};
use crate::h2::Nghttpd;
use crate::kafka::Broker;
use crate::load::NodeService;
use crate::nginx::Nginx;
use crate::process::TempDir;
use crate::Cgroup;
use anyhow::Result;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// nginx static file, HTTP/1.1, kept-alive connections.
    NginxKeepalive,
    /// nginx static file, HTTP/1.1, a new connection per request.
    NginxClose,
    /// nginx static file over HTTPS, kept-alive connections.
    NginxTls,
    /// Node.js service making one downstream call (to nginx) per request.
    NodeDownstream,
    /// HTTP/2: h2load against nghttpd (static file), kept-alive
    /// connections, several concurrent streams each.
    H2Nghttpd,
    /// gRPC unary: h2load sending gRPC-framed POSTs to a grpcio service.
    Grpc,
    /// Kafka: one record per Produce request (`acks=1`) to a tansu
    /// broker, from the bench's own producer.
    Kafka,
    /// nginx kept-alive, many connections, a 1 MiB ring buffer.
    Overload,
    /// nginx kept-alive, each request noted in its error log while it is
    /// served (`rewrite_log`) and in its access log after: what log
    /// capture costs.
    NginxLogging,
}

/// How much load: closed-loop maximum, or a fixed rate (req/s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    Max,
    Rate(u32),
}

impl Load {
    pub fn label(self) -> String {
        match self {
            Load::Max => "max".into(),
            Load::Rate(r) if r % 1000 == 0 => format!("{}k/s", r / 1000),
            Load::Rate(r) => format!("{r}/s"),
        }
    }
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::NginxKeepalive,
        Scenario::NginxClose,
        Scenario::NginxTls,
        Scenario::NodeDownstream,
        Scenario::H2Nghttpd,
        Scenario::Grpc,
        Scenario::Kafka,
        Scenario::Overload,
        Scenario::NginxLogging,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::NginxKeepalive => "nginx-keepalive",
            Scenario::NginxClose => "nginx-close",
            Scenario::NginxTls => "nginx-tls",
            Scenario::NodeDownstream => "node-downstream",
            Scenario::H2Nghttpd => "h2-nghttpd",
            Scenario::Grpc => "grpc",
            Scenario::Kafka => "kafka",
            Scenario::Overload => "overload",
            Scenario::NginxLogging => "nginx-logging",
        }
    }

    /// Loads, lowest first: an agent's peak RSS at a fixed rate is then not
    /// raised by the maximum-load run that follows.
    pub fn loads(self, quick: bool) -> Vec<Load> {
        match self {
            Scenario::Overload => vec![Load::Max],
            Scenario::NginxKeepalive => vec![Load::Rate(2000), Load::Rate(10_000), Load::Max],
            // One Python process serves it: a few thousand calls/s at most.
            Scenario::Grpc => vec![Load::Rate(1000), Load::Max],
            // tansu acknowledges about 15k Produce requests/s on one core
            // here: 10k/s would measure its queue more than the agent.
            Scenario::Kafka => vec![Load::Rate(2000), Load::Max],
            Scenario::NginxLogging => vec![Load::Rate(2000), Load::Max],
            _ if quick => vec![Load::Rate(2000), Load::Max],
            Scenario::NodeDownstream => vec![Load::Rate(2000), Load::Max],
            _ => vec![Load::Rate(2000), Load::Rate(10_000), Load::Max],
        }
    }

    /// Extra agent arguments (every traced mode).
    pub fn agent_args(self) -> &'static [&'static str] {
        match self {
            Scenario::Overload => &["--ringbuf-mib", "1"],
            _ => &[],
        }
    }

    /// wrk's threads and connections for the closed-loop maximum.
    pub fn wrk_shape(self) -> (usize, usize) {
        match self {
            Scenario::Overload => (2, 256),
            Scenario::NginxClose => (1, 16),
            _ => (1, 32),
        }
    }

    pub fn keepalive(self) -> bool {
        self != Scenario::NginxClose
    }

    /// h2load's clients (connections) and streams per connection, for the
    /// HTTP/2 scenarios.
    pub fn h2load_shape(self) -> (usize, usize) {
        match self {
            Scenario::Grpc => (2, 8),
            _ => (4, 10),
        }
    }
}

/// How h2load loads an HTTP/2 target.
pub struct H2Load {
    pub url: String,
    /// `-H` headers.
    pub headers: Vec<String>,
    /// `-d`: the request body (requests become POSTs).
    pub data: Option<PathBuf>,
}

/// One gRPC message `hello` in its length-prefixed frame: uncompressed
/// flag, 4-byte big-endian length, bytes.
pub fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// What loads a target.
pub enum Generator {
    /// The bench's own generator (`pacer`), at every load but HTTP/1's
    /// closed-loop maximum, which wrk runs.
    Pacer(pacer::Request),
    /// HTTP/2: h2load at every load.
    H2load(H2Load),
}

/// A scenario's servers, listening and pinned.
pub struct Target {
    pub addr: SocketAddr,
    pub generator: Generator,
    // Held for their Drop, which stops them.
    _nginx: Option<Nginx>,
    _node: Option<NodeService>,
    _nghttpd: Option<Nghttpd>,
    _grpc: Option<GrpcService>,
    _broker: Option<Broker>,
    _dir: Option<TempDir>,
}

/// The topic the Kafka scenario produces to (one partition).
const KAFKA_TOPIC: &str = "bench";
/// The Kafka producer's connections for the closed-loop maximum, one
/// request in flight on each, as on wrk's.
pub const KAFKA_CONNECTIONS: usize = 8;

impl Target {
    /// Starts the servers of `scenario` inside `cg`, every thread of them
    /// pinned to `cpu`.
    pub fn start(scenario: Scenario, cg: &Cgroup, cpu: Option<usize>) -> Result<Self> {
        let target = match scenario {
            Scenario::H2Nghttpd => Self::nghttpd(cg)?,
            Scenario::Grpc => Self::grpc(cg)?,
            Scenario::Kafka => Self::kafka(cg)?,
            _ => Self::http1(scenario, cg)?,
        };
        if let Some(cpu) = cpu {
            for pid in cg.pids() {
                procfs::pin_process(pid as u32, cpu)?;
            }
        }
        Ok(target)
    }

    fn http1(scenario: Scenario, cg: &Cgroup) -> Result<Self> {
        let tls = scenario == Scenario::NginxTls;
        let logging = scenario == Scenario::NginxLogging;
        let nginx = Nginx::start_bench(cg, tls, logging)?;
        let node = match scenario {
            Scenario::NodeDownstream => Some(NodeService::start(
                cg,
                "bench-node",
                &nginx.url("/index.html"),
            )?),
            _ => None,
        };
        let port = node.as_ref().map_or(nginx.port, |n| n.port);
        Ok(Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            generator: Generator::Pacer(pacer::Request::Http(pacer::Http {
                path: if logging {
                    "/logged.html"
                } else {
                    "/index.html"
                }
                .into(),
                tls,
                keepalive: scenario.keepalive(),
            })),
            _nginx: Some(nginx),
            _node: node,
            _nghttpd: None,
            _grpc: None,
            _broker: None,
            _dir: None,
        })
    }

    fn nghttpd(cg: &Cgroup) -> Result<Self> {
        let server = Nghttpd::start(cg)?;
        let h2load = H2Load {
            url: server.url("/index.html"),
            headers: Vec::new(),
            data: None,
        };
        Ok(Target {
            addr: SocketAddr::from(([127, 0, 0, 1], server.port)),
            generator: Generator::H2load(h2load),
            _nginx: None,
            _node: None,
            _nghttpd: Some(server),
            _grpc: None,
            _broker: None,
            _dir: None,
        })
    }

    fn grpc(cg: &Cgroup) -> Result<Self> {
        let service = GrpcService::opts("bench-grpc").start(cg)?;
        let dir = TempDir::new("bench-grpc")?;
        let body = dir.join("unary.bin");
        std::fs::write(&body, grpc_frame(b"hello"))?;
        let h2load = H2Load {
            url: format!("http://{}/{SERVICE}/Unary", service.target()),
            headers: vec![
                "content-type: application/grpc".into(),
                "te: trailers".into(),
            ],
            data: Some(body),
        };
        Ok(Target {
            addr: SocketAddr::from(([127, 0, 0, 1], service.port)),
            generator: Generator::H2load(h2load),
            _nginx: None,
            _node: None,
            _nghttpd: None,
            _grpc: Some(service),
            _broker: None,
            _dir: Some(dir),
        })
    }

    /// A tansu broker (in-memory storage) with the bench's topic.
    fn kafka(cg: &Cgroup) -> Result<Self> {
        let broker = Broker::start_in(cg)?;
        broker.create_topic(KAFKA_TOPIC, 1)?;
        Ok(Target {
            addr: SocketAddr::from(([127, 0, 0, 1], broker.port)),
            generator: Generator::Pacer(pacer::Request::KafkaProduce {
                topic: KAFKA_TOPIC.into(),
            }),
            _nginx: None,
            _node: None,
            _nghttpd: None,
            _grpc: None,
            _broker: Some(broker),
            _dir: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_loads() {
        assert_eq!(Load::Max.label(), "max");
        assert_eq!(Load::Rate(10_000).label(), "10k/s");
        assert_eq!(Load::Rate(1500).label(), "1500/s");
    }

    #[test]
    fn frames_a_grpc_message() {
        assert_eq!(grpc_frame(b"hi"), [0, 0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn fixed_rates_come_before_the_maximum() {
        for s in Scenario::ALL {
            for quick in [false, true] {
                let loads = s.loads(quick);
                assert_eq!(loads.last(), Some(&Load::Max), "{s:?}");
            }
        }
    }
}
