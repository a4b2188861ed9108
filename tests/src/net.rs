//! Loopback ports and readiness checks that do not generate traced
//! traffic, and exact requests from the (untraced) test process.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when something listens on 127.0.0.1:`port`. Reads /proc/net/tcp
/// instead of connecting, because a probe connection to a traced server
/// would itself be seen by the agent.
pub fn is_listening(port: u16) -> bool {
    listening_in("/proc/net/tcp", &[127, 0, 0, 1], port)
}

/// True when something accepts connections to 127.0.0.1:`port`: bound to
/// it or to the wildcard, over IPv4 or an IPv6 socket (v4-mapped
/// `::ffff:127.0.0.1` as grpcio binds, or `::`).
pub fn is_listening_local(port: u16) -> bool {
    let mapped = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
    listening_in("/proc/net/tcp", &[127, 0, 0, 1], port)
        || listening_in("/proc/net/tcp", &[0; 4], port)
        || listening_in("/proc/net/tcp6", &mapped, port)
        || listening_in("/proc/net/tcp6", &[0; 16], port)
}

/// True when `ip`:`port` is listening in the network namespace of process
/// `pid` (read from its /proc/PID/net/tcp or tcp6).
pub fn is_listening_in(pid: u32, ip: IpAddr, port: u16) -> bool {
    match ip {
        IpAddr::V4(v4) => listening_in(&format!("/proc/{pid}/net/tcp"), &v4.octets(), port),
        IpAddr::V6(v6) => listening_in(&format!("/proc/{pid}/net/tcp6"), &v6.octets(), port),
    }
}

fn listening_in(table: &str, ip: &[u8], port: u16) -> bool {
    // The kernel prints the address as in-memory u32s, each in host
    // (little-endian) order.
    let words: String = ip
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    let want = format!("{words}:{port:04X}");
    std::fs::read_to_string(table)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // Fields: sl local_address rem_address st ...; 0A is TCP_LISTEN.
        .any(|f| f.len() > 3 && f[1] == want && f[3] == "0A")
}

/// Waits until 127.0.0.1:`port` is listening; `why_not` explains a timeout (e.g. a log).
pub fn wait_listening(port: u16, timeout: Duration, why_not: impl Fn() -> String) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !is_listening(port) {
        if Instant::now() > deadline {
            bail!(
                "nothing listened on 127.0.0.1:{port} within {timeout:?}\n{}",
                why_not()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Like `wait_listening`, accepting any listener `is_listening_local` accepts.
pub fn wait_listening_local(
    port: u16,
    timeout: Duration,
    why_not: impl Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !is_listening_local(port) {
        if Instant::now() > deadline {
            bail!(
                "nothing listened on 127.0.0.1:{port} (IPv4 or IPv6 socket) within {timeout:?}\n{}",
                why_not()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Like `wait_listening`, for `ip`:`port` in the network namespace of process `pid`.
pub fn wait_listening_in(
    pid: u32,
    ip: IpAddr,
    port: u16,
    timeout: Duration,
    why_not: impl Fn() -> String,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !is_listening_in(pid, ip, port) {
        if Instant::now() > deadline {
            bail!(
                "nothing listened on {ip}:{port} (netns of pid {pid}) within {timeout:?}\n{}",
                why_not()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Status of a GET to `url` (only for untraced endpoints such as the agent's health server).
pub fn http_status(url: &str) -> Result<u16> {
    Ok(get(url)?.status().as_u16())
}

fn get(url: &str) -> Result<reqwest::blocking::Response> {
    get_accepting(url, "*/*")
}

fn get_accepting(url: &str, accept: &str) -> Result<reqwest::blocking::Response> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    client
        .get(url)
        .header("accept", accept)
        .send()
        .with_context(|| format!("GET {url}"))
}

/// Body of a GET to `url` (only for untraced endpoints such as the agent's health server).
pub fn http_text(url: &str) -> Result<String> {
    Ok(get(url)?.text()?)
}

/// Content type and body of a GET to `url` sending `accept` (only for
/// untraced endpoints such as the agent's health server).
pub fn http_negotiated(url: &str, accept: &str) -> Result<(String, String)> {
    let resp = get_accepting(url, accept)?;
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((content_type, resp.text()?))
}

/// Polls `url` until it answers 200; `why_not` explains a timeout.
pub fn wait_http_ok(url: &str, timeout: Duration, why_not: impl Fn() -> String) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match http_status(url) {
            Ok(200) => return Ok(()),
            Ok(code) => format!("status {code}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "{url} not 200 within {timeout:?} (last: {last})\n{}",
                why_not()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One `GET path` to 127.0.0.1:`port` with exactly these header lines
/// after `Host` (then `Connection: close`); the answer's status.
pub fn raw_get(port: u16, path: &str, header_lines: &[String]) -> Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for h in header_lines {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {answer:?}"))
}
