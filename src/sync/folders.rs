//! The folder table: everything the process keeps about a folder between polls, one record per
//! folder. The committer writes the sync state in it (and saves it), the scheduler starts each
//! folder pass from the cursor in it, and the metrics keep there what `/status` and `/metrics`
//! show about the folder.
//!
//! A daemon with thousands of mailboxes keeps tens of thousands of folders between polls, so
//! each folder is held once, in one sorted `Vec` per mailbox, with its id and display-name path
//! packed into one heap block, rather than in a map per pipeline stage with its own copies of
//! the id and path (BENCHMARKS.md, scenario f).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use super::state::{ChangeMark, Cursor, FolderState, MailboxState, STATE_VERSION};
use crate::exchange::FolderInfo;
use crate::metrics::FolderView;

/// Every mailbox's folders, by mailbox index (as in `Shared::mailboxes`).
#[derive(Debug, Default)]
pub struct FolderTable {
    mailboxes: Box<[Mutex<MailboxFolders>]>,
}

impl FolderTable {
    /// `mailboxes[i]` belongs to mailbox `i` of the run.
    pub fn new(mailboxes: Vec<MailboxFolders>) -> FolderTable {
        FolderTable {
            mailboxes: mailboxes.into_iter().map(Mutex::new).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.mailboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mailboxes.is_empty()
    }

    /// One mailbox's folders. Hold the guard briefly, and take no other lock (the metrics')
    /// while holding it: the metrics take this one while holding theirs.
    pub fn lock(&self, mailbox: usize) -> MutexGuard<'_, MailboxFolders> {
        self.mailboxes[mailbox]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// What the scheduler reads: per mailbox, the cursor each folder pass starts from.
    pub fn cursors(self: &Arc<Self>) -> Vec<MailboxCursors> {
        (0..self.len())
            .map(|mailbox| MailboxCursors {
                table: self.clone(),
                mailbox,
            })
            .collect()
    }
}

/// The cursors of one mailbox's folders, as the committer last recorded them.
#[derive(Debug)]
pub struct MailboxCursors {
    table: Arc<FolderTable>,
    mailbox: usize,
}

impl MailboxCursors {
    /// Where the next pass over `folder_id` starts: its recorded cursor, or `start()` for a
    /// folder without sync state yet.
    pub fn get_or(&self, folder_id: &str, start: impl FnOnce() -> Cursor) -> Cursor {
        let recorded = self
            .table
            .lock(self.mailbox)
            .get(folder_id)
            .filter(|folder| folder.in_state)
            .map(Folder::cursor);
        recorded.unwrap_or_else(start)
    }

    /// What a complete listing of `folder_id` is known to cover.
    pub fn change_mark(&self, folder_id: &str) -> ChangeMark {
        let folders = self.table.lock(self.mailbox);
        folders
            .get(folder_id)
            .map_or_else(ChangeMark::default, |f| f.change)
    }

    /// Sets `folder`'s change mark, giving it a record (starting at `cursor`) if it has none.
    pub fn set_change_mark(&self, folder: &FolderInfo, cursor: &Cursor, mark: ChangeMark) {
        let mut folders = self.table.lock(self.mailbox);
        folders.get_or_insert(folder, cursor).change = mark;
    }

    /// Applies `update` to the change mark of `folder_id`, if it has a record.
    pub fn update_change_mark(
        &self,
        folder_id: &str,
        update: impl FnOnce(ChangeMark) -> ChangeMark,
    ) {
        let mut folders = self.table.lock(self.mailbox);
        if let Some(folder) = folders.get_mut(folder_id) {
            folder.change = update(folder.change);
        }
    }
}

/// One mailbox's folders, sorted by id.
#[derive(Debug, Default)]
pub struct MailboxFolders {
    /// The mailbox as its saved state names it (sinks key the state by it).
    mailbox: String,
    folders: Vec<Folder>,
}

impl MailboxFolders {
    /// The table of a mailbox with this loaded (or fresh) state.
    pub fn from_state(state: MailboxState) -> MailboxFolders {
        MailboxFolders {
            mailbox: state.mailbox,
            // A `BTreeMap` iterates in id order.
            folders: state
                .folders
                .into_iter()
                .map(|(id, folder)| Folder::from_state(&id, folder))
                .collect(),
        }
    }

    /// The state to save: every folder the committer has recorded, whether or not it is still
    /// discovered.
    pub fn to_state(&self) -> MailboxState {
        MailboxState {
            version: STATE_VERSION,
            mailbox: self.mailbox.clone(),
            folders: self
                .folders
                .iter()
                .filter(|folder| folder.in_state)
                .map(|folder| (folder.id().to_owned(), folder.to_state()))
                .collect(),
        }
    }

    fn position(&self, id: &str) -> Result<usize, usize> {
        self.folders.binary_search_by(|folder| folder.id().cmp(id))
    }

    pub fn get(&self, id: &str) -> Option<&Folder> {
        self.position(id).ok().map(|i| &self.folders[i])
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Folder> {
        self.position(id).ok().map(|i| &mut self.folders[i])
    }

    /// The folder's record; a new one, outside the sync state and starting at `cursor`, if the
    /// folder has none. Its path becomes `folder.path`.
    pub fn get_or_insert(&mut self, folder: &FolderInfo, cursor: &Cursor) -> &mut Folder {
        let i = match self.position(&folder.id) {
            Ok(i) => i,
            Err(i) => {
                self.folders.insert(i, Folder::new(folder, cursor));
                i
            }
        };
        let record = &mut self.folders[i];
        record.set_path(&folder.path);
        record
    }

    /// The folder's record in the sync state (the committer's): added to the state, starting
    /// at `start` with no ids and status `ok`, if not in it yet. Its path becomes `folder.path`.
    pub fn record(&mut self, folder: &FolderInfo, start: OffsetDateTime) -> &mut Folder {
        let record = self.get_or_insert(folder, &Cursor::starting_at(start));
        if !record.in_state {
            record.in_state = true;
            record.synced_until = start;
            record.ids_at_synced_until = Packed::default();
            record.last_synced_at = None;
            record.outcome = None;
        }
        record
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Folder> {
        self.folders.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Folder> {
        self.folders.iter_mut()
    }

    /// Drops records outside the sync state for which `keep` is false (folders of the saved
    /// state stay), and gives back the room insertions left.
    pub fn retain_unsaved(&mut self, mut keep: impl FnMut(&Folder) -> bool) {
        self.folders
            .retain(|folder| folder.in_state || keep(folder));
        self.folders.shrink_to_fit();
    }
}

/// A folder's saved `status` and `last_error` when they are not the usual `ok` without an
/// error (which takes no heap block).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: Box<str>,
    last_error: Option<Box<str>>,
}

impl Outcome {
    fn new(status: &str, last_error: Option<&str>) -> Option<Box<Outcome>> {
        (status != "ok" || last_error.is_some()).then(|| {
            Box::new(Outcome {
                status: status.into(),
                last_error: last_error.map(Box::from),
            })
        })
    }
}

/// One folder: its id and path, its sync state (as in [`FolderState`]), and its `/status` view.
#[derive(Debug)]
pub struct Folder {
    /// The id, then the display-name path.
    name: Packed,
    /// Whether the folder is in the sync state (the committer has recorded it): only those are
    /// saved and have a cursor. A folder queued for the first time has a record (for `/status`)
    /// before its first pass ends.
    in_state: bool,
    synced_until: OffsetDateTime,
    /// In the order saved (sorted when the committer sets them).
    ids_at_synced_until: Packed,
    pub last_synced_at: Option<OffsetDateTime>,
    /// `status` and `last_error`; none for `ok` without an error.
    outcome: Option<Box<Outcome>>,
    /// What `/status` and `/metrics` show; only the metrics write it.
    pub view: FolderView,
    /// Whether the folder needs listing (see [`ChangeMark`]); only the scheduler writes it.
    change: ChangeMark,
}

impl Folder {
    fn new(folder: &FolderInfo, cursor: &Cursor) -> Folder {
        Folder {
            name: Packed::new(
                std::iter::once(&*folder.id).chain(folder.path.iter().map(String::as_str)),
            ),
            in_state: false,
            synced_until: cursor.synced_until,
            ids_at_synced_until: sorted_ids(cursor),
            last_synced_at: None,
            outcome: None,
            view: FolderView::default(),
            change: ChangeMark::Unknown,
        }
    }

    fn from_state(id: &str, state: FolderState) -> Folder {
        let FolderState {
            path,
            synced_until,
            ids_at_synced_until,
            last_synced_at,
            status,
            last_error,
        } = state;
        Folder {
            name: Packed::new(std::iter::once(id).chain(path.iter().map(String::as_str))),
            in_state: true,
            synced_until,
            ids_at_synced_until: Packed::new(ids_at_synced_until.iter().map(String::as_str)),
            last_synced_at,
            outcome: Outcome::new(&status, last_error.as_deref()),
            view: FolderView::default(),
            change: ChangeMark::Unknown,
        }
    }

    fn to_state(&self) -> FolderState {
        FolderState {
            path: self.path().map(str::to_owned).collect(),
            synced_until: self.synced_until,
            ids_at_synced_until: self.ids_at_synced_until.iter().map(str::to_owned).collect(),
            last_synced_at: self.last_synced_at,
            status: self.outcome.as_ref().map_or("ok", |o| &o.status).to_owned(),
            last_error: self.last_error().map(str::to_owned),
        }
    }

    pub fn id(&self) -> &str {
        self.name.iter().next().unwrap_or_default()
    }

    /// The display names from the mailbox root.
    pub fn path(&self) -> impl Iterator<Item = &str> + Clone {
        self.name.iter().skip(1)
    }

    /// Renames the folder (its id stays).
    pub fn set_path(&mut self, path: &[String]) {
        if !self.path().eq(path.iter().map(String::as_str)) {
            let id = self.id().to_owned();
            self.name =
                Packed::new(std::iter::once(id.as_str()).chain(path.iter().map(String::as_str)));
        }
    }

    pub fn in_state(&self) -> bool {
        self.in_state
    }

    pub fn synced_until(&self) -> OffsetDateTime {
        self.synced_until
    }

    pub fn ids_at_synced_until(&self) -> usize {
        self.ids_at_synced_until.iter().count()
    }

    /// The saved status is `error`.
    pub fn failed(&self) -> bool {
        self.outcome.as_ref().is_some_and(|o| &*o.status == "error")
    }

    pub fn last_error(&self) -> Option<&str> {
        self.outcome.as_ref()?.last_error.as_deref()
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            synced_until: self.synced_until,
            ids_at_synced_until: self.ids_at_synced_until.iter().map(str::to_owned).collect(),
        }
    }

    /// As [`FolderState::set_cursor`]: the ids are kept sorted.
    pub fn set_cursor(&mut self, cursor: &Cursor) {
        self.synced_until = cursor.synced_until;
        self.ids_at_synced_until = sorted_ids(cursor);
    }

    /// Sets the outcome of the folder's last pass (status `ok` or `error`, and the error);
    /// returns whether the saved state changed.
    pub fn set_outcome(&mut self, error: Option<&str>) -> bool {
        let outcome = Outcome::new(if error.is_some() { "error" } else { "ok" }, error);
        if self.outcome == outcome {
            return false;
        }
        self.outcome = outcome;
        true
    }
}

/// The ids at a cursor's watermark, sorted (the order the state file keeps them in).
fn sorted_ids(cursor: &Cursor) -> Packed {
    let mut ids: Vec<&str> = cursor
        .ids_at_synced_until
        .iter()
        .map(String::as_str)
        .collect();
    ids.sort_unstable();
    Packed::new(ids.iter().copied())
}

/// Strings in one heap block: each as its length in bytes (decimal), `:`, then its text. A
/// folder's id and path cost one block instead of one per segment plus the `Vec`'s own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Packed(Box<str>);

impl Packed {
    fn new<'a>(items: impl IntoIterator<Item = &'a str> + Clone) -> Packed {
        let size = items
            .clone()
            .into_iter()
            .map(|item| item.len() + decimal_digits(item.len()) + 1)
            .sum();
        let mut packed = String::with_capacity(size);
        for item in items {
            let _ = write!(packed, "{}:{item}", item.len());
        }
        Packed(packed.into_boxed_str())
    }

    fn iter(&self) -> PackedIter<'_> {
        PackedIter(&self.0)
    }
}

fn decimal_digits(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

#[derive(Debug, Clone)]
struct PackedIter<'a>(&'a str);

impl<'a> Iterator for PackedIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        // The decimal length, by hand: this runs for every id comparison of a lookup.
        let digits = self.0.bytes().take_while(u8::is_ascii_digit).count();
        let len = self.0.as_bytes()[..digits]
            .iter()
            .fold(0usize, |len, digit| len * 10 + usize::from(digit - b'0'));
        let rest = self.0.get(digits..)?.strip_prefix(':')?;
        // `Packed::new` wrote the length of a whole `str`, so this is a char boundary.
        let (item, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use time::macros::datetime;

    fn info(id: &str, path: &[&str]) -> FolderInfo {
        FolderInfo {
            id: id.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
            changed_at: None,
            changed_at_settled: false,
        }
    }

    #[test]
    fn packed_strings_round_trip_whatever_they_contain() {
        let items = [
            "",
            "Inbox",
            "12:ab",
            "Q1/Q2 Reports",
            "日本語 ✓",
            "x".repeat(1000).leak(),
        ];
        let packed = Packed::new(items.iter().copied());
        assert_eq!(packed.iter().collect::<Vec<_>>(), items);
        assert_eq!(Packed::new([]).iter().count(), 0);
    }

    #[test]
    fn state_round_trips_through_the_table() {
        let folder = |path: &[&str], ids: &[&str], status: &str| FolderState {
            path: path.iter().map(|s| s.to_string()).collect(),
            synced_until: datetime!(2024-01-01 0:00:00 UTC),
            ids_at_synced_until: ids.iter().map(|s| s.to_string()).collect(),
            last_synced_at: Some(datetime!(2024-01-02 0:00:00 UTC)),
            status: status.into(),
            last_error: (status != "ok").then(|| "boom".into()),
        };
        let state = MailboxState {
            version: STATE_VERSION,
            mailbox: "A@b.c".into(),
            folders: BTreeMap::from([
                (
                    "f2".to_owned(),
                    folder(&["Inbox", "2:x"], &["b", "a"], "error"),
                ),
                ("f1".to_owned(), folder(&[], &[], "ok")),
                ("f3".to_owned(), folder(&["Odd"], &["z"], "paused")),
            ]),
        };
        let table = MailboxFolders::from_state(state.clone());
        assert_eq!(table.to_state(), state);
        assert_eq!(
            table.iter().map(Folder::id).collect::<Vec<_>>(),
            ["f1", "f2", "f3"]
        );
        assert!(table.get("f2").unwrap().failed());
    }

    #[test]
    fn only_recorded_folders_are_saved_and_have_a_cursor() {
        let start = datetime!(2024-01-01 0:00 UTC);
        let table = Arc::new(FolderTable::new(vec![MailboxFolders::default()]));
        let cursors = table.cursors();
        let queued = Cursor::starting_at(start);
        table.lock(0).get_or_insert(&info("b", &["Inbox"]), &queued);
        table.lock(0).get_or_insert(&info("a", &["Sent"]), &queued);
        assert!(table.lock(0).to_state().folders.is_empty());
        let later = datetime!(2030-01-01 0:00 UTC);
        let fallback = || Cursor::starting_at(later);
        assert_eq!(cursors[0].get_or("b", fallback).synced_until, later);

        let mut moved = Cursor::starting_at(start);
        moved.advance([
            (datetime!(2024-01-03 0:00 UTC), "y"),
            (datetime!(2024-01-03 0:00 UTC), "x"),
        ]);
        {
            let mut mailbox = table.lock(0);
            let folder = mailbox.record(&info("b", &["Inbox", "Renamed"]), start);
            folder.set_cursor(&moved);
            assert!(folder.set_outcome(Some("boom")));
            assert!(!folder.set_outcome(Some("boom")));
        }
        assert_eq!(cursors[0].get_or("b", fallback), moved);
        let state = table.lock(0).to_state();
        assert_eq!(state.folders.len(), 1);
        let saved = &state.folders["b"];
        assert_eq!(saved.path, ["Inbox", "Renamed"]);
        assert_eq!(saved.ids_at_synced_until, ["x", "y"]);
        assert_eq!(
            (saved.status.as_str(), saved.last_error.as_deref()),
            ("error", Some("boom"))
        );

        table.lock(0).retain_unsaved(|_| false);
        assert_eq!(
            table.lock(0).iter().map(Folder::id).collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn change_marks_live_in_the_table_beside_the_cursor() {
        let start = datetime!(2024-01-01 0:00 UTC);
        let table = Arc::new(FolderTable::new(vec![MailboxFolders::default()]));
        let cursors = table.cursors();
        assert_eq!(cursors[0].change_mark("f"), ChangeMark::Unknown);
        // Updating a folder without a record does nothing.
        cursors[0].update_change_mark("f", |_| ChangeMark::Covered { changed_at: start });
        assert_eq!(cursors[0].change_mark("f"), ChangeMark::Unknown);
        let seen = ChangeMark::Seen {
            changed_at: start,
            seen_at: std::time::Instant::now(),
            confirming: true,
        };
        cursors[0].set_change_mark(&info("f", &["Inbox"]), &Cursor::starting_at(start), seen);
        // The committer's writes leave the mark alone.
        table
            .lock(0)
            .record(&info("f", &["Inbox"]), start)
            .set_cursor(&Cursor::starting_at(start));
        assert_eq!(cursors[0].change_mark("f"), seen);
        cursors[0].update_change_mark("f", ChangeMark::listed_completely);
        assert_eq!(
            cursors[0].change_mark("f"),
            ChangeMark::Covered { changed_at: start }
        );
    }
}
