//! One measurement: a load window against a target, with the agent's CPU
//! time, peak RSS and counters read around it.

use super::bpf_stats::{self, Run};
use super::metrics::Counters;
use super::mode::Mode;
use super::pacer;
use super::procfs;
use super::scenario::{Generator, H2Load, Load, Scenario, Target, KAFKA_CONNECTIONS};
use crate::h2;
use crate::load::Wrk;
use crate::process::TempDir;
use crate::{Agent, Cgroup};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// What one load window measured.
#[derive(Clone, Debug)]
pub struct Sample {
    pub scenario: Scenario,
    pub load: Load,
    pub mode: Mode,
    pub round: usize,
    pub requests: u64,
    pub seconds: f64,
    pub errors: u64,
    /// Fixed-rate runs: sends that started late (generator or server behind).
    pub late: Option<u64>,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub agent: Option<AgentUse>,
}

impl Sample {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The agent's side of a window.
#[derive(Clone, Debug, Default)]
pub struct AgentUse {
    /// User + system CPU seconds over the window, all threads.
    pub cpu_s: f64,
    /// VmHWM at the end of the window (since the agent started).
    pub peak_rss: u64,
    /// Ring-buffer records read, and those the kernel could not queue.
    pub events: u64,
    pub lost: u64,
    /// Spans assembled and kept by sampling.
    pub spans: u64,
    /// Share of the agent run's kept spans that reached the receiver
    /// (filled in once the run has settled).
    pub exported: Option<f64>,
    /// Run time of the agent's BPF programs over the window, by program.
    pub bpf: BTreeMap<String, Run>,
}

/// Where load generators run and servers sit.
#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    pub server: Option<usize>,
    pub load: Option<usize>,
}

pub struct Window<'a> {
    pub scenario: Scenario,
    pub mode: Mode,
    pub round: usize,
    pub target: &'a Target,
    pub load_cg: &'a Cgroup,
    pub cpus: Cpus,
    pub duration: Duration,
}

/// Longer than the agent's pause between two drains of its ring buffer
/// (`DRAIN_PAUSE`, 40 ms): a look at its record count this long after
/// another that finds no new record finds the ring drained.
const RING_TAIL: Duration = Duration::from_millis(100);
/// How long an agent behind the load may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(30);

impl Window<'_> {
    pub fn measure(&self, load: Load, agent: Option<&Agent>) -> Result<Sample> {
        let before = agent.map(read_agent).transpose()?;
        // Overload: the agent stops reading for the middle third of the
        // window, as a starved agent on a busy node would. The kernel must
        // shed (and count) what does not fit, and the service not wait.
        let stall = match (self.scenario, agent) {
            (Scenario::Overload, Some(a)) => Some(stall(a.pid(), self.duration)),
            _ => None,
        };
        let sample = match (&self.target.generator, load) {
            (Generator::H2load(spec), load) => self.h2load(spec, load),
            (Generator::Pacer(pacer::Request::Http(http)), Load::Max) => self.closed_loop(http),
            (Generator::Pacer(request), load) => self.paced(request, load),
        };
        if let Some(h) = stall {
            let _ = h.join();
        }
        if let Some(agent) = agent {
            // The window's last requests are still in the ring buffer, and
            // at a maximum load an agent behind it has more: counted
            // (spans, CPU) in this window, not the next, nor left out.
            caught_up(agent)?;
        }
        let mut sample = sample?;
        sample.load = load;
        if let (Some(agent), Some((cpu0, c0, bpf0))) = (agent, before) {
            let (cpu1, c1, bpf1) = read_agent(agent)?;
            sample.agent = Some(AgentUse {
                cpu_s: cpu1 - cpu0,
                peak_rss: procfs::peak_rss_bytes(agent.pid())?,
                events: c1.delta(&c0, "events"),
                lost: c1.delta(&c0, "kernel_ringbuf_drops"),
                spans: c1
                    .delta(&c0, "spans_created")
                    .saturating_sub(c1.delta(&c0, "spans_unsampled")),
                exported: None,
                bpf: bpf_stats::delta(&bpf0, &bpf1),
            });
        }
        Ok(sample)
    }

    fn empty(&self) -> Sample {
        Sample {
            scenario: self.scenario,
            load: Load::Max,
            mode: self.mode,
            round: self.round,
            requests: 0,
            seconds: 0.0,
            errors: 0,
            late: None,
            p50_s: None,
            p99_s: None,
            agent: None,
        }
    }

    /// HTTP/1 at closed-loop maximum: wrk.
    fn closed_loop(&self, http: &pacer::Http) -> Result<Sample> {
        let (threads, connections) = self.scenario.wrk_shape();
        let scheme = if http.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}{}", self.target.addr, http.path);
        let mut cmd = Wrk::command(&url, threads, connections, self.duration);
        cmd.arg("--latency");
        if !http.keepalive {
            cmd.args(["-H", "Connection: close"]);
        }
        if let Some(cpu) = self.cpus.load {
            // SAFETY: the hook only makes one syscall.
            unsafe { cmd.pre_exec(move || procfs::pin_self(cpu)) };
        }
        let r = Wrk::start(self.load_cg, &mut cmd, self.duration)?.finish()?;
        Ok(Sample {
            requests: r.requests,
            seconds: r.seconds,
            errors: r.errors(),
            p50_s: r.latency_at(50.0),
            p99_s: r.latency_at(99.0),
            ..self.empty()
        })
    }

    /// HTTP/2 targets: h2load for the window, closed-loop or at `rate`
    /// (split evenly over its connections).
    fn h2load(&self, spec: &H2Load, load: Load) -> Result<Sample> {
        let (clients, streams) = self.scenario.h2load_shape();
        let dir = TempDir::new("h2load")?;
        let log = dir.join("requests.tsv");
        let mut cmd = h2::h2load_command(std::slice::from_ref(&spec.url), clients, streams);
        cmd.args(["-D", &self.duration.as_secs().to_string()])
            .arg("--log-file")
            .arg(&log);
        for h in &spec.headers {
            cmd.args(["-H", h]);
        }
        if let Some(data) = &spec.data {
            cmd.arg("-d").arg(data);
        }
        if let Load::Rate(rate) = load {
            cmd.arg(format!("--rps={}", (rate as usize).div_ceil(clients)));
        }
        if let Some(cpu) = self.cpus.load {
            // SAFETY: the hook only makes one syscall.
            unsafe { cmd.pre_exec(move || procfs::pin_self(cpu)) };
        }
        let r = h2::run_h2load(
            self.load_cg,
            &mut cmd,
            self.duration + Duration::from_secs(30),
        )?;
        let latencies = h2::h2load_latencies_ns(&log)?;
        let pct = |p| pacer::percentile_ns(&latencies, p).map(|ns| ns as f64 / 1e9);
        Ok(Sample {
            requests: r.status_2xx,
            seconds: r.seconds,
            errors: r.errors() + r.succeeded.saturating_sub(r.status_2xx),
            p50_s: pct(50.0),
            p99_s: pct(99.0),
            ..self.empty()
        })
    }

    /// The bench's own generator: HTTP/1 at fixed rates, Kafka at any load.
    fn paced(&self, request: &pacer::Request, load: Load) -> Result<Sample> {
        let spec = pacer::Spec {
            addr: self.target.addr,
            request: request.clone(),
            load,
            connections: KAFKA_CONNECTIONS,
            duration: self.duration,
            cpu: self.cpus.load,
        };
        let o = pacer::run(&spec)?;
        Ok(Sample {
            requests: o.completed,
            seconds: o.seconds,
            errors: o.errors,
            late: matches!(load, Load::Rate(_)).then_some(o.late),
            p50_s: o.percentile(50.0),
            p99_s: o.percentile(99.0),
            ..self.empty()
        })
    }
}

/// SIGSTOPs `pid` from a third to two thirds of `window`; always resumes it.
fn stall(pid: u32, window: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(window / 3);
        // SAFETY: plain kill(2) on the agent the bench started.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        std::thread::sleep(window / 3);
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    })
}

/// Waits until the agent handles no more records: every record of the
/// window is then read, and its span made.
fn caught_up(agent: &Agent) -> Result<()> {
    let url = agent.health_url("/metrics");
    let events = || Counters::fetch(&url).map(|c| c.get("events"));
    let deadline = Instant::now() + CATCH_UP;
    let mut last = events()?;
    loop {
        std::thread::sleep(RING_TAIL);
        let now = events()?;
        if now == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent was still reading records {CATCH_UP:?} after the load ended");
        }
        last = now;
    }
}

fn read_agent(agent: &Agent) -> Result<(f64, Counters, BTreeMap<String, Run>)> {
    let cpu = procfs::cpu_seconds(agent.pid())?;
    let counters =
        Counters::fetch(&agent.health_url("/metrics")).context("reading the agent's counters")?;
    let bpf = bpf_stats::snapshot(agent.pid()).context("reading the agent's BPF run times")?;
    Ok((cpu, counters, bpf))
}
