//! Tenants: resource attributes the operator assigns per selector (a
//! cgroup subtree, an executable, a namespace, pod labels), so that a
//! shared node reports each team's services under its own tenant,
//! `service.namespace` or environment.
//!
//! Rules are the operator's word: their attributes replace what a process
//! claims in its own `OTEL_RESOURCE_ATTRIBUTES`, so a workload cannot
//! report itself under another tenant. Every matching rule applies, in
//! order; a later rule's value for a key replaces an earlier one's.

use anyhow::{Context, Result};

use crate::{
    cgroup::Hierarchy,
    matcher::{Match, Subject},
    trace_context::parse_baggage,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub when: Match,
    pub attributes: Vec<(String, String)>,
}

impl Rule {
    /// `SELECTOR:ATTRIBUTES` (the `--tenant` flag): a [`Match`] such as
    /// `namespace=shop`, then `key=value,…` as in `OTEL_RESOURCE_ATTRIBUTES`
    /// (percent-encoded where needed).
    pub fn parse(s: &str) -> Result<Self> {
        let (when, attributes) = s.split_once(':').with_context(|| {
            format!("--tenant {s:?}: expected SELECTOR:KEY=VALUE[,KEY=VALUE…], e.g. namespace=shop:tenant=a")
        })?;
        let when = Match::parse(when).with_context(|| format!("--tenant {s:?}"))?;
        let attributes = parse_baggage(attributes);
        anyhow::ensure!(
            !attributes.is_empty(),
            "--tenant {s:?}: no KEY=VALUE attributes after the selector"
        );
        Ok(Rule { when, attributes })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Tenants {
    rules: Vec<Rule>,
}

impl Tenants {
    /// The rules, their cgroups read in `hierarchy`.
    pub fn new(rules: Vec<Rule>, hierarchy: &Hierarchy) -> Self {
        let rules = rules
            .into_iter()
            .map(|r| match r.when {
                Match::Cgroup(p) => Rule {
                    when: Match::Cgroup(hierarchy.resolve(&p)),
                    ..r
                },
                _ => r,
            })
            .collect();
        Tenants { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule needs the pods' metadata to be decided.
    pub fn needs_pods(&self) -> bool {
        self.rules.iter().any(|r| r.when.needs_pods())
    }

    /// The attributes of every rule `subject` matches, later rules last.
    pub fn attributes<'a>(
        &'a self,
        subject: &Subject<'_>,
    ) -> impl Iterator<Item = &'a (String, String)> {
        let matching: Vec<&'a Rule> = self
            .rules
            .iter()
            .filter(|r| r.when.matches(subject))
            .collect();
        matching.into_iter().flat_map(|r| r.attributes.iter())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::k8s::pod::Pod;

    fn pod(ns: &str) -> Pod {
        Pod {
            labels: [("team".to_owned(), "payments".to_owned())].into(),
            ..Pod::named("u", "p", ns)
        }
    }

    fn rules(flags: &[&str]) -> Tenants {
        let rules = flags.iter().map(|f| Rule::parse(f).unwrap()).collect();
        Tenants::new(rules, &Hierarchy::default())
    }

    #[test]
    fn parsing() {
        let r = Rule::parse(
            "namespace=shop:tenant=a,service.namespace=shop,deployment.environment.name=prod%20eu",
        )
        .unwrap();
        assert_eq!(r.when, Match::Namespace("shop".into()));
        assert_eq!(
            r.attributes,
            vec![
                ("tenant".into(), "a".into()),
                ("service.namespace".into(), "shop".into()),
                ("deployment.environment.name".into(), "prod eu".into())
            ]
        );
        let cg = Tenants::new(
            vec![Rule::parse("cgroup=/team-b.slice:tenant=b").unwrap()],
            &Hierarchy::default(),
        );
        assert_eq!(
            cg.rules[0].when,
            Match::Cgroup(PathBuf::from("/sys/fs/cgroup/team-b.slice"))
        );
        for bad in [
            "namespace=shop",
            "namespace=shop:",
            "shop:tenant=a",
            "port=80:tenant=a",
            ":tenant=a",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_matching_rule_applies_in_order() {
        let t = rules(&[
            "namespace=shop:tenant=a,service.namespace=shop",
            "pod-label=team=payments:tenant=payments",
            "exe=nginx:service.namespace=edge",
            "cgroup=/other.slice:tenant=c",
        ]);
        assert!(t.needs_pods());
        let shop = pod("shop");
        let dir = PathBuf::from("/sys/fs/cgroup/kubepods.slice/x");
        let s = Subject {
            cgroup: Some(&dir),
            exe: Path::new("/usr/bin/python3"),
            comm: "python3",
            pod: Some(&shop),
        };
        let got: Vec<_> = t.attributes(&s).cloned().collect();
        assert_eq!(
            got,
            vec![
                ("tenant".into(), "a".into()),
                ("service.namespace".into(), "shop".into()),
                ("tenant".into(), "payments".into()),
            ]
        );
        let other = pod("other");
        let none = Subject {
            pod: Some(&other),
            ..s
        };
        let got: Vec<_> = t.attributes(&none).cloned().collect();
        assert_eq!(got, vec![("tenant".into(), "payments".into())]);
        let nothing = Subject { pod: None, ..none };
        assert_eq!(t.attributes(&nothing).count(), 0);
        assert!(!rules(&["exe=nginx:a=b"]).needs_pods());
    }
}
