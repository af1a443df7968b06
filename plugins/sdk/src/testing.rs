//! Property-test strategies adapters share (feature `testing`): arbitrary JSON shaped enough
//! like a provider's to get past the first checks of a parser.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Number, Value};

/// Text that is sometimes one of `words` (field names, type names, codes), sometimes digits,
/// base64-like or anything at all.
pub fn text(words: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => select(words).prop_map(str::to_owned),
        1 => "[0-9]{1,14}",
        1 => "[A-Za-z0-9+/]{0,24}={0,2}",
        1 => "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}",
        2 => ".{0,24}",
    ]
}

/// Any JSON value, nested a few levels, whose keys and strings are often `words`.
pub fn json(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-10i64..20).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        text(words).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            btree_map(text(words), inner, 0..8)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// A JSON object with every one of `fields` set to an arbitrary value, plus arbitrary others.
pub fn json_object_with(
    fields: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    (
        vec(json(words), fields.len()),
        btree_map(text(words), json(words), 0..4),
    )
        .prop_map(move |(values, extra)| {
            let mut object: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (field, value) in fields.iter().zip(values) {
                object.insert((*field).to_owned(), value);
            }
            Value::Object(object)
        })
}

/// A body that is arbitrary bytes, arbitrary JSON, or an object with `fields`.
pub fn body(
    fields: &'static [&'static str],
    words: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        json(words).prop_map(|value| value.to_string().into_bytes()),
        json_object_with(fields, words).prop_map(|value| value.to_string().into_bytes()),
    ]
}
