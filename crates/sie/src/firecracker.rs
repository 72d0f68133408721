//! sie started with Firecracker's flags (no subcommand), so tools written
//! for Firecracker can start sie in its place, including through a link
//! named `firecracker`.
//!
//! This first slice boots from `--no-api --config-file`; serving the REST
//! API on `--api-sock` comes with the control-plane work.

use std::time::Instant;

use crate::cli::{FirecrackerArgs, RunArgs};

type BoxError = Box<dyn std::error::Error>;

/// The Firecracker release whose API and flags sie follows.
pub const FIRECRACKER_COMPAT_VERSION: &str = "1.10.1";

#[derive(Debug, thiserror::Error)]
enum FirecrackerModeError {
    #[error("the Firecracker API is not served yet: start with --no-api --config-file FILE")]
    ApiNotServed,
    #[error("--no-api needs --config-file FILE")]
    NoConfig,
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    #[error("invalid --level {0:?}: expected Error, Warning, Info, Debug, Trace or Off")]
    Level(String),
}

/// True when this process was started through a name (or link) `firecracker`.
pub fn started_as_firecracker() -> bool {
    std::env::args_os()
        .next()
        .and_then(|argv0| {
            std::path::Path::new(&argv0)
                .file_name()
                .map(|n| n.to_string_lossy().starts_with("firecracker"))
        })
        .unwrap_or(false)
}

/// What `--version` prints: Firecracker's line first when started as
/// `firecracker` (Kata parses it), then sie's own.
pub fn version_text(as_firecracker: bool) -> String {
    let sie = format!("sie {}", env!("CARGO_PKG_VERSION"));
    if as_firecracker {
        format!("Firecracker v{FIRECRACKER_COMPAT_VERSION}\n{sie} (Firecracker-compatible)\n")
    } else {
        format!("{sie}\n")
    }
}

/// sie's log level name for Firecracker's.
fn log_level(level: &str) -> Result<String, FirecrackerModeError> {
    let name = match level.to_ascii_lowercase().as_str() {
        "error" => "error",
        "warning" | "warn" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        "off" => "error",
        _ => return Err(FirecrackerModeError::Level(level.to_string())),
    };
    Ok(name.to_string())
}

/// Runs sie as Firecracker would run with these flags.
pub fn run(args: FirecrackerArgs, start: Instant) -> Result<u8, BoxError> {
    if args.version {
        print!("{}", version_text(started_as_firecracker()));
        return Ok(0);
    }
    if args.seccomp_filter.is_some() {
        return Err(
            FirecrackerModeError::Unsupported("--seccomp-filter (custom seccomp filters)").into(),
        );
    }
    if args.metadata.is_some() {
        return Err(FirecrackerModeError::Unsupported("--metadata (MMDS)").into());
    }
    if args.metrics_path.is_some() {
        return Err(FirecrackerModeError::Unsupported("--metrics-path (metrics)").into());
    }
    if args.log_path.is_some() {
        return Err(FirecrackerModeError::Unsupported("--log-path (logging to a file)").into());
    }
    if !args.no_api {
        return Err(FirecrackerModeError::ApiNotServed.into());
    }
    let config_file = args.config_file.ok_or(FirecrackerModeError::NoConfig)?;
    let log_level = match &args.level {
        Some(level) => log_level(level)?,
        None => "warn".to_string(),
    };
    crate::run::run(
        RunArgs {
            kernel: None,
            initrd: None,
            cmdline: None,
            memory: None,
            vcpus: None,
            stats: false,
            config_file: Some(config_file),
            no_host_decompress: false,
            log_level,
        },
        start,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text_leads_with_firecracker_only_under_that_name() {
        let text = version_text(true);
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("Firecracker v1."), "{first}");
        assert!(text.lines().nth(1).unwrap().starts_with("sie "));
        assert!(version_text(false).starts_with("sie "));
    }

    #[test]
    fn firecracker_levels_map_to_sie_levels() {
        assert_eq!(log_level("Warning").unwrap(), "warn");
        assert_eq!(log_level("TRACE").unwrap(), "trace");
        assert!(log_level("loud").is_err());
    }
}
