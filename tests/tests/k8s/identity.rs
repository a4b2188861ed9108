//! Without any API server: the container's id and the pod's uid come from
//! the cgroup path alone, for the kubelet's systemd and cgroupfs layouts,
//! below the test's own cgroup (the kubelet's names need not be at the
//! root).

use anyhow::Result;
use clew_e2e::kube::{Layout, PodContainer};
use clew_e2e::peers::PyService;
use clew_e2e::{Agent, Cgroup, Protocol, Receiver};

use super::{resource_is, served};

#[test]
fn kubelet_cgroups_give_container_and_pod_ids() -> Result<()> {
    let cg = Cgroup::new("k8s-identity")?;
    let rx = Receiver::start(Protocol::HttpProtobuf)?;
    let systemd = PodContainer::new(&cg, Layout::SystemdContainerd)?;
    let cgroupfs = PodContainer::new(&cg, Layout::Cgroupfs)?;
    let mut agent = Agent::start(&cg, &rx.endpoint(), Protocol::HttpProtobuf, &[])?;
    let a = PyService::opts("in-systemd-pod").start(&systemd.cgroup)?;
    let b = PyService::opts("in-cgroupfs-pod").start(&cgroupfs.cgroup)?;

    let s = served(&rx, &cg, a.port, "/work/systemd")?;
    resource_is(&s, "service.name", Some("in-systemd-pod"))?;
    resource_is(&s, "container.id", Some(&systemd.container_id))?;
    resource_is(&s, "k8s.pod.uid", Some(&systemd.pod_uid))?;
    resource_is(&s, "container.runtime.name", Some("containerd"))?;
    // Nothing the API would have said.
    resource_is(&s, "k8s.pod.name", None)?;

    let s = served(&rx, &cg, b.port, "/work/cgroupfs")?;
    resource_is(&s, "container.id", Some(&cgroupfs.container_id))?;
    resource_is(&s, "k8s.pod.uid", Some(&cgroupfs.pod_uid))?;
    // A bare id under the pod: any runtime's.
    resource_is(&s, "container.runtime.name", None)?;

    // curl ran in the test's cgroup, in no container.
    let curl = rx.wait_for(
        |s| {
            s.iter()
                .any(|x| x.is_client() && x.service() == Some("curl"))
        },
        clew_e2e::SPAN_TIMEOUT,
    )?;
    for c in curl.iter().filter(|x| x.service() == Some("curl")) {
        resource_is(c, "container.id", None)?;
        resource_is(c, "k8s.pod.uid", None)?;
    }
    agent.ensure_healthy()?;
    agent.stop()
}
