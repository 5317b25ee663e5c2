//! Decision tables: one case per field and per combination of the evaluation rules.
use super::{conn, set, Conn};
use crate::policy::eval::{NO_ALLOW_MATCHED, NO_DENY_MATCHED, NO_POLICY};

const CLIENT: &str = "cluster.local/ns/client-ns/sa/client";
const SPIFFE_CLIENT: &str = "spiffe://cluster.local/ns/client-ns/sa/client";
const P_CLIENT: &str = r#"principals: ["cluster.local/ns/client-ns/sa/client"]"#;
const P_22: &str = r#"ports: ["22"]"#;
const ROOT_A: &str = "istio-system/a";
const ROOT_D: &str = "istio-system/d";

fn policy(id: &str, action: &str, rules: &str) -> String {
    let (ns, name) = id.split_once('/').unwrap();
    format!("---\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{action: {action}, rules: {rules}}}\n")
}
fn allow(id: &str, rules: &str) -> String {
    policy(id, "ALLOW", rules)
}
fn deny(id: &str, rules: &str) -> String {
    policy(id, "DENY", rules)
}
/// A list of rules (flow YAML) from the rules' bodies.
fn rules(bodies: &[&str]) -> String {
    let bodies: Vec<String> = bodies.iter().map(|b| format!("{{{b}}}")).collect();
    format!("[{}]", bodies.join(", "))
}
/// A rule body's `from`, with these sources.
fn sources(sources: &[&str]) -> String {
    let entries: Vec<String> = sources.iter().map(|s| format!("{{source: {{{s}}}}}")).collect();
    format!("from: [{}]", entries.join(", "))
}
/// A rule body's `to`, with these operations.
fn operations(operations: &[&str]) -> String {
    let entries: Vec<String> = operations
        .iter()
        .map(|o| format!("{{operation: {{{o}}}}}"))
        .collect();
    format!("to: [{}]", entries.join(", "))
}
/// One rule with one source.
fn from(source: &str) -> String {
    rules(&[&sources(&[source])])
}
/// One rule with one operation.
fn to(operation: &str) -> String {
    rules(&[&operations(&[operation])])
}
/// A policy with a selector, written in full.
fn selected(id: &str, action: &str, match_labels: &str, rules: &str) -> String {
    let (ns, name) = id.split_once('/').unwrap();
    format!(
        "---\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{selector: {{matchLabels: {{{match_labels}}}}}, action: {action}, rules: {rules}}}\n"
    )
}

/// ALLOW `default/a` with one rule of one source / of one operation; DENY `default/d` likewise.
fn a_from(source: &str) -> Vec<String> {
    vec![allow("default/a", &from(source))]
}
fn a_to(operation: &str) -> Vec<String> {
    vec![allow("default/a", &to(operation))]
}
fn d_from(source: &str) -> Vec<String> {
    vec![deny("default/d", &from(source))]
}
fn d_to(operation: &str) -> Vec<String> {
    vec![deny("default/d", &to(operation))]
}

/// Whether allowed, and the `(policy, rule)` that decides (`None` when no rule decides).
type Expect = (bool, Option<(&'static str, usize)>);
const ALLOWED: Expect = (true, None);
const DENIED: Expect = (false, None);
const BY_A: Expect = (true, Some(("default/a", 0)));
const BY_D: Expect = (false, Some(("default/d", 0)));
const BY_ROOT_D: Expect = (false, Some(("istio-system/d", 0)));

type Case = (&'static str, Vec<String>, Conn, Expect);

// One row per case reads as a table; rustfmt would spread each over seven lines.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let c = conn;
    let sel = |id, action, match_labels, rules| vec![selected(id, action, match_labels, rules)];
    let a_rules = |bodies: &[&str]| vec![allow("default/a", &rules(bodies))];
    let not_client = format!(r#"notPrincipals: ["{CLIENT}"]"#);
    vec![
        // No policy, or none in scope.
        ("no policies", vec![], c(), ALLOWED),
        ("policy in another namespace only", vec![allow("prod/a", "[{}]")], c(), ALLOWED),
        ("allow-nothing: an ALLOW without rules denies", vec![allow("default/a", "[]")], c(), DENIED),
        ("empty rule {} matches all", vec![allow("default/a", "[{}]")], c().plaintext(), BY_A),
        // principals
        ("principal exact", a_from(P_CLIENT), c(), BY_A),
        ("principal exact, other", a_from(r#"principals: ["cluster.local/ns/client-ns/sa/x"]"#), c(), DENIED),
        ("principal prefix*", a_from(r#"principals: ["cluster.local/ns/client-ns/*"]"#), c(), BY_A),
        ("principal prefix*, other", a_from(r#"principals: ["cluster.local/ns/other/*"]"#), c(), DENIED),
        ("principal *suffix", a_from(r#"principals: ["*/sa/client"]"#), c(), BY_A),
        ("principal *suffix, other", a_from(r#"principals: ["*/sa/admin"]"#), c(), DENIED),
        ("principal * = any authenticated", a_from(r#"principals: ["*"]"#), c(), BY_A),
        ("principal * vs plaintext", a_from(r#"principals: ["*"]"#), c().plaintext(), DENIED),
        ("principal exact vs plaintext", a_from(P_CLIENT), c().plaintext(), DENIED),
        ("principal list is OR", a_from(&format!(r#"principals: ["x/ns/y/sa/z", "{CLIENT}"]"#)), c(), BY_A),
        ("principal given with spiffe://", a_from(P_CLIENT), c().principal(SPIFFE_CLIENT), BY_A),
        // notPrincipals
        ("notPrincipals listed", a_from(&not_client), c(), DENIED),
        ("notPrincipals not listed", a_from(r#"notPrincipals: ["*/sa/admin"]"#), c(), BY_A),
        ("notPrincipals vs plaintext (Istio)", a_from(&not_client), c().plaintext(), BY_A),
        ("DENY notPrincipals * denies plaintext", d_from(r#"notPrincipals: ["*"]"#), c().plaintext(), BY_D),
        ("DENY notPrincipals * lets mTLS through", d_from(r#"notPrincipals: ["*"]"#), c(), ALLOWED),
        ("principals AND notPrincipals",
            a_from(r#"principals: ["cluster.local/*"], notPrincipals: ["*/sa/client"]"#), c(), DENIED),
        // namespaces
        ("namespace exact, from the principal", a_from("namespaces: [client-ns]"), c(), BY_A),
        ("namespace exact, given", a_from("namespaces: [given]"), c().namespace("given"), BY_A),
        ("namespace other", a_from("namespaces: [prod]"), c(), DENIED),
        ("namespace prefix*", a_from(r#"namespaces: ["client-*"]"#), c(), BY_A),
        ("namespace *suffix", a_from(r#"namespaces: ["*-ns"]"#), c(), BY_A),
        ("namespace * vs plaintext", a_from(r#"namespaces: ["*"]"#), c().plaintext(), DENIED),
        ("namespace given but plaintext", a_from("namespaces: [x]"), c().plaintext().namespace("x"), DENIED),
        ("notNamespaces listed", a_from("notNamespaces: [client-ns]"), c(), DENIED),
        ("notNamespaces not listed", a_from("notNamespaces: [prod]"), c(), BY_A),
        ("DENY notNamespaces denies the others", d_from("notNamespaces: [default]"), c(), BY_D),
        // ipBlocks
        ("ipBlocks v4 single IP", a_from("ipBlocks: [10.1.2.3]"), c(), BY_A),
        ("ipBlocks v4 single IP, other", a_from("ipBlocks: [10.1.2.4]"), c(), DENIED),
        ("ipBlocks v4 CIDR", a_from("ipBlocks: [10.0.0.0/8]"), c(), BY_A),
        ("ipBlocks v4 CIDR with host bits", a_from("ipBlocks: [10.1.2.200/24]"), c(), BY_A),
        ("ipBlocks v4 CIDR, other", a_from("ipBlocks: [192.168.0.0/16]"), c(), DENIED),
        ("ipBlocks v4 vs v4-mapped v6", a_from("ipBlocks: [10.0.0.0/8]"), c().ip("::ffff:10.1.2.3"), BY_A),
        ("ipBlocks v6 single IP", a_from(r#"ipBlocks: ["fd00::1"]"#), c().ip("fd00::1"), BY_A),
        ("ipBlocks v6 CIDR", a_from(r#"ipBlocks: ["fd00::/8"]"#), c().ip("fd12::5"), BY_A),
        ("ipBlocks v6 CIDR, other", a_from(r#"ipBlocks: ["fd00::/16"]"#), c().ip("fd12::5"), DENIED),
        ("ipBlocks v4 CIDR vs v6 source", a_from("ipBlocks: [0.0.0.0/0]"), c().ip("fd00::1"), DENIED),
        ("ipBlocks apply to plaintext", a_from("ipBlocks: [10.0.0.0/8]"), c().plaintext(), BY_A),
        ("notIpBlocks listed", a_from("notIpBlocks: [10.1.0.0/16]"), c(), DENIED),
        ("notIpBlocks not listed", a_from(r#"notIpBlocks: ["fd00::/8"]"#), c(), BY_A),
        ("DENY ipBlocks CIDR", d_from("ipBlocks: [10.1.0.0/16]"), c(), BY_D),
        // ports
        ("ports listed", a_to(r#"ports: ["8080"]"#), c(), BY_A),
        ("ports not listed", a_to(r#"ports: ["80", "443"]"#), c(), DENIED),
        ("ports list is OR", a_to(r#"ports: ["80", "8080"]"#), c(), BY_A),
        ("notPorts listed", a_to(r#"notPorts: ["8080"]"#), c(), DENIED),
        ("notPorts not listed", a_to(r#"notPorts: ["22"]"#), c(), BY_A),
        ("DENY notPorts: only 8080 open", d_to(r#"notPorts: ["8080"]"#), c().port(22), BY_D),
        // Selector.
        ("selector matches", sel("default/d", "DENY", "app: web", "[{}]"), c(), BY_D),
        ("selector does not match", sel("default/d", "DENY", "app: db", "[{}]"), c(), ALLOWED),
        ("selector needs every label", sel("default/a", "ALLOW", "app: web, tier: front", "[]"),
            c(), ALLOWED),
        ("selector with several labels", sel("default/a", "ALLOW", "app: web, tier: front", "[{}]"),
            c().to("default", &[("app", "web"), ("tier", "front")]), BY_A),
        ("empty matchLabels selects all", sel("default/a", "ALLOW", "", "[]"), c(), DENIED),
        ("unselected ALLOW does not default-deny", sel("default/a", "ALLOW", "app: db", "[]"), c(), ALLOWED),
        // Root namespace.
        ("root DENY applies mesh-wide", vec![deny("istio-system/d", "[{}]")], c(), BY_ROOT_D),
        ("root allow-nothing applies mesh-wide", vec![allow("istio-system/a", "[]")], c(), DENIED),
        ("root policy honours its selector", sel("istio-system/d", "DENY", "app: db", "[{}]"), c(), ALLOWED),
        ("root allow-nothing + local ALLOW", vec![allow(ROOT_A, "[]"), allow("default/a", "[{}]")],
            c(), BY_A),
        ("workload in the root namespace", vec![deny(ROOT_D, "[{}]")],
            c().to("istio-system", &[]), BY_ROOT_D),
        ("policy in a third namespace ignored", vec![deny("prod/d", "[{}]")], c(), ALLOWED),
        // DENY vs ALLOW.
        ("DENY beats ALLOW", vec![allow("default/a", "[{}]"), deny("default/d", "[{}]")], c(), BY_D),
        ("root DENY beats local ALLOW", vec![allow("default/a", "[{}]"), deny(ROOT_D, "[{}]")],
            c(), BY_ROOT_D),
        ("non-matching DENY, matching ALLOW", [d_to(P_22), vec![allow("default/a", "[{}]")]].concat(),
            c(), BY_A),
        ("DENY without rules matches nothing", vec![deny("default/d", "[]")], c(), ALLOWED),
        ("second ALLOW policy decides", vec![allow("default/a", &to(P_22)), allow("default/b", "[{}]")], c(),
            (true, Some(("default/b", 0)))),
        // Combinations inside a rule.
        ("from entries are OR", a_rules(&[&sources(&["namespaces: [prod]", "ipBlocks: [10.0.0.0/8]"])]),
            c(), BY_A),
        ("fields of a source are AND", a_from(&format!("{P_CLIENT}, ipBlocks: [192.168.0.0/16]")),
            c(), DENIED),
        ("from AND to", a_rules(&[&format!("{}, {}", sources(&[P_CLIENT]), operations(&[P_22]))]),
            c(), DENIED),
        ("to entries are OR", a_rules(&[&operations(&[P_22, r#"notPorts: ["22"]"#])]), c(), BY_A),
        ("rules are OR, the matching one named",
            a_rules(&[&operations(&[P_22]), &sources(&["namespaces: [client-ns]"])]),
            c(), (true, Some(("default/a", 1)))),
    ]
}

#[test]
fn decision_table() {
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for (name, yaml, conn, (allowed, by)) in &cases {
        let policies = set(&yaml.concat());
        let req = conn.request();
        let decision = policies.evaluate(&req);
        if decision.allowed != *allowed || decision.policy.as_deref().zip(decision.rule) != *by {
            failures.push(format!(
                "{}: got {decision:?}, want allowed={} by {:?}\n  {}",
                name,
                allowed,
                by,
                policies.explain(&req).join("\n  ")
            ));
        }
        assert_eq!(decision, policies.evaluate_linear(&req), "{name}");
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn reasons() {
    let req = conn();
    let r = |yaml: &[String]| set(&yaml.concat()).evaluate(&req.request()).reason;
    assert_eq!(r(&[]), NO_POLICY);
    assert_eq!(r(&[allow("default/a", "[]")]), NO_ALLOW_MATCHED);
    assert_eq!(r(&[deny("default/d", "[]")]), NO_DENY_MATCHED);
    assert_eq!(
        r(&[deny("default/d", "[{}]")]),
        "denied by DENY policy default/d rule 0"
    );
    assert_eq!(
        r(&[allow("default/a", "[{}]")]),
        "allowed by ALLOW policy default/a rule 0"
    );
}

#[test]
fn first_matching_deny_in_configuration_order_is_named() {
    let policies = set(&[deny("istio-system/d1", "[{}]"), deny("default/d2", "[{}]")].concat());
    let decision = policies.evaluate(&conn().request());
    assert_eq!(decision.policy.as_deref(), Some("istio-system/d1"));
}

#[test]
fn many_policies_elsewhere() {
    let mut yaml: Vec<String> = (0..10_000).map(|i| deny(&format!("ns{i}/d"), "[{}]")).collect();
    yaml.push(allow("default/a", "[{}]"));
    let policies = set(&yaml.concat());
    assert_eq!(policies.len(), 10_001);
    assert!(policies.evaluate(&conn().request()).allowed);
    assert!(!policies.evaluate(&conn().to("ns42", &[]).request()).allowed);
}

#[test]
fn explain_names_policies_and_rules() {
    let policies = set(&[
        selected("default/other", "DENY", "app: db", "[{}]"),
        deny("istio-system/plaintext", &from("notPrincipals: [\"*\"]")),
        allow(
            "default/a",
            &rules(&[&operations(&[r#"ports: ["80"]"#]), &sources(&[P_CLIENT])]),
        ),
    ]
    .concat());
    let lines = policies.explain(&conn().plaintext().request());
    let text = lines.join("\n");
    assert!(
        text.contains("default/other (DENY): does not select the workload (selector {app=db})"),
        "{text}"
    );
    assert!(
        text.contains("istio-system/plaintext (DENY, mesh-wide): selects the workload"),
        "{text}"
    );
    assert!(text.contains("  rule 0: matches"), "{text}");
    assert!(
        text.contains("rule 0: no match: to[0]: port 8080 is not in ports [80]"),
        "{text}"
    );
    assert!(
        text.contains("rule 1: no match: from[0]: source is plaintext"),
        "{text}"
    );
    assert_eq!(
        lines.last().unwrap(),
        "decision: deny: denied by DENY policy istio-system/plaintext rule 0"
    );
    let none = set("").explain(&conn().request());
    assert_eq!(
        none.last().unwrap(),
        "decision: allow: no policy selects the workload"
    );
}
