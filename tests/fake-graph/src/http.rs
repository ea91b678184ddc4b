//! The shared test HTTP server (tests/fake-http), under the name this crate's modules use.

pub use fake_http::*;
