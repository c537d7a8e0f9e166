//! A JSON view of a document, for humans and scripts (`GET /v1/rooms/{room}/json`).
//!
//! [`doc_to_json`] returns an object with one entry per root type, keys in sorted order. It is
//! a read-only rendering: nothing in it can be turned back into an update.
//!
//! # Root types
//!
//! The v1 encoding does not say which type a root is (a relay never calls `getText` or
//! `getMap`, so its roots are `Out::UndefinedRef`), so an untyped root is rendered by its
//! content, as [`crate::restore`] reads it:
//!
//! | the root holds | rendered as |
//! |---|---|
//! | characters, embeds or formatting in its sequence (a `Y.Text`) | a string: the plain text (embeds and embedded types left out) |
//! | only XML elements and XML texts in its sequence (a `Y.XmlFragment`, e.g. y-prosemirror) | a string: the XML, see below |
//! | any other sequence (a `Y.Array`) | an array of its values |
//! | no sequence, map entries (a `Y.Map`) | an object |
//! | nothing (every item deleted) | `null`: its type cannot be told |
//!
//! A root holding both a sequence and map entries (which no single Yjs type writes, except a
//! `Y.XmlText` root's attributes) is rendered by its sequence; the map entries are left out.
//! A root whose type the document does know (it was created locally with `get_or_insert_*`)
//! is rendered by that type, so an empty typed root is `""`, `[]` or `{}` rather than `null`.
//!
//! # Values
//!
//! * Nested `Y.Map` → object, `Y.Array` → array, `Y.Text` → its plain text.
//! * `Y.XmlElement`, `Y.XmlFragment`, `Y.XmlText` → the XML string, in the format of Yjs's
//!   `toString()`: `<tag a="1" b="x">children</tag>` with attributes sorted by name, and text
//!   formatting written as nested tags (`<bold>`, `<link href="…">`) sorted by name. Like Yjs,
//!   nothing is escaped. Text embeds and non-string attribute values are written as compact
//!   JSON.
//! * JSON values as they are; `undefined` → `null`; NaN and ±infinity → `null`; floats with an
//!   integral value within ±2^53 as integers (what `JSON.stringify` prints for them in JS).
//! * Binary values (`Uint8Array`) → an array of byte values (0–255), as `Array.from` gives in
//!   JS and as `serde` serializes `yrs`'s own `Any::Buffer`.
//! * Subdocuments → `null` (the relay does not load them).
//!
//! # Limits
//!
//! Nesting is counted over shared types and JSON arrays/maps together, a root being depth 0.
//! A shared type or JSON array/map deeper than [`MAX_JSON_DEPTH`] is rendered as `null`
//! (inside an XML string, deeper nodes are left out); scalars are always rendered. The walk is
//! recursive, so this bound is what keeps a hostile document from overflowing the stack —
//! `yrs`'s own `to_json` and `get_string` have none (at the limit, a debug build needs well
//! under 512 KiB of stack). The work is proportional to the size of the document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map as JsonMap, Number as JsonNumber, Value};
use yrs::branch::BranchPtr;
use yrs::types::text::YChange;
use yrs::types::{Attrs, TypeRef};
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, Map, MapRef, Number, Out, ReadTxn, Text, TextRef,
    Transact,
};

/// Deepest nesting rendered (a root is depth 0; each shared type or JSON array/map inside
/// another adds one). Deeper shared types and JSON arrays/maps are rendered as `null`. Equal
/// to [`crate::restore::MAX_RESTORE_DEPTH`].
pub const MAX_JSON_DEPTH: usize = crate::restore::MAX_RESTORE_DEPTH;

/// Largest magnitude of a float rendered as an integer (JavaScript's safe integer range).
const SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// The whole document as a JSON object, one entry per root type; see the
/// [module documentation](self) for how types are rendered.
pub fn doc_to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    txn_to_json(&txn)
}

/// [`doc_to_json`] inside an open transaction.
pub fn txn_to_json<T: ReadTxn>(txn: &T) -> Value {
    let roots: BTreeMap<String, Out> = txn
        .root_refs()
        .map(|(name, out)| (name.to_owned(), out))
        .collect();
    let render = Render { txn };
    let mut object = JsonMap::new();
    for (name, out) in roots {
        let value = match out {
            Out::UndefinedRef(ptr) => render.untyped(ptr, 0),
            out => render.out(out, 0),
        };
        object.insert(name, value);
    }
    Value::Object(object)
}

/// Renders values read in one transaction.
struct Render<'a, T> {
    txn: &'a T,
}

impl<T: ReadTxn> Render<'_, T> {
    /// A value at `depth` (a shared type's own depth; a root is 0).
    fn out(&self, out: Out, depth: usize) -> Value {
        match out {
            Out::Any(any) => any_to_json(&any, depth),
            Out::YDoc(_) => Value::Null,
            out => match out.try_branch() {
                Some(branch) => self.branch(BranchPtr::from(branch), depth),
                None => Value::Null,
            },
        }
    }

    /// A shared type whose type is known.
    fn branch(&self, ptr: BranchPtr, depth: usize) -> Value {
        if depth > MAX_JSON_DEPTH {
            return Value::Null;
        }
        match ptr.type_ref() {
            TypeRef::Map => Value::Object(self.entries(ptr, depth)),
            TypeRef::Array => self.list(ptr, depth),
            TypeRef::Text => Value::String(TextRef::from(ptr).get_string(self.txn)),
            TypeRef::XmlElement(_) | TypeRef::XmlFragment | TypeRef::XmlText => {
                let mut xml = String::new();
                self.xml(ptr, depth, &mut xml);
                Value::String(xml)
            }
            TypeRef::Undefined => self.untyped(ptr, depth),
            // Hooks, weak links and subdocument types: validation keeps them out.
            _ => Value::Null,
        }
    }

    /// A shared type the document has no type for (a root), rendered by its content.
    fn untyped(&self, ptr: BranchPtr, depth: usize) -> Value {
        if depth > MAX_JSON_DEPTH {
            return Value::Null;
        }
        if ptr.content_len() == 0 {
            let entries = self.entries(ptr, depth);
            return if entries.is_empty() {
                Value::Null
            } else {
                Value::Object(entries)
            };
        }
        if is_text(self.txn, ptr) {
            return Value::String(TextRef::from(ptr).get_string(self.txn));
        }
        let items: Vec<Out> = ArrayRef::from(ptr).iter(self.txn).collect();
        let xml_children = items
            .iter()
            .all(|out| matches!(out, Out::YXmlElement(_) | Out::YXmlText(_)));
        if xml_children && !items.is_empty() {
            let mut xml = String::new();
            for item in items {
                self.xml_out(item, depth + 1, &mut xml);
            }
            return Value::String(xml);
        }
        Value::Array(items.into_iter().map(|out| self.item(out, depth)).collect())
    }

    /// An element of a list, or a map value, held by a branch at `depth`.
    fn item(&self, out: Out, depth: usize) -> Value {
        self.out(out, depth + 1)
    }

    fn list(&self, ptr: BranchPtr, depth: usize) -> Value {
        Value::Array(
            ArrayRef::from(ptr)
                .iter(self.txn)
                .map(|out| self.item(out, depth))
                .collect(),
        )
    }

    /// The map part of a branch, keys sorted.
    fn entries(&self, ptr: BranchPtr, depth: usize) -> JsonMap<String, Value> {
        let sorted: BTreeMap<String, Out> = MapRef::from(ptr)
            .iter(self.txn)
            .map(|(key, out)| (key.to_owned(), out))
            .collect();
        sorted
            .into_iter()
            .map(|(key, out)| (key, self.item(out, depth)))
            .collect()
    }

    /// Appends the XML of an XML node at `depth` (nothing past [`MAX_JSON_DEPTH`]).
    fn xml(&self, ptr: BranchPtr, depth: usize, buf: &mut String) {
        if depth > MAX_JSON_DEPTH {
            return;
        }
        match ptr.type_ref() {
            TypeRef::XmlElement(tag) => {
                buf.push('<');
                buf.push_str(tag);
                let attributes: BTreeMap<String, Out> = MapRef::from(ptr)
                    .iter(self.txn)
                    .map(|(key, out)| (key.to_owned(), out))
                    .collect();
                for (key, value) in attributes {
                    let _ = write!(buf, " {key}=\"");
                    self.inline(value, depth + 1, buf);
                    buf.push('"');
                }
                buf.push('>');
                self.xml_children(ptr, depth, buf);
                let _ = write!(buf, "</{tag}>");
            }
            TypeRef::XmlText => self.xml_text(ptr, depth, buf),
            _ => self.xml_children(ptr, depth, buf),
        }
    }

    fn xml_children(&self, ptr: BranchPtr, depth: usize, buf: &mut String) {
        for out in ArrayRef::from(ptr).iter(self.txn) {
            self.xml_out(out, depth + 1, buf);
        }
    }

    /// Appends a value found among XML content: XML nodes as XML, anything else inline.
    fn xml_out(&self, out: Out, depth: usize, buf: &mut String) {
        match out {
            Out::YXmlElement(_) | Out::YXmlFragment(_) | Out::YXmlText(_) => {
                if let Some(branch) = out.try_branch() {
                    self.xml(BranchPtr::from(branch), depth, buf);
                }
            }
            out => self.inline(out, depth, buf),
        }
    }

    /// Appends a value inside XML: strings as they are, XML nodes as XML, anything else as
    /// compact JSON.
    fn inline(&self, out: Out, depth: usize, buf: &mut String) {
        match out {
            Out::Any(Any::String(s)) => buf.push_str(&s),
            Out::YXmlElement(_) | Out::YXmlFragment(_) | Out::YXmlText(_) => {
                self.xml_out(out, depth, buf);
            }
            out => buf.push_str(&self.out(out, depth).to_string()),
        }
    }

    /// Appends an XML text: each chunk wrapped in its formatting as tags, as Yjs's
    /// `XmlText.toString()` writes it.
    fn xml_text(&self, ptr: BranchPtr, depth: usize, buf: &mut String) {
        for chunk in TextRef::from(ptr).diff(self.txn, YChange::identity) {
            let formats: BTreeMap<&str, &Any> = chunk
                .attributes
                .as_deref()
                .map(|attrs: &Attrs| attrs.iter().map(|(k, v)| (k.as_ref(), v)).collect())
                .unwrap_or_default();
            for (name, value) in &formats {
                buf.push('<');
                buf.push_str(name);
                if let Any::Map(params) = value {
                    let params: BTreeMap<&str, &Any> =
                        params.iter().map(|(k, v)| (k.as_str(), v)).collect();
                    for (key, param) in params {
                        let _ = write!(buf, " {key}=\"");
                        match param {
                            Any::String(s) => buf.push_str(s),
                            other => buf.push_str(&any_to_json(other, depth + 2).to_string()),
                        }
                        buf.push('"');
                    }
                }
                buf.push('>');
            }
            self.inline(chunk.insert, depth + 1, buf);
            for name in formats.keys().rev() {
                let _ = write!(buf, "</{name}>");
            }
        }
    }
}

/// Whether a branch's sequence is text: it holds characters, embeds or formatting (the rule
/// [`crate::restore`] uses). The text view skips JSON and binary list items.
fn is_text<T: ReadTxn>(txn: &T, ptr: BranchPtr) -> bool {
    TextRef::from(ptr)
        .diff(txn, YChange::identity)
        .iter()
        .any(|d| matches!(d.insert, Out::Any(_)) || d.attributes.is_some())
}

/// A JSON value at `depth`; arrays and maps deeper than [`MAX_JSON_DEPTH`] are `null`.
fn any_to_json(any: &Any, depth: usize) -> Value {
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Int(i)) => Value::from(*i),
        Any::Number(Number::Float(f)) => float_to_json(*f),
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(bytes) => Value::Array(bytes.iter().map(|&b| Value::from(b)).collect()),
        _ if depth > MAX_JSON_DEPTH => Value::Null,
        Any::Array(values) => Value::Array(
            values
                .iter()
                .map(|value| any_to_json(value, depth + 1))
                .collect(),
        ),
        Any::Map(entries) => {
            let sorted: BTreeMap<&str, &Any> =
                entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(key, value)| (key.to_owned(), any_to_json(value, depth + 1)))
                    .collect(),
            )
        }
    }
}

/// A float as JavaScript's `JSON.stringify` prints it: integral values as integers, NaN and
/// infinities as `null`.
fn float_to_json(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() <= SAFE_INTEGER {
        // Exact: an integral float within ±2^53 converts to i64 without loss.
        return Value::from(f as i64);
    }
    JsonNumber::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_javascript() {
        assert_eq!(float_to_json(1.0), json!(1));
        assert_eq!(float_to_json(-0.0), json!(0));
        assert_eq!(float_to_json(0.5), json!(0.5));
        assert_eq!(
            float_to_json(SAFE_INTEGER),
            json!(9_007_199_254_740_992_i64)
        );
        assert_eq!(float_to_json(1e300), json!(1e300));
        assert_eq!(float_to_json(f64::NAN), Value::Null);
        assert_eq!(float_to_json(f64::INFINITY), Value::Null);
        assert_eq!(float_to_json(f64::NEG_INFINITY), Value::Null);
    }

    #[test]
    fn deep_any_values_are_cut_at_the_limit() {
        let mut any = Any::from("leaf");
        for _ in 0..MAX_JSON_DEPTH + 10 {
            any = Any::Array(vec![any].into());
        }
        let mut value = any_to_json(&any, 0);
        let mut levels = 0;
        while let Value::Array(mut items) = value {
            levels += 1;
            value = items.pop().unwrap();
        }
        assert_eq!(levels, MAX_JSON_DEPTH + 1);
        assert_eq!(value, Value::Null);
    }
}
