//! A validated policy, compiled into matchers: patterns parsed, ports as numbers, IP blocks as
//! networks. Compiling is validating, so what `validate` accepts is exactly what evaluates.
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{Action, AuthorizationPolicy, Operation, Source};
use super::PolicyError;

/// Istio's string match: exact, `*` (any value present), `prefix*` or `*suffix`. Nothing else:
/// a `*` anywhere else is an error rather than a literal that would silently never match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub(super) fn parse(value: &str) -> Result<Pattern, String> {
        if value.is_empty() {
            return Err("empty value not allowed".into());
        }
        if value == "*" {
            return Ok(Pattern::Any);
        }
        let (rest, pattern): (&str, fn(String) -> Pattern) = if let Some(suffix) = value.strip_prefix('*') {
            (suffix, Pattern::Suffix)
        } else if let Some(prefix) = value.strip_suffix('*') {
            (prefix, Pattern::Prefix)
        } else {
            (value, Pattern::Exact)
        };
        if rest.contains('*') {
            return Err(format!(
                "{value:?}: `*` is only allowed alone, as a prefix (\"*suffix\") or as a suffix (\"prefix*\")"
            ));
        }
        Ok(pattern(rest.to_string()))
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(s) => value == s,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Exact(s) => f.write_str(s),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// What a connection is matched on, normalized once per decision.
pub(super) struct Facts<'a> {
    /// `None` for a plaintext (unauthenticated) source.
    pub principal: Option<&'a str>,
    /// `None` unless the source is authenticated.
    pub namespace: Option<&'a str>,
    pub ip: IpAddr,
    pub port: u16,
}

/// The condition of a `source` or `operation` that failed, for `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Principals,
    NotPrincipals,
    Namespaces,
    NotNamespaces,
    IpBlocks,
    NotIpBlocks,
    Ports,
    NotPorts,
}

impl Field {
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::Principals => "principals",
            Field::NotPrincipals => "notPrincipals",
            Field::Namespaces => "namespaces",
            Field::NotNamespaces => "notNamespaces",
            Field::IpBlocks => "ipBlocks",
            Field::NotIpBlocks => "notIpBlocks",
            Field::Ports => "ports",
            Field::NotPorts => "notPorts",
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct SourceMatch {
    pub principals: Vec<Pattern>,
    pub not_principals: Vec<Pattern>,
    pub namespaces: Vec<Pattern>,
    pub not_namespaces: Vec<Pattern>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
}

/// A positive list: empty means no condition; an absent value (plaintext) matches nothing,
/// as Envoy's `authenticated` principal never matches a connection without a peer certificate.
fn any_of(list: &[Pattern], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|p| p.matches(v)))
}

/// A `not` list: an absent value matches none of the patterns, so the condition holds. This is
/// Istio's behaviour (`notPrincipals` compiles to `not_id: authenticated`).
fn none_of(list: &[Pattern], value: Option<&str>) -> bool {
    value.is_none_or(|v| !list.iter().any(|p| p.matches(v)))
}

impl SourceMatch {
    /// The first condition that fails, or `None` when the source matches.
    pub(super) fn mismatch(&self, facts: &Facts<'_>) -> Option<Field> {
        if !any_of(&self.principals, facts.principal) {
            return Some(Field::Principals);
        }
        if !none_of(&self.not_principals, facts.principal) {
            return Some(Field::NotPrincipals);
        }
        if !any_of(&self.namespaces, facts.namespace) {
            return Some(Field::Namespaces);
        }
        if !none_of(&self.not_namespaces, facts.namespace) {
            return Some(Field::NotNamespaces);
        }
        if !self.ip_blocks.is_empty() && !self.ip_blocks.iter().any(|n| n.contains(&facts.ip)) {
            return Some(Field::IpBlocks);
        }
        if self.not_ip_blocks.iter().any(|n| n.contains(&facts.ip)) {
            return Some(Field::NotIpBlocks);
        }
        None
    }
}

#[derive(Clone, Debug)]
pub(super) struct OperationMatch {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

impl OperationMatch {
    pub(super) fn mismatch(&self, facts: &Facts<'_>) -> Option<Field> {
        if !self.ports.is_empty() && !self.ports.contains(&facts.port) {
            return Some(Field::Ports);
        }
        if self.not_ports.contains(&facts.port) {
            return Some(Field::NotPorts);
        }
        None
    }
}

/// One rule: one of `from` and one of `to` must match; an empty list means "any".
#[derive(Clone, Debug)]
pub(super) struct CompiledRule {
    pub from: Vec<SourceMatch>,
    pub to: Vec<OperationMatch>,
}

impl CompiledRule {
    pub(super) fn matches(&self, facts: &Facts<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.mismatch(facts).is_none()))
            && (self.to.is_empty() || self.to.iter().any(|o| o.mismatch(facts).is_none()))
    }
}

#[derive(Clone, Debug)]
pub(super) struct CompiledPolicy {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    pub deny: bool,
    /// `None` selects every workload in scope.
    pub selector: Option<BTreeMap<String, String>>,
    pub rules: Vec<CompiledRule>,
}

impl CompiledPolicy {
    pub(super) fn compile(policy: &AuthorizationPolicy) -> Result<CompiledPolicy, PolicyError> {
        policy.check_envelope()?;
        let spec = &policy.spec;
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let path = format!("spec.rules[{i}]");
                rule.check_unsupported(&path)?;
                let from = match &rule.from {
                    None => Vec::new(),
                    Some(from) if from.is_empty() => {
                        return Err(PolicyError::new(
                            format!("{path}.from"),
                            "must not be empty (omit `from` to match any source)",
                        ))
                    }
                    Some(from) => from
                        .iter()
                        .enumerate()
                        .map(|(j, f)| compile_source(f.source.as_ref(), &format!("{path}.from[{j}]")))
                        .collect::<Result<_, _>>()?,
                };
                let to = match &rule.to {
                    None => Vec::new(),
                    Some(to) if to.is_empty() => {
                        return Err(PolicyError::new(
                            format!("{path}.to"),
                            "must not be empty (omit `to` to match any port)",
                        ))
                    }
                    Some(to) => to
                        .iter()
                        .enumerate()
                        .map(|(j, t)| compile_operation(t.operation.as_ref(), &format!("{path}.to[{j}]")))
                        .collect::<Result<_, _>>()?,
                };
                Ok(CompiledRule { from, to })
            })
            .collect::<Result<_, _>>()?;
        Ok(CompiledPolicy {
            id: policy.id(),
            namespace: policy.metadata.namespace.clone(),
            deny: spec.action == Action::Deny,
            selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
            rules,
        })
    }

    pub(super) fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    /// The index of the first rule that matches.
    pub(super) fn matching_rule(&self, facts: &Facts<'_>) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(facts))
    }
}

fn compile_source(source: Option<&Source>, path: &str) -> Result<SourceMatch, PolicyError> {
    let Some(source) = source else {
        return Err(PolicyError::new(format!("{path}.source"), "must be set"));
    };
    let path = format!("{path}.source");
    source.check_unsupported(&path)?;
    if source.is_empty() {
        return Err(PolicyError::new(
            path,
            "must set at least one field (omit this `from` entry instead)",
        ));
    }
    let principals = |list: &[String], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                let at = || format!("{path}.{field}[{i}]");
                if p.starts_with("spiffe://") {
                    return Err(PolicyError::new(
                        at(),
                        format!("{p:?}: write principals without \"spiffe://\", as Istio does"),
                    ));
                }
                Pattern::parse(p).map_err(|e| PolicyError::new(at(), e))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let namespaces = |list: &[String], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, n)| Pattern::parse(n).map_err(|e| PolicyError::new(format!("{path}.{field}[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()
    };
    let ip_blocks = |list: &[String], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, b)| parse_ip_block(b).map_err(|e| PolicyError::new(format!("{path}.{field}[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(SourceMatch {
        principals: principals(&source.principals, "principals")?,
        not_principals: principals(&source.not_principals, "notPrincipals")?,
        namespaces: namespaces(&source.namespaces, "namespaces")?,
        not_namespaces: namespaces(&source.not_namespaces, "notNamespaces")?,
        ip_blocks: ip_blocks(&source.ip_blocks, "ipBlocks")?,
        not_ip_blocks: ip_blocks(&source.not_ip_blocks, "notIpBlocks")?,
    })
}

fn compile_operation(operation: Option<&Operation>, path: &str) -> Result<OperationMatch, PolicyError> {
    let Some(operation) = operation else {
        return Err(PolicyError::new(format!("{path}.operation"), "must be set"));
    };
    let path = format!("{path}.operation");
    operation.check_unsupported(&path)?;
    if operation.is_empty() {
        return Err(PolicyError::new(
            path,
            "must set ports or notPorts (omit this `to` entry instead)",
        ));
    }
    let ports = |list: &[String], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, p)| parse_port(p).map_err(|e| PolicyError::new(format!("{path}.{field}[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(OperationMatch {
        ports: ports(&operation.ports, "ports")?,
        not_ports: ports(&operation.not_ports, "notPorts")?,
    })
}

/// A port as Istio writes it: a decimal string, 1 to 65535.
pub(super) fn parse_port(value: &str) -> Result<u16, String> {
    let bad = || format!("{value:?} is not a port: expected a number from 1 to 65535, e.g. \"8080\"");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match value.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// An IP (a /32 or /128) or a CIDR; host bits in a CIDR are masked, as Envoy does.
pub(super) fn parse_ip_block(value: &str) -> Result<IpNet, String> {
    let parsed = if value.contains('/') {
        value.parse::<IpNet>().map(|n| n.trunc()).ok()
    } else {
        value.parse::<IpAddr>().map(IpNet::from).ok()
    };
    parsed.ok_or_else(|| {
        format!("{value:?} is not an IP block: expected an IP or a CIDR, e.g. \"10.0.0.0/8\" or \"fd00::1\"")
    })
}
