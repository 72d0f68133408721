//! Kicking a vCPU out of `run` from another thread, on the real `/dev/kvm`.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{CODE, Watchdog, real_mode_guest};
use sie_hv::{Vcpu, VmExit};

/// `jmp $` at 0x1000, then `out 0x80, al` at 0x1010 for a follow-up run.
fn loop_then_port_code() -> Vec<u8> {
    let mut code = vec![0xeb, 0xfe]; // jmp $
    code.resize(0x10, 0x90); // nop padding
    code.extend_from_slice(&[0xe6, 0x80]); // out 0x80, al
    code
}

fn jump_to(vcpu: &dyn Vcpu, rip: u64) {
    let mut regs = vcpu.regs().expect("regs");
    regs.rip = rip;
    vcpu.set_regs(&regs).expect("set regs");
}

fn expect_port_0x80(vcpu: &mut dyn Vcpu) {
    match vcpu.run().expect("run") {
        VmExit::IoOut { port: 0x80, .. } => {}
        other => panic!("expected IoOut to 0x80 (no leftover kick), got {other:?}"),
    }
}

#[test]
fn kick_from_another_thread_interrupts_an_endless_loop() {
    let guest = real_mode_guest(&loop_then_port_code());
    let _watchdog = Watchdog::arm("kick of a looping vCPU", Duration::from_secs(10));
    let kicker = guest.vcpu.kicker();
    let (started_tx, started_rx) = mpsc::channel();
    let mut vcpu = guest.vcpu;
    // The vCPU runs on its own thread, as in the VMM.
    let runner = std::thread::spawn(move || {
        started_tx.send(()).unwrap();
        let start = Instant::now();
        let exit = format!("{:?}", vcpu.run().unwrap());
        (vcpu, exit, start.elapsed())
    });
    started_rx.recv().unwrap();
    // Let it get well into the loop before kicking.
    std::thread::sleep(Duration::from_millis(300));
    kicker.kick();
    let (mut vcpu, exit, elapsed) = runner.join().unwrap();
    assert_eq!(exit, "Interrupted");
    assert!(
        elapsed >= Duration::from_millis(250),
        "returned before the kick"
    );
    // The kick is consumed: the next run executes guest code.
    jump_to(vcpu.as_ref(), CODE + 0x10);
    expect_port_0x80(vcpu.as_mut());
}

#[test]
fn kick_before_the_first_run_is_not_lost() {
    let mut guest = real_mode_guest(&loop_then_port_code());
    let _watchdog = Watchdog::arm("kick before first run", Duration::from_secs(10));
    guest.vcpu.kicker().kick();
    assert!(matches!(guest.vcpu.run().unwrap(), VmExit::Interrupted));
    jump_to(guest.vcpu.as_ref(), CODE + 0x10);
    expect_port_0x80(guest.vcpu.as_mut());
}

#[test]
fn kick_between_runs_interrupts_the_next_run() {
    let code = [
        0xe6, 0x80, // out 0x80, al
        0xeb, 0xfe, // jmp $
    ];
    let mut guest = real_mode_guest(&code);
    let _watchdog = Watchdog::arm("kick between runs", Duration::from_secs(10));
    // First run sets the thread up for signals.
    expect_port_0x80(guest.vcpu.as_mut());
    // A kick while the thread is outside KVM_RUN must end the next run.
    let kicker = guest.vcpu.kicker();
    std::thread::spawn(move || kicker.kick()).join().unwrap();
    assert!(matches!(guest.vcpu.run().unwrap(), VmExit::Interrupted));
}

#[test]
fn repeated_kicks_each_interrupt_a_run() {
    let guest = real_mode_guest(&loop_then_port_code());
    let _watchdog = Watchdog::arm("repeated kicks", Duration::from_secs(20));
    let kicker = guest.vcpu.kicker();
    let mut vcpu = guest.vcpu;
    let (tx, rx) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        for _ in 0..5 {
            loop {
                tx.send(()).unwrap();
                if matches!(vcpu.run().unwrap(), VmExit::Interrupted) {
                    break;
                }
            }
        }
        vcpu
    });
    for _ in 0..5 {
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        kicker.kick();
    }
    let vcpu = runner.join().unwrap();
    drop(vcpu);
    // Kicking a dropped vCPU is harmless.
    kicker.kick();
}
