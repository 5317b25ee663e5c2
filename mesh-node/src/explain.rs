//! `mesh-node explain`: what the mesh's policies decide for a connection, and why, from the
//! config file alone (no kernel, no daemon).
use std::net::{IpAddr, SocketAddr};

use crate::{
    config::{Config, ConfigError, WorkloadConfig},
    policy::{PolicySet, Request},
};

/// The lines `mesh-node explain` prints for a connection from `from` (a workload name,
/// `namespace/name`, or an IP address) to `to`.
pub fn explain(config: &Config, from: &str, to: SocketAddr) -> anyhow::Result<Vec<String>> {
    config.validate()?;
    let policies = PolicySet::new(config.policies.clone(), &config.root_namespace).map_err(|e| {
        ConfigError::Invalid {
            field: e.path,
            message: e.message,
        }
    })?;
    let by_ip = |ip: IpAddr| {
        let ip = ip.to_canonical();
        config.workloads.iter().find(|w| w.ips.contains(&ip))
    };
    let (source, source_ip) = match from.parse::<IpAddr>() {
        Ok(ip) => (by_ip(ip), ip),
        Err(_) => {
            let (ns, name) = from.split_once('/').map_or((None, from), |(ns, n)| (Some(ns), n));
            let mut found = config
                .workloads
                .iter()
                .filter(|w| w.name == name && ns.is_none_or(|ns| w.namespace == ns));
            let w = found
                .next()
                .ok_or_else(|| anyhow::anyhow!("no workload named {from:?} in the config"))?;
            if found.next().is_some() {
                anyhow::bail!("several workloads are named {name:?}: write namespace/name");
            }
            let ip = w
                .ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == to.is_ipv4())
                .or_else(|| w.ips.first().copied())
                .ok_or_else(|| anyhow::anyhow!("workload {from:?} has no address"))?;
            (Some(w), ip)
        }
    };
    let dst = by_ip(to.ip()).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a mesh workload: the mesh does not enforce policy on it",
            to.ip()
        )
    })?;
    let src_principal = source.map(|w| principal(&config.trust_domain, w));
    let req = Request {
        source_principal: src_principal.as_deref(),
        source_namespace: source.map(|w| w.namespace.as_str()),
        source_ip,
        destination_namespace: &dst.namespace,
        destination_labels: &dst.labels,
        destination_port: to.port(),
    };
    let mut lines = vec![
        match (source, &src_principal) {
            (Some(w), Some(p)) => format!(
                "source: {}/{} principal={p} namespace={} ip={source_ip}",
                w.namespace, w.name, w.namespace
            ),
            _ => format!("source: {source_ip} (not a mesh workload: no principal, no namespace)"),
        },
        format!(
            "destination: {}/{} principal={} namespace={} labels={} port={}",
            dst.namespace,
            dst.name,
            principal(&config.trust_domain, dst),
            dst.namespace,
            labels(dst),
            to.port()
        ),
    ];
    lines.extend(policies.explain(&req));
    let decision = policies.evaluate(&req);
    lines.push(format!(
        "deciding policy: {} rule: {}",
        decision.policy.as_deref().unwrap_or("-"),
        decision.rule.map_or_else(|| "-".to_string(), |r| r.to_string())
    ));
    Ok(lines)
}

fn principal(trust_domain: &str, w: &WorkloadConfig) -> String {
    format!("{trust_domain}/ns/{}/sa/{}", w.namespace, w.service_account)
}

fn labels(w: &WorkloadConfig) -> String {
    let pairs: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
node: n1
capture: { ipv4: 10.0.0.1 }
nodes:
  - { name: n1, addresses: [10.0.0.1] }
  - { name: n2, addresses: [10.0.0.2] }
workloads:
  - { name: client, serviceAccount: client, node: n1, ips: [10.1.0.2], cgroup: /x }
  - { name: other, serviceAccount: other, node: n1, ips: [10.1.0.3], cgroup: /y }
  - { name: web, node: n2, ips: [10.2.0.2], labels: { app: web } }
policies:
  - metadata: { name: web-from-client, namespace: default }
    spec:
      selector: { matchLabels: { app: web } }
      rules:
        - from: [{ source: { principals: [cluster.local/ns/default/sa/client] } }]
          to: [{ operation: { ports: ["8080"] } }]
"#;

    fn run(from: &str, to: &str) -> Vec<String> {
        let config = Config::parse(CONFIG).unwrap();
        explain(&config, from, to.parse().unwrap()).unwrap()
    }

    #[test]
    fn explains_allow_and_deny_with_identities() {
        let out = run("client", "10.2.0.2:8080").join("\n");
        assert!(
            out.contains("principal=cluster.local/ns/default/sa/client"),
            "{out}"
        );
        assert!(out.contains("decision: allow"), "{out}");
        assert!(
            out.contains("deciding policy: default/web-from-client rule: 0"),
            "{out}"
        );

        let out = run("10.1.0.3", "10.2.0.2:8080").join("\n");
        assert!(
            out.contains("principal=cluster.local/ns/default/sa/other"),
            "{out}"
        );
        assert!(out.contains("decision: deny"), "{out}");
        assert!(out.contains("deciding policy: - rule: -"), "{out}");

        let out = run("192.0.2.9", "10.2.0.2:8080").join("\n");
        assert!(out.contains("not a mesh workload"), "{out}");
        assert!(out.contains("decision: deny"), "{out}");
    }

    #[test]
    fn unknown_names_are_errors() {
        let config = Config::parse(CONFIG).unwrap();
        assert!(explain(&config, "nobody", "10.2.0.2:80".parse().unwrap()).is_err());
        assert!(explain(&config, "client", "192.0.2.1:80".parse().unwrap()).is_err());
    }
}
