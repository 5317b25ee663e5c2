//! Deciding a connection against the policies, with Istio's semantics:
//!
//! 1. a policy applies to a workload when it is in the workload's namespace or in the root
//!    namespace (mesh-wide), and its selector, if any, matches the workload's labels;
//! 2. any applying DENY policy with a matching rule denies;
//! 3. else, if any ALLOW policy applies, one of their rules must match;
//! 4. else the connection is allowed.
//!
//! When several policies could decide, the first in configuration order is named.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::explain;
use super::matcher::{CompiledPolicy, Facts};
use super::model::AuthorizationPolicy;
use super::PolicyError;

/// A connection, as the destination daemon sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Verified source principal without `spiffe://` (e.g. "cluster.local/ns/default/sa/client");
    /// None when the source is not authenticated (plaintext).
    pub source_principal: Option<&'a str>,
    /// Namespace of the source identity, when authenticated. When `None` with a principal, it is
    /// read from the principal's `/ns/<namespace>/`, as Istio does; without one, it is ignored.
    pub source_namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_namespace: &'a str,
    pub destination_labels: &'a BTreeMap<String, String>,
    pub destination_port: u16,
}

impl<'a> Request<'a> {
    fn facts(&self) -> Facts<'a> {
        // Tolerate a caller passing the URI form: a principal never matches with it otherwise.
        let principal = self
            .source_principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
        let namespace = principal.and_then(|p| self.source_namespace.or_else(|| namespace_of(p)));
        // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; ipBlocks are written in IPv4.
        let ip = match self.source_ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        Facts {
            principal,
            namespace,
            ip,
            port: self.destination_port,
        }
    }
}

/// `<trust-domain>/ns/<namespace>/sa/<service-account>` → `<namespace>`.
fn namespace_of(principal: &str) -> Option<&str> {
    let (_, rest) = principal.split_once("/ns/")?;
    rest.split_once("/sa/").map(|(ns, _)| ns)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The deciding policy, `namespace/name`; `None` when no rule decided.
    pub policy: Option<String>,
    /// The index of the deciding rule in the policy's `spec.rules`.
    pub rule: Option<usize>,
    pub reason: String,
}

pub(super) const NO_ALLOW_MATCHED: &str = "no ALLOW rule matched";
pub(super) const NO_POLICY: &str = "no policy selects the workload";
pub(super) const NO_DENY_MATCHED: &str = "no DENY rule matched and no ALLOW policy selects the workload";

impl Decision {
    fn by_rule(policy: &CompiledPolicy, rule: usize) -> Decision {
        let (allowed, verb, action) = if policy.deny {
            (false, "denied", "DENY")
        } else {
            (true, "allowed", "ALLOW")
        };
        Decision {
            allowed,
            policy: Some(policy.id.clone()),
            rule: Some(rule),
            reason: format!("{verb} by {action} policy {} rule {rule}", policy.id),
        }
    }

    fn without_rule(allowed: bool, reason: &str) -> Decision {
        Decision {
            allowed,
            policy: None,
            rule: None,
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allow" } else { "deny" };
        write!(f, "{verdict}: {}", self.reason)
    }
}

/// Indices into `PolicySet::compiled`, ascending, so that merging keeps configuration order.
#[derive(Clone, Debug, Default)]
struct Bucket {
    deny: Vec<usize>,
    allow: Vec<usize>,
}

/// The policies of the mesh, compiled and indexed by namespace: a decision looks only at the
/// destination's namespace and the root namespace, however many policies the others hold.
#[derive(Clone, Debug)]
pub struct PolicySet {
    policies: Vec<AuthorizationPolicy>,
    compiled: Vec<CompiledPolicy>,
    by_namespace: HashMap<String, Bucket>,
    root_namespace: String,
}

static EMPTY: Bucket = Bucket {
    deny: Vec::new(),
    allow: Vec::new(),
};

impl PolicySet {
    /// Validates and compiles `policies`; the error's path starts with `policies[i]`. Two
    /// policies with the same namespace and name are rejected, as Kubernetes would not hold both.
    pub fn new(policies: Vec<AuthorizationPolicy>, root_namespace: &str) -> Result<PolicySet, PolicyError> {
        let mut compiled = Vec::with_capacity(policies.len());
        let mut by_namespace: HashMap<String, Bucket> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, policy) in policies.iter().enumerate() {
            let prefix = format!("policies[{i}]");
            let c = CompiledPolicy::compile(policy).map_err(|e| e.within(&prefix))?;
            if let Some(first) = ids.insert(c.id.clone(), i) {
                return Err(PolicyError::new(
                    format!("{prefix}.metadata.name"),
                    format!("duplicate policy {} (also policies[{first}])", c.id),
                ));
            }
            let bucket = by_namespace.entry(c.namespace.clone()).or_default();
            let list = if c.deny {
                &mut bucket.deny
            } else {
                &mut bucket.allow
            };
            list.push(i);
            compiled.push(c);
        }
        Ok(PolicySet {
            policies,
            compiled,
            by_namespace,
            root_namespace: root_namespace.to_string(),
        })
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The policies as given, for a config dump.
    pub fn policies(&self) -> &[AuthorizationPolicy] {
        &self.policies
    }

    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let (local, root) = self.buckets(req.destination_namespace);
        self.decide(
            req,
            merge(&local.deny, &root.deny),
            merge(&local.allow, &root.allow),
        )
    }

    /// For the CLI: every policy in scope for the destination, whether it selects the workload,
    /// and why each rule does or does not match; the last line is the decision.
    pub fn explain(&self, req: &Request<'_>) -> Vec<String> {
        let facts = req.facts();
        let (local, root) = self.buckets(req.destination_namespace);
        let local: Vec<usize> = merge(&local.deny, &local.allow).collect();
        let root: Vec<usize> = merge(&root.deny, &root.allow).collect();
        let in_scope: Vec<usize> = merge(&local, &root).collect();
        let mut lines = Vec::new();
        if in_scope.is_empty() {
            lines.push(format!(
                "no policy in namespace {:?} or in the root namespace {:?}",
                req.destination_namespace, self.root_namespace
            ));
        }
        for i in in_scope {
            let p = &self.compiled[i];
            explain::policy(
                &mut lines,
                p,
                p.namespace != req.destination_namespace,
                req.destination_labels,
                &facts,
            );
        }
        lines.push(format!("decision: {}", self.evaluate(req)));
        lines
    }

    fn buckets(&self, namespace: &str) -> (&Bucket, &Bucket) {
        let local = self.by_namespace.get(namespace).unwrap_or(&EMPTY);
        let root = if namespace == self.root_namespace {
            &EMPTY
        } else {
            self.by_namespace.get(&self.root_namespace).unwrap_or(&EMPTY)
        };
        (local, root)
    }

    /// Steps 2-4 of the module doc, over the DENY and ALLOW policies in scope (in order).
    fn decide(
        &self,
        req: &Request<'_>,
        deny: impl Iterator<Item = usize>,
        allow: impl Iterator<Item = usize>,
    ) -> Decision {
        let facts = req.facts();
        let mut deny_selected = false;
        for p in deny.map(|i| &self.compiled[i]) {
            if p.selects(req.destination_labels) {
                deny_selected = true;
                if let Some(rule) = p.matching_rule(&facts) {
                    return Decision::by_rule(p, rule);
                }
            }
        }
        let mut selected = false;
        for p in allow.map(|i| &self.compiled[i]) {
            if p.selects(req.destination_labels) {
                selected = true;
                if let Some(rule) = p.matching_rule(&facts) {
                    return Decision::by_rule(p, rule);
                }
            }
        }
        match (selected, deny_selected) {
            (true, _) => Decision::without_rule(false, NO_ALLOW_MATCHED),
            (false, true) => Decision::without_rule(true, NO_DENY_MATCHED),
            (false, false) => Decision::without_rule(true, NO_POLICY),
        }
    }

    /// The same decision without the index: every policy, filtered by namespace.
    #[cfg(test)]
    pub(super) fn evaluate_linear(&self, req: &Request<'_>) -> Decision {
        let in_scope = |deny: bool| {
            let root = &self.root_namespace;
            (0..self.compiled.len()).filter(move |&i| {
                let p = &self.compiled[i];
                p.deny == deny && (p.namespace == req.destination_namespace || p.namespace == *root)
            })
        };
        self.decide(req, in_scope(true), in_scope(false))
    }
}

/// Two ascending index lists, merged in ascending order.
fn merge<'a>(a: &'a [usize], b: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
    let (mut a, mut b) = (a.iter().copied().peekable(), b.iter().copied().peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}
