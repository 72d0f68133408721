//! The jailer's command line (Firecracker's jailer flags) and its
//! validation into a [`JailConfig`] that the later steps trust.
//!
//! ```text
//! jailer --id ID --exec-file PATH --uid N --gid N [--chroot-base-dir DIR]
//!        [--netns PATH] [--daemonize] [--new-pid-ns] [--cgroup-version 1|2]
//!        [--cgroup FILE=VALUE]... [--parent-cgroup PATH]
//!        [--resource-limit fsize=N|no-file=N]... [-- VMM FLAGS...]
//! ```

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use clap::Args;

/// Where jails are built when `--chroot-base-dir` is not given (Firecracker's default).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// The open-file limit set when no `--resource-limit no-file=N` is given
/// (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// Longest `--id`, characters (Firecracker's limit).
pub const MAX_ID_LEN: usize = 64;

/// Firecracker's jailer flags.
#[derive(Debug, Args)]
pub struct JailerArgs {
    /// The VM's unique id: letters, digits and hyphens, 1 to 64 characters.
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// The VMM to run in the jail (a statically linked sie).
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The user the VMM runs as (a number, not 0).
    #[arg(long, value_name = "UID")]
    pub uid: String,
    /// The group the VMM runs as (a number, not 0).
    #[arg(long, value_name = "GID")]
    pub gid: String,
    /// Jails are built in `<DIR>/<exec-file name>/<id>/root`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,
    /// A network namespace to join (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Start a new session and send stdin, stdout and stderr to /dev/null.
    #[arg(long)]
    pub daemonize: bool,
    /// Run the VMM as pid 1 of a new PID namespace.
    #[arg(long)]
    pub new_pid_ns: bool,
    /// Cgroup hierarchy for `--cgroup`: 1 or 2 [default: 1 where the host
    /// mounts any v1 hierarchy (as Firecracker), else 2].
    #[arg(long, value_name = "1|2")]
    pub cgroup_version: Option<String>,
    /// A cgroup file to write, `FILE=VALUE` (e.g. `cpu.max=50000`); repeatable.
    #[arg(long, value_name = "FILE=VALUE")]
    pub cgroup: Vec<String>,
    /// The cgroup, relative to the hierarchy's root, under which `<id>` is
    /// created [default: the exec-file name].
    #[arg(long, value_name = "PATH")]
    pub parent_cgroup: Option<PathBuf>,
    /// `fsize=BYTES` or `no-file=N` (repeatable) [default: no-file=2048].
    #[arg(long, value_name = "RESOURCE=VALUE")]
    pub resource_limit: Vec<String>,
    /// The VMM's own flags, after `--`.
    #[arg(last = true, value_name = "VMM FLAGS")]
    pub vmm_args: Vec<OsString>,
}

/// Which cgroup hierarchy the jailer writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The file in the VM's cgroup, e.g. `cpu.max`.
    pub file: String,
    pub value: String,
}

impl CgroupSetting {
    /// The controller the file belongs to (`cpu` for `cpu.max`).
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// The checked jailer configuration.
#[derive(Debug)]
pub struct JailConfig {
    pub id: String,
    pub exec_file: PathBuf,
    /// The exec file's name: the jail's subfolder and the VMM's path in it.
    pub exec_name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    /// `None`: chosen from what the host mounts.
    pub cgroup_version: Option<CgroupVersion>,
    pub cgroups: Vec<CgroupSetting>,
    /// Relative to the hierarchy's root.
    pub parent_cgroup: PathBuf,
    /// Whether `--parent-cgroup` was given (a cgroup is then made even
    /// without `--cgroup`).
    pub parent_cgroup_given: bool,
    pub fsize: Option<u64>,
    pub no_file: u64,
    pub vmm_args: Vec<OsString>,
}

impl JailConfig {
    /// `<chroot base>/<exec name>/<id>`: what the jailer creates and what a
    /// failure removes.
    pub fn jail_dir(&self) -> PathBuf {
        self.chroot_base.join(&self.exec_name).join(&self.id)
    }

    /// `<chroot base>/<exec name>/<id>/root`: the VMM's `/`.
    pub fn jail_root(&self) -> PathBuf {
        self.jail_dir().join("root")
    }
}

/// A flag's value was refused; the message names the flag and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(pub String);

fn refuse(message: impl Into<String>) -> ArgsError {
    ArgsError(message.into())
}

/// Checks an id like Firecracker does: letters, digits and hyphens, 1..=64.
pub fn validate_id(id: &str) -> Result<(), ArgsError> {
    if id.is_empty() || id.chars().count() > MAX_ID_LEN {
        return Err(refuse(format!(
            "--id {id:?}: must be 1 to {MAX_ID_LEN} characters"
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(refuse(format!(
            "--id {id:?}: {bad:?} is not allowed (letters, digits and hyphens only)"
        )));
    }
    Ok(())
}

fn parse_id_number(flag: &str, text: &str) -> Result<u32, ArgsError> {
    let number: u32 = text
        .parse()
        .map_err(|_| refuse(format!("{flag} {text:?}: not a number")))?;
    if number == 0 {
        // setresuid(0) keeps every capability: the VMM would not be jailed.
        return Err(refuse(format!(
            "{flag} 0: the VMM must not run as root (pick an unprivileged id)"
        )));
    }
    if number == u32::MAX {
        // (uid_t)-1 means "leave unchanged" to setresuid.
        return Err(refuse(format!("{flag} {number}: not a valid id")));
    }
    Ok(number)
}

fn parse_cgroup(text: &str) -> Result<CgroupSetting, ArgsError> {
    let (file, value) = text
        .split_once('=')
        .ok_or_else(|| refuse(format!("--cgroup {text:?}: expected FILE=VALUE")))?;
    let valid_file = !file.is_empty()
        && file.contains('.')
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid_file {
        return Err(refuse(format!(
            "--cgroup {text:?}: {file:?} is not a cgroup file name (like cpu.max)"
        )));
    }
    if value.is_empty() {
        return Err(refuse(format!("--cgroup {text:?}: empty value")));
    }
    Ok(CgroupSetting {
        file: file.to_string(),
        value: value.to_string(),
    })
}

/// A relative path that stays inside the cgroup hierarchy.
fn check_parent_cgroup(path: &Path) -> Result<(), ArgsError> {
    let inside = path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().next().is_some();
    if inside {
        Ok(())
    } else {
        Err(refuse(format!(
            "--parent-cgroup {}: must be a relative path without `..`",
            path.display()
        )))
    }
}

/// `fsize=N` or `no-file=N`.
fn parse_resource_limit(text: &str) -> Result<(&str, u64), ArgsError> {
    let (name, value) = text.split_once('=').ok_or_else(|| {
        refuse(format!(
            "--resource-limit {text:?}: expected RESOURCE=VALUE"
        ))
    })?;
    if !matches!(name, "fsize" | "no-file") {
        return Err(refuse(format!(
            "--resource-limit {text:?}: unknown resource {name:?} (fsize or no-file)"
        )));
    }
    let value = value.parse().map_err(|_| {
        refuse(format!(
            "--resource-limit {text:?}: {value:?} is not a number"
        ))
    })?;
    Ok((name, value))
}

impl JailerArgs {
    /// Checks every flag; nothing on the host is changed.
    pub fn validate(self) -> Result<JailConfig, ArgsError> {
        validate_id(&self.id)?;
        let uid = parse_id_number("--uid", &self.uid)?;
        let gid = parse_id_number("--gid", &self.gid)?;
        let exec_name = self
            .exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.ends_with(".pid"))
            .ok_or_else(|| {
                refuse(format!(
                    "--exec-file {}: needs a UTF-8 file name",
                    self.exec_file.display()
                ))
            })?
            .to_string();
        if !self.chroot_base_dir.is_absolute() {
            return Err(refuse(format!(
                "--chroot-base-dir {}: must be an absolute path",
                self.chroot_base_dir.display()
            )));
        }
        if self
            .chroot_base_dir
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(refuse(format!(
                "--chroot-base-dir {}: must not contain `..`",
                self.chroot_base_dir.display()
            )));
        }
        let cgroup_version = match self.cgroup_version.as_deref() {
            None => None,
            Some("1") => Some(CgroupVersion::V1),
            Some("2") => Some(CgroupVersion::V2),
            Some(other) => {
                return Err(refuse(format!(
                    "--cgroup-version {other:?}: must be 1 or 2"
                )));
            }
        };
        let cgroups = self
            .cgroup
            .iter()
            .map(|c| parse_cgroup(c))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(parent) = &self.parent_cgroup {
            check_parent_cgroup(parent)?;
        }
        let mut fsize = None;
        let mut no_file = DEFAULT_NO_FILE;
        for limit in &self.resource_limit {
            match parse_resource_limit(limit)? {
                ("fsize", value) => fsize = Some(value),
                (_, value) => no_file = value,
            }
        }
        Ok(JailConfig {
            id: self.id,
            parent_cgroup_given: self.parent_cgroup.is_some(),
            parent_cgroup: self
                .parent_cgroup
                .unwrap_or_else(|| PathBuf::from(&exec_name)),
            exec_file: self.exec_file,
            exec_name,
            uid,
            gid,
            chroot_base: self.chroot_base_dir,
            netns: self.netns,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            cgroup_version,
            cgroups,
            fsize,
            no_file,
            vmm_args: self.vmm_args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: JailerArgs,
    }

    fn parse(flags: &[&str]) -> Result<JailConfig, String> {
        let mut argv = vec!["jailer"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .args
            .validate()
            .map_err(|e| e.to_string())
    }

    const BASE: [&str; 8] = [
        "--id",
        "vm-1",
        "--exec-file",
        "/usr/bin/sie",
        "--uid",
        "123",
        "--gid",
        "100",
    ];

    fn with(extra: &[&str]) -> Result<JailConfig, String> {
        let mut flags = BASE.to_vec();
        flags.extend_from_slice(extra);
        parse(&flags)
    }

    #[test]
    fn defaults_are_firecrackers() {
        let config = with(&[]).unwrap();
        assert_eq!(config.chroot_base, PathBuf::from("/srv/jailer"));
        assert_eq!(
            config.jail_root(),
            PathBuf::from("/srv/jailer/sie/vm-1/root")
        );
        assert_eq!(config.no_file, 2048);
        assert_eq!(config.fsize, None);
        assert_eq!(config.cgroup_version, None);
        assert_eq!(config.parent_cgroup, PathBuf::from("sie"));
        assert!(!config.parent_cgroup_given);
        assert!(config.vmm_args.is_empty());
    }

    #[test]
    fn everything_after_the_double_dash_goes_to_the_vmm() {
        let config = with(&[
            "--daemonize",
            "--",
            "--api-sock",
            "/a.sock",
            "--level",
            "Info",
        ])
        .unwrap();
        assert!(config.daemonize);
        assert_eq!(
            config.vmm_args,
            ["--api-sock", "/a.sock", "--level", "Info"]
        );
    }

    #[test]
    fn ids_are_letters_digits_and_hyphens_up_to_64() {
        assert!(validate_id("551e7604-e35c-42b3-b825-416853441234").is_ok());
        assert!(validate_id(&"a".repeat(64)).is_ok());
        assert!(validate_id(&"a".repeat(65)).is_err());
        assert!(validate_id("").is_err());
        for bad in ["a_b", "../x", "a/b", "a b", "é"] {
            let error = validate_id(bad).unwrap_err().to_string();
            assert!(error.contains("not allowed"), "{bad}: {error}");
        }
    }

    #[test]
    fn uid_and_gid_must_be_unprivileged_numbers() {
        let mut flags = BASE.to_vec();
        flags[5] = "root";
        assert!(
            parse(&flags)
                .unwrap_err()
                .contains("--uid \"root\": not a number")
        );
        flags[5] = "0";
        assert!(parse(&flags).unwrap_err().contains("must not run as root"));
        flags[5] = "123";
        flags[7] = "-1";
        assert!(parse(&flags).is_err());
    }

    #[test]
    fn cgroups_are_file_equals_value() {
        let config = with(&[
            "--cgroup",
            "cpu.max=50000 100000",
            "--cgroup",
            "pids.max=10",
        ])
        .unwrap();
        assert_eq!(config.cgroups.len(), 2);
        assert_eq!(config.cgroups[0].controller(), "cpu");
        assert_eq!(config.cgroups[0].value, "50000 100000");
        for bad in ["cpu.max", "../x=1", "cpu/x.y=1", "cpu.max=", "max=1"] {
            assert!(with(&["--cgroup", bad]).is_err(), "{bad}");
        }
        assert!(
            with(&["--cgroup-version", "3"])
                .unwrap_err()
                .contains("1 or 2")
        );
        let v2 = with(&["--cgroup-version", "2", "--parent-cgroup", "vms/fast"]).unwrap();
        assert_eq!(v2.cgroup_version, Some(CgroupVersion::V2));
        assert_eq!(v2.parent_cgroup, PathBuf::from("vms/fast"));
        assert!(v2.parent_cgroup_given);
        assert!(with(&["--parent-cgroup", "../up"]).is_err());
        assert!(with(&["--parent-cgroup", "/abs"]).is_err());
    }

    #[test]
    fn resource_limits_are_fsize_and_no_file() {
        let config = with(&[
            "--resource-limit",
            "fsize=250000000",
            "--resource-limit",
            "no-file=1024",
        ])
        .unwrap();
        assert_eq!((config.fsize, config.no_file), (Some(250_000_000), 1024));
        assert!(
            with(&["--resource-limit", "nproc=3"])
                .unwrap_err()
                .contains("unknown resource")
        );
        assert!(with(&["--resource-limit", "fsize=big"]).is_err());
    }

    #[test]
    fn chroot_base_must_be_absolute() {
        assert!(
            with(&["--chroot-base-dir", "jails"])
                .unwrap_err()
                .contains("absolute")
        );
        assert!(with(&["--chroot-base-dir", "/srv/../etc"]).is_err());
    }
}
