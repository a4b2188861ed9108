use std::{path::PathBuf, time::Duration};

use clap::Parser;

use super::*;
use crate::{
    cli::{Cli, Command},
    export::{Compression, Protocol},
    matcher::Match,
    sampling::Root,
};

const EXAMPLE: &str = include_str!("../../../deploy/clew.example.toml");

fn flags(args: &[&str]) -> RunArgs {
    let cli = Cli::try_parse_from(["clew", "run"].iter().chain(args)).unwrap();
    match cli.command {
        Command::Run(run) => *run,
        Command::Probe(_) => unreachable!(),
    }
}

fn resolve(file: &str, env: &[(&str, &str)], args: &[&str]) -> Result<Config> {
    Config::resolve(File::parse(file)?, &Env::from_pairs(env), flags(args))
}

/// The error's whole text.
fn error(file: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    format!("{:#}", resolve(file, env, args).unwrap_err())
}

/// Fails on a null (an unset key) or an empty list or table anywhere.
fn assert_all_set(value: &serde_json::Value, path: &str) {
    match value {
        serde_json::Value::Null => panic!("the example does not set {path}"),
        serde_json::Value::Array(items) => {
            assert!(!items.is_empty(), "the example leaves {path} empty");
        }
        serde_json::Value::Object(fields) => {
            assert!(!fields.is_empty(), "the example leaves {path} empty");
            // Tables whose keys are the user's (headers, attributes) are
            // data; a signal's table takes the keys `[export]` shows, and
            // needs only one to show that it is read.
            if path.ends_with("headers") || path.ends_with("attributes") {
                return;
            }
            if [".export.traces", ".export.metrics", ".export.logs"].contains(&path) {
                assert!(
                    fields.values().any(|v| !v.is_null()),
                    "the example sets nothing in {path}"
                );
                return;
            }
            for (k, v) in fields {
                assert_all_set(v, &format!("{path}.{k}"));
            }
        }
        _ => {}
    }
}

#[test]
fn the_example_sets_every_key_and_round_trips() {
    let file = File::parse(EXAMPLE).unwrap();
    assert_all_set(&serde_json::to_value(&file).unwrap(), "");
    let written = toml::to_string(&file).unwrap();
    assert_eq!(File::parse(&written).unwrap(), file, "{written}");
}

#[test]
fn every_key_of_the_example_reaches_the_configuration() {
    let cfg = resolve(EXAMPLE, &[], &[]).unwrap();
    assert_eq!(
        cfg.select.cgroups,
        [PathBuf::from("/sys/fs/cgroup/system.slice/shop.service")]
    );
    assert_eq!(cfg.select.pids, [4242]);
    assert_eq!(cfg.select.exes, ["nginx", "/usr/local/bin/checkout"]);
    assert_eq!(cfg.select.ports, [8080]);
    assert_eq!(
        cfg.select.pods,
        [
            Match::Namespace("shop".into()),
            Match::PodLabels(vec![
                ("app.kubernetes.io/name".into(), "checkout".into()),
                ("tier".into(), "web".into())
            ])
        ]
    );
    assert_eq!(
        cfg.host_cgroup_root,
        Some(PathBuf::from("/host/sys/fs/cgroup"))
    );
    let k = &cfg.kubernetes;
    assert_eq!(k.mode, KubernetesMode::Auto);
    assert_eq!(k.node_name.as_deref(), Some("node-1"));
    assert_eq!(
        k.service_account,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount")
    );
    let selectors: Vec<&Match> = cfg.tenants.iter().map(|r| &r.when).collect();
    assert_eq!(
        selectors,
        [
            &Match::Namespace("shop".into()),
            &Match::PodLabels(vec![("team".into(), "payments".into())]),
            &Match::Cgroup("/system.slice/billing.service".into()),
            &Match::Exe("nginx".into()),
        ]
    );
    assert_eq!(
        cfg.tenants[0].attributes,
        [
            ("service.namespace".into(), "shop".into()),
            ("tenant".into(), "team-a".into())
        ]
    );

    let t = &cfg.traces;
    assert_eq!(
        t.endpoint.as_deref(),
        Some("https://otel-gateway.observability:4317")
    );
    assert_eq!(t.protocol, Protocol::Grpc);
    assert_eq!(t.headers, [("x-scope-orgid".into(), "shop".into())]);
    assert_eq!(t.export_timeout, Duration::from_secs(5));
    assert_eq!(t.compression, Compression::Gzip);
    assert_eq!(t.tls.ca, Some("/etc/clew/tls/ca.pem".into()));
    assert_eq!(t.tls.client_cert, Some("/etc/clew/tls/client.pem".into()));
    assert_eq!(t.tls.client_key, Some("/etc/clew/tls/client.key".into()));
    assert_eq!((t.queue_capacity, t.max_batch), (16384, 1024));
    assert_eq!(t.batch_timeout, Duration::from_secs(2));
    assert_eq!(t.batch_deadline, Duration::from_secs(30));

    let m = &cfg.metrics_export;
    assert_eq!(
        m.endpoint.as_deref(),
        Some("https://otel-metrics.observability:4318/v1/metrics")
    );
    assert_eq!(m.protocol, Protocol::HttpProtobuf);
    assert_eq!(m.headers, [("x-scope-orgid".into(), "shop-metrics".into())]);
    assert_eq!(m.export_timeout, Duration::from_secs(10));
    assert_eq!(m.compression, Compression::None);
    assert_eq!(cfg.metric_export_interval, Duration::from_secs(30));

    assert_eq!(
        cfg.resource_attributes,
        [
            ("deployment.environment.name".into(), "production".into()),
            ("k8s.cluster.name".into(), "prod-eu-1".into()),
        ]
    );
    assert_eq!(cfg.sampler, Sampler::ParentBased(Root::TraceIdRatio(0.25)));
    assert_eq!(cfg.propagation, Mechanisms::ALL);
    assert_eq!(cfg.baggage_attributes, ["tenant", "plan"]);
    assert_eq!((cfg.capture_bytes, cfg.ringbuf_mib), (8192, 8));
    assert_eq!(cfg.syscall_arguments, SyscallArguments::Enter);
    assert_eq!(cfg.http_known_methods.as_ref().map(Vec::len), Some(8));
    assert_eq!((cfg.tls_attach, cfg.tls_go), (TlsAttach::Process, false));
    assert_eq!(cfg.attribute_value_length_limit, 2048);
    assert_eq!(cfg.sdk_processes, SdkProcesses::Defer);
    assert_eq!(cfg.query, QueryMode::Redacted);
    assert_eq!(cfg.redact_names, ["tenant_pin", "otp"]);
    assert_eq!(cfg.command_line, CommandLineMode::Redacted);
    let routes: Vec<String> = cfg.routes.into_iter().map(String::from).collect();
    assert_eq!(routes, ["/users/{id}", "/orders/{id}/items/{item}"]);
    assert!(cfg.auto_routes);
    assert_eq!(cfg.metric_series_limit, 5000);
    assert_eq!(cfg.health_listen, Some("0.0.0.0:9464".parse().unwrap()));
    let synthetic = cfg.synthetic.unwrap();
    assert_eq!(
        synthetic
            .targets
            .iter()
            .map(|u| u.as_str())
            .collect::<Vec<_>>(),
        ["http://127.0.0.1:8080/healthz"]
    );
    assert_eq!(synthetic.interval, Duration::from_secs(30));
    let logs = cfg.logs.unwrap();
    assert_eq!(logs.sources.to_string(), "stderr,/var/log/shop/**/*.log");
    assert_eq!((logs.record_bytes, logs.per_second), (2048, 500));
    assert!(logs.defer_sdk);
    let l = cfg.logs_export.unwrap();
    assert_eq!(
        l.endpoint.as_deref(),
        Some("https://otel-gateway.observability:4317")
    );
    assert_eq!(l.headers, [("x-scope-orgid".into(), "shop".into())]);
    let (filter, source) = log_filter(None, &Env::from_pairs(&[]), &File::parse(EXAMPLE).unwrap());
    assert_eq!(
        (filter.as_str(), source),
        ("info,clew::export=debug", "log_level in the config file")
    );
}

#[test]
fn nothing_set_gives_the_defaults() {
    let cfg = resolve("", &[], &[]).unwrap();
    assert!(cfg.select.is_all());
    assert_eq!(cfg.traces.endpoint, None);
    assert_eq!(cfg.sampler, Sampler::ParentBased(Root::AlwaysOn));
    assert_eq!(cfg.propagation, Mechanisms::ALL);
    assert_eq!(
        (cfg.capture_bytes, cfg.ringbuf_mib),
        (DEFAULT_CAPTURE_BYTES, DEFAULT_RINGBUF_MIB)
    );
    assert_eq!(cfg.syscall_arguments, SyscallArguments::Auto);
    assert_eq!(cfg.attribute_value_length_limit, DEFAULT_ATTRIBUTE_LIMIT);
    assert_eq!(cfg.metric_export_interval, DEFAULT_METRIC_EXPORT_INTERVAL);
    assert_eq!(cfg.metric_series_limit, 2000);
    assert!(cfg.auto_routes && !cfg.tls_go);
    assert!(cfg.logs.is_none() && cfg.logs_export.is_none());
    assert_eq!(
        (
            cfg.query,
            cfg.command_line,
            cfg.sdk_processes,
            cfg.tls_attach
        ),
        (
            QueryMode::Redacted,
            CommandLineMode::Off,
            SdkProcesses::Defer,
            TlsAttach::File
        )
    );
    assert_eq!(cfg.health_listen, None);
    assert_eq!(cfg.synthetic, None);
    assert!(cfg.resource_attributes.is_empty() && cfg.http_known_methods.is_none());
}

#[test]
fn a_bad_key_or_value_is_one_error_naming_it_and_its_line() {
    // (the text after a comment line, what the error says, its line)
    let cases = [
        ("colour = \"blue\"", "unknown field `colour`", 2),
        ("[select]\ncgroup = [\"/a\"]", "unknown field `cgroup`", 3),
        (
            "[export]\nendpont = \"http://c:4318\"",
            "unknown field `endpont`",
            3,
        ),
        ("[export.traces]\nbatch = {}", "unknown field `batch`", 3),
        ("[teams]\nname = \"a\"", "unknown field `teams`", 2),
        (
            "[[tenants]]\nname = \"a\"\nattributes = { t = \"x\" }",
            "unknown field `name`",
            3,
        ),
        (
            "[[tenants]]\nnamespace = \"a\"\nexe = \"b\"\nattributes = { t = \"x\" }",
            "exactly one of",
            2,
        ),
        (
            "[[tenants]]\nnamespace = \"a\"",
            "missing field `attributes`",
            2,
        ),
        (
            "[kubernetes]\nmode = \"maybe\"",
            "unknown variant `maybe`",
            3,
        ),
        (
            "[capture]\nbytes = \"lots\"",
            "invalid type: string \"lots\"",
            3,
        ),
        ("[redaction]\nquery = \"some\"", "unknown variant `some`", 3),
        (
            "[routes]\npatterns = [\"users/{id}\"]",
            "must start with /",
            3,
        ),
        ("[metrics]\nexport_interval = \"soon\"", "not a duration", 3),
        ("[metrics]\nseries_limit = 0", "nonzero", 3),
        ("[sampling]\nratio = 1.5", "not a ratio between 0 and 1", 3),
        (
            "[sampling]\nsampler = \"jaeger\"",
            "unknown variant `jaeger`",
            3,
        ),
        (
            "[propagation]\nmechanisms = [\"none\", \"headers\"]",
            "cannot be combined",
            3,
        ),
        (
            "[export]\nprotocol = \"http/json\"",
            "http/json is not supported",
            3,
        ),
        (
            "[export]\nendpoint = \"ftp://c:21\"",
            "unsupported scheme",
            3,
        ),
        (
            "[health]\nlisten = \"localhost\"",
            "invalid socket address",
            3,
        ),
    ];
    for (text, what, line) in cases {
        let err = File::parse(&format!("# header\n{text}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(what) && err.contains(&format!("line {line},")),
            "{text:?} gave:\n{err}"
        );
    }
}

#[test]
fn out_of_range_values_name_their_source() {
    assert!(error("[capture]\nbytes = 100000", &[], &[])
        .contains("capture.bytes = 100000: must be between 64 and 16384"));
    assert!(error("", &[], &["--capture-bytes", "10"]).contains("--capture-bytes = 10"));
    assert!(error("[capture]\nringbuf_mib = 0", &[], &[]).contains("capture.ringbuf_mib = 0"));
    assert!(error("[metrics]\nexport_interval = \"0s\"", &[], &[])
        .contains("metrics.export_interval must be above 0"));
    assert!(error("", &[("CLEW_ROUTES", "/a,b")], &[]).contains("CLEW_ROUTES=\"/a,b\""));
    assert!(error("", &[("CLEW_PROPAGATION", "none,headers")], &[]).contains("CLEW_PROPAGATION"));
    assert!(error("", &[], &["--propagation", "none,headers"]).contains("--propagation"));
    assert!(error("", &[], &["--synthetic-interval", "0s"])
        .contains("--synthetic-interval = 0ns: must be between 1s and 86400s"));
}

#[test]
fn synthetic_probe_flags_beat_the_file() {
    let file = "[synthetic]\ntargets = [\"http://127.0.0.1:1/a\"]\ninterval = \"1m\"";
    let from_file = resolve(file, &[], &[]).unwrap().synthetic.unwrap();
    assert_eq!(from_file.interval, Duration::from_secs(60));
    let args = [
        "--synthetic-probe",
        "http://127.0.0.1:2/b",
        "--synthetic-interval",
        "2s",
    ];
    let from_flags = resolve(file, &[], &args).unwrap().synthetic.unwrap();
    assert_eq!(from_flags.targets[0].as_str(), "http://127.0.0.1:2/b");
    assert_eq!(from_flags.interval, Duration::from_secs(2));
    // An interval alone configures no probe.
    assert_eq!(
        resolve("[synthetic]\ninterval = \"5s\"", &[], &[])
            .unwrap()
            .synthetic,
        None
    );
}

#[test]
fn the_environment_beats_the_file_and_flags_beat_both() {
    let file = r#"
        [routes]
        patterns = ["/file/{id}"]
        auto = false
        [propagation]
        mechanisms = ["headers"]
        [metrics]
        series_limit = 10
        [redaction]
        query = "full"
        [sampling]
        sampler = "always_off"
        ratio = 0.5
        [spans]
        attribute_value_length_limit = 100
        [resource]
        attributes = { team = "file", "k8s.cluster.name" = "file" }
        [http]
        known_methods = ["GET"]
        [export]
        endpoint = "http://file:4318"
        [tls]
        go = true
    "#;
    let routes =
        |cfg: &Config| -> Vec<String> { cfg.routes.iter().cloned().map(String::from).collect() };

    let from_file = resolve(file, &[], &[]).unwrap();
    assert_eq!(routes(&from_file), ["/file/{id}"]);
    assert!(!from_file.auto_routes && from_file.tls_go);
    assert_eq!(
        from_file.propagation,
        Mechanisms {
            headers: true,
            tcp_option: false
        }
    );
    assert_eq!(from_file.metric_series_limit, 10);
    assert_eq!(from_file.sampler, Sampler::AlwaysOff);
    assert_eq!(from_file.attribute_value_length_limit, 100);

    let env = [
        ("CLEW_ROUTES", "/env/{id}"),
        ("CLEW_AUTO_ROUTES", "true"),
        ("CLEW_PROPAGATION", "tcp-option"),
        ("CLEW_METRIC_SERIES_LIMIT", "20"),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "200"),
        ("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=env"),
        ("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET,PURGE"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
    ];
    let from_env = resolve(file, &env, &[]).unwrap();
    assert_eq!(routes(&from_env), ["/env/{id}"]);
    assert!(from_env.auto_routes);
    assert_eq!(
        from_env.propagation,
        Mechanisms {
            headers: false,
            tcp_option: true
        }
    );
    assert_eq!(from_env.metric_series_limit, 20);
    // The file's ratio still applies to the variable's sampler.
    assert_eq!(from_env.sampler, Sampler::TraceIdRatio(0.5));
    assert_eq!(from_env.attribute_value_length_limit, 200);
    assert_eq!(
        from_env.resource_attributes,
        [
            ("k8s.cluster.name".into(), "env".into()),
            ("team".into(), "file".into())
        ]
    );
    assert_eq!(
        from_env.http_known_methods,
        Some(vec!["GET".into(), "PURGE".into()])
    );
    assert_eq!(
        from_env.traces.endpoint.as_deref(),
        Some("http://env:4318/v1/traces")
    );
    assert_eq!(from_env.query, QueryMode::Full);

    let args = [
        "--route",
        "/flag/{id}",
        "--auto-routes",
        "false",
        "--propagation",
        "none",
        "--metric-series-limit",
        "30",
        "--query",
        "off",
        "--tls-go=false",
        "--otlp-endpoint",
        "http://flag:4317",
    ];
    let from_flags = resolve(file, &env, &args).unwrap();
    assert_eq!(routes(&from_flags), ["/flag/{id}"]);
    assert!(!from_flags.auto_routes && !from_flags.tls_go);
    assert_eq!(from_flags.propagation, Mechanisms::default());
    assert_eq!(from_flags.metric_series_limit, 30);
    assert_eq!(from_flags.query, QueryMode::Off);
    assert_eq!(
        from_flags.traces.endpoint.as_deref(),
        Some("http://flag:4317")
    );
    // A bare --tls-go turns it on.
    assert!(resolve("", &[], &["--tls-go"]).unwrap().tls_go);
}

#[test]
fn invalid_otel_variables_fall_back_to_the_file() {
    let file = "[sampling]\nsampler = \"always_off\"\n[metrics]\nexport_interval = \"5s\"";
    let env = [
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "5s"),
        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "many"),
    ];
    let cfg = resolve(file, &env, &[]).unwrap();
    assert_eq!(cfg.sampler, Sampler::AlwaysOff);
    assert_eq!(cfg.metric_export_interval, Duration::from_secs(5));
    assert_eq!(cfg.attribute_value_length_limit, DEFAULT_ATTRIBUTE_LIMIT);
}

#[test]
fn selection_lists_are_replaced_one_by_one() {
    let file = "[select]\ncgroups = [\"/a\"]\npids = [1]";
    let cfg = resolve(file, &[], &["--pid", "2", "--exe", "nginx"]).unwrap();
    assert_eq!(cfg.select.cgroups, [PathBuf::from("/a")]);
    assert_eq!(cfg.select.pids, [2]);
    assert_eq!(cfg.select.exes, ["nginx"]);
}

#[test]
fn kubernetes_and_tenants_file_environment_flags() {
    let file = "[select]\nnamespaces = [\"a\"]\nhost_cgroup_root = \"/file\"\n\
                [kubernetes]\nmode = \"off\"\nnode_name = \"from-file\"\n\
                [[tenants]]\nnamespace = \"a\"\nattributes = { tenant = \"file\" }";
    let cfg = resolve(file, &[], &[]).unwrap();
    assert_eq!(cfg.kubernetes.mode, KubernetesMode::Off);
    assert_eq!(cfg.kubernetes.node_name.as_deref(), Some("from-file"));
    assert_eq!(cfg.host_cgroup_root, Some(PathBuf::from("/file")));
    assert_eq!(
        cfg.tenants[0].attributes,
        [("tenant".into(), "file".into())]
    );
    let env = [
        ("CLEW_KUBERNETES", "on"),
        ("NODE_NAME", "from-env"),
        ("CLEW_HOST_CGROUP_ROOT", "/env"),
        ("CLEW_KUBERNETES_SERVICE_ACCOUNT", "/env/sa"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ];
    let cfg = resolve(file, &env, &[]).unwrap();
    let k = &cfg.kubernetes;
    assert_eq!(k.mode, KubernetesMode::On);
    assert_eq!(k.node_name.as_deref(), Some("from-env"));
    assert_eq!(k.service_account, PathBuf::from("/env/sa"));
    assert_eq!(
        (k.service_host.as_deref(), k.service_port.as_deref()),
        (Some("10.96.0.1"), Some("443"))
    );
    assert_eq!(cfg.host_cgroup_root, Some(PathBuf::from("/env")));
    let flags = [
        "--kubernetes",
        "auto",
        "--node-name",
        "from-flag",
        "--host-cgroup-root",
        "/flag",
        "--pod-label",
        "app=web,tier=front",
        "--tenant",
        "exe=nginx:tenant=flag",
    ];
    let cfg = resolve(file, &env, &flags).unwrap();
    assert_eq!(cfg.kubernetes.mode, KubernetesMode::Auto);
    assert_eq!(cfg.kubernetes.node_name.as_deref(), Some("from-flag"));
    assert_eq!(cfg.host_cgroup_root, Some(PathBuf::from("/flag")));
    // --pod-label replaces the file's labels only; its namespaces stay.
    assert_eq!(
        cfg.select.pods,
        [
            Match::Namespace("a".into()),
            Match::PodLabels(vec![
                ("app".into(), "web".into()),
                ("tier".into(), "front".into())
            ])
        ]
    );
    assert_eq!(cfg.tenants.len(), 1);
    assert_eq!(cfg.tenants[0].when, Match::Exe("nginx".into()));
    assert!(error("", &[("CLEW_KUBERNETES", "maybe")], &[]).contains("CLEW_KUBERNETES"));
    assert!(format!(
        "{:#}",
        Cli::try_parse_from(["clew", "run", "--tenant", "shop"]).unwrap_err()
    )
    .contains("SELECTOR:KEY=VALUE"));
}

#[test]
fn log_filter_precedence() {
    let file = File::parse("log_level = \"warn\"").unwrap();
    let none = Env::from_pairs(&[]);
    let rust_log = Env::from_pairs(&[("RUST_LOG", "debug")]);
    assert_eq!(log_filter(None, &none, &file).0, "warn");
    assert_eq!(log_filter(None, &rust_log, &file).0, "debug");
    assert_eq!(
        log_filter(Some("trace".into()), &rust_log, &file).0,
        "trace"
    );
    assert_eq!(log_filter(None, &none, &File::default()).0, "info");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = read_file(Some(Path::new("/nonexistent/clew.toml"))).unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/clew.toml"),
        "{err:#}"
    );
}

#[test]
fn logs_file_environment_flags() {
    let file = "[logs]\nsources = [\"stdout\"]\nrecord_bytes = 100\nrate = 7";
    let logs =
        |env: &[(&str, &str)], args: &[&str]| resolve(file, env, args).unwrap().logs.unwrap();
    let l = logs(&[], &[]);
    assert_eq!(
        (l.sources.to_string().as_str(), l.record_bytes, l.per_second),
        ("stdout", 100, 7)
    );
    let l = logs(&[("CLEW_LOGS", "stderr, /tmp/*.log")], &[]);
    assert_eq!(l.sources.to_string(), "stderr,/tmp/*.log");
    let l = logs(
        &[("CLEW_LOGS", "stderr")],
        &[
            "--logs",
            "stdout,stderr",
            "--log-record-bytes",
            "8192",
            "--log-rate",
            "9",
        ],
    );
    assert_eq!(
        (l.sources.to_string().as_str(), l.record_bytes, l.per_second),
        ("stdout,stderr", 8192, 9)
    );
    // Off unless a source is named; the defaults otherwise.
    assert!(resolve("", &[], &["--log-rate", "3"])
        .unwrap()
        .logs
        .is_none());
    let l = resolve("", &[], &["--logs", "stderr"])
        .unwrap()
        .logs
        .unwrap();
    assert_eq!(
        (l.record_bytes, l.per_second),
        (DEFAULT_LOG_RECORD_BYTES, DEFAULT_LOG_RATE)
    );
    // The log exporter follows OTEL_EXPORTER_OTLP_LOGS_*, then the shared keys.
    let cfg = resolve(
        "[export]\nendpoint = \"http://c:4318\"\n[logs]\nsources = [\"stdout\"]",
        &[(
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://logs:4318/v1/logs",
        )],
        &[],
    )
    .unwrap();
    assert_eq!(
        cfg.logs_export.unwrap().endpoint.as_deref(),
        Some("http://logs:4318/v1/logs")
    );
    assert_eq!(
        cfg.traces.endpoint.as_deref(),
        Some("http://c:4318/v1/traces")
    );
}

#[test]
fn bad_log_settings_name_their_key() {
    let e = error("[logs]\nsources = [\"relative.log\"]", &[], &[]);
    assert!(e.contains("logs.sources"), "{e}");
    let e = error(
        "[logs]\nsources = [\"stderr\"]\nrecord_bytes = 9000",
        &[],
        &[],
    );
    assert!(e.contains("logs.record_bytes"), "{e}");
    let e = error("", &[], &["--logs", "stderr", "--log-record-bytes", "0"]);
    assert!(e.contains("--log-record-bytes"), "{e}");
    let e = error("", &[("CLEW_LOGS", "stdin")], &[]);
    assert!(e.contains("CLEW_LOGS"), "{e}");
    let e = error("[logs]\nrate = 0", &[], &[]);
    assert!(e.contains("rate"), "{e}");
    let e = error("[logs]\nlevel = \"info\"", &[], &[]);
    assert!(e.contains("level"), "{e}");
}
