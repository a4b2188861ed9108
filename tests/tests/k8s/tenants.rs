//! Tenants: resource attributes per selector, for two teams on one node;
//! the operator's rules replace what a process claims for itself. Also
//! with the agent in a private cgroup namespace, as in a pod on a cgroup v2
//! node: cgroup rules still match the host's paths.

use anyhow::Result;
use clew_e2e::kube::{FakeApi, Layout, PodContainer};
use clew_e2e::peers::PyService;
use clew_e2e::receiver::Protocol;
use clew_e2e::{Agent, Cgroup, Export, Receiver, Select};

use super::{kube_agent, resource_is, served};

#[test]
fn each_team_gets_its_own_tenant() -> Result<()> {
    let cg = Cgroup::new("k8s-tenants")?;
    let rx = Receiver::start(Protocol::HttpProtobuf)?;
    let api = FakeApi::start()?;
    let shop = PodContainer::new(&cg, Layout::SystemdContainerd)?;
    let billing = PodContainer::new(&cg, Layout::Cgroupfs)?;
    api.put(&shop.pod("shop-0", "shop").owned_by("StatefulSet", "shop"))?;
    api.put(
        &billing
            .pod("billing-0", "billing")
            .owned_by("StatefulSet", "billing"),
    )?;
    let shop_rule = "namespace=shop:tenant=team-a,service.namespace=storefront";
    let billing_rule = format!(
        "cgroup={}:tenant=team-b,deployment.environment.name=staging",
        billing.cgroup.path().display()
    );
    let mut agent = kube_agent(
        &[Select::Cgroup(&cg)],
        &rx,
        &api,
        &["--tenant", shop_rule, "--tenant", &billing_rule],
    )?;
    let a = PyService::opts("shop")
        .env("OTEL_RESOURCE_ATTRIBUTES", "tenant=forged,team=a")
        .start(&shop.cgroup)?;
    let b = PyService::opts("billing").start(&billing.cgroup)?;
    let none = PyService::opts("shared").start(&cg)?;

    let s = served(&rx, &cg, a.port, "/work/a")?;
    resource_is(&s, "tenant", Some("team-a"))?;
    resource_is(&s, "service.namespace", Some("storefront"))?;
    resource_is(&s, "team", Some("a"))?;
    resource_is(&s, "deployment.environment.name", None)?;
    let s = served(&rx, &cg, b.port, "/work/b")?;
    resource_is(&s, "tenant", Some("team-b"))?;
    resource_is(&s, "deployment.environment.name", Some("staging"))?;
    // No rule sets it: the semantic conventions' default, the namespace.
    resource_is(&s, "service.namespace", Some("billing"))?;
    let s = served(&rx, &cg, none.port, "/work/none")?;
    resource_is(&s, "tenant", None)?;
    agent.ensure_healthy()?;
    agent.stop()
}

#[test]
fn cgroup_rules_hold_in_a_private_cgroup_namespace() -> Result<()> {
    let cg = Cgroup::new("k8s-cgns")?;
    let own = Cgroup::new("k8s-cgns-agent")?;
    let rx = Receiver::start(Protocol::HttpProtobuf)?;
    let pod = PodContainer::new(&cg, Layout::SystemdContainerd)?;
    let rule = format!("cgroup={}:tenant=team-c", pod.cgroup.path().display());
    let mount = clew_e2e::cgroup::cgroup2_mount()?;
    let endpoint = rx.endpoint();
    let export = Export::Otlp {
        endpoint: &endpoint,
        protocol: rx.protocol(),
    };
    // The agent sees /proc/PID/cgroup relative to its own cgroup
    // (`/../clew-test-…`), as a pod's container does.
    let mut agent = Agent::launch_spawned(
        &[Select::Cgroup(&cg)],
        export,
        &[
            "--tenant",
            &rule,
            "--host-cgroup-root",
            &mount.display().to_string(),
        ],
        &[],
        |c| own.spawn_namespaced(c),
    )?;
    agent.wait_log(
        |l| l.contains("private cgroup namespace"),
        std::time::Duration::from_secs(5),
    )?;
    let svc = PyService::opts("in-pod").start(&pod.cgroup)?;
    let s = served(&rx, &cg, svc.port, "/work/ns")?;
    resource_is(&s, "tenant", Some("team-c"))?;
    resource_is(&s, "container.id", Some(&pod.container_id))?;
    resource_is(&s, "k8s.pod.uid", Some(&pod.pod_uid))?;
    agent.ensure_healthy()?;
    agent.stop()
}
