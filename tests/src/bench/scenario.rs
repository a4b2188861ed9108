//! What is measured: the servers of each scenario (started in the traced
//! cgroup and pinned) and how load is sent to them.

use super::procfs;
use crate::load::NodeService;
use crate::nginx::Nginx;
use crate::Cgroup;
use anyhow::Result;
use std::net::SocketAddr;

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
    /// gRPC unary (not implemented in the agent yet).
    Grpc,
    /// Kafka produce/consume (not implemented in the agent yet).
    Kafka,
    /// nginx kept-alive, many connections, a 1 MiB ring buffer.
    Overload,
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
    pub const ALL: [Scenario; 7] = [
        Scenario::NginxKeepalive,
        Scenario::NginxClose,
        Scenario::NginxTls,
        Scenario::NodeDownstream,
        Scenario::Grpc,
        Scenario::Kafka,
        Scenario::Overload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::NginxKeepalive => "nginx-keepalive",
            Scenario::NginxClose => "nginx-close",
            Scenario::NginxTls => "nginx-tls",
            Scenario::NodeDownstream => "node-downstream",
            Scenario::Grpc => "grpc",
            Scenario::Kafka => "kafka",
            Scenario::Overload => "overload",
        }
    }

    /// Why the scenario cannot run yet, for the table.
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            Scenario::Grpc => Some("n/a (HTTP/2 / gRPC not implemented)"),
            Scenario::Kafka => Some("n/a (Kafka not implemented)"),
            _ => None,
        }
    }

    /// Loads, lowest first: an agent's peak RSS at a fixed rate is then not
    /// raised by the maximum-load run that follows.
    pub fn loads(self, quick: bool) -> Vec<Load> {
        match self {
            Scenario::Overload => vec![Load::Max],
            Scenario::NginxKeepalive => vec![Load::Rate(2000), Load::Rate(10_000), Load::Max],
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
}

/// A scenario's servers, listening and pinned.
pub struct Target {
    pub addr: SocketAddr,
    pub path: &'static str,
    pub tls: bool,
    pub keepalive: bool,
    // Held for their Drop, which stops them.
    _nginx: Nginx,
    _node: Option<NodeService>,
}

impl Target {
    /// Starts the servers of `scenario` inside `cg`, every thread of them
    /// pinned to `cpu`.
    pub fn start(scenario: Scenario, cg: &Cgroup, cpu: Option<usize>) -> Result<Self> {
        let tls = scenario == Scenario::NginxTls;
        let nginx = Nginx::start_bench(cg, tls)?;
        let node = match scenario {
            Scenario::NodeDownstream => Some(NodeService::start(
                cg,
                "bench-node",
                &nginx.url("/index.html"),
            )?),
            _ => None,
        };
        let port = node.as_ref().map_or(nginx.port, |n| n.port);
        if let Some(cpu) = cpu {
            for pid in cg.pids() {
                procfs::pin_process(pid as u32, cpu)?;
            }
        }
        Ok(Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            path: "/index.html",
            tls,
            keepalive: scenario.keepalive(),
            _nginx: nginx,
            _node: node,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, self.path)
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
    fn fixed_rates_come_before_the_maximum() {
        for s in Scenario::ALL {
            for quick in [false, true] {
                let loads = s.loads(quick);
                assert_eq!(loads.last(), Some(&Load::Max), "{s:?}");
            }
        }
    }
}
