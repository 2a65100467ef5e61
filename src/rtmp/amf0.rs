//! Sans-IO decoder and encoder for AMF0 (Adobe "Action Message Format -- AMF 0"), the
//! serialization used by RTMP command and data messages, including the AVM+ switch to a
//! single scalar AMF3 value. The decoder treats its input as hostile: it never panics,
//! never pre-allocates from a length or count read off the wire, and refuses container
//! nesting deeper than a caller-chosen limit so crafted input cannot overflow the stack.

use bytes::{BufMut, BytesMut};

/// Nesting limit used by the fuzz round trip and recommended for network input.
///
/// Real RTMP peers nest at most two or three levels (`connect` command object,
/// `onMetaData` ECMA array), so 32 leaves ample room while bounding recursion.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// AMF0 type markers, AMF0 spec section 2.1 ("Types Overview").
mod marker {
    pub const NUMBER: u8 = 0x00; // 2.2
    pub const BOOLEAN: u8 = 0x01; // 2.3
    pub const STRING: u8 = 0x02; // 2.4
    pub const OBJECT: u8 = 0x03; // 2.5
    pub const MOVIECLIP: u8 = 0x04; // 2.6, reserved, not supported
    pub const NULL: u8 = 0x05; // 2.7
    pub const UNDEFINED: u8 = 0x06; // 2.8
    pub const REFERENCE: u8 = 0x07; // 2.9
    pub const ECMA_ARRAY: u8 = 0x08; // 2.10
    pub const OBJECT_END: u8 = 0x09; // 2.11
    pub const STRICT_ARRAY: u8 = 0x0A; // 2.12
    pub const DATE: u8 = 0x0B; // 2.13
    pub const LONG_STRING: u8 = 0x0C; // 2.14
    pub const UNSUPPORTED: u8 = 0x0D; // 2.15
    pub const RECORDSET: u8 = 0x0E; // 2.16, reserved, not supported
    pub const XML_DOCUMENT: u8 = 0x0F; // 2.17
    pub const TYPED_OBJECT: u8 = 0x10; // 2.18
    pub const AVMPLUS: u8 = 0x11; // 3.1, "AVM+ Type Marker": one AMF3 value follows
}

/// AMF3 type markers, AMF3 spec section 3.1 ("Overview"); only the scalar ones we decode.
mod amf3_marker {
    pub const UNDEFINED: u8 = 0x00; // 3.2
    pub const NULL: u8 = 0x01; // 3.3
    pub const FALSE: u8 = 0x02; // 3.4
    pub const TRUE: u8 = 0x03; // 3.5
    pub const INTEGER: u8 = 0x04; // 3.6
    pub const DOUBLE: u8 = 0x05; // 3.7
    pub const STRING: u8 = 0x06; // 3.8
}

/// Smallest value an AMF3 integer (29-bit signed, AMF3 spec 3.6) can carry.
const AMF3_INT_MIN: i32 = -(1 << 28);
/// Largest value an AMF3 integer (29-bit signed, AMF3 spec 3.6) can carry.
const AMF3_INT_MAX: i32 = (1 << 28) - 1;
/// An inline AMF3 string length shares a U29 with the "inline" flag bit (AMF3 spec 3.8),
/// leaving 28 bits for the byte length.
const AMF3_MAX_STRING_LEN: usize = (1 << 28) - 1;
/// Length field widths: u16 for strings, property names and class names (AMF0 1.3.1),
/// u32 for long strings and XML (AMF0 2.14, 2.17).
const U16_MAX_LEN: usize = u16::MAX as usize;
const U32_MAX_LEN: usize = u32::MAX as usize;

/// One decoded AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    /// Marker 0x00 (AMF0 2.2): 8-byte big-endian IEEE-754 double.
    Number(f64),
    /// Marker 0x01 (AMF0 2.3): any non-zero byte is `true`.
    Boolean(bool),
    /// Marker 0x02 (AMF0 2.4) or 0x0C long string (2.14); the encoder picks the marker
    /// from the byte length.
    String(String),
    /// Marker 0x03 (AMF0 2.5): anonymous object, properties kept in wire order.
    Object(Vec<(String, Amf0Value)>),
    /// Marker 0x05 (AMF0 2.7).
    Null,
    /// Marker 0x06 (AMF0 2.8).
    Undefined,
    /// Marker 0x07 (AMF0 2.9): index of an earlier complex value. Deliberately left
    /// unresolved: resolving would clone whole trees per reference, letting a few bytes
    /// of input expand into unbounded memory.
    Reference(u16),
    /// Marker 0x08 (AMF0 2.10): the u32 count on the wire is only a hint; properties are
    /// read until the object-end marker.
    EcmaArray(Vec<(String, Amf0Value)>),
    /// Marker 0x0A (AMF0 2.12): dense array with an exact u32 count.
    StrictArray(Vec<Amf0Value>),
    /// Marker 0x0B (AMF0 2.13): milliseconds since the Unix epoch (UTC) plus a
    /// timezone field the spec reserves (should be 0); kept verbatim.
    Date { millis: f64, timezone: i16 },
    /// Marker 0x0F (AMF0 2.17): XML text with a u32 length.
    Xml(String),
    /// Marker 0x10 (AMF0 2.18): object with a registered class name.
    TypedObject {
        class: String,
        properties: Vec<(String, Amf0Value)>,
    },
    /// Marker 0x0D (AMF0 2.15).
    Unsupported,
    /// Marker 0x11 (AMF0 3.1): exactly one AMF3 value follows.
    Amf3(Amf3Value),
}

/// The scalar subset of AMF3 (AMF3 spec 3.2 to 3.8) that may follow an AVM+ marker.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf3Value {
    Undefined,
    Null,
    False,
    True,
    /// 29-bit signed integer (AMF3 3.6). Values outside `-2^28 ..= 2^28 - 1` cannot be
    /// represented and are encoded as `Double`, as the spec prescribes.
    Integer(i32),
    Double(f64),
    String(String),
}

/// Why a buffer could not be decoded. Offsets are byte offsets into the buffer passed
/// to [`decode_value`] / [`decode_all`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    /// The input ended while `what` was being read.
    #[error(
        "truncated AMF0 input at byte offset {offset}: reading {what} needs {needed} byte(s), \
         only {available} left"
    )]
    Truncated {
        offset: usize,
        what: &'static str,
        needed: usize,
        available: usize,
    },
    /// A reserved (0x04 MovieClip, 0x0E RecordSet) or undefined (> 0x11) AMF0 marker.
    #[error("unknown or reserved AMF0 type marker 0x{marker:02X} at byte offset {offset}")]
    UnknownMarker { marker: u8, offset: usize },
    /// A container would nest deeper than the caller's limit.
    #[error("AMF0 nesting exceeds the depth limit of {limit} at byte offset {offset}")]
    DepthExceeded { limit: usize, offset: usize },
    /// An AMF3 value type other than the supported scalars (e.g. 0x0A object, 0x09 array).
    #[error("unsupported AMF3 value type marker 0x{marker:02X} at byte offset {offset}")]
    UnsupportedAmf3 { marker: u8, offset: usize },
    /// An AMF3 string sent by reference into a string table we do not keep.
    #[error("AMF3 string references are not supported (byte offset {offset})")]
    Amf3StringReference { offset: usize },
    /// Marker 0x09 (AMF0 2.11) is only valid after an empty property name.
    #[error("unexpected AMF0 object-end marker (0x09) where a value was expected at byte offset {offset}")]
    UnexpectedObjectEnd { offset: usize },
}

impl Amf0Error {
    /// Whether this is [`Amf0Error::DepthExceeded`], i.e. likely a deliberate attack
    /// rather than a buggy encoder (useful for metrics and log levels).
    pub fn is_depth_error(&self) -> bool {
        matches!(self, Amf0Error::DepthExceeded { .. })
    }
}

impl Amf0Value {
    /// The text of a `String` value.
    /// AMF3 strings (after an AVM+ switch) count too: clients using
    /// objectEncoding 3 send command arguments that way.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::Amf3(Amf3Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The value of a `Number`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) | Amf0Value::Amf3(Amf3Value::Double(n)) => Some(*n),
            Amf0Value::Amf3(Amf3Value::Integer(i)) => Some(*i as f64),
            _ => None,
        }
    }

    /// The value of a `Boolean`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The properties of an `Object`, `EcmaArray` or `TypedObject`, in wire order.
    pub fn properties(&self) -> Option<&[(String, Amf0Value)]> {
        match self {
            Amf0Value::Object(props)
            | Amf0Value::EcmaArray(props)
            | Amf0Value::TypedObject {
                properties: props, ..
            } => Some(props),
            _ => None,
        }
    }

    /// Property lookup for Object / EcmaArray / TypedObject (first match), None otherwise.
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        self.properties()?
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }

    /// Builds an anonymous `Object` from `(name, value)` pairs, keeping their order.
    pub fn object<K: Into<String>>(props: impl IntoIterator<Item = (K, Amf0Value)>) -> Amf0Value {
        Amf0Value::Object(props.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Builds a `String` value.
    pub fn string(s: impl Into<String>) -> Amf0Value {
        Amf0Value::String(s.into())
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Bounds-checked cursor; every read goes through `take`, so no read can panic.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn truncated(&self, what: &'static str, needed: usize) -> Amf0Error {
        Amf0Error::Truncated {
            offset: self.pos,
            what,
            needed,
            available: self.remaining(),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Amf0Error> {
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        // Already implied by the check above; checked anyway so a caller-supplied
        // position near usize::MAX can never overflow.
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.truncated(what, n))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(what, n))?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Amf0Error> {
        let start = self.pos;
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| Amf0Error::Truncated {
            offset: start,
            what,
            needed: N,
            available: bytes.len(),
        })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Amf0Error> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Amf0Error> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, Amf0Error> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Amf0Error> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn f64(&mut self, what: &'static str) -> Result<f64, Amf0Error> {
        Ok(f64::from_be_bytes(self.array(what)?))
    }

    /// Reads `len` bytes as text. Peers do send invalid UTF-8 (e.g. Latin-1 stream
    /// titles), and rejecting a whole command for that helps nobody, so it is lossy.
    fn text(&mut self, len: usize, what: &'static str) -> Result<String, Amf0Error> {
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// UTF-8 with a u16 byte-length header (AMF0 1.3.1 "UTF-8").
    fn short_text(
        &mut self,
        len_what: &'static str,
        what: &'static str,
    ) -> Result<String, Amf0Error> {
        let len = self.u16(len_what)?;
        self.text(usize::from(len), what)
    }

    /// UTF-8 with a u32 byte-length header (AMF0 1.3.1 "UTF-8-long").
    fn long_text(
        &mut self,
        len_what: &'static str,
        what: &'static str,
    ) -> Result<String, Amf0Error> {
        let len = self.u32(len_what)?;
        // On a 16-bit target a huge length saturates and then fails as truncated.
        self.text(usize::try_from(len).unwrap_or(usize::MAX), what)
    }
}

/// Decode one value starting at `buf[*pos]`, advancing `*pos`.
///
/// On success `*pos` points just past the value; on error it is left unchanged.
/// `max_depth` bounds the number of nested Object / EcmaArray / StrictArray /
/// TypedObject levels (a top-level object is depth 1). Decoding recurses once per
/// level, so keep the limit modest (see [`DEFAULT_MAX_DEPTH`]) for network input.
pub fn decode_value(buf: &[u8], pos: &mut usize, max_depth: usize) -> Result<Amf0Value, Amf0Error> {
    let mut reader = Reader { buf, pos: *pos };
    let value = decode_inner(&mut reader, 0, max_depth)?;
    *pos = reader.pos;
    Ok(value)
}

/// Decode consecutive values until the buffer is exhausted (an RTMP command message body).
///
/// Empty input yields an empty vector. Any malformed value fails the whole buffer.
pub fn decode_all(buf: &[u8], max_depth: usize) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut reader = Reader { buf, pos: 0 };
    // Command bodies hold a handful of values; no capacity is derived from the input.
    let mut values = Vec::new();
    while reader.remaining() > 0 {
        values.push(decode_inner(&mut reader, 0, max_depth)?);
    }
    Ok(values)
}

/// Checks the nesting limit before entering a container at `depth` (the number of
/// containers already open) and returns the depth its children are decoded at.
fn enter_container(depth: usize, max_depth: usize, offset: usize) -> Result<usize, Amf0Error> {
    if depth >= max_depth {
        return Err(Amf0Error::DepthExceeded {
            limit: max_depth,
            offset,
        });
    }
    Ok(depth + 1)
}

fn decode_inner(
    r: &mut Reader<'_>,
    depth: usize,
    max_depth: usize,
) -> Result<Amf0Value, Amf0Error> {
    let offset = r.pos;
    let m = r.u8("value type marker")?;
    let value = match m {
        marker::NUMBER => Amf0Value::Number(r.f64("number")?),
        // AMF0 2.3: zero is false, any other byte is true.
        marker::BOOLEAN => Amf0Value::Boolean(r.u8("boolean")? != 0),
        marker::STRING => Amf0Value::String(r.short_text("string length", "string bytes")?),
        marker::OBJECT => {
            let inner = enter_container(depth, max_depth, offset)?;
            Amf0Value::Object(read_properties(r, inner, max_depth, 0)?)
        }
        marker::NULL => Amf0Value::Null,
        marker::UNDEFINED => Amf0Value::Undefined,
        marker::REFERENCE => Amf0Value::Reference(r.u16("reference index")?),
        marker::ECMA_ARRAY => {
            let inner = enter_container(depth, max_depth, offset)?;
            // AMF0 2.10: the associative count is advisory and encoders get it wrong,
            // so it only seeds the capacity (bounded in `read_properties`).
            let hint = r.u32("ECMA array count")?;
            let hint = usize::try_from(hint).unwrap_or(usize::MAX);
            Amf0Value::EcmaArray(read_properties(r, inner, max_depth, hint)?)
        }
        marker::OBJECT_END => return Err(Amf0Error::UnexpectedObjectEnd { offset }),
        marker::STRICT_ARRAY => {
            let inner = enter_container(depth, max_depth, offset)?;
            let count = r.u32("strict array count")?;
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            // Every element takes at least one byte (its marker), so a count larger than
            // what is left can never be satisfied: fail now instead of allocating or
            // looping for billions of announced elements.
            if count > r.remaining() {
                return Err(r.truncated("strict array elements (at least 1 byte each)", count));
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(decode_inner(r, inner, max_depth)?);
            }
            Amf0Value::StrictArray(items)
        }
        marker::DATE => {
            let millis = r.f64("date milliseconds")?;
            let timezone = r.i16("date timezone")?;
            Amf0Value::Date { millis, timezone }
        }
        marker::LONG_STRING => {
            Amf0Value::String(r.long_text("long string length", "long string bytes")?)
        }
        marker::UNSUPPORTED => Amf0Value::Unsupported,
        marker::XML_DOCUMENT => Amf0Value::Xml(r.long_text("XML length", "XML bytes")?),
        marker::TYPED_OBJECT => {
            let inner = enter_container(depth, max_depth, offset)?;
            let class =
                r.short_text("typed object class name length", "typed object class name")?;
            let properties = read_properties(r, inner, max_depth, 0)?;
            Amf0Value::TypedObject { class, properties }
        }
        marker::AVMPLUS => Amf0Value::Amf3(decode_amf3(r)?),
        // MovieClip and RecordSet are reserved and "not supported" (AMF0 2.6, 2.16).
        marker::MOVIECLIP | marker::RECORDSET => {
            return Err(Amf0Error::UnknownMarker { marker: m, offset })
        }
        // Nothing above 0x11 is defined by either spec.
        _ => return Err(Amf0Error::UnknownMarker { marker: m, offset }),
    };
    Ok(value)
}

/// Reads `(name, value)` pairs up to the object end (AMF0 2.5: an empty name followed
/// by marker 0x09). `depth` is the depth of the container being read.
fn read_properties(
    r: &mut Reader<'_>,
    depth: usize,
    max_depth: usize,
    count_hint: usize,
) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
    // A property needs at least 3 bytes (u16 name length + value marker), which bounds
    // any capacity taken from the wire by the input actually present.
    let mut props = Vec::with_capacity(count_hint.min(r.remaining() / 3));
    loop {
        // Leniency: some encoders (notably for onMetaData) stop right after the last
        // complete property, without 00 00 09. That is unambiguous, so accept it.
        if r.remaining() == 0 {
            return Ok(props);
        }
        let name = r.short_text("object property name length", "object property name")?;
        if name.is_empty() {
            match r.peek() {
                // Empty name then end of input: a terminator cut short, same leniency.
                None => return Ok(props),
                Some(marker::OBJECT_END) => {
                    r.take(1, "object end marker")?;
                    return Ok(props);
                }
                // An empty name followed by a real value is a property named "" (other
                // decoders, e.g. librtmp, read it the same way).
                Some(_) => {}
            }
        }
        let value = decode_inner(r, depth, max_depth)?;
        props.push((name, value));
    }
}

/// Reads a U29 (AMF3 spec 1.3.1): up to three bytes carry 7 bits each with a
/// continuation flag in the high bit; a fourth byte carries a full 8 bits.
fn read_u29(r: &mut Reader<'_>, what: &'static str) -> Result<u32, Amf0Error> {
    let mut value: u32 = 0;
    for _ in 0..3 {
        let byte = r.u8(what)?;
        value = (value << 7) | u32::from(byte & 0x7F);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    let byte = r.u8(what)?;
    // At most 21 bits so far, so shifting by 8 stays within 29 bits.
    Ok((value << 8) | u32::from(byte))
}

/// Interprets the low 29 bits as a two's-complement signed integer (AMF3 spec 3.6).
fn sign_extend_29(raw: u32) -> i32 {
    // Move bit 28 into the sign position, then arithmetic-shift back.
    ((raw << 3) as i32) >> 3
}

fn decode_amf3(r: &mut Reader<'_>) -> Result<Amf3Value, Amf0Error> {
    let offset = r.pos;
    let m = r.u8("AMF3 value type marker")?;
    let value = match m {
        amf3_marker::UNDEFINED => Amf3Value::Undefined,
        amf3_marker::NULL => Amf3Value::Null,
        amf3_marker::FALSE => Amf3Value::False,
        amf3_marker::TRUE => Amf3Value::True,
        amf3_marker::INTEGER => Amf3Value::Integer(sign_extend_29(read_u29(r, "AMF3 integer")?)),
        amf3_marker::DOUBLE => Amf3Value::Double(r.f64("AMF3 double")?),
        amf3_marker::STRING => {
            let header_offset = r.pos;
            let header = read_u29(r, "AMF3 string header")?;
            // AMF3 3.8: low bit 1 = inline string of `header >> 1` bytes, 0 = index into a
            // per-message string table, which a stateless decoder cannot resolve.
            if header & 1 == 0 {
                return Err(Amf0Error::Amf3StringReference {
                    offset: header_offset,
                });
            }
            let len = usize::try_from(header >> 1).unwrap_or(usize::MAX);
            Amf3Value::String(r.text(len, "AMF3 string bytes")?)
        }
        // XMLDocument, Date, Array, Object, XML, ByteArray, Vector, Dictionary (3.9 ff.)
        // all involve reference tables or traits and are not needed for RTMP ingest.
        _ => return Err(Amf0Error::UnsupportedAmf3 { marker: m, offset }),
    };
    Ok(value)
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Encode one value (all variants; Amf3 variant writes 0x11 + the AMF3 encoding).
///
/// Encoding cannot fail. Where a field is wider than the wire format allows, it is
/// clamped: names and class names over 65535 bytes and long strings / XML over
/// `u32::MAX` bytes are cut at a char boundary, and arrays beyond `u32::MAX` entries
/// are cut. Strings over 65535 bytes are written as long strings (0x0C). Encoding
/// recurses once per nesting level of `value`.
pub fn encode(value: &Amf0Value, out: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(marker::NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(marker::BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) => {
            // AMF0 2.4 / 2.14: the u16-length form only fits up to 65535 bytes.
            if s.len() <= U16_MAX_LEN {
                out.put_u8(marker::STRING);
                put_short_text(s, out);
            } else {
                out.put_u8(marker::LONG_STRING);
                put_long_text(s, out);
            }
        }
        Amf0Value::Object(props) => {
            out.put_u8(marker::OBJECT);
            put_properties(props, out);
        }
        Amf0Value::Null => out.put_u8(marker::NULL),
        Amf0Value::Undefined => out.put_u8(marker::UNDEFINED),
        Amf0Value::Reference(index) => {
            out.put_u8(marker::REFERENCE);
            out.put_u16(*index);
        }
        Amf0Value::EcmaArray(props) => {
            out.put_u8(marker::ECMA_ARRAY);
            out.put_u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
            put_properties(props, out);
        }
        Amf0Value::StrictArray(items) => {
            let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
            out.put_u8(marker::STRICT_ARRAY);
            out.put_u32(count);
            // Write exactly as many elements as the count announces.
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            for item in items.iter().take(count) {
                encode(item, out);
            }
        }
        Amf0Value::Date { millis, timezone } => {
            out.put_u8(marker::DATE);
            out.put_f64(*millis);
            out.put_i16(*timezone);
        }
        Amf0Value::Xml(s) => {
            out.put_u8(marker::XML_DOCUMENT);
            put_long_text(s, out);
        }
        Amf0Value::TypedObject { class, properties } => {
            out.put_u8(marker::TYPED_OBJECT);
            put_short_text(class, out);
            put_properties(properties, out);
        }
        Amf0Value::Unsupported => out.put_u8(marker::UNSUPPORTED),
        Amf0Value::Amf3(v) => {
            out.put_u8(marker::AVMPLUS);
            encode_amf3(v, out);
        }
    }
}

/// Encode several values back to back.
pub fn encode_all(values: &[Amf0Value], out: &mut BytesMut) {
    for value in values {
        encode(value, out);
    }
}

/// Longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    // Index 0 is always a boundary, so this stops before underflowing.
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

fn put_short_text(s: &str, out: &mut BytesMut) {
    let s = truncate_at_char_boundary(s, U16_MAX_LEN);
    out.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.put_slice(s.as_bytes());
}

fn put_long_text(s: &str, out: &mut BytesMut) {
    let s = truncate_at_char_boundary(s, U32_MAX_LEN);
    out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.as_bytes());
}

/// Properties followed by the object end: empty name (00 00) + marker 0x09 (AMF0 2.5).
fn put_properties(props: &[(String, Amf0Value)], out: &mut BytesMut) {
    for (name, value) in props {
        put_short_text(name, out);
        encode(value, out);
    }
    out.put_u16(0);
    out.put_u8(marker::OBJECT_END);
}

/// Writes a U29 (AMF3 spec 1.3.1) in its shortest form. `value` must be below 2^29.
fn put_u29(value: u32, out: &mut BytesMut) {
    let value = value & 0x1FFF_FFFF;
    // The `as u8` casts below keep only the low byte, which is exactly what is wanted.
    if value < 0x80 {
        out.put_u8(value as u8);
    } else if value < 0x4000 {
        out.put_u8(((value >> 7) as u8) | 0x80);
        out.put_u8((value & 0x7F) as u8);
    } else if value < 0x20_0000 {
        out.put_u8(((value >> 14) as u8) | 0x80);
        out.put_u8((((value >> 7) & 0x7F) as u8) | 0x80);
        out.put_u8((value & 0x7F) as u8);
    } else {
        out.put_u8(((value >> 22) as u8) | 0x80);
        out.put_u8((((value >> 15) & 0x7F) as u8) | 0x80);
        out.put_u8((((value >> 8) & 0x7F) as u8) | 0x80);
        out.put_u8((value & 0xFF) as u8);
    }
}

fn encode_amf3(value: &Amf3Value, out: &mut BytesMut) {
    match value {
        Amf3Value::Undefined => out.put_u8(amf3_marker::UNDEFINED),
        Amf3Value::Null => out.put_u8(amf3_marker::NULL),
        Amf3Value::False => out.put_u8(amf3_marker::FALSE),
        Amf3Value::True => out.put_u8(amf3_marker::TRUE),
        Amf3Value::Integer(i) => {
            if (AMF3_INT_MIN..=AMF3_INT_MAX).contains(i) {
                out.put_u8(amf3_marker::INTEGER);
                // Two's complement truncated to 29 bits (AMF3 3.6).
                put_u29((*i as u32) & 0x1FFF_FFFF, out);
            } else {
                // AMF3 3.6: integers outside the 29-bit range are serialized as doubles.
                out.put_u8(amf3_marker::DOUBLE);
                out.put_f64(f64::from(*i));
            }
        }
        Amf3Value::Double(d) => {
            out.put_u8(amf3_marker::DOUBLE);
            out.put_f64(*d);
        }
        Amf3Value::String(s) => {
            let s = truncate_at_char_boundary(s, AMF3_MAX_STRING_LEN);
            let len = u32::try_from(s.len()).unwrap_or(0);
            out.put_u8(amf3_marker::STRING);
            // Low bit 1 marks an inline string (AMF3 3.8); we never emit references.
            put_u29((len << 1) | 1, out);
            out.put_slice(s.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fuzzing support
// ---------------------------------------------------------------------------------------

/// For `cargo fuzz` and corpus replay: decode arbitrary bytes with the default depth,
/// re-encode what decoded, decode again and assert equality (NaN-aware). Must never panic on any input.
///
/// Values are decoded one at a time so that the prefix before a malformed value is
/// still checked. Values the encoder would have to clamp (possible only when lossy
/// UTF-8 repair grows a property name beyond 65535 bytes) are skipped, since they
/// cannot round-trip by design. A panic here means a real bug.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_roundtrip(data: &[u8]) {
    let mut pos = 0;
    let mut values = Vec::new();
    while pos < data.len() {
        match decode_value(data, &mut pos, DEFAULT_MAX_DEPTH) {
            Ok(value) => values.push(value),
            Err(_) => break,
        }
    }
    // `decode_all` must agree with value-by-value decoding.
    if let Ok(all) = decode_all(data, DEFAULT_MAX_DEPTH) {
        assert!(
            pos == data.len() && same_values(&all, &values),
            "decode_all disagrees with decode_value"
        );
    }
    if !values.iter().all(fits_wire_limits) {
        return;
    }
    let mut encoded = BytesMut::new();
    encode_all(&values, &mut encoded);
    let again = match decode_all(&encoded, DEFAULT_MAX_DEPTH) {
        Ok(again) => again,
        Err(e) => panic!("re-encoded AMF0 failed to decode: {e}"),
    };
    assert!(
        same_values(&values, &again),
        "AMF0 round trip changed the value:\n first: {values:?}\n again: {again:?}"
    );
}

/// Whether `encode` writes `value` without clamping anything, so it decodes back equal.
#[cfg(any(test, feature = "fuzzing"))]
fn fits_wire_limits(value: &Amf0Value) -> bool {
    fn props_fit(props: &[(String, Amf0Value)]) -> bool {
        u32::try_from(props.len()).is_ok()
            && props
                .iter()
                .all(|(name, v)| name.len() <= U16_MAX_LEN && fits_wire_limits(v))
    }
    match value {
        Amf0Value::String(s) | Amf0Value::Xml(s) => s.len() <= U32_MAX_LEN,
        Amf0Value::Object(props) | Amf0Value::EcmaArray(props) => props_fit(props),
        Amf0Value::StrictArray(items) => {
            u32::try_from(items.len()).is_ok() && items.iter().all(fits_wire_limits)
        }
        Amf0Value::TypedObject { class, properties } => {
            class.len() <= U16_MAX_LEN && props_fit(properties)
        }
        Amf0Value::Amf3(Amf3Value::String(s)) => s.len() <= AMF3_MAX_STRING_LEN,
        Amf0Value::Amf3(Amf3Value::Integer(i)) => (AMF3_INT_MIN..=AMF3_INT_MAX).contains(i),
        _ => true,
    }
}

/// Bit-exact float comparison, except that any NaN equals any NaN (some platforms
/// quiet signalling NaNs when moving them through float registers).
#[cfg(any(test, feature = "fuzzing"))]
fn same_f64(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[cfg(any(test, feature = "fuzzing"))]
fn same_values(a: &[Amf0Value], b: &[Amf0Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
}

#[cfg(any(test, feature = "fuzzing"))]
fn same_props(a: &[(String, Amf0Value)], b: &[(String, Amf0Value)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

/// Structural equality with NaN-aware float comparison.
#[cfg(any(test, feature = "fuzzing"))]
fn same_value(a: &Amf0Value, b: &Amf0Value) -> bool {
    use Amf0Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => same_f64(*x, *y),
        (
            V::Date {
                millis: ma,
                timezone: ta,
            },
            V::Date {
                millis: mb,
                timezone: tb,
            },
        ) => same_f64(*ma, *mb) && ta == tb,
        (V::Amf3(Amf3Value::Double(x)), V::Amf3(Amf3Value::Double(y))) => same_f64(*x, *y),
        (V::Object(x), V::Object(y)) | (V::EcmaArray(x), V::EcmaArray(y)) => same_props(x, y),
        (V::StrictArray(x), V::StrictArray(y)) => same_values(x, y),
        (
            V::TypedObject {
                class: ca,
                properties: pa,
            },
            V::TypedObject {
                class: cb,
                properties: pb,
            },
        ) => ca == cb && same_props(pa, pb),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn encoded(value: &Amf0Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(value, &mut out);
        out.to_vec()
    }

    fn decode_one(buf: &[u8]) -> Result<Amf0Value, Amf0Error> {
        let mut pos = 0;
        decode_value(buf, &mut pos, DEFAULT_MAX_DEPTH)
    }

    /// Encodes, decodes, and checks the decoder consumed exactly what was written.
    fn round_trip(value: &Amf0Value) -> Amf0Value {
        let bytes = encoded(value);
        let mut pos = 0;
        let back = match decode_value(&bytes, &mut pos, DEFAULT_MAX_DEPTH) {
            Ok(v) => v,
            Err(e) => panic!("round trip of {value:?} failed: {e}"),
        };
        assert_eq!(
            pos,
            bytes.len(),
            "decoder must consume the whole encoding of {value:?}"
        );
        back
    }

    /// One value of every variant, including every AMF3 variant.
    fn every_variant() -> Vec<Amf0Value> {
        vec![
            Amf0Value::Number(1.5),
            Amf0Value::Number(-0.0),
            Amf0Value::Number(f64::INFINITY),
            Amf0Value::Boolean(true),
            Amf0Value::Boolean(false),
            Amf0Value::string(""),
            Amf0Value::string("héllo ✓"),
            Amf0Value::object([("a", Amf0Value::Number(1.0)), ("", Amf0Value::Null)]),
            Amf0Value::Null,
            Amf0Value::Undefined,
            Amf0Value::Reference(0xBEEF),
            Amf0Value::EcmaArray(vec![
                ("duration".into(), Amf0Value::Number(0.0)),
                (
                    "nested".into(),
                    Amf0Value::object([("x", Amf0Value::Boolean(true))]),
                ),
            ]),
            Amf0Value::EcmaArray(vec![]),
            Amf0Value::StrictArray(vec![
                Amf0Value::Number(2.0),
                Amf0Value::string("s"),
                Amf0Value::StrictArray(vec![]),
            ]),
            Amf0Value::Date {
                millis: 1_700_000_000_123.0,
                timezone: -60,
            },
            Amf0Value::Xml("<a b=\"c\"/>".into()),
            Amf0Value::TypedObject {
                class: "flex.messaging.io.ArrayCollection".into(),
                properties: vec![("source".into(), Amf0Value::Null)],
            },
            Amf0Value::Unsupported,
            Amf0Value::Amf3(Amf3Value::Undefined),
            Amf0Value::Amf3(Amf3Value::Null),
            Amf0Value::Amf3(Amf3Value::False),
            Amf0Value::Amf3(Amf3Value::True),
            Amf0Value::Amf3(Amf3Value::Integer(0)),
            Amf0Value::Amf3(Amf3Value::Integer(AMF3_INT_MAX)),
            Amf0Value::Amf3(Amf3Value::Integer(AMF3_INT_MIN)),
            Amf0Value::Amf3(Amf3Value::Double(-2.25)),
            Amf0Value::Amf3(Amf3Value::String(String::new())),
            Amf0Value::Amf3(Amf3Value::String("amf3 ✓".into())),
        ]
    }

    #[test]
    fn every_variant_round_trips() {
        for value in every_variant() {
            assert_eq!(round_trip(&value), value);
        }
        // NaN never equals itself under PartialEq; check it is preserved as NaN.
        let nan = round_trip(&Amf0Value::Number(f64::NAN));
        assert!(nan.as_f64().is_some_and(f64::is_nan));
        // Several values back to back through encode_all / decode_all.
        let values = every_variant();
        let mut out = BytesMut::new();
        encode_all(&values, &mut out);
        assert_eq!(decode_all(&out, DEFAULT_MAX_DEPTH), Ok(values));
    }

    #[test]
    fn encodes_known_wire_bytes() {
        assert_eq!(
            encoded(&Amf0Value::Number(1.0)),
            [0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(encoded(&Amf0Value::Boolean(true)), [0x01, 0x01]);
        assert_eq!(
            encoded(&Amf0Value::string("ab")),
            [0x02, 0x00, 0x02, b'a', b'b']
        );
        assert_eq!(
            encoded(&Amf0Value::object([("a", Amf0Value::Null)])),
            [0x03, 0x00, 0x01, b'a', 0x05, 0x00, 0x00, 0x09]
        );
        assert_eq!(
            encoded(&Amf0Value::EcmaArray(vec![])),
            [0x08, 0, 0, 0, 0, 0x00, 0x00, 0x09]
        );
        assert_eq!(
            encoded(&Amf0Value::StrictArray(vec![Amf0Value::Null])),
            [0x0A, 0, 0, 0, 1, 0x05]
        );
        assert_eq!(encoded(&Amf0Value::Reference(2)), [0x07, 0x00, 0x02]);
        assert_eq!(
            encoded(&Amf0Value::Amf3(Amf3Value::String("hi".into()))),
            [0x11, 0x06, 0x05, b'h', b'i']
        );
    }

    #[test]
    fn boolean_treats_any_nonzero_byte_as_true() {
        assert_eq!(decode_one(&[0x01, 0x00]), Ok(Amf0Value::Boolean(false)));
        assert_eq!(decode_one(&[0x01, 0x7F]), Ok(Amf0Value::Boolean(true)));
    }

    #[test]
    fn decodes_ffmpeg_connect_command() {
        let body: Vec<u8> = [
            &[0x02, 0x00, 0x07][..],
            b"connect",
            &[0x00, 0x3F, 0xF0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x03],
            &[0x00, 0x03],
            b"app",
            &[0x02, 0x00, 0x04],
            b"live",
            &[0x00, 0x04],
            b"type",
            &[0x02, 0x00, 0x0A],
            b"nonprivate",
            &[0x00, 0x08],
            b"flashVer",
            &[0x02, 0x00, 0x24],
            b"FMLE/3.0 (compatible; Lavf60.16.100)",
            &[0x00, 0x05],
            b"tcUrl",
            &[0x02, 0x00, 0x1A],
            b"rtmp://127.0.0.1:1935/live",
            &[0x00, 0x00, 0x09],
        ]
        .concat();

        let values = match decode_all(&body, DEFAULT_MAX_DEPTH) {
            Ok(v) => v,
            Err(e) => panic!("connect body failed to decode: {e}"),
        };
        assert_eq!(values.len(), 3);
        assert_eq!(values[0].as_str(), Some("connect"));
        assert_eq!(values[1].as_f64(), Some(1.0));
        let cmd = &values[2];
        assert_eq!(cmd.get("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(
            cmd.get("type").and_then(Amf0Value::as_str),
            Some("nonprivate")
        );
        assert_eq!(
            cmd.get("flashVer").and_then(Amf0Value::as_str),
            Some("FMLE/3.0 (compatible; Lavf60.16.100)")
        );
        assert_eq!(
            cmd.get("tcUrl").and_then(Amf0Value::as_str),
            Some("rtmp://127.0.0.1:1935/live")
        );
        let names: Vec<&str> = cmd
            .properties()
            .unwrap_or_default()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["app", "type", "flashVer", "tcUrl"], "order is kept");

        // ffmpeg's encoding is canonical, so re-encoding reproduces it byte for byte.
        let mut out = BytesMut::new();
        encode_all(&values, &mut out);
        assert_eq!(&out[..], &body[..]);
    }

    #[test]
    fn decodes_on_metadata_ecma_array_missing_terminator() {
        let props: Vec<u8> = [
            &[0x00, 0x08][..],
            b"duration",
            &[0x00, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x00, 0x05],
            b"width",
            &[0x00, 0x40, 0x94, 0, 0, 0, 0, 0, 0], // 1280.0
        ]
        .concat();
        let head: Vec<u8> = [
            &[0x02, 0x00, 0x0A][..],
            b"onMetaData",
            // The count says 3 but only 2 properties follow: the count is only a hint.
            &[0x08, 0x00, 0x00, 0x00, 0x03],
        ]
        .concat();
        let expected = vec![
            Amf0Value::string("onMetaData"),
            Amf0Value::EcmaArray(vec![
                ("duration".into(), Amf0Value::Number(0.0)),
                ("width".into(), Amf0Value::Number(1280.0)),
            ]),
        ];

        // No 00 00 09 at all.
        let no_end = [&head[..], &props[..]].concat();
        assert_eq!(decode_all(&no_end, DEFAULT_MAX_DEPTH), Ok(expected.clone()));
        // Empty name, then the input stops before the 0x09 marker.
        let half_end = [&head[..], &props[..], &[0x00, 0x00]].concat();
        assert_eq!(
            decode_all(&half_end, DEFAULT_MAX_DEPTH),
            Ok(expected.clone())
        );
        // Properly terminated, for comparison.
        let full_end = [&head[..], &props[..], &[0x00, 0x00, 0x09]].concat();
        assert_eq!(decode_all(&full_end, DEFAULT_MAX_DEPTH), Ok(expected));

        // Leniency stops at incomplete properties: a name without its value is an error,
        // as is a single stray byte of a name length.
        let name_only = [&head[..], &props[..], &[0x00, 0x01, b'x']].concat();
        assert!(matches!(
            decode_all(&name_only, DEFAULT_MAX_DEPTH),
            Err(Amf0Error::Truncated {
                what: "value type marker",
                ..
            })
        ));
        let stray = [&head[..], &props[..], &[0x00]].concat();
        assert!(matches!(
            decode_all(&stray, DEFAULT_MAX_DEPTH),
            Err(Amf0Error::Truncated { .. })
        ));
    }

    #[test]
    fn ecma_array_count_does_not_drive_allocation_or_parsing() {
        // Count u32::MAX, one property, terminator: decodes with one entry.
        let bytes = [
            0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x01, b'k', 0x05, 0x00, 0x00, 0x09,
        ];
        assert_eq!(
            decode_one(&bytes),
            Ok(Amf0Value::EcmaArray(vec![("k".into(), Amf0Value::Null)]))
        );
        // Count 0 but properties present.
        let bytes = [0x08, 0, 0, 0, 0, 0x00, 0x01, b'k', 0x06, 0x00, 0x00, 0x09];
        assert_eq!(
            decode_one(&bytes),
            Ok(Amf0Value::EcmaArray(vec![(
                "k".into(),
                Amf0Value::Undefined
            )]))
        );
    }

    #[test]
    fn hundred_thousand_nested_objects_hit_depth_limit_without_overflowing_stack() {
        let mut bytes = Vec::with_capacity(100_000 * 4);
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        let err = decode_all(&bytes, DEFAULT_MAX_DEPTH);
        assert_eq!(
            err,
            Err(Amf0Error::DepthExceeded {
                limit: DEFAULT_MAX_DEPTH,
                offset: DEFAULT_MAX_DEPTH * 4,
            })
        );
        assert!(err
            .as_ref()
            .is_err_and(|e| e.is_depth_error() && e.to_string().contains("depth limit of 32")));
        assert!(!Amf0Error::UnexpectedObjectEnd { offset: 0 }.is_depth_error());
        // Same attack through fuzz_roundtrip must not panic either.
        fuzz_roundtrip(&bytes);
    }

    #[test]
    fn depth_limit_counts_every_container_kind() {
        // Opening bytes for one level of each container, each followed by a child value.
        let openers: [&[u8]; 4] = [
            &[0x03, 0x00, 0x01, b'a'],                   // object, property "a"
            &[0x08, 0, 0, 0, 1, 0x00, 0x01, b'a'],       // ECMA array, property "a"
            &[0x0A, 0, 0, 0, 1],                         // strict array of one
            &[0x10, 0x00, 0x01, b'C', 0x00, 0x01, b'a'], // typed object "C", property "a"
        ];
        for opener in openers {
            for levels in [1usize, 4, 5] {
                let mut bytes = opener.repeat(levels);
                bytes.push(0x05); // innermost value: null
                let mut pos = 0;
                let result = decode_value(&bytes, &mut pos, 4);
                if levels <= 4 {
                    assert!(result.is_ok(), "{levels} levels within limit 4: {result:?}");
                } else {
                    assert_eq!(
                        result,
                        Err(Amf0Error::DepthExceeded {
                            limit: 4,
                            offset: 4 * opener.len()
                        })
                    );
                    assert_eq!(pos, 0, "position is untouched on error");
                }
            }
        }
        // A limit of zero admits scalars but no container at all.
        let mut pos = 0;
        assert_eq!(decode_value(&[0x05], &mut pos, 0), Ok(Amf0Value::Null));
        let mut pos = 0;
        assert!(matches!(
            decode_value(&[0x0A, 0, 0, 0, 0], &mut pos, 0),
            Err(Amf0Error::DepthExceeded {
                limit: 0,
                offset: 0
            })
        ));
    }

    #[test]
    fn strict_array_with_huge_count_and_short_input_fails_fast() {
        let start = Instant::now();
        let result = decode_one(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x05]);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(
            result,
            Err(Amf0Error::Truncated {
                offset: 5,
                what: "strict array elements (at least 1 byte each)",
                needed: u32::MAX as usize,
                available: 1,
            })
        );
        // Same for u32-length strings and XML announcing 4 GiB.
        for m in [0x0C, 0x0F] {
            assert!(matches!(
                decode_one(&[m, 0xFF, 0xFF, 0xFF, 0xFF, b'x']),
                Err(Amf0Error::Truncated {
                    offset: 5,
                    available: 1,
                    ..
                })
            ));
        }
    }

    /// A value whose every strict prefix is invalid: the outer strict array has an exact
    /// count and ends in a scalar, so lenient object endings cannot make a prefix valid.
    fn complex_value() -> Amf0Value {
        let mut items = every_variant();
        items.push(Amf0Value::object([(
            "inner",
            Amf0Value::EcmaArray(vec![(
                "list".into(),
                Amf0Value::StrictArray(every_variant()),
            )]),
        )]));
        items.push(Amf0Value::Number(42.0));
        Amf0Value::StrictArray(items)
    }

    #[test]
    fn every_truncation_of_complex_encoding_is_an_error() {
        let bytes = encoded(&complex_value());
        assert_eq!(decode_one(&bytes), Ok(complex_value()));
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            let mut pos = 0;
            let result = decode_value(prefix, &mut pos, DEFAULT_MAX_DEPTH);
            assert!(result.is_err(), "prefix of {cut} bytes decoded: {result:?}");
            assert_eq!(pos, 0);
            if cut > 0 {
                assert!(decode_all(prefix, DEFAULT_MAX_DEPTH).is_err());
            }
            fuzz_roundtrip(prefix);
        }
    }

    #[test]
    fn truncated_top_level_object_only_decodes_at_property_boundaries() {
        let value = Amf0Value::object([
            ("app", Amf0Value::string("live")),
            ("n", Amf0Value::Number(3.0)),
            ("deep", Amf0Value::object([("x", Amf0Value::Null)])),
        ]);
        let bytes = encoded(&value);
        let mut ok_lengths = Vec::new();
        for cut in 0..bytes.len() {
            if let Ok(decoded) = decode_one(&bytes[..cut]) {
                // Whatever decodes is a prefix of the real property list.
                let got = decoded.properties().unwrap_or_default();
                let want = value.properties().unwrap_or_default();
                assert!(got.len() <= want.len());
                ok_lengths.push(cut);
            }
        }
        // Right after the marker, after each complete top-level property (the last one
        // also nested-lenient inside "deep"), and after the empty name.
        assert_eq!(ok_lengths, [1, 13, 25, 32, 36, 38, 39, 41]);
    }

    #[test]
    fn fuzz_sweep_every_one_and_two_byte_input() {
        fuzz_roundtrip(&[]);
        for a in 0..=255u8 {
            fuzz_roundtrip(&[a]);
            for b in 0..=255u8 {
                fuzz_roundtrip(&[a, b]);
            }
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> usize {
            usize::try_from(self.next() % n).unwrap_or(0)
        }
    }

    #[test]
    fn fuzz_sweep_pseudo_random_buffers() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let seed = encoded(&complex_value());
        for round in 0..6000 {
            let buf: Vec<u8> = match round % 3 {
                // Uniform noise.
                0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                // Mostly small bytes, so markers and short lengths dominate and the
                // decoder gets past the first value more often.
                1 => (0..rng.below(300))
                    .map(|_| {
                        if rng.below(4) == 0 {
                            rng.next() as u8
                        } else {
                            rng.below(0x13) as u8
                        }
                    })
                    .collect(),
                // A valid encoding with a few bytes overwritten and a random cut.
                _ => {
                    let mut buf = seed.clone();
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(buf.len() as u64);
                        if let Some(byte) = buf.get_mut(i) {
                            *byte = rng.next() as u8;
                        }
                    }
                    buf.truncate(rng.below(buf.len() as u64 + 1));
                    buf
                }
            };
            fuzz_roundtrip(&buf);
        }
    }

    #[test]
    fn reserved_and_unknown_markers_are_rejected_naming_the_marker() {
        for m in [0x04u8, 0x0E, 0x12, 0xFF] {
            let err = decode_one(&[m, 0, 0, 0, 0]);
            assert_eq!(
                err,
                Err(Amf0Error::UnknownMarker {
                    marker: m,
                    offset: 0
                })
            );
            let text = err.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains(&format!("0x{m:02X}")), "{text}");
        }
        // Inside a container the offset points at the bad marker.
        assert_eq!(
            decode_one(&[0x0A, 0, 0, 0, 2, 0x05, 0x0E]),
            Err(Amf0Error::UnknownMarker {
                marker: 0x0E,
                offset: 6
            })
        );
    }

    #[test]
    fn object_end_marker_where_value_expected_is_an_error() {
        assert_eq!(
            decode_one(&[0x09]),
            Err(Amf0Error::UnexpectedObjectEnd { offset: 0 })
        );
        // A non-empty name followed by 0x09.
        assert_eq!(
            decode_one(&[0x03, 0x00, 0x01, b'k', 0x09]),
            Err(Amf0Error::UnexpectedObjectEnd { offset: 4 })
        );
        // As a strict array element.
        assert_eq!(
            decode_one(&[0x0A, 0, 0, 0, 1, 0x09]),
            Err(Amf0Error::UnexpectedObjectEnd { offset: 5 })
        );
    }

    #[test]
    fn empty_property_name_with_a_value_is_a_property() {
        let bytes = [0x03, 0x00, 0x00, 0x05, 0x00, 0x00, 0x09];
        assert_eq!(
            decode_one(&bytes),
            Ok(Amf0Value::object([("", Amf0Value::Null)]))
        );
    }

    #[test]
    fn amf3_integer_is_sign_extended_from_29_bits() {
        let cases: [(&[u8], i32); 8] = [
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x81, 0x00], 128),
            (&[0xFF, 0x7F], 0x3FFF),
            (&[0x80, 0xC0, 0x00], 0x2000), // non-canonical 3-byte form still decodes
            (&[0xBF, 0xFF, 0xFF, 0xFF], AMF3_INT_MAX),
            (&[0xC0, 0x80, 0x80, 0x00], AMF3_INT_MIN),
            (&[0xFF, 0xFF, 0xFF, 0xFF], -1),
        ];
        for (u29, want) in cases {
            let bytes = [&[0x11, 0x04][..], u29].concat();
            assert_eq!(
                decode_one(&bytes),
                Ok(Amf0Value::Amf3(Amf3Value::Integer(want))),
                "{u29:02X?}"
            );
        }
        // Encoding is canonical and round-trips across all U29 length boundaries.
        for i in [
            -1,
            -64,
            -(1 << 21) - 1,
            63,
            127,
            128,
            0x3FFF,
            0x4000,
            0x1F_FFFF,
            0x20_0000,
            AMF3_INT_MAX,
            AMF3_INT_MIN,
        ] {
            let v = Amf0Value::Amf3(Amf3Value::Integer(i));
            assert_eq!(round_trip(&v), v, "{i}");
        }
        assert_eq!(
            encoded(&Amf0Value::Amf3(Amf3Value::Integer(-1))),
            [0x11, 0x04, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        // Out of the 29-bit range the spec says to send a double.
        assert_eq!(
            round_trip(&Amf0Value::Amf3(Amf3Value::Integer(i32::MAX))),
            Amf0Value::Amf3(Amf3Value::Double(f64::from(i32::MAX)))
        );
    }

    #[test]
    fn amf3_string_references_and_complex_types_are_rejected() {
        let err = decode_one(&[0x11, 0x06, 0x00]);
        assert_eq!(err, Err(Amf0Error::Amf3StringReference { offset: 2 }));
        assert!(err.is_err_and(|e| e
            .to_string()
            .contains("AMF3 string references are not supported")));
        for m in [0x07u8, 0x08, 0x09, 0x0A, 0x0C, 0x11, 0xFF] {
            let err = decode_one(&[0x11, m, 0x01]);
            assert_eq!(
                err,
                Err(Amf0Error::UnsupportedAmf3 {
                    marker: m,
                    offset: 1
                })
            );
            assert!(err.is_err_and(|e| e.to_string().contains(&format!("0x{m:02X}"))));
        }
        // A U29 cut short is a truncation.
        assert!(matches!(
            decode_one(&[0x11, 0x04, 0x81]),
            Err(Amf0Error::Truncated {
                what: "AMF3 integer",
                offset: 3,
                ..
            })
        ));
    }

    #[test]
    fn date_round_trips_with_timezone() {
        let date = Amf0Value::Date {
            millis: 1_234_567_890_123.0,
            timezone: -480,
        };
        let bytes = encoded(&date);
        let mut want = vec![0x0B];
        want.extend_from_slice(&1_234_567_890_123.0f64.to_be_bytes());
        want.extend_from_slice(&(-480i16).to_be_bytes());
        assert_eq!(bytes, want);
        assert_eq!(round_trip(&date), date);
    }

    #[test]
    fn strings_switch_to_long_form_above_u16_length() {
        let short = "x".repeat(65_535);
        let long = "x".repeat(65_536);
        assert_eq!(encoded(&Amf0Value::string(short.clone()))[0], 0x02);
        assert_eq!(encoded(&Amf0Value::string(long.clone()))[0], 0x0C);
        assert_eq!(
            round_trip(&Amf0Value::string(short.clone())),
            Amf0Value::string(short)
        );
        assert_eq!(
            round_trip(&Amf0Value::string(long.clone())),
            Amf0Value::string(long)
        );
        // A long-string marker carrying a short string decodes to the same String.
        assert_eq!(
            decode_one(&[0x0C, 0, 0, 0, 2, b'o', b'k']),
            Ok(Amf0Value::string("ok"))
        );
    }

    #[test]
    fn oversized_property_names_are_cut_at_a_char_boundary() {
        // 21_845 three-byte chars = 65_535 bytes; one more char cannot fit.
        let name = "✓".repeat(21_846);
        let value = Amf0Value::object([(name.clone(), Amf0Value::Null)]);
        assert!(!fits_wire_limits(&value));
        let back = round_trip(&value);
        let key = back
            .properties()
            .and_then(|p| p.first())
            .map(|(k, _)| k.len());
        assert_eq!(key, Some(65_535));
        assert_eq!(truncate_at_char_boundary("a✓", 2), "a");
        assert_eq!(truncate_at_char_boundary("✓", 0), "");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_rejected() {
        let bytes = [0x02, 0x00, 0x03, b'a', 0xFF, b'b'];
        assert_eq!(decode_one(&bytes), Ok(Amf0Value::string("a\u{FFFD}b")));
        let key = [0x03, 0x00, 0x01, 0xC3, 0x05, 0x00, 0x00, 0x09];
        assert_eq!(
            decode_one(&key),
            Ok(Amf0Value::object([("\u{FFFD}", Amf0Value::Null)]))
        );
        // Lossy repair can triple a name past the u16 limit; fuzz_roundtrip must cope.
        let mut big = vec![0x03, 0xFF, 0xFF];
        big.extend(std::iter::repeat_n(0xFF, 65_535));
        big.extend_from_slice(&[0x05, 0x00, 0x00, 0x09]);
        fuzz_roundtrip(&big);
    }

    #[test]
    fn decode_value_advances_position_and_handles_edges() {
        let mut out = BytesMut::new();
        encode_all(&[Amf0Value::Null, Amf0Value::Number(7.0)], &mut out);
        let mut pos = 0;
        assert_eq!(decode_value(&out, &mut pos, 1), Ok(Amf0Value::Null));
        assert_eq!(pos, 1);
        assert_eq!(decode_value(&out, &mut pos, 1), Ok(Amf0Value::Number(7.0)));
        assert_eq!(pos, 10);
        // At, and far past, the end of the buffer.
        let at_end = decode_value(&out, &mut pos, 1);
        assert!(matches!(
            at_end,
            Err(Amf0Error::Truncated { offset: 10, .. })
        ));
        let mut far = usize::MAX;
        assert!(decode_value(&out, &mut far, 1).is_err());
        assert_eq!(far, usize::MAX);
        // Empty input.
        assert_eq!(decode_all(&[], DEFAULT_MAX_DEPTH), Ok(vec![]));
        let err = decode_one(&[]);
        assert_eq!(
            err,
            Err(Amf0Error::Truncated {
                offset: 0,
                what: "value type marker",
                needed: 1,
                available: 0
            })
        );
        assert!(err.is_err_and(|e| e.to_string().contains("byte offset 0")));
    }

    #[test]
    fn accessors_and_builders() {
        let obj = Amf0Value::object([
            ("name", Amf0Value::string("cam")),
            ("fps", Amf0Value::Number(30.0)),
            ("live", Amf0Value::Boolean(true)),
            ("name", Amf0Value::string("second")),
        ]);
        assert_eq!(obj.get("name").and_then(Amf0Value::as_str), Some("cam"));
        assert_eq!(obj.get("fps").and_then(Amf0Value::as_f64), Some(30.0));
        assert_eq!(obj.get("live").and_then(Amf0Value::as_bool), Some(true));
        assert_eq!(obj.get("missing"), None);
        assert_eq!(obj.as_str(), None);
        assert_eq!(Amf0Value::Null.get("name"), None);
        assert_eq!(Amf0Value::Number(1.0).as_bool(), None);
        assert_eq!(Amf0Value::Boolean(false).as_f64(), None);

        let typed = Amf0Value::TypedObject {
            class: "C".into(),
            properties: vec![("k".into(), Amf0Value::Null)],
        };
        assert_eq!(typed.get("k"), Some(&Amf0Value::Null));
        let ecma = Amf0Value::EcmaArray(vec![("k".into(), Amf0Value::Undefined)]);
        assert_eq!(ecma.get("k"), Some(&Amf0Value::Undefined));
        assert_eq!(Amf0Value::StrictArray(vec![]).properties(), None);
    }
}
