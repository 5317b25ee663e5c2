//! Tests of the policy subsystem: decision tables, parsing and validation, and properties.
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{parse_yaml, PolicySet, Request};

mod parse;
mod prop;
mod table;

pub(super) const ROOT: &str = "istio-system";

/// An owned connection, so that tests can build one and lend it as a [`Request`].
#[derive(Clone, Debug)]
pub(super) struct Conn {
    pub principal: Option<String>,
    pub namespace: Option<String>,
    pub ip: IpAddr,
    pub dest_ns: String,
    pub labels: BTreeMap<String, String>,
    pub port: u16,
}

/// From `cluster.local/ns/client-ns/sa/client` at 10.1.2.3 to `default`'s `app=web` on 8080.
pub(super) fn conn() -> Conn {
    Conn {
        principal: Some("cluster.local/ns/client-ns/sa/client".into()),
        namespace: None,
        ip: "10.1.2.3".parse().unwrap(),
        dest_ns: "default".into(),
        labels: labels(&[("app", "web")]),
        port: 8080,
    }
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Conn {
    pub fn request(&self) -> Request<'_> {
        Request {
            source_principal: self.principal.as_deref(),
            source_namespace: self.namespace.as_deref(),
            source_ip: self.ip,
            destination_namespace: &self.dest_ns,
            destination_labels: &self.labels,
            destination_port: self.port,
        }
    }
    pub fn plaintext(mut self) -> Self {
        self.principal = None;
        self.namespace = None;
        self
    }
    pub fn principal(mut self, p: &str) -> Self {
        self.principal = Some(p.into());
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.parse().unwrap();
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    pub fn to(mut self, ns: &str, pairs: &[(&str, &str)]) -> Self {
        self.dest_ns = ns.into();
        self.labels = labels(pairs);
        self
    }
}

/// Parses, validates and compiles YAML documents, panicking with the error.
pub(super) fn set(yaml: &str) -> PolicySet {
    let policies = parse_yaml(yaml).unwrap_or_else(|e| panic!("parse: {e}\n{yaml}"));
    PolicySet::new(policies, ROOT).unwrap_or_else(|e| panic!("compile: {e}\n{yaml}"))
}
