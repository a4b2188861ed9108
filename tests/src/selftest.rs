//! The harness checked without the agent: cgroups, peers and nginx behave as the e2e tests assume.

use crate::cgroup::Cgroup;
use crate::nginx::Nginx;
use crate::peers::{concurrent_gets, curl, curl_expect, raw_client, KeepAliveSession, PyService};
use anyhow::Result;
use std::process::Command;

#[test]
fn cgroup_holds_its_children_and_cleans_up() -> Result<()> {
    let cg = Cgroup::new("selftest")?;
    let path = cg.path().to_path_buf();
    let child = cg.spawn(Command::new("sleep").arg("100"))?;
    assert_eq!(cg.pids(), vec![child.id() as i32]);
    drop(cg);
    assert!(!path.exists(), "{} not removed", path.display());
    Ok(())
}

#[test]
fn python_peers_answer_as_the_tests_expect() -> Result<()> {
    let cg = Cgroup::new("selftest-py")?;
    let backend = PyService::start(&cg, "backend", None)?;
    let frontend = PyService::start(&cg, "frontend", Some(&backend.url("")))?;
    curl_expect(&cg, &frontend.url("/chain"), &[], 200)?;
    curl_expect(&cg, &frontend.url("/chain-fail"), &[], 500)?;
    let tp = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    curl_expect(&cg, &frontend.url("/work/x"), &["-H", tp], 200)?;
    let got = frontend.received()?;
    let last = got.last().expect("requests logged");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("GET", "/work/x")
    );
    assert_eq!(last.header("traceparent"), vec![&tp[13..]]);
    assert_eq!(backend.received()?.len(), 2);
    let port = backend.port.to_string();
    raw_client(&cg, &["keepalive", "--port", &port, "--count", "10"])?;
    assert_eq!(raw_client(&cg, &["split", "--port", &port])?, "200");
    raw_client(&cg, &["garbage", "--port", &port])?;
    assert_eq!(curl(&cg, &backend.url("/nope"), &[])?, 404);
    Ok(())
}

#[test]
fn nginx_serves_static_files_and_pipelines() -> Result<()> {
    let cg = Cgroup::new("selftest-nginx")?;
    let nginx = Nginx::start(&cg)?;
    curl_expect(&cg, &nginx.url("/index.html"), &[], 200)?;
    curl_expect(&cg, &nginx.url("/missing"), &[], 404)?;
    curl_expect(&cg, &nginx.url("/big.bin"), &[], 200)?;
    let port = nginx.port.to_string();
    let statuses = raw_client(
        &cg,
        &[
            "pipeline",
            "--port",
            &port,
            "--paths",
            "/index.html",
            "/missing",
            "/index.html?2",
        ],
    )?;
    assert_eq!(statuses, "200 404 200");
    Ok(())
}

#[test]
fn session_and_concurrent_clients() -> Result<()> {
    let cg = Cgroup::new("selftest-clients")?;
    let backend = PyService::opts("backend").work_delay_ms(5).start(&cg)?;
    let frontend = PyService::start(&cg, "frontend", Some(&backend.url("")))?;
    let mut session = KeepAliveSession::start(&cg, backend.port)?;
    session.get_expect("/work/one", 200)?;
    session.get_expect("/fail", 500)?;
    session.get_expect("/nope", 404)?;
    session.finish()?;
    concurrent_gets(&cg, frontend.port, "/chain/", 16, 4, 200)?;
    let mut forwarded: Vec<String> = backend
        .received()?
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/work/") && p != "/work/one")
        .collect();
    forwarded.sort();
    let mut want: Vec<String> = (0..16).map(|i| format!("/work/{i}")).collect();
    want.sort();
    assert_eq!(forwarded, want);
    Ok(())
}
