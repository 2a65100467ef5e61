//! One RTMP server connection as a state machine (RTMP spec 5–7).
//!
//! Contract: after every call to [`Session::handle_input`],
//! [`Session::handle_timeout`], [`Session::accept_connect`] or
//! [`Session::accept_publish`], drain [`Session::poll_event`] and send what
//! [`Session::take_transmit`] returns. When a `Connect` or `Publish` event is
//! emitted the session stops reading input until the application answers
//! with accept/reject, so no media is lost or misrouted while it decides;
//! the driver should stop reading the socket meanwhile (more than
//! `PAUSED_INPUT_LIMIT`, 128 KiB, are refused). Every decoded message counts
//! toward [`Limits::max_messages_per_second`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::chunk::{ChunkContext, ChunkDecoder, ChunkEncoder, ChunkError, ChunkLimits, Message};
use super::handshake::{Handshake, HandshakeError, HandshakeKind};
use crate::rtmp::amf0::{self, Amf0Error, Amf0Value};

// Message type ids (RTMP spec 5.4, 6.2, 7.1).
const SET_CHUNK_SIZE: u8 = 1;
const ACK: u8 = 3;
const USER_CONTROL: u8 = 4;
const WINDOW_ACK_SIZE: u8 = 5;
const SET_PEER_BANDWIDTH: u8 = 6;
const AUDIO: u8 = 8;
const VIDEO: u8 = 9;
const DATA_AMF3: u8 = 15;
const COMMAND_AMF3: u8 = 17;
const DATA_AMF0: u8 = 18;
const COMMAND_AMF0: u8 = 20;
const AGGREGATE: u8 = 22;

// Chunk stream ids we send on.
const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STATUS: u32 = 5;

// User control event types (RTMP spec 7.1.7).
const UC_STREAM_BEGIN: u16 = 0;
const UC_PING_REQUEST: u16 = 6;
const UC_PING_RESPONSE: u16 = 7;

/// Streams one connection may create; encoders use one.
const MAX_STREAMS: u32 = 8;
/// Command and data messages are small; decoded AMF takes several times
/// the wire size in memory, so cap them well below `max_message_size`.
const MAX_COMMAND_SIZE: usize = 256 * 1024;
/// Input held while the application decides a `connect` or `publish`:
/// the rest of the read that carried the command (drivers read at most
/// 64 KiB at a time) fits. A driver stops reading meanwhile (TCP pushes
/// back on the peer); input beyond this is refused, so no driver can make
/// a paused session grow.
const PAUSED_INPUT_LIMIT: usize = 128 * 1024;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u32,
    pub max_chunk_streams: usize,
    pub max_amf_depth: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Our outbound chunk size, announced right after connect.
    pub chunk_size: u32,
    /// Window acknowledgement size we announce (and use until the peer sets one).
    pub window_ack_size: u32,
    /// Messages (each sub-message of an aggregate too) the peer may send
    /// in one second; more close the connection (`message_rate`). Real
    /// encoders stay far below: see `rtmp.max_messages_per_second`.
    pub max_messages_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 8 * 1024 * 1024,
            max_chunk_streams: 64,
            max_amf_depth: amf0::DEFAULT_MAX_DEPTH,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            max_messages_per_second: 5000,
        }
    }
}

/// What the application must see or decide.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Handshake finished; `kind` says which variant the client used.
    HandshakeDone { kind: HandshakeKind },
    /// `connect` received. Answer with `accept_connect` or `reject_connect`.
    Connect {
        app: String,
        tc_url: Option<String>,
        flash_ver: Option<String>,
    },
    /// `publish` received. Answer with `accept_publish` or `reject_publish`.
    Publish {
        stream_id: u32,
        /// The publishing name as sent: the stream key, possibly with `?query`.
        name: String,
        publish_type: String,
    },
    /// `@setDataFrame`/`onMetaData` properties.
    Metadata(Amf0Value),
    /// An FLV audio or video tag body from the publishing stream.
    Media {
        video: bool,
        timestamp: u32,
        payload: Bytes,
    },
    /// The publisher ended the publish (FCUnpublish, deleteStream, closeStream).
    Unpublish { stream_id: u32 },
}

/// Why a connection is closed. Errors about bytes from the peer say where
/// they were ([`ChunkContext`]: csid, message type and stream, offset into
/// the connection's input, the bytes there).
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("handshake not finished within {0:?} (rtmp.handshake_timeout)")]
    HandshakeTimeout(Duration),
    #[error("no data for {0:?} (rtmp.idle_timeout)")]
    IdleTimeout(Duration),
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("AMF0 in {context}: {source}, at {at}")]
    Amf {
        context: &'static str,
        source: Amf0Error,
        at: Box<ChunkContext>,
    },
    #[error("protocol violation: {what}, at {at}")]
    Violation { what: String, at: Box<ChunkContext> },
    #[error(
        "command/data message of {len} bytes exceeds the {MAX_COMMAND_SIZE}-byte limit, at {at}"
    )]
    CommandTooLarge { len: usize, at: Box<ChunkContext> },
    #[error("more than {limit} messages in one second (rtmp.max_messages_per_second)")]
    MessageRate { limit: u32 },
    #[error(
        "{len} bytes of input while a {what} was being decided; at most {PAUSED_INPUT_LIMIT} are held until the answer"
    )]
    InputWhilePaused { what: &'static str, len: usize },
}

impl ProtoError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtoError::Handshake(_) => "bad_handshake",
            ProtoError::HandshakeTimeout(_) => "handshake_timeout",
            ProtoError::IdleTimeout(_) => "idle_timeout",
            ProtoError::Chunk(
                ChunkError::MessageTooLarge { .. } | ChunkError::Overbuffered { .. },
            ) => "message_too_large",
            ProtoError::Chunk(ChunkError::TooManyChunkStreams { .. }) => "too_many_chunk_streams",
            ProtoError::Chunk(ChunkError::BadChunkSize { .. }) => "bad_chunk_size",
            ProtoError::Chunk(_) => "protocol_violation",
            ProtoError::Amf {
                source: Amf0Error::DepthExceeded { .. },
                ..
            } => "amf_depth",
            ProtoError::Amf { .. } => "amf_invalid",
            ProtoError::Violation { .. } => "protocol_violation",
            ProtoError::CommandTooLarge { .. } => "message_too_large",
            ProtoError::MessageRate { .. } => "message_rate",
            ProtoError::InputWhilePaused { .. } => "input_overflow",
        }
    }

    /// Where in the connection's input the offending bytes were, for the
    /// errors about chunks and messages.
    pub fn context(&self) -> Option<&ChunkContext> {
        match self {
            ProtoError::Chunk(e) => Some(e.context()),
            ProtoError::Amf { at, .. }
            | ProtoError::Violation { at, .. }
            | ProtoError::CommandTooLarge { at, .. } => Some(at),
            ProtoError::Handshake(_)
            | ProtoError::HandshakeTimeout(_)
            | ProtoError::IdleTimeout(_)
            | ProtoError::MessageRate { .. }
            | ProtoError::InputWhilePaused { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pending {
    None,
    Connect { txn: f64 },
    Publish { stream_id: u32 },
}

/// One server-side RTMP connection.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    handshake: Option<Handshake>,
    rng: u64,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    inbuf: BytesMut,
    out: BytesMut,
    events: VecDeque<Event>,
    started: Instant,
    last_input: Instant,
    /// The latest time given (input or timeout).
    now: Instant,
    /// Start of the current one-second window of the message rate limit,
    /// and the messages counted in it.
    rate_window: Instant,
    rate_count: u32,
    bytes_in: u64,
    last_ack: u64,
    ack_window: u32,
    pending: Pending,
    connected: bool,
    object_encoding: f64,
    next_stream_id: u32,
    publishing: Option<u32>,
    publish_name: String,
    closing: bool,
}

impl Session {
    /// `seed` feeds the handshake's random padding.
    pub fn new(limits: Limits, now: Instant, seed: u64) -> Self {
        let decoder = ChunkDecoder::new(ChunkLimits {
            max_message_size: limits.max_message_size,
            max_chunk_streams: limits.max_chunk_streams,
        });
        let ack_window = limits.window_ack_size;
        Session {
            limits,
            handshake: Some(Handshake::new(0)),
            rng: seed | 1,
            decoder,
            encoder: ChunkEncoder::new(),
            inbuf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::new(),
            events: VecDeque::new(),
            started: now,
            last_input: now,
            now,
            rate_window: now,
            rate_count: 0,
            bytes_in: 0,
            last_ack: 0,
            ack_window,
            pending: Pending::None,
            connected: false,
            object_encoding: 0.0,
            next_stream_id: 1,
            publishing: None,
            publish_name: String::new(),
            closing: false,
        }
    }

    /// Feed bytes received from the peer.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), ProtoError> {
        self.last_input = now;
        self.now = now;
        if self.pending != Pending::None && self.inbuf.len() + data.len() > PAUSED_INPUT_LIMIT {
            let what = match self.pending {
                Pending::Connect { .. } => "connect",
                _ => "publish",
            };
            return Err(ProtoError::InputWhilePaused {
                what,
                len: self.inbuf.len() + data.len(),
            });
        }
        self.bytes_in += data.len() as u64;
        if let Some(hs) = self.handshake.as_mut() {
            let mut rng = self.rng;
            let progress = hs.feed(data, &mut |buf| fill_random(&mut rng, buf))?;
            self.rng = rng;
            if let Some(send) = progress.send {
                self.out.extend_from_slice(&send);
            }
            if !progress.done {
                return Ok(());
            }
            let kind = hs.kind();
            self.handshake = None;
            // The chunk stream starts where the handshake's bytes end.
            self.decoder
                .start_at(self.bytes_in - progress.leftover.len() as u64);
            self.events.push_back(Event::HandshakeDone { kind });
            self.inbuf.extend_from_slice(&progress.leftover);
        } else {
            self.inbuf.extend_from_slice(data);
        }
        self.maybe_ack();
        self.process()
    }

    /// Call when [`Session::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ProtoError> {
        self.now = now;
        if self.handshake.is_some() {
            if now >= self.started + self.limits.handshake_timeout {
                return Err(ProtoError::HandshakeTimeout(self.limits.handshake_timeout));
            }
        } else if self.pending != Pending::None {
            // The driver is not reading while the application decides:
            // silence is ours, not the peer's. The idle timer restarts.
            self.last_input = now;
        } else if now >= self.last_input + self.limits.idle_timeout {
            return Err(ProtoError::IdleTimeout(self.limits.idle_timeout));
        }
        Ok(())
    }

    /// The next moment `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Instant {
        if self.handshake.is_some() {
            self.started + self.limits.handshake_timeout
        } else {
            self.last_input + self.limits.idle_timeout
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes to write to the peer, if any.
    pub fn take_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// True once the session has said its last word (a rejection); the
    /// driver flushes `take_transmit` and closes.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The name given to the accepted publish, if publishing.
    pub fn publishing(&self) -> Option<&str> {
        self.publishing.map(|_| self.publish_name.as_str())
    }

    /// Total bytes received, handshake included.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub fn accept_connect(&mut self) -> Result<(), ProtoError> {
        let Pending::Connect { txn } = self.pending else {
            return Ok(());
        };
        self.pending = Pending::None;
        self.connected = true;
        let window = self.limits.window_ack_size;
        self.write_control(WINDOW_ACK_SIZE, &window.to_be_bytes());
        let mut bw = [0u8; 5];
        bw[..4].copy_from_slice(&window.to_be_bytes());
        bw[4] = 2; // dynamic
        self.write_control(SET_PEER_BANDWIDTH, &bw);
        let size = self.limits.chunk_size;
        self.write_control(SET_CHUNK_SIZE, &size.to_be_bytes());
        self.encoder.set_chunk_size(size);
        let props = Amf0Value::object([
            ("fmsVer", Amf0Value::string("FMS/3,0,1,123")),
            ("capabilities", Amf0Value::Number(31.0)),
        ]);
        let info = Amf0Value::object([
            ("level", Amf0Value::string("status")),
            ("code", Amf0Value::string("NetConnection.Connect.Success")),
            ("description", Amf0Value::string("Connection succeeded.")),
            ("objectEncoding", Amf0Value::Number(self.object_encoding)),
        ]);
        self.write_command(
            CSID_COMMAND,
            0,
            &[
                Amf0Value::string("_result"),
                Amf0Value::Number(txn),
                props,
                info,
            ],
        );
        self.process()
    }

    /// Refuse the connection (for example while draining) and close.
    pub fn reject_connect(&mut self, description: &str) {
        let txn = match self.pending {
            Pending::Connect { txn } => txn,
            _ => 1.0,
        };
        self.pending = Pending::None;
        self.write_error(txn, "NetConnection.Connect.Rejected", description);
        self.closing = true;
    }

    pub fn accept_publish(&mut self) -> Result<(), ProtoError> {
        let Pending::Publish { stream_id } = self.pending else {
            return Ok(());
        };
        self.pending = Pending::None;
        self.publishing = Some(stream_id);
        let mut uc = BytesMut::with_capacity(6);
        uc.put_u16(UC_STREAM_BEGIN);
        uc.put_u32(stream_id);
        self.write_control(USER_CONTROL, &uc);
        let description = format!("{} is now published.", self.publish_name);
        self.send_on_status(stream_id, "status", "NetStream.Publish.Start", &description);
        self.process()
    }

    /// Refuse the pending publish with an `onStatus` error (`code` such as
    /// `NetStream.Publish.BadName`) and close.
    pub fn reject_publish(&mut self, code: &str, description: &str) {
        let stream_id = match self.pending {
            Pending::Publish { stream_id } => stream_id,
            _ => self.publishing.unwrap_or(1),
        };
        self.pending = Pending::None;
        self.publishing = None;
        self.send_status_error(stream_id, code, description);
        self.closing = true;
    }

    /// Tell a live publisher why it is being stopped (e.g. taken over).
    pub fn stop_publish(&mut self, code: &str, description: &str) {
        let stream_id = self.publishing.unwrap_or(1);
        self.publishing = None;
        self.send_status_error(stream_id, code, description);
        self.closing = true;
    }

    fn send_status_error(&mut self, stream_id: u32, code: &str, description: &str) {
        self.send_on_status(stream_id, "error", code, description);
    }

    /// `onStatus(0, null, {level, code, description})` on the media stream.
    fn send_on_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        let info = status(level, code, description);
        self.write_command(
            CSID_STATUS,
            stream_id,
            &[
                Amf0Value::string("onStatus"),
                Amf0Value::Number(0.0),
                Amf0Value::Null,
                info,
            ],
        );
    }

    /// Decode and act on buffered messages until input runs out or the
    /// application must decide something.
    fn process(&mut self) -> Result<(), ProtoError> {
        while self.pending == Pending::None && !self.closing {
            let Some(msg) = self.decoder.decode(&mut self.inbuf)? else {
                break;
            };
            self.count_message()?;
            self.on_message(msg)?;
        }
        Ok(())
    }

    /// `rtmp.max_messages_per_second`, over one-second windows. Every
    /// message counts, whatever its type or size: each costs a decode and
    /// an event, and tiny ones cost the most per byte. A publisher over it
    /// is told which limit stopped it.
    fn count_message(&mut self) -> Result<(), ProtoError> {
        if self.now.saturating_duration_since(self.rate_window) >= Duration::from_secs(1) {
            self.rate_window = self.now;
            self.rate_count = 0;
        }
        self.rate_count += 1;
        let limit = self.limits.max_messages_per_second;
        if self.rate_count <= limit {
            return Ok(());
        }
        if let Some(stream_id) = self.publishing.take() {
            let description = format!(
                "publish stopped: more than {limit} RTMP messages in one second \
                 (rtmp.max_messages_per_second is {limit})"
            );
            self.send_status_error(stream_id, "NetStream.Publish.Failed", &description);
        }
        self.closing = true;
        Err(ProtoError::MessageRate { limit })
    }

    fn maybe_ack(&mut self) {
        // Acknowledgement carries the running total of bytes received
        // (RTMP spec 5.4.3), wrapping at 32 bits.
        if self.ack_window > 0 && self.bytes_in - self.last_ack >= self.ack_window as u64 {
            self.last_ack = self.bytes_in;
            let seq = self.bytes_in as u32;
            self.write_control(ACK, &seq.to_be_bytes());
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), ProtoError> {
        match msg.type_id {
            AUDIO | VIDEO if self.publishing == Some(msg.stream_id) => {
                self.events.push_back(Event::Media {
                    video: msg.type_id == VIDEO,
                    timestamp: msg.timestamp,
                    payload: msg.payload,
                });
                Ok(())
            }
            // Media before an accepted publish, or on another stream, is dropped.
            AUDIO | VIDEO => Ok(()),
            _ => self.on_control_or_command(msg),
        }
    }

    /// Everything but media: rare next to it, and kept out of line so the
    /// media path does not pay for the message being borrowed here (that
    /// cost the session benchmark 10 %).
    #[inline(never)]
    fn on_control_or_command(&mut self, msg: Message) -> Result<(), ProtoError> {
        match msg.type_id {
            COMMAND_AMF0 | COMMAND_AMF3 | DATA_AMF0 | DATA_AMF3
                if msg.payload.len() > MAX_COMMAND_SIZE =>
            {
                return Err(ProtoError::CommandTooLarge {
                    len: msg.payload.len(),
                    at: self.decoder.message_context(&msg),
                });
            }
            COMMAND_AMF0 => self.on_command(&msg, &msg.payload)?,
            COMMAND_AMF3 => {
                // AMF3 commands start with a format byte, then AMF0 values
                // that may switch to AMF3 per value (RTMP spec 7.1.1).
                self.on_command(&msg, msg.payload.get(1..).unwrap_or(&[]))?
            }
            DATA_AMF0 => self.on_data(&msg, &msg.payload)?,
            DATA_AMF3 => self.on_data(&msg, msg.payload.get(1..).unwrap_or(&[]))?,
            USER_CONTROL => self.on_user_control(&msg.payload),
            WINDOW_ACK_SIZE if msg.payload.len() >= 4 => {
                let p = &msg.payload;
                self.ack_window = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            }
            AGGREGATE => self.on_aggregate(msg)?,
            // Set Chunk Size and Abort were applied by the decoder; peer
            // acks, bandwidth and shared objects need no answer.
            _ => {}
        }
        Ok(())
    }

    fn on_user_control(&mut self, payload: &[u8]) {
        if payload.len() >= 6 && u16::from_be_bytes([payload[0], payload[1]]) == UC_PING_REQUEST {
            let mut resp = BytesMut::with_capacity(6);
            resp.put_u16(UC_PING_RESPONSE);
            resp.extend_from_slice(&payload[2..6]);
            self.write_control(USER_CONTROL, &resp);
        }
    }

    /// Aggregate messages (type 22) hold FLV-style tags whose timestamps are
    /// re-based onto the aggregate's own timestamp.
    fn on_aggregate(&mut self, msg: Message) -> Result<(), ProtoError> {
        let mut body = msg.payload.clone();
        let mut first_ts: Option<u32> = None;
        while body.len() >= 11 {
            let tag_type = body[0];
            let size = (body[1] as usize) << 16 | (body[2] as usize) << 8 | body[3] as usize;
            let ts = u32::from_be_bytes([body[7], body[4], body[5], body[6]]);
            if body.len() < 11 + size {
                let at = msg.payload.len() - body.len();
                return Err(self.violation(
                    &msg,
                    format!(
                        "aggregate sub-message at payload byte {at} of {size} bytes overruns its {}-byte container",
                        body.len() - 11
                    ),
                ));
            }
            body.advance(11);
            let payload = body.split_to(size);
            // Skip the back-pointer when present.
            if body.len() >= 4 {
                body.advance(4);
            }
            let base = *first_ts.get_or_insert(ts);
            let timestamp = msg.timestamp.wrapping_add(ts.wrapping_sub(base));
            self.count_message()?;
            if matches!(tag_type, AUDIO | VIDEO) && self.publishing == Some(msg.stream_id) {
                self.events.push_back(Event::Media {
                    video: tag_type == VIDEO,
                    timestamp,
                    payload,
                });
            }
        }
        Ok(())
    }

    fn decode_amf(
        &self,
        msg: &Message,
        body: &[u8],
        context: &'static str,
    ) -> Result<Vec<Amf0Value>, ProtoError> {
        amf0::decode_all(body, self.limits.max_amf_depth).map_err(|source| ProtoError::Amf {
            context,
            source,
            at: self.decoder.message_context(msg),
        })
    }

    fn on_data(&mut self, msg: &Message, body: &[u8]) -> Result<(), ProtoError> {
        let values = self.decode_amf(msg, body, "data message")?;
        let mut it = values.into_iter();
        let mut name = it.next();
        if name.as_ref().and_then(Amf0Value::as_str) == Some("@setDataFrame") {
            name = it.next();
        }
        // A lone "@setDataFrame" or an unknown data message is ignored.
        if name.as_ref().and_then(Amf0Value::as_str) == Some("onMetaData") {
            if let Some(props) = it.next() {
                self.events.push_back(Event::Metadata(props));
            }
        }
        Ok(())
    }

    /// A command message (`body` is its AMF0 part).
    fn on_command(&mut self, msg: &Message, body: &[u8]) -> Result<(), ProtoError> {
        let stream_id = msg.stream_id;
        let values = self.decode_amf(msg, body, "command message")?;
        let mut it = values.into_iter();
        let name = match it.next() {
            Some(Amf0Value::String(s)) => s,
            Some(other) => {
                return Err(self.violation(msg, format!("command name is not a string: {other:?}")))
            }
            None => return Err(self.violation(msg, "empty command message".into())),
        };
        let txn = it.next().and_then(|v| v.as_f64()).unwrap_or(0.0);
        let cmd_obj = it.next().unwrap_or(Amf0Value::Null);
        let args: Vec<Amf0Value> = it.collect();
        match name.as_str() {
            "connect" => return self.on_connect(msg, txn, &cmd_obj),
            _ if !self.connected => {
                return Err(self.violation(msg, format!("command {name:?} before connect")))
            }
            "createStream" => self.on_create_stream(txn),
            "FCPublish" => self.on_fc_publish(txn, &args),
            "publish" => self.on_publish(stream_id, &args),
            "FCUnpublish" => {
                self.write_result(txn, Amf0Value::Undefined);
                self.end_publish();
            }
            "deleteStream" | "closeStream" => self.on_delete_stream(stream_id, &args),
            "play" | "play2" => self.send_status_error(
                stream_id,
                "NetStream.Play.Failed",
                "sluice does not serve RTMP playback; pull the stream over SRT",
            ),
            "releaseStream" | "_checkbw" | "getStreamLength" => {
                self.write_result(txn, Amf0Value::Undefined)
            }
            "_result" | "_error" | "onBWDone" | "@setDataFrame" => {}
            _ => {
                if txn > 0.0 {
                    self.write_error(
                        txn,
                        "NetConnection.Call.Failed",
                        &format!("unknown command {name:?}"),
                    );
                }
            }
        }
        Ok(())
    }

    fn on_create_stream(&mut self, txn: f64) {
        if self.next_stream_id > MAX_STREAMS {
            self.write_error(txn, "NetConnection.Call.Failed", "too many streams");
        } else {
            let id = self.next_stream_id;
            self.next_stream_id += 1;
            self.write_result(txn, Amf0Value::Number(id as f64));
        }
    }

    /// `FCPublish(key)`: encoders wait for `onFCPublish` before publishing.
    fn on_fc_publish(&mut self, txn: f64, args: &[Amf0Value]) {
        let key = args.first().and_then(Amf0Value::as_str).unwrap_or("");
        let info = status("status", "NetStream.Publish.Start", key);
        self.write_command(
            CSID_COMMAND,
            0,
            &[
                Amf0Value::string("onFCPublish"),
                Amf0Value::Number(0.0),
                Amf0Value::Null,
                info,
            ],
        );
        self.write_result(txn, Amf0Value::Undefined);
    }

    /// `publish(name, type)` on a created stream: held as pending until the
    /// application accepts or rejects it.
    fn on_publish(&mut self, stream_id: u32, args: &[Amf0Value]) {
        let name = args
            .first()
            .and_then(Amf0Value::as_str)
            .unwrap_or("")
            .to_string();
        let publish_type = args
            .get(1)
            .and_then(Amf0Value::as_str)
            .unwrap_or("live")
            .to_string();
        if stream_id == 0 || stream_id >= self.next_stream_id {
            self.send_status_error(
                stream_id,
                "NetStream.Publish.Failed",
                "publish on a stream that was not created (send createStream first)",
            );
            self.closing = true;
            return;
        }
        if self.publishing.is_some() {
            self.send_status_error(
                stream_id,
                "NetStream.Publish.BadName",
                "this connection is already publishing",
            );
            return;
        }
        self.publish_name = name.clone();
        self.pending = Pending::Publish { stream_id };
        self.events.push_back(Event::Publish {
            stream_id,
            name,
            publish_type,
        });
    }

    fn on_delete_stream(&mut self, stream_id: u32, args: &[Amf0Value]) {
        // deleteStream names the stream id in its argument;
        // closeStream is sent on the stream itself.
        let target = args
            .first()
            .and_then(Amf0Value::as_f64)
            .map(|v| v as u32)
            .unwrap_or(stream_id);
        if self.publishing == Some(target) || (target == 0 && self.publishing.is_some()) {
            self.end_publish();
        }
    }

    fn end_publish(&mut self) {
        if let Some(stream_id) = self.publishing.take() {
            self.events.push_back(Event::Unpublish { stream_id });
        }
    }

    fn on_connect(&mut self, msg: &Message, txn: f64, obj: &Amf0Value) -> Result<(), ProtoError> {
        if self.connected {
            return Err(self.violation(msg, "second connect on one connection".into()));
        }
        let app = obj.get("app").and_then(Amf0Value::as_str).unwrap_or("");
        self.object_encoding = obj
            .get("objectEncoding")
            .and_then(Amf0Value::as_f64)
            .unwrap_or(0.0);
        self.pending = Pending::Connect { txn };
        self.events.push_back(Event::Connect {
            app: app.to_string(),
            tc_url: obj
                .get("tcUrl")
                .and_then(Amf0Value::as_str)
                .map(String::from),
            flash_ver: obj
                .get("flashVer")
                .and_then(Amf0Value::as_str)
                .map(String::from),
        });
        Ok(())
    }

    /// A protocol violation in the content of `msg`, the message being handled.
    fn violation(&self, msg: &Message, what: String) -> ProtoError {
        ProtoError::Violation {
            what,
            at: self.decoder.message_context(msg),
        }
    }

    fn write_control(&mut self, type_id: u8, payload: &[u8]) {
        self.encoder
            .write(&mut self.out, CSID_CONTROL, 0, type_id, 0, payload);
    }

    fn write_command(&mut self, csid: u32, stream_id: u32, values: &[Amf0Value]) {
        let mut body = BytesMut::new();
        amf0::encode_all(values, &mut body);
        self.encoder
            .write(&mut self.out, csid, 0, COMMAND_AMF0, stream_id, &body);
    }

    fn write_result(&mut self, txn: f64, value: Amf0Value) {
        self.write_command(
            CSID_COMMAND,
            0,
            &[
                Amf0Value::string("_result"),
                Amf0Value::Number(txn),
                Amf0Value::Null,
                value,
            ],
        );
    }

    fn write_error(&mut self, txn: f64, code: &str, description: &str) {
        self.write_command(
            CSID_COMMAND,
            0,
            &[
                Amf0Value::string("_error"),
                Amf0Value::Number(txn),
                Amf0Value::Null,
                status("error", code, description),
            ],
        );
    }
}

fn status(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::object([
        ("level", Amf0Value::string(level)),
        ("code", Amf0Value::string(code)),
        ("description", Amf0Value::string(description)),
    ])
}

/// xorshift64: handshake padding needs no cryptographic randomness.
fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
    use super::super::handshake::PACKET_SIZE;
    use super::*;

    /// A scripted client: our own encoder on the sending side, our decoder
    /// reading the server's replies.
    struct Client {
        enc: ChunkEncoder,
        dec: ChunkDecoder,
        inbox: BytesMut,
    }

    impl Client {
        fn new() -> Self {
            Client {
                enc: ChunkEncoder::new(),
                dec: ChunkDecoder::new(ChunkLimits {
                    max_message_size: 1 << 20,
                    max_chunk_streams: 64,
                }),
                inbox: BytesMut::new(),
            }
        }

        fn command(&mut self, stream_id: u32, values: &[Amf0Value]) -> BytesMut {
            let mut body = BytesMut::new();
            amf0::encode_all(values, &mut body);
            let mut out = BytesMut::new();
            self.enc
                .write(&mut out, 3, 0, COMMAND_AMF0, stream_id, &body);
            out
        }

        /// Server replies as (type, decoded AMF values or raw payload).
        fn read(&mut self, s: &mut Session) -> Vec<(u8, Vec<Amf0Value>, Bytes)> {
            if let Some(b) = s.take_transmit() {
                self.inbox.extend_from_slice(&b);
            }
            let mut v = Vec::new();
            while let Some(m) = self.dec.decode(&mut self.inbox).unwrap() {
                let vals = if m.type_id == COMMAND_AMF0 {
                    amf0::decode_all(&m.payload, 32).unwrap()
                } else {
                    Vec::new()
                };
                v.push((m.type_id, vals, m.payload));
            }
            v
        }
    }

    /// connect, createStream and publish "k" in one write, no waiting.
    fn minimal_publish(c: &mut Client) -> BytesMut {
        let mut input = c.command(
            0,
            &[
                Amf0Value::string("connect"),
                Amf0Value::Number(1.0),
                Amf0Value::object([("app", Amf0Value::string("live"))]),
            ],
        );
        let create = [
            Amf0Value::string("createStream"),
            Amf0Value::Number(2.0),
            Amf0Value::Null,
        ];
        input.extend_from_slice(&c.command(0, &create));
        let publish = [
            Amf0Value::string("publish"),
            Amf0Value::Number(3.0),
            Amf0Value::Null,
            Amf0Value::string("k"),
        ];
        input.extend_from_slice(&c.command(1, &publish));
        input
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn handshake(s: &mut Session, now: Instant) {
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0u8; PACKET_SIZE]);
        s.handle_input(now, &c0c1).unwrap();
        let out = s.take_transmit().unwrap();
        assert_eq!(out.len(), 1 + 2 * PACKET_SIZE);
        s.handle_input(now, &[0u8; PACKET_SIZE]).unwrap();
        assert!(matches!(events(s)[..], [Event::HandshakeDone { .. }]));
    }

    fn code_of(vals: &[Amf0Value]) -> Option<&str> {
        vals.get(3)?.get("code")?.as_str()
    }

    /// Runs connect → createStream → publish and accepts it.
    fn publishing_session(now: Instant) -> (Session, Client) {
        let mut s = Session::new(Limits::default(), now, 7);
        let mut c = Client::new();
        handshake(&mut s, now);
        let connect = c.command(
            0,
            &[
                Amf0Value::string("connect"),
                Amf0Value::Number(1.0),
                Amf0Value::object([
                    ("app", Amf0Value::string("live")),
                    ("tcUrl", Amf0Value::string("rtmp://h/live")),
                ]),
            ],
        );
        s.handle_input(now, &connect).unwrap();
        assert_eq!(
            events(&mut s),
            vec![Event::Connect {
                app: "live".into(),
                tc_url: Some("rtmp://h/live".into()),
                flash_ver: None
            }]
        );
        s.accept_connect().unwrap();
        let replies = c.read(&mut s);
        let types: Vec<u8> = replies.iter().map(|r| r.0).collect();
        assert_eq!(
            types,
            vec![
                WINDOW_ACK_SIZE,
                SET_PEER_BANDWIDTH,
                SET_CHUNK_SIZE,
                COMMAND_AMF0
            ]
        );
        assert_eq!(replies[3].1[0].as_str(), Some("_result"));
        assert_eq!(
            code_of(&replies[3].1),
            Some("NetConnection.Connect.Success")
        );

        let mut input = BytesMut::new();
        for (name, args) in [
            ("releaseStream", vec![Amf0Value::string("cam1")]),
            ("FCPublish", vec![Amf0Value::string("cam1")]),
            ("createStream", vec![]),
        ] {
            let mut v = vec![
                Amf0Value::string(name),
                Amf0Value::Number(2.0),
                Amf0Value::Null,
            ];
            v.extend(args);
            input.extend_from_slice(&c.command(0, &v));
        }
        input.extend_from_slice(&c.command(
            1,
            &[
                Amf0Value::string("publish"),
                Amf0Value::Number(5.0),
                Amf0Value::Null,
                Amf0Value::string("cam1?token=x"),
                Amf0Value::string("live"),
            ],
        ));
        s.handle_input(now, &input).unwrap();
        assert_eq!(
            events(&mut s),
            vec![Event::Publish {
                stream_id: 1,
                name: "cam1?token=x".into(),
                publish_type: "live".into()
            }]
        );
        let replies = c.read(&mut s);
        let names: Vec<&str> = replies
            .iter()
            .filter_map(|r| r.1.first()?.as_str())
            .collect();
        assert_eq!(names, vec!["_result", "onFCPublish", "_result", "_result"]);
        assert_eq!(replies.last().unwrap().1[3], Amf0Value::Number(1.0));
        s.accept_publish().unwrap();
        let replies = c.read(&mut s);
        assert_eq!(replies[0].0, USER_CONTROL);
        assert_eq!(code_of(&replies[1].1), Some("NetStream.Publish.Start"));
        assert_eq!(s.publishing(), Some("cam1?token=x"));
        (s, c)
    }

    #[test]
    fn full_publish_flow_emits_media_and_metadata() {
        let now = Instant::now();
        let (mut s, mut c) = publishing_session(now);
        let mut input = BytesMut::new();
        let mut meta = BytesMut::new();
        amf0::encode_all(
            &[
                Amf0Value::string("@setDataFrame"),
                Amf0Value::string("onMetaData"),
                Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(640.0))]),
            ],
            &mut meta,
        );
        c.enc.write(&mut input, 4, 0, DATA_AMF0, 1, &meta);
        c.enc
            .write(&mut input, 6, 0, VIDEO, 1, &[0x17, 0, 0, 0, 0, 1]);
        c.enc.write(&mut input, 4, 21, AUDIO, 1, &[0xAF, 1, 9]);
        // Media on a stream that is not publishing is dropped.
        c.enc.write(&mut input, 4, 22, AUDIO, 2, &[0xAF, 1, 9]);
        s.handle_input(now, &input).unwrap();
        let ev = events(&mut s);
        assert_eq!(ev.len(), 3);
        assert!(
            matches!(&ev[0], Event::Metadata(m) if m.get("width") == Some(&Amf0Value::Number(640.0)))
        );
        assert!(matches!(
            &ev[1],
            Event::Media {
                video: true,
                timestamp: 0,
                ..
            }
        ));
        assert!(matches!(
            &ev[2],
            Event::Media {
                video: false,
                timestamp: 21,
                ..
            }
        ));

        let del = c.command(
            0,
            &[
                Amf0Value::string("deleteStream"),
                Amf0Value::Number(6.0),
                Amf0Value::Null,
                Amf0Value::Number(1.0),
            ],
        );
        s.handle_input(now, &del).unwrap();
        assert_eq!(events(&mut s), vec![Event::Unpublish { stream_id: 1 }]);
    }

    #[test]
    fn media_sent_right_after_publish_waits_for_the_decision() {
        let now = Instant::now();
        let mut s = Session::new(Limits::default(), now, 1);
        let mut c = Client::new();
        handshake(&mut s, now);
        let mut input = minimal_publish(&mut c);
        c.enc
            .write(&mut input, 6, 40, VIDEO, 1, &[0x17, 1, 0, 0, 0]);
        s.handle_input(now, &input).unwrap();
        assert!(matches!(events(&mut s)[..], [Event::Connect { .. }]));
        s.accept_connect().unwrap();
        assert!(matches!(events(&mut s)[..], [Event::Publish { .. }]));
        s.accept_publish().unwrap();
        assert!(matches!(
            events(&mut s)[..],
            [Event::Media {
                video: true,
                timestamp: 40,
                ..
            }]
        ));
    }

    /// connect accepted, publish asked and not answered yet.
    fn pending_publish(now: Instant) -> (Session, Client) {
        let mut s = Session::new(Limits::default(), now, 1);
        let mut c = Client::new();
        handshake(&mut s, now);
        let input = minimal_publish(&mut c);
        s.handle_input(now, &input).unwrap();
        assert!(matches!(events(&mut s)[..], [Event::Connect { .. }]));
        s.accept_connect().unwrap();
        assert!(matches!(events(&mut s)[..], [Event::Publish { .. }]));
        (s, c)
    }

    /// While the application decides a publish, the session reads nothing
    /// and holds what arrives only up to a small cap: past it, the input
    /// is refused (the driver should have stopped reading).
    #[test]
    fn input_while_a_publish_is_pending_is_capped() {
        let now = Instant::now();
        let (mut s, mut c) = pending_publish(now);
        let mut media = BytesMut::new();
        c.enc
            .write(&mut media, 6, 0, VIDEO, 1, &vec![0x27; 60 * 1024]);
        let mut fed = 0;
        let err = loop {
            match s.handle_input(now, &media) {
                Ok(()) => fed += media.len(),
                Err(e) => break e,
            }
            assert!(fed < 1 << 20, "{fed} bytes buffered while paused");
        };
        assert_eq!(err.reason(), "input_overflow");
        assert!(fed <= PAUSED_INPUT_LIMIT, "{fed}");
        assert!(
            err.to_string()
                .contains("while a publish was being decided"),
            "{err}"
        );
    }

    /// `max_messages_per_second` counts every message in one-second
    /// windows: a steady rate under it passes, a burst over it closes the
    /// connection with a status naming the limit. Aggregate sub-messages
    /// count one by one.
    #[test]
    fn messages_over_the_rate_limit_stop_the_publish_naming_the_limit() {
        let t0 = Instant::now();
        let limits = Limits {
            max_messages_per_second: 100,
            ..Limits::default()
        };
        let mut s = Session::new(limits.clone(), t0, 7);
        let mut c = Client::new();
        handshake(&mut s, t0);
        s.handle_input(t0, &minimal_publish(&mut c)).unwrap();
        s.accept_connect().unwrap();
        s.accept_publish().unwrap();
        events(&mut s);
        c.read(&mut s);
        // 90 per second for 5 s: fine.
        for sec in 0..5u64 {
            let now = t0 + Duration::from_secs(1 + sec);
            let mut input = BytesMut::new();
            for i in 0..90u32 {
                c.enc.write(&mut input, 6, i, VIDEO, 1, &[]);
            }
            s.handle_input(now, &input).unwrap();
            assert_eq!(events(&mut s).len(), 90);
        }
        // An aggregate of 60 tags and 50 more messages in the same second.
        let now = t0 + Duration::from_secs(10);
        let mut agg = BytesMut::new();
        for _ in 0..60 {
            agg.put_u8(AUDIO);
            agg.put_uint(1, 3);
            agg.put_uint(0, 4);
            agg.put_uint(0, 3);
            agg.put_u8(0xAF);
            agg.put_u32(12);
        }
        let mut input = BytesMut::new();
        c.enc.write(&mut input, 6, 0, AGGREGATE, 1, &agg);
        s.handle_input(now, &input).unwrap();
        let mut input = BytesMut::new();
        for _ in 0..50 {
            c.enc.write(&mut input, 4, 0, AUDIO, 1, &[0xAF, 1]);
        }
        let e = s.handle_input(now, &input).unwrap_err();
        assert_eq!(e.reason(), "message_rate");
        assert_eq!(
            e.to_string(),
            "more than 100 messages in one second (rtmp.max_messages_per_second)"
        );
        assert!(s.is_closing());
        let status = c.read(&mut s).pop().unwrap();
        assert_eq!(code_of(&status.1), Some("NetStream.Publish.Failed"));
        let text = status.1[3].get("description").and_then(Amf0Value::as_str);
        assert!(
            text.is_some_and(|t| t.contains("rtmp.max_messages_per_second")),
            "{text:?}"
        );
    }

    /// The flood seeds of `fuzz/seeds/rtmp_session` (fuzz/make_seeds.py)
    /// reach the media path, and the one over the message rate is cut.
    #[test]
    fn flood_seeds_reach_media_and_the_fastest_is_cut() {
        let run = |name: &str| -> (usize, Option<&'static str>) {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/seeds/rtmp_session")
                .join(name);
            let data = std::fs::read(&path).unwrap();
            let now = Instant::now();
            let mut s = Session::new(Limits::default(), now, 1);
            handshake(&mut s, now);
            let mut media = 0;
            // Accepting resumes decoding; its events come out of the same queue.
            let mut r = s.handle_input(now, &data);
            while let Some(ev) = s.poll_event() {
                match ev {
                    Event::Connect { .. } => r = r.and(s.accept_connect()),
                    Event::Publish { .. } => r = r.and(s.accept_publish()),
                    Event::Media { .. } => media += 1,
                    _ => {}
                }
            }
            (media, r.err().map(|e| e.reason()))
        };
        assert_eq!(run("flood-tiny-video-frozen-timestamps.bin"), (1400, None));
        assert_eq!(run("flood-tiny-audio-frozen-timestamps.bin"), (4000, None));
        assert_eq!(run("aggregate-of-1000-empty-tags.bin"), (1000, None));
        let (media, err) = run("flood-zero-length-video-over-message-rate.bin");
        assert_eq!(err, Some("message_rate"));
        assert!(media < 5000, "{media}");
    }

    /// The idle timer does not run while the application decides: the
    /// driver is not reading then.
    #[test]
    fn the_idle_timer_waits_while_a_publish_is_decided() {
        let t0 = Instant::now();
        let (mut s, _) = pending_publish(t0);
        let idle = Limits::default().idle_timeout;
        let late = t0 + idle * 3;
        assert!(s.handle_timeout(late).is_ok());
        assert!(s.poll_timeout() > late, "the timer must move on, not spin");
        s.accept_publish().unwrap();
        let e = s.handle_timeout(late + idle).unwrap_err();
        assert_eq!(e.reason(), "idle_timeout");
    }

    #[test]
    fn rejected_publish_sends_status_and_closes() {
        let now = Instant::now();
        let mut s = Session::new(Limits::default(), now, 1);
        let mut c = Client::new();
        handshake(&mut s, now);
        let input = minimal_publish(&mut c);
        s.handle_input(now, &input).unwrap();
        events(&mut s);
        s.accept_connect().unwrap();
        events(&mut s);
        c.read(&mut s);
        s.reject_publish(
            "NetStream.Publish.BadName",
            "live/k is already being published",
        );
        assert!(s.is_closing());
        let replies = c.read(&mut s);
        let last = &replies.last().unwrap().1;
        assert_eq!(last[0].as_str(), Some("onStatus"));
        assert_eq!(code_of(last), Some("NetStream.Publish.BadName"));
        assert_eq!(
            last[3].get("level").and_then(Amf0Value::as_str),
            Some("error")
        );
    }

    #[test]
    fn acknowledgement_carries_the_running_total() {
        let now = Instant::now();
        let limits = Limits {
            window_ack_size: 5000,
            ..Limits::default()
        };
        let mut s = Session::new(limits, now, 1);
        let mut c = Client::new();
        handshake(&mut s, now); // 3073 bytes
        let ping = {
            let mut out = BytesMut::new();
            c.enc
                .write(&mut out, 2, 0, USER_CONTROL, 0, &[0, 6, 0, 0, 0, 42]);
            out
        };
        let mut total = 1 + 2 * PACKET_SIZE;
        let mut acks = Vec::new();
        for _ in 0..400 {
            s.handle_input(now, &ping).unwrap();
            total += ping.len();
            for (t, _, p) in c.read(&mut s) {
                if t == ACK {
                    acks.push((u32::from_be_bytes([p[0], p[1], p[2], p[3]]), total));
                } else {
                    assert_eq!(t, USER_CONTROL);
                    assert_eq!(&p[..], &[0, 7, 0, 0, 0, 42]);
                }
            }
        }
        assert!(acks.len() >= 2);
        for (seq, at) in acks {
            assert_eq!(seq as usize, at, "ack must be the running total");
        }
    }

    #[test]
    fn timeouts_in_virtual_time() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut s = Session::new(limits.clone(), t0, 1);
        s.handle_input(t0, &[3]).unwrap();
        assert_eq!(s.poll_timeout(), t0 + limits.handshake_timeout);
        assert!(s.handle_timeout(t0 + Duration::from_secs(1)).is_ok());
        let e = s.handle_timeout(t0 + limits.handshake_timeout).unwrap_err();
        assert_eq!(e.reason(), "handshake_timeout");

        let mut s = Session::new(limits.clone(), t0, 1);
        handshake(&mut s, t0);
        let t1 = t0 + Duration::from_secs(3);
        s.handle_input(t1, &[]).unwrap();
        assert_eq!(s.poll_timeout(), t1 + limits.idle_timeout);
        let e = s.handle_timeout(t1 + limits.idle_timeout).unwrap_err();
        assert_eq!(e.reason(), "idle_timeout");
    }

    #[test]
    fn deep_amf_nesting_closes_with_amf_depth() {
        let now = Instant::now();
        let mut s = Session::new(Limits::default(), now, 1);
        handshake(&mut s, now);
        let mut body = BytesMut::new();
        amf0::encode_all(
            &[Amf0Value::string("connect"), Amf0Value::Number(1.0)],
            &mut body,
        );
        for _ in 0..20_000 {
            body.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        let mut input = BytesMut::new();
        let mut enc = ChunkEncoder::new();
        enc.write(&mut input, 3, 0, COMMAND_AMF0, 0, &body);
        let e = s.handle_input(now, &input).unwrap_err();
        assert_eq!(e.reason(), "amf_depth");
    }

    #[test]
    fn commands_before_connect_and_malformed_commands_are_refused() {
        let now = Instant::now();
        let mut s = Session::new(Limits::default(), now, 1);
        let mut c = Client::new();
        handshake(&mut s, now);
        let e = s
            .handle_input(
                now,
                &c.command(0, &[Amf0Value::string("publish"), Amf0Value::Number(1.0)]),
            )
            .unwrap_err();
        assert_eq!(e.reason(), "protocol_violation");

        let mut s = Session::new(Limits::default(), now, 1);
        handshake(&mut s, now);
        // A lone number where the command name should be.
        let e = s
            .handle_input(now, &c.command(0, &[Amf0Value::Number(1.0)]))
            .unwrap_err();
        assert_eq!(e.reason(), "protocol_violation");
    }

    /// Errors about a message name its csid, type, stream and connection
    /// offset (after the 3073-byte handshake) and show its first bytes;
    /// the metric label stays the same.
    #[test]
    fn errors_name_csid_message_type_offset_and_bytes() {
        let now = Instant::now();
        let mut s = Session::new(Limits::default(), now, 1);
        let mut c = Client::new();
        handshake(&mut s, now);
        let input = c.command(0, &[Amf0Value::string("publish"), Amf0Value::Number(1.0)]);
        let e = s.handle_input(now, &input).unwrap_err();
        assert_eq!(e.reason(), "protocol_violation");
        let at = e.context().expect("a context");
        assert_eq!((at.csid, at.type_id, at.stream_id), (3, Some(20), Some(0)));
        assert_eq!(at.offset, 1 + 2 * PACKET_SIZE as u64);
        assert_eq!(&at.excerpt.bytes()[..4], &[0x02, 0x00, 0x07, b'p']);
        assert_eq!(
            e.to_string(),
            "protocol violation: command \"publish\" before connect, at csid 3, message type 20 \
             (AMF0 command), message stream 0, offset 3073: \
             02 00 07 70 75 62 6c 69 73 68 00 3f f0 00 00 00 00 00 00"
        );

        // Chunk-level errors count from the same place: a second, broken
        // message after a good one.
        let mut s = Session::new(Limits::default(), now, 1);
        let mut c = Client::new();
        handshake(&mut s, now);
        let mut input = c.command(
            0,
            &[
                Amf0Value::string("connect"),
                Amf0Value::Number(1.0),
                Amf0Value::object([("app", Amf0Value::string("live"))]),
            ],
        );
        let bad_at = 1 + 2 * PACKET_SIZE as u64 + input.len() as u64;
        input.extend_from_slice(&[7, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0]);
        s.handle_input(now, &input).unwrap();
        // Reading resumes once the connect is accepted.
        let e = s.accept_connect().unwrap_err();
        assert_eq!(e.reason(), "message_too_large");
        let at = e.context().expect("a context");
        assert_eq!((at.csid, at.stream_id, at.offset), (7, Some(1), bad_at));
        assert!(e.to_string().ends_with(&format!(
            "at csid 7, message type 9 (video), message stream 1, offset {bad_at}: \
             07 00 00 00 ff ff ff 09 01 00 00 00"
        )));

        // Timeouts have no bytes to show.
        let e = ProtoError::IdleTimeout(Duration::from_secs(10));
        assert!(e.context().is_none());
    }

    #[test]
    fn aggregate_messages_are_split_with_rebased_timestamps() {
        let now = Instant::now();
        let (mut s, mut c) = publishing_session(now);
        let mut agg = BytesMut::new();
        for (ts, body) in [
            (1000u32, &[0x17u8, 1, 0, 0, 0][..]),
            (1040, &[0x27, 1, 0, 0, 0]),
        ] {
            agg.put_u8(VIDEO);
            agg.put_uint(body.len() as u64, 3);
            agg.put_uint((ts & 0xFF_FFFF) as u64, 3);
            agg.put_u8((ts >> 24) as u8);
            agg.put_uint(0, 3);
            agg.extend_from_slice(body);
            agg.put_u32(11 + body.len() as u32);
        }
        let mut input = BytesMut::new();
        c.enc.write(&mut input, 6, 500, AGGREGATE, 1, &agg);
        s.handle_input(now, &input).unwrap();
        let ts: Vec<u32> = events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                Event::Media { timestamp, .. } => Some(timestamp),
                _ => None,
            })
            .collect();
        assert_eq!(ts, vec![500, 540]);
    }

    /// Flash clients with objectEncoding 3 send commands as type 17: a format
    /// byte, then AMF0 values that may switch to AMF3 (0x11) per value.
    #[test]
    fn amf3_commands_are_handled_and_complex_amf3_is_refused() {
        let now = Instant::now();
        let mut s = Session::new(Limits::default(), now, 1);
        handshake(&mut s, now);
        let mut body = BytesMut::from(&[0u8][..]);
        amf0::encode_all(
            &[
                Amf0Value::string("connect"),
                Amf0Value::Number(1.0),
                Amf0Value::object([
                    (
                        "app",
                        Amf0Value::Amf3(amf0::Amf3Value::String("live".into())),
                    ),
                    ("objectEncoding", Amf0Value::Number(3.0)),
                ]),
            ],
            &mut body,
        );
        let mut input = BytesMut::new();
        ChunkEncoder::new().write(&mut input, 3, 0, COMMAND_AMF3, 0, &body);
        s.handle_input(now, &input).unwrap();
        assert!(matches!(&events(&mut s)[..], [Event::Connect { app, .. }] if app == "live"));
        s.accept_connect().unwrap();
        let mut c = Client::new();
        let replies = c.read(&mut s);
        let result = &replies.last().unwrap().1;
        assert_eq!(
            result[3].get("objectEncoding"),
            Some(&Amf0Value::Number(3.0))
        );

        // An AMF3 object (marker 0x0A) is refused cleanly.
        let mut body = BytesMut::from(&[0u8][..]);
        amf0::encode_all(
            &[Amf0Value::string("createStream"), Amf0Value::Number(2.0)],
            &mut body,
        );
        body.extend_from_slice(&[0x11, 0x0A, 0x0B, 0x01, 0x01]);
        let mut input = BytesMut::new();
        ChunkEncoder::new().write(&mut input, 3, 0, COMMAND_AMF3, 0, &body);
        let e = s.handle_input(now, &input).unwrap_err();
        assert_eq!(e.reason(), "amf_invalid");
    }

    #[test]
    fn random_bytes_after_handshake_never_panic() {
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..2000 {
            let now = Instant::now();
            let mut s = Session::new(Limits::default(), now, 1);
            handshake(&mut s, now);
            let mut buf = Vec::new();
            for _ in 0..32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            let _ = s.handle_input(now, &buf);
        }
    }
}
