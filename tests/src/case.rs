//! One end-to-end case: the sie command L1 runs, the script the L2 guest's
//! /init runs, and the check over what came out.

/// Kernel arguments every L2 guest gets (its case name is appended).
pub fn l2_boot_args(case: &str) -> String {
    format!(
        "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd quiet case={case}"
    )
}

/// What one case produced.
#[derive(Clone, Debug, Default)]
pub struct CaseRun {
    /// sie's exit status, as L1's shell saw it (124 for a timeout).
    pub status: Option<i32>,
    /// Everything sie and the guest printed during the case.
    pub output: String,
    /// L1's clock (seconds since the epoch) when the case started.
    pub started_at: Option<u64>,
    /// How long the case took, by the clock of whoever ran it (whole
    /// seconds in L1).
    pub seconds: Option<u64>,
}

impl CaseRun {
    /// The value of `@@L2 RESULT key=value` lines the guest printed.
    pub fn result(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.output.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("@@L2 RESULT ")?;
            rest.strip_prefix(&prefix).map(|v| v.trim().to_string())
        })
    }

    /// The `@@HANG` line a deadline left (sie's wrapper in L1 and the
    /// direct runner's bin, or the direct runner itself), if any.
    pub fn hang(&self) -> Option<&str> {
        self.output
            .lines()
            .find_map(|line| line.find("@@HANG ").map(|at| line[at..].trim_end()))
    }

    /// The last `lines` lines of the output.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.output.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails unless sie exited with `code`; a hang is called one, with the
    /// console's last lines.
    pub fn expect_status(&self, code: i32) -> Result<(), String> {
        if self.status == Some(code) {
            return Ok(());
        }
        match self.hang() {
            Some(hang) => Err(format!(
                "hang: {hang}; the console ended with:\n{}",
                self.tail(20)
            )),
            None => Err(format!(
                "sie exited with {:?}, expected {code}",
                self.status
            )),
        }
    }
}

/// One case.
pub struct Case {
    /// Unique name; also the L2 guest's `case=` argument.
    pub name: &'static str,
    /// The shell command L1 runs; `$GUEST` is the directory holding
    /// `vmlinux`, `bzImage` and `l2.cpio`. It names its tools by name
    /// (`sie`, `sietool`, `sie-rig`), found on PATH in L1 and directly.
    pub l1_command: String,
    /// The script the L2 guest runs, if any.
    pub l2_script: Option<&'static str>,
    /// Checks the case's result.
    pub check: fn(&CaseRun) -> Result<(), String>,
}

impl Case {
    /// A case that boots L2 with `sie run` and `extra` flags (kernel
    /// `vmlinux` or `bzImage` under `$GUEST`).
    pub fn sie_run(
        name: &'static str,
        kernel: &str,
        extra: &str,
        l2_script: Option<&'static str>,
        check: fn(&CaseRun) -> Result<(), String>,
    ) -> Self {
        Self::sie_run_with_args(name, kernel, extra, &l2_boot_args(name), l2_script, check)
    }

    /// Like [`Case::sie_run`] with an explicit kernel command line.
    pub fn sie_run_with_args(
        name: &'static str,
        kernel: &str,
        extra: &str,
        cmdline: &str,
        l2_script: Option<&'static str>,
        check: fn(&CaseRun) -> Result<(), String>,
    ) -> Self {
        Self {
            name,
            l1_command: format!(
                "sie run --kernel \"$GUEST/{kernel}\" --initrd \"$GUEST/l2.cpio\" --cmdline \"{cmdline}\" {extra}"
            ),
            l2_script,
            check,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_from_marker_lines() {
        let run = CaseRun {
            status: Some(0),
            output: "noise\n@@L2 RESULT cpus=2\r\n@@L2 RESULT x=y z\n".into(),
            started_at: None,
            seconds: None,
        };
        assert_eq!(run.result("cpus").as_deref(), Some("2"));
        assert_eq!(run.result("x").as_deref(), Some("y z"));
        assert_eq!(run.result("nope"), None);
        assert!(run.expect_status(0).is_ok());
        assert!(run.expect_status(4).is_err());
        assert_eq!(run.hang(), None);
        let hung = CaseRun {
            status: Some(143),
            output: "[ 1.0] guest line\r\n@@HANG sie run still running after 90 s: stopped\r\n"
                .into(),
            started_at: None,
            seconds: None,
        };
        let error = hung.expect_status(0).unwrap_err();
        assert!(error.starts_with("hang: @@HANG sie run still running after 90 s"));
        assert!(error.contains("guest line"), "{error}");
    }
}
