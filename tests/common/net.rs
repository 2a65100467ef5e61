//! Raw TCP helpers for the hostile-input tests: connect, write, and see how
//! (and whether) the server closed the connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How a socket was seen to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Reset(String),
}

/// A TCP connection with generous timeouts and Nagle off.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Writes all of `data`, reporting (not panicking on) a closed peer.
pub fn write_ignoring_close(s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    s.write_all(data)
}

/// Reads and discards until the peer closes (EOF or reset). Returns how it
/// closed, or an error message if it was still open after `timeout`.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Result<Closed, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16384];
    let mut received = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "connection still open after {timeout:?} ({received} bytes received meanwhile)"
            ));
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Ok(Closed::Eof),
            Ok(n) => received += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Ok(Closed::Reset(e.to_string())),
        }
    }
}
