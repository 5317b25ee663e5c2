//! Workload identity: SPIFFE IDs, the mesh CA, trust bundles, X.509-SVID validation and
//! the rustls configurations HBONE uses.
