//! The sans-IO RTMP publishing client: the plain handshake (RTMP spec
//! 5.2), `connect` / `releaseStream` / `FCPublish` / `createStream` /
//! `publish` (7.2), then FLV audio and video messages built from the
//! stream's media events. Bytes from the server go in with the time, bytes
//! to send and [`ClientEvent`]s come out; nothing the server sends can
//! panic it or make it hold more than [`MAX_SERVER_MESSAGE`] bytes.
//!
//! When to poll: after [`ClientSession::new`], every `handle_input`,
//! `handle_timeout`, `send_media` and `close`, drain `poll_event` and
//! `take_transmit`; call `handle_timeout` once `poll_timeout` has passed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::flv::{self, AudioTag, FlvError, VideoTag};
use crate::media::{Codec, CodecConfig, MediaEvent, Track};
use crate::rtmp::amf0::{self, Amf0Error, Amf0Value};
use crate::rtmp::proto::chunk::{
    ChunkContext, ChunkDecoder, ChunkEncoder, ChunkError, ChunkLimits,
};
use crate::rtmp::proto::handshake::PACKET_SIZE;

const RTMP_VERSION: u8 = 3;
/// Our outbound chunk size, announced before anything else: fewer chunk
/// headers per video frame than the default 128 (RTMP spec 5.4.1).
pub const CHUNK_SIZE: u32 = 4096;
/// A publishing client receives only control and command messages; a
/// server message larger than this is refused, so no server can make the
/// client buffer more.
pub const MAX_SERVER_MESSAGE: u32 = 256 * 1024;
/// Chunk streams the server may use towards us.
const MAX_SERVER_CHUNK_STREAMS: usize = 16;
/// The server's status texts are shown to operators: at most this long.
const MAX_TEXT: usize = 300;
const FLASH_VER: &str = "FMLE/3.0 (compatible; sluice)";

// Message type ids (RTMP spec 5.4, 6.2, 7.1).
const SET_CHUNK_SIZE: u8 = 1;
const ACK: u8 = 3;
const USER_CONTROL: u8 = 4;
const WINDOW_ACK_SIZE: u8 = 5;
const AUDIO: u8 = 8;
const VIDEO: u8 = 9;
const DATA_AMF0: u8 = 18;
const COMMAND_AMF3: u8 = 17;
const COMMAND_AMF0: u8 = 20;
// Chunk stream ids as FFmpeg and OBS use them.
const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;
const CSID_STREAM_COMMAND: u32 = 8;
// User control events (RTMP spec 7.1.7).
const UC_PING_REQUEST: u16 = 6;
const UC_PING_RESPONSE: u16 = 7;
// Transaction ids of our commands.
const TXN_CONNECT: f64 = 1.0;
const TXN_RELEASE: f64 = 2.0;
const TXN_FCPUBLISH: f64 = 3.0;
const TXN_CREATE_STREAM: f64 = 4.0;
const TXN_PUBLISH: f64 = 5.0;

/// Where the client is to publish and how long it may take.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// `connect`'s `app`.
    pub app: String,
    /// `connect`'s `tcUrl` (no stream key).
    pub tc_url: String,
    /// `publish`'s name: the stream key. Never shown: the server's texts
    /// are scrubbed of it.
    pub key: String,
    /// From the start to `NetStream.Publish.Start`.
    pub setup_timeout: Duration,
}

/// What the driver must know.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `NetStream.Publish.Start`: media may be sent.
    Publishing,
}

/// Why the session cannot go on. Texts never contain the stream key.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the server answered the handshake with version {0} (expected 3: is this an RTMP server?)"
    )]
    BadVersion(u8),
    #[error("no NetStream.Publish.Start from the server within {0:?} ({1})")]
    SetupTimeout(Duration, &'static str),
    #[error("chunk stream from the server: {0}")]
    Chunk(#[from] ChunkError),
    #[error("AMF0 in a message from the server: {source}, at {at}")]
    Amf {
        source: Amf0Error,
        at: Box<ChunkContext>,
    },
    #[error("protocol violation by the server: {0}")]
    Violation(String),
    /// The server refused a step: its `code` and `description`.
    #[error("the server refused {step}: {code}: {description}")]
    Refused {
        step: &'static str,
        code: String,
        description: String,
    },
    /// The server ended a running publish (another publisher took it, …).
    #[error("the server stopped the publish: {code}: {description}")]
    Stopped { code: String, description: String },
    #[error("cannot restream this stream over RTMP: {0}")]
    Media(#[from] FlvError),
}

impl ClientError {
    /// Short label for logs and the leg failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ClientError::BadVersion(_) | ClientError::SetupTimeout(..) => "push_handshake",
            ClientError::Chunk(_) | ClientError::Amf { .. } | ClientError::Violation(_) => {
                "push_protocol"
            }
            ClientError::Refused { .. } => "push_refused",
            ClientError::Stopped { .. } => "push_stopped",
            ClientError::Media(_) => "push_media",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// C0+C1 sent; waiting for S0+S1+S2.
    Handshake,
    /// `connect` sent.
    Connecting,
    /// `createStream` sent.
    CreatingStream,
    /// `publish` sent on the stream.
    Publishing,
    /// `NetStream.Publish.Start` received: media flows.
    Live,
    /// `FCUnpublish`/`deleteStream` sent.
    Closed,
}

/// One RTMP publishing connection, client side.
#[derive(Debug)]
pub struct ClientSession {
    params: ClientParams,
    state: State,
    setup_by: Instant,
    hs: BytesMut,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    inbuf: BytesMut,
    out: BytesMut,
    events: VecDeque<ClientEvent>,
    bytes_in: u64,
    last_ack: u64,
    /// The server's Window Acknowledgement Size; 0 until it sets one.
    ack_window: u32,
    stream_id: u32,
    /// The first frame's DTS: timestamps on the wire start at 0.
    base: Option<u64>,
    last_ts: u32,
    video_config: Option<CodecConfig>,
    audio_config: Option<CodecConfig>,
    metadata_sent: bool,
    fps: Option<f64>,
}

impl ClientSession {
    /// Starts the handshake (C0 + C1 wait in `take_transmit`). `seed`
    /// fills C1's random field.
    pub fn new(params: ClientParams, now: Instant, seed: u64) -> Self {
        let mut out = BytesMut::with_capacity(1 + PACKET_SIZE);
        out.put_u8(RTMP_VERSION);
        // C1: time (4 bytes), zero (4 bytes), random (RTMP spec 5.2.3).
        out.put_u32(0);
        out.put_u32(0);
        let mut rng = seed | 1;
        for _ in 0..(PACKET_SIZE - 8) / 8 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            out.put_u64(rng);
        }
        let setup_by = now + params.setup_timeout;
        ClientSession {
            params,
            state: State::Handshake,
            setup_by,
            hs: BytesMut::new(),
            decoder: ChunkDecoder::new(ChunkLimits {
                max_message_size: MAX_SERVER_MESSAGE,
                max_chunk_streams: MAX_SERVER_CHUNK_STREAMS,
            }),
            encoder: ChunkEncoder::new(),
            inbuf: BytesMut::new(),
            out,
            events: VecDeque::new(),
            bytes_in: 0,
            last_ack: 0,
            ack_window: 0,
            stream_id: 0,
            base: None,
            last_ts: 0,
            video_config: None,
            audio_config: None,
            metadata_sent: false,
            fps: None,
        }
    }

    /// The frame rate to announce in `onMetaData`, when known.
    pub fn set_framerate(&mut self, fps: Option<f64>) {
        self.fps = fps.filter(|f| f.is_finite() && *f > 0.0 && *f <= 1000.0);
    }

    /// True once `NetStream.Publish.Start` came (and until `close`).
    pub fn is_live(&self) -> bool {
        self.state == State::Live
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the server, if any.
    pub fn take_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Until when the publish must have started (`handle_timeout` then
    /// fails); `None` once live.
    pub fn poll_timeout(&self) -> Option<Instant> {
        matches!(
            self.state,
            State::Handshake | State::Connecting | State::CreatingStream | State::Publishing
        )
        .then_some(self.setup_by)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        if now < self.setup_by {
            return Ok(());
        }
        let step = match self.state {
            State::Handshake => "the handshake did not finish",
            State::Connecting => "no answer to connect",
            State::CreatingStream => "no answer to createStream",
            State::Publishing => "no answer to publish",
            State::Live | State::Closed => return Ok(()),
        };
        Err(ClientError::SetupTimeout(self.params.setup_timeout, step))
    }

    /// Feed bytes received from the server.
    pub fn handle_input(&mut self, _now: Instant, data: &[u8]) -> Result<(), ClientError> {
        self.bytes_in += data.len() as u64;
        if self.state == State::Handshake {
            if self.hs.is_empty() {
                if let Some(&v) = data.first() {
                    if v != RTMP_VERSION {
                        return Err(ClientError::BadVersion(v));
                    }
                }
            }
            let want = 1 + 2 * PACKET_SIZE;
            let take = data.len().min(want - self.hs.len());
            self.hs.extend_from_slice(&data[..take]);
            if self.hs.len() < want {
                return Ok(());
            }
            // C2 echoes S1 (RTMP spec 5.2.4); S2 is not checked: servers
            // disagree on what they echo and nothing depends on it.
            let s1 = self.hs.split_to(1 + PACKET_SIZE).split_off(1);
            self.hs = BytesMut::new();
            self.out.extend_from_slice(&s1);
            self.decoder.start_at(want as u64);
            self.inbuf.extend_from_slice(&data[take..]);
            self.start_connect();
        } else {
            self.inbuf.extend_from_slice(data);
        }
        self.maybe_ack();
        while let Some(msg) = self.decoder.decode(&mut self.inbuf)? {
            self.on_message(&msg)?;
        }
        Ok(())
    }

    fn start_connect(&mut self) {
        self.write_control(SET_CHUNK_SIZE, &CHUNK_SIZE.to_be_bytes());
        self.encoder.set_chunk_size(CHUNK_SIZE);
        let obj = Amf0Value::object([
            ("app", Amf0Value::string(self.params.app.clone())),
            ("type", Amf0Value::string("nonprivate")),
            ("flashVer", Amf0Value::string(FLASH_VER)),
            ("tcUrl", Amf0Value::string(self.params.tc_url.clone())),
        ]);
        self.write_command(
            CSID_COMMAND,
            0,
            &[
                Amf0Value::string("connect"),
                Amf0Value::Number(TXN_CONNECT),
                obj,
            ],
        );
        self.state = State::Connecting;
    }

    fn maybe_ack(&mut self) {
        // The running total of bytes received, wrapping at 32 bits, each
        // time a window's worth has come (RTMP spec 5.4.3).
        if self.ack_window > 0 && self.bytes_in - self.last_ack >= u64::from(self.ack_window) {
            self.last_ack = self.bytes_in;
            self.write_control(ACK, &(self.bytes_in as u32).to_be_bytes());
        }
    }

    fn on_message(&mut self, msg: &crate::rtmp::proto::chunk::Message) -> Result<(), ClientError> {
        let p = &msg.payload;
        match msg.type_id {
            WINDOW_ACK_SIZE if p.len() >= 4 => {
                self.ack_window = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            }
            USER_CONTROL if p.len() >= 6 && u16::from_be_bytes([p[0], p[1]]) == UC_PING_REQUEST => {
                let mut resp = [0u8; 6];
                resp[..2].copy_from_slice(&UC_PING_RESPONSE.to_be_bytes());
                resp[2..].copy_from_slice(&p[2..6]);
                self.write_control(USER_CONTROL, &resp);
            }
            COMMAND_AMF0 => self.on_command(msg, p)?,
            // AMF3 commands start with a format byte (RTMP spec 7.1.1).
            COMMAND_AMF3 => self.on_command(msg, p.get(1..).unwrap_or(&[]))?,
            // Set Chunk Size was applied by the decoder; acks, peer
            // bandwidth, data and media from the server need nothing.
            _ => {}
        }
        Ok(())
    }

    fn on_command(
        &mut self,
        msg: &crate::rtmp::proto::chunk::Message,
        body: &[u8],
    ) -> Result<(), ClientError> {
        let values =
            amf0::decode_all(body, amf0::DEFAULT_MAX_DEPTH).map_err(|source| ClientError::Amf {
                source,
                at: self.decoder.message_context(msg),
            })?;
        let name = values.first().and_then(Amf0Value::as_str).unwrap_or("");
        let txn = values.get(1).and_then(Amf0Value::as_f64).unwrap_or(0.0);
        // `_result`/`_error`/`onStatus`: (name, txn, null or properties, info).
        let info = values.get(3);
        match name {
            "_result" if txn == TXN_CONNECT && self.state == State::Connecting => {
                self.on_connected();
            }
            "_result" if txn == TXN_CREATE_STREAM && self.state == State::CreatingStream => {
                let id = info.and_then(Amf0Value::as_f64).unwrap_or(-1.0);
                if !(id.is_finite() && id >= 1.0 && id <= f64::from(u32::MAX)) {
                    return Err(ClientError::Violation(format!(
                        "createStream answered with stream id {id}, not a number from 1"
                    )));
                }
                self.stream_id = id as u32;
                self.start_publish();
            }
            "_error" if txn == TXN_CONNECT || txn == TXN_CREATE_STREAM => {
                let step = if txn == TXN_CONNECT {
                    "connect"
                } else {
                    "createStream"
                };
                let (code, description) = self.status_text(info);
                return Err(ClientError::Refused {
                    step,
                    code,
                    description,
                });
            }
            "onStatus" => return self.on_status(info),
            // releaseStream/FCPublish answers (some servers answer them
            // with errors), onBWDone, onFCPublish, _checkbw, …: nothing
            // depends on them.
            _ => {}
        }
        Ok(())
    }

    fn on_connected(&mut self) {
        let key = || Amf0Value::string(self.params.key.clone());
        // FMLE's sequence: servers that expect releaseStream/FCPublish
        // (Twitch, YouTube, nginx-rtmp) get them; the rest ignore them.
        let release = [
            Amf0Value::string("releaseStream"),
            Amf0Value::Number(TXN_RELEASE),
            Amf0Value::Null,
            key(),
        ];
        let fc = [
            Amf0Value::string("FCPublish"),
            Amf0Value::Number(TXN_FCPUBLISH),
            Amf0Value::Null,
            key(),
        ];
        let create = [
            Amf0Value::string("createStream"),
            Amf0Value::Number(TXN_CREATE_STREAM),
            Amf0Value::Null,
        ];
        self.write_command(CSID_COMMAND, 0, &release);
        self.write_command(CSID_COMMAND, 0, &fc);
        self.write_command(CSID_COMMAND, 0, &create);
        self.state = State::CreatingStream;
    }

    fn start_publish(&mut self) {
        let publish = [
            Amf0Value::string("publish"),
            Amf0Value::Number(TXN_PUBLISH),
            Amf0Value::Null,
            Amf0Value::string(self.params.key.clone()),
            Amf0Value::string("live"),
        ];
        self.write_command(CSID_STREAM_COMMAND, self.stream_id, &publish);
        self.state = State::Publishing;
    }

    fn on_status(&mut self, info: Option<&Amf0Value>) -> Result<(), ClientError> {
        let level = info
            .and_then(|i| i.get("level"))
            .and_then(Amf0Value::as_str)
            .unwrap_or("");
        let code = info
            .and_then(|i| i.get("code"))
            .and_then(Amf0Value::as_str)
            .unwrap_or("");
        if code == "NetStream.Publish.Start" && self.state == State::Publishing {
            self.state = State::Live;
            self.events.push_back(ClientEvent::Publishing);
            return Ok(());
        }
        if level != "error" || self.state == State::Closed {
            return Ok(());
        }
        let (code, description) = self.status_text(info);
        if self.state == State::Live {
            Err(ClientError::Stopped { code, description })
        } else {
            Err(ClientError::Refused {
                step: "the publish",
                code,
                description,
            })
        }
    }

    /// The `code` and `description` of a status object, printable, bounded
    /// and without the stream key (servers echo the publishing name).
    fn status_text(&self, info: Option<&Amf0Value>) -> (String, String) {
        let field = |k: &str| {
            info.and_then(|i| i.get(k))
                .and_then(Amf0Value::as_str)
                .map(|s| self.scrub(s))
                .unwrap_or_default()
        };
        let code = field("code");
        let description = field("description");
        (
            if code.is_empty() {
                "(no code)".into()
            } else {
                code
            },
            if description.is_empty() {
                "(no description)".into()
            } else {
                description
            },
        )
    }

    fn scrub(&self, text: &str) -> String {
        let mut s: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let key = self.params.key.as_str();
        // The key with its query, then the query alone (where platforms
        // put a credential: `name?secret=…`).
        let mut secrets = vec![key];
        if let Some((_, q)) = key.split_once('?') {
            secrets.push(q);
        }
        for secret in secrets {
            // Shorter ones are no credential, and scrubbing them would
            // mangle the text.
            if secret.len() >= 4 {
                s = s.replace(secret, "…");
            }
        }
        if s.chars().count() > MAX_TEXT {
            s = s.chars().take(MAX_TEXT).collect::<String>() + "…";
        }
        s
    }

    /// Send a media event (the publish must be live: events before it are
    /// ignored). Codec configurations are sent as sequence headers when
    /// they change; `onMetaData` goes out before the first frame.
    pub fn send_media(&mut self, ev: &MediaEvent) -> Result<(), ClientError> {
        if self.state != State::Live {
            return Ok(());
        }
        match ev {
            MediaEvent::Config(config) => {
                let slot = match config.track() {
                    Track::Video => &mut self.video_config,
                    Track::Audio => &mut self.audio_config,
                };
                if slot.as_ref() == Some(config) {
                    return Ok(());
                }
                *slot = Some(config.clone());
                if self.metadata_sent {
                    // A mid-stream change: announced at once.
                    self.write_config(config)?;
                }
            }
            MediaEvent::Frame(f) => {
                if !self.metadata_sent {
                    self.start_media()?;
                }
                let base = *self.base.get_or_insert(f.dts);
                // 32-bit milliseconds that wrap (RTMP spec 5.3.1.3); the
                // chunk encoder writes extended timestamps past 2^24.
                let ts = f.dts.saturating_sub(base) as u32;
                self.last_ts = ts;
                match f.track {
                    Track::Video => {
                        let body = flv::build_video(&VideoTag::Frame {
                            codec: f.codec,
                            keyframe: f.keyframe,
                            cts: f.cts,
                            data: f.data.clone(),
                        })?;
                        self.write_media(VIDEO, CSID_VIDEO, ts, &body);
                    }
                    Track::Audio => {
                        let body = flv::build_audio(&AudioTag::Frame {
                            codec: f.codec,
                            data: f.data.clone(),
                        })?;
                        self.write_media(AUDIO, CSID_AUDIO, ts, &body);
                    }
                }
            }
            MediaEvent::EndOfSequence(Track::Video) => {
                if let Some(codec) = self.video_config.as_ref().map(CodecConfig::codec) {
                    let body = flv::build_video(&VideoTag::EndOfSequence(codec))?;
                    self.write_media(VIDEO, CSID_VIDEO, self.last_ts, &body);
                }
            }
            MediaEvent::EndOfSequence(Track::Audio) => {}
        }
        Ok(())
    }

    /// `@setDataFrame onMetaData`, then the sequence headers.
    fn start_media(&mut self) -> Result<(), ClientError> {
        self.metadata_sent = true;
        let meta = self.metadata();
        let mut body = BytesMut::new();
        amf0::encode_all(
            &[
                Amf0Value::string("@setDataFrame"),
                Amf0Value::string("onMetaData"),
                meta,
            ],
            &mut body,
        );
        self.encoder.write(
            &mut self.out,
            CSID_DATA,
            0,
            DATA_AMF0,
            self.stream_id,
            &body,
        );
        for config in [self.video_config.clone(), self.audio_config.clone()]
            .into_iter()
            .flatten()
        {
            self.write_config(&config)?;
        }
        Ok(())
    }

    fn metadata(&self) -> Amf0Value {
        let mut props: Vec<(String, Amf0Value)> = Vec::new();
        let mut put = |k: &str, v: Amf0Value| props.push((k.to_string(), v));
        if let Some(CodecConfig::Video { codec, params, .. }) = &self.video_config {
            if let Some(p) = params {
                put("width", Amf0Value::Number(f64::from(p.width)));
                put("height", Amf0Value::Number(f64::from(p.height)));
            }
            put("videocodecid", Amf0Value::Number(video_codec_id(*codec)));
        }
        if let Some(fps) = self.fps {
            put("framerate", Amf0Value::Number(fps));
        }
        if let Some(CodecConfig::Audio { codec, params, .. }) = &self.audio_config {
            put("audiocodecid", Amf0Value::Number(audio_codec_id(*codec)));
            if let Some(p) = params {
                put(
                    "audiosamplerate",
                    Amf0Value::Number(f64::from(p.sample_rate)),
                );
                put("stereo", Amf0Value::Boolean(p.channels >= 2));
            }
        }
        put("encoder", Amf0Value::string("sluice"));
        Amf0Value::EcmaArray(props)
    }

    fn write_config(&mut self, config: &CodecConfig) -> Result<(), ClientError> {
        match config {
            CodecConfig::Video { .. } => {
                let body = flv::build_video(&VideoTag::Config(config.clone()))?;
                self.write_media(VIDEO, CSID_VIDEO, self.last_ts, &body);
            }
            CodecConfig::Audio {
                codec: Codec::Mp3, ..
            } => {} // MP3 has no sequence header.
            CodecConfig::Audio { .. } => {
                let body = flv::build_audio(&AudioTag::Config(config.clone()))?;
                self.write_media(AUDIO, CSID_AUDIO, self.last_ts, &body);
            }
        }
        Ok(())
    }

    fn write_media(&mut self, type_id: u8, csid: u32, ts: u32, body: &[u8]) {
        self.encoder
            .write(&mut self.out, csid, ts, type_id, self.stream_id, body);
    }

    /// End the publish: `FCUnpublish` and `deleteStream` (what FMLE and
    /// OBS send), then the driver closes the connection.
    pub fn close(&mut self) {
        if matches!(self.state, State::Live | State::Publishing) {
            let key = Amf0Value::string(self.params.key.clone());
            self.write_command(
                CSID_COMMAND,
                0,
                &[
                    Amf0Value::string("FCUnpublish"),
                    Amf0Value::Number(6.0),
                    Amf0Value::Null,
                    key,
                ],
            );
            self.write_command(
                CSID_COMMAND,
                0,
                &[
                    Amf0Value::string("deleteStream"),
                    Amf0Value::Number(7.0),
                    Amf0Value::Null,
                    Amf0Value::Number(f64::from(self.stream_id)),
                ],
            );
        }
        self.state = State::Closed;
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
}

/// `videocodecid` of `onMetaData`: the FLV codec id for AVC (7), the
/// FourCC as a number for the Enhanced RTMP codecs (E-RTMP v2, metadata).
fn video_codec_id(codec: Codec) -> f64 {
    let fourcc: &[u8; 4] = match codec {
        Codec::H264 => return 7.0,
        Codec::H265 => b"hvc1",
        Codec::Av1 => b"av01",
        Codec::Vp9 => b"vp09",
        _ => return 0.0,
    };
    f64::from(u32::from_be_bytes(*fourcc))
}

/// `audiocodecid`: AAC 10, MP3 2, Opus by FourCC.
fn audio_codec_id(codec: Codec) -> f64 {
    match codec {
        Codec::Aac => 10.0,
        Codec::Mp3 => 2.0,
        Codec::Opus => f64::from(u32::from_be_bytes(*b"Opus")),
        _ => 0.0,
    }
}

/// For `cargo fuzz` and corpus replay: a client session fed `data` as the
/// server's bytes (after a valid S0+S1+S2) in uneven pieces. Must never
/// panic.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_client(data: &[u8]) {
    let now = Instant::now();
    let params = ClientParams {
        app: "live".into(),
        tc_url: "rtmp://127.0.0.1:1935/live".into(),
        key: "key".into(),
        setup_timeout: Duration::from_secs(5),
    };
    let mut c = ClientSession::new(params, now, 7);
    let mut hello = vec![RTMP_VERSION];
    hello.extend_from_slice(&[0u8; 2 * PACKET_SIZE]);
    if c.handle_input(now, &hello).is_err() {
        return;
    }
    let mut rest = data;
    let mut step = 1 + data.first().copied().unwrap_or(0) as usize * 13;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        step = step * 7 % 2039 + 1;
        if c.handle_input(now, piece).is_err() {
            return;
        }
        while c.poll_event().is_some() {}
        let _ = c.take_transmit();
    }
}

#[cfg(test)]
mod tests;
