//! Log set-up: `--debug-level` mapped to levels, UTC timestamps, to stderr.

use log::LevelFilter;
use simplelog::{CombinedLogger, ConfigBuilder, SharedLogger, WriteLogger};

/// 0: info and above; 1: our own debug lines too (the default); 2: everything, including one
/// trace line per HTTP request (`http::log_exchange`: method, redacted URL, status, duration,
/// bytes, allow-listed response headers) and the HTTP stack's debug lines, except ureq's: its
/// debug output includes request headers, and `Authorization` must never reach a log.
///
/// Every line about a mailbox names it as `mailbox=ADDRESS`, so one mailbox's story can be
/// followed with grep.
pub fn init(debug_level: u8) {
    let (ours, others) = match debug_level {
        0 => (LevelFilter::Info, LevelFilter::Warn),
        1 => (LevelFilter::Debug, LevelFilter::Warn),
        _ => (LevelFilter::Trace, LevelFilter::Debug),
    };
    let base = || {
        let mut builder = ConfigBuilder::new();
        builder
            .set_time_format_rfc3339()
            .set_thread_level(LevelFilter::Off)
            .set_target_level(LevelFilter::Off)
            .set_location_level(LevelFilter::Off);
        builder
    };
    let own = base().add_filter_allow_str("exchange_sync").build();
    let foreign = base()
        .add_filter_ignore_str("exchange_sync")
        .add_filter_ignore_str("ureq")
        .build();
    let foreign_http = base().add_filter_allow_str("ureq").build();
    let loggers: Vec<Box<dyn SharedLogger>> = vec![
        WriteLogger::new(ours, own, std::io::stderr()),
        WriteLogger::new(others, foreign, std::io::stderr()),
        WriteLogger::new(
            others.min(LevelFilter::Info),
            foreign_http,
            std::io::stderr(),
        ),
    ];
    // A second init (tests, in-process restart) keeps the first logger.
    let _ = CombinedLogger::init(loggers);
}
