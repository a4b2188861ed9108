//! The agent configured the way a fleet ships it: a config file (named by
//! `CLEW_CONFIG`, as a Kubernetes ConfigMap mount would be), with an
//! environment variable and a flag overriding parts of it.

use anyhow::{ensure, Context, Result};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::process::TempDir;
use clew_e2e::{Agent, Cgroup, Export, Protocol, Receiver, SPAN_TIMEOUT};

#[test]
fn file_environment_and_flags_each_decide_their_part() -> Result<()> {
    let cg = Cgroup::new("config-file")?;
    let svc = PyService::start(&cg, "backend", None)?;
    let rx = Receiver::start(Protocol::HttpProtobuf)?;
    let dir = TempDir::new("config-file")?;
    let path = dir.join("clew.toml");
    // Selection, endpoint and route only here; the query mode and one
    // resource attribute are overridden below.
    let file = format!(
        r#"
[select]
cgroups = ["{cgroup}"]

[export]
endpoint = "{endpoint}"
protocol = "http/protobuf"

[routes]
patterns = ["/work/{{step}}"]

[redaction]
query = "full"

[resource]
attributes = {{ "k8s.cluster.name" = "from-file", team = "from-file" }}
"#,
        cgroup = cg.path().display(),
        endpoint = rx.endpoint(),
    );
    std::fs::write(&path, file).context("writing the config file")?;
    let path = path.display().to_string();
    let env = [
        ("CLEW_CONFIG", path.as_str()),
        ("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=from-env"),
    ];
    let mut agent = Agent::launch_with_env(&[], Export::Configured, &["--query", "off"], &env)?;

    curl_expect(&cg, &svc.url("/work/7?color=red"), &[], 200)?;
    let spans = rx.wait_for(
        |s| {
            s.iter()
                .any(|s| s.is_server() && s.path() == Some("/work/7"))
        },
        SPAN_TIMEOUT,
    )?;
    let server = spans
        .iter()
        .find(|s| s.is_server() && s.path() == Some("/work/7"))
        .expect("waited for");
    ensure!(
        server.name == "GET /work/{step}" && server.attr_str("http.route") == Some("/work/{step}"),
        "the file's route template did not name the span: {server}"
    );
    ensure!(
        server.attr_str("url.query").is_none(),
        "--query off did not override the file's `full`: {server}"
    );
    ensure!(
        server.res_str("k8s.cluster.name") == Some("from-env")
            && server.res_str("team") == Some("from-file"),
        "OTEL_RESOURCE_ATTRIBUTES should replace the file's cluster and keep its team: {server}"
    );
    agent.ensure_healthy()?;
    agent.stop()
}
