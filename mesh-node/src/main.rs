//! The `mesh-node` command: the daemon and its operator tools.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mesh_node::{admin::cli::AdminCommand, app, config::Config, ebpf};

#[derive(Parser)]
#[command(
    name = "mesh-node",
    version,
    about = "Per-node daemon of the sidecarless eBPF service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon with a standalone YAML config.
    Run {
        #[arg(long, env = "MESH_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file (syntax, fields, and this host's cgroups) and exit.
    Check {
        #[arg(long, env = "MESH_CONFIG")]
        config: PathBuf,
    },
    /// What the authorization policies of a config decide for a connection, and why.
    Explain {
        #[arg(long, env = "MESH_CONFIG")]
        config: PathBuf,
        /// The source: a workload name (or namespace/name), or an IP address.
        #[arg(long)]
        from: String,
        /// The destination, ip:port.
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// Detach the programs and remove every pin (the only way mesh-node removes them).
    Uninstall {
        /// Take the pin directory from this config file.
        #[arg(long, env = "MESH_CONFIG", conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// The pin directory (default /sys/fs/bpf/mesh).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// The mesh certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    #[command(flatten)]
    Admin(AdminCommand),
    /// Print the kernel side: enrolled cgroups and counters, read from the pinned maps.
    Datapath {
        #[arg(long, default_value = mesh_node::config::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Output format.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the mesh root (ECDSA P-256) in a state directory: root.pem, and
    /// root-key.pem with mode 0600. Refuses to overwrite an existing root.
    Init {
        #[arg(long, default_value = mesh_node::config::DEFAULT_CA_DIR)]
        dir: PathBuf,
        #[arg(long, default_value = mesh_node::config::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Issue a node credential (spiffe://<td>/node/<name>) from the root in --dir: writes
    /// <out>/node.pem, <out>/node-key.pem (0600) and <out>/root.pem. The node key is made
    /// here, on the CA host: move the directory to the node over a secure channel.
    IssueNode {
        #[arg(long, default_value = mesh_node::config::DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// The node's name, as in the mesh config's `nodes`.
        #[arg(long)]
        node: String,
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. 720h or 365d.
        #[arg(long, default_value = "365d", value_parser = mesh_node::ca::parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Serve the CA (gRPC over mutual TLS 1.3) to node daemons until SIGTERM or SIGINT. A
    /// node may obtain SVIDs only for the workloads --config places on it; the file is
    /// reloaded when it changes.
    Serve {
        #[arg(long, default_value = mesh_node::config::DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// The mesh config (the same YAML the nodes run with).
        #[arg(long, env = "MESH_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = mesh_node::ca::DEFAULT_LISTEN)]
        listen: String,
        /// Another name nodes reach the CA by (DNS name or IP) for its serving
        /// certificate, which always holds the address a node connected to. Repeatable.
        #[arg(long)]
        san: Vec<String>,
        /// SVID lifetime when a node does not ask for one.
        #[arg(long, default_value = "24h", value_parser = mesh_node::ca::parse_ttl)]
        default_ttl: std::time::Duration,
        /// Longest SVID lifetime the CA signs.
        #[arg(long, default_value = "7d", value_parser = mesh_node::ca::parse_ttl)]
        max_ttl: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Reloadable, so that the daemon's `/logging` can change the level at run time.
    mesh_node::admin::init_tracing("info", false);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if e.downcast_ref::<mesh_node::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(app::run(&config)),
        Command::Check { config } => {
            let (_, state) = app::load_state(&config)?;
            println!(
                "config {} is valid: node {}, {} workloads ({} on this node)",
                config.display(),
                state.node,
                state.workloads.len(),
                state.local_cgroups().count()
            );
            Ok(())
        }
        Command::Explain { config, from, to } => {
            let config = Config::load(&config)?;
            for line in mesh_node::explain::explain(&config, &from, to)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Uninstall { config, pin_dir } => {
            let pin_dir = match (config, pin_dir) {
                (Some(c), _) => Config::load(&c)?.pin_dir(),
                (None, Some(p)) => p,
                (None, None) => PathBuf::from(mesh_node::config::DEFAULT_PIN_DIR),
            };
            let removed = ebpf::uninstall(&pin_dir)?;
            println!(
                "removed {} pins under {} (programs detached)",
                removed.len(),
                pin_dir.display()
            );
            Ok(())
        }
        Command::Ca {
            command: CaCommand::Init { dir, trust_domain },
        } => {
            let root = mesh_node::identity::ca::CaRoot::init(&dir, &trust_domain)?;
            println!(
                "created the mesh root for {} in {}",
                root.trust_domain(),
                dir.display()
            );
            Ok(())
        }
        Command::Ca {
            command: CaCommand::IssueNode { dir, node, out, ttl },
        } => {
            let issued = mesh_node::ca::issue_node(&dir, &node, &out, ttl)?;
            println!(
                "issued {} in {} (node.pem, node-key.pem, root.pem); move it to node {node}",
                issued.uri,
                out.display()
            );
            Ok(())
        }
        Command::Ca {
            command:
                CaCommand::Serve {
                    dir,
                    config,
                    listen,
                    san,
                    default_ttl,
                    max_ttl,
                },
        } => {
            let options = mesh_node::ca::ServerOptions {
                default_ttl,
                max_ttl,
                sans: san,
                ..Default::default()
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(mesh_node::ca::server::run(&dir, &config, &listen, options))?;
            Ok(())
        }
        Command::Admin(command) => Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(mesh_node::admin::cli::run(command))?),
        Command::Datapath { pin_dir, output } => {
            let maps = ebpf::Maps::open(&mut ebpf::maps::Pinned(&pin_dir))?;
            let counters = maps.counters()?;
            let enrolled = maps.enrolled();
            if output == "json" {
                let json = serde_json::json!({
                    "counters": counters,
                    "enrolled": enrolled.iter().map(|(cg, id)| serde_json::json!({"cgroupId": cg, "workload": id})).collect::<Vec<_>>(),
                    "pendingOrigDsts": maps.pending_orig_dsts(),
                });
                println!("{json}");
            } else {
                println!("enrolled cgroups: {}", enrolled.len());
                for (cg, id) in &enrolled {
                    println!("  cgroup {cg} -> workload #{id}");
                }
                println!("counters:");
                for (name, value) in &counters {
                    println!("  {name:<14} {value}");
                }
            }
            Ok(())
        }
    }
}

/// The error and its causes on one line, without the repetitions that nested library
/// errors produce.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
