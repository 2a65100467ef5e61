//! SRT streamid parsing (SRT access control, "SRT Stream ID" recommended
//! syntax `#!::key=value,...`) plus the short forms sluice accepts.
//!
//! Forms: `#!::r=live/cam1,m=request` (raw or percent-encoded, as OBS and
//! ffmpeg users often send it), `live/cam1`, `read:live/cam1`, and a
//! rendition suffix `live/cam1/720p`. Pure: a string in, a request or an
//! error with the SRT rejection code out.

use std::collections::BTreeMap;

/// Longest streamid libsrt accepts (SRTO_STREAMID).
pub const MAX_LEN: usize = 512;

/// SRT access-control rejection codes (user range 1000+, from the HTTP set).
pub mod code {
    pub const BAD_REQUEST: i32 = 1400;
    pub const UNAUTHORIZED: i32 = 1401;
    pub const OVERLOAD: i32 = 1402;
    pub const FORBIDDEN: i32 = 1403;
    pub const NOT_FOUND: i32 = 1404;
    pub const BAD_MODE: i32 = 1405;
    pub const CONFLICT: i32 = 1409;
    pub const UNAVAILABLE: i32 = 1503;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Request,
    Publish,
}

/// A parsed pull (or refused publish) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// `APP/KEY`.
    pub path: String,
    /// `source` unless a rendition was named.
    pub rendition: String,
    pub mode: Mode,
    /// `u` (user), `s` (session), `h` (host), `t` (type) and any other keys, kept for auth.
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("streamid is empty")]
    Empty,
    #[error("streamid is {0} bytes; at most 512 allowed")]
    TooLong(usize),
    #[error("streamid {0:?} is malformed: {1}")]
    Malformed(String, &'static str),
    #[error("streamid names no resource (r=APP/KEY)")]
    NoResource,
    #[error("bad stream path {0:?}: {1}")]
    BadPath(String, String),
    #[error("mode {0:?} is not offered (use m=request)")]
    BadMode(String),
}

impl StreamIdError {
    /// The SRT rejection code a caller should see.
    pub fn code(&self) -> i32 {
        match self {
            StreamIdError::BadMode(_) => code::BAD_MODE,
            _ => code::BAD_REQUEST,
        }
    }
}

/// Decode `%XX` escapes; `None` on a broken escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Split `APP/KEY[/RENDITION]` and check each segment.
fn split_path(raw: &str) -> Result<(String, String), StreamIdError> {
    let parts: Vec<&str> = raw.split('/').collect();
    let (app, key, rendition) = match parts[..] {
        [app, key] => (app, key, "source"),
        [app, key, rendition] => (app, key, rendition),
        _ => {
            return Err(StreamIdError::BadPath(
                raw.to_string(),
                "expected APP/KEY or APP/KEY/RENDITION".into(),
            ))
        }
    };
    for seg in [app, key, rendition] {
        crate::stream::path::validate_segment(seg)
            .map_err(|e| StreamIdError::BadPath(raw.to_string(), format!("segment {e}")))?;
    }
    Ok((format!("{app}/{key}"), rendition.to_string()))
}

/// Parse a streamid as sent by a caller.
pub fn parse(streamid: &str) -> Result<StreamRequest, StreamIdError> {
    if streamid.is_empty() {
        return Err(StreamIdError::Empty);
    }
    if streamid.len() > MAX_LEN {
        return Err(StreamIdError::TooLong(streamid.len()));
    }
    // Clients often percent-encode '#', ',' and '='; decode once.
    let decoded = if streamid.contains('%') {
        percent_decode(streamid)
            .ok_or_else(|| StreamIdError::Malformed(streamid.into(), "bad percent-encoding"))?
    } else {
        streamid.to_string()
    };
    if let Some(body) = decoded.strip_prefix("#!::") {
        let mut params = BTreeMap::new();
        for pair in body.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| StreamIdError::Malformed(decoded.clone(), "a key without '='"))?;
            if k.is_empty() {
                return Err(StreamIdError::Malformed(decoded.clone(), "an empty key"));
            }
            params.insert(k.to_string(), v.to_string());
        }
        let resource = params.remove("r").ok_or(StreamIdError::NoResource)?;
        let mode = match params.remove("m").as_deref() {
            None | Some("request") => Mode::Request,
            Some("publish") => Mode::Publish,
            Some(other) => return Err(StreamIdError::BadMode(other.to_string())),
        };
        let (path, rendition) = split_path(&resource)?;
        return Ok(StreamRequest {
            path,
            rendition,
            mode,
            params,
        });
    }
    let (mode, rest) = if let Some(r) = decoded.strip_prefix("read:") {
        (Mode::Request, r)
    } else if let Some(r) = decoded.strip_prefix("publish:") {
        (Mode::Publish, r)
    } else {
        (Mode::Request, decoded.as_str())
    };
    let (path, rendition) = split_path(rest)?;
    Ok(StreamRequest {
        path,
        rendition,
        mode,
        params: BTreeMap::new(),
    })
}

/// Fuzzing entry point: `data` as a streamid (lossy UTF-8, as a caller's
/// bytes could arrive). Never panics; an accepted streamid is at most
/// [`MAX_LEN`] bytes with a valid path and rendition, and writing the request
/// back in the access-control form (and the short form, when it has no
/// extra keys) parses to the same request.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_streamid(data: &[u8]) {
    let sid = String::from_utf8_lossy(data);
    let parsed = parse(&sid);
    let req = match parsed {
        Ok(req) => req,
        Err(e) => {
            assert!(matches!(e.code(), code::BAD_REQUEST | code::BAD_MODE));
            let _ = e.to_string();
            if sid.len() > MAX_LEN {
                assert_eq!(e, StreamIdError::TooLong(sid.len()));
            }
            return;
        }
    };
    assert!(
        sid.len() <= MAX_LEN,
        "accepted a {}-byte streamid",
        sid.len()
    );
    let full = format!("{}/{}", req.path, req.rendition);
    assert_eq!(
        split_path(&full),
        Ok((req.path.clone(), req.rendition.clone()))
    );
    // Decoding happens once, so escaping '%' is all a rewrite needs.
    let reparse = |s: String| {
        let s = s.replace('%', "%25");
        if s.len() <= MAX_LEN {
            assert_eq!(parse(&s).as_ref(), Ok(&req), "rewritten as {s:?}");
        }
    };
    let mode = match req.mode {
        Mode::Request => "request",
        Mode::Publish => "publish",
    };
    let mut canonical = format!("#!::r={full},m={mode}");
    for (k, v) in &req.params {
        canonical.push_str(&format!(",{k}={v}"));
    }
    reparse(canonical);
    if req.params.is_empty() {
        let short = match req.mode {
            Mode::Request => format!("read:{full}"),
            Mode::Publish => format!("publish:{full}"),
        };
        reparse(short);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_control_syntax_raw_and_percent_encoded() {
        for s in [
            "#!::r=live/cam1,m=request",
            "%23%21%3A%3Ar%3Dlive%2Fcam1%2Cm%3Drequest",
            "#!::m=request,r=live/cam1",
            "#!::r=live/cam1",
        ] {
            let r = parse(s).unwrap();
            assert_eq!(r.path, "live/cam1", "{s}");
            assert_eq!(r.rendition, "source");
            assert_eq!(r.mode, Mode::Request);
        }
    }

    #[test]
    fn other_keys_are_kept_for_auth() {
        let r = parse("#!::r=live/cam1/720p,m=request,u=alice,s=abc123,h=example.com,t=stream")
            .unwrap();
        assert_eq!(r.rendition, "720p");
        assert_eq!(r.params["u"], "alice");
        assert_eq!(r.params["s"], "abc123");
        assert_eq!(r.params["h"], "example.com");
        assert_eq!(r.params["t"], "stream");
    }

    #[test]
    fn short_forms() {
        assert_eq!(parse("live/cam1").unwrap().path, "live/cam1");
        let r = parse("read:live/cam1/480p").unwrap();
        assert_eq!(
            (r.path.as_str(), r.rendition.as_str()),
            ("live/cam1", "480p")
        );
        assert_eq!(parse("publish:live/cam1").unwrap().mode, Mode::Publish);
    }

    #[test]
    fn errors_carry_the_srt_code() {
        let cases = [
            ("", code::BAD_REQUEST),
            ("#!::m=request", code::BAD_REQUEST),
            ("#!::r=live/cam1,m=bidirectional", code::BAD_MODE),
            ("#!::r", code::BAD_REQUEST),
            ("live", code::BAD_REQUEST),
            ("live/a/b/c", code::BAD_REQUEST),
            ("live/../x", code::BAD_REQUEST),
            ("%zz", code::BAD_REQUEST),
            ("%C3%28", code::BAD_REQUEST),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s).unwrap_err().code(), want, "{s}");
        }
        // m=publish parses; the listener refuses it with 1405.
        assert_eq!(
            parse("#!::r=live/cam1,m=publish").unwrap().mode,
            Mode::Publish
        );
        assert!(matches!(
            parse(&"a".repeat(513)),
            Err(StreamIdError::TooLong(513))
        ));
    }

    #[test]
    fn arbitrary_strings_never_panic() {
        let alphabet = [
            "#", "!", ":", "=", ",", "%", "2", "F", "/", "r", "m", "a", "é", "%2",
        ];
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                s.push_str(alphabet[(x % alphabet.len() as u32) as usize]);
            }
            let _ = parse(&s);
        }
    }
}
