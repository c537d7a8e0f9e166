//! Structural validation of untrusted bytes before they reach `yrs`.
//!
//! `yrs` trusts its input more than a public relay can afford to:
//!
//! * declared counts are reserved up front (`Update::decode_v1(&[144, 243, 243, 59])` reserves
//!   ~264 MB before it notices the input is four bytes long);
//! * client IDs of 2^53 or more trip a `debug_assert!` in `ClientID::new` and are silently folded
//!   into another ID in release builds;
//! * `Any` values are decoded recursively, so deep nesting overflows the stack;
//! * clocks are `u32` and `clock + len` is computed unchecked;
//! * varints read into a `u32` silently drop their high bits, where Yjs reads the full number.
//!
//! The functions here walk the lib0 v1 encoding themselves, in one pass, in O(input length)
//! time, without allocating anything sized by a declared count. Bytes that pass can be handed to
//! `yrs` (and relayed to Yjs peers): every count they declare is backed by bytes that are
//! actually present.
//!
//! # Where we are stricter than `yrs`
//!
//! Each of these is a place where `yrs` and Yjs would read the same bytes differently, or where
//! `yrs` would compute something that does not fit:
//!
//! * Legacy `ContentJSON` (content ref 2) is refused: Yjs reads `len` strings, `yrs` 0.28 reads
//!   `len + 1` — they cannot both be right, and neither current library writes it any more.
//! * The `XmlHook` type ref (5) is refused: Yjs writes and reads a hook name after it, `yrs`
//!   neither writes nor reads one.
//! * The info byte must be exactly 0 (GC) or 10 (Skip), or have a content ref in 1..=9 in its
//!   low five bits: `yrs` masks the content ref with `0x0f`, Yjs with `0x1f`.
//! * The parent-info varint must be 0 or 1 (`yrs` truncates it to `u32` before comparing).
//! * Every `u32` field must fit in a `u32`, and clock ranges must end at or below 2^31 - 1:
//!   `yrs` subtracts clocks as `i32` while integrating and panics on what wraps.
//! * Block lists must come in strictly descending client order, as every encoder writes them:
//!   `yrs` appends a repeated client's blocks (and panics on the overlap), Yjs replaces them.
//! * Items of length 0 are refused (`yrs` drops them silently; no current encoder writes them).
//! * JSON strings (Embed, Format values, awareness states) must parse the way `yrs` parses them
//!   (`serde_json` into [`yrs::Any`]): valid JSON, integers in `i64` range.
//! * Subdocument options must be an `Any` map (Yjs peers read `opts.shouldLoad` from them).
//!
//! # What validation cannot catch
//!
//! These checks are stateless. Some inputs are only dangerous against a particular document,
//! and the caller has to handle them (`tests/hostile.rs` has a reproducer for each):
//!
//! * Out-of-order runs: `yrs` 0.28 integrates a client's blocks that follow a hole at once,
//!   behind a Skip placeholder; a later update claiming those clocks with other lengths panics
//!   (debug) or stores a `u32::MAX`-long Skip (release). [`validate_update_runs_v1`] reports
//!   each run so the caller can hold back updates that start past the document's clock or
//!   contain a Skip.
//! * With `yrs`'s default `OffsetKind::Bytes`, a delete or insert between the halves of a
//!   surrogate pair underflows a length counter (debug panic). Documents fed by Yjs peers
//!   should use `OffsetKind::Utf16`.
//! * Updates that reuse known IDs with different content can leave a document whose own
//!   snapshot no longer applies cleanly (`UpdateError::InvalidParent`), so loading a snapshot
//!   must treat an error as a possibility.

use thiserror::Error;

/// Limits applied while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidateLimits {
    /// Maximum number of nested `Any` arrays/maps. Validation recurses once per level (and so
    /// does `yrs`'s own decoder on bytes that pass), so keep this small. Default: 64.
    pub max_depth: usize,
}

impl Default for ValidateLimits {
    fn default() -> Self {
        Self { max_depth: 64 }
    }
}

/// Why bytes were refused. The `Display` texts are short enough for a WebSocket close reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidInput {
    /// The input ended in the middle of a value.
    #[error("truncated input")]
    Truncated,
    /// A variable-length integer does not fit the integer type it is read into (`u64`, or `u32`
    /// for counts, lengths and clocks; signed integers must fit 53 bits).
    #[error("varint overflow")]
    VarIntOverflow,
    /// Bytes were left over after the last field.
    #[error("trailing bytes")]
    TrailingBytes,
    /// A string was not valid UTF-8.
    #[error("invalid utf-8 string")]
    InvalidUtf8,
    /// A client ID was 2^53 or more (Yjs client IDs are 53-bit numbers).
    #[error("client id {0} too large")]
    ClientIdTooLarge(u64),
    /// A clock, or a clock plus a length, goes past 2^31 - 1 (`yrs` does clock arithmetic in
    /// `i32` in places), or an awareness clock is `u32::MAX`.
    #[error("clock overflow")]
    ClockOverflow,
    /// A block, item or delete-set range had length 0.
    #[error("zero-length block")]
    ZeroLength,
    /// An info byte named no known content kind (the value is the info byte's low five bits).
    #[error("unknown content ref {0}")]
    UnknownContent(u8),
    /// A shared type ref outside Array, Map, Text, XmlElement, XmlFragment, XmlText.
    #[error("unknown type ref {0}")]
    UnknownTypeRef(u64),
    /// A lib0 `Any` value had an unknown tag byte.
    #[error("unknown any tag {0}")]
    UnknownAnyTag(u8),
    /// `Any` values were nested deeper than [`ValidateLimits::max_depth`].
    #[error("nesting too deep")]
    TooDeep,
    /// A string that must hold JSON did not parse (or awareness "null" was not spelled `null`).
    #[error("invalid json")]
    InvalidJson,
    /// An item's parent-info varint was neither 0 (parent ID) nor 1 (root type name).
    #[error("invalid parent info")]
    InvalidParentInfo,
    /// Subdocument options were not an `Any` map.
    #[error("invalid subdocument options")]
    InvalidSubdocOptions,
    /// Block lists were not in strictly descending client order (a repeated client, say).
    #[error("clients out of order")]
    ClientOrder,
    /// Valid Yjs that `yrs` decodes differently from Yjs (legacy JSON content, XmlHook types).
    #[error("unsupported {0}")]
    Unsupported(&'static str),
}

type Result<T> = std::result::Result<T, InvalidInput>;

/// Client IDs must be below 2^53 (JavaScript's safe integer range; `yrs` asserts it).
const CLIENT_ID_LIMIT: u64 = 1 << 53;

/// Upper bound for the end of any clock range (`clock + len`, exclusive): `i32::MAX`.
///
/// `yrs` keeps clocks in `u32` but computes `local_clock as i32 - id.clock as i32` while
/// integrating (0.28 `Update::integrate`): a clock of 2^31 or more wraps negative there, skips
/// the hole-filling Skip block, and a later delete of an earlier clock underflows in
/// `ClientBlockList::find_index` (a panic in debug builds and an out-of-bounds index in release
/// builds). No real client gets anywhere near 2^31 operations.
const CLOCK_END_MAX: u64 = i32::MAX as u64;

/// Largest magnitude accepted for a signed `Any` integer (JavaScript's `MAX_SAFE_INTEGER`).
const SIGNED_MAGNITUDE_MAX: u64 = (1 << 53) - 1;

// Info byte layout (lib0 v1 update encoding).
const INFO_HAS_ORIGIN: u8 = 0x80;
const INFO_HAS_RIGHT_ORIGIN: u8 = 0x40;
const INFO_HAS_PARENT_SUB: u8 = 0x20;
const INFO_CONTENT_MASK: u8 = 0x1f;
const INFO_GC: u8 = 0;
const INFO_SKIP: u8 = 10;

// Content refs (`info & 0x1f`).
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;

// Type refs inside `ContentType`.
const TYPE_ARRAY: u8 = 0;
const TYPE_MAP: u8 = 1;
const TYPE_TEXT: u8 = 2;
const TYPE_XML_ELEMENT: u8 = 3;
const TYPE_XML_FRAGMENT: u8 = 4;
const TYPE_XML_HOOK: u8 = 5;
const TYPE_XML_TEXT: u8 = 6;

// lib0 `Any` tags.
const ANY_UNDEFINED: u8 = 127;
const ANY_NULL: u8 = 126;
const ANY_INTEGER: u8 = 125;
const ANY_FLOAT32: u8 = 124;
const ANY_FLOAT64: u8 = 123;
const ANY_BIGINT: u8 = 122;
const ANY_FALSE: u8 = 121;
const ANY_TRUE: u8 = 120;
const ANY_STRING: u8 = 119;
const ANY_MAP: u8 = 118;
const ANY_ARRAY: u8 = 117;
const ANY_BUFFER: u8 = 116;

/// Validates a lib0 v1-encoded Yjs update (the body of SyncStep2 / Update messages).
///
/// Walks every client's block list (GC, Skip and Items with every content kind), then the
/// delete set, and refuses anything `yrs` or a Yjs peer could mis-read; see the module docs.
/// Item lengths for clock accounting: String = UTF-16 length, Any = element count, Deleted =
/// its length, everything else 1.
pub fn validate_update_v1(bytes: &[u8], limits: &ValidateLimits) -> Result<()> {
    validate_update_runs_v1(bytes, limits, |_| {})
}

/// One client's run of blocks in an update, as reported by [`validate_update_runs_v1`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRun {
    /// The client the blocks belong to.
    pub client: u64,
    /// Clock of the run's first block.
    pub start: u32,
    /// Clock just past the run's last block (`start` for an empty run).
    pub end: u32,
    /// Clock just past the run's last Skip block (a hole in the sender's knowledge), if the
    /// run has one. The run is safe to hand to `yrs` once the document's clock for `client`
    /// reaches it: everything up to there is then known and trimmed away before integration.
    pub skip_end: Option<u32>,
}

/// [`validate_update_v1`], reporting each client's block run to `on_run` along the way.
///
/// Structural validity is not the whole story: `yrs` 0.28 integrates blocks that arrive after
/// a hole (a run starting past the document's clock for that client, or a run containing a
/// Skip) immediately, with a Skip placeholder, where Yjs would hold them back. A later update
/// that claims the same clocks with differently-sized content then underflows in
/// `BlockStore::push` (a panic in debug builds; a Skip of length `u32::MAX` in the document, and
/// so in its snapshots, in release builds).
/// A caller can use these runs to hold back or refuse such updates: compare `start` with the
/// document's state vector and with `skip_end`.
///
/// `on_run` sees runs as they are walked: when an error is returned, discard what it collected.
pub fn validate_update_runs_v1(
    bytes: &[u8],
    limits: &ValidateLimits,
    mut on_run: impl FnMut(ClientRun),
) -> Result<()> {
    let mut r = Reader::new(bytes);
    let clients = r.var_u32()?;
    let mut previous_client = None;
    for _ in 0..clients {
        let blocks = r.var_u32()?;
        let client = r.client_id()?;
        // Strictly descending, as every Yjs and yrs encoder writes them. A repeated client
        // would be appended by yrs (overlapping clock ranges panic in its block store) but
        // would replace the earlier run in Yjs.
        if previous_client.is_some_and(|previous| client >= previous) {
            return Err(InvalidInput::ClientOrder);
        }
        previous_client = Some(client);
        let start = r.var_u32()?;
        let mut clock = u64::from(start);
        if clock > CLOCK_END_MAX {
            return Err(InvalidInput::ClockOverflow);
        }
        let mut skip_end = None;
        for _ in 0..blocks {
            let (len, is_skip) = block(&mut r, limits)?;
            clock += u64::from(len);
            if clock > CLOCK_END_MAX {
                return Err(InvalidInput::ClockOverflow);
            }
            if is_skip {
                // Cannot fail: `clock <= CLOCK_END_MAX < u32::MAX`.
                skip_end = Some(u32::try_from(clock).map_err(|_| InvalidInput::ClockOverflow)?);
            }
        }
        on_run(ClientRun {
            client,
            start,
            // Cannot fail: `clock <= CLOCK_END_MAX < u32::MAX`.
            end: u32::try_from(clock).map_err(|_| InvalidInput::ClockOverflow)?,
            skip_end,
        });
    }
    delete_set(&mut r)?;
    r.finish()
}

/// Validates a v1 state vector: varuint count, then count × (client varuint < 2^53, clock
/// varuint fitting `u32`); no trailing bytes.
pub fn validate_state_vector_v1(bytes: &[u8]) -> Result<()> {
    let mut r = Reader::new(bytes);
    let entries = r.var_u32()?;
    for _ in 0..entries {
        r.client_id()?;
        r.var_u32()?;
    }
    r.finish()
}

/// Validates a y-protocols awareness update: varuint count, then count × (client ID varuint
/// < 2^53, clock varuint below `u32::MAX`, varString JSON state); no trailing bytes.
///
/// Official JS clients `JSON.parse` every state, so one invalid state broadcast to them would
/// throw in every peer. A state that parses to JSON `null` means "client removed"; it must be
/// spelled exactly `null`, because `yrs` compares the raw string while Yjs compares the parsed
/// value. The clock must stay below `u32::MAX` because `yrs` may answer with `clock + 1`.
pub fn validate_awareness_update(bytes: &[u8]) -> Result<()> {
    let mut r = Reader::new(bytes);
    let entries = r.var_u64()?;
    for _ in 0..entries {
        r.client_id()?;
        if r.var_u32()? == u32::MAX {
            return Err(InvalidInput::ClockOverflow);
        }
        let state = r.string()?;
        if check_json(state)? && state != "null" {
            return Err(InvalidInput::InvalidJson);
        }
    }
    r.finish()
}

/// One block of a client's block list; returns its clock length and whether it is a Skip.
fn block(r: &mut Reader<'_>, limits: &ValidateLimits) -> Result<(u32, bool)> {
    let info = r.u8()?;
    match info {
        INFO_GC => Ok((non_zero(r.var_u32()?)?, false)),
        INFO_SKIP => Ok((non_zero(r.var_u32()?)?, true)),
        _ => Ok((item(r, info, limits)?, false)),
    }
}

fn item(r: &mut Reader<'_>, info: u8, limits: &ValidateLimits) -> Result<u32> {
    let content = info & INFO_CONTENT_MASK;
    if !(CONTENT_DELETED..=CONTENT_DOC).contains(&content) {
        // Also catches GC/Skip refs combined with item flag bits: Yjs would read those as GC or
        // Skip, `yrs` as an item.
        return Err(InvalidInput::UnknownContent(content));
    }
    let has_origin = info & INFO_HAS_ORIGIN != 0;
    let has_right_origin = info & INFO_HAS_RIGHT_ORIGIN != 0;
    if has_origin {
        r.id()?;
    }
    if has_right_origin {
        r.id()?;
    }
    // The parent (and parent_sub) are only written when neither origin is: otherwise they are
    // copied from the origin. The parent_sub flag may still be set in that case; it is ignored.
    if !has_origin && !has_right_origin {
        match r.var_u32()? {
            1 => {
                r.string()?; // root type name
            }
            0 => r.id()?, // parent item ID
            _ => return Err(InvalidInput::InvalidParentInfo),
        }
        if info & INFO_HAS_PARENT_SUB != 0 {
            r.string()?;
        }
    }
    item_content(r, content, limits)
}

fn item_content(r: &mut Reader<'_>, content: u8, limits: &ValidateLimits) -> Result<u32> {
    match content {
        CONTENT_DELETED => non_zero(r.var_u32()?),
        CONTENT_JSON => Err(InvalidInput::Unsupported("json content")),
        CONTENT_BINARY => {
            r.bytes()?;
            Ok(1)
        }
        CONTENT_STRING => {
            let s = r.string()?;
            // `yrs` counts items in UTF-16 code units, like JavaScript.
            let units = s.chars().map(|c| c.len_utf16() as u64).sum::<u64>();
            non_zero(u32::try_from(units).map_err(|_| InvalidInput::ClockOverflow)?)
        }
        CONTENT_EMBED => {
            check_json(r.string()?)?;
            Ok(1)
        }
        CONTENT_FORMAT => {
            r.string()?; // attribute key
            check_json(r.string()?)?;
            Ok(1)
        }
        CONTENT_TYPE => {
            // `yrs` reads the type ref as one raw byte, Yjs as a varuint: identical below 128.
            match r.u8()? {
                TYPE_ARRAY | TYPE_MAP | TYPE_TEXT | TYPE_XML_FRAGMENT | TYPE_XML_TEXT => {}
                TYPE_XML_ELEMENT => {
                    r.string()?; // node name
                }
                TYPE_XML_HOOK => return Err(InvalidInput::Unsupported("xml hook type")),
                other => return Err(InvalidInput::UnknownTypeRef(u64::from(other))),
            }
            Ok(1)
        }
        CONTENT_ANY => {
            let len = non_zero(r.var_u32()?)?;
            for _ in 0..len {
                any(r, 0, limits.max_depth)?;
            }
            Ok(len)
        }
        CONTENT_DOC => {
            r.string()?; // guid
            if r.peek()? != ANY_MAP {
                return Err(InvalidInput::InvalidSubdocOptions);
            }
            any(r, 0, limits.max_depth)?;
            Ok(1)
        }
        other => Err(InvalidInput::UnknownContent(other)),
    }
}

/// One lib0 `Any` value. `depth` is the number of arrays/maps enclosing it.
fn any(r: &mut Reader<'_>, depth: usize, max_depth: usize) -> Result<()> {
    let tag = r.u8()?;
    match tag {
        ANY_UNDEFINED | ANY_NULL | ANY_FALSE | ANY_TRUE => Ok(()),
        ANY_INTEGER => r.var_i53(),
        ANY_FLOAT32 => r.skip(4),
        ANY_FLOAT64 | ANY_BIGINT => r.skip(8),
        ANY_STRING => r.string().map(drop),
        ANY_BUFFER => r.bytes().map(drop),
        ANY_MAP | ANY_ARRAY => {
            if depth >= max_depth {
                return Err(InvalidInput::TooDeep);
            }
            // Read as u64 like `yrs`; every element consumes at least one byte, so a huge count
            // simply runs into `Truncated`.
            let len = r.var_u64()?;
            for _ in 0..len {
                if tag == ANY_MAP {
                    r.string()?;
                }
                any(r, depth + 1, max_depth)?;
            }
            Ok(())
        }
        other => Err(InvalidInput::UnknownAnyTag(other)),
    }
}

/// The delete set: client count, then per client its ID and (clock, len) ranges.
fn delete_set(r: &mut Reader<'_>) -> Result<()> {
    let clients = r.var_u32()?;
    for _ in 0..clients {
        r.client_id()?;
        let ranges = r.var_u32()?;
        for _ in 0..ranges {
            let clock = u64::from(r.var_u32()?);
            let len = u64::from(non_zero(r.var_u32()?)?);
            if clock + len > CLOCK_END_MAX {
                return Err(InvalidInput::ClockOverflow);
            }
        }
    }
    Ok(())
}

fn non_zero(len: u32) -> Result<u32> {
    if len == 0 {
        Err(InvalidInput::ZeroLength)
    } else {
        Ok(len)
    }
}

/// Checks that `s` parses the way `yrs` parses JSON content (`serde_json` into [`yrs::Any`],
/// which also refuses integers beyond `i64`). Returns whether the value is JSON `null`.
///
/// This builds the value and drops it: the cost is proportional to the bytes present, and
/// `serde_json`'s recursion limit (128) bounds the nesting.
fn check_json(s: &str) -> Result<bool> {
    match yrs::Any::from_json(s) {
        Ok(value) => Ok(matches!(value, yrs::Any::Null)),
        Err(_) => Err(InvalidInput::InvalidJson),
    }
}

/// A cursor over the input. Every read is bounds-checked and never allocates.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn finish(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(InvalidInput::TrailingBytes)
        }
    }

    fn peek(&self) -> Result<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(InvalidInput::Truncated)
    }

    fn u8(&mut self) -> Result<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// Takes the next `len` bytes. `len` may be any declared value: it is compared with what
    /// is left before anything else happens.
    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        let len = usize::try_from(len).map_err(|_| InvalidInput::Truncated)?;
        let taken = rest.get(..len).ok_or(InvalidInput::Truncated)?;
        self.pos += len;
        Ok(taken)
    }

    fn skip(&mut self, len: u64) -> Result<()> {
        self.take(len).map(drop)
    }

    /// An unsigned lib0 varint that must fit in a `u64` (at most 10 bytes).
    fn var_u64(&mut self) -> Result<u64> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            let payload = u64::from(b & 0x7f);
            // The 10th byte (shift 63) may only carry the top bit; there is no 11th byte.
            if shift > 63 || (shift == 63 && payload > 1) {
                return Err(InvalidInput::VarIntOverflow);
            }
            value |= payload << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// An unsigned varint that must fit in a `u32` (`yrs` would silently drop higher bits).
    fn var_u32(&mut self) -> Result<u32> {
        u32::try_from(self.var_u64()?).map_err(|_| InvalidInput::VarIntOverflow)
    }

    /// A signed lib0 varint (sign in bit 6 of the first byte) with a magnitude below 2^53.
    fn var_i53(&mut self) -> Result<()> {
        let first = self.u8()?;
        let mut magnitude = u64::from(first & 0x3f);
        let mut more = first & 0x80 != 0;
        let mut shift = 6u32;
        while more {
            let b = self.u8()?;
            // 6 + 7 * 7 = 55 bits are enough for 53; a ninth continuation byte is never needed.
            if shift > 55 {
                return Err(InvalidInput::VarIntOverflow);
            }
            magnitude |= u64::from(b & 0x7f) << shift;
            if magnitude > SIGNED_MAGNITUDE_MAX {
                return Err(InvalidInput::VarIntOverflow);
            }
            more = b & 0x80 != 0;
            shift += 7;
        }
        Ok(())
    }

    /// A client ID: a varuint below 2^53.
    fn client_id(&mut self) -> Result<u64> {
        let id = self.var_u64()?;
        if id >= CLIENT_ID_LIMIT {
            Err(InvalidInput::ClientIdTooLarge(id))
        } else {
            Ok(id)
        }
    }

    /// An item ID (client, clock). The clock names one element, so it must lie below the
    /// largest range end.
    fn id(&mut self) -> Result<()> {
        self.client_id()?;
        if u64::from(self.var_u32()?) >= CLOCK_END_MAX {
            return Err(InvalidInput::ClockOverflow);
        }
        Ok(())
    }

    /// A varuint length (fitting `u32`, as `yrs` reads it) followed by that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.var_u32()?;
        self.take(u64::from(len))
    }

    /// A length-prefixed UTF-8 string.
    fn string(&mut self) -> Result<&'a str> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map_err(|_| InvalidInput::InvalidUtf8)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A tiny lib0 v1 writer for hand-built inputs.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn u8(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn var(mut self, mut v: u64) -> Self {
            while v >= 0x80 {
                self.0.push((v as u8 & 0x7f) | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }
        fn ivar(mut self, negative: bool, magnitude: u64) -> Self {
            let sign = if negative { 0x40 } else { 0 };
            let more = if magnitude > 0x3f { 0x80 } else { 0 };
            self.0.push(more | sign | (magnitude as u8 & 0x3f));
            self.var_tail(magnitude >> 6)
        }
        fn var_tail(mut self, mut v: u64) -> Self {
            while v > 0 {
                self.0
                    .push(if v > 0x7f { 0x80 } else { 0 } | (v as u8 & 0x7f));
                v >>= 7;
            }
            self
        }
        fn str(self, s: &str) -> Self {
            self.bytes(s.as_bytes())
        }
        fn bytes(self, b: &[u8]) -> Self {
            self.var(b.len() as u64).raw(b)
        }
        /// Header of a one-client, one-block update: client 5, clock 0.
        fn one_block() -> Self {
            Enc::default().var(1).var(1).var(5).var(0)
        }
        /// An item with no origins under root type "t", with the given content ref.
        fn root_item(self, content: u8) -> Self {
            self.u8(content).var(1).str("t")
        }
        fn no_ds(self) -> Vec<u8> {
            self.var(0).0
        }
    }

    fn check(bytes: &[u8]) -> Result<()> {
        validate_update_v1(bytes, &ValidateLimits::default())
    }

    fn string_update(s: &str) -> Vec<u8> {
        Enc::one_block().root_item(CONTENT_STRING).str(s).no_ds()
    }

    fn any_update(value: Enc) -> Vec<u8> {
        Enc::one_block()
            .root_item(CONTENT_ANY)
            .var(1)
            .raw(&value.0)
            .no_ds()
    }

    #[test]
    fn minimal_inputs_pass() {
        check(&[0, 0]).unwrap();
        check(&string_update("hi")).unwrap();
        validate_state_vector_v1(&[0]).unwrap();
        validate_awareness_update(&[0]).unwrap();
    }

    #[test]
    fn hand_built_update_matches_yrs() {
        let bytes = string_update("hé👋");
        check(&bytes).unwrap();
        let doc = yrs::Doc::new();
        let text = {
            use yrs::Transact;
            let text = doc.get_or_insert_text("t");
            let update = <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(&bytes).unwrap();
            doc.transact_mut().apply_update(update).unwrap();
            text
        };
        use yrs::{GetString, Transact};
        assert_eq!(text.get_string(&doc.transact()), "hé👋");
    }

    #[test]
    fn every_prefix_is_truncated() {
        let full = Enc::one_block()
            .u8(CONTENT_ANY | INFO_HAS_ORIGIN | INFO_HAS_RIGHT_ORIGIN)
            .var(7)
            .var(3)
            .var(8)
            .var(1)
            .var(2)
            .u8(ANY_MAP)
            .var(1)
            .str("k")
            .u8(ANY_FLOAT64)
            .raw(&[0; 8])
            .u8(ANY_INTEGER)
            .ivar(true, 300)
            .var(1)
            .var(7)
            .var(1)
            .var(2)
            .var(3)
            .0;
        check(&full).unwrap();
        for len in 0..full.len() {
            assert_eq!(
                check(&full[..len]),
                Err(InvalidInput::Truncated),
                "prefix {len}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        let mut bytes = string_update("x");
        bytes.push(0);
        assert_eq!(check(&bytes), Err(InvalidInput::TrailingBytes));
        assert_eq!(
            validate_state_vector_v1(&[0, 0]),
            Err(InvalidInput::TrailingBytes)
        );
        assert_eq!(
            validate_awareness_update(&[0, 1]),
            Err(InvalidInput::TrailingBytes)
        );
    }

    #[test]
    fn huge_declared_counts_are_truncated() {
        for bytes in [
            &[144, 243, 243, 59][..],
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
            &[1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0],
            &[0, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ] {
            assert_eq!(check(bytes), Err(InvalidInput::Truncated), "{bytes:?}");
        }
        let huge_any_array = Enc::one_block()
            .root_item(CONTENT_ANY)
            .var(1)
            .u8(ANY_ARRAY)
            .var(u64::MAX)
            .0;
        assert_eq!(check(&huge_any_array), Err(InvalidInput::Truncated));
        let huge_string = Enc::one_block()
            .root_item(CONTENT_STRING)
            .var(u64::from(u32::MAX))
            .0;
        assert_eq!(check(&huge_string), Err(InvalidInput::Truncated));
    }

    #[test]
    fn varint_limits() {
        // u64::MAX is 10 bytes and fits; 2^64 does not; nor does an 11-byte encoding of 0.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.var_u64(), Ok(u64::MAX));
        let mut r = Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
        assert_eq!(r.var_u64(), Err(InvalidInput::VarIntOverflow));
        let mut r = Reader::new(&[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0,
        ]);
        assert_eq!(r.var_u64(), Err(InvalidInput::VarIntOverflow));
        // Overlong but in range is fine (lib0 accepts it too).
        assert_eq!(Reader::new(&[0x81, 0x80, 0x00]).var_u64(), Ok(1));
        // u32 fields: 2^32 - 1 fits, 2^32 does not (yrs would read it as 0).
        let max = Enc::default().var(u64::from(u32::MAX)).0;
        assert_eq!(Reader::new(&max).var_u32(), Ok(u32::MAX));
        let over = Enc::default().var(1 << 32).0;
        assert_eq!(
            Reader::new(&over).var_u32(),
            Err(InvalidInput::VarIntOverflow)
        );
        // Signed: magnitude up to 2^53 - 1.
        for (neg, mag, ok) in [
            (false, 0, true),
            (true, 0, true),
            (true, 63, true),
            (false, 64, true),
            (true, (1 << 53) - 1, true),
            (false, 1 << 53, false),
            (true, u64::MAX >> 1, false),
        ] {
            let bytes = Enc::default().ivar(neg, mag).0;
            let res = Reader::new(&bytes).var_i53();
            assert_eq!(res.is_ok(), ok, "{neg} {mag}");
            let update = any_update(Enc::default().u8(ANY_INTEGER).raw(&bytes));
            assert_eq!(check(&update).is_ok(), ok, "{neg} {mag}");
        }
        // Long runs of continuation bytes stop early instead of shifting past 64 bits.
        let mut long = vec![ANY_INTEGER, 0x80];
        long.extend([0x80; 20]);
        long.push(0);
        assert_eq!(
            check(&any_update(Enc::default().raw(&long))),
            Err(InvalidInput::VarIntOverflow)
        );
    }

    #[test]
    fn client_ids_in_every_position() {
        let limit = CLIENT_ID_LIMIT;
        for (bad, expect) in [
            (limit, InvalidInput::ClientIdTooLarge(limit)),
            (u64::MAX, InvalidInput::ClientIdTooLarge(u64::MAX)),
        ] {
            let cases: Vec<Vec<u8>> = vec![
                // block list header
                Enc::default()
                    .var(1)
                    .var(1)
                    .var(bad)
                    .var(0)
                    .root_item(CONTENT_DELETED)
                    .var(1)
                    .no_ds(),
                // origin
                Enc::one_block()
                    .u8(CONTENT_DELETED | INFO_HAS_ORIGIN)
                    .var(bad)
                    .var(0)
                    .var(1)
                    .no_ds(),
                // right origin
                Enc::one_block()
                    .u8(CONTENT_DELETED | INFO_HAS_RIGHT_ORIGIN)
                    .var(bad)
                    .var(0)
                    .var(1)
                    .no_ds(),
                // parent ID
                Enc::one_block()
                    .u8(CONTENT_DELETED)
                    .var(0)
                    .var(bad)
                    .var(0)
                    .var(1)
                    .no_ds(),
                // delete set
                Enc::default().var(0).var(1).var(bad).var(1).var(0).var(1).0,
            ];
            for (i, bytes) in cases.iter().enumerate() {
                assert_eq!(check(bytes), Err(expect.clone()), "case {i}");
            }
            let sv = Enc::default().var(1).var(bad).var(0).0;
            assert_eq!(validate_state_vector_v1(&sv), Err(expect.clone()));
            let aw = Enc::default().var(1).var(bad).var(0).str("{}").0;
            assert_eq!(validate_awareness_update(&aw), Err(expect.clone()));
        }
        // The largest legal ID passes everywhere.
        let ok = Enc::default()
            .var(1)
            .var(1)
            .var(limit - 1)
            .var(0)
            .u8(CONTENT_DELETED | INFO_HAS_ORIGIN | INFO_HAS_RIGHT_ORIGIN)
            .var(limit - 1)
            .var(0)
            .var(limit - 1)
            .var(0)
            .var(1)
            .var(1)
            .var(limit - 1)
            .var(1)
            .var(0)
            .var(1)
            .0;
        check(&ok).unwrap();
    }

    #[test]
    fn clock_overflow() {
        let end = CLOCK_END_MAX;
        // Run ending exactly at the limit passes; one more element does not.
        let run = |start: u64, len: u64| {
            Enc::default()
                .var(1)
                .var(1)
                .var(5)
                .var(start)
                .root_item(CONTENT_DELETED)
                .var(len)
                .no_ds()
        };
        check(&run(end - 10, 10)).unwrap();
        assert_eq!(check(&run(end - 10, 11)), Err(InvalidInput::ClockOverflow));
        assert_eq!(check(&run(end + 1, 1)), Err(InvalidInput::ClockOverflow));
        assert_eq!(
            check(&run(0, u64::from(u32::MAX))),
            Err(InvalidInput::ClockOverflow)
        );
        assert_eq!(check(&run(0, 1 << 32)), Err(InvalidInput::VarIntOverflow));
        // yrs wraps clocks of 2^31 and more through i32.
        assert_eq!(check(&run(1 << 31, 1)), Err(InvalidInput::ClockOverflow));
        assert_eq!(
            check(&run((1 << 31) - 2, 2)),
            Err(InvalidInput::ClockOverflow)
        );
        // Accumulated over several blocks.
        let two = Enc::default()
            .var(1)
            .var(2)
            .var(5)
            .var(0)
            .u8(INFO_GC)
            .var(u64::from(u32::MAX) - 5)
            .u8(INFO_SKIP)
            .var(10)
            .no_ds();
        assert_eq!(check(&two), Err(InvalidInput::ClockOverflow));
        // Delete set ranges.
        let ds = |clock: u64, len: u64| {
            Enc::default()
                .var(0)
                .var(1)
                .var(5)
                .var(1)
                .var(clock)
                .var(len)
                .0
        };
        check(&ds(end - 1, 1)).unwrap();
        assert_eq!(check(&ds(end, 1)), Err(InvalidInput::ClockOverflow));
        assert_eq!(
            check(&ds(u64::from(u32::MAX), u64::from(u32::MAX))),
            Err(InvalidInput::ClockOverflow)
        );
        // Origin clocks.
        let origin = |clock: u64| {
            Enc::one_block()
                .u8(CONTENT_DELETED | INFO_HAS_ORIGIN)
                .var(5)
                .var(clock)
                .var(1)
                .no_ds()
        };
        check(&origin(end - 1)).unwrap();
        assert_eq!(check(&origin(end)), Err(InvalidInput::ClockOverflow));
        assert_eq!(check(&origin(1 << 32)), Err(InvalidInput::VarIntOverflow));
        // Awareness clocks must leave room for `clock + 1`; state vector clocks must fit u32.
        let aw = |clock: u64| Enc::default().var(1).var(1).var(clock).str("null").0;
        validate_awareness_update(&aw(u64::from(u32::MAX) - 1)).unwrap();
        assert_eq!(
            validate_awareness_update(&aw(u64::from(u32::MAX))),
            Err(InvalidInput::ClockOverflow)
        );
        let sv = |clock: u64| Enc::default().var(1).var(1).var(clock).0;
        validate_state_vector_v1(&sv(u64::from(u32::MAX))).unwrap();
        assert_eq!(
            validate_state_vector_v1(&sv(1 << 32)),
            Err(InvalidInput::VarIntOverflow)
        );
    }

    #[test]
    fn client_order_and_runs() {
        // One client entry: 1 block, client, clock, a root string item "ab".
        let entry = |client: u64, clock: u64| {
            Enc::default()
                .var(1)
                .var(client)
                .var(clock)
                .root_item(CONTENT_STRING)
                .str("ab")
                .0
        };
        let two = |a: u64, b: u64| {
            Enc::default()
                .var(2)
                .raw(&entry(a, 4))
                .raw(&entry(b, 0))
                .no_ds()
        };
        let mut runs = Vec::new();
        validate_update_runs_v1(&two(9, 3), &ValidateLimits::default(), |r| runs.push(r)).unwrap();
        assert_eq!(
            runs,
            [
                ClientRun {
                    client: 9,
                    start: 4,
                    end: 6,
                    skip_end: None
                },
                ClientRun {
                    client: 3,
                    start: 0,
                    end: 2,
                    skip_end: None
                },
            ]
        );
        assert_eq!(check(&two(3, 9)), Err(InvalidInput::ClientOrder));
        assert_eq!(check(&two(3, 3)), Err(InvalidInput::ClientOrder));
        let skip = Enc::one_block().u8(INFO_SKIP).var(3).no_ds();
        runs.clear();
        validate_update_runs_v1(&skip, &ValidateLimits::default(), |r| runs.push(r)).unwrap();
        assert_eq!(
            runs,
            [ClientRun {
                client: 5,
                start: 0,
                end: 3,
                skip_end: Some(3)
            }]
        );
        // An empty run is reported too.
        let empty = Enc::default().var(1).var(0).var(5).var(7).no_ds();
        runs.clear();
        validate_update_runs_v1(&empty, &ValidateLimits::default(), |r| runs.push(r)).unwrap();
        assert_eq!(
            runs,
            [ClientRun {
                client: 5,
                start: 7,
                end: 7,
                skip_end: None
            }]
        );
    }

    #[test]
    fn zero_lengths() {
        let cases = [
            Enc::one_block().u8(INFO_GC).var(0).no_ds(),
            Enc::one_block().u8(INFO_SKIP).var(0).no_ds(),
            Enc::one_block().root_item(CONTENT_DELETED).var(0).no_ds(),
            string_update(""),
            Enc::one_block().root_item(CONTENT_ANY).var(0).no_ds(),
            Enc::default().var(0).var(1).var(5).var(1).var(3).var(0).0,
        ];
        for (i, bytes) in cases.iter().enumerate() {
            assert_eq!(check(bytes), Err(InvalidInput::ZeroLength), "case {i}");
        }
        // A client with an empty block list, or no delete ranges, is harmless.
        check(&Enc::default().var(1).var(0).var(5).var(0).no_ds()).unwrap();
        check(&Enc::default().var(0).var(1).var(5).var(0).0).unwrap();
    }

    #[test]
    fn unknown_content_refs() {
        for info in [
            11u8,
            12,
            15,
            16,
            20,
            31,
            INFO_HAS_ORIGIN,
            INFO_HAS_RIGHT_ORIGIN | INFO_SKIP,
            0x10 | 4,
        ] {
            let bytes = Enc::one_block()
                .u8(info)
                .var(0)
                .var(5)
                .var(0)
                .var(1)
                .no_ds();
            assert_eq!(
                check(&bytes),
                Err(InvalidInput::UnknownContent(info & INFO_CONTENT_MASK)),
                "info {info}"
            );
        }
        let json = Enc::one_block()
            .root_item(CONTENT_JSON)
            .var(1)
            .str("1")
            .no_ds();
        assert_eq!(check(&json), Err(InvalidInput::Unsupported("json content")));
    }

    #[test]
    fn type_refs() {
        let ty = |type_ref: u8| Enc::one_block().root_item(CONTENT_TYPE).u8(type_ref);
        for ok in [
            TYPE_ARRAY,
            TYPE_MAP,
            TYPE_TEXT,
            TYPE_XML_FRAGMENT,
            TYPE_XML_TEXT,
        ] {
            check(&ty(ok).no_ds()).unwrap();
        }
        check(&ty(TYPE_XML_ELEMENT).str("p").no_ds()).unwrap();
        assert_eq!(
            check(&ty(TYPE_XML_HOOK).str("h").no_ds()),
            Err(InvalidInput::Unsupported("xml hook type"))
        );
        for bad in [7u8, 9, 15, 127, 128, 255] {
            assert_eq!(
                check(&ty(bad).no_ds()),
                Err(InvalidInput::UnknownTypeRef(u64::from(bad)))
            );
        }
    }

    #[test]
    fn any_values() {
        let all = Enc::default()
            .u8(ANY_ARRAY)
            .var(12)
            .u8(ANY_UNDEFINED)
            .u8(ANY_NULL)
            .u8(ANY_INTEGER)
            .ivar(true, 5)
            .u8(ANY_FLOAT32)
            .raw(&1.5f32.to_be_bytes())
            .u8(ANY_FLOAT64)
            .raw(&0.1f64.to_be_bytes())
            .u8(ANY_BIGINT)
            .raw(&i64::MIN.to_be_bytes())
            .u8(ANY_FALSE)
            .u8(ANY_TRUE)
            .u8(ANY_STRING)
            .str("s")
            .u8(ANY_MAP)
            .var(1)
            .str("k")
            .u8(ANY_NULL)
            .u8(ANY_ARRAY)
            .var(0)
            .u8(ANY_BUFFER)
            .bytes(&[1, 2, 3]);
        check(&any_update(all)).unwrap();
        for tag in [0u8, 1, 115, 128, 255] {
            assert_eq!(
                check(&any_update(Enc::default().u8(tag))),
                Err(InvalidInput::UnknownAnyTag(tag))
            );
        }
    }

    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut value = Enc::default();
        for _ in 0..depth {
            value = value.u8(ANY_ARRAY).var(1);
        }
        any_update(value.u8(ANY_NULL))
    }

    #[test]
    fn depth_limit() {
        let limits = ValidateLimits::default();
        validate_update_v1(&nested_arrays(limits.max_depth), &limits).unwrap();
        assert_eq!(
            validate_update_v1(&nested_arrays(limits.max_depth + 1), &limits),
            Err(InvalidInput::TooDeep)
        );
        assert_eq!(check(&nested_arrays(100_000)), Err(InvalidInput::TooDeep));
        // Maps count too.
        let mut map = Enc::default();
        for _ in 0..100 {
            map = map.u8(ANY_MAP).var(1).str("k");
        }
        assert_eq!(
            check(&any_update(map.u8(ANY_NULL))),
            Err(InvalidInput::TooDeep)
        );
        let strict = ValidateLimits { max_depth: 0 };
        validate_update_v1(&nested_arrays(0), &strict).unwrap();
        assert_eq!(
            validate_update_v1(&nested_arrays(1), &strict),
            Err(InvalidInput::TooDeep)
        );
    }

    #[test]
    fn invalid_utf8_everywhere() {
        let bad: &[u8] = &[b'a', 0xff, b'b'];
        let cases = [
            // root type name
            Enc::one_block()
                .u8(CONTENT_DELETED)
                .var(1)
                .bytes(bad)
                .var(1)
                .no_ds(),
            // parent_sub
            Enc::one_block()
                .u8(CONTENT_DELETED | INFO_HAS_PARENT_SUB)
                .var(1)
                .str("m")
                .bytes(bad)
                .var(1)
                .no_ds(),
            // string content
            Enc::one_block()
                .root_item(CONTENT_STRING)
                .bytes(bad)
                .no_ds(),
            // format key
            Enc::one_block()
                .root_item(CONTENT_FORMAT)
                .bytes(bad)
                .str("true")
                .no_ds(),
            // xml element name
            Enc::one_block()
                .root_item(CONTENT_TYPE)
                .u8(TYPE_XML_ELEMENT)
                .bytes(bad)
                .no_ds(),
            // any string / map key
            any_update(Enc::default().u8(ANY_STRING).bytes(bad)),
            any_update(Enc::default().u8(ANY_MAP).var(1).bytes(bad).u8(ANY_NULL)),
            // subdoc guid
            Enc::one_block()
                .root_item(CONTENT_DOC)
                .bytes(bad)
                .u8(ANY_MAP)
                .var(0)
                .no_ds(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            assert_eq!(check(bytes), Err(InvalidInput::InvalidUtf8), "case {i}");
        }
        // A surrogate encoded as UTF-8 (CESU style) is not UTF-8 either.
        let cesu = string_update_raw(&[0xed, 0xa0, 0x80]);
        assert_eq!(check(&cesu), Err(InvalidInput::InvalidUtf8));
        let aw = Enc::default().var(1).var(1).var(1).bytes(bad).0;
        assert_eq!(
            validate_awareness_update(&aw),
            Err(InvalidInput::InvalidUtf8)
        );
    }

    fn string_update_raw(bytes: &[u8]) -> Vec<u8> {
        Enc::one_block()
            .root_item(CONTENT_STRING)
            .bytes(bytes)
            .no_ds()
    }

    #[test]
    fn json_content() {
        let embed = |s: &str| Enc::one_block().root_item(CONTENT_EMBED).str(s).no_ds();
        let format = |s: &str| {
            Enc::one_block()
                .root_item(CONTENT_FORMAT)
                .str("bold")
                .str(s)
                .no_ds()
        };
        for ok in [
            "null",
            "true",
            "{\"image\":\"x.png\",\"n\":[1,2.5,-3e10]}",
            " 1 ",
        ] {
            check(&embed(ok)).unwrap();
            check(&format(ok)).unwrap();
        }
        // `undefined`, garbage, trailing commas, lone surrogate escapes, integers beyond i64
        // and out-of-range floats are all refused (`yrs` would fail on the last two too).
        for bad in [
            "",
            "undefined",
            "{",
            "[1,]",
            "\"\\ud800\"",
            "18446744073709551615",
            "1e400",
            "nul",
        ] {
            assert_eq!(check(&embed(bad)), Err(InvalidInput::InvalidJson), "{bad}");
            assert_eq!(check(&format(bad)), Err(InvalidInput::InvalidJson), "{bad}");
        }
        // serde_json's recursion limit stops deep JSON without overflowing the stack.
        let deep = "[".repeat(100_000);
        assert_eq!(check(&embed(&deep)), Err(InvalidInput::InvalidJson));
    }

    #[test]
    fn parent_info_and_subdocs() {
        let parent = |p: u64| {
            Enc::one_block()
                .u8(CONTENT_DELETED)
                .var(p)
                .str("t")
                .var(1)
                .no_ds()
        };
        check(&parent(1)).unwrap();
        assert_eq!(check(&parent(2)), Err(InvalidInput::InvalidParentInfo));
        // yrs would truncate 2^32 + 1 to 1; Yjs would not.
        assert_eq!(
            check(&parent((1 << 32) + 1)),
            Err(InvalidInput::VarIntOverflow)
        );
        let subdoc = |opts: Enc| {
            Enc::one_block()
                .root_item(CONTENT_DOC)
                .str("guid")
                .raw(&opts.0)
                .no_ds()
        };
        check(&subdoc(
            Enc::default().u8(ANY_MAP).var(1).str("gc").u8(ANY_TRUE),
        ))
        .unwrap();
        for bad in [ANY_NULL, ANY_UNDEFINED, ANY_ARRAY] {
            assert_eq!(
                check(&subdoc(Enc::default().u8(bad).var(0))),
                Err(InvalidInput::InvalidSubdocOptions)
            );
        }
        // With origins present, parent and parent_sub are not encoded even if the flag is set.
        let with_origin = Enc::one_block()
            .u8(CONTENT_DELETED | INFO_HAS_ORIGIN | INFO_HAS_PARENT_SUB)
            .var(5)
            .var(0)
            .var(1)
            .no_ds();
        check(&with_origin).unwrap();
    }

    #[test]
    fn awareness() {
        let one = |state: &str| Enc::default().var(1).var(7).var(3).str(state).0;
        validate_awareness_update(&one("{\"user\":{\"name\":\"ann\"}}")).unwrap();
        validate_awareness_update(&one("null")).unwrap();
        for bad in ["", "{", "undefined", " null", "null "] {
            assert_eq!(
                validate_awareness_update(&one(bad)),
                Err(InvalidInput::InvalidJson),
                "{bad:?}"
            );
        }
        let two = Enc::default()
            .var(2)
            .var(1)
            .var(1)
            .str("{}")
            .var(2)
            .var(1)
            .str("null")
            .0;
        validate_awareness_update(&two).unwrap();
        for len in 0..two.len() {
            assert_eq!(
                validate_awareness_update(&two[..len]),
                Err(InvalidInput::Truncated)
            );
        }
        assert_eq!(
            validate_awareness_update(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(InvalidInput::Truncated)
        );
    }

    #[test]
    fn state_vectors() {
        let sv = Enc::default()
            .var(2)
            .var(1)
            .var(10)
            .var((1 << 53) - 1)
            .var(0)
            .0;
        validate_state_vector_v1(&sv).unwrap();
        for len in 0..sv.len() {
            assert_eq!(
                validate_state_vector_v1(&sv[..len]),
                Err(InvalidInput::Truncated)
            );
        }
        assert_eq!(
            validate_state_vector_v1(&[144, 243, 243, 59]),
            Err(InvalidInput::Truncated)
        );
        let too_many = Enc::default().var(1 << 32).0;
        assert_eq!(
            validate_state_vector_v1(&too_many),
            Err(InvalidInput::VarIntOverflow)
        );
    }

    #[test]
    fn display_texts_fit_a_close_frame() {
        let all = [
            InvalidInput::Truncated,
            InvalidInput::VarIntOverflow,
            InvalidInput::TrailingBytes,
            InvalidInput::InvalidUtf8,
            InvalidInput::ClientIdTooLarge(u64::MAX),
            InvalidInput::ClockOverflow,
            InvalidInput::ZeroLength,
            InvalidInput::UnknownContent(u8::MAX),
            InvalidInput::UnknownTypeRef(u64::MAX),
            InvalidInput::UnknownAnyTag(u8::MAX),
            InvalidInput::TooDeep,
            InvalidInput::InvalidJson,
            InvalidInput::InvalidParentInfo,
            InvalidInput::InvalidSubdocOptions,
            InvalidInput::ClientOrder,
            InvalidInput::Unsupported("json content"),
        ];
        for e in all {
            let text = e.to_string();
            assert!(text.len() < 100 && text == text.to_lowercase(), "{text}");
        }
    }
}
