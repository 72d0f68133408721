use super::*;

const PUT: &str = "PUT /drives/root HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"drive\": 1} ";

fn request(event: Option<Event>) -> HttpRequest {
    match event {
        Some(Event::Request(request)) => request,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn one_request_in_one_read() {
    let mut reader = RequestReader::new(51_200);
    reader.push(PUT.as_bytes());
    let got = request(reader.next_event().unwrap());
    assert_eq!(got.method, "PUT");
    assert_eq!(got.target, "/drives/root");
    assert_eq!(got.body, b"{\"drive\": 1} ");
    assert!(got.keep_alive);
    assert_eq!(reader.next_event(), Ok(None));
    assert_eq!(reader.buffered(), 0);
}

#[test]
fn split_byte_by_byte() {
    let mut reader = RequestReader::new(51_200);
    let bytes = PUT.as_bytes();
    for (i, byte) in bytes.iter().enumerate() {
        reader.push(std::slice::from_ref(byte));
        let event = reader.next_event().unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(event, None, "complete too early at byte {i}");
        } else {
            assert_eq!(request(event).body.len(), 13);
        }
    }
}

#[test]
fn pipelined_requests_come_out_in_order() {
    let mut reader = RequestReader::new(51_200);
    let input =
        format!("GET / HTTP/1.1\r\n\r\n{PUT}GET /version HTTP/1.1\r\nConnection: close\r\n\r\n");
    reader.push(input.as_bytes());
    assert_eq!(request(reader.next_event().unwrap()).target, "/");
    assert_eq!(request(reader.next_event().unwrap()).method, "PUT");
    let last = request(reader.next_event().unwrap());
    assert_eq!(last.target, "/version");
    assert!(!last.keep_alive);
    assert_eq!(reader.next_event(), Ok(None));
}

#[test]
fn keep_alive_follows_version_and_connection_header() {
    let keep = |head: &str| {
        let mut reader = RequestReader::new(100);
        reader.push(head.as_bytes());
        request(reader.next_event().unwrap()).keep_alive
    };
    assert!(keep("GET / HTTP/1.1\r\n\r\n"));
    assert!(!keep("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
    assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
    assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
}

#[test]
fn oversize_body_is_refused_from_the_header_alone() {
    let mut reader = RequestReader::new(10);
    reader.push(b"PUT /logger HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
    let error = reader.next_event().unwrap_err();
    assert_eq!(
        error,
        HttpError::PayloadTooLarge {
            length: 11,
            limit: 10
        }
    );
    assert!(error.to_string().contains("limit of 10 bytes"));
    let mut exact = RequestReader::new(10);
    exact.push(b"PUT /logger HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789");
    assert_eq!(request(exact.next_event().unwrap()).body.len(), 10);
}

#[test]
fn malformed_request_lines_are_errors() {
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET / FTP/1.1\r\n\r\n",
        "GET  HTTP/1.1\r\n\r\n",
    ] {
        let mut reader = RequestReader::new(100);
        reader.push(bad.as_bytes());
        assert!(
            matches!(reader.next_event(), Err(HttpError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn chunked_and_bad_lengths_are_refused() {
    let mut reader = RequestReader::new(100);
    reader.push(b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(reader.next_event(), Err(HttpError::TransferEncoding));
    for length in ["abc", "-1", "1, 2"] {
        let mut reader = RequestReader::new(100);
        reader.push(format!("PUT /vm HTTP/1.1\r\nContent-Length: {length}\r\n\r\n").as_bytes());
        assert_eq!(
            reader.next_event(),
            Err(HttpError::ContentLength),
            "{length}"
        );
    }
    let mut twice = RequestReader::new(100);
    twice.push(b"PUT /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(twice.next_event(), Err(HttpError::ContentLength));
}

#[test]
fn head_limits() {
    let mut reader = RequestReader::new(100);
    reader.push(b"GET / HTTP/1.1\r\nX-Big: ");
    reader.push(&[b'a'; MAX_HEAD_BYTES]);
    assert_eq!(reader.next_event(), Err(HttpError::HeadTooLarge));

    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    let mut reader = RequestReader::new(100);
    reader.push(many.as_bytes());
    assert_eq!(reader.next_event(), Err(HttpError::TooManyHeaders));
}

#[test]
fn expect_continue_is_announced_once_before_the_body() {
    let mut reader = RequestReader::new(100);
    reader.push(b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(reader.next_event(), Ok(Some(Event::Continue)));
    assert_eq!(reader.next_event(), Ok(None));
    reader.push(b"{}  ");
    assert_eq!(request(reader.next_event().unwrap()).body, b"{}  ");

    // Body already there: no Continue needed.
    let mut reader = RequestReader::new(100);
    reader.push(b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}");
    assert!(matches!(reader.next_event(), Ok(Some(Event::Request(_)))));
}
