//! Write a wpool kernel in Rust.
//!
//! A kernel is a WebAssembly component of world `wpool:kernel/kernel`
//! (`wit/wpool.wit`): it exports `map(input: list<u8>) -> result<list<u8>, string>`.
//! With this crate a kernel is a few lines:
//!
//! ```ignore
//! struct Upper;
//!
//! impl wpool_guest::Kernel for Upper {
//!     fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
//!         Ok(input.to_ascii_uppercase())
//!     }
//! }
//!
//! wpool_guest::export!(Upper);
//! ```
//!
//! Build it as a `cdylib` with `cargo build --release --target wasm32-wasip2`
//! (a component that may use Rust's std and WASI), or for
//! `wasm32-unknown-unknown` and turn the module into an import-free component
//! with `wit-component` (see `cargo xtask kernels` in the wpool repository).
//!
//! `Ok(bytes)` is the item's result; `Err(message)` fails that item with a
//! `kernel` error; a panic traps (the message reaches the caller through the
//! captured stderr on `wasm32-wasip2`).

#![no_std]

extern crate alloc;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wpool:kernel/kernel",
        pub_export_macro: true,
        export_macro_name: "__export_kernel",
        default_bindings_module: "wpool_guest::bindings",
    });
}

/// A map kernel: the host calls `map` once per input item.
pub use bindings::Guest as Kernel;

/// Exports a type implementing [`Kernel`] as the component's `map`.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        $crate::bindings::__export_kernel!($ty with_types_in $crate::bindings);
    };
}
