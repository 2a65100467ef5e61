//! The fan-out ring of one rendition: a GOP cache, bounded by bytes, that
//! any number of players read through their own cursor while the publisher
//! appends and never waits. A new player starts at the newest keyframe; one
//! whose data was trimmed skips to it (whole frames, never a cut PES), and
//! one that keeps falling behind is told to go away.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// What the ring needs to know about an item (a TS chunk).
pub trait RingItem: Clone {
    /// Size in bytes, for the memory bound.
    fn size(&self) -> usize;
    /// A decodable start: PAT/PMT + codec config + IDR.
    fn is_keyframe(&self) -> bool;
}

#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Most bytes the ring holds; past it the oldest items go, even inside
    /// the newest GOP (then new players wait for the next keyframe).
    pub max_bytes: usize,
    /// Consecutive skips (without catching up in between) after which a
    /// player is disconnected as too slow.
    pub max_lag_skips: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            max_bytes: 32 * 1024 * 1024,
            max_lag_skips: 3,
        }
    }
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// Sequence number of `items[0]`.
    base: u64,
    bytes: usize,
    /// Sequence numbers of keyframes still in the ring, oldest first.
    keyframes: VecDeque<u64>,
    closed: bool,
    players: usize,
}

impl<T> State<T> {
    fn next_seq(&self) -> u64 {
        self.base + self.items.len() as u64
    }
}

/// One rendition's ring.
#[derive(Debug)]
pub struct Ring<T> {
    cfg: RingConfig,
    state: Mutex<State<T>>,
    /// Carries the next sequence number; players wait on it.
    tx: watch::Sender<u64>,
    /// Also poked on every push, for drivers that serve many rings from
    /// one task (the SRT listener's workers) and cannot wait on each ring.
    notify: Option<DataReady>,
}

/// "Some ring got data": pinged by every push and close of the rings that
/// share it, watched by any number of tasks (one per SRT listener worker).
/// A watcher busy when pings came sees them at its next look: none is
/// lost, and many pings while it was busy wake it once.
#[derive(Debug, Clone)]
pub struct DataReady(Arc<watch::Sender<u64>>);

impl Default for DataReady {
    fn default() -> Self {
        DataReady(Arc::new(watch::channel(0).0))
    }
}

impl DataReady {
    fn ping(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A watcher: its `changed()` resolves once after any pings since it
    /// last looked.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl<T> Drop for Ring<T> {
    /// A full ring of small chunks leaves its memory in the allocator's
    /// free lists; the upkeep gives it back (see `telemetry::trim`).
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        crate::telemetry::memory_released(st.bytes);
    }
}

/// Result of one read.
#[derive(Debug, PartialEq)]
pub enum Read {
    /// Items were appended to the caller's buffer.
    Items,
    /// The player fell out of the ring and jumped to the newest keyframe;
    /// `dropped` items were never delivered. Items may follow in the next read.
    Skipped { dropped: u64 },
    /// The player kept falling behind; disconnect it.
    TooSlow,
    /// The rendition ended.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingStats {
    pub items: usize,
    pub bytes: usize,
    pub players: usize,
    pub has_keyframe: bool,
}

impl<T: RingItem> Ring<T> {
    pub fn new(cfg: RingConfig) -> Arc<Self> {
        Self::build(cfg, None)
    }

    /// A ring that also pings `notify` on every push and close.
    pub fn with_notify(cfg: RingConfig, notify: DataReady) -> Arc<Self> {
        Self::build(cfg, Some(notify))
    }

    fn build(cfg: RingConfig, notify: Option<DataReady>) -> Arc<Self> {
        Arc::new(Ring {
            notify,
            cfg,
            state: Mutex::new(State {
                items: VecDeque::new(),
                base: 0,
                bytes: 0,
                keyframes: VecDeque::new(),
                closed: false,
                players: 0,
            }),
            tx: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append an item. Never blocks on players.
    pub fn push(&self, item: T) {
        let next = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            let seq = st.next_seq();
            if item.is_keyframe() {
                st.keyframes.push_back(seq);
                // Keep the previous GOP as slack, drop anything older.
                while st.keyframes.len() > 2 {
                    st.keyframes.pop_front();
                }
            }
            st.bytes += item.size();
            st.items.push_back(item);
            let keep_from = if st.keyframes.len() == 2 {
                st.keyframes[0]
            } else {
                st.base
            };
            while st.base < keep_from {
                pop_front(&mut st);
            }
            while st.bytes > self.cfg.max_bytes && st.items.len() > 1 {
                pop_front(&mut st);
            }
            st.next_seq()
        };
        self.tx.send_replace(next);
        if let Some(n) = &self.notify {
            n.ping();
        }
    }

    /// End the rendition: players drain what they have, then get `Closed`.
    pub fn close(&self) {
        let next = {
            let mut st = self.lock();
            st.closed = true;
            st.next_seq()
        };
        // Bump the value so waiting players wake even if nothing new came.
        self.tx.send_replace(next);
        self.tx.send_modify(|_| {});
        if let Some(n) = &self.notify {
            n.ping();
        }
    }

    /// A new player, positioned at the newest keyframe (GOP cache); with no
    /// keyframe cached yet it starts at the next keyframe to arrive.
    pub fn subscribe(self: &Arc<Self>) -> Cursor<T> {
        let mut st = self.lock();
        st.players += 1;
        let (start, wait_keyframe) = match st.keyframes.back() {
            Some(&k) => (k, false),
            None => (st.next_seq(), true),
        };
        drop(st);
        Cursor {
            ring: self.clone(),
            next: start,
            rx: self.tx.subscribe(),
            skips: 0,
            wait_keyframe,
        }
    }

    /// A new player that starts at the next keyframe to arrive, whatever
    /// is cached (`join = "keyframe"`).
    pub fn subscribe_at_next_keyframe(self: &Arc<Self>) -> Cursor<T> {
        let mut st = self.lock();
        st.players += 1;
        let start = st.next_seq();
        drop(st);
        Cursor {
            ring: self.clone(),
            next: start,
            rx: self.tx.subscribe(),
            skips: 0,
            wait_keyframe: true,
        }
    }

    pub fn stats(&self) -> RingStats {
        let st = self.lock();
        RingStats {
            items: st.items.len(),
            bytes: st.bytes,
            players: st.players,
            has_keyframe: !st.keyframes.is_empty(),
        }
    }
}

fn pop_front<T: RingItem>(st: &mut State<T>) {
    if let Some(it) = st.items.pop_front() {
        st.bytes -= it.size();
        if st.keyframes.front() == Some(&st.base) {
            st.keyframes.pop_front();
        }
        st.base += 1;
    }
}

/// One player's position in a ring.
#[derive(Debug)]
pub struct Cursor<T: RingItem> {
    ring: Arc<Ring<T>>,
    next: u64,
    rx: watch::Receiver<u64>,
    skips: u32,
    /// Joined before any keyframe: deliver nothing until one arrives.
    wait_keyframe: bool,
}

impl<T: RingItem> Cursor<T> {
    /// Non-blocking read of up to `max` items into `out`. `None`: nothing
    /// new yet.
    pub fn try_read(&mut self, max: usize, out: &mut Vec<T>) -> Option<Read> {
        let st = self.ring.lock();
        let end = st.next_seq();
        if self.wait_keyframe {
            // Skip non-keyframe items until the first keyframe shows up.
            match st.keyframes.iter().find(|&&k| k >= self.next) {
                Some(&k) => {
                    self.next = k;
                    self.wait_keyframe = false;
                }
                None => {
                    self.next = end;
                    return st.closed.then_some(Read::Closed);
                }
            }
        }
        if self.next < st.base {
            // Our data was trimmed: jump to the newest keyframe.
            self.skips += 1;
            if self.skips > self.ring.cfg.max_lag_skips {
                return Some(Read::TooSlow);
            }
            let dropped;
            match st.keyframes.back() {
                Some(&k) => {
                    dropped = k - self.next;
                    self.next = k;
                }
                None => {
                    dropped = end - self.next;
                    self.next = end;
                    self.wait_keyframe = true;
                }
            }
            return Some(Read::Skipped { dropped });
        }
        if self.next >= end {
            self.skips = 0; // caught up with the live edge
            return st.closed.then_some(Read::Closed);
        }
        let from = (self.next - st.base) as usize;
        let n = max.min(st.items.len() - from);
        out.extend(st.items.range(from..from + n).cloned());
        self.next += n as u64;
        Some(Read::Items)
    }

    /// Wait until there is something to read, then read up to `max` items.
    pub async fn read(&mut self, max: usize, out: &mut Vec<T>) -> Read {
        loop {
            // Mark the current value seen before checking, so a push
            // between the check and the wait still wakes us.
            self.rx.borrow_and_update();
            if let Some(r) = self.try_read(max, out) {
                return r;
            }
            if self.rx.changed().await.is_err() {
                return Read::Closed;
            }
        }
    }

    /// Items published but not yet read by this player.
    pub fn backlog(&self) -> u64 {
        self.ring.lock().next_seq().saturating_sub(self.next)
    }

    /// Bytes (as the ring counts them) of the items not yet read.
    pub fn backlog_bytes(&self) -> usize {
        let st = self.ring.lock();
        let from = self.next.saturating_sub(st.base) as usize;
        st.items.iter().skip(from).map(RingItem::size).sum()
    }

    /// The ring dropped items this player has not read: the next read
    /// skips (or finds it too slow).
    pub fn fell_behind(&self) -> bool {
        !self.wait_keyframe && self.next < self.ring.lock().base
    }
}

impl<T: RingItem> Drop for Cursor<T> {
    fn drop(&mut self) {
        let mut st = self.ring.lock();
        st.players = st.players.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct It {
        id: u32,
        key: bool,
        size: usize,
    }

    impl RingItem for It {
        fn size(&self) -> usize {
            self.size
        }
        fn is_keyframe(&self) -> bool {
            self.key
        }
    }

    fn it(id: u32, key: bool) -> It {
        It { id, key, size: 100 }
    }

    fn ids(v: &[It]) -> Vec<u32> {
        v.iter().map(|i| i.id).collect()
    }

    /// Pushes GOPs of `gop` items; ids count from 0, keyframes at multiples of `gop`.
    fn push_gops(ring: &Ring<It>, from: u32, n: u32, gop: u32) {
        for id in from..from + n {
            ring.push(it(id, id % gop == 0));
        }
    }

    #[test]
    fn a_new_player_starts_at_the_newest_keyframe() {
        let ring = Ring::new(RingConfig::default());
        push_gops(&ring, 0, 25, 10); // keyframes 0, 10, 20
        let mut c = ring.subscribe();
        let mut out = Vec::new();
        assert_eq!(c.try_read(100, &mut out), Some(Read::Items));
        assert_eq!(ids(&out), vec![20, 21, 22, 23, 24]);
        assert_eq!(c.try_read(100, &mut out), None);
        // Two GOPs are kept at most.
        assert_eq!(ring.stats().items, 15);
    }

    #[test]
    fn a_player_joining_before_any_keyframe_waits_for_one() {
        let ring = Ring::new(RingConfig::default());
        ring.push(it(0, false));
        let mut c = ring.subscribe();
        let mut out = Vec::new();
        ring.push(it(1, false));
        assert_eq!(c.try_read(100, &mut out), None);
        ring.push(it(2, true));
        ring.push(it(3, false));
        assert_eq!(c.try_read(100, &mut out), Some(Read::Items));
        assert_eq!(ids(&out), vec![2, 3]);
    }

    #[test]
    fn a_player_may_start_at_the_next_keyframe_instead_of_the_cached_one() {
        let ring = Ring::new(RingConfig::default());
        push_gops(&ring, 0, 15, 10); // keyframes 0, 10
        let mut c = ring.subscribe_at_next_keyframe();
        let mut out = Vec::new();
        assert_eq!(c.try_read(100, &mut out), None);
        push_gops(&ring, 15, 10, 10); // keyframe 20
        assert_eq!(c.try_read(100, &mut out), Some(Read::Items));
        assert_eq!(ids(&out), vec![20, 21, 22, 23, 24]);
        assert_eq!(ring.stats().players, 1);
    }

    #[test]
    fn the_backlog_is_counted_in_bytes_and_falling_behind_is_seen_before_the_read() {
        let ring = Ring::new(RingConfig {
            max_bytes: 1000,
            max_lag_skips: 3,
        });
        push_gops(&ring, 0, 5, 10);
        let c = ring.subscribe();
        assert_eq!(c.backlog_bytes(), 500);
        assert!(!c.fell_behind());
        push_gops(&ring, 5, 6, 10); // 11 items of 100 bytes: item 0 goes
        assert!(c.fell_behind());
    }

    #[test]
    fn a_lagging_player_skips_to_the_newest_keyframe_then_is_dropped_if_it_stays_behind() {
        let ring = Ring::new(RingConfig {
            max_bytes: 1 << 20,
            max_lag_skips: 2,
        });
        push_gops(&ring, 0, 5, 10);
        let mut slow = ring.subscribe();
        let mut out = Vec::new();
        push_gops(&ring, 5, 30, 10); // 0..35: ring keeps 20..35
        assert_eq!(
            slow.try_read(1, &mut out),
            Some(Read::Skipped { dropped: 30 })
        );
        assert_eq!(slow.try_read(1, &mut out), Some(Read::Items));
        assert_eq!(ids(&out), vec![30]);
        push_gops(&ring, 35, 30, 10);
        assert!(matches!(
            slow.try_read(1, &mut out),
            Some(Read::Skipped { .. })
        ));
        push_gops(&ring, 65, 30, 10);
        assert_eq!(slow.try_read(1, &mut out), Some(Read::TooSlow));
    }

    #[test]
    fn catching_up_resets_the_skip_count() {
        let ring = Ring::new(RingConfig {
            max_bytes: 1 << 20,
            max_lag_skips: 1,
        });
        push_gops(&ring, 0, 1, 10);
        let mut c = ring.subscribe();
        let mut out = Vec::new();
        for round in 0..5u32 {
            push_gops(&ring, 1 + round * 40, 40, 10);
            assert!(matches!(
                c.try_read(1000, &mut out),
                Some(Read::Skipped { .. })
            ));
            assert_eq!(c.try_read(1000, &mut out), Some(Read::Items));
            assert_eq!(c.try_read(1000, &mut out), None); // at the live edge
        }
    }

    #[test]
    fn the_byte_bound_holds_even_for_huge_gops() {
        let ring = Ring::new(RingConfig {
            max_bytes: 1000,
            max_lag_skips: 3,
        });
        push_gops(&ring, 0, 100, 1000);
        let st = ring.stats();
        assert!(st.bytes <= 1000);
        assert_eq!(st.items, 10);
        // The keyframe was trimmed: a new player waits for the next one.
        assert!(!st.has_keyframe);
        let mut c = ring.subscribe();
        let mut out = Vec::new();
        ring.push(it(100, false));
        assert_eq!(c.try_read(10, &mut out), None);
        ring.push(it(101, true));
        assert_eq!(c.try_read(10, &mut out), Some(Read::Items));
        assert_eq!(ids(&out), vec![101]);
    }

    #[test]
    fn players_are_counted_and_close_ends_reads() {
        let ring = Ring::new(RingConfig::default());
        let a = ring.subscribe();
        let mut b = ring.subscribe();
        assert_eq!(ring.stats().players, 2);
        drop(a);
        assert_eq!(ring.stats().players, 1);
        push_gops(&ring, 0, 3, 10);
        ring.close();
        let mut out = Vec::new();
        assert_eq!(b.try_read(10, &mut out), Some(Read::Items));
        assert_eq!(b.try_read(10, &mut out), Some(Read::Closed));
        ring.push(it(9, true)); // ignored after close
        assert_eq!(ring.stats().items, 3);
    }

    #[tokio::test]
    async fn read_waits_for_the_publisher_and_a_stalled_player_does_not_slow_others() {
        let ring = Ring::new(RingConfig {
            max_bytes: 100 * 50,
            max_lag_skips: 1000,
        });
        ring.push(it(0, true));
        let _stalled = ring.subscribe(); // never reads
        let mut live = ring.subscribe();
        let publisher = {
            let ring = ring.clone();
            tokio::spawn(async move {
                for id in 1..2000u32 {
                    ring.push(it(id, id % 25 == 0));
                    if id % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ring.close();
            })
        };
        let mut got = Vec::new();
        let mut skipped = 0;
        loop {
            let mut out = Vec::new();
            match live.read(64, &mut out).await {
                Read::Items => got.extend(ids(&out)),
                Read::Skipped { dropped } => skipped += dropped,
                Read::Closed => break,
                Read::TooSlow => panic!("live reader dropped"),
            }
        }
        publisher.await.unwrap();
        // Everything delivered is in order without duplicates.
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(got.len() as u64 + skipped, 2000);
        assert_eq!(*got.last().unwrap(), 1999);
    }
}
