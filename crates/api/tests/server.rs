//! The server on a real Unix socket, with a fake VMM answering on the
//! handle and plain `UnixStream` clients.

// The helpers below are test code too; clippy's test exemption covers only
// `#[test]` functions in an integration test file.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sie_api::{
    ApiError, ApiServer, ApiStats, DEFAULT_MAX_CONNECTIONS, ServerOptions, ServerStopper,
};
use sie_config::{Request, Response};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A socket path unique to this process and test.
fn socket_path() -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("sie-api-test-{}-{n}.sock", std::process::id()))
}

/// A running server and the fake VMM answering it.
struct Harness {
    path: PathBuf,
    stats: Arc<ApiStats>,
    stopper: ServerStopper,
    done: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
    vmm: Option<JoinHandle<()>>,
}

/// The fake VMM: GETs answer JSON, PUT/PATCH answer 204, except a drive
/// named "bad" which it refuses.
fn answer(request: Request) -> Response {
    match request {
        Request::GetInstanceInfo => {
            Response::Json(serde_json::json!({"id": "sie", "state": "Not started"}))
        }
        Request::GetPrometheusMetrics => Response::Text("sie_up 1\n".into()),
        Request::PutDrive(drive) if drive.drive_id == "bad" => Response::fault("no such file"),
        _ => Response::NoContent,
    }
}

impl Harness {
    fn start(options: ServerOptions) -> Harness {
        let path = socket_path();
        let server = ApiServer::bind(&path, options).unwrap();
        let stats = server.stats();
        let (api, thread) = server.spawn().unwrap();
        let stopper = api.stopper();
        let done = Arc::new(AtomicBool::new(false));
        let vmm_done = Arc::clone(&done);
        let vmm = std::thread::spawn(move || {
            while !vmm_done.load(Ordering::SeqCst) {
                if let Some(call) = api.recv_timeout(Duration::from_millis(20)) {
                    let _ = call.reply.send(answer(call.request));
                }
            }
        });
        Harness {
            path,
            stats,
            stopper,
            done,
            server: Some(thread),
            vmm: Some(vmm),
        }
    }

    fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Stops the server and checks the socket file is gone.
    fn stop(mut self) {
        self.stopper.stop();
        self.server.take().unwrap().join().unwrap();
        assert!(!self.path.exists(), "socket file left behind");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stopper.stop();
        self.done.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        if let Some(vmm) = self.vmm.take() {
            let _ = vmm.join();
        }
    }
}

/// One parsed response: status, headers (lowercase names), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn fault(&self) -> String {
        let value: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        value["fault_message"].as_str().unwrap().to_string()
    }
}

/// Reads one response off `stream`, byte by byte so nothing of the next
/// one is consumed.
fn read_reply(stream: &mut UnixStream) -> Reply {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn send(stream: &mut UnixStream, method: &str, path: &str, body: &str) -> Reply {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    read_reply(stream)
}

/// True once the server has closed `stream`.
fn closed(stream: &mut UnixStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

const DRIVE: &str = r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true}"#;

#[test]
fn put_get_fault_and_keep_alive_on_one_connection() {
    let harness = Harness::start(ServerOptions::default());
    let mut client = harness.connect();

    let put = send(&mut client, "PUT", "/drives/rootfs", DRIVE);
    assert_eq!(put.status, 204);
    assert_eq!(put.body, "");
    assert_eq!(put.header("server"), Some("Firecracker API"));
    assert_eq!(put.header("connection"), Some("keep-alive"));

    let get = send(&mut client, "GET", "/", "");
    assert_eq!(get.status, 200);
    assert_eq!(get.header("content-type"), Some("application/json"));
    let info: serde_json::Value = serde_json::from_str(&get.body).unwrap();
    assert_eq!(info["state"], "Not started");

    let bad = DRIVE.replace("rootfs", "bad");
    let refused = send(&mut client, "PUT", "/drives/bad", &bad);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.fault(), "no such file");

    let version = send(&mut client, "GET", "/version", "");
    assert_eq!(
        version.body,
        format!(
            r#"{{"firecracker_version":"{}"}}"#,
            sie_config::FIRECRACKER_API_VERSION
        )
    );
    let metrics = send(&mut client, "GET", "/metrics", "");
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert_eq!(metrics.body, "sie_up 1\n");

    let unknown = send(&mut client, "GET", "/nope", "");
    assert_eq!(unknown.status, 400);
    assert_eq!(
        unknown.fault(),
        "Invalid request method and/or path: GET nope."
    );
    let mismatch = send(&mut client, "PUT", "/drives/other", DRIVE);
    assert!(mismatch.fault().contains("does not match"));

    let stats = &harness.stats;
    assert_eq!(stats.count("put_drive"), 3);
    assert_eq!(stats.faults("put_drive"), 2);
    assert_eq!(stats.count("get_version"), 1);
    assert_eq!(stats.count("invalid"), 1);
    assert_eq!(harness.stats.snapshot()["get_instance_info"]["count"], 1);
    harness.stop();
}

#[test]
fn pipelined_requests_and_connection_close() {
    let harness = Harness::start(ServerOptions::default());
    let mut client = harness.connect();
    let mut burst = String::new();
    for _ in 0..3 {
        burst.push_str("GET / HTTP/1.1\r\n\r\n");
    }
    burst.push_str("GET /version HTTP/1.1\r\nConnection: close\r\n\r\n");
    client.write_all(burst.as_bytes()).unwrap();
    for _ in 0..3 {
        assert_eq!(read_reply(&mut client).status, 200);
    }
    let last = read_reply(&mut client);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(closed(&mut client));
    harness.stop();
}

#[test]
fn a_client_gone_mid_body_does_not_stop_others() {
    let harness = Harness::start(ServerOptions::default());
    let mut quitter = harness.connect();
    quitter
        .write_all(b"PUT /drives/rootfs HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"drive_id\"")
        .unwrap();
    let mut other = harness.connect();
    drop(quitter);
    assert_eq!(send(&mut other, "GET", "/", "").status, 200);
    // And one that leaves before reading its answer.
    let mut impatient = harness.connect();
    impatient.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(impatient);
    assert_eq!(send(&mut other, "GET", "/", "").status, 200);
    harness.stop();
}

#[test]
fn split_writes_are_reassembled() {
    let harness = Harness::start(ServerOptions::default());
    let mut client = harness.connect();
    let request = format!(
        "PUT /drives/rootfs HTTP/1.1\r\nContent-Length: {}\r\n\r\n{DRIVE}",
        DRIVE.len()
    );
    for chunk in request.as_bytes().chunks(1) {
        client.write_all(chunk).unwrap();
        client.flush().unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(read_reply(&mut client).status, 204);
    harness.stop();
}

#[test]
fn a_hundred_concurrent_connections() {
    let harness = Harness::start(ServerOptions {
        max_connections: 128,
        ..ServerOptions::default()
    });
    let mut clients: Vec<UnixStream> = (0..100).map(|_| harness.connect()).collect();
    for client in &mut clients {
        client.write_all(b"GET /version HTTP/1.1\r\n\r\n").unwrap();
    }
    for client in &mut clients {
        assert_eq!(read_reply(client).status, 200);
    }
    assert_eq!(harness.stats.count("get_version"), 100);
    harness.stop();
}

#[test]
fn a_client_over_the_limit_takes_the_place_of_the_one_idle_longest() {
    let harness = Harness::start(ServerOptions {
        max_connections: 2,
        ..ServerOptions::default()
    });
    let mut first = harness.connect();
    assert_eq!(send(&mut first, "GET", "/", "").status, 200);
    std::thread::sleep(Duration::from_millis(20));
    let mut second = harness.connect();
    assert_eq!(send(&mut second, "GET", "/", "").status, 200);
    let mut third = harness.connect();
    assert_eq!(send(&mut third, "GET", "/", "").status, 200);
    assert!(closed(&mut first), "the client idle longest made room");
    assert_eq!(send(&mut second, "GET", "/", "").status, 200);
    assert_eq!(harness.stats.closed_connections().0, 1);
    harness.stop();
}

#[test]
fn the_api_answers_while_two_hundred_idle_connections_are_held() {
    let harness = Harness::start(ServerOptions::default());
    let idle: Vec<UnixStream> = (0..200).map(|_| harness.connect()).collect();
    // Each of them was accepted (connect returns at once on a Unix socket
    // with room in the backlog); let the server take them all in.
    std::thread::sleep(Duration::from_millis(100));
    let mut orchestrator = harness.connect();
    assert_eq!(send(&mut orchestrator, "GET", "/", "").status, 200);
    let (evicted, _) = harness.stats.closed_connections();
    assert!(
        evicted >= 200 - DEFAULT_MAX_CONNECTIONS as u64,
        "{evicted} idle connections made room"
    );
    drop(idle);
    harness.stop();
}

#[test]
fn an_idle_connection_is_closed_after_the_timeout() {
    let harness = Harness::start(ServerOptions {
        idle_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    });
    let mut quiet = harness.connect();
    let mut busy = harness.connect();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(send(&mut busy, "GET", "/", "").status, 200);
    }
    assert!(closed(&mut quiet), "the quiet client was closed");
    assert_eq!(send(&mut busy, "GET", "/", "").status, 200);
    assert!(harness.stats.closed_connections().1 >= 1);
    harness.stop();
}

#[test]
fn oversize_body_is_refused_and_the_connection_closed() {
    let harness = Harness::start(ServerOptions {
        max_payload: 100,
        ..ServerOptions::default()
    });
    let mut client = harness.connect();
    client
        .write_all(b"PUT /logger HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut client);
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().contains("limit of 100 bytes"),
        "{}",
        reply.fault()
    );
    assert!(closed(&mut client));
    harness.stop();
}

#[test]
fn expect_continue_then_body() {
    let harness = Harness::start(ServerOptions::default());
    let mut client = harness.connect();
    let head = format!(
        "PUT /drives/rootfs HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        DRIVE.len()
    );
    client.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_reply(&mut client).status, 100);
    client.write_all(DRIVE.as_bytes()).unwrap();
    assert_eq!(read_reply(&mut client).status, 204);
    harness.stop();
}

#[test]
fn malformed_http_is_400_and_closed() {
    let harness = Harness::start(ServerOptions::default());
    let mut client = harness.connect();
    client.write_all(b"HELLO\r\n\r\n").unwrap();
    let reply = read_reply(&mut client);
    assert_eq!(reply.status, 400);
    assert!(reply.fault().contains("Malformed"));
    assert!(closed(&mut client));
    harness.stop();
}

#[test]
fn a_gone_vmm_gets_a_fault() {
    let path = socket_path();
    let (api, thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    let stopper = api.stopper();
    drop(api);
    let mut client = UnixStream::connect(&path).unwrap();
    let reply = send(
        &mut client,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.fault(), "the VMM is shutting down");
    stopper.stop();
    thread.join().unwrap();
    assert!(!path.exists());
}

#[test]
fn stopping_answers_a_request_the_vmm_sits_on() {
    let path = socket_path();
    let (api, thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let call = api.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(call.request, Request::GetInstanceInfo);
    api.stop_server();
    let reply = read_reply(&mut client);
    assert_eq!(reply.fault(), "the API server is shutting down");
    thread.join().unwrap();
    assert!(!path.exists());
    drop(call);
}

#[test]
fn vmm_that_drops_the_reply_gets_a_fault() {
    let path = socket_path();
    let (api, thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    let vmm = std::thread::spawn(move || {
        let call = api.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(call);
        api
    });
    let mut client = UnixStream::connect(&path).unwrap();
    let reply = send(&mut client, "GET", "/", "");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.fault(), "the VMM is shutting down");
    let api = vmm.join().unwrap();
    api.stop_server();
    thread.join().unwrap();
}

#[test]
fn stale_socket_is_replaced_and_live_or_foreign_files_refused() {
    let path = socket_path();
    // A stale socket: bound, then its listener closed without unlinking.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    let server = ApiServer::bind(&path, ServerOptions::default()).unwrap();
    assert!(
        !path.exists(),
        "the stale socket is gone, the new one unpublished"
    );
    let (api, thread) = server.spawn().unwrap();
    assert!(path.exists(), "spawn publishes the socket");

    // A live server at the path.
    match ApiServer::bind(&path, ServerOptions::default()) {
        Err(ApiError::InUse(p)) => assert_eq!(p, path),
        other => panic!("expected InUse, got {other:?}"),
    }
    api.stop_server();
    thread.join().unwrap();
    assert!(!path.exists(), "a stopped server removes the socket file");

    std::fs::write(&path, b"not a socket").unwrap();
    let error = ApiServer::bind(&path, ServerOptions::default()).unwrap_err();
    assert!(
        error.to_string().contains("exists and is not a socket"),
        "{error}"
    );
    assert!(path.exists(), "a foreign file is left alone");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_socket_appears_at_its_path_only_when_published() {
    let path = socket_path();
    let (mut api, thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn_unpublished()
        .unwrap();
    assert!(!path.exists(), "not there before the VMM is ready");
    assert!(UnixStream::connect(&path).is_err());
    api.publish().unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let call = api.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(call.request, Request::GetInstanceInfo);
    drop(call);
    api.publish().unwrap();
    api.stop_server();
    thread.join().unwrap();
    assert!(!path.exists());
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!(
                ".{}.",
                path.file_name().unwrap().to_string_lossy()
            ))
        })
        .collect();
    assert!(leftovers.is_empty(), "the hidden name is gone too");
}

#[test]
fn publishing_never_takes_the_path_from_a_live_server() {
    let path = socket_path();
    let (mut late, late_thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn_unpublished()
        .unwrap();
    // Another server took the path meanwhile.
    let (first, first_thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    match late.publish() {
        Err(ApiError::InUse(p)) => assert_eq!(p, path),
        other => panic!("expected InUse, got {other:?}"),
    }
    late.stop_server();
    late_thread.join().unwrap();
    assert!(path.exists(), "the live server keeps its socket");
    assert!(UnixStream::connect(&path).is_ok());
    first.stop_server();
    first_thread.join().unwrap();
    assert!(!path.exists());
}

#[test]
fn server_thread_is_named_fc_api() {
    let path = socket_path();
    let (api, thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    assert_eq!(thread.thread().name(), Some("fc_api"));
    api.stop_server();
    thread.join().unwrap();
    assert!(!path.exists());
}

#[test]
fn the_wake_fd_fires_in_an_epoll_loop() {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    let path = socket_path();
    let (api, thread) = ApiServer::bind(&path, ServerOptions::default())
        .unwrap()
        .spawn()
        .unwrap();
    assert!(api.try_recv().is_none());
    let epoll = Epoll::new().unwrap();
    let fd = api.wake_fd().as_raw_fd();
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 7))
        .unwrap();

    let client_path = path.clone();
    let client = std::thread::spawn(move || {
        let mut client = UnixStream::connect(&client_path).unwrap();
        (0..3)
            .map(|_| send(&mut client, "PATCH", "/vm", r#"{"state": "Paused"}"#).status)
            .collect::<Vec<u16>>()
    });
    let mut answered = 0;
    let mut events = vec![EpollEvent::default(); 4];
    while answered < 3 {
        let ready = epoll.wait(10_000, &mut events).unwrap();
        assert_eq!((ready, events[0].data()), (1, 7));
        while let Some(call) = api.try_recv() {
            assert_eq!(
                call.request,
                Request::SetVmState(sie_config::VmState::Paused)
            );
            call.reply.send(Response::NoContent).unwrap();
            answered += 1;
        }
    }
    assert_eq!(client.join().unwrap(), vec![204, 204, 204]);
    // Drained: nothing is pending and the fd is quiet.
    assert!(api.try_recv().is_none());
    assert_eq!(epoll.wait(0, &mut events).unwrap(), 0);
    api.stop_server();
    thread.join().unwrap();
}
