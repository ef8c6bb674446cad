//! Checking AUTH credentials against `auth_users` (argon2id PHC strings), hashing passwords for
//! `mailflow hash-password`, and slowing down clients that keep guessing.
//!
//! Security: passwords never leave this module and are never logged. Verification runs the
//! same argon2 work for unknown users as for known ones, so timing does not reveal names.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Failures from one address within this window count together.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Past this many recent failures an address may not try AUTH at all until the window passes.
pub const MAX_FAILURES: u32 = 10;
/// Delay added per recent failure before answering 535, capped.
const DELAY_PER_FAILURE: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// A PHC string for `password` (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `user`/`password` match `auth_users`. Blocking (argon2 is deliberately slow).
pub fn verify(users: &BTreeMap<String, String>, user: &str, password: &str) -> bool {
    // A fixed hash to burn the same time for unknown users.
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1PpG7dEgg9n0E2MtkL4HmNIjvsmsWAi6lmD6Ah8Vc4k";
    let (hash, known) = match users.get(user) {
        Some(hash) => (hash.as_str(), true),
        None => (DUMMY, false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        tracing::error!(user = %user, "auth_users entry is not a valid PHC hash (use mailflow hash-password)");
        return false;
    };
    let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
    ok && known
}

/// Recent AUTH failures per client address.
#[derive(Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    /// Recent failures from `ip` (0 once the window has passed).
    pub fn recent(&self, ip: IpAddr) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            Some((_, since)) if since.elapsed() > FAILURE_WINDOW => {
                map.remove(&ip);
                0
            }
            Some((count, _)) => *count,
            None => 0,
        }
    }

    /// Records a failure and returns how long to wait before answering.
    pub fn fail(&self, ip: IpAddr) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, since)| since.elapsed() <= FAILURE_WINDOW);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() > FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        (DELAY_PER_FAILURE * entry.0).min(MAX_DELAY)
    }

    pub fn succeed(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let users = BTreeMap::from([("me".to_string(), hash)]);
        assert!(verify(&users, "me", "s3cret"));
        assert!(!verify(&users, "me", "wrong"));
        assert!(!verify(&users, "nobody", "s3cret"));
    }

    #[test]
    fn limiter_grows_delay() {
        let limiter = FailureLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(limiter.fail(ip), Duration::from_millis(500));
        assert_eq!(limiter.fail(ip), Duration::from_millis(1000));
        assert_eq!(limiter.recent(ip), 2);
        limiter.succeed(ip);
        assert_eq!(limiter.recent(ip), 0);
    }
}
