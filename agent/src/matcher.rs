//! What selects a process, for the tracing selection and for tenant rules
//! alike: its cgroup subtree, its executable, or its pod's namespace and
//! labels. Where the conditions come from (flags, a config file) is the
//! callers' business.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

use crate::k8s::pod::Pod;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every process in this cgroup subtree: a directory under the host
    /// hierarchy's mount once resolved (`Hierarchy::resolve`).
    Cgroup(PathBuf),
    /// Processes running this executable (a name, or an absolute path).
    Exe(String),
    /// Processes of pods in this namespace.
    Namespace(String),
    /// Processes of pods carrying all these labels.
    PodLabels(Vec<(String, String)>),
}

/// What is known of one process when matching.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// Its cgroup directory under the host hierarchy's mount.
    pub cgroup: Option<&'a Path>,
    /// `/proc/PID/exe` (empty when unknown).
    pub exe: &'a Path,
    pub comm: &'a str,
    pub pod: Option<&'a Pod>,
}

impl Default for Subject<'_> {
    fn default() -> Self {
        Subject {
            cgroup: None,
            exe: Path::new(""),
            comm: "",
            pod: None,
        }
    }
}

impl Match {
    /// `kind=value`: `cgroup=PATH`, `exe=NAME|PATH`, `namespace=NAME` or
    /// `pod-label=KEY=VALUE[+KEY=VALUE…]`.
    pub fn parse(s: &str) -> Result<Self> {
        let Some((kind, value)) = s.split_once('=') else {
            bail!("{s:?}: expected KIND=VALUE (cgroup, exe, namespace or pod-label)");
        };
        if value.is_empty() {
            bail!("{s:?}: empty {kind}");
        }
        Ok(match kind.trim() {
            "cgroup" => Match::Cgroup(PathBuf::from(value)),
            "exe" => Match::Exe(value.to_owned()),
            "namespace" => Match::Namespace(value.to_owned()),
            "pod-label" => Match::PodLabels(labels(value, '+')?),
            other => {
                bail!("{s:?}: unknown selector {other:?} (cgroup, exe, namespace or pod-label)")
            }
        })
    }

    /// Whether this condition can only be decided with the pod metadata
    /// from the Kubernetes API.
    pub fn needs_pods(&self) -> bool {
        matches!(self, Match::Namespace(_) | Match::PodLabels(_))
    }

    pub fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Match::Cgroup(dir) => s.cgroup.is_some_and(|c| c.starts_with(dir)),
            Match::Exe(want) => exe_matches(want, s.exe, s.comm),
            Match::Namespace(ns) => s.pod.is_some_and(|p| p.namespace == *ns),
            Match::PodLabels(want) => s.pod.is_some_and(|p| {
                want.iter()
                    .all(|(k, v)| p.labels.get(k).is_some_and(|have| have == v))
            }),
        }
    }
}

impl Match {
    /// `--pod-label`'s `KEY=VALUE[,KEY=VALUE…]`.
    pub fn pod_labels(s: &str) -> Result<Self> {
        Ok(Match::PodLabels(labels(s, ',')?))
    }
}

/// `key=value` pairs separated by `sep`, as a label selector's equalities.
pub fn labels(s: &str, sep: char) -> Result<Vec<(String, String)>> {
    s.split(sep)
        .map(|pair| match pair.trim().split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => bail!("{pair:?}: expected a pod label as KEY=VALUE"),
        })
        .collect()
}

/// An `--exe` condition: a path matches `/proc/PID/exe` (or what the
/// path resolves to through symlinks), a name the executable's file name
/// or the process's comm.
pub fn exe_matches(want: &str, exe: &Path, comm: &str) -> bool {
    if want.contains('/') {
        return exe == Path::new(want) || fs::canonicalize(want).is_ok_and(|p| p == exe);
    }
    exe.file_name().is_some_and(|n| n == want) || comm == want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, labels: &[(&str, &str)]) -> Pod {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Pod {
            labels,
            ..Pod::named("u", "p", ns)
        }
    }

    #[test]
    fn exe_matching_by_name_path_or_comm() {
        let exe = Path::new("/usr/sbin/nginx");
        assert!(exe_matches("nginx", exe, "nginx"));
        assert!(exe_matches("/usr/sbin/nginx", exe, "nginx"));
        assert!(!exe_matches("/usr/bin/nginx", exe, "nginx"));
        assert!(exe_matches(
            "gunicorn",
            Path::new("/usr/bin/python3"),
            "gunicorn"
        ));
        assert!(!exe_matches("curl", exe, "nginx"));
    }

    #[test]
    fn parsing() {
        assert_eq!(
            Match::parse("cgroup=/kubepods.slice").unwrap(),
            Match::Cgroup("/kubepods.slice".into())
        );
        assert_eq!(
            Match::parse("namespace=shop").unwrap(),
            Match::Namespace("shop".into())
        );
        assert_eq!(
            Match::parse("pod-label=app=web+tier=front").unwrap(),
            Match::PodLabels(vec![
                ("app".into(), "web".into()),
                ("tier".into(), "front".into())
            ])
        );
        assert_eq!(
            Match::parse("exe=nginx").unwrap(),
            Match::Exe("nginx".into())
        );
        for bad in [
            "namespace",
            "namespace=",
            "port=80",
            "pod-label=app",
            "pod-label==x",
        ] {
            assert!(Match::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let shop = pod("shop", &[("app", "web"), ("tier", "front")]);
        let dir = PathBuf::from("/sys/fs/cgroup/kubepods.slice/a.slice/c.scope");
        let s = Subject {
            cgroup: Some(&dir),
            exe: Path::new("/usr/bin/python3"),
            comm: "python3",
            pod: Some(&shop),
        };
        let yes = [
            Match::Cgroup("/sys/fs/cgroup/kubepods.slice".into()),
            Match::Namespace("shop".into()),
            Match::PodLabels(vec![("app".into(), "web".into())]),
            Match::PodLabels(vec![
                ("app".into(), "web".into()),
                ("tier".into(), "front".into()),
            ]),
            Match::Exe("python3".into()),
        ];
        let no = [
            Match::Cgroup("/sys/fs/cgroup/kubepods.slice/b.slice".into()),
            // A prefix of a name is not an ancestor.
            Match::Cgroup("/sys/fs/cgroup/kubepods.sl".into()),
            Match::Namespace("shopping".into()),
            Match::PodLabels(vec![
                ("app".into(), "web".into()),
                ("tier".into(), "back".into()),
            ]),
            Match::Exe("nginx".into()),
        ];
        for m in &yes {
            assert!(m.matches(&s), "{m:?}");
        }
        for m in &no {
            assert!(!m.matches(&s), "{m:?}");
        }
        // No pod known: pod conditions cannot hold.
        let bare = Subject { pod: None, ..s };
        assert!(!Match::Namespace("shop".into()).matches(&bare));
        assert!(Match::Namespace("shop".into()).needs_pods());
        assert!(!Match::Exe("x".into()).needs_pods());
    }
}
