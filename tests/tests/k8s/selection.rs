//! Selection by namespace and by pod label: with no cgroup given, the
//! agent traces exactly the processes of the matching pods (one running
//! before it started, one exec'd after), and nothing of the other pod or
//! of the clients outside any pod.

use anyhow::Result;
use clew_e2e::kube::{FakeApi, Layout, PodContainer};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{Cgroup, Protocol, Receiver, RecvSpan};
use std::time::Duration;

use super::{kube_agent, resource_is, served};

/// Long enough for a span that should not exist to have been exported.
const QUIET: Duration = Duration::from_secs(3);

#[test]
fn select_by_namespace_and_by_pod_label() -> Result<()> {
    let cg = Cgroup::new("k8s-select")?;
    let api = FakeApi::start()?;
    let shop = PodContainer::new(&cg, Layout::SystemdContainerd)?;
    let shop_late = shop.sibling(&cg)?;
    let other = PodContainer::new(&cg, Layout::Cgroupfs)?;
    api.put(
        &shop
            .pod("cart-7d4b9c8f5-aaaaa", "shop")
            .of_deployment("cart")
            .container("worker", Some(&shop_late.container_id)),
    )?;
    api.put(
        &other
            .pod("ledger-7d4b9c8f5-bbbbb", "billing")
            .of_deployment("ledger")
            .label("team", "blue"),
    )?;
    let before = PyService::opts("cart-before").start(&shop.cgroup)?;

    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = kube_agent(&[], &rx, &api, &["--namespace", "shop"])?;
    let after = PyService::opts("cart-after").start(&shop_late.cgroup)?;
    let ledger = PyService::opts("ledger").start(&other.cgroup)?;
    for svc in [&before, &after] {
        let s = served(&rx, &cg, svc.port, &format!("/work/{}", svc.name))?;
        resource_is(&s, "service.name", Some(&svc.name))?;
        resource_is(&s, "k8s.namespace.name", Some("shop"))?;
    }
    curl_expect(&cg, &ledger.url("/work/ledger"), &[], 200)?;
    let unselected = |s: &RecvSpan| {
        s.service() == Some("ledger")
            || s.service() == Some("curl")
            || s.res_str("k8s.namespace.name") == Some("billing")
    };
    rx.expect_none_for(unselected, QUIET)?;
    agent.ensure_healthy()?;
    agent.stop()?;

    // The same pods, selected by label this time: only the other one.
    let rx = Receiver::start(Protocol::Grpc)?;
    let mut agent = kube_agent(&[], &rx, &api, &["--pod-label", "team=blue"])?;
    let s = served(&rx, &cg, ledger.port, "/work/ledger-again")?;
    resource_is(&s, "k8s.namespace.name", Some("billing"))?;
    curl_expect(&cg, &before.url("/work/cart-again"), &[], 200)?;
    rx.expect_none_for(
        |s| s.res_str("k8s.namespace.name") == Some("shop") || s.service() == Some("curl"),
        QUIET,
    )?;
    agent.ensure_healthy()?;
    agent.stop()
}
