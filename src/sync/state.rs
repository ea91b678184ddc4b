//! Per-folder sync state: the watermark and what the sink stores about it.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

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

/// How long after a folder change time was first seen a listing must begin to be sure it saw
/// every change stamped with that time: Exchange reports the time to the second, so a second
/// change within the same second leaves it as it was. One second more for good measure.
pub const CHANGE_TIME_RESOLUTION: Duration = Duration::from_secs(2);

/// What we know about a folder's contents relative to the server's change time of the folder
/// ([`crate::exchange::FolderInfo::changed_at`]). Kept in the folder table, in memory only:
/// after a restart every folder is listed once more.
///
/// Listing a folder whose change time has not moved since a complete listing finds nothing
/// new, but only if that listing began after every change stamped with that time: hence a
/// time is trusted only once a complete listing queued [`CHANGE_TIME_RESOLUTION`] after the
/// time was first seen covers it, which usually means one extra listing per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangeMark {
    /// No change time known (none reported, or never listed since the start).
    #[default]
    Unknown,
    /// The folder's change time was `changed_at` when first seen at `seen_at`; a listing is
    /// queued, which covers that time if `confirming` (it was queued late enough).
    Seen {
        changed_at: OffsetDateTime,
        seen_at: Instant,
        confirming: bool,
    },
    /// A complete listing covers every change up to and including `changed_at`.
    Covered { changed_at: OffsetDateTime },
}

impl ChangeMark {
    /// True when a folder whose change time is now `changed_at` needs no listing.
    pub fn is_covered(self, changed_at: Option<OffsetDateTime>) -> bool {
        matches!((self, changed_at), (ChangeMark::Covered { changed_at: covered }, Some(now)) if covered == now)
    }

    /// The mark for a listing queued at `now` while the folder's change time is `changed_at`;
    /// `settled`: the server vouched that no later change can carry that time
    /// ([`crate::exchange::FolderInfo::changed_at_settled`]), so this listing covers it.
    #[must_use]
    pub fn queued(
        self,
        changed_at: Option<OffsetDateTime>,
        settled: bool,
        now: Instant,
    ) -> ChangeMark {
        let Some(changed_at) = changed_at else {
            return ChangeMark::Unknown;
        };
        let seen_at = match self {
            ChangeMark::Seen {
                changed_at: seen,
                seen_at,
                ..
            } if seen == changed_at => seen_at,
            _ => now,
        };
        ChangeMark::Seen {
            changed_at,
            seen_at,
            confirming: settled || now >= seen_at + CHANGE_TIME_RESOLUTION,
        }
    }

    /// The mark once the listing it was queued with completed and everything it found is
    /// stored.
    #[must_use]
    pub fn listed_completely(self) -> ChangeMark {
        match self {
            ChangeMark::Seen {
                changed_at,
                confirming: true,
                ..
            } => ChangeMark::Covered { changed_at },
            other => other,
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
    fn a_change_time_is_trusted_only_after_a_listing_that_began_later() {
        let t = datetime!(2024-01-01 0:00:00 UTC);
        let later = datetime!(2024-01-01 0:00:01 UTC);
        let seen = Instant::now();
        // No time reported: never skipped.
        let mark = ChangeMark::Unknown.queued(None, false, seen);
        assert_eq!(mark, ChangeMark::Unknown);
        assert!(!mark.listed_completely().is_covered(None));
        // First listing right after the time was seen: another change in the same second
        // may have come after it began.
        let mark = ChangeMark::Unknown
            .queued(Some(t), false, seen)
            .listed_completely();
        assert!(!mark.is_covered(Some(t)));
        // The next listing, queued later, keeps the first sighting and covers the time.
        let mark = mark.queued(Some(t), false, seen + CHANGE_TIME_RESOLUTION);
        let covered = mark.listed_completely();
        assert_eq!(covered, ChangeMark::Covered { changed_at: t });
        assert!(covered.is_covered(Some(t)));
        // A new time or a missing one means a listing; the new time starts over.
        assert!(!covered.is_covered(Some(later)));
        assert!(!covered.is_covered(None));
        let mark = covered.queued(Some(later), false, seen + CHANGE_TIME_RESOLUTION * 2);
        assert!(!mark.listed_completely().is_covered(Some(later)));
        // Queued again with the same time: the first sighting counts.
        let soon = seen + CHANGE_TIME_RESOLUTION * 2 + Duration::from_millis(500);
        let again = mark.queued(Some(later), false, soon);
        assert!(!again.listed_completely().is_covered(Some(later)));
        let again = again.queued(Some(later), false, seen + CHANGE_TIME_RESOLUTION * 3);
        assert!(again.listed_completely().is_covered(Some(later)));
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
