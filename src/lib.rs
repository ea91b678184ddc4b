//! exchange-sync: keeps mail flowing from Microsoft Exchange into a store that people analyse.
//!
//! Data flow: `config` → `sync::scheduler` (one thread: which folders are due) → `sync::fetcher`
//! pool (list since the watermark, fetch MIME in batches through `exchange`) → `sync::uploader`
//! pool (`sink::Sink::put`) → `sync::committer` (advances watermarks through the contiguous
//! prefix of acknowledged batches and persists them through the sink). See ARCHITECTURE.md.

pub mod allocator;
pub mod app;
pub mod auth;
pub mod bytescan;
pub mod cli;
pub mod config;
pub mod digest;
pub mod document;
pub mod durable;
pub mod exchange;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod secret;
pub mod server;
pub mod shard;
pub mod shutdown;
pub mod sink;
pub mod sync;
