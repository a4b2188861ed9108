//! `clew run`: wires capture, pipeline, exporter and health endpoint
//! together and runs until SIGINT/SIGTERM.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::Instant,
};

use crate::{
    capture::{Capture, CaptureConfig},
    cgroup::Hierarchy,
    cli::SelectArgs,
    clock::unix_now_ns,
    config::{CommandLineMode, Config, QueryMode, SdkProcesses, TlsAttach},
    export::{export_metrics, start_with_logs, DeliveryReport},
    health,
    k8s::Kubernetes,
    logs::Logs,
    metrics::{route::RouteNames, Metrics, Registry, Routes, Shared},
    nesting::Nesting,
    pipeline::{Outputs, Pipeline},
    probe,
    process::Identity,
    processor::{Chain, TruncateAttributes},
    protocol::SpanOptions,
    redact::{Redact, SecretNames},
    sampling::RecordThreshold,
    sdk::DeferToSdk,
    select::Selector,
    stats::{self, Stats},
    synthetic::{self, MarkSynthetic, Synthetic},
    tenant::Tenants,
    tls,
};

/// Records handled before yielding to timers and signals.
const DRAIN_BUDGET: usize = 4096;
/// How often the ring buffer is drained. Records of requests wake nobody
/// (the kernel submits them with `BPF_RB_NO_WAKEUP`): a drain pass costs
/// about 60 µs whatever it finds, and its first records find the caches
/// gone cold, so passes are spaced. 40 ms took a quarter off the agent's
/// CPU per request at 10k requests/s against 10 ms (see README). A record
/// that fills the ring (4 MiB by default) past a quarter, a half or three
/// quarters wakes the agent early, so a burst does not wait for the pause
/// (`quiet` in `ebpf/src/maps.rs`). An exec or a
/// process's first connection wakes the agent at once: it reads the
/// process's facts from `/proc` while the process is surely there.
const DRAIN_PAUSE: Duration = Duration::from_millis(40);
/// How soon a pass the export queue cut short resumes. The exporter runs
/// on this thread, in the pause, and empties half its queue in a few
/// milliseconds, while the ring keeps filling; shorter would only spin
/// while a collector is down.
const BACKED_UP_PAUSE: Duration = Duration::from_millis(10);
const SUMMARY_EVERY_TICKS: u64 = 30;
/// Records handled between looks at the export queue's depth.
const BACKPRESSURE_EVERY: usize = 64;
/// How long start-up waits for the first pod list.
const KUBERNETES_SYNC_WAIT: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> Result<()> {
    probe::require_capture()?;
    let hierarchy = Hierarchy::detect(cfg.host_cgroup_root.as_deref())?;
    let selector = Selector {
        hierarchy: hierarchy.clone(),
        ..cfg.select
    };
    let tenants = Tenants::new(cfg.tenants, &hierarchy);
    let sampler = cfg.sampler;
    let patterns = cfg.routes;
    let stats = Arc::new(Stats::default());
    let kube = Kubernetes::start(&cfg.kubernetes, stats.clone())?;
    if kube.is_none() && (!selector.pods.is_empty() || tenants.needs_pods()) {
        anyhow::bail!(
            "--namespace, --pod-label and namespace or pod-label tenants need the Kubernetes API (in a pod with a service account, or --kubernetes on)"
        );
    }
    let registry = Shared::new(Registry::new(cfg.metric_series_limit, unix_now_ns()));
    let synthetic = cfg.synthetic.as_ref().map(|s| Synthetic::new(&s.targets));
    if let Some(addr) = cfg.health_listen {
        let telemetry = health::Telemetry {
            stats: stats.clone(),
            metrics: registry.clone(),
            synthetic: synthetic.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = health::serve(addr, telemetry).await {
                tracing::error!("{e:#}");
            }
        });
    }
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel();
    let metrics_task = tokio::spawn(export_metrics(
        cfg.metrics_export,
        cfg.metric_export_interval,
        registry.clone(),
        stats.clone(),
        metrics_stopped,
    ));

    let mut capture = Capture::load(&CaptureConfig {
        select_all: selector.is_all(),
        exe_paths: !selector.exe_paths().is_empty(),
        capture_limit: cfg.capture_bytes,
        ringbuf_bytes: cfg.ringbuf_mib * 1024 * 1024,
        sampling: sampler.kernel(),
        propagation: cfg.propagation,
        logs: cfg.logs.as_ref().map_or(0, |l| l.sources.kernel_bits()),
        log_rate: cfg.logs.as_ref().map_or(0, |l| l.per_second),
        syscall_arguments: cfg.syscall_arguments,
    })?;
    let mut maps = capture.maps()?;
    let ring = capture.take_ring()?;
    let verdicts = cfg
        .logs
        .as_ref()
        .map(|_| capture.log_verdicts())
        .transpose()?;
    maps.set_enter_program(capture.attach()?);
    capture.attach_sockops(&selector.cgroup_dirs())?;
    let report = synthetic
        .clone()
        .map(|s| Arc::new(s) as Arc<dyn DeliveryReport>);
    let (exporter, log_exporter) =
        start_with_logs(cfg.traces, cfg.logs_export, report).context("starting the exporter")?;
    let logs = match (cfg.logs, verdicts, log_exporter) {
        (Some(settings), Some(verdicts), Some(exporter)) => {
            tracing::info!(sources = %settings.sources, "capturing logs of traced requests");
            Some(Logs::new(settings, verdicts, exporter, stats.clone()))
        }
        _ => None,
    };
    let names = SecretNames::with_extra(&cfg.redact_names);
    let opts = SpanOptions {
        capture_query: cfg.query != QueryMode::Off,
        baggage_keys: leak_all(cfg.baggage_attributes),
        known_methods: cfg.http_known_methods.map(leak_all),
    };
    let mut pipeline = Pipeline::new(
        selector.clone(),
        maps,
        Nesting::new(sampler),
        Outputs {
            metrics: Metrics::new(
                Routes::new(patterns.clone(), cfg.auto_routes),
                registry,
                stats.clone(),
            ),
            // Spans of processes with their own SDK go first; redaction
            // before truncation: a cut could hide the `=` that marks a
            // value as a secret's.
            processors: sdk_stage(cfg.sdk_processes)
                .then(RecordThreshold { sampler })
                .then(Redact {
                    names: names.clone(),
                    queries: cfg.query == QueryMode::Redacted,
                })
                .then(RouteNames { patterns })
                .then(TruncateAttributes {
                    max_bytes: cfg.attribute_value_length_limit,
                })
                .then_some(synthetic.clone().map(MarkSynthetic)),
            exporter,
            logs,
        },
        opts,
        stats.clone(),
    );
    if cfg.command_line == CommandLineMode::Redacted {
        pipeline.processes.export_command_lines(names);
    }
    pipeline
        .processes
        .add_agent_attributes(&cfg.resource_attributes);
    if let Some(k) = &kube {
        // Processes already running are adopted with their pods known.
        k.wait_synced(KUBERNETES_SYNC_WAIT).await;
    }
    pipeline.processes.set_identity(Identity {
        hierarchy,
        pods: kube.as_ref().map(|k| k.pods.clone()),
        tenants,
        stats: Some(stats.clone()),
    });
    // Per process only makes sense when some processes are not traced.
    let per_process = cfg.tls_attach == TlsAttach::Process && !selector.is_all();
    pipeline.tls.configure(cfg.tls_go, per_process);
    pipeline.runtimes.configure(cfg.tls_go);
    pipeline.tls.hook_host_libraries(&mut capture);
    pipeline.start()?;
    tracing::info!(
        programs = capture.attached().len(),
        selection = %describe(&selector),
        ?sampler,
        "tracing started"
    );
    crate::memory::release_freed();
    stats.ready.store(true, Relaxed);
    // Probes are attached: the self-check can start.
    let probe_task = cfg
        .synthetic
        .zip(synthetic)
        .map(|(c, s)| tokio::spawn(synthetic::probe::run(c, s, sampler)));

    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until
    // both are dropped together below.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut ticks = 0u64;
    let mut next_drain = Instant::now();
    loop {
        tokio::select! {
            woken = async {
                tokio::select! {
                    biased;
                    guard = ring.readable_mut() => {
                        // Cleared before the pass: a wake-up during it
                        // brings the next one.
                        guard?.clear_ready();
                        Ok::<_, std::io::Error>(true)
                    }
                    _ = tokio::time::sleep_until(next_drain) => Ok(false),
                }
            } => {
                stats::add(&stats.ring_drains, 1);
                if woken? {
                    stats::add(&stats.ring_drains_woken, 1);
                }
                let rb = ring.get_mut();
                let mut n = 0;
                let mut backed_up = false;
                while n < DRAIN_BUDGET {
                    // A burst the exporter cannot keep up with waits in the
                    // ring buffer (bounded, its overflow counted by the
                    // kernel) rather than being dropped from the queue.
                    if n % BACKPRESSURE_EVERY == 0 && pipeline.exporter().is_backed_up() {
                        backed_up = true;
                        break;
                    }
                    let Some(item) = rb.next() else { break };
                    pipeline.handle(&item);
                    n += 1;
                }
                if backed_up {
                    next_drain = Instant::now() + BACKED_UP_PAUSE;
                } else if n < DRAIN_BUDGET {
                    next_drain = Instant::now() + DRAIN_PAUSE;
                }
                // Go's net/http probes first: a process learnt at its exec
                // gets them before it runs, and before its TLS probes
                // (whose attachment is what callers wait for).
                pipeline.runtimes.attach_due(&mut capture);
                pipeline.tls.run_due(Instant::now().into_std(), &mut capture);
            }
            _ = tick.tick() => {
                pipeline.tick();
                pipeline.runtimes.attach_due(&mut capture);
                pipeline.tls.run_due(Instant::now().into_std(), &mut capture);
                ticks += 1;
                stats.ready.store(pipeline.exporter().is_running(), Relaxed);
                if ticks.is_multiple_of(SUMMARY_EVERY_TICKS) {
                    tracing::info!(stats = %stats.summary(), export = ?pipeline.exporter().stats(), "summary");
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("stopping: detaching probes and flushing spans");
    stats.ready.store(false, Relaxed);
    if let Some(task) = probe_task {
        task.abort();
    }
    drop(ring);
    pipeline.tls.detach_all(&mut capture);
    pipeline.runtimes.detach_all(&mut capture);
    drop(capture);
    let (exporter, log_exporter) = pipeline.into_exporters();
    // Log records first: in the console view the span exporter's task
    // prints them, and it ends with the span queue.
    if let Some(l) = log_exporter {
        l.shutdown(Duration::from_secs(5)).await;
    }
    exporter.shutdown(Duration::from_secs(5)).await;
    let _ = stop_metrics.send(());
    match tokio::time::timeout(Duration::from_secs(5), metrics_task).await {
        Ok(Ok(Err(e))) => tracing::warn!("metrics export: {e:#}"),
        Ok(_) => {}
        Err(_) => tracing::warn!("metrics export did not finish in time"),
    }
    tracing::info!(stats = %stats.summary(), "stopped");
    Ok(())
}

/// The chain's first stage: spans of processes with their own SDK go
/// first, before any work is spent on them.
fn sdk_stage(mode: SdkProcesses) -> Chain {
    match mode {
        SdkProcesses::Defer => Chain::default().then(DeferToSdk::default()),
        SdkProcesses::Trace => Chain::default(),
    }
}

/// Leaked once: span attributes take static keys and names, and these
/// live as long as the agent does.
fn leak_all(list: Vec<String>) -> &'static [&'static str] {
    let leaked: Vec<&'static str> = list
        .into_iter()
        .map(|k| &*Box::leak(k.into_boxed_str()))
        .collect();
    Box::leak(leaked.into_boxed_slice())
}

fn describe(s: &Selector) -> String {
    if s.is_all() {
        return "every process".into();
    }
    format!(
        "cgroups={:?} pids={:?} exes={:?} ports={:?} pods={:?}",
        s.cgroups, s.pids, s.exes, s.ports, s.pods
    )
}

pub fn probe(select: SelectArgs) -> Result<()> {
    print!("{}", probe::run().render());
    let hierarchy = Hierarchy::detect(select.host_cgroup_root.as_deref())?;
    let selector = Selector {
        hierarchy,
        ..Selector::from(select)
    };
    anyhow::ensure!(
        selector.pods.is_empty(),
        "probe does not watch the Kubernetes API: select by --cgroup, --pid, --exe or --port"
    );
    if selector.is_all() {
        println!(
            "\n(give --cgroup, --pid, --exe or --port to list those processes' TLS libraries)"
        );
        return Ok(());
    }
    print!(
        "\n{}",
        tls::render_processes(&selector.current_processes(&|_| None))
    );
    Ok(())
}
