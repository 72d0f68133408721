use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::store::DEFAULT_SIZE_LIMIT;

fn mmds(version: crate::MmdsVersion) -> Mmds {
    let mut mmds = Mmds::new(DEFAULT_SIZE_LIMIT);
    mmds.configure(version, false);
    mmds.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "net": {"mac": "aa"}}}, "n": 4}))
        .unwrap();
    mmds
}

/// Status code and body of a response.
fn split(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8(response.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn ask(mmds: &mut Mmds, request: &str) -> (u16, String) {
    split(&answer(mmds, request.as_bytes()))
}

#[test]
fn v1_answers_get_without_a_token_in_imds_and_json() {
    let mut m = mmds(crate::MmdsVersion::V1);
    assert_eq!(
        ask(&mut m, "GET /latest/meta-data HTTP/1.1\r\n\r\n"),
        (200, "ami-id\nnet/".into())
    );
    assert_eq!(
        ask(&mut m, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n"),
        (200, "ami-1".into())
    );
    assert_eq!(
        ask(
            &mut m,
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n"
        ),
        (200, "\"ami-1\"".into())
    );
    assert_eq!(
        ask(
            &mut m,
            "GET http://169.254.169.254/latest/meta-data/net HTTP/1.0\r\nAccept: application/json\r\n\r\n"
        ),
        (200, r#"{"mac":"aa"}"#.into())
    );
    // A bad token does not matter in V1.
    assert_eq!(
        ask(
            &mut m,
            "GET /n HTTP/1.1\r\nX-metadata-token: x\r\nAccept: application/json\r\n\r\n"
        )
        .0,
        200
    );
}

#[test]
fn imds_compat_answers_text_whatever_the_guest_accepts() {
    let mut m = mmds(crate::MmdsVersion::V1);
    m.configure(crate::MmdsVersion::V1, true);
    assert_eq!(
        ask(
            &mut m,
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n"
        ),
        (200, "ami-1".into())
    );
}

#[test]
fn errors_carry_firecracker_status_codes() {
    let mut m = mmds(crate::MmdsVersion::V1);
    let (status, body) = ask(&mut m, "GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (404, "Resource not found: /nope."));
    assert_eq!(ask(&mut m, "GET /n HTTP/1.1\r\n\r\n").0, 501);
    let response = answer(&mut m, b"POST / HTTP/1.1\r\n\r\n");
    assert_eq!(split(&response).0, 405);
    assert!(String::from_utf8_lossy(&response).contains("Allow: GET, PUT"));
    assert_eq!(ask(&mut m, "GET * HTTP/1.1\r\n\r\n").0, 400);
    assert_eq!(ask(&mut m, "GARBAGE\x01\r\n\r\n").0, 400);
}

#[test]
fn v2_issues_tokens_and_needs_one_for_every_get() {
    let mut m = mmds(crate::MmdsVersion::V2);
    let (status, body) = ask(&mut m, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
    assert_eq!(status, 401);
    assert!(body.starts_with("No MMDS token provided"));
    let (status, token) = ask(
        &mut m,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert_eq!(status, 200);
    let get = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    assert_eq!(ask(&mut m, &get), (200, "ami-1".into()));
    let aws = format!(
        "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
    );
    assert_eq!(ask(&mut m, &aws).0, 200);
    assert_eq!(
        ask(
            &mut m,
            "GET /latest HTTP/1.1\r\nX-metadata-token: forged\r\n\r\n"
        ),
        (401, "MMDS token not valid.".into())
    );
}

#[test]
fn v2_tokens_expire() {
    let mut m = mmds(crate::MmdsVersion::V2);
    let now = Instant::now();
    let Parsed::Answered { response, .. } = serve(
        &mut m,
        b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 1\r\n\r\n",
        now,
    ) else {
        panic!("incomplete");
    };
    let token = split(&response).1;
    let get = format!("GET /latest HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    let mut at = |t| match serve(&mut m, get.as_bytes(), t) {
        Parsed::Answered { response, .. } => split(&response).0,
        Parsed::Incomplete => 0,
    };
    assert_eq!(at(now), 200);
    assert_eq!(at(now + Duration::from_secs(2)), 401);
}

#[test]
fn token_requests_are_checked() {
    let mut m = mmds(crate::MmdsVersion::V2);
    assert_eq!(ask(&mut m, "PUT /latest/api/token HTTP/1.1\r\n\r\n").0, 400);
    let (status, body) = ask(
        &mut m,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n",
    );
    assert_eq!(status, 400);
    assert!(body.contains("between 1 and 21600"), "{body}");
    assert_eq!(
        ask(
            &mut m,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: x\r\n\r\n"
        )
        .0,
        400
    );
    assert_eq!(
        ask(&mut m, "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n").0,
        400
    );
    assert_eq!(
        ask(
            &mut m,
            "PUT /latest/other HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n"
        )
        .0,
        404
    );
    // Repeated slashes are the same path, as in Firecracker.
    assert_eq!(
        ask(
            &mut m,
            "PUT //latest//api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n"
        )
        .0,
        200
    );
}

#[test]
fn partial_requests_wait_and_oversized_ones_are_refused_and_closed() {
    let mut m = mmds(crate::MmdsVersion::V1);
    let now = Instant::now();
    assert_eq!(
        serve(&mut m, b"GET /latest HTTP/1.1\r\nAcc", now),
        Parsed::Incomplete
    );
    assert_eq!(
        serve(
            &mut m,
            b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
            now
        ),
        Parsed::Incomplete
    );
    let big = vec![b'a'; MAX_REQUEST_BYTES];
    let Parsed::Answered {
        close, response, ..
    } = serve(&mut m, &big, now)
    else {
        panic!("a full buffer must be answered");
    };
    assert!(close);
    assert_eq!(split(&response).0, 400);
    let Parsed::Answered { close, .. } = serve(
        &mut m,
        b"GET / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
        now,
    ) else {
        panic!("answered");
    };
    assert!(close);
}

#[test]
fn keep_alive_unless_asked_to_close_or_http_1_0() {
    let mut m = mmds(crate::MmdsVersion::V1);
    let now = Instant::now();
    let two = b"GET /latest HTTP/1.1\r\n\r\nGET /latest HTTP/1.1\r\nConnection: close\r\n\r\n";
    let Parsed::Answered {
        consumed, close, ..
    } = serve(&mut m, two, now)
    else {
        panic!("answered");
    };
    assert!(!close);
    let Parsed::Answered { close, .. } = serve(&mut m, &two[consumed..], now) else {
        panic!("answered");
    };
    assert!(close);
    let Parsed::Answered { close, .. } = serve(&mut m, b"GET /latest HTTP/1.0\r\n\r\n", now) else {
        panic!("answered");
    };
    assert!(close);
}
