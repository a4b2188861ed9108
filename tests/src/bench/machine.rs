//! The machine a table comes from: kernel, CPU, cores, date, git revision.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

#[derive(Clone, Debug)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub date: String,
    pub git_rev: String,
}

impl Machine {
    pub fn detect(repo: &Path) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let cpu = cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let run = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        let date = run(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
        let git_rev = run(Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["describe", "--always", "--dirty"]));
        Machine {
            kernel,
            cpu,
            cores,
            date,
            git_rev,
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "Linux {}, {} ({} cores), {}, git {}",
            self.kernel, self.cpu, self.cores, self.date, self.git_rev
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "kernel": self.kernel,
            "cpu": self.cpu,
            "cores": self.cores,
            "date": self.date,
            "git_rev": self.git_rev,
        })
    }
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cpu_model() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
