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
    cli::{CommandLineMode, Mechanisms, QueryMode, RunArgs, SdkProcesses, SelectArgs, TlsAttach},
    clock::unix_now_ns,
    export::{export_metrics, start_with_logs, ExportConfig, Signal},
    health,
    logs::{LogSettings, Logs, Sources},
    metrics::{route::RouteNames, Metrics, Pattern, Registry, Routes, Shared},
    nesting::Nesting,
    pipeline::{Outputs, Pipeline},
    probe,
    processor::{Chain, TruncateAttributes},
    protocol::{http_common::known_methods_from_env, SpanOptions},
    redact::{Redact, SecretNames},
    sampling::{RecordThreshold, Sampler},
    sdk::DeferToSdk,
    select::Selector,
    stats::Stats,
    tls,
};

/// Records handled before yielding to timers and signals.
const DRAIN_BUDGET: usize = 4096;
/// Pause after draining the ring buffer before waiting on it again. The
/// kernel wakes a caught-up reader for every record, so without it a loaded
/// node costs a wake-up (and context switch) per syscall captured; with it,
/// at most one per pause, while the ring (4 MiB by default) holds far more
/// than a pause's worth of records.
const DRAIN_PAUSE: Duration = Duration::from_millis(2);
const SUMMARY_EVERY_TICKS: u64 = 30;
/// Records handled between looks at the export queue's depth.
const BACKPRESSURE_EVERY: usize = 64;

pub async fn run(args: RunArgs) -> Result<()> {
    let report = probe::run();
    report.require_capture()?;
    let log_settings = log_settings(&args)?;
    let selector = Selector::from(args.select);
    let env = |k: &str| std::env::var(k).ok();
    let sampler = Sampler::from_env(
        env("OTEL_TRACES_SAMPLER").as_deref(),
        env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    let export_cfg = ExportConfig::from_env_and_args(
        Signal::Traces,
        args.otlp_endpoint.clone(),
        args.otlp_protocol.clone(),
    )?;
    let logs_cfg = log_settings
        .as_ref()
        .map(|_| {
            ExportConfig::from_env_and_args(
                Signal::Logs,
                args.otlp_endpoint.clone(),
                args.otlp_protocol.clone(),
            )
        })
        .transpose()?;
    let metrics_cfg =
        ExportConfig::from_env_and_args(Signal::Metrics, args.otlp_endpoint, args.otlp_protocol)?;
    let metric_interval = metric_export_interval(env("OTEL_METRIC_EXPORT_INTERVAL"))?;
    let patterns = args
        .routes
        .iter()
        .map(|r| Pattern::parse(r))
        .collect::<Result<Vec<_>>>()?;
    let stats = Arc::new(Stats::default());
    let registry = Shared::new(Registry::new(args.metric_series_limit, unix_now_ns()));
    if let Some(addr) = args.health_listen {
        let (s, r) = (stats.clone(), registry.clone());
        tokio::spawn(async move {
            if let Err(e) = health::serve(addr, s, r).await {
                tracing::error!("{e:#}");
            }
        });
    }
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel();
    let metrics_task = tokio::spawn(export_metrics(
        metrics_cfg,
        metric_interval,
        registry.clone(),
        stats.clone(),
        metrics_stopped,
    ));

    let mut capture = Capture::load(&CaptureConfig {
        select_all: selector.is_all(),
        exe_paths: !selector.exe_paths().is_empty(),
        capture_limit: args.capture_bytes,
        ringbuf_bytes: args.ringbuf_mib.max(1) * 1024 * 1024,
        sampling: sampler.kernel(),
        propagation: Mechanisms::from_list(&args.propagation)?,
        logs: log_settings.as_ref().map_or(0, |l| l.sources.kernel_bits()),
        log_rate: args.log_rate,
    })?;
    let maps = capture.maps()?;
    let ring = capture.take_ring()?;
    let verdicts = log_settings
        .as_ref()
        .map(|_| capture.log_verdicts())
        .transpose()?;
    capture.attach()?;
    capture.attach_sockops(&selector.cgroup_dirs()?)?;
    let (exporter, log_exporter) =
        start_with_logs(export_cfg, logs_cfg).context("starting the exporter")?;
    let logs = match (log_settings, verdicts, log_exporter) {
        (Some(settings), Some(verdicts), Some(exporter)) => {
            tracing::info!(sources = %settings.sources, "capturing logs of traced requests");
            Some(Logs::new(settings, verdicts, exporter, stats.clone()))
        }
        _ => None,
    };
    let known_methods = env("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS");
    let known_methods = known_methods_from_env(known_methods.as_deref()).map(leak_all);
    let names = SecretNames::with_extra(&args.redact_names);
    let opts = SpanOptions {
        capture_query: args.query != QueryMode::Off,
        baggage_keys: leak_all(args.baggage_attributes),
        known_methods,
    };
    let mut pipeline = Pipeline::new(
        selector.clone(),
        maps,
        Nesting::new(sampler),
        Outputs {
            metrics: Metrics::new(
                Routes::new(patterns.clone(), args.auto_routes),
                registry,
                stats.clone(),
            ),
            // Spans of processes with their own SDK go first; redaction
            // before truncation: a cut could hide the `=` that marks a
            // value as a secret's.
            processors: sdk_stage(args.sdk_processes)
                .then(RecordThreshold { sampler })
                .then(Redact {
                    names: names.clone(),
                    queries: args.query == QueryMode::Redacted,
                })
                .then(RouteNames { patterns })
                .then(TruncateAttributes::from_env(env)?),
            exporter,
            logs,
        },
        opts,
        stats.clone(),
    );
    if args.command_line == CommandLineMode::Redacted {
        pipeline.processes.export_command_lines(names);
    }
    if let Some(attributes) = env("OTEL_RESOURCE_ATTRIBUTES") {
        pipeline.processes.add_agent_attributes(&attributes);
    }
    // Per process only makes sense when some processes are not traced.
    let per_process = args.tls_attach == TlsAttach::Process && !selector.is_all();
    pipeline.tls.configure(args.tls_go, per_process);
    pipeline.runtimes.configure(args.tls_go);
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
            guard = async {
                tokio::time::sleep_until(next_drain).await;
                ring.readable_mut().await
            } => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
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
                    next_drain = Instant::now() + DRAIN_PAUSE;
                } else if n < DRAIN_BUDGET {
                    guard.clear_ready();
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

/// Log capture as `--logs`, `--log-record-bytes` and `--log-rate` ask
/// (`None`: off).
fn log_settings(args: &RunArgs) -> Result<Option<LogSettings>> {
    let sources = Sources::parse(&args.logs)?;
    if sources.is_empty() {
        return Ok(None);
    }
    let max = clew_common::logs::MAX_LOG_CAPTURE;
    anyhow::ensure!(
        (1..=max).contains(&args.log_record_bytes),
        "--log-record-bytes must be between 1 and {max}"
    );
    anyhow::ensure!(args.log_rate > 0, "--log-rate must be at least 1");
    Ok(Some(LogSettings {
        sources,
        record_bytes: args.log_record_bytes,
        per_second: args.log_rate,
        defer_sdk: args.sdk_processes == SdkProcesses::Defer,
    }))
}

/// `OTEL_METRIC_EXPORT_INTERVAL` in milliseconds; the SDKs' 60 s default.
fn metric_export_interval(var: Option<String>) -> Result<Duration> {
    let Some(v) = var.filter(|v| !v.trim().is_empty()) else {
        return Ok(Duration::from_secs(60));
    };
    let ms: u64 = v
        .trim()
        .parse()
        .with_context(|| format!("OTEL_METRIC_EXPORT_INTERVAL={v:?} is not milliseconds"))?;
    anyhow::ensure!(ms > 0, "OTEL_METRIC_EXPORT_INTERVAL must be above 0");
    Ok(Duration::from_millis(ms))
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
        "cgroups={:?} pids={:?} exes={:?} ports={:?}",
        s.cgroups, s.pids, s.exes, s.ports
    )
}

pub fn probe(select: SelectArgs) -> Result<()> {
    print!("{}", probe::run().render());
    let selector = Selector::from(select);
    if selector.is_all() {
        println!(
            "\n(give --cgroup, --pid, --exe or --port to list those processes' TLS libraries)"
        );
        return Ok(());
    }
    print!(
        "\n{}",
        tls::render_processes(&selector.current_processes()?)
    );
    Ok(())
}
