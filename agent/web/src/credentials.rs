//! The HTTP side's credentials, as the `--web-config` file gives them: a bearer token and
//! basic-auth users with bcrypt hashes.
//!
//! Secrets are compared in constant time: the token through SHA-256 digests compared with
//! `subtle`, passwords with bcrypt. bcrypt is slow by design, so it is rationed, and a flood of
//! wrong passwords must never starve the requests that carry cheap, valid credentials:
//!
//! - a user's last good password is remembered as a digest, so that Prometheus's scrapes do
//!   not pay for bcrypt each time (and get in during a flood);
//! - one bcrypt check runs at a time, and at most [`MAX_WAITING`] requests wait for their turn:
//!   others are answered 429 at once rather than held (a held request holds an HTTP connection
//!   slot, and 600 of them would lock everyone out);
//! - a client (an IP address, an IPv6 /64) whose password was wrong waits before its next
//!   check, twice as long after each failure up to [`MAX_PENALTY`]; meanwhile its basic-auth
//!   attempts are answered 429 with `Retry-After`, without bcrypt.
//!
//! Timing does not tell which users exist: an unknown user is checked against the costliest
//! configured hash, and checks of cheaper hashes are padded to the time the costliest took.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

type Digest = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Digest {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// What a request's credentials earned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    Denied,
    /// Not checked: too many password checks at once, or this client failed recently. Try
    /// again after this long.
    Throttled(Duration),
}

/// Requests that may wait for their bcrypt turn; more are answered 429 at once.
const MAX_WAITING: usize = 4;

/// How long a client waits after its first wrong password; doubled after each next one.
const FIRST_PENALTY: Duration = Duration::from_millis(250);

/// The longest a failing client waits between two checks.
const MAX_PENALTY: Duration = Duration::from_secs(8);

/// Clients whose failures are remembered. When full, entries whose wait is over go; if none
/// has, a new client is throttled as if it had failed (a guesser with many addresses gets no
/// more bcrypt than one with a single address).
const MAX_PENALIZED_CLIENTS: usize = 4096;

/// The bcrypt costs accepted: htpasswd's range (`-C 4` to `-C 17`). Above, each check takes
/// seconds, which the rationing above would turn into refusals.
const COSTS: std::ops::RangeInclusive<u32> = 4..=17;

/// A bearer token and basic-auth users, as configured.
pub struct Credentials {
    token: Option<Digest>,
    users: BTreeMap<String, UserHash>,
    /// The hash an unknown user's password is checked against: the costliest configured one
    /// (whatever the answer, the user is unknown). None without users.
    costliest: Option<UserHash>,
    /// Nanoseconds the last check at the costliest cost took: cheaper checks are padded to it.
    costliest_check_ns: AtomicU64,
    /// User -> digest of (hash, password) last verified, so that a good password costs one
    /// bcrypt run per user, not one per scrape.
    verified: Mutex<HashMap<String, Digest>>,
    bcrypt_turn: Semaphore,
    waiting: AtomicUsize,
    penalties: Mutex<HashMap<IpAddr, Penalty>>,
}

/// A user's bcrypt hash, with its cost (validated once, when the file is loaded).
#[derive(Clone, Debug)]
struct UserHash {
    hash: String,
    cost: u32,
}

#[derive(Clone, Copy, Debug)]
struct Penalty {
    failures: u32,
    until: Instant,
}

/// The cost of a well-formed bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`, a two-digit cost,
/// then 53 characters of bcrypt's base64), or what is wrong with it, to follow "the hash is".
fn bcrypt_cost(hash: &str) -> Result<u32, String> {
    let not = |what: &str| format!("not a bcrypt hash: {what}");
    let fields: Vec<&str> = hash.split('$').collect();
    let ["", version, cost, salt_and_hash] = fields[..] else {
        return Err(not(
            "$2y$, a two-digit cost, $, then 53 characters of [./A-Za-z0-9], as \
             `htpasswd -nbBC 10 USER PASSWORD` prints after the colon",
        ));
    };
    if !["2a", "2b", "2x", "2y"].contains(&version) {
        return Err(not(&format!(
            "version `${version}$` is not $2a$, $2b$, $2x$ or $2y$"
        )));
    }
    let bcrypt_base64 = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if salt_and_hash.len() != 53 || !salt_and_hash.chars().all(bcrypt_base64) {
        return Err(not(
            "its salt and hash are not 53 characters of [./A-Za-z0-9]",
        ));
    }
    let cost = (cost.len() == 2)
        .then(|| cost.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| not(&format!("cost `{cost}` is not two digits")))?;
    if !COSTS.contains(&cost) {
        return Err(format!(
            "a bcrypt hash of cost {cost}, outside {}..={} (htpasswd's range; 10 is usual)",
            COSTS.start(),
            COSTS.end()
        ));
    }
    // Decoded as the library will decode it at each check (a salt whose last character has
    // stray bits would fail there, on every login), without running bcrypt itself.
    let (salt, digest) = salt_and_hash.split_at(22);
    for part in [salt, digest] {
        bcrypt::BASE_64
            .decode(part)
            .map_err(|err| not(&format!("its salt and hash do not decode ({err})")))?;
    }
    Ok(cost)
}

/// Penalties are per client: an IPv4 address, or an IPv6 /64 (what one host usually gets).
fn client_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl Credentials {
    pub fn new(token: Option<&str>, users: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let mut hashes = BTreeMap::new();
        for (user, hash) in users {
            if user.is_empty() || user.contains(':') {
                bail!("`{user}` is not a user name (not empty, no `:`)");
            }
            let cost = bcrypt_cost(hash)
                .map_err(|what| anyhow::anyhow!("the password hash of `{user}` is {what}"))?;
            let hash = hash.clone();
            hashes.insert(user.clone(), UserHash { hash, cost });
        }
        // Any of the costliest: they all cost the same time.
        let costliest = hashes.values().max_by_key(|known| known.cost).cloned();
        Ok(Self {
            token: token.map(|token| sha256(&[token.as_bytes()])),
            users: hashes,
            costliest,
            costliest_check_ns: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            bcrypt_turn: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            penalties: Mutex::new(HashMap::new()),
        })
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn has_basic_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// What the request's Authorization header earns a client at `peer`.
    pub async fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Verdict {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        else {
            return Verdict::Denied;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let matches = self
                .token
                .is_some_and(|token| bool::from(sha256(&[rest.as_bytes()]).ct_eq(&token)));
            return if matches {
                Verdict::Granted
            } else {
                Verdict::Denied
            };
        }
        if scheme.eq_ignore_ascii_case("basic") && self.has_basic_users() {
            let Some((user, password)) = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|decoded| String::from_utf8(decoded).ok())
                .and_then(|decoded| {
                    let (user, password) = decoded.split_once(':')?;
                    Some((user.to_owned(), password.to_owned()))
                })
            else {
                return Verdict::Denied;
            };
            return self
                .check_password(&user, &password, client_key(peer))
                .await;
        }
        Verdict::Denied
    }

    async fn check_password(&self, user: &str, password: &str, client: IpAddr) -> Verdict {
        let known = self.users.get(user);
        let digest = sha256(&[
            user.as_bytes(),
            known.map_or(&b""[..], |known| known.hash.as_bytes()),
            password.as_bytes(),
        ]);
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .is_some_and(|known| bool::from(known.ct_eq(&digest)));
        if remembered {
            return Verdict::Granted;
        }
        if let Some(wait) = self.penalty_left(client) {
            return Verdict::Throttled(wait);
        }
        let Some(_waiting) = Waiting::join(&self.waiting) else {
            return Verdict::Throttled(Duration::from_secs(1));
        };
        let (Some(checked), Some(costliest)) = (known.or(self.costliest.as_ref()), &self.costliest)
        else {
            // No users: basic auth is not offered, nothing to check against.
            return Verdict::Denied;
        };
        let Ok(turn) = self.bcrypt_turn.acquire().await else {
            return Verdict::Throttled(Duration::from_secs(1));
        };
        let started = Instant::now();
        let at_costliest = checked.cost == costliest.cost;
        let (password, hash) = (password.to_owned(), checked.hash.clone());
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let verified = matches && known.is_some();
        let took = started.elapsed();
        if at_costliest {
            let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            self.costliest_check_ns.store(ns, Ordering::Relaxed);
        } else {
            let costliest = Duration::from_nanos(self.costliest_check_ns.load(Ordering::Relaxed));
            tokio::time::sleep(costliest.saturating_sub(took)).await;
        }
        drop(turn);
        if verified {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(user.to_owned(), digest);
            self.forgive(client);
            Verdict::Granted
        } else {
            self.penalize(client);
            Verdict::Denied
        }
    }

    /// How long `client` must still wait before its next password check, if it must.
    fn penalty_left(&self, client: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut penalties = self
            .penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(penalty) = penalties.get(&client) {
            return (penalty.until > now).then(|| penalty.until - now);
        }
        if penalties.len() >= MAX_PENALIZED_CLIENTS {
            penalties.retain(|_, penalty| penalty.until > now);
            if penalties.len() >= MAX_PENALIZED_CLIENTS {
                return Some(FIRST_PENALTY);
            }
        }
        None
    }

    fn penalize(&self, client: IpAddr) {
        let mut penalties = self
            .penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if penalties.len() >= MAX_PENALIZED_CLIENTS && !penalties.contains_key(&client) {
            return;
        }
        let penalty = penalties.entry(client).or_insert(Penalty {
            failures: 0,
            until: Instant::now(),
        });
        let wait = FIRST_PENALTY
            .saturating_mul(1 << penalty.failures.min(16))
            .min(MAX_PENALTY);
        penalty.failures = penalty.failures.saturating_add(1);
        penalty.until = Instant::now() + wait;
    }

    fn forgive(&self, client: IpAddr) {
        self.penalties
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&client);
    }
}

/// A place in the bounded queue for bcrypt's turn, given back when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn join(count: &'a AtomicUsize) -> Option<Self> {
        count
            .try_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < MAX_WAITING).then_some(waiting + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers(&format!("Basic {encoded}"))
    }

    fn users(entries: &[(&str, &str, u32)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(user, password, cost)| {
                ((*user).to_owned(), bcrypt::hash(password, *cost).unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn tokens_and_passwords_are_checked() {
        let credentials =
            Credentials::new(Some("t0ken"), &users(&[("prometheus", "s3cret", 4)])).unwrap();
        let check = |headers: HeaderMap, peer: &str| {
            let peer: IpAddr = peer.parse().unwrap();
            let credentials = &credentials;
            async move { credentials.check(&headers, peer).await }
        };
        assert_eq!(
            check(headers("Bearer t0ken"), "127.0.0.1").await,
            Verdict::Granted
        );
        assert_eq!(
            check(headers("bearer  t0ken"), "127.0.0.1").await,
            Verdict::Granted
        );
        assert_eq!(
            check(headers("Bearer t0ke"), "127.0.0.1").await,
            Verdict::Denied
        );
        assert_eq!(check(headers("Bearer"), "127.0.0.1").await, Verdict::Denied);
        assert_eq!(check(HeaderMap::new(), "127.0.0.1").await, Verdict::Denied);
        assert_eq!(
            check(basic("prometheus", "s3cret"), "127.0.0.1").await,
            Verdict::Granted
        );
        // Remembered now: the same answer from the digest.
        assert_eq!(
            check(basic("prometheus", "s3cret"), "127.0.0.1").await,
            Verdict::Granted
        );
        // Each wrong password comes from another client: no penalty in the way.
        assert_eq!(
            check(basic("prometheus", "s3cre"), "192.0.2.1").await,
            Verdict::Denied
        );
        assert_eq!(
            check(basic("nobody", "s3cret"), "192.0.2.2").await,
            Verdict::Denied
        );
        assert_eq!(
            check(headers("Basic !!!"), "192.0.2.3").await,
            Verdict::Denied
        );
    }

    #[tokio::test]
    async fn a_client_that_keeps_failing_waits_longer_each_time_but_remembered_users_do_not() {
        let credentials = Credentials::new(None, &users(&[("prometheus", "s3cret", 4)])).unwrap();
        let good = basic("prometheus", "s3cret");
        let bad = basic("prometheus", "guess");
        assert_eq!(credentials.check(&good, HERE).await, Verdict::Granted);
        assert_eq!(credentials.check(&bad, HERE).await, Verdict::Denied);
        // Within the penalty: not checked at all, whatever the password.
        let Verdict::Throttled(first) = credentials.check(&bad, HERE).await else {
            panic!("a second guess at once is throttled");
        };
        assert!(first <= FIRST_PENALTY, "{first:?}");
        // The remembered password still gets in from the same address.
        assert_eq!(credentials.check(&good, HERE).await, Verdict::Granted);
        // Another client (another /64) is not held by this one's penalty.
        let other: IpAddr = "2001:db8:0:1::7".parse().unwrap();
        assert_eq!(credentials.check(&bad, other).await, Verdict::Denied);
        let same_64: IpAddr = "2001:db8:0:1::8".parse().unwrap();
        assert!(matches!(
            credentials.check(&bad, same_64).await,
            Verdict::Throttled(_)
        ));
        // The next failure doubles the wait.
        tokio::time::sleep(first).await;
        assert_eq!(credentials.check(&bad, HERE).await, Verdict::Denied);
        let Verdict::Throttled(second) = credentials.check(&bad, HERE).await else {
            panic!("throttled again");
        };
        assert!(
            second > FIRST_PENALTY && second <= 2 * FIRST_PENALTY,
            "{second:?}"
        );
    }

    #[tokio::test]
    async fn beyond_a_few_waiting_checks_the_rest_are_throttled_not_queued() {
        let credentials = std::sync::Arc::new(
            Credentials::new(None, &users(&[("prometheus", "s3cret", 8)])).unwrap(),
        );
        let guesses = (0..32u8)
            .map(|i| {
                let credentials = credentials.clone();
                let peer = IpAddr::from([192, 0, 2, i]);
                tokio::spawn(
                    async move { credentials.check(&basic("prometheus", "x"), peer).await },
                )
            })
            .collect::<Vec<_>>();
        let mut checked = 0;
        for guess in guesses {
            match guess.await.unwrap() {
                Verdict::Denied => checked += 1,
                Verdict::Throttled(_) => {}
                Verdict::Granted => panic!("a wrong password got in"),
            }
        }
        // One running and MAX_WAITING waiting at most when the rest arrived.
        assert!(
            (1..=MAX_WAITING + 1).contains(&checked),
            "{checked} checked"
        );
    }

    #[tokio::test]
    async fn unknown_users_cost_what_the_costliest_known_user_costs() {
        let credentials =
            Credentials::new(None, &users(&[("cheap", "a", 4), ("dear", "b", 10)])).unwrap();
        let time = |user: &'static str, peer: u8| {
            let credentials = &credentials;
            async move {
                let started = Instant::now();
                let verdict = credentials
                    .check(&basic(user, "wrong"), IpAddr::from([192, 0, 2, peer]))
                    .await;
                assert_eq!(verdict, Verdict::Denied);
                started.elapsed()
            }
        };
        let dear = time("dear", 1).await;
        let unknown = time("nobody", 2).await;
        let cheap = time("cheap", 3).await;
        // A cost-4 check alone takes about 1/64 of a cost-10 one: padded, it is no faster
        // than half of the costliest (allowing for a loaded machine).
        for (name, took) in [("unknown", unknown), ("cheap", cheap)] {
            assert!(took * 2 >= dear, "{name} {took:?} against {dear:?}");
        }
    }

    #[test]
    fn malformed_hashes_costs_and_user_names_are_refused_naming_the_user() {
        let fifty_three_bangs = format!("$2y$10${}", "!".repeat(53));
        let good_tail = &bcrypt::hash("x", 4).unwrap()[7..];
        for (user, hash, says) in [
            ("alice", "plain".to_owned(), "not a bcrypt hash"),
            ("alice", fifty_three_bangs, "salt and hash are not 53"),
            (
                "alice",
                format!("$2y$99${good_tail}"),
                "of cost 99, outside 4..=17",
            ),
            ("alice", format!("$2y$03${good_tail}"), "of cost 3,"),
            ("alice", format!("$2y$1${good_tail}"), "cost `1`"),
            ("alice", format!("$3y$10${good_tail}"), "version"),
            (
                "alice",
                "$2y$04$abcdefghijklmnopqrstuu".to_owned(),
                "salt and hash",
            ),
            ("a:b", bcrypt::hash("x", 4).unwrap(), "not a user name"),
        ] {
            let users = BTreeMap::from([(user.to_owned(), hash.clone())]);
            let err = Credentials::new(None, &users)
                .err()
                .unwrap_or_else(|| panic!("{hash}"));
            let text = format!("{err:#}");
            assert!(text.contains(user) && text.contains(says), "{hash}: {text}");
        }
        for cost in [4, 17] {
            assert_eq!(bcrypt_cost(&format!("$2y${cost:02}${good_tail}")), Ok(cost));
        }
    }
}
