//! L4 authorization: Istio's `security.istio.io/v1` AuthorizationPolicy, pure (no I/O).
//!
//! `model` owns the YAML shape users paste from Istio and its validation; `matcher` compiles a
//! validated policy into matchers; `eval` owns the [`PolicySet`] that decides a connection, and
//! `explain` words why. Anything Istio can express that an L4 mesh cannot enforce (HTTP
//! methods, paths, JWT principals, `when` conditions, ...) is rejected, never ignored: silently
//! dropping a condition would widen an ALLOW rule or narrow a DENY rule.
mod eval;
mod explain;
mod matcher;
mod model;

#[cfg(test)]
mod tests;

pub use eval::{Decision, PolicySet, Request};
pub use model::{
    parse_yaml, Action, AuthorizationPolicy, Metadata, Operation, Rule, RuleFrom, RuleTo, Source, Spec,
    Unsupported, WorkloadSelector, API_VERSIONS, DEFAULT_NAMESPACE, KIND,
};

/// Why a policy (or a set of policies) was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// Where, in the YAML, e.g. `spec.rules[0].from[0].source.ipBlocks[2]`.
    pub path: String,
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prefixes the path, e.g. with `policies[3]`.
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }
}
