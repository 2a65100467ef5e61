//! A libsrt caller that only connects: the verdict of sluice's SRT
//! listener on one streamid (and passphrase), as libsrt reports it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::process::{require_program, run_to_exit, TempDir};

/// Connect with libsrt (through python3's ctypes) and close: `connected`
/// or `rejected CODE` (libsrt's reject reason: 1401, 1403, 10, ...).
pub fn libsrt_connect(dir: &TempDir, addr: SocketAddr, streamid: &str, passphrase: &str) -> String {
    const SCRIPT: &str = r#"
import ctypes, socket, struct, sys
lib = ctypes.CDLL("libsrt-gnutls.so.1.5")
lib.srt_startup()
lib.srt_setloglevel(2)
port, sid, pw = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
s = lib.srt_create_socket()
lib.srt_setsockflag(s, 46, ctypes.c_char_p(sid), len(sid))
if pw:
    lib.srt_setsockflag(s, 26, ctypes.c_char_p(pw), len(pw))
addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton("127.0.0.1") + bytes(8)
r = lib.srt_connect(s, ctypes.c_char_p(addr), len(addr))
print("connected" if r != -1 else "rejected %d" % lib.srt_getrejectreason(s), flush=True)
lib.srt_close(s)
lib.srt_cleanup()
"#;
    let script = dir.join("srt_connect.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut cmd = Command::new(require_program("python3", "python3"));
    cmd.arg(&script)
        .arg(addr.port().to_string())
        .arg(streamid)
        .arg(passphrase);
    let (_, out, err) = run_to_exit("python3", cmd, Duration::from_secs(20));
    let line = out.lines().last().unwrap_or_default().to_string();
    assert!(
        line == "connected" || line.starts_with("rejected "),
        "libsrt caller printed {out:?}; stderr {err}"
    );
    line
}
