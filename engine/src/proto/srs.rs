//! The Sender Rewriting Scheme (SRS0/SRS1, as libsrs2, postsrsd and Exim write it): a
//! forwarded message's envelope sender `user@host` becomes `SRS0=HHHH=TT=host=user@ourdomain`,
//! so the next hop checks SPF against our domain; a bounce to that address is verified (HMAC
//! and age) and turned back into `user@host`. An SRS0 address of another forwarder becomes
//! `SRS1=HHHH=forwarder==HHHH=TT=host=user@ourdomain` (the chain does not grow).
//!
//! Input: envelope addresses (untrusted at RCPT). Output: rewritten addresses or a typed error.
//! Hash: the first 4 base64 characters of HMAC-SHA1(secret, lowercased fields); timestamp: days
//! since the epoch modulo 1024 in two base32 characters.
//!
//! Security: an address that does not verify with the current or an old secret, or is older
//! than `max_age`, is refused, so the forwarder is no open relay for forged bounces.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

const HASH_LEN: usize = 4;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The timestamp counts days modulo this many (two base32 characters).
const TIME_SLOTS: u64 = 1024;
/// Separators libsrs2 accepts after the `SRS0`/`SRS1` tag.
const SEPARATORS: &[u8] = b"=+-";

/// Why an SRS address does not reverse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    #[error("not an SRS address")]
    NotSrs,
    #[error("malformed SRS address")]
    Malformed,
    #[error("SRS hash does not verify (forged)")]
    BadHash,
    #[error("SRS address has expired")]
    Expired,
}

/// An SRS codec for one domain.
#[derive(Debug, Clone)]
pub struct Srs {
    domain: String,
    /// The first one signs; all verify.
    secrets: Vec<Vec<u8>>,
    max_age_days: u64,
}

impl Srs {
    /// `secrets[0]` makes new addresses; every one of them verifies. Empty secrets are dropped.
    pub fn new(domain: &str, secrets: &[String], max_age_days: u64) -> Option<Srs> {
        let secrets: Vec<Vec<u8>> = secrets.iter().filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec()).collect();
        if secrets.is_empty() || domain.is_empty() {
            return None;
        }
        Some(Srs { domain: domain.to_ascii_lowercase(), secrets, max_age_days })
    }

    /// The domain SRS addresses are in.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The SRS form of `sender` (`user@host`) at unix time `now`. The null sender and
    /// addresses without a domain are returned unchanged.
    pub fn forward(&self, sender: &str, now: u64) -> String {
        let Some((user, host)) = sender.rsplit_once('@') else {
            return sender.to_string();
        };
        if user.is_empty() || host.is_empty() {
            return sender.to_string();
        }
        if let Some(rest) = tagged(user, "SRS1") {
            // Another forwarder's SRS1: keep its first forwarder and the SRS0 part, re-hash.
            if let Some((_, after_hash)) = rest.split_once('=') {
                if let Some((first, srs0)) = after_hash.split_once('=') {
                    let hash = self.hash(0, &[first, srs0]);
                    return format!("SRS1={hash}={first}={srs0}@{}", self.domain);
                }
            }
        }
        if tagged(user, "SRS0").is_some() {
            let srs0 = &user[4..];
            let hash = self.hash(0, &[host, srs0]);
            return format!("SRS1={hash}={host}={srs0}@{}", self.domain);
        }
        let stamp = timestamp(now);
        let hash = self.hash(0, &[&stamp, host, user]);
        format!("SRS0={hash}={stamp}={host}={user}@{}", self.domain)
    }

    /// Whether `addr` is in our SRS domain and looks like SRS (before it is verified).
    pub fn is_srs(&self, addr: &str) -> bool {
        addr.rsplit_once('@').is_some_and(|(user, host)| {
            host.eq_ignore_ascii_case(&self.domain)
                && (tagged(user, "SRS0").is_some() || tagged(user, "SRS1").is_some())
        })
    }

    /// The address a bounce to `addr` goes back to: `user@host` for SRS0, the first
    /// forwarder's SRS0 address for SRS1.
    pub fn reverse(&self, addr: &str, now: u64) -> Result<String, SrsError> {
        let (user, host) = addr.rsplit_once('@').ok_or(SrsError::NotSrs)?;
        if !host.eq_ignore_ascii_case(&self.domain) {
            return Err(SrsError::NotSrs);
        }
        if let Some(rest) = tagged(user, "SRS1") {
            let (hash, rest) = rest.split_once('=').ok_or(SrsError::Malformed)?;
            let (first, srs0) = rest.split_once('=').ok_or(SrsError::Malformed)?;
            if first.is_empty() || srs0.is_empty() {
                return Err(SrsError::Malformed);
            }
            self.check_hash(hash, &[first, srs0])?;
            return Ok(format!("SRS0{srs0}@{first}"));
        }
        let rest = tagged(user, "SRS0").ok_or(SrsError::NotSrs)?;
        let mut fields = rest.splitn(4, '=');
        let (Some(hash), Some(stamp), Some(orig_host), Some(orig_user)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(SrsError::Malformed);
        };
        if orig_host.is_empty() || orig_user.is_empty() {
            return Err(SrsError::Malformed);
        }
        self.check_hash(hash, &[stamp, orig_host, orig_user])?;
        self.check_stamp(stamp, now)?;
        Ok(format!("{orig_user}@{orig_host}"))
    }

    fn check_hash(&self, hash: &str, fields: &[&str]) -> Result<(), SrsError> {
        // Case-insensitive like libsrs2: some MTAs change the case of local parts.
        let ok = (0..self.secrets.len()).any(|i| self.hash(i, fields).eq_ignore_ascii_case(hash));
        if ok {
            Ok(())
        } else {
            Err(SrsError::BadHash)
        }
    }

    fn check_stamp(&self, stamp: &str, now: u64) -> Result<(), SrsError> {
        let value = |c: u8| BASE32.iter().position(|b| *b == c.to_ascii_uppercase()).map(|p| p as u64);
        let bytes = stamp.as_bytes();
        let (Some(hi), Some(lo)) = (bytes.first().and_then(|c| value(*c)), bytes.get(1).and_then(|c| value(*c))) else {
            return Err(SrsError::Malformed);
        };
        if bytes.len() != 2 {
            return Err(SrsError::Malformed);
        }
        let then = (hi << 5) | lo;
        let mut today = (now / 86_400) % TIME_SLOTS;
        while today < then {
            today += TIME_SLOTS;
        }
        if today - then <= self.max_age_days {
            Ok(())
        } else {
            Err(SrsError::Expired)
        }
    }

    fn hash(&self, secret: usize, fields: &[&str]) -> String {
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&self.secrets[secret]) else {
            return String::new();
        };
        for field in fields {
            mac.update(field.to_ascii_lowercase().as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let mut text = base64::engine::general_purpose::STANDARD.encode(digest);
        text.truncate(HASH_LEN);
        text
    }
}

/// The rest of `user` after `tag` and one separator, when `user` starts so (any case).
fn tagged<'a>(user: &'a str, tag: &str) -> Option<&'a str> {
    let head = user.get(..tag.len())?;
    let sep = *user.as_bytes().get(tag.len())?;
    (head.eq_ignore_ascii_case(tag) && SEPARATORS.contains(&sep)).then(|| &user[tag.len() + 1..])
}

fn timestamp(now: u64) -> String {
    let days = (now / 86_400) % TIME_SLOTS;
    let chars = [BASE32[((days >> 5) & 31) as usize], BASE32[(days & 31) as usize]];
    String::from_utf8_lossy(&chars).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000;

    fn srs() -> Srs {
        Srs::new("fwd.example", &["s3cret".to_string(), "old".to_string()], 21).unwrap()
    }

    #[test]
    fn srs0_round_trip() {
        let address = srs().forward("Alice@Origin.example", NOW);
        assert!(address.starts_with("SRS0="), "{address}");
        assert!(address.ends_with("=Origin.example=Alice@fwd.example"), "{address}");
        assert!(srs().is_srs(&address));
        assert_eq!(srs().reverse(&address, NOW).unwrap(), "Alice@Origin.example");
        // Case changed on the way (some MTAs lower-case local parts): still verifies.
        assert_eq!(srs().reverse(&address.to_ascii_lowercase(), NOW).unwrap(), "alice@origin.example");
    }

    #[test]
    fn forged_and_expired_addresses_are_refused() {
        let address = srs().forward("alice@origin.example", NOW);
        let forged = address.replace("alice", "mallory");
        assert_eq!(srs().reverse(&forged, NOW), Err(SrsError::BadHash));
        assert_eq!(srs().reverse(&address, NOW + 21 * 86_400), Ok("alice@origin.example".into()));
        assert_eq!(srs().reverse(&address, NOW + 22 * 86_400), Err(SrsError::Expired));
        assert_eq!(srs().reverse("SRS0=xx@fwd.example", NOW), Err(SrsError::Malformed));
        assert_eq!(srs().reverse("alice@fwd.example", NOW), Err(SrsError::NotSrs));
        assert_eq!(srs().reverse(&address.replace("fwd.example", "other.example"), NOW), Err(SrsError::NotSrs));
        let other = Srs::new("fwd.example", &["different".to_string()], 21).unwrap();
        assert_eq!(other.reverse(&address, NOW), Err(SrsError::BadHash));
    }

    #[test]
    fn an_old_secret_still_verifies() {
        let before = Srs::new("fwd.example", &["old".to_string()], 21).unwrap().forward("a@b.example", NOW);
        assert_eq!(srs().reverse(&before, NOW).unwrap(), "a@b.example");
    }

    #[test]
    fn srs0_of_another_forwarder_becomes_srs1_and_back() {
        let first = Srs::new("first.example", &["k1".to_string()], 21).unwrap();
        let srs0 = first.forward("alice@origin.example", NOW);
        let srs1 = srs().forward(&srs0, NOW);
        let (hash_and_rest, _) = srs0.split_once('@').unwrap();
        assert_eq!(srs1.split('=').nth(2), Some("first.example"), "{srs1}");
        assert!(srs1.ends_with(&format!("={}@fwd.example", &hash_and_rest[4..])), "{srs1}");
        // Forwarded again by a third hop: still one SRS1 naming the first forwarder.
        let third = Srs::new("third.example", &["k3".to_string()], 21).unwrap();
        let again = third.forward(&srs1, NOW);
        assert!(again.starts_with("SRS1=") && again.contains("=first.example=="), "{again}");
        assert_eq!(third.reverse(&again, NOW).unwrap(), srs0);
        // Our SRS1 reverses to the first forwarder's SRS0, which it reverses itself.
        assert_eq!(srs().reverse(&srs1, NOW).unwrap(), srs0);
        assert_eq!(first.reverse(&srs0, NOW).unwrap(), "alice@origin.example");
    }

    #[test]
    fn timestamps_wrap_around_1024_days() {
        let day = 1023 * 86_400;
        let address = srs().forward("a@b.example", day);
        assert_eq!(srs().reverse(&address, day + 5 * 86_400).unwrap(), "a@b.example");
    }
}
