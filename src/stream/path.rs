//! Stream paths (`APP/KEY`) and the rule every path segment follows, so
//! paths are safe in URLs, metrics labels and SRT streamids. Pure data: the
//! RTMP server, the SRT streamid parser, push targets and the config all
//! check names with the same rule.

/// A validated stream path: one application segment and one key segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPath {
    pub app: String,
    pub key: String,
}

impl StreamPath {
    /// Build the path from RTMP's `app` (connect) and publishing name.
    /// Query strings (`key?token=...`) and a trailing `/` are not part of
    /// the path; they are kept by the caller for auth.
    pub fn from_rtmp(app: &str, name: &str) -> Result<StreamPath, String> {
        let app = app.split('?').next().unwrap_or("").trim_end_matches('/');
        let key = name.split('?').next().unwrap_or("");
        validate_segment(app).map_err(|e| format!("application name {e}"))?;
        validate_segment(key).map_err(|e| format!("stream key {e}"))?;
        Ok(StreamPath {
            app: app.to_string(),
            key: key.to_string(),
        })
    }
}

impl std::fmt::Display for StreamPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.key)
    }
}

/// A path segment (application or stream key): what sluice accepts in
/// `APP/KEY`, so paths are safe in URLs, metrics labels and SRT streamids.
pub fn validate_segment(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 128 {
        return Err(format!("is {} bytes long; at most 128 allowed", s.len()));
    }
    if s == "." || s == ".." {
        return Err(format!("{s:?} is not a valid name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use letters, digits, '-', '_', '.', '~'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_strip_queries_and_refuse_bad_names() {
        let p = StreamPath::from_rtmp("live/", "cam1?token=abc").unwrap();
        assert_eq!(p.to_string(), "live/cam1");
        assert!(StreamPath::from_rtmp("live", "").is_err());
        assert!(StreamPath::from_rtmp("live", "a/b").is_err());
        assert!(StreamPath::from_rtmp("", "cam").is_err());
        assert!(StreamPath::from_rtmp("live", "..").is_err());
    }

    #[test]
    fn segments_are_url_and_label_safe() {
        assert!(validate_segment("cam-1_a.b~c").is_ok());
        assert!(validate_segment(&"a".repeat(128)).is_ok());
        assert!(validate_segment(&"a".repeat(129)).is_err());
        for bad in ["", ".", "..", "a b", "a/b", "a?b", "ä"] {
            assert!(validate_segment(bad).is_err(), "{bad:?}");
        }
    }
}
