//! RTMP chunk stream (RTMP spec 5.3): reassembles messages from chunks, per
//! chunk stream id, and splits outbound messages into chunks. Sizes from the
//! wire are checked before anything is buffered and a chunk is parsed only
//! once it is whole; errors say where the chunk is ([`ChunkContext`]). Why
//! it is built this way: docs/rtmp.md.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::media::Excerpt;

/// Messages of these types change the chunk layer itself (RTMP spec 5.4).
pub const MSG_SET_CHUNK_SIZE: u8 = 1;
pub const MSG_ABORT: u8 = 2;

/// Largest chunk size the spec allows (5.4.1: 31 bits).
const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
const EXTENDED: u32 = 0x00FF_FFFF;
/// csids below this live in a flat table; larger ones in a map.
const FLAT_CSIDS: usize = 64 + 256;
/// Up to this size, a message's buffer is reserved whole on its first chunk.
const RESERVE_WHOLE: usize = 256 * 1024;

/// One reassembled RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    pub type_id: u8,
    pub stream_id: u32,
    /// 32-bit wrapping milliseconds, as on the wire after applying deltas.
    pub timestamp: u32,
    pub payload: Bytes,
}

#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Largest message length accepted from a header.
    pub max_message_size: u32,
    /// Most chunk stream ids one connection may use.
    pub max_chunk_streams: usize,
}

/// Where in a connection's chunk stream an error was found: enough to find
/// the bytes in a capture (like retina's `PacketContext`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkContext {
    /// Chunk stream id.
    pub csid: u32,
    /// Message type id, once a header (or the chunk stream's last one) named it.
    pub type_id: Option<u8>,
    /// Message stream id, once a header (or the chunk stream's last one) named it.
    pub stream_id: Option<u32>,
    /// Byte offset into the connection's input, handshake included, of the
    /// chunk; for an error in a message's content, of its first chunk.
    pub offset: u64,
    /// The chunk's first bytes, header included; for an error in a
    /// message's content, the payload's.
    pub excerpt: Excerpt,
}

impl std::fmt::Display for ChunkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "csid {}", self.csid)?;
        if let Some(t) = self.type_id {
            write!(f, ", message type {t}")?;
            if let Some(name) = message_type_name(t) {
                write!(f, " ({name})")?;
            }
        }
        if let Some(s) = self.stream_id {
            write!(f, ", message stream {s}")?;
        }
        write!(f, ", offset {}{}", self.offset, self.excerpt.after_colon())
    }
}

/// Names of the message types RTMP defines (spec 5.4, 6.2, 7.1), for logs.
fn message_type_name(type_id: u8) -> Option<&'static str> {
    Some(match type_id {
        1 => "Set Chunk Size",
        2 => "Abort",
        3 => "Acknowledgement",
        4 => "User Control",
        5 => "Window Acknowledgement Size",
        6 => "Set Peer Bandwidth",
        8 => "audio",
        9 => "video",
        15 => "AMF3 data",
        16 => "AMF3 shared object",
        17 => "AMF3 command",
        18 => "AMF0 data",
        19 => "AMF0 shared object",
        20 => "AMF0 command",
        22 => "aggregate",
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error(
        "message of {length} bytes exceeds the {limit}-byte limit (rtmp.max_message_size) at {at}"
    )]
    MessageTooLarge {
        length: u32,
        limit: u32,
        at: Box<ChunkContext>,
    },
    #[error("partial messages would hold {buffered} bytes, more than twice the {limit}-byte limit (rtmp.max_message_size), at {at}")]
    Overbuffered {
        buffered: usize,
        limit: u32,
        at: Box<ChunkContext>,
    },
    #[error("more than {limit} chunk streams in use (rtmp.max_chunk_streams); a new one refused at {at}")]
    TooManyChunkStreams { limit: usize, at: Box<ChunkContext> },
    #[error("chunk header type {fmt} refers to a previous header on its chunk stream that was never sent, at {at}")]
    NoPreviousHeader { fmt: u8, at: Box<ChunkContext> },
    #[error("peer set an invalid chunk size {size} (allowed 1..=2147483647) at {at}")]
    BadChunkSize { size: u32, at: Box<ChunkContext> },
    #[error("{kind} message has a {len}-byte payload, too short, at {at}")]
    ShortControl {
        kind: &'static str,
        len: usize,
        at: Box<ChunkContext>,
    },
}

impl ChunkError {
    /// Where in the connection's input the error was found.
    pub fn context(&self) -> &ChunkContext {
        match self {
            ChunkError::MessageTooLarge { at, .. }
            | ChunkError::Overbuffered { at, .. }
            | ChunkError::TooManyChunkStreams { at, .. }
            | ChunkError::NoPreviousHeader { at, .. }
            | ChunkError::BadChunkSize { at, .. }
            | ChunkError::ShortControl { at, .. } => at,
        }
    }
}

#[derive(Debug, Default)]
struct ChunkStream {
    timestamp: u32,
    /// Delta applied by a type-3 chunk starting a new message; after a
    /// type-0 header it is the absolute timestamp (RTMP spec 5.3.1.2.4).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The raw 32-bit extended timestamp of the last header, when it had one;
    /// type-3 chunks repeat it (5.3.1.3).
    extended: Option<u32>,
    /// A message is being assembled on this csid.
    in_progress: bool,
    /// Connection offset of the first chunk of the message being assembled.
    msg_offset: u64,
    partial: BytesMut,
}

/// Incremental decoder for one connection's inbound chunk stream.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    limits: ChunkLimits,
    flat: Vec<Option<Box<ChunkStream>>>,
    map: HashMap<u32, ChunkStream>,
    streams_in_use: usize,
    /// Bytes held in partial messages across all csids.
    buffered: usize,
    /// Connection offset of the next byte of input.
    offset: u64,
}

struct Header {
    fmt: u8,
    csid: u32,
    header_len: usize,
    field: u32,
    length: Option<u32>,
    type_id: Option<u8>,
    stream_id: Option<u32>,
}

impl ChunkDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        ChunkDecoder {
            chunk_size: 128,
            limits,
            flat: Vec::new(),
            map: HashMap::new(),
            streams_in_use: 0,
            buffered: 0,
            offset: 0,
        }
    }

    /// Counts the input from `offset` on: where the chunk stream starts in
    /// the connection (after the handshake), so errors name the offset a
    /// capture shows.
    pub fn start_at(&mut self, offset: u64) {
        self.offset = offset;
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes held in incomplete messages (bounded by the limits).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Parse as many whole chunks from `buf` as it holds, stopping at the
    /// first complete message, which is returned. `Ok(None)` means more
    /// input is needed; the unparsed bytes stay in `buf`.
    ///
    /// Set Chunk Size and Abort are applied here, before the next chunk is
    /// read, and are still returned so the session can log them.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        let start = buf.len();
        let r = self.decode_messages(buf, start);
        // Offsets are counted per call, not per chunk.
        self.offset += (start - buf.len()) as u64;
        r
    }

    fn decode_messages(
        &mut self,
        buf: &mut BytesMut,
        start: usize,
    ) -> Result<Option<Message>, ChunkError> {
        loop {
            let msg = match self.decode_chunk(buf, start) {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(None),
                Err(why) => return Err(self.refused(why, buf, start)),
            };
            let Some(msg) = msg else { continue };
            if msg.stream_id == 0 {
                self.apply_control(&msg)?;
            }
            return Ok(Some(msg));
        }
    }

    fn apply_control(&mut self, msg: &Message) -> Result<(), ChunkError> {
        match msg.type_id {
            MSG_SET_CHUNK_SIZE => {
                let v = self.control_u32(msg, "Set Chunk Size")?;
                // The top bit must be zero (RTMP spec 5.4.1).
                let size = v & MAX_CHUNK_SIZE;
                if size == 0 || v > MAX_CHUNK_SIZE {
                    return Err(ChunkError::BadChunkSize {
                        size: v,
                        at: self.message_context(msg),
                    });
                }
                self.chunk_size = size;
            }
            MSG_ABORT => {
                let csid = self.control_u32(msg, "Abort")?;
                if let Some(cs) = self.get_mut(csid) {
                    if cs.in_progress {
                        cs.in_progress = false;
                        let dropped = cs.partial.len();
                        cs.partial = BytesMut::new();
                        self.buffered -= dropped;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The 32-bit value a control message carries.
    fn control_u32(&self, msg: &Message, kind: &'static str) -> Result<u32, ChunkError> {
        if msg.payload.len() < 4 {
            return Err(ChunkError::ShortControl {
                kind,
                len: msg.payload.len(),
                at: self.message_context(msg),
            });
        }
        Ok(be32(&msg.payload))
    }

    /// Where the last message returned on chunk stream `csid` started (its
    /// first chunk) in the connection's input. Valid until the decoder
    /// reads the next chunk on `csid`: ask right after `decode` returns
    /// the message.
    pub fn message_offset(&self, csid: u32) -> u64 {
        self.get(csid).map_or(0, |cs| cs.msg_offset)
    }

    /// The context of an error in the content of `msg`, the last message
    /// `decode` returned on its chunk stream: its first chunk's offset and
    /// its payload's first bytes. Allocates: call it only to build an error.
    #[cold]
    #[inline(never)]
    pub fn message_context(&self, msg: &Message) -> Box<ChunkContext> {
        Box::new(ChunkContext {
            csid: msg.csid,
            type_id: Some(msg.type_id),
            stream_id: Some(msg.stream_id),
            offset: self.message_offset(msg.csid),
            excerpt: Excerpt::new(&msg.payload),
        })
    }

    fn get(&self, csid: u32) -> Option<&ChunkStream> {
        if (csid as usize) < FLAT_CSIDS {
            self.flat.get(csid as usize)?.as_deref()
        } else {
            self.map.get(&csid)
        }
    }

    fn get_mut(&mut self, csid: u32) -> Option<&mut ChunkStream> {
        if (csid as usize) < FLAT_CSIDS {
            self.flat.get_mut(csid as usize)?.as_deref_mut()
        } else {
            self.map.get_mut(&csid)
        }
    }

    /// Opens chunk stream `csid`, not open yet; the caller has checked
    /// `max_chunk_streams`.
    fn create(&mut self, csid: u32) -> &mut ChunkStream {
        self.streams_in_use += 1;
        if (csid as usize) < FLAT_CSIDS {
            if self.flat.len() <= csid as usize {
                self.flat.resize_with(csid as usize + 1, || None);
            }
            self.flat[csid as usize].insert(Box::default())
        } else {
            self.map.entry(csid).or_default()
        }
    }

    /// Parse one chunk. Outer `None`: incomplete input. Inner `None`: the
    /// chunk was consumed but its message is not complete yet. A refused
    /// chunk stays at the front of `buf`. `start` is `buf.len()` when
    /// [`ChunkDecoder::decode`] was called: the chunk starts at connection
    /// offset `self.offset + (start - buf.len())`.
    #[allow(clippy::type_complexity)]
    fn decode_chunk(
        &mut self,
        buf: &mut BytesMut,
        start: usize,
    ) -> Result<Option<Option<Message>>, Refused> {
        let Some(h) = parse_header(buf) else {
            return Ok(None);
        };
        let chunk_size = self.chunk_size as usize;
        let limits = self.limits;
        let (base, buffered, streams_in_use) = (self.offset, self.buffered, self.streams_in_use);
        // Work out the message this chunk belongs to without mutating state.
        let prev = self.get_mut(h.csid);
        let (in_progress, prev_ext) = match &prev {
            Some(cs) => (cs.in_progress, cs.extended),
            None => (false, None),
        };
        if h.fmt > 0 && prev.is_none() {
            return Err(Refused::NoPreviousHeader);
        }
        let Some((pos, extended)) = extended_timestamp(buf, &h, prev_ext) else {
            return Ok(None);
        };
        let continuation = h.fmt == 3 && in_progress;
        let (length, partial_len) = match (&prev, continuation) {
            (Some(cs), true) => (cs.length, cs.partial.len()),
            (Some(cs), false) => (h.length.unwrap_or(cs.length), 0),
            (None, _) => (h.length.unwrap_or(0), 0),
        };
        if length > limits.max_message_size {
            return Err(Refused::MessageTooLarge(length));
        }
        let take = (length as usize - partial_len).min(chunk_size);
        if buf.len() < pos + take {
            return Ok(None);
        }
        // The chunk is complete. Partial messages across all csids stay
        // under twice the message limit: the one abandoned or continued
        // here is replaced by what it holds after this chunk.
        let held = prev.as_ref().map_or(0, |cs| cs.partial.len());
        let completes = partial_len + take == length as usize;
        let after = if completes { 0 } else { partial_len + take };
        let buffered = buffered - held + after;
        if !completes && buffered > 2 * limits.max_message_size as usize {
            return Err(Refused::Overbuffered(buffered));
        }
        if prev.is_none() && streams_in_use >= limits.max_chunk_streams {
            return Err(Refused::TooManyChunkStreams);
        }
        // Commit.
        let cs = match prev {
            Some(cs) => cs,
            None => self.create(h.csid),
        };
        if !continuation {
            cs.start_message(&h, extended, base + (start - buf.len()) as u64);
        }
        let payload = cs.append(buf, pos, take, length as usize, partial_len);
        debug_assert_eq!(cs.partial.len(), after);
        let (type_id, stream_id, timestamp) = (cs.type_id, cs.stream_id, cs.timestamp);
        self.buffered = buffered;
        Ok(Some(payload.map(|payload| Message {
            csid: h.csid,
            type_id,
            stream_id,
            timestamp,
            payload,
        })))
    }

    /// The error for a chunk `decode_chunk` refused, with its context: the
    /// chunk is still at the front of `buf`. Kept out of the hot path.
    #[cold]
    #[inline(never)]
    fn refused(&self, why: Refused, buf: &[u8], start: usize) -> ChunkError {
        let offset = self.offset + (start - buf.len()) as u64;
        let limits = self.limits;
        let (csid, type_id, stream_id) = match parse_header(buf) {
            Some(h) => {
                let prev = self.get(h.csid);
                (
                    h.csid,
                    h.type_id.or(prev.map(|cs| cs.type_id)),
                    h.stream_id.or(prev.map(|cs| cs.stream_id)),
                )
            }
            None => (0, None, None),
        };
        let at = Box::new(ChunkContext {
            csid,
            type_id,
            stream_id,
            offset,
            excerpt: Excerpt::new(buf),
        });
        match why {
            Refused::NoPreviousHeader => ChunkError::NoPreviousHeader {
                fmt: buf.first().map_or(0, |b| b >> 6),
                at,
            },
            Refused::MessageTooLarge(length) => ChunkError::MessageTooLarge {
                length,
                limit: limits.max_message_size,
                at,
            },
            Refused::Overbuffered(buffered) => ChunkError::Overbuffered {
                buffered,
                limit: limits.max_message_size,
                at,
            },
            Refused::TooManyChunkStreams => ChunkError::TooManyChunkStreams {
                limit: limits.max_chunk_streams,
                at,
            },
        }
    }
}

/// Why `decode_chunk` refused a chunk. Small and plain on purpose: an error
/// type holding a box in the hot loop's `Result` measurably slowed it down;
/// `refused` adds the context out of line.
#[derive(Debug, Clone, Copy)]
enum Refused {
    NoPreviousHeader,
    MessageTooLarge(u32),
    Overbuffered(usize),
    TooManyChunkStreams,
}

impl ChunkStream {
    /// A chunk that starts a message (any header but a type 3 continuing
    /// one), at connection offset `offset`: apply its header fields and
    /// timestamp (RTMP spec 5.3.1.2).
    #[inline]
    fn start_message(&mut self, h: &Header, extended: Option<u32>, offset: u64) {
        let raw = extended.unwrap_or(h.field);
        match h.fmt {
            0 => {
                self.timestamp = raw;
                self.delta = raw;
            }
            1 | 2 => {
                self.delta = raw;
                self.timestamp = self.timestamp.wrapping_add(raw);
            }
            _ => self.timestamp = self.timestamp.wrapping_add(self.delta),
        }
        if h.fmt < 3 {
            self.extended = extended;
        }
        if let Some(l) = h.length {
            self.length = l;
        }
        if let Some(t) = h.type_id {
            self.type_id = t;
        }
        if let Some(s) = h.stream_id {
            self.stream_id = s;
        }
        // A new header while a message was half-assembled abandons it.
        self.partial.clear();
        self.in_progress = true;
        self.msg_offset = offset;
    }

    /// Consumes the chunk from `buf`: its `pos`-byte header, then `take`
    /// payload bytes; returns the message payload once all `length` bytes
    /// are in. `partial_len` bytes were assembled before this chunk. One
    /// move of `buf`'s start per chunk: `BytesMut::advance` is not inlined.
    #[inline]
    fn append(
        &mut self,
        buf: &mut BytesMut,
        pos: usize,
        take: usize,
        length: usize,
        partial_len: usize,
    ) -> Option<Bytes> {
        let payload = if partial_len == 0 && take == length {
            // Single-chunk message: hand out the input bytes without
            // copying; dropping the header from the frozen slice is a
            // pointer bump.
            let mut chunk = buf.split_to(pos + take).freeze();
            chunk.advance(pos);
            Some(chunk)
        } else {
            if self.partial.capacity() == 0 && length <= RESERVE_WHOLE {
                self.partial.reserve(length);
            }
            self.partial.extend_from_slice(&buf[pos..pos + take]);
            buf.advance(pos + take);
            if self.partial.len() < length {
                None
            } else {
                // Hand the exactly-sized buffer over whole: freezing it allocates nothing.
                Some(std::mem::take(&mut self.partial).freeze())
            }
        };
        if payload.is_some() {
            self.in_progress = false;
        }
        payload
    }
}

/// Reads the extended timestamp that follows the message header, if any:
/// returns where the payload starts and the raw 32-bit value, or `None`
/// when the input ends first.
#[inline]
fn extended_timestamp(
    buf: &[u8],
    h: &Header,
    prev_ext: Option<u32>,
) -> Option<(usize, Option<u32>)> {
    let mut pos = h.header_len;
    let mut extended = None;
    if h.fmt < 3 {
        if h.field == EXTENDED {
            extended = Some(be32(buf.get(pos..pos + 4)?));
            pos += 4;
        }
    } else if let Some(ext) = prev_ext {
        // Type 3 repeats the extended timestamp (5.3.1.3), but some
        // encoders omit it: consume it only when it is really there.
        if be32(buf.get(pos..pos + 4)?) == ext {
            pos += 4;
        }
        extended = Some(ext);
    }
    Some((pos, extended))
}

/// Parse the basic and message header (without the extended timestamp).
/// Always inlined: with `refused` as a second caller it was otherwise left
/// out of line in the hot loop.
#[inline(always)]
fn parse_header(buf: &[u8]) -> Option<Header> {
    let b0 = *buf.first()?;
    let fmt = b0 >> 6;
    let (csid, basic_len) = match b0 & 0x3F {
        0 => (64 + *buf.get(1)? as u32, 2),
        1 => (64 + *buf.get(1)? as u32 + 256 * *buf.get(2)? as u32, 3),
        n => (n as u32, 1),
    };
    let msg_len = [11usize, 7, 3, 0][fmt as usize];
    let end = basic_len + msg_len;
    if buf.len() < end {
        return None;
    }
    let m = &buf[basic_len..end];
    let mut h = Header {
        fmt,
        csid,
        header_len: end,
        field: 0,
        length: None,
        type_id: None,
        stream_id: None,
    };
    if fmt < 3 {
        h.field = be24(&m[0..3]);
    }
    if fmt < 2 {
        h.length = Some(be24(&m[3..6]));
        h.type_id = Some(m[6]);
    }
    if fmt == 0 {
        // Message stream id is little-endian (RTMP spec 5.3.1.2.1).
        h.stream_id = Some(u32::from_le_bytes([m[7], m[8], m[9], m[10]]));
    }
    Some(h)
}

fn be24(b: &[u8]) -> u32 {
    (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[derive(Debug, Clone, Copy)]
struct OutState {
    timestamp: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Splits outbound messages into chunks, compressing headers (types 1–3)
/// where the previous message on the same csid allows.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    last: HashMap<u32, OutState>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        ChunkEncoder {
            chunk_size: 128,
            last: HashMap::new(),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Takes effect for messages written after this call; the caller must
    /// have written the Set Chunk Size message itself first.
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
    }

    /// Append `payload` as one message on `csid` to `out`.
    pub fn write(
        &mut self,
        out: &mut BytesMut,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
    ) {
        let csid = csid.clamp(2, 65599);
        let length = payload.len() as u32;
        let prev = self.last.get(&csid).copied();
        let (fmt, field) = match prev {
            Some(p) if p.stream_id == stream_id && timestamp >= p.timestamp => {
                let delta = timestamp - p.timestamp;
                if p.length == length && p.type_id == type_id {
                    (2u8, delta)
                } else {
                    (1u8, delta)
                }
            }
            _ => (0u8, timestamp),
        };
        self.last.insert(
            csid,
            OutState {
                timestamp,
                length,
                type_id,
                stream_id,
            },
        );
        let ext = field >= EXTENDED;
        out.reserve(payload.len() + 18 + payload.len() / self.chunk_size.max(1) as usize * 8);
        put_basic_header(out, fmt, csid);
        out.put_uint(if ext { EXTENDED } else { field } as u64, 3);
        if fmt <= 1 {
            out.put_uint(length as u64, 3);
            out.put_u8(type_id);
        }
        if fmt == 0 {
            out.put_u32_le(stream_id);
        }
        if ext {
            out.put_u32(field);
        }
        let mut chunks = payload.chunks(self.chunk_size as usize);
        if let Some(first) = chunks.next() {
            out.extend_from_slice(first);
        }
        for chunk in chunks {
            put_basic_header(out, 3, csid);
            if ext {
                out.put_u32(field);
            }
            out.extend_from_slice(chunk);
        }
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let f = fmt << 6;
    if csid < 64 {
        out.put_u8(f | csid as u8);
    } else if csid < 64 + 256 {
        out.put_u8(f);
        out.put_u8((csid - 64) as u8);
    } else {
        out.put_u8(f | 1);
        out.put_u16_le((csid - 64) as u16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ChunkLimits {
        ChunkLimits {
            max_message_size: 1 << 20,
            max_chunk_streams: 16,
        }
    }

    fn drain(dec: &mut ChunkDecoder, buf: &mut BytesMut) -> Vec<Message> {
        let mut v = Vec::new();
        while let Some(m) = dec.decode(buf).unwrap() {
            v.push(m);
        }
        v
    }

    #[test]
    fn encoder_output_round_trips_with_every_header_type() {
        let mut enc = ChunkEncoder::new();
        let mut wire = BytesMut::new();
        let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        enc.write(&mut wire, 6, 100, 9, 1, &big); // type 0, multi-chunk
        enc.write(&mut wire, 6, 133, 9, 1, &big[..10]); // type 1
        enc.write(&mut wire, 6, 166, 9, 1, &big[..10]); // type 2
        enc.write(&mut wire, 4, 0x0100_0000, 8, 1, &big[..300]); // extended
        enc.write(&mut wire, 4, 0x0100_0020, 8, 1, &big[..300]); // type 2, small delta
        let mut dec = ChunkDecoder::new(limits());
        let msgs = drain(&mut dec, &mut wire);
        assert!(wire.is_empty());
        let ts: Vec<u32> = msgs.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![100, 133, 166, 0x0100_0000, 0x0100_0020]);
        assert_eq!(&msgs[0].payload[..], &big[..]);
        assert_eq!(msgs[3].payload.len(), 300);
        assert_eq!(msgs[3].type_id, 8);
    }

    #[test]
    fn byte_at_a_time_input_gives_the_same_messages() {
        let mut enc = ChunkEncoder::new();
        let mut wire = BytesMut::new();
        let big: Vec<u8> = (0..700u32).map(|i| (i * 3) as u8).collect();
        enc.write(&mut wire, 4, 0xFFFF_FF00, 8, 1, &big);
        enc.write(&mut wire, 70, 5, 20, 0, &big[..5]);
        enc.write(&mut wire, 400, 7, 20, 0, &big[..129]);
        let mut dec = ChunkDecoder::new(limits());
        let mut buf = BytesMut::new();
        let mut msgs = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            msgs.extend(drain(&mut dec, &mut buf));
        }
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].timestamp, 0xFFFF_FF00);
        assert_eq!(&msgs[0].payload[..], &big[..]);
        assert_eq!((msgs[1].csid, msgs[2].csid), (70, 400));
    }

    /// Two messages split into chunks that alternate on csid 4 and 6.
    #[test]
    fn interleaved_chunk_streams_reassemble_independently() {
        let a: Vec<u8> = vec![0xAA; 300];
        let v: Vec<u8> = vec![0xBB; 300];
        let mut wire = BytesMut::new();
        // type 0 headers, 128-byte chunks
        wire.put_u8(4);
        wire.put_uint(10, 3);
        wire.put_uint(300, 3);
        wire.put_u8(8);
        wire.put_u32_le(1);
        wire.extend_from_slice(&a[..128]);
        wire.put_u8(6);
        wire.put_uint(10, 3);
        wire.put_uint(300, 3);
        wire.put_u8(9);
        wire.put_u32_le(1);
        wire.extend_from_slice(&v[..128]);
        // Continuations alternate: 128 more bytes of each, then the last 44.
        for (start, end) in [(128usize, 256usize), (256, 300)] {
            wire.put_u8(0xC4);
            wire.extend_from_slice(&a[start..end]);
            wire.put_u8(0xC6);
            wire.extend_from_slice(&v[start..end]);
        }
        let mut dec = ChunkDecoder::new(limits());
        let msgs = drain(&mut dec, &mut wire);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].type_id, 8);
        assert_eq!(&msgs[0].payload[..], &a[..]);
        assert_eq!(&msgs[1].payload[..], &v[..]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn type3_without_repeated_extended_timestamp_is_accepted() {
        // Some encoders omit the 4-byte extended timestamp on continuation chunks.
        let payload = [0x11u8; 200];
        let mut wire = BytesMut::new();
        wire.put_u8(6);
        wire.put_uint(EXTENDED as u64, 3);
        wire.put_uint(200, 3);
        wire.put_u8(9);
        wire.put_u32_le(1);
        wire.put_u32(0x0123_4567);
        wire.extend_from_slice(&payload[..128]);
        wire.put_u8(0xC6);
        wire.extend_from_slice(&payload[128..]);
        let mut dec = ChunkDecoder::new(limits());
        let msgs = drain(&mut dec, &mut wire);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].timestamp, 0x0123_4567);
        assert_eq!(&msgs[0].payload[..], &payload[..]);
    }

    #[test]
    fn type3_new_message_after_type0_adds_the_type0_timestamp() {
        // RTMP spec 5.3.1.2.4: the delta of a type-3 after a type-0 is its timestamp.
        let mut wire = BytesMut::new();
        wire.put_u8(4);
        wire.put_uint(40, 3);
        wire.put_uint(2, 3);
        wire.put_u8(8);
        wire.put_u32_le(1);
        wire.extend_from_slice(&[1, 2]);
        wire.put_u8(0xC4);
        wire.extend_from_slice(&[3, 4]);
        let mut dec = ChunkDecoder::new(limits());
        let msgs = drain(&mut dec, &mut wire);
        assert_eq!(msgs[1].timestamp, 80);
        assert_eq!(&msgs[1].payload[..], &[3, 4]);
    }

    #[test]
    fn delta_timestamps_wrap_instead_of_overflowing() {
        let mut wire = BytesMut::new();
        wire.put_u8(4);
        wire.put_uint(EXTENDED as u64, 3);
        wire.put_uint(1, 3);
        wire.put_u8(8);
        wire.put_u32_le(1);
        wire.put_u32(0xFFFF_FFF0);
        wire.put_u8(0);
        // type 1 with a delta of 0x20 crosses 2^32
        wire.put_u8(0x44);
        wire.put_uint(0x20, 3);
        wire.put_uint(1, 3);
        wire.put_u8(8);
        wire.put_u8(0);
        let mut dec = ChunkDecoder::new(limits());
        let msgs = drain(&mut dec, &mut wire);
        assert_eq!(msgs[1].timestamp, 0x10);
    }

    #[test]
    fn oversized_message_header_is_refused_before_any_payload() {
        let mut wire = BytesMut::new();
        wire.put_u8(3);
        wire.put_uint(0, 3);
        wire.put_uint(0xFF_FFFF, 3);
        wire.put_u8(20);
        wire.put_u32_le(0);
        let mut dec = ChunkDecoder::new(limits());
        assert!(matches!(
            dec.decode(&mut wire),
            Err(ChunkError::MessageTooLarge {
                length: 0xFF_FFFF,
                ..
            })
        ));
    }

    #[test]
    fn too_many_chunk_streams_is_refused() {
        let mut wire = BytesMut::new();
        for csid in 64u32..64 + 40 {
            wire.put_u8(1);
            wire.put_u16_le((csid - 64) as u16);
            wire.put_uint(0, 3);
            wire.put_uint(1, 3);
            wire.put_u8(9);
            wire.put_u32_le(1);
            wire.put_u8(0);
        }
        let mut dec = ChunkDecoder::new(limits());
        let err = loop {
            match dec.decode(&mut wire) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("limit not enforced"),
                Err(e) => break e,
            }
        };
        assert!(matches!(
            err,
            ChunkError::TooManyChunkStreams { limit: 16, .. }
        ));
    }

    #[test]
    fn set_chunk_size_applies_to_the_next_chunk_and_zero_is_refused() {
        let mut enc = ChunkEncoder::new();
        let mut wire = BytesMut::new();
        enc.write(
            &mut wire,
            2,
            0,
            MSG_SET_CHUNK_SIZE,
            0,
            &4096u32.to_be_bytes(),
        );
        enc.set_chunk_size(4096);
        enc.write(&mut wire, 6, 0, 9, 1, &[7u8; 3000]);
        enc.write(&mut wire, 2, 0, MSG_SET_CHUNK_SIZE, 0, &0u32.to_be_bytes());
        let mut dec = ChunkDecoder::new(limits());
        assert_eq!(dec.decode(&mut wire).unwrap().unwrap().type_id, 1);
        assert_eq!(dec.chunk_size(), 4096);
        assert_eq!(dec.decode(&mut wire).unwrap().unwrap().payload.len(), 3000);
        let e = dec.decode(&mut wire).unwrap_err();
        assert!(matches!(e, ChunkError::BadChunkSize { size: 0, .. }), "{e}");
        assert_eq!(e.context().type_id, Some(MSG_SET_CHUNK_SIZE));
        assert_eq!(e.context().excerpt.bytes(), &[0, 0, 0, 0]);
    }

    /// Errors say where the chunk is: csid, message type and stream, its
    /// offset in the connection (the handshake's 3073 bytes included) and
    /// its first bytes, header included.
    #[test]
    fn errors_name_the_chunk_stream_offset_and_bytes() {
        let mut enc = ChunkEncoder::new();
        let mut wire = BytesMut::new();
        enc.write(&mut wire, 3, 0, 20, 0, &[0x02, 0x00, 0x07]);
        let first = wire.len() as u64;
        // A type-1 header on csid 3 announcing a 2 MiB message.
        wire.extend_from_slice(&[0x43, 0, 0, 0, 0x20, 0, 0, 20, 0xAA]);
        let mut dec = ChunkDecoder::new(limits());
        dec.start_at(3073);
        let m = dec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(dec.message_offset(m.csid), 3073);
        let e = dec.decode(&mut wire).unwrap_err();
        let at = e.context();
        assert_eq!((at.csid, at.type_id, at.stream_id), (3, Some(20), Some(0)));
        assert_eq!(at.offset, 3073 + first);
        assert_eq!(
            e.to_string(),
            format!(
                "message of 2097152 bytes exceeds the 1048576-byte limit (rtmp.max_message_size) \
                 at csid 3, message type 20 (AMF0 command), message stream 0, offset {}: \
                 43 00 00 00 20 00 00 14 aa",
                3073 + first
            )
        );

        // A type-2 header on a csid never seen: no message type to name.
        let mut dec = ChunkDecoder::new(limits());
        let mut wire = BytesMut::from(&[0x85, 0, 0, 1, 9][..]);
        let e = dec.decode(&mut wire).unwrap_err();
        assert!(matches!(e, ChunkError::NoPreviousHeader { fmt: 2, .. }));
        assert_eq!(
            e.to_string(),
            "chunk header type 2 refers to a previous header on its chunk stream that was \
             never sent, at csid 5, offset 0: 85 00 00 01 09"
        );
    }

    /// A message assembled from several chunks is placed at its first chunk.
    #[test]
    fn multi_chunk_messages_carry_their_first_chunk_offset() {
        let mut enc = ChunkEncoder::new();
        let mut wire = BytesMut::new();
        enc.write(&mut wire, 4, 0, 8, 1, &[1u8; 10]);
        let second = wire.len() as u64;
        enc.write(&mut wire, 6, 0, 9, 1, &[2u8; 300]);
        let mut dec = ChunkDecoder::new(limits());
        dec.start_at(100);
        let m = dec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(dec.message_offset(m.csid), 100);
        let m = dec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(
            (m.payload.len(), dec.message_offset(m.csid)),
            (300, 100 + second)
        );
    }

    #[test]
    fn abort_discards_the_partial_message() {
        let mut wire = BytesMut::new();
        wire.put_u8(6);
        wire.put_uint(0, 3);
        wire.put_uint(500, 3);
        wire.put_u8(9);
        wire.put_u32_le(1);
        wire.extend_from_slice(&[0u8; 128]);
        let mut enc = ChunkEncoder::new();
        enc.write(&mut wire, 2, 0, MSG_ABORT, 0, &6u32.to_be_bytes());
        let mut dec = ChunkDecoder::new(limits());
        let m = dec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(m.type_id, MSG_ABORT);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn random_input_never_panics_and_memory_stays_bounded() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3000 {
            let mut dec = ChunkDecoder::new(limits());
            let mut buf = BytesMut::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.put_u64(x);
            }
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
            assert!(dec.buffered() <= 2 << 20);
        }
    }
}
