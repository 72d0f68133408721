//! V2 session tokens: `PUT /latest/api/token` issues one for 1 to 21600
//! seconds; a `GET` is answered only with a token that is known and not
//! expired.
//!
//! Tokens are 32 bytes from the kernel's random source, hex-encoded, kept
//! with their expiry. At most [`MAX_TOKENS`] live at once: when full,
//! expired ones go first, then the one closest to expiry, so a guest that
//! asks for tokens in a loop costs bounded memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest lifetime a guest may ask for, seconds.
pub const MIN_TTL_SECONDS: u32 = 1;
/// Longest (6 hours), seconds.
pub const MAX_TTL_SECONDS: u32 = 21600;
/// Most tokens held at once.
pub const MAX_TOKENS: usize = 1024;
/// Random bytes per token.
const TOKEN_BYTES: usize = 32;

/// Why no token was issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The lifetime is out of range (Firecracker's text).
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    /// The kernel gave no random bytes.
    #[error("cannot generate a token: {0}")]
    Random(String),
}

/// The tokens issued so far.
#[derive(Debug, Default)]
pub struct TokenAuthority {
    expiry: HashMap<String, Instant>,
}

impl TokenAuthority {
    /// A new token valid for `ttl_seconds` from `now`.
    pub fn issue(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, TokenError> {
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        crate::random_bytes(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if self.expiry.len() >= MAX_TOKENS {
            self.expiry.retain(|_, expires| *expires > now);
        }
        if self.expiry.len() >= MAX_TOKENS
            && let Some(first) = self
                .expiry
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(token, _)| token.clone())
        {
            self.expiry.remove(&first);
        }
        self.expiry.insert(
            token.clone(),
            now + Duration::from_secs(u64::from(ttl_seconds)),
        );
        Ok(token)
    }

    /// Whether `token` was issued and has not expired at `now`.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        self.expiry.get(token).is_some_and(|expires| *expires > now)
    }

    /// How many tokens are held.
    pub fn len(&self) -> usize {
        self.expiry.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_until_their_ttl_passes() {
        let mut tokens = TokenAuthority::default();
        let now = Instant::now();
        let token = tokens.issue(60, now).unwrap();
        assert_eq!(token.len(), 64);
        assert!(tokens.is_valid(&token, now + Duration::from_secs(59)));
        assert!(!tokens.is_valid(&token, now + Duration::from_secs(60)));
        assert!(!tokens.is_valid("forged", now));
        assert_ne!(tokens.issue(60, now).unwrap(), token);
    }

    #[test]
    fn ttl_outside_1_to_21600_is_refused() {
        let mut tokens = TokenAuthority::default();
        let now = Instant::now();
        assert_eq!(tokens.issue(0, now), Err(TokenError::InvalidTtl(0)));
        assert_eq!(tokens.issue(21601, now), Err(TokenError::InvalidTtl(21601)));
        assert!(tokens.issue(21600, now).is_ok());
        assert!(tokens.issue(1, now).is_ok());
    }

    #[test]
    fn a_token_flood_keeps_at_most_max_tokens() {
        let mut tokens = TokenAuthority::default();
        let now = Instant::now();
        let first = tokens.issue(1, now).unwrap();
        for _ in 0..MAX_TOKENS + 10 {
            tokens.issue(100, now).unwrap();
        }
        assert_eq!(tokens.len(), MAX_TOKENS);
        // The one closest to expiry made room first.
        assert!(!tokens.is_valid(&first, now));
    }
}
