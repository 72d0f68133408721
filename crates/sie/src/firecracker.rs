//! sie started with Firecracker's flags (no subcommand), so tools written
//! for Firecracker can start sie in its place, including through a link
//! named `firecracker`: the REST API on `--api-sock` (Firecracker's default
//! path when no flag says otherwise), or `--no-api --config-file`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sie_config::{Request, VmConfig};
use sie_vmm::controller::{self, LoggerControl, Reply, RequestSource, ServeOptions, Served};
use sie_vmm::{BuildOptions, VmOutcome};
use vmm_sys_util::eventfd::EventFd;

use crate::cli::FirecrackerArgs;
use crate::logging::Logging;

type BoxError = Box<dyn std::error::Error>;

use sie_config::FIRECRACKER_API_VERSION;

/// Where Firecracker puts its API socket when `--api-sock` is not given.
const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// Firecracker's default instance id.
const DEFAULT_ID: &str = "anonymous-instance";

/// Metrics are written this often without being asked (Firecracker's period).
const METRICS_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum FirecrackerModeError {
    #[error("--no-api needs --config-file FILE")]
    NoConfig,
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error(transparent)]
    MmdsSizeLimit(#[from] crate::metadata::SizeLimitError),
    #[error("--http-api-max-payload-size {0} is out of range")]
    PayloadSize(u64),
    #[error("{0}")]
    Id(#[from] sie_config::IdError),
    #[error("--level")]
    Level(#[source] crate::logging::LogError),
    #[error("--log-path")]
    LogPath(#[source] crate::logging::LogError),
    #[error("logger: {0}")]
    Logger(String),
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
/// `firecracker` (Kata parses it as `Firecracker vX.Y.Z`), then sie's own,
/// naming the Firecracker API it serves.
pub fn version_text(as_firecracker: bool) -> String {
    let sie = format!(
        "sie {} (Firecracker API {FIRECRACKER_API_VERSION})",
        env!("CARGO_PKG_VERSION")
    );
    if as_firecracker {
        format!("Firecracker v{FIRECRACKER_API_VERSION}\n{sie}\n")
    } else {
        format!("{sie}\n")
    }
}

/// Requests from the API server's thread.
struct ApiSource(sie_api::ApiHandle);

impl RequestSource for ApiSource {
    fn wake_fd(&self) -> &EventFd {
        self.0.wake_fd()
    }

    fn publish(&mut self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.publish()?)
    }

    fn next_request(&mut self) -> Option<(Request, Reply)> {
        let call = self.0.try_recv()?;
        let reply = call.reply;
        Some((
            call.request,
            Box::new(move |response| {
                // The client may have gone; the VMM does not care.
                let _ = reply.send(response);
            }),
        ))
    }
}

impl Drop for ApiSource {
    fn drop(&mut self) {
        // Closes every connection and removes the socket file.
        self.0.stop_server();
    }
}

/// The logger fields given as flags (`--show-level`, `--show-log-origin`,
/// `--module`); a flag that is absent leaves its field as it is.
fn logger_flags(args: &FirecrackerArgs) -> sie_config::Logger {
    sie_config::Logger {
        log_path: None,
        level: None,
        show_level: args.show_level.then_some(true),
        show_log_origin: args.show_log_origin.then_some(true),
        module: args.module.clone(),
    }
}

/// A clock's reading in microseconds.
fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(clock, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000
}

/// How long since the jailer started, wall and CPU, in µs, from the
/// jailer's `--start-time-us`, `--start-time-cpu-us` and
/// `--parent-cpu-time-us` (the process CPU clock survives the exec; with a
/// new PID namespace the child's starts again, so the parent's is added).
fn startup_since_jailer(args: &FirecrackerArgs) -> Option<(u64, u64)> {
    let wall = clock_us(libc::CLOCK_MONOTONIC).saturating_sub(args.start_time_us?);
    let cpu = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
        .saturating_sub(args.start_time_cpu_us.unwrap_or(0))
        .saturating_add(args.parent_cpu_time_us.unwrap_or(0));
    Some((wall, cpu))
}

/// The metadata store: `--mmds-size-limit` bytes at most (default: the
/// API payload limit, as in Firecracker), filled from `--metadata FILE`.
fn metadata_store(
    args: &FirecrackerArgs,
    max_payload: usize,
) -> Result<sie_mmds::SharedMmds, FirecrackerModeError> {
    let limit = crate::metadata::size_limit(args.mmds_size_limit, max_payload)?;
    Ok(crate::metadata::store(args.metadata.as_deref(), limit)?)
}

/// Runs sie as Firecracker would run with these flags.
pub fn run(args: FirecrackerArgs, start: Instant) -> Result<u8, BoxError> {
    if args.version {
        print!("{}", version_text(started_as_firecracker()));
        return Ok(0);
    }
    if args.snapshot_version {
        println!("v{}", sie_vmm::snapshot::format_version());
        return Ok(0);
    }
    if let Some(path) = &args.describe_snapshot {
        println!("v{}", sie_vmm::snapshot::describe(path)?);
        return Ok(0);
    }
    let id = args.id.clone().unwrap_or_else(|| DEFAULT_ID.to_string());
    sie_config::validate_instance_id(&id).map_err(FirecrackerModeError::Id)?;
    let mut logging = Logging::init(args.level.as_deref().unwrap_or("Warning"))
        .map_err(FirecrackerModeError::Level)?;
    logging.serve_as_firecracker(&id);
    if let Some(path) = &args.log_path {
        logging
            .set_path(path)
            .map_err(FirecrackerModeError::LogPath)?;
    }
    logging
        .configure(&logger_flags(&args))
        .map_err(FirecrackerModeError::Logger)?;
    if let Some((wall_us, cpu_us)) = startup_since_jailer(&args) {
        tracing::info!("started {wall_us} µs after the jailer ({cpu_us} µs of CPU)");
    }
    let initial_config = match &args.config_file {
        Some(path) => {
            let config = VmConfig::from_file(path)?;
            config.validate()?;
            // Its logger and metrics sections are applied by the controller
            // before the VM is built, as PUT /logger and PUT /metrics are.
            Some(config)
        }
        None if args.no_api => return Err(FirecrackerModeError::NoConfig.into()),
        None => None,
    };
    let max_payload = match args.http_api_max_payload_size {
        Some(size) => usize::try_from(size)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(FirecrackerModeError::PayloadSize(size))?,
        None => sie_api::DEFAULT_MAX_PAYLOAD,
    };
    let mmds = metadata_store(&args, max_payload)?;
    let seccomp = crate::run::seccomp_filters(args.no_seccomp, args.seccomp_filter.as_deref())?;
    let kvm = crate::run::open_hypervisor()?;

    // Threads inherit the signal mask: block the stop signals before the
    // API thread starts, so they reach the VMM thread's signalfd and stop
    // sie cleanly instead of killing it from whichever thread they hit.
    drop(sie_vmm::block_stop_signals()?);
    let mut server = None;
    let mut source: Box<dyn RequestSource> = if args.no_api {
        Box::new(controller::NoRequests::new()?)
    } else {
        let path = args
            .api_sock
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCK));
        let bound = sie_api::ApiServer::bind(
            &path,
            sie_api::ServerOptions {
                max_payload,
                version: FIRECRACKER_API_VERSION.to_string(),
                ..sie_api::ServerOptions::default()
            },
        )?;
        // The socket file appears once the VMM is ready to answer (serve
        // publishes it): the thread's filter goes on meanwhile.
        let (handle, thread) = bound.with_seccomp(seccomp.clone()).spawn_unpublished()?;
        let stats = handle.stats();
        server = Some((thread, stats));
        Box::new(ApiSource(handle))
    };
    // From here on this thread serves requests: filtered before the first,
    // with the build filter (all but what no VMM needs) until the VM is
    // built and its own, narrow one is stacked on it. Installed after the
    // API thread started, which runs only its own.
    seccomp.install(sie_seccomp::ThreadKind::Build)?;
    let api_stats = server.as_ref().map(|(_, stats)| stats.clone());
    let logging_metrics = logging.clone();
    let served = controller::serve(
        &kvm,
        source.as_mut(),
        ServeOptions {
            id,
            vmm_version: FIRECRACKER_API_VERSION.to_string(),
            start,
            initial_config,
            initial_restore: None,
            build_options: Box::new(move || BuildOptions::new(start)),
            logger: Some(Box::new(logging)),
            metrics_path: args.metrics_path.clone(),
            external_metrics: Box::new(move || {
                let mut sections = serde_json::Map::new();
                if let Some(stats) = &api_stats {
                    sections.insert("api".into(), stats.snapshot());
                }
                sections.insert("logger".into(), logging_metrics.metrics());
                sections.insert(
                    "seccomp".into(),
                    serde_json::json!({ "num_faults": sie_seccomp::denied_count() }),
                );
                sections
            }),
            metrics_period: METRICS_PERIOD,
            console_input: true,
            serial: args.console.serial()?,
            dump_on_panic: args.console.dump_on_panic.clone(),
            enable_pci: args.enable_pci,
            seccomp,
            mmds,
            // Only a sie with an API can be asked to migrate.
            migration_worker: server.is_some(),
        },
    );
    // Stop serving before anything else: the socket file goes away and no
    // client waits on a VMM that is leaving.
    drop(source);
    if let Some((thread, _)) = server {
        let _ = thread.join();
    }
    let code = match served? {
        Served::Finished(finished) => {
            crate::run::report_outcome(&finished.outcome);
            let code = u8::try_from(finished.outcome.exit_code()).unwrap_or(u8::MAX);
            finished.exit_fast();
            code
        }
        Served::NeverStarted(outcome) => {
            let outcome = outcome.unwrap_or(VmOutcome::Shutdown);
            crate::run::report_outcome(&outcome);
            u8::try_from(outcome.exit_code()).unwrap_or(u8::MAX)
        }
    };
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logger_flags_set_only_what_is_given() {
        use clap::Parser;
        let parse = |flags: &[&str]| {
            let mut argv = vec!["firecracker"];
            argv.extend_from_slice(flags);
            logger_flags(&crate::cli::Cli::parse_from(argv).firecracker)
        };
        let none = parse(&["--api-sock", "/tmp/x.sock"]);
        assert_eq!((none.show_level, none.show_log_origin), (None, None));
        assert_eq!(none.module, None);
        let all = parse(&["--show-level", "--show-log-origin", "--module", "sie_api"]);
        assert_eq!(all.show_level, Some(true));
        assert_eq!(all.show_log_origin, Some(true));
        assert_eq!(all.module.as_deref(), Some("sie_api"));
    }

    #[test]
    fn version_text_leads_with_firecracker_only_under_that_name() {
        let text = version_text(true);
        let first = text.lines().next().unwrap();
        assert_eq!(first, format!("Firecracker v{FIRECRACKER_API_VERSION}"));
        let second = text.lines().nth(1).unwrap();
        assert!(second.starts_with("sie "), "{second}");
        assert!(second.ends_with(&format!("(Firecracker API {FIRECRACKER_API_VERSION})")));
        assert_eq!(text.lines().count(), 2);
        assert_eq!(version_text(false), format!("{second}\n"));
    }
}
