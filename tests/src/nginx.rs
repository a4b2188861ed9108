//! nginx serving static files from a temp dir, started inside a test's cgroup.

use crate::cgroup::Cgroup;
use crate::net::{free_port, wait_listening};
use crate::process::{Supervised, TempDir};
use anyhow::Result;
use std::process::Command;
use std::time::Duration;

/// Size of `/big.bin`: large enough to need many writes (or sendfile calls).
pub const BIG_FILE_LEN: usize = 5 << 20;

pub struct Nginx {
    pub port: u16,
    // Kept for its lifetime: dropping it stops nginx and prints its log.
    _proc: Supervised,
    dir: TempDir,
}

impl Nginx {
    /// Serves `/index.html` and `/big.bin` with one worker (master_process on,
    /// so the traced worker is a forked child).
    pub fn start(cg: &Cgroup) -> Result<Self> {
        let dir = TempDir::new("nginx")?;
        let port = free_port()?;
        let root = dir.join("www");
        std::fs::create_dir(&root)?;
        std::fs::write(
            root.join("index.html"),
            "<html><body>clew e2e</body></html>\n",
        )?;
        let big: Vec<u8> = (0..BIG_FILE_LEN).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), big)?;
        let p = dir.path().display();
        let conf = format!(
            "daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
",
            root = root.display()
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
            _proc: proc,
            dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Shown only when the test fails, next to the process log.
        eprintln!("---- nginx access.log ----\n{}", self.access_log());
    }
}
