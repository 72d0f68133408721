//! Pure parsers for the host files the probe reads, so they are tested on
//! synthetic text.

/// The CPU flags of the first `flags` line of `/proc/cpuinfo`, or `None`
/// when there is no such line.
pub fn cpu_flags(cpuinfo: &str) -> Option<Vec<String>> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "flags").then(|| value.split_whitespace().map(str::to_owned).collect())
    })
}

/// A boolean module parameter as sysfs shows it: `Y`/`N` for bool
/// parameters, `1`/`0` for integer ones (kvm_intel's `nested`). Other
/// integers count as enabled when non-zero; anything else is `None`.
pub fn param_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "Y" | "y" => Some(true),
        "N" | "n" => Some(false),
        other => other.parse::<i64>().ok().map(|n| n != 0),
    }
}

/// The selected mode of a sysfs choice file such as
/// `transparent_hugepage/enabled` (`always [madvise] never` → `madvise`).
pub fn bracketed_choice(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let len = text.get(start..)?.find(']')?;
    text.get(start..start + len).map(str::to_owned)
}

/// The page size in KiB of a `/sys/kernel/mm/hugepages` entry name
/// (`hugepages-2048kB` → 2048).
pub fn hugepage_size_kib(dir_name: &str) -> Option<u64> {
    dir_name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()
}

/// A decimal counter file (`nr_hugepages`, `free_hugepages`).
pub fn counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_come_from_the_first_flags_line() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vmx sse2\n\
                    processor\t: 1\nflags\t\t: fpu\n";
        let flags = cpu_flags(text).unwrap();
        assert_eq!(flags, ["fpu", "vmx", "sse2"]);
    }

    #[test]
    fn cpu_flags_absent_is_none_and_similar_keys_are_ignored() {
        assert_eq!(cpu_flags("vmx flags\t: fpu\nbugs\t: spectre\n"), None);
        assert_eq!(cpu_flags(""), None);
        assert_eq!(cpu_flags("flags\t:\n").unwrap().len(), 0);
    }

    #[test]
    fn module_parameters_parse_y_n_and_numbers() {
        assert_eq!(param_bool("Y\n"), Some(true));
        assert_eq!(param_bool("N\n"), Some(false));
        assert_eq!(param_bool("1\n"), Some(true));
        assert_eq!(param_bool("0"), Some(false));
        assert_eq!(param_bool("2"), Some(true));
        assert_eq!(param_bool("maybe"), None);
        assert_eq!(param_bool(""), None);
    }

    #[test]
    fn bracketed_choice_finds_the_selected_mode() {
        assert_eq!(
            bracketed_choice("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(
            bracketed_choice("[always] never").as_deref(),
            Some("always")
        );
        assert_eq!(bracketed_choice("always never"), None);
        assert_eq!(bracketed_choice("[unterminated"), None);
    }

    #[test]
    fn hugepage_directory_names_give_sizes() {
        assert_eq!(hugepage_size_kib("hugepages-2048kB"), Some(2048));
        assert_eq!(hugepage_size_kib("hugepages-1048576kB"), Some(1_048_576));
        assert_eq!(hugepage_size_kib("hugepages-2048"), None);
        assert_eq!(hugepage_size_kib("other"), None);
        assert_eq!(counter("12\n"), Some(12));
        assert_eq!(counter("x"), None);
    }
}
