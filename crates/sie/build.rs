//! Links the `sie` executable at a fixed address (not as a position-
//! independent executable) on x86_64 Linux with glibc, when dynamically
//! linked (issue #15, README "Memory per VM").
//!
//! A PIE's loader relocates every pointer in its read-only data (vtables,
//! tables of `&str`) at start, so each sie process holds its own private,
//! anonymous copy of that data: 96 KiB, the same in every VM. Linked at a
//! fixed address, those pages need no relocation and stay clean, shared
//! copies of the file, which the giving back once the VM runs drops too.
//! The price is that sie's own code and data no longer move with
//! address-space randomisation (its libraries, heap, stacks and guest
//! memory still do). The static build made for the jail (`+crt-static`,
//! see README "Building") stays a static PIE, randomised as before.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_crt = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|feature| feature == "crt-static");
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && !static_crt
    {
        // rustc links with `-pie`; the driver honours the last of the two.
        println!("cargo::rustc-link-arg-bins=-no-pie");
    }
}
