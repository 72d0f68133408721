//! `sie bench net`: TCP throughput each way between a guest on a virtio-net
//! tap and the host, and the frames per second the tap carried. sie makes
//! the tap (`--net NAME`); this command gives it 172.16.0.1/24 once it
//! appears and serves a sink (port 5001, the guest sends) and a source
//! (port 5002, the guest receives). The guest side is the initrd's job for
//! `case=bench_net` (the rig's runs `sietool net-bench 172.16.0.1 5001 5002
//! MIB` at 172.16.0.2) and prints `@@BENCH tx_mib_s=` / `rx_mib_s=`, with
//! `tx_bytes=` / `rx_bytes=`. A run fails unless each side received every
//! byte the other sent. Over virtio-MMIO, virtio-PCI or both side by side
//! (`--transport`), with each one's virtio interrupts (the guest's
//! `@@BENCH virtio_irqs=`, counted around the transfers) and device
//! register exits (`sie run --stats`, the whole run, boot included) per
//! data frame the tap carried.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::transport::Transport;
use super::{BoxError, finish_sie_run, guest_cmdline, guest_figures, median, spawn_sie_run};
use crate::cli::BenchNetArgs;

const HOST_ADDR: &str = "172.16.0.1/24";
const SINK_PORT: u16 = 5001;
const SOURCE_PORT: u16 = 5002;
/// How long a socket may wait for the guest before the run is given up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The host's view of one transfer.
#[derive(Clone, Copy, Debug)]
struct HostSample {
    mib_s: f64,
    /// Frames through the tap in the data's direction, per second.
    packets_s: f64,
    /// Those frames, counted.
    packets: u64,
    /// Bytes this side received (sink) or sent (source).
    bytes: u64,
}

/// One run: the guest's and the host's figures for each direction.
struct Run {
    transport: Transport,
    /// The guest's virtio interrupts during the transfers, if it counted.
    irqs: Option<f64>,
    /// The device's register exits during the whole run.
    device_exits: Option<u64>,
    guest_tx: f64,
    guest_rx: f64,
    guest_sent: u64,
    guest_received: u64,
    sink: HostSample,
    source: HostSample,
}

fn counter(tap: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{name}"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Accepts one connection, giving up when `stop` is set.
fn accept(listener: &TcpListener, stop: &AtomicBool) -> Result<TcpStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                stream
                    .set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                stream
                    .set_write_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return Err("the guest never connected".to_string());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Reads `stream` to its end; the byte count.
fn drain(stream: &mut TcpStream) -> Result<u64, String> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}

/// The guest sends `mib` MiB: received here to the end, then closed.
fn sink(
    listener: &TcpListener,
    tap: &str,
    mib: u64,
    stop: &AtomicBool,
) -> Result<HostSample, String> {
    let mut stream = accept(listener, stop)?;
    let (frames, start) = (counter(tap, "rx_packets"), Instant::now());
    let bytes = drain(&mut stream)?;
    let secs = start.elapsed().as_secs_f64();
    let frames = counter(tap, "rx_packets").saturating_sub(frames);
    if bytes != mib << 20 {
        return Err(format!("received {bytes} of {} bytes", mib << 20));
    }
    Ok(HostSample {
        mib_s: mib as f64 / secs,
        packets_s: frames as f64 / secs,
        packets: frames,
        bytes,
    })
}

/// The guest receives `mib` MiB: sent, half-closed, then read to the
/// guest's close.
fn source(
    listener: &TcpListener,
    tap: &str,
    mib: u64,
    stop: &AtomicBool,
) -> Result<HostSample, String> {
    let mut stream = accept(listener, stop)?;
    let (frames, start) = (counter(tap, "tx_packets"), Instant::now());
    let block = vec![0x5au8; 1 << 16];
    let mut bytes = 0u64;
    for _ in 0..mib * 16 {
        stream.write_all(&block).map_err(|e| format!("send: {e}"))?;
        bytes += block.len() as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    drain(&mut stream)?;
    let secs = start.elapsed().as_secs_f64();
    let frames = counter(tap, "tx_packets").saturating_sub(frames);
    Ok(HostSample {
        mib_s: mib as f64 / secs,
        packets_s: frames as f64 / secs,
        packets: frames,
        bytes,
    })
}

/// A host thread's result; a panic becomes an error.
fn joined<T>(result: std::thread::Result<Result<T, String>>) -> Result<T, String> {
    result.unwrap_or_else(|_| Err("a host thread panicked".to_string()))
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Waits for sie's tap, then addresses it and brings it up.
fn configure_tap(tap: &str, stop: &AtomicBool) -> Result<(), String> {
    let sys = format!("/sys/class/net/{tap}");
    let deadline = Instant::now() + IO_TIMEOUT;
    while !Path::new(&sys).exists() {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return Err(format!("the tap {tap} never appeared"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // A persistent tap may keep its address from an earlier run.
    if let Err(e) = ip(&["addr", "add", HOST_ADDR, "dev", tap])
        && !e.contains("exists")
    {
        return Err(e);
    }
    ip(&["link", "set", tap, "up"])
}

fn one_run(
    args: &BenchNetArgs,
    sink_l: &TcpListener,
    source_l: &TcpListener,
    transport: Transport,
) -> Result<Run, BoxError> {
    let cmdline = guest_cmdline(
        args.cmdline.as_deref(),
        "bench_net",
        &format!("bench_mib={}", args.mib),
    );
    let (mut argv, cmdline) = transport.run_args(&cmdline);
    argv.extend([
        "--kernel".into(),
        args.kernel.display().to_string(),
        "--initrd".into(),
        args.initrd.display().to_string(),
        "--net".into(),
        args.tap.clone(),
        "--memory".into(),
        args.memory.clone(),
        "--cmdline".into(),
        cmdline,
    ]);
    let stop = AtomicBool::new(false);
    let child = spawn_sie_run(&argv)?;
    let (output, tap, sink, source) = std::thread::scope(|scope| {
        let tap = scope.spawn(|| configure_tap(&args.tap, &stop));
        let sink = scope.spawn(|| sink(sink_l, &args.tap, args.mib, &stop));
        let source = scope.spawn(|| source(source_l, &args.tap, args.mib, &stop));
        let output = finish_sie_run(child).map_err(|e| e.to_string());
        stop.store(true, Ordering::Relaxed);
        (
            output,
            joined(tap.join()),
            joined(sink.join()),
            joined(source.join()),
        )
    });
    let output = output?;
    tap?;
    let figures = guest_figures(&output, &["tx_mib_s", "rx_mib_s", "tx_bytes", "rx_bytes"])?;
    let run = Run {
        transport,
        irqs: figures.get("virtio_irqs").copied(),
        device_exits: transport.device_exits(&output, "virtio-net:"),
        guest_tx: figures["tx_mib_s"],
        guest_rx: figures["rx_mib_s"],
        guest_sent: figures["tx_bytes"] as u64,
        guest_received: figures["rx_bytes"] as u64,
        sink: sink?,
        source: source?,
    };
    check_bytes(&run, args.mib << 20)?;
    Ok(run)
}

/// Fails unless both directions carried `want` bytes, counted at both ends.
fn check_bytes(run: &Run, want: u64) -> Result<(), BoxError> {
    let counts = [
        ("guest sent", run.guest_sent),
        ("host received", run.sink.bytes),
        ("host sent", run.source.bytes),
        ("guest received", run.guest_received),
    ];
    match counts.iter().find(|(_, bytes)| *bytes != want) {
        Some((who, bytes)) => Err(format!("{who} {bytes} bytes, not {want}").into()),
        None => Ok(()),
    }
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchNetArgs) -> Result<u8, BoxError> {
    if args.runs == 0 || args.mib == 0 {
        return Err("--runs and --mib must be at least 1".into());
    }
    let bind = |port| TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("port {port}: {e}"));
    let (sink_l, source_l) = (bind(SINK_PORT)?, bind(SOURCE_PORT)?);
    let transports = Transport::chosen(&args.transport);
    let mut runs = Vec::new();
    for _ in 0..args.runs {
        for transport in &transports {
            runs.push(one_run(args, &sink_l, &source_l, *transport)?);
        }
    }
    println!(
        "sie bench net: {} MiB each way over TCP, tap {} ({HOST_ADDR}) to the guest (172.16.0.2), {} runs; median (spread)",
        args.mib, args.tap, args.runs
    );
    println!(
        "  packets/s: frames the tap counted in the data's direction per second (a GSO frame counts once)"
    );
    println!(
        "  {:<16}{:>20}{:>20}{:>22}",
        "direction", "guest MiB/s", "host MiB/s", "packets/s"
    );
    for (index, run) in runs.iter().enumerate() {
        println!(
            "  {} run {}: guest->host sent {} received {}; host->guest sent {} received {} bytes",
            run.transport.label(),
            index / transports.len() + 1,
            run.guest_sent,
            run.sink.bytes,
            run.source.bytes,
            run.guest_received
        );
    }
    let col = super::median_spread;
    // MiB carried per run, both ways.
    let mib = (2 * args.mib) as f64;
    for transport in &transports {
        let runs: Vec<&Run> = runs.iter().filter(|r| r.transport == *transport).collect();
        let rows: [(&str, Vec<f64>, Vec<HostSample>); 2] = [
            (
                "guest->host",
                runs.iter().map(|r| r.guest_tx).collect(),
                runs.iter().map(|r| r.sink).collect(),
            ),
            (
                "host->guest",
                runs.iter().map(|r| r.guest_rx).collect(),
                runs.iter().map(|r| r.source).collect(),
            ),
        ];
        for (label, guest, host) in rows {
            let host_mib: Vec<f64> = host.iter().map(|s| s.mib_s).collect();
            let packets: Vec<f64> = host.iter().map(|s| s.packets_s).collect();
            println!(
                "  {:<16}{}{}{}",
                format!("{label} {}", transport.label()),
                col(&guest, 20),
                col(&host_mib, 20),
                col(&packets, 22)
            );
        }
        // A request is a data frame through the tap (a GSO frame counts once).
        let per_packet = |pick: fn(&Run) -> Option<f64>| {
            let mut per: Vec<f64> = runs
                .iter()
                .filter_map(|r| Some(pick(r)? / (r.sink.packets + r.source.packets).max(1) as f64))
                .collect();
            median(&mut per).map_or_else(|| "-".to_string(), |m| format!("{m:.3}"))
        };
        println!(
            "  {} interrupts/packet {} (during the transfers), device exits/packet {} (the whole run, boot included); {mib:.0} MiB carried a run",
            transport.label(),
            per_packet(|r| r.irqs),
            per_packet(|r| r.device_exits.map(|e| e as f64)),
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_and_source_over_loopback() {
        let stop = AtomicBool::new(false);
        let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
        let source_l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (sink_addr, source_addr) =
            (sink_l.local_addr().unwrap(), source_l.local_addr().unwrap());
        std::thread::scope(|scope| {
            let s = scope.spawn(|| sink(&sink_l, "none", 1, &stop));
            let mut c = TcpStream::connect(sink_addr).unwrap();
            c.write_all(&vec![1u8; 1 << 20]).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            drain(&mut c).unwrap();
            let received = s.join().unwrap().unwrap();
            assert!(received.mib_s > 0.0);
            assert_eq!(received.bytes, 1 << 20);
            let s = scope.spawn(|| source(&source_l, "none", 1, &stop));
            let mut c = TcpStream::connect(source_addr).unwrap();
            assert_eq!(drain(&mut c).unwrap(), 1 << 20);
            drop(c);
            let sent = s.join().unwrap().unwrap();
            assert!(sent.mib_s > 0.0);
            assert_eq!(sent.bytes, 1 << 20);
            let sample = |bytes| HostSample {
                mib_s: 1.0,
                packets_s: 1.0,
                packets: 1,
                bytes,
            };
            let mut run = Run {
                transport: Transport::Mmio,
                irqs: None,
                device_exits: None,
                guest_tx: 1.0,
                guest_rx: 1.0,
                guest_sent: 1 << 20,
                guest_received: 1 << 20,
                sink: received,
                source: sent,
            };
            assert!(check_bytes(&run, 1 << 20).is_ok());
            run.sink = sample(1000);
            let error = check_bytes(&run, 1 << 20).unwrap_err().to_string();
            assert_eq!(error, "host received 1000 bytes, not 1048576");
        });
        stop.store(true, Ordering::Relaxed);
        assert!(accept(&sink_l, &stop).is_err());
    }
}
