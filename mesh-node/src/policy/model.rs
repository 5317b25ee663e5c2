//! The AuthorizationPolicy as users write it: Istio's Kubernetes shape, camelCase.
//!
//! Every struct denies unknown fields. The fields Istio has but an L4 mesh cannot enforce are
//! declared as [`Unsupported`] so that [`AuthorizationPolicy::validate`] can reject them by name,
//! at their path, with a message saying why, instead of serde's generic "unknown field".
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{matcher, PolicyError};

/// The `apiVersion`s accepted (when one is written at all).
pub const API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];
/// The `kind` accepted (when one is written at all).
pub const KIND: &str = "AuthorizationPolicy";
/// The namespace of a policy whose metadata names none, as `kubectl apply` would do.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub metadata: Metadata,
    /// Absent is `spec: {}`: Istio's "allow nothing" for the namespace.
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Accepted so that manifests paste as they are; they play no part in the decision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// Absent: every workload of the policy's namespace (of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: Action,
    /// Absent or empty: matches nothing (so an ALLOW policy denies every selected workload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_refs: Option<Unsupported>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Every label must be present with this value; empty selects every workload.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Parsed so that validation can name it; rejected as unsupported.
    Audit,
    /// Parsed so that validation can name it; rejected as unsupported.
    Custom,
}

/// A rule matches when one of `from` and one of `to` match; absent means any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Absent: any source. Present but empty is rejected, as Istio does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<RuleFrom>>,
    /// Absent: any port. Present but empty is rejected, as Istio does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<RuleTo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Unsupported>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// Required, and must set at least one field (Istio's validation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// Required, and must set at least one field (Istio's validation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// All the fields set must match (AND); within one list, any value (OR); a `not` list matches
/// when none of its values do. Principals are written without `spiffe://`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principals: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_request_principals: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_blocks: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_remote_ip_blocks: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_service_accounts: Option<Unsupported>,
}

/// Ports are strings, as in Istio (`"8080"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_hosts: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_methods: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Unsupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_paths: Option<Unsupported>,
}

/// The value of an Istio field this mesh does not enforce, kept only to be reported by name.
/// An empty list or map (no effect in Istio either) is tolerated; anything else is rejected.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Unsupported(pub serde_json::Value);

impl Unsupported {
    fn has_effect(&self) -> bool {
        match &self.0 {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            _ => true,
        }
    }
}

impl AuthorizationPolicy {
    /// `namespace/name`, as decisions and errors name the policy.
    pub fn id(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Checks everything [`super::PolicySet::new`] would; the error's path is within the policy,
    /// e.g. `spec.rules[0].to[0].operation.ports[1]`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        matcher::CompiledPolicy::compile(self).map(drop)
    }

    /// The checks that are not about one rule's values (those are in `matcher`).
    pub(super) fn check_envelope(&self) -> Result<(), PolicyError> {
        if let Some(v) = &self.api_version {
            if !API_VERSIONS.contains(&v.as_str()) {
                return Err(PolicyError::new(
                    "apiVersion",
                    format!("unsupported apiVersion {v:?}, expected one of {API_VERSIONS:?}"),
                ));
            }
        }
        if let Some(k) = &self.kind {
            if k != KIND {
                return Err(PolicyError::new(
                    "kind",
                    format!("unsupported kind {k:?}, expected {KIND:?}"),
                ));
            }
        }
        if self.metadata.name.is_empty() {
            return Err(PolicyError::new("metadata.name", "a policy needs a name"));
        }
        if self.metadata.namespace.is_empty() {
            return Err(PolicyError::new(
                "metadata.namespace",
                "must not be empty (omit it for \"default\")",
            ));
        }
        let spec = &self.spec;
        unsupported(&spec.provider, "spec", "provider", NOT_L4_ACTION)?;
        unsupported(&spec.target_ref, "spec", "targetRef", NO_TARGET_REF)?;
        unsupported(&spec.target_refs, "spec", "targetRefs", NO_TARGET_REF)?;
        match spec.action {
            Action::Allow | Action::Deny => {}
            Action::Audit | Action::Custom => {
                let name = if spec.action == Action::Audit {
                    "AUDIT"
                } else {
                    "CUSTOM"
                };
                return Err(PolicyError::new(
                    "spec.action",
                    format!("action {name} is not supported by this mesh, use ALLOW or DENY"),
                ));
            }
        }
        if let Some(selector) = &spec.selector {
            if selector.match_labels.keys().any(String::is_empty) {
                return Err(PolicyError::new(
                    "spec.selector.matchLabels",
                    "a label name must not be empty",
                ));
            }
        }
        Ok(())
    }
}

const L7: &str = "is an L7 field, which this mesh (L4) does not support";
const NOT_L4_ACTION: &str = "is not supported by this mesh (no external authorization; use ALLOW or DENY)";
const NO_TARGET_REF: &str = "is not supported by this mesh (select workloads with `selector`)";
const NO_REMOTE_IP: &str = "is not supported by this mesh (it needs the original client IP from \
                            L7 headers or PROXY protocol; use ipBlocks for the connection's peer)";
const NO_SERVICE_ACCOUNTS: &str =
    "is not supported by this mesh; write principals: [\"<trust-domain>/ns/<namespace>/sa/<name>\"]";
const NO_WHEN: &str = "is not supported by this mesh (conditions are mostly L7; use from and to)";

/// Rejects `field` if it is set to anything that would have an effect in Istio.
fn unsupported(value: &Option<Unsupported>, parent: &str, field: &str, why: &str) -> Result<(), PolicyError> {
    match value {
        Some(v) if v.has_effect() => Err(PolicyError::new(
            format!("{parent}.{field}"),
            format!("field \"{field}\" {why}"),
        )),
        _ => Ok(()),
    }
}

impl Rule {
    pub(super) fn check_unsupported(&self, path: &str) -> Result<(), PolicyError> {
        unsupported(&self.when, path, "when", NO_WHEN)
    }
}

impl Source {
    pub(super) fn check_unsupported(&self, path: &str) -> Result<(), PolicyError> {
        unsupported(&self.request_principals, path, "requestPrincipals", L7)?;
        unsupported(&self.not_request_principals, path, "notRequestPrincipals", L7)?;
        unsupported(&self.remote_ip_blocks, path, "remoteIpBlocks", NO_REMOTE_IP)?;
        unsupported(
            &self.not_remote_ip_blocks,
            path,
            "notRemoteIpBlocks",
            NO_REMOTE_IP,
        )?;
        unsupported(
            &self.service_accounts,
            path,
            "serviceAccounts",
            NO_SERVICE_ACCOUNTS,
        )?;
        unsupported(
            &self.not_service_accounts,
            path,
            "notServiceAccounts",
            NO_SERVICE_ACCOUNTS,
        )
    }

    pub(super) fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
    }
}

impl Operation {
    pub(super) fn check_unsupported(&self, path: &str) -> Result<(), PolicyError> {
        unsupported(&self.hosts, path, "hosts", L7)?;
        unsupported(&self.not_hosts, path, "notHosts", L7)?;
        unsupported(&self.methods, path, "methods", L7)?;
        unsupported(&self.not_methods, path, "notMethods", L7)?;
        unsupported(&self.paths, path, "paths", L7)?;
        unsupported(&self.not_paths, path, "notPaths", L7)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.not_ports.is_empty()
    }
}

/// Parses policies from YAML: one document, or several separated by `---` as `kubectl` takes
/// them (empty documents are skipped). Parses only; [`super::PolicySet::new`] validates.
pub fn parse_yaml(text: &str) -> Result<Vec<AuthorizationPolicy>, PolicyError> {
    let mut policies = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let policy: Option<AuthorizationPolicy> = Option::deserialize(document)
            .map_err(|e| PolicyError::new(format!("document[{i}]"), e.to_string()))?;
        policies.extend(policy);
    }
    Ok(policies)
}
