//! The API router: method, request target and body to a request or a fault
//! (`sie_api::route`), exactly what the HTTP layer hands it.
//!
//! Input: one byte choosing the method (or, for the last choices, a method
//! read up to the first space), the target up to the first newline, and the
//! rest as the body.

use crate::input::Input;

const METHODS: [&str; 6] = ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"];

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.u8() as usize;
    let rest = input.rest();
    let (method, rest) = match METHODS.get(choice % 8) {
        Some(&m) => (m.to_string(), rest),
        None => {
            let (m, r) = split_at_byte(rest, b' ');
            (String::from_utf8_lossy(m).into_owned(), r)
        }
    };
    let (target, body) = split_at_byte(rest, b'\n');
    let target = String::from_utf8_lossy(target);
    let first = sie_api::route(&method, &target, body);
    // A pure function: the same request routes the same way.
    let second = sie_api::route(&method, &target, body);
    assert_eq!(first, second, "route is not deterministic");
}

/// `data` split at the first `byte` (dropped), or all of it and nothing.
fn split_at_byte(data: &[u8], byte: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == byte) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}
