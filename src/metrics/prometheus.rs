//! `/metrics` in the Prometheus text exposition format (version 0.0.4): HELP and TYPE lines
//! per family, label values escaped, histograms with cumulative buckets. Also a strict line
//! validator, so tests can check what we serve without a Prometheus server.

use std::fmt::Write as _;
use std::time::Instant;

use time::OffsetDateTime;

use super::{HTTP_DURATION_BUCKETS, Metrics, Shown, folder_label};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes families and samples.
#[derive(Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// Starts a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label_value(value));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn unix_seconds(t: OffsetDateTime) -> f64 {
    t.unix_timestamp() as f64 + f64::from(t.nanosecond()) / 1e9
}

impl Metrics {
    /// Everything, in the text exposition format.
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_at(OffsetDateTime::now_utc(), Instant::now())
    }

    pub(crate) fn render_prometheus_at(&self, now: OffsetDateTime, instant: Instant) -> String {
        let ready = self.is_ready();
        let retries = self.retries();
        let state = self.lock();
        let mut w = Writer::default();

        w.family(
            "exchange_sync_build_info",
            "gauge",
            "The running build: version and target; the value is always 1.",
        );
        let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
        w.sample(
            "exchange_sync_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("target", &target)],
            1.0,
        );
        w.family(
            "exchange_sync_start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
        );
        w.sample(
            "exchange_sync_start_time_seconds",
            &[],
            unix_seconds(state.started_at),
        );
        w.family(
            "exchange_sync_ready",
            "gauge",
            "1 when /readyz answers 200 (configuration loaded, sink reached, syncing), else 0.",
        );
        w.sample("exchange_sync_ready", &[], if ready { 1.0 } else { 0.0 });
        w.family(
            "exchange_sync_restarts_total",
            "counter",
            "In-process restarts after a fatal error (--restart-on-unrecoverable-errors).",
        );
        w.sample("exchange_sync_restarts_total", &[], state.restarts as f64);
        w.family(
            "exchange_sync_config_reloads_total",
            "counter",
            "Pipeline restarts because the configuration changed.",
        );
        w.sample(
            "exchange_sync_config_reloads_total",
            &[],
            state.reloads as f64,
        );

        type Pick = fn(&super::MailboxTotals) -> u64;
        let per_mailbox: [(&str, &str, Pick); 5] = [
            (
                "exchange_sync_emails_synced_total",
                "Emails stored in the sink, by mailbox.",
                |t| t.emails,
            ),
            (
                "exchange_sync_bytes_synced_total",
                "Bytes of email documents stored in the sink, by mailbox.",
                |t| t.bytes,
            ),
            (
                "exchange_sync_batches_uploaded_total",
                "Batches stored in the sink, by mailbox.",
                |t| t.batches,
            ),
            (
                "exchange_sync_emails_skipped_total",
                "Emails the server could not serve (deleted meanwhile, corrupt), logged and \
                 passed, by mailbox.",
                |t| t.skipped,
            ),
            (
                "exchange_sync_emails_rejected_total",
                "Emails the sink refused for good, logged, by mailbox.",
                |t| t.rejected,
            ),
        ];
        for (name, help, pick) in per_mailbox {
            w.family(name, "counter", help);
            for (mailbox, totals) in &state.totals {
                w.sample(name, &[("mailbox", mailbox)], pick(totals) as f64);
            }
        }
        w.family(
            "exchange_sync_folder_job_failures_total",
            "counter",
            "Folder passes and mailbox discoveries that failed after their retries.",
        );
        w.sample(
            "exchange_sync_folder_job_failures_total",
            &[],
            Self::get(&self.job_failures) as f64,
        );
        w.family(
            "exchange_sync_upload_failures_total",
            "counter",
            "Attempts to store a batch that failed (retried or given up).",
        );
        w.sample(
            "exchange_sync_upload_failures_total",
            &[],
            Self::get(&self.upload_failures) as f64,
        );
        w.family(
            "exchange_sync_retries_total",
            "counter",
            "Requests retried, by reason (an EWS error code, transport, http, sink).",
        );
        for (reason, count) in &retries {
            w.sample(
                "exchange_sync_retries_total",
                &[("reason", reason)],
                *count as f64,
            );
        }
        w.family(
            "exchange_sync_throttle_waits_total",
            "counter",
            "Pauses a server demanded (ErrorServerBusy BackOffMilliseconds, Retry-After), by reason.",
        );
        for (reason, (count, _)) in &state.throttle {
            w.sample(
                "exchange_sync_throttle_waits_total",
                &[("reason", reason)],
                *count as f64,
            );
        }
        w.family(
            "exchange_sync_throttle_wait_seconds_total",
            "counter",
            "Seconds of pauses a server demanded, by reason.",
        );
        for (reason, (_, seconds)) in &state.throttle {
            w.sample(
                "exchange_sync_throttle_wait_seconds_total",
                &[("reason", reason)],
                *seconds,
            );
        }
        w.family(
            "exchange_sync_errors_total",
            "counter",
            "Errors by stage (discovery, folder, email, upload, state) and kind.",
        );
        for ((stage, kind), count) in &state.errors {
            w.sample(
                "exchange_sync_errors_total",
                &[("stage", stage), ("kind", kind)],
                *count as f64,
            );
        }

        w.family(
            "exchange_sync_mailbox_last_success_timestamp_seconds",
            "gauge",
            "When a sync cycle of the mailbox last ended with every folder copied, in seconds \
             since the Unix epoch (absent until the first such cycle of this process).",
        );
        for (mailbox, entry) in &state.mailboxes {
            if let Some(at) = entry.last_success_at {
                w.sample(
                    "exchange_sync_mailbox_last_success_timestamp_seconds",
                    &[("mailbox", mailbox)],
                    unix_seconds(at),
                );
            }
        }
        w.family(
            "exchange_sync_mailbox_error",
            "gauge",
            "1 when the mailbox's last discovery failed or one of its folders is in error, else 0.",
        );
        for (mailbox, entry) in &state.mailboxes {
            let error =
                entry.status == "error" || entry.folders().shown().any(|f| f.status() == "error");
            w.sample(
                "exchange_sync_mailbox_error",
                &[("mailbox", mailbox)],
                if error { 1.0 } else { 0.0 },
            );
        }
        w.family(
            "exchange_sync_folder_backlog_emails",
            "gauge",
            "Emails listed in the folder and not stored yet; a lower bound while the folder has \
             more than emails_per_folder waiting.",
        );
        for (mailbox, entry) in &state.mailboxes {
            for folder in entry.folders().shown() {
                let label = folder_label(folder.path());
                w.sample(
                    "exchange_sync_folder_backlog_emails",
                    &[("mailbox", mailbox), ("folder", &label)],
                    folder.backlog() as f64,
                );
            }
        }
        w.family(
            "exchange_sync_folder_lag_seconds",
            "gauge",
            "While emails wait in the folder: seconds since the received time up to which it \
             is stored (its watermark); 0 when it is caught up.",
        );
        for (mailbox, entry) in &state.mailboxes {
            for folder in entry.folders().shown() {
                let behind = folder.backlog() > 0 || folder.more_to_list();
                let lag = if behind {
                    (now - folder.synced_until()).as_seconds_f64().max(0.0)
                } else {
                    0.0
                };
                let label = folder_label(folder.path());
                w.sample(
                    "exchange_sync_folder_lag_seconds",
                    &[("mailbox", mailbox), ("folder", &label)],
                    lag,
                );
            }
        }
        w.family(
            "exchange_sync_folder_watermark_timestamp_seconds",
            "gauge",
            "The received time up to which the folder is stored, in seconds since the Unix epoch.",
        );
        for (mailbox, entry) in &state.mailboxes {
            for folder in entry.folders().shown() {
                let label = folder_label(folder.path());
                w.sample(
                    "exchange_sync_folder_watermark_timestamp_seconds",
                    &[("mailbox", mailbox), ("folder", &label)],
                    unix_seconds(folder.synced_until()),
                );
            }
        }
        w.family(
            "exchange_sync_mailbox_next_poll_seconds",
            "gauge",
            "Seconds until the mailbox's next sync cycle is due (0 when due or running).",
        );
        for (mailbox, entry) in &state.mailboxes {
            if let Some(at) = entry.next_poll {
                w.sample(
                    "exchange_sync_mailbox_next_poll_seconds",
                    &[("mailbox", mailbox)],
                    at.saturating_duration_since(instant).as_secs_f64(),
                );
            }
        }

        w.family(
            "exchange_sync_http_request_duration_seconds",
            "histogram",
            "HTTP request durations by endpoint class (ews, graph, token, reinfer, azure_blob).",
        );
        for (endpoint, histogram) in &state.http {
            let mut cumulative = 0;
            for (bound, count) in HTTP_DURATION_BUCKETS.iter().zip(&histogram.counts) {
                cumulative += count;
                w.sample(
                    "exchange_sync_http_request_duration_seconds_bucket",
                    &[("endpoint", endpoint), ("le", &format_value(*bound))],
                    cumulative as f64,
                );
            }
            w.sample(
                "exchange_sync_http_request_duration_seconds_bucket",
                &[("endpoint", endpoint), ("le", "+Inf")],
                histogram.count as f64,
            );
            w.sample(
                "exchange_sync_http_request_duration_seconds_sum",
                &[("endpoint", endpoint)],
                histogram.sum,
            );
            w.sample(
                "exchange_sync_http_request_duration_seconds_count",
                &[("endpoint", endpoint)],
                histogram.count as f64,
            );
        }
        w.finish()
    }
}

/// Checks `text` against the exposition format strictly: every line a HELP or TYPE comment
/// or a sample; names and labels well formed; label values correctly escaped; each sample
/// after its family's TYPE; no family declared twice; histogram series named as such.
/// Returns the number of samples.
pub fn validate(text: &str) -> Result<usize, String> {
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut samples = 0;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (number, line) in text.lines().enumerate() {
        let fail = |why: &str| Err(format!("line {}: {why}: {line:?}", number + 1));
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_metric_name(name) {
                return fail("bad metric name in a comment");
            }
            match keyword {
                "HELP" => {
                    let help = parts.next().unwrap_or("");
                    if has_bad_escape(help, false) {
                        return fail("bad escape in HELP");
                    }
                }
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return fail("unknown TYPE");
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return fail("family declared twice");
                    }
                }
                _ => return fail("unknown comment keyword"),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return fail("empty line or bare comment");
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("line {}: no value: {line:?}", number + 1))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return fail("bad metric name");
        }
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let end = match parse_labels(after) {
                Ok(end) => end,
                Err(why) => return fail(&why),
            };
            rest = &after[end..];
        }
        let Some(value) = rest.strip_prefix(' ') else {
            return fail("no space before the value");
        };
        let value = value.split(' ').next().unwrap_or("");
        if !matches!(value, "+Inf" | "-Inf" | "NaN") && value.parse::<f64>().is_err() {
            return fail("bad value");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        match types.get(family) {
            None => return fail("sample before its TYPE line"),
            Some(kind) if kind == "histogram" && family == name => {
                return fail("histogram sample without _bucket/_sum/_count");
            }
            Some(_) => {}
        }
        samples += 1;
    }
    Ok(samples)
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `text` has a backslash not followed by an allowed escape (with `quotes`, `\"`
/// is allowed too).
fn has_bad_escape(text: &str, quotes: bool) -> bool {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\' | 'n') => {}
                Some('"') if quotes => {}
                _ => return true,
            }
        }
    }
    false
}

/// Parses `name="value",...}` and returns the index just after the `}`.
fn parse_labels(text: &str) -> Result<usize, String> {
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut offset = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        if bytes.get(i) == Some(&'}') {
            return Ok(offset + 1);
        }
        let start = i;
        while bytes.get(i).is_some_and(|c| *c != '=') {
            i += 1;
        }
        let name: String = bytes[start..i].iter().collect();
        if !is_label_name(&name) {
            return Err(format!("bad label name {name:?}"));
        }
        if !seen.insert(name.clone()) {
            return Err(format!("label {name} twice"));
        }
        if bytes.get(i + 1) != Some(&'"') {
            return Err("label value not quoted".into());
        }
        i += 2;
        loop {
            match bytes.get(i) {
                None => return Err("unterminated label value".into()),
                Some('"') => break,
                Some('\\') => {
                    if !matches!(bytes.get(i + 1), Some('\\' | '"' | 'n')) {
                        return Err("bad escape in a label value".into());
                    }
                    i += 2;
                }
                Some('\n') => return Err("raw newline in a label value".into()),
                Some(_) => i += 1,
            }
        }
        i += 1;
        match bytes.get(i) {
            Some(',') => i += 1,
            Some('}') => {}
            _ => return Err("expected , or } after a label".into()),
        }
        offset = bytes[..i].iter().map(|c| c.len_utf8()).sum();
        if bytes.get(i) == Some(&'}') {
            return Ok(offset + 1);
        }
    }
}
