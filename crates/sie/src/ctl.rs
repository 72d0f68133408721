//! `sie ctl`: a small client for people, talking to a running sie (or
//! Firecracker) over its API socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{CtlArgs, CtlCommand, MigrateCommand, SnapshotCommand};

type BoxError = Box<dyn std::error::Error>;

/// How long to wait for an answer; pausing waits up to 2 s inside sie.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (a Prometheus page is a few KiB).
const MAX_BODY: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CtlError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {uri}: {source}")]
    Io {
        method: String,
        uri: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {uri}: no answer within {timeout:?}")]
    NoAnswer {
        method: String,
        uri: String,
        timeout: Duration,
    },
    #[error("{method} {uri}: malformed answer: {what}")]
    Malformed {
        method: String,
        uri: String,
        what: String,
    },
    #[error("{method} {uri}: {status}: {message}")]
    Refused {
        method: String,
        uri: String,
        status: u16,
        message: String,
    },
    #[error("invalid JSON body: {0}")]
    Body(serde_json::Error),
    #[error("this command needs the API socket: pass --sock PATH")]
    NoSocket,
    #[error(
        "the VM behind {0} has no console socket (--console-socket, or console_socket in PUT /serial)"
    )]
    NoConsole(String),
}

/// An answer from the server.
pub(crate) struct Answer {
    status: u16,
    body: Vec<u8>,
}

pub(crate) fn request(
    sock: &Path,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> Result<Answer, CtlError> {
    request_within(sock, method, uri, body, TIMEOUT)
}

/// [`request`], waiting up to `timeout` for the answer (a benchmark's
/// snapshot of a large guest through a VMM that writes all of its RAM).
pub(crate) fn request_within(
    sock: &Path,
    method: &str,
    uri: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Answer, CtlError> {
    let io = |source: std::io::Error| match source.kind() {
        // What a read timeout returns.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CtlError::NoAnswer {
            method: method.to_string(),
            uri: uri.to_string(),
            timeout,
        },
        _ => CtlError::Io {
            method: method.to_string(),
            uri: uri.to_string(),
            source,
        },
    };
    let malformed = |what: &str| CtlError::Malformed {
        method: method.to_string(),
        uri: uri.to_string(),
        what: what.to_string(),
    };
    let mut stream = UnixStream::connect(sock).map_err(|source| CtlError::Connect {
        path: sock.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n"
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body.as_bytes()).map_err(io)?;

    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(io)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no status line"))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Err(malformed("headers end early"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    // A 204 or 304 has no body, whatever the headers say: a server may
    // keep the connection open after one (Firecracker does).
    if status == 204 || status == 304 {
        length = Some(0);
    }
    match length {
        Some(n) if n > MAX_BODY => return Err(malformed("body too large")),
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).map_err(io)?;
        }
        None => {
            reader
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)
                .map_err(io)?;
        }
    }
    if status >= 300 {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(CtlError::Refused {
            method: method.to_string(),
            uri: uri.to_string(),
            status,
            message,
        });
    }
    Ok(Answer { status, body })
}

fn print_json(answer: &Answer) {
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(value) => println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
        Err(_) => print!("{}", String::from_utf8_lossy(&answer.body)),
    }
}

fn print_info(answer: &Answer) {
    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    for key in ["id", "state", "vmm_version", "app_name"] {
        if let Some(text) = value[key].as_str() {
            println!("{key:12} {text}");
        }
    }
}

fn micros(value: &Value) -> String {
    value.as_u64().map_or_else(
        || "-".to_string(),
        |ns| format!("{:.1}", ns as f64 / 1000.0),
    )
}

fn print_stats(answer: &Answer) {
    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    println!(
        "{:<18} {:>12} {:>12} {:>12}",
        "exit kind", "count", "p50 µs", "p99 µs"
    );
    if let Some(exits) = value["exits"].as_object() {
        for (kind, row) in exits {
            println!(
                "{kind:<18} {:>12} {:>12} {:>12}",
                row["count"],
                micros(&row["handling_ns"]["p50"]),
                micros(&row["handling_ns"]["p99"])
            );
        }
    }
    println!("{:<18} {:>12}", "total", value["total_exits"]);
    if let Some(devices) = value["devices"].as_object() {
        println!("\n{:<18} {:>12} {:>12}", "device", "reads", "writes");
        for (name, row) in devices {
            println!("{name:<18} {:>12} {:>12}", row["reads"], row["writes"]);
        }
    }
}

/// `sie ctl migrate ...`.
fn migrate(sock: &Path, command: MigrateCommand) -> Result<(), BoxError> {
    match command {
        MigrateCommand::Receive { url, net_overrides } => {
            let mut body = json!({ "receiver_url": url });
            if !net_overrides.is_empty() {
                body["network_overrides"] = json!(net_overrides);
            }
            request(sock, "PUT", "/migration/receive", Some(&body))?;
            println!("listening on {url} for a migrating VM");
        }
        MigrateCommand::Send {
            url,
            downtime_ms,
            timeout_s,
            no_auto_converge,
            max_bandwidth_mib_s,
            mode,
            local,
        } => {
            // Only what the user gave: local mode refuses the copy-only
            // settings, so defaults are left to sie.
            let mut body = json!({"destination_url": url, "timeout_s": timeout_s,
                "mode": mode, "local": local});
            if let Some(ms) = downtime_ms {
                body["downtime_ms"] = json!(ms);
            }
            if no_auto_converge {
                body["auto_converge"] = json!(false);
            }
            if let Some(cap) = max_bandwidth_mib_s {
                body["max_bandwidth_mib_s"] = json!(cap);
            }
            request(sock, "PUT", "/migration/send", Some(&body))?;
            println!("migration to {url} started (sie ctl migrate status follows it)");
        }
        MigrateCommand::Status { json } => {
            let answer = request(sock, "GET", "/migration", None)?;
            if json {
                print_json(&answer);
            } else {
                let status: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                println!("{}", migration_summary(&status));
            }
        }
        MigrateCommand::Cancel => {
            request(sock, "PUT", "/migration/cancel", None)?;
            println!("migration cancelled; the VM runs on here");
        }
    }
    Ok(())
}

/// One line from `GET /migration`'s figures.
fn migration_summary(status: &Value) -> String {
    let number = |key: &str| status[key].as_u64().unwrap_or(0);
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let mut line = format!(
        "{} {}: round {}, {:.1} MiB in {} pages, {:.1} MiB/s, dirtying {:.1} MiB/s, estimated downtime {} ms",
        status["state"].as_str().unwrap_or("?"),
        status["peer"].as_str().unwrap_or(""),
        number("round"),
        mib(number("bytes")),
        number("pages"),
        mib(number("bandwidth_bytes_per_s")),
        mib(number("dirty_rate_bytes_per_s")),
        number("estimated_downtime_ms"),
    );
    if let Some(throttle) = status["throttle_percent"].as_u64().filter(|t| *t > 0) {
        line.push_str(&format!(", vCPUs throttled {throttle}%"));
    }
    if let Some(downtime) = status["downtime_ms"].as_u64() {
        line.push_str(&format!(", downtime {downtime} ms"));
    }
    if let Some(total) = status["total_ms"].as_u64() {
        line.push_str(&format!(", total {total} ms"));
    }
    if let Some(error) = status["error"].as_str() {
        line.push_str(&format!(": {error}"));
    }
    line
}

/// Runs `sie ctl`.
pub fn run(args: CtlArgs) -> Result<u8, BoxError> {
    if let CtlCommand::Console { socket: Some(path) } = &args.command {
        return crate::console_client::attach(path);
    }
    let sock = args.sock.as_deref().ok_or(CtlError::NoSocket)?;
    let action = |action_type: &str| json!({ "action_type": action_type });
    match args.command {
        CtlCommand::Info => print_info(&request(sock, "GET", "/", None)?),
        CtlCommand::Start => {
            request(sock, "PUT", "/actions", Some(&action("InstanceStart")))?;
            println!("started");
        }
        CtlCommand::Pause => {
            request(sock, "PATCH", "/vm", Some(&json!({"state": "Paused"})))?;
            println!("paused");
        }
        CtlCommand::Resume => {
            request(sock, "PATCH", "/vm", Some(&json!({"state": "Resumed"})))?;
            println!("resumed");
        }
        CtlCommand::CtrlAltDel => {
            request(sock, "PUT", "/actions", Some(&action("SendCtrlAltDel")))?;
            println!("Ctrl-Alt-Del sent");
        }
        CtlCommand::FlushMetrics => {
            request(sock, "PUT", "/actions", Some(&action("FlushMetrics")))?;
            println!("metrics flushed");
        }
        CtlCommand::Config => print_json(&request(sock, "GET", "/vm/config", None)?),
        CtlCommand::MachineConfig => print_json(&request(sock, "GET", "/machine-config", None)?),
        CtlCommand::Version => print_json(&request(sock, "GET", "/version", None)?),
        CtlCommand::Metrics => print_json(&request(sock, "GET", "/metrics", None)?),
        CtlCommand::Stats { json } => {
            let answer = request(sock, "GET", "/stats", None)?;
            if json {
                print_json(&answer);
            } else {
                print_stats(&answer);
            }
        }
        CtlCommand::Snapshot(SnapshotCommand::Create {
            snapshot,
            mem,
            diff,
        }) => {
            let kind = if diff { "Diff" } else { "Full" };
            let body =
                json!({"snapshot_type": kind, "snapshot_path": snapshot, "mem_file_path": mem});
            request(sock, "PUT", "/snapshot/create", Some(&body))?;
            println!(
                "snapshot written to {} (memory: {})",
                snapshot.display(),
                mem.display()
            );
        }
        CtlCommand::Snapshot(SnapshotCommand::Load {
            snapshot,
            mem,
            resume,
            mem_backend,
            overrides,
        }) => {
            let mut load = sie_config::SnapshotLoad::from_files(snapshot, mem_backend, mem, resume);
            overrides.apply(&mut load);
            let body = serde_json::to_value(&load).map_err(CtlError::Body)?;
            request(sock, "PUT", "/snapshot/load", Some(&body))?;
            println!(
                "snapshot loaded ({})",
                if resume { "running" } else { "paused" }
            );
        }
        CtlCommand::Console { .. } => {
            let answer = request(sock, "GET", "/vm/config", None)?;
            let config: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let Some(path) = config["serial"]["console_socket"].as_str() else {
                return Err(CtlError::NoConsole(sock.display().to_string()).into());
            };
            return crate::console_client::attach(Path::new(path));
        }
        CtlCommand::Dump { path } => {
            request(sock, "PUT", "/vm/dump", Some(&json!({ "path": path })))?;
            println!("core written to {}", path.display());
        }
        CtlCommand::Migrate(command) => migrate(sock, command)?,
        CtlCommand::Request { method, path, body } => {
            let body = body
                .map(|text| serde_json::from_str::<Value>(&text).map_err(CtlError::Body))
                .transpose()?;
            let method = method.to_ascii_uppercase();
            let answer = request(sock, &method, &path, body.as_ref())?;
            if answer.status == 204 {
                println!("done (204)");
            } else {
                print_json(&answer);
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_never_answers_is_a_one_line_timeout() {
        let dir = std::env::temp_dir().join(format!("sie-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        // Accepts (the kernel does, into the backlog) and never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let timeout = Duration::from_millis(50);
        let error = request_within(&sock, "PUT", "/snapshot/create", None, timeout)
            .err()
            .expect("no answer is an error");
        assert!(matches!(error, CtlError::NoAnswer { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "PUT /snapshot/create: no answer within 50ms"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
