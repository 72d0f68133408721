//! The VM's cgroup: `<hierarchy>/<parent cgroup>/<id>`, created, given the
//! `--cgroup FILE=VALUE` settings, and joined by the jailer (so the VMM it
//! becomes, and its threads, start inside it).
//!
//! cgroup v1 (Firecracker's default): one cgroup per hierarchy holding a
//! controller named by a `--cgroup` file (`cpu` for `cpu.shares`), found in
//! /proc/self/mountinfo; a new cpuset cgroup gets its parent's CPUs and
//! memory nodes, which cpuset requires before a process may join. cgroup v2:
//! one cgroup in the unified hierarchy; the controllers the files need are
//! enabled in `cgroup.subtree_control` of every cgroup above it.
//!
//! [`CgroupPlacement`] can undo itself (move back, remove what it created)
//! through descriptors opened beforehand, so also from inside the jail.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::args::{CgroupSetting, CgroupVersion, JailConfig};
use super::error::{Step, StepError, StepResult};

/// A mounted cgroup hierarchy.
#[derive(Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup at the mount point, as /proc/self/cgroup names cgroups.
    pub mount_root: String,
    /// v1 controllers (from the super options); empty for v2.
    pub controllers: Vec<String>,
    pub version: CgroupVersion,
}

/// Parses /proc/self/mountinfo into its cgroup hierarchies.
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fstype)) =
            (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let version = match *fstype {
            "cgroup" => CgroupVersion::V1,
            "cgroup2" => CgroupVersion::V2,
            _ => continue,
        };
        let controllers = match version {
            CgroupVersion::V1 => right
                .get(2)
                .map(|o| o.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            CgroupVersion::V2 => Vec::new(),
        };
        found.push(Hierarchy {
            mount_point: PathBuf::from(unescape(mount_point)),
            mount_root: unescape(root),
            controllers,
            version,
        });
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup this process is in within `hierarchy`, from /proc/self/cgroup.
pub fn current_cgroup(proc_cgroup: &str, hierarchy: &Hierarchy) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = match hierarchy.version {
            CgroupVersion::V2 => controllers.is_empty(),
            CgroupVersion::V1 => {
                !controllers.is_empty()
                    && controllers
                        .split(',')
                        .all(|c| hierarchy.controllers.iter().any(|h| h == c))
            }
        };
        matches.then(|| path.to_string())
    })
}

/// Where the jailer put itself in one hierarchy, and how to undo it.
struct Joined {
    /// The hierarchy's mount point, opened before entering the jail.
    mount: OwnedFd,
    /// The cgroup the jailer came from, relative to the mount point.
    came_from: PathBuf,
    /// Directories the jailer created, relative to the mount point, outermost first.
    created: Vec<PathBuf>,
}

/// The VM's cgroups, one per hierarchy touched.
pub struct CgroupPlacement {
    joined: Vec<Joined>,
    armed: bool,
}

impl CgroupPlacement {
    /// The VMM runs: keep the cgroups.
    pub fn keep(mut self) {
        self.armed = false;
    }

    /// A later step failed: move back and remove the cgroups created.
    /// Best effort (a cgroup still holding another process stays).
    pub fn undo(mut self) {
        self.armed = false;
        self.undo_all();
    }

    fn undo_all(&mut self) {
        for joined in self.joined.drain(..).rev() {
            let _ = write_at(
                &joined.mount,
                &joined.came_from.join("cgroup.procs"),
                &own_pid(),
            );
            for dir in joined.created.iter().rev() {
                if let Ok(c) = CString::new(dir.as_os_str().as_bytes()) {
                    // SAFETY: unlinkat on a descriptor we own and a valid path.
                    unsafe {
                        libc::unlinkat(joined.mount.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR)
                    };
                }
            }
        }
    }
}

impl Drop for CgroupPlacement {
    fn drop(&mut self) {
        if self.armed {
            self.undo_all();
        }
    }
}

fn own_pid() -> String {
    std::process::id().to_string()
}

/// Writes `text` to `path` relative to the directory `dir`.
fn write_at(dir: &OwnedFd, path: &Path, text: &str) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: openat with a directory descriptor we own and a valid path;
    // the returned descriptor is owned by the File below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.write_all(text.as_bytes())
}

fn write_file(path: &Path, text: &str) -> StepResult<()> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .step(|| format!("writing {text:?} to {}", path.display()))
}

/// `cgroup` as a path relative to its hierarchy's mount point.
fn relative_to_mount(cgroup: &str, hierarchy: &Hierarchy) -> PathBuf {
    let inside = cgroup
        .strip_prefix(hierarchy.mount_root.trim_end_matches('/'))
        .unwrap_or(cgroup);
    PathBuf::from(inside.trim_start_matches('/'))
}

/// Without `--cgroup-version`: v1 (Firecracker's default) where the host
/// mounts any v1 hierarchy, v2 on a host with the unified hierarchy only.
pub fn default_version(all: &[Hierarchy]) -> CgroupVersion {
    if all.iter().any(|h| h.version == CgroupVersion::V1) {
        CgroupVersion::V1
    } else {
        CgroupVersion::V2
    }
}

/// Creates the VM's cgroups, writes the settings and joins them. Nothing
/// to do without `--cgroup` (and, for v2, without `--parent-cgroup`).
pub fn place(config: &JailConfig) -> StepResult<Option<CgroupPlacement>> {
    if config.cgroups.is_empty() && !config.parent_cgroup_given {
        return Ok(None);
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .step(|| "reading /proc/self/mountinfo".to_string())?;
    let all = hierarchies(&mountinfo);
    let version = config
        .cgroup_version
        .unwrap_or_else(|| default_version(&all));
    if config.cgroups.is_empty() && version == CgroupVersion::V1 {
        // v1 cgroups are per controller: with no file named, none is needed.
        return Ok(None);
    }
    let proc_cgroup =
        fs::read_to_string("/proc/self/cgroup").step(|| "reading /proc/self/cgroup".to_string())?;
    // Each hierarchy with the settings that go to it.
    let mut targets: Vec<(&Hierarchy, Vec<&CgroupSetting>)> = Vec::new();
    match version {
        CgroupVersion::V1 => {
            for setting in &config.cgroups {
                let controller = setting.controller();
                let hierarchy = all
                    .iter()
                    .find(|h| {
                        h.version == CgroupVersion::V1
                            && h.controllers.iter().any(|c| c == controller)
                    })
                    .ok_or_else(|| {
                        StepError::new(
                            format!("--cgroup {}", setting.file),
                            format!(
                                "no cgroup v1 hierarchy with the {controller} controller is mounted"
                            ),
                        )
                    })?;
                match targets
                    .iter_mut()
                    .find(|(h, _)| std::ptr::eq(*h, hierarchy))
                {
                    Some((_, settings)) => settings.push(setting),
                    None => targets.push((hierarchy, vec![setting])),
                }
            }
        }
        CgroupVersion::V2 => {
            let hierarchy = all
                .iter()
                .find(|h| h.version == CgroupVersion::V2)
                .ok_or_else(|| {
                    StepError::new("--cgroup-version 2", "no cgroup2 file system is mounted")
                })?;
            targets.push((hierarchy, config.cgroups.iter().collect()));
        }
    }
    let mut placement = CgroupPlacement {
        joined: Vec::new(),
        armed: true,
    };
    for (hierarchy, settings) in targets {
        let came_from = current_cgroup(&proc_cgroup, hierarchy).ok_or_else(|| {
            StepError::new(
                format!(
                    "finding this process's cgroup under {}",
                    hierarchy.mount_point.display()
                ),
                "not listed in /proc/self/cgroup",
            )
        })?;
        let mount: OwnedFd = File::open(&hierarchy.mount_point)
            .step(|| format!("opening {}", hierarchy.mount_point.display()))?
            .into();
        let relative = config.parent_cgroup.join(&config.id);
        placement.joined.push(Joined {
            mount,
            came_from: relative_to_mount(&came_from, hierarchy),
            created: Vec::new(),
        });
        let joined = placement
            .joined
            .last_mut()
            .ok_or_else(|| StepError::new("cgroup", "lost"))?;
        join_one(hierarchy, &relative, &settings, joined)?;
    }
    Ok(Some(placement))
}

/// Creates `relative` under `hierarchy`, configures it and moves in.
fn join_one(
    hierarchy: &Hierarchy,
    relative: &Path,
    settings: &[&CgroupSetting],
    joined: &mut Joined,
) -> StepResult<()> {
    let base = &hierarchy.mount_point;
    let mut partial = PathBuf::new();
    for component in relative.components() {
        let above = base.join(&partial);
        if hierarchy.version == CgroupVersion::V2 {
            enable_controllers(&above, settings)?;
        }
        partial.push(component);
        let dir = base.join(&partial);
        match fs::create_dir(&dir) {
            Ok(()) => {
                joined.created.push(partial.clone());
                if hierarchy.controllers.iter().any(|c| c == "cpuset") {
                    inherit_cpuset(&above, &dir)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(StepError::io(
                    format!("creating cgroup {}", dir.display()),
                    &e,
                ));
            }
        }
    }
    let dir = base.join(relative);
    for setting in settings {
        write_file(&dir.join(&setting.file), &setting.value)?;
    }
    write_file(&dir.join("cgroup.procs"), &own_pid())
}

/// cgroup v2 makes a controller's files appear in a child only once the
/// parent lists it in `cgroup.subtree_control`.
fn enable_controllers(dir: &Path, settings: &[&CgroupSetting]) -> StepResult<()> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).step(|| format!("reading {}", control.display()))?;
    for setting in settings {
        let controller = setting.controller();
        if controller == "cgroup" || enabled.split_whitespace().any(|c| c == controller) {
            continue;
        }
        write_file(&control, &format!("+{controller}"))?;
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no
/// process may join it until they are set: copy its parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> StepResult<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = fs::read_to_string(dir.join(file)).unwrap_or_default();
        if mine.trim().is_empty() {
            let from = parent.join(file);
            let value = fs::read_to_string(&from).step(|| format!("reading {}", from.display()))?;
            write_file(&dir.join(file), value.trim())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:20 / /sys rw - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 /process_api /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_controllers_and_the_v2_mount() {
        let found = hierarchies(MOUNTINFO);
        assert_eq!(found.len(), 4);
        assert_eq!(found[0].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(found[0].controllers, ["rw", "cpu"]);
        assert_eq!(found[1].mount_root, "/process_api");
        assert_eq!(found[3].version, CgroupVersion::V2);
        assert_eq!(
            found[3].mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn current_cgroup_is_read_per_hierarchy() {
        let found = hierarchies(MOUNTINFO);
        let proc_cgroup = "4:memory:/process_api/abc\n2:cpu,cpuacct:/\n1:cpu:/x\n0::/user.slice\n";
        let memory = current_cgroup(proc_cgroup, &found[1]).unwrap();
        assert_eq!(memory, "/process_api/abc");
        assert_eq!(relative_to_mount(&memory, &found[1]), PathBuf::from("abc"));
        assert_eq!(current_cgroup(proc_cgroup, &found[0]).unwrap(), "/x");
        assert_eq!(current_cgroup(proc_cgroup, &found[2]).unwrap(), "/");
        assert_eq!(
            current_cgroup(proc_cgroup, &found[3]).unwrap(),
            "/user.slice"
        );
    }

    #[test]
    fn the_default_version_is_1_unless_only_v2_is_mounted() {
        assert_eq!(default_version(&hierarchies(MOUNTINFO)), CgroupVersion::V1);
        let unified = "34 30 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(default_version(&hierarchies(unified)), CgroupVersion::V2);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
