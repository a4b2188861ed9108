//! What the kernel writes into traced clients' HTTP/2 requests, field for
//! field: a traced Python `h2` client (its own HPACK encoder: Huffman,
//! incremental indexing, a 4 KiB table that long headers make evict) sends
//! thousands of requests, several per send, to an untraced Python `h2`
//! server that records every header list its HPACK decoder produced. Every
//! request must arrive with exactly its own fields plus one `traceparent`
//! at the end, or unchanged where the rules say the kernel stands down (the
//! request carries its own; the application indexed its own earlier on the
//! connection; its block goes on in a CONTINUATION frame), with no decoding
//! or protocol error on either side.

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::env::{peers_dir, python};
use clew_e2e::h2::H2Witness;
use clew_e2e::net::{free_port, wait_listening};
use clew_e2e::process::{Supervised, TempDir};
use clew_e2e::{Agent, Cgroup, Protocol, Receiver};
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const COUNTER_TIMEOUT: Duration = Duration::from_secs(10);

type Fields = Vec<(String, String)>;

fn fields(v: &serde_json::Value) -> Result<Fields> {
    v.as_array()
        .context("headers")?
        .iter()
        .map(|p| {
            Ok((
                p[0].as_str().context("name")?.to_owned(),
                p[1].as_str().context("value")?.to_owned(),
            ))
        })
        .collect()
}

fn lines(path: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Does the kernel inject into request `i` of a connection of `kind`
/// (see tests/peers/h2_client.py)?
fn injected(kind: &str, i: u64) -> Result<bool> {
    Ok(match kind {
        "plain" => true,
        // Every 5th carries its own traceparent (never indexed).
        "own-never-indexed" => !i.is_multiple_of(5),
        // Request 7 indexes its own: the connection is left alone from then on.
        "own-indexed" => i < 7,
        // Request 3's block goes on in CONTINUATION: the same from request 3.
        "continuation" => i < 3,
        other => bail!("unknown connection kind {other}"),
    })
}

fn is_traceparent_value(v: &str) -> bool {
    let b = v.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() == 55
        && v.starts_with("00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(3..35)
        && hex(36..52)
        && (v.ends_with("-01") || v.ends_with("-00"))
}

/// Runs `conns` connections of `requests` requests each and checks every
/// request and the agent's counters.
fn run(name: &str, conns: usize, requests: usize) -> Result<()> {
    let traced = Cgroup::new(name)?;
    let untraced = Cgroup::new(&format!("{name}-server"))?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, &[])?;
    let py = python()?;
    let dir = TempDir::new(name)?;
    let sent_path = dir.join("sent.jsonl");
    let server = H2Witness::start(&untraced)?;
    let port = server.port;

    let started = Instant::now();
    let mut client = Command::new(&py.path);
    client
        .arg(peers_dir().join("h2_client.py"))
        .args(["--port", &port.to_string()])
        .args(["--conns", &conns.to_string()])
        .args(["--requests", &requests.to_string()])
        .args(["--threads", "4", "--seed", "7"])
        .arg("--out")
        .arg(&sent_path);
    let out = traced.run(&mut client, RUN_TIMEOUT)?;
    let elapsed = started.elapsed();
    ensure!(
        out.status.success(),
        "the h2 client failed ({}): not every request completed:\n{}",
        out.status,
        out.stderr
    );
    // The server records a request as soon as its headers are decoded.
    let received = server.records()?;
    let errors: Vec<_> = received
        .iter()
        .filter(|v| v.get("error").is_some())
        .collect();
    ensure!(
        errors.is_empty(),
        "the server's HTTP/2 stack reported errors: {errors:?}"
    );
    let mut by_stream: HashMap<(u64, u64), Fields> = HashMap::new();
    for v in &received {
        let key = (
            v["peer"].as_u64().context("peer")?,
            v["stream"].as_u64().context("stream")?,
        );
        by_stream.insert(key, fields(&v["headers"])?);
    }

    let sent = lines(&sent_path)?;
    ensure!(
        sent.len() == conns * requests,
        "{} requests sent of {}",
        sent.len(),
        conns * requests
    );
    let (mut want_injected, mut want_own) = (0u64, 0u64);
    let (mut want_indexed_conns, mut want_split_conns) = (HashSet::new(), HashSet::new());
    let mut ids = HashSet::new();
    let mut bad = Vec::new();
    for s in &sent {
        let kind = s["kind"].as_str().context("kind")?;
        let i = s["i"].as_u64().context("i")?;
        let key = (
            s["port"].as_u64().context("port")?,
            s["stream"].as_u64().context("stream")?,
        );
        let want = fields(&s["headers"])?;
        let Some(got) = by_stream.get(&key) else {
            bad.push(format!("{key:?} ({kind} #{i}): never received"));
            continue;
        };
        let inject = injected(kind, i)?;
        if kind == "continuation" && i == 3 {
            want_split_conns.insert(key.0);
        }
        if want.iter().any(|(n, _)| n == "traceparent") {
            if kind == "own-indexed" {
                want_indexed_conns.insert(key.0);
            } else {
                want_own += 1;
            }
        }
        let ok = if inject {
            want_injected += 1;
            got.len() == want.len() + 1
                && got[..want.len()] == want[..]
                && got[want.len()].0 == "traceparent"
                && is_traceparent_value(&got[want.len()].1)
                && ids.insert(got[want.len()].1[36..52].to_owned())
        } else {
            *got == want
        };
        if !ok {
            bad.push(format!(
                "{key:?} ({kind} #{i}, injection expected: {inject}):\n  sent     {want:?}\n  received {got:?}"
            ));
        }
    }
    ensure!(
        bad.is_empty(),
        "{} of {} requests did not arrive as the injection rules say (first 5):\n{}",
        bad.len(),
        sent.len(),
        bad.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );

    // The agent's counters (refreshed about once a second) agree.
    let counters = [
        ("h2_traceparent_injected", want_injected),
        ("h2_own_traceparent", want_own),
        (
            "h2_app_indexed_traceparent",
            want_indexed_conns.len() as u64,
        ),
        ("h2_stood_down_split", want_split_conns.len() as u64),
        ("h2_stood_down_unscanned", 0),
        ("h2_stood_down_too_long", 0),
        ("h2_lost_framing", 0),
        ("h2_inject_failed", 0),
    ];
    let deadline = Instant::now() + COUNTER_TIMEOUT;
    loop {
        let got: Vec<(&str, u64, u64)> = counters
            .iter()
            .map(|(n, want)| Ok((*n, *want, agent.metric(n)?)))
            .collect::<Result<_>>()?;
        if got.iter().all(|(_, want, got)| want == got) {
            println!(
                "{name}: {} requests on {conns} connections in {:.1} s, every one received as the rules say; counters: {}",
                sent.len(),
                elapsed.as_secs_f64(),
                got.iter()
                    .map(|(n, _, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "agent counters (name, expected, got): {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(want_injected > 0, "nothing was injected");
    // The request the kernel stood down on left bare: the TCP option
    // (on by default) carried a context for it instead.
    let options = agent.metric("tcp_options_written")?;
    ensure!(
        want_split_conns.is_empty() || options > 0,
        "no TCP option was written for the requests left without traceparent"
    );
    println!("{name}: tcp_options_written={options}");
    agent.ensure_healthy()?;
    agent.stop()
}

/// nghttp2 on both ends (its own HPACK encoder and decoder, C): h2load
/// sends 10,000 requests, up to 100 HEADERS frames per send, to an
/// untraced nghttpd that logs every field it decoded.
#[test]
fn h2_injection_h2load_to_nghttpd() -> Result<()> {
    const REQUESTS: usize = 10_000;
    let traced = Cgroup::new("h2-nghttp2")?;
    let untraced = Cgroup::new("h2-nghttp2-server")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, &[])?;
    let dir = TempDir::new("h2-nghttp2")?;
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "ok\n")?;
    let port = free_port()?;
    let log = dir.join("nghttpd.log");
    let mut cmd = Command::new("nghttpd");
    cmd.args(["--no-tls", "--address=127.0.0.1", "-v", "-d"])
        .arg(dir.join("www"))
        .arg(port.to_string());
    let server = Supervised::start("nghttpd", &mut cmd, log.clone(), |c| untraced.spawn(c))?;
    wait_listening(port, Duration::from_secs(20), || server.log_tail(40))?;
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/index.html");
    let mut client = Command::new("h2load");
    client
        .args(["-n", &REQUESTS.to_string(), "-c", "4", "-m", "100"])
        .args(["-H", "x-a: b", &url]);
    let out = traced.run(&mut client, RUN_TIMEOUT)?;
    let stdout = &out.stdout;
    let done = format!("{REQUESTS} succeeded, 0 failed, 0 errored, 0 timeout");
    ensure!(
        out.status.success() && stdout.contains(&done),
        "h2load did not complete every request:\n{stdout}{}",
        out.stderr
    );
    let elapsed = started.elapsed();
    // Fields as nghttpd's decoder logged them, by (connection, stream).
    let deadline = Instant::now() + COUNTER_TIMEOUT;
    let streams = loop {
        let text = std::fs::read_to_string(&log)?;
        let mut streams: HashMap<(String, u64), Fields> = HashMap::new();
        for line in text.lines() {
            if let Some(code) = line.split("error_code=").nth(1) {
                ensure!(code.starts_with("NO_ERROR"), "nghttpd: {line}");
            }
            let Some((conn, rest)) = line.split_once("] [") else {
                continue;
            };
            let Some(rest) = rest.split_once("] recv (stream_id=").map(|(_, r)| r) else {
                continue;
            };
            let Some((stream, field)) = rest.split_once(") ") else {
                continue;
            };
            // Pseudo-header names start with ':' too: split after the name.
            let split = field[1..].find(": ").context("field")? + 1;
            streams
                .entry((conn.to_owned(), stream.parse()?))
                .or_default()
                .push((field[..split].to_owned(), field[split + 2..].to_owned()));
        }
        if streams.len() >= REQUESTS || Instant::now() > deadline {
            break streams;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(
        streams.len() == REQUESTS,
        "nghttpd logged {} requests of {REQUESTS}",
        streams.len()
    );
    let mut ids = HashSet::new();
    for (key, f) in &streams {
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        let ok = names
            == [
                ":path",
                ":scheme",
                ":authority",
                ":method",
                "user-agent",
                "x-a",
                "traceparent",
            ]
            && is_traceparent_value(&f[6].1)
            && ids.insert(f[6].1[36..52].to_owned());
        ensure!(ok, "{key:?} arrived as {f:?}");
    }
    let deadline = Instant::now() + COUNTER_TIMEOUT;
    while agent.metric("h2_traceparent_injected")? != REQUESTS as u64 {
        ensure!(
            Instant::now() < deadline,
            "h2_traceparent_injected = {}, want {REQUESTS}",
            agent.metric("h2_traceparent_injected")?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "h2-nghttp2: {REQUESTS} h2load requests in {:.1} s, every one decoded by nghttpd with exactly one traceparent, last; h2_traceparent_injected={REQUESTS}",
        elapsed.as_secs_f64()
    );
    agent.ensure_healthy()?;
    agent.stop()
}

/// A few thousand requests on 16 connections, every one checked.
#[test]
fn h2_injection_exact() -> Result<()> {
    run("h2-exact", 16, 150)
}

/// Over 10,000 requests on 24 connections of 500 requests.
#[test]
fn h2_injection_soak() -> Result<()> {
    run("h2-soak", 24, 500)
}
