#!/usr/bin/env python3
"""Record what a real RTMP encoder sends, for fuzz seeds and benchmarks.

Usage: capture_rtmp.py LISTEN_PORT UPSTREAM_PORT OUT_FILE
Point the encoder at rtmp://127.0.0.1:LISTEN_PORT/...; a running sluice on
UPSTREAM_PORT answers it. Client-to-server bytes (handshake included) go to
OUT_FILE. One connection, then exit.
"""
import socket
import sys
import threading


def pump(src, dst, sink=None):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if sink is not None:
                sink.write(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    listen_port, upstream_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(1)
    client, _ = srv.accept()
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    with open(out, "wb") as sink:
        t = threading.Thread(target=pump, args=(upstream, client))
        t.start()
        pump(client, upstream, sink)
        t.join(timeout=5)


if __name__ == "__main__":
    main()
