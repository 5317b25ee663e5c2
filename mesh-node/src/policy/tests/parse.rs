//! Parsing and validation: what Istio users paste is accepted, anything L4 cannot enforce is
//! rejected by name and path.
use super::ROOT;
use crate::policy::{parse_yaml, Action, AuthorizationPolicy, PolicyError, PolicySet};

const FULL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-web
  namespace: shop
  labels: { team: web }
spec:
  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/shop/sa/frontend", "*/sa/gateway"]
            notPrincipals: ["cluster.local/ns/shop/sa/batch"]
            namespaces: ["shop", "prod-*"]
            notNamespaces: ["*-test"]
            ipBlocks: ["10.0.0.0/8", "fd00::1"]
            notIpBlocks: ["10.9.0.0/16"]
      to:
        - operation:
            ports: ["8080"]
            notPorts: ["22"]
    - {}
"#;

fn one(yaml: &str) -> AuthorizationPolicy {
    let mut v = parse_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

/// The validation error of a policy whose spec is `spec` (flow YAML).
fn invalid(spec: &str) -> PolicyError {
    let p = one(&format!("metadata: {{name: p}}\nspec: {spec}"));
    p.validate().expect_err(spec)
}

#[test]
fn full_istio_policy_parses_and_round_trips() {
    let p = one(FULL);
    p.validate().unwrap();
    assert_eq!(p.id(), "shop/allow-web");
    assert_eq!(p.spec.rules.len(), 2);
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        json.contains("\"notIpBlocks\"") && json.contains("\"matchLabels\""),
        "{json}"
    );
    let back: AuthorizationPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let yaml = serde_norway::to_string(&p).unwrap();
    assert_eq!(one(&yaml), p);
}

#[test]
fn defaults() {
    let p = one("metadata: {name: deny-all}\nspec: {}");
    assert_eq!(p.metadata.namespace, "default");
    assert_eq!(p.spec.action, Action::Allow);
    assert!(p.spec.rules.is_empty() && p.spec.selector.is_none());
    p.validate().unwrap();
    one("metadata: {name: p}").validate().unwrap();
    one("apiVersion: security.istio.io/v1beta1\nmetadata: {name: p}")
        .validate()
        .unwrap();
}

#[test]
fn envelope_errors() {
    let err = one("apiVersion: security.istio.io/v1alpha1\nmetadata: {name: p}")
        .validate()
        .unwrap_err();
    assert_eq!(err.path, "apiVersion");
    let err = one("kind: PeerAuthentication\nmetadata: {name: p}")
        .validate()
        .unwrap_err();
    assert_eq!(err.path, "kind");
    let err = one("metadata: {name: \"\"}").validate().unwrap_err();
    assert_eq!(err.path, "metadata.name");
}

#[test]
fn unsupported_fields_are_named() {
    let l7 = "is an L7 field, which this mesh (L4) does not support";
    let cases = [
        (
            "{rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}",
            "spec.rules[0].from[0].source",
            "requestPrincipals",
            l7,
        ),
        (
            "{rules: [{from: [{source: {notRequestPrincipals: [a]}}]}]}",
            "spec.rules[0].from[0].source",
            "notRequestPrincipals",
            l7,
        ),
        (
            "{rules: [{from: [{source: {remoteIpBlocks: [1.2.3.4]}}]}]}",
            "spec.rules[0].from[0].source",
            "remoteIpBlocks",
            "not supported",
        ),
        (
            "{rules: [{from: [{source: {notRemoteIpBlocks: [1.2.3.4]}}]}]}",
            "spec.rules[0].from[0].source",
            "notRemoteIpBlocks",
            "not supported",
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [ns/sa]}}]}]}",
            "spec.rules[0].from[0].source",
            "serviceAccounts",
            "not supported",
        ),
        (
            "{rules: [{to: [{operation: {hosts: [a.com]}}]}]}",
            "spec.rules[0].to[0].operation",
            "hosts",
            l7,
        ),
        (
            "{rules: [{to: [{operation: {notHosts: [a.com]}}]}]}",
            "spec.rules[0].to[0].operation",
            "notHosts",
            l7,
        ),
        (
            "{rules: [{to: [{operation: {methods: [GET]}}]}]}",
            "spec.rules[0].to[0].operation",
            "methods",
            l7,
        ),
        (
            "{rules: [{to: [{operation: {notMethods: [GET]}}]}]}",
            "spec.rules[0].to[0].operation",
            "notMethods",
            l7,
        ),
        (
            "{rules: [{}, {to: [{operation: {ports: [\"80\"], paths: [/a]}}]}]}",
            "spec.rules[1].to[0].operation",
            "paths",
            l7,
        ),
        (
            "{rules: [{to: [{operation: {notPaths: [/a]}}]}]}",
            "spec.rules[0].to[0].operation",
            "notPaths",
            l7,
        ),
        (
            "{rules: [{when: [{key: source.ip, values: [1.2.3.4]}]}]}",
            "spec.rules[0]",
            "when",
            "not supported",
        ),
        (
            "{action: CUSTOM, provider: {name: ext-authz}}",
            "spec",
            "provider",
            "not supported",
        ),
        (
            "{targetRef: {kind: Gateway, name: g}}",
            "spec",
            "targetRef",
            "not supported",
        ),
        (
            "{targetRefs: [{kind: Service, name: s}]}",
            "spec",
            "targetRefs",
            "not supported",
        ),
    ];
    for (spec, parent, field, why) in cases {
        let err = invalid(spec);
        assert_eq!(err.path, format!("{parent}.{field}"), "{spec}");
        assert!(
            err.message.contains(&format!("field \"{field}\" ")),
            "{spec}: {err}"
        );
        assert!(err.message.contains(why), "{spec}: {err}");
    }
    // An empty list has no effect in Istio either.
    one("metadata: {name: p}\nspec: {rules: [{to: [{operation: {ports: [\"80\"], methods: []}}]}]}")
        .validate()
        .unwrap();
}

#[test]
fn unsupported_actions() {
    for action in ["AUDIT", "CUSTOM"] {
        let err = invalid(&format!("{{action: {action}}}"));
        assert_eq!(err.path, "spec.action");
        assert!(
            err.message.contains(action) && err.message.contains("not supported"),
            "{err}"
        );
    }
    let err = parse_yaml("metadata: {name: p}\nspec: {action: deny}").unwrap_err();
    assert!(err.message.contains("deny"), "{err}");
}

#[test]
fn bad_ports() {
    for (i, port) in ["0", "65536", "http", "-1", "+80", "", " 80", "99999999999"]
        .iter()
        .enumerate()
    {
        let err = invalid(&format!(
            "{{rules: [{{to: [{{operation: {{ports: [\"80\"], notPorts: [\"443\", {port:?}]}}}}]}}]}}"
        ));
        assert_eq!(err.path, "spec.rules[0].to[0].operation.notPorts[1]", "case {i}");
        assert!(err.message.contains("not a port"), "{err}");
    }
    let err = invalid("{rules: [{to: [{operation: {ports: [\"1\"]}}, {operation: {ports: [\"0\"]}}]}]}");
    assert_eq!(err.path, "spec.rules[0].to[1].operation.ports[0]");
    // Istio's ports are strings; YAML reads an unquoted 8080 as its text, so it is accepted too.
    let p = one("metadata: {name: p}\nspec: {rules: [{to: [{operation: {ports: [8080]}}]}]}");
    assert_eq!(
        p.spec.rules[0].to.as_ref().unwrap()[0]
            .operation
            .as_ref()
            .unwrap()
            .ports,
        ["8080"]
    );
}

#[test]
fn good_ports_and_ip_blocks_validate() {
    let ok =
        "{rules: [{from: [{source: {ipBlocks: [1.2.3.4, 1.2.3.4/32, 0.0.0.0/0, \"::1\", \"fd00::/8\"]}}], \
              to: [{operation: {ports: [\"1\", \"65535\"]}}]}]}";
    one(&format!("metadata: {{name: p}}\nspec: {ok}"))
        .validate()
        .unwrap();
}

#[test]
fn bad_ip_blocks() {
    for block in [
        "10.0.0.0/33",
        "10.0.0",
        "fd00::/129",
        "foo",
        "10.0.0.0/",
        "1.2.3.4/8/8",
        "*",
    ] {
        let err = invalid(&format!(
            "{{rules: [{{from: [{{source: {{notIpBlocks: [10.0.0.0/8]}}}}, \
             {{source: {{ipBlocks: [1.2.3.4, \"{block}\"]}}}}]}}]}}"
        ));
        assert_eq!(err.path, "spec.rules[0].from[1].source.ipBlocks[1]", "{block}");
        assert!(err.message.contains("not an IP block"), "{err}");
    }
}

#[test]
fn bad_patterns() {
    for (field, value) in [
        ("principals", "cluster.local/*/sa/web"),
        ("principals", "**"),
        ("principals", "*a*"),
        ("notPrincipals", "a*b"),
        ("namespaces", "pr*d"),
        ("notNamespaces", "*x*"),
        ("principals", ""),
        ("namespaces", ""),
    ] {
        let err = invalid(&format!(
            "{{rules: [{{from: [{{source: {{{field}: [ok, \"{value}\"]}}}}]}}]}}"
        ));
        assert_eq!(
            err.path,
            format!("spec.rules[0].from[0].source.{field}[1]"),
            "{value}"
        );
    }
    let err = invalid("{rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/a/sa/b\"]}}]}]}");
    assert!(err.message.contains("without \"spiffe://\""), "{err}");
}

#[test]
fn empty_entries_are_rejected_as_istio_does() {
    for (spec, path) in [
        ("{rules: [{from: []}]}", "spec.rules[0].from"),
        ("{rules: [{to: []}]}", "spec.rules[0].to"),
        ("{rules: [{from: [{}]}]}", "spec.rules[0].from[0].source"),
        (
            "{rules: [{from: [{source: {}}]}]}",
            "spec.rules[0].from[0].source",
        ),
        ("{rules: [{to: [{}]}]}", "spec.rules[0].to[0].operation"),
        (
            "{rules: [{to: [{operation: {}}]}]}",
            "spec.rules[0].to[0].operation",
        ),
    ] {
        assert_eq!(invalid(spec).path, path, "{spec}");
    }
}

#[test]
fn unknown_fields_are_named() {
    for (yaml, field) in [
        (
            "metadata: {name: p}\nspec: {rules: [{from: [{source: {principal: [a]}}]}]}",
            "principal",
        ),
        (
            "metadata: {name: p}\nspec: {rules: [{to: [{operation: {port: [\"80\"]}}]}]}",
            "port",
        ),
        (
            "metadata: {name: p}\nspec: {selector: {matchExpressions: []}}",
            "matchExpressions",
        ),
        ("metadata: {name: p}\nspec: {rule: []}", "rule"),
        ("metadata: {name: p, uid: x}", "uid"),
        ("metadata: {name: p}\nstatus: {}", "status"),
    ] {
        let err = parse_yaml(yaml).unwrap_err();
        assert!(err.message.contains(&format!("unknown field `{field}`")), "{err}");
        assert_eq!(err.path, "document[0]");
    }
}

#[test]
fn multi_document_yaml() {
    let yaml =
        "---\nmetadata: {name: a}\n---\n---\nmetadata: {name: b, namespace: prod}\nspec: {action: DENY}\n";
    let policies = parse_yaml(yaml).unwrap();
    assert_eq!(
        policies.iter().map(AuthorizationPolicy::id).collect::<Vec<_>>(),
        ["default/a", "prod/b"]
    );
    assert!(parse_yaml("").unwrap().is_empty());
}

#[test]
fn policy_set_errors_are_prefixed() {
    let policies = parse_yaml(
        "---\nmetadata: {name: a}\n\
         ---\nmetadata: {name: b}\nspec: {rules: [{to: [{operation: {methods: [GET]}}]}]}\n",
    )
    .unwrap();
    let err = PolicySet::new(policies, ROOT).unwrap_err();
    assert_eq!(err.path, "policies[1].spec.rules[0].to[0].operation.methods");
    assert_eq!(
        err.to_string(),
        "policies[1].spec.rules[0].to[0].operation.methods: \
         field \"methods\" is an L7 field, which this mesh (L4) does not support"
    );

    let dup = parse_yaml("---\nmetadata: {name: a}\n---\nmetadata: {name: a, namespace: default}\n").unwrap();
    let err = PolicySet::new(dup, ROOT).unwrap_err();
    assert_eq!(err.path, "policies[1].metadata.name");
    assert!(err.message.contains("duplicate policy default/a"), "{err}");

    let set = PolicySet::new(vec![], ROOT).unwrap();
    assert!(set.is_empty());
    assert_eq!(set.len(), 0);
}
