//! `restore_update`: the update that brings the current document back to an old version.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use yrelay_doc::codec::UpdateV1;
use yrelay_doc::restore::{restore_update, RestoreError, Side, MAX_RESTORE_DEPTH};
use yrelay_doc::{RoomDoc, ValidateLimits};
use yrs::types::text::YChange;
use yrs::types::{Attrs, ToJson};
use yrs::updates::decoder::Decode;
use yrs::{
    any, Any, Array, ArrayPrelim, ArrayRef, ClientID, Doc, GetString, Map, MapPrelim, MapRef,
    OffsetKind, Options, Out, ReadTxn, SharedRef, StateVector, Text, TextPrelim, TextRef, Transact,
    Update, Xml, XmlElementPrelim, XmlElementRef, XmlFragment, XmlFragmentRef, XmlTextPrelim,
    XmlTextRef,
};

/// The client ID restores are authored by in these tests.
const RESTORER: u64 = 0x1F_FFFF_FFFF;

// ---------------------------------------------------------------------------------------------
// Helpers

fn doc(client: u64) -> Doc {
    Doc::with_options(Options {
        client_id: ClientID::new(client),
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
}

fn state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

fn apply(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
}

fn load(state: &[u8], client: u64) -> Doc {
    let d = doc(client);
    apply(&d, state);
    d
}

/// Everything one transaction on `doc` writes.
fn edit(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut)) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    f(&mut txn);
    txn.encode_update_v1()
}

#[derive(Clone, Copy, Debug)]
enum K {
    Text,
    Array,
    Map,
    Xml,
}

/// A comparable picture of the given roots: text as a normalised delta (formatting included),
/// XML with tags, attributes and formatted text, nested types recursively.
fn dump(doc: &Doc, roots: &[(&str, K)]) -> Any {
    // Root refs first: `get_or_insert_*` while a transaction is open deadlocks.
    let refs: Vec<(String, Out)> = roots
        .iter()
        .map(|&(name, kind)| {
            let out = match kind {
                K::Text => Out::YText(doc.get_or_insert_text(name)),
                K::Array => Out::YArray(doc.get_or_insert_array(name)),
                K::Map => Out::YMap(doc.get_or_insert_map(name)),
                K::Xml => Out::YXmlFragment(doc.get_or_insert_xml_fragment(name)),
            };
            (name.to_owned(), out)
        })
        .collect();
    let txn = doc.transact();
    let map: HashMap<String, Any> = refs
        .iter()
        .map(|(name, out)| (name.clone(), out_json(out, &txn)))
        .collect();
    Any::from(map)
}

fn attrs_json(attrs: Option<&Attrs>) -> Any {
    let map: HashMap<String, Any> = attrs
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Any::from(map)
}

fn delta_json<T: ReadTxn>(text: &TextRef, txn: &T) -> Any {
    let mut ops: Vec<(Any, Any)> = Vec::new();
    for d in text.diff(txn, YChange::identity) {
        let attrs = attrs_json(d.attributes.as_deref());
        match &d.insert {
            Out::Any(Any::String(s)) => {
                if let Some((Any::String(prev), prev_attrs)) = ops.last_mut() {
                    if *prev_attrs == attrs {
                        *prev = format!("{prev}{s}").into();
                        continue;
                    }
                }
                ops.push((Any::String(s.clone()), attrs));
            }
            Out::Any(embed) => ops.push((any!({ "embed": embed.clone() }), attrs)),
            shared => ops.push((any!({ "shared": out_json(shared, txn) }), attrs)),
        }
    }
    Any::from(
        ops.into_iter()
            .map(|(insert, attrs)| any!({ "insert": insert, "attributes": attrs }))
            .collect::<Vec<_>>(),
    )
}

fn out_json<T: ReadTxn>(out: &Out, txn: &T) -> Any {
    match out {
        Out::Any(any) => any.clone(),
        Out::YText(t) => delta_json(t, txn),
        Out::YArray(a) => Any::from(a.iter(txn).map(|o| out_json(&o, txn)).collect::<Vec<_>>()),
        Out::YMap(m) => {
            let map: HashMap<String, Any> = m
                .iter(txn)
                .map(|(k, v)| (k.to_owned(), out_json(&v, txn)))
                .collect();
            Any::from(map)
        }
        Out::YXmlFragment(f) => {
            let children: Vec<Any> = f
                .children(txn)
                .map(|c| out_json(&Out::from(c), txn))
                .collect();
            any!({ "fragment": children })
        }
        Out::YXmlElement(e) => {
            let attrs: HashMap<String, Any> = e
                .attributes(txn)
                .map(|(k, v)| (k.to_owned(), out_json(&v, txn)))
                .collect();
            let children: Vec<Any> = e
                .children(txn)
                .map(|c| out_json(&Out::from(c), txn))
                .collect();
            any!({ "tag": e.tag().as_ref(), "attrs": attrs, "children": children })
        }
        Out::YXmlText(t) => {
            let attrs: HashMap<String, Any> = t
                .attributes(txn)
                .map(|(k, v)| (k.to_owned(), out_json(&v, txn)))
                .collect();
            let text = TextRef::from(yrs::branch::BranchPtr::from(
                AsRef::<yrs::branch::Branch>::as_ref(t),
            ));
            any!({ "xmltext": delta_json(&text, txn), "attrs": attrs })
        }
        Out::YDoc(d) => any!({ "subdoc": d.guid().as_ref() }),
        other => panic!("unexpected value {other}"),
    }
}

/// Restores `v2` to `v1` and checks that a document at `v2` then equals `v1`; returns the
/// restore update.
fn check_restore(v1: &[u8], v2: &[u8], roots: &[(&str, K)]) -> Vec<u8> {
    let expected = dump(&load(v1, 11), roots);
    let current = load(v2, 12);
    assert_ne!(dump(&current, roots), expected, "the versions must differ");
    let update = restore_update(v2, v1, RESTORER)
        .unwrap()
        .expect("versions differ, so a restore update is needed");
    // It is an update any relay room accepts.
    UpdateV1::parse(Bytes::from(update.clone()), &ValidateLimits::default()).unwrap();
    apply(&current, &update);
    assert_eq!(dump(&current, roots), expected);
    // Restoring the restored document to the same version is a no-op.
    assert!(restore_update(&state(&current), v1, RESTORER + 1)
        .unwrap()
        .is_none());
    update
}

fn bold() -> Attrs {
    Attrs::from([("bold".into(), true.into())])
}

fn italic() -> Attrs {
    Attrs::from([("italic".into(), true.into())])
}

fn link(url: &str) -> Attrs {
    Attrs::from([("link".into(), url.into())])
}

// ---------------------------------------------------------------------------------------------
// Per root kind

#[test]
fn text_with_formatting_and_embeds() {
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    edit(&d, |txn| {
        t.insert(txn, 0, "Hello brave new world 😀!");
        t.format(txn, 0, 5, bold());
        t.format(txn, 6, 5, italic());
        t.format(txn, 12, 3, link("https://a.example"));
        t.insert_embed_with_attributes(txn, 5, any!({ "image": "cat.png" }), italic());
        t.insert_embed(txn, 0, MapPrelim::from([("k", "v")]));
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        t.remove_range(txn, 1, 3); // the map embed and "He"
        t.insert(txn, 4, "XYZ");
        t.format(txn, 0, 10, Attrs::from([("bold".into(), Any::Null)]));
        t.format(txn, 8, 8, link("https://b.example"));
        t.format(txn, 2, 4, Attrs::from([("color".into(), "#f00".into())]));
        let len = t.len(txn);
        t.remove_range(txn, len - 3, 2); // into the emoji's neighbourhood
        t.insert_with_attributes(txn, 3, "ünïcødé", bold());
    });
    let v2 = state(&d);
    check_restore(&v1, &v2, &[("t", K::Text)]);
}

/// Found by the random sessions: a link widened by one character. Deleting that character
/// and inserting a plain one in the same `apply_delta` left the cursor believing the link had
/// ended, and the new character came out linked.
#[test]
fn text_replacement_next_to_a_formatting_boundary() {
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    edit(&d, |txn| t.insert(txn, 0, "aa"));
    edit(&d, |txn| {
        t.insert_with_attributes(txn, 0, "xyza", link("https://a.example"));
    });
    edit(&d, |txn| t.insert(txn, 0, "aaa"));
    edit(&d, |txn| t.remove_range(txn, 0, 2));
    let v1 = state(&d); // a <xyza> aa
    edit(&d, |txn| t.format(txn, 4, 2, link("https://a.example")));
    let v2 = state(&d); // a <xyzaa> a
    check_restore(&v1, &v2, &[("t", K::Text)]);
    check_restore(&v2, &v1, &[("t", K::Text)]);
}

#[test]
fn text_utf16_edits_around_surrogate_pairs() {
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    edit(&d, |txn| t.insert(txn, 0, "a😀b😀c𝄞d"));
    let v1 = state(&d);
    edit(&d, |txn| {
        t.remove_range(txn, 1, 2); // the first emoji
        t.insert(txn, 2, "😃"); // after "b"
        t.format(txn, 0, 4, bold());
    });
    let v2 = state(&d);
    check_restore(&v1, &v2, &[("t", K::Text)]);
    // And back: restoring to the newer version works the same way.
    check_restore(&v2, &v1, &[("t", K::Text)]);
}

#[test]
fn array_of_mixed_values_with_nested_types() {
    let d = doc(1);
    let a = d.get_or_insert_array("a");
    edit(&d, |txn| {
        a.insert_range(txn, 0, [any!(1), any!("two"), any!(true), Any::Null]);
        a.push_back(txn, any!({ "plain": { "json": [1, 2, 3] } }));
        a.push_back(txn, vec![1u8, 2, 3]);
        let m = a.push_back(txn, MapPrelim::from([("k", "v")]));
        let inner = m.insert(txn, "inner", ArrayPrelim::from([1, 2]));
        inner.push_back(txn, TextPrelim::new("deep"));
        let arr = a.push_back(txn, ArrayPrelim::default());
        arr.push_back(txn, TextPrelim::new("hi"));
        arr.push_back(txn, any!([4, 5]));
        a.push_back(txn, Any::from(3.5));
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        a.remove_range(txn, 1, 2); // "two", true
        a.insert(txn, 0, Any::from("new first"));
        let Some(Out::YMap(m)) = a.get(txn, 5) else {
            panic!("map expected")
        };
        m.insert(txn, "k", "changed");
        m.insert(txn, "added", MapPrelim::from([("x", 1)]));
        let Some(Out::YArray(inner)) = m.get(txn, "inner") else {
            panic!("array expected")
        };
        inner.remove(txn, 0);
        let Some(Out::YArray(arr)) = a.get(txn, 6) else {
            panic!("array expected")
        };
        let Some(Out::YText(hi)) = arr.get(txn, 0) else {
            panic!("text expected")
        };
        hi.insert(txn, 2, " there");
        a.push_back(txn, TextPrelim::new("appended"));
    });
    let v2 = state(&d);
    check_restore(&v1, &v2, &[("a", K::Array)]);
    check_restore(&v2, &v1, &[("a", K::Array)]);
}

#[test]
fn map_nested() {
    let d = doc(1);
    let m = d.get_or_insert_map("m");
    edit(&d, |txn| {
        m.insert(txn, "a", 1);
        m.insert(txn, "b", "x");
        m.insert(txn, "json", any!({ "deep": [true, null] }));
        let inner = m.insert(txn, "inner", MapPrelim::default());
        inner.insert(txn, "x", 1);
        let deeper = inner.insert(txn, "y", MapPrelim::default());
        deeper.insert(txn, "z", true);
        m.insert(txn, "list", ArrayPrelim::from([1, 2, 3]));
        let t = m.insert(txn, "text", TextPrelim::new("note"));
        t.format(txn, 0, 2, bold());
        m.insert(txn, "to-shared", 5);
        m.insert(txn, "to-plain", MapPrelim::from([("q", 1)]));
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        m.remove(txn, "a");
        m.insert(txn, "c", "added");
        m.insert(txn, "b", "y");
        let Some(Out::YMap(inner)) = m.get(txn, "inner") else {
            panic!("map expected")
        };
        inner.remove(txn, "x");
        let Some(Out::YMap(deeper)) = inner.get(txn, "y") else {
            panic!("map expected")
        };
        deeper.insert(txn, "z", false);
        deeper.insert(txn, "w", any!([1]));
        m.insert(txn, "list", ArrayPrelim::from([3, 2, 1])); // replaced by a new array
        let Some(Out::YText(t)) = m.get(txn, "text") else {
            panic!("text expected")
        };
        t.insert(txn, 4, "s");
        t.format(txn, 0, 2, Attrs::from([("bold".into(), Any::Null)]));
        m.insert(txn, "to-shared", MapPrelim::from([("now", "shared")]));
        m.insert(txn, "to-plain", 7);
    });
    let v2 = state(&d);
    check_restore(&v1, &v2, &[("m", K::Map)]);
    check_restore(&v2, &v1, &[("m", K::Map)]);
}

fn paragraph(
    txn: &mut yrs::TransactionMut,
    parent: &impl XmlFragment,
    index: u32,
    text: &str,
) -> (XmlElementRef, XmlTextRef) {
    let p = parent.insert(txn, index, XmlElementPrelim::empty("paragraph"));
    let t = p.insert(txn, 0, XmlTextPrelim::new(text));
    (p, t)
}

#[test]
fn xml_fragment_with_elements_attributes_and_text() {
    let d = doc(1);
    let f = d.get_or_insert_xml_fragment("prosemirror");
    edit(&d, |txn| {
        let h = f.insert(txn, 0, XmlElementPrelim::empty("heading"));
        h.insert_attribute(txn, "level", Any::from(1)); // y-prosemirror keeps non-string attributes
        let ht = h.insert(txn, 0, XmlTextPrelim::new("Title"));
        ht.format(txn, 0, 5, bold());
        let (p, t) = paragraph(txn, &f, 1, "First paragraph text");
        p.insert_attribute(txn, "class", "intro");
        t.format(txn, 6, 9, italic());
        let list = f.insert(txn, 2, XmlElementPrelim::empty("bullet_list"));
        for (i, item) in ["one", "two", "three"].iter().enumerate() {
            let li = list.insert(txn, i as u32, XmlElementPrelim::empty("list_item"));
            let (_, lt) = paragraph(txn, &li, 0, item);
            lt.insert_attribute(txn, "lang", "en");
        }
        paragraph(txn, &f, 3, "Last");
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        let Some(yrs::XmlOut::Element(h)) = f.get(txn, 0) else {
            panic!("heading expected")
        };
        h.insert_attribute(txn, "level", Any::from(2));
        h.insert_attribute(txn, "id", "top");
        let Some(yrs::XmlOut::Element(p)) = f.get(txn, 1) else {
            panic!("paragraph expected")
        };
        p.remove_attribute(txn, &"class");
        let Some(yrs::XmlOut::Text(t)) = p.get(txn, 0) else {
            panic!("text expected")
        };
        t.insert(txn, 5, " edited");
        t.format(txn, 0, 5, link("https://x.example"));
        let Some(yrs::XmlOut::Element(list)) = f.get(txn, 2) else {
            panic!("list expected")
        };
        list.remove_range(txn, 1, 1);
        let li = list.insert(txn, 2, XmlElementPrelim::empty("list_item"));
        paragraph(txn, &li, 0, "four");
        let Some(yrs::XmlOut::Element(first)) = list.get(txn, 0) else {
            panic!("item expected")
        };
        let Some(yrs::XmlOut::Element(fp)) = first.get(txn, 0) else {
            panic!("paragraph expected")
        };
        let Some(yrs::XmlOut::Text(ft)) = fp.get(txn, 0) else {
            panic!("text expected")
        };
        ft.insert_attribute(txn, "lang", "de");
        // A paragraph becomes a code block (another tag).
        f.remove_range(txn, 3, 1);
        let code = f.insert(txn, 3, XmlElementPrelim::empty("code_block"));
        code.insert(txn, 0, XmlTextPrelim::new("Last"));
    });
    let v2 = state(&d);
    check_restore(&v1, &v2, &[("prosemirror", K::Xml)]);
    check_restore(&v2, &v1, &[("prosemirror", K::Xml)]);
}

#[test]
fn several_roots_and_roots_in_one_version_only() {
    let d = doc(1);
    let t = d.get_or_insert_text("title");
    let body = d.get_or_insert_xml_fragment("body");
    let meta = d.get_or_insert_map("meta");
    let gone = d.get_or_insert_text("only-in-v1");
    let tags = d.get_or_insert_array("tags");
    let later = d.get_or_insert_map("only-in-v2");
    edit(&d, |txn| {
        t.insert(txn, 0, "Doc");
        paragraph(txn, &body, 0, "Body");
        meta.insert(txn, "author", "ann");
        gone.insert_with_attributes(txn, 0, "will be cleared", bold());
        tags.insert_range(txn, 0, ["a", "b"]);
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        t.insert(txn, 3, " v2");
        paragraph(txn, &body, 1, "More");
        meta.insert(txn, "editor", "bob");
        let len = gone.len(txn);
        gone.remove_range(txn, 0, len);
        tags.remove_range(txn, 0, 2);
        later.insert(txn, "new", MapPrelim::from([("x", 1)]));
    });
    let v2 = state(&d);
    let roots = [
        ("title", K::Text),
        ("body", K::Xml),
        ("meta", K::Map),
        ("only-in-v1", K::Text),
        ("tags", K::Array),
        ("only-in-v2", K::Map),
    ];
    check_restore(&v1, &v2, &roots);
    check_restore(&v2, &v1, &roots);

    // A root that the old version has and the current document has never heard of.
    let fresh = doc(2);
    let fresh_meta = fresh.get_or_insert_map("meta");
    edit(&fresh, |txn| {
        fresh_meta.insert(txn, "author", "zed");
    });
    check_restore(&v1, &state(&fresh), &roots);
    // And restoring an empty document.
    let empty = state(&doc(3));
    check_restore(&empty, &v1, &roots);
    check_restore(&v1, &empty, &roots);
}

#[test]
fn a_root_whose_type_changed_is_restored_best_effort() {
    // v1 has text under "x"; the current document has list items there (another application
    // version wrote an array under the same name).
    let d1 = doc(1);
    let t = d1.get_or_insert_text("x");
    edit(&d1, |txn| t.insert_with_attributes(txn, 0, "text", bold()));
    let v1 = state(&d1);
    let d2 = doc(2);
    let a = d2.get_or_insert_array("x");
    edit(&d2, |txn| a.insert_range(txn, 0, [1, 2, 3]));
    let v2 = state(&d2);

    let update = restore_update(&v2, &v1, RESTORER).unwrap().unwrap();
    let current = load(&v2, 12);
    apply(&current, &update);
    assert_eq!(
        dump(&current, &[("x", K::Text)]),
        dump(&load(&v1, 11), &[("x", K::Text)])
    );
    let x = current.get_or_insert_array("x");
    assert!(x
        .iter(&current.transact())
        .all(|v| matches!(v, Out::Any(Any::String(_)))));
    // …and back to the list.
    let back = restore_update(&state(&current), &v2, RESTORER + 1)
        .unwrap()
        .unwrap();
    apply(&current, &back);
    let arr = current.get_or_insert_array("x");
    assert_eq!(arr.to_json(&current.transact()), any!([1, 2, 3]));
    let txt = current.get_or_insert_text("x");
    assert_eq!(txt.get_string(&current.transact()), "");
}

// ---------------------------------------------------------------------------------------------
// Sync behaviour

#[test]
fn restoring_to_the_current_state_returns_none() {
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    let m = d.get_or_insert_map("m");
    edit(&d, |txn| {
        t.insert_with_attributes(txn, 0, "same", bold());
        m.insert(txn, "k", MapPrelim::from([("x", 1)]));
    });
    let s = state(&d);
    assert!(restore_update(&s, &s, RESTORER).unwrap().is_none());
    // Same content, different history: still nothing to do.
    let other = doc(2);
    let (t2, m2) = (other.get_or_insert_text("t"), other.get_or_insert_map("m"));
    edit(&other, |txn| {
        t2.insert(txn, 0, "sa");
        t2.insert(txn, 2, "me");
        t2.format(txn, 0, 4, bold());
        m2.insert(txn, "k", MapPrelim::from([("x", 1)]));
        m2.insert(txn, "gone", 1);
        m2.remove(txn, "gone");
    });
    assert!(restore_update(&state(&other), &s, RESTORER)
        .unwrap()
        .is_none());
    // Empty against empty.
    let empty = state(&doc(3));
    assert!(restore_update(&empty, &empty, RESTORER).unwrap().is_none());
}

#[test]
fn peers_converge_including_one_that_edited_concurrently() {
    let roots = [("t", K::Text), ("m", K::Map), ("f", K::Xml)];
    let d = doc(1);
    let (t, m, f) = (
        d.get_or_insert_text("t"),
        d.get_or_insert_map("m"),
        d.get_or_insert_xml_fragment("f"),
    );
    edit(&d, |txn| {
        t.insert(txn, 0, "The quick brown fox");
        t.format(txn, 4, 5, bold());
        m.insert(txn, "n", 1);
        paragraph(txn, &f, 0, "para");
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        t.remove_range(txn, 4, 6);
        t.insert(txn, 4, "slow ");
        m.insert(txn, "n", 2);
        m.insert(txn, "extra", true);
        paragraph(txn, &f, 1, "second");
    });
    let v2 = state(&d);

    let server = load(&v2, 21);
    let b = load(&v2, 22);
    let c = load(&v2, 23);

    let restore = restore_update(&v2, &v1, RESTORER).unwrap().unwrap();
    // C edits before it hears of the restore.
    let (ct, cm) = (c.get_or_insert_text("t"), c.get_or_insert_map("m"));
    let concurrent = edit(&c, |txn| {
        ct.insert(txn, 0, ">> ");
        let len = ct.len(txn);
        ct.insert(txn, len, " <<");
        cm.insert(txn, "c-was-here", "yes");
    });

    apply(&server, &restore);
    apply(&b, &restore);
    // B alone is exactly at v1.
    assert_eq!(dump(&b, &roots), dump(&load(&v1, 24), &roots));

    apply(&c, &restore);
    apply(&server, &concurrent);
    apply(&b, &concurrent);
    let expected = dump(&server, &roots);
    assert_eq!(dump(&b, &roots), expected);
    assert_eq!(dump(&c, &roots), expected);
    // C's edit survived (it touched text outside what the restore rewrote, and a new key).
    let st = server.get_or_insert_text("t");
    let text = st.get_string(&server.transact());
    assert!(text.starts_with(">> The quick"), "{text}");
    assert!(text.ends_with(" <<"), "{text}");
    // Byte-level state agrees too.
    assert_eq!(
        server.transact().state_vector(),
        c.transact().state_vector()
    );
}

#[test]
fn the_restore_flows_through_a_room() {
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    edit(&d, |txn| t.insert(txn, 0, "version one"));
    let v1 = state(&d);
    edit(&d, |txn| {
        t.remove_range(txn, 8, 3);
        t.insert(txn, 8, "two");
    });
    let v2 = state(&d);

    let mut room = RoomDoc::new();
    let limits = ValidateLimits::default();
    let applied = room.apply_update(
        &UpdateV1::parse(Bytes::from(v2.clone()), &limits).unwrap(),
        1,
    );
    assert!(applied.refused.is_empty());
    let current = room
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let restore = restore_update(&current, &v1, RESTORER).unwrap().unwrap();
    let applied = room.apply_update(
        &UpdateV1::parse(Bytes::from(restore.clone()), &limits).unwrap(),
        0,
    );
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    // A brand-new update goes out byte-identical.
    assert_eq!(applied.emitted, vec![restore]);
    let rt = room.doc().get_or_insert_text("t");
    assert_eq!(rt.get_string(&room.doc().transact()), "version one");
}

#[test]
fn unchanged_content_is_kept() {
    // A long text with a one-word change: the restore touches only that word.
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    let a = d.get_or_insert_array("a");
    let long = "lorem ipsum dolor sit amet ".repeat(400);
    edit(&d, |txn| {
        t.insert(txn, 0, &long);
        t.format(txn, 100, 50, bold());
        for i in 0..200 {
            let row = a.push_back(txn, MapPrelim::default());
            row.insert(txn, "id", i);
            row.insert(txn, "name", format!("row {i}"));
        }
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        t.remove_range(txn, 5000, 5);
        t.insert(txn, 5000, "CHANGED");
        let Some(Out::YMap(row)) = a.get(txn, 100) else {
            panic!("row expected")
        };
        row.insert(txn, "name", "renamed");
    });
    let v2 = state(&d);
    let rows_before: Vec<_> = {
        let cur = load(&v2, 30);
        let ca = cur.get_or_insert_array("a");
        let txn = cur.transact();
        ca.iter(&txn)
            .map(|v| match v {
                Out::YMap(m) => m.hook().id().clone(),
                other => panic!("{other}"),
            })
            .collect()
    };
    let update = check_restore(&v1, &v2, &[("t", K::Text), ("a", K::Array)]);
    assert!(
        update.len() < 200,
        "restore update is {} bytes",
        update.len()
    );
    // The row maps were restored in place, not re-created.
    let cur = load(&v2, 30);
    apply(&cur, &update);
    let ca = cur.get_or_insert_array("a");
    let txn = cur.transact();
    let rows_after: Vec<_> = ca
        .iter(&txn)
        .map(|v| match v {
            Out::YMap(m) => m.hook().id().clone(),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(rows_before, rows_after);
}

// ---------------------------------------------------------------------------------------------
// Edge cases and errors

#[test]
fn string_embeds_are_told_apart_from_text() {
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    edit(&d, |txn| {
        t.insert(txn, 0, "ab");
        t.insert_embed(txn, 1, Any::from("EMBED"));
        t.insert_embed(txn, 3, Any::from("b"));
    });
    let v1 = state(&d);
    edit(&d, |txn| {
        t.remove_range(txn, 0, 2);
        t.insert(txn, 0, "zz");
    });
    let v2 = state(&d);
    check_restore(&v1, &v2, &[("t", K::Text)]);
    let restored = load(&v2, 5);
    apply(
        &restored,
        &restore_update(&v2, &v1, RESTORER).unwrap().unwrap(),
    );
    let rt = restored.get_or_insert_text("t");
    let txn = restored.transact();
    assert_eq!(rt.get_string(&txn), "ab");
    assert_eq!(rt.len(&txn), 4);
}

#[test]
fn subdocuments_are_left_out() {
    let with_sub = doc(1);
    let m = with_sub.get_or_insert_map("m");
    edit(&with_sub, |txn| {
        m.insert(txn, "sub", Doc::new());
        m.insert(txn, "x", 1);
    });
    let v1 = state(&with_sub);
    // Same subdocument, other key changed: kept, restore works.
    edit(&with_sub, |txn| {
        m.insert(txn, "x", 2);
    });
    let v2 = state(&with_sub);
    let current = load(&v2, 9);
    let update = restore_update(&v2, &v1, RESTORER).unwrap().unwrap();
    apply(&current, &update);
    let cm = current.get_or_insert_map("m");
    let txn = current.transact();
    assert_eq!(cm.get(&txn, "x"), Some(Out::Any(any!(1))));
    assert!(matches!(cm.get(&txn, "sub"), Some(Out::YDoc(_))));
    drop(txn);

    // Removed subdocument: the restore would have to re-create it.
    edit(&with_sub, |txn| {
        m.remove(txn, "sub");
    });
    let v3 = state(&with_sub);
    assert!(matches!(
        restore_update(&v3, &v1, RESTORER),
        Err(RestoreError::Subdocument { root }) if root == "m"
    ));
    // A subdocument only in the current document is deleted like any value.
    let plain = doc(2);
    let pm = plain.get_or_insert_map("m");
    edit(&plain, |txn| {
        pm.insert(txn, "x", 1);
    });
    let update = restore_update(&v2, &state(&plain), RESTORER)
        .unwrap()
        .unwrap();
    let current = load(&v2, 9);
    apply(&current, &update);
    assert_eq!(dump(&current, &[("m", K::Map)]), any!({ "m": { "x": 1 } }));
}

#[test]
fn nan_values_count_as_unchanged() {
    // NaN != NaN: compared naively, every NaN would be rewritten and never match.
    let d = doc(1);
    let m = d.get_or_insert_map("m");
    let a = d.get_or_insert_array("a");
    let t = d.get_or_insert_text("t");
    edit(&d, |txn| {
        m.insert(txn, "nan", f64::NAN);
        m.insert(txn, "deep", any!({ "x": [f64::NAN] }));
        m.insert(txn, "n", 1);
        a.insert_range(txn, 0, [Any::from(f64::NAN), Any::from(2)]);
        t.insert_with_attributes(txn, 0, "nan", Attrs::from([("w".into(), f64::NAN.into())]));
    });
    let v1 = state(&d);
    assert!(restore_update(&v1, &v1, RESTORER).unwrap().is_none());
    edit(&d, |txn| {
        m.insert(txn, "n", 2);
    });
    let v2 = state(&d);
    let update = restore_update(&v2, &v1, RESTORER).unwrap().unwrap();
    let current = load(&v2, 8);
    apply(&current, &update);
    let cm = current.get_or_insert_map("m");
    let txn = current.transact();
    assert_eq!(cm.get(&txn, "n"), Some(Out::Any(any!(1))));
    assert!(matches!(
        cm.get(&txn, "nan"),
        Some(Out::Any(Any::Number(yrs::Number::Float(x)))) if x.is_nan()
    ));
    drop(txn);
    // Only the changed key was written: the NaN entries were left alone.
    assert!(update.len() < 40, "{} bytes", update.len());
}

/// Maps nested `levels` deep under root "m" (the root is depth 0).
fn nested_maps(levels: usize) -> Vec<u8> {
    let d = doc(1);
    let m = d.get_or_insert_map("m");
    edit(&d, |txn| {
        let mut cur: MapRef = m.clone();
        for _ in 0..levels {
            cur = cur.insert(txn, "n", MapPrelim::default());
        }
        cur.insert(txn, "leaf", true);
    });
    state(&d)
}

#[test]
fn nesting_is_bounded() {
    let empty = state(&doc(2));
    // At the limit it works (on a test thread's small stack, in a debug build) …
    let deep = nested_maps(MAX_RESTORE_DEPTH);
    let update = restore_update(&empty, &deep, RESTORER).unwrap().unwrap();
    let current = load(&empty, 3);
    apply(&current, &update);
    assert_eq!(
        dump(&current, &[("m", K::Map)]),
        dump(&load(&deep, 4), &[("m", K::Map)])
    );
    assert!(restore_update(&deep, &empty, RESTORER).unwrap().is_some());
    // … one more level is refused, whichever side it is on.
    let deeper = nested_maps(MAX_RESTORE_DEPTH + 1);
    assert!(matches!(
        restore_update(&empty, &deeper, RESTORER),
        Err(RestoreError::TooDeep)
    ));
    assert!(matches!(
        restore_update(&deeper, &empty, RESTORER),
        Err(RestoreError::TooDeep)
    ));
}

#[test]
fn bad_input_is_refused() {
    let d = doc(1);
    let t = d.get_or_insert_text("t");
    edit(&d, |txn| t.insert(txn, 0, "x"));
    let s = state(&d);
    assert!(matches!(
        restore_update(&s, &s, 1 << 53),
        Err(RestoreError::ClientIdTooLarge(_))
    ));
    // The author of the restore must be new to the document.
    let other = state(&doc(2));
    assert!(matches!(
        restore_update(&s, &other, 1),
        Err(RestoreError::ClientIdInUse(1))
    ));
    // The memory bomb from DEPENDENCIES.md, and garbage.
    assert!(matches!(
        restore_update(&[144, 243, 243, 59], &s, RESTORER),
        Err(RestoreError::Invalid {
            side: Side::Current,
            ..
        })
    ));
    assert!(matches!(
        restore_update(&s, &[1, 2, 3], RESTORER),
        Err(RestoreError::Invalid {
            side: Side::Old,
            ..
        })
    ));
    // An update that is not a whole document (it starts past clock 0).
    let later = edit(&d, |txn| t.insert(txn, 1, "y"));
    assert!(matches!(
        restore_update(&s, &later, RESTORER),
        Err(RestoreError::Incomplete { side: Side::Old })
    ));
}

// ---------------------------------------------------------------------------------------------
// Random edit sessions

#[derive(Debug, Clone)]
enum Op {
    TextInsert(u16, String, u8),
    TextDelete(u16, u16),
    TextFormat(u16, u16, u8),
    TextEmbed(u16, u8),
    MapSet(u8, u8),
    MapRemove(u8),
    MapNested(u8, u8, u8),
    ArrayInsert(u16, u8),
    ArrayDelete(u16, u16),
    ArrayNested(u16, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let text = prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", " ", "é", "😀", "xyz", "\n"]),
        1..4,
    )
    .prop_map(|parts| parts.concat());
    prop_oneof![
        3 => (any::<u16>(), text, 0u8..4).prop_map(|(p, s, f)| Op::TextInsert(p, s, f)),
        2 => (any::<u16>(), 1u16..6).prop_map(|(p, n)| Op::TextDelete(p, n)),
        2 => (any::<u16>(), 1u16..8, 0u8..6).prop_map(|(p, n, f)| Op::TextFormat(p, n, f)),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(p, e)| Op::TextEmbed(p, e)),
        2 => (0u8..5, any::<u8>()).prop_map(|(k, v)| Op::MapSet(k, v)),
        1 => (0u8..5).prop_map(Op::MapRemove),
        2 => (0u8..5, 0u8..3, any::<u8>()).prop_map(|(k, i, v)| Op::MapNested(k, i, v)),
        2 => (any::<u16>(), any::<u8>()).prop_map(|(p, v)| Op::ArrayInsert(p, v)),
        1 => (any::<u16>(), 1u16..4).prop_map(|(p, n)| Op::ArrayDelete(p, n)),
        2 => (any::<u16>(), any::<u8>()).prop_map(|(p, v)| Op::ArrayNested(p, v)),
    ]
}

fn format_attrs(f: u8) -> Attrs {
    match f % 6 {
        0 => bold(),
        1 => italic(),
        2 => Attrs::from([("bold".into(), Any::Null)]),
        3 => link("https://a.example"),
        4 => link("https://b.example"),
        _ => Attrs::from([("italic".into(), Any::Null), ("color".into(), "red".into())]),
    }
}

/// A value for map/array slots: plain JSON or a fresh nested type.
fn insert_value_into_map(txn: &mut yrs::TransactionMut, map: &MapRef, key: String, v: u8) {
    match v % 5 {
        0 => {
            map.insert(txn, key, i64::from(v));
        }
        1 => {
            map.insert(txn, key, format!("s{v}"));
        }
        2 => {
            map.insert(txn, key, MapPrelim::from([("v", i64::from(v))]));
        }
        3 => {
            map.insert(txn, key, ArrayPrelim::from([i64::from(v), 0]));
        }
        _ => {
            map.insert(txn, key, TextPrelim::new(format!("t{v}")));
        }
    }
}

/// Whether each UTF-16 offset of `t` (0 ..= len) falls between characters.
fn boundaries<T: ReadTxn>(t: &TextRef, txn: &T) -> Vec<bool> {
    let mut b = vec![true];
    for d in t.diff(txn, YChange::identity) {
        match d.insert {
            Out::Any(Any::String(s)) => {
                for c in s.chars() {
                    b.extend(std::iter::repeat_n(false, c.len_utf16() - 1));
                    b.push(true);
                }
            }
            _ => b.push(true),
        }
    }
    b
}

/// The character boundary at or before `at`.
fn boundary(b: &[bool], at: u32) -> u32 {
    (0..=at).rev().find(|&i| b[i as usize]).unwrap_or(0)
}

/// Applies `op`; with `whole_chars`, text offsets are moved to character boundaries.
///
/// Splitting a surrogate pair makes `yrs` replace the halves with U+FFFD locally while peers
/// keep the character, so edits that do are left out where peers are compared.
fn apply_op(
    txn: &mut yrs::TransactionMut,
    t: &TextRef,
    m: &MapRef,
    a: &ArrayRef,
    op: &Op,
    whole_chars: bool,
) {
    let tlen = t.len(txn);
    let alen = a.len(txn);
    let op = &match op {
        Op::TextInsert(p, s, f) if whole_chars => {
            let at = boundary(&boundaries(t, txn), u32::from(*p) % (tlen + 1));
            Op::TextInsert(at as u16, s.clone(), *f)
        }
        Op::TextDelete(p, n) | Op::TextFormat(p, n, _) if whole_chars && tlen > 0 => {
            let b = boundaries(t, txn);
            let at = boundary(&b, u32::from(*p) % tlen);
            let end = boundary(&b, (at + u32::from(*n)).min(tlen));
            if end == at {
                return;
            }
            let (at, n) = (at as u16, (end - at) as u16);
            match op {
                Op::TextFormat(_, _, f) => Op::TextFormat(at, n, *f),
                _ => Op::TextDelete(at, n),
            }
        }
        Op::TextEmbed(p, e) if whole_chars => {
            let at = boundary(&boundaries(t, txn), u32::from(*p) % (tlen + 1));
            Op::TextEmbed(at as u16, *e)
        }
        other => other.clone(),
    };
    match op {
        Op::TextInsert(p, s, f) => {
            let at = u32::from(*p) % (tlen + 1);
            if *f == 0 {
                t.insert(txn, at, s);
            } else {
                t.insert_with_attributes(txn, at, s, format_attrs(*f));
            }
        }
        Op::TextDelete(p, n) if tlen > 0 => {
            let at = u32::from(*p) % tlen;
            let n = u32::from(*n).min(tlen - at);
            t.remove_range(txn, at, n);
        }
        Op::TextFormat(p, n, f) if tlen > 0 => {
            let at = u32::from(*p) % tlen;
            let n = u32::from(*n).min(tlen - at);
            t.format(txn, at, n, format_attrs(*f));
        }
        Op::TextEmbed(p, e) => {
            let at = u32::from(*p) % (tlen + 1);
            t.insert_embed(txn, at, any!({ "img": i64::from(*e) }));
        }
        Op::MapSet(k, v) => insert_value_into_map(txn, m, format!("k{k}"), *v),
        Op::MapRemove(k) => {
            m.remove(txn, &format!("k{k}"));
        }
        Op::MapNested(k, i, v) => match m.get(txn, &format!("k{k}")) {
            Some(Out::YMap(inner)) => insert_value_into_map(txn, &inner, format!("i{i}"), *v),
            Some(Out::YArray(inner)) => {
                let at = u32::from(*i) % (inner.len(txn) + 1);
                inner.insert(txn, at, i64::from(*v));
            }
            Some(Out::YText(inner)) => {
                let at = u32::from(*i) % (inner.len(txn) + 1);
                inner.insert_with_attributes(txn, at, "n", format_attrs(*v));
            }
            _ => {}
        },
        Op::ArrayInsert(p, v) => {
            let at = u32::from(*p) % (alen + 1);
            match v % 4 {
                0 => a.insert_range(txn, at, [i64::from(*v), -1]),
                1 => {
                    a.insert(txn, at, format!("a{v}"));
                }
                2 => {
                    a.insert(txn, at, MapPrelim::from([("v", i64::from(*v))]));
                }
                _ => {
                    a.insert(txn, at, ArrayPrelim::from([i64::from(*v)]));
                }
            }
        }
        Op::ArrayDelete(p, n) if alen > 0 => {
            let at = u32::from(*p) % alen;
            let n = u32::from(*n).min(alen - at);
            a.remove_range(txn, at, n);
        }
        Op::ArrayNested(p, v) if alen > 0 => match a.get(txn, u32::from(*p) % alen) {
            Some(Out::YMap(inner)) => insert_value_into_map(txn, &inner, "v".into(), *v),
            Some(Out::YArray(inner)) => {
                inner.push_back(txn, i64::from(*v));
            }
            _ => {}
        },
        _ => {}
    }
}

fn run_session(d: &Doc, ops: &[Op]) {
    let (t, m, a) = (
        d.get_or_insert_text("t"),
        d.get_or_insert_map("m"),
        d.get_or_insert_array("a"),
    );
    // A few transactions, as an editing session would have.
    for chunk in ops.chunks(3) {
        let mut txn = d.transact_mut();
        for op in chunk {
            apply_op(&mut txn, &t, &m, &a, op, false);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_sessions_restore_exactly(
        first in prop::collection::vec(op(), 0..24),
        second in prop::collection::vec(op(), 0..24),
        concurrent in prop::collection::vec(op(), 0..4),
    ) {
        let roots = [("t", K::Text), ("m", K::Map), ("a", K::Array)];
        let author = doc(1);
        run_session(&author, &first);
        let v1 = state(&author);
        // The second session by another peer, on top of v1.
        let editor = load(&v1, 2);
        run_session(&editor, &second);
        let v2 = state(&editor);

        let expected = dump(&load(&v1, 3), &roots);
        let restored = load(&v2, 4);
        let before = dump(&restored, &roots);
        match restore_update(&v2, &v1, RESTORER).unwrap() {
            None => prop_assert_eq!(before, expected),
            Some(update) => {
                prop_assert_ne!(before, expected.clone());
                apply(&restored, &update);
                prop_assert_eq!(dump(&restored, &roots), expected);
                prop_assert!(restore_update(&state(&restored), &v1, RESTORER + 1).unwrap().is_none());

                // A peer that edited concurrently converges with the restored one.
                let peer = load(&v2, 5);
                let mut peer_updates = Vec::new();
                for op in &concurrent {
                    let (t, m, a) = (
                        peer.get_or_insert_text("t"),
                        peer.get_or_insert_map("m"),
                        peer.get_or_insert_array("a"),
                    );
                    peer_updates.push(edit(&peer, |txn| apply_op(txn, &t, &m, &a, op, true)));
                }
                apply(&peer, &update);
                for u in &peer_updates {
                    apply(&restored, u);
                }
                prop_assert_eq!(dump(&peer, &roots), dump(&restored, &roots));
            }
        }
    }
}

#[derive(Debug, Clone)]
enum XmlOp {
    /// Insert a paragraph (or heading) with text at a child index.
    Insert(u16, u8),
    Delete(u16),
    /// Set (or with value 0, remove) an attribute on a child.
    Attr(u16, u8, u8),
    /// Insert text into a child's first text node.
    Type(u16, u16, u8),
    /// Delete text in a child's first text node.
    Erase(u16, u16, u16),
    /// Format text in a child's first text node.
    Format(u16, u16, u16, u8),
    /// Give a child a nested list item (nesting one level deeper).
    Nest(u16),
}

fn xml_op() -> impl Strategy<Value = XmlOp> {
    prop_oneof![
        2 => (any::<u16>(), any::<u8>()).prop_map(|(i, v)| XmlOp::Insert(i, v)),
        1 => any::<u16>().prop_map(XmlOp::Delete),
        2 => (any::<u16>(), 0u8..3, 0u8..4).prop_map(|(i, k, v)| XmlOp::Attr(i, k, v)),
        3 => (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(i, p, v)| XmlOp::Type(i, p, v)),
        2 => (any::<u16>(), any::<u16>(), 1u16..5).prop_map(|(i, p, n)| XmlOp::Erase(i, p, n)),
        2 => (any::<u16>(), any::<u16>(), 1u16..5, any::<u8>())
            .prop_map(|(i, p, n, f)| XmlOp::Format(i, p, n, f)),
        1 => any::<u16>().prop_map(XmlOp::Nest),
    ]
}

/// The first text node under `el` (depth-first), if any.
fn first_text<T: ReadTxn>(el: &XmlElementRef, txn: &T) -> Option<XmlTextRef> {
    for child in el.children(txn) {
        match child {
            yrs::XmlOut::Text(t) => return Some(t),
            yrs::XmlOut::Element(e) => {
                if let Some(t) = first_text(&e, txn) {
                    return Some(t);
                }
            }
            yrs::XmlOut::Fragment(_) => {}
        }
    }
    None
}

fn apply_xml_op(txn: &mut yrs::TransactionMut, f: &XmlFragmentRef, op: &XmlOp) {
    let len = f.len(txn);
    let child = |txn: &yrs::TransactionMut, i: u16| -> Option<XmlElementRef> {
        if len == 0 {
            return None;
        }
        match f.get(txn, u32::from(i) % len) {
            Some(yrs::XmlOut::Element(e)) => Some(e),
            _ => None,
        }
    };
    match op {
        XmlOp::Insert(i, v) => {
            let tag = if v % 3 == 0 { "heading" } else { "paragraph" };
            let el = f.insert(txn, u32::from(*i) % (len + 1), XmlElementPrelim::empty(tag));
            el.insert(txn, 0, XmlTextPrelim::new(format!("text {v}")));
        }
        XmlOp::Delete(i) if len > 0 => f.remove_range(txn, u32::from(*i) % len, 1),
        XmlOp::Attr(i, k, v) => {
            if let Some(el) = child(txn, *i) {
                let key = format!("a{k}");
                match v {
                    0 => el.remove_attribute(txn, &key),
                    1 => {
                        el.insert_attribute(txn, key, Any::from(i64::from(*v)));
                    }
                    _ => {
                        el.insert_attribute(txn, key, format!("v{v}"));
                    }
                }
            }
        }
        XmlOp::Type(i, p, v) => {
            if let Some(t) = child(txn, *i).and_then(|el| first_text(&el, txn)) {
                let at = u32::from(*p) % (t.len(txn) + 1);
                t.insert(txn, at, ["x", "yz", " ", "ß"][usize::from(*v) % 4]);
            }
        }
        XmlOp::Erase(i, p, n) => {
            if let Some(t) = child(txn, *i).and_then(|el| first_text(&el, txn)) {
                let tlen = t.len(txn);
                if tlen > 0 {
                    let at = u32::from(*p) % tlen;
                    t.remove_range(txn, at, u32::from(*n).min(tlen - at));
                }
            }
        }
        XmlOp::Format(i, p, n, v) => {
            if let Some(t) = child(txn, *i).and_then(|el| first_text(&el, txn)) {
                let tlen = t.len(txn);
                if tlen > 0 {
                    let at = u32::from(*p) % tlen;
                    t.format(txn, at, u32::from(*n).min(tlen - at), format_attrs(*v));
                }
            }
        }
        XmlOp::Nest(i) => {
            if let Some(el) = child(txn, *i) {
                let item = el.push_back(txn, XmlElementPrelim::empty("list_item"));
                item.push_back(txn, XmlTextPrelim::new("nested"));
            }
        }
        _ => {}
    }
}

fn run_xml_session(d: &Doc, ops: &[XmlOp]) {
    let f = d.get_or_insert_xml_fragment("x");
    for chunk in ops.chunks(3) {
        let mut txn = d.transact_mut();
        for op in chunk {
            apply_xml_op(&mut txn, &f, op);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_xml_sessions_restore_exactly(
        first in prop::collection::vec(xml_op(), 0..24),
        second in prop::collection::vec(xml_op(), 0..24),
    ) {
        let roots = [("x", K::Xml)];
        let author = doc(1);
        run_xml_session(&author, &first);
        let v1 = state(&author);
        let editor = load(&v1, 2);
        run_xml_session(&editor, &second);
        let v2 = state(&editor);

        let expected = dump(&load(&v1, 3), &roots);
        let restored = load(&v2, 4);
        match restore_update(&v2, &v1, RESTORER).unwrap() {
            None => prop_assert_eq!(dump(&restored, &roots), expected),
            Some(update) => {
                apply(&restored, &update);
                prop_assert_eq!(dump(&restored, &roots), expected);
            }
        }
    }
}
