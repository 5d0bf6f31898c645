//! `ferry-certs`: creates the development PKI of a local mesh.
//!
//! ```text
//! ferry-certs init --out DIR --node node-a --node node-b [--trust-domain cluster.local] [--san 127.0.0.1]
//! ferry-certs node --dir DIR --node node-c
//! ```
//! `init` writes the root CA (`ca.pem`, `ca-key.pem`), the control plane's
//! server credential and one credential per node (`nodes/<name>.pem`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_pki::{files, Authority, Credential};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, Parser)]
#[command(version = ferry_api::build::LONG_VERSION, about = "Ferry development CA and certificates")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a root CA, the control plane's credential and node credentials.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = ferry_api::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// A node to issue a credential for (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// A DNS name or IP of the control plane (repeatable).
        #[arg(long = "san", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        sans: Vec<String>,
        /// Replace an existing CA in --out.
        #[arg(long)]
        force: bool,
    },
    /// Issue a credential for one more node with an existing CA.
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
    },
}

fn write_node(ca: &Authority, dir: &std::path::Path, node: &str) -> anyhow::Result<()> {
    let (cert, key) = files::node(node);
    ca.issue_node(node, YEAR)?
        .write(&dir.join(&cert), &dir.join(&key))?;
    println!("{}", dir.join(cert).display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Init {
            out,
            trust_domain,
            nodes,
            sans,
            force,
        } => {
            if out.join(files::CA_CERT).exists() && !force {
                anyhow::bail!(
                    "{} already exists: pass --force to replace the CA (every credential it signed stops working)",
                    out.join(files::CA_CERT).display()
                );
            }
            let ca = Authority::generate(&trust_domain, 10 * YEAR)?;
            ca.write(&out)?;
            println!("{}", out.join(files::CA_CERT).display());
            let server: Credential = ca.issue_server(&sans, YEAR)?;
            server.write(
                &out.join(files::CONTROL_PLANE_CERT),
                &out.join(files::CONTROL_PLANE_KEY),
            )?;
            println!("{}", out.join(files::CONTROL_PLANE_CERT).display());
            for node in &nodes {
                write_node(&ca, &out, node)?;
            }
        }
        Command::Node { dir, node } => {
            let ca = Authority::load(&dir)
                .with_context(|| format!("loading the CA from {}", dir.display()))?;
            write_node(&ca, &dir, &node)?;
        }
    }
    Ok(())
}
