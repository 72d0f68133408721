//! Each `logger` field changes the lines: level, origin, module, and the
//! Firecracker layout with the instance id and thread.

use sie_vmm::controller::LoggerControl;

use super::*;

/// A logger writing to its own file, used as the default subscriber while
/// `body` runs, so tests neither touch the global logger nor each other.
fn lines_logged(name: &str, setup: impl FnOnce(&mut Logging), body: impl FnOnce()) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("sie-logfmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.log"));
    let _ = std::fs::remove_file(&path);
    let target = Arc::new(Target::new());
    let options = Arc::new(RwLock::new(LineOptions {
        level: LevelFilter::INFO,
        show_level: true,
        ..LineOptions::default()
    }));
    let subscriber = LineSubscriber {
        target: target.clone(),
        options: options.clone(),
    };
    let mut logging = Logging { target, options };
    logging.set_path(&path).unwrap();
    setup(&mut logging);
    tracing::subscriber::with_default(subscriber, body);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        // Drop the timestamp: "2026-12-07T03:00:00.000000Z rest".
        .map(|line| line.split_once(' ').unwrap().1.to_string())
        .collect()
}

fn logger(json: &str) -> sie_config::Logger {
    serde_json::from_str(json).unwrap()
}

#[test]
fn show_level_adds_and_removes_the_level() {
    let shown = lines_logged("level-on", |_| {}, || tracing::warn!("hello"));
    assert_eq!(shown, ["[WARN] hello"]);
    let hidden = lines_logged(
        "level-off",
        |l| l.configure(&logger(r#"{"show_level": false}"#)).unwrap(),
        || tracing::warn!("hello"),
    );
    assert_eq!(hidden, ["hello"]);
}

#[test]
fn show_log_origin_adds_file_and_line() {
    let mut line_number = 0;
    let lines = lines_logged(
        "origin",
        |l| {
            l.configure(&logger(r#"{"show_log_origin": true}"#))
                .unwrap()
        },
        || {
            line_number = line!() + 1;
            tracing::error!("boom");
        },
    );
    assert_eq!(
        lines,
        [format!(
            "[ERROR:crates/sie/src/logging_tests.rs:{line_number}] boom"
        )]
    );
}

#[test]
fn module_keeps_only_events_under_that_path() {
    let lines = lines_logged(
        "module",
        |l| {
            l.configure(&logger(r#"{"module": "sie_vmm::controller"}"#))
                .unwrap()
        },
        || {
            tracing::warn!(target: "sie_vmm::controller::handle", "kept");
            tracing::warn!(target: "sie_vmm::virtio", "dropped");
            tracing::warn!("dropped too");
        },
    );
    assert_eq!(lines, ["[WARN] kept"]);
}

#[test]
fn firecracker_layout_names_the_instance_and_thread_and_hides_the_level() {
    let thread = std::thread::current().name().unwrap_or("-").to_string();
    let lines = lines_logged(
        "firecracker",
        |l| l.serve_as_firecracker("vm7"),
        || tracing::info!("started"),
    );
    assert_eq!(lines, [format!("[vm7:{thread}] started")]);
    let lines = lines_logged(
        "firecracker-all",
        |l| {
            l.serve_as_firecracker("vm7");
            l.configure(&logger(r#"{"show_level": true, "level": "Info"}"#))
                .unwrap();
        },
        || tracing::info!(count = 3, "started"),
    );
    assert_eq!(lines, [format!("[vm7:{thread}:INFO] started count=3")]);
}

#[test]
fn fields_follow_the_message_as_tracing_subscriber_wrote_them() {
    let lines = lines_logged(
        "fields",
        |_| {},
        || tracing::warn!(path = "/x", r#type = 2, ok = ?Some(1), "wrote"),
    );
    assert_eq!(lines, [r#"[WARN] wrote path="/x" type=2 ok=Some(1)"#]);
}

#[test]
fn a_span_is_ignored_and_its_events_still_logged() {
    let lines = lines_logged(
        "span",
        |_| {},
        || tracing::info_span!("outer", n = 1).in_scope(|| tracing::warn!("inside")),
    );
    assert_eq!(lines, ["[WARN] inside"]);
}

#[test]
fn the_level_can_be_raised_and_lowered() {
    let lines = lines_logged(
        "level-change",
        |l| l.set_level("Error").unwrap(),
        || {
            tracing::warn!("dropped");
            tracing::error!("kept");
        },
    );
    assert_eq!(lines, ["[ERROR] kept"]);
}
