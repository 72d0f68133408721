//! Dropping root: no supplementary groups, then the given gid and uid
//! (real, effective and saved), no way to gain privileges back through
//! exec, and a check that no capability is left.
//!
//! Linux clears the permitted and effective capability sets when a process
//! whose uids were all 0 sets them all to non-zero values (unless it asked
//! for PR_SET_KEEPCAPS, which the jailer never does); the check makes sure.

use super::error::{StepError, StepResult};

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// This process's (effective, permitted) capability sets, as 64-bit masks.
pub fn capabilities() -> StepResult<(u64, u64)> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a version-3 header and room for its two words.
    let got = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if got != 0 {
        return Err(StepError::last_os("reading this process's capabilities"));
    }
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Becomes `uid:gid` for good, with no capabilities.
pub fn drop_to(uid: libc::uid_t, gid: libc::gid_t) -> StepResult<()> {
    // SAFETY: an empty group list; the pointer is not read for size 0.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(StepError::last_os("dropping supplementary groups"));
    }
    // SAFETY: setresgid has no memory effects.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(StepError::last_os(format!("switching to gid {gid}")));
    }
    // SAFETY: setresuid has no memory effects.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(StepError::last_os(format!("switching to uid {uid}")));
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(StepError::last_os("setting no_new_privs"));
    }
    let (effective, permitted) = capabilities()?;
    if effective != 0 || permitted != 0 {
        return Err(StepError::new(
            format!("dropping to {uid}:{gid}"),
            format!("capabilities remain (effective {effective:#x}, permitted {permitted:#x})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn capget_agrees_with_proc_status() {
        let (effective, permitted) = super::capabilities().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
        };
        assert_eq!(effective, field("CapEff:"));
        assert_eq!(permitted, field("CapPrm:"));
    }
}
