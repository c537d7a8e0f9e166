//! Value encodings of [`crate::SledStore`]: rmp-serde with named fields (so a field can be
//! added later with `#[serde(default)]` without breaking old databases), byte fields through
//! `serde_bytes` (msgpack `bin`, not an array of integers, which would be ~50% bigger).
//!
//! The byte-carrying records hold a `Cow` so that writing borrows the caller's slice and
//! reading can borrow from the sled value (compaction only needs the length).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::{Result, Seq};

/// Format of the key schema and these encodings, stored under [`crate::keys::FORMAT_KEY`].
pub(crate) const FORMAT: u32 = 1;

/// Value of a `'l'` key.
#[derive(Serialize, Deserialize)]
pub(crate) struct LogEntry<'a> {
    #[serde(with = "serde_bytes", borrow)]
    pub update: Cow<'a, [u8]>,
}

/// Value of a `'s'` key.
#[derive(Serialize, Deserialize)]
pub(crate) struct Snapshot<'a> {
    /// Last seq folded in (also in the room's meta; compared on load).
    pub seq: Seq,
    #[serde(with = "serde_bytes", borrow)]
    pub state: Cow<'a, [u8]>,
}

/// Value of a `'w'` key.
#[derive(Serialize, Deserialize)]
pub(crate) struct VersionState<'a> {
    #[serde(with = "serde_bytes", borrow)]
    pub state: Cow<'a, [u8]>,
}

/// Encodes a value as rmp-serde with named fields.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a value written by [`encode`], borrowing from `bytes` where the type allows.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    #[test]
    fn bytes_are_msgpack_bin_and_borrowed_on_read() {
        let update = vec![200u8; 100];
        let encoded = encode(&LogEntry {
            update: Cow::Borrowed(&update),
        })
        .expect("encodes");
        // fixmap(1), fixstr "update" (7 bytes), bin8 header (2 bytes), payload.
        assert_eq!(encoded.len(), 1 + 7 + 2 + 100);
        assert!(encoded.windows(2).any(|w| w == [0xc4, 100]), "bin8 marker");
        let decoded: LogEntry<'_> = decode(&encoded).expect("decodes");
        assert!(matches!(decoded.update, Cow::Borrowed(_)));
        assert_eq!(decoded.update.as_ref(), &update[..]);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let result: Result<Snapshot<'_>> = decode(&[0xc1, 0x00]);
        assert!(matches!(result, Err(StoreError::Decode(_))));
    }
}
