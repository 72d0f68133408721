//! `sie bench exits`: the cost of one VM exit through sie's full dispatch
//! (bus lookup, device, observatory) against a bare `KVM_RUN` loop that does
//! nothing but answer, both measured in the same invocation on the same guest.
//!
//! The guest (`sie_guests::EXITS`) makes N port writes, N port reads and N
//! MMIO writes, separating the phases with port 0x80 markers; the time
//! between two markers divided by N is the round trip of one exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sie_config::{BootSource, MachineConfig, VmConfig};
use sie_devices::BusDevice;
use sie_hv::kvm::Kvm;
use sie_obs::{ExitKind, MarkerSource, VcpuStats};
use sie_vmm::{BuildOptions, ConsoleOutput, ExtraDevice};

use super::median;
use crate::cli::BenchExitsArgs;
use crate::embedded_guest::EmbeddedGuest;

type BoxError = Box<dyn std::error::Error>;

/// Phase markers the guest writes to port 0x80, in order.
const PHASE_MARKERS: [u64; 4] = [0xE1, 0xE2, 0xE3, 0xE4];
/// What each phase measures.
const PHASES: [&str; 3] = ["port write", "port read", "MMIO write"];

/// A device that accepts everything, so the benchmark port goes through the
/// ordinary device path rather than the unclaimed-address slow path.
struct NullDevice;

impl BusDevice for NullDevice {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

fn config(guest: &EmbeddedGuest, count: u32) -> VmConfig {
    let mut config = VmConfig::new(BootSource {
        kernel_image_path: guest.path(),
        boot_args: Some(format!("count={count}")),
        initrd_path: None,
    });
    config.machine_config = Some(MachineConfig {
        mem_size_mib: 32,
        ..MachineConfig::default()
    });
    config
}

/// Per-exit cost of each phase, from the marker times.
fn phase_costs(times: &[(u64, Duration)], count: u32) -> Result<[f64; 3], BoxError> {
    let find = |value: u64| {
        times
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, at)| *at)
            .ok_or_else(|| format!("the bench guest did not write marker {value:#x}"))
    };
    let mut costs = [0.0; 3];
    for (phase, cost) in costs.iter_mut().enumerate() {
        let from = find(PHASE_MARKERS[phase])?;
        let to = find(PHASE_MARKERS[phase + 1])?;
        *cost = to.saturating_sub(from).as_nanos() as f64 / f64::from(count.max(1));
    }
    Ok(costs)
}

pub fn measure_full(kvm: &Kvm, guest: &EmbeddedGuest, count: u32) -> Result<[f64; 3], BoxError> {
    let start = Instant::now();
    let finished = sie_vmm::run(
        kvm,
        config(guest, count),
        BuildOptions {
            start,
            console: ConsoleOutput::new(Box::new(std::io::sink())),
            extra_pio: vec![ExtraDevice {
                name: "bench-null",
                base: sie_guests::EXITS_BENCH_PORT,
                len: 1,
                device: Arc::new(NullDevice),
            }],
            host_decompress: None,
            mmds: None,
        },
        false,
    )?;
    let times: Vec<(u64, Duration)> = finished
        .observatory
        .report()
        .markers
        .iter()
        .filter(|m| m.source == MarkerSource::DebugPort)
        .map(|m| (m.value, m.at))
        .collect();
    phase_costs(&times, count)
}

fn run_bare(kvm: &Kvm, guest: &EmbeddedGuest, count: u32) -> Result<[f64; 3], BoxError> {
    let start = Instant::now();
    let mut vm = sie_vmm::build(
        &config(guest, count),
        kvm,
        BuildOptions {
            start,
            console: ConsoleOutput::new(Box::new(std::io::sink())),
            extra_pio: Vec::new(),
            host_decompress: None,
            mmds: None,
        },
        Arc::new(sie_vmm::VmControl::new()?),
    )?;
    let vcpu = vm.vcpus.first_mut().ok_or("the bench VM has no vCPU")?;
    let mut markers = Vec::with_capacity(8);
    sie_vmm::bare::run_bare(vcpu.as_mut(), &mut markers)?;
    let times: Vec<(u64, Duration)> = markers
        .iter()
        .map(|m| (u64::from(m.value), m.at.saturating_duration_since(start)))
        .collect();
    phase_costs(&times, count)
}

/// The observatory's own cost: nanoseconds per `record` call.
fn record_cost_ns() -> f64 {
    const CALLS: u32 = 1_000_000;
    let stats = VcpuStats::default();
    let begin = Instant::now();
    for i in 0..CALLS {
        stats.record(ExitKind::PioOut, u64::from(i), u64::from(i & 0xfff));
    }
    std::hint::black_box(&stats);
    begin.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchExitsArgs) -> Result<u8, BoxError> {
    if args.count == 0 || args.runs == 0 {
        return Err("--count and --runs must be at least 1".into());
    }
    let kvm = crate::run::open_hypervisor()?;
    let guest = EmbeddedGuest::new("sie-bench-exits", sie_guests::EXITS.bytes)?;
    let mut full: [Vec<f64>; 3] = Default::default();
    let mut bare: [Vec<f64>; 3] = Default::default();
    // Alternate the two loops so drift on the host hits both alike.
    for _ in 0..args.runs {
        let f = measure_full(&kvm, &guest, args.count)?;
        let b = run_bare(&kvm, &guest, args.count)?;
        for phase in 0..3 {
            full[phase].push(f[phase]);
            bare[phase].push(b[phase]);
        }
    }
    println!(
        "sie bench exits: {} exits per kind, median of {} runs",
        args.count, args.runs
    );
    println!(
        "  {:<12} {:>14} {:>14} {:>10}",
        "exit", "sie µs/exit", "bare µs/exit", "sie/bare"
    );
    for phase in 0..3 {
        let sie = median(&mut full[phase]).unwrap_or(0.0);
        let baseline = median(&mut bare[phase]).unwrap_or(0.0);
        let ratio = if baseline > 0.0 { sie / baseline } else { 0.0 };
        println!(
            "  {:<12} {:>14.3} {:>14.3} {:>10.3}",
            PHASES[phase],
            sie / 1000.0,
            baseline / 1000.0,
            ratio
        );
    }
    println!(
        "  {:<12} {:>14}",
        "hlt", "not measured: absorbed by the in-kernel irqchip"
    );
    println!(
        "  observatory record cost: {:.1} ns per exit",
        record_cost_ns()
    );
    println!("  goal: sie/bare at most 1.05");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_costs_divide_marker_gaps_by_the_count() {
        let ms = Duration::from_millis;
        let times = [
            (0xE1, ms(10)),
            (0xE2, ms(30)),
            (0xE3, ms(40)),
            (0xE4, ms(70)),
        ];
        let costs = phase_costs(&times, 1000).unwrap();
        assert_eq!(costs, [20_000.0, 10_000.0, 30_000.0]);
        assert!(phase_costs(&times[..3], 1000).is_err());
    }
}
