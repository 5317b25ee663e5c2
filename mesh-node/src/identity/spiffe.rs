//! SPIFFE IDs: the workload identity `spiffe://<td>/ns/<ns>/sa/<sa>` and the node identity
//! `spiffe://<td>/node/<node>`, parsed strictly (SPIFFE ID spec plus the mesh's path form).
use std::fmt;
use std::str::FromStr;

/// The SPIFFE spec's limits: a trust domain of at most 255 bytes, a whole ID of at most 2048.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_URI_LEN: usize = 2048;
const SCHEME: &str = "spiffe://";
/// Suffix of [`Identity::sni`]: the names exist only inside TLS, never in DNS.
pub const SNI_SUFFIX: &str = ".svid.mesh.local";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    #[error("spiffe id {uri:?} does not start with \"spiffe://\"")]
    Scheme { uri: String },
    #[error("spiffe id is {len} bytes long, the limit is {MAX_URI_LEN}")]
    TooLong { len: usize },
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain {0:?} is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong(String),
    #[error(
        "trust domain {td:?} has {ch:?}: only lowercase letters, digits, '.', '-' and '_' are allowed \
         (no port, user info or upper case)"
    )]
    TrustDomainChar { td: String, ch: char },
    #[error("spiffe id {uri:?} has a query or fragment")]
    QueryOrFragment { uri: String },
    #[error("spiffe id {uri:?} has an empty path segment")]
    EmptySegment { uri: String },
    #[error("spiffe id {uri:?} has a {segment:?} path segment")]
    DotSegment { uri: String, segment: String },
    #[error("{field} {value:?} has {ch:?}: only letters, digits, '.', '-' and '_' are allowed")]
    SegmentChar {
        field: &'static str,
        value: String,
        ch: char,
    },
    #[error("{field} is empty")]
    EmptyField { field: &'static str },
    #[error("{field} may not be {value:?}")]
    DotField { field: &'static str, value: String },
    #[error(
        "spiffe id {uri:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NotWorkload { uri: String },
    #[error("spiffe id {uri:?} is not of the form spiffe://<trust-domain>/node/<node>")]
    NotNode { uri: String },
}

/// A workload identity. Build it with [`Identity::new`] or [`Identity::parse`], which
/// validate; the fields are public for reading (and for struct patterns).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Identity, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_segment("namespace", namespace)?;
        validate_segment("service account", service_account)?;
        let id = Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        let len = id.uri().len();
        if len > MAX_URI_LEN {
            return Err(IdentityError::TooLong { len });
        }
        Ok(id)
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` strictly: scheme `spiffe`, lowercase trust
    /// domain of `[a-z0-9._-]`, no port/userinfo/query/fragment, no empty, `.` or `..`
    /// segments, exactly the ns/sa form.
    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let (td, segments) = split(uri)?;
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => Identity::new(td, ns, sa),
            _ => Err(IdentityError::NotWorkload { uri: uri.to_owned() }),
        }
    }

    pub fn uri(&self) -> String {
        format!(
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// A DNS-safe name for this identity, used as the TLS SNI so that a node serving several
    /// workloads presents the right SVID: the lowercase hex of the first 16 bytes of
    /// SHA-256(uri()), then [`SNI_SUFFIX`]. Hashing keeps it one short label whatever the
    /// namespace and service account contain.
    pub fn sni(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.uri().as_bytes());
        let mut out = String::with_capacity(32 + SNI_SUFFIX.len());
        for b in &digest.as_ref()[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out.push_str(SNI_SUFFIX);
        out
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Identity, IdentityError> {
        Identity::parse(s)
    }
}

/// `spiffe://<td>/node/<node>`: the identity of a node daemon's credential.
pub fn node_identity_uri(trust_domain: &str, node: &str) -> String {
    format!("{SCHEME}{trust_domain}/node/{node}")
}

/// Parses a node identity, with the same strictness as [`Identity::parse`]; returns
/// `(trust_domain, node)`.
pub fn parse_node_identity(uri: &str) -> Result<(String, String), IdentityError> {
    let (td, segments) = split(uri)?;
    match segments.as_slice() {
        ["node", node] => {
            validate_trust_domain(td)?;
            validate_segment("node", node)?;
            Ok((td.to_owned(), (*node).to_owned()))
        }
        _ => Err(IdentityError::NotNode { uri: uri.to_owned() }),
    }
}

/// Checks a node name as it will appear in a node identity.
pub(crate) fn validate_node(node: &str) -> Result<(), IdentityError> {
    validate_segment("node", node)
}

/// Splits a SPIFFE ID into its (validated) trust domain and its path segments, rejecting
/// what the SPIFFE ID spec forbids anywhere in the ID.
fn split(uri: &str) -> Result<(&str, Vec<&str>), IdentityError> {
    if uri.len() > MAX_URI_LEN {
        return Err(IdentityError::TooLong { len: uri.len() });
    }
    // The scheme is compared exactly: "SPIFFE://" is not a SPIFFE ID.
    let rest = uri
        .strip_prefix(SCHEME)
        .ok_or_else(|| IdentityError::Scheme { uri: uri.to_owned() })?;
    if rest.contains(['?', '#']) {
        return Err(IdentityError::QueryOrFragment { uri: uri.to_owned() });
    }
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    // Userinfo ('@') and a port (':') fail here, as characters a trust domain cannot have.
    validate_trust_domain(td)?;
    if path.is_empty() {
        return Ok((td, Vec::new()));
    }
    let segments: Vec<&str> = path.split('/').collect();
    for segment in &segments {
        match *segment {
            "" => return Err(IdentityError::EmptySegment { uri: uri.to_owned() }),
            "." | ".." => {
                return Err(IdentityError::DotSegment {
                    uri: uri.to_owned(),
                    segment: (*segment).to_owned(),
                })
            }
            _ => {}
        }
    }
    Ok((td, segments))
}

pub(crate) fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    if td.is_empty() {
        return Err(IdentityError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdentityError::TrustDomainTooLong(td.to_owned()));
    }
    match td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(ch) => Err(IdentityError::TrustDomainChar {
            td: td.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

/// A path segment: the SPIFFE spec's `[A-Za-z0-9._-]`, not empty, `.` or `..`.
fn validate_segment(field: &'static str, value: &str) -> Result<(), IdentityError> {
    match value {
        "" => return Err(IdentityError::EmptyField { field }),
        "." | ".." => {
            return Err(IdentityError::DotField {
                field,
                value: value.to_owned(),
            })
        }
        _ => {}
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(ch) => Err(IdentityError::SegmentChar {
            field,
            value: value.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/web-1").unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "web-1").unwrap());
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web-1");
        assert_eq!(
            "spiffe://td_1-x/ns/a.b/sa/C_d"
                .parse::<Identity>()
                .unwrap()
                .service_account,
            "C_d"
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        let bad = [
            ("spiffe://Cluster.local/ns/a/sa/b", "trust domain"),
            ("spiffe://cluster.local/ns/../sa/b", "\"..\" path segment"),
            ("spiffe://cluster.local/ns/./sa/b", "\".\" path segment"),
            ("spiffe://cluster.local/ns//sa/b", "empty path segment"),
            ("spiffe://cluster.local/ns/a/sa/b/", "empty path segment"),
            ("spiffe://cluster.local//ns/a/sa/b", "empty path segment"),
            ("https://cluster.local/ns/a/sa/b", "does not start"),
            ("SPIFFE://cluster.local/ns/a/sa/b", "does not start"),
            ("spiffe:/cluster.local/ns/a/sa/b", "does not start"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "not of the form"),
            ("spiffe://cluster.local/ns/a", "not of the form"),
            ("spiffe://cluster.local/sa/b/ns/a", "not of the form"),
            ("spiffe://cluster.local:8443/ns/a/sa/b", "':'"),
            ("spiffe://user@cluster.local/ns/a/sa/b", "'@'"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "query or fragment"),
            ("spiffe://cluster.local/ns/a/sa/b#frag", "query or fragment"),
            ("spiffe:///ns/a/sa/b", "trust domain is empty"),
            ("spiffe://cluster.local/ns/a%2f/sa/b", "'%'"),
            ("", "does not start"),
        ];
        for (uri, want) in bad {
            let err = Identity::parse(uri).expect_err(uri).to_string();
            assert!(err.contains(want), "{uri}: {err}");
        }
    }

    #[test]
    fn new_validates_fields() {
        assert!(Identity::new("CLUSTER", "a", "b").is_err());
        assert!(Identity::new("td", "", "b")
            .unwrap_err()
            .to_string()
            .contains("namespace is empty"));
        assert!(Identity::new("td", "a", "..")
            .unwrap_err()
            .to_string()
            .contains("service account"));
        assert!(Identity::new("td", "a/b", "c").is_err());
    }

    #[test]
    fn sni_is_a_stable_dns_label() {
        let a = Identity::new("cluster.local", "default", "a").unwrap();
        let b = Identity::new("cluster.local", "default", "b").unwrap();
        let sni = a.sni();
        assert_eq!(sni, a.sni());
        assert_ne!(sni, b.sni());
        let label = sni.strip_suffix(SNI_SUFFIX).unwrap();
        assert_eq!(label.len(), 32);
        assert!(label
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert!(rustls_pki_types::ServerName::try_from(sni).is_ok());
    }

    #[test]
    fn node_identities() {
        let uri = node_identity_uri("cluster.local", "node-1.example");
        assert_eq!(uri, "spiffe://cluster.local/node/node-1.example");
        assert_eq!(
            parse_node_identity(&uri).unwrap(),
            ("cluster.local".to_owned(), "node-1.example".to_owned())
        );
        assert!(parse_node_identity("spiffe://cluster.local/node/..").is_err());
        assert!(parse_node_identity("spiffe://cluster.local/ns/a/sa/b").is_err());
        assert!(Identity::parse(&uri).is_err());
    }
}
