//! `ferryctl`: operator tooling that runs the control plane's own code.
//!
//! `ferryctl check --manifests DIR` validates a folder exactly as the
//! control plane would: exit 0 when clean, 1 with one line per problem
//! (file, object and field) otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_control_plane::source::manifests::ManifestSource;
use ferry_control_plane::translate::{TranslateOptions, Translator};

#[derive(Debug, Parser)]
#[command(version, about = "Ferry operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a folder of manifests as the control plane would.
    Check {
        #[arg(long)]
        manifests: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { manifests } => check(manifests),
    }
}

fn check(dir: PathBuf) -> ExitCode {
    if !dir.is_dir() {
        eprintln!(
            "ferryctl: --manifests {}: not a readable folder",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let mut source = ManifestSource::new(&dir);
    let events = match source.rescan() {
        Ok((events, _)) => events,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let objects = events.len();
    let mut translator = Translator::new(TranslateOptions::default());
    let changes = translator.apply(events);
    let problems = source.problems();
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        eprintln!(
            "ok: {objects} objects, {} resources ({} policies not yet compiled)",
            changes.len(),
            translator.policy_count()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}
