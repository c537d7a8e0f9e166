//! `RoomDoc::to_json`: documents built the way the official JS client builds them, sent to a
//! fresh room as one update (so the room's roots are untyped, as on the server), rendered.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};
use yrelay_doc::codec::UpdateV1;
use yrelay_doc::json::{doc_to_json, MAX_JSON_DEPTH};
use yrelay_doc::{RoomDoc, ValidateLimits};
use yrs::types::Attrs;
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, ClientID, Doc, GetString, Map, MapPrelim, Number,
    OffsetKind, Options, Out, ReadTxn, StateVector, Text, TextPrelim, Transact, Xml,
    XmlElementPrelim, XmlFragment, XmlTextPrelim,
};

/// A client document with JavaScript's text offsets.
fn client(id: u64) -> Doc {
    let mut options = Options::with_client_id(ClientID::new(id));
    options.offset_kind = OffsetKind::Utf16;
    Doc::with_options(options)
}

/// Loads `doc`'s full state into a fresh room and renders it; checks that the room knows no
/// root's type, as on the server.
fn served(doc: &Doc) -> Value {
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let update = UpdateV1::parse(Bytes::from(state), &ValidateLimits::default()).unwrap();
    let mut room = RoomDoc::new();
    let applied = room.apply_update(&update, 1);
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    {
        let txn = room.doc().transact();
        for (name, out) in txn.root_refs() {
            assert!(
                matches!(out, Out::UndefinedRef(_)),
                "root {name} is typed on the server"
            );
        }
    }
    room.to_json()
}

fn attrs(pairs: &[(&str, Any)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (Arc::from(*k), v.clone()))
        .collect()
}

#[test]
fn text_with_formatting_is_its_plain_text() {
    let doc = client(1);
    let text = doc.get_or_insert_text("quill");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "Hello wörld 👋!");
        text.format(&mut txn, 0, 5, attrs(&[("bold", Any::Bool(true))]));
        text.insert_with_attributes(&mut txn, 6, "big ", attrs(&[("size", Any::from("large"))]));
        // An image embed: not part of the plain text.
        text.insert_embed(
            &mut txn,
            0,
            Any::Map(Arc::new(HashMap::from([(
                "image".to_owned(),
                Any::from("cat.png"),
            )]))),
        );
        text.remove_range(&mut txn, 15, 1);
    }
    assert_eq!(served(&doc), json!({ "quill": "Hello big wörl 👋!" }));
}

#[test]
fn array_of_mixed_values() {
    let doc = client(2);
    let array = doc.get_or_insert_array("list");
    {
        let mut txn = doc.transact_mut();
        array.insert_range(
            &mut txn,
            0,
            [
                Any::from(1i64),
                Any::from(2.5f64),
                Any::from(3.0f64),
                Any::from("s"),
                Any::Bool(true),
                Any::Null,
                Any::Undefined,
                Any::Number(Number::Float(f64::NAN)),
                Any::Number(Number::Float(f64::INFINITY)),
                Any::Number(Number::Int(-(1 << 53) + 1)),
            ],
        );
        array.push_back(&mut txn, Any::from(vec![0u8, 7, 255]));
        array.push_back(
            &mut txn,
            Any::Map(Arc::new(HashMap::from([
                ("z".to_owned(), Any::from(1i64)),
                (
                    "a".to_owned(),
                    Any::Array(Arc::from(vec![Any::from("x"), Any::Null])),
                ),
            ]))),
        );
        let map = array.push_back(&mut txn, MapPrelim::default());
        map.insert(&mut txn, "k", "v");
        map.insert(&mut txn, "text", TextPrelim::new("inner"));
        array.push_back(
            &mut txn,
            ArrayPrelim::from([Any::from(1i64), Any::from("two")]),
        );
        array.push_back(&mut txn, TextPrelim::new("nested text"));
        array.push_back(&mut txn, ArrayPrelim::default());
        array.push_back(&mut txn, MapPrelim::default());
        // Deleted items leave no trace.
        array.insert(&mut txn, 1, "gone");
        array.remove(&mut txn, 1);
    }
    assert_eq!(
        served(&doc),
        json!({
            "list": [
                1, 2.5, 3, "s", true, null, null, null, null, -9_007_199_254_740_991_i64,
                [0, 7, 255],
                { "a": ["x", null], "z": 1 },
                { "k": "v", "text": "inner" },
                [1, "two"],
                "nested text",
                [],
                {}
            ]
        })
    );
}

#[test]
fn array_of_strings_is_not_text() {
    let doc = client(3);
    let array = doc.get_or_insert_array("tags");
    array.insert_range(&mut doc.transact_mut(), 0, ["a", "b"]);
    array.push_back(&mut doc.transact_mut(), "c");
    assert_eq!(served(&doc), json!({ "tags": ["a", "b", "c"] }));
}

#[test]
fn map_with_nested_types_has_sorted_keys() {
    let doc = client(4);
    let map = doc.get_or_insert_map("settings");
    {
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "zeta", 1i64);
        map.insert(&mut txn, "alpha", "first");
        map.insert(&mut txn, "overwritten", "old");
        map.insert(&mut txn, "removed", true);
        let nested = map.insert(&mut txn, "nested", MapPrelim::default());
        nested.insert(&mut txn, "list", ArrayPrelim::from([Any::from(1i64)]));
        nested.insert(&mut txn, "b", Any::from(vec![1u8]));
        map.insert(&mut txn, "title", TextPrelim::new("Title"));
        let fragment = map.insert(&mut txn, "body", XmlElementPrelim::empty("p"));
        fragment.push_back(&mut txn, XmlTextPrelim::new("x"));
    }
    map.insert(&mut doc.transact_mut(), "overwritten", 2.5f64);
    map.remove(&mut doc.transact_mut(), "removed");
    let value = served(&doc);
    assert_eq!(
        value,
        json!({
            "settings": {
                "alpha": "first",
                "body": "<p>x</p>",
                "nested": { "b": [1], "list": [1] },
                "overwritten": 2.5,
                "title": "Title",
                "zeta": 1
            }
        })
    );
    // Serialized keys come out sorted.
    let text = value.to_string();
    let positions: Vec<usize> = ["alpha", "body", "nested", "overwritten", "title", "zeta"]
        .iter()
        .map(|k| text.find(&format!("\"{k}\"")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
}

/// A y-prosemirror-like document: a fragment of elements with attributes and formatted text.
fn prosemirror_doc() -> Doc {
    let doc = client(5);
    let fragment = doc.get_or_insert_xml_fragment("prosemirror");
    let mut txn = doc.transact_mut();
    let heading = fragment.push_back(&mut txn, XmlElementPrelim::empty("heading"));
    heading.insert_attribute(&mut txn, "level", "1");
    heading.insert_attribute(&mut txn, "id", "top");
    heading.push_back(&mut txn, XmlTextPrelim::new("Title"));
    let paragraph = fragment.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
    let text = paragraph.push_back(&mut txn, XmlTextPrelim::new("Hello bold link"));
    text.format(&mut txn, 6, 4, attrs(&[("strong", Any::Bool(true))]));
    text.format(
        &mut txn,
        11,
        4,
        attrs(&[
            (
                "link",
                Any::Map(Arc::new(HashMap::from([
                    ("target".to_owned(), Any::from("_blank")),
                    ("href".to_owned(), Any::from("https://example.invalid")),
                ]))),
            ),
            ("em", Any::Bool(true)),
        ]),
    );
    let list = fragment.push_back(&mut txn, XmlElementPrelim::empty("bullet_list"));
    let item = list.push_back(&mut txn, XmlElementPrelim::empty("list_item"));
    item.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
    fragment.push_back(&mut txn, XmlTextPrelim::new("tail"));
    drop(txn);
    doc
}

#[test]
fn xml_fragment_is_its_xml_string() {
    let doc = prosemirror_doc();
    assert_eq!(
        served(&doc),
        json!({
            "prosemirror": concat!(
                r#"<heading id="top" level="1">Title</heading>"#,
                "<paragraph>Hello <strong>bold</strong> ",
                r#"<em><link href="https://example.invalid" target="_blank">link</link></em>"#,
                "</paragraph>",
                "<bullet_list><list_item><paragraph></paragraph></list_item></bullet_list>",
                "tail"
            )
        })
    );
}

#[test]
fn xml_matches_yrs_get_string_where_that_is_deterministic() {
    // yrs writes attributes in hash order; with at most one attribute (and one format) per
    // node the order does not matter and the strings must be equal.
    let doc = client(10);
    let fragment = doc.get_or_insert_xml_fragment("xml");
    {
        let mut txn = doc.transact_mut();
        let p = fragment.push_back(&mut txn, XmlElementPrelim::empty("p"));
        p.insert_attribute(&mut txn, "class", "lead");
        let text = p.push_back(&mut txn, XmlTextPrelim::new("one two three"));
        text.format(&mut txn, 4, 3, attrs(&[("b", Any::Bool(true))]));
        let link = Any::Map(Arc::new(HashMap::from([(
            "href".to_owned(),
            Any::from("/x"),
        )])));
        text.format(&mut txn, 8, 5, attrs(&[("a", link)]));
        let inner = p.push_back(&mut txn, XmlElementPrelim::empty("span"));
        inner.push_back(&mut txn, XmlTextPrelim::new("ü👋"));
        fragment.push_back(&mut txn, XmlTextPrelim::new("end"));
    }
    let expected = fragment.get_string(&doc.transact());
    assert_eq!(
        expected,
        r#"<p class="lead">one <b>two</b> <a href="/x">three</a><span>ü👋</span></p>end"#
    );
    assert_eq!(served(&doc), json!({ "xml": expected }));
}

#[test]
fn several_roots_and_empty_roots() {
    let doc = client(6);
    let text = doc.get_or_insert_text("gone-text");
    text.insert(&mut doc.transact_mut(), 0, "abc");
    text.remove_range(&mut doc.transact_mut(), 0, 3);
    let map = doc.get_or_insert_map("gone-map");
    map.insert(&mut doc.transact_mut(), "k", 1i64);
    map.remove(&mut doc.transact_mut(), "k");
    doc.get_or_insert_text("b")
        .insert(&mut doc.transact_mut(), 0, "text");
    doc.get_or_insert_map("a")
        .insert(&mut doc.transact_mut(), "k", 1i64);
    assert_eq!(
        served(&doc),
        json!({ "a": { "k": 1 }, "b": "text", "gone-map": null, "gone-text": null })
    );
}

#[test]
fn typed_roots_render_like_inferred_ones() {
    let doc = prosemirror_doc();
    doc.get_or_insert_text("t")
        .insert(&mut doc.transact_mut(), 0, "x");
    let inferred = served(&doc);
    // The client's own document knows its roots' types.
    assert_eq!(doc_to_json(&doc), inferred);
    // An empty typed root is rendered as its type's empty value.
    let empty = client(7);
    empty.get_or_insert_text("t");
    empty.get_or_insert_array("a");
    empty.get_or_insert_map("m");
    assert_eq!(doc_to_json(&empty), json!({ "a": [], "m": {}, "t": "" }));
}

/// Nests `levels` arrays under root "deep" of a fresh document.
fn nested_arrays(levels: usize) -> Doc {
    let doc = client(8);
    let mut array: ArrayRef = doc.get_or_insert_array("deep");
    let mut txn = doc.transact_mut();
    for _ in 0..levels {
        array = array.push_back(&mut txn, ArrayPrelim::default());
    }
    array.push_back(&mut txn, "bottom");
    drop(txn);
    doc
}

/// Renders on a thread with a quarter of a default thread's stack: the depth bound must
/// leave plenty of margin on server threads.
fn served_on_a_small_stack(doc: Doc) -> Value {
    std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || served(&doc))
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_nesting_is_cut_at_the_limit() {
    let doc = nested_arrays(MAX_JSON_DEPTH + 500);
    let mut value = served_on_a_small_stack(doc)["deep"].take();
    let mut levels = 0;
    while let Value::Array(mut items) = value {
        assert_eq!(items.len(), 1);
        levels += 1;
        value = items.pop().unwrap();
    }
    // The root is depth 0; arrays down to MAX_JSON_DEPTH are rendered, the next is null.
    assert_eq!(levels, MAX_JSON_DEPTH + 1);
    assert_eq!(value, Value::Null);

    // Shallow enough: rendered whole.
    let doc = nested_arrays(3);
    assert_eq!(served(&doc), json!({ "deep": [[[["bottom"]]]] }));
}

#[test]
fn deep_xml_is_cut_at_the_limit() {
    let doc = client(9);
    let fragment = doc.get_or_insert_xml_fragment("xml");
    {
        let mut txn = doc.transact_mut();
        let mut element = fragment.push_back(&mut txn, XmlElementPrelim::empty("d"));
        for _ in 0..MAX_JSON_DEPTH + 500 {
            element = element.push_back(&mut txn, XmlElementPrelim::empty("d"));
        }
        element.push_back(&mut txn, XmlTextPrelim::new("bottom"));
    }
    let value = served_on_a_small_stack(doc);
    let xml = value["xml"].as_str().unwrap();
    // Elements at depths 1..=MAX_JSON_DEPTH are written, deeper ones left out.
    let expected = "<d>".repeat(MAX_JSON_DEPTH) + &"</d>".repeat(MAX_JSON_DEPTH);
    assert_eq!(xml, expected);
}

#[derive(Debug, Clone)]
enum Edit {
    TextInsert(u32, String),
    TextFormat(u32, u32, bool),
    TextDelete(u32, u32),
    ArrayInsert(u32, Any),
    ArrayNested(u32, bool),
    ArrayDelete(u32),
    MapSet(u8, Any),
    MapNested(u8),
    MapRemove(u8),
    XmlPush(String, Option<String>),
    XmlText(String),
}

fn arb_any() -> impl Strategy<Value = Any> {
    let leaf = prop_oneof![
        Just(Any::Null),
        Just(Any::Undefined),
        any::<bool>().prop_map(Any::Bool),
        any::<i32>().prop_map(|n| Any::from(i64::from(n))),
        any::<f64>().prop_map(|f| Any::Number(Number::Float(f))),
        "\\PC{0,6}".prop_map(|s| Any::from(s.as_str())),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(Any::from),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| Any::Array(Arc::from(v))),
            prop::collection::hash_map("[a-c]{0,2}", inner, 0..3)
                .prop_map(|m| Any::Map(Arc::new(m))),
        ]
    })
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<u32>(), "[a-zé👋 ]{1,5}").prop_map(|(at, s)| Edit::TextInsert(at, s)),
        (any::<u32>(), 1..4u32, any::<bool>())
            .prop_map(|(at, len, b)| Edit::TextFormat(at, len, b)),
        (any::<u32>(), 1..3u32).prop_map(|(at, len)| Edit::TextDelete(at, len)),
        (any::<u32>(), arb_any()).prop_map(|(at, v)| Edit::ArrayInsert(at, v)),
        (any::<u32>(), any::<bool>()).prop_map(|(at, map)| Edit::ArrayNested(at, map)),
        any::<u32>().prop_map(Edit::ArrayDelete),
        (0..4u8, arb_any()).prop_map(|(k, v)| Edit::MapSet(k, v)),
        (0..4u8).prop_map(Edit::MapNested),
        (0..4u8).prop_map(Edit::MapRemove),
        ("[a-z]{1,3}", proptest::option::of("[a-z0-9]{0,3}"))
            .prop_map(|(tag, attr)| Edit::XmlPush(tag, attr)),
        "[a-z ]{1,4}".prop_map(Edit::XmlText),
    ]
}

fn apply_edit(doc: &Doc, edit: &Edit) {
    let text = doc.get_or_insert_text("text");
    let array = doc.get_or_insert_array("array");
    let map = doc.get_or_insert_map("map");
    let xml = doc.get_or_insert_xml_fragment("xml");
    let mut txn = doc.transact_mut();
    let pos = |at: u32, len: u32| if len == 0 { 0 } else { at % (len + 1) };
    match edit {
        Edit::TextInsert(at, s) => {
            let len = text.len(&txn);
            text.insert(&mut txn, pos(*at, len), s);
        }
        Edit::TextFormat(at, n, bold) => {
            let len = text.len(&txn);
            if len > 0 {
                let at = at % len;
                let key = if *bold { "bold" } else { "italic" };
                text.format(
                    &mut txn,
                    at,
                    (*n).min(len - at),
                    attrs(&[(key, Any::Bool(true))]),
                );
            }
        }
        Edit::TextDelete(at, n) => {
            let len = text.len(&txn);
            if len > 0 {
                let at = at % len;
                text.remove_range(&mut txn, at, (*n).min(len - at));
            }
        }
        Edit::ArrayInsert(at, value) => {
            let len = array.len(&txn);
            array.insert(&mut txn, pos(*at, len), value.clone());
        }
        Edit::ArrayNested(at, is_map) => {
            let len = array.len(&txn);
            if *is_map {
                let m = array.insert(&mut txn, pos(*at, len), MapPrelim::default());
                m.insert(&mut txn, "inner", TextPrelim::new("t"));
            } else {
                let a = array.insert(&mut txn, pos(*at, len), ArrayPrelim::default());
                a.push_back(&mut txn, 1i64);
            }
        }
        Edit::ArrayDelete(at) => {
            let len = array.len(&txn);
            if len > 0 {
                array.remove(&mut txn, at % len);
            }
        }
        Edit::MapSet(key, value) => {
            map.insert(&mut txn, format!("k{key}"), value.clone());
        }
        Edit::MapNested(key) => {
            let nested = map.insert(&mut txn, format!("k{key}"), ArrayPrelim::default());
            nested.push_back(&mut txn, TextPrelim::new("x"));
        }
        Edit::MapRemove(key) => {
            map.remove(&mut txn, &format!("k{key}"));
        }
        Edit::XmlPush(tag, attr) => {
            let element = xml.push_back(&mut txn, XmlElementPrelim::empty(tag.as_str()));
            if let Some(value) = attr {
                element.insert_attribute(&mut txn, "a", value.as_str());
                element.insert_attribute(&mut txn, "b", "2");
            }
            element.push_back(&mut txn, XmlTextPrelim::new(tag.as_str()));
        }
        Edit::XmlText(s) => {
            xml.push_back(&mut txn, XmlTextPrelim::new(s.as_str()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The server, which infers each root's type from its content, renders what the client,
    /// which knows the types, renders — except that a root whose content is all deleted is
    /// `null` rather than its type's empty value.
    #[test]
    fn inferred_rendering_matches_the_typed_one(
        edits in prop::collection::vec(arb_edit(), 1..30),
    ) {
        let doc = client(20);
        for edit in &edits {
            apply_edit(&doc, edit);
        }
        let typed = doc_to_json(&doc);
        let inferred = served(&doc);
        let (Value::Object(typed), Value::Object(inferred)) = (typed, inferred) else {
            panic!("not objects");
        };
        for (name, typed_value) in &typed {
            let empty = matches!(typed_value, Value::String(s) if s.is_empty())
                || matches!(typed_value, Value::Array(a) if a.is_empty())
                || matches!(typed_value, Value::Object(o) if o.is_empty());
            match inferred.get(name) {
                Some(Value::Null) | None => prop_assert!(empty, "{name}: {typed_value}"),
                Some(value) => prop_assert_eq!(value, typed_value, "root {}", name),
            }
        }
        prop_assert!(inferred.keys().all(|k| typed.contains_key(k)));
    }
}
