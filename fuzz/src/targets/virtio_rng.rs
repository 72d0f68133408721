//! virtio-rng through its transport: chains of mostly device-writable
//! buffers of any length. A used length never exceeds the chain's buffers
//! or the per-request cap.

use sie_virtio::VirtioDevice;
use sie_virtio::rng::{RNG_MAX_REQUEST, Rng};
use sie_virtio::testing::transport;

use super::scenario::{self, Chain, length};
use crate::input::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let device = Rng::new();
    let offered = device.features();
    let (t, mem, _irq) = transport(device);
    scenario::run(
        &t,
        &mem,
        offered,
        &mut input,
        |input, alloc, _mem| {
            let mut chain = Chain::new();
            for _ in 0..input.below(4) + 1 {
                let len = length(input);
                let writable = input.u8() != 0xff;
                chain.push((alloc.take(len), len, writable));
            }
            chain
        },
        |_mem, chain, used| {
            let total: u64 = chain.iter().map(|&(_, len, _)| u64::from(len)).sum();
            assert!(
                u64::from(used) <= total.min(RNG_MAX_REQUEST as u64),
                "rng used {used} bytes of a {total}-byte chain"
            );
        },
    );
}
