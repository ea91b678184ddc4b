//! Deterministic generation of mailboxes: a realistic folder tree (mail, hidden, search,
//! calendar, contacts, tasks, configuration folders) and varied mail in bursts of equal
//! received seconds. Same [`GenSpec`] ⇒ same [`DataSet`], byte for byte.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use time::macros::datetime;

use crate::ids::{self, IdKind};
use crate::mime::{self, BodyKind, MailSpec, Person};
use crate::model::{DataSet, Folder, FolderKind, Item, Mailbox};
use crate::rng::{Rng, hash64};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenSpec {
    pub seed: u64,
    pub mailboxes: usize,
    /// Number of items per mailbox that a correct client must copy (= `synced_items().count()`).
    /// A few more items are added where a correct client must not look.
    pub emails_per_mailbox: usize,
    /// Approximate MIME size of each email (the body is padded to reach it).
    pub mime_bytes: usize,
    /// Received times spread forward from here.
    pub start: OffsetDateTime,
}

impl Default for GenSpec {
    fn default() -> GenSpec {
        GenSpec {
            seed: 1,
            mailboxes: 3,
            emails_per_mailbox: 200,
            mime_bytes: 4000,
            start: datetime!(2024-03-01 08:00:00 UTC),
        }
    }
}

/// Generate with addresses `user1@example.test`, `user2@example.test`, ...
pub fn generate(spec: &GenSpec) -> DataSet {
    generate_with_addresses(spec, |n| format!("user{}@example.test", n + 1))
}

/// Generate with the mailbox address of mailbox `n` (0-based) given by `address(n)`.
pub fn generate_with_addresses(spec: &GenSpec, address: impl Fn(usize) -> String) -> DataSet {
    let mut shared: Vec<Item> = Vec::new();
    let mailboxes = (0..spec.mailboxes)
        .map(|n| {
            let (mailbox, synced) = generate_mailbox(spec, n, &address(n), &shared);
            if n == 0 {
                shared = synced;
            }
            mailbox
        })
        .collect();
    DataSet { mailboxes }
}

/// Build an item around the given MIME (subject, Message-ID and Date are read from it). Its
/// `id` belongs to no mailbox yet; [`crate::FakeExchange::add_item`] keeps it (it is unique
/// per seed) or assigns a fresh one.
pub fn make_item(seed: u64, received: OffsetDateTime, mime: Vec<u8>) -> Item {
    let subject = mime::header(&mime, "Subject")
        .map(|s| mime::decode_header_text(&s))
        .unwrap_or_default();
    let message_id = mime::header(&mime, "Message-ID").filter(|s| !s.is_empty());
    let sent = mime::header(&mime, "Date").and_then(|d| OffsetDateTime::parse(&d, &Rfc2822).ok());
    let serial = (hash64(&seed.to_le_bytes()) & 0x7FFF_FFFF_FFFF) | 0x8000_0000_0000;
    let topic = strip_prefixes(&subject).to_string();
    Item {
        id: ids::encode(IdKind::Item, ids::UNASSIGNED_MAILBOX, 0, serial),
        change_key: ids::change_key(IdKind::Item, ids::UNASSIGNED_MAILBOX, serial, 1),
        received,
        sent,
        mime,
        message_id,
        conversation_id: ids::conversation_id(hash64(topic.as_bytes())),
        conversation_topic: topic,
        subject,
        is_read: false,
        importance: "Normal",
        sensitivity: "Normal",
        categories: Vec::new(),
        attachments: Vec::new(),
        item_class: "IPM.Note".to_string(),
    }
}

fn strip_prefixes(subject: &str) -> &str {
    let mut s = subject.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let cut = ["re:", "fw:", "fwd:", "aw:", "wg:", "accepted:", "canceled:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| p.len());
        match cut {
            Some(n) => s = s[n..].trim_start(),
            None => return s,
        }
    }
}

/// What a folder holds besides its share of the synced mail.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    /// Share (weight) of the mail a client must copy.
    Synced(u32),
    Mail,
    Calendar,
    Contacts,
    Tasks,
    Note,
    ConversationAction,
    SearchCopies,
}

struct FolderSpec {
    key: &'static str,
    parent: Option<&'static str>,
    name: &'static str,
    class: Option<&'static str>,
    kind: FolderKind,
    hidden: bool,
    extra: Extra,
}

const fn f(
    key: &'static str,
    parent: Option<&'static str>,
    name: &'static str,
    class: Option<&'static str>,
    kind: FolderKind,
    hidden: bool,
    extra: Extra,
) -> FolderSpec {
    FolderSpec {
        key,
        parent,
        name,
        class,
        kind,
        hidden,
        extra,
    }
}

const NOTE: Option<&str> = Some("IPF.Note");
use Extra::Synced as S;
use FolderKind as K;

/// The folder tree of every generated mailbox (index in this table = folder number in ids).
#[rustfmt::skip]
const FOLDERS: &[FolderSpec] = &[
    f("inbox", None, "Inbox", NOTE, K::Folder, false, S(40)),
    f("projects", Some("inbox"), "Projects", NOTE, K::Folder, false, S(5)),
    f("p2024", Some("projects"), "2024", NOTE, K::Folder, false, S(10)),
    f("p2025", Some("projects"), "2025", NOTE, K::Folder, false, S(10)),
    f("reports", Some("inbox"), "Q1/Q2 Reports", NOTE, K::Folder, false, S(4)),
    f("donnees", Some("inbox"), "Données", NOTE, K::Folder, false, S(4)),
    f("rnd", Some("inbox"), "R&D <Lab>", NOTE, K::Folder, false, S(2)),
    f("sent", None, "Sent Items", NOTE, K::Folder, false, S(10)),
    f("drafts", None, "Drafts", NOTE, K::Folder, false, S(2)),
    f("deleted", None, "Deleted Items", NOTE, K::Folder, false, S(3)),
    f("junk", None, "Junk Email", NOTE, K::Folder, false, S(2)),
    f("outbox", None, "Outbox", NOTE, K::Folder, false, S(0)),
    f("archive", None, "Archive", NOTE, K::Folder, false, S(1)),
    f("old", Some("archive"), "Old", NOTE, K::Folder, false, S(4)),
    f("empty", None, "Empty Folder", NOTE, K::Folder, false, S(0)),
    f("noclass", None, "No Class Folder", None, K::Folder, false, S(2)),
    f("custom", None, "Custom Class", Some("IPF.Note.Custom"), K::Folder, false, S(2)),
    f("syncissues", None, "Sync Issues", NOTE, K::Folder, false, S(0)),
    f("conflicts", Some("syncissues"), "Conflicts", NOTE, K::Folder, false, S(0)),
    f("localfailures", Some("syncissues"), "Local Failures", NOTE, K::Folder, false, S(0)),
    f("serverfailures", Some("syncissues"), "Server Failures", NOTE, K::Folder, false, S(0)),
    f("calendar", None, "Calendar", Some("IPF.Appointment"), K::Calendar, false, Extra::Calendar),
    f("calmail", Some("calendar"), "Mail Under Calendar", NOTE, K::Folder, false, Extra::Mail),
    f("contacts", None, "Contacts", Some("IPF.Contact"), K::Contacts, false, Extra::Contacts),
    f("gal", Some("contacts"), "{06967759-274D-40B2-A3EB-D7F9E73727D7}", Some("IPF.Contact"), K::Contacts, true, S(0)),
    f("recipientcache", Some("contacts"), "Recipient Cache", Some("IPF.Contact.RecipientCache"), K::Contacts, true, S(0)),
    f("tasks", None, "Tasks", Some("IPF.Task"), K::Tasks, false, Extra::Tasks),
    f("notes", None, "Notes", Some("IPF.StickyNote"), K::Folder, false, Extra::Note),
    f("journal", None, "Journal", Some("IPF.Journal"), K::Folder, false, S(0)),
    f("hiddenmail", None, "Legacy Hidden Mail", NOTE, K::Folder, true, Extra::Mail),
    f("insidehidden", Some("hiddenmail"), "Inside Hidden", NOTE, K::Folder, false, Extra::Mail),
    f("search", None, "Unread Mail", NOTE, K::Search, false, Extra::SearchCopies),
    f("cas", None, "Conversation Action Settings", Some("IPF.Configuration"), K::Folder, true, Extra::ConversationAction),
    f("qss", None, "Quick Step Settings", Some("IPF.Configuration"), K::Folder, true, S(0)),
];

const TOPICS: &[&str] = &[
    "Quarterly numbers",
    "Lunch on Friday?",
    "Q&A: <draft> & \"final\" version",
    "Résumé — Données clients",
    "Réunion équipe",
    "Budget 2025 review",
    "Ünïcödé test 日本語 ✓",
    "Server maintenance tonight",
    "Invoice #4711",
    "Re-org announcement",
    "Café crème meeting",
    "Grüße aus München",
    "Release 1.2 <go/no-go>",
    "Travel plans",
];

const SENDERS: &[(&str, &str)] = &[
    ("Zoë Müller", "zoe.mueller@contoso.example"),
    ("Bob O'Neil", "bob@fabrikam.example"),
    ("田中 太郎", "tanaka@example.jp"),
    ("Alice Example", "alice@contoso.example"),
    ("Jean-Luc Picard", "jl.picard@starfleet.example"),
    ("Mailer Daemon", "postmaster@example.test"),
];

const ATTACHMENT_NAMES: &[&str] = &[
    "Quarterly report Q1.pdf",
    "Données 2024.pdf",
    "contract (signed).pdf",
    "Präsentation & Notizen.pdf",
    "budget_v2.pdf",
];

/// Received times: monotonic in generation order, in bursts of 1-9 mails sharing one second
/// (sub-second parts increase, exact ties happen).
struct Timeline {
    second: OffsetDateTime,
    millis: u16,
    burst_left: u64,
    started: bool,
}

impl Timeline {
    fn next(&mut self, rng: &mut Rng, min_burst: u64) -> OffsetDateTime {
        if self.burst_left == 0 {
            self.burst_left = rng.range(min_burst.max(1), 9);
            if self.started {
                self.second += time::Duration::seconds(rng.range(1, 600) as i64);
            }
            self.started = true;
            self.millis = rng.below(400) as u16;
        } else if !rng.chance(1, 4) {
            self.millis = (self.millis + rng.range(1, 90) as u16).min(999);
        }
        self.burst_left -= 1;
        self.second + time::Duration::milliseconds(i64::from(self.millis))
    }
}

fn owner(address: &str) -> Person {
    let local = address.split('@').next().unwrap_or(address);
    let name = local
        .split(['.', '_', '-'])
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(first) => first.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    Person {
        name,
        address: address.to_string(),
    }
}

struct MailboxGen<'a> {
    spec: &'a GenSpec,
    mb: u16,
    address: String,
    rng: Rng,
    serial: u64,
    folders: Vec<Folder>,
    threads: Vec<(String, String, Option<String>)>,
}

impl MailboxGen<'_> {
    fn next_ids(&mut self, folder: usize) -> (String, String) {
        self.serial += 1;
        (
            ids::encode(IdKind::Item, self.mb, folder as u16, self.serial),
            ids::change_key(IdKind::Item, self.mb, self.serial, 1),
        )
    }

    fn folder_index(key: &str) -> usize {
        FOLDERS.iter().position(|s| s.key == key).unwrap_or(0)
    }

    /// One mail item for `folder` received at `received`; `index` drives forced cases.
    fn mail(&mut self, folder: usize, received: OffsetDateTime, index: usize) -> Item {
        let rng = &mut self.rng;
        let key = FOLDERS[folder].key;
        let me = owner(&self.address);
        let external = |rng: &mut Rng| {
            let (n, a) = rng.pick(SENDERS);
            Person {
                name: n.to_string(),
                address: a.to_string(),
            }
        };
        let mut kind = match rng.weighted(&[15, 10, 10, 33, 13, 5, 5, 2, 3, 4]) {
            0 => BodyKind::PlainUtf8Qp,
            1 => BodyKind::PlainUtf8Bit8,
            2 => BodyKind::PlainLatin1,
            3 => BodyKind::Alternative,
            4 => BodyKind::MixedPdf,
            5 => BodyKind::WithItemAttachment,
            6 => BodyKind::MeetingRequest,
            7 => BodyKind::MeetingCancel,
            8 => BodyKind::Ndr,
            _ => BodyKind::Signed,
        };
        let meeting_response = kind == BodyKind::Alternative && rng.chance(1, 11);
        // topic / thread
        let reply = !self.threads.is_empty() && rng.chance(3, 10);
        let (topic, conversation_id, in_reply_to) = if reply {
            let t = self.threads[rng.below(self.threads.len() as u64) as usize].clone();
            (t.0, t.1, t.2)
        } else {
            let base = rng.pick(TOPICS);
            let topic = if rng.chance(1, 2) {
                format!("{base} ({})", rng.range(2, 99))
            } else {
                base.to_string()
            };
            let conv = ids::conversation_id(hash64(format!("{}/{topic}", self.mb).as_bytes()));
            (topic, conv, None)
        };
        let mut attachment_name = rng.pick(ATTACHMENT_NAMES).to_string();
        let mut subject = match kind {
            BodyKind::MeetingRequest => topic.clone(),
            BodyKind::MeetingCancel => format!("Canceled: {topic}"),
            BodyKind::Ndr => format!("Undeliverable: {topic}"),
            _ if meeting_response => format!("Accepted: {topic}"),
            _ if reply => format!("RE: {topic}"),
            _ if rng.chance(1, 12) => format!("FW: {topic}"),
            _ => topic.clone(),
        };
        // Forced cases so every mailbox with a few mails has them.
        match index {
            3 => {
                subject = "Scanned document\u{1A} from printer".to_string();
                kind = BodyKind::PlainUtf8Qp;
            }
            4 => {
                kind = BodyKind::MixedPdf;
                attachment_name = "scan\u{1F}0042.pdf".to_string();
            }
            5 => kind = BodyKind::PlainLatin1,
            _ => {}
        }
        let is_sent = key == "sent" || key == "drafts" || key == "outbox";
        let (from, to) = if is_sent {
            (me, vec![external(rng), external(rng)])
        } else if kind == BodyKind::Ndr {
            (
                Person {
                    name: "Microsoft Outlook".into(),
                    address: format!(
                        "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@{}",
                        self.address.split('@').nth(1).unwrap_or("example.test")
                    ),
                },
                vec![me],
            )
        } else {
            (external(rng), vec![me])
        };
        let cc = if rng.chance(1, 4) {
            vec![external(rng)]
        } else {
            Vec::new()
        };
        let forced_id = index < 2;
        let message_id = if forced_id || !rng.chance(1, 20) {
            Some(format!(
                "<{:016x}{:04x}{}@{}>",
                rng.next_u64(),
                self.mb,
                index,
                if is_sent {
                    "EXCH01.example.test"
                } else {
                    "mail.contoso.example"
                }
            ))
        } else {
            None
        };
        let sent = if key == "drafts" || rng.chance(1, 12) {
            None
        } else {
            Some(
                received.replace_millisecond(0).unwrap_or(received)
                    - time::Duration::seconds(rng.range(1, 120) as i64),
            )
        };
        let latin1_subject = kind == BodyKind::PlainLatin1 && rng.chance(1, 2);
        let importance = match rng.weighted(&[80, 12, 8]) {
            0 => "Normal",
            1 => "High",
            _ => "Low",
        };
        let sensitivity = match rng.weighted(&[85, 5, 5, 5]) {
            0 => "Normal",
            1 => "Personal",
            2 => "Private",
            _ => "Confidential",
        };
        let categories = match rng.weighted(&[80, 15, 5]) {
            0 => Vec::new(),
            1 => vec!["Red category".to_string()],
            _ => vec!["Projekt Ü".to_string(), "Blue category".to_string()],
        };
        let is_read = rng.chance(7, 10);
        let mail = MailSpec {
            from,
            to,
            cc,
            subject: subject.clone(),
            latin1_subject,
            date: sent,
            received,
            message_id: message_id.clone(),
            in_reply_to: in_reply_to.clone(),
            topic: topic.clone(),
            importance,
            sensitivity,
            kind,
            target_size: self.spec.mime_bytes,
            attachment_name,
        };
        let built = mime::build(&mail, rng);
        if !reply {
            self.threads
                .push((topic.clone(), conversation_id.clone(), message_id.clone()));
            if self.threads.len() > 20 {
                self.threads.remove(0);
            }
        }
        let item_class = match kind {
            BodyKind::MeetingRequest => "IPM.Schedule.Meeting.Request",
            BodyKind::MeetingCancel => "IPM.Schedule.Meeting.Canceled",
            BodyKind::Ndr => "REPORT.IPM.Note.NDR",
            BodyKind::Signed => "IPM.Note.SMIME.MultipartSigned",
            _ if meeting_response => "IPM.Schedule.Meeting.Resp.Pos",
            _ => "IPM.Note",
        };
        let (id, change_key) = self.next_ids(folder);
        Item {
            id,
            change_key,
            received,
            sent,
            mime: built.mime,
            message_id,
            subject,
            is_read: is_read || is_sent,
            importance,
            sensitivity,
            categories,
            conversation_id,
            conversation_topic: topic,
            attachments: built.attachments,
            item_class: item_class.to_string(),
        }
    }

    /// A non-mail item (calendar, contact, task, note, conversation action).
    fn other_item(&mut self, folder: usize, received: OffsetDateTime, class: &str) -> Item {
        let mut item = self.mail(folder, received, usize::MAX);
        let (title, body_kind) = match class {
            "IPM.Appointment" => ("Team sync", true),
            "IPM.Contact" => ("Erika Mustermann", false),
            "IPM.Task" => ("Prepare slides", false),
            "IPM.StickyNote" => ("Remember the milk", false),
            _ => ("Conversation action", false),
        };
        let spec = MailSpec {
            from: owner(&self.address),
            to: Vec::new(),
            cc: Vec::new(),
            subject: title.to_string(),
            latin1_subject: false,
            date: None,
            received,
            message_id: None,
            in_reply_to: None,
            topic: title.to_string(),
            importance: "Normal",
            sensitivity: "Normal",
            kind: if body_kind {
                BodyKind::MeetingRequest
            } else {
                BodyKind::PlainUtf8Qp
            },
            target_size: self.spec.mime_bytes.min(2000),
            attachment_name: String::new(),
        };
        let built = mime::build(&spec, &mut self.rng);
        item.mime = built.mime;
        item.attachments = Vec::new();
        item.subject = title.to_string();
        item.conversation_topic = title.to_string();
        item.message_id = None;
        item.sent = None;
        item.item_class = class.to_string();
        item
    }
}

fn generate_mailbox(
    spec: &GenSpec,
    n: usize,
    address: &str,
    shared: &[Item],
) -> (Mailbox, Vec<Item>) {
    let mb = n as u16;
    let mut g = MailboxGen {
        spec,
        mb,
        address: address.to_string(),
        rng: Rng::new(spec.seed).fork(n as u64 + 1),
        serial: 0,
        folders: Vec::new(),
        threads: Vec::new(),
    };
    let folder_id = |i: usize| ids::encode(IdKind::Folder, mb, i as u16, 0);
    g.folders = FOLDERS
        .iter()
        .enumerate()
        .map(|(i, s)| Folder {
            id: folder_id(i),
            parent_id: s.parent.map(|p| folder_id(MailboxGen::folder_index(p))),
            display_name: s.name.to_string(),
            folder_class: s.class.map(str::to_string),
            kind: s.kind,
            hidden: s.hidden,
            items: Vec::new(),
        })
        .collect();

    let start = spec
        .start
        .replace_nanosecond(0)
        .unwrap_or(spec.start)
        .to_offset(time::UtcOffset::UTC);
    let mut timeline = Timeline {
        second: start,
        millis: 0,
        burst_left: 0,
        started: false,
    };
    let weights: Vec<u32> = FOLDERS
        .iter()
        .map(|s| match s.extra {
            Extra::Synced(w) => w,
            _ => 0,
        })
        .collect();
    let mut synced = Vec::with_capacity(spec.emails_per_mailbox);
    for i in 0..spec.emails_per_mailbox {
        let received = timeline.next(&mut g.rng, if i == 0 { 2 } else { 1 });
        let (folder, item) = if n > 0 && i >= 6 && i < shared.len() && g.rng.chance(3, 100) {
            // The same message delivered to several mailboxes: same MIME and Message-ID.
            let (id, change_key) = g.next_ids(0);
            let item = Item {
                id,
                change_key,
                received,
                ..shared[i].clone()
            };
            (0, item)
        } else {
            let folder = g.rng.weighted(&weights);
            (folder, g.mail(folder, received, i))
        };
        synced.push(item.clone());
        g.folders[folder].items.push(item);
    }

    // Items a correct client must not copy.
    let extra = (spec.emails_per_mailbox / 50).max(2);
    let times: Vec<OffsetDateTime> = synced.iter().map(|i| i.received).collect();
    let pick_time = |rng: &mut Rng| {
        if times.is_empty() {
            start
        } else {
            times[rng.below(times.len() as u64) as usize]
        }
    };
    for (fi, s) in FOLDERS.iter().enumerate() {
        let count = match s.extra {
            Extra::Synced(_) | Extra::SearchCopies => 0,
            Extra::Mail if s.parent.is_some() => extra.div_ceil(2),
            Extra::Mail | Extra::Calendar => extra,
            Extra::Contacts | Extra::Tasks => 2,
            Extra::Note | Extra::ConversationAction => 1,
        };
        for k in 0..count {
            let t = pick_time(&mut g.rng);
            let item = match s.extra {
                Extra::Mail => g.mail(fi, t, 1000 + k),
                Extra::Calendar => g.other_item(fi, t, "IPM.Appointment"),
                Extra::Contacts => g.other_item(fi, t, "IPM.Contact"),
                Extra::Tasks => g.other_item(fi, t, "IPM.Task"),
                Extra::Note => g.other_item(fi, t, "IPM.StickyNote"),
                _ => g.other_item(fi, t, "IPM.ConversationAction"),
            };
            g.folders[fi].items.push(item);
        }
    }
    // The search folder shows (the very same) items of the Inbox.
    let search = MailboxGen::folder_index("search");
    let copies: Vec<Item> = g.folders[0].items.iter().step_by(5).cloned().collect();
    g.folders[search].items = copies;

    let mut folders = g.folders;
    for f in &mut folders {
        f.items.sort_by_key(|i| i.received);
    }
    (
        Mailbox {
            address: address.to_string(),
            folders,
        },
        synced,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GenSpec {
        GenSpec {
            seed: 9,
            mailboxes: 2,
            emails_per_mailbox: 120,
            mime_bytes: 1500,
            start: datetime!(2024-03-01 08:00:00 UTC),
        }
    }

    #[test]
    fn deterministic() {
        let a = generate(&small());
        let b = generate(&small());
        let fa: Vec<_> = a.mailboxes[1]
            .synced_items()
            .map(|(_, i)| (i.id.clone(), i.mime.clone()))
            .collect();
        let fb: Vec<_> = b.mailboxes[1]
            .synced_items()
            .map(|(_, i)| (i.id.clone(), i.mime.clone()))
            .collect();
        assert_eq!(fa, fb);
        let c = generate(&GenSpec {
            seed: 10,
            ..small()
        });
        assert_ne!(
            c.mailboxes[0].folders[0].items[0].mime,
            a.mailboxes[0].folders[0].items[0].mime
        );
    }

    #[test]
    fn shape_of_the_data() {
        let data = generate(&small());
        for mb in &data.mailboxes {
            assert_eq!(mb.synced_items().count(), 120);
            let total: usize = mb.folders.iter().map(|f| f.items.len()).sum();
            assert!(total > 130, "{total}");
            // unique ids among stored (non-search) items
            let mut ids: Vec<&str> = mb
                .folders
                .iter()
                .filter(|f| f.kind != FolderKind::Search)
                .flat_map(|f| f.items.iter().map(|i| i.id.as_str()))
                .collect();
            let n = ids.len();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n);
            let synced: Vec<&Item> = mb.synced_items().map(|(_, i)| i).collect();
            assert!(synced.iter().any(|i| i.message_id.is_none()));
            assert!(synced.iter().any(|i| i.subject.contains('\u{1A}')));
            assert!(
                synced
                    .iter()
                    .any(|i| i.attachments.iter().any(|a| a.name.contains('\u{1F}')))
            );
            assert!(synced.iter().any(|i| i.mime.contains(&0xE9)));
            assert!(
                synced
                    .iter()
                    .any(|i| i.item_class == "IPM.Schedule.Meeting.Request")
            );
            // bursts: many items share a received second
            let mut seconds: Vec<i64> =
                synced.iter().map(|i| i.received.unix_timestamp()).collect();
            seconds.sort();
            let distinct = {
                let mut d = seconds.clone();
                d.dedup();
                d.len()
            };
            assert!(
                distinct * 3 <= seconds.len() + distinct,
                "{distinct} of {}",
                seconds.len()
            );
            let path = mb.mail_folder_path(&mb.folders[2].id);
            assert_eq!(path, vec!["Inbox", "Projects", "2024"]);
            let hidden_child = mb
                .folders
                .iter()
                .find(|f| f.display_name == "Inside Hidden")
                .unwrap();
            assert!(!mb.is_synced_folder(hidden_child));
            assert!(!hidden_child.items.is_empty());
            let noclass = mb
                .folders
                .iter()
                .find(|f| f.folder_class.is_none())
                .unwrap();
            assert!(mb.is_synced_folder(noclass));
        }
        // first two mails: same second, different Message-IDs
        let mb = &data.mailboxes[0];
        let mut all: Vec<&Item> = mb.synced_items().map(|(_, i)| i).collect();
        all.sort_by_key(|i| i.received);
        assert_eq!(
            all[0].received.unix_timestamp(),
            all[1].received.unix_timestamp()
        );
        assert_ne!(all[0].message_id, all[1].message_id);
        assert!(all[0].message_id.is_some() && all[1].message_id.is_some());
    }

    #[test]
    fn make_item_reads_headers() {
        let mime = b"From: a@b.example\r\nSubject: =?utf-8?B?w6ljaG8=?= test\r\nDate: Fri, 01 Mar 2024 10:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n".to_vec();
        let item = make_item(5, datetime!(2024-03-01 10:00:05 UTC), mime);
        assert_eq!(item.subject, "écho test");
        assert_eq!(item.message_id.as_deref(), Some("<x@y>"));
        assert_eq!(item.sent, Some(datetime!(2024-03-01 10:00:00 UTC)));
        assert_eq!(
            crate::ids::decode(&item.id).unwrap().mailbox,
            crate::ids::UNASSIGNED_MAILBOX
        );
    }
}
