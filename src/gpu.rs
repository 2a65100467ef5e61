//! NVIDIA GPU inventory (NVML) and FFmpeg NVENC/NVDEC probes.
