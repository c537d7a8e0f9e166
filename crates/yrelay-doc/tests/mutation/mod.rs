//! Byte mutations of valid inputs, shared by the hostile-input property tests.
#![allow(dead_code)]

use proptest::prelude::*;

/// One change to a valid input.
#[derive(Debug, Clone)]
pub enum Mutation {
    Set(usize, u8),
    Xor(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Overwrites a byte with a large varint (a huge declared count or length).
    BigVarint(usize, u64),
}

/// Applies `mutation` to `bytes` (positions wrap around the length).
pub fn mutate(mut bytes: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    let len = bytes.len();
    let at = |i: usize| i % len.max(1);
    match *mutation {
        Mutation::Set(i, b) if len > 0 => bytes[at(i)] = b,
        Mutation::Xor(i, b) if len > 0 => bytes[at(i)] ^= b,
        Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
        Mutation::Remove(i) if len > 0 => {
            bytes.remove(at(i));
        }
        Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
        Mutation::BigVarint(i, mut value) if len > 0 => {
            let mut varint = Vec::new();
            while value >= 0x80 {
                varint.push((value as u8 & 0x7f) | 0x80);
                value >>= 7;
            }
            varint.push(value as u8);
            let i = at(i);
            bytes.splice(i..=i, varint);
        }
        _ => {}
    }
    bytes
}

/// Single-byte edits, insertions, removals and truncations; with `big_varints`, also
/// overwrites by huge varints.
pub fn arb_mutation(big_varints: bool) -> BoxedStrategy<Mutation> {
    let bytes = prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        3 => (any::<usize>(), prop::sample::select(vec![1u8, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0xff]))
            .prop_map(|(i, b)| Mutation::Xor(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ];
    if !big_varints {
        return bytes.boxed();
    }
    prop_oneof![
        9 => bytes,
        1 => (
            any::<usize>(),
            prop_oneof![
                Just(u64::from(u32::MAX)),
                Just(1u64 << 31),
                Just(1u64 << 53),
                Just(u64::MAX),
                0x80u64..0x1_0000_0000,
            ],
        )
            .prop_map(|(i, v)| Mutation::BigVarint(i, v)),
    ]
    .boxed()
}
