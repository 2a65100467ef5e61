//! The SRT listener's per-address budgets: handshakes per second
//! ([`HandshakeLimiter`]) and callers held while their read webhook decides
//! ([`PendingReads`]). A budget belongs to a [`Prefix`], not an address: an
//! IPv6 host commonly owns a whole /64 and could otherwise multiply any
//! per-address budget by using more of its own addresses.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::srt::streamid::Mode;

/// Who a per-address budget belongs to: an IPv4 address (an IPv4-mapped
/// IPv6 address is that IPv4 address) or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix(IpAddr);

impl Prefix {
    pub fn of(ip: IpAddr) -> Prefix {
        match ip {
            IpAddr::V4(_) => Prefix(ip),
            // A dual-stack socket sees every IPv4 caller as ::ffff:a.b.c.d,
            // all inside one /64: each must keep its own budget.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Prefix(IpAddr::V4(v4)),
                None => Prefix(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
        }
    }
}

impl Prefix {
    /// The network around a prefix: an IPv4 /24 or an IPv6 /48 (what one
    /// site is commonly given), for the second-level share of
    /// [`PendingReads`].
    pub fn network(self) -> Prefix {
        match self.0 {
            IpAddr::V4(v4) => Prefix(IpAddr::V4((u32::from(v4) & 0xFFFF_FF00).into())),
            IpAddr::V6(v6) => Prefix(IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into())),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

/// Counts handshake attempts per [`Prefix`] in one-second windows.
/// Bounded: at most [`MAX_TRACKED_PREFIXES`] entries; when that many
/// distinct prefixes arrive within one second, the excess shares one budget.
#[derive(Default)]
pub struct HandshakeLimiter {
    window: u64,
    counts: HashMap<Prefix, u32>,
    overflow: u32,
}

/// Distinct prefixes tracked per second (~40 bytes each).
pub const MAX_TRACKED_PREFIXES: usize = 65_536;

impl HandshakeLimiter {
    /// Whether one more attempt from `ip`'s prefix fits in `limit` in
    /// `second`.
    pub fn allow(&mut self, second: u64, ip: IpAddr, limit: u32) -> bool {
        if second != self.window {
            self.window = second;
            self.counts.clear();
            self.overflow = 0;
        }
        let prefix = Prefix::of(ip);
        let n = if self.counts.len() < MAX_TRACKED_PREFIXES || self.counts.contains_key(&prefix) {
            self.counts.entry(prefix).or_insert(0)
        } else {
            &mut self.overflow
        };
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }
}

/// One read-webhook question: who asked (address and SRT socket id) and a
/// digest of the whole request (mode and the webhook's JSON body: path,
/// rendition, user, token, every streamid parameter, client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadKey {
    pub from: SocketAddr,
    sockid: u32,
    request: [u8; 32],
}

impl ReadKey {
    pub fn new(from: SocketAddr, sockid: u32, mode: Mode, body: &serde_json::Value) -> ReadKey {
        let mut h = Sha256::new();
        h.update(format!("{mode:?}\n{body}").as_bytes());
        ReadKey {
            from,
            sockid,
            request: h.finalize().into(),
        }
    }
}

/// A question's verdict: allowed, or the SRT rejection code and why not.
pub type WebhookAnswer = Result<(), (i32, String)>;

/// Callers waiting for a webhook at once; more are refused with 1402.
pub const MAX_PENDING_READS: usize = 1024;
/// Callers from one prefix waiting for a webhook at once while the table
/// is less than half full (see [`prefix_cap`]).
pub const MAX_PENDING_READS_PER_PREFIX: usize = 8;
/// How long an answer waits for its caller after the webhook's deadline;
/// libsrt gives up connecting after 3 s anyway.
pub const PENDING_READ_GRACE: Duration = Duration::from_secs(5);

/// Places one prefix may hold when `taken` are taken in all: the fuller
/// the table, the smaller each prefix's share (8, then 4 past half full,
/// then 1 past three quarters: a waiting player needs one). Filling the
/// table takes about 512/8 + 256/4 + 256 = 384 prefixes, not 1024/8; and
/// as those must come from many networks ([`network_cap`]), one site with
/// a /48 of its own cannot.
fn prefix_cap(taken: usize) -> usize {
    if taken < MAX_PENDING_READS / 2 {
        MAX_PENDING_READS_PER_PREFIX
    } else if taken < MAX_PENDING_READS * 3 / 4 {
        MAX_PENDING_READS_PER_PREFIX / 2
    } else {
        1
    }
}

/// Places the prefixes of one network ([`Prefix::network`]: IPv4 /24,
/// IPv6 /48) may hold together: four prefixes' share (32, 16, then 4).
/// Filling the table then takes at least 16 + 16 + 64 = 96 networks.
fn network_cap(taken: usize) -> usize {
    4 * prefix_cap(taken)
}

/// Read-webhook calls and their answers for callers whose Conclusion is
/// being held. An answer belongs to the exact request it was asked about
/// ([`ReadKey`]) and serves one Conclusion: the one held with it (`C`,
/// replayed as soon as the webhook answers, see [`PendingReads::answered`])
/// or a retransmission. Bounded per [`Prefix`] and in total; each entry
/// expires shortly after its webhook's deadline, so no prefix holds places
/// that others need. Every operation is O(1) amortised (expiry by a heap).
pub struct PendingReads<C> {
    map: HashMap<ReadKey, PendingRead<C>>,
    /// Entries of `map` per prefix (prefixes holding none are absent).
    per_prefix: HashMap<Prefix, usize>,
    /// Entries of `map` per network ([`Prefix::network`]), likewise.
    per_network: HashMap<Prefix, usize>,
    /// `(expires, key)` of every entry of `map`, and of some already gone
    /// (skipped when popped, dropped when the heap is rebuilt).
    expiry: BinaryHeap<Reverse<(Instant, ReadKey)>>,
    /// Answered while their Conclusion was held: the listener replays them.
    ready: Vec<ReadKey>,
}

struct PendingRead<C> {
    expires: Instant,
    answer: Option<WebhookAnswer>,
    conclusion: Option<C>,
}

impl<C> Default for PendingReads<C> {
    fn default() -> Self {
        PendingReads {
            map: HashMap::new(),
            per_prefix: HashMap::new(),
            per_network: HashMap::new(),
            expiry: BinaryHeap::new(),
            ready: Vec::new(),
        }
    }
}

/// What [`PendingReads::take`] knows about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum PendingState {
    /// Never asked (or forgotten).
    Unknown,
    /// Asked; no answer yet.
    Waiting,
    /// The answer, now forgotten: it serves one Conclusion.
    Answered(WebhookAnswer),
}

impl<C> PendingReads<C> {
    /// The state of `key`; an answer is handed out once.
    pub fn take(&mut self, key: &ReadKey) -> PendingState {
        match self.map.get(key) {
            None => PendingState::Unknown,
            Some(e) if e.answer.is_none() => PendingState::Waiting,
            Some(_) => match self.forget(key).and_then(|e| e.answer) {
                Some(answer) => PendingState::Answered(answer),
                None => PendingState::Unknown,
            },
        }
    }

    /// Make room for a new question asked at `now` whose webhook answers
    /// within `timeout`; `Err` says why there is none (→ 1402).
    pub fn admit(&mut self, now: Instant, key: ReadKey, timeout: Duration) -> Result<(), String> {
        self.expire(now);
        if self.map.contains_key(&key) {
            return Ok(());
        }
        let prefix = Prefix::of(key.from.ip());
        let held = self.per_prefix.get(&prefix).copied().unwrap_or(0);
        if held >= prefix_cap(self.map.len()) {
            return Err(format!(
                "{held} players from {prefix} are already waiting for the read webhook"
            ));
        }
        let network = prefix.network();
        let around = self.per_network.get(&network).copied().unwrap_or(0);
        if around >= network_cap(self.map.len()) {
            return Err(format!(
                "{around} players from around {prefix} are already waiting for the read webhook"
            ));
        }
        if self.map.len() >= MAX_PENDING_READS {
            return Err("too many players waiting for the read webhook".into());
        }
        let expires = now + timeout + PENDING_READ_GRACE;
        self.map.insert(
            key,
            PendingRead {
                expires,
                answer: None,
                conclusion: None,
            },
        );
        *self.per_prefix.entry(prefix).or_insert(0) += 1;
        *self.per_network.entry(network).or_insert(0) += 1;
        self.expiry.push(Reverse((expires, key)));
        Ok(())
    }

    /// Keep `conclusion` (the latest for `key`) to be replayed when the
    /// webhook answers.
    pub fn hold(&mut self, key: &ReadKey, conclusion: C) {
        if let Some(e) = self.map.get_mut(key) {
            e.conclusion = Some(conclusion);
        }
    }

    /// The webhook answered `key` (ignored if it was forgotten meanwhile).
    pub fn answer(&mut self, key: &ReadKey, answer: WebhookAnswer) {
        let Some(e) = self.map.get_mut(key) else {
            return;
        };
        e.answer = Some(answer);
        // Past the bound a caller is still answered on its retransmission.
        if self.ready.len() < MAX_PENDING_READS {
            self.ready.push(*key);
        }
    }

    /// The held Conclusions whose webhook has answered since the last
    /// call, each with its request (the caller's address is `key.from`);
    /// each is handed out once. The answer stays for
    /// [`PendingReads::take`]: whoever replays the Conclusion, or decides
    /// not to, takes it, so that it holds no place any longer.
    pub fn answered(&mut self) -> Vec<(ReadKey, C)> {
        let ready = std::mem::take(&mut self.ready);
        ready
            .into_iter()
            .filter_map(|key| {
                let e = self.map.get_mut(&key)?;
                e.answer.as_ref()?;
                Some((key, e.conclusion.take()?))
            })
            .collect()
    }

    /// Forget every entry whose time is over at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.expiry.peek() {
            if at > now {
                break;
            }
            self.expiry.pop();
            if self.map.get(&key).is_some_and(|e| e.expires == at) {
                self.forget(&key);
            }
        }
        // Answered entries leave their heap item behind: rebuild once most
        // items are stale, so the heap stays within twice the map.
        if self.expiry.len() > 2 * self.map.len() + 64 {
            self.expiry = self
                .map
                .iter()
                .map(|(k, e)| Reverse((e.expires, *k)))
                .collect();
        }
    }

    fn forget(&mut self, key: &ReadKey) -> Option<PendingRead<C>> {
        let e = self.map.remove(key)?;
        let prefix = Prefix::of(key.from.ip());
        for (counts, at) in [
            (&mut self.per_prefix, prefix),
            (&mut self.per_network, prefix.network()),
        ] {
            if let Entry::Occupied(mut n) = counts.entry(at) {
                *n.get_mut() -= 1;
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
        Some(e)
    }

    /// Waiting and answered requests.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The bounds and the per-prefix counts hold.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let mut counts: HashMap<Prefix, usize> = HashMap::new();
        for k in self.map.keys() {
            *counts.entry(Prefix::of(k.from.ip())).or_insert(0) += 1;
        }
        assert_eq!(counts, self.per_prefix, "per-prefix counts");
        let mut networks: HashMap<Prefix, usize> = HashMap::new();
        for (p, n) in &counts {
            *networks.entry(p.network()).or_insert(0) += n;
        }
        assert_eq!(networks, self.per_network, "per-network counts");
        assert!(self.map.len() <= MAX_PENDING_READS);
        assert!(self.ready.len() <= MAX_PENDING_READS);
        assert!(self.expiry.len() <= 2 * MAX_PENDING_READS + 65);
        for (k, e) in &self.map {
            assert!(
                self.expiry
                    .iter()
                    .any(|Reverse((at, key))| key == k && *at == e.expires),
                "{k:?} has no expiry"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(from: &str, sockid: u32, path: &str) -> ReadKey {
        let body = serde_json::json!({ "path": path, "client": from });
        ReadKey::new(from.parse().unwrap(), sockid, Mode::Request, &body)
    }

    /// An address of /64 number `net`, each in a /48 of its own.
    fn v6(net: u16, host: u16) -> IpAddr {
        std::net::Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host).into()
    }

    /// An address of /64 number `net` inside the one /48 2001:db8:ffff::/48.
    fn in_one_site(net: u16, host: u16) -> IpAddr {
        std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xffff, net, 0, 0, 0, host).into()
    }

    fn mapped(last: u8) -> IpAddr {
        std::net::Ipv4Addr::new(10, 0, 0, last)
            .to_ipv6_mapped()
            .into()
    }

    fn at(ip: IpAddr, id: u32) -> ReadKey {
        let from = SocketAddr::new(ip, 5000);
        let body = serde_json::json!({ "path": "a/b", "client": from.to_string() });
        ReadKey::new(from, id, Mode::Request, &body)
    }

    #[test]
    fn prefixes_are_ipv4_addresses_and_ipv6_64s() {
        let p = |s: &str| Prefix::of(s.parse().unwrap()).to_string();
        assert_eq!(p("10.0.0.1"), "10.0.0.1");
        assert_eq!(p("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(p("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(p("2001:db8:1:2::ffff"), "2001:db8:1:2::/64");
        assert_eq!(p("::1"), "::/64");
        assert_ne!(p("2001:db8:1:3::1"), p("2001:db8:1:2::1"));
    }

    #[test]
    fn a_webhook_answer_serves_only_the_request_it_was_given_for() {
        let mut p = PendingReads::<()>::default();
        let now = Instant::now();
        let t = Duration::from_secs(2);
        let public = key("10.0.0.1:5000", 7, "club/public");
        let secret = key("10.0.0.1:5000", 7, "club/secret");
        assert_ne!(public, secret);
        p.admit(now, public, t).unwrap();
        assert_eq!(p.take(&public), PendingState::Waiting);
        p.answer(&public, Ok(()));
        // Same address, same socket id, another request: never asked.
        assert_eq!(p.take(&secret), PendingState::Unknown);
        assert_eq!(p.take(&public), PendingState::Answered(Ok(())));
        // An answer serves one Conclusion, then is forgotten.
        assert_eq!(p.take(&public), PendingState::Unknown);
        p.check_invariants();
    }

    #[test]
    fn a_held_conclusion_is_handed_back_once_when_its_webhook_answers() {
        let mut p = PendingReads::<&str>::default();
        let now = Instant::now();
        let t = Duration::from_secs(2);
        let (a, b) = (
            key("10.0.0.1:5000", 1, "a/b"),
            key("10.0.0.2:5000", 1, "a/b"),
        );
        p.admit(now, a, t).unwrap();
        p.admit(now, b, t).unwrap();
        p.hold(&a, "first");
        p.hold(&a, "latest");
        p.hold(&b, "b");
        assert!(p.answered().is_empty(), "nothing answered yet");
        p.answer(&a, Err((1403, "no".into())));
        assert_eq!(p.answered(), vec![(a, "latest")]);
        assert!(p.answered().is_empty(), "handed out once");
        // The answer itself stays for the replayed Conclusion.
        assert_eq!(p.take(&a), PendingState::Answered(Err((1403, "no".into()))));
        // Answered after its caller took it or it expired: nothing to replay.
        p.answer(&a, Ok(()));
        let later = now + t + PENDING_READ_GRACE;
        p.admit(later, key("10.0.0.3:5000", 1, "a/b"), t).unwrap();
        p.answer(&b, Ok(()));
        assert!(p.answered().is_empty());
        p.check_invariants();
    }

    #[test]
    fn pending_webhook_calls_are_capped_per_prefix_and_expire() {
        let mut p = PendingReads::<()>::default();
        let now = Instant::now();
        let t = Duration::from_secs(2);
        for id in 0..MAX_PENDING_READS_PER_PREFIX as u32 {
            p.admit(now, key("10.0.0.1:5000", id, "a/b"), t).unwrap();
        }
        // Another port of the same IP is the same address.
        let why = p
            .admit(now, key("10.0.0.1:6000", 99, "a/b"), t)
            .unwrap_err();
        assert!(why.contains("10.0.0.1"), "{why}");
        // Other addresses are not affected...
        p.admit(now, key("10.0.0.2:5000", 1, "a/b"), t).unwrap();
        // ...and the address gets room again once its calls expire.
        let later = now + t + PENDING_READ_GRACE;
        p.admit(later, key("10.0.0.1:5000", 100, "a/b"), t).unwrap();
        assert_eq!(p.len(), 1);
        p.check_invariants();
        // The total stays bounded whatever the number of addresses.
        let mut p = PendingReads::<()>::default();
        let mut refused = 0;
        for i in 0..(MAX_PENDING_READS as u32 + 10) {
            let from = format!("10.{}.{}.1:5000", i >> 8, i & 0xFF);
            refused += usize::from(p.admit(now, key(&from, 1, "a/b"), t).is_err());
        }
        assert_eq!((p.len(), refused), (MAX_PENDING_READS, 10));
        p.check_invariants();
    }

    #[test]
    fn pending_webhook_calls_share_one_budget_per_ipv6_64() {
        let mut p = PendingReads::<()>::default();
        let now = Instant::now();
        let t = Duration::from_secs(2);
        // Each call from another address of the same /64.
        for host in 1..=MAX_PENDING_READS_PER_PREFIX as u16 {
            p.admit(now, at(v6(0, host), 1), t).unwrap();
        }
        let why = p.admit(now, at(v6(0, 0xFFFF), 1), t).unwrap_err();
        assert!(why.contains("2001:db8::/64"), "{why}");
        // Another /64 has its own budget.
        p.admit(now, at(v6(1, 1), 1), t).unwrap();
        // IPv4-mapped addresses are IPv4 addresses: each its own budget
        // (they all lie in one /64), shared with the plain IPv4 form.
        for id in 0..MAX_PENDING_READS_PER_PREFIX as u32 {
            p.admit(now, at(mapped(1), id), t).unwrap();
        }
        p.admit(now, at(mapped(2), 1), t).unwrap();
        let why = p
            .admit(now, at(IpAddr::from([10, 0, 0, 1]), 99), t)
            .unwrap_err();
        assert!(why.contains("10.0.0.1"), "{why}");
        p.check_invariants();
    }

    #[test]
    fn one_site_cannot_fill_the_table_with_its_many_64s() {
        let mut p = PendingReads::<()>::default();
        let now = Instant::now();
        let t = Duration::from_secs(2);
        // A /48 has 65 536 /64s; together they get four prefixes' share.
        let mut admitted = 0;
        for net in 0..1000u16 {
            for id in 0..MAX_PENDING_READS_PER_PREFIX as u32 {
                if p.admit(now, at(in_one_site(net, 1), id), t).is_ok() {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 4 * MAX_PENDING_READS_PER_PREFIX);
        let why = p.admit(now, at(in_one_site(5000, 1), 0), t).unwrap_err();
        assert!(why.contains("around 2001:db8:ffff:"), "{why}");
        // Another site, and an IPv4 /24, are not affected.
        p.admit(now, at(v6(1, 1), 0), t).unwrap();
        p.admit(now, at(IpAddr::from([192, 0, 2, 7]), 0), t)
            .unwrap();
        // An IPv4 /24 likewise: its addresses share four addresses' share.
        let mut v4 = 0;
        for last in 0..=255u8 {
            for id in 0..MAX_PENDING_READS_PER_PREFIX as u32 {
                if p.admit(now, at(IpAddr::from([198, 51, 100, last]), id), t)
                    .is_ok()
                {
                    v4 += 1;
                }
            }
        }
        assert_eq!(v4, 4 * MAX_PENDING_READS_PER_PREFIX);
        p.check_invariants();
    }

    #[test]
    fn the_fuller_the_table_the_smaller_each_prefixs_share() {
        let mut p = PendingReads::<()>::default();
        let now = Instant::now();
        let t = Duration::from_secs(2);
        let net = |n: u16, id: u32| at(v6(n, 1), id);
        let mut n = 0;
        // Half the table from prefixes holding 8 each.
        while p.len() < MAX_PENDING_READS / 2 {
            for id in 0..MAX_PENDING_READS_PER_PREFIX as u32 {
                p.admit(now, net(n, id), t).unwrap();
            }
            n += 1;
        }
        // Past half: a newcomer gets 4, a prefix holding 8 nothing more.
        assert!(p.admit(now, net(0, 99), t).is_err());
        for id in 0..4 {
            p.admit(now, net(n, id), t).unwrap();
        }
        assert!(p.admit(now, net(n, 4), t).is_err());
        n += 1;
        while p.len() < MAX_PENDING_READS * 3 / 4 {
            p.admit(now, net(n, 0), t).unwrap();
            n += 1;
        }
        // Past three quarters: one each, so a player still gets in while
        // places remain.
        p.admit(now, net(n, 0), t).unwrap();
        assert!(p.admit(now, net(n, 1), t).is_err());
        p.admit(now, at("192.0.2.1".parse().unwrap(), 1), t)
            .unwrap();
        p.check_invariants();
    }

    #[test]
    fn the_counts_stay_consistent_through_answers_and_expiry() {
        let mut p = PendingReads::<u32>::default();
        let start = Instant::now();
        let mut live = Vec::new();
        // A deterministic mix of admissions, answers, takes and expiry
        // over 40 virtual seconds, from 24 addresses in 6 prefixes.
        let mut x: u32 = 12345;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let now = start + Duration::from_millis(u64::from(step) * 2);
            let ip = if x % 2 == 0 {
                v6((x >> 8) as u16 % 3, (x >> 4) as u16 % 4)
            } else {
                IpAddr::from([10, 0, (x >> 8) as u8 % 3, (x >> 4) as u8 % 4])
            };
            match x % 5 {
                0 | 1 => {
                    let k = at(ip, x >> 20);
                    let timeout = Duration::from_millis(u64::from(x >> 12) % 3000);
                    if p.admit(now, k, timeout).is_ok() {
                        p.hold(&k, step);
                        live.push(k);
                    }
                }
                2 if !live.is_empty() => {
                    let k = live[(x >> 7) as usize % live.len()];
                    p.answer(&k, Ok(()));
                }
                3 if !live.is_empty() => {
                    let k = live.swap_remove((x >> 7) as usize % live.len());
                    p.take(&k);
                }
                _ => {
                    p.answered();
                }
            }
            p.check_invariants();
        }
        // Everything expires in the end.
        p.admit(
            start + Duration::from_secs(60),
            at(v6(9, 9), 0),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        p.check_invariants();
    }

    #[test]
    fn handshakes_are_limited_per_prefix_and_per_second() {
        let mut l = HandshakeLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| l.allow(5, a, 3)));
        assert!(!l.allow(5, a, 3));
        assert!(l.allow(5, b, 3), "another IP has its own budget");
        assert!(l.allow(6, a, 3), "a new second resets the budget");
        // Past the tracking bound, newcomers share one budget.
        for i in 0..MAX_TRACKED_PREFIXES as u32 {
            l.allow(7, IpAddr::from(i.to_be_bytes()), 1);
        }
        let late: IpAddr = "192.0.2.1".parse().unwrap();
        let later: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.allow(7, late, 1));
        assert!(!l.allow(7, later, 1));
        assert!(l.counts.len() <= MAX_TRACKED_PREFIXES);
    }

    #[test]
    fn handshake_budgets_are_per_ipv6_64_and_per_ipv4_address() {
        let mut l = HandshakeLimiter::default();
        assert!((1..=3).all(|h| l.allow(5, v6(0, h), 3)));
        assert!(!l.allow(5, v6(0, 4), 3), "same /64, same budget");
        assert!(l.allow(5, v6(1, 4), 3), "another /64");
        assert!((0..3).all(|_| l.allow(5, mapped(1), 3)));
        assert!(!l.allow(5, IpAddr::from([10, 0, 0, 1]), 3));
        assert!(l.allow(5, mapped(2), 3), "another IPv4 address");
    }
}
