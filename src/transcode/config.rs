//! `[transcode]` (how renditions are encoded) and the rendition table
//! `[[apps.NAME.renditions]]`: their types, defaults and rules. Pure data;
//! the supervisor in `transcode` runs what they describe.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::config::{self, ConfigError};
use crate::stream::path::validate_segment;

/// FFmpeg transcoding (`[transcode]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscodeConfig {
    /// FFmpeg binary: a name looked up on `PATH`, or a path.
    #[serde(deserialize_with = "ffmpeg")]
    pub ffmpeg: PathBuf,
    #[serde(deserialize_with = "config::parsed")]
    pub encoder: EncoderMode,
    /// FFmpeg that writes nothing on some rendition for this long has failed.
    #[serde(deserialize_with = "config::duration")]
    pub stall_timeout: Duration,
    /// libx264/libx265 `-preset`.
    #[serde(deserialize_with = "x264_preset")]
    pub x264_preset: String,
    /// Decode (and scale, when `scale_cuda` works) on the GPU when a CUDA
    /// decode trial succeeds.
    pub gpu_decode: bool,
    /// How often NVML gauges are refreshed.
    #[serde(deserialize_with = "config::duration")]
    pub gpu_poll_interval: Duration,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        TranscodeConfig {
            ffmpeg: PathBuf::from("ffmpeg"),
            encoder: EncoderMode::Auto,
            stall_timeout: Duration::from_secs(5),
            x264_preset: "veryfast".into(),
            gpu_decode: true,
            gpu_poll_interval: Duration::from_secs(5),
        }
    }
}

impl TranscodeConfig {
    /// Rules across keys; errors name keys relative to `[transcode]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stall_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "stall_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

fn ffmpeg<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let v = String::deserialize(d)?;
    if v.trim().is_empty() {
        return Err(de::Error::custom("must not be empty"));
    }
    Ok(PathBuf::from(v))
}

const X264_PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

fn x264_preset<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = String::deserialize(d)?;
    if !X264_PRESETS.contains(&v.as_str()) {
        return Err(de::Error::custom(format!(
            "{v:?} is not an x264 preset ({})",
            X264_PRESETS.join(", ")
        )));
    }
    Ok(v)
}

/// How renditions are encoded (`transcode.encoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderMode {
    /// NVENC where a trial encode proves it works, libx264/libx265 otherwise.
    Auto,
    /// NVENC or refuse to start.
    Nvenc,
    /// Always libx264/libx265.
    Software,
}

impl EncoderMode {
    pub fn name(self) -> &'static str {
        match self {
            EncoderMode::Auto => "auto",
            EncoderMode::Nvenc => "nvenc",
            EncoderMode::Software => "x264",
        }
    }
}

impl FromStr for EncoderMode {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "auto" => Ok(EncoderMode::Auto),
            "nvenc" => Ok(EncoderMode::Nvenc),
            "x264" | "software" => Ok(EncoderMode::Software),
            _ => Err(format!("{v:?} is not one of \"auto\", \"nvenc\", \"x264\"")),
        }
    }
}

/// Video codec of a transcoded rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Hevc,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
        }
    }
}

impl FromStr for VideoCodec {
    type Err = String;
    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "h264" => Ok(VideoCodec::H264),
            "hevc" | "h265" => Ok(VideoCodec::Hevc),
            other => Err(format!("{other:?} is not \"h264\" or \"hevc\"")),
        }
    }
}

/// What a rendition does with the source audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioMode {
    /// Pass the source's AAC through untouched.
    Copy,
    /// Re-encode to AAC-LC at this bitrate.
    Aac { bitrate_kbps: u32 },
    /// No audio in this rendition.
    Off,
}

impl FromStr for AudioMode {
    type Err = String;
    fn from_str(b: &str) -> Result<Self, String> {
        match b {
            "copy" => Ok(AudioMode::Copy),
            "none" | "off" => Ok(AudioMode::Off),
            _ => config::parse_bitrate_kbps(b)
                .ok()
                .filter(|k| (16..=512).contains(k))
                .map(|bitrate_kbps| AudioMode::Aac { bitrate_kbps })
                .ok_or_else(|| {
                    format!(
                        "{b:?}: expected \"copy\", \"none\" or an AAC bitrate from \"16k\" to \"512k\""
                    )
                }),
        }
    }
}

/// One transcoded rendition (`[[apps.NAME.renditions]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenditionSpec {
    /// Path suffix: players pull `APP/KEY/NAME`. Required.
    #[serde(deserialize_with = "rendition_name")]
    pub name: String,
    /// Output size; when one is omitted it follows the source aspect ratio.
    #[serde(deserialize_with = "dimension")]
    pub width: Option<u32>,
    #[serde(deserialize_with = "dimension")]
    pub height: Option<u32>,
    /// `video_bitrate`; when it is not given, [`rendition_rules`] sets a
    /// default by size.
    #[serde(rename = "video_bitrate", deserialize_with = "config::bitrate_kbps")]
    pub video_bitrate_kbps: u32,
    /// Frame rate cap: a faster source is reduced to this.
    #[serde(deserialize_with = "max_fps")]
    pub max_fps: Option<u32>,
    #[serde(deserialize_with = "config::parsed")]
    pub codec: VideoCodec,
    /// Keyframe interval.
    #[serde(deserialize_with = "config::duration")]
    pub gop: Duration,
    #[serde(deserialize_with = "config::parsed")]
    pub audio: AudioMode,
}

impl Default for RenditionSpec {
    /// What a table leaves out; `name` and a size are required, and a
    /// bitrate of 0 means "by size" (see [`rendition_rules`]).
    fn default() -> Self {
        RenditionSpec {
            name: String::new(),
            width: None,
            height: None,
            video_bitrate_kbps: 0,
            max_fps: None,
            codec: VideoCodec::H264,
            gop: Duration::from_secs(2),
            audio: AudioMode::Copy,
        }
    }
}

fn rendition_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    validate_segment(&name).map_err(de::Error::custom)?;
    if name == "source" {
        return Err(de::Error::custom(
            "\"source\" is the untranscoded stream; pick another name",
        ));
    }
    Ok(name)
}

fn dimension<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v: u32 = config::int::<16, 8192, _, _>(d)?;
    if v % 2 != 0 {
        return Err(de::Error::custom(format!(
            "{v} is odd; 4:2:0 video needs even sizes"
        )));
    }
    Ok(Some(v))
}

fn max_fps<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    config::int::<1, 240, _, _>(d).map(Some)
}

/// The rules of one application's rendition table, after it was read: each
/// rendition has a name and a size, a GOP of 250ms to 20s, a bitrate (the
/// default by size where none was given), and names are unique. Errors name
/// keys relative to the table (`[1].name`).
pub fn rendition_rules(renditions: &mut [RenditionSpec]) -> Result<(), ConfigError> {
    for i in 0..renditions.len() {
        let (before, rest) = renditions.split_at_mut(i);
        let r = &mut rest[0];
        let at = |e: ConfigError| e.under(&format!("[{i}]"));
        if r.name.is_empty() {
            return Err(at(ConfigError::invalid(
                "name",
                "is required (players pull APP/KEY/NAME)",
            )));
        }
        if r.width.is_none() && r.height.is_none() {
            return Err(at(ConfigError::invalid(
                "",
                "needs width or height (the other follows the source aspect ratio)",
            )));
        }
        if r.gop < Duration::from_millis(250) || r.gop > Duration::from_secs(20) {
            return Err(at(ConfigError::invalid(
                "gop",
                "must be between 250ms and 20s",
            )));
        }
        if r.video_bitrate_kbps == 0 {
            r.video_bitrate_kbps = default_bitrate_kbps(r.width, r.height);
        }
        if before.iter().any(|o| o.name == r.name) {
            return Err(at(ConfigError::invalid(
                "name",
                format!("{:?} is used twice in this application", r.name),
            )));
        }
    }
    Ok(())
}

/// A sensible video bitrate for a rendition size when none is configured.
fn default_bitrate_kbps(width: Option<u32>, height: Option<u32>) -> u32 {
    // Judge by the shorter side a 16:9 picture of that size would have.
    let short = height.or(width.map(|w| w * 9 / 16)).unwrap_or(720);
    match short {
        1080.. => 5000,
        720.. => 2800,
        480.. => 1200,
        360.. => 800,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcode(text: &str) -> Result<TranscodeConfig, ConfigError> {
        let c: TranscodeConfig = config::section_from_toml("transcode", text)?;
        c.validate().map_err(|e| e.under("transcode"))?;
        Ok(c)
    }

    /// Reads a rendition table the way `[apps.live]` does.
    fn renditions(text: &str) -> Result<Vec<RenditionSpec>, ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct App {
            renditions: Vec<RenditionSpec>,
        }
        let mut app: App = config::section_from_toml("apps.live", text)?;
        rendition_rules(&mut app.renditions).map_err(|e| e.under("apps.live.renditions"))?;
        Ok(app.renditions)
    }

    fn err<T: std::fmt::Debug>(r: Result<T, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn transcode_section_is_read_and_checked() {
        assert_eq!(
            transcode("encoder = \"x264\"").unwrap().encoder,
            EncoderMode::Software
        );
        assert_eq!(
            format!("{:?}", transcode("").unwrap()),
            format!("{:?}", TranscodeConfig::default())
        );
        for (text, key) in [
            ("encoder = \"quicksync\"", "transcode.encoder"),
            ("stall_timeout = \"0s\"", "transcode.stall_timeout"),
            ("x264_preset = \"warp\"", "transcode.x264_preset"),
            ("ffmpeg = \" \"", "transcode.ffmpeg"),
            ("gpu_decode = \"yes\"", "transcode.gpu_decode"),
        ] {
            let e = err(transcode(text));
            assert!(e.contains(key), "{text:?} gave {e:?}, wanted the key {key}");
        }
    }

    #[test]
    fn renditions_are_read_with_defaults_and_checked() {
        let r = renditions(
            r#"
            [[renditions]]
            name = "720p"
            height = 720
            video_bitrate = "2.5M"
            max_fps = 30
            audio = "96k"
            [[renditions]]
            name = "small"
            width = 640
            codec = "hevc"
            gop = "1s"
            audio = "none"
            "#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            RenditionSpec {
                name: "720p".into(),
                width: None,
                height: Some(720),
                video_bitrate_kbps: 2500,
                max_fps: Some(30),
                codec: VideoCodec::H264,
                gop: Duration::from_secs(2),
                audio: AudioMode::Aac { bitrate_kbps: 96 },
            }
        );
        assert_eq!(r[1].codec, VideoCodec::Hevc);
        assert_eq!(r[1].video_bitrate_kbps, 800);
        assert_eq!(r[1].audio, AudioMode::Off);

        for (text, key) in [
            ("[[renditions]]\nheight = 720", "apps.live.renditions[0].name"),
            ("[[renditions]]\nname = \"source\"\nheight = 720", "apps.live.renditions[0].name"),
            ("[[renditions]]\nname = \"a b\"\nheight = 720", "apps.live.renditions[0].name"),
            ("[[renditions]]\nname = \"a\"", "apps.live.renditions[0]"),
            ("[[renditions]]\nname = \"a\"\nheight = 721", "apps.live.renditions[0].height"),
            ("[[renditions]]\nname = \"a\"\nwidth = 8", "apps.live.renditions[0].width"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\ncodec = \"vp9\"", "apps.live.renditions[0].codec"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\nvideo_bitrate = \"fast\"", "apps.live.renditions[0].video_bitrate"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\naudio = \"loud\"", "apps.live.renditions[0].audio"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\naudio = \"8k\"", "apps.live.renditions[0].audio"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\nfps = 30", "apps.live.renditions[0].fps"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\nmax_fps = 241", "apps.live.renditions[0].max_fps"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\ngop = \"100ms\"", "apps.live.renditions[0].gop"),
            ("[[renditions]]\nname = \"a\"\nheight = 720\n[[renditions]]\nname = \"a\"\nheight = 480", "apps.live.renditions[1].name"),
            ("renditions = \"720p\"", "apps.live.renditions"),
        ] {
            let e = err(renditions(text));
            assert!(e.contains(key), "{text:?} gave {e:?}, wanted the key {key}");
        }
    }

    #[test]
    fn default_bitrate_follows_the_size() {
        assert_eq!(default_bitrate_kbps(None, Some(1080)), 5000);
        assert_eq!(default_bitrate_kbps(None, Some(720)), 2800);
        assert_eq!(default_bitrate_kbps(Some(854), None), 1200);
        assert_eq!(default_bitrate_kbps(Some(640), None), 800);
        assert_eq!(default_bitrate_kbps(None, Some(240)), 500);
    }
}
