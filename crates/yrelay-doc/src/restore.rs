//! Restore to a version: the update that makes the current document equal an old one.
//!
//! History is never rewritten. [`restore_update`] loads the current document, edits it — in one
//! transaction, as a fresh client — until its content equals the old version, and returns what
//! that transaction wrote: an ordinary v1 update. Every peer that applies it converges to the
//! old version, and an edit made concurrently by a peer merges with it by the usual CRDT rules.
//!
//! # What is compared
//!
//! Yjs stores every shared type as a *branch* with two parts: an ordered sequence and a keyed
//! map. Each kind of type uses them in its own way — a `Y.Text` is a sequence of characters,
//! embeds and formatting marks; a `Y.Array` and the children of an XML node are sequences of
//! values; a `Y.Map` and the attributes of an XML node are map parts. A restore makes both
//! parts of every root equal, recursively:
//!
//! * Text (`Y.Text`, `Y.XmlText`): characters, embeds and embedded shared types, each with its
//!   formatting attributes, compared as a delta.
//! * Lists (`Y.Array`, `Y.XmlFragment` and `Y.XmlElement` children): JSON values, binary
//!   values and nested shared types (of the same kind, and for XML elements the same tag).
//! * Map parts (`Y.Map` entries, `Y.XmlElement` and `Y.XmlText` attributes): every key.
//!
//! The v1 encoding does not name a root's type, so roots are read by their content: a
//! sequence holding characters, embeds or formatting is text, any other sequence is a list.
//! A root whose sequence changed from one flavour to the other between the versions (its
//! type was changed by the application) is restored best-effort: everything in it is deleted
//! and the old content inserted, so the branch holds exactly what the old version held.
//!
//! # What is preserved
//!
//! Unchanged content keeps its identity (its items are not touched), so cursors, sticky
//! indices and references to nested types held by clients stay valid where nothing changed:
//!
//! * Text and lists keep their longest common prefix and suffix; only the part in between is
//!   deleted and re-inserted (with exactly the old formatting).
//! * Where the changed part of a list has the same length in both versions, elements are
//!   paired by position: a nested type of the same kind is restored in place, recursively,
//!   and only elements that differ otherwise are replaced.
//! * A map key whose value is equal is left alone; a nested type of the same kind under the
//!   same key is restored in place.
//!
//! Everything else — a nested type of another kind, a differently-tagged XML element, text
//! embeds of shared types in the changed part of a text — is deleted and re-created from the
//! old version's content.
//!
//! # Limitations
//!
//! * Subdocuments are left out: a subdocument reference present in both versions at the same
//!   place is kept, one only in the current document is deleted like any other value, and a
//!   restore that would have to re-create one fails with [`RestoreError::Subdocument`].
//! * `yrs`'s public API cannot tell a text embed whose value is a bare JSON string from text
//!   with the same characters. Such embeds are recognised by comparing the text with its
//!   plain string; when a string embed and an identical run of characters sit side by side,
//!   their order may come out swapped (the delta a Yjs client reads is the same). Yjs declares
//!   embeds as objects, and editors write objects.
//! * Content that validation refuses (legacy JSON items, XML hooks, weak links) makes the
//!   restore fail with [`RestoreError::Invalid`]; a sequence mixing text with list items
//!   (which no Yjs API writes) with [`RestoreError::Unsupported`].
//! * Shared types nested deeper than [`MAX_RESTORE_DEPTH`] are refused
//!   ([`RestoreError::TooDeep`]): the walk is recursive.
//!
//! Before returning, the edited document is read back and compared with the old version; a
//! difference (a bug) is reported as [`RestoreError::Diverged`] rather than sent to clients.
//!
//! # Using it
//!
//! Compute the restore from the room's state and apply it to the room right away, in the task
//! that owns the room: edits that arrive in between are merged by the CRDT rules like any
//! concurrent edit, so the room then converges to the old version *plus* those edits. The
//! work is proportional to the size of both documents (both are loaded and walked, and the
//! result is read back once), not to the size of the change.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use yrs::block::{ItemContent, Prelim, Unused};
use yrs::branch::{Branch, BranchPtr};
use yrs::types::text::YChange;
use yrs::types::{Attrs, Delta, TypeRef};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayRef, ClientID, Doc, GetString, Map, MapRef, Number, OffsetKind, Options, Out,
    ReadTxn, Text, TextRef, Transact, TransactionMut, Update, WriteTxn,
};

use crate::validate::{validate_update_runs_v1, InvalidInput, ValidateLimits};

/// Deepest nesting of shared types a restore walks (a root type is depth 0). Deeper documents
/// are refused with [`RestoreError::TooDeep`].
pub const MAX_RESTORE_DEPTH: usize = 128;

/// Yjs client IDs are 53-bit numbers; `yrs` misbehaves on larger ones.
const CLIENT_ID_LIMIT: u64 = 1 << 53;

/// Nesting of `Any` values accepted in the states: they are the relay's own snapshots, whose
/// content was validated (with the configured depth) when it was received.
const STATE_LIMITS: ValidateLimits = ValidateLimits { max_depth: 1024 };

/// Which of the two input states an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The current document (`current_state`).
    Current,
    /// The old version (`old_state`).
    Old,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Current => "current",
            Side::Old => "old",
        })
    }
}

/// Why a restore could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The client ID to author the restore is 2^53 or more (Yjs client IDs are 53-bit numbers).
    #[error("client id {0} is too large")]
    ClientIdTooLarge(u64),
    /// The client ID already wrote to the current document; a restore needs a fresh one.
    #[error("client id {0} is already used in the current document")]
    ClientIdInUse(u64),
    /// A state failed structural validation.
    #[error("{side} state is invalid: {source}")]
    Invalid {
        /// Which state.
        side: Side,
        /// What validation refused.
        #[source]
        source: InvalidInput,
    },
    /// A state is not a whole document: a client's blocks start past clock 0, contain a hole,
    /// or depend on something the state does not hold.
    #[error("{side} state is not a whole document")]
    Incomplete {
        /// Which state.
        side: Side,
    },
    /// `yrs` could not decode or integrate a state.
    #[error("{side} state could not be loaded: {reason}")]
    Load {
        /// Which state.
        side: Side,
        /// The `yrs` error.
        reason: String,
    },
    /// Shared types are nested deeper than [`MAX_RESTORE_DEPTH`].
    #[error("shared types are nested deeper than {MAX_RESTORE_DEPTH} levels")]
    TooDeep,
    /// A root holds content a restore cannot reproduce.
    #[error("root {root:?} holds unsupported content: {reason}")]
    Unsupported {
        /// The root type's name.
        root: String,
        /// What was found.
        reason: &'static str,
    },
    /// The restore would have to re-create a subdocument reference, which it does not do.
    #[error("restoring root {root:?} would re-create a subdocument")]
    Subdocument {
        /// The root type's name.
        root: String,
    },
    /// The edited document did not equal the old version (a bug; nothing was produced).
    #[error("internal error: the restored document differs from the old version")]
    Diverged,
    /// `yrs` panicked while computing the restore (a bug; nothing was produced).
    #[error("the CRDT engine crashed while computing the restore")]
    Panicked,
}

type Result<T, E = RestoreError> = std::result::Result<T, E>;

/// Returns a v1 update that, applied to a document whose state is `current_state` (a v1
/// update of the whole current document), makes its content equal to `old_state` (a v1 update
/// of the whole old version). Returns `None` if they are already equal. The update is authored
/// by `client_id` (a fresh ID the caller picks, < 2^53).
///
/// Both states are validated first (see [`crate::validate`]); neither may depend on anything
/// outside itself, and `client_id` must not have written to the current document yet. The
/// returned update only adds items authored by `client_id` and deletes items of the current
/// document: it is an ordinary edit, applied and broadcast like any other. See the
/// [module documentation](self) for what is preserved and the limitations.
pub fn restore_update(
    current_state: &[u8],
    old_state: &[u8],
    client_id: u64,
) -> Result<Option<Vec<u8>>> {
    if client_id >= CLIENT_ID_LIMIT {
        return Err(RestoreError::ClientIdTooLarge(client_id));
    }
    check_whole(current_state, Side::Current)?;
    check_whole(old_state, Side::Old)?;
    catch_unwind(AssertUnwindSafe(|| {
        compute(current_state, old_state, client_id)
    }))
    .unwrap_or(Err(RestoreError::Panicked))
}

/// Validates `state` and checks that it is self-contained: every client's blocks start at
/// clock 0 without holes (`yrs` would otherwise integrate them behind placeholders).
fn check_whole(state: &[u8], side: Side) -> Result<()> {
    let mut whole = true;
    validate_update_runs_v1(state, &STATE_LIMITS, |run| {
        whole &= run.start == 0 && run.skip_end.is_none();
    })
    .map_err(|source| RestoreError::Invalid { side, source })?;
    if whole {
        Ok(())
    } else {
        Err(RestoreError::Incomplete { side })
    }
}

/// Loads a validated state into a fresh document with JavaScript's text offsets.
fn load(state: &[u8], side: Side, client_id: Option<ClientID>) -> Result<Doc> {
    let update = Update::decode_v1(state).map_err(|e| RestoreError::Load {
        side,
        reason: e.to_string(),
    })?;
    let mut options = Options {
        offset_kind: OffsetKind::Utf16,
        // Formatting cleanup runs at commit, after the update has been captured: it would
        // delete things the update does not carry.
        cleanup_formatting: false,
        ..Options::default()
    };
    if let Some(client_id) = client_id {
        options.client_id = client_id;
    }
    let doc = Doc::with_options(options);
    {
        let mut txn = doc.transact_mut();
        txn.apply_update(update).map_err(|e| RestoreError::Load {
            side,
            reason: e.to_string(),
        })?;
        if txn.has_missing_updates() {
            return Err(RestoreError::Incomplete { side });
        }
    }
    Ok(doc)
}

/// [`restore_update`] on validated, self-contained states.
fn compute(current_state: &[u8], old_state: &[u8], client_id: u64) -> Result<Option<Vec<u8>>> {
    let old_doc = load(old_state, Side::Old, None)?;
    let old_txn = old_doc.transact();
    let old_roots = read_roots(&old_txn)?;

    let client = ClientID::new(client_id);
    let doc = load(current_state, Side::Current, Some(client))?;
    let mut txn = doc.transact_mut();
    if txn.state_vector().get(&client) > 0 {
        return Err(RestoreError::ClientIdInUse(client_id));
    }
    let current_roots = read_roots(&txn)?;

    let names: BTreeSet<Arc<str>> = old_roots
        .keys()
        .chain(current_roots.keys())
        .cloned()
        .collect();
    if names
        .iter()
        .all(|name| same_root(current_roots.get(name), old_roots.get(name)))
    {
        return Ok(None);
    }

    for name in &names {
        let writer = Writer::new(name);
        match (current_roots.get(name), old_roots.get(name)) {
            (Some(current), Some(old)) => writer.restore_node(&mut txn, current, old)?,
            (Some(current), None) => {
                writer.restore_node(&mut txn, current, &Node::empty(current.ptr))?;
            }
            (None, Some(old)) if !old.is_empty() => {
                let ptr = create_root(&mut txn, name, old);
                writer.fill(&mut txn, ptr, old)?;
            }
            (None, _) => {}
        }
    }

    // Read the result back: what goes to clients must be the old version.
    let restored = read_roots(&txn)?;
    let names_after: BTreeSet<&Arc<str>> = names.iter().chain(restored.keys()).collect();
    if !names_after
        .into_iter()
        .all(|name| same_root(restored.get(name), old_roots.get(name)))
    {
        return Err(RestoreError::Diverged);
    }

    // What this transaction wrote: its new blocks and its delete set.
    let update = txn.encode_update_v1();
    drop(txn);
    Ok(Some(update))
}

/// Creates a root that only the old version has, typed after its content (the type only
/// matters locally: the update names roots, not their types).
fn create_root(txn: &mut TransactionMut, name: &Arc<str>, old: &Node) -> BranchPtr {
    fn ptr(shared: &impl AsRef<Branch>) -> BranchPtr {
        BranchPtr::from(shared.as_ref())
    }
    let name = Arc::clone(name);
    match &old.seq {
        Seq::Text(_) => ptr(&txn.get_or_insert_text(name)),
        Seq::List(_) => ptr(&txn.get_or_insert_array(name)),
        Seq::Empty => ptr(&txn.get_or_insert_map(name)),
    }
}

/// Whether two roots (absent = empty) have equal content.
fn same_root(a: Option<&Node>, b: Option<&Node>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        (Some(n), None) | (None, Some(n)) => n.is_empty(),
        (None, None) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// The content tree

/// The kind of a shared type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A root: its type is not recorded in the document, only its content.
    Root,
    Text,
    Array,
    Map,
    XmlElement(Arc<str>),
    XmlFragment,
    XmlText,
}

impl Kind {
    fn type_ref(&self) -> TypeRef {
        match self {
            // Roots are never inserted: they exist by name.
            Kind::Root | Kind::Map => TypeRef::Map,
            Kind::Text => TypeRef::Text,
            Kind::Array => TypeRef::Array,
            Kind::XmlElement(tag) => TypeRef::XmlElement(Arc::clone(tag)),
            Kind::XmlFragment => TypeRef::XmlFragment,
            Kind::XmlText => TypeRef::XmlText,
        }
    }
}

/// The content of one shared type, read from a document.
#[derive(Debug)]
struct Node {
    /// The branch it was read from (only used for branches of the document being edited).
    ptr: BranchPtr,
    kind: Kind,
    seq: Seq,
    map: BTreeMap<Arc<str>, Value>,
}

/// Content equality: the branch a node was read from does not matter.
impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.seq == other.seq && self.map == other.map
    }
}

impl Node {
    fn empty(ptr: BranchPtr) -> Self {
        Node {
            ptr,
            kind: Kind::Root,
            seq: Seq::Empty,
            map: BTreeMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.seq == Seq::Empty && self.map.is_empty()
    }
}

/// The sequence part of a branch.
#[derive(Debug, PartialEq)]
enum Seq {
    Empty,
    /// Characters, embeds and embedded types with formatting; adjacent characters with the
    /// same attributes are merged, so equal texts have equal chunk lists.
    Text(Vec<Chunk>),
    /// Values, one per element.
    List(Vec<Value>),
}

/// A value in a list or a map, or embedded in a text.
#[derive(Debug)]
enum Value {
    Any(Any),
    Shared(Box<Node>),
    /// A subdocument reference, by GUID.
    Subdoc(Arc<str>),
}

/// A run of text content with its formatting attributes.
#[derive(Debug)]
struct Chunk {
    content: ChunkContent,
    attrs: Attrs,
}

#[derive(Debug)]
enum ChunkContent {
    Str(String),
    Embed(Any),
    /// A shared type (or subdocument) embedded in the text.
    Value(Value),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Any(a), Value::Any(b)) => any_eq(a, b),
            (Value::Shared(a), Value::Shared(b)) => a == b,
            (Value::Subdoc(a), Value::Subdoc(b)) => a == b,
            _ => false,
        }
    }
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        attrs_eq(&self.attrs, &other.attrs)
            && match (&self.content, &other.content) {
                (ChunkContent::Str(a), ChunkContent::Str(b)) => a == b,
                (ChunkContent::Embed(a), ChunkContent::Embed(b)) => any_eq(a, b),
                (ChunkContent::Value(a), ChunkContent::Value(b)) => a == b,
                _ => false,
            }
    }
}

/// Equality of JSON values in which NaN equals NaN: a value that is unchanged must compare
/// equal, or it would be rewritten and the result would never match the old version.
fn any_eq(a: &Any, b: &Any) -> bool {
    match (a, b) {
        (Any::Number(Number::Float(x)), Any::Number(Number::Float(y))) => {
            x == y || (x.is_nan() && y.is_nan())
        }
        (Any::Array(x), Any::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(x, y)| any_eq(x, y))
        }
        (Any::Map(x), Any::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| any_eq(v, w)))
        }
        _ => a == b,
    }
}

fn attrs_eq(a: &Attrs, b: &Attrs) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| any_eq(v, w)))
}

impl Chunk {
    /// Length in UTF-16 code units, as Yjs counts text.
    fn units(&self) -> usize {
        match &self.content {
            ChunkContent::Str(s) => s.encode_utf16().count(),
            ChunkContent::Embed(_) | ChunkContent::Value(_) => 1,
        }
    }
}

/// Reads every root of a document.
fn read_roots<T: ReadTxn>(txn: &T) -> Result<BTreeMap<Arc<str>, Node>> {
    let roots: Vec<(Arc<str>, Option<BranchPtr>)> = txn
        .root_refs()
        .map(|(name, out)| (Arc::from(name), out.try_branch().map(BranchPtr::from)))
        .collect();
    let mut nodes = BTreeMap::new();
    for (name, ptr) in roots {
        let reader = Reader { txn, root: &name };
        let Some(ptr) = ptr else {
            return Err(reader.unsupported("a root that is not a shared type"));
        };
        let node = reader.node(ptr, 0)?;
        nodes.insert(name, node);
    }
    Ok(nodes)
}

/// Reads the content tree under one root.
struct Reader<'a, T> {
    txn: &'a T,
    root: &'a str,
}

impl<T: ReadTxn> Reader<'_, T> {
    fn unsupported(&self, reason: &'static str) -> RestoreError {
        RestoreError::Unsupported {
            root: self.root.to_owned(),
            reason,
        }
    }

    fn node(&self, ptr: BranchPtr, depth: usize) -> Result<Node> {
        if depth > MAX_RESTORE_DEPTH {
            return Err(RestoreError::TooDeep);
        }
        let kind = if depth == 0 {
            Kind::Root
        } else {
            match ptr.type_ref() {
                TypeRef::Text => Kind::Text,
                TypeRef::Array => Kind::Array,
                TypeRef::Map => Kind::Map,
                TypeRef::XmlElement(tag) => Kind::XmlElement(Arc::clone(tag)),
                TypeRef::XmlFragment => Kind::XmlFragment,
                TypeRef::XmlText => Kind::XmlText,
                _ => return Err(self.unsupported("a nested shared type of an unsupported kind")),
            }
        };
        let seq = self.seq(ptr, &kind, depth)?;
        let mut map = BTreeMap::new();
        for (key, out) in MapRef::from(ptr).iter(self.txn) {
            map.insert(Arc::from(key), self.value(out, depth)?);
        }
        Ok(Node {
            ptr,
            kind,
            seq,
            map,
        })
    }

    /// Reads a branch's sequence as text or as a list. Text types are always read as text;
    /// other branches (roots in particular, which carry no type) by their content: characters,
    /// embeds or formatting make a text.
    fn seq(&self, ptr: BranchPtr, kind: &Kind, depth: usize) -> Result<Seq> {
        let content_len = ptr.content_len();
        if content_len == 0 {
            return Ok(Seq::Empty);
        }
        // The text view: characters, embeds and shared types with their attributes (it skips
        // JSON and binary list items).
        let diff = TextRef::from(ptr).diff(self.txn, YChange::identity);
        let is_text = matches!(kind, Kind::Text | Kind::XmlText)
            || diff
                .iter()
                .any(|d| matches!(d.insert, Out::Any(_)) || d.attributes.is_some());
        if !is_text {
            let values = ArrayRef::from(ptr)
                .iter(self.txn)
                .map(|out| self.value(out, depth))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Seq::List(values));
        }

        // The plain string holds only real characters, which tells them apart from embeds
        // whose value is a bare string (the text view shows both as strings).
        let plain = TextRef::from(ptr).get_string(self.txn);
        let mut rest = plain.as_str();
        let mut chunks: Vec<Chunk> = Vec::with_capacity(diff.len());
        let mut units = 0usize;
        for d in diff {
            let attrs = d.attributes.map(|a| *a).unwrap_or_default();
            let content = match d.insert {
                Out::Any(Any::String(s)) => match rest.strip_prefix(s.as_ref()) {
                    Some(after) => {
                        rest = after;
                        ChunkContent::Str(s.to_string())
                    }
                    None => ChunkContent::Embed(Any::String(s)),
                },
                Out::Any(any) => ChunkContent::Embed(any),
                out => ChunkContent::Value(self.value(out, depth)?),
            };
            let chunk = Chunk { content, attrs };
            units += chunk.units();
            push_chunk(&mut chunks, chunk);
        }
        if !rest.is_empty() {
            return Err(self.unsupported("text whose string embeds cannot be told apart"));
        }
        if u32::try_from(units).ok() != Some(content_len) {
            return Err(self.unsupported("a sequence mixing text with list items"));
        }
        Ok(Seq::Text(chunks))
    }

    /// Reads a value; nested types are one level deeper than the branch holding them.
    fn value(&self, out: Out, depth: usize) -> Result<Value> {
        match out {
            Out::Any(any) => Ok(Value::Any(any)),
            Out::YDoc(doc) => Ok(Value::Subdoc(doc.guid())),
            out => match out.try_branch() {
                Some(branch) => Ok(Value::Shared(Box::new(
                    self.node(BranchPtr::from(branch), depth + 1)?,
                ))),
                None => Err(self.unsupported("a value of an unknown kind")),
            },
        }
    }
}

/// Appends a chunk, merging it into the previous one when both are characters with the same
/// attributes.
fn push_chunk(chunks: &mut Vec<Chunk>, chunk: Chunk) {
    if let (
        Some(Chunk {
            content: ChunkContent::Str(prev),
            attrs,
        }),
        ChunkContent::Str(s),
    ) = (chunks.last_mut(), &chunk.content)
    {
        if attrs_eq(attrs, &chunk.attrs) {
            prev.push_str(s);
            return;
        }
    }
    chunks.push(chunk);
}

// ---------------------------------------------------------------------------------------------
// Editing

/// Edits the document being restored, under one root.
struct Writer<'a> {
    root: &'a str,
    /// An error raised while filling a nested type from inside `yrs` (a [`Prelim`] cannot
    /// return one); checked after every insertion.
    failure: RefCell<Option<RestoreError>>,
}

impl<'a> Writer<'a> {
    fn new(root: &'a str) -> Self {
        Writer {
            root,
            failure: RefCell::new(None),
        }
    }

    fn subdocument(&self) -> RestoreError {
        RestoreError::Subdocument {
            root: self.root.to_owned(),
        }
    }

    /// Raises an error recorded during an insertion.
    fn check(&self) -> Result<()> {
        match self.failure.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Makes `current`'s branch equal `old`.
    fn restore_node(&self, txn: &mut TransactionMut, current: &Node, old: &Node) -> Result<()> {
        self.restore_seq(txn, current.ptr, &current.seq, &old.seq)?;
        self.restore_map(txn, current.ptr, &current.map, &old.map)
    }

    /// Fills an empty branch with `old`'s content.
    fn fill(&self, txn: &mut TransactionMut, ptr: BranchPtr, old: &Node) -> Result<()> {
        self.restore_seq(txn, ptr, &Seq::Empty, &old.seq)?;
        self.restore_map(txn, ptr, &BTreeMap::new(), &old.map)
    }

    fn restore_seq(
        &self,
        txn: &mut TransactionMut,
        ptr: BranchPtr,
        current: &Seq,
        old: &Seq,
    ) -> Result<()> {
        if current == old {
            return Ok(());
        }
        match (current, old) {
            (Seq::Text(c), Seq::Text(o)) => self.restore_text(txn, ptr, c, o),
            (Seq::List(c), Seq::List(o)) => self.restore_list(txn, ptr, c, o),
            (Seq::Empty, Seq::Text(o)) => self.restore_text(txn, ptr, &[], o),
            (Seq::Empty, Seq::List(o)) => self.restore_list(txn, ptr, &[], o),
            (Seq::Text(c), Seq::Empty) => self.restore_text(txn, ptr, c, &[]),
            (Seq::List(c), Seq::Empty) => self.restore_list(txn, ptr, c, &[]),
            // The root's type changed between the versions: clear it, then insert.
            (Seq::Text(c), Seq::List(o)) => {
                self.restore_text(txn, ptr, c, &[])?;
                self.restore_list(txn, ptr, &[], o)
            }
            (Seq::List(c), Seq::Text(o)) => {
                self.restore_list(txn, ptr, c, &[])?;
                self.restore_text(txn, ptr, &[], o)
            }
            (Seq::Empty, Seq::Empty) => Ok(()),
        }
    }

    /// Keeps the common prefix and suffix (character by character, formatting included),
    /// deletes the rest of the current text and inserts the rest of the old one with exactly
    /// its formatting.
    fn restore_text(
        &self,
        txn: &mut TransactionMut,
        ptr: BranchPtr,
        current: &[Chunk],
        old: &[Chunk],
    ) -> Result<()> {
        let a = atoms(current);
        let b = atoms(old);
        let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let suffix = a[prefix..]
            .iter()
            .rev()
            .zip(b[prefix..].iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        let retain: usize = a[..prefix].iter().map(Atom::units).sum();
        let delete: usize = a[prefix..a.len() - suffix].iter().map(Atom::units).sum();
        let inserted = &b[prefix..b.len() - suffix];
        if delete == 0 && inserted.is_empty() {
            return Ok(());
        }

        let text = TextRef::from(ptr);
        if delete > 0 {
            // Not as a `Delta::Deleted` in the delta below: `yrs` 0.28 then updates the
            // cursor's attributes past formatting marks the cursor has not moved over, and the
            // next insertion inherits formatting it should not have.
            text.remove_range(txn, to_u32(retain), to_u32(delete));
        }
        if inserted.is_empty() {
            return Ok(());
        }
        let mut delta: Vec<Delta<Fill<'_>>> = Vec::new();
        if retain > 0 {
            delta.push(Delta::Retain(to_u32(retain), None));
        }
        for (what, attrs) in regroup(inserted) {
            if matches!(what, Insert::Value(Value::Subdoc(_))) {
                return Err(self.subdocument());
            }
            // Explicit attributes (even none): the inserted content gets exactly these, not
            // whatever formatting surrounds the insertion point.
            delta.push(Delta::Inserted(
                Fill { what, writer: self },
                Some(Box::new(attrs.clone())),
            ));
        }
        text.apply_delta(txn, delta);
        self.check()
    }

    /// Keeps the common prefix and suffix; restores same-kind nested types in place where the
    /// changed parts pair up by position; deletes and inserts the rest.
    fn restore_list(
        &self,
        txn: &mut TransactionMut,
        ptr: BranchPtr,
        current: &[Value],
        old: &[Value],
    ) -> Result<()> {
        let prefix = current.iter().zip(old).take_while(|(x, y)| x == y).count();
        let suffix = current[prefix..]
            .iter()
            .rev()
            .zip(old[prefix..].iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        let c = &current[prefix..current.len() - suffix];
        let o = &old[prefix..old.len() - suffix];
        let array = ArrayRef::from(ptr);
        if c.len() != o.len() {
            if !c.is_empty() {
                array.remove_range(txn, to_u32(prefix), to_u32(c.len()));
            }
            return self.insert_values(txn, ptr, prefix, o);
        }
        let mut i = 0;
        while i < c.len() {
            if c[i] == o[i] {
                i += 1;
            } else if let Some((cn, on)) = same_kind(&c[i], &o[i]) {
                self.restore_node(txn, cn, on)?;
                i += 1;
            } else {
                let start = i;
                while i < c.len() && c[i] != o[i] && same_kind(&c[i], &o[i]).is_none() {
                    i += 1;
                }
                array.remove_range(txn, to_u32(prefix + start), to_u32(i - start));
                self.insert_values(txn, ptr, prefix + start, &o[start..i])?;
            }
        }
        Ok(())
    }

    /// Inserts `values` at `index`: consecutive JSON values as one item (as Yjs does), every
    /// binary value and shared type as an item of its own.
    ///
    /// `Array::insert` walks the list from its start for every item, which makes inserting
    /// many items quadratic. The bulk goes in as one delta instead (one walk); the exception
    /// is a lone JSON value, which a text delta would store as text or as an embed, so those
    /// are inserted one by one afterwards, at their final positions.
    fn insert_values(
        &self,
        txn: &mut TransactionMut,
        ptr: BranchPtr,
        index: usize,
        values: &[Value],
    ) -> Result<()> {
        let mut bulk: Vec<Delta<Fill<'_>>> = Vec::new();
        let mut lone: Vec<(usize, &Any)> = Vec::new();
        if index > 0 {
            bulk.push(Delta::Retain(to_u32(index), None));
        }
        let mut i = 0;
        while i < values.len() {
            let what = match &values[i] {
                Value::Any(any) if !matches!(any, Any::Buffer(_)) => {
                    let start = i;
                    while matches!(values.get(i), Some(Value::Any(any)) if !matches!(any, Any::Buffer(_)))
                    {
                        i += 1;
                    }
                    if i - start == 1 {
                        lone.push((index + start, any));
                        continue;
                    }
                    Insert::Anys(
                        values[start..i]
                            .iter()
                            .filter_map(|v| match v {
                                Value::Any(any) => Some(any.clone()),
                                _ => None,
                            })
                            .collect(),
                    )
                }
                Value::Subdoc(_) => return Err(self.subdocument()),
                value => {
                    i += 1;
                    Insert::Value(value)
                }
            };
            bulk.push(Delta::Inserted(Fill { what, writer: self }, None));
        }
        if bulk.iter().any(|d| matches!(d, Delta::Inserted(..))) {
            TextRef::from(ptr).apply_delta(txn, bulk);
            self.check()?;
        }
        let array = ArrayRef::from(ptr);
        for (at, any) in lone {
            array.insert(txn, to_u32(at), any.clone());
        }
        Ok(())
    }

    /// Removes keys the old version lacks, restores same-kind nested types in place and sets
    /// every other differing key.
    fn restore_map(
        &self,
        txn: &mut TransactionMut,
        ptr: BranchPtr,
        current: &BTreeMap<Arc<str>, Value>,
        old: &BTreeMap<Arc<str>, Value>,
    ) -> Result<()> {
        let map = MapRef::from(ptr);
        for key in current.keys() {
            if !old.contains_key(key) {
                map.remove(txn, key);
            }
        }
        for (key, o) in old {
            let c = current.get(key);
            if c == Some(o) {
                continue;
            }
            if let Some((cn, on)) = c.and_then(|c| same_kind(c, o)) {
                self.restore_node(txn, cn, on)?;
                continue;
            }
            if matches!(o, Value::Subdoc(_)) {
                return Err(self.subdocument());
            }
            map.insert(
                txn,
                Arc::clone(key),
                Fill {
                    what: Insert::Value(o),
                    writer: self,
                },
            );
            self.check()?;
        }
        Ok(())
    }
}

/// Two nested types of the same kind (and XML tag), which can be restored one into the other.
fn same_kind<'v>(current: &'v Value, old: &'v Value) -> Option<(&'v Node, &'v Node)> {
    match (current, old) {
        (Value::Shared(c), Value::Shared(o)) if c.kind == o.kind => Some((c, o)),
        _ => None,
    }
}

/// Lengths and indices in `yrs` are `u32`; content read from a document always fits.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One character (with its chunk's attributes) or one embed / embedded type of a text.
#[derive(Clone, Copy)]
enum Atom<'a> {
    Char(char, &'a Chunk),
    Item(&'a Chunk),
}

impl PartialEq for Atom<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Atom::Char(a, ca), Atom::Char(b, cb)) => {
                a == b && (std::ptr::eq(*ca, *cb) || attrs_eq(&ca.attrs, &cb.attrs))
            }
            (Atom::Item(a), Atom::Item(b)) => a == b,
            _ => false,
        }
    }
}

impl Atom<'_> {
    fn units(&self) -> usize {
        match self {
            Atom::Char(c, _) => c.len_utf16(),
            Atom::Item(_) => 1,
        }
    }
}

fn atoms(chunks: &[Chunk]) -> Vec<Atom<'_>> {
    let mut atoms = Vec::new();
    for chunk in chunks {
        match &chunk.content {
            ChunkContent::Str(s) => atoms.extend(s.chars().map(|c| Atom::Char(c, chunk))),
            ChunkContent::Embed(_) | ChunkContent::Value(_) => atoms.push(Atom::Item(chunk)),
        }
    }
    atoms
}

/// Turns atoms back into insertable chunks: runs of characters from one chunk become one
/// string.
fn regroup<'a>(atoms: &[Atom<'a>]) -> Vec<(Insert<'a>, &'a Attrs)> {
    let mut out: Vec<(Insert<'a>, &'a Attrs)> = Vec::new();
    let mut run: Option<(String, &'a Chunk)> = None;
    for atom in atoms {
        match *atom {
            Atom::Char(c, chunk) => match &mut run {
                Some((s, owner)) if std::ptr::eq(*owner, chunk) => s.push(c),
                _ => {
                    if let Some((s, owner)) = run.take() {
                        out.push((Insert::Str(s), &owner.attrs));
                    }
                    run = Some((c.to_string(), chunk));
                }
            },
            Atom::Item(chunk) => {
                if let Some((s, owner)) = run.take() {
                    out.push((Insert::Str(s), &owner.attrs));
                }
                match &chunk.content {
                    ChunkContent::Embed(any) => out.push((Insert::Embed(any), &chunk.attrs)),
                    ChunkContent::Value(value) => out.push((Insert::Value(value), &chunk.attrs)),
                    // Characters are always `Atom::Char`.
                    ChunkContent::Str(s) => out.push((Insert::Str(s.clone()), &chunk.attrs)),
                }
            }
        }
    }
    if let Some((s, owner)) = run {
        out.push((Insert::Str(s), &owner.attrs));
    }
    out
}

/// Content to insert.
enum Insert<'a> {
    /// Characters of a text.
    Str(String),
    /// A text embed.
    Embed(&'a Any),
    /// Consecutive JSON list elements.
    Anys(Vec<Any>),
    /// One list element or map value, or a shared type embedded in a text.
    Value(&'a Value),
}

/// Inserts content into the document; a shared type is created empty and then filled with
/// the old version's content, recursively, once `yrs` has integrated it.
struct Fill<'a> {
    what: Insert<'a>,
    writer: &'a Writer<'a>,
}

impl Prelim for Fill<'_> {
    type Return = Unused;

    fn into_content(self, _txn: &mut TransactionMut) -> (ItemContent, Option<Self>) {
        match self.what {
            Insert::Str(s) => (ItemContent::String(s.as_str().into()), None),
            Insert::Embed(any) => (ItemContent::Embed(any.clone()), None),
            Insert::Anys(values) => (ItemContent::Any(values), None),
            // Yjs stores a top-level binary value as binary content.
            Insert::Value(Value::Any(Any::Buffer(bytes))) => {
                (ItemContent::Binary(bytes.to_vec()), None)
            }
            Insert::Value(Value::Any(any)) => (ItemContent::Any(vec![any.clone()]), None),
            Insert::Value(Value::Shared(node)) => (
                ItemContent::Type(Branch::new(node.kind.type_ref())),
                Some(self),
            ),
            Insert::Value(Value::Subdoc(_)) => {
                // Refused before insertion; if it ever gets here, fail the restore.
                self.writer
                    .failure
                    .borrow_mut()
                    .get_or_insert_with(|| self.writer.subdocument());
                (ItemContent::Any(vec![Any::Null]), None)
            }
        }
    }

    fn integrate(self, txn: &mut TransactionMut, inner_ref: BranchPtr) {
        if let Insert::Value(Value::Shared(node)) = self.what {
            if let Err(e) = self.writer.fill(txn, inner_ref, node) {
                self.writer.failure.borrow_mut().get_or_insert(e);
            }
        }
    }
}
