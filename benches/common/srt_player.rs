//! An SRT player in process: an srt-protocol caller on a blocking UDP
//! socket that times every video frame of the stream at network arrival
//! (before its own TSBPD delay) and when its SRT receiver released it to
//! the application (in order, retransmissions filled in, after TSBPD).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use srt_protocol::connection::DuplexConnection;
use srt_protocol::options::{PacketCount, PacketSize};
use srt_protocol::packet::{ControlPacket, ControlTypes, Packet, SeqNumber, TimeStamp};
use srt_protocol::protocol::pending_connection::connect::Connect;
use srt_protocol::protocol::pending_connection::ConnectionResult;
use srt_protocol::settings::ConnInitSettings;

use super::frames::{TsFrame, VideoStarts};

/// What a player saw.
pub struct Played {
    /// Every video frame as its datagrams first crossed the wire. A frame
    /// with a packet lost on the way is assembled without it (its key then
    /// matches nothing).
    pub frames: Vec<TsFrame>,
    /// Every video frame as the receiver released it, complete and in
    /// order, timed at release.
    pub released: Vec<TsFrame>,
    /// When the handshake began.
    pub started: Instant,
    /// When the handshake completed.
    pub connected: Option<Instant>,
}

fn send_packet(sock: &UdpSocket, buf: &mut Vec<u8>, p: &Packet, to: SocketAddr) {
    buf.clear();
    p.serialize(buf);
    let _ = sock.send_to(buf, to);
}

/// Play `streamid` from `remote` with an srt-protocol caller on a blocking
/// socket until `stop`, timing every video frame at network arrival.
pub fn play(
    remote: SocketAddr,
    streamid: &str,
    latency: Duration,
    stop: &AtomicBool,
) -> Result<Played, String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let settings = ConnInitSettings {
        send_latency: latency,
        recv_latency: latency,
        recv_buffer_size: PacketCount(8192),
        max_packet_size: PacketSize(1500),
        ..Default::default()
    }
    .copy_randomize();
    let mut connect = Connect::new(
        remote,
        sock.local_addr().map_err(|e| e.to_string())?.ip(),
        settings,
        Some(streamid.to_string()),
        SeqNumber::new_truncate(rand::random::<u32>()),
    );
    let mut out = Vec::with_capacity(1500);
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    let mut conn: Option<DuplexConnection> = None;
    let mut next_tick = start;
    while conn.is_none() {
        let now = Instant::now();
        if now.duration_since(start) > Duration::from_secs(5) {
            return Err(format!("{streamid}: handshake timeout"));
        }
        let mut r = ConnectionResult::NoAction;
        if now >= next_tick {
            r = connect.handle_tick(now);
            next_tick = now + Duration::from_millis(100);
        } else {
            sock.set_read_timeout(Some(next_tick - now)).ok();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if let Ok(p) = Packet::parse(&mut &buf[..n], false) {
                    r = connect.handle_packet(Ok((p, from)), Instant::now());
                }
            }
        }
        match r {
            ConnectionResult::SendPacket((p, to)) => send_packet(&sock, &mut out, &p, to),
            ConnectionResult::Connected(reply, c) => {
                if let Some((p, to)) = reply {
                    send_packet(&sock, &mut out, &p, to);
                }
                conn = Some(DuplexConnection::new(c));
            }
            ConnectionResult::Reject(_, why) => {
                return Err(format!("{streamid}: rejected {why:?}"))
            }
            ConnectionResult::Failure(e) => return Err(format!("{streamid}: {e}")),
            _ => {}
        }
    }
    let connected = Some(Instant::now());
    let mut conn = conn.expect("connected");
    let remote_sockid = conn.settings().remote_sockid;
    let mut starts = VideoStarts::new();
    let mut got = Vec::new();
    let mut releases = VideoStarts::new();
    let mut released = Vec::new();
    while !stop.load(Ordering::Relaxed) && conn.is_open() {
        let now = Instant::now();
        conn.check_timers(now);
        while let Some((p, to)) = conn.next_packet(now) {
            send_packet(&sock, &mut out, &p, to);
        }
        while let Some((_, data)) = conn.next_data(now) {
            releases.push(&data, now, &mut released);
        }
        let wake = conn.next_timer(now).min(now + Duration::from_millis(2));
        let wait = wake.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(wait.max(Duration::from_micros(100))))
            .ok();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let at = Instant::now();
            if let Ok(p) = Packet::parse(&mut &buf[..n], false) {
                if let Packet::Data(d) = &p {
                    starts.push(&d.payload, at, &mut got);
                }
                conn.handle_packet_input(at, Ok((p, from)));
            }
        }
    }
    let shutdown = Packet::Control(ControlPacket {
        timestamp: TimeStamp::from_micros(0),
        dest_sockid: remote_sockid,
        control_type: ControlTypes::Shutdown,
    });
    send_packet(&sock, &mut out, &shutdown, remote);
    Ok(Played {
        frames: got,
        released,
        started: start,
        connected,
    })
}
