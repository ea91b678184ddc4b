//! `/status`: the state of every mailbox and folder of the current run as JSON, for people
//! and scripts (watermarks, errors, next poll), without secrets.

use std::time::Instant;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Metrics, Note, Phase, Shown, folder_label};

fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map(Value::String).unwrap_or(Value::Null)
}

fn note(note: Option<&Note>) -> Value {
    match note {
        Some(note) => json!({"at": rfc3339(note.at), "message": note.message}),
        None => Value::Null,
    }
}

/// An `Instant` as wall-clock time, given the current pair of both clocks.
fn wall(at: Instant, now: OffsetDateTime, instant: Instant) -> OffsetDateTime {
    match at.checked_duration_since(instant) {
        Some(ahead) => now + ahead,
        None => now - instant.saturating_duration_since(at),
    }
}

impl Metrics {
    /// The `/status` document.
    pub fn status_json(&self) -> Value {
        let (now, instant) = (OffsetDateTime::now_utc(), Instant::now());
        let ready = self.readiness();
        let retries = self.retries();
        let state = self.lock();
        let phase = match &state.phase {
            Phase::Starting => json!({"state": "starting"}),
            Phase::Running => json!({"state": "running"}),
            Phase::Stopped => json!({"state": "stopped"}),
            Phase::Restarting { at } => json!({
                "state": "restarting",
                "restart_at": rfc3339(wall(*at, now, instant)),
            }),
        };
        let mailboxes: Vec<Value> = state
            .mailboxes
            .iter()
            .map(|(address, mailbox)| {
                let folders: Vec<Value> = mailbox
                    .folders()
                    .shown()
                    .map(|folder| {
                        json!({
                            "id": folder.id(),
                            "path": folder.path().collect::<Vec<_>>(),
                            "label": folder_label(folder.path()),
                            "status": folder.status(),
                            "watermark": rfc3339(folder.synced_until()),
                            "ids_at_watermark": folder.ids_at_synced_until(),
                            "last_synced_at": folder.last_synced().map_or(Value::Null, rfc3339),
                            "last_error": note(folder.last_error_note()),
                            "backlog_emails": folder.backlog(),
                            "more_to_list": folder.more_to_list(),
                        })
                    })
                    .collect();
                let totals = state.totals.get(address).cloned().unwrap_or_default();
                json!({
                    "address": address,
                    "bucket": mailbox.bucket,
                    "status": mailbox.status,
                    "last_error": note(mailbox.last_error.as_ref()),
                    "cycle_started_at": mailbox.cycle_started_at.map_or(Value::Null, rfc3339),
                    "last_success_at": mailbox.last_success_at.map_or(Value::Null, rfc3339),
                    "next_poll_at": mailbox
                        .next_poll
                        .map_or(Value::Null, |at| rfc3339(wall(at, now, instant))),
                    "emails_synced": totals.emails,
                    "bytes_synced": totals.bytes,
                    "emails_skipped": totals.skipped,
                    "emails_rejected": totals.rejected,
                    "folders": folders,
                })
            })
            .collect();
        let mut document = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": rfc3339(state.started_at),
            "now": rfc3339(now),
            "ready": ready.ok,
            "ready_reasons": ready.lines,
            "sink": state.sink,
            "config": state.config_origin,
            "shard": state.shard.map(|(index, total)| json!({"index": index, "total": total})),
            "restarts": state.restarts,
            "last_fatal_error": note(state.last_fatal.as_ref()),
            "retries": retries,
            "mailboxes": mailboxes,
        });
        if let (Some(target), Value::Object(phase)) = (document.as_object_mut(), phase) {
            target.extend(phase);
        }
        document
    }
}
