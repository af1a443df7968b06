//! Bindings of the bridge's imports: the plugin's adapter interface, the key-value stores
//! and the component's variables. Generated for every target, so the conversions into
//! host-owned types are tested natively; only the wasm shell calls them.

wit_bindgen::generate!({
    world: "simrelay:spin-bridge/bridge",
    path: ["../../wit", "wit"],
    generate_all,
});
