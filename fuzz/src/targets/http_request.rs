//! The API's HTTP/1.1 request reader (`sie_api::RequestReader`): a client's
//! byte stream, pipelined requests included, cut into reads at places the
//! input chooses.
//!
//! Input: one byte choosing the payload limit, one seeding where the
//! stream is cut, then the stream. Checked: every request has a method, a
//! target and a body within the limit; the requests (and whether the
//! stream ends in an error) are the same however the stream is cut, so
//! one read, many reads and byte-by-byte reads agree.

use sie_api::{Event, HttpRequest, RequestReader};

use crate::input::Input;

const LIMITS: [usize; 6] = [0, 1, 16, 1024, 51_200, 1 << 20];

/// What a reader made of a stream: its requests, and whether it failed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    requests: Vec<HttpRequest>,
    failed: bool,
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = LIMITS[input.below(LIMITS.len() as u32) as usize];
    let mut cuts = u64::from(input.u8()) | 1;
    let stream = input.rest();

    let whole = read(limit, std::iter::once(stream));
    // Reads of 1 to 64 bytes, lengths from a xorshift seeded by the input.
    let mut pieces = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        cuts ^= cuts << 13;
        cuts ^= cuts >> 7;
        cuts ^= cuts << 17;
        let n = (cuts % 64 + 1) as usize;
        let (head, tail) = rest.split_at(n.min(rest.len()));
        pieces.push(head);
        rest = tail;
    }
    let cut = read(limit, pieces.iter().copied());
    let bytewise = read(limit, stream.chunks(1));
    assert_eq!(whole, cut, "cutting the stream into reads changed it");
    assert_eq!(whole, bytewise, "reading byte by byte changed the stream");
}

fn read<'a>(limit: usize, reads: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut reader = RequestReader::new(limit);
    let mut outcome = Outcome {
        requests: Vec::new(),
        failed: false,
    };
    for piece in reads {
        reader.push(piece);
        loop {
            match reader.next_event() {
                Ok(None) => break,
                Ok(Some(Event::Continue)) => {}
                Ok(Some(Event::Request(request))) => {
                    assert!(!request.method.is_empty(), "request without a method");
                    assert!(!request.target.is_empty(), "request without a target");
                    assert!(
                        request.body.len() <= limit,
                        "a {}-byte body passed the {limit}-byte limit",
                        request.body.len()
                    );
                    outcome.requests.push(request);
                }
                Err(_) => {
                    outcome.failed = true;
                    return outcome;
                }
            }
        }
    }
    outcome
}
