//! sie's live migration requests (an extension: Firecracker has none):
//! `PUT /migration/receive`, `PUT /migration/send`.
//!
//! [`MigrationSend::check`] refuses, in one line, what this version
//! cannot do (local mode over TCP, or with a mode that copies memory),
//! so every accepted field takes effect.

use serde::{Deserialize, Serialize};

use crate::snapshot::{NetworkOverride, check_network_overrides};

/// How memory moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    /// Copy memory while the guest runs, then pause for the rest.
    #[default]
    Precopy,
    /// Resume on the destination at once and fetch pages on demand.
    Postcopy,
    /// Pre-copy, switching to post-copy when it does not converge.
    Auto,
}

/// `PUT /migration/receive` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationReceive {
    /// `unix:PATH` or `tcp:HOST:PORT` to listen on.
    pub receiver_url: String,
    /// Taps to use here instead of the source's (as in `PUT
    /// /snapshot/load`): two sie processes on one host cannot hold the same
    /// tap, and the source holds its own until the move is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
}

/// `PUT /migration/send` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSend {
    /// `unix:PATH` or `tcp:HOST:PORT` of the receiving sie.
    pub destination_url: String,
    /// The pause the guest may see at the switch-over (absent: 300 ms;
    /// see [`MigrationSend::downtime_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Give up (and keep running here) after this long (`auto`: turn to
    /// post-copy instead, once the first pass is over).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Pre-copy, post-copy, or pre-copy turning to post-copy (`auto`).
    #[serde(default)]
    pub mode: MigrationMode,
    /// Same-host handover: guest RAM (shared memory) is passed to the
    /// receiver over the Unix socket instead of copied.
    #[serde(default)]
    pub local: bool,
    /// Slow the guest's vCPUs step by step when the pre-copy rounds do
    /// not shrink (a guest dirtying memory faster than the link carries).
    /// Absent: on (see [`MigrationSend::auto_converge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,
    /// Send at most this many MiB per second (absent: as fast as the link
    /// goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mib_s: Option<u64>,
}

/// The downtime target when a send names none.
const DEFAULT_DOWNTIME_MS: u64 = 300;

fn default_timeout_s() -> u64 {
    600
}

/// Checks a migration URL's shape: `unix:PATH` or `tcp:HOST:PORT`.
pub fn check_migration_url(url: &str) -> Result<(), String> {
    if let Some(path) = url.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("migration url {url}: no socket path"));
        }
        return Ok(());
    }
    if let Some(address) = url.strip_prefix("tcp:") {
        let port = address
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        return match port {
            Some(Ok(_)) => Ok(()),
            _ => Err(format!("migration url {url}: expected tcp:HOST:PORT")),
        };
    }
    Err(format!(
        "migration url {url}: expected unix:PATH or tcp:HOST:PORT"
    ))
}

impl MigrationReceive {
    /// Refuses a malformed URL or override.
    pub fn check(&self) -> Result<(), String> {
        check_migration_url(&self.receiver_url)?;
        check_network_overrides("migration/receive", &self.network_overrides)
    }
}

impl MigrationSend {
    /// The pause the guest may see at the switch-over (300 ms unless set).
    pub fn downtime_ms(&self) -> u64 {
        self.downtime_ms.unwrap_or(DEFAULT_DOWNTIME_MS)
    }

    /// Whether to throttle a guest whose rounds do not shrink (on unless
    /// set).
    pub fn auto_converge(&self) -> bool {
        self.auto_converge.unwrap_or(true)
    }

    /// Refuses a malformed URL and what sie cannot do yet.
    pub fn check(&self) -> Result<(), String> {
        check_migration_url(&self.destination_url)?;
        if self.local && !self.destination_url.starts_with("unix:") {
            return Err(format!(
                "local migration passes guest memory over a Unix socket: use a unix:PATH destination, not {}",
                self.destination_url
            ));
        }
        // Local mode copies no page, before or after the switch-over.
        let copying = match self.mode {
            MigrationMode::Precopy => None,
            MigrationMode::Postcopy => Some("postcopy"),
            MigrationMode::Auto => Some("auto"),
        };
        if let Some(mode) = copying.filter(|_| self.local) {
            return Err(format!(
                "local migration hands guest memory over and copies none: mode {mode} does not apply (send with mode precopy)"
            ));
        }
        // Local mode pauses at once and copies nothing: no rounds to cap,
        // throttle or fit into a downtime target.
        let copy_only = [
            ("max_bandwidth_mib_s", self.max_bandwidth_mib_s.is_some()),
            ("auto_converge", self.auto_converge.is_some()),
            ("downtime_ms", self.downtime_ms.is_some()),
        ];
        if let Some((field, _)) = copy_only.iter().find(|(_, set)| *set && self.local) {
            return Err(format!(
                "local migration hands guest memory over and copies none: {field} does not apply"
            ));
        }
        if self.timeout_s == 0 {
            return Err("timeout_s must be at least 1".into());
        }
        if self.max_bandwidth_mib_s == Some(0) {
            return Err("max_bandwidth_mib_s must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(json: &str) -> MigrationSend {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn send_defaults_and_refusals() {
        let plain = send(r#"{"destination_url": "unix:/tmp/m.sock"}"#);
        assert_eq!(
            (
                plain.downtime_ms(),
                plain.timeout_s,
                plain.mode,
                plain.local
            ),
            (300, 600, MigrationMode::Precopy, false)
        );
        assert!(plain.auto_converge());
        assert_eq!(plain.max_bandwidth_mib_s, None);
        assert_eq!(plain.check(), Ok(()));
        let post = send(r#"{"destination_url": "tcp:127.0.0.1:4000", "mode": "postcopy"}"#);
        assert_eq!(post.mode, MigrationMode::Postcopy);
        assert_eq!(post.check(), Ok(()));
        let auto = send(r#"{"destination_url": "unix:/x", "mode": "auto"}"#);
        assert_eq!(auto.mode, MigrationMode::Auto);
        assert_eq!(auto.check(), Ok(()));
        let local = send(r#"{"destination_url": "unix:/x", "local": true}"#);
        assert_eq!(local.check(), Ok(()));
        let local_tcp = send(r#"{"destination_url": "tcp:127.0.0.1:4000", "local": true}"#);
        assert_eq!(
            local_tcp.check().unwrap_err(),
            "local migration passes guest memory over a Unix socket: use a unix:PATH destination, not tcp:127.0.0.1:4000"
        );
        let local_post =
            send(r#"{"destination_url": "unix:/x", "local": true, "mode": "postcopy"}"#);
        assert_eq!(
            local_post.check().unwrap_err(),
            "local migration hands guest memory over and copies none: mode postcopy does not apply (send with mode precopy)"
        );
        let local_auto = send(r#"{"destination_url": "unix:/x", "local": true, "mode": "auto"}"#);
        assert!(
            local_auto
                .check()
                .unwrap_err()
                .contains("mode auto does not apply")
        );
    }

    #[test]
    fn auto_converge_and_the_bandwidth_cap_are_taken_or_refused() {
        let off = send(
            r#"{"destination_url": "unix:/x", "auto_converge": false, "max_bandwidth_mib_s": 4}"#,
        );
        assert!(!off.auto_converge());
        assert_eq!(off.max_bandwidth_mib_s, Some(4));
        assert_eq!(off.check(), Ok(()));
        let local_cap =
            send(r#"{"destination_url": "unix:/x", "local": true, "max_bandwidth_mib_s": 4}"#);
        assert_eq!(
            local_cap.check().unwrap_err(),
            "local migration hands guest memory over and copies none: max_bandwidth_mib_s does not apply"
        );
        for (field, json) in [
            ("auto_converge", r#""auto_converge": false"#),
            ("auto_converge", r#""auto_converge": true"#),
            ("downtime_ms", r#""downtime_ms": 50"#),
        ] {
            let body = format!(r#"{{"destination_url": "unix:/x", "local": true, {json}}}"#);
            assert_eq!(
                send(&body).check().unwrap_err(),
                format!(
                    "local migration hands guest memory over and copies none: {field} does not apply"
                )
            );
        }
        let zero = send(r#"{"destination_url": "unix:/x", "max_bandwidth_mib_s": 0}"#);
        assert_eq!(
            zero.check().unwrap_err(),
            "max_bandwidth_mib_s must be at least 1"
        );
        for bad in [
            r#"{"destination_url": "unix:/x", "auto_converge": "yes"}"#,
            r#"{"destination_url": "unix:/x", "auto_converge": 1}"#,
            r#"{"destination_url": "unix:/x", "max_bandwidth_mib_s": -1}"#,
            r#"{"destination_url": "unix:/x", "auto_converg": true}"#,
        ] {
            assert!(serde_json::from_str::<MigrationSend>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn receive_takes_network_overrides_and_refuses_bad_ones() {
        let plain: MigrationReceive =
            serde_json::from_str(r#"{"receiver_url": "unix:/x"}"#).unwrap();
        assert!(plain.network_overrides.is_empty());
        assert_eq!(plain.check(), Ok(()));
        let with: MigrationReceive = serde_json::from_str(
            r#"{"receiver_url": "unix:/x", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]}"#,
        )
        .unwrap();
        assert_eq!(with.network_overrides[0].host_dev_name, "tap1");
        assert_eq!(with.check(), Ok(()));
        let twice: MigrationReceive = serde_json::from_str(
            r#"{"receiver_url": "unix:/x", "network_overrides": [{"iface_id": "a", "host_dev_name": "t"}, {"iface_id": "a", "host_dev_name": "u"}]}"#,
        )
        .unwrap();
        assert_eq!(
            twice.check().unwrap_err(),
            "migration/receive: network_overrides names iface_id \"a\" twice"
        );
        let long: MigrationReceive = serde_json::from_str(
            r#"{"receiver_url": "unix:/x", "network_overrides": [{"iface_id": "a", "host_dev_name": "a-name-far-too-long"}]}"#,
        )
        .unwrap();
        assert!(long.check().unwrap_err().contains("is not a tap name"));
    }

    #[test]
    fn urls_are_unix_or_tcp() {
        assert!(check_migration_url("unix:/run/m.sock").is_ok());
        assert!(check_migration_url("tcp:[::1]:4000").is_ok());
        assert!(check_migration_url("tcp:localhost").is_err());
        assert!(check_migration_url("unix:").is_err());
        assert_eq!(
            check_migration_url("http://x").unwrap_err(),
            "migration url http://x: expected unix:PATH or tcp:HOST:PORT"
        );
    }
}
