//! nginx started inside a test's cgroup: serving static files from a temp
//! dir, or as a reverse proxy.

use crate::cgroup::Cgroup;
use crate::net::{free_port, wait_listening};
use crate::process::{Supervised, TempDir};
use crate::tls::TestCert;
use anyhow::{Context, Result};
use std::process::Command;
use std::time::Duration;

/// Size of `/big.bin`: large enough to need many writes (or sendfile calls).
pub const BIG_FILE_LEN: usize = 5 << 20;

pub struct Nginx {
    pub port: u16,
    /// `http`, or `https` for `tls_proxy`.
    pub scheme: &'static str,
    // Kept for its lifetime: dropping it stops nginx and prints its log.
    _proc: Supervised,
    /// The benchmark's own certificate, kept as long as nginx uses it.
    _cert: Option<TestCert>,
    dir: TempDir,
}

/// One access log line (see `log_format` below).
#[derive(Clone, Debug)]
pub struct Access {
    /// When the request finished, Unix time in seconds.
    pub time: f64,
    pub status: u16,
    /// The `traceparent` header it received, if any.
    pub traceparent: Option<String>,
    pub request: String,
}

impl Nginx {
    /// Serves `/index.html` and `/big.bin` with one worker (master_process on,
    /// so the traced worker is a forked child).
    pub fn start(cg: &Cgroup) -> Result<Self> {
        let dir = TempDir::new("nginx")?;
        let root = dir.join("www");
        std::fs::create_dir(&root)?;
        std::fs::write(
            root.join("index.html"),
            "<html><body>clew e2e</body></html>\n",
        )?;
        let big: Vec<u8> = (0..BIG_FILE_LEN).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), big)?;
        Self::launch(
            cg,
            dir,
            &format!("root {};", root.display()),
            "",
            Conf::test(),
        )
    }

    /// For the benchmark: serves `/index.html` without an access log (its
    /// cost and its growth are not the agent's), over TLS with a fresh
    /// self-signed certificate when `tls`. With `logging`, an access log
    /// line after each request, and `/logged.html` (the same page through
    /// a rewrite, which `rewrite_log` notes in the error log while the
    /// request is served).
    pub fn start_bench(cg: &Cgroup, tls: bool, logging: bool) -> Result<Self> {
        let dir = TempDir::new("nginx-bench")?;
        let root = dir.join("www");
        std::fs::create_dir(&root)?;
        std::fs::write(
            root.join("index.html"),
            "<html><body>clew bench</body></html>\n",
        )?;
        let cert = if tls { Some(TestCert::new()?) } else { None };
        let conf = Conf {
            access_log: logging,
            tls: cert.as_ref(),
        };
        let mut server = format!("root {};", root.display());
        if logging {
            server.push_str(
                " rewrite_log on; location = /logged.html { rewrite ^ /index.html break; }",
            );
        }
        let mut nginx = Self::launch(cg, dir, &server, "", conf)?;
        nginx._cert = cert;
        Ok(nginx)
    }

    /// An HTTPS reverse proxy (OpenSSL in nginx) to a plaintext `upstream`,
    /// one HTTP/1.1 upstream connection per request.
    pub fn tls_proxy(cg: &Cgroup, upstream: &str, cert: &TestCert) -> Result<Self> {
        let dir = TempDir::new("nginx-tls")?;
        let location =
            format!("location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1; }}");
        let conf = Conf {
            access_log: true,
            tls: Some(cert),
        };
        Self::launch(cg, dir, &location, "", conf)
    }

    /// A reverse proxy: every request goes to `upstream` (`host:port`) over
    /// HTTP/1.1, on kept-alive connections when `keepalive`, else one
    /// connection per request (nginx's default HTTP/1.0 upstream).
    pub fn proxy(cg: &Cgroup, upstream: &str, keepalive: bool) -> Result<Self> {
        let dir = TempDir::new("nginx-proxy")?;
        let (http, location) = if keepalive {
            (
                format!("upstream clew_upstream {{ server {upstream}; keepalive 64; keepalive_requests 100000; }}"),
                "location / {
            proxy_pass http://clew_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }"
                .to_string(),
            )
        } else {
            (
                String::new(),
                format!("location / {{ proxy_pass http://{upstream}; }}"),
            )
        };
        Self::launch(cg, dir, &location, &http, Conf::test())
    }

    fn launch(cg: &Cgroup, dir: TempDir, server: &str, http: &str, conf: Conf) -> Result<Self> {
        let port = free_port()?;
        let p = dir.path().display();
        let access_log = if conf.access_log {
            format!("access_log {p}/access.log clew;")
        } else {
            "access_log off;".to_string()
        };
        let tls = conf.tls;
        let listen = match tls {
            Some(c) => format!(
                "listen 127.0.0.1:{port} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};",
                c.cert.display(),
                c.key.display()
            ),
            None => format!("listen 127.0.0.1:{port};"),
        };
        let conf = format!(
            "daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format clew '$msec $status \"$http_traceparent\" \"$request\" \"$http_user_agent\" up=$upstream_status';
    {access_log}
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    {http}
    server {{
        {listen}
        {server}
    }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            // Without -e nginx opens the system error log before reading the config.
            .arg("-e")
            .arg(dir.join("error.log"));
        let proc = Supervised::start("nginx", &mut cmd, dir.join("stdout.log"), |c| cg.spawn(c))?;
        let error_log = dir.join("error.log");
        wait_listening(port, Duration::from_secs(20), || {
            format!(
                "{}\nerror.log:\n{}",
                proc.log_tail(20),
                std::fs::read_to_string(&error_log).unwrap_or_default()
            )
        })?;
        Ok(Nginx {
            port,
            scheme: if tls.is_some() { "https" } else { "http" },
            _proc: proc,
            _cert: None,
            dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// `127.0.0.1:port`, as an upstream for `proxy`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The access log, parsed.
    pub fn accesses(&self) -> Result<Vec<Access>> {
        self.access_log()
            .lines()
            .map(|l| parse_access(l).with_context(|| format!("access log line {l:?}")))
            .collect()
    }
}

/// How `launch` writes the configuration.
struct Conf<'a> {
    /// The tests read the access log; the benchmark does not pay for one.
    access_log: bool,
    tls: Option<&'a TestCert>,
}

impl Conf<'_> {
    fn test() -> Self {
        Conf {
            access_log: true,
            tls: None,
        }
    }
}

fn parse_access(line: &str) -> Option<Access> {
    let (time, rest) = line.split_once(' ')?;
    let (status, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('"')?;
    let (tp, rest) = rest.split_once("\" \"")?;
    let (request, _) = rest.split_once('"')?;
    Some(Access {
        time: time.parse().ok()?,
        status: status.parse().ok()?,
        traceparent: (tp != "-").then(|| tp.to_string()),
        request: request.to_string(),
    })
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Shown only when the test fails, next to the process log.
        let log = self.access_log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(200)..];
        eprintln!(
            "---- nginx access.log ({} lines, last {}) ----\n{}\n---- nginx error.log ----\n{}",
            lines.len(),
            tail.len(),
            tail.join("\n"),
            self.error_log()
                .lines()
                .filter(|l| !l.contains("[info]"))
                .take(100)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
