//! MAC addresses as the configuration spells them ("06:00:ac:10:00:02")
//! and as the device needs them.

use std::io;

/// A MAC address.
pub type MacAddr = [u8; 6];

/// A random locally administered unicast address, for a device whose
/// configuration names none.
/// Drawn with getrandom(2), not /dev/urandom, which a jail does not have.
pub fn random_mac() -> io::Result<MacAddr> {
    let mut mac = [0u8; 6];
    // SAFETY: `mac` is valid for writes of its whole length; getrandom
    // writes at most that many bytes.
    let got = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if got != mac.len() as isize {
        return Err(io::Error::last_os_error());
    }
    mac[0] = (mac[0] & !0x01) | 0x02;
    Ok(mac)
}

/// Parses six colon-separated pairs of hex digits. Refuses multicast
/// addresses: a guest NIC with one would never receive unicast traffic.
pub fn parse_mac(text: &str) -> Result<MacAddr, MacError> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or(MacError::Syntax)?;
        // from_str_radix alone would take a sign ("+6").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MacError::Syntax);
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| MacError::Syntax)?;
    }
    if parts.next().is_some() {
        return Err(MacError::Syntax);
    }
    if mac[0] & 0x01 != 0 {
        return Err(MacError::Multicast);
    }
    Ok(mac)
}

/// The usual lower-case colon-separated form.
pub fn format_mac(mac: &MacAddr) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Why a MAC address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    /// Not six colon-separated hex pairs.
    #[error("a MAC address is six colon-separated hex pairs, e.g. 06:00:ac:10:00:02")]
    Syntax,
    /// The group bit is set.
    #[error("a multicast MAC address cannot identify a network interface")]
    Multicast,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let mac = parse_mac("06:00:AC:10:00:02").expect("valid");
        assert_eq!(mac, [0x06, 0, 0xac, 0x10, 0, 2]);
        assert_eq!(format_mac(&mac), "06:00:ac:10:00:02");
    }

    #[test]
    fn refuses_malformed_and_multicast() {
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "6:00:ac:10:00:02",
            "06-00-ac-10-00-02",
            "0g:00:ac:10:00:02",
            "+6:00:ac:10:00:02",
        ] {
            assert_eq!(parse_mac(bad), Err(MacError::Syntax), "{bad}");
        }
        assert_eq!(parse_mac("01:00:5e:00:00:01"), Err(MacError::Multicast));
    }

    #[test]
    fn generated_macs_are_local_unicast_and_differ() {
        let a = random_mac().expect("mac");
        let b = random_mac().expect("mac");
        assert_eq!(a[0] & 0x03, 0x02);
        assert_ne!(a, b);
    }
}
