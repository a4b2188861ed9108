//! Files a process maps, from `/proc/PID/maps`, opened through
//! `/proc/PID/root` so a process in another mount namespace (a container)
//! resolves to its own files.

use std::path::PathBuf;

use super::library;

pub struct Mapped {
    /// As the process sees it.
    pub path: PathBuf,
    /// As the agent can open it.
    pub host_path: PathBuf,
    pub file_name: String,
}

/// `libssl.so*` files in the dynamic loader's default directories (which
/// hold the host's OpenSSL on Debian, Red Hat and Alpine layouts).
pub fn host_libssl() -> Vec<PathBuf> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let dirs = [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ];
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("libssl.so.") {
                out.push(e.path());
            }
        }
    }
    out
}

/// Distinct mapped files worth inspecting, each with whether it is the
/// process's executable.
pub fn tls_candidates(pid: u32) -> Vec<(Mapped, bool)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    mapped_files(&text)
        .into_iter()
        .filter_map(|path| {
            let file_name = path.file_name()?.to_str()?.to_owned();
            let is_exe = exe.as_deref() == Some(path.as_path());
            library::interesting(&file_name, is_exe).then(|| {
                let host_path = root.join(path.strip_prefix("/").unwrap_or(&path));
                (
                    Mapped {
                        path,
                        host_path,
                        file_name,
                    },
                    is_exe,
                )
            })
        })
        .collect()
}

/// Distinct file paths of a maps listing, in order of appearance (deleted
/// files and pseudo-mappings left out).
fn mapped_files(text: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        // address perms offset dev inode pathname (the path may hold spaces)
        let Some(path) = line.splitn(6, char::is_whitespace).nth(5) else {
            continue;
        };
        let path = path.trim_start();
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let p = PathBuf::from(path);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distinct_files() {
        let text = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 fe:01 1234 /usr/bin/python3.11
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 [heap]
7f1000000000-7f1000020000 r--p 00000000 fe:01 77 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1000020000-7f1000080000 r-xp 00020000 fe:01 77 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f2000000000-7f2000001000 r-xp 00000000 fe:01 88 /tmp/my lib.so
7f3000000000-7f3000001000 r-xp 00000000 fe:01 99 /tmp/gone.so (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        let files = mapped_files(text);
        assert_eq!(
            files,
            vec![
                PathBuf::from("/usr/bin/python3.11"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libssl.so.3"),
                PathBuf::from("/tmp/my lib.so"),
            ]
        );
    }

    #[test]
    fn own_process_maps_its_executable() {
        let me = std::process::id();
        let found = tls_candidates(me);
        assert!(
            found.iter().any(|(_, exe)| *exe),
            "own executable not found"
        );
        for (m, _) in &found {
            assert!(m.host_path.starts_with(format!("/proc/{me}/root")));
        }
    }
}
