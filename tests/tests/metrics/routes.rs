//! Bounded cardinality: identifiers in paths make one route, user route
//! patterns name spans, and the series cap holds under random paths.

use anyhow::{ensure, Result};
use clew_e2e::metrics::{scrape, Rig};
use clew_e2e::receiver::KIND_SERVER;
use clew_e2e::{Protocol, SPAN_TIMEOUT};

const SERVER: &str = "http.server.request.duration";

#[test]
fn three_hundred_users_are_one_route() -> Result<()> {
    let rig = Rig::start(
        "metrics-routes",
        Protocol::HttpProtobuf,
        &["--route", "/orders/{id}"],
        &[],
    )?;
    let mut paths: Vec<String> = (0..300).map(|n| format!("/users/{n}")).collect();
    paths.extend((0..20).map(|n| format!("/orders/o{n}")));
    rig.requests(&paths, 2)?;

    let points = rig.rx.wait_for_metrics(
        |p| {
            p.iter()
                .filter(|p| p.service == "backend" && p.metric == SERVER)
                .map(|p| p.count)
                .sum::<u64>()
                == 320
        },
        SPAN_TIMEOUT,
    )?;
    let routes: Vec<(Option<&str>, u64)> = points
        .iter()
        .filter(|p| p.service == "backend" && p.metric == SERVER)
        .map(|p| (p.attr_str("http.route"), p.count))
        .collect();
    ensure!(
        routes.len() == 2
            && routes.contains(&(Some("/users/{id}"), 300))
            && routes.contains(&(Some("/orders/{id}"), 20)),
        "http.route series: {routes:?}"
    );

    // A user pattern names the span; an automatic template does not.
    let spans = rig.rx.wait_for(
        |s| s.iter().filter(|s| s.kind == KIND_SERVER).count() >= 320,
        SPAN_TIMEOUT,
    )?;
    for s in spans.iter().filter(|s| s.kind == KIND_SERVER) {
        let path = s.path().unwrap_or_default();
        let (name, route) = if path.starts_with("/orders/") {
            ("GET /orders/{id}", Some("/orders/{id}"))
        } else {
            ("GET", None)
        };
        ensure!(
            s.name == name && s.attr_str("http.route") == route,
            "span for {path}: {s}"
        );
    }
    rig.stop()
}

#[test]
fn series_cap_holds_under_random_paths() -> Result<()> {
    const LIMIT: usize = 50;
    const REQUESTS: usize = 10_000;
    // Two word segments: automatic templating keeps up to 32 words per
    // position before collapsing it, so hundreds of routes remain and only
    // the cap bounds the series. No spans, to keep the run short.
    let limit = LIMIT.to_string();
    let rig = Rig::start(
        "metrics-overflow",
        Protocol::Grpc,
        &["--metric-series-limit", &limit],
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    )?;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut word = || -> String {
        (0..6)
            .map(|_| {
                // xorshift: letters only, so no segment looks like an id.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (b'a' + (seed % 26) as u8) as char
            })
            .collect()
    };
    let paths: Vec<String> = (0..REQUESTS)
        .map(|_| format!("/{}/{}", word(), word()))
        .collect();
    rig.requests(&paths, 4)?;

    let server_total = |p: &[clew_e2e::receiver::RecvPoint]| -> u64 {
        p.iter()
            .filter(|p| p.service == "backend" && p.metric == SERVER)
            .map(|p| p.count)
            .sum()
    };
    let points = rig
        .rx
        .wait_for_metrics(|p| server_total(p) == REQUESTS as u64, SPAN_TIMEOUT)?;
    let series: Vec<_> = points
        .iter()
        .filter(|p| p.service == "backend" && p.metric == SERVER)
        .collect();
    let overflow: Vec<_> = series
        .iter()
        .filter(|p| p.attrs.contains_key("otel.metric.overflow"))
        .collect();
    ensure!(
        series.len() == LIMIT && overflow.len() == 1,
        "{} series ({} overflow) with a limit of {LIMIT}",
        series.len(),
        overflow.len()
    );
    let overflowed = (REQUESTS - (LIMIT - 1)) as u64;
    ensure!(
        overflow[0].count == overflowed,
        "overflow series: {:?}",
        overflow[0]
    );

    let scraped = scrape(&rig.agent)?;
    let prom: Vec<_> = scraped["http_server_request_duration_seconds"]
        .iter()
        .filter(|s| s.label("service_name") == "backend")
        .collect();
    ensure!(prom.len() == LIMIT, "{} series on /metrics", prom.len());
    ensure!(prom.iter().map(|s| s.count).sum::<u64>() == REQUESTS as u64);
    ensure!(rig.agent.metric("metric_overflows")? == overflowed);
    rig.stop()
}
