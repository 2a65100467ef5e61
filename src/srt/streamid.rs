//! SRT streamid parsing (SRT access control, "SRT Stream ID" recommended
//! syntax `#!::key=value,...`) plus the short forms sluice accepts.
//!
//! Forms: `#!::r=live/cam1,m=request` (raw or percent-encoded, as OBS and
//! ffmpeg users often send it), `live/cam1`, `read:live/cam1`,
//! `publish:live/cam1`, and a rendition suffix `live/cam1/720p`. A short
//! form may carry parameters as a query (`publish:live/cam1?key=KEY`). Pure: a string in, a request or an
//! error with the SRT rejection code out. A streamid carries secrets
//! (`s=`, `user_token=`) in any encoding, so errors never quote it and
//! logs print [`redact`]'s rendering, built from the parsed fields.

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

/// A parsed pull or publish request.
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

/// Why a streamid was refused. The messages never quote the caller's
/// bytes (they may hold a token): log [`redact`] beside them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("streamid is empty")]
    Empty,
    #[error("streamid is {0} bytes; at most 512 allowed")]
    TooLong(usize),
    #[error("streamid is malformed: {0}")]
    Malformed(&'static str),
    #[error("streamid names no resource (r=APP/KEY)")]
    NoResource,
    #[error("bad stream path: {0}")]
    BadPath(&'static str),
    #[error("the mode is not offered (use m=request or m=publish)")]
    BadMode,
}

impl StreamIdError {
    /// The SRT rejection code a caller should see.
    pub fn code(&self) -> i32 {
        match self {
            StreamIdError::BadMode => code::BAD_MODE,
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
                "expected APP/KEY or APP/KEY/RENDITION",
            ))
        }
    };
    // The segment is not quoted: it is the caller's bytes.
    for (seg, why) in [
        (
            app,
            "the application is not 1-128 letters, digits, '-', '_', '.', '~'",
        ),
        (
            key,
            "the stream key is not 1-128 letters, digits, '-', '_', '.', '~'",
        ),
        (
            rendition,
            "the rendition is not 1-128 letters, digits, '-', '_', '.', '~'",
        ),
    ] {
        if crate::stream::path::validate_segment(seg).is_err() {
            return Err(StreamIdError::BadPath(why));
        }
    }
    Ok((format!("{app}/{key}"), rendition.to_string()))
}

/// A streamid as the caller meant it: percent-decoded once when it has
/// escapes (clients often encode '#', ',' and '=').
fn decode(streamid: &str) -> Result<String, StreamIdError> {
    if streamid.contains('%') {
        percent_decode(streamid).ok_or(StreamIdError::Malformed("bad percent-encoding"))
    } else {
        Ok(streamid.to_string())
    }
}

/// The `key=value` pairs of an access-control body (after `#!::`).
fn pairs(body: &str) -> Result<BTreeMap<String, String>, StreamIdError> {
    let mut params = BTreeMap::new();
    for pair in body.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or(StreamIdError::Malformed("a key without '='"))?;
        if k.is_empty() {
            return Err(StreamIdError::Malformed("an empty key"));
        }
        params.insert(k.to_string(), v.to_string());
    }
    Ok(params)
}

/// A short form (`read:PATH`, `publish:PATH`, or a bare `PATH`), each
/// with an optional `?k=v&k2=v2` query: its mode, its resource and its
/// parameters. A query may not set `r` or `m` (the form says them) nor
/// hold ',' (the access-control separator), so every request has one
/// spelling in the `#!::` form too.
fn short_form(decoded: &str) -> Result<(Mode, &str, BTreeMap<String, String>), StreamIdError> {
    let (mode, rest) = if let Some(r) = decoded.strip_prefix("read:") {
        (Mode::Request, r)
    } else if let Some(r) = decoded.strip_prefix("publish:") {
        (Mode::Publish, r)
    } else {
        (Mode::Request, decoded)
    };
    let Some((resource, query)) = rest.split_once('?') else {
        return Ok((mode, rest, BTreeMap::new()));
    };
    if query.contains(',') {
        return Err(StreamIdError::Malformed("a ',' in the query"));
    }
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or(StreamIdError::Malformed("a key without '='"))?;
        if k.is_empty() || k == "r" || k == "m" {
            return Err(StreamIdError::Malformed(
                "an empty key, r or m in the query",
            ));
        }
        params.insert(k.to_string(), v.to_string());
    }
    Ok((mode, resource, params))
}

/// Parameters whose values are shown by [`redact`]: the SRT access-control
/// keys that name things (user, host, type). Every other value — `s`,
/// `user_token`, and any key a client invents — may be a secret.
const SHOWN_PARAMS: [&str; 4] = ["u", "h", "t", "join"];

/// What [`redact`] prints in place of a value or key it does not show.
pub const MASK: &str = "***";

/// Whether `s` can be printed as it is: printable ASCII without the
/// access-control separators or '%' (a rendering is never decoded again),
/// at most 128 bytes.
fn printable(s: &str) -> bool {
    s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'=' | b'%'))
}

/// One caller-sent value (a user name, say) as a log or report may print
/// it: itself when [`redact`] would show it, else [`MASK`]. Never a raw
/// control character or line break, whatever the encoding it came in.
pub fn shown(value: &str) -> &str {
    if printable(value) {
        value
    } else {
        MASK
    }
}

/// A streamid for logs and reports, never its raw bytes: rebuilt from the
/// parsed fields as `#!::r=APP/KEY[/RENDITION],m=MODE,k=v,...` with every
/// value other than `u`, `h`, `t` and `join` replaced by `***`, whatever encoding
/// the caller used. An unusable resource or mode is masked too; a
/// streamid that does not split into pairs at all is shown as its length
/// and a short SHA-256 prefix (to correlate attempts).
pub fn redact(streamid: &str) -> String {
    let opaque = || {
        use sha2::Digest;
        let d = sha2::Sha256::digest(streamid.as_bytes());
        format!(
            "<{} bytes, sha256 {:02x}{:02x}{:02x}{:02x}>",
            streamid.len(),
            d[0],
            d[1],
            d[2],
            d[3]
        )
    };
    if streamid.is_empty() {
        return "<empty>".into();
    }
    if streamid.len() > MAX_LEN {
        return opaque();
    }
    let Ok(decoded) = decode(streamid) else {
        return opaque();
    };
    let (resource, mode, params) = if let Some(body) = decoded.strip_prefix("#!::") {
        let Ok(mut params) = pairs(body) else {
            return opaque();
        };
        let resource = params.remove("r");
        let mode = params.remove("m").or_else(|| Some("request".into()));
        (resource, mode, params)
    } else {
        let Ok((mode, rest, params)) = short_form(&decoded) else {
            return opaque();
        };
        let mode = match mode {
            Mode::Request => "request",
            Mode::Publish => "publish",
        };
        (Some(rest.to_string()), Some(mode.to_string()), params)
    };
    let resource = match resource.as_deref().map(split_path) {
        None => None,
        Some(Ok((path, rendition))) if rendition == "source" => Some(path),
        Some(Ok((path, rendition))) => Some(format!("{path}/{rendition}")),
        Some(Err(_)) => Some(MASK.to_string()),
    };
    let mut out = String::from("#!::");
    let mut fields: Vec<String> = Vec::new();
    if let Some(r) = resource {
        fields.push(format!("r={r}"));
    }
    match mode.as_deref() {
        None => {}
        Some(m @ ("request" | "publish")) => fields.push(format!("m={m}")),
        Some(_) => fields.push(format!("m={MASK}")),
    }
    for (k, v) in &params {
        let key = if printable(k) { k.as_str() } else { MASK };
        let value = if SHOWN_PARAMS.contains(&key) && printable(v) {
            v.as_str()
        } else {
            MASK
        };
        fields.push(format!("{key}={value}"));
    }
    out.push_str(&fields.join(","));
    out
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
    let decoded = decode(streamid)?;
    if let Some(body) = decoded.strip_prefix("#!::") {
        let mut params = pairs(body)?;
        let resource = params.remove("r").ok_or(StreamIdError::NoResource)?;
        let mode = match params.remove("m").as_deref() {
            None | Some("request") => Mode::Request,
            Some("publish") => Mode::Publish,
            Some(_) => return Err(StreamIdError::BadMode),
        };
        let (path, rendition) = split_path(&resource)?;
        return Ok(StreamRequest {
            path,
            rendition,
            mode,
            params,
        });
    }
    let (mode, rest, params) = short_form(&decoded)?;
    let (path, rendition) = split_path(rest)?;
    Ok(StreamRequest {
        path,
        rendition,
        mode,
        params,
    })
}

/// [`redact`] shows no value it must hide: its rendering, parsed again,
/// has `***` for every parameter outside [`SHOWN_PARAMS`], and keeps the
/// path, rendition and mode of a streamid that parses.
#[cfg(feature = "fuzzing")]
fn check_redacted(sid: &str) {
    let shown = redact(sid);
    assert!(shown.len() <= 3 * MAX_LEN, "{} bytes", shown.len());
    // Nothing a log line could be forged with.
    let clean = |t: &str| t.chars().all(|c| c == ' ' || c.is_ascii_graphic());
    assert!(clean(&shown), "{shown:?}");
    if let Ok(req) = parse(sid) {
        assert!(req.params.values().all(|v| clean(self::shown(v))));
    }
    if shown.starts_with('<') {
        assert!(!shown.contains('='), "{shown:?}");
        return;
    }
    let body = shown.strip_prefix("#!::").expect("the access-control form");
    let params = pairs(body).unwrap_or_else(|e| panic!("{shown:?} does not split: {e}"));
    for (k, v) in &params {
        if !["r", "m"].contains(&k.as_str()) && !SHOWN_PARAMS.contains(&k.as_str()) {
            assert_eq!(v, MASK, "{k} shown in {shown:?}");
        }
    }
    if let (Ok(req), true) = (parse(sid), shown.len() <= MAX_LEN) {
        let again = parse(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(
            (again.path, again.rendition, again.mode),
            (req.path, req.rendition, req.mode),
            "{shown:?}"
        );
    }
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
    check_redacted(&sid);
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
    fn a_short_form_carries_its_parameters_as_a_query() {
        let r = parse("publish:live/cam1?key=s3cret&x=1").unwrap();
        assert_eq!((r.path.as_str(), r.mode), ("live/cam1", Mode::Publish));
        assert_eq!(
            (r.params["key"].as_str(), r.params["x"].as_str()),
            ("s3cret", "1")
        );
        assert_eq!(parse("publish%3Alive%2Fcam1%3Fkey%3Ds3cret").unwrap(), {
            let mut r = r.clone();
            r.params.remove("x");
            r
        });
        for bad in [
            "publish:live/cam1?m=request",
            "publish:live/a?key=a,b",
            "live/a?=1",
            "live/a?k",
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), code::BAD_REQUEST, "{bad}");
        }
        // The key never shows in logs.
        let shown = redact("publish:live/cam1?key=s3cret");
        assert_eq!(shown, "#!::r=live/cam1,m=publish,key=***");
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
        // m=publish parses (the listener decides whether it is offered).
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
    fn a_value_is_shown_only_when_printable() {
        assert_eq!(shown("alice"), "alice");
        for v in [
            "a\nb",
            "a\rb",
            "\u{1b}[2K",
            "a\u{85}b",
            "a\u{2028}b",
            "a b",
            "a,b",
        ] {
            assert_eq!(shown(v), MASK, "{v:?}");
        }
    }

    #[test]
    fn redaction_is_built_from_the_parsed_fields_in_every_encoding() {
        let cases = [
            (
                "#!::r=club/cam2,u=alice,s=TOKEN",
                "#!::r=club/cam2,m=request,s=***,u=alice",
            ),
            (
                "%23%21%3A%3Ar%3Dclub%2Fcam2%2Cu%3Dalice%2Cs%3DTOKEN",
                "#!::r=club/cam2,m=request,s=***,u=alice",
            ),
            (
                "#!::r=club/cam2,u=alice,s%3DTOKEN",
                "#!::r=club/cam2,m=request,s=***,u=alice",
            ),
            (
                "%23!::user_token=TOKEN,r=club/cam2/720p,h=example.com,t=stream",
                "#!::r=club/cam2/720p,m=request,h=example.com,t=stream,user_token=***",
            ),
            // Keys a client invents may be secrets too; so may a mode.
            (
                "#!::r=a/b,key=TOKEN,passphrase=TOKEN",
                "#!::r=a/b,m=request,key=***,passphrase=***",
            ),
            ("#!::r=a/b,m=TOKEN,s=TOKEN", "#!::r=a/b,m=***,s=***"),
            // A bad resource is masked; shown values must be printable.
            ("#!::r=a/TOKEN?x,u=alice", "#!::r=***,m=request,u=alice"),
            ("#!::r=a/b,u=TO%09KEN", "#!::r=a/b,m=request,u=***"),
            ("#!::u=a%2525b", "#!::m=request,u=***"),
            // The join mode names no one.
            (
                "read:live/cam1?join=keyframe&s=TOKEN",
                "#!::r=live/cam1,m=request,join=keyframe,s=***",
            ),
            // Short forms.
            ("live/cam1", "#!::r=live/cam1,m=request"),
            ("publish:live/cam1/720p", "#!::r=live/cam1/720p,m=publish"),
            ("live/TOKEN=1", "#!::r=***,m=request"),
        ];
        for (sid, want) in cases {
            assert_eq!(redact(sid), want, "{sid}");
        }
        // What does not split into pairs shows only its length and a hash.
        for sid in [
            "#!::r=a/b,s=TOKEN,broken",
            "%23%21%3A%3As%3DTOKEN%2Cbroken",
            "#!::s=TOKEN,=x",
            "%zzTOKEN",
            "#!::s=TOKEN\u{0}%C3%28",
        ] {
            let shown = redact(sid);
            assert!(
                shown.starts_with(&format!("<{} bytes, sha256 ", sid.len())),
                "{sid}: {shown}"
            );
            assert!(!shown.contains("TOKEN"));
        }
        assert_eq!(redact(""), "<empty>");
        assert!(redact(&format!("#!::s={}", "T".repeat(600))).starts_with("<606 bytes"));
    }

    #[test]
    fn errors_never_quote_the_streamid() {
        for sid in [
            "#!::r=a/b,s=TOKEN,broken",
            "#!::r=a/TOKEN?,s=x",
            "#!::r=a/b,m=TOKEN",
            "TOKEN",
            "a/b/c/TOKEN",
            "%zzTOKEN",
        ] {
            let e = parse(sid).unwrap_err().to_string();
            assert!(!e.contains("TOKEN"), "{sid}: {e}");
        }
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
