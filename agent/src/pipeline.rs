//! The userspace pipeline, one record at a time: ring-buffer record →
//! connection → protocol session → transaction → sampling → span →
//! processors → exporter. Nothing here blocks: the exporter queue drops
//! (and counts) when full.

use std::{collections::HashSet, sync::Arc, time::Instant};

use clew_common::role;

use crate::{
    capture::{self, BlockedRead, ConnOpen, Event, KernelCtx, KernelMaps, LogWrite},
    clock::Clock,
    conn::{self, Conn, ConnTable},
    export::Exporter,
    jvm::Jvm,
    logs::{LogRecord, Logs},
    mega_traces::{MegaTraces, MEGA_TRACE_SPANS},
    metrics::Metrics,
    nesting::{Nesting, Uncertain},
    process::Processes,
    processor::Chain,
    protocol::{ConnFacts, Losses, Protocol, Role, Shared, SpanOptions, Transaction},
    runtime::Runtimes,
    select::{self, Selector},
    stats::{self, Stats},
    tls::TlsHooks,
};

const MAX_CONNS: usize = 65536;
/// `--pid/--exe/--port` are re-resolved this often (ticks are 1 s): finding
/// listeners means reading every process's fd table.
const RESELECT_EVERY_TICKS: u64 = 5;

/// Where finished transactions go: measured, then (if sampled) through
/// the processors to the exporter; and, with log capture on, where the
/// writes of serving threads go.
pub struct Outputs {
    pub metrics: Metrics,
    pub processors: Chain,
    pub exporter: Exporter,
    pub logs: Option<Logs>,
}

pub struct Pipeline {
    conns: ConnTable,
    nesting: Nesting,
    /// What protocols learn on one connection for another.
    shared: Shared,
    pub runtimes: Runtimes,
    mega_traces: MegaTraces,
    /// Resources of the traced processes; the agent sets what they export.
    pub processes: Processes,
    clock: Clock,
    opts: SpanOptions,
    selector: Selector,
    maps: KernelMaps,
    exporter: Exporter,
    stats: Arc<Stats>,
    /// Processes selected through `--pid/--exe/--port`, mirrored in the kernel.
    listed: HashSet<u32>,
    done: Vec<Transaction>,
    processors: Chain,
    metrics: Metrics,
    logs: Option<Logs>,
    ticks: u64,
    /// The pod cache's generation at the last rescan.
    pods_seen: Option<u64>,
    /// TLS libraries of the traced processes; the agent loop runs its scans.
    pub tls: TlsHooks,
}

impl Pipeline {
    pub fn new(
        selector: Selector,
        maps: KernelMaps,
        nesting: Nesting,
        outputs: Outputs,
        opts: SpanOptions,
        stats: Arc<Stats>,
    ) -> Self {
        let Outputs {
            metrics,
            processors,
            exporter,
            logs,
        } = outputs;
        Pipeline {
            conns: ConnTable::new(MAX_CONNS),
            nesting,
            shared: Shared::default(),
            runtimes: Runtimes::default(),
            mega_traces: MegaTraces::default(),
            processes: Processes::new(),
            clock: Clock::new(),
            opts,
            selector,
            maps,
            exporter,
            stats: stats.clone(),
            listed: HashSet::new(),
            done: Vec::new(),
            processors,
            metrics,
            logs,
            ticks: 0,
            pods_seen: None,
            tls: TlsHooks::new(stats.clone()),
        }
    }

    /// Pushes the selection into the kernel and adopts connections that
    /// were already open, so their next request is traced.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let cgroups = self.selector.cgroup_ids()?;
        self.maps.set_cgroups(&cgroups)?;
        self.maps
            .set_exes(&self.selector.exe_names(), &self.selector.exe_paths());
        self.refresh_listed();
        let now = Instant::now();
        let processes = &self.processes;
        let current = self
            .selector
            .current_processes(&|pid| processes.pod_of(pid));
        for pid in current {
            // Read while the process is surely there: one that was
            // already running may end before its first span is built.
            self.processes.resource(pid);
            self.learn_runtime(pid);
            self.learn_jvm(pid);
            self.adopt_existing(pid);
            self.tls.on_conn(pid, now);
        }
        Ok(())
    }

    fn adopt_existing(&mut self, pid: u32) {
        let blocked = if self.maps.resumes_blocked_reads() {
            blocked_reads(pid)
        } else {
            Vec::new()
        };
        for (fd, local, peer, side) in conn::established_sockets(pid) {
            match self.maps.seed_conn(pid, fd) {
                Ok(id) => {
                    for (tid, call) in blocked.iter().filter(|(_, c)| c.fd == fd) {
                        if let Err(e) = self.maps.resume_blocked_read(pid, *tid, id, call) {
                            tracing::debug!(pid, tid, fd, "cannot resume a blocked read: {e}");
                        }
                    }
                    let facts = ConnFacts {
                        peer: Some(peer),
                        local: Some(local),
                        tls: false,
                    };
                    let mut c = Conn::new(pid, fd, facts, None, 0);
                    c.side = Some(side);
                    self.track(id, c);
                    stats::add(&self.stats.conns_adopted, 1);
                }
                Err(e) => tracing::debug!(pid, fd, "cannot adopt connection: {e}"),
            }
        }
    }

    /// Re-resolves `--pid/--exe/--port/--namespace/--pod-label` (ports
    /// start listening, processes and pods come and go).
    pub fn refresh_listed(&mut self) {
        if !self.selector.by_process() {
            return;
        }
        let processes = &self.processes;
        let now = self.selector.listed_pids(&|pid| processes.pod_of(pid));
        for &pid in now.difference(&self.listed) {
            if let Err(e) = self.maps.select_pid(pid) {
                tracing::warn!("{e:#}");
            }
        }
        let fresh: Vec<u32> = now.difference(&self.listed).copied().collect();
        self.listed = now;
        for pid in fresh {
            tracing::info!(pid, "process selected");
            self.adopt_existing(pid);
        }
    }

    pub fn handle(&mut self, record: &[u8]) {
        stats::add(&self.stats.events, 1);
        match capture::decode(record) {
            Ok(Event::Data(d)) => {
                // The span first, for the request these bytes start: no
                // session can have parsed that request yet.
                if let Some(k) = d.kernel_ctx() {
                    self.nesting.kernel(&k);
                }
                self.on_data(d)
            }
            Ok(Event::Ctx(k)) => self.on_kernel_ctx(k),
            Ok(Event::Log(w)) => self.on_log(&w),
            Ok(Event::Open(o)) => self.on_open(o),
            Ok(Event::Close {
                conn_id,
                ts_ns,
                after_loss,
            }) => self.on_close(conn_id, ts_ns, after_loss),
            Ok(Event::Exec {
                tgid,
                kernel_selected,
            }) => self.on_exec(tgid, kernel_selected),
            Ok(Event::Exit { tgid }) => self.on_exit(tgid),
            Err(e) => {
                stats::add(&self.stats.bad_records, 1);
                tracing::debug!("bad ring-buffer record: {e}");
            }
        }
    }

    fn on_kernel_ctx(&mut self, k: KernelCtx) {
        if k.server {
            let session = self
                .conns
                .get_mut(k.conn_id)
                .and_then(|c| c.session.as_mut());
            if let Some(s) = session {
                let ctx = self.nesting.from_kernel(&k.ctx, true);
                if s.adopt_server_ctx(k.stream_id, k.ts_ns, ctx, &mut self.nesting) {
                    return;
                }
            }
        }
        self.nesting.kernel(&k);
    }

    fn on_log(&mut self, w: &LogWrite<'_>) {
        let Some(logs) = self.logs.as_mut() else {
            return;
        };
        let resource = self.processes.resource(w.tgid);
        logs.on_write(w, resource, &self.nesting, &self.clock);
    }

    fn on_open(&mut self, o: ConnOpen) {
        stats::add(&self.stats.conns_opened, 1);
        let role = match o.role {
            role::ACCEPTED => Some(Role::Server),
            role::CONNECTED => Some(Role::Client),
            _ => None,
        };
        // accept4(fd, NULL, NULL) (libuv, Go) reveals no peer; the kernel
        // reads it off the socket instead, unless this kernel's BTF lacked
        // an offset: then ask /proc while the socket is certainly still open.
        let facts = match o.peer {
            // sockops reports the local end of IPv4 sockets only; a
            // dual-stack client's comes from /proc, so one agent tracing
            // both ends can still link them.
            Some(peer) if o.local.is_none() && role == Some(Role::Client) => ConnFacts {
                peer: Some(peer),
                local: ConnFacts::from_proc(o.tgid, o.fd).local,
                tls: false,
            },
            Some(peer) => ConnFacts {
                peer: Some(peer),
                local: o.local,
                tls: false,
            },
            None => {
                let facts = ConnFacts::from_proc(o.tgid, o.fd);
                if let (Some(Role::Server), Some(peer)) = (role, facts.peer) {
                    self.maps.set_peer(o.conn_id, peer);
                }
                facts
            }
        };
        // The resource is read now: short-lived clients are gone by the
        // time their span is exported.
        self.processes.resource(o.tgid);
        self.tls.on_conn(o.tgid, Instant::now());
        self.learn_runtime(o.tgid);
        self.learn_jvm(o.tgid);
        let c = Conn::new(o.tgid, o.fd, facts, role, o.ts_ns);
        self.track(o.conn_id, c);
    }

    fn track(&mut self, id: u64, c: Conn) {
        if let Some((old_id, old)) = self.conns.insert(id, c) {
            stats::add(&self.stats.conns_evicted, 1);
            self.maps.forget_conn(old.tgid, old.fd, old_id);
            self.nesting.conn_closed(old_id);
        }
    }

    fn on_data(&mut self, d: capture::Data<'_>) {
        let Some(c) = self.conns.get_mut(d.conn_id) else {
            // Opened before its open record was read, or evicted: adopt it,
            // and read its process's resource while it may still be there.
            self.processes.resource(d.tgid);
            let c = Conn::new(
                d.tgid,
                d.fd,
                ConnFacts::from_proc(d.tgid, d.fd),
                None,
                d.ts_ns,
            );
            stats::add(&self.stats.conns_adopted, 1);
            self.track(d.conn_id, c);
            return self.on_data(d);
        };
        c.last_ns = d.ts_ns;
        c.facts.tls |= d.tls;
        if d.after_loss {
            // Bytes are missing before these: HTTP/1 pairing by order cannot
            // be continued with certainty, and starts over as for a
            // connection met mid-stream; HTTP/2 and Kafka resume at the
            // next frame or message.
            // Either way no request read before serves as a parent.
            match c.resume_after_loss() {
                Some((p, true)) => stats::add(&self.stats.protocol(p).resumed, 1),
                Some((p, false)) => stats::add(&self.stats.protocol(p).desynced, 1),
                None => {}
            }
            self.nesting.conn_closed(d.conn_id);
            return self.on_data(capture::Data {
                after_loss: false,
                ..d
            });
        }
        let Some(session) = c.session(d.ingress, d.payload) else {
            // First bytes belong to no protocol Clew parses: stop paying for it.
            let (tgid, fd) = (c.tgid, c.fd);
            self.drop_unknown(d.conn_id, tgid, fd, None);
            return;
        };
        let before = session.losses();
        session.on_data(&d, &mut self.nesting, &mut self.shared, &mut self.done);
        let protocol = session.protocol();
        let hopeless = session.is_hopeless();
        count_losses(&self.stats, protocol, session.losses() - before);
        if hopeless {
            let (tgid, fd) = (c.tgid, c.fd);
            self.drop_unknown(d.conn_id, tgid, fd, Some(protocol));
        }
        self.emit(d.conn_id);
    }

    /// `tried`: the protocol whose parser gave up on the connection.
    fn drop_unknown(&mut self, id: u64, tgid: u32, fd: u32, tried: Option<Protocol>) {
        stats::add(&self.stats.conns_unknown_protocol, 1);
        match tried {
            Some(p) => tracing::debug!(
                tgid,
                fd,
                protocol = p.label(),
                "connection is not the protocol it looked like, no longer captured"
            ),
            None => tracing::debug!(
                tgid,
                fd,
                "connection speaks no known protocol, no longer captured"
            ),
        }
        self.maps.forget_conn(tgid, fd, id);
        self.conns.remove(id);
        self.nesting.conn_closed(id);
    }

    fn on_close(&mut self, id: u64, ts: u64, after_loss: bool) {
        stats::add(&self.stats.conns_closed, 1);
        let Some(mut c) = self.conns.remove(id) else {
            return;
        };
        // What was lost may have answered the requests still open: the
        // session goes without claiming they failed.
        if after_loss {
            if let Some(p) = c.restart_after_loss() {
                stats::add(&self.stats.protocol(p).desynced, 1);
            }
        }
        if let Some(s) = c.session.as_mut() {
            let before = s.losses();
            s.on_close(ts, &mut self.nesting, &mut self.shared, &mut self.done);
            count_losses(&self.stats, s.protocol(), s.losses() - before);
        }
        self.nesting.conn_closed(id);
        self.emit_with(c.tgid, &c.facts);
    }

    /// The kernel selects a process whose exec matches `--exe` by comm or
    /// path, before it can fork; here the match is confirmed against
    /// /proc (or made, for what the kernel cannot see: a symlink exec'd,
    /// a selector it had no room for).
    fn on_exec(&mut self, tgid: u32, kernel_selected: bool) {
        self.processes.forget(tgid);
        self.forget_runtime(tgid);
        let matched = self.selector.exe_match(tgid);
        let pod_matched = !self.selector.pods.is_empty()
            && self
                .selector
                .pod_matches(self.processes.pod_of(tgid).as_deref());
        if matched == Some(true) || pod_matched {
            if self.listed.insert(tgid) && !kernel_selected {
                if let Err(e) = self.maps.select_pid(tgid) {
                    tracing::warn!("{e:#}");
                }
            }
        } else if matched == Some(false) && kernel_selected && !self.listed.contains(&tgid) {
            // A truncated name or a script: not what `--exe` asked for. Its
            // children were selected with it; those selected on their own
            // are selected again by their exec or the periodic rescan. (One
            // gone already, like a daemon's first process, keeps the
            // kernel's word: its children are what was asked for.)
            tracing::debug!(
                tgid,
                "unselecting a process the kernel took for an --exe match"
            );
            self.maps.unselect_pid(tgid);
            for child in select::descendants(tgid) {
                if !self.listed.contains(&child) {
                    self.maps.unselect_pid(child);
                }
            }
        }
        if self.listed.contains(&tgid) || self.selector.in_cgroups(tgid) {
            self.tls.on_exec(tgid, Instant::now());
            self.learn_runtime(tgid);
            // Read now, while the process is surely there: a short-lived
            // client can be gone by the time its first connection's event
            // is handled (an agent starved of CPU lags behind the ring).
            self.processes.resource(tgid);
        }
    }

    /// Looks at a traced process's executable once: a Go process's
    /// requests are counted per goroutine in the kernel (per process when
    /// its goroutines cannot be read), and per process here, where only
    /// the kernel's decisions know goroutines.
    fn learn_runtime(&mut self, tgid: u32) {
        if let Some(go) = self.runtimes.learn(tgid) {
            self.nesting.nest_by_process(tgid, true);
            if let Err(e) = self
                .maps
                .nest_by_process(tgid, Some(go.g_offset.unwrap_or(0)))
            {
                tracing::warn!(tgid, "{e:#}");
            }
        }
    }

    /// Looks at a traced process once it runs (it has a connection): a
    /// JVM with virtual threads has its requests counted per Java thread in
    /// the kernel (per process when they cannot be told apart), and per
    /// process here.
    fn learn_jvm(&mut self, tgid: u32) {
        let Some(jvm) = self.runtimes.learn_jvm(tgid) else {
            return;
        };
        tracing::info!(pid = tgid, ?jvm, "JVM with virtual threads");
        self.nesting.nest_by_process(tgid, true);
        let set = match jvm {
            Jvm::JavaThreads(layout) => self.maps.nest_by_java_thread(tgid, layout),
            Jvm::Process => self.maps.nest_by_process(tgid, Some(0)),
        };
        if let Err(e) = set {
            tracing::warn!(tgid, "{e:#}");
        }
    }

    fn forget_runtime(&mut self, tgid: u32) {
        if self.runtimes.forget(tgid) {
            self.nesting.nest_by_process(tgid, false);
            let _ = self.maps.nest_by_process(tgid, None);
        }
    }

    fn on_exit(&mut self, tgid: u32) {
        self.processes.forget(tgid);
        if let Some(logs) = self.logs.as_mut() {
            logs.forget_process(tgid);
        }
        self.shared.kafka.forget_process(tgid);
        self.forget_runtime(tgid);
        self.tls.on_exit(tgid);
        if self.listed.remove(&tgid) {
            self.maps.unselect_pid(tgid);
        }
        for (id, c) in self.conns.remove_process(tgid) {
            self.nesting.conn_closed(id);
            self.maps.forget_conn(c.tgid, c.fd, id);
        }
    }

    fn emit(&mut self, id: u64) {
        match self.conns.get_mut(id).map(|c| (c.tgid, c.facts)) {
            Some((tgid, facts)) => self.emit_with(tgid, &facts),
            None => self.done.clear(),
        }
    }

    fn emit_with(&mut self, tgid: u32, facts: &ConnFacts) {
        if self.done.is_empty() {
            return;
        }
        let resource = self.processes.resource(tgid);
        for mut t in self.done.drain(..) {
            stats::add(&self.stats.spans_created, 1);
            stats::add(&self.stats.protocol(t.protocol()).spans, 1);
            let ctx = t.ctx_mut();
            self.nesting.resolve_trace(&mut ctx.trace_id);
            match ctx.uncertain.as_deref() {
                Some(Uncertain::Ambiguous { .. }) => {
                    stats::add(&self.stats.spans_parent_ambiguous, 1)
                }
                Some(Uncertain::Inferred) => stats::add(&self.stats.spans_parent_inferred, 1),
                None => {}
            }
            // Only spans with a parent make a trace grow: a root alone (most
            // traces at high rates: one request, one span) is not followed,
            // which leaves a mega-trace's count one short at worst.
            if ctx.parent.is_some() && self.mega_traces.note(ctx.trace_id, self.ticks) {
                stats::add(&self.stats.mega_traces, 1);
                tracing::warn!(
                    trace_id = %hex::encode(ctx.trace_id),
                    spans = MEGA_TRACE_SPANS,
                    "mega-trace: one trace keeps growing"
                );
            }
            let (trace_id, span_id, parent) = (ctx.trace_id, ctx.span_id, ctx.parent);
            let sampled = ctx.sampled;
            // Measured before sampling: metrics count every transaction.
            let measured = t
                .measure(facts, self.opts)
                .map(|m| self.metrics.prepare(m, &resource, span_id, parent));
            let exported = if sampled {
                let mut span = t.into_span(facts, resource.clone(), &self.clock, self.opts);
                let end_ns = span.end_ns;
                if !self.processors.run(&mut span) {
                    stats::add(&self.stats.spans_dropped_by_processors, 1);
                    None
                } else {
                    self.exporter.submit(span).then_some(end_ns)
                }
            } else {
                stats::add(&self.stats.spans_unsampled, 1);
                None
            };
            if let Some(m) = measured {
                self.metrics.record(&resource, m, trace_id, exported);
            }
        }
    }

    /// Periodic housekeeping (about once a second).
    pub fn tick(&mut self) {
        self.clock.resync();
        self.ticks += 1;
        // Pods selected by namespace or label are picked up as soon as the
        // cache learns of them, not at the next rescan.
        let pods_changed = !self.selector.pods.is_empty() && {
            let generation = self.processes.pods_generation();
            std::mem::replace(&mut self.pods_seen, generation) != generation
        };
        if self.ticks.is_multiple_of(RESELECT_EVERY_TICKS) || pods_changed {
            self.refresh_listed();
        }
        if self.ticks.is_multiple_of(RESELECT_EVERY_TICKS) {
            self.mega_traces.forget_idle(self.ticks);
        }
        let k = self.maps.stats();
        stats::set(&self.stats.kernel_ringbuf_drops, k.ringbuf_drops);
        stats::set(&self.stats.kernel_read_errors, k.read_errors);
        stats::set(&self.stats.kernel_tls_unbound, k.tls_unbound);
        stats::set(&self.stats.tcp_options_written, k.tcp_opt_written);
        stats::set(&self.stats.tcp_options_no_room, k.tcp_opt_no_room);
        stats::set(&self.stats.tcp_options_read, k.tcp_opt_read);
        let h = &k.h2;
        stats::set(&self.stats.h2_traceparent_injected, h.injected);
        stats::set(&self.stats.h2_own_traceparent, h.own_traceparent);
        stats::set(&self.stats.h2_stood_down_split, h.split);
        stats::set(&self.stats.h2_stood_down_unscanned, h.unscanned);
        stats::set(&self.stats.h2_stood_down_too_long, h.too_long);
        stats::set(&self.stats.h2_lost_framing, h.lost_framing);
        stats::set(&self.stats.h2_inject_failed, h.failed);
        stats::set(&self.stats.h2_app_indexed_traceparent, h.app_indexed);
        let kf = &k.kafka;
        stats::set(&self.stats.kafka_traceparent_injected, kf.injected);
        stats::set(&self.stats.kafka_own_traceparent, kf.own_traceparent);
        stats::set(&self.stats.kafka_stood_down_compressed, kf.compressed);
        stats::set(&self.stats.kafka_stood_down_split, kf.split);
        stats::set(&self.stats.kafka_stood_down_crc, kf.crc);
        stats::set(&self.stats.kafka_stood_down_bounds, kf.bounds);
        stats::set(&self.stats.kafka_stood_down_unsupported, kf.unsupported);
        stats::set(&self.stats.kafka_stood_down_malformed, kf.malformed);
        stats::set(&self.stats.kafka_inject_failed, kf.failed);
        stats::set(&self.stats.kafka_lost_framing, kf.lost_framing);
        stats::set(&self.stats.kafka_consumer_spans, kf.consumer_spans);
        stats::set(
            &self.stats.kafka_consumer_stood_down,
            kf.consumer_stood_down,
        );
        let ts = &k.tracestate;
        stats::set(&self.stats.tracestate_carried, ts.carried);
        stats::set(&self.stats.tracestate_dropped, ts.dropped);
        stats::set(&self.stats.tracestate_injected, ts.injected);
        stats::set(&self.stats.tracestate_own, ts.own);
        stats::set(&self.stats.tracestate_no_room, ts.no_room);
        stats::set(&self.stats.log_writes, k.log_writes);
        stats::set(&self.stats.log_writes_ambiguous, k.log_writes_ambiguous);
        stats::set(&self.stats.log_writes_over_rate, k.log_writes_over_rate);
    }

    pub fn exporter(&self) -> &Exporter {
        &self.exporter
    }

    /// The span exporter, and the log exporter when logs are captured.
    pub fn into_exporters(self) -> (Exporter, Option<Exporter<LogRecord>>) {
        (self.exporter, self.logs.map(Logs::into_exporter))
    }
}

fn count_losses(stats: &Stats, protocol: Protocol, new: Losses) {
    let p = stats.protocol(protocol);
    stats::add(&p.parse_errors, new.parse_errors);
    stats::add(&p.decode_errors, new.decode_errors);
    stats::add(&p.gaps, new.gaps);
    stats::add(&p.skipped, new.skipped);
    stats::add(&p.desynced, new.desynced);
    stats::add(&p.unanswered, new.unanswered);
    stats::add(&p.orphan_responses, new.orphan_responses);
}

/// Threads of `pid` blocked in a read-type syscall right now.
fn blocked_reads(pid: u32) -> Vec<(u32, BlockedRead)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let line = std::fs::read_to_string(t.path().join("syscall")).ok()?;
            Some((tid, BlockedRead::parse(&line)?))
        })
        .collect()
}
