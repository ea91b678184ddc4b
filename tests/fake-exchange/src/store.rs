//! The server's copy of the data with lookup indexes: folder and item ids to mailbox/folder,
//! the implicit root folders, well-known (distinguished) folders, and add/delete while running.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::ids::{self, IdKind};
use crate::model::{DataSet, FolderKind, Item};

/// A folder a request can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The non-IPM root of the mailbox (DistinguishedFolderId `root`).
    Root,
    /// "Top of Information Store" (DistinguishedFolderId `msgfolderroot`).
    MsgRoot,
    /// `folders[i]` of the mailbox.
    Folder(usize),
}

pub(crate) struct Store {
    pub data: DataSet,
    folders: HashMap<String, (usize, usize)>,
    items: HashMap<String, (usize, usize)>,
    roots: HashMap<String, (usize, Target)>,
    next_serial: Vec<u64>,
    /// PR_LOCAL_COMMIT_TIME_MAX (0x670A) per mailbox and folder: when an item in the folder
    /// last changed. Generated items count as committed when they were received.
    changed_at: Vec<Vec<OffsetDateTime>>,
    loaded_at: OffsetDateTime,
}

/// Well-known folders by (parent well-known name or "" for top level, display name).
const WELL_KNOWN: &[(&str, &str, &str)] = &[
    ("inbox", "", "Inbox"),
    ("sentitems", "", "Sent Items"),
    ("drafts", "", "Drafts"),
    ("deleteditems", "", "Deleted Items"),
    ("junkemail", "", "Junk Email"),
    ("outbox", "", "Outbox"),
    ("calendar", "", "Calendar"),
    ("contacts", "", "Contacts"),
    ("tasks", "", "Tasks"),
    ("notes", "", "Notes"),
    ("journal", "", "Journal"),
    ("archive", "", "Archive"),
    ("conversationhistory", "", "Conversation History"),
    ("syncissues", "", "Sync Issues"),
    ("conflicts", "syncissues", "Conflicts"),
    ("localfailures", "syncissues", "Local Failures"),
    ("serverfailures", "syncissues", "Server Failures"),
    ("recipientcache", "contacts", "Recipient Cache"),
];

impl Store {
    pub(crate) fn new(data: DataSet) -> Store {
        let mut store = Store {
            data,
            folders: HashMap::new(),
            items: HashMap::new(),
            roots: HashMap::new(),
            next_serial: Vec::new(),
            changed_at: Vec::new(),
            loaded_at: OffsetDateTime::now_utc(),
        };
        store.reindex();
        store
    }

    fn reindex(&mut self) {
        self.folders.clear();
        self.items.clear();
        self.roots.clear();
        self.next_serial.clear();
        self.changed_at = (self.data.mailboxes.iter())
            .map(|m| {
                (m.folders.iter())
                    .map(|f| {
                        (f.items.iter().map(|i| i.received).max())
                            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
                    })
                    .collect()
            })
            .collect();
        for (mb, mailbox) in self.data.mailboxes.iter().enumerate() {
            self.roots
                .insert(root_id(mb, Target::MsgRoot), (mb, Target::MsgRoot));
            self.roots
                .insert(root_id(mb, Target::Root), (mb, Target::Root));
            let mut max_serial = 0;
            for (fi, folder) in mailbox.folders.iter().enumerate() {
                self.folders.insert(folder.id.clone(), (mb, fi));
                if folder.kind == FolderKind::Search {
                    continue;
                }
                for item in &folder.items {
                    self.items.insert(item.id.clone(), (mb, fi));
                    if let Some(d) = ids::decode(&item.id)
                        && d.mailbox as usize == mb
                    {
                        max_serial = max_serial.max(d.serial);
                    }
                }
            }
            self.next_serial.push(max_serial + 1);
        }
    }

    /// PR_LOCAL_COMMIT_TIME_MAX of a folder: the last time an item was added to or removed
    /// from it (the roots: when the store was built).
    pub(crate) fn changed_at(&self, mb: usize, target: Target) -> OffsetDateTime {
        match target {
            Target::Folder(fi) => self.changed_at[mb][fi],
            Target::Root | Target::MsgRoot => self.loaded_at,
        }
    }

    pub(crate) fn mailbox_index(&self, address: &str) -> Option<usize> {
        self.data
            .mailboxes
            .iter()
            .position(|m| m.address.eq_ignore_ascii_case(address.trim()))
    }

    /// Resolve a `t:FolderId`.
    pub(crate) fn folder_by_id(&self, id: &str) -> Option<(usize, Target)> {
        if let Some(&(mb, fi)) = self.folders.get(id) {
            return Some((mb, Target::Folder(fi)));
        }
        self.roots.get(id).copied()
    }

    /// Resolve a DistinguishedFolderId name in mailbox `mb`.
    pub(crate) fn well_known(&self, mb: usize, name: &str) -> Option<Target> {
        match name {
            "msgfolderroot" => return Some(Target::MsgRoot),
            "root" => return Some(Target::Root),
            _ => {}
        }
        let (_, parent, display) = WELL_KNOWN.iter().find(|(n, _, _)| *n == name)?;
        let parent_id = if parent.is_empty() {
            None
        } else {
            match self.well_known(mb, parent)? {
                Target::Folder(p) => Some(self.data.mailboxes[mb].folders[p].id.as_str()),
                _ => None,
            }
        };
        self.data.mailboxes[mb]
            .folders
            .iter()
            .position(|f| f.parent_id.as_deref() == parent_id && f.display_name == *display)
            .map(Target::Folder)
    }

    /// True when folder `fi` is one of the well-known folders.
    pub(crate) fn is_well_known(&self, mb: usize, fi: usize) -> bool {
        WELL_KNOWN
            .iter()
            .any(|(name, _, _)| self.well_known(mb, name) == Some(Target::Folder(fi)))
    }

    pub(crate) fn target_id(&self, mb: usize, target: Target) -> String {
        match target {
            Target::Folder(fi) => self.data.mailboxes[mb].folders[fi].id.clone(),
            other => root_id(mb, other),
        }
    }

    /// The parent of a folder target (the root's parent is itself, as in Exchange).
    pub(crate) fn parent_of(&self, mb: usize, target: Target) -> Target {
        match target {
            Target::Root | Target::MsgRoot => Target::Root,
            Target::Folder(fi) => match &self.data.mailboxes[mb].folders[fi].parent_id {
                None => Target::MsgRoot,
                Some(p) => match self.folders.get(p) {
                    Some(&(pmb, pfi)) if pmb == mb => Target::Folder(pfi),
                    _ => Target::MsgRoot,
                },
            },
        }
    }

    /// Direct child folders of `target`.
    pub(crate) fn children(&self, mb: usize, target: Target) -> Vec<Target> {
        match target {
            Target::Root => vec![Target::MsgRoot],
            _ => (0..self.data.mailboxes[mb].folders.len())
                .map(Target::Folder)
                .filter(|&c| self.parent_of(mb, c) == target)
                .collect(),
        }
    }

    /// All folders below `target`.
    pub(crate) fn descendants(&self, mb: usize, target: Target) -> Vec<Target> {
        let mut out = Vec::new();
        let mut queue = self.children(mb, target);
        while let Some(t) = queue.pop() {
            if out.contains(&t) {
                continue;
            }
            out.push(t);
            queue.extend(self.children(mb, t));
        }
        out
    }

    /// Where an item id lives: (mailbox, folder index, item).
    pub(crate) fn locate_item(&self, id: &str) -> Option<(usize, usize, &Item)> {
        let &(mb, fi) = self.items.get(id)?;
        let item = self.data.mailboxes[mb].folders[fi]
            .items
            .iter()
            .find(|i| i.id == id)?;
        Some((mb, fi, item))
    }

    /// The folder an item id is stored in (not a search folder), for `t:ParentFolderId`.
    pub(crate) fn home_folder(&self, id: &str) -> Option<(usize, usize)> {
        self.items.get(id).copied()
    }

    /// Add an item; keeps `item.id` when it is non-empty and unused, else assigns a new id.
    /// Panics on an unknown mailbox or folder (a test bug).
    pub(crate) fn add_item(&mut self, mailbox: &str, folder_id: &str, mut item: Item) -> String {
        let mb = self
            .mailbox_index(mailbox)
            .unwrap_or_else(|| panic!("add_item: unknown mailbox {mailbox}"));
        let fi = match self.folders.get(folder_id) {
            Some(&(fmb, fi)) if fmb == mb => fi,
            _ => panic!("add_item: folder {folder_id} is not in mailbox {mailbox}"),
        };
        if item.id.is_empty() || self.items.contains_key(&item.id) {
            let serial = self.next_serial[mb];
            self.next_serial[mb] += 1;
            item.id = ids::encode(IdKind::Item, mb as u16, fi as u16, serial);
            item.change_key = ids::change_key(IdKind::Item, mb as u16, serial, 1);
        }
        let id = item.id.clone();
        self.items.insert(id.clone(), (mb, fi));
        self.data.mailboxes[mb].folders[fi].items.push(item);
        self.changed_at[mb][fi] = OffsetDateTime::now_utc();
        id
    }

    /// Delete an item (and its appearances in search folders). Returns whether it existed.
    pub(crate) fn delete_item(&mut self, mailbox: &str, id: &str) -> bool {
        let Some(mb) = self.mailbox_index(mailbox) else {
            return false;
        };
        match self.items.get(id) {
            Some(&(imb, _)) if imb == mb => {}
            _ => return false,
        }
        self.items.remove(id);
        let now = OffsetDateTime::now_utc();
        for (fi, folder) in self.data.mailboxes[mb].folders.iter_mut().enumerate() {
            let before = folder.items.len();
            folder.items.retain(|i| i.id != id);
            if folder.items.len() != before {
                self.changed_at[mb][fi] = now;
            }
        }
        true
    }
}

/// Id of a mailbox's implicit root folders.
pub(crate) fn root_id(mb: usize, target: Target) -> String {
    let folder = if target == Target::Root {
        ids::ROOT
    } else {
        ids::MSGFOLDERROOT
    };
    ids::encode(IdKind::Folder, mb as u16, folder, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenSpec, generate};

    #[test]
    fn lookups() {
        let data = generate(&GenSpec {
            mailboxes: 2,
            emails_per_mailbox: 30,
            mime_bytes: 800,
            ..GenSpec::default()
        });
        let mut store = Store::new(data);
        let inbox = store.well_known(1, "inbox").unwrap();
        assert_eq!(inbox, Target::Folder(0));
        assert!(store.well_known(1, "conflicts").is_some());
        assert_eq!(store.well_known(1, "voicemail"), None);
        let rid = store.target_id(1, Target::MsgRoot);
        assert_eq!(store.folder_by_id(&rid), Some((1, Target::MsgRoot)));
        assert_eq!(store.parent_of(1, Target::MsgRoot), Target::Root);
        let all = store.descendants(1, Target::MsgRoot);
        assert_eq!(all.len(), store.data.mailboxes[1].folders.len());
        let id = store.data.mailboxes[1].folders[0].items[0].id.clone();
        assert!(store.locate_item(&id).is_some());
        assert!(!store.delete_item("user1@example.test", &id));
        assert!(store.delete_item("USER2@example.test", &id));
        assert!(store.locate_item(&id).is_none());
        let item = crate::make_item(
            1,
            time::OffsetDateTime::UNIX_EPOCH,
            b"Subject: x\r\n\r\n".to_vec(),
        );
        let folder = store.data.mailboxes[0].folders[3].id.clone();
        let kept = item.id.clone();
        assert_eq!(
            store.add_item("user1@example.test", &folder, item.clone()),
            kept
        );
        let fresh = store.add_item("user1@example.test", &folder, item);
        assert_ne!(fresh, kept);
        assert_eq!(ids::decode(&fresh).unwrap().mailbox, 0);
    }
}
