//! Real encoders as children (`ffmpeg`, `gst-launch-1.0`) and the media
//! fixtures they make once per machine and share between test processes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::process::{require_program, ChildGuard};

pub fn require_ffmpeg() -> PathBuf {
    require_program("ffmpeg", "the `ffmpeg` Debian package")
}

/// `ffmpeg -hide_banner -nostdin -y`, ready for more arguments.
fn ffmpeg_command() -> Command {
    let mut cmd = Command::new(require_ffmpeg());
    cmd.args(["-hide_banner", "-nostdin", "-y"]);
    cmd
}

/// Starts `ffmpeg -hide_banner -nostdin -y ARGS` as a guarded child.
pub fn spawn_ffmpeg(args: &[&str]) -> ChildGuard {
    let mut cmd = ffmpeg_command();
    cmd.args(args);
    ChildGuard::spawn("ffmpeg", cmd)
}

/// How much of a fixture [`publish_fixture`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFor {
    /// The whole file, once.
    WholeFile,
    /// Its first `n` seconds (`-t n`).
    Secs(u32),
    /// The file over and over until the publisher is killed
    /// (`-stream_loop -1`).
    Forever,
}

/// The ffmpeg command line that publishes the FLV `fixture` to the RTMP(S)
/// `url` in real time (`-re`), its streams copied as they are: an encoder
/// such as OBS, minus the encoding.
pub fn publish_fixture_command(fixture: &Path, url: &str, length: PublishFor) -> Command {
    let mut cmd = ffmpeg_command();
    cmd.args(["-loglevel", "error", "-re"]);
    if length == PublishFor::Forever {
        cmd.args(["-stream_loop", "-1"]);
    }
    cmd.arg("-i").arg(fixture);
    if let PublishFor::Secs(n) = length {
        cmd.arg("-t").arg(n.to_string());
    }
    cmd.args(["-c", "copy", "-f", "flv", url]);
    cmd
}

/// Starts [`publish_fixture_command`] as a guarded child.
pub fn publish_fixture(fixture: &Path, url: &str, length: PublishFor) -> ChildGuard {
    ChildGuard::spawn("ffmpeg", publish_fixture_command(fixture, url, length))
}

/// The last `frame=N` progress value ffmpeg printed (frames it encoded).
pub fn ffmpeg_frame_count(stderr: &str) -> Option<u64> {
    let text = stderr.replace('\r', "\n");
    let mut last = None;
    let mut rest = text.as_str();
    while let Some(i) = rest.find("frame=") {
        rest = &rest[i + 6..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse() {
            last = Some(n);
        }
    }
    last
}

/// Panics with a message naming the element when a GStreamer element is
/// not installed (so a missing plugin never makes a test pass silently).
pub fn require_gst_element(element: &str, package_hint: &str) {
    let bin = require_program("gst-inspect-1.0", "gstreamer1.0-tools");
    let out = Command::new(bin)
        .arg("--exists")
        .arg(element)
        .output()
        .unwrap_or_else(|e| panic!("cannot run gst-inspect-1.0: {e}"));
    if !out.status.success() {
        panic!("GStreamer element `{element}` is not installed (install {package_hint})");
    }
}

/// Starts `gst-launch-1.0 -q PIPELINE...` (one argv word per pipeline token)
/// as a guarded child.
pub fn spawn_gst_launch(pipeline: &[String]) -> ChildGuard {
    let bin = require_program("gst-launch-1.0", "gstreamer1.0-tools");
    let mut cmd = Command::new(bin);
    cmd.arg("-q").args(pipeline);
    ChildGuard::spawn("gst-launch-1.0", cmd)
}

fn fixture_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("sluice-test-fixtures-v1");
    fs::create_dir_all(&dir).expect("create fixture dir");
    dir
}

/// Makes `name` in the shared fixture directory by running ffmpeg with
/// `args` followed by the output path. Made once per test process (and
/// reused across processes: files appear by atomic rename only).
pub fn ffmpeg_fixture(name: &str, args: &[&str]) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let made = MADE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = made.get(name) {
        return p.clone();
    }
    let path = fixture_dir().join(name);
    if !path.is_file() {
        static N: AtomicU64 = AtomicU64::new(0);
        let tmp = fixture_dir().join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let mut full: Vec<&str> = vec!["-loglevel", "error"];
        full.extend_from_slice(args);
        let tmp_str = tmp.to_str().expect("utf-8 temp path");
        full.push(tmp_str);
        let mut ff = spawn_ffmpeg(&full);
        let status = ff.expect_exit(Duration::from_secs(180));
        if !status.success() {
            let _ = fs::remove_file(&tmp);
            panic!(
                "ffmpeg could not make fixture {name} ({status}); args {full:?}; stderr:\n{}",
                ff.stderr().tail(40)
            );
        }
        fs::rename(&tmp, &path).expect("rename fixture");
    }
    made.insert(name.to_string(), path.clone());
    path
}

/// Splits an ffmpeg argument string on whitespace.
fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// FLV with 640x360 @ 30 fps H.264 (libx264 veryfast, B-frames on, GOP 60)
/// and AAC-LC 48 kHz stereo, `secs` seconds long.
pub fn fixture_avc_aac(secs: u32) -> PathBuf {
    let args = format!(
        "-f lavfi -i testsrc2=size=640x360:rate=30 \
         -f lavfi -i sine=frequency=440:sample_rate=48000 -t {secs} \
         -c:v libx264 -preset veryfast -bf 3 -g 60 -pix_fmt yuv420p \
         -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv"
    );
    ffmpeg_fixture(&format!("avc_aac_640x360_30fps_{secs}s.flv"), &words(&args))
}

/// FLV with AAC-LC 48 kHz stereo only, `secs` seconds long.
pub fn fixture_aac_only(secs: u32) -> PathBuf {
    let args = format!(
        "-f lavfi -i sine=frequency=440:sample_rate=48000 -t {secs} \
         -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv"
    );
    ffmpeg_fixture(&format!("aac_48k_stereo_{secs}s.flv"), &words(&args))
}

/// Raw HEVC (Annex B) 640x360 @ 30 fps from libx265, no B-frames, one
/// slice per picture, GOP 60, `secs` seconds long.
pub fn fixture_hevc_annexb(secs: u32) -> PathBuf {
    let args = format!(
        "-f lavfi -i testsrc2=size=640x360:rate=30 -t {secs} \
         -c:v libx265 -preset ultrafast \
         -x265-params bframes=0:keyint=60:min-keyint=60:scenecut=0:log-level=error \
         -pix_fmt yuv420p -f hevc"
    );
    ffmpeg_fixture(&format!("hevc_640x360_30fps_{secs}s.hevc"), &words(&args))
}
