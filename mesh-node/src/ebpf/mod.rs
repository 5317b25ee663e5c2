//! The datapath: loading the kernel programs, attaching them to the node's cgroup as
//! pinned links, adopting pinned maps across restarts, and the typed maps the daemon
//! reads and writes.
//!
//! Pin layout under the pin directory: `maps/<MAP_NAME>` and
//! `links/<program>-gen<generation>`. A restarting daemon attaches a new generation next to
//! the old one and only then unpins the old links, so enrolled workloads are never
//! without programs (and, with no daemon listening, their connects are refused).
mod bpffs;
pub mod events;
pub mod flows;
pub mod maps;
mod verdicts;

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{MapError, SockHash},
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, SkMsg,
        SockOps,
    },
    Ebpf, EbpfLoader,
};
use mesh_common::{
    SockKey, MAP_FLOW_EVENTS, MAP_SOCKETS, PROG_CONNECT4, PROG_CONNECT6, PROG_INGRESS, PROG_SK_MSG,
    PROG_SOCK_OPS,
};

pub use maps::Maps;

/// The kernel programs, built by build.rs from `mesh-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh"));

/// bpffs refuses '.' in names, so generations are written `<program>-gen<N>`.
const GENERATION_SEP: &str = "-gen";

const CGROUP_PROGRAMS: [&str; 4] = [PROG_CONNECT4, PROG_CONNECT6, PROG_SOCK_OPS, PROG_INGRESS];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{0}")]
    Bpffs(String),
    #[error(
        "mesh-node lacks the capabilities to load BPF programs ({0}); run it as root or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN"
    )]
    NotPermitted(String),
    #[error("loading the BPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name} (if the pinned maps come from another mesh-node version, run `mesh-node uninstall` first)")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("link of program {name}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("no pinned map at {path}: is mesh-node installed with this pin directory?")]
    NotInstalled { path: PathBuf },
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Loaded and attached programs plus the maps. Dropping it leaves the pinned links
/// attached: only [`uninstall`] detaches.
pub struct Datapath {
    /// Keeps the program fds (and the sk_msg attachment) alive.
    _ebpf: Ebpf,
    pub maps: Arc<Mutex<Maps>>,
    /// The kernel's flow events, until the daemon takes them ([`Datapath::take_events`]).
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    pin_dir: PathBuf,
}

/// Refuse early, with a clear message, when we cannot possibly load programs.
fn check_capabilities() -> Result<(), DatapathError> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(io_err("reading", Path::new("/proc/self/status")))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1 << cap) != 0;
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(c, _)| {
        // Before CAP_BPF existed, CAP_SYS_ADMIN covered it.
        let covered = has(*c) || (*c == CAP_BPF && has(CAP_SYS_ADMIN));
        !covered
    })
    .map(|(_, n)| n)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DatapathError::NotPermitted(format!(
            "missing {}",
            missing.join(", ")
        )))
    }
}

impl Datapath {
    /// Loads the programs (adopting pinned maps), attaches them to `cgroup` as a new
    /// generation of pinned links, then removes the previous generation.
    pub fn install(pin_dir: &Path, cgroup: &Path, socket_map: bool) -> Result<Datapath, DatapathError> {
        check_capabilities()?;
        bpffs::ensure(pin_dir).map_err(DatapathError::Bpffs)?;
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)
            .map_err(|e| match e {
                aya::EbpfError::MapError(MapError::CreateError { ref io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EPERM) =>
                {
                    DatapathError::NotPermitted(e.to_string())
                }
                e => DatapathError::Load(e),
            })?;
        let cgroup_fd = File::open(cgroup).map_err(io_err("opening cgroup", cgroup))?;

        let old = existing_links(&links_dir)?;
        let generation = old.iter().map(|(_, g)| *g).max().map_or(1, |g| g + 1);
        for name in CGROUP_PROGRAMS {
            let link = attach_cgroup_program(&mut ebpf, name, &cgroup_fd)?;
            let path = links_dir.join(format!("{name}{GENERATION_SEP}{generation}"));
            link.pin(&path).map_err(|source| DatapathError::Pin {
                path: path.clone(),
                source,
            })?;
        }
        if socket_map {
            attach_sk_msg(&mut ebpf)?;
        }
        for (path, _) in old {
            // Removing the pin detaches the previous generation.
            std::fs::remove_file(&path).map_err(io_err("unpinning old link", &path))?;
        }
        tracing::info!(generation, cgroup = %cgroup.display(), pin_dir = %pin_dir.display(), "programs attached");
        let maps = Maps::open(&mut ebpf)?;
        let events = ebpf
            .take_map(MAP_FLOW_EVENTS)
            .ok_or(DatapathError::MissingMap(MAP_FLOW_EVENTS))?
            .try_into()
            .map_err(|source| DatapathError::Map {
                name: MAP_FLOW_EVENTS,
                source,
            })?;
        Ok(Datapath {
            _ebpf: ebpf,
            maps: Arc::new(Mutex::new(maps)),
            events: Some(events),
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The ring buffer of the kernel's flow events; `None` once taken.
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.events.take()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether our programs are still attached (their link pins exist).
    pub fn attached(&self) -> bool {
        attached_at(&self.pin_dir)
    }
}

/// Whether every cgroup program has a link pinned under `pin_dir`: removing a pin (as
/// `mesh-node uninstall` does) detaches that program.
pub fn attached_at(pin_dir: &Path) -> bool {
    existing_links(&pin_dir.join("links"))
        .map(|l| l.len() == CGROUP_PROGRAMS.len())
        .unwrap_or(false)
}

/// With bpf links the kernel always attaches in multi mode (so generations can overlap);
/// it rejects an explicit BPF_F_ALLOW_MULTI flag, hence `Single` (no flags) below.
fn attach_cgroup_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, DatapathError> {
    let perr = |source| DatapathError::Program { name, source };
    let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    if name == PROG_INGRESS {
        let prog: &mut CgroupSkb = program.try_into().map_err(perr)?;
        prog.load().map_err(perr)?;
        let id = prog
            .attach(cgroup, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(perr)?;
        let link = prog.take_link(id).map_err(perr)?;
        FdLink::try_from(link).map_err(|source| DatapathError::Link { name, source })
    } else if name == PROG_SOCK_OPS {
        let prog: &mut SockOps = program.try_into().map_err(perr)?;
        prog.load().map_err(perr)?;
        let id = prog.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
        let link = prog.take_link(id).map_err(perr)?;
        FdLink::try_from(link).map_err(|source| DatapathError::Link { name, source })
    } else {
        let prog: &mut CgroupSockAddr = program.try_into().map_err(perr)?;
        prog.load().map_err(perr)?;
        let id = prog.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
        let link = prog.take_link(id).map_err(perr)?;
        FdLink::try_from(link).map_err(|source| DatapathError::Link { name, source })
    }
}

fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let map = ebpf
        .map(MAP_SOCKETS)
        .ok_or(DatapathError::MissingMap(MAP_SOCKETS))?;
    let sockets: SockHash<_, SockKey> = SockHash::try_from(map).map_err(|source| DatapathError::Map {
        name: MAP_SOCKETS,
        source,
    })?;
    let fd = sockets
        .fd()
        .try_clone()
        .map_err(io_err("cloning fd of", Path::new(MAP_SOCKETS)))?;
    let perr = |source| DatapathError::Program {
        name: PROG_SK_MSG,
        source,
    };
    let prog: &mut SkMsg = ebpf
        .program_mut(PROG_SK_MSG)
        .ok_or(DatapathError::Program {
            name: PROG_SK_MSG,
            source: ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(perr)?;
    prog.load().map_err(perr)?;
    prog.attach(&fd).map_err(perr)?;
    Ok(())
}

/// Pinned links: `(path, generation)`.
fn existing_links(links_dir: &Path) -> Result<Vec<(PathBuf, u64)>, DatapathError> {
    let entries = match std::fs::read_dir(links_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", links_dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("listing", links_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let generation = name
            .rsplit_once(GENERATION_SEP)
            .and_then(|(_, g)| g.parse().ok())
            .unwrap_or(0);
        out.push((entry.path(), generation));
    }
    Ok(out)
}

/// Detaches the programs and removes every pin under `pin_dir`. Returns what it removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.map_err(io_err("listing", &dir))?.path();
            std::fs::remove_file(&path).map_err(io_err("removing pin", &path))?;
            removed.push(path);
        }
        std::fs::remove_dir(&dir).map_err(io_err("removing", &dir))?;
    }
    std::fs::remove_dir(pin_dir).map_err(io_err("removing", pin_dir))?;
    Ok(removed)
}
