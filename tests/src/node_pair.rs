//! The two-node scenario: service A on node A calls service B on node B
//! (network namespaces joined by a veth pair), each node with its own
//! cgroup, OTLP receiver and agent. The agents run in the root namespace:
//! they observe through tracepoints and cgroup programs, which do not
//! depend on the namespace of the processes they trace.

use crate::netns::TwoNodes;
use crate::peers::{curl_in, PyService};
use crate::tls::TestCert;
use crate::{Agent, Cgroup, Protocol, Receiver};
use anyhow::{bail, Result};

pub struct NodePairOpts<'a> {
    /// Names the cgroups.
    pub tag: &'a str,
    pub addr_a: &'a str,
    pub addr_b: &'a str,
    /// Extra `clew run` arguments for both agents.
    pub agent_args: &'a [&'a str],
    /// Service B speaks HTTPS with this certificate (A calls it over TLS).
    pub tls_b: Option<&'a TestCert>,
}

/// Fields drop in order: agents (printing their logs), services, cgroups,
/// and the namespaces last, once no process lives in them.
pub struct NodePair {
    pub agent_a: Agent,
    pub agent_b: Agent,
    pub rx_a: Receiver,
    pub rx_b: Receiver,
    pub svc_a: PyService,
    pub svc_b: PyService,
    pub cg_a: Cgroup,
    pub cg_b: Cgroup,
    pub nodes: TwoNodes,
}

impl NodePair {
    pub fn start(o: NodePairOpts<'_>) -> Result<Self> {
        let nodes = TwoNodes::create(o.addr_a, o.addr_b)?;
        let cg_a = Cgroup::new(&format!("{}-a", o.tag))?;
        let cg_b = Cgroup::new(&format!("{}-b", o.tag))?;
        let rx_a = Receiver::start(Protocol::Grpc)?;
        let rx_b = Receiver::start(Protocol::Grpc)?;
        let agent_a = Agent::start(&cg_a, &rx_a.endpoint(), Protocol::Grpc, o.agent_args)?;
        let agent_b = Agent::start(&cg_b, &rx_b.endpoint(), Protocol::Grpc, o.agent_args)?;
        let mut b = PyService::opts("svc-b").bind(o.addr_b).netns(&nodes.b);
        if let Some(cert) = o.tls_b {
            b = b.tls(cert);
        }
        let svc_b = b.start(&cg_b)?;
        let svc_a = PyService::opts("svc-a")
            .bind(o.addr_a)
            .netns(&nodes.a)
            .downstream(&svc_b.url(""))
            .start(&cg_a)?;
        Ok(NodePair {
            agent_a,
            agent_b,
            rx_a,
            rx_b,
            svc_a,
            svc_b,
            cg_a,
            cg_b,
            nodes,
        })
    }

    /// curl, on node A, GETs `path` of service A and expects 200.
    pub fn get(&self, path: &str) -> Result<()> {
        let url = self.svc_a.url(path);
        let status = curl_in(&self.cg_a, Some(&self.nodes.a), &url, &[])?;
        if status != 200 {
            bail!(
                "curl {url} in {}: status {status}\n{}\n{}",
                self.nodes.a.name(),
                self.svc_a.log(),
                self.svc_b.log()
            );
        }
        Ok(())
    }

    /// Both agents still healthy, then stopped.
    pub fn stop(mut self) -> Result<()> {
        self.agent_a.ensure_healthy()?;
        self.agent_b.ensure_healthy()?;
        self.agent_a.stop()?;
        self.agent_b.stop()
    }
}
