//! From samples to the table: medians over rounds, ratios and deltas
//! against the baseline of the same scenario and load, the targets
//! next to what was measured, as Markdown and JSON.

use super::machine::Machine;
use super::measure::{Cpus, Sample};
use super::mode::Mode;
use super::scenario::{Load, Scenario};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// One line of the table: a scenario × load × mode, medians over rounds.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub load: String,
    pub mode: String,
    pub rounds: usize,
    pub rps: f64,
    pub rps_ratio: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub dp50_us: Option<f64>,
    pub dp99_us: Option<f64>,
    /// Agent CPU ms per 1,000 requests (= % of a core at 10k req/s).
    pub cpu_ms_per_1k: Option<f64>,
    /// Run time of all the agent's BPF programs per request.
    pub bpf_ns_per_req: Option<f64>,
    /// The same by program, over all rounds: (name, calls per request, ns per call).
    pub bpf_programs: Vec<(String, f64, f64)>,
    pub rss_mib: Option<f64>,
    /// Summed over rounds, like `errors`.
    pub lost: Option<u64>,
    /// Ring-buffer records the agent read per request.
    pub records_per_req: Option<f64>,
    pub spans_per_req: Option<f64>,
    pub exported_pct: Option<f64>,
    pub errors: u64,
    pub late: Option<u64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Aggregates `samples` in the order the plan ran them.
pub fn rows(samples: &[Sample], scenarios: &[Scenario]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &scenario in scenarios {
        let mut keys: Vec<(Load, Mode)> = Vec::new();
        for s in samples.iter().filter(|s| s.scenario == scenario) {
            if !keys.contains(&(s.load, s.mode)) {
                keys.push((s.load, s.mode));
            }
        }
        // Per load, the baseline first, then the modes in their fixed order.
        keys.sort_by_key(|&(load, mode)| {
            let li = scenario.loads(false).iter().position(|&l| l == load);
            let mi = Mode::ALL.iter().position(|&m| m == mode);
            (li, mi)
        });
        for (load, mode) in keys {
            let group: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.scenario == scenario && s.load == load && s.mode == mode)
                .collect();
            rows.push(aggregate(scenario, load, mode, &group));
        }
    }
    let baselines: Vec<Row> = rows
        .iter()
        .filter(|r| r.mode == Mode::Baseline.name())
        .cloned()
        .collect();
    for row in &mut rows {
        let Some(base) = baselines
            .iter()
            .find(|b| b.scenario == row.scenario && b.load == row.load)
        else {
            continue;
        };
        if base.rps > 0.0 {
            row.rps_ratio = Some(row.rps / base.rps);
        }
        row.dp50_us = row.p50_us.zip(base.p50_us).map(|(a, b)| a - b);
        row.dp99_us = row.p99_us.zip(base.p99_us).map(|(a, b)| a - b);
    }
    rows
}

fn aggregate(scenario: Scenario, load: Load, mode: Mode, group: &[&Sample]) -> Row {
    let f = |get: &dyn Fn(&Sample) -> Option<f64>| {
        median(group.iter().filter_map(|s| get(s)).collect())
    };
    let agent = group.iter().any(|s| s.agent.is_some());
    Row {
        scenario: scenario.name().into(),
        load: load.label(),
        mode: mode.name().into(),
        rounds: group.len(),
        rps: f(&|s| Some(s.rps())).unwrap_or(0.0),
        p50_us: f(&|s| s.p50_s.map(|v| v * 1e6)),
        p99_us: f(&|s| s.p99_s.map(|v| v * 1e6)),
        cpu_ms_per_1k: f(&|s| {
            let a = s.agent.as_ref()?;
            (s.requests > 0).then(|| a.cpu_s * 1e3 / (s.requests as f64 / 1e3))
        }),
        bpf_ns_per_req: f(&|s| {
            let a = s.agent.as_ref()?;
            let ns: u64 = a.bpf.values().map(|r| r.ns).sum();
            (s.requests > 0 && !a.bpf.is_empty()).then(|| ns as f64 / s.requests as f64)
        }),
        bpf_programs: per_program(group),
        rss_mib: f(&|s| Some(s.agent.as_ref()?.peak_rss as f64 / (1 << 20) as f64)),
        lost: agent.then(|| {
            group
                .iter()
                .filter_map(|s| s.agent.as_ref())
                .map(|a| a.lost)
                .sum()
        }),
        records_per_req: f(&|s| {
            let a = s.agent.as_ref()?;
            (s.requests > 0).then(|| a.events as f64 / s.requests as f64)
        }),
        spans_per_req: f(&|s| {
            let a = s.agent.as_ref()?;
            (s.requests > 0).then(|| a.spans as f64 / s.requests as f64)
        }),
        exported_pct: f(&|s| s.agent.as_ref()?.exported.map(|e| e * 100.0)),
        errors: group.iter().map(|s| s.errors).sum(),
        late: group.iter().filter_map(|s| s.late).reduce(|a, b| a + b),
        ..Row::default()
    }
}

/// Calls per request and ns per call of each program, summed over the rounds.
fn per_program(group: &[&Sample]) -> Vec<(String, f64, f64)> {
    let mut sums: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    let mut requests = 0;
    for s in group {
        let Some(a) = &s.agent else { continue };
        requests += s.requests;
        for (name, run) in &a.bpf {
            let e = sums.entry(name).or_default();
            e.0 += run.ns;
            e.1 += run.count;
        }
    }
    if requests == 0 {
        return Vec::new();
    }
    let mut out: Vec<(String, f64, f64)> = sums
        .into_iter()
        .map(|(name, (ns, count))| {
            (
                name.to_string(),
                count as f64 / requests as f64,
                ns as f64 / count as f64,
            )
        })
        .collect();
    // Costliest per request first.
    out.sort_by(|a, b| (b.1 * b.2).total_cmp(&(a.1 * a.2)));
    out
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn signed(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:+.1}"))
}

/// A progress line for one sample.
pub fn one_line(s: &Sample) -> String {
    let mut line = format!(
        "{:.0} req/s, p50 {} µs, p99 {} µs",
        s.rps(),
        opt(s.p50_s.map(|v| v * 1e6), 1),
        opt(s.p99_s.map(|v| v * 1e6), 1)
    );
    if s.errors > 0 {
        let _ = write!(line, ", {} errors", s.errors);
    }
    if let Some(late) = s.late.filter(|&l| l > 0) {
        let _ = write!(line, ", {late} late sends");
    }
    if let Some(a) = &s.agent {
        let _ = write!(
            line,
            ", agent {:.2} CPU s, RSS {:.1} MiB, {} spans, {} lost",
            a.cpu_s,
            a.peak_rss as f64 / (1 << 20) as f64,
            a.spans,
            a.lost
        );
    }
    line
}

/// Settings printed above the table.
pub struct Header<'a> {
    pub machine: &'a Machine,
    pub rounds: usize,
    pub duration_s: u64,
    pub cpus: Cpus,
    pub pipeline_spans_per_s: Option<f64>,
}

impl Header<'_> {
    fn pinning(&self) -> String {
        match (self.cpus.server, self.cpus.load) {
            (Some(s), Some(l)) => {
                format!("servers pinned to CPU {s}, load generators to CPU {l}, agent unpinned")
            }
            _ => "nothing pinned".into(),
        }
    }
}

pub fn markdown(header: &Header, rows: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {}  ", header.machine.summary());
    let _ = writeln!(
        md,
        "Settings: {} round(s) of {} s per load, modes interleaved; {}; loopback. \
         `max` = closed loop (wrk, h2load, the bench's Kafka producer), `N/s` = open-loop fixed rate \
         (latency from send to last byte; Kafka: from the Produce request to its acknowledgement).\n",
        header.rounds,
        header.duration_s,
        header.pinning()
    );
    md.push_str(
        "| scenario | load | mode | req/s | vs base | p50 µs | Δp50 µs | p99 µs | Δp99 µs \
         | agent CPU ms/1k req | BPF ns/req | agent RSS MiB | lost events | records/req | spans/req | exported % | errors |\n",
    );
    md.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for r in rows {
        let errors = match r.late.filter(|&l| l > 0) {
            Some(late) => format!("{} ({late} late)", r.errors),
            None => r.errors.to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.load,
            r.mode,
            r.rps,
            r.rps_ratio
                .map_or_else(|| "–".into(), |v| format!("{:.1}%", v * 100.0)),
            opt(r.p50_us, 1),
            signed(r.dp50_us),
            opt(r.p99_us, 1),
            signed(r.dp99_us),
            opt(r.cpu_ms_per_1k, 2),
            opt(r.bpf_ns_per_req, 0),
            opt(r.rss_mib, 1),
            r.lost.map_or_else(|| "–".into(), |v| v.to_string()),
            opt(r.records_per_req, 2),
            opt(r.spans_per_req, 2),
            opt(r.exported_pct, 1),
            errors
        );
    }
    programs_table(&mut md, rows);
    md.push_str(
        "\nTargets (issue 13; measured, not asserted):\n\n| target | measured | |\n|---|---|---|\n",
    );
    for t in targets(rows, header.pipeline_spans_per_s) {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {verdict} |", t.what, t.measured);
    }
    md
}

/// Where the kernel time goes: per program, for the default mode at each
/// scenario's heaviest load.
fn programs_table(md: &mut String, rows: &[Row]) {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.mode == Mode::Clew.name() && r.load == "max" && !r.bpf_programs.is_empty())
        .collect();
    if rows.is_empty() {
        return;
    }
    md.push_str(
        "\nBPF run time by program (`clew` mode, `max` load, all rounds; \
         `BPF_ENABLE_STATS`):\n\n| scenario | program | calls/req | ns/call | ns/req |\n|---|---|--:|--:|--:|\n",
    );
    for r in rows {
        for (name, calls, ns) in &r.bpf_programs {
            let _ = writeln!(
                md,
                "| {} | {name} | {calls:.2} | {ns:.0} | {:.0} |",
                r.scenario,
                calls * ns
            );
        }
    }
}

pub struct Target {
    pub what: &'static str,
    pub measured: String,
    pub met: Option<bool>,
}

/// The targets, read off the rows for the clew (default) mode.
pub fn targets(rows: &[Row], pipeline_spans_per_s: Option<f64>) -> Vec<Target> {
    let clew = |scenario: Scenario, load: Option<&str>| {
        let mut cands: Vec<&Row> = rows
            .iter()
            .filter(|r| r.scenario == scenario.name() && r.mode == Mode::Clew.name())
            .filter(|r| load.is_none_or(|l| r.load == l))
            .collect();
        // Without a named load: the highest fixed rate.
        cands.retain(|r| load.is_some() || r.load != "max");
        cands.last().copied()
    };
    let check = |what,
                 row: Option<&Row>,
                 get: &dyn Fn(&Row) -> Option<f64>,
                 show: &dyn Fn(f64) -> String,
                 ok: &dyn Fn(f64) -> bool| {
        let v = row.and_then(get);
        Target {
            what,
            measured: match (row, v) {
                (Some(r), Some(v)) => format!("{} ({} {})", show(v), r.scenario, r.load),
                _ => "–".into(),
            },
            met: v.map(ok),
        }
    };
    let ratio = |v: f64| format!("{:.1}%", v * 100.0);
    let ms = |v: f64| format!("{v:.2} ms");
    let bpf_max = |s: Scenario| clew(s, Some("max")).and_then(|r| r.bpf_ns_per_req);
    let kafka_vs_http1 = bpf_max(Scenario::Kafka).zip(bpf_max(Scenario::NginxKeepalive));
    vec![
        check(
            "BPF run time per plaintext request ≤ 1.5 µs (all programs)",
            clew(Scenario::NginxKeepalive, Some("max")),
            &|r| r.bpf_ns_per_req,
            &|v| format!("{:.2} µs", v / 1e3),
            &|v| v <= 1500.0,
        ),
        Target {
            what: "BPF run time per Kafka Produce (broker traced) ≤ per plaintext HTTP/1 request",
            measured: kafka_vs_http1.map_or_else(
                || "–".into(),
                |(k, h)| {
                    format!(
                        "{:.2} µs against {:.2} µs (kafka max, nginx-keepalive max)",
                        k / 1e3,
                        h / 1e3
                    )
                },
            ),
            met: kafka_vs_http1.map(|(k, h)| k <= h),
        },
        check(
            "agent CPU ≤ 1.5 ms per 1,000 requests at max load",
            clew(Scenario::NginxKeepalive, Some("max")),
            &|r| r.cpu_ms_per_1k,
            &ms,
            &|v| v <= 1.5,
        ),
        check(
            "agent CPU ≤ 1.5 ms per 1,000 requests at 10k/s",
            clew(Scenario::NginxKeepalive, Some("10k/s")),
            &|r| r.cpu_ms_per_1k,
            &ms,
            &|v| v <= 1.5,
        ),
        check(
            "agent RSS ≤ 64 MiB at 10k req/s",
            clew(Scenario::NginxKeepalive, Some("10k/s")),
            &|r| r.rss_mib,
            &|v| format!("{v:.1} MiB"),
            &|v| v <= 64.0,
        ),
        check(
            "nginx keep-alive at max load ≥ 90% of baseline",
            clew(Scenario::NginxKeepalive, Some("max")),
            &|r| r.rps_ratio,
            &ratio,
            &|v| v >= 0.90,
        ),
        check(
            "nginx, a connection per request, at max load ≥ 85% of baseline",
            clew(Scenario::NginxClose, Some("max")),
            &|r| r.rps_ratio,
            &ratio,
            &|v| v >= 0.85,
        ),
        check(
            "nginx HTTPS keep-alive at max load ≥ 60% of baseline",
            clew(Scenario::NginxTls, Some("max")),
            &|r| r.rps_ratio,
            &ratio,
            &|v| v >= 0.60,
        ),
        check(
            "nginx HTTPS added p50 ≤ 25 µs",
            clew(Scenario::NginxTls, None),
            &|r| r.dp50_us,
            &|v| format!("{v:+.1} µs"),
            &|v| v <= 25.0,
        ),
        Target {
            what: "userspace pipeline ≥ 1M spans/s per core (criterion)",
            measured: pipeline_spans_per_s.map_or_else(
                || "– (not run)".into(),
                |v| format!("{:.0}k spans/s", v / 1e3),
            ),
            met: pipeline_spans_per_s.map(|v| v >= 1e6),
        },
    ]
}

pub fn json(header: &Header, rows: &[Row], samples: &[Sample]) -> Value {
    let targets: Vec<Value> = targets(rows, header.pipeline_spans_per_s)
        .into_iter()
        .map(|t| json!({"target": t.what, "measured": t.measured, "met": t.met}))
        .collect();
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "scenario": r.scenario, "load": r.load, "mode": r.mode, "rounds": r.rounds,
                "rps": r.rps, "rps_ratio": r.rps_ratio,
                "p50_us": r.p50_us, "p99_us": r.p99_us, "dp50_us": r.dp50_us, "dp99_us": r.dp99_us,
                "agent_cpu_ms_per_1k_req": r.cpu_ms_per_1k, "agent_peak_rss_mib": r.rss_mib,
                "bpf_ns_per_req": r.bpf_ns_per_req,
                "bpf_programs": r.bpf_programs.iter().map(|(name, calls, ns)| json!({
                    "program": name, "calls_per_req": calls, "ns_per_call": ns,
                })).collect::<Vec<_>>(),
                "ringbuf_lost": r.lost, "records_per_req": r.records_per_req,
                "spans_per_req": r.spans_per_req,
                "exported_pct": r.exported_pct, "errors": r.errors, "late_sends": r.late,
            })
        })
        .collect();
    let samples: Vec<Value> = samples
        .iter()
        .map(|s| {
            json!({
                "scenario": s.scenario.name(), "load": s.load.label(), "mode": s.mode.name(),
                "round": s.round + 1, "requests": s.requests, "seconds": s.seconds,
                "errors": s.errors, "late_sends": s.late, "p50_s": s.p50_s, "p99_s": s.p99_s,
                "agent": s.agent.as_ref().map(|a| json!({
                    "cpu_s": a.cpu_s, "peak_rss_bytes": a.peak_rss, "events": a.events,
                    "ringbuf_lost": a.lost, "spans": a.spans, "exported_share": a.exported,
                    "bpf": a.bpf.iter().map(|(name, r)| json!({
                        "program": name, "run_time_ns": r.ns, "run_cnt": r.count,
                    })).collect::<Vec<_>>(),
                })),
            })
        })
        .collect();
    json!({
        "machine": header.machine.to_json(),
        "settings": {
            "rounds": header.rounds, "duration_s": header.duration_s,
            "server_cpu": header.cpus.server, "load_cpu": header.cpus.load,
        },
        "pipeline_spans_per_s": header.pipeline_spans_per_s,
        "rows": rows,
        "targets": targets,
        "samples": samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::AgentUse;

    fn sample(mode: Mode, load: Load, round: usize, requests: u64, p50_us: f64) -> Sample {
        Sample {
            scenario: Scenario::NginxKeepalive,
            load,
            mode,
            round,
            requests,
            seconds: 2.0,
            errors: 0,
            late: None,
            p50_s: Some(p50_us / 1e6),
            p99_s: Some(2.0 * p50_us / 1e6),
            agent: (mode != Mode::Baseline).then(|| AgentUse {
                cpu_s: 0.2,
                peak_rss: 30 << 20,
                events: 2 * requests,
                lost: 1,
                spans: requests,
                exported: Some(1.0),
                bpf: std::collections::BTreeMap::from([
                    (
                        "enter_io".to_string(),
                        crate::bench::bpf_stats::Run {
                            ns: 200 * requests,
                            count: 2 * requests,
                        },
                    ),
                    (
                        "exit_io".to_string(),
                        crate::bench::bpf_stats::Run {
                            ns: 600 * requests,
                            count: 2 * requests,
                        },
                    ),
                ]),
            }),
        }
    }

    #[test]
    fn medians_ratios_and_deltas_against_the_baseline() {
        let samples = [
            sample(Mode::Baseline, Load::Max, 0, 100_000, 50.0),
            sample(Mode::Clew, Load::Max, 0, 96_000, 53.0),
            sample(Mode::Baseline, Load::Max, 1, 110_000, 70.0),
            sample(Mode::Clew, Load::Max, 1, 99_000, 51.0),
            sample(Mode::Baseline, Load::Max, 2, 90_000, 60.0),
            sample(Mode::Clew, Load::Max, 2, 97_000, 80.0),
        ];
        // A scenario without samples (not run) has no rows.
        let rows = rows(&samples, &[Scenario::NginxKeepalive, Scenario::Kafka]);
        assert_eq!(rows.len(), 2);
        let (base, clew) = (&rows[0], &rows[1]);
        assert_eq!((base.mode.as_str(), base.rounds), ("baseline", 3));
        assert_eq!(base.rps, 50_000.0);
        assert_eq!(clew.rps, 48_500.0);
        assert!((clew.rps_ratio.unwrap() - 0.97).abs() < 1e-9);
        assert!((clew.dp50_us.unwrap() - (53.0 - 60.0)).abs() < 1e-9);
        // 0.2 CPU s for 97,000 requests.
        assert!((clew.cpu_ms_per_1k.unwrap() - 200.0 / 97.0).abs() < 1e-9);
        assert_eq!((clew.lost, clew.rss_mib), (Some(3), Some(30.0)));
        assert_eq!(base.lost, None);

        let machine = Machine {
            kernel: "6.18".into(),
            cpu: "test cpu".into(),
            cores: 2,
            date: "today".into(),
            git_rev: "abc".into(),
        };
        let header = Header {
            machine: &machine,
            rounds: 3,
            duration_s: 2,
            cpus: Cpus {
                server: Some(0),
                load: Some(1),
            },
            pipeline_spans_per_s: Some(750e3),
        };
        let md = markdown(&header, &rows);
        assert!(
            md.contains("| nginx-keepalive | max | clew | 48500 | 97.0% | 53.0 | -7.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| 2.06 | 800 | 30.0 |"),
            "CPU, BPF ns/req and RSS columns: {md}"
        );
        assert!(md.contains("| nginx keep-alive at max load ≥ 90% of baseline | 97.0% (nginx-keepalive max) | met |"), "{md}");
        assert!(md.contains("| BPF run time per plaintext request ≤ 1.5 µs (all programs) | 0.80 µs (nginx-keepalive max) | met |"), "{md}");
        assert!(
            md.contains("| nginx-keepalive | exit_io | 2.00 | 300 | 600 |"),
            "{md}"
        );
        assert!(md.contains("| 750k spans/s | missed |"), "{md}");
        assert!(
            md.contains("| agent RSS ≤ 64 MiB at 10k req/s | – | not measured |"),
            "{md}"
        );
        assert!(
            md.contains("per plaintext HTTP/1 request | – | not measured |"),
            "Kafka against HTTP/1 without a Kafka row: {md}"
        );
        let json = json(&header, &rows, &samples);
        assert_eq!(json["rows"][1]["rps"], 48_500.0);
        assert_eq!(json["samples"].as_array().unwrap().len(), 6);
        assert_eq!(json["machine"]["kernel"], "6.18");
    }
}
