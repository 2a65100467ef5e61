#!/usr/bin/env python3
"""Write the seeds of the ts_demux, ts_ingest, srt_streamid, srt_listener targets, the
srt_guard seeds of the issue 12 attacks and the hand-made (attack) seeds of
rtmp_session.

Usage: make_seeds.py [ts_demux|ts_ingest|srt_streamid|srt_listener|srt_guard|rtmp_session ...]
(default: all)
ts_demux and ts_ingest need ffmpeg (5.1 made the committed files). srt_listener seeds
here are built by hand from the wire format; capture_srt.py records real
callers. Output is deterministic except for what ffmpeg embeds.
"""
import os
import random
import struct
import subprocess
import sys
import tempfile

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
LIMIT = 20_000


def write(target, name, data):
    assert len(data) < LIMIT, f"{target}/{name} is {len(data)} bytes"
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print(f"{target}/{name}: {len(data)} bytes")


# ---------------------------------------------------------------- ts_demux
# The first byte of a seed seeds the splits (fuzz_demux); the rest is TS.

LAVFI_V = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"]
LAVFI_A = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]


def ffmpeg_ts(args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.ts")
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args, "-f", "mpegts", out],
            check=True,
        )
        with open(out, "rb") as f:
            return f.read()


def ts_demux():
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-b:v", "120k", "-g", "5",
            "-x264-params", "log-level=none"]
    aac = ["-c:a", "aac", "-b:a", "32k"]
    h264_aac = ffmpeg_ts([*LAVFI_V, *LAVFI_A, "-t", "0.3", *x264, *aac])
    write("ts_demux", "ffmpeg5.1-x264-320x240-aac.bin", b"\x01" + h264_aac)
    write("ts_demux", "ffmpeg5.1-x265-320x240.bin", b"\x02" + ffmpeg_ts(
        [*LAVFI_V, "-t", "0.3", "-c:v", "libx265", "-preset", "ultrafast", "-b:v", "150k",
         "-x265-params", "log-level=none:keyint=5"]))
    # Two programs (two PMTs), MP2 audio, PAT/PMT before every keyframe.
    write("ts_demux", "ffmpeg5.1-two-programs-x264-mp2.bin", b"\x03" + ffmpeg_ts(
        [*LAVFI_V, *LAVFI_A, "-t", "0.3", "-map", "0:v", "-map", "1:a", *x264,
         "-c:a", "mp2", "-b:a", "64k", "-program", "program_num=1:st=0",
         "-program", "program_num=2:st=1", "-mpegts_flags", "+resend_headers"]))
    write("ts_demux", "ffmpeg5.1-aac-only-latm.bin", b"\x04" + ffmpeg_ts(
        [*LAVFI_A, "-t", "0.5", *aac, "-mpegts_flags", "+latm"]))
    rng = random.Random(5)
    # Damage a copy of the H.264 stream: garbage between packets, a lost
    # packet (continuity error), flipped bytes, a cut packet at the end.
    ts = bytearray(h264_aac[: 188 * 60])
    del ts[188 * 20 : 188 * 21]
    ts[188 * 10 : 188 * 10] = bytes([0x47, 1, 2, 3]) + bytes(rng.randrange(256) for _ in range(97))
    for _ in range(8):
        ts[rng.randrange(len(ts))] = rng.randrange(256)
    write("ts_demux", "damaged-x264-aac.bin", b"\x05" + bytes(ts[:-100]))
    noise = bytes(rng.randrange(256) for _ in range(2000))
    write("ts_demux", "noise.bin", b"\x06" + noise)
    sync = bytearray(rng.randrange(256) for _ in range(188 * 10))
    for i in range(0, len(sync), 188):
        sync[i] = 0x47
    write("ts_demux", "sync-bytes-and-noise.bin", b"\x07" + bytes(sync))


# ---------------------------------------------------------------- ts_ingest
# The first byte seeds the splits and, with its top bit, transport gaps
# (fuzz_ingest); the rest is TS as a publisher sends it.

def ts_ingest():
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-b:v", "100k", "-g", "4", "-bf", "2",
            "-x264-params", "log-level=none"]
    aac = ["-c:a", "aac", "-b:a", "32k"]
    h264_aac = ffmpeg_ts([*LAVFI_V, *LAVFI_A, "-t", "0.3", *x264, *aac])
    write("ts_ingest", "ffmpeg5.1-x264-bframes-aac.bin", b"\x01" + h264_aac)
    # Timestamps crossing 2^33 (95443.7 s).
    write("ts_ingest", "ffmpeg5.1-x264-aac-33-bit-wrap.bin", b"\x02" + ffmpeg_ts(
        [*LAVFI_V, *LAVFI_A, "-t", "0.3", *x264, *aac, "-output_ts_offset", "95443.6"]))
    write("ts_ingest", "ffmpeg5.1-x265-bframes.bin", b"\x03" + ffmpeg_ts(
        [*LAVFI_V, "-t", "0.3", "-c:v", "libx265", "-preset", "ultrafast", "-b:v", "150k",
         "-x265-params", "log-level=none:keyint=4:bframes=2"]))
    write("ts_ingest", "ffmpeg5.1-aac-only.bin", b"\x04" + ffmpeg_ts(
        [*LAVFI_A, "-t", "0.5", *aac]))
    # Whole 1316-byte SRT payloads lost; the top bit of the first byte
    # makes the fuzz entry report gaps too.
    ts = bytearray(h264_aac)
    del ts[1316 * 3 : 1316 * 4]
    del ts[1316 * 6 : 1316 * 8]
    write("ts_ingest", "lost-srt-payloads-x264-aac.bin", b"\x85" + bytes(ts))


# ---------------------------------------------------------------- srt_streamid

def srt_streamid():
    forms = {
        "access-control.bin": "#!::r=live/cam1,m=request",
        "access-control-reversed.bin": "#!::m=request,r=live/cam1",
        "access-control-percent.bin": "%23%21%3A%3Ar%3Dlive%2Fcam1%2Cm%3Drequest",
        "access-control-auth-keys.bin":
            "#!::r=live/cam1/720p,m=request,u=alice,s=abc123,h=example.com,t=stream",
        "access-control-publish.bin": "#!::r=live/cam1,m=publish",
        "access-control-bad-mode.bin": "#!::r=live/cam1,m=bidirectional",
        "access-control-no-resource.bin": "#!::m=request",
        "access-control-key-without-value.bin": "#!::r",
        "short.bin": "live/cam1",
        "short-read-rendition.bin": "read:live/cam1/480p",
        "short-publish.bin": "publish:live/cam1",
        "path-too-deep.bin": "live/a/b/c",
        "path-dot-dot.bin": "live/../x",
        "percent-bad-escape.bin": "%zz",
        "percent-bad-utf8.bin": "%C3%28",
        "percent-double.bin": "#!::r=live/cam1,u=%2525,s=a%3Db",
        # Issue 12: secrets in every encoding must stay out of logs.
        "secret-fully-encoded.bin":
            "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cu%3Dalice%2Cs%3DTOKEN",
        "secret-half-encoded.bin": "#!::r=club/cam2,u=alice,s%3DTOKEN",
        "secret-user-token-encoded.bin":
            "%23%21%3A%3Au%3Dalice%2Cuser_token%3DTOKEN%2Cr%3Dclub%2Fcam2",
        "secret-malformed.bin": "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cs%3DTOKEN%2Cbroken",
        "secret-invented-key.bin": "#!::r=club/cam2,u=bob,key=TOKEN,passphrase=TOKEN",
        "secret-bad-mode.bin": "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cm%3DTOKEN%2Cs%3DTOKEN",
        "secret-in-resource.bin": "#!::r=club/cam2?s=TOKEN,u=alice",
        "secret-tab-in-user.bin": "#!::r=club/cam2,u=al%09ice,s=TOKEN",
        "default-app-name.bin": "#!::r=*/cam1,m=request",
        # A user name that would forge a log line if printed raw.
        "control-chars-in-user.bin":
            "#!::r=club/cam2,u=m%0A2027-01-01T00:00:00Z  INFO forged%0D%1B%5B2K%C2%85%E2%80%A8%00%7F,s=x",
        "control-chars-raw-in-user.bin": "#!::r=club/cam2,u=m\n\r\x1b[31mforged\x07,s=x",
    }
    for name, s in forms.items():
        write("srt_streamid", name, s.encode())
    write("srt_streamid", "too-long-513.bin", b"a" * 513)
    write("srt_streamid", "longest-512.bin", b"#!::r=live/cam1,u=" + b"x" * (512 - 18))
    write("srt_streamid", "invalid-utf8.bin", b"#!::r=live/cam\xff\xfe1,m=request")
    write("srt_streamid", "empty.bin", b"")


# ---------------------------------------------------------------- srt_listener
# Records for fuzz_listener (src/srt/fuzz.rs): a config byte, then
# ctl, dt, u16 length, datagram. ctl bits: 0-2 caller, 3 echo the cookie,
# 4 address the listener's socket id, 5 ACK/NAK numbers relative to its ISN;
# ctl 0xC0 is an event.

ECHO, TO_PLAYER, RELATIVE, EVENT = 0x08, 0x10, 0x20, 0xC0


def rec(ctl, dt_ms, data):
    dt = dt_ms if dt_ms < 128 else min(255, 127 + dt_ms // 50)
    return struct.pack(">BBH", ctl, dt, len(data)) + data


def event(dt_ms, what, body=b""):
    return rec(EVENT, dt_ms, bytes([what]) + body)


def ctrl(ty, add=0, sockid=0, body=b"", subtype=0):
    return struct.pack(">HHIII", 0x8000 | ty, subtype, add, 0, sockid) + body


def sid_words(sid):
    b = sid.encode()
    b += b"\0" * (-len(b) % 4)
    # SRT sends the streamid in 32-bit words with the bytes of each word reversed.
    return b"".join(b[i : i + 4][::-1] for i in range(0, len(b), 4))


def hs(version, shake, sockid=77, cookie=0, sid=None, flags=None, ext=True, mss=1500,
       hsreq_flags=0xBF, km=None, extra=b""):
    """A handshake datagram, as the listener test builds it."""
    if flags is None:
        flags = 2 if version == 4 else 5 if sid is not None or km else 1
    b = struct.pack(">iHHIIIiIi", version, 0, flags, 12345, mss, 8192, shake, sockid, cookie)
    b += bytes([1, 0, 0, 127]) + bytes(12)
    if version == 5 and ext:
        b += struct.pack(">HHIII", 1, 3, 0x00010501, hsreq_flags, 0x001E03E8)
        if km is not None:
            b += struct.pack(">HH", 3, len(km) // 4) + km
        if sid is not None:
            w = sid_words(sid)
            b += struct.pack(">HH", 5, len(w) // 4) + w
        b += extra
    return ctrl(0, body=b)


def connect(caller, sid, dt=0, sockid=77):
    """Induction, then Conclusion echoing the listener's cookie."""
    return rec(caller, dt, hs(4, 1, sockid)) + rec(caller | ECHO, 1, hs(5, -1, sockid, sid=sid))


def ack(ackno, last, rtt=10_000):
    body = struct.pack(">IIIIIII", last, rtt, 2500, 8192, 1000, 10_000_000, 1000)
    return ctrl(2, ackno, body=body)


def player_traffic(caller, packets=10, rounds=20):
    """What a caller's receiver sends while being fed: ACKs every 10 ms,
    ACK2-free, a NAK of the first two packets, keepalives."""
    out = b""
    to = caller | TO_PLAYER | RELATIVE
    for i in range(rounds):
        out += rec(to, 10, ack(i + 1, min(packets, i + 1)))
        if i == 3:
            out += rec(to, 1, ctrl(3, body=struct.pack(">II", 0x80000000 | 0, 1)))
        if i % 5 == 4:
            out += rec(caller | TO_PLAYER, 2, ctrl(1))
    return out


def srt_listener():
    sid = "#!::r=live/cam1,m=request"
    write("srt_listener", "accept-play-then-publisher-leaves.bin", b"\x00"
          + connect(0, sid) + player_traffic(0) + event(5, 0) + rec(TO_PLAYER, 200, ctrl(1)))
    write("srt_listener", "accept-720p-short-form-then-shutdown.bin", b"\x00"
          + connect(1, "live/cam1/720p") + player_traffic(1, 3, 10) + event(3, 1)
          + rec(1 | TO_PLAYER, 20, ack(30, 3)))
    write("srt_listener", "player-closes-with-shutdown.bin", b"\x00"
          + connect(2, sid) + player_traffic(2, 10, 5) + rec(2 | TO_PLAYER, 5, ctrl(5)))
    write("srt_listener", "conclusion-retransmitted.bin", b"\x00"
          + connect(0, sid) + rec(ECHO, 50, hs(5, -1, 77, sid=sid)) + player_traffic(0, 10, 3))
    write("srt_listener", "same-address-reconnects-new-socket.bin", b"\x00"
          + connect(0, sid) + player_traffic(0, 10, 3) + connect(0, sid, dt=100, sockid=99)
          + player_traffic(0, 10, 3))
    congestion = struct.pack(">HH", 6, 1) + sid_words("flow")
    write("srt_listener", "rejections-codes-mss-congestion-v4.bin", b"\x00"
          + connect(0, "live/nobody") + connect(1, "#!::r=live/cam1,m=publish")
          + connect(2, "#!::r=live/cam1/1080p") + connect(3, "live/../x")
          + rec(4, 1, hs(4, 1)) + rec(4 | ECHO, 1, hs(4, -1))
          + rec(5, 1, hs(4, 1)) + rec(5 | ECHO, 1, hs(5, -1, sid=sid, mss=64))
          + rec(6, 1, hs(4, 1)) + rec(6 | ECHO, 1, hs(5, -1, sid=sid, flags=5, extra=congestion)))
    write("srt_listener", "guessed-cookie-and-strangers.bin", b"\x00"
          + rec(0, 0, hs(5, -1, cookie=12345, sid=sid)) + rec(1, 0, ctrl(2, 1, 1234, b"\0" * 28))
          + rec(2, 0, ctrl(1, sockid=5)) + rec(3, 0, b"\x00" * 16) + rec(4, 0, b""))
    write("srt_listener", "max-players-1-second-caller-1402.bin", b"\x02"
          + connect(0, sid) + connect(6, sid, dt=5) + player_traffic(0, 10, 3))
    write("srt_listener", "ipv6-callers.bin", b"\x00"
          + connect(6, sid) + player_traffic(6, 10, 4) + connect(7, "live/cam1/720p")
          + player_traffic(7, 3, 4))
    write("srt_listener", "draining-1503.bin", b"\x04" + connect(0, sid))
    write("srt_listener", "passphrase-set-caller-without-km.bin", b"\x01" + connect(0, sid))
    # Live chunks arrive while a player is connected; it falls behind; the
    # stream restarts; a ring notification.
    chunks = b"".join(event(2, 2, bytes([i & 1]) + b"\x47" * 1315) for i in range(8))
    write("srt_listener", "live-chunks-stream-restarts.bin", b"\x00"
          + connect(3, sid) + chunks + event(1, 3) + player_traffic(3, 18, 6)
          + event(5, 0) + event(5, 4) + event(1, 5) + connect(3, sid, dt=10, sockid=1234)
          + player_traffic(3, 10, 3))
    write("srt_listener", "player-goes-silent-times-out.bin", b"\x00"
          + connect(0, sid) + rec(TO_PLAYER, 255, ctrl(1)) + event(255, 5) + event(255, 5))
    # Issue 12 attacks. Only `live` configured: another application is
    # unknown (1404), `live` plays. With [apps."*"] tokens: the named
    # application stays open, the others need alice's token.
    write("srt_listener", "unknown-app-1404-configured-app-plays.bin", b"\x08"
          + connect(0, "#!::r=other/cam1,m=request") + connect(1, "Live/cam1")
          + connect(2, sid) + player_traffic(2, 10, 3))
    write("srt_listener", "default-app-tokens.bin", b"\x18"
          + connect(0, "other/cam1") + connect(1, "#!::r=other/cam1,u=alice,s=fuzz-alice-token")
          + connect(2, sid) + player_traffic(2, 10, 3))
    # One cookie, then Conclusions with new socket ids, all at once: only
    # the per-IP budget (20 per second) is answered; a second later, more.
    flood = b"".join(rec(0 | ECHO, 0, hs(5, -1, 1000 + i, sid="live/nobody")) for i in range(60))
    later = b"".join(rec(0 | ECHO, 0, hs(5, -1, 2000 + i, sid="live/nobody")) for i in range(5))
    write("srt_listener", "conclusion-flood-one-cookie.bin", b"\x00"
          + rec(0, 0, hs(4, 1)) + flood + rec(0 | ECHO, 1000, hs(5, -1, 1999, sid="live/nobody"))
          + later + connect(1, sid) + player_traffic(1, 10, 3))
    # A socket id first used for a refused stream, then for a live one; and
    # an accepted player's socket id reused for another rendition.
    write("srt_listener", "socket-id-reused-for-another-stream.bin", b"\x00"
          + connect(1, "live/secret", sockid=5) + rec(1 | ECHO, 5, hs(5, -1, 5, sid=sid))
          + connect(0, sid) + rec(ECHO, 5, hs(5, -1, 77, sid="live/cam1/720p"))
          + player_traffic(0, 10, 3))
    write("srt_listener", "percent-encoded-token-streamids.bin", b"\x00"
          + connect(0, "%23%21%3A%3Ar%3Dlive%2Fcam1%2Cu%3Dalice%2Cs%3DTOKEN")
          + connect(1, "%23%21%3A%3Ar%3Dlive%2Fcam1%2Cs%3DTOKEN%2Cbroken")
          + connect(2, "#!::r=live/cam1,m=TOKEN") + player_traffic(0, 10, 3))


# ---------------------------------------------------------------- srt_guard
# Raw datagrams (fuzz_check). Only the issue 12 attacks are written here.

def srt_guard():
    write("srt_guard", "conclusion-percent-encoded-token.bin",
          hs(5, -1, 4242, cookie=0x1234,
             sid="%23%21%3A%3Ar%3Dclub%2Fcam2%2Cu%3Dalice%2Cs%3DTOKEN"))
    write("srt_guard", "conclusion-reused-socket-id.bin",
          hs(5, -1, 0x0BAD5EED, cookie=0x1234, sid="club/secret"))
    write("srt_guard", "conclusion-default-app-name.bin",
          hs(5, -1, 7, cookie=0x1234, sid="#!::r=*/cam1,m=request"))



# ---------------------------------------------------------------- rtmp_session
# What fuzz_session feeds after its own handshake: a chunk stream. The real
# encoders' seeds come from capture_rtmp.py; these are the floods of issue
# 12 (tiny, audio and empty messages with frozen timestamps), built by hand.

def amf_str(v):
    b = v.encode()
    return b"\x02" + struct.pack(">H", len(b)) + b


def amf_num(n):
    return b"\x00" + struct.pack(">d", n)


def amf_obj(pairs):
    out = b"\x03"
    for k, v in pairs:
        out += struct.pack(">H", len(k)) + k.encode() + v
    return out + b"\x00\x00\x09"


def rtmp_msg(csid, type_id, stream_id, ts, payload, chunk=128):
    """Type 0 header, then type 3 continuation chunks (csid < 64)."""
    out = bytes([csid]) + ts.to_bytes(3, "big") + len(payload).to_bytes(3, "big")
    out += bytes([type_id]) + struct.pack("<I", stream_id)
    out += payload[:chunk]
    for i in range(chunk, len(payload), chunk):
        out += bytes([0xC0 | csid]) + payload[i:i + chunk]
    return out


def rtmp_publish(key):
    """Set Chunk Size 4096, connect, createStream, publish on stream 1."""
    cmd = lambda *v: b"".join(v)
    return (rtmp_msg(2, 1, 0, 0, struct.pack(">I", 4096))
            + rtmp_msg(3, 20, 0, 0, cmd(amf_str("connect"), amf_num(1),
                                        amf_obj([("app", amf_str("live"))])), 4096)
            + rtmp_msg(3, 20, 0, 0, cmd(amf_str("createStream"), amf_num(2), b"\x05"), 4096)
            + rtmp_msg(8, 20, 1, 0, cmd(amf_str("publish"), amf_num(3), b"\x05",
                                        amf_str(key), amf_str("live")), 4096))


def frozen_flood(type_id, payload, n, ts=40):
    """n messages on csid 7 at one timestamp: type 0, type 2 (delta 0),
    then one-byte type 3 headers."""
    out = rtmp_msg(7, type_id, 1, ts, payload, 4096)
    out += bytes([0x80 | 7]) + b"\x00\x00\x00" + payload
    return out + (bytes([0xC0 | 7]) + payload) * (n - 2)


def rtmp_session():
    avc_inter = bytes([0x27, 1, 0, 0, 0, 0, 0, 0, 2, 0x41, 0x9A])
    head = rtmp_publish("flood")
    write("rtmp_session", "flood-tiny-video-frozen-timestamps.bin",
          head + frozen_flood(9, avc_inter, 1400))
    write("rtmp_session", "flood-tiny-audio-frozen-timestamps.bin",
          head + frozen_flood(8, bytes([0xAF, 1, 0x21]), 4000))
    # More than rtmp.max_messages_per_second (5000) at one instant: the
    # session stops the publish with message_rate.
    write("rtmp_session", "flood-zero-length-video-over-message-rate.bin",
          head + frozen_flood(9, b"", 6000))
    # One aggregate of 1000 empty audio tags (each counts as a message).
    agg = b"".join(bytes([8]) + b"\x00" * 10 + struct.pack(">I", 11) for _ in range(1000))
    write("rtmp_session", "aggregate-of-1000-empty-tags.bin",
          head + rtmp_msg(7, 22, 1, 40, agg, 4096))


TARGETS = {"ts_demux": ts_demux, "ts_ingest": ts_ingest, "srt_streamid": srt_streamid, "srt_listener": srt_listener,
           "srt_guard": srt_guard, "rtmp_session": rtmp_session}

if __name__ == "__main__":
    for t in sys.argv[1:] or TARGETS:
        TARGETS[t]()
