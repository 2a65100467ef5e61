//! The sans-IO RTMP server core: handshake, chunk stream, AMF0 commands.
//!
//! [`Session`] takes bytes and the current time and produces bytes to send
//! and [`Event`]s; it never touches a socket or reads the clock, so it can be
//! driven in virtual time by tests and fuzzers.

pub mod chunk;
pub mod handshake;
mod session;

pub use session::{Event, Limits, ProtoError, Session};

/// For `cargo fuzz` and corpus replay: a plain handshake, then `data` as the
/// client's chunk stream, fed in uneven pieces; every connect and publish is
/// accepted so the media path is reached. Must never panic.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_session(data: &[u8]) {
    let now = std::time::Instant::now();
    let mut s = Session::new(Limits::default(), now, 1);
    let mut hello = vec![3u8];
    hello.extend_from_slice(&[0u8; 2 * handshake::PACKET_SIZE]);
    if s.handle_input(now, &hello).is_err() {
        return;
    }
    // Split points vary with the data so chunk boundaries land everywhere.
    let mut rest = data;
    let mut step = 1 + data.first().copied().unwrap_or(0) as usize * 17;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        step = step * 7 % 4093 + 1;
        if s.handle_input(now, piece).is_err() {
            return;
        }
        while let Some(ev) = s.poll_event() {
            let r = match ev {
                Event::Connect { .. } => s.accept_connect(),
                Event::Publish { .. } => s.accept_publish(),
                _ => Ok(()),
            };
            if r.is_err() {
                return;
            }
        }
        let _ = s.take_transmit();
        if s.is_closing() {
            return;
        }
    }
}
