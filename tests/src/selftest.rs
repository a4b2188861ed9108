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

#[test]
fn wire_client_and_recording_server_agree_byte_for_byte() -> Result<()> {
    use crate::recording::{recorded_for, PlannedConn, RecordingServer, Step, WireClient};
    let cg = Cgroup::new("selftest-wire")?;
    let server = RecordingServer::start(&cg)?;
    let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let post = b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel".to_vec();
    let conns = vec![
        PlannedConn {
            id: 0,
            steps: vec![
                Step::Send(get.clone()),
                Step::Await(1),
                Step::Send(post.clone()),
                Step::Send(b"lo".to_vec()),
                Step::Await(1),
            ],
        },
        // Not framable: recorded, never answered, and the client still finishes.
        PlannedConn {
            id: 1,
            steps: vec![
                Step::Send(b"\x16\x03\x01junk".to_vec()),
                Step::Send(get.clone()),
            ],
        },
    ];
    let client = WireClient::spawn(&cg, "selftest", server.port, &conns, 2, false)?;
    let opened = client.finish(std::time::Duration::from_secs(30))?;
    let got = recorded_for(&server, &opened)?;
    assert_eq!(got[&0].data, [&get[..], &post, b"lo"].concat());
    assert_eq!(got[&0].answered, 2);
    assert_eq!(got[&1].data, [&b"\x16\x03\x01junk"[..], &get].concat());
    assert_eq!(got[&1].answered, 0);
    Ok(())
}
