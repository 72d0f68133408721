//! Whole-image tests: synthetic bzImages around a tiny ELF (headers cut or
//! hostile, cache hits, misses, damaged entries and eviction), and the
//! machine's own Debian kernel when one is installed.

use std::io::Write;

use super::*;

/// A minimal ELF64 x86_64 header padded to 4 KiB.
fn tiny_elf() -> Vec<u8> {
    let mut elf = vec![0u8; 4096];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[18..20].copy_from_slice(&62u16.to_le_bytes());
    elf
}

/// A bzImage (protocol 2.15, one setup sector) carrying `payload`.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
    image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    image.extend_from_slice(&[0u8; 0x40]);
    image.extend_from_slice(payload);
    image
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Writes `image` to a file in `dir` and opens it.
fn image_file(dir: &std::path::Path, image: &[u8]) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("bzImage");
    std::fs::write(&path, image).unwrap();
    std::fs::File::open(path).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sie-vmlinux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_payload_is_found_through_the_header() {
    let image = bzimage(&gzip(&tiny_elf()));
    let payload = find_payload(&image).unwrap();
    assert_eq!(payload.compression, Compression::Gzip);
    assert_eq!(payload.offset, 1024 + 0x40);
}

#[test]
fn header_problems_are_named() {
    let good = bzimage(&gzip(&tiny_elf()));
    assert!(matches!(find_payload(&good[..1100]), Err(Error::Truncated)));
    let mut old = good.clone();
    old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
    let error = find_payload(&old).unwrap_err();
    assert!(matches!(error, Error::OldProtocol(0x0206)));
    assert!(error.classic_boot_is_safe());
    let mut beyond = good.clone();
    beyond[0x248..0x24c].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(find_payload(&beyond), Err(Error::Truncated)));
    assert!(matches!(find_payload(b"\x7fELF"), Err(Error::NotBzImage)));
    let mut empty = good.clone();
    empty[0x24c..0x250].copy_from_slice(&0u32.to_le_bytes());
    let error = find_payload(&empty).unwrap_err();
    assert!(matches!(error, Error::NoPayload));
    assert!(error.classic_boot_is_safe());
    let mut unknown = bzimage(b"not compressed at all");
    unknown[0x24c] = 21;
    assert!(matches!(
        find_payload(&unknown),
        Err(Error::UnknownCompression)
    ));
}

#[test]
fn every_cut_of_a_bzimage_is_an_error_not_a_panic() {
    let image = bzimage(&gzip(&tiny_elf()));
    for cut in 0..image.len() {
        let error = find_payload(&image[..cut]).unwrap_err();
        // Cut inside the setup header, it is no bzImage; after, its
        // payload runs past the end.
        if cut < 0x26c {
            assert!(matches!(error, Error::NotBzImage), "cut at {cut}: {error}");
            assert!(!is_bzimage(&image[..cut]));
        } else {
            assert!(matches!(error, Error::Truncated), "cut at {cut}: {error}");
        }
    }
    assert!(find_payload(&image).is_ok());
}

#[test]
fn hostile_header_values_do_not_panic() {
    let base = bzimage(&gzip(&tiny_elf()));
    for i in 0x1f1..0x26c {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut image = base.clone();
            image[i] = v;
            let _ = find_payload(&image);
        }
    }
    // The payload fields at their largest.
    for (at, value) in [
        (0x248, u32::MAX),
        (0x24c, u32::MAX),
        (0x248, u32::MAX - 0x100),
    ] {
        let mut image = base.clone();
        image[at..at + 4].copy_from_slice(&value.to_le_bytes());
        assert!(matches!(find_payload(&image), Err(Error::Truncated)));
    }
}

#[test]
fn a_file_cut_inside_its_setup_header_is_truncated_for_the_cache() {
    let dir = scratch("cut");
    let cache = KernelCache::new(dir.join("cache"));
    let image = bzimage(&gzip(&tiny_elf()));
    let error = cache
        .vmlinux_for(&mut image_file(&dir, &image[..0x260]))
        .unwrap_err();
    assert!(matches!(error, Error::Truncated), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_miss_decompresses_and_stores_then_a_hit_reads_the_cache() {
    let dir = scratch("hit");
    let cache = KernelCache::new(dir.join("cache"));
    let mut image = image_file(&dir, &bzimage(&gzip(&tiny_elf())));
    let first = cache.vmlinux_for(&mut image).unwrap();
    assert!(!first.hit);
    assert_eq!(first.compression, Some(Compression::Gzip));
    let path = first.path.clone().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), tiny_elf());
    let second = cache.vmlinux_for(&mut image).unwrap();
    assert!(second.hit);
    assert_eq!(second.compression, Some(Compression::Gzip));
    assert_eq!(second.path, Some(path.clone()));
    // A damaged entry is rebuilt.
    std::fs::write(&path, b"junk").unwrap();
    let third = cache.vmlinux_for(&mut image).unwrap();
    assert!(!third.hit);
    assert_eq!(std::fs::read(&path).unwrap(), tiny_elf());
    // A rewritten bzImage is a new version: it misses.
    drop(image);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut image = image_file(&dir, &bzimage(&gzip(&tiny_elf())));
    assert!(!cache.vmlinux_for(&mut image).unwrap().hit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_cache_still_gives_a_kernel() {
    let cache = KernelCache::new("/proc/sie-cannot-write-here");
    let dir = scratch("unusable");
    let kernel = cache
        .vmlinux_for(&mut image_file(&dir, &bzimage(&gzip(&tiny_elf()))))
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(kernel.path.is_none());
    let mut bytes = Vec::new();
    let mut file = kernel.file;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).unwrap();
    std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
    assert_eq!(bytes, tiny_elf());
}

#[test]
fn corrupt_and_non_elf_payloads_are_errors() {
    let dir = scratch("corrupt");
    let cache = KernelCache::new(dir.join("cache"));
    let mut payload = gzip(&tiny_elf());
    let len = payload.len();
    payload[len / 2] ^= 0xff;
    payload[len / 2 + 1] ^= 0xff;
    let error = cache
        .vmlinux_for(&mut image_file(&dir.join("a"), &bzimage(&payload)))
        .unwrap_err();
    assert!(!error.classic_boot_is_safe(), "{error}");
    let error = cache
        .vmlinux_for(&mut image_file(
            &dir.join("b"),
            &bzimage(&gzip(b"not an elf")),
        ))
        .unwrap_err();
    assert!(matches!(error, Error::NotElf));
    let error = cache
        .vmlinux_for(&mut image_file(&dir.join("c"), b"\x7fELF short"))
        .unwrap_err();
    assert!(matches!(error, Error::Truncated | Error::NotBzImage));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_installed_debian_kernel_decompresses_when_there_is_one() {
    let Some(path) = std::fs::read_dir("/boot").ok().and_then(|entries| {
        entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
    }) else {
        eprintln!(
            "SKIPPED-RESOURCE: no /boot/vmlinuz-* on this machine, so the real-kernel \
             decompression was not tested here (the rig's cases boot one)"
        );
        return;
    };
    let mut image = std::fs::File::open(&path).unwrap();
    let dir = scratch("debian");
    let cache = KernelCache::new(&dir);
    let kernel = cache.vmlinux_for(&mut image).unwrap();
    assert_eq!(kernel.compression, Some(Compression::Xz));
    let mut head = [0u8; 64];
    let mut file = kernel.file;
    std::io::Read::read_exact(&mut file, &mut head).unwrap();
    assert!(is_elf64_x86(&head), "{}", path.display());
    // The real kernel's entry passes the whole-ELF check: the next boot hits.
    let again = cache.vmlinux_for(&mut image).unwrap();
    assert!(again.hit, "{}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The files in `dir` whose names end with `suffix`.
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect()
}

#[test]
fn an_entry_is_a_vmlinux_and_its_record_and_no_temporary_is_left() {
    let dir = scratch("entry");
    let cache = KernelCache::new(dir.join("cache"));
    let mut image = image_file(&dir, &bzimage(&gzip(&tiny_elf())));
    let kernel = cache.vmlinux_for(&mut image).unwrap();
    let path = kernel.path.unwrap();
    let record = std::fs::read_to_string(path.with_extension("record")).unwrap();
    assert_eq!(record, "gzip 4096\n");
    let mut names: Vec<String> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].ends_with(".record") && names[1].ends_with(".vmlinux"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_entry_that_disagrees_with_its_record_is_rebuilt() {
    let dir = scratch("stale");
    let cache = KernelCache::new(dir.join("cache"));
    let mut image = image_file(&dir, &bzimage(&gzip(&tiny_elf())));
    let path = cache.vmlinux_for(&mut image).unwrap().path.unwrap();
    let record = path.with_extension("record");
    let longer = [tiny_elf(), vec![0]].concat();
    // What is done to the entry, and to which of its files.
    let damage: [(&str, &std::path::Path, Option<&[u8]>); 5] = [
        ("record lost", &record, None),
        ("record garbled", &record, Some(b"gzip")),
        ("vmlinux cut", &path, Some(&tiny_elf()[..100])),
        ("vmlinux grown", &path, Some(&longer)),
        ("vmlinux not an ELF", &path, Some(&[0u8; 4096])),
    ];
    for (what, file, contents) in damage {
        match contents {
            Some(bytes) => std::fs::write(file, bytes).unwrap(),
            None => std::fs::remove_file(file).unwrap(),
        }
        let kernel = cache.vmlinux_for(&mut image).unwrap();
        assert!(!kernel.hit, "{what}: hit");
        assert_eq!(std::fs::read(&path).unwrap(), tiny_elf(), "{what}");
        assert!(
            cache.vmlinux_for(&mut image).unwrap().hit,
            "{what}: not rebuilt"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hit_marks_the_entry_used() {
    let dir = scratch("used");
    let cache = KernelCache::new(dir.join("cache"));
    let mut image = image_file(&dir, &bzimage(&gzip(&tiny_elf())));
    let path = cache.vmlinux_for(&mut image).unwrap().path.unwrap();
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    assert!(cache.vmlinux_for(&mut image).unwrap().hit);
    let used = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert!(used > long_ago + std::time::Duration::from_secs(3600));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writing_entries_beyond_the_limit_evicts_the_least_recently_used() {
    let dir = scratch("evict");
    let cache = KernelCache::new(dir.join("cache"));
    // Distinct files are distinct bzImage versions: one entry each.
    let mut images: Vec<_> = (0..=MAX_ENTRIES)
        .map(|i| image_file(&dir.join(i.to_string()), &bzimage(&gzip(&tiny_elf()))))
        .collect();
    let mut paths = Vec::new();
    for (i, image) in images.iter_mut().enumerate() {
        let kernel = cache.vmlinux_for(image).unwrap();
        assert!(!kernel.hit);
        let path = kernel.path.unwrap();
        // Ages apart by an hour each, whatever the clock's granularity.
        let used = std::time::SystemTime::now()
            - std::time::Duration::from_secs(3600 * (MAX_ENTRIES - i) as u64);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(used)
            .unwrap();
        paths.push(path);
    }
    assert_eq!(files_ending(cache.dir(), ".vmlinux").len(), MAX_ENTRIES);
    assert_eq!(files_ending(cache.dir(), ".record").len(), MAX_ENTRIES);
    assert!(!paths[0].exists(), "the least recently used entry stayed");
    assert!(paths[1..].iter().all(|p| p.exists()));
    let _ = std::fs::remove_dir_all(&dir);
}
