//! y-protocols message framing, byte-compatible with `y-protocols` and `y-websocket`.
//!
//! A WebSocket frame carries exactly one message: a varuint message type followed by its
//! payload.
//!
//! | type | name | payload |
//! |---|---|---|
//! | `0` | sync | varuint subtype: `0` SyncStep1(varUint8Array state vector), `1` SyncStep2(varUint8Array update), `2` Update(varUint8Array update) |
//! | `1` | awareness | varUint8Array awareness update |
//! | `2` | auth | varuint `0` = permission denied, then varString reason |
//! | `3` | query awareness | (none) |
//!
//! Client frames are decoded by [`decode_client_message`], which validates every payload with
//! [`crate::validate`] before it can reach `yrs`. Payloads stay zero-copy slices of the frame.
//! Server frames are encoded once into [`Bytes`] so they can be shared by every receiver.

use bytes::{BufMut, Bytes, BytesMut};
use yrs::sync::protocol::{
    MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_SYNC_STEP_1, MSG_SYNC_STEP_2,
    MSG_SYNC_UPDATE,
};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use crate::validate::{
    validate_awareness_update, validate_state_vector_v1, validate_update_runs_v1, ClientRun,
    InvalidInput, ValidateLimits,
};

/// An awareness update that removes nobody and adds nobody (`count = 0`).
///
/// Official clients treat any incoming message as a sign of life, and the v3 client closes a
/// connection after 30 s without one; this frame is the cheapest no-op message that keeps an
/// otherwise idle client connected.
pub const KEEPALIVE_FRAME: &[u8] = &[MSG_AWARENESS, 1, 0];

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame ended before the message it announces was complete.
    #[error("truncated message")]
    Truncated,
    /// A varuint in the framing does not fit in 64 bits.
    #[error("malformed varint")]
    VarIntOverflow,
    /// The frame holds more bytes after its one message.
    #[error("trailing bytes after message")]
    TrailingBytes,
    /// A sync message with a subtype other than 0, 1 or 2.
    #[error("unknown sync message subtype {0}")]
    UnknownSyncType(u64),
    /// The payload of a sync or awareness message is not valid.
    #[error("{0}")]
    Invalid(#[from] InvalidInput),
}

/// A state vector (lib0 v1) that passed [`validate_state_vector_v1`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVectorV1(Bytes);

/// A Yjs update (lib0 v1) that passed validation, with the clock range it covers per client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateV1 {
    bytes: Bytes,
    runs: Vec<ClientRun>,
}

/// An awareness update (y-protocols encoding) that passed [`validate_awareness_update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessUpdateV1(Bytes);

impl StateVectorV1 {
    /// Validates `bytes` as a v1 state vector.
    pub fn parse(bytes: Bytes) -> Result<Self, InvalidInput> {
        validate_state_vector_v1(&bytes)?;
        Ok(Self(bytes))
    }

    /// Decodes into a `yrs` state vector; cannot fail after validation.
    pub fn decode(&self) -> StateVector {
        // Validation walked exactly this format, so decoding cannot fail; an empty vector is the
        // conservative answer should it ever disagree (the peer then receives the whole state).
        StateVector::decode_v1(&self.0).unwrap_or_default()
    }

    /// The validated bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl UpdateV1 {
    /// Validates `bytes` as a v1 update.
    pub fn parse(bytes: Bytes, limits: &ValidateLimits) -> Result<Self, InvalidInput> {
        let mut runs = Vec::new();
        validate_update_runs_v1(&bytes, limits, |run| runs.push(run))?;
        Ok(Self { bytes, runs })
    }

    /// The validated bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The same update in its own allocation, detached from the buffer it was sliced from.
    pub fn detached(&self) -> Self {
        Self {
            bytes: Bytes::copy_from_slice(&self.bytes),
            runs: self.runs.clone(),
        }
    }

    /// Each client's block run in the update (descending client order).
    pub fn runs(&self) -> &[ClientRun] {
        &self.runs
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the update has no bytes (never true for a validated update).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl AwarenessUpdateV1 {
    /// Validates `bytes` as an awareness update.
    pub fn parse(bytes: Bytes) -> Result<Self, InvalidInput> {
        validate_awareness_update(&bytes)?;
        Ok(Self(bytes))
    }

    /// The client IDs the update speaks for.
    pub fn client_ids(&self) -> Vec<u64> {
        yrs::sync::awareness::AwarenessUpdate::decode_v1(&self.0)
            .map(|u| u.clients.keys().map(|c| c.get()).collect())
            .unwrap_or_default()
    }

    /// The validated bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

/// One decoded client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Sync step 1: the client's state vector; the server answers with the diff.
    SyncStep1(StateVectorV1),
    /// Sync step 2: the diff the client holds that the server lacks.
    SyncStep2(UpdateV1),
    /// A live document update.
    Update(UpdateV1),
    /// An awareness update (presence).
    Awareness(AwarenessUpdateV1),
    /// A request for all current awareness states.
    QueryAwareness,
    /// An auth message. Clients have nothing to say here; it is ignored like the reference
    /// server ignores it.
    Auth,
    /// A message type this protocol does not define. Ignored (and counted), as the reference
    /// server ignores it, so protocol extensions do not cut connections.
    Unknown(u64),
}

impl ClientMessage {
    /// A short, stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        let kind = match self {
            ClientMessage::SyncStep1(_) => FrameKind::SyncStep1,
            ClientMessage::SyncStep2(_) => FrameKind::SyncStep2,
            ClientMessage::Update(_) => FrameKind::Update,
            ClientMessage::Awareness(_) => FrameKind::Awareness,
            ClientMessage::QueryAwareness => FrameKind::QueryAwareness,
            ClientMessage::Auth => FrameKind::Auth,
            ClientMessage::Unknown(_) => FrameKind::Unknown,
        };
        kind.label()
    }
}

/// The kind of a frame, told from its first two bytes without decoding the payload.
///
/// Used to label traffic in metrics, in both directions, including frames that are later
/// refused as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Sync, SyncStep1.
    SyncStep1,
    /// Sync, SyncStep2.
    SyncStep2,
    /// Sync, Update.
    Update,
    /// Awareness update (the keepalive frame is one too).
    Awareness,
    /// Query awareness.
    QueryAwareness,
    /// Auth (permission denied).
    Auth,
    /// Anything else: empty frames, undefined types, undefined sync subtypes.
    Unknown,
}

impl FrameKind {
    /// Every kind, in [`FrameKind::index`] order.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::SyncStep1,
        FrameKind::SyncStep2,
        FrameKind::Update,
        FrameKind::Awareness,
        FrameKind::QueryAwareness,
        FrameKind::Auth,
        FrameKind::Unknown,
    ];

    /// Reads the kind of `frame` from its message type and, for sync messages, its subtype.
    ///
    /// Both are varuints; every defined value fits in one byte, so a first byte with the
    /// continuation bit set is an undefined (large) value.
    pub fn of(frame: &[u8]) -> FrameKind {
        match (frame.first().copied(), frame.get(1).copied()) {
            (Some(MSG_SYNC), Some(MSG_SYNC_STEP_1)) => FrameKind::SyncStep1,
            (Some(MSG_SYNC), Some(MSG_SYNC_STEP_2)) => FrameKind::SyncStep2,
            (Some(MSG_SYNC), Some(MSG_SYNC_UPDATE)) => FrameKind::Update,
            (Some(MSG_AWARENESS), _) => FrameKind::Awareness,
            (Some(MSG_QUERY_AWARENESS), _) => FrameKind::QueryAwareness,
            (Some(MSG_AUTH), _) => FrameKind::Auth,
            _ => FrameKind::Unknown,
        }
    }

    /// The position of this kind in [`FrameKind::ALL`], for per-kind tallies in a fixed array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short, stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            FrameKind::SyncStep1 => "sync_step1",
            FrameKind::SyncStep2 => "sync_step2",
            FrameKind::Update => "update",
            FrameKind::Awareness => "awareness",
            FrameKind::QueryAwareness => "query_awareness",
            FrameKind::Auth => "auth",
            FrameKind::Unknown => "unknown",
        }
    }
}

/// A cursor over a frame that reads lib0 varuints and varUint8Arrays.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn var_u64(&mut self) -> Result<u64, ProtocolError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *self.buf.get(self.pos).ok_or(ProtocolError::Truncated)?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift >= 64 || (shift == 63 && bits > 1) {
                return Err(ProtocolError::VarIntOverflow);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Reads a varUint8Array and returns its `(start, end)` offsets in the frame.
    fn var_bytes(&mut self) -> Result<(usize, usize), ProtocolError> {
        let len = self.var_u64()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if len > remaining {
            return Err(ProtocolError::Truncated);
        }
        let start = self.pos;
        // `len <= remaining`, which is a usize.
        self.pos += len as usize;
        Ok((start, self.pos))
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes)
        }
    }
}

/// Decodes and validates one client frame.
///
/// Payloads are zero-copy slices of `frame`. Unknown message types are returned as
/// [`ClientMessage::Unknown`] rather than refused; anything malformed in a known type is an
/// error and the caller should close the connection (the room is untouched).
pub fn decode_client_message(
    frame: &Bytes,
    limits: &ValidateLimits,
) -> Result<ClientMessage, ProtocolError> {
    let mut r = Reader { buf: frame, pos: 0 };
    let msg_type = r.var_u64()?;
    let msg = match msg_type {
        t if t == u64::from(MSG_SYNC) => {
            let sub = r.var_u64()?;
            let (start, end) = r.var_bytes()?;
            r.finish()?;
            let payload = frame.slice(start..end);
            match sub {
                s if s == u64::from(MSG_SYNC_STEP_1) => {
                    ClientMessage::SyncStep1(StateVectorV1::parse(payload)?)
                }
                s if s == u64::from(MSG_SYNC_STEP_2) => {
                    ClientMessage::SyncStep2(UpdateV1::parse(payload, limits)?)
                }
                s if s == u64::from(MSG_SYNC_UPDATE) => {
                    ClientMessage::Update(UpdateV1::parse(payload, limits)?)
                }
                other => return Err(ProtocolError::UnknownSyncType(other)),
            }
        }
        t if t == u64::from(MSG_AWARENESS) => {
            let (start, end) = r.var_bytes()?;
            r.finish()?;
            ClientMessage::Awareness(AwarenessUpdateV1::parse(frame.slice(start..end))?)
        }
        // Trailing bytes are tolerated for these two: their content is ignored either way.
        t if t == u64::from(MSG_QUERY_AWARENESS) => ClientMessage::QueryAwareness,
        t if t == u64::from(MSG_AUTH) => ClientMessage::Auth,
        other => ClientMessage::Unknown(other),
    };
    Ok(msg)
}

fn put_var_u64(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

const fn var_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

/// Frames `payload` as `[type][subtype?][varUint8Array payload]` with one allocation.
fn frame_bytes(msg_type: u8, sub_type: Option<u8>, payload: &[u8]) -> Bytes {
    let len = payload.len() as u64;
    let mut buf = BytesMut::with_capacity(2 + var_len(len) + payload.len());
    buf.put_u8(msg_type);
    if let Some(sub) = sub_type {
        buf.put_u8(sub);
    }
    put_var_u64(&mut buf, len);
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// `sync / SyncStep1(state vector)` for an encoded v1 state vector.
pub fn encode_sync_step1(state_vector_v1: &[u8]) -> Bytes {
    frame_bytes(MSG_SYNC, Some(MSG_SYNC_STEP_1), state_vector_v1)
}

/// `sync / SyncStep2(update)`: the answer to a SyncStep1.
pub fn encode_sync_step2(update_v1: &[u8]) -> Bytes {
    frame_bytes(MSG_SYNC, Some(MSG_SYNC_STEP_2), update_v1)
}

/// `sync / Update(update)`: a live update for broadcast.
pub fn encode_sync_update(update_v1: &[u8]) -> Bytes {
    frame_bytes(MSG_SYNC, Some(MSG_SYNC_UPDATE), update_v1)
}

/// `awareness(update)`.
pub fn encode_awareness(awareness_update: &[u8]) -> Bytes {
    frame_bytes(MSG_AWARENESS, None, awareness_update)
}

/// `auth / permission denied(reason)`; the official client logs the reason and stays
/// connected, reading what it is sent.
pub fn encode_auth_denied(reason: &str) -> Bytes {
    Bytes::from(Message::Auth(Some(reason.to_owned())).encode_v1())
}

/// `query awareness`: asks the peer for all of its awareness states.
pub fn encode_query_awareness() -> Bytes {
    Bytes::from(Message::AwarenessQuery.encode_v1())
}

/// Frames an accepted update for broadcast, once, into a buffer every receiver shares.
///
/// When the incoming frame already is exactly that `sync / Update` message its bytes are
/// copied as they are. They are copied rather than shared: the incoming frame is a slice of the
/// transport's read buffer, and a small frame waiting in outbound queues would keep that whole
/// buffer alive.
pub fn broadcast_frame(incoming_frame: &Bytes, emitted_update: &[u8]) -> Bytes {
    let expected_len = 2 + var_len(emitted_update.len() as u64) + emitted_update.len();
    if incoming_frame.len() == expected_len
        && incoming_frame.starts_with(&[MSG_SYNC, MSG_SYNC_UPDATE])
        && incoming_frame.ends_with(emitted_update)
    {
        Bytes::copy_from_slice(incoming_frame)
    } else {
        encode_sync_update(emitted_update)
    }
}

/// Checks that our framing is byte-identical to `yrs::sync::Message` for sync messages.
#[doc(hidden)]
pub fn yrs_encode_sync(msg: SyncMessage) -> Vec<u8> {
    Message::Sync(msg).encode_v1()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    #[test]
    fn frame_kind_matches_what_the_decoder_and_encoders_say() {
        let update = real_update("kind");
        let limits = ValidateLimits::default();
        let frames = [
            encode_sync_step1(&[0]),
            encode_sync_step2(&update),
            encode_sync_update(&update),
            encode_awareness(&[0]),
            encode_query_awareness(),
            encode_auth_denied("no"),
        ];
        for frame in &frames {
            let decoded = decode_client_message(frame, &limits).unwrap();
            assert_eq!(FrameKind::of(frame).label(), decoded.kind(), "{frame:?}");
        }
        assert_eq!(FrameKind::of(KEEPALIVE_FRAME), FrameKind::Awareness);
        for odd in [
            &[][..],
            &[0][..],
            &[0, 3, 0][..],
            &[4][..],
            &[0x80, 0x01][..],
        ] {
            assert_eq!(FrameKind::of(odd), FrameKind::Unknown, "{odd:?}");
        }
        for (i, kind) in FrameKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    fn real_update(text: &str) -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    }

    #[test]
    fn keepalive_is_an_empty_awareness_update() {
        let frame = Bytes::from_static(KEEPALIVE_FRAME);
        let msg = decode_client_message(&frame, &ValidateLimits::default()).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Awareness(AwarenessUpdateV1(Bytes::from_static(&[0])))
        );
    }

    #[test]
    fn truncated_and_trailing_frames_are_refused() {
        let limits = ValidateLimits::default();
        let frame = encode_sync_update(&real_update("hello"));
        for cut in 0..frame.len() {
            let err = decode_client_message(&frame.slice(0..cut), &limits);
            assert!(err.is_err(), "prefix of length {cut} accepted");
        }
        let mut long = frame.to_vec();
        long.push(0);
        assert_eq!(
            decode_client_message(&Bytes::from(long), &limits),
            Err(ProtocolError::TrailingBytes)
        );
    }

    #[test]
    fn unknown_types_are_reported_not_refused() {
        let limits = ValidateLimits::default();
        let frame = Bytes::from_static(&[0x80, 0x01, 9, 9]);
        assert_eq!(
            decode_client_message(&frame, &limits),
            Ok(ClientMessage::Unknown(128))
        );
        let bad_sync = Bytes::from_static(&[0, 7, 0]);
        assert_eq!(
            decode_client_message(&bad_sync, &limits),
            Err(ProtocolError::UnknownSyncType(7))
        );
        let overflow =
            Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(
            decode_client_message(&overflow, &limits),
            Err(ProtocolError::VarIntOverflow)
        );
    }

    #[test]
    fn broadcast_frame_is_detached_and_byte_identical() {
        let update = real_update("abc");
        let incoming = encode_sync_update(&update);
        let out = broadcast_frame(&incoming, &update);
        assert_eq!(out, incoming);
        assert_ne!(
            out.as_ptr(),
            incoming.as_ptr(),
            "must not pin the incoming buffer"
        );
        let step2 = encode_sync_step2(&update);
        let out = broadcast_frame(&step2, &update);
        assert_eq!(out, encode_sync_update(&update));
    }

    #[test]
    fn auth_and_query_match_y_protocols() {
        // y-protocols/auth: writeVarUint(2) writeVarUint(0) writeVarString(reason)
        assert_eq!(&encode_auth_denied("no")[..], &[2, 0, 2, b'n', b'o']);
        assert_eq!(&encode_query_awareness()[..], &[3]);
    }

    proptest! {
        #[test]
        fn sync_frames_match_yrs_and_round_trip(text in "\\PC{0,300}", sv_seed in 0u64..1000) {
            let limits = ValidateLimits::default();
            let update = real_update(&text);
            let doc = Doc::with_client_id(sv_seed + 1);
            let t = doc.get_or_insert_text("t");
            t.insert(&mut doc.transact_mut(), 0, &text);
            let sv = doc.transact().state_vector();
            let sv_bytes = sv.encode_v1();
            prop_assert_eq!(t.get_string(&doc.transact()), text.clone());

            let f1 = encode_sync_step1(&sv_bytes);
            prop_assert_eq!(&f1[..], &yrs_encode_sync(SyncMessage::SyncStep1(sv.clone()))[..]);
            match decode_client_message(&f1, &limits).unwrap() {
                ClientMessage::SyncStep1(got) => prop_assert_eq!(got.decode(), sv),
                other => prop_assert!(false, "unexpected {:?}", other),
            }

            let f2 = encode_sync_step2(&update);
            prop_assert_eq!(&f2[..], &yrs_encode_sync(SyncMessage::SyncStep2(update.clone()))[..]);
            match decode_client_message(&f2, &limits).unwrap() {
                ClientMessage::SyncStep2(got) => prop_assert_eq!(&got.as_bytes()[..], &update[..]),
                other => prop_assert!(false, "unexpected {:?}", other),
            }

            let fu = encode_sync_update(&update);
            prop_assert_eq!(&fu[..], &yrs_encode_sync(SyncMessage::Update(update.clone()))[..]);
            match decode_client_message(&fu, &limits).unwrap() {
                ClientMessage::Update(got) => prop_assert_eq!(&got.as_bytes()[..], &update[..]),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_client_message(&Bytes::from(bytes), &ValidateLimits::default());
        }
    }
}
