//! Which container and Kubernetes pod a process runs in, read off its
//! cgroup path: the names the kubelet and the container runtimes give their
//! cgroups carry both ids.
//!
//! Layouts recognised (any prefix before them, so a kubelet whose cgroup
//! root is not the host's, or that runs inside a container itself, is
//! read the same way):
//!
//! | driver | pod | container |
//! |---|---|---|
//! | systemd | `kubepods[-<qos>]-pod<uid with _>.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//! | cgroupfs | `kubepods/[<qos>/]pod<uid>` | `<id>`, `crio-<id>` |
//! | containerd on cgroup v1 | `kubepods-…-pod<uid>.slice:cri-containerd:<id>` (one component) | |
//! | Docker alone | | `docker-<id>.scope`, `docker/<id>` |
//! | podman | | `libpod-<id>[.scope]` |
//!
//! Static pods' cgroups carry the kubelet's config hash (32 hex digits)
//! instead of a UUID; conmon's own scopes (`crio-conmon-…`,
//! `libpod-conmon-…`) are not the container.

/// What a cgroup path says about its processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// 64 lowercase hex digits, as `crictl`/`docker ps --no-trunc` print it.
    pub container_id: Option<String>,
    /// The pod's uid with dashes (`metadata.uid`), or a static pod's
    /// config hash.
    pub pod_uid: Option<String>,
    pub runtime: Option<Runtime>,
}

/// `container.runtime.name` (semantic conventions; it replaced `container.runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// The identity in the contents of `/proc/PID/cgroup`: the cgroup v2 line,
/// or (hybrid hosts where the runtime manages v1 controllers only) the
/// first v1 line that names a container or pod.
pub fn from_proc_cgroup(text: &str) -> Identity {
    let paths = || {
        text.lines()
            .filter_map(|l| Some((l.starts_with("0::"), l.splitn(3, ':').nth(2)?)))
    };
    paths()
        .filter(|(v2, _)| *v2)
        .chain(paths().filter(|(v2, _)| !v2))
        .map(|(_, p)| parse(p))
        .find(|id| !id.is_empty())
        .unwrap_or_default()
}

/// The identity a cgroup path gives its processes: the innermost pod and
/// the innermost container inside it.
pub fn parse(path: &str) -> Identity {
    let mut id = Identity::default();
    let mut under_kubepods = false;
    let mut parent = "";
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        // The systemd driver's form on cgroup v1 controllers systemd does
        // not manage: `<pod slice>:<runtime prefix>:<id>`.
        let mut fields = part.splitn(3, ':');
        if let (Some(slice), Some(prefix), Some(cid)) =
            (fields.next(), fields.next(), fields.next())
        {
            if let Some(uid) = pod_slice(slice) {
                id = pod(uid);
                if let Some(runtime) = runtime_of(prefix) {
                    set_container(&mut id, cid, Some(runtime));
                }
            }
            parent = part;
            continue;
        }
        under_kubepods |= part.starts_with("kubepods") || part.contains("-kubepods");
        if let Some(uid) = pod_slice(part).or_else(|| pod_dir(part, under_kubepods)) {
            // A container outside the pod (kind's node container) is not
            // where the pod's processes run.
            id = pod(uid);
        } else if let Some((cid, runtime)) = container(part, parent) {
            set_container(&mut id, cid, runtime);
        } else if conmon(part) {
            id.container_id = None;
            id.runtime = None;
        }
        parent = part;
    }
    id
}

fn pod(uid: String) -> Identity {
    Identity {
        pod_uid: Some(uid),
        ..Identity::default()
    }
}

fn set_container(id: &mut Identity, cid: &str, runtime: Option<Runtime>) {
    if is_container_id(cid) {
        id.container_id = Some(cid.to_owned());
        id.runtime = runtime;
    }
}

/// `kubepods-burstable-pod0f1e…_….slice` (systemd driver) → the uid.
fn pod_slice(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice")?;
    if !name.contains("kubepods") {
        return None;
    }
    let (_, last) = name.rsplit_once('-')?;
    pod_uid(last.strip_prefix("pod")?, '_')
}

/// `pod0f1e…-…` below a `kubepods` directory (cgroupfs driver) → the uid.
fn pod_dir(part: &str, under_kubepods: bool) -> Option<String> {
    if !under_kubepods {
        return None;
    }
    pod_uid(part.strip_prefix("pod")?, '-')
}

/// A UUID spelled with `sep` between its groups, or a static pod's 32-hex
/// config hash; returned as `metadata.uid` spells it (dashes).
fn pod_uid(s: &str, sep: char) -> Option<String> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(s.to_owned());
    }
    let groups: Vec<&str> = s.split(sep).collect();
    let lens = groups.iter().map(|g| g.len()).collect::<Vec<_>>();
    let hex = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    (lens == [8, 4, 4, 4, 12] && hex).then(|| groups.join("-"))
}

/// A container's cgroup: its id and, where the name tells, its runtime.
fn container<'a>(part: &'a str, parent: &str) -> Option<(&'a str, Option<Runtime>)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if let Some((prefix, cid)) = name.rsplit_once('-') {
        let runtime = runtime_of(prefix)?;
        return is_container_id(cid).then_some((cid, Some(runtime)));
    }
    // A bare id: Docker's cgroupfs layout, or any runtime's under kubepods.
    let runtime = (parent == "docker").then_some(Runtime::Docker);
    is_container_id(name).then_some((name, runtime))
}

fn runtime_of(prefix: &str) -> Option<Runtime> {
    match prefix {
        "cri-containerd" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        "libpod" => Some(Runtime::Podman),
        _ => None,
    }
}

/// conmon, the monitor CRI-O and podman start next to each container, in
/// a scope of its own.
fn conmon(part: &str) -> bool {
    part.starts_with("crio-conmon-") || part.starts_with("libpod-conmon-")
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "9d7b4c2f7f3e1b5d2c8a6e4f0b1d3c5e7a9b2d4f6e8a0c1e3b5d7f9a1c3e5b7d";
    const UID: &str = "0f6a1d2c-3b4e-4f5a-8b9c-0d1e2f3a4b5c";
    const UID_SYSTEMD: &str = "0f6a1d2c_3b4e_4f5a_8b9c_0d1e2f3a4b5c";
    const STATIC: &str = "8daa50c3a64c9ff60bb9eab7b44b56fd";

    fn id(container: Option<&str>, pod: Option<&str>, runtime: Option<Runtime>) -> Identity {
        Identity {
            container_id: container.map(str::to_owned),
            pod_uid: pod.map(str::to_owned),
            runtime,
        }
    }

    fn check(path: &str, want: Identity) {
        assert_eq!(parse(path), want, "{path}");
    }

    #[test]
    fn systemd_driver_every_runtime_and_qos_class() {
        for (prefix, runtime) in [
            ("cri-containerd", Runtime::Containerd),
            ("crio", Runtime::CriO),
            ("docker", Runtime::Docker),
        ] {
            for qos in [
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable",
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort",
                "kubepods.slice/kubepods",
            ] {
                let path = format!("/{qos}-pod{UID_SYSTEMD}.slice/{prefix}-{CID}.scope");
                check(&path, id(Some(CID), Some(UID), Some(runtime)));
            }
        }
    }

    #[test]
    fn cgroupfs_driver() {
        for qos in ["/kubepods/burstable", "/kubepods/besteffort", "/kubepods"] {
            check(
                &format!("{qos}/pod{UID}/{CID}"),
                id(Some(CID), Some(UID), None),
            );
            check(
                &format!("{qos}/pod{UID}/crio-{CID}"),
                id(Some(CID), Some(UID), Some(Runtime::CriO)),
            );
        }
        // The pod's own cgroup: processes the runtime put there, no container.
        check(
            &format!("/kubepods/burstable/pod{UID}"),
            id(None, Some(UID), None),
        );
    }

    #[test]
    fn static_pods_carry_the_config_hash() {
        check(
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/cri-containerd-{CID}.scope"),
            id(Some(CID), Some(STATIC), Some(Runtime::Containerd)),
        );
        check(
            &format!("/kubepods/burstable/pod{STATIC}/{CID}"),
            id(Some(CID), Some(STATIC), None),
        );
    }

    #[test]
    fn kubepods_below_another_root() {
        // kind: the kubelet's cgroup root is /kubelet, inside a node container.
        check(
            &format!("/system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope", "a".repeat(64)),
            id(Some(CID), Some(UID), Some(Runtime::Containerd)),
        );
        check(
            &format!("/kubelet/kubepods/besteffort/pod{UID}/{CID}"),
            id(Some(CID), Some(UID), None),
        );
        // A test's own cgroup above the kubelet's names.
        check(
            &format!("/clew-test-k8s-1-0/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"),
            id(Some(CID), Some(UID), Some(Runtime::Containerd)),
        );
        // Seen from a private cgroup namespace: the path climbs out first.
        check(
            &format!(
                "/../../kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
            ),
            id(Some(CID), Some(UID), Some(Runtime::Containerd)),
        );
        // The kind node's own processes (kubelet) are in the node container.
        let node = "b".repeat(64);
        check(
            &format!("/system.slice/docker-{node}.scope/kubelet.slice"),
            id(Some(&node), None, Some(Runtime::Docker)),
        );
    }

    #[test]
    fn containerd_on_cgroup_v1_with_the_systemd_driver() {
        check(
            &format!("/system.slice/containerd.service/kubepods-burstable-pod{UID_SYSTEMD}.slice:cri-containerd:{CID}"),
            id(Some(CID), Some(UID), Some(Runtime::Containerd)),
        );
    }

    #[test]
    fn outside_kubernetes() {
        check(
            &format!("/system.slice/docker-{CID}.scope"),
            id(Some(CID), None, Some(Runtime::Docker)),
        );
        check(
            &format!("/docker/{CID}"),
            id(Some(CID), None, Some(Runtime::Docker)),
        );
        check(
            &format!("/libpod_parent/libpod-{CID}"),
            id(Some(CID), None, Some(Runtime::Podman)),
        );
        check(
            &format!("/machine.slice/libpod-{CID}.scope"),
            id(Some(CID), None, Some(Runtime::Podman)),
        );
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container"),
            id(Some(CID), None, Some(Runtime::Podman)),
        );
        // containerd's own namespaces (ctr, nerdctl): a bare id.
        check(&format!("/default/{CID}"), id(Some(CID), None, None));
        // Docker in Docker: the innermost container.
        let outer = "c".repeat(64);
        check(
            &format!("/docker/{outer}/docker/{CID}"),
            id(Some(CID), None, Some(Runtime::Docker)),
        );
        // systemd inside a container: a sub-cgroup of the container's.
        check(
            &format!("/kubepods/pod{UID}/{CID}/init.scope"),
            id(Some(CID), Some(UID), None),
        );
    }

    #[test]
    fn conmon_is_not_the_container() {
        check(
            &format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-conmon-{CID}.scope"),
            id(None, Some(UID), None),
        );
        check(
            &format!("/machine.slice/libpod-conmon-{CID}.scope"),
            Identity::default(),
        );
    }

    #[test]
    fn near_misses_are_nothing() {
        for path in [
            "/",
            "",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/containerd.service",
            "/system.slice/docker.service",
            // Too short, upper case, not hex.
            &format!("/docker/{}", &CID[..63]),
            &format!("/docker/{}", CID.to_uppercase()),
            &format!("/docker/{}g", &CID[..63]),
            // An unknown runtime prefix, a pod dir outside kubepods, a uid
            // with a group of the wrong length.
            &format!("/system.slice/rkt-{CID}.scope"),
            &format!("/pod{UID}"),
            "/kubepods/pod0f6a1d2c-3b4e-4f5a-8b9c-0d1e2f3a4b5",
            "/kubepods.slice/kubepods-podxyz.slice",
            // memory controller of this very sandbox: 32 hex, not a pod.
            "/process_api/17d1d27db89a78870e71cdf3608712cf",
        ] {
            check(path, Identity::default());
        }
    }

    #[test]
    fn proc_cgroup_prefers_the_v2_line() {
        let v2 = format!(
            "12:memory:/docker/{}\n0::/kubepods/pod{UID}/{CID}\n",
            "d".repeat(64)
        );
        assert_eq!(from_proc_cgroup(&v2), id(Some(CID), Some(UID), None));
        // Hybrid host, runtime on v1 only: the v2 line says nothing.
        let hybrid = format!("9:name=systemd:/\n4:memory:/docker/{CID}\n0::/\n");
        assert_eq!(
            from_proc_cgroup(&hybrid),
            id(Some(CID), None, Some(Runtime::Docker))
        );
        assert_eq!(from_proc_cgroup("0::/user.slice\n"), Identity::default());
        assert_eq!(from_proc_cgroup(""), Identity::default());
        assert_eq!(from_proc_cgroup("garbage"), Identity::default());
    }
}
