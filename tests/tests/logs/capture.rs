//! A Python service logs with the `logging` module to stderr, stdout and
//! files while it serves requests on several threads at once: every line a
//! request wrote must arrive as a log record naming exactly that request's
//! SERVER span, with the severity the line shows; lines written outside a
//! request (a background thread's) and lines of a file no pattern selects
//! must not arrive; a line longer than `--log-record-bytes` arrives cut
//! there and counted; and every file holds, byte for byte, exactly what
//! the service wrote.

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::log_service::{LogService, LOG_SERVICE};
use clew_e2e::net::raw_get;
use clew_e2e::receiver::KIND_SERVER;
use clew_e2e::{Agent, Cgroup, Export, Protocol, Receiver, RecvLog, RecvSpan, Select};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Requests, lines each, and client threads sending them at once.
const REQUESTS: usize = 24;
const LINES: usize = 5;
const CLIENTS: usize = 8;
const RECORD_BYTES: usize = 1024;
const TIMEOUT: Duration = Duration::from_secs(40);

/// What one record must be.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Want {
    /// `log.iostream` or `log.file.path`.
    stream: (&'static str, String),
    body: String,
    severity: (i32, String),
    /// The request whose SERVER span it names.
    request: String,
}

fn request_ids(prefix: &str) -> Vec<String> {
    (0..REQUESTS).map(|i| format!("{prefix}{i}")).collect()
}

/// The records the requests must give, keyed by (stream, body).
fn expected(svc: &LogService, ids: &[String], huge: &str) -> Result<Vec<Want>> {
    let path = |p: &std::path::Path| -> Result<String> {
        Ok(std::fs::canonicalize(p)?.to_string_lossy().into_owned())
    };
    let (app, json) = (path(&svc.app_log)?, path(&svc.json_log)?);
    let mut out = Vec::new();
    for id in ids {
        for i in 0..LINES {
            let (msg, (level, number)) = LogService::line(id, i);
            let want = |stream: (&'static str, String), body: String, text: String| Want {
                stream,
                body,
                severity: (number, text),
                request: format!("/log/{id}"),
            };
            out.push(want(
                ("log.iostream", "stderr".into()),
                format!("{level}:app:{msg}"),
                level.into(),
            ));
            out.push(want(
                ("log.file.path", app.clone()),
                format!("{level} {msg}"),
                level.into(),
            ));
            out.push(want(
                ("log.file.path", json.clone()),
                format!(r#"{{"level": "{}", "msg": "{msg}"}}"#, level.to_lowercase()),
                level.to_lowercase(),
            ));
        }
        out.push(Want {
            stream: ("log.iostream", "stdout".into()),
            body: format!("stdout req {id}"),
            severity: (0, String::new()),
            request: format!("/log/{id}"),
        });
    }
    let huge_line = svc.huge_message(huge);
    for (stream, line) in [
        (
            ("log.iostream", "stderr".to_owned()),
            format!("ERROR:huge:{huge_line}"),
        ),
        (("log.file.path", app), format!("ERROR {huge_line}")),
    ] {
        out.push(Want {
            stream,
            body: line[..RECORD_BYTES].to_owned(),
            severity: (17, "ERROR".into()),
            request: format!("/huge/{huge}"),
        });
    }
    Ok(out)
}

fn stream_of(l: &RecvLog) -> Option<(&'static str, String)> {
    for key in ["log.iostream", "log.file.path"] {
        if let Some(v) = l.attr_str(key) {
            return Some((key, v.to_owned()));
        }
    }
    None
}

/// Sends the requests from `CLIENTS` threads at once.
fn send_all(port: u16, paths: Vec<String>) -> Result<()> {
    let chunks: Vec<Vec<String>> = paths
        .chunks(paths.len().div_ceil(CLIENTS))
        .map(<[String]>::to_vec)
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || -> Result<()> {
                for p in chunk {
                    let status = raw_get(port, &p, &[])?;
                    ensure!(status == 200, "{p}: status {status}");
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(())
}

/// Every line of the file at `path` is one of `lines` (each of which it
/// must hold exactly once) or an `outside tick K` line as `tick(K)` writes
/// it, with K running 0, 1, … without a gap; or one of `also`.
fn check_file(
    path: &std::path::Path,
    lines: &[String],
    tick: impl Fn(usize) -> String,
    also: &[String],
) -> Result<()> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(text).context("not UTF-8")?;
    ensure!(
        text.ends_with('\n'),
        "{} does not end with a line end",
        path.display()
    );
    let mut left: HashMap<&str, usize> = HashMap::new();
    for l in lines {
        *left.entry(l.as_str()).or_default() += 1;
    }
    let mut ticks = 0;
    for line in text.lines() {
        match left.get_mut(line) {
            Some(n) if *n > 0 => *n -= 1,
            _ if line == tick(ticks) => ticks += 1,
            _ if also.iter().any(|a| a == line) => {}
            _ => bail!(
                "{}: line {:?} is not one the service wrote (ticks so far: {ticks})",
                path.display(),
                &line[..line.len().min(200)]
            ),
        }
    }
    let missing: Vec<_> = left
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(l, _)| *l)
        .collect();
    ensure!(
        missing.is_empty(),
        "{}: lines missing: {:?}",
        path.display(),
        &missing[..missing.len().min(5)]
    );
    ensure!(
        ticks > 0,
        "{}: no line written outside a request",
        path.display()
    );
    Ok(())
}

/// Runs the service under an agent exporting over `protocol` and checks
/// everything the module says.
fn run(name: &str, protocol: Protocol, extra_args: &[&str]) -> Result<()> {
    let cg = Cgroup::new(name)?;
    let rx = Receiver::start(protocol)?;
    let svc = LogService::start(&cg)?;
    let dir = std::fs::canonicalize(svc.dir())?;
    let sources = format!("stdout,stderr,{0}/app*.log,{0}/*.json", dir.display());
    let record_bytes = RECORD_BYTES.to_string();
    let args = [
        &["--logs", &sources, "--log-record-bytes", &record_bytes],
        extra_args,
    ]
    .concat();
    let mut agent = Agent::start(&cg, &rx.endpoint(), protocol, &args)?;
    // The service logs from its background thread all along, before and
    // while the agent runs.
    let ids = request_ids(&format!("{name}-"));
    let huge = format!("{name}-huge");
    let mut paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/log/{id}?n={LINES}"))
        .collect();
    paths.push(format!("/huge/{huge}"));
    send_all(svc.port, paths)?;
    let want = expected(&svc, &ids, &huge)?;

    let spans = rx.wait_for(
        |s| {
            ids.iter()
                .all(|id| server(s, &format!("/log/{id}")).is_some())
                && server(s, &format!("/huge/{huge}")).is_some()
        },
        TIMEOUT,
    )?;
    rx.wait_for_logs(|l| l.len() >= want.len(), TIMEOUT)?;
    // Anything else that was going to come has come by now.
    std::thread::sleep(Duration::from_secs(3));
    let logs = rx.logs();
    let mut left: HashMap<((&str, String), &str), &Want> = want
        .iter()
        .map(|w| ((w.stream.clone(), w.body.as_str()), w))
        .collect();
    let mut bad = Vec::new();
    for l in &logs {
        let Some(stream) = stream_of(l) else {
            bad.push(format!("no stream attribute: {l}"));
            continue;
        };
        let Some(w) = left.remove(&(stream, l.body.as_str())) else {
            bad.push(format!("not a line a request wrote, or twice: {l}"));
            continue;
        };
        let span = server(&spans, &w.request).context("span")?;
        if (l.trace_id.as_str(), l.span_id.as_str())
            != (span.trace_id.as_str(), span.span_id.as_str())
        {
            bad.push(format!("names another span than {span}: {l}"));
        }
        if (l.severity_number, l.severity_text.clone()) != w.severity {
            bad.push(format!("severity should be {:?}: {l}", w.severity));
        }
        if l.flags != 1 || l.service() != Some(LOG_SERVICE) {
            bad.push(format!("flags or service: {l}"));
        }
        let cut = l.attrs.get("clew.log.truncated") == Some(&clew_e2e::Value::Bool(true));
        if cut != w.request.starts_with("/huge/") {
            bad.push(format!("clew.log.truncated wrong: {l}"));
        }
        if l.time_ns < span.start_ns || l.time_ns > span.end_ns {
            bad.push(format!("written outside its span {span}: {l}"));
        }
    }
    ensure!(
        bad.is_empty() && left.is_empty(),
        "{} records wrong, {} missing (first 5 each):\n{}\nmissing: {:?}\n{}",
        bad.len(),
        left.len(),
        bad.iter().take(5).cloned().collect::<Vec<_>>().join("\n"),
        left.values().take(5).collect::<Vec<_>>(),
        rx.dump_logs()
    );
    println!(
        "{name}: {} records, each naming its request's span; none from outside a request or other.txt",
        logs.len()
    );

    // The service's own output, byte for byte.
    let lines = |fmt: &dyn Fn(&str, &str) -> String| -> Vec<String> {
        ids.iter()
            .flat_map(|id| (0..LINES).map(move |i| (id, i)))
            .map(|(id, i)| {
                let (msg, (level, _)) = LogService::line(id, i);
                fmt(level, &msg)
            })
            .collect()
    };
    let huge_line = svc.huge_message(&huge);
    let mut stderr = lines(&|level, msg| format!("{level}:app:{msg}"));
    stderr.push(format!("ERROR:huge:{huge_line}"));
    check_file(
        &svc.stderr,
        &stderr,
        |k| format!("INFO:app:outside tick {k}"),
        &[],
    )?;
    let mut app = lines(&|level, msg| format!("{level} {msg}"));
    app.push(format!("ERROR {huge_line}"));
    check_file(
        &svc.app_log,
        &app,
        |k| format!("INFO outside tick {k}"),
        &[],
    )?;
    let json =
        lines(&|level, msg| format!(r#"{{"level": "{}", "msg": "{msg}"}}"#, level.to_lowercase()));
    check_file(
        &svc.json_log,
        &json,
        |k| format!(r#"{{"level": "info", "msg": "outside tick {k}"}}"#),
        &[],
    )?;
    let stdout: Vec<String> = ids.iter().map(|id| format!("stdout req {id}")).collect();
    let listening = format!("listening on 127.0.0.1:{}", svc.port);
    check_file(&svc.stdout, &stdout, |_| String::new(), &[listening]).or_else(|e| {
        // stdout has no background lines: only "no outside line" may fail.
        if e.to_string().contains("no line written outside") {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    let other = std::fs::read_to_string(&svc.other_log)?;
    ensure!(other.lines().count() == REQUESTS, "other.txt: {other}");

    // The cut lines and the file no pattern selects were counted.
    ensure!(
        agent.metric("log_records_truncated")? >= 2,
        "clew_log_records_truncated"
    );
    ensure!(
        agent.metric("log_writes_unmatched")? >= 1,
        "clew_log_writes_unmatched"
    );
    ensure!(
        agent.metric("log_records")? == logs.len() as u64,
        "clew_log_records"
    );
    agent.ensure_healthy()?;
    agent.stop()
}

fn server<'a>(spans: &'a [RecvSpan], path: &str) -> Option<&'a RecvSpan> {
    spans.iter().find(|s| {
        s.kind == KIND_SERVER && s.service() == Some(LOG_SERVICE) && s.path() == Some(path)
    })
}

#[test]
fn every_line_a_request_wrote_arrives_with_its_span_over_grpc() -> Result<()> {
    run("logs-grpc", Protocol::Grpc, &[])
}

#[test]
fn every_line_a_request_wrote_arrives_with_its_span_over_http() -> Result<()> {
    run("logs-http", Protocol::HttpProtobuf, &[])
}

/// The same records where a program at each write's entry keeps its
/// arguments (kernels before 5.15) instead of the return reading them.
#[test]
fn every_line_arrives_with_arguments_kept_at_entry() -> Result<()> {
    run(
        "logs-entry",
        Protocol::Grpc,
        &["--syscall-arguments", "enter"],
    )
}

/// Head sampling dropped the spans: the records still come, their trace
/// flags saying the span they name was not sampled.
#[test]
fn records_of_unsampled_spans_say_so() -> Result<()> {
    let cg = Cgroup::new("logs-unsampled")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let svc = LogService::start(&cg)?;
    let mut agent = Agent::launch_with_env(
        &[Select::Cgroup(&cg)],
        Export::Otlp {
            endpoint: &rx.endpoint(),
            protocol: Protocol::Grpc,
        },
        &["--logs", "stderr"],
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    )?;
    send_all(svc.port, vec!["/log/unsampled?n=3".into()])?;
    let logs = rx.wait_for_logs(|l| l.len() >= 3, TIMEOUT)?;
    for l in &logs {
        ensure!(
            l.flags == 0 && l.trace_id.len() == 32 && l.span_id.len() == 16,
            "{l}"
        );
    }
    let ids: std::collections::HashSet<_> = logs.iter().map(|l| &l.span_id).collect();
    ensure!(ids.len() == 1, "one request, one span: {ids:?}");
    ensure!(rx.spans().is_empty(), "{}", rx.dump());
    agent.ensure_healthy()?;
    agent.stop()
}

/// Without a collector, records show in the console view under the
/// SERVER span that wrote them.
#[test]
fn the_console_view_shows_records_under_their_span() -> Result<()> {
    let cg = Cgroup::new("logs-console")?;
    let svc = LogService::start(&cg)?;
    let agent = Agent::launch(
        &[Select::Cgroup(&cg)],
        Export::Console,
        &["--logs", "stderr"],
    )?;
    send_all(svc.port, vec!["/log/console?n=2".into()])?;
    let deadline = Instant::now() + TIMEOUT;
    let text = agent.wait_console(
        |t| t.contains("req console line 1"),
        deadline - Instant::now(),
    )?;
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("SERVER log-service") && l.contains("/log/console"))
        .with_context(|| format!("no SERVER line:\n{text}"))?;
    ensure!(
        lines[at + 1].ends_with("· WARNING WARNING:app:req console line 0  (stderr)")
            && lines[at + 2].ends_with("· ERROR ERROR:app:req console line 1  (stderr)"),
        "the records are not under their span:\n{text}"
    );
    agent.stop()
}

/// `--log-rate` bounds a process's captured writes per second in the
/// kernel, before any copy: a burst past it is dropped and counted.
#[test]
fn writes_over_the_rate_are_dropped_and_counted() -> Result<()> {
    const RATE: u64 = 5;
    const BURST: u64 = 40;
    let cg = Cgroup::new("logs-rate")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let svc = LogService::start(&cg)?;
    let rate = RATE.to_string();
    let agent = Agent::start(
        &cg,
        &rx.endpoint(),
        Protocol::Grpc,
        &["--logs", "stderr", "--log-rate", &rate],
    )?;
    send_all(svc.port, vec![format!("/log/rate?n={BURST}")])?;
    rx.wait_for_logs(|l| !l.is_empty(), TIMEOUT)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let over = loop {
        let over = agent.metric("log_writes_over_rate")?;
        let done = over + rx.logs().len() as u64 >= BURST;
        if done || Instant::now() > deadline {
            break over;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let got = rx.logs().len() as u64;
    // A second's worth, and what the burst's ~100 ms refilled.
    ensure!(
        (RATE..=RATE + 1).contains(&got) && got + over == BURST,
        "{got} records and {over} writes over the rate, of {BURST}\n{}",
        rx.dump_logs()
    );
    agent.stop()
}
