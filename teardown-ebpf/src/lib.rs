#![no_std]
// Exists so teardown-user can depend on this crate for rebuild tracking; see Cargo.toml.
