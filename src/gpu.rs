//! NVIDIA GPU inventory (NVML) and FFmpeg NVENC/NVDEC probes.
//!
//! NVML says which GPUs exist and how busy their encoders are; only a trial
//! run of FFmpeg proves that it can use them. `ffmpeg -encoders` lists
//! `h264_nvenc` on machines with no GPU at all, and H100/H200 have NVDEC but
//! no NVENC, so every capability here is settled by a one-frame trial.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::{
    GPUS, GPU_DECODER_UTILIZATION_PERCENT, GPU_ENCODER_CAPACITY_PERCENT, GPU_ENCODER_SESSIONS,
    GPU_ENCODER_UTILIZATION_PERCENT, GPU_MEMORY_TOTAL_BYTES, GPU_MEMORY_USED_BYTES,
    GPU_TEMPERATURE_CELSIUS, GPU_UTILIZATION_PERCENT,
};
use nvml_wrapper::enum_wrappers::device::{EncoderType, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The library `Nvml::init()` loads (nvml-wrapper 0.13, Linux).
const NVML_LIB: &str = "libnvidia-ml.so.1";

/// How long one FFmpeg trial may take before it is killed. A wedged driver
/// must not hang startup.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest failure reason kept from FFmpeg's stderr, in characters.
const REASON_MAX_CHARS: usize = 300;

// ---------------------------------------------------------------------------
// NVML inventory
// ---------------------------------------------------------------------------

/// NVML, when it could be initialised, or the reason it could not.
#[derive(Clone)]
pub struct Gpus {
    nvml: Option<Arc<Nvml>>,
    device_count: u32,
    reason: Option<String>,
}

impl Gpus {
    /// Initialise NVML. No library, no driver, no permission or no device
    /// all mean "no GPU", with the reason kept for `why_none`. Never panics
    /// and does not log: the caller logs once.
    pub fn init() -> Gpus {
        let nvml = match Nvml::init() {
            Ok(nvml) => nvml,
            Err(e) => return Gpus::none(init_error_reason(&e)),
        };
        match nvml.device_count() {
            Ok(0) => Gpus {
                nvml: Some(Arc::new(nvml)),
                device_count: 0,
                reason: Some(format!("NVML ({NVML_LIB}): no NVIDIA devices found")),
            },
            Ok(n) => Gpus {
                nvml: Some(Arc::new(nvml)),
                device_count: n,
                reason: None,
            },
            Err(e) => Gpus::none(format!("NVML ({NVML_LIB}): could not count devices: {e}")),
        }
    }

    /// No GPU, for the given reason (tests, or GPUs disabled by config).
    pub fn none(reason: impl Into<String>) -> Gpus {
        Gpus {
            nvml: None,
            device_count: 0,
            reason: Some(reason.into()),
        }
    }

    /// NVML is up and reported at least one device.
    pub fn available(&self) -> bool {
        self.nvml.is_some() && self.device_count > 0
    }

    /// Why there is no GPU; `None` when `available()`.
    pub fn why_none(&self) -> Option<&str> {
        if self.available() {
            None
        } else {
            Some(self.reason.as_deref().unwrap_or("no GPU"))
        }
    }

    /// Read every device afresh. Blocks briefly in NVML: from async code
    /// call it inside `spawn_blocking`. One field failing (NotSupported on
    /// a data-centre GPU, say) only blanks that field.
    pub fn inventory(&self) -> Inventory {
        let Some(nvml) = &self.nvml else {
            return Inventory {
                error: self.why_none().map(str::to_owned),
                ..Inventory::default()
            };
        };
        let mut inv = Inventory {
            driver_version: nvml.sys_driver_version().ok(),
            cuda_driver_version: nvml.sys_cuda_driver_version().ok().map(|v| {
                format!(
                    "{}.{}",
                    nvml_wrapper::cuda_driver_version_major(v),
                    nvml_wrapper::cuda_driver_version_minor(v)
                )
            }),
            ..Inventory::default()
        };
        // Count again: `Device` borrows `Nvml`, so devices are looked up by
        // index on every read rather than kept.
        match nvml.device_count() {
            Ok(0) => inv.error = Some(format!("NVML ({NVML_LIB}): no NVIDIA devices found")),
            Ok(n) => inv.gpus = (0..n).map(|i| read_device(nvml, i)).collect(),
            Err(e) => inv.error = Some(format!("device_count: {e:?}")),
        }
        inv
    }
}

impl fmt::Debug for Gpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gpus")
            .field("nvml", &self.nvml.is_some())
            .field("device_count", &self.device_count)
            .field("reason", &self.reason)
            .finish()
    }
}

/// Turn an `Nvml::init()` failure into a sentence for logs and `/readyz`.
fn init_error_reason(e: &NvmlError) -> String {
    let what = match e {
        NvmlError::LibloadingError(e) => {
            format!("library could not be loaded, no NVIDIA driver installed? ({e})")
        }
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_owned(),
        NvmlError::NoPermission => {
            "no permission to talk to the NVIDIA driver (check access to /dev/nvidia*)".to_owned()
        }
        NvmlError::FailedToLoadSymbol(s) => {
            format!("library is missing a symbol, driver too old? ({s})")
        }
        NvmlError::NotSupported => "not supported on this system".to_owned(),
        other => format!("initialisation failed: {other}"),
    };
    format!("NVML ({NVML_LIB}): {what}")
}

/// Keep the value, or record which field failed and why.
fn field<T>(errors: &mut Vec<String>, name: &str, r: Result<T, NvmlError>) -> Option<T> {
    r.map_err(|e| errors.push(format!("{name}: {e:?}"))).ok()
}

fn read_device(nvml: &Nvml, index: u32) -> GpuInfo {
    let mut errors = Vec::new();
    let device = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            errors.push(format!("device_by_index: {e:?}"));
            return GpuInfo::unreadable(index, errors);
        }
    };
    let e = &mut errors;
    let name = field(e, "name", device.name()).unwrap_or_else(|| "unknown".to_owned());
    let uuid = field(e, "uuid", device.uuid());
    let memory = field(e, "memory_info", device.memory_info());
    let h264 = field(
        e,
        "encoder_capacity_h264",
        device.encoder_capacity(EncoderType::H264),
    );
    let hevc = field(
        e,
        "encoder_capacity_hevc",
        device.encoder_capacity(EncoderType::HEVC),
    );
    let enc = field(e, "encoder_utilization", device.encoder_utilization());
    let dec = field(e, "decoder_utilization", device.decoder_utilization());
    let util = field(e, "utilization_rates", device.utilization_rates());
    let stats = field(e, "encoder_stats", device.encoder_stats());
    let temp = field(e, "temperature", device.temperature(TemperatureSensor::Gpu));
    GpuInfo {
        index,
        name,
        uuid,
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        encoder_capacity_h264: h264,
        encoder_capacity_hevc: hevc,
        encoder_utilization_percent: enc.map(|u| u.utilization),
        decoder_utilization_percent: dec.map(|u| u.utilization),
        gpu_utilization_percent: util.map(|u| u.gpu),
        encoder_sessions: stats.as_ref().map(|s| s.session_count),
        encoder_average_fps: stats.as_ref().map(|s| s.average_fps),
        temperature_celsius: temp,
        errors,
    }
}

/// A snapshot of the driver and every GPU.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Inventory {
    pub driver_version: Option<String>,
    /// CUDA version the driver supports, "12.4".
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    /// Why there are no GPUs, when there are none.
    pub error: Option<String>,
}

/// One GPU as NVML sees it. A field NVML could not read is `None` and
/// named in `errors`.
#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// NVENC capacity left, percent of the maximum (NVML
    /// `nvmlDeviceGetEncoderCapacity`).
    pub encoder_capacity_h264: Option<u32>,
    pub encoder_capacity_hevc: Option<u32>,
    pub encoder_utilization_percent: Option<u32>,
    pub decoder_utilization_percent: Option<u32>,
    pub gpu_utilization_percent: Option<u32>,
    pub encoder_sessions: Option<u32>,
    pub encoder_average_fps: Option<u32>,
    pub temperature_celsius: Option<u32>,
    /// Each field that failed, as "encoder_capacity_h264: NotSupported".
    pub errors: Vec<String>,
}

impl GpuInfo {
    fn unreadable(index: u32, errors: Vec<String>) -> GpuInfo {
        GpuInfo {
            index,
            name: "unknown".to_owned(),
            uuid: None,
            memory_total_bytes: None,
            memory_used_bytes: None,
            encoder_capacity_h264: None,
            encoder_capacity_hevc: None,
            encoder_utilization_percent: None,
            decoder_utilization_percent: None,
            gpu_utilization_percent: None,
            encoder_sessions: None,
            encoder_average_fps: None,
            temperature_celsius: None,
            errors,
        }
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// Set the GPU gauges from NVML every `every` until `cancel`. Sets
/// `sluice_gpus` to 0 and returns at once when there is no GPU.
pub async fn poll_metrics(gpus: Arc<Gpus>, every: Duration, cancel: CancellationToken) {
    if !gpus.available() {
        record(&Inventory::default());
        return;
    }
    // `interval` panics on a zero period.
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let g = gpus.clone();
        match tokio::task::spawn_blocking(move || g.inventory()).await {
            Ok(inv) => {
                if let Some(e) = &inv.error {
                    tracing::debug!(error = %e, "GPU inventory incomplete");
                }
                record(&inv);
            }
            Err(e) => tracing::warn!(error = %e, "GPU inventory task failed"),
        }
    }
}

/// Set the gauges for one inventory. Fields NVML could not read are left
/// unset rather than reported as 0.
fn record(inv: &Inventory) {
    use metrics::gauge;
    gauge!(GPUS).set(inv.gpus.len() as f64);
    for g in &inv.gpus {
        let labels = [("gpu", g.index.to_string()), ("name", g.name.clone())];
        let set = |metric: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                gauge!(metric, &labels).set(v);
            }
        };
        let pct = |v: Option<u32>| v.map(f64::from);
        set(
            GPU_ENCODER_UTILIZATION_PERCENT,
            pct(g.encoder_utilization_percent),
        );
        set(
            GPU_DECODER_UTILIZATION_PERCENT,
            pct(g.decoder_utilization_percent),
        );
        set(GPU_UTILIZATION_PERCENT, pct(g.gpu_utilization_percent));
        set(GPU_ENCODER_SESSIONS, pct(g.encoder_sessions));
        set(GPU_MEMORY_USED_BYTES, g.memory_used_bytes.map(|b| b as f64));
        set(
            GPU_MEMORY_TOTAL_BYTES,
            g.memory_total_bytes.map(|b| b as f64),
        );
        set(GPU_TEMPERATURE_CELSIUS, pct(g.temperature_celsius));
        for (codec, v) in [
            ("h264", g.encoder_capacity_h264),
            ("hevc", g.encoder_capacity_hevc),
        ] {
            if let Some(v) = v {
                let [gpu, name] = labels.clone();
                let labels = [gpu, name, ("codec", codec.to_owned())];
                gauge!(GPU_ENCODER_CAPACITY_PERCENT, &labels).set(f64::from(v));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// FFmpeg probes
// ---------------------------------------------------------------------------

/// What FFmpeg proved it can do on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub h264_nvenc: ProbeResult,
    pub hevc_nvenc: ProbeResult,
    pub cuda_decode: ProbeResult,
    pub cuda_scale: ProbeResult,
}

impl Probe {
    /// Every trial skipped for one reason.
    pub fn skipped(reason: &str) -> Probe {
        let s = || ProbeResult::Skipped {
            reason: reason.to_owned(),
        };
        Probe {
            h264_nvenc: s(),
            hevc_nvenc: s(),
            cuda_decode: s(),
            cuda_scale: s(),
        }
    }
}

/// The outcome of one trial.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ProbeResult {
    Ok,
    Failed { reason: String },
    Skipped { reason: String },
}

impl ProbeResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, ProbeResult::Ok)
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            ProbeResult::Ok => None,
            ProbeResult::Failed { reason } | ProbeResult::Skipped { reason } => Some(reason),
        }
    }

    fn failed(reason: impl Into<String>) -> ProbeResult {
        ProbeResult::Failed {
            reason: reason.into(),
        }
    }
}

/// Everything one `sluice gpu`-style check prints: NVML's view and FFmpeg's.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub inventory: Inventory,
    pub probe: Probe,
}

/// Read the inventory (on a blocking thread) and run the FFmpeg trials.
pub async fn report(ffmpeg: &Path, gpus: Arc<Gpus>) -> Report {
    let g = gpus.clone();
    let inventory = tokio::task::spawn_blocking(move || g.inventory())
        .await
        .unwrap_or_else(|e| Inventory {
            error: Some(format!("inventory task failed: {e}")),
            ..Inventory::default()
        });
    let probe = probe(ffmpeg, &gpus).await;
    Report { inventory, probe }
}

/// Run the trials with `ffmpeg` (a path, or a name looked up on PATH).
/// With no GPU every trial is skipped with NVML's reason and FFmpeg is not
/// started. Each trial is killed after `TRIAL_TIMEOUT`.
pub async fn probe(ffmpeg: &Path, gpus: &Gpus) -> Probe {
    if let Some(why) = gpus.why_none() {
        return Probe::skipped(why);
    }
    run_trials(ffmpeg, TRIAL_TIMEOUT).await
}

/// Run every trial whatever NVML says: for a diagnostic command, where a
/// GPU that NVML cannot see should still get its say.
pub async fn run_trials(ffmpeg: &Path, timeout: Duration) -> Probe {
    let (h264_args, hevc_args) = (trial_args("h264_nvenc"), trial_args("hevc_nvenc"));
    let h264 = run_trial(ffmpeg, &h264_args, timeout);
    let hevc = run_trial(ffmpeg, &hevc_args, timeout);
    let (h264_nvenc, hevc_nvenc, (cuda_decode, cuda_scale)) =
        tokio::join!(h264, hevc, cuda_trials(ffmpeg, timeout));
    Probe {
        h264_nvenc,
        hevc_nvenc,
        cuda_decode,
        cuda_scale,
    }
}

/// Decode (and then scale) a small libx264 clip on the GPU.
async fn cuda_trials(ffmpeg: &Path, timeout: Duration) -> (ProbeResult, ProbeResult) {
    let clip = TempClip::new();
    let decode = match run_trial(ffmpeg, &clip_args(&clip.0), timeout).await {
        ProbeResult::Ok => run_trial(ffmpeg, &cuda_decode_args(&clip.0), timeout).await,
        other => ProbeResult::failed(format!(
            "could not make the libx264 test clip: {}",
            other.reason().unwrap_or("unknown error")
        )),
    };
    let scale = if decode.is_ok() {
        run_trial(ffmpeg, &cuda_scale_args(&clip.0), timeout).await
    } else {
        ProbeResult::Skipped {
            reason: "cuda_decode failed".to_owned(),
        }
    };
    (decode, scale)
}

/// A temporary file path, removed on drop.
struct TempClip(PathBuf);

impl TempClip {
    fn new() -> TempClip {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        TempClip(std::env::temp_dir().join(format!(
            "sluice-gpu-probe-{}-{}-{nanos}.h264",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempClip {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One-frame trial encode with `encoder`. Exit 0 proves the encoder opens
/// on this machine's hardware.
pub fn trial_args(encoder: &str) -> Vec<String> {
    let mut a = strings(&["-hide_banner", "-nostdin", "-loglevel", "error"]);
    a.extend(strings(&["-f", "lavfi", "-i", "nullsrc=s=256x256:d=1"]));
    a.extend(strings(&[
        "-frames:v",
        "1",
        "-c:v",
        encoder,
        "-f",
        "null",
        "-",
    ]));
    a
}

/// Encode a short H.264 elementary stream with libx264 into `out`, the
/// input for the decode trials.
pub fn clip_args(out: &Path) -> Vec<String> {
    let mut a = strings(&["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]);
    a.extend(strings(&["-f", "lavfi", "-i", "testsrc=s=256x144:r=25"]));
    a.extend(strings(&[
        "-frames:v",
        "10",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "h264",
    ]));
    a.push(path_arg(out));
    a
}

/// Decode `clip` with NVDEC. `-hwaccel cuda` alone falls back to software
/// decoding without a word; keeping frames on the GPU and downloading them
/// makes a fallback fail, because `hwdownload` needs hardware frames.
pub fn cuda_decode_args(clip: &Path) -> Vec<String> {
    cuda_filter_args(clip, "hwdownload,format=nv12")
}

/// Decode `clip` with NVDEC and scale it with `scale_cuda`.
pub fn cuda_scale_args(clip: &Path) -> Vec<String> {
    cuda_filter_args(clip, "scale_cuda=128:72,hwdownload,format=nv12")
}

fn cuda_filter_args(clip: &Path, filter: &str) -> Vec<String> {
    let mut a = strings(&["-hide_banner", "-nostdin", "-loglevel", "error"]);
    a.extend(strings(&[
        "-hwaccel",
        "cuda",
        "-hwaccel_output_format",
        "cuda",
    ]));
    a.push("-i".to_owned());
    a.push(path_arg(clip));
    a.extend(strings(&["-vf", filter, "-f", "null", "-"]));
    a
}

/// Run `ffmpeg args`: `Ok` on exit 0, otherwise `Failed` with the telling
/// part of stderr. Killed (and `Failed`) after `timeout`.
pub(crate) async fn run_trial(ffmpeg: &Path, args: &[String], timeout: Duration) -> ProbeResult {
    let child = tokio::process::Command::new(ffmpeg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return ProbeResult::failed(format!("ffmpeg not found: {}", ffmpeg.display()));
        }
        Err(e) => {
            return ProbeResult::failed(format!(
                "could not start ffmpeg ({}): {e}",
                ffmpeg.display()
            ));
        }
    };
    // Dropping the `wait_with_output` future on timeout drops the child,
    // and `kill_on_drop` kills it.
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return ProbeResult::failed(format!("waiting for ffmpeg failed: {e}")),
        Err(_) => {
            return ProbeResult::failed(format!(
                "ffmpeg did not finish within {} s (GPU driver hung?)",
                timeout.as_secs_f32()
            ));
        }
    };
    if output.status.success() {
        return ProbeResult::Ok;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    ProbeResult::failed(
        failure_reason(&stderr).unwrap_or_else(|| format!("ffmpeg {}", output.status)),
    )
}

/// Lines FFmpeg prints after any failure; they say that something failed,
/// not what.
const GENERIC_LINES: &[&str] = &[
    "maybe incorrect parameters",
    "Error initializing output stream",
    "Error while opening encoder",
    "Could not open encoder before EOF",
    "Nothing was written into output file",
    "Conversion failed",
    "Terminating thread with return code",
    "Task finished with error code",
    "Error sending frames to consumers",
    "Error while filtering",
    "Error while processing the decoded data",
    "Error marking filters as finished",
    "Device creation failed",
    "Device setup failed for decoder",
];

/// The informative part of FFmpeg's stderr: lines without their
/// `[h264_nvenc @ 0x...]` prefix, generic follow-up lines dropped (unless
/// nothing else is left), joined with "; " and cut to about 300 characters.
pub fn failure_reason(stderr: &str) -> Option<String> {
    let mut lines: Vec<&str> = Vec::new();
    for line in stderr.lines() {
        let line = strip_context(line.trim());
        if !line.is_empty() && !lines.contains(&line) {
            lines.push(line);
        }
    }
    let telling: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !GENERIC_LINES.iter().any(|g| l.contains(g)))
        .collect();
    let chosen = if telling.is_empty() { lines } else { telling };
    if chosen.is_empty() {
        return None;
    }
    let joined = chosen.join("; ");
    Some(if joined.chars().count() > REASON_MAX_CHARS {
        let mut cut: String = joined.chars().take(REASON_MAX_CHARS - 1).collect();
        cut.push('…');
        cut
    } else {
        joined
    })
}

/// Strip FFmpeg's log context prefixes such as `[h264_nvenc @ 0x55d1c0]`
/// or `[vost#0:0/h264_nvenc @ 0x55d1c0]`.
fn strip_context(mut line: &str) -> &str {
    while line.starts_with('[') {
        match line.find(']') {
            Some(end) if line[..end].contains(" @ ") => line = line[end + 1..].trim_start(),
            _ => break,
        }
    }
    line
}

/// Whether an FFmpeg stderr line means the GPU refused a new NVENC session:
/// the consumer-card session limit (NV_ENC_ERR_OUT_OF_MEMORY, 10, or
/// NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY, 21, at `OpenEncodeSessionEx`), a GPU
/// without NVENC (H100/H200: "unsupported device (2)", "No capable devices
/// found"), or GPU memory exhausted while the encoder opens. The caller
/// then encodes that stream with libx264 instead.
pub fn nvenc_session_refused(stderr_line: &str) -> bool {
    let l = stderr_line.to_ascii_lowercase();
    l.contains("openencodesessionex failed")
        || l.contains("no capable devices found")
        || l.contains("no nvenc capable devices found")
        || l.contains("incompatible client key")
        || l.contains("cuda_error_out_of_memory")
        || (l.contains("nvenc") && l.contains("out of memory"))
        || l.contains("failed: out of memory (10)")
        || (l.contains("session")
            && (l.contains("nvenc") || l.contains("encode"))
            && (l.contains("too many") || l.contains("limit")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ffmpeg() -> &'static Path {
        Path::new("ffmpeg")
    }

    #[test]
    fn gpus_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Gpus>();
    }

    #[test]
    fn init_without_driver_reports_no_gpu_with_reason() {
        let gpus = Gpus::init();
        let inv = gpus.inventory();
        if gpus.available() {
            // A GPU machine: the inventory lists the devices.
            assert!(gpus.why_none().is_none());
            assert!(!inv.gpus.is_empty(), "{inv:?}");
            return;
        }
        let why = gpus.why_none().expect("a reason when no GPU");
        assert!(why.contains("libnvidia-ml"), "{why}");
        assert!(inv.gpus.is_empty());
        assert_eq!(inv.error.as_deref(), Some(why));
        assert!(inv.driver_version.is_none());
    }

    #[test]
    fn init_error_reasons_name_the_library_and_the_cause() {
        let r = init_error_reason(&NvmlError::DriverNotLoaded);
        assert_eq!(
            r,
            "NVML (libnvidia-ml.so.1): the NVIDIA kernel driver is not loaded"
        );
        let r = init_error_reason(&NvmlError::NoPermission);
        assert!(r.contains("/dev/nvidia"), "{r}");
        let r = init_error_reason(&NvmlError::FailedToLoadSymbol("nvmlInit_v2".into()));
        assert!(r.contains("nvmlInit_v2"), "{r}");
    }

    #[test]
    fn none_is_unavailable_and_keeps_reason() {
        let g = Gpus::none("disabled in config");
        assert!(!g.available());
        assert_eq!(g.why_none(), Some("disabled in config"));
        let inv = g.inventory();
        assert!(inv.gpus.is_empty());
        assert_eq!(inv.error.as_deref(), Some("disabled in config"));
    }

    #[tokio::test]
    async fn probe_without_gpu_skips_everything_and_spawns_nothing() {
        // A missing binary would come back as Failed("ffmpeg not found"),
        // so Skipped proves FFmpeg was never started.
        let g = Gpus::none("no GPU here");
        let p = probe(Path::new("/nonexistent/ffmpeg"), &g).await;
        let skipped = ProbeResult::Skipped {
            reason: "no GPU here".into(),
        };
        assert_eq!(p.h264_nvenc, skipped);
        assert_eq!(p.hevc_nvenc, skipped);
        assert_eq!(p.cuda_decode, skipped);
        assert_eq!(p.cuda_scale, skipped);
    }

    #[tokio::test]
    async fn poll_metrics_without_gpu_returns_at_once() {
        let g = Arc::new(Gpus::none("none"));
        tokio::time::timeout(
            Duration::from_secs(5),
            poll_metrics(g, Duration::ZERO, CancellationToken::new()),
        )
        .await
        .expect("returns without a GPU");
    }

    #[tokio::test]
    async fn nvenc_trial_fails_with_a_reason_without_a_gpu() {
        if Gpus::init().available() {
            return; // NVENC may well work here.
        }
        let r = run_trial(ffmpeg(), &trial_args("h264_nvenc"), TRIAL_TIMEOUT).await;
        match &r {
            ProbeResult::Failed { reason } => {
                assert!(!reason.trim().is_empty());
                assert!(!reason.contains(" @ 0x"), "{reason}");
                assert!(reason.chars().count() <= REASON_MAX_CHARS);
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn libx264_trial_succeeds() {
        let r = run_trial(ffmpeg(), &trial_args("libx264"), TRIAL_TIMEOUT).await;
        assert_eq!(r, ProbeResult::Ok);
    }

    #[tokio::test]
    async fn missing_ffmpeg_is_reported_as_not_found() {
        let r = run_trial(
            Path::new("/nonexistent/ffmpeg"),
            &trial_args("libx264"),
            TRIAL_TIMEOUT,
        )
        .await;
        let reason = r.reason().expect("a reason");
        assert!(!r.is_ok());
        assert!(reason.starts_with("ffmpeg not found"), "{reason}");
    }

    #[tokio::test]
    async fn trial_that_runs_too_long_is_killed() {
        let mut args = trial_args("libx264");
        // An endless source: only the timeout ends it.
        let i = args
            .iter()
            .position(|a| a == "nullsrc=s=256x256:d=1")
            .unwrap();
        args[i] = "nullsrc=s=256x256".into();
        let frames = args.iter().position(|a| a == "-frames:v").unwrap();
        args.drain(frames..frames + 2);
        let started = std::time::Instant::now();
        let r = run_trial(ffmpeg(), &args, Duration::from_millis(500)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(r.reason().unwrap().contains("did not finish"), "{r:?}");
    }

    #[tokio::test]
    async fn cuda_trials_without_a_gpu_fail_decode_and_skip_scale() {
        if Gpus::init().available() {
            return;
        }
        let (decode, scale) = cuda_trials(ffmpeg(), TRIAL_TIMEOUT).await;
        // The clip was made (libx264 works); the CUDA decode itself failed.
        let reason = decode.reason().expect("decode fails without a GPU");
        assert!(!decode.is_ok());
        assert!(!reason.contains("test clip"), "{reason}");
        assert_eq!(
            scale,
            ProbeResult::Skipped {
                reason: "cuda_decode failed".into()
            }
        );
    }

    #[test]
    fn temp_clips_are_unique_and_removed() {
        let a = TempClip::new();
        let b = TempClip::new();
        assert_ne!(a.0, b.0);
        std::fs::write(&a.0, b"x").unwrap();
        let path = a.0.clone();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn trial_args_encode_one_null_frame() {
        assert_eq!(
            trial_args("h264_nvenc").join(" "),
            "-hide_banner -nostdin -loglevel error -f lavfi -i nullsrc=s=256x256:d=1 \
             -frames:v 1 -c:v h264_nvenc -f null -"
        );
    }

    #[test]
    fn cuda_args_keep_frames_on_the_gpu() {
        let clip = Path::new("/tmp/clip.h264");
        assert_eq!(
            cuda_decode_args(clip).join(" "),
            "-hide_banner -nostdin -loglevel error -hwaccel cuda -hwaccel_output_format cuda \
             -i /tmp/clip.h264 -vf hwdownload,format=nv12 -f null -"
        );
        assert_eq!(
            cuda_scale_args(clip).join(" "),
            "-hide_banner -nostdin -loglevel error -hwaccel cuda -hwaccel_output_format cuda \
             -i /tmp/clip.h264 -vf scale_cuda=128:72,hwdownload,format=nv12 -f null -"
        );
        let c = clip_args(clip);
        assert_eq!(c.last().map(String::as_str), Some("/tmp/clip.h264"));
        assert!(c.windows(2).any(|w| w == ["-c:v", "libx264"]));
        assert!(c.windows(2).any(|w| w == ["-f", "h264"]));
    }

    #[test]
    fn failure_reason_keeps_the_telling_lines() {
        // ffmpeg 5.1 on a machine without a GPU.
        let stderr = "[h264_nvenc @ 0x55782773f000] Cannot load libcuda.so.1\n\
            Error initializing output stream 0:0 -- Error while opening encoder for output \
            stream #0:0 - maybe incorrect parameters such as bit_rate, rate, width or height\n";
        assert_eq!(
            failure_reason(stderr).as_deref(),
            Some("Cannot load libcuda.so.1")
        );
        // ffmpeg 7 on an H100 (no NVENC).
        let stderr = "[h264_nvenc @ 0x5d0] OpenEncodeSessionEx failed: unsupported device (2): (no details)\n\
            [h264_nvenc @ 0x5d0] No capable devices found\n\
            [vost#0:0/h264_nvenc @ 0x5c0] Error while opening encoder - maybe incorrect parameters such as bit_rate, rate, width or height.\n\
            [vf#0:0 @ 0x5b0] Error sending frames to consumers: Function not implemented\n\
            [vf#0:0 @ 0x5b0] Task finished with error code: -38 (Function not implemented)\n\
            [vost#0:0/h264_nvenc @ 0x5c0] Could not open encoder before EOF\n\
            [out#0/null @ 0x5a0] Nothing was written into output file, because at least one of its streams received no packets.\n\
            Conversion failed!\n";
        assert_eq!(
            failure_reason(stderr).as_deref(),
            Some(
                "OpenEncodeSessionEx failed: unsupported device (2): (no details); \
                 No capable devices found"
            )
        );
    }

    #[test]
    fn failure_reason_falls_back_to_generic_lines_and_truncates() {
        assert_eq!(
            failure_reason("Conversion failed!\n").as_deref(),
            Some("Conversion failed!")
        );
        assert_eq!(failure_reason("  \n\n"), None);
        let long = "x".repeat(1000);
        let r = failure_reason(&long).unwrap();
        assert_eq!(r.chars().count(), REASON_MAX_CHARS);
        assert!(r.ends_with('…'));
        // Repeated lines count once; brackets without " @ " are content.
        assert_eq!(failure_reason("[a] b\n[a] b\n").as_deref(), Some("[a] b"));
    }

    #[test]
    fn session_refusals_are_recognised() {
        let refused = [
            "[h264_nvenc @ 0x55d1] OpenEncodeSessionEx failed: out of memory (10): (no details)",
            "[hevc_nvenc @ 0x55d1] OpenEncodeSessionEx failed: incompatible client key (21): (no details)",
            "[h264_nvenc @ 0x5d0] OpenEncodeSessionEx failed: unsupported device (2): (no details)",
            "[h264_nvenc @ 0x5d0] No capable devices found",
            "[h264_nvenc @ 0x5d0] No NVENC capable devices found",
            "[h264_nvenc @ 0x5d0] CreateInputBuffer failed: out of memory (10)",
            "[h264_nvenc @ 0x5d0] cu->cuCtxCreate(&ctx->cu_context_internal, 0, cu_device) failed -> CUDA_ERROR_OUT_OF_MEMORY: out of memory",
            "NVENC: too many concurrent sessions",
            "encoder session limit reached",
        ];
        for l in refused {
            assert!(nvenc_session_refused(l), "{l}");
        }
        let other = [
            "[h264_nvenc @ 0x5d0] InitializeEncoder failed: invalid param (8): Invalid Level.",
            "[h264_nvenc @ 0x5d0] Cannot load libcuda.so.1",
            "Error initializing output stream 0:0 -- Error while opening encoder for output stream #0:0",
            "[libx264 @ 0x5d0] using cpu capabilities: MMX2 SSE2Fast",
            "frame=  100 fps= 25 q=23.0 size=     512kB time=00:00:04.00",
            "",
        ];
        for l in other {
            assert!(!nvenc_session_refused(l), "{l}");
        }
    }

    #[test]
    fn probe_result_serialises_with_a_result_tag() {
        let json = serde_json::to_value(ProbeResult::Failed {
            reason: "no".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"result": "failed", "reason": "no"})
        );
        let json = serde_json::to_value(ProbeResult::Ok).unwrap();
        assert_eq!(json, serde_json::json!({"result": "ok"}));
    }

    fn sample_gpu() -> GpuInfo {
        GpuInfo {
            encoder_capacity_h264: Some(100),
            encoder_utilization_percent: Some(7),
            memory_total_bytes: Some(80 << 30),
            errors: vec!["encoder_capacity_hevc: NotSupported".into()],
            name: "NVIDIA H100 80GB HBM3".into(),
            ..GpuInfo::unreadable(0, Vec::new())
        }
    }

    #[test]
    fn record_sets_labelled_gauges_and_skips_missing_fields() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let inv = Inventory {
            gpus: vec![sample_gpu()],
            ..Inventory::default()
        };
        metrics::with_local_recorder(&recorder, || record(&inv));
        let text = handle.render();
        assert!(text.contains("sluice_gpus 1"), "{text}");
        assert!(
            text.contains(
                "sluice_gpu_encoder_utilization_percent{gpu=\"0\",name=\"NVIDIA H100 80GB HBM3\"} 7"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_gpu_encoder_capacity_percent{gpu=\"0\",name=\"NVIDIA H100 80GB HBM3\",codec=\"h264\"} 100"
            ),
            "{text}"
        );
        assert!(!text.contains("codec=\"hevc\""), "{text}");
        assert!(!text.contains("sluice_gpu_temperature_celsius"), "{text}");
    }

    #[test]
    fn record_without_gpus_sets_zero() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || record(&Inventory::default()));
        assert!(handle.render().contains("sluice_gpus 0"));
    }
}
