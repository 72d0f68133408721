//! Live migration next to a peer VMM: the `migration_live` workload moved
//! by sie, then by Cloud Hypervisor, in the same L1, with one table of what
//! each move cost the guest.
//!
//! A benchmark for people, not CI: CI cannot build Cloud Hypervisor. The
//! case exists only when `SIE_RIG_CLOUD_HYPERVISOR` names a directory holding
//! `cloud-hypervisor` and `ch-remote` (build-images puts them in L1's /bin).

use super::*;

/// The variable naming the directory with Cloud Hypervisor's binaries.
const PEER_DIR: &str = "SIE_RIG_CLOUD_HYPERVISOR";

/// The cases comparing sie with a peer VMM: none unless [`PEER_DIR`] is set.
pub(crate) fn peer_cases() -> Vec<Case> {
    match std::env::var_os(PEER_DIR) {
        Some(dir) if !dir.is_empty() => vec![bench_migrate_peer()],
        _ => Vec::new(),
    }
}

/// The case's name, also the guest's `case=`.
const NAME: &str = "bench_migrate_peer";

/// L1's limit for this case (`# rig-limit`, read by L1's /init): two moves,
/// each of whose processes may run 280 s.
const LIMIT_S: u32 = 580;

/// sie's leg is `migration_live`'s script as it is (its sections `src`,
/// `dst`, `ping`, marks `send`, `source_exit`); its exit status is the
/// case's. Cloud Hypervisor's leg follows ([`peer_leg`]).
fn bench_migrate_peer() -> Case {
    Case {
        name: NAME,
        l1_command: format!(
            "# rig-limit {LIMIT_S}\n( {} )\nsie_status=$?\n{}\nexit $sie_status",
            live_move(NAME, "", ""),
            peer_leg()
        ),
        l2_script: Some(MOVING_GUEST),
        check: check_peer,
    }
}

/// Cloud Hypervisor's leg: the same guest (kernel, initramfs, 128 MiB, one
/// vCPU, the MAC and bridge address sie's leg gives it), moved pre-copy over
/// a Unix socket with its defaults while L1 pings it every 100 ms.
///
/// Its virtio devices are PCI ones, so its command line drops `pci=off`.
/// Its taps: a receiving Cloud Hypervisor opens the tap the source's config
/// names and has no override, and the source still holds that tap, so each
/// side creates its own (`vmtapN`, no `tap=`) and a loop in L1 puts every
/// `vmtap*` into the bridge as it appears (the destination's appears when
/// the config arrives, before any memory). The source exits once the guest
/// runs at the destination, as sie's does; if the move fails it runs on and
/// is stopped. Sections `ch-src`, `ch-dst`, `ch-ping`, `ch-remote`; marks
/// `ch-send`, `ch-source_exit` (only when the source exited).
fn peer_leg() -> String {
    let cmdline = sie_e2e::l2_boot_args(NAME).replace(" pci=off", "");
    format!(
        r#"{L1_HELPERS}
wait_any() {{ i=0; until grep -q -e "$1" -e "$2" "$3"; do i=$((i+1)); [ $i -gt $4 ] && return 1; sleep 0.1; done; }}
stop_ch() {{ kill $(ps -e -o pid,args | grep "[c]loud-hypervisor.*/tmp/ch-$1.sock" | awk '{{print $1}}') 2>/dev/null; }}
bridge_taps() {{ while :; do for t in $(ls /sys/class/net | grep '^vmtap'); do
  [ -e /sys/class/net/$t/master ] || {{ ip link set $t master mgbr0; ip link set $t up; }}; done; sleep 0.05; done; }}
rm -f /tmp/ch-*
ip link add name mgbr0 type bridge
ip addr add 172.16.0.1/24 dev mgbr0; ip link set mgbr0 up
bridge_taps & bridger=$!
(timeout -k 5 280 cloud-hypervisor -v --api-socket path=/tmp/ch-dst.sock </dev/null; echo "@@EXIT dst $?") 2>&1 | stamp > /tmp/ch-dst & dst=$!
i=0; until [ -S /tmp/ch-dst.sock ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
(timeout -k 5 280 ch-remote --api-socket /tmp/ch-dst.sock receive-migration receiver_url=unix:/tmp/ch-mig.sock; echo "@@REMOTE receive exit $?") 2>&1 | stamp > /tmp/ch-receive & receiver=$!
(timeout -k 5 280 cloud-hypervisor -v --api-socket path=/tmp/ch-src.sock --cpus boot=1 --memory size=128M \
  --kernel "$GUEST/vmlinux" --initramfs "$GUEST/l2.cpio" --cmdline "{cmdline}" \
  --net mac=06:00:ac:10:00:02 --serial tty --console off </dev/null; echo "@@EXIT src $?") 2>&1 | stamp > /tmp/ch-src & src=$!
wait_any "@@UP " "@@EXIT src" /tmp/ch-src 1800
(ping -i 0.1 172.16.0.2 & echo $! > /tmp/ch-ping.pid; wait) 2>&1 | stamp > /tmp/ch-ping & pinger=$!
sleep 3
echo "@@MARK ch-send $(now)"
{{ timeout 30 ch-remote --api-socket /tmp/ch-src.sock send-migration destination_url=unix:/tmp/ch-mig.sock 2>&1; echo "@@REMOTE send exit $?"; }} | stamp > /tmp/ch-send
wait_any "@@EXIT src" "Migration failed" /tmp/ch-src 1800
grep -q "@@EXIT src" /tmp/ch-src && echo "@@MARK ch-source_exit $(now)"
sleep 4
kill -INT "$(cat /tmp/ch-ping.pid)"; wait $pinger
echo stop > /tmp/ch-stop
timeout 20 sietool tcp-send 172.16.0.2 5003 /tmp/ch-stop || echo "@@NOTE Cloud Hypervisor's guest took no stop"
wait_for "@@L2 {NAME} END" /tmp/ch-dst 100
timeout 10 ch-remote --api-socket /tmp/ch-dst.sock shutdown-vmm >/dev/null 2>&1
wait_for "@@EXIT dst" /tmp/ch-dst 100 || stop_ch dst
timeout 10 ch-remote --api-socket /tmp/ch-src.sock shutdown-vmm >/dev/null 2>&1
wait_for "@@EXIT src" /tmp/ch-src 100 || stop_ch src
wait $src; wait $dst; kill $receiver 2>/dev/null; wait $receiver
kill $bridger; wait $bridger 2>/dev/null
for part in src dst ping; do echo "@@SECTION ch-$part"; cat /tmp/ch-$part; done
echo "@@SECTION ch-remote"; cat /tmp/ch-receive /tmp/ch-send
echo "@@SECTION end"
ip link del mgbr0
for t in $(ls /sys/class/net | grep '^vmtap'); do ip link del $t; done
rm -f /tmp/ch-*.sock"#
    )
}

/// One VMM's move as the guest and ping saw it, and as the VMM reported it.
struct Row {
    vmm: &'static str,
    /// `moved`, or `failed: ...`.
    outcome: String,
    /// From the send to the source's exit, in s.
    move_s: Option<f64>,
    /// The largest gap between consecutive `@@UP` lines (source then
    /// destination), in s of L1 time and of guest time.
    gap_l1_s: Option<f64>,
    gap_guest_s: Option<f64>,
    /// ping in the move's window: requests, those unanswered, the longest
    /// unanswered run.
    ping: Option<(u64, u64, u64)>,
    /// The downtime the VMM reports itself.
    reported: String,
}

impl Row {
    /// The figures of the leg whose sections and marks start with `prefix`.
    fn measure(run: &CaseRun, vmm: &'static str, prefix: &str, outcome: String) -> Self {
        let part = |name: &str| section(run, &format!("{prefix}{name}"));
        let (src, dst, ping) = (part("src"), part("dst"), part("ping"));
        let send_at = mark(run, &format!("{prefix}send"));
        let exit_at = mark(run, &format!("{prefix}source_exit"));
        let ups: Vec<(f64, f64)> = uptimes(&src).into_iter().chain(uptimes(&dst)).collect();
        let gap = |pick: fn(&(f64, f64)) -> f64| {
            (ups.len() > 1).then(|| largest_step(ups.iter().map(pick)))
        };
        let ping = send_at.zip(exit_at).and_then(|(send, exit)| {
            let loss = ping_loss(&ping, send, exit).ok()?;
            let lost = loss.window_sent.saturating_sub(loss.window_received);
            Some((loss.window_sent, lost, loss.longest_loss))
        });
        Self {
            vmm,
            outcome,
            move_s: send_at.zip(exit_at).map(|(send, exit)| exit - send),
            gap_l1_s: gap(|m| m.0),
            gap_guest_s: gap(|m| m.1),
            ping,
            reported: String::new(),
        }
    }

    fn line(&self) -> String {
        let seconds = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ping = self.ping.map_or("-".to_string(), |(sent, lost, run)| {
            format!("{lost}/{sent} (run {run})")
        });
        format!(
            "{:<18} {:>7} {:>9} {:>9} {:>16}  {}  {}",
            self.vmm,
            seconds(self.move_s),
            seconds(self.gap_l1_s),
            seconds(self.gap_guest_s),
            ping,
            self.reported,
            self.outcome
        )
    }
}

/// sie's row: the downtime its source's last line gives (the figures `sie
/// ctl migrate status` shows; the source exits at the switch-over, and the
/// destination's status, printed by `check_move`, has only the total).
fn sie_row(run: &CaseRun, outcome: String) -> Row {
    let src = section(run, "src");
    let mut row = Row::measure(run, "sie", "", outcome);
    row.reported = line_with(&src, "the VM migrated to")
        .and_then(|line| number_before(line, " ms of downtime"))
        .map_or("-".to_string(), |ms| {
            format!("{ms} ms (source's last line)")
        });
    row
}

/// Cloud Hypervisor's row: it moved when its source said the migration
/// completed and the guest finished at the destination in the boot it
/// started in; else the last error line any of its processes printed.
fn peer_row(run: &CaseRun) -> Row {
    let part = |name: &str| section(run, &format!("ch-{name}"));
    let (src, dst, remote) = (part("src"), part("dst"), part("remote"));
    let completed = line_with(&src, "Migration completed");
    let boot = value(&src, "boot_id");
    let finished =
        boot.is_some() && value(&dst, "end_boot_id") == boot && value(&dst, "stop") == Some("stop");
    let outcome = if completed.is_some() && finished {
        "moved".to_string()
    } else {
        let mut lines: Vec<(f64, &str)> = src.iter().chain(&dst).chain(&remote).copied().collect();
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        let error = lines
            .iter()
            .rev()
            .find(|(_, line)| line.to_ascii_lowercase().contains("error"))
            // Its log's prefix (time, thread, source line) dropped.
            .map(|(_, line)| {
                line.rsplit_once(" -- ")
                    .map_or(*line, |(_, m)| m)
                    .to_string()
            });
        let why = match (error, completed, boot) {
            (Some(error), _, _) => error,
            (None, _, None) => "the guest never came up at the source".to_string(),
            (None, Some(_), _) => "the guest did not finish at the destination".to_string(),
            (None, None, _) => "no error line, and no completed migration".to_string(),
        };
        format!("failed: {why}")
    };
    let mut row = Row::measure(run, "Cloud Hypervisor", "ch-", outcome);
    row.reported = completed
        .and_then(|line| number_before(line, "ms (goal"))
        .map_or("-".to_string(), |ms| format!("{ms} ms (source's log)"));
    row
}

/// sie's move must have worked as `migration_live`'s does; Cloud
/// Hypervisor's is only measured (its failure is a figure). Both rows are
/// printed either way.
fn check_peer(run: &CaseRun) -> Result<(), String> {
    let sie = check_move(run, NAME, "pre-copy rounds");
    let outcome = match &sie {
        Ok(()) => "moved".to_string(),
        Err(error) => format!("failed: {}", error.lines().next().unwrap_or("")),
    };
    let rows = [sie_row(run, outcome), peer_row(run)];
    println!(
        "@@NOTE {:<18} {:>7} {:>9} {:>9} {:>16}  own downtime figure, outcome",
        "live migration", "move s", "UP gap s", "guest s", "ping lost/sent"
    );
    for row in &rows {
        println!("@@NOTE {}", row.line());
    }
    sie
}
