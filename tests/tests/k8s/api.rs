//! Pod metadata from a (fake) API server: a pod listed at start, one that
//! appears after the agent started (watch), one whose first requests come
//! before the API knows it and that only a relist forced by 410 Gone
//! reveals, and one deleted.

use anyhow::{ensure, Result};
use clew_e2e::kube::{FakeApi, Layout, PodContainer, NODE};
use clew_e2e::peers::PyService;
use clew_e2e::{Cgroup, Protocol, Receiver, Select};
use std::time::{Duration, Instant};

use super::{kube_agent, resource_is, served};

/// Waits until the agent's counter `clew_{name}` satisfies `pred`.
fn wait_metric(agent: &clew_e2e::Agent, name: &str, pred: impl Fn(u64) -> bool) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = agent.metric(name)?;
        if pred(v) {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "clew_{name} stayed at {v}\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pods_from_the_api_name_the_services() -> Result<()> {
    let cg = Cgroup::new("k8s-api")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let api = FakeApi::start()?;
    let web = PodContainer::new(&cg, Layout::SystemdContainerd)?;
    let sidecar = web.sibling(&cg)?;
    let db = PodContainer::new(&cg, Layout::Cgroupfs)?;
    let job = PodContainer::new(&cg, Layout::SystemdContainerd)?;
    api.put(
        &web.pod("web-7d4b9c8f5-x2x9q", "shop")
            .of_deployment("web")
            .container("sidecar", Some(&sidecar.container_id)),
    )?;
    let mut agent = kube_agent(&[Select::Cgroup(&cg)], &rx, &api, &[])?;
    wait_metric(&agent, "k8s_pods", |n| n == 1)?;

    // Listed at start: the Deployment names the service; the process that
    // names itself keeps its name, with the pod's attributes all the same.
    let web_svc = PyService::opts("web").anonymous().start(&web.cgroup)?;
    let own = PyService::opts("own-name").start(&sidecar.cgroup)?;
    let s = served(&rx, &cg, web_svc.port, "/work/web")?;
    for (key, want) in [
        ("service.name", "web"),
        ("k8s.deployment.name", "web"),
        ("k8s.replicaset.name", "web-7d4b9c8f5"),
        ("k8s.pod.name", "web-7d4b9c8f5-x2x9q"),
        ("k8s.namespace.name", "shop"),
        ("k8s.container.name", "app"),
        ("k8s.node.name", NODE),
        ("k8s.pod.uid", &web.pod_uid),
        ("container.id", &web.container_id),
        ("service.namespace", "shop"),
    ] {
        resource_is(&s, key, Some(want))?;
    }
    let s = served(&rx, &cg, own.port, "/work/own")?;
    resource_is(&s, "service.name", Some("own-name"))?;
    resource_is(&s, "k8s.container.name", Some("sidecar"))?;
    resource_is(&s, "k8s.deployment.name", Some("web"))?;

    // A pod created after the agent started arrives through the watch.
    api.put(&db.pod("db-0", "shop").owned_by("StatefulSet", "db"))?;
    wait_metric(&agent, "k8s_pods", |n| n == 2)?;
    let db_svc = PyService::opts("db").anonymous().start(&db.cgroup)?;
    let s = served(&rx, &cg, db_svc.port, "/work/db")?;
    resource_is(&s, "service.name", Some("db"))?;
    resource_is(&s, "k8s.statefulset.name", Some("db"))?;
    resource_is(&s, "k8s.pod.name", Some("db-0"))?;

    // Requests before the API knows the pod: exported at once with what
    // the cgroup says, named after the executable.
    let job_svc = PyService::opts("job").anonymous().start(&job.cgroup)?;
    let early = served(&rx, &cg, job_svc.port, "/work/early")?;
    resource_is(&early, "k8s.pod.uid", Some(&job.pod_uid))?;
    resource_is(&early, "container.id", Some(&job.container_id))?;
    resource_is(&early, "k8s.pod.name", None)?;
    resource_is(&early, "service.name", Some(&job_svc.python.exe_name))?;
    ensure!(agent.metric("k8s_resources_incomplete")? >= 1);
    // The pod's event is lost; the watch then expires (410 Gone): only the
    // fresh list shows the pod, and the next span carries it.
    api.put_unannounced(
        &job.pod("nightly-report-x7k2p", "batch")
            .owned_by("Job", "nightly-report"),
    )?;
    let lists_before = api.stats()?["lists"].as_u64().unwrap_or(0);
    api.expire()?;
    wait_metric(&agent, "k8s_pods", |n| n == 3)?;
    let late = served(&rx, &cg, job_svc.port, "/work/late")?;
    resource_is(&late, "service.name", Some("nightly-report"))?;
    resource_is(&late, "k8s.job.name", Some("nightly-report"))?;
    resource_is(&late, "k8s.namespace.name", Some("batch"))?;
    ensure!(agent.metric("k8s_relists_gone")? >= 1);

    // A deleted pod leaves the cache.
    api.delete(&db.pod_uid)?;
    wait_metric(&agent, "k8s_pods", |n| n == 2)?;

    let stats = api.stats()?;
    ensure!(
        stats["lists"].as_u64() > Some(lists_before)
            && stats["gone_sent"].as_u64() >= Some(1)
            && stats["bad_selector"] == 0
            && stats["unauthorized"] == 0,
        "fake API server saw {stats}"
    );
    agent.ensure_healthy()?;
    agent.stop()
}
