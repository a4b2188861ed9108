//! W3C Trace Context conformance, asserted on what the next hop receives:
//! an untraced client sends exact bytes to a traced service, which calls an
//! untraced one; the `traceparent` the kernel injects into that call joins
//! the incoming trace when the incoming header is valid, and starts a new
//! trace otherwise.

use anyhow::{bail, ensure, Context, Result};
use clew_e2e::net::raw_get;
use clew_e2e::peers::PyService;
use clew_e2e::receiver::{KIND_CLIENT, KIND_SERVER};
use clew_e2e::wire::parse_value;
use clew_e2e::{Cgroup, Protocol, Receiver, RecvSpan, SPAN_TIMEOUT};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const OTHER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "00f067aa0ba902b7";

/// What the traced service must make of a case's headers.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// The next hop gets `TRACE`, parented on the traced CLIENT span.
    Join,
    /// A new trace, neither `TRACE` nor `OTHER_TRACE`.
    NewTrace,
}

struct Case {
    name: &'static str,
    headers: Vec<String>,
    expect: Expect,
    /// The `tracestate` the SERVER span carries on.
    state: &'static str,
}

fn tp(value: &str) -> String {
    format!("traceparent: {value}")
}

fn cases() -> Vec<Case> {
    let valid = format!("00-{TRACE}-{PARENT}-01");
    let case = |name, headers: Vec<String>, expect| Case {
        name,
        headers,
        expect,
        state: "",
    };
    vec![
        case("valid", vec![tp(&valid)], Expect::Join),
        case(
            "future-version",
            vec![tp(&format!("cc-{TRACE}-{PARENT}-01-what-the-future-holds"))],
            Expect::Join,
        ),
        case(
            "version-ff",
            vec![tp(&format!("ff-{TRACE}-{PARENT}-01"))],
            Expect::NewTrace,
        ),
        case(
            "zero-trace",
            vec![tp(&format!("00-{}-{PARENT}-01", "0".repeat(32)))],
            Expect::NewTrace,
        ),
        case(
            "zero-parent",
            vec![tp(&format!("00-{TRACE}-{}-01", "0".repeat(16)))],
            Expect::NewTrace,
        ),
        case(
            "short-trace",
            vec![tp(&format!("00-{}-{PARENT}-01", &TRACE[1..]))],
            Expect::NewTrace,
        ),
        case(
            "long-parent",
            vec![tp(&format!("00-{TRACE}-{PARENT}0-01"))],
            Expect::NewTrace,
        ),
        case(
            "illegal-char",
            vec![tp(&format!("00-{}g-{PARENT}-01", &TRACE[..31]))],
            Expect::NewTrace,
        ),
        case(
            "upper-case",
            vec![tp(&format!("00-{}-{PARENT}-01", TRACE.to_uppercase()))],
            Expect::NewTrace,
        ),
        case(
            "v00-extra-field",
            vec![tp(&format!("{valid}-extra"))],
            Expect::NewTrace,
        ),
        case(
            "duplicated",
            vec![tp(&valid), tp(&format!("00-{OTHER_TRACE}-{PARENT}-01"))],
            Expect::NewTrace,
        ),
        Case {
            name: "tracestate",
            headers: vec![
                tp(&valid),
                "tracestate: congo=t61rcWkgMzE".into(),
                "tracestate: rojo=00f067aa0ba902b7".into(),
            ],
            expect: Expect::Join,
            state: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        },
        case(
            "tracestate-33-members",
            vec![
                tp(&valid),
                format!(
                    "tracestate: {}",
                    (0..33)
                        .map(|i| format!("k{i}=v"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ],
            Expect::Join,
        ),
        case(
            "tracestate-after-invalid-traceparent",
            vec![
                tp(&format!("ff-{TRACE}-{PARENT}-01")),
                "tracestate: congo=t61rcWkgMzE".into(),
            ],
            Expect::NewTrace,
        ),
    ]
}

#[test]
fn w3c_cases_as_the_next_hop_receives_them() -> Result<()> {
    let traced = Cgroup::new("w3c")?;
    let untraced = Cgroup::new("w3c-next")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = clew_e2e::Agent::start(&traced, &rx.endpoint(), Protocol::Grpc, &[])?;
    let next = PyService::start(&untraced, "next", None)?;
    let front = PyService::start(&traced, "front", Some(&next.url("")))?;
    let port: u16 = front
        .url("")
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    let cases = cases();
    for c in &cases {
        let status = raw_get(port, &format!("/chain/{}", c.name), &c.headers)?;
        ensure!(status == 200, "{}: status {status}", c.name);
    }
    let spans = rx.wait_for(
        |s| {
            cases.iter().all(|c| {
                let p = format!("/work/{}", c.name);
                s.iter().any(|x| x.is(KIND_CLIENT, "front", &p))
                    && s.iter()
                        .any(|x| x.is(KIND_SERVER, "front", &format!("/chain/{}", c.name)))
            })
        },
        SPAN_TIMEOUT,
    )?;
    let received = next.received()?;
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = check(c, &spans, &received) {
            failures.push(format!("{}: {e:#}", c.name));
        } else {
            println!("{}: {:?} as expected", c.name, c.expect);
        }
    }
    ensure!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        rx.dump()
    );
    agent.ensure_healthy()?;
    agent.stop()
}

fn check(
    c: &Case,
    spans: &[RecvSpan],
    received: &[clew_e2e::peers::ReceivedRequest],
) -> Result<()> {
    let path = format!("/work/{}", c.name);
    let req = received
        .iter()
        .find(|r| r.path == path)
        .context("the next hop got no request")?;
    let got = req.header("traceparent");
    let [value] = got[..] else {
        bail!("the next hop got traceparent {got:?}")
    };
    let tp = parse_value(value).map_err(anyhow::Error::msg)?;
    let (trace, parent, flags) = (tp.trace_id.as_str(), tp.span_id.as_str(), tp.flags.as_str());
    ensure!(flags == "01", "flags {flags}");
    // No case here has a tracestate the kernel carries on (repeated,
    // invalid, or next to an invalid traceparent): see tracestate.rs.
    ensure!(
        req.header("tracestate").is_empty(),
        "tracestate {:?}",
        req.header("tracestate")
    );
    let client = spans
        .iter()
        .find(|s| s.is(KIND_CLIENT, "front", &path))
        .context("no CLIENT span")?;
    let server = spans
        .iter()
        .find(|s| s.is(KIND_SERVER, "front", &format!("/chain/{}", c.name)))
        .context("no SERVER span")?;
    ensure!(
        parent == client.span_id && trace == client.trace_id,
        "next hop got {value}, the CLIENT span is {client}"
    );
    ensure!(
        client.parent_span_id.as_deref() == Some(&server.span_id) && trace == server.trace_id,
        "the CLIENT span {client} is not the child of the SERVER span {server}"
    );
    match c.expect {
        Expect::Join => ensure!(
            trace == TRACE && server.parent_span_id.as_deref() == Some(PARENT),
            "did not join the incoming trace: {server}"
        ),
        Expect::NewTrace => ensure!(
            trace != TRACE && trace != OTHER_TRACE && server.parent_span_id.is_none(),
            "did not start a new trace: {server}"
        ),
    }
    ensure!(
        server.trace_state == c.state,
        "SERVER span tracestate {:?}, expected {:?}",
        server.trace_state,
        c.state
    );
    Ok(())
}
