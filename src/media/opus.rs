//! Opus identification header parsing (RFC 7845 5.1, "OpusHead"), the E-RTMP `Opus` sequence start.
//! Only the channel count is read; Opus always decodes at 48 kHz, so the header's input sample rate is
//! informational and not reported as the output rate.

use super::{AudioParams, ByteReader, MediaError};

const HEAD: &str = "OpusHead";

/// Parses an Opus identification header into channels and the 48 kHz output rate.
pub fn parse_opus_head(head: &[u8]) -> Result<AudioParams, MediaError> {
    let mut r = ByteReader::new(head, HEAD);
    let magic = r.take(8, "magic signature")?;
    if magic != b"OpusHead" {
        return Err(r.invalid("magic signature", 0, "expected \"OpusHead\""));
    }
    let version = r.u8("version")?;
    // RFC 7845 5.1: the upper four bits are the major version; only 0 is
    // defined and a decoder must reject others.
    if version >> 4 != 0 {
        return Err(r.invalid("version", version.into(), "unsupported major version"));
    }
    let channels = r.u8("output channel count")?;
    if channels == 0 {
        return Err(r.invalid("output channel count", 0, "must be non-zero"));
    }
    r.u16("pre-skip")?;
    r.take(4, "input sample rate")?;
    Ok(AudioParams {
        sample_rate: 48_000,
        channels,
        object_type: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEREO_HEAD: [u8; 19] = [
        b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', 1, 2, 0x38, 0x01, 0x80, 0xBB, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn parses_stereo_head() {
        let p = parse_opus_head(&STEREO_HEAD).unwrap();
        assert_eq!(
            p,
            AudioParams {
                sample_rate: 48_000,
                channels: 2,
                object_type: None
            }
        );
    }

    #[test]
    fn rejects_bad_magic_version_and_truncation() {
        let mut h = STEREO_HEAD;
        h[0] = b'X';
        assert!(parse_opus_head(&h).is_err());
        let mut h = STEREO_HEAD;
        h[8] = 0x10;
        assert!(parse_opus_head(&h).is_err());
        for n in 0..16 {
            assert!(parse_opus_head(&STEREO_HEAD[..n]).is_err(), "len {n}");
        }
    }
}
