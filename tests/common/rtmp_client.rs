//! A minimal RTMP publisher written from the Adobe RTMP specification 1.0
//! (§5.2 handshake, §5.3 chunking, §5.4 protocol control, §7.2 commands)
//! and the AMF0 specification. It shares no code with the server on
//! purpose, so that each cross-checks the other.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;

use super::flv::{FlvTag, TagKind, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

// ---------------------------------------------------------------------------
// AMF0
// ---------------------------------------------------------------------------

/// An AMF0 value.
#[derive(Clone, Debug, PartialEq)]
pub enum Amf {
    Number(f64),
    Bool(bool),
    Str(String),
    Object(Vec<(String, Amf)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Amf)>),
    StrictArray(Vec<Amf>),
    Date(f64),
}

/// Shorthand for an AMF0 object.
pub fn obj(pairs: &[(&str, Amf)]) -> Amf {
    Amf::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

pub fn s(v: &str) -> Amf {
    Amf::Str(v.to_string())
}

fn put_key(out: &mut Vec<u8>, k: &str) {
    out.extend_from_slice(&(k.len() as u16).to_be_bytes());
    out.extend_from_slice(k.as_bytes());
}

impl Amf {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Amf::Number(n) => {
                out.push(0x00);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Amf::Bool(b) => {
                out.push(0x01);
                out.push(*b as u8);
            }
            Amf::Str(v) => {
                if v.len() > 0xFFFF {
                    out.push(0x0C);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                } else {
                    out.push(0x02);
                    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
                }
                out.extend_from_slice(v.as_bytes());
            }
            Amf::Object(props) => {
                out.push(0x03);
                for (k, v) in props {
                    put_key(out, k);
                    v.encode(out);
                }
                out.extend_from_slice(&[0, 0, 0x09]);
            }
            Amf::Null => out.push(0x05),
            Amf::Undefined => out.push(0x06),
            Amf::EcmaArray(props) => {
                out.push(0x08);
                out.extend_from_slice(&(props.len() as u32).to_be_bytes());
                for (k, v) in props {
                    put_key(out, k);
                    v.encode(out);
                }
                out.extend_from_slice(&[0, 0, 0x09]);
            }
            Amf::StrictArray(items) => {
                out.push(0x0A);
                out.extend_from_slice(&(items.len() as u32).to_be_bytes());
                for v in items {
                    v.encode(out);
                }
            }
            Amf::Date(ms) => {
                out.push(0x0B);
                out.extend_from_slice(&ms.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
    }

    /// Property of an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Amf> {
        match self {
            Amf::Object(p) | Amf::EcmaArray(p) => p.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf::Number(n) => Some(*n),
            _ => None,
        }
    }
}

pub fn amf_encode_all(values: &[Amf]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        v.encode(&mut out);
    }
    out
}

struct AmfReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> AmfReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.data.len() - self.pos < n {
            return Err(format!("AMF0: need {n} bytes at offset {}", self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u16(&mut self) -> Result<usize, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn string(&mut self, len: usize) -> Result<String, String> {
        Ok(String::from_utf8_lossy(self.take(len)?).to_string())
    }

    fn props(&mut self, depth: usize) -> Result<Vec<(String, Amf)>, String> {
        let mut props = Vec::new();
        loop {
            let klen = self.u16()?;
            if klen == 0 && self.data.get(self.pos) == Some(&0x09) {
                self.pos += 1;
                return Ok(props);
            }
            let k = self.string(klen)?;
            let v = self.value(depth + 1)?;
            props.push((k, v));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Amf, String> {
        if depth > 64 {
            return Err("AMF0: nesting deeper than 64".into());
        }
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00 => {
                let b = self.take(8)?;
                Amf::Number(f64::from_be_bytes(b.try_into().unwrap()))
            }
            0x01 => Amf::Bool(self.take(1)?[0] != 0),
            0x02 => {
                let n = self.u16()?;
                Amf::Str(self.string(n)?)
            }
            0x03 => Amf::Object(self.props(depth)?),
            0x05 => Amf::Null,
            0x06 => Amf::Undefined,
            0x08 => {
                let _count = self.u32()?;
                Amf::EcmaArray(self.props(depth)?)
            }
            0x0A => {
                let n = self.u32()?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Amf::StrictArray(items)
            }
            0x0B => {
                let b = self.take(8)?;
                let ms = f64::from_be_bytes(b.try_into().unwrap());
                self.take(2)?;
                Amf::Date(ms)
            }
            0x0C | 0x0F => {
                let n = self.u32()?;
                Amf::Str(self.string(n)?)
            }
            m => return Err(format!("AMF0: unsupported marker {m:#04x}")),
        })
    }
}

/// Decodes a sequence of AMF0 values.
pub fn amf_decode_all(data: &[u8]) -> Result<Vec<Amf>, String> {
    let mut r = AmfReader { data, pos: 0 };
    let mut out = Vec::new();
    while r.pos < data.len() {
        out.push(r.value(0)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Handshake (§5.2)
// ---------------------------------------------------------------------------

pub const HANDSHAKE_SIZE: usize = 1536;

/// The simple handshake: C0 = 3, C1 = time 0 + zero 4 bytes + random,
/// then C2 = echo of S1. Returns (S1, S2).
pub fn handshake(s: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut c0c1 = vec![0u8; 1 + HANDSHAKE_SIZE];
    c0c1[0] = 3;
    rand::rng().fill(&mut c0c1[9..]);
    s.write_all(&c0c1)?;
    let mut s0s1 = vec![0u8; 1 + HANDSHAKE_SIZE];
    s.read_exact(&mut s0s1)?;
    if s0s1[0] != 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("S0 version {} (expected 3)", s0s1[0]),
        ));
    }
    let s1 = s0s1[1..].to_vec();
    s.write_all(&s1)?; // C2
    let mut s2 = vec![0u8; HANDSHAKE_SIZE];
    s.read_exact(&mut s2)?;
    Ok((s1, s2))
}

// ---------------------------------------------------------------------------
// Chunking (§5.3)
// ---------------------------------------------------------------------------

pub const MSG_SET_CHUNK_SIZE: u8 = 1;
pub const MSG_ABORT: u8 = 2;
pub const MSG_ACK: u8 = 3;
pub const MSG_USER_CONTROL: u8 = 4;
pub const MSG_WINDOW_ACK_SIZE: u8 = 5;
pub const MSG_SET_PEER_BANDWIDTH: u8 = 6;
pub const MSG_AUDIO: u8 = 8;
pub const MSG_VIDEO: u8 = 9;
pub const MSG_DATA_AMF3: u8 = 15;
pub const MSG_COMMAND_AMF3: u8 = 17;
pub const MSG_DATA_AMF0: u8 = 18;
pub const MSG_COMMAND_AMF0: u8 = 20;

/// Chunk basic header for `fmt` and chunk stream id (1-, 2- or 3-byte form).
pub fn basic_header(fmt: u8, csid: u32) -> Vec<u8> {
    assert!(fmt < 4 && (2..=65599).contains(&csid), "bad fmt/csid");
    if csid < 64 {
        vec![(fmt << 6) | csid as u8]
    } else if csid < 320 {
        vec![fmt << 6, (csid - 64) as u8]
    } else {
        let v = csid - 64;
        vec![(fmt << 6) | 1, (v & 0xFF) as u8, (v >> 8) as u8]
    }
}

fn put_u24(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes()[1..]);
}

#[derive(Clone, Debug)]
struct OutState {
    stream_id: u32,
    length: u32,
    type_id: u8,
    timestamp: u32,
    /// Delta of the last type 1/2 header, when the last header had one.
    delta: Option<u32>,
    /// Whether the last type 0/1/2 header used the extended timestamp.
    ext: bool,
}

/// Splits messages into chunks, compressing headers per chunk stream.
#[derive(Clone, Debug)]
pub struct ChunkWriter {
    pub chunk_size: usize,
    /// Always use type 0 headers (absolute timestamps) for new messages.
    pub always_type0: bool,
    states: HashMap<u32, OutState>,
    /// How many first chunks used each header type.
    pub header_types: [u64; 4],
    /// How many headers carried an extended timestamp.
    pub extended_headers: u64,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        ChunkWriter {
            chunk_size: 128,
            always_type0: false,
            states: HashMap::new(),
            header_types: [0; 4],
            extended_headers: 0,
        }
    }
}

impl ChunkWriter {
    /// The chunks of one message, first chunk first.
    pub fn chunks(
        &mut self,
        csid: u32,
        type_id: u8,
        stream_id: u32,
        timestamp: u32,
        payload: &[u8],
    ) -> Vec<Vec<u8>> {
        let len = payload.len() as u32;
        assert!(len <= 0xFF_FFFF, "message too long for RTMP");
        let prev = self.states.get(&csid).cloned();
        // (fmt, timestamp field value)
        let (fmt, field) = match &prev {
            Some(p) if !self.always_type0 && p.stream_id == stream_id => {
                let delta = timestamp.wrapping_sub(p.timestamp);
                if delta > 0x7FFF_FFFF {
                    (0u8, timestamp) // went backwards
                } else if p.length != len || p.type_id != type_id {
                    (1, delta)
                } else if p.delta == Some(delta) && !p.ext {
                    (3, delta)
                } else {
                    (2, delta)
                }
            }
            _ => (0, timestamp),
        };
        let ext = if fmt == 3 { false } else { field >= 0xFF_FFFF };
        let mut first = basic_header(fmt, csid);
        if fmt <= 2 {
            put_u24(&mut first, if ext { 0xFF_FFFF } else { field });
        }
        if fmt <= 1 {
            put_u24(&mut first, len);
            first.push(type_id);
        }
        if fmt == 0 {
            first.extend_from_slice(&stream_id.to_le_bytes());
        }
        if ext {
            first.extend_from_slice(&field.to_be_bytes());
            self.extended_headers += 1;
        }
        self.header_types[fmt as usize] += 1;
        let mut out = Vec::new();
        let mut pieces = payload.chunks(self.chunk_size.max(1));
        first.extend_from_slice(pieces.next().unwrap_or(&[]));
        out.push(first);
        for piece in pieces {
            let mut c = basic_header(3, csid);
            if ext {
                // §5.3.1.3: a type 3 chunk repeats the extended timestamp.
                c.extend_from_slice(&field.to_be_bytes());
            }
            c.extend_from_slice(piece);
            out.push(c);
        }
        let state = OutState {
            stream_id,
            length: len,
            type_id,
            timestamp,
            delta: match fmt {
                0 => None,
                3 => prev.as_ref().and_then(|p| p.delta),
                _ => Some(field),
            },
            ext: if fmt == 3 {
                prev.map(|p| p.ext).unwrap_or(false)
            } else {
                ext
            },
        };
        self.states.insert(csid, state);
        out
    }

    /// One message as contiguous bytes.
    pub fn message(
        &mut self,
        csid: u32,
        type_id: u8,
        stream_id: u32,
        timestamp: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        self.chunks(csid, type_id, stream_id, timestamp, payload)
            .concat()
    }
}

/// A reassembled message.
#[derive(Clone, Debug)]
pub struct RtmpMessage {
    pub csid: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub timestamp: u32,
    pub payload: Vec<u8>,
}

#[derive(Default, Clone, Debug)]
struct InState {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    ext: bool,
    buf: Vec<u8>,
    started: bool,
}

/// Reads chunks (all four header types, all basic header forms, extended
/// timestamps, Set Chunk Size) and reassembles messages per chunk stream.
#[derive(Debug)]
pub struct ChunkReader {
    pub chunk_size: usize,
    states: HashMap<u32, InState>,
}

impl Default for ChunkReader {
    fn default() -> Self {
        ChunkReader {
            chunk_size: 128,
            states: HashMap::new(),
        }
    }
}

fn read_n(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

impl ChunkReader {
    pub fn read_message(&mut self, r: &mut impl Read) -> io::Result<RtmpMessage> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        loop {
            let b0 = read_n(r, 1)?[0];
            let fmt = b0 >> 6;
            let csid = match b0 & 0x3F {
                0 => 64 + read_n(r, 1)?[0] as u32,
                1 => {
                    let b = read_n(r, 2)?;
                    64 + b[0] as u32 + 256 * b[1] as u32
                }
                c => c as u32,
            };
            let st = self.states.entry(csid).or_default();
            if fmt != 0 && !st.started {
                return Err(bad(format!("fmt {fmt} chunk on new chunk stream {csid}")));
            }
            let new_message = st.buf.is_empty();
            match fmt {
                0 => {
                    let h = read_n(r, 11)?;
                    let mut ts = be24(&h[0..3]);
                    st.length = be24(&h[3..6]);
                    st.type_id = h[6];
                    st.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
                    st.ext = ts == 0xFF_FFFF;
                    if st.ext {
                        let e = read_n(r, 4)?;
                        ts = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
                    }
                    st.timestamp = ts;
                    st.delta = 0;
                }
                1 | 2 => {
                    let h = read_n(r, if fmt == 1 { 7 } else { 3 })?;
                    let mut d = be24(&h[0..3]);
                    if fmt == 1 {
                        st.length = be24(&h[3..6]);
                        st.type_id = h[6];
                    }
                    st.ext = d == 0xFF_FFFF;
                    if st.ext {
                        let e = read_n(r, 4)?;
                        d = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
                    }
                    st.delta = d;
                    st.timestamp = st.timestamp.wrapping_add(d);
                }
                _ => {
                    if st.ext {
                        read_n(r, 4)?;
                    }
                    if new_message {
                        st.timestamp = st.timestamp.wrapping_add(st.delta);
                    }
                }
            }
            st.started = true;
            let want = (st.length as usize - st.buf.len()).min(self.chunk_size);
            let data = read_n(r, want)?;
            st.buf.extend_from_slice(&data);
            if st.buf.len() == st.length as usize {
                let msg = RtmpMessage {
                    csid,
                    type_id: st.type_id,
                    stream_id: st.stream_id,
                    timestamp: st.timestamp,
                    payload: std::mem::take(&mut st.buf),
                };
                if msg.type_id == MSG_SET_CHUNK_SIZE && msg.payload.len() >= 4 {
                    let p = &msg.payload;
                    let size = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7FFF_FFFF;
                    if size == 0 {
                        return Err(bad("server sent Set Chunk Size 0".into()));
                    }
                    self.chunk_size = size as usize;
                }
                return Ok(msg);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The publisher
// ---------------------------------------------------------------------------

/// What the server sent.
#[derive(Clone, Debug)]
pub enum ServerEvent {
    /// An AMF0 (or AMF3-wrapped AMF0) command: name, transaction id and the
    /// values after the transaction id.
    Command {
        name: String,
        txn: f64,
        args: Vec<Amf>,
        stream_id: u32,
    },
    /// Any other message.
    Message(RtmpMessage),
    /// The connection ended (EOF, reset or a parse error).
    Closed(String),
}

/// An `onStatus` info object.
#[derive(Clone, Debug)]
pub struct Status {
    pub level: String,
    pub code: String,
    pub description: String,
}

/// How a publish request ended.
#[derive(Clone, Debug)]
pub enum PublishOutcome {
    /// `NetStream.Publish.Start`.
    Accepted,
    /// An `onStatus` with level `error` (or an `_error` reply).
    Refused(Status),
    /// The connection closed or the reply never came.
    Closed(String),
}

impl PublishOutcome {
    pub fn is_accepted(&self) -> bool {
        matches!(self, PublishOutcome::Accepted)
    }
}

/// Publisher options.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Outgoing chunk size; anything but 128 is announced with Set Chunk Size.
    pub chunk_size: u32,
    /// Added (wrapping) to every tag timestamp.
    pub timestamp_offset: u32,
    /// `(at, add)`: tags whose file timestamp is at or after `at` ms go out
    /// with `add` ms more (a discontinuity); pacing still follows the file.
    pub timestamp_jump: Option<(u32, u32)>,
    /// Split audio and video messages into chunks and alternate their
    /// chunks on the wire.
    pub interleave: bool,
    /// Send each tag at its timestamp relative to the start.
    pub realtime: bool,
    /// Use a type 0 header (absolute timestamp) for every message.
    pub always_type0: bool,
    /// Send the file's onMetaData as `@setDataFrame`.
    pub send_metadata: bool,
    pub audio_csid: u32,
    pub video_csid: u32,
    pub data_csid: u32,
    /// Timeout for each command reply.
    pub reply_timeout: Duration,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            chunk_size: 4096,
            timestamp_offset: 0,
            timestamp_jump: None,
            interleave: false,
            realtime: true,
            always_type0: false,
            send_metadata: true,
            audio_csid: 4,
            video_csid: 6,
            data_csid: 5,
            reply_timeout: Duration::from_secs(15),
        }
    }
}

/// What `send_tags` sent.
#[derive(Clone, Debug, Default)]
pub struct SendReport {
    pub audio_messages: u64,
    pub video_messages: u64,
    pub data_messages: u64,
    /// Coded frames only (no sequence headers / end of sequence).
    pub audio_frames: u64,
    pub video_frames: u64,
    /// Media payload bytes.
    pub payload_bytes: u64,
    /// Set when sending stopped early: the server closed or a write failed.
    pub error: Option<String>,
    /// onStatus infos received while sending.
    pub statuses: Vec<String>,
    /// First-chunk header types used, by fmt (0..=3).
    pub header_types: [u64; 4],
    pub extended_headers: u64,
    /// Messages whose chunks were interleaved with another message's.
    pub interleaved_pairs: u64,
}

/// A connected RTMP client that can publish one stream.
pub struct RtmpPublisher {
    stream: TcpStream,
    writer: ChunkWriter,
    events: Receiver<ServerEvent>,
    opts: PublishOptions,
    app: String,
    key: String,
    stream_id: u32,
    pub statuses: Vec<Status>,
    pub closed: Option<String>,
    window_ack_sent: Option<u32>,
    pub connect_result: Vec<Amf>,
}

fn spawn_reader(stream: TcpStream) -> Receiver<ServerEvent> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("rtmp-client-reader".into())
        .spawn(move || {
            let mut r = BufReader::new(stream);
            let mut chunks = ChunkReader::default();
            loop {
                let ev = match chunks.read_message(&mut r) {
                    Ok(m) => match m.type_id {
                        MSG_COMMAND_AMF0 | MSG_COMMAND_AMF3 => {
                            let body = if m.type_id == MSG_COMMAND_AMF3 {
                                m.payload.get(1..).unwrap_or(&[])
                            } else {
                                &m.payload[..]
                            };
                            match amf_decode_all(body) {
                                Ok(vals) => {
                                    let mut it = vals.into_iter();
                                    let name = it
                                        .next()
                                        .and_then(|v| v.as_str().map(str::to_string))
                                        .unwrap_or_default();
                                    let txn = it.next().and_then(|v| v.as_f64()).unwrap_or(-1.0);
                                    ServerEvent::Command {
                                        name,
                                        txn,
                                        args: it.collect(),
                                        stream_id: m.stream_id,
                                    }
                                }
                                Err(e) => ServerEvent::Closed(format!(
                                    "client could not decode a server command: {e}"
                                )),
                            }
                        }
                        _ => ServerEvent::Message(m),
                    },
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        ServerEvent::Closed("EOF".into())
                    }
                    Err(e) => ServerEvent::Closed(e.to_string()),
                };
                let last = matches!(ev, ServerEvent::Closed(_));
                if tx.send(ev).is_err() || last {
                    return;
                }
            }
        })
        .expect("spawn rtmp reader");
    rx
}

fn status_of(args: &[Amf]) -> Option<Status> {
    let info = args.iter().find(|a| a.get("code").is_some())?;
    let field = |k: &str| {
        info.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(Status {
        level: field("level"),
        code: field("code"),
        description: field("description"),
    })
}

impl RtmpPublisher {
    /// TCP connect, handshake, optional Set Chunk Size, `connect` command
    /// (waits for `_result`).
    pub fn connect(addr: SocketAddr, app: &str, opts: PublishOptions) -> Result<Self, String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        stream.set_write_timeout(Some(Duration::from_secs(15))).ok();
        stream.set_read_timeout(Some(opts.reply_timeout)).ok();
        handshake(&mut stream).map_err(|e| format!("handshake: {e}"))?;
        stream.set_read_timeout(None).ok();
        let reader = stream
            .try_clone()
            .map_err(|e| format!("clone socket: {e}"))?;
        let events = spawn_reader(reader);
        let mut writer = ChunkWriter {
            always_type0: opts.always_type0,
            ..ChunkWriter::default()
        };
        let mut p = RtmpPublisher {
            stream,
            writer: ChunkWriter::default(),
            events,
            opts: opts.clone(),
            app: app.to_string(),
            key: String::new(),
            stream_id: 0,
            statuses: Vec::new(),
            closed: None,
            window_ack_sent: None,
            connect_result: Vec::new(),
        };
        if opts.chunk_size != 128 {
            let m = writer.message(2, MSG_SET_CHUNK_SIZE, 0, 0, &opts.chunk_size.to_be_bytes());
            p.stream
                .write_all(&m)
                .map_err(|e| format!("send Set Chunk Size: {e}"))?;
            writer.chunk_size = opts.chunk_size as usize;
        }
        p.writer = writer;
        let tc_url = format!("rtmp://{addr}/{app}");
        p.command(
            3,
            0,
            &[
                s("connect"),
                Amf::Number(1.0),
                obj(&[
                    ("app", s(app)),
                    ("type", s("nonprivate")),
                    ("flashVer", s("FMLE/3.0 (compatible; sluice-tests)")),
                    ("tcUrl", s(&tc_url)),
                ]),
            ],
        )
        .map_err(|e| format!("send connect: {e}"))?;
        match p.wait_reply(1.0)? {
            (true, args) => {
                p.connect_result = args;
                Ok(p)
            }
            (false, args) => Err(format!("connect refused: {args:?}")),
        }
    }

    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// Sends an AMF0 command message.
    pub fn command(&mut self, csid: u32, stream_id: u32, values: &[Amf]) -> io::Result<()> {
        let payload = amf_encode_all(values);
        let m = self
            .writer
            .message(csid, MSG_COMMAND_AMF0, stream_id, 0, &payload);
        self.stream.write_all(&m)
    }

    /// Handles protocol control traffic; returns the event when it is
    /// something the caller may want.
    fn handle(&mut self, ev: ServerEvent) -> Option<ServerEvent> {
        match &ev {
            ServerEvent::Message(m) if m.type_id == MSG_USER_CONTROL && m.payload.len() >= 2 => {
                let event = u16::from_be_bytes([m.payload[0], m.payload[1]]);
                if event == 6 {
                    // PingRequest → PingResponse with the same timestamp.
                    let mut p = 7u16.to_be_bytes().to_vec();
                    p.extend_from_slice(&m.payload[2..]);
                    let msg = self.writer.message(2, MSG_USER_CONTROL, 0, 0, &p);
                    let _ = self.stream.write_all(&msg);
                }
                None
            }
            ServerEvent::Message(m)
                if m.type_id == MSG_SET_PEER_BANDWIDTH && m.payload.len() >= 4 =>
            {
                let size =
                    u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                if self.window_ack_sent != Some(size) {
                    self.window_ack_sent = Some(size);
                    let msg =
                        self.writer
                            .message(2, MSG_WINDOW_ACK_SIZE, 0, 0, &size.to_be_bytes());
                    let _ = self.stream.write_all(&msg);
                }
                None
            }
            ServerEvent::Message(_) => None,
            ServerEvent::Command { name, args, .. } => {
                if name == "onStatus" {
                    if let Some(st) = status_of(args) {
                        self.statuses.push(st);
                    }
                }
                Some(ev)
            }
            ServerEvent::Closed(reason) => {
                self.closed.get_or_insert(reason.clone());
                Some(ev)
            }
        }
    }

    /// Waits for `_result`/`_error` of transaction `txn`: (ok, values).
    fn wait_reply(&mut self, txn: f64) -> Result<(bool, Vec<Amf>), String> {
        let deadline = Instant::now() + self.opts.reply_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match self.events.recv_timeout(left) {
                Ok(ev) => ev,
                Err(_) => return Err(format!("no reply to transaction {txn} in time")),
            };
            match self.handle(ev) {
                Some(ServerEvent::Command {
                    name, txn: t, args, ..
                }) if t == txn && (name == "_result" || name == "_error") => {
                    return Ok((name == "_result", args))
                }
                Some(ServerEvent::Closed(reason)) => {
                    return Err(format!(
                        "server closed the connection waiting for transaction {txn}: {reason}"
                    ))
                }
                _ => {}
            }
        }
    }

    /// releaseStream, FCPublish, createStream, publish; waits for the
    /// publish `onStatus`.
    pub fn publish(&mut self, key: &str) -> PublishOutcome {
        if let Err(closed) = self.request_publish(key) {
            return closed;
        }
        self.wait_publish_status()
    }

    /// releaseStream, FCPublish, createStream (waits for its stream id),
    /// then sends `publish` without waiting for the answer.
    pub fn request_publish(&mut self, key: &str) -> Result<(), PublishOutcome> {
        self.key = key.to_string();
        let sent = (|| -> io::Result<()> {
            self.command(
                3,
                0,
                &[s("releaseStream"), Amf::Number(2.0), Amf::Null, s(key)],
            )?;
            self.command(3, 0, &[s("FCPublish"), Amf::Number(3.0), Amf::Null, s(key)])?;
            self.command(3, 0, &[s("createStream"), Amf::Number(4.0), Amf::Null])
        })();
        if let Err(e) = sent {
            return Err(PublishOutcome::Closed(format!("write failed: {e}")));
        }
        match self.wait_reply(4.0) {
            Ok((true, args)) => match args.iter().find_map(Amf::as_f64) {
                Some(id) => self.stream_id = id as u32,
                None => {
                    return Err(PublishOutcome::Closed(format!(
                        "createStream _result without a stream id: {args:?}"
                    )))
                }
            },
            Ok((false, args)) => {
                return Err(PublishOutcome::Refused(status_of(&args).unwrap_or(
                    Status {
                        level: "error".into(),
                        code: "createStream._error".into(),
                        description: format!("{args:?}"),
                    },
                )))
            }
            Err(e) => return Err(PublishOutcome::Closed(e)),
        }
        let sid = self.stream_id;
        self.command(
            8,
            sid,
            &[s("publish"), Amf::Number(5.0), Amf::Null, s(key), s("live")],
        )
        .map_err(|e| PublishOutcome::Closed(format!("write failed: {e}")))
    }

    /// Waits for the `onStatus` answering `publish`.
    pub fn wait_publish_status(&mut self) -> PublishOutcome {
        let deadline = Instant::now() + self.opts.reply_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match self.events.recv_timeout(left) {
                Ok(ev) => ev,
                Err(_) => return PublishOutcome::Closed("no onStatus for publish in time".into()),
            };
            match self.handle(ev) {
                Some(ServerEvent::Command {
                    name, txn, args, ..
                }) => {
                    if name == "_error" && txn == 5.0 {
                        return PublishOutcome::Refused(status_of(&args).unwrap_or(Status {
                            level: "error".into(),
                            code: "publish._error".into(),
                            description: format!("{args:?}"),
                        }));
                    }
                    if name != "onStatus" {
                        continue;
                    }
                    let Some(st) = status_of(&args) else { continue };
                    if st.level == "error" {
                        return PublishOutcome::Refused(st);
                    }
                    if st.code == "NetStream.Publish.Start" {
                        return PublishOutcome::Accepted;
                    }
                }
                Some(ServerEvent::Closed(reason)) => return PublishOutcome::Closed(reason),
                _ => {}
            }
        }
    }

    /// Writes `bytes` as they are (hand-made chunks), with `timeout` per
    /// write: a server that stops reading makes it fail with `TimedOut` or
    /// `WouldBlock`.
    pub fn send_raw(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<()> {
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream.write_all(bytes)
    }

    /// Handles whatever the server sent meanwhile, without blocking.
    pub fn poll_events(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(ev) => {
                    self.handle(ev);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.closed.get_or_insert("reader ended".into());
                    return;
                }
            }
        }
    }

    /// Waits up to `timeout` for the server to close the connection;
    /// returns the reason when it did.
    pub fn wait_server_close(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    self.handle(ev);
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.closed.get_or_insert("reader ended".into());
                }
            }
        }
        self.closed.clone()
    }

    fn tag_message(&mut self, tag: &FlvTag) -> (u32, u8, Vec<u8>) {
        match tag.tag_type {
            TAG_AUDIO => (self.opts.audio_csid, MSG_AUDIO, tag.data.clone()),
            TAG_VIDEO => (self.opts.video_csid, MSG_VIDEO, tag.data.clone()),
            _ => {
                let mut p = amf_encode_all(&[s("@setDataFrame")]);
                p.extend_from_slice(&tag.data);
                (self.opts.data_csid, MSG_DATA_AMF0, p)
            }
        }
    }

    fn count(report: &mut SendReport, tag: &FlvTag) {
        match tag.tag_type {
            TAG_AUDIO => {
                report.audio_messages += 1;
                report.payload_bytes += tag.data.len() as u64;
                if tag.kind() == TagKind::Frame {
                    report.audio_frames += 1;
                }
            }
            TAG_VIDEO => {
                report.video_messages += 1;
                report.payload_bytes += tag.data.len() as u64;
                if tag.kind() == TagKind::Frame {
                    report.video_frames += 1;
                }
            }
            _ => report.data_messages += 1,
        }
    }

    /// Sends the tags (audio, video and, when enabled, script data) on the
    /// published stream, paced or not, interleaved or not.
    pub fn send_tags(&mut self, tags: &[FlvTag]) -> SendReport {
        let mut report = SendReport::default();
        let header_types_before = self.writer.header_types;
        let ext_before = self.writer.extended_headers;
        let is_media = |t: &FlvTag| t.tag_type == TAG_AUDIO || t.tag_type == TAG_VIDEO;
        let sendable: Vec<&FlvTag> = tags
            .iter()
            .filter(|t| is_media(t) || (t.tag_type == TAG_SCRIPT && self.opts.send_metadata))
            .collect();
        let first_ts = sendable.iter().map(|t| t.timestamp).min().unwrap_or(0);
        let start = Instant::now();
        let sid = self.stream_id;
        let offset = self.opts.timestamp_offset;
        let jump = self.opts.timestamp_jump;
        let wire_ts = move |t: &FlvTag| {
            let extra = match jump {
                Some((at, add)) if t.timestamp >= at => add,
                _ => 0,
            };
            t.timestamp.wrapping_add(offset).wrapping_add(extra)
        };
        let mut i = 0;
        while i < sendable.len() {
            self.poll_events();
            if let Some(reason) = &self.closed {
                report.error = Some(format!("server closed the connection: {reason}"));
                break;
            }
            let tag = sendable[i];
            if self.opts.realtime {
                let due = start + Duration::from_millis(u64::from(tag.timestamp - first_ts));
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let pair = if self.opts.interleave && is_media(tag) {
                sendable
                    .get(i + 1)
                    .filter(|n| is_media(n) && n.tag_type != tag.tag_type)
                    .copied()
            } else {
                None
            };
            let (csid, ty, payload) = self.tag_message(tag);
            let ts = wire_ts(tag);
            let first = self.writer.chunks(csid, ty, sid, ts, &payload);
            let mut wire = Vec::new();
            if let Some(next) = pair {
                let (csid2, ty2, payload2) = self.tag_message(next);
                let ts2 = wire_ts(next);
                let second = self.writer.chunks(csid2, ty2, sid, ts2, &payload2);
                if first.len() > 1 || second.len() > 1 {
                    report.interleaved_pairs += 1;
                }
                let mut a = first.into_iter();
                let mut b = second.into_iter();
                loop {
                    let x = a.next();
                    let y = b.next();
                    if x.is_none() && y.is_none() {
                        break;
                    }
                    wire.extend(x.into_iter().flatten());
                    wire.extend(y.into_iter().flatten());
                }
            } else {
                wire = first.concat();
            }
            if let Err(e) = self.stream.write_all(&wire) {
                self.poll_events();
                report.error = Some(format!(
                    "write failed: {e} (server close reason: {:?})",
                    self.closed
                ));
                break;
            }
            Self::count(&mut report, tag);
            i += 1;
            if let Some(next) = pair {
                Self::count(&mut report, next);
                i += 1;
            }
        }
        self.poll_events();
        for (k, slot) in report.header_types.iter_mut().enumerate() {
            *slot = self.writer.header_types[k] - header_types_before[k];
        }
        report.extended_headers = self.writer.extended_headers - ext_before;
        report.statuses = self
            .statuses
            .iter()
            .map(|s| format!("{} {} {}", s.level, s.code, s.description))
            .collect();
        report
    }

    /// FCUnpublish + deleteStream, keeping the connection (an encoder
    /// that stops and starts its stream).
    pub fn unpublish(&mut self) -> io::Result<()> {
        let key = self.key.clone();
        let sid = self.stream_id;
        self.command(
            3,
            0,
            &[s("FCUnpublish"), Amf::Number(6.0), Amf::Null, s(&key)],
        )?;
        self.command(
            3,
            0,
            &[
                s("deleteStream"),
                Amf::Number(7.0),
                Amf::Null,
                Amf::Number(sid as f64),
            ],
        )
    }

    /// FCUnpublish + deleteStream, then closes the socket.
    pub fn close(mut self) {
        let _ = self.unpublish();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Closes the socket without any goodbye.
    pub fn abort(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for RtmpPublisher {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Connects, publishes `app/key` and returns the publisher, or panics
/// with the reason.
pub fn connect_and_publish(addr: SocketAddr, path: &str, opts: PublishOptions) -> RtmpPublisher {
    let (app, key) = path.split_once('/').expect("path is APP/KEY");
    let mut p = RtmpPublisher::connect(addr, app, opts)
        .unwrap_or_else(|e| panic!("RTMP connect to {addr}/{app} failed: {e}"));
    match p.publish(key) {
        PublishOutcome::Accepted => p,
        other => panic!("publish {path} was not accepted: {other:?}"),
    }
}

/// A publish running on its own thread. After sending every tag it keeps
/// the connection open until `release` (or drop), so a test can inspect
/// the live stream.
pub struct BackgroundPublish {
    report: Receiver<Result<SendReport, String>>,
    release: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub path: String,
}

impl BackgroundPublish {
    pub fn spawn(
        addr: SocketAddr,
        path: &str,
        tags: Arc<Vec<FlvTag>>,
        opts: PublishOptions,
    ) -> BackgroundPublish {
        let (report_tx, report_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let path_owned = path.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("publish-{path}"))
            .spawn(move || {
                let (app, key) = path_owned.split_once('/').expect("path is APP/KEY");
                let mut p = match RtmpPublisher::connect(addr, app, opts) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = report_tx.send(Err(e));
                        return;
                    }
                };
                match p.publish(key) {
                    PublishOutcome::Accepted => {}
                    other => {
                        let _ = report_tx.send(Err(format!("publish not accepted: {other:?}")));
                        return;
                    }
                }
                let report = p.send_tags(&tags);
                let _ = report_tx.send(Ok(report));
                let _ = release_rx.recv();
                p.close();
            })
            .expect("spawn publisher thread");
        BackgroundPublish {
            report: report_rx,
            release: Some(release_tx),
            thread: Some(thread),
            path: path.to_string(),
        }
    }

    /// Waits until every tag was sent; panics if the publish failed.
    pub fn wait_report(&self, timeout: Duration) -> SendReport {
        match self.report.recv_timeout(timeout) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("background publish of {} failed: {e}", self.path),
            Err(_) => panic!(
                "background publish of {} did not finish within {timeout:?}",
                self.path
            ),
        }
    }

    /// Closes the connection (FCUnpublish, deleteStream, close) and joins.
    pub fn release(&mut self) {
        self.release.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackgroundPublish {
    fn drop(&mut self) {
        self.release();
    }
}
