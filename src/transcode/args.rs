//! The FFmpeg command line for one stream's renditions: a pure function of
//! the renditions, the encoder chosen for each and what we know about the
//! source, so every flag is pinned by golden tests. FLV in on stdin, one
//! decode, each rendition out as MPEG-TS on its own pipe; docs/transcode.md
//! says why each choice was made.

use super::config::{AudioMode, RenditionSpec, VideoCodec};

/// The encoder of one rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// `h264_nvenc` / `hevc_nvenc`.
    Nvenc,
    /// `libx264` / `libx265`.
    Software,
}

impl Encoder {
    /// The name the API, logs and metrics use: `nvenc`, `x264` or `x265`.
    pub fn label(self, codec: VideoCodec) -> &'static str {
        match (self, codec) {
            (Encoder::Nvenc, _) => "nvenc",
            (Encoder::Software, VideoCodec::H264) => "x264",
            (Encoder::Software, VideoCodec::Hevc) => "x265",
        }
    }

    fn ffmpeg_name(self, codec: VideoCodec) -> &'static str {
        match (self, codec) {
            (Encoder::Nvenc, VideoCodec::H264) => "h264_nvenc",
            (Encoder::Nvenc, VideoCodec::Hevc) => "hevc_nvenc",
            (Encoder::Software, VideoCodec::H264) => "libx264",
            (Encoder::Software, VideoCodec::Hevc) => "libx265",
        }
    }
}

/// Where decoding and scaling happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HwDecode {
    /// CPU decode and `scale`.
    #[default]
    None,
    /// NVDEC decode, frames copied to system memory, CPU `scale`.
    Cuda,
    /// NVDEC decode and `scale_cuda`; frames stay on the GPU for NVENC.
    CudaScale,
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub renditions: &'a [RenditionSpec],
    /// One per rendition, same order.
    pub encoders: &'a [Encoder],
    pub hwdec: HwDecode,
    /// The publisher's frame rate, when known (caps `max_fps` and sizes `-g`).
    pub source_fps: Option<f64>,
    /// The input carries AAC audio.
    pub has_audio: bool,
    /// libx264/libx265 preset.
    pub preset: &'a str,
    /// File descriptor of the first rendition's output pipe (3).
    pub first_fd: i32,
}

/// Frame rate assumed for `-g` when neither the source nor the rendition says.
const DEFAULT_FPS: f64 = 30.0;

/// The arguments after the program name.
pub fn ffmpeg_args(job: &Job) -> Vec<String> {
    let mut a: Vec<String> = Vec::with_capacity(64 + 48 * job.renditions.len());
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "repeat+level+warning",
        "-nostats",
        "-progress",
        "pipe:1",
        "-stats_period",
        "1",
        "-copyts",
    ]);
    match job.hwdec {
        HwDecode::None => {}
        HwDecode::Cuda => push(&["-hwaccel", "cuda"]),
        HwDecode::CudaScale => push(&["-hwaccel", "cuda", "-hwaccel_output_format", "cuda"]),
    }
    push(&[
        "-probesize",
        "32",
        "-analyzeduration",
        "0",
        "-f",
        "flv",
        "-i",
        "pipe:0",
        "-filter_complex",
    ]);
    a.push(filter_graph(job));
    for (i, r) in job.renditions.iter().enumerate() {
        let encoder = job.encoders.get(i).copied().unwrap_or(Encoder::Software);
        output_args(&mut a, job, i, r, encoder);
    }
    a
}

/// `[0:v]split=N[s0][s1]...;[s0]scale=...[v0];...` (no split for one).
fn filter_graph(job: &Job) -> String {
    let n = job.renditions.len();
    let mut g = String::new();
    if n == 1 {
        g.push_str("[0:v]");
    } else {
        g.push_str(&format!("[0:v]split={n}"));
        for i in 0..n {
            g.push_str(&format!("[s{i}]"));
        }
        g.push(';');
    }
    for (i, r) in job.renditions.iter().enumerate() {
        if n > 1 {
            g.push_str(&format!("[s{i}]"));
        }
        let encoder = job.encoders.get(i).copied().unwrap_or(Encoder::Software);
        let (w, h) = (dim(r.width), dim(r.height));
        let mut chain = Vec::new();
        if job.hwdec == HwDecode::CudaScale {
            chain.push(format!("scale_cuda={w}:{h}"));
            if encoder == Encoder::Software {
                // The software encoders need the frames in system memory.
                chain.push("hwdownload".into());
                chain.push("format=nv12".into());
            }
        } else {
            chain.push(format!("scale={w}:{h}"));
            // 8-bit 4:2:0 plays everywhere, whatever the source was.
            chain.push("format=yuv420p".into());
        }
        if let Some(fps) = capped_fps(job.source_fps, r.max_fps) {
            chain.push(format!("fps={fps}"));
        }
        g.push_str(&chain.join(","));
        g.push_str(&format!("[v{i}]"));
        if i + 1 < n {
            g.push(';');
        }
    }
    g
}

/// A configured size, or -2: follow the aspect ratio, rounded to even.
fn dim(v: Option<u32>) -> i64 {
    v.map(i64::from).unwrap_or(-2)
}

/// The `fps` filter rate, only when the source is faster than the cap (the
/// filter would otherwise duplicate frames of a slower source).
fn capped_fps(source: Option<f64>, max: Option<u32>) -> Option<u32> {
    let max = max?;
    match source {
        Some(s) if s > f64::from(max) + 0.01 => Some(max),
        _ => None,
    }
}

/// Output frame rate used to size the GOP in frames.
fn output_fps(source: Option<f64>, max: Option<u32>) -> f64 {
    let s = source.filter(|f| f.is_finite() && *f > 0.0);
    match (s, max) {
        (Some(s), Some(m)) => s.min(f64::from(m)),
        (Some(s), None) => s,
        (None, Some(m)) => f64::from(m),
        (None, None) => DEFAULT_FPS,
    }
}

fn output_args(a: &mut Vec<String>, job: &Job, i: usize, r: &RenditionSpec, encoder: Encoder) {
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let gop_secs = r.gop.as_secs_f64();
    let gop_frames = ((output_fps(job.source_fps, r.max_fps) * gop_secs).round() as u64).max(1);
    let gop_frames = gop_frames.to_string();
    let kbps = r.video_bitrate_kbps;
    let rate = format!("{kbps}k");
    // One GOP's worth of VBV: tight enough for live, loose enough for IDRs.
    let bufsize = format!("{}k", (f64::from(kbps) * gop_secs.min(2.0)).round() as u64);
    let vmap = format!("[v{i}]");
    push(&["-map", &vmap]);
    let with_audio = job.has_audio && r.audio != AudioMode::Off;
    if with_audio {
        push(&["-map", "0:a?"]);
    }
    push(&["-c:v", encoder.ffmpeg_name(r.codec)]);
    match (encoder, r.codec) {
        (Encoder::Software, VideoCodec::H264) => {
            push(&[
                "-preset",
                job.preset,
                "-tune",
                "zerolatency",
                "-profile:v",
                "high",
                "-bf",
                "0",
                "-g",
                &gop_frames,
                "-keyint_min",
                &gop_frames,
                "-sc_threshold",
                "0",
            ]);
        }
        (Encoder::Software, VideoCodec::Hevc) => {
            let params = format!(
                "bframes=0:keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0:repeat-headers=1:log-level=warning"
            );
            push(&[
                "-preset",
                job.preset,
                "-tune",
                "zerolatency",
                "-x265-params",
                &params,
            ]);
        }
        (Encoder::Nvenc, _) => {
            push(&[
                "-preset",
                "p1",
                "-tune",
                "ull",
                "-zerolatency",
                "1",
                "-delay",
                "0",
                "-rc",
                "cbr",
                "-bf",
                "0",
                "-g",
                &gop_frames,
                "-forced-idr",
                "1",
                "-no-scenecut",
                "1",
            ]);
        }
    }
    let force = format!("expr:eq(n,0)+gte(t-prev_forced_t,{})", fmt_secs(gop_secs));
    push(&[
        "-b:v",
        &rate,
        "-maxrate",
        &rate,
        "-bufsize",
        &bufsize,
        "-force_key_frames",
        &force,
        "-fps_mode",
        "passthrough",
    ]);
    match r.audio {
        _ if !with_audio => push(&["-an"]),
        AudioMode::Copy => push(&["-c:a", "copy"]),
        AudioMode::Aac { bitrate_kbps } => {
            let b = format!("{bitrate_kbps}k");
            push(&["-c:a", "aac", "-b:a", &b]);
        }
        AudioMode::Off => push(&["-an"]),
    }
    let out = format!("pipe:{}", job.first_fd + i as i32);
    push(&["-flush_packets", "1", "-f", "mpegts", &out]);
}

/// Seconds without a trailing ".0" ("2", "0.5").
fn fmt_secs(s: f64) -> String {
    let t = format!("{s:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The output size FFmpeg's `scale` picks for a rendition, given the source
/// size: a missing side follows the aspect ratio, rounded to even (`-2`).
pub fn output_size(r: &RenditionSpec, source: Option<(u32, u32)>) -> Option<(u32, u32)> {
    match (r.width, r.height) {
        (Some(w), Some(h)) => Some((w, h)),
        (Some(w), None) => {
            let (sw, sh) = source?;
            Some((w, even_rescale(w, sh, sw)?))
        }
        (None, Some(h)) => {
            let (sw, sh) = source?;
            Some((even_rescale(h, sw, sh)?, h))
        }
        (None, None) => source,
    }
}

/// `round(v * num / (den * 2)) * 2`, as libavfilter's scale_eval does for -2.
fn even_rescale(v: u32, num: u32, den: u32) -> Option<u32> {
    if den == 0 {
        return None;
    }
    let x = (u64::from(v) * u64::from(num) + u64::from(den)) / (2 * u64::from(den));
    u32::try_from(x * 2).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(name: &str, h: u32, kbps: u32, codec: VideoCodec, audio: AudioMode) -> RenditionSpec {
        RenditionSpec {
            name: name.into(),
            width: None,
            height: Some(h),
            video_bitrate_kbps: kbps,
            max_fps: Some(30),
            codec,
            gop: Duration::from_secs(2),
            audio,
        }
    }

    fn three(codec: VideoCodec) -> Vec<RenditionSpec> {
        vec![
            spec("1080p", 1080, 5000, codec, AudioMode::Copy),
            spec("720p", 720, 2800, codec, AudioMode::Copy),
            spec(
                "480p",
                480,
                1200,
                codec,
                AudioMode::Aac { bitrate_kbps: 96 },
            ),
        ]
    }

    fn line(job: &Job) -> String {
        ffmpeg_args(job).join(" ")
    }

    const HEAD: &str = "-hide_banner -nostdin -loglevel repeat+level+warning -nostats \
        -progress pipe:1 -stats_period 1 -copyts";
    const INPUT: &str = "-probesize 32 -analyzeduration 0 -f flv -i pipe:0 -filter_complex";

    #[test]
    fn x264_one_rendition() {
        let r = [spec("720p", 720, 2800, VideoCodec::H264, AudioMode::Copy)];
        let job = Job {
            renditions: &r,
            encoders: &[Encoder::Software],
            hwdec: HwDecode::None,
            source_fps: Some(30.0),
            has_audio: true,
            preset: "veryfast",
            first_fd: 3,
        };
        assert_eq!(
            line(&job),
            format!(
                "{HEAD} {INPUT} [0:v]scale=-2:720,format=yuv420p[v0] \
                 -map [v0] -map 0:a? -c:v libx264 -preset veryfast -tune zerolatency \
                 -profile:v high -bf 0 -g 60 -keyint_min 60 -sc_threshold 0 \
                 -b:v 2800k -maxrate 2800k -bufsize 5600k \
                 -force_key_frames expr:eq(n,0)+gte(t-prev_forced_t,2) -fps_mode passthrough \
                 -c:a copy -flush_packets 1 -f mpegts pipe:3"
            )
        );
    }

    #[test]
    fn x264_three_renditions_with_fps_cap_and_audio_choices() {
        let r = three(VideoCodec::H264);
        let job = Job {
            renditions: &r,
            encoders: &[Encoder::Software; 3],
            hwdec: HwDecode::None,
            source_fps: Some(59.94),
            has_audio: true,
            preset: "veryfast",
            first_fd: 3,
        };
        let x264 = "-c:v libx264 -preset veryfast -tune zerolatency -profile:v high -bf 0 \
                    -g 60 -keyint_min 60 -sc_threshold 0";
        let kf = "-force_key_frames expr:eq(n,0)+gte(t-prev_forced_t,2) -fps_mode passthrough";
        assert_eq!(
            line(&job),
            format!(
                "{HEAD} {INPUT} [0:v]split=3[s0][s1][s2];\
                 [s0]scale=-2:1080,format=yuv420p,fps=30[v0];\
                 [s1]scale=-2:720,format=yuv420p,fps=30[v1];\
                 [s2]scale=-2:480,format=yuv420p,fps=30[v2] \
                 -map [v0] -map 0:a? {x264} -b:v 5000k -maxrate 5000k -bufsize 10000k {kf} \
                 -c:a copy -flush_packets 1 -f mpegts pipe:3 \
                 -map [v1] -map 0:a? {x264} -b:v 2800k -maxrate 2800k -bufsize 5600k {kf} \
                 -c:a copy -flush_packets 1 -f mpegts pipe:4 \
                 -map [v2] -map 0:a? {x264} -b:v 1200k -maxrate 1200k -bufsize 2400k {kf} \
                 -c:a aac -b:a 96k -flush_packets 1 -f mpegts pipe:5"
            )
        );
    }

    #[test]
    fn x265_for_hevc_without_audio() {
        let r = [RenditionSpec {
            width: Some(640),
            height: None,
            max_fps: None,
            gop: Duration::from_millis(1500),
            ..spec("small", 0, 800, VideoCodec::Hevc, AudioMode::Copy)
        }];
        let job = Job {
            renditions: &r,
            encoders: &[Encoder::Software],
            hwdec: HwDecode::None,
            source_fps: None,
            has_audio: false,
            preset: "ultrafast",
            first_fd: 3,
        };
        assert_eq!(
            line(&job),
            format!(
                "{HEAD} {INPUT} [0:v]scale=640:-2,format=yuv420p[v0] \
                 -map [v0] -c:v libx265 -preset ultrafast -tune zerolatency \
                 -x265-params bframes=0:keyint=45:min-keyint=45:scenecut=0:repeat-headers=1:log-level=warning \
                 -b:v 800k -maxrate 800k -bufsize 1200k \
                 -force_key_frames expr:eq(n,0)+gte(t-prev_forced_t,1.5) -fps_mode passthrough \
                 -an -flush_packets 1 -f mpegts pipe:3"
            )
        );
    }

    fn nvenc(codec: &str, gop: u32) -> String {
        format!(
            "-c:v {codec} -preset p1 -tune ull -zerolatency 1 -delay 0 -rc cbr -bf 0 -g {gop} \
             -forced-idr 1 -no-scenecut 1"
        )
    }

    #[test]
    fn nvenc_one_rendition_cpu_decode() {
        let r = [spec("720p", 720, 2800, VideoCodec::H264, AudioMode::Copy)];
        let job = Job {
            renditions: &r,
            encoders: &[Encoder::Nvenc],
            hwdec: HwDecode::None,
            source_fps: Some(25.0),
            has_audio: true,
            preset: "veryfast",
            first_fd: 3,
        };
        assert_eq!(
            line(&job),
            format!(
                "{HEAD} {INPUT} [0:v]scale=-2:720,format=yuv420p[v0] \
                 -map [v0] -map 0:a? {} -b:v 2800k -maxrate 2800k -bufsize 5600k \
                 -force_key_frames expr:eq(n,0)+gte(t-prev_forced_t,2) -fps_mode passthrough \
                 -c:a copy -flush_packets 1 -f mpegts pipe:3",
                nvenc("h264_nvenc", 50)
            )
        );
    }

    #[test]
    fn nvenc_with_nvdec_three_renditions_hevc() {
        let r = three(VideoCodec::Hevc);
        let job = Job {
            renditions: &r,
            encoders: &[Encoder::Nvenc; 3],
            hwdec: HwDecode::CudaScale,
            source_fps: Some(30.0),
            has_audio: true,
            preset: "veryfast",
            first_fd: 3,
        };
        let kf = "-force_key_frames expr:eq(n,0)+gte(t-prev_forced_t,2) -fps_mode passthrough";
        let hevc = nvenc("hevc_nvenc", 60);
        assert_eq!(
            line(&job),
            format!(
                "{HEAD} -hwaccel cuda -hwaccel_output_format cuda {INPUT} \
                 [0:v]split=3[s0][s1][s2];[s0]scale_cuda=-2:1080[v0];\
                 [s1]scale_cuda=-2:720[v1];[s2]scale_cuda=-2:480[v2] \
                 -map [v0] -map 0:a? {hevc} -b:v 5000k -maxrate 5000k -bufsize 10000k {kf} \
                 -c:a copy -flush_packets 1 -f mpegts pipe:3 \
                 -map [v1] -map 0:a? {hevc} -b:v 2800k -maxrate 2800k -bufsize 5600k {kf} \
                 -c:a copy -flush_packets 1 -f mpegts pipe:4 \
                 -map [v2] -map 0:a? {hevc} -b:v 1200k -maxrate 1200k -bufsize 2400k {kf} \
                 -c:a aac -b:a 96k -flush_packets 1 -f mpegts pipe:5"
            )
        );
    }

    #[test]
    fn nvdec_decode_only_and_mixed_encoders() {
        // NVENC for h264 works but not for hevc: that output downloads frames.
        let r = [
            spec("720p", 720, 2800, VideoCodec::H264, AudioMode::Copy),
            spec("hevc", 720, 2000, VideoCodec::Hevc, AudioMode::Off),
        ];
        let mixed = Job {
            renditions: &r,
            encoders: &[Encoder::Nvenc, Encoder::Software],
            hwdec: HwDecode::CudaScale,
            source_fps: Some(30.0),
            has_audio: true,
            preset: "veryfast",
            first_fd: 3,
        };
        let l = line(&mixed);
        assert!(l.contains(
            "[0:v]split=2[s0][s1];[s0]scale_cuda=-2:720[v0];[s1]scale_cuda=-2:720,hwdownload,format=nv12[v1]"
        ));
        assert!(l.contains("-map [v1] -c:v libx265"), "{l}");
        let decode_only = Job {
            hwdec: HwDecode::Cuda,
            ..mixed
        };
        let l = line(&decode_only);
        assert!(l.contains("-copyts -hwaccel cuda -probesize 32"), "{l}");
        assert!(l.contains("[s0]scale=-2:720,format=yuv420p[v0]"), "{l}");
    }

    #[test]
    fn fps_cap_only_when_the_source_is_faster() {
        assert_eq!(capped_fps(Some(60.0), Some(30)), Some(30));
        assert_eq!(capped_fps(Some(30.0), Some(30)), None);
        assert_eq!(capped_fps(Some(29.97), Some(30)), None);
        assert_eq!(capped_fps(None, Some(30)), None);
        assert_eq!(capped_fps(Some(60.0), None), None);
        assert_eq!(output_fps(None, None), 30.0);
        assert_eq!(output_fps(Some(f64::NAN), Some(24)), 24.0);
    }

    #[test]
    fn output_sizes_follow_the_aspect_ratio_like_ffmpeg() {
        let r = spec("x", 480, 1000, VideoCodec::H264, AudioMode::Copy);
        assert_eq!(output_size(&r, Some((1280, 720))), Some((854, 480)));
        assert_eq!(output_size(&r, Some((1920, 1080))), Some((854, 480)));
        assert_eq!(output_size(&r, None), None);
        let r = RenditionSpec {
            width: Some(640),
            height: None,
            ..r
        };
        assert_eq!(output_size(&r, Some((1280, 720))), Some((640, 360)));
        assert_eq!(output_size(&r, Some((0, 0))), None);
    }
}
