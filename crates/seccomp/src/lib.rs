//! sie's seccomp filters: one per kind of thread sie runs, so a thread that
//! is subverted can only make the system calls its job needs.
//!
//! The policy is data, `policy/x86_64.json` in seccompiler's JSON format
//! (one filter per thread kind: `vmm`, `api`, `vcpu`, `uffd`, `blk`,
//! `build` and `migration`); build.rs compiles it to BPF, so a broken policy fails the
//! build. A user's policy in the same format replaces it
//! (`--seccomp-filter FILE`); one without a `uffd`, `blk` or `migration` filter
//! (Firecracker's have neither) gives those threads the `vmm` filter, and
//! `build` is optional. Each thread installs its own filter with
//! [`Seccomp::install`]: the vCPU, API, page-fault (`uffd`) and drive
//! worker threads as they start, the VMM thread once the VM is built and
//! its vCPUs run (building needs far more than serving). Before that, in
//! Firecracker mode, the VMM thread runs the `build` filter, which refuses
//! only what no VMM needs (exec, ptrace, mounts and namespaces, modules, uid
//! changes...); threads started afterwards inherit it and stack their own
//! on it, and the VMM thread's own is stacked on it after the build. A
//! system call outside the filter traps (SIGSYS); the handler in [`sigsys`]
//! reports which call on which thread kind and exits with [`EXIT_SECCOMP`].
//!
//! ```no_run
//! use sie_seccomp::{Seccomp, ThreadKind};
//!
//! let filters = Seccomp::builtin();
//! std::thread::spawn(move || {
//!     filters.install(ThreadKind::Api).expect("seccomp");
//!     // ... serve, with only the API thread's system calls allowed
//! });
//! ```

pub mod sigsys;
mod test_hook;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use seccompiler::{BpfProgram, sock_filter};

pub use sigsys::{EXIT_SECCOMP, denied_count};

// The built-in policy, compiled by build.rs: `VMM`, `API`, `VCPU`, `UFFD`,
// `BLK`, `BUILD`, `MIGRATION`.
include!(concat!(env!("OUT_DIR"), "/policy.rs"));

/// The kinds of thread sie runs, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop, device backends, control plane.
    Vmm,
    /// `fc_api`: the HTTP server on the API socket.
    Api,
    /// `fc_vcpu N`: runs the guest and handles its exits.
    Vcpu,
    /// `sie_uffd`: serves guest page faults from a memory file (the Lazy
    /// snapshot-restore backend).
    Uffd,
    /// `sie-blk N`: a drive's Sync engine (pread, pwrite, fsync).
    Blk,
    /// The main thread in Firecracker mode before the VM is built:
    /// everything but the calls no VMM needs. Every later filter is stacked
    /// on it.
    Build,
    /// `sie-migrate`: a live migration's stream (guest memory out or in,
    /// over a Unix socket or TCP).
    Migration,
}

impl ThreadKind {
    /// Every kind, in the order of [`ThreadKind::index`].
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Uffd,
        ThreadKind::Blk,
        ThreadKind::Build,
        ThreadKind::Migration,
    ];

    /// The kind's key in a policy file.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Uffd => "uffd",
            ThreadKind::Blk => "blk",
            ThreadKind::Build => "build",
            ThreadKind::Migration => "migration",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a policy was refused or a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The policy file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a policy seccompiler compiles.
    #[error("{} is not a seccomp policy", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// seccompiler's complaint.
        #[source]
        source: seccompiler::Error,
    },
    /// A thread kind has no filter.
    #[error("{}: no `{kind}` filter (sie needs vmm, api, vcpu and uffd)", path.display())]
    MissingKind {
        /// The file.
        path: PathBuf,
        /// The missing kind.
        kind: &'static str,
    },
    /// A filter for a thread kind sie does not have.
    #[error("{}: unknown thread kind `{kind}` (sie has vmm, api, vcpu, uffd, blk, build and migration)", path.display())]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// The key.
        kind: String,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error("installing the {} thread's seccomp filter", kind.name())]
    Install {
        /// Whose filter.
        kind: ThreadKind,
        /// The kernel's answer.
        #[source]
        source: seccompiler::Error,
    },
}

/// The filters for every thread kind, or none (`--no-seccomp`). Cheap to
/// clone: every thread gets its own handle.
#[derive(Clone, Debug, Default)]
pub struct Seccomp {
    /// Indexed by [`ThreadKind::index`]; an empty program installs nothing.
    programs: Option<Arc<[BpfProgram; 7]>>,
}

impl Seccomp {
    /// No filters: [`Seccomp::install`] does nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// sie's own policy.
    pub fn builtin() -> Self {
        let program = |table: &[sock_filter]| table.to_vec();
        Self {
            programs: Some(Arc::new([
                program(VMM),
                program(API),
                program(VCPU),
                program(UFFD),
                program(BLK),
                program(BUILD),
                program(MIGRATION),
            ])),
        }
    }

    /// A user's policy from `path`, in the built-in policy's JSON format,
    /// with a filter for each of `vmm`, `api` and `vcpu`, optionally `uffd`,
    /// `blk` and `migration` (the `vmm` filter when absent) and `build` (without it the
    /// VMM thread is unfiltered until built), and no other.
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        let json = std::fs::read(path).map_err(|source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&json, path)
    }

    /// Compiles a policy; `path` names it in errors.
    pub fn from_json(json: &[u8], path: &Path) -> Result<Self, SeccompError> {
        let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(|e| {
            SeccompError::Parse {
                path: path.to_path_buf(),
                source: e.into(),
            }
        })?;
        let mut map =
            seccompiler::compile_from_json(json, arch).map_err(|source| SeccompError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let mut take = |kind: ThreadKind| {
            map.remove(kind.name())
                .ok_or_else(|| SeccompError::MissingKind {
                    path: path.to_path_buf(),
                    kind: kind.name(),
                })
        };
        let vmm = take(ThreadKind::Vmm)?;
        let api = take(ThreadKind::Api)?;
        let vcpu = take(ThreadKind::Vcpu)?;
        let uffd = take(ThreadKind::Uffd).unwrap_or_else(|_| vmm.clone());
        let blk = take(ThreadKind::Blk).unwrap_or_else(|_| vmm.clone());
        let build = take(ThreadKind::Build).unwrap_or_default();
        let migration = take(ThreadKind::Migration).unwrap_or_else(|_| vmm.clone());
        let programs = [vmm, api, vcpu, uffd, blk, build, migration];
        if let Some(kind) = map.into_keys().next() {
            return Err(SeccompError::UnknownKind {
                path: path.to_path_buf(),
                kind,
            });
        }
        Ok(Self {
            programs: Some(Arc::new(programs)),
        })
    }

    /// True unless disabled.
    pub fn is_enabled(&self) -> bool {
        self.programs.is_some()
    }

    /// Installs `kind`'s filter on the calling thread (and the SIGSYS
    /// reporter, once per process). Threads the caller starts afterwards
    /// inherit the filter, so start them first.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(program) = self.programs.as_ref().map(|p| &p[kind.index()]) else {
            return Ok(());
        };
        if program.is_empty() {
            // A user's policy without this (optional) kind.
            return Ok(());
        }
        sigsys::install_handler().map_err(SeccompError::Handler)?;
        sigsys::set_thread_kind(kind);
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { kind, source })?;
        test_hook::forbidden_syscall_if_asked(kind);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
