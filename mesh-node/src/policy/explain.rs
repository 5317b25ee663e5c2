//! The text of `PolicySet::explain`: for each policy in scope, whether it selects the workload
//! and, rule by rule, the first condition that fails in each `from` and `to` entry.
use std::collections::BTreeMap;

use super::matcher::{CompiledPolicy, CompiledRule, Facts, Field, OperationMatch, SourceMatch};

/// Appends the lines about one policy in scope; `mesh_wide` when it is from the root namespace.
pub(super) fn policy(
    lines: &mut Vec<String>,
    p: &CompiledPolicy,
    mesh_wide: bool,
    labels: &BTreeMap<String, String>,
    facts: &Facts<'_>,
) {
    let action = if p.deny { "DENY" } else { "ALLOW" };
    let scope = if mesh_wide { ", mesh-wide" } else { "" };
    let selector = match &p.selector {
        None => "no selector".to_string(),
        Some(s) => format!("selector {}", selector(s)),
    };
    if !p.selects(labels) {
        lines.push(format!(
            "{} ({action}{scope}): does not select the workload ({selector})",
            p.id
        ));
        return;
    }
    lines.push(format!(
        "{} ({action}{scope}): selects the workload ({selector})",
        p.id
    ));
    if p.rules.is_empty() {
        lines.push("  no rules: matches nothing".to_string());
    }
    for (r, rule) in p.rules.iter().enumerate() {
        match why_not(rule, facts) {
            None => lines.push(format!("  rule {r}: matches")),
            Some(why) => lines.push(format!("  rule {r}: no match: {why}")),
        }
    }
}

/// Why the rule does not match, or `None` when it does.
fn why_not(rule: &CompiledRule, facts: &Facts<'_>) -> Option<String> {
    let mut why = Vec::new();
    let sources: Vec<_> = rule.from.iter().map(|s| s.mismatch(facts)).collect();
    if !sources.is_empty() && sources.iter().all(Option::is_some) {
        for (j, (s, field)) in rule.from.iter().zip(sources).enumerate() {
            why.push(format!("from[{j}]: {}", source(s, field.unwrap(), facts)));
        }
    }
    let operations: Vec<_> = rule.to.iter().map(|o| o.mismatch(facts)).collect();
    if !operations.is_empty() && operations.iter().all(Option::is_some) {
        for (j, (o, field)) in rule.to.iter().zip(operations).enumerate() {
            why.push(format!("to[{j}]: {}", operation(o, field.unwrap(), facts)));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

fn selector(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn list<T: ToString>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

fn source(s: &SourceMatch, field: Field, facts: &Facts<'_>) -> String {
    let name = field.name();
    let principal = facts.principal.unwrap_or("");
    let namespace = facts.namespace.unwrap_or("");
    let ip = facts.ip;
    match field {
        Field::Principals | Field::Namespaces if facts.principal.is_none() => {
            format!("source is plaintext (no verified identity), so it never matches {name}")
        }
        Field::Namespaces if facts.namespace.is_none() => {
            format!("no namespace in principal {principal:?}, so it never matches {name}")
        }
        Field::Principals => format!(
            "principal {principal:?} matches none of {name} {}",
            list(&s.principals)
        ),
        Field::NotPrincipals => format!(
            "principal {principal:?} matches {name} {}",
            list(&s.not_principals)
        ),
        Field::Namespaces => format!(
            "namespace {namespace:?} matches none of {name} {}",
            list(&s.namespaces)
        ),
        Field::NotNamespaces => format!(
            "namespace {namespace:?} matches {name} {}",
            list(&s.not_namespaces)
        ),
        Field::IpBlocks => format!("source IP {ip} is in none of {name} {}", list(&s.ip_blocks)),
        Field::NotIpBlocks => format!("source IP {ip} is in {name} {}", list(&s.not_ip_blocks)),
        Field::Ports | Field::NotPorts => unreachable!("a source has no ports"),
    }
}

fn operation(o: &OperationMatch, field: Field, facts: &Facts<'_>) -> String {
    match field {
        Field::NotPorts => format!("port {} is in notPorts {}", facts.port, list(&o.not_ports)),
        _ => format!("port {} is not in ports {}", facts.port, list(&o.ports)),
    }
}
