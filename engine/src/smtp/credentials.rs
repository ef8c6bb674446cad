//! Checking AUTH credentials against `auth_users` (argon2id PHC strings), hashing passwords for
//! `mailflow hash-password`, and slowing down clients that keep guessing.
//!
//! Security: passwords never leave this module and are never logged. Verification runs the
//! same argon2 work for unknown users as for known ones, so timing does not reveal names.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::config::AuthUser;

/// Failures from one address within this window count together.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Past this many recent failures an address may not try AUTH at all until the window passes.
pub const MAX_FAILURES: u32 = 10;
/// Delay added per recent failure before answering 535, capped.
const DELAY_PER_FAILURE: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// At most this many password verifications run at once, each on one of as many dedicated
/// threads. An argon2 verification holds its `m` parameter in memory (19 MiB by default): on the
/// blocking pool (up to 512 threads) a burst of clients sending AUTH together would take
/// gigabytes, and every thread's malloc arena would keep its share afterwards.
pub const MAX_CONCURRENT_VERIFY: usize = 4;
/// How long an AUTH waits for a verification slot before it is told to come back later.
const VERIFY_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
static VERIFY_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_VERIFY);

type Job = Box<dyn FnOnce() + Send>;

/// The verifier threads' queue, started on first use; `None` if no thread could be started.
fn verifiers() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for n in 0..MAX_CONCURRENT_VERIFY {
                let rx = rx.clone();
                let worker = move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                };
                match std::thread::Builder::new().name(format!("mailflow-auth-{n}")).spawn(worker) {
                    Ok(_) => started += 1,
                    Err(e) => tracing::error!(error = %e, "cannot start a password verification thread"),
                }
            }
            (started > 0).then_some(tx)
        })
        .as_ref()
}

/// A PHC string for `password` (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `user`/`password` match `auth_users`. Blocking (argon2 is deliberately slow).
pub fn verify(users: &BTreeMap<String, AuthUser>, user: &str, password: &str) -> bool {
    // A fixed hash to burn the same time for unknown users.
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1PpG7dEgg9n0E2MtkL4HmNIjvsmsWAi6lmD6Ah8Vc4k";
    let (hash, known) = match users.get(user) {
        Some(entry) => (entry.hash(), true),
        None => (DUMMY, false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        tracing::error!(user = %user, "auth_users entry is not a valid PHC hash (use mailflow hash-password)");
        return false;
    };
    let ok = MEMORY.with(|memory| verify_phc(&parsed, password.as_bytes(), &mut memory.borrow_mut()));
    ok && known
}

thread_local! {
    /// This thread's argon2 working memory (`m` KiB), kept for the next verification: allocating
    /// it afresh each time leaves several copies per thread in the allocator's arenas.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// What `PasswordVerifier::verify_password` does for argon2, with the caller's block memory.
fn verify_phc(hash: &PasswordHash<'_>, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(hash.algorithm), Params::try_from(hash)) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    memory.resize(argon2.params().block_count(), Block::default());
    let computed = Output::init_with(expected.len(), |out| {
        Ok(argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..])?)
    });
    // `Output` compares in constant time.
    matches!(computed, Ok(computed) if computed == *expected)
}

/// [`verify`] off the async threads, at most [`MAX_CONCURRENT_VERIFY`] at a time. `None` when no
/// slot came free in time (the server is busy: a temporary failure, not a wrong password).
pub async fn verify_bounded(users: BTreeMap<String, AuthUser>, user: String, password: String) -> Option<bool> {
    let _permit = tokio::time::timeout(VERIFY_QUEUE_TIMEOUT, VERIFY_SLOTS.acquire()).await.ok()?.ok()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(verify(&users, &user, &password));
    });
    match verifiers() {
        Some(queue) => queue.send(job).ok()?,
        None => tokio::task::spawn_blocking(job).await.ok()?,
    }
    Some(rx.await.unwrap_or(false))
}

pub use crate::config::check_password_hash as check_hash;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let users = BTreeMap::from([("me".to_string(), hash.into())]);
        assert!(verify(&users, "me", "s3cret"));
        assert!(!verify(&users, "me", "wrong"));
        assert!(!verify(&users, "nobody", "s3cret"));
    }

    #[test]
    fn verify_matches_the_argon2_crate() {
        use argon2::password_hash::PasswordVerifier;
        // Other parameters, algorithms and output lengths than the defaults.
        let mut hashes = vec![hash_password("pw").unwrap()];
        for (algorithm, m, t, p, len) in [
            (Algorithm::Argon2i, 64, 3, 2, 32),
            (Algorithm::Argon2d, 256, 1, 1, 16),
            (Algorithm::Argon2id, 8, 1, 1, 64),
        ] {
            let argon2 = Argon2::new(algorithm, Version::V0x13, Params::new(m, t, p, Some(len)).unwrap());
            let salt = SaltString::generate(&mut OsRng);
            hashes.push(argon2.hash_password(b"pw", &salt).unwrap().to_string());
        }
        for hash in hashes {
            let users = BTreeMap::from([("me".to_string(), hash.clone().into())]);
            let parsed = PasswordHash::new(&hash).unwrap();
            for password in ["pw", "pw ", "", "PW"] {
                let reference = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
                assert_eq!(verify(&users, "me", password), reference, "{hash} {password:?}");
                assert_eq!(reference, password == "pw");
            }
        }
        // A hash whose output was tampered with, or with no output, never verifies.
        let mut hash = hash_password("pw").unwrap();
        let truncated = hash.rsplit_once('$').unwrap().0.to_string();
        let last = hash.pop().unwrap();
        hash.push(if last == 'A' { 'B' } else { 'A' });
        let users = |hash: &str| BTreeMap::from([("me".to_string(), AuthUser::from(hash))]);
        assert!(!verify(&users(&hash), "me", "pw"));
        assert!(!verify(&users(&truncated), "me", "pw"));
    }

    #[test]
    fn check_hash_wants_argon2_phc() {
        assert!(check_hash(&hash_password("x").unwrap()).is_ok());
        assert!(check_hash("plaintextpassword").is_err());
        assert!(check_hash("").is_err());
        let full = hash_password("x").unwrap();
        assert!(check_hash(full.rsplit_once('$').unwrap().0).is_err());
        assert!(check_hash(&full.replace("m=19456", "m=1")).is_err());
        assert!(check_hash("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }

    #[tokio::test]
    async fn verify_bounded_verifies() {
        let users = BTreeMap::from([("me".to_string(), hash_password("s3cret").unwrap().into())]);
        assert_eq!(verify_bounded(users.clone(), "me".into(), "s3cret".into()).await, Some(true));
        assert_eq!(verify_bounded(users, "me".into(), "nope".into()).await, Some(false));
    }

    #[test]
    fn limiter_grows_delay() {
        let limiter = FailureLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(limiter.fail(ip), Duration::from_millis(500));
        assert_eq!(limiter.fail(ip), Duration::from_millis(1000));
        assert_eq!(limiter.recent(ip), 2);
    }
}
