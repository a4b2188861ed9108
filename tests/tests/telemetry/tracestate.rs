//! `tracestate` carried on with the injected `traceparent` (W3C Trace
//! Context), asserted on what the next hop receives: an untraced client
//! sends exact bytes to a traced service, which calls an untraced
//! recording server (every byte it receives) over HTTP/1, or an untraced
//! HTTP/2 witness (every header list its HPACK decoder produced). The
//! kernel carries a valid incoming `tracestate` of up to 512 bytes, and a
//! new trace the `probability` sampler kept carries its `ot=th`; anything
//! else goes on without one, never altered; a request with its own is
//! left with its own. The exported spans carry the same `tracestate`.

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::h2::H2Witness;
use clew_e2e::net::raw_get;
use clew_e2e::peers::PyService;
use clew_e2e::receiver::{KIND_CLIENT, KIND_SERVER};
use clew_e2e::recording::{Recorded, RecordingServer};
use clew_e2e::wire::parse_value;
use clew_e2e::{Agent, Cgroup, Export, Protocol, Receiver, RecvSpan, Select, SPAN_TIMEOUT};
use std::time::{Duration, Instant};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

struct Case {
    name: &'static str,
    /// Header lines after `Host`, exactly as sent.
    headers: Vec<String>,
    /// The `tracestate` value the next hop must get, byte for byte.
    forwarded: Option<String>,
    /// The SERVER span's `tracestate` (and the CLIENT span's, when forwarded).
    state: String,
}

fn traceparent() -> String {
    format!("traceparent: 00-{TRACE}-{PARENT}-01")
}

fn members(n: usize) -> String {
    (0..n)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",")
}

fn cases() -> Vec<Case> {
    let carried = |name, value: &str, state: &str| Case {
        name,
        headers: vec![traceparent(), format!("tracestate: {value}")],
        forwarded: Some(value.trim_matches([' ', '\t']).to_owned()),
        state: state.to_owned(),
    };
    let dropped = |name, headers: Vec<String>, state: &str| Case {
        name,
        headers,
        forwarded: None,
        state: state.to_owned(),
    };
    let with_tp = |value: &str| vec![traceparent(), format!("tracestate: {value}")];
    // 512 bytes once joined: the most the kernel carries.
    let at_bound = format!("a={},b={}", "v".repeat(254), "w".repeat(253));
    assert_eq!(at_bound.len(), 512);
    let over_bound = format!("{at_bound}x");
    vec![
        carried(
            "two-members",
            "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7",
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        ),
        // Optional whitespace around the value is not part of it.
        carried("whitespace", "  a=1 ,b=2 \t", "a=1,b=2"),
        carried("at-512-bytes", &at_bound, &at_bound),
        carried("32-members", &members(32), &members(32)),
        dropped("over-512-bytes", with_tp(&over_bound), ""),
        dropped("33-members", with_tp(&members(33)), ""),
        dropped("duplicate-key", with_tp("a=1,b=2,a=3"), ""),
        dropped("bad-key", with_tp("Congo=1"), ""),
        // Repeated lines are one list to userspace; the kernel stands down.
        dropped(
            "two-lines",
            vec![
                traceparent(),
                "tracestate: congo=t61rcWkgMzE".into(),
                "tracestate: rojo=00f067aa0ba902b7".into(),
            ],
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        ),
        // Without a traceparent a tracestate means nothing.
        dropped(
            "no-traceparent",
            vec!["tracestate: congo=t61rcWkgMzE".into()],
            "",
        ),
        // Past the head's first 1 KiB, which the kernel scans: the span
        // has it, the next hop does not.
        dropped(
            "past-the-scan",
            vec![
                traceparent(),
                format!("X-Fill: {}", "f".repeat(1100)),
                "tracestate: congo=t61rcWkgMzE".into(),
            ],
            "congo=t61rcWkgMzE",
        ),
    ]
}

/// The recorded request `GET {path}`, checked byte for byte against what
/// the traced service (Python's http.client) sends plus the injected
/// lines: `traceparent` right after the request line, then the
/// `tracestate` line if `forwarded`. `own` is the service's own
/// `tracestate`, sent last. Returns the injected `traceparent` value.
/// The recording server's records once each of `paths` is among them: the
/// service's HTTP client does not wait for the server's record of its
/// connection.
fn records_of(recording: &RecordingServer, paths: &[String]) -> Result<Vec<Recorded>> {
    let has = |r: &[Recorded], path: &String| {
        let line = format!("GET {path} HTTP/1.1\r\n");
        r.iter().any(|r| r.data.starts_with(line.as_bytes()))
    };
    recording.wait_for(|r| paths.iter().all(|p| has(r, p)), Duration::from_secs(10))
}

fn check_bytes(
    recorded: &[Recorded],
    path: &str,
    downstream_port: u16,
    service: &str,
    forwarded: Option<&str>,
    own: Option<&str>,
) -> Result<String> {
    let line = format!("GET {path} HTTP/1.1\r\n");
    let r = recorded
        .iter()
        .find(|r| r.data.starts_with(line.as_bytes()))
        .with_context(|| format!("the recording server got no {path}"))?;
    let text = String::from_utf8_lossy(&r.data);
    let tp = text
        .get(line.len()..)
        .and_then(|rest| rest.strip_prefix("traceparent: "))
        .and_then(|rest| rest.get(..55))
        .with_context(|| format!("no traceparent after the request line: {text:?}"))?;
    parse_value(tp).map_err(anyhow::Error::msg)?;
    let mut want = format!("{line}traceparent: {tp}\r\n");
    if let Some(v) = forwarded {
        want.push_str(&format!("tracestate: {v}\r\n"));
    }
    want.push_str(&format!(
        "Host: 127.0.0.1:{downstream_port}\r\nAccept-Encoding: identity\r\nUser-Agent: clew-e2e-{service}\r\n"
    ));
    if let Some(v) = own {
        want.push_str(&format!("tracestate: {v}\r\n"));
    }
    want.push_str("\r\n");
    ensure!(
        r.data == want.as_bytes(),
        "{path}: received\n  {text:?}\nexpected\n  {want:?}"
    );
    Ok(tp.to_owned())
}

fn span<'a>(spans: &'a [RecvSpan], kind: i32, service: &str, path: &str) -> Result<&'a RecvSpan> {
    spans
        .iter()
        .find(|s| s.is(kind, service, path))
        .with_context(|| format!("no {kind} span of {service} for {path}"))
}

/// Polls counter `clew_{name}` until it reaches `want` (counters are
/// refreshed about once a second).
fn counter_reaches(agent: &Agent, name: &str, want: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = agent.metric(name)?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("clew_{name} is {got}, expected {want}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tracestate_is_carried_byte_for_byte_within_the_bound() -> Result<()> {
    let traced = Cgroup::new("tracestate")?;
    let untraced = Cgroup::new("tracestate-next")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, &[])?;
    let recording = RecordingServer::start(&untraced)?;
    let witness = H2Witness::start(&untraced)?;
    let next = format!("http://127.0.0.1:{}", recording.port);
    let front = PyService::start(&traced, "front", Some(&next))?;
    let next_h2 = format!("http://127.0.0.1:{}", witness.port);
    let front_h2 = PyService::start(&traced, "front-h2", Some(&next_h2))?;

    let cases = cases();
    for c in &cases {
        let status = raw_get(front.port, &format!("/chain/{}", c.name), &c.headers)?;
        ensure!(status == 200, "{}: status {status}", c.name);
    }
    // The service's own tracestate stays the only one.
    let own_headers = [traceparent(), "tracestate: congo=t61rcWkgMzE".into()];
    let status = raw_get(front.port, "/chain-own-state/own", &own_headers)?;
    ensure!(status == 200, "own: status {status}");
    // HTTP/2: a field before the traceparent field, which stays last.
    let h2_state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let h2_headers = [traceparent(), format!("tracestate: {h2_state}")];
    let status = raw_get(front_h2.port, "/chain-h2/h2", &h2_headers)?;
    ensure!(status == 200, "h2: status {status}");

    let spans = rx.wait_for(
        |s| {
            let both = |service: &str, name: &str, chain: &str| {
                s.iter()
                    .any(|x| x.is(KIND_CLIENT, service, &format!("/work/{name}")))
                    && s.iter()
                        .any(|x| x.is(KIND_SERVER, service, &format!("/{chain}/{name}")))
            };
            cases.iter().all(|c| both("front", c.name, "chain"))
                && both("front", "own", "chain-own-state")
                && both("front-h2", "h2", "chain-h2")
        },
        SPAN_TIMEOUT,
    )?;
    let mut paths: Vec<String> = cases.iter().map(|c| format!("/work/{}", c.name)).collect();
    paths.push("/work/own".into());
    let recorded = records_of(&recording, &paths)?;
    let mut failures = Vec::new();
    for c in &cases {
        let checked = (|| -> Result<()> {
            let path = format!("/work/{}", c.name);
            let tp = check_bytes(
                &recorded,
                &path,
                recording.port,
                "front",
                c.forwarded.as_deref(),
                None,
            )?;
            let server = span(&spans, KIND_SERVER, "front", &format!("/chain/{}", c.name))?;
            let client = span(&spans, KIND_CLIENT, "front", &path)?;
            let span_id = parse_value(&tp).map_err(anyhow::Error::msg)?.span_id;
            ensure!(
                client.span_id == span_id,
                "injected {tp}, CLIENT span {client}"
            );
            ensure!(
                server.trace_state == c.state,
                "SERVER span tracestate {:?}, expected {:?}",
                server.trace_state,
                c.state
            );
            let client_state = if c.forwarded.is_some() { &c.state } else { "" };
            ensure!(
                client.trace_state == client_state,
                "CLIENT span tracestate {:?}, expected {client_state:?}",
                client.trace_state
            );
            Ok(())
        })();
        match checked {
            Ok(()) => println!("{}: next hop got {:?}", c.name, c.forwarded),
            Err(e) => failures.push(format!("{}: {e:#}", c.name)),
        }
    }
    if let Err(e) = check_bytes(
        &recorded,
        "/work/own",
        recording.port,
        "front",
        None,
        Some("app=own"),
    ) {
        failures.push(format!("own: {e:#}"));
    }
    if let Err(e) = check_h2(&witness, &spans, h2_state) {
        failures.push(format!("h2: {e:#}"));
    }
    ensure!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        rx.dump()
    );
    // Carried: the HTTP/1 cases, the own case (carried, not written) and
    // the HTTP/2 case; written: those forwarded and the HTTP/2 one.
    let forwarded = cases.iter().filter(|c| c.forwarded.is_some()).count() as u64;
    counter_reaches(&agent, "tracestate_carried", forwarded + 2)?;
    counter_reaches(&agent, "tracestate_injected", forwarded + 1)?;
    counter_reaches(&agent, "tracestate_own", 1)?;
    agent.ensure_healthy()?;
    agent.stop()
}

/// The HTTP/2 witness got the service's fields, then `tracestate` as it
/// came in, then `traceparent` naming the CLIENT span, which carries the
/// same `tracestate`.
fn check_h2(witness: &H2Witness, spans: &[RecvSpan], state: &str) -> Result<()> {
    let records = witness.records()?;
    ensure!(
        records.iter().all(|r| r.get("error").is_none()),
        "HTTP/2 errors: {records:?}"
    );
    let [r] = &records[..] else {
        bail!("expected one request, got {records:?}")
    };
    let fields: Vec<(&str, &str)> = r["headers"]
        .as_array()
        .context("headers")?
        .iter()
        .map(|p| (p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")))
        .collect();
    let n = fields.len();
    ensure!(
        n >= 2 && fields[n - 2] == ("tracestate", state) && fields[n - 1].0 == "traceparent",
        "the last two fields are not tracestate, traceparent: {fields:?}"
    );
    ensure!(
        fields[..n - 2]
            .iter()
            .all(|(k, _)| *k != "tracestate" && *k != "traceparent"),
        "fields: {fields:?}"
    );
    let span_id = parse_value(fields[n - 1].1)
        .map_err(anyhow::Error::msg)?
        .span_id;
    let client = span(spans, KIND_CLIENT, "front-h2", "/work/h2")?;
    ensure!(
        client.span_id == span_id && client.trace_state == state,
        "CLIENT span {client} (tracestate {:?})",
        client.trace_state
    );
    Ok(())
}

/// Under `parentbased_probability`, a new trace the rule keeps carries
/// `ot=th:8` (probability 0.5) into the next hop and on its spans; one the
/// rule drops goes on without a tracestate (and exports nothing).
#[test]
fn the_probability_sampler_s_threshold_goes_to_the_next_hop() -> Result<()> {
    const REQUESTS: usize = 40;
    let traced = Cgroup::new("tracestate-th")?;
    let untraced = Cgroup::new("tracestate-th-next")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::launch_with_env(
        &[Select::Cgroup(&traced)],
        Export::Otlp {
            endpoint: &rx.endpoint(),
            protocol: Protocol::Grpc,
        },
        &[],
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_probability"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    )?;
    let recording = RecordingServer::start(&untraced)?;
    let next = format!("http://127.0.0.1:{}", recording.port);
    let front = PyService::start(&traced, "front", Some(&next))?;
    for i in 0..REQUESTS {
        let status = raw_get(front.port, &format!("/chain/th-{i}"), &[])?;
        ensure!(status == 200, "th-{i}: status {status}");
    }
    let paths: Vec<String> = (0..REQUESTS).map(|i| format!("/work/th-{i}")).collect();
    let recorded = records_of(&recording, &paths)?;
    let mut kept = Vec::new();
    for i in 0..REQUESTS {
        let path = format!("/work/th-{i}");
        let line = format!("GET {path} HTTP/1.1\r\ntraceparent: ");
        let r = recorded
            .iter()
            .find(|r| r.data.starts_with(line.as_bytes()))
            .with_context(|| format!("no injected {path}"))?;
        let sampled = r.data.get(line.len() + 53..line.len() + 55) == Some(b"01");
        let state = if sampled { Some("ot=th:8") } else { None };
        check_bytes(&recorded, &path, recording.port, "front", state, None)?;
        if sampled {
            kept.push(i);
        }
    }
    ensure!(
        !kept.is_empty() && kept.len() < REQUESTS,
        "{} of {REQUESTS} kept: the test needs both outcomes",
        kept.len()
    );
    let spans = rx.wait_for(
        |s| {
            kept.iter().all(|i| {
                s.iter()
                    .any(|x| x.is(KIND_CLIENT, "front", &format!("/work/th-{i}")))
            })
        },
        SPAN_TIMEOUT,
    )?;
    for i in &kept {
        for (kind, path) in [
            (KIND_SERVER, format!("/chain/th-{i}")),
            (KIND_CLIENT, format!("/work/th-{i}")),
        ] {
            let s = span(&spans, kind, "front", &path)?;
            ensure!(s.trace_state == "ot=th:8", "{s}: {:?}", s.trace_state);
        }
    }
    println!("{} of {REQUESTS} kept, each with ot=th:8", kept.len());
    agent.ensure_healthy()?;
    agent.stop()
}
