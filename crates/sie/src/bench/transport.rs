//! The virtio transport a guest bench runs over (`--transport`): virtio-MMIO,
//! virtio-PCI (`sie run --pci`), or both side by side; and what a run says
//! about the transport's cost: the device's own exits, read from
//! `sie run --stats`' device table.

/// One transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// virtio-MMIO: an ISA line per device, registers in a 4 KiB window.
    Mmio,
    /// virtio-PCI with MSI-X.
    Pci,
}

impl Transport {
    /// The transports `--transport` names (`mmio`, `pci` or `both`).
    pub fn chosen(choice: &str) -> Vec<Transport> {
        match choice {
            "mmio" => vec![Transport::Mmio],
            "pci" => vec![Transport::Pci],
            _ => vec![Transport::Mmio, Transport::Pci],
        }
    }

    /// Its name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Mmio => "mmio",
            Transport::Pci => "pci",
        }
    }

    /// `sie run` flags for this transport (with `--stats` for the exit
    /// counts), and `cmdline` as the guest needs it: a PCI guest must not
    /// get `pci=off`.
    pub fn run_args(self, cmdline: &str) -> (Vec<String>, String) {
        let mut flags = vec!["--stats".to_string()];
        let cmdline = match self {
            Transport::Mmio => cmdline.to_string(),
            Transport::Pci => {
                flags.push("--pci".to_string());
                cmdline
                    .split_whitespace()
                    .filter(|word| *word != "pci=off")
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        (flags, cmdline)
    }

    /// Exits the device's registers caused during a run: reads and writes
    /// of the `device` rows of `--stats` (virtio-MMIO: the device's own
    /// window, named `prefix…`; virtio-PCI: the BAR windows, where every
    /// virtio-PCI device's registers are). Queue notifications go through
    /// ioeventfds and are not exits on either.
    pub fn device_exits(self, stats: &str, prefix: &str) -> Option<u64> {
        let table = stats.split("\ndevices\n").nth(1)?;
        let mut total = None;
        for line in table.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(name), Some(reads), Some(writes)) =
                (fields.next(), fields.next(), fields.next())
            else {
                break;
            };
            let ours = match self {
                Transport::Mmio => name.starts_with(prefix),
                Transport::Pci => name.starts_with("pci-mmio"),
            };
            if ours {
                let (Ok(reads), Ok(writes)) = (reads.parse::<u64>(), writes.parse::<u64>()) else {
                    break;
                };
                total = Some(total.unwrap_or(0) + reads + writes);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "sie exit statistics\n  exit kind count\n  total 17\ndevices\n  device                reads     writes    median µs       p99 µs\n  com1                      0         16         0.48        36.86\n  virtio-blk:bench         40         12         1.00         2.00\n  pci-mmio64                7          9         1.00         2.00\nboot markers\n  none\n";

    #[test]
    fn each_transport_counts_its_own_device_rows() {
        assert_eq!(Transport::Mmio.device_exits(STATS, "virtio-blk:"), Some(52));
        assert_eq!(Transport::Pci.device_exits(STATS, "virtio-blk:"), Some(16));
        assert_eq!(Transport::Mmio.device_exits(STATS, "virtio-net:"), None);
        assert_eq!(Transport::Mmio.device_exits("no table", "x"), None);
    }

    #[test]
    fn a_pci_run_gets_the_flag_and_loses_pci_off() {
        let (flags, cmdline) = Transport::Pci.run_args("console=ttyS0 pci=off quiet");
        assert_eq!(flags, ["--stats", "--pci"]);
        assert_eq!(cmdline, "console=ttyS0 quiet");
        let (flags, cmdline) = Transport::Mmio.run_args("a pci=off");
        assert_eq!((flags.len(), cmdline.as_str()), (1, "a pci=off"));
        assert_eq!(Transport::chosen("both").len(), 2);
        assert_eq!(Transport::chosen("pci"), [Transport::Pci]);
    }
}
