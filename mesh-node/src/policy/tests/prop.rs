//! Properties over random policy sets and connections, checked against a reference written
//! straight from Istio's documentation over the model types (no compiling, no index).
use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use proptest::sample::{select, subsequence};

use super::{labels, Conn, ROOT};
use crate::policy::{
    Action, AuthorizationPolicy, Metadata, Operation, PolicySet, Rule, RuleFrom, RuleTo, Source, Spec,
    WorkloadSelector,
};

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/default/sa/a",
    "cluster.local/ns/prod/sa/b",
    "cluster.local/ns/default/*",
    "*/sa/b",
    "*",
];
const NAMESPACES: &[&str] = &["default", "prod", "pro*", "*ult", "*"];
const IP_BLOCKS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.0/8",
    "192.168.0.0/16",
    "fd00::1",
    "fd00::/8",
    "0.0.0.0/0",
];
const PORTS: &[&str] = &["80", "8080", "443"];
const POLICY_NAMESPACES: &[&str] = &["default", "prod", ROOT];

fn strings(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::option::weighted(0.3, subsequence(pool, 1..=2))
        .prop_map(|v| v.unwrap_or_default().into_iter().map(String::from).collect())
}

fn source() -> impl Strategy<Value = Source> {
    (
        strings(PRINCIPALS),
        strings(PRINCIPALS),
        strings(NAMESPACES),
        strings(NAMESPACES),
    )
        .prop_flat_map(|p| (Just(p), strings(IP_BLOCKS), strings(IP_BLOCKS)))
        .prop_map(
            |((principals, not_principals, namespaces, not_namespaces), ip_blocks, not_ip_blocks)| {
                let mut s = Source {
                    principals,
                    not_principals,
                    namespaces,
                    not_namespaces,
                    ip_blocks,
                    not_ip_blocks,
                    ..Source::default()
                };
                if s.is_empty() {
                    // Istio rejects an empty source; "any address" keeps the entry permissive.
                    s.ip_blocks = vec!["0.0.0.0/0".into(), "::/0".into()];
                }
                s
            },
        )
}

fn operation() -> impl Strategy<Value = Operation> {
    (strings(PORTS), strings(PORTS)).prop_map(|(ports, not_ports)| {
        let mut o = Operation {
            ports,
            not_ports,
            ..Operation::default()
        };
        if o.is_empty() {
            o.not_ports = vec!["1".into()];
        }
        o
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    let from = prop::option::of(prop::collection::vec(source(), 1..3))
        .prop_map(|v| v.map(|v| v.into_iter().map(|s| RuleFrom { source: Some(s) }).collect()));
    let to = prop::option::of(prop::collection::vec(operation(), 1..3))
        .prop_map(|v| v.map(|v| v.into_iter().map(|o| RuleTo { operation: Some(o) }).collect()));
    (from, to).prop_map(|(from, to)| Rule { from, to, when: None })
}

fn selector() -> impl Strategy<Value = Option<WorkloadSelector>> {
    let choices: Vec<Option<Vec<(&str, &str)>>> = vec![
        None,
        Some(vec![]),
        Some(vec![("app", "web")]),
        Some(vec![("app", "db")]),
        Some(vec![("app", "web"), ("tier", "front")]),
    ];
    select(choices).prop_map(|c| {
        c.map(|pairs| WorkloadSelector {
            match_labels: labels(&pairs),
        })
    })
}

fn policies() -> impl Strategy<Value = Vec<AuthorizationPolicy>> {
    let policy = (
        select(POLICY_NAMESPACES),
        selector(),
        any::<bool>(),
        prop::collection::vec(rule(), 0..3),
    );
    prop::collection::vec(policy, 0..8).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (ns, selector, deny, rules))| AuthorizationPolicy {
                api_version: None,
                kind: None,
                metadata: Metadata {
                    name: format!("p{i}"),
                    namespace: ns.to_string(),
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                },
                spec: Spec {
                    selector,
                    action: if deny { Action::Deny } else { Action::Allow },
                    rules,
                    ..Spec::default()
                },
            })
            .collect()
    })
}

fn conns() -> impl Strategy<Value = Conn> {
    let principal = select(vec![
        None,
        Some(("cluster.local/ns/default/sa/a", "default")),
        Some(("cluster.local/ns/prod/sa/b", "prod")),
        Some(("cluster.local/ns/other/sa/c", "other")),
    ]);
    let ip = select(vec![
        "10.0.0.1",
        "10.9.9.9",
        "192.168.1.1",
        "172.16.0.1",
        "fd00::1",
        "fd12::5",
        "::ffff:10.0.0.1",
    ]);
    let dest = select(vec!["default", "prod", ROOT, "other"]);
    let labels_choice: Vec<Vec<(&str, &str)>> = vec![
        vec![("app", "web")],
        vec![("app", "db")],
        vec![("app", "web"), ("tier", "front")],
        vec![],
    ];
    let port = select(vec![80u16, 8080, 443, 22]);
    (principal, ip, dest, select(labels_choice), port).prop_map(|(principal, ip, dest, pairs, port)| Conn {
        principal: principal.map(|(p, _)| p.to_string()),
        namespace: principal.map(|(_, ns)| ns.to_string()),
        ip: ip.parse().unwrap(),
        dest_ns: dest.to_string(),
        labels: labels(&pairs),
        port,
    })
}

// The reference: Istio's documented semantics, over the model.

fn pattern(p: &str, value: Option<&str>) -> bool {
    let Some(v) = value else { return false };
    if p == "*" {
        true
    } else if let Some(suffix) = p.strip_prefix('*') {
        v.ends_with(suffix)
    } else if let Some(prefix) = p.strip_suffix('*') {
        v.starts_with(prefix)
    } else {
        p == v
    }
}

fn in_block(block: &str, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match block.parse::<ipnet::IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => block.parse::<IpAddr>() == Ok(ip),
    }
}

fn source_matches(s: &Source, c: &Conn) -> bool {
    let (p, ns) = (c.principal.as_deref(), c.namespace.as_deref());
    (s.principals.is_empty() || s.principals.iter().any(|x| pattern(x, p)))
        && !s.not_principals.iter().any(|x| pattern(x, p))
        && (s.namespaces.is_empty() || s.namespaces.iter().any(|x| pattern(x, ns)))
        && !s.not_namespaces.iter().any(|x| pattern(x, ns))
        && (s.ip_blocks.is_empty() || s.ip_blocks.iter().any(|b| in_block(b, c.ip)))
        && !s.not_ip_blocks.iter().any(|b| in_block(b, c.ip))
}

fn operation_matches(o: &Operation, c: &Conn) -> bool {
    let port = c.port.to_string();
    (o.ports.is_empty() || o.ports.contains(&port)) && !o.not_ports.contains(&port)
}

fn rule_matches(r: &Rule, c: &Conn) -> bool {
    let from = r
        .from
        .as_ref()
        .is_none_or(|f| f.iter().any(|f| source_matches(f.source.as_ref().unwrap(), c)));
    let to = r.to.as_ref().is_none_or(|t| {
        t.iter()
            .any(|t| operation_matches(t.operation.as_ref().unwrap(), c))
    });
    from && to
}

fn selects(p: &AuthorizationPolicy, c: &Conn) -> bool {
    (p.metadata.namespace == c.dest_ns || p.metadata.namespace == ROOT)
        && p.spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
}

fn some_deny_matches(policies: &[AuthorizationPolicy], c: &Conn) -> bool {
    policies.iter().any(|p| {
        p.spec.action == Action::Deny && selects(p, c) && p.spec.rules.iter().any(|r| rule_matches(r, c))
    })
}

fn reference_allows(policies: &[AuthorizationPolicy], c: &Conn) -> bool {
    if some_deny_matches(policies, c) {
        return false;
    }
    let allows: Vec<_> = policies
        .iter()
        .filter(|p| p.spec.action == Action::Allow && selects(p, c))
        .collect();
    allows.is_empty()
        || allows
            .iter()
            .any(|p| p.spec.rules.iter().any(|r| rule_matches(r, c)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decisions_follow_istio(policies in policies(), conns in prop::collection::vec(conns(), 1..8)) {
        let set = PolicySet::new(policies.clone(), ROOT).expect("generated policies are valid");
        for c in &conns {
            let req = c.request();
            let decision = set.evaluate(&req);
            prop_assert_eq!(&decision, &set.evaluate_linear(&req), "index vs linear scan for {:?}", c);
            if some_deny_matches(&policies, c) {
                prop_assert!(!decision.allowed, "a matching DENY must win: {:?} {:?}", c, decision);
                let by = decision.policy.as_deref().unwrap();
                let p = policies.iter().find(|p| p.id() == by).unwrap();
                prop_assert_eq!(p.spec.action, Action::Deny);
                prop_assert!(rule_matches(&p.spec.rules[decision.rule.unwrap()], c));
            }
            prop_assert_eq!(decision.allowed, reference_allows(&policies, c), "{:?} {:?}", c, decision);
            let explained = set.explain(&req);
            prop_assert_eq!(explained.last().unwrap(), &format!("decision: {decision}"));
        }
    }
}
