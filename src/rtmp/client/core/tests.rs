//! The client core against sluice's own server core (`rtmp::proto::Session`)
//! in memory, on one fake clock, and against hostile server bytes.

use super::*;
use crate::media::{fixtures, Frame};
use crate::rtmp::proto::{Event, Limits, Session};

fn params(key: &str) -> ClientParams {
    ClientParams {
        app: "live".into(),
        tc_url: "rtmp://127.0.0.1:1935/live".into(),
        key: key.into(),
        setup_timeout: Duration::from_secs(5),
    }
}

/// Client and server wired together; `accept` decides the publish.
struct Pair {
    client: ClientSession,
    server: Session,
    now: Instant,
    server_events: Vec<Event>,
    client_events: Vec<ClientEvent>,
}

impl Pair {
    fn new(key: &str) -> Pair {
        let now = Instant::now();
        Pair {
            client: ClientSession::new(params(key), now, 42),
            server: Session::new(Limits::default(), now, 9),
            now,
            server_events: Vec::new(),
            client_events: Vec::new(),
        }
    }

    /// Move bytes both ways until nothing moves (bounded: a livelock fails).
    fn drive(&mut self, publish: &mut dyn FnMut(&mut Session, &str)) -> Result<(), ClientError> {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(b) = self.client.take_transmit() {
                moved = true;
                self.server
                    .handle_input(self.now, &b)
                    .expect("server input");
                while let Some(ev) = self.server.poll_event() {
                    match &ev {
                        Event::Connect { .. } => self.server.accept_connect().unwrap(),
                        Event::Publish { name, .. } => publish(&mut self.server, &name.clone()),
                        _ => {}
                    }
                    self.server_events.push(ev);
                }
            }
            while let Some(b) = self.server.take_transmit() {
                moved = true;
                self.client.handle_input(self.now, &b)?;
                while let Some(ev) = self.client.poll_event() {
                    self.client_events.push(ev);
                }
            }
            if !moved {
                return Ok(());
            }
        }
        panic!("client and server never settle");
    }

    fn live(key: &str) -> Pair {
        let mut p = Pair::new(key);
        p.drive(&mut |s, _| s.accept_publish().unwrap()).unwrap();
        assert_eq!(p.client_events, vec![ClientEvent::Publishing]);
        assert!(p.client.is_live());
        p
    }

    fn media(&self) -> Vec<(bool, u32, Bytes)> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                Event::Media {
                    video,
                    timestamp,
                    payload,
                } => Some((*video, *timestamp, payload.clone())),
                _ => None,
            })
            .collect()
    }
}

fn video(dts: u64, cts: i32, keyframe: bool) -> MediaEvent {
    MediaEvent::Frame(Frame {
        track: Track::Video,
        codec: Codec::H264,
        dts,
        cts,
        keyframe,
        data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
    })
}

fn audio(dts: u64) -> MediaEvent {
    MediaEvent::Frame(Frame {
        track: Track::Audio,
        codec: Codec::Aac,
        dts,
        cts: 0,
        keyframe: true,
        data: Bytes::from_static(&[0x21, 0x10, 0x04]),
    })
}

#[test]
fn publishes_to_the_server_core_with_metadata_configs_and_rebased_frames() {
    let mut p = Pair::live("cam1");
    p.client.set_framerate(Some(30.0));
    let publish = p.server_events.iter().find_map(|e| match e {
        Event::Publish {
            name, publish_type, ..
        } => Some((name.clone(), publish_type.clone())),
        _ => None,
    });
    assert_eq!(publish, Some(("cam1".into(), "live".into())));
    let connect = p.server_events.iter().find_map(|e| match e {
        Event::Connect {
            app,
            tc_url,
            flash_ver,
        } => Some((app.clone(), tc_url.clone(), flash_ver.clone())),
        _ => None,
    });
    assert_eq!(
        connect,
        Some((
            "live".into(),
            Some("rtmp://127.0.0.1:1935/live".into()),
            Some(FLASH_VER.into())
        ))
    );
    // The feed: configs, a keyframe, then frames with B-frame offsets.
    let mut h264 = fixtures::h264_config();
    if let CodecConfig::Video { params, .. } = &mut h264 {
        *params = Some(crate::media::VideoParams {
            width: 640,
            height: 360,
            profile: None,
            level: None,
        });
    }
    for ev in [
        MediaEvent::Config(h264.clone()),
        MediaEvent::Config(fixtures::aac_config()),
        video(10_000, 66, true),
        audio(10_005),
        video(10_033, 100, false),
        video(10_066, -33, false),
    ] {
        p.client.send_media(&ev).unwrap();
    }
    p.drive(&mut |_, _| unreachable!()).unwrap();
    let meta = p.server_events.iter().find_map(|e| match e {
        Event::Metadata(m) => Some(m.clone()),
        _ => None,
    });
    let meta = meta.expect("onMetaData reached the server");
    assert_eq!(
        meta.get("videocodecid").and_then(Amf0Value::as_f64),
        Some(7.0)
    );
    assert_eq!(
        meta.get("audiocodecid").and_then(Amf0Value::as_f64),
        Some(10.0)
    );
    assert_eq!(
        meta.get("framerate").and_then(Amf0Value::as_f64),
        Some(30.0)
    );
    assert_eq!(meta.get("width").and_then(Amf0Value::as_f64), Some(640.0));
    assert_eq!(meta.get("height").and_then(Amf0Value::as_f64), Some(360.0));
    let media = p.media();
    assert_eq!(media.len(), 6, "{media:?}");
    // Sequence headers first, then frames re-based to start at 0.
    assert!(matches!(
        flv::parse_video(media[0].2.clone()),
        Ok(VideoTag::Config(CodecConfig::Video { record, .. })) if record == fixtures::avcc_record()
    ));
    assert!(matches!(
        flv::parse_audio(media[1].2.clone()),
        Ok(AudioTag::Config(CodecConfig::Audio { codec: Codec::Aac, config, .. }))
            if matches!(fixtures::aac_config(), CodecConfig::Audio { config: c, .. } if c == config)
    ));
    let stamps: Vec<u32> = media[2..].iter().map(|m| m.1).collect();
    assert_eq!(stamps, vec![0, 5, 33, 66]);
    let cts: Vec<i32> = media
        .iter()
        .filter(|m| m.0)
        .filter_map(|m| match flv::parse_video(m.2.clone()) {
            Ok(VideoTag::Frame { cts, .. }) => Some(cts),
            _ => None,
        })
        .collect();
    assert_eq!(cts, vec![66, 100, -33]);
    // A repeated config is not sent again.
    p.client.send_media(&MediaEvent::Config(h264)).unwrap();
    assert!(p.client.take_transmit().is_none());
}

#[test]
fn timestamps_past_24_bits_use_the_extended_field() {
    let mut p = Pair::live("k");
    p.client
        .send_media(&MediaEvent::Config(fixtures::h264_config()))
        .unwrap();
    for dts in [0u64, 0xFF_FFFE, 0x100_0000, 0x100_0021] {
        p.client.send_media(&video(dts, 0, dts == 0)).unwrap();
    }
    p.drive(&mut |_, _| unreachable!()).unwrap();
    let stamps: Vec<u32> = p.media()[1..].iter().map(|m| m.1).collect();
    assert_eq!(stamps, vec![0, 0xFF_FFFE, 0x100_0000, 0x100_0021]);
}

#[test]
fn hevc_goes_out_as_enhanced_rtmp() {
    let mut p = Pair::live("k");
    let record = Bytes::from_static(&[1, 2, 3, 4, 5]);
    let config = CodecConfig::Video {
        codec: Codec::H265,
        record: record.clone(),
        params: None,
    };
    p.client.send_media(&MediaEvent::Config(config)).unwrap();
    p.client
        .send_media(&MediaEvent::Frame(Frame {
            track: Track::Video,
            codec: Codec::H265,
            dts: 5,
            cts: 40,
            keyframe: true,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x26]),
        }))
        .unwrap();
    p.drive(&mut |_, _| unreachable!()).unwrap();
    let media = p.media();
    assert_eq!(media[0].2[0] & 0x80, 0x80, "an E-RTMP ex header");
    assert_eq!(&media[0].2[1..5], b"hvc1");
    assert!(matches!(
        flv::parse_video(media[1].2.clone()),
        Ok(VideoTag::Frame {
            codec: Codec::H265,
            keyframe: true,
            cts: 40,
            ..
        })
    ));
}

#[test]
fn a_refused_publish_carries_the_servers_text_without_the_key() {
    let mut p = Pair::new("cam1?key=s3cret");
    let err = p
        .drive(&mut |s, name| {
            s.reject_publish(
                "NetStream.Publish.BadName",
                &format!("publish refused: wrong key for {name}"),
            )
        })
        .unwrap_err();
    assert_eq!(err.reason(), "push_refused");
    let text = err.to_string();
    assert!(
        text.contains("NetStream.Publish.BadName: publish refused: wrong key for"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn a_publish_stopped_later_is_not_a_refusal() {
    let mut p = Pair::live("cam1");
    p.server.stop_publish(
        "NetStream.Publish.BadName",
        "taken over by a newer publisher",
    );
    let out = p.server.take_transmit().unwrap();
    let err = p.client.handle_input(p.now, &out).unwrap_err();
    assert_eq!(err.reason(), "push_stopped");
    assert!(err.to_string().contains("taken over"), "{err}");
}

#[test]
fn pings_are_answered_and_acknowledgements_carry_the_running_total() {
    let now = Instant::now();
    let mut c = ClientSession::new(params("k"), now, 1);
    c.take_transmit().unwrap();
    let mut hello = vec![RTMP_VERSION];
    hello.extend_from_slice(&[0u8; 2 * PACKET_SIZE]);
    c.handle_input(now, &hello).unwrap();
    // C2, then the chunk stream: Set Chunk Size and connect.
    let sent = c.take_transmit().unwrap();
    let mut dec = ChunkDecoder::new(ChunkLimits {
        max_message_size: 1 << 20,
        max_chunk_streams: 16,
    });
    let mut stream = BytesMut::from(&sent[PACKET_SIZE..]);
    let next = |dec: &mut ChunkDecoder, stream: &mut BytesMut| {
        dec.decode(stream).unwrap().expect("a whole message")
    };
    assert_eq!(next(&mut dec, &mut stream).type_id, SET_CHUNK_SIZE);
    assert_eq!(next(&mut dec, &mut stream).type_id, COMMAND_AMF0);
    let mut enc = ChunkEncoder::new();
    let mut out = BytesMut::new();
    enc.write(&mut out, 2, 0, WINDOW_ACK_SIZE, 0, &100u32.to_be_bytes());
    enc.write(&mut out, 2, 0, USER_CONTROL, 0, &[0, 6, 0, 0, 1, 2]);
    c.handle_input(now, &out).unwrap();
    // The ping response echoes the ping's timestamp.
    stream.extend_from_slice(&c.take_transmit().unwrap());
    let m = next(&mut dec, &mut stream);
    assert_eq!(
        (m.type_id, &m.payload[..]),
        (USER_CONTROL, &[0, 7, 0, 0, 1, 2][..])
    );
    // More than 100 bytes later, an ack with the total received.
    let mut out = BytesMut::new();
    enc.write(
        &mut out,
        3,
        0,
        COMMAND_AMF0,
        0,
        &[&[0x02, 0, 4][..], b"ping", &[0x05; 110][..]].concat(),
    );
    let total = c.bytes_in + out.len() as u64;
    c.handle_input(now, &out).unwrap();
    stream.extend_from_slice(&c.take_transmit().unwrap());
    let m = next(&mut dec, &mut stream);
    assert_eq!(m.type_id, ACK);
    let acked = u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
    assert_eq!(u64::from(acked), total);
}

#[test]
fn a_silent_server_times_out_naming_the_step() {
    let now = Instant::now();
    let mut c = ClientSession::new(params("k"), now, 1);
    assert!(c.take_transmit().is_some());
    let at = c.poll_timeout().unwrap();
    assert!(c.handle_timeout(at - Duration::from_millis(1)).is_ok());
    let err = c.handle_timeout(at).unwrap_err();
    assert_eq!(err.reason(), "push_handshake");
    assert!(
        err.to_string().contains("handshake did not finish"),
        "{err}"
    );
}

#[test]
fn a_non_rtmp_answer_is_refused_at_once() {
    let now = Instant::now();
    let mut c = ClientSession::new(params("k"), now, 1);
    let err = c
        .handle_input(now, b"HTTP/1.1 400 Bad Request\r\n")
        .unwrap_err();
    assert!(err.to_string().contains("version 72"), "{err}");
}

#[test]
fn unsupported_media_is_a_clear_error() {
    let mut p = Pair::live("k");
    p.client
        .send_media(&MediaEvent::Config(fixtures::h264_config()))
        .unwrap();
    let err = p
        .client
        .send_media(&MediaEvent::Frame(Frame {
            track: Track::Audio,
            codec: Codec::Other,
            dts: 0,
            cts: 0,
            keyframe: true,
            data: Bytes::from_static(&[1]),
        }))
        .unwrap_err();
    assert_eq!(err.reason(), "push_media");
}

/// Any bytes from the server, split anywhere, after a valid handshake:
/// never a panic, never more held than one bounded message.
#[test]
fn hostile_server_bytes_never_panic() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    // Valid-looking messages with broken payloads.
    let mut enc = ChunkEncoder::new();
    for (t, payload) in [
        (COMMAND_AMF0, vec![0x02, 0x00, 0x07]),
        (COMMAND_AMF0, vec![0x03; 64]),
        (COMMAND_AMF3, vec![]),
        (USER_CONTROL, vec![0]),
        (WINDOW_ACK_SIZE, vec![1]),
        (SET_CHUNK_SIZE, vec![0, 0, 0, 0]),
        (SET_CHUNK_SIZE, vec![0xFF; 4]),
    ] {
        let mut out = BytesMut::new();
        enc.write(&mut out, 3, 0, t, 0, &payload);
        seeds.push(out.to_vec());
    }
    // A createStream answer with a silly id, an onStatus without fields.
    for values in [
        vec![
            Amf0Value::string("_result"),
            Amf0Value::Number(TXN_CREATE_STREAM),
            Amf0Value::Null,
            Amf0Value::Number(f64::NAN),
        ],
        vec![Amf0Value::string("onStatus")],
        vec![
            Amf0Value::string("_error"),
            Amf0Value::Number(TXN_CONNECT),
            Amf0Value::Null,
            Amf0Value::string("x".repeat(5000)),
        ],
    ] {
        let mut body = BytesMut::new();
        amf0::encode_all(&values, &mut body);
        let mut out = BytesMut::new();
        enc.write(&mut out, 3, 0, COMMAND_AMF0, 0, &body);
        seeds.push(out.to_vec());
    }
    // Pseudo-random bytes of every length up to 600.
    let mut x: u32 = 0x1234_5678;
    for len in 0..600 {
        let v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        seeds.push(v);
    }
    for seed in &seeds {
        for split in [1usize, 3, 7, 64, 4096] {
            let now = Instant::now();
            let mut c = ClientSession::new(params("k"), now, 3);
            let mut hello = vec![RTMP_VERSION];
            hello.extend_from_slice(&[0u8; 2 * PACKET_SIZE]);
            c.handle_input(now, &hello).unwrap();
            for piece in seed.chunks(split) {
                if c.handle_input(now, piece).is_err() {
                    break;
                }
                let _ = c.take_transmit();
                assert!(c.inbuf.len() <= MAX_SERVER_MESSAGE as usize + 64);
            }
        }
    }
    // A truncated handshake is only waiting.
    let now = Instant::now();
    let mut c = ClientSession::new(params("k"), now, 3);
    c.handle_input(now, &[RTMP_VERSION; 100]).unwrap();
    assert!(c.poll_timeout().is_some());
}
