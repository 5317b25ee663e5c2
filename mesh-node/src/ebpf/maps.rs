//! Typed handles on the pinned maps, shared by the running daemon and the
//! `mesh-node datapath` / `uninstall` commands (which open them from their pins).
use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
};
use ipnet::IpNet;
use mesh_common::{
    Counter, FlowCounters, FlowKey, IpKey, OrigDst, Settings, SockKey, VerdictKey, Workload, AF_INET,
    AF_INET6, MAP_COUNTERS, MAP_ENROLLED, MAP_EXCLUDED_PORTS, MAP_EXCLUDED_V4, MAP_EXCLUDED_V6, MAP_FLOWS,
    MAP_ORIG_BY_TUPLE, MAP_SETTINGS, MAP_TRUSTED_SOURCES, MAP_VERDICTS, MAX_EXCLUSIONS, MAX_FLOWS,
    MAX_PENDING_CONNECTIONS, MAX_TRUSTED_SOURCES, MAX_VERDICTS, MAX_WORKLOADS, SETTINGS_HAS_V4,
    SETTINGS_HAS_V6, SETTINGS_SOCKET_MAP, WORKLOAD_STRICT,
};

use super::DatapathError;
use crate::{
    config::InboundMode,
    state::{CgroupId, MeshState},
};

pub struct Maps {
    enrolled: HashMap<MapData, u64, Workload>,
    orig_by_tuple: HashMap<MapData, SockKey, OrigDst>,
    settings: Array<MapData, Settings>,
    excluded_v4: LpmTrie<MapData, [u8; 4], u8>,
    excluded_v6: LpmTrie<MapData, [u8; 16], u8>,
    excluded_ports: HashMap<MapData, u16, u8>,
    counters: PerCpuArray<MapData, u64>,
    trusted_sources: HashMap<MapData, IpKey, u8>,
    verdicts: HashMap<MapData, VerdictKey, u8>,
    flows: PerCpuHashMap<MapData, FlowKey, FlowCounters>,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Takes a map out of a freshly loaded object, or opens its pin.
pub trait MapSource {
    fn take(&mut self, name: &'static str) -> Result<Map, DatapathError>;
}

impl MapSource for aya::Ebpf {
    fn take(&mut self, name: &'static str) -> Result<Map, DatapathError> {
        self.take_map(name).ok_or(DatapathError::MissingMap(name))
    }
}

/// Opens maps from `<pin dir>/maps/<NAME>`.
pub struct Pinned<'a>(pub &'a Path);

impl MapSource for Pinned<'_> {
    fn take(&mut self, name: &'static str) -> Result<Map, DatapathError> {
        let path = self.0.join("maps").join(name);
        if !path.exists() {
            return Err(DatapathError::NotInstalled { path });
        }
        let data = MapData::from_pin(&path).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    }
}

impl Maps {
    pub fn open(src: &mut impl MapSource) -> Result<Maps, DatapathError> {
        Ok(Maps {
            enrolled: src
                .take(MAP_ENROLLED)?
                .try_into()
                .map_err(map_err(MAP_ENROLLED))?,
            orig_by_tuple: src
                .take(MAP_ORIG_BY_TUPLE)?
                .try_into()
                .map_err(map_err(MAP_ORIG_BY_TUPLE))?,
            settings: src
                .take(MAP_SETTINGS)?
                .try_into()
                .map_err(map_err(MAP_SETTINGS))?,
            excluded_v4: src
                .take(MAP_EXCLUDED_V4)?
                .try_into()
                .map_err(map_err(MAP_EXCLUDED_V4))?,
            excluded_v6: src
                .take(MAP_EXCLUDED_V6)?
                .try_into()
                .map_err(map_err(MAP_EXCLUDED_V6))?,
            excluded_ports: src
                .take(MAP_EXCLUDED_PORTS)?
                .try_into()
                .map_err(map_err(MAP_EXCLUDED_PORTS))?,
            counters: src
                .take(MAP_COUNTERS)?
                .try_into()
                .map_err(map_err(MAP_COUNTERS))?,
            trusted_sources: src
                .take(MAP_TRUSTED_SOURCES)?
                .try_into()
                .map_err(map_err(MAP_TRUSTED_SOURCES))?,
            verdicts: src
                .take(MAP_VERDICTS)?
                .try_into()
                .map_err(map_err(MAP_VERDICTS))?,
            flows: src.take(MAP_FLOWS)?.try_into().map_err(map_err(MAP_FLOWS))?,
        })
    }

    /// Makes the kernel's view match `state`: settings, exclusions, then enrollment
    /// (last, so that a workload is never enrolled before its capture address is known).
    pub fn sync(&mut self, state: &MeshState) -> Result<(), DatapathError> {
        let mut settings = Settings::default();
        for addr in &state.capture {
            settings.capture_port = addr.port();
            match addr.ip() {
                IpAddr::V4(ip) => {
                    settings.capture_v4 = u32::from_ne_bytes(ip.octets());
                    settings.flags |= SETTINGS_HAS_V4;
                }
                IpAddr::V6(ip) => {
                    settings.capture_v6 = words(ip);
                    settings.flags |= SETTINGS_HAS_V6;
                }
            }
        }
        if state.socket_map {
            settings.flags |= SETTINGS_SOCKET_MAP;
        }
        self.settings.set(0, settings, 0).map_err(map_err(MAP_SETTINGS))?;

        sync_hash(
            &mut self.excluded_ports,
            &state.excluded_ports.iter().map(|p| (*p, 1)).collect(),
            MAP_EXCLUDED_PORTS,
        )?;
        let (mut v4, mut v6) = (HashSet::new(), HashSet::new());
        for net in &state.excluded_cidrs {
            match net.trunc() {
                IpNet::V4(n) => v4.insert((u32::from(n.prefix_len()), n.network().octets())),
                IpNet::V6(n) => v6.insert((u32::from(n.prefix_len()), n.network().octets())),
            };
        }
        sync_lpm(&mut self.excluded_v4, v4, MAP_EXCLUDED_V4)?;
        sync_lpm(&mut self.excluded_v6, v6, MAP_EXCLUDED_V6)?;

        let trusted = state.trusted_sources.iter().map(|ip| (ip_key(*ip), 1)).collect();
        sync_hash(&mut self.trusted_sources, &trusted, MAP_TRUSTED_SOURCES)?;

        // Verdicts before enrollment, so a newly enrolled workload is never without them.
        let verdicts = super::verdicts::compute(state).unwrap_or_else(|| {
            tracing::warn!(
                "too many policy verdicts for the kernel map: fast path off, destinations still enforce"
            );
            std::collections::HashMap::new()
        });
        sync_hash(&mut self.verdicts, &verdicts, MAP_VERDICTS)?;

        let wanted: std::collections::HashMap<u64, Workload> = state
            .local_cgroups()
            .map(|(CgroupId(cg), id)| {
                let strict = state.workload(id).inbound_mode == InboundMode::Strict;
                (
                    cg,
                    Workload {
                        id: id.0,
                        flags: if strict { WORKLOAD_STRICT } else { 0 },
                    },
                )
            })
            .collect();
        sync_hash(&mut self.enrolled, &wanted, MAP_ENROLLED)
    }

    /// Takes (looks up and deletes) the original destination of an accepted connection.
    pub fn take_orig_dst(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Option<(SocketAddr, CgroupId)> {
        let key = sock_key(client, server);
        let orig = self.orig_by_tuple.get(&key, 0).ok()?;
        let _ = self.orig_by_tuple.remove(&key);
        let ip = key_ip(orig.family, orig.addr)?;
        Some((SocketAddr::new(ip, orig.port), CgroupId(orig.cgroup_id)))
    }

    /// Sums of the per-CPU counters.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, DatapathError> {
        Counter::ALL
            .iter()
            .map(|c| {
                let values = self
                    .counters
                    .get(&(*c as u32), 0)
                    .map_err(map_err(MAP_COUNTERS))?;
                Ok((c.name(), values.iter().sum()))
            })
            .collect()
    }

    pub fn enrolled(&self) -> Vec<(u64, u32)> {
        self.enrolled
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.id))
            .collect()
    }

    /// Entries over capacity of the maps that can fill up, for `mesh_bpf_map_fill_ratio`.
    pub fn fill(&self) -> Vec<(&'static str, f64)> {
        let ratio = |n: usize, cap: u32| n as f64 / f64::from(cap);
        vec![
            (MAP_ENROLLED, ratio(self.enrolled.keys().count(), MAX_WORKLOADS)),
            (
                MAP_ORIG_BY_TUPLE,
                ratio(self.orig_by_tuple.keys().count(), MAX_PENDING_CONNECTIONS),
            ),
            (MAP_VERDICTS, ratio(self.verdicts.keys().count(), MAX_VERDICTS)),
            (MAP_FLOWS, ratio(self.flows.keys().count(), MAX_FLOWS)),
            (
                MAP_TRUSTED_SOURCES,
                ratio(self.trusted_sources.keys().count(), MAX_TRUSTED_SOURCES),
            ),
            (
                MAP_EXCLUDED_PORTS,
                ratio(self.excluded_ports.keys().count(), MAX_EXCLUSIONS),
            ),
        ]
    }

    /// Every flow of `MESH_FLOWS` with its counts summed over CPUs.
    pub fn flows(&self) -> Vec<(FlowKey, FlowCounters)> {
        self.flows
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, sum_flow(per_cpu.iter())))
            .collect()
    }

    /// Deletes `keys` from `MESH_FLOWS`, returning the counts each had when deleted (read
    /// just before: an increment in between is lost, which is why only idle flows are
    /// harvested). Keys already gone are skipped.
    pub fn harvest_flows(&mut self, keys: &[FlowKey]) -> Vec<(FlowKey, FlowCounters)> {
        let mut deleted = Vec::with_capacity(keys.len());
        for key in keys {
            let Ok(per_cpu) = self.flows.get(key, 0) else {
                continue;
            };
            if self.flows.remove(key).is_ok() {
                deleted.push((*key, sum_flow(per_cpu.iter())));
            }
        }
        deleted
    }

    pub fn pending_orig_dsts(&self) -> usize {
        self.orig_by_tuple.keys().count()
    }
}

/// Makes a hash map hold exactly `wanted`: inserts (or updates) every entry, then removes
/// the keys no longer wanted, so that a reader never sees a wanted entry missing.
fn sync_hash<K, V>(
    map: &mut HashMap<MapData, K, V>,
    wanted: &std::collections::HashMap<K, V>,
    name: &'static str,
) -> Result<(), DatapathError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for (k, v) in wanted {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

fn sync_lpm<const N: usize>(
    map: &mut LpmTrie<MapData, [u8; N], u8>,
    wanted: HashSet<(u32, [u8; N])>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let stale: Vec<Key<[u8; N]>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for (len, data) in wanted {
        map.insert(&Key::new(len, data), 1, 0).map_err(map_err(name))?;
    }
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

fn sum_flow<'a>(per_cpu: impl Iterator<Item = &'a FlowCounters>) -> FlowCounters {
    per_cpu.fold(FlowCounters::default(), |a, c| FlowCounters {
        opened: a.opened + c.opened,
        closed: a.closed + c.closed,
        bytes_sent: a.bytes_sent + c.bytes_sent,
        bytes_received: a.bytes_received + c.bytes_received,
        denied: a.denied + c.denied,
    })
}

/// The address of a kernel key (`family`, network-order words), if the family is known.
pub fn key_ip(family: u16, addr: [u32; 4]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))),
        AF_INET6 => Some(IpAddr::V6(from_words(addr))),
        _ => None,
    }
}

fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => IpKey {
            addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            family: u32::from(AF_INET),
        },
        IpAddr::V6(v6) => IpKey {
            addr: words(v6),
            family: u32::from(AF_INET6),
        },
    }
}

fn words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

fn from_words(w: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// The key `sock_ops` stored for a connection, from the accepting side's view.
pub fn sock_key(client: SocketAddr, server: SocketAddr) -> SockKey {
    let canon = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let (c, s) = (canon(client), canon(server));
    let (family, client_addr, server_addr) = match (c, s) {
        (IpAddr::V4(c), IpAddr::V4(s)) => (
            AF_INET,
            [u32::from_ne_bytes(c.octets()), 0, 0, 0],
            [u32::from_ne_bytes(s.octets()), 0, 0, 0],
        ),
        (c, s) => (AF_INET6, words(to_v6(c)), words(to_v6(s))),
    };
    SockKey {
        client_addr,
        server_addr,
        client_port: client.port(),
        server_port: server.port(),
        family,
        _pad: 0,
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_words_round_trip() {
        let ip: Ipv6Addr = "fd00:201:1::2".parse().unwrap();
        assert_eq!(from_words(words(ip)), ip);
    }

    #[test]
    fn v4_mapped_peers_key_as_ipv4() {
        let a = sock_key(
            "[::ffff:10.0.0.2]:4000".parse().unwrap(),
            "[::ffff:10.0.0.1]:15001".parse().unwrap(),
        );
        let b = sock_key(
            "10.0.0.2:4000".parse().unwrap(),
            "10.0.0.1:15001".parse().unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(b.family, AF_INET);
        assert_eq!(b.client_addr[0].to_ne_bytes(), [10, 0, 0, 2]);
    }
}
