//! The one shape of netlab's global BPF functions.
//!
//! A global function (`#[unsafe(no_mangle)] #[inline(never)] pub extern "C"`,
//! linkage `global` in BTF) is verified once, on its own, where an inlined
//! one is walked again on every path that reaches it: that is what keeps
//! the NAT programs' verification in milliseconds. What the verifier
//! allows at such a boundary shapes every one of them:
//!
//! - arguments are integers, the context, and pointers to `#[repr(C)]`
//!   values (which the function null-checks, as the verifier requires);
//! - the result is a plain integer code. The verifier takes it for any
//!   value; LLVM, which sees the body, knows better and drops checks the
//!   verifier needs (a bounds check on a returned index), so callers read
//!   the code through `black_box`: with [`returned`], or a [`codes!`]
//!   enum's `decode`.
//!
//! [`function!`] writes the attributes; each function sits in the module of
//! its concern, behind an inline wrapper that turns the code back into a
//! Rust type.

/// Defines a global BPF function (see the module's documentation).
macro_rules! function {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $name($($arg: $ty),*) -> $ret $body
    };
}

/// Defines the codes a global BPF function returns, with `decode`, which
/// reads one through `black_box`.
macro_rules! codes {
    ($(#[$meta:meta])* enum $name:ident { $($variant:ident = $value:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        enum $name {
            $($variant = $value),*
        }

        impl $name {
            /// The code a global function returned (through `black_box`).
            #[inline(always)]
            fn decode(code: u32) -> Option<$name> {
                match $crate::global::returned(code) {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use {codes, function};

/// A global function's result, as the verifier sees it: any value.
#[inline(always)]
pub fn returned<T>(code: T) -> T {
    core::hint::black_box(code)
}
