//! Real SRT callers and TS checks for the SRT tests: libsrt through
//! Python's ctypes (to read the rejection code libsrt reports), an ffmpeg
//! player recording what it got, and ffprobe/ffmpeg verdicts on a TS file
//! (decode errors, codecs, the first video frame).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::{require_program, run_to_exit, TempDir};

/// Connect with libsrt and report "connected" or the rejection reason
/// libsrt saw (`srt_getrejectreason`), e.g. "rejected 1409". `passphrase`
/// empty: none. The connection is closed at once.
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

/// Play `url` with ffmpeg for `secs` seconds, copying what arrives into
/// the TS file `out`; panics when ffmpeg fails.
pub fn record_srt(url: &str, secs: u32, out: &Path) {
    let mut cmd = Command::new(require_program("ffmpeg", "ffmpeg"));
    cmd.args(["-v", "error", "-y", "-i", url, "-t", &secs.to_string()])
        .args(["-map", "0", "-c", "copy", "-f", "mpegts"])
        .arg(out);
    let (status, _, err) = run_to_exit("ffmpeg", cmd, Duration::from_secs(u64::from(secs) + 30));
    assert!(status.success(), "ffmpeg playing {url} failed: {err}");
}

/// What decoding `ts` whole prints at level error: empty when clean.
/// Decoded frames go out variable-rate (`-fps_mode vfr`, as to any real
/// muxer): `-f null`'s timestamp passthrough would log "non monotonically
/// increasing dts" for the frames a `join = "live"` start squeezed into
/// one frame interval, which are decoded all the same.
pub fn decode_errors(ts: &Path) -> String {
    let mut cmd = Command::new(require_program("ffmpeg", "ffmpeg"));
    cmd.args(["-v", "error", "-i"])
        .arg(ts)
        .args(["-fps_mode", "vfr", "-f", "null", "-"]);
    let (status, out, err) = run_to_exit("ffmpeg", cmd, Duration::from_secs(60));
    assert!(status.success(), "ffmpeg could not decode {ts:?}: {err}");
    format!("{out}{err}")
}

/// The codec of every stream of `ts`, in order (ffprobe).
pub fn ts_codecs(ts: &Path) -> Vec<String> {
    let out = ffprobe(ts, &["-show_entries", "stream=codec_name", "-of", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["codec_name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The picture types of the first `n` video frames of `ts` in decode
/// order ("I", "P", "B"), each with its key-frame flag.
pub fn video_frames(ts: &Path, n: usize) -> Vec<(bool, String)> {
    let out = ffprobe(
        ts,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame,pict_type",
            "-of",
            "csv=p=0",
        ],
    );
    out.lines()
        .filter_map(|l| {
            let (key, ty) = l.trim().split_once(',')?;
            Some((key == "1", ty.trim_end_matches(',').to_string()))
        })
        .take(n)
        .collect()
}

fn ffprobe(ts: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(require_program("ffprobe", "ffmpeg"));
    cmd.args(["-v", "error"]).args(args).arg(ts);
    let (status, out, err) = run_to_exit("ffprobe", cmd, Duration::from_secs(60));
    assert!(status.success(), "ffprobe {ts:?} failed: {err}");
    out
}
