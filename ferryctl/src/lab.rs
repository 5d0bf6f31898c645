//! `ferryctl lab`: the local multi-node mesh in network namespaces.

use std::process::ExitCode;

/// Runs the lab tool that sits next to ferryctl.
pub fn run(args: &[String]) -> ExitCode {
    let tool = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("ferry-lab")));
    let Some(tool) = tool.filter(|t| t.is_file()) else {
        eprintln!("ferryctl: ferry-lab not found next to ferryctl: build it with `cargo build --workspace --bins`");
        return ExitCode::from(2);
    };
    match std::process::Command::new(&tool).args(args).status() {
        Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("ferryctl: running {}: {e}", tool.display());
            ExitCode::FAILURE
        }
    }
}
