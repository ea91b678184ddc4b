//! Per-folder sync state: the watermark and what the sink stores about it.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a folder's sync stands: every email received before `synced_until`, and those at
/// exactly `synced_until` whose ids are in `ids_at_synced_until`, are durably in the sink.
///
/// Exchange reports received times to the second, so many emails share one; keeping the ids
/// at the watermark's second lets the next listing use `>=` without re-copying them and
/// without losing one that arrived later in that same second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub synced_until: OffsetDateTime,
    pub ids_at_synced_until: HashSet<String>,
}

impl Cursor {
    pub fn starting_at(t: OffsetDateTime) -> Self {
        Cursor {
            synced_until: t,
            ids_at_synced_until: HashSet::new(),
        }
    }

    /// Moves past items now durably stored, given oldest first.
    pub fn advance<'a>(&mut self, stored: impl IntoIterator<Item = (OffsetDateTime, &'a str)>) {
        for (received, id) in stored {
            if received > self.synced_until {
                self.synced_until = received;
                self.ids_at_synced_until.clear();
            }
            if received == self.synced_until {
                self.ids_at_synced_until.insert(id.to_owned());
            }
        }
    }
}

/// Everything persisted about one mailbox (in one bucket).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MailboxState {
    /// Format version, for future migrations.
    pub version: u32,
    pub mailbox: String,
    /// By Exchange folder id.
    pub folders: BTreeMap<String, FolderState>,
}

pub const STATE_VERSION: u32 = 1;

/// Persisted state of one folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderState {
    /// Display-name path when last synced (folders can be renamed; the id stays).
    pub path: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub synced_until: OffsetDateTime,
    /// Sorted, so the file is stable.
    pub ids_at_synced_until: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_synced_at: Option<OffsetDateTime>,
    /// `ok` or `error`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl FolderState {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            synced_until: self.synced_until,
            ids_at_synced_until: self.ids_at_synced_until.iter().cloned().collect(),
        }
    }

    pub fn set_cursor(&mut self, cursor: &Cursor) {
        self.synced_until = cursor.synced_until;
        let mut ids: Vec<String> = cursor.ids_at_synced_until.iter().cloned().collect();
        ids.sort();
        self.ids_at_synced_until = ids;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn advance_keeps_ids_of_the_newest_second() {
        let t0 = datetime!(2024-01-01 0:00:00 UTC);
        let t1 = datetime!(2024-01-01 0:00:01 UTC);
        let mut cursor = Cursor::starting_at(t0);
        cursor.advance([(t0, "a"), (t1, "b")]);
        assert_eq!(cursor.synced_until, t1);
        assert_eq!(cursor.ids_at_synced_until, HashSet::from(["b".to_owned()]));
        cursor.advance([(t1, "c")]);
        assert_eq!(cursor.ids_at_synced_until.len(), 2);
        // An older item (listed before a restart) never moves the watermark back.
        cursor.advance([(t0, "z")]);
        assert_eq!(cursor.synced_until, t1);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut folder = FolderState {
            path: vec!["Inbox".into()],
            synced_until: datetime!(2024-01-01 0:00:00 UTC),
            ids_at_synced_until: vec![],
            last_synced_at: None,
            status: "ok".into(),
            last_error: None,
        };
        let mut cursor = folder.cursor();
        cursor.advance([(datetime!(2024-01-02 0:00:00 UTC), "x")]);
        folder.set_cursor(&cursor);
        let state = MailboxState {
            version: STATE_VERSION,
            mailbox: "a@b.c".into(),
            folders: BTreeMap::from([("f1".to_owned(), folder)]),
        };
        let json = serde_json::to_string(&state).unwrap();
        assert!(
            json.contains("\"synced_until\":\"2024-01-02T00:00:00Z\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<MailboxState>(&json).unwrap(), state);
    }
}
