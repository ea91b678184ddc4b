//! The mailbox data the fake serves: mailboxes, folders, items and attachments, plus the
//! "which items must a correct client copy" rule used by tests.

use time::OffsetDateTime;

/// All mailboxes served by one fake server.
#[derive(Clone, Debug, Default)]
pub struct DataSet {
    pub mailboxes: Vec<Mailbox>,
}

/// One mailbox. `folders` holds every folder below "Top of Information Store" (msgfolderroot);
/// the two roots (msgfolderroot and the non-IPM `root`) are implicit and get ids from the server.
#[derive(Clone, Debug)]
pub struct Mailbox {
    pub address: String,
    pub folders: Vec<Folder>,
}

/// What kind of EWS folder element a folder is rendered as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FolderKind {
    /// `t:Folder`
    Folder,
    /// `t:SearchFolder` (its items are views of items stored in other folders, same ItemIds)
    Search,
    /// `t:CalendarFolder`
    Calendar,
    /// `t:ContactsFolder`
    Contacts,
    /// `t:TasksFolder`
    Tasks,
}

impl FolderKind {
    /// Local name of the element in a `t:Folders` / `m:Folders` list.
    pub fn element(self) -> &'static str {
        match self {
            FolderKind::Folder => "Folder",
            FolderKind::Search => "SearchFolder",
            FolderKind::Calendar => "CalendarFolder",
            FolderKind::Contacts => "ContactsFolder",
            FolderKind::Tasks => "TasksFolder",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Folder {
    pub id: String,
    /// `None` = child of msgfolderroot ("Top of Information Store").
    pub parent_id: Option<String>,
    pub display_name: String,
    /// `None` = the folder has no PR_CONTAINER_CLASS (EWS omits `t:FolderClass`); counts as mail.
    pub folder_class: Option<String>,
    pub kind: FolderKind,
    /// PR_ATTR_HIDDEN (0x10F4).
    pub hidden: bool,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub id: String,
    pub change_key: String,
    /// Full precision (milliseconds). EWS renders it in whole seconds unless the request asks
    /// for `t:DateTimePrecision` Milliseconds; restrictions compare at full precision.
    pub received: OffsetDateTime,
    pub sent: Option<OffsetDateTime>,
    /// The exact RFC 5322 bytes served as `t:MimeContent` (CRLF line ends, may hold 8-bit bytes).
    pub mime: Vec<u8>,
    /// With angle brackets, e.g. `<abc@example.test>`; `None` = the MIME has no Message-ID.
    pub message_id: Option<String>,
    /// Decoded subject. May contain characters that are illegal in XML 1.0 (U+001A, ...): the
    /// server writes them as numeric character references only when
    /// [`crate::Fault::illegal_char_refs`] is on, and leaves them out otherwise.
    pub subject: String,
    pub is_read: bool,
    /// Low | Normal | High
    pub importance: &'static str,
    /// Normal | Personal | Private | Confidential
    pub sensitivity: &'static str,
    pub categories: Vec<String>,
    pub conversation_id: String,
    pub conversation_topic: String,
    pub attachments: Vec<Attachment>,
    /// IPM.Note, IPM.Schedule.Meeting.Request, REPORT.IPM.Note.NDR, IPM.Appointment, ...
    pub item_class: String,
}

impl Item {
    /// `t:HasAttachments`: true when the item has at least one attachment that is not inline
    /// (Exchange does not count inline images).
    pub fn has_attachments(&self) -> bool {
        self.attachments.iter().any(|a| !a.inline)
    }

    /// `t:Size` (the fake uses the MIME length).
    pub fn size(&self) -> u64 {
        self.mime.len() as u64
    }
}

/// An attachment as EWS lists it in `t:Attachments`. `content_type` `message/rfc822` is rendered
/// as `t:ItemAttachment`, everything else as `t:FileAttachment`.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub inline: bool,
}

/// True for a folder class that holds mail: absent, `IPF.Note` or a subclass `IPF.Note.*`.
pub fn is_mail_class(class: Option<&str>) -> bool {
    match class {
        None => true,
        Some(c) => c == "IPF.Note" || c.starts_with("IPF.Note."),
    }
}

impl Mailbox {
    pub fn folder(&self, folder_id: &str) -> Option<&Folder> {
        self.folders.iter().find(|f| f.id == folder_id)
    }

    /// Display-name path from the mailbox root, e.g. `["Inbox", "Projects", "2024"]`.
    /// Empty for an unknown id. Stops at a cycle.
    pub fn mail_folder_path(&self, folder_id: &str) -> Vec<String> {
        let mut path = Vec::new();
        let mut current = self.folder(folder_id);
        while let Some(folder) = current {
            if path.len() > self.folders.len() {
                break;
            }
            path.push(folder.display_name.clone());
            current = folder.parent_id.as_deref().and_then(|p| self.folder(p));
        }
        path.reverse();
        path
    }

    /// True when a correct client must copy the items of this folder: the folder and all its
    /// ancestors are plain mail folders (class absent or `IPF.Note*`), none is hidden and none is a
    /// search folder.
    pub fn is_synced_folder(&self, folder: &Folder) -> bool {
        let mut current = Some(folder);
        let mut steps = 0;
        while let Some(f) = current {
            if f.hidden || f.kind != FolderKind::Folder || !is_mail_class(f.folder_class.as_deref())
            {
                return false;
            }
            steps += 1;
            if steps > self.folders.len() {
                return false;
            }
            current = f.parent_id.as_deref().and_then(|p| self.folder(p));
        }
        true
    }

    /// Items a correct client must copy: those in [`Mailbox::is_synced_folder`] folders.
    pub fn synced_items(&self) -> impl Iterator<Item = (&Folder, &Item)> {
        self.folders
            .iter()
            .filter(|f| self.is_synced_folder(f))
            .flat_map(|f| f.items.iter().map(move |i| (f, i)))
    }
}

impl DataSet {
    pub fn mailbox(&self, address: &str) -> Option<&Mailbox> {
        self.mailboxes
            .iter()
            .find(|m| m.address.eq_ignore_ascii_case(address))
    }
}
