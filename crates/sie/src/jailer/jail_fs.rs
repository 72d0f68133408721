//! The jail's files: `<chroot base>/<exec name>/<id>/root` with the VMM's
//! executable, the device nodes it opens, and a `run/` directory for its
//! API socket, built from the host side before any namespace is entered.
//!
//! [`JailDir`] owns the `<id>` directory it created: dropped while armed
//! (a later step failed), it removes it again, even from inside the jail
//! after `pivot_root`, through a descriptor of its parent opened beforehand.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::args::JailConfig;
use super::error::{Step, StepError, StepResult};

/// A character device the VMM opens, recreated in the jail.
struct DeviceNode {
    /// Path inside the jail.
    path: &'static str,
    major: u32,
    minor: u32,
}

/// Always created (Firecracker's fixed numbers).
const KVM: DeviceNode = DeviceNode {
    path: "dev/kvm",
    major: 10,
    minor: 232,
};
const TUN: DeviceNode = DeviceNode {
    path: "dev/net/tun",
    major: 10,
    minor: 200,
};
/// Created with the host's numbers when the host has it (its minor is dynamic).
const HOST_USERFAULTFD: &str = "/dev/userfaultfd";

/// The `<id>` directory of a jail being built.
pub struct JailDir {
    /// `<chroot base>/<exec name>/<id>`.
    dir: PathBuf,
    root: PathBuf,
    /// `<chroot base>/<exec name>`, opened before any namespace change.
    parent: OwnedFd,
    id: String,
    armed: bool,
}

impl JailDir {
    /// Creates `<chroot base>/<exec name>/<id>/root`. Refuses an `<id>`
    /// directory that already exists: it belongs to another jail, and is
    /// left alone.
    pub fn create(config: &JailConfig) -> StepResult<Self> {
        let dir = config.jail_dir();
        let parent_path = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&parent_path)
            .step(|| format!("creating {}", parent_path.display()))?;
        let parent: OwnedFd = File::open(&parent_path)
            .step(|| format!("opening {}", parent_path.display()))?
            .into();
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StepError::new(
                    format!("creating {}", dir.display()),
                    "a jail with this id exists already (remove it or pick another --id)",
                ));
            }
            Err(e) => return Err(StepError::io(format!("creating {}", dir.display()), &e)),
        }
        let jail = Self {
            root: config.jail_root(),
            dir,
            parent,
            id: config.id.clone(),
            armed: true,
        };
        make_dir(&jail.root)?;
        Ok(jail)
    }

    /// The VMM's `/`, as the host sees it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Fills the jail: the executable, the device nodes, `run/`, and
    /// `uid:gid` as owner of its root so the VMM can create files there.
    pub fn populate(&self, config: &JailConfig) -> StepResult<()> {
        self.install_exec_file(&config.exec_file, &config.exec_name)?;
        make_dir(&self.root.join("dev"))?;
        make_dir(&self.root.join("dev/net"))?;
        for node in [KVM, TUN] {
            let path = self.root.join(node.path);
            mknod(&path, node.major, node.minor, config.uid, config.gid)?;
        }
        if let Ok(meta) = fs::metadata(HOST_USERFAULTFD) {
            use std::os::unix::fs::MetadataExt;
            let rdev = meta.rdev();
            let path = self.root.join("dev/userfaultfd");
            mknod(
                &path,
                libc::major(rdev),
                libc::minor(rdev),
                config.uid,
                config.gid,
            )?;
        }
        // Firecracker's default API socket is /run/firecracker.socket.
        let run = self.root.join("run");
        make_dir(&run)?;
        chown(&run, config.uid, config.gid)?;
        chown(&self.root, config.uid, config.gid)?;
        check_mount_flags(&self.root)
    }

    fn install_exec_file(&self, exec_file: &Path, exec_name: &str) -> StepResult<()> {
        let target = self.root.join(exec_name);
        let step = || format!("copying {} to {}", exec_file.display(), target.display());
        fs::copy(exec_file, &target).step(step)?;
        // Owned by root, not writable by the VMM; no set-id bits.
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).step(step)?;
        // Checked again as copied: the file may have changed since the
        // first look, and this copy is what will run.
        super::exec_file::check("the executable copied to", &target)
    }

    /// The jail is complete and the VMM runs in it: keep it.
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// Removes the `<id>` directory now (a later step failed).
    pub fn remove(mut self) -> StepResult<()> {
        self.armed = false;
        self.remove_dir()
    }

    fn remove_dir(&self) -> StepResult<()> {
        let step = || format!("removing {}", self.dir.display());
        // Relative to the parent's descriptor, so that this works from
        // inside the jail too, where the host's paths no longer resolve.
        // SAFETY: fchdir on a directory descriptor we own.
        if unsafe { libc::fchdir(self.parent.as_raw_fd()) } != 0 {
            return Err(StepError::last_os(step()));
        }
        fs::remove_dir_all(&self.id).step(step)
    }
}

impl Drop for JailDir {
    fn drop(&mut self) {
        if self.armed
            && let Err(error) = self.remove_dir()
        {
            eprintln!("jailer: {error}");
        }
    }
}

fn make_dir(path: &Path) -> StepResult<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .step(|| format!("creating {}", path.display()))
}

fn c_path(path: &Path) -> StepResult<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StepError::new(format!("{}", path.display()), "path contains a NUL byte"))
}

/// A character device `major:minor`, mode 0600, owned by `uid:gid`.
fn mknod(path: &Path, major: u32, minor: u32, uid: u32, gid: u32) -> StepResult<()> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path; mknod only creates a node.
    let made = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | libc::S_IRUSR | libc::S_IWUSR,
            libc::makedev(major, minor),
        )
    };
    if made != 0 {
        return Err(StepError::last_os(format!("creating {}", path.display())));
    }
    // The umask may have narrowed the mode; 0600 is what the VMM needs.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .step(|| format!("setting the mode of {}", path.display()))?;
    chown(path, uid, gid)
}

fn chown(path: &Path, uid: u32, gid: u32) -> StepResult<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .step(|| format!("giving {} to {uid}:{gid}", path.display()))
}

/// A jail on a `noexec` mount cannot exec the VMM, and on a `nodev` mount
/// its device nodes cannot be opened: say so now rather than fail later
/// with privileges already dropped.
fn check_mount_flags(root: &Path) -> StepResult<()> {
    let c = c_path(root)?;
    // SAFETY: statvfs is plain data; zeroed is a valid initial value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a pointer to a statvfs we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(StepError::last_os(format!("checking {}", root.display())));
    }
    for (flag, name, why) in [
        (libc::ST_NOEXEC, "noexec", "the VMM could not be executed"),
        (
            libc::ST_NODEV,
            "nodev",
            "its device nodes could not be opened",
        ),
    ] {
        if stat.f_flag & flag != 0 {
            return Err(StepError::new(
                format!("checking {}", root.display()),
                format!("on a {name} mount: {why} (pick another --chroot-base-dir)"),
            ));
        }
    }
    Ok(())
}

/// Writes `/<exec name>.pid` (as seen from inside the jail) with `pid`, as
/// Kata and other orchestrators read it.
pub fn write_pid_file(exec_name: &str, pid: libc::pid_t) -> StepResult<()> {
    let path = format!("/{exec_name}.pid");
    fs::write(&path, format!("{pid}")).step(|| format!("writing {path}"))
}
