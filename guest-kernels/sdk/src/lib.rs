//! Write a wpool kernel in Rust.
//!
//! A kernel is a WebAssembly component of one of the worlds of the package
//! `wpool:kernel` (`wit/wpool.wit`). Each world has a trait to implement and a
//! macro that exports the implementing type:
//!
//! | world                    | trait              | macro                  | exports                    |
//! |--------------------------|--------------------|------------------------|----------------------------|
//! | `batch-kernel`           | [`Kernel`]         | [`export!`]            | `map`, `map-batch`         |
//! | `batch-kernel-with-init` | [`KernelWithInit`] | [`export_with_init!`]  | `map`, `map-batch`, `init` |
//! | `reducer`                | [`Reducer`]        | [`export_reducer!`]    | `reduce`                   |
//!
//! A component exports exactly one world, so a crate calls exactly one of the
//! macros, once. The batch worlds include `kernel` and `kernel-with-init`: a
//! Rust kernel also exports `map-batch`, which the host calls with several
//! small items at once to save the cost of a call per item (a few hundred
//! nanoseconds, the whole cost of a tiny item). Its default runs `map` on
//! each input in order, so a kernel implements `map` only; override
//! `map_batch` only to share work between the items of a batch, and keep its
//! results exactly what `map` would return, one per input, in order.
//!
//! # `kernel`: a map kernel
//!
//! The host calls `map(input: list<u8>) -> result<list<u8>, string>` once per
//! input item:
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
//! # `kernel-with-init`: a map kernel with an initializer
//!
//! Like `multiprocessing.Pool(initializer=...)`: the host calls
//! `init(config: list<u8>) -> result<_, string>` once per instance, before any
//! `map`, with the caller's configuration bytes. State prepared by `init` lives
//! in a static (the trait's functions take no `self`); an instance is single
//! threaded, so a `thread_local!` `RefCell` is enough. An `Err` from `init`
//! stops the run with its message.
//!
//! ```ignore
//! use std::cell::RefCell;
//!
//! thread_local! {
//!     static PREFIX: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
//! }
//!
//! struct Prefix;
//!
//! impl wpool_guest::KernelWithInit for Prefix {
//!     fn init(config: Vec<u8>) -> Result<(), String> {
//!         PREFIX.with_borrow_mut(|p| *p = config);
//!         Ok(())
//!     }
//!
//!     fn map(input: Vec<u8>) -> Result<Vec<u8>, String> {
//!         Ok(PREFIX.with_borrow(|p| [p.as_slice(), &input].concat()))
//!     }
//! }
//!
//! wpool_guest::export_with_init!(Prefix);
//! ```
//!
//! # `reducer`: a reduce kernel for MapReduce
//!
//! The host groups the `key\tvalue` lines emitted by a map kernel by key and
//! calls `reduce(key: list<u8>, values: list<list<u8>>) -> result<list<u8>, string>`
//! with a key and some of its values. It may reduce a key's values in several
//! batches and feed earlier results back in as values, so `reduce` must be
//! associative and commutative, and must accept its own output as a value:
//!
//! ```ignore
//! struct Count;
//!
//! impl wpool_guest::Reducer for Count {
//!     fn reduce(_key: Vec<u8>, values: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
//!         let mut total = 0u64;
//!         for value in &values {
//!             let text = core::str::from_utf8(value).map_err(|e| e.to_string())?;
//!             total += text.trim().parse::<u64>().map_err(|e| e.to_string())?;
//!         }
//!         Ok(total.to_string().into_bytes())
//!     }
//! }
//!
//! wpool_guest::export_reducer!(Count);
//! ```
//!
//! # Building
//!
//! Build a kernel as a `cdylib` with `cargo build --release --target wasm32-wasip2`
//! (a component that may use Rust's std and WASI), or for
//! `wasm32-unknown-unknown` and turn the module into an import-free component
//! with `wit-component` (see `cargo xtask kernels` in the wpool repository).
//!
//! `Ok(bytes)` is the item's result; `Err(message)` fails that item with a
//! `kernel` error; a panic traps (the message reaches the caller through the
//! captured stderr on `wasm32-wasip2`).

#![no_std]

extern crate alloc;

/// Bindings of the `batch-kernel` world.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wpool:kernel/batch-kernel",
        pub_export_macro: true,
        export_macro_name: "__export_batch_kernel",
        default_bindings_module: "wpool_guest::bindings",
    });
}

/// Bindings of the `batch-kernel-with-init` world.
#[doc(hidden)]
pub mod with_init_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wpool:kernel/batch-kernel-with-init",
        pub_export_macro: true,
        export_macro_name: "__export_batch_kernel_with_init",
        default_bindings_module: "wpool_guest::with_init_bindings",
    });
}

/// Bindings of the `reducer` world.
#[doc(hidden)]
pub mod reducer_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "wpool:kernel/reducer",
        pub_export_macro: true,
        export_macro_name: "__export_reducer",
        default_bindings_module: "wpool_guest::reducer_bindings",
    });
}

use alloc::string::String;
use alloc::vec::Vec;

/// A map kernel: the host calls `map` once per input item, or `map_batch`
/// with several items.
pub trait Kernel {
    /// Processes one item: `Ok` is its result, `Err` fails this item with a
    /// `kernel` error.
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String>;

    /// Processes several items: one result per input, in order, each what
    /// [`map`](Kernel::map) returns for it. The default does exactly that.
    fn map_batch(inputs: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, String>> {
        inputs.into_iter().map(Self::map).collect()
    }
}

/// A map kernel with an initializer: the host calls `init` once per instance
/// with the caller's configuration bytes, before any `map` or `map_batch`.
pub trait KernelWithInit {
    /// Prepares the instance; `Err` stops the run with this message.
    fn init(config: Vec<u8>) -> Result<(), String>;

    /// As [`Kernel::map`].
    fn map(input: Vec<u8>) -> Result<Vec<u8>, String>;

    /// As [`Kernel::map_batch`].
    fn map_batch(inputs: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, String>> {
        inputs.into_iter().map(Self::map).collect()
    }
}

/// A reduce kernel (world `reducer`): the host calls `reduce` with a key and a
/// batch of its values, possibly including earlier results of `reduce`.
pub use reducer_bindings::Guest as Reducer;

/// Exports a type implementing [`Kernel`] as the component's `map` and
/// `map-batch` (world `batch-kernel`).
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        const _: () = {
            struct __WpoolKernel;
            impl $crate::bindings::Guest for __WpoolKernel {
                fn map(input: $crate::__Vec<u8>) -> ::core::result::Result<$crate::__Vec<u8>, $crate::__String> {
                    <$ty as $crate::Kernel>::map(input)
                }
                fn map_batch(
                    inputs: $crate::__Vec<$crate::__Vec<u8>>,
                ) -> $crate::__Vec<::core::result::Result<$crate::__Vec<u8>, $crate::__String>> {
                    <$ty as $crate::Kernel>::map_batch(inputs)
                }
            }
    $crate::bindings::__export_batch_kernel!(__WpoolKernel with_types_in $crate::bindings);
        };
    };
}

/// Exports a type implementing [`KernelWithInit`] as the component's `init`,
/// `map` and `map-batch` (world `batch-kernel-with-init`).
#[macro_export]
macro_rules! export_with_init {
    ($ty:ident) => {
        const _: () = {
            struct __WpoolKernel;
            impl $crate::with_init_bindings::Guest for __WpoolKernel {
                fn init(config: $crate::__Vec<u8>) -> ::core::result::Result<(), $crate::__String> {
                    <$ty as $crate::KernelWithInit>::init(config)
                }
                fn map(input: $crate::__Vec<u8>) -> ::core::result::Result<$crate::__Vec<u8>, $crate::__String> {
                    <$ty as $crate::KernelWithInit>::map(input)
                }
                fn map_batch(
                    inputs: $crate::__Vec<$crate::__Vec<u8>>,
                ) -> $crate::__Vec<::core::result::Result<$crate::__Vec<u8>, $crate::__String>> {
                    <$ty as $crate::KernelWithInit>::map_batch(inputs)
                }
            }
            $crate::with_init_bindings::__export_batch_kernel_with_init!(
                __WpoolKernel with_types_in $crate::with_init_bindings
            );
        };
    };
}

/// Exports a type implementing [`Reducer`] as the component's `reduce`
/// (world `reducer`).
#[macro_export]
macro_rules! export_reducer {
    ($ty:ident) => {
        $crate::reducer_bindings::__export_reducer!($ty with_types_in $crate::reducer_bindings);
    };
}

#[doc(hidden)]
pub use alloc::string::String as __String;
#[doc(hidden)]
pub use alloc::vec::Vec as __Vec;

/// `bytes` as lossy UTF-8, quoted (Rust `{:?}` style), cut after `max_chars`
/// characters with `...`: for error messages that show a bad input.
pub fn quote(bytes: &[u8], max_chars: usize) -> alloc::string::String {
    let text = alloc::string::String::from_utf8_lossy(bytes);
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => alloc::format!("{:?}...", &text[..end]),
        None => alloc::format!("{text:?}"),
    }
}
