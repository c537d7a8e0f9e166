//! The sled key schema (drawn in the crate docs): a one-byte tag, the length-prefixed room
//! name, and for numbered records a big-endian `u64`.

use crate::{Result, StoreError};

/// The format marker's key; its value is the format version.
pub(crate) const FORMAT_KEY: &[u8] = b"F";
/// The health probe's key; its value is the time of the last probe.
pub(crate) const HEALTH_KEY: &[u8] = b"H";
/// Tag of room metadata keys.
pub(crate) const META: u8 = b'm';
const SNAPSHOT: u8 = b's';
const LOG: u8 = b'l';
const AUDIT: u8 = b'a';
const VERSION_INFO: u8 = b'v';
const VERSION_STATE: u8 = b'w';

/// Bytes of the room name's length prefix.
const LEN_BYTES: usize = 4;

/// The keys of one room. Built once per operation.
pub(crate) struct RoomKeys {
    /// `room(r)`: the name's length as u32 BE, then the name.
    room: Vec<u8>,
}

impl RoomKeys {
    pub fn new(room: &str) -> Result<Self> {
        let len = u32::try_from(room.len()).map_err(|_| StoreError::RoomNameTooLong(room.len()))?;
        let mut encoded = Vec::with_capacity(LEN_BYTES + room.len());
        encoded.extend_from_slice(&len.to_be_bytes());
        encoded.extend_from_slice(room.as_bytes());
        Ok(Self { room: encoded })
    }

    fn tagged(&self, tag: u8, extra: usize) -> Vec<u8> {
        let mut key = Vec::with_capacity(1 + self.room.len() + extra);
        key.push(tag);
        key.extend_from_slice(&self.room);
        key
    }

    fn numbered(&self, tag: u8, n: u64) -> Vec<u8> {
        let mut key = self.tagged(tag, 8);
        key.extend_from_slice(&n.to_be_bytes());
        key
    }

    /// `'m' ‖ room(r)`.
    pub fn meta(&self) -> Vec<u8> {
        self.tagged(META, 0)
    }

    /// `'s' ‖ room(r)`.
    pub fn snapshot(&self) -> Vec<u8> {
        self.tagged(SNAPSHOT, 0)
    }

    /// `'l' ‖ room(r)`: prefix of every log key of the room.
    pub fn log_prefix(&self) -> Vec<u8> {
        self.tagged(LOG, 0)
    }

    /// `'l' ‖ room(r) ‖ seq`.
    pub fn log(&self, seq: u64) -> Vec<u8> {
        self.numbered(LOG, seq)
    }

    /// `'a' ‖ room(r)`.
    pub fn audit_prefix(&self) -> Vec<u8> {
        self.tagged(AUDIT, 0)
    }

    /// `'a' ‖ room(r) ‖ seq`.
    pub fn audit(&self, seq: u64) -> Vec<u8> {
        self.numbered(AUDIT, seq)
    }

    /// `'v' ‖ room(r)`.
    pub fn version_info_prefix(&self) -> Vec<u8> {
        self.tagged(VERSION_INFO, 0)
    }

    /// `'v' ‖ room(r) ‖ id`.
    pub fn version_info(&self, id: u64) -> Vec<u8> {
        self.numbered(VERSION_INFO, id)
    }

    /// `'w' ‖ room(r)`.
    pub fn version_state_prefix(&self) -> Vec<u8> {
        self.tagged(VERSION_STATE, 0)
    }

    /// `'w' ‖ room(r) ‖ id`.
    pub fn version_state(&self, id: u64) -> Vec<u8> {
        self.numbered(VERSION_STATE, id)
    }
}

/// The number at the end of a numbered key whose per-room prefix is `prefix_len` long.
pub(crate) fn number_of(key: &[u8], prefix_len: usize) -> Result<u64> {
    key.get(prefix_len..)
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("numbered key of the wrong length: {key:?}")))
}

/// The room name of a `'m'` key.
pub(crate) fn room_of_meta_key(key: &[u8]) -> Result<String> {
    let bad = || StoreError::Corrupt(format!("malformed room key: {key:?}"));
    let (&tag, rest) = key.split_first().ok_or_else(bad)?;
    if tag != META || rest.len() < LEN_BYTES {
        return Err(bad());
    }
    let (len, name) = rest.split_at(LEN_BYTES);
    let len = <[u8; LEN_BYTES]>::try_from(len)
        .map(u32::from_be_bytes)
        .map_err(|_| bad())?;
    if usize::try_from(len).ok() != Some(name.len()) {
        return Err(bad());
    }
    String::from_utf8(name.to_vec()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn keys(room: &str) -> RoomKeys {
        RoomKeys::new(room).expect("short name")
    }

    #[test]
    fn layout_is_as_documented() {
        let k = keys("ab");
        assert_eq!(k.meta(), b"m\0\0\0\x02ab");
        assert_eq!(k.log(258), b"l\0\0\0\x02ab\0\0\0\0\0\0\x01\x02");
        assert_eq!(number_of(&k.log(258), k.log_prefix().len()).ok(), Some(258));
        assert_eq!(room_of_meta_key(&k.meta()).ok().as_deref(), Some("ab"));
    }

    #[test]
    fn seqs_sort_numerically() {
        let k = keys("r");
        assert!(k.log(255) < k.log(256));
        assert!(k.log(1) < k.log(u64::MAX));
        assert!(k.audit(9) < k.audit(10));
    }

    #[test]
    fn malformed_meta_keys_are_corrupt() {
        for key in [
            &b""[..],
            b"m",
            b"m\0\0\0",
            b"m\0\0\0\x02a",
            b"x\0\0\0\x01a",
            b"m\0\0\0\x01\xff",
        ] {
            assert!(
                matches!(room_of_meta_key(key), Err(StoreError::Corrupt(_))),
                "{key:?}"
            );
        }
        assert!(number_of(b"l\0\0\0\x01a\0", 6).is_err());
    }

    proptest! {
        /// No key of one room starts with a per-room prefix of another: scans never cross
        /// rooms, whatever the names (prefixes of each other, `/`, NUL, unicode).
        #[test]
        fn room_prefixes_never_collide(a in ".{0,6}", b in ".{0,6}", n in any::<u64>()) {
            prop_assume!(a != b);
            let (ka, kb) = (keys(&a), keys(&b));
            for (prefix, key) in [
                (ka.log_prefix(), kb.log(n)),
                (ka.audit_prefix(), kb.audit(n)),
                (ka.version_info_prefix(), kb.version_info(n)),
                (ka.version_state_prefix(), kb.version_state(n)),
                (ka.meta(), kb.meta()),
                (ka.snapshot(), kb.snapshot()),
            ] {
                prop_assert!(!key.starts_with(&prefix));
            }
            prop_assert_eq!(room_of_meta_key(&ka.meta()).ok(), Some(a));
        }
    }
}
