//! curl → python frontend → nginx reverse proxy → python backend, all in
//! one traced cgroup: every hop's spans in one trace.
//!
//! nginx forwards the traceparent it received, so the kernel stands down
//! on nginx's outgoing request: the backend's SERVER span is then a child
//! of the frontend's CLIENT span, while nginx's own CLIENT span is a child
//! of nginx's SERVER span with a span id of its own.

use anyhow::{bail, Context, Result};
use clew_e2e::nginx::Nginx;
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{Protocol, RecvSpan, Traced, SPAN_TIMEOUT};

const N: usize = 50;

#[test]
fn three_hop_chain_with_nginx() -> Result<()> {
    let mut t = Traced::start("nginx-chain", Protocol::Grpc)?;
    let backend = PyService::start(&t.cg, "backend", None)?;
    // HTTP/1.1 upstream on kept-alive connections.
    let nginx = Nginx::proxy(&t.cg, &format!("127.0.0.1:{}", backend.port), true)?;
    let frontend = PyService::start(&t.cg, "frontend", Some(&nginx.url("")))?;

    for i in 0..N {
        curl_expect(&t.cg, &frontend.url(&format!("/chain/ng-{i}")), &[], 200)?;
    }

    let find = |spans: &[RecvSpan], server: bool, service: &str, path: &str| -> Vec<RecvSpan> {
        spans
            .iter()
            .filter(|s| {
                s.is_server() == server
                    && s.is_client() != server
                    && s.service() == Some(service)
                    && s.path() == Some(path)
            })
            .cloned()
            .collect()
    };
    // Each request's five spans (curl's own CLIENT span is a sixth).
    let hops = |i: usize| {
        let (chain, work) = (format!("/chain/ng-{i}"), format!("/work/ng-{i}"));
        [
            (true, "frontend", chain.clone()),
            (false, "frontend", work.clone()),
            (true, "nginx", work.clone()),
            (false, "nginx", work.clone()),
            (true, "backend", work),
        ]
    };
    let spans =
        t.rx.wait_for(
            |s| {
                (0..N).all(|i| {
                    hops(i)
                        .iter()
                        .all(|(server, svc, path)| !find(s, *server, svc, path).is_empty())
                })
            },
            SPAN_TIMEOUT,
        )
        .context("waiting for the spans of every hop")?;
    let received = backend.received()?;

    let mut complete = 0;
    let mut broken = Vec::new();
    for i in 0..N {
        let [fe_srv, fe_cli, ng_srv, ng_cli, be_srv] = hops(i).map(|(server, svc, path)| {
            let mut found = find(&spans, server, svc, &path);
            (found.len() == 1).then(|| found.remove(0)).ok_or(found)
        });
        let (fe_srv, fe_cli, ng_srv, ng_cli, be_srv) =
            match (fe_srv, fe_cli, ng_srv, ng_cli, be_srv) {
                (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b, c, d, e),
                other => {
                    broken.push(format!(
                        "request {i}: not exactly one span per hop: {other:?}"
                    ));
                    continue;
                }
            };
        let work = format!("/work/ng-{i}");
        let header: Vec<String> = received
            .iter()
            .filter(|r| r.path == work)
            .flat_map(|r| r.header("traceparent").into_iter().map(String::from))
            .collect();
        let trace = &fe_srv.trace_id;
        let parent_is =
            |s: &RecvSpan, p: &RecvSpan| s.parent_span_id.as_deref() == Some(&p.span_id);
        let mut why = Vec::new();
        if [&fe_cli, &ng_srv, &ng_cli, &be_srv]
            .iter()
            .any(|s| &s.trace_id != trace)
        {
            why.push("not all hops share the frontend SERVER span's trace id".to_string());
        }
        if !parent_is(&fe_cli, &fe_srv) {
            why.push("frontend CLIENT is not a child of frontend SERVER".into());
        }
        if !parent_is(&ng_srv, &fe_cli) {
            why.push("nginx SERVER is not a child of frontend CLIENT".into());
        }
        if !parent_is(&ng_cli, &ng_srv) {
            why.push("nginx CLIENT is not a child of nginx SERVER".into());
        }
        if ng_cli.span_id == fe_cli.span_id {
            why.push("nginx CLIENT took the frontend CLIENT's span id".into());
        }
        if !parent_is(&be_srv, &fe_cli) {
            why.push(
                "backend SERVER is not a child of frontend CLIENT (nginx forwards its traceparent)"
                    .into(),
            );
        }
        let want = format!("00-{trace}-{}-01", fe_cli.span_id);
        if header != [want.clone()] {
            why.push(format!(
                "backend received traceparent {header:?}, wanted [{want:?}]"
            ));
        }
        if why.is_empty() {
            complete += 1;
        } else {
            broken.push(format!(
                "request {i}: {}\n  frontend SERVER {fe_srv}\n  frontend CLIENT {fe_cli}\n  nginx SERVER {ng_srv}\n  nginx CLIENT {ng_cli}\n  backend SERVER {be_srv}",
                why.join("; ")
            ));
        }
    }
    println!(
        "three_hop_chain_with_nginx: {complete}/{N} requests form a complete trace ({:.0}%)",
        100.0 * complete as f64 / N as f64
    );
    if !broken.is_empty() {
        bail!(
            "{} of {N} requests do not form a complete trace (first 5):\n{}",
            broken.len(),
            broken
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    t.agent.ensure_healthy()?;
    t.agent.stop()
}
