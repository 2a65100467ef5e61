#!/usr/bin/env python3
"""Record what a real SRT caller sends, as an srt_listener fuzz seed.

Usage: capture_srt.py LISTEN_PORT UPSTREAM_PORT OUT_FILE [SECONDS [CONFIG]]
Point the caller (srt-live-transmit, ffmpeg) at srt://127.0.0.1:LISTEN_PORT;
an SRT listener on UPSTREAM_PORT (srt-live-transmit, sluice) answers it.
Caller-to-listener datagrams are written as fuzz_listener records (see
src/srt/fuzz.rs), stopping after SECONDS (default 2) or before the seed
reaches 19 KB. What the caller echoes from the listener is marked for the
harness to patch: handshakes echo the SYN cookie, packets addressed to the
listener's socket id are re-addressed, and ACK/NAK sequence numbers are
stored relative to the listener's initial sequence number. CONFIG is the
seed's config byte (1: the harness listener has the seeds' passphrase,
sluice-fuzz-passphrase).

The committed captures used srt-live-transmit 1.5.1 as the listener, fed
by FFmpeg, and a caller killed with SIGINT after 1.6 s:
  srt-live-transmit udp://127.0.0.1:47902 "srt://:47900?mode=listener" &
  ffmpeg -re -f lavfi -i testsrc=size=320x240:rate=25 -c:v libx264 \
    -preset ultrafast -b:v 300k -f mpegts "udp://127.0.0.1:47902?pkt_size=1316" &
  capture_srt.py 47901 47900 seeds/srt_listener/NAME.bin &
  timeout -s INT 1.6 srt-live-transmit \
    "srt://127.0.0.1:47901?streamid=#!::r=live/cam1,m=request" file://con >/dev/null
(or ffmpeg -i "srt://127.0.0.1:47901?streamid=..." -f null -; add
&passphrase=sluice-fuzz-passphrase on both sides and CONFIG 1 for the
encrypted ones). The wrong-passphrase capture keeps its first 12 records.
"""
import select
import socket
import struct
import sys
import time

ECHO, TO_PLAYER, RELATIVE = 0x08, 0x10, 0x20
MAX_SEED = 19_000


def u32(d, at):
    return struct.unpack_from(">I", d, at)[0] if len(d) >= at + 4 else None


def record(d, sockid, isn):
    """The ctl byte and datagram of one record."""
    ctl = 0
    d = bytearray(d)
    control = len(d) >= 16 and d[0] & 0x80
    ty = (u32(d, 0) >> 16) & 0x7FFF if control else None
    if ty == 0:
        ctl |= ECHO
    if sockid is not None and u32(d, 12) == sockid:
        ctl |= TO_PLAYER
    if isn is not None and ty in (2, 3):
        ctl |= RELATIVE
        words = [16] if ty == 2 else range(16, len(d) - 3, 4)
        for at in words:
            w = u32(d, at)
            if w is not None:
                rel = (w & 0x80000000) | (((w & 0x7FFFFFFF) - isn) & 0x7FFFFFFF)
                struct.pack_into(">I", d, at, rel)
    return ctl, bytes(d)


def main():
    listen_port, upstream_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    config = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(("127.0.0.1", listen_port))
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back.connect(("127.0.0.1", upstream_port))
    seed = bytearray([config])
    caller = None
    sockid = isn = None
    start = last = None
    full = False
    while start is None or time.monotonic() - start < seconds:
        ready, _, _ = select.select([front, back], [], [], 0.1)
        for s in ready:
            if s is front:
                d, caller = front.recvfrom(65536)
                back.send(d)
                now = time.monotonic()
                start = start or now
                ms = int((now - (last or now)) * 1000)
                last = now
                ctl, d = record(d, sockid, isn)
                dt = ms if ms < 128 else min(255, 127 + ms // 50)
                r = struct.pack(">BBH", ctl, dt, len(d)) + d
                if full or len(seed) + len(r) > MAX_SEED:
                    full = True
                else:
                    seed += r
            else:
                d = back.recv(65536)
                # The listener's Conclusion (shake type -1): its socket id
                # and initial sequence number are what the caller echoes.
                if len(d) >= 48 and u32(d, 0) >> 16 == 0x8000 and u32(d, 36) == 0xFFFFFFFF:
                    isn, sockid = u32(d, 24) & 0x7FFFFFFF, u32(d, 40)
                if caller is not None:
                    front.sendto(d, caller)
    with open(out, "wb") as f:
        f.write(seed)
    print(f"{out}: {len(seed)} bytes{' (truncated)' if full else ''}")


if __name__ == "__main__":
    main()
