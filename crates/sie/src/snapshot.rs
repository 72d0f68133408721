//! `sie snapshot`: commands on snapshot files, with no VM. Today one:
//! `rebase DIFF_MEM BASE_MEM` merges a Diff memory file onto its base
//! (`sie_vmm::snapshot::rebase` does the work).

use crate::cli::RebaseArgs;

/// Merges `args.diff` onto `args.base` and says how much it copied.
pub fn rebase(args: &RebaseArgs) -> Result<u8, Box<dyn std::error::Error>> {
    let copied = sie_vmm::snapshot::rebase::rebase(&args.diff, &args.base)?;
    println!(
        "merged {copied} bytes of {} into {}",
        args.diff.display(),
        args.base.display()
    );
    Ok(0)
}
