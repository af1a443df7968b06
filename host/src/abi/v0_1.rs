//! Bindings for `simrelay:adapter@0.1.0`.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    with: {
        "wasi:keyvalue": crate::kv::bindings::wasi::keyvalue,
    },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});
