//! Rendering folders and items as EWS elements: which properties a shape asks for, and their
//! values in the element order of the EWS schema (ItemType, MessageType, BaseFolderType).

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::ids::{self, IdKind};
use crate::mime;
use crate::model::{FolderKind, Item};
use crate::request::{BaseShape, ExtProp, PropPath, Shape};
use crate::restriction::{Kind, Val};
use crate::xml::Xml;

/// The ChangeKey Exchange puts on `t:ParentFolderId`.
const PARENT_CHANGE_KEY: &str = "AQAAAA==";

/// `2024-03-01T10:00:00Z`, or with milliseconds when the request asked for them.
pub(crate) fn format_datetime(t: OffsetDateTime, millis: bool) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let r = if millis {
        t.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
    } else {
        t.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
    };
    r.unwrap_or_default()
}

/// Requested properties of a shape: FieldURIs plus extended properties.
pub(crate) struct Wanted {
    fields: HashSet<String>,
    /// FieldURIs named explicitly in AdditionalProperties (for ErrorInvalidPropertyRequest).
    pub explicit: Vec<String>,
    pub extended: Vec<ExtProp>,
    pub mime: bool,
}

const FOLDER_DEFAULT: &[&str] = &[
    "folder:DisplayName",
    "folder:TotalCount",
    "folder:ChildFolderCount",
    "folder:UnreadCount",
];
const FOLDER_ALL: &[&str] = &["folder:ParentFolderId", "folder:FolderClass"];

const ITEM_DEFAULT: &[&str] = &[
    "item:ParentFolderId",
    "item:ItemClass",
    "item:Subject",
    "item:Sensitivity",
    "item:DateTimeReceived",
    "item:Size",
    "item:Importance",
    "item:IsSubmitted",
    "item:IsDraft",
    "item:IsFromMe",
    "item:IsResend",
    "item:IsUnmodified",
    "item:DateTimeSent",
    "item:DateTimeCreated",
    "item:DisplayCc",
    "item:DisplayTo",
    "item:HasAttachments",
    "item:Culture",
    "item:LastModifiedTime",
    "item:IsAssociated",
    "item:ConversationId",
    "message:Sender",
    "message:IsReadReceiptRequested",
    "message:ConversationTopic",
    "message:From",
    "message:InternetMessageId",
    "message:IsRead",
];
const ITEM_GET_DEFAULT: &[&str] = &[
    "item:Attachments",
    "message:ToRecipients",
    "message:CcRecipients",
];
const ITEM_ALL: &[&str] = &[
    "item:Categories",
    "message:IsDeliveryReceiptRequested",
    "message:IsResponseRequested",
];

impl Wanted {
    pub(crate) fn folder(shape: &Shape) -> Wanted {
        let mut w = Wanted::base(shape);
        if shape.base != BaseShape::IdOnly {
            w.fields
                .extend(FOLDER_DEFAULT.iter().map(|s| s.to_string()));
        }
        if shape.base == BaseShape::AllProperties {
            w.fields.extend(FOLDER_ALL.iter().map(|s| s.to_string()));
        }
        w
    }

    pub(crate) fn item(shape: &Shape, get_item: bool) -> Wanted {
        let mut w = Wanted::base(shape);
        if shape.base != BaseShape::IdOnly {
            w.fields.extend(ITEM_DEFAULT.iter().map(|s| s.to_string()));
            if get_item {
                w.fields
                    .extend(ITEM_GET_DEFAULT.iter().map(|s| s.to_string()));
            }
        }
        if shape.base == BaseShape::AllProperties {
            w.fields.extend(ITEM_ALL.iter().map(|s| s.to_string()));
        }
        // FindItem never returns MIME, attachments or recipient lists.
        w.mime = get_item && (shape.include_mime || w.fields.contains("item:MimeContent"));
        if !get_item {
            for f in [
                "item:Attachments",
                "message:ToRecipients",
                "message:CcRecipients",
                "message:BccRecipients",
            ] {
                w.fields.remove(f);
            }
        }
        w
    }

    fn base(shape: &Shape) -> Wanted {
        let mut fields = HashSet::new();
        let mut explicit = Vec::new();
        let mut extended = Vec::new();
        for p in &shape.props {
            match p {
                PropPath::Field(f) => {
                    fields.insert(f.clone());
                    explicit.push(f.clone());
                }
                PropPath::Extended(e) => extended.push(e.clone()),
                PropPath::Indexed(..) => {}
            }
        }
        Wanted {
            fields,
            explicit,
            extended,
            mime: false,
        }
    }

    fn has(&self, f: &str) -> bool {
        self.fields.contains(f)
    }
}

/// Everything needed to render one folder.
pub(crate) struct FolderView<'a> {
    pub kind: FolderKind,
    pub id: String,
    pub change_key: String,
    pub parent_id: String,
    pub class: Option<&'a str>,
    pub display_name: &'a str,
    pub total: usize,
    pub children: usize,
    pub unread: usize,
    pub hidden: bool,
    /// PR_ATTR_HIDDEN is set (to false) on this folder rather than absent.
    pub hidden_explicit: bool,
    /// PR_LOCAL_COMMIT_TIME_MAX (0x670A): when an item in the folder last changed.
    pub changed_at: OffsetDateTime,
}

pub(crate) fn write_folder(x: &mut Xml, f: &FolderView, w: &Wanted) {
    let el = format!("t:{}", f.kind.element());
    x.open(&el, &[]);
    x.empty("t:FolderId", &[("Id", &f.id), ("ChangeKey", &f.change_key)]);
    if w.has("folder:ParentFolderId") {
        x.empty(
            "t:ParentFolderId",
            &[("Id", &f.parent_id), ("ChangeKey", PARENT_CHANGE_KEY)],
        );
    }
    if w.has("folder:FolderClass")
        && let Some(class) = f.class
    {
        x.leaf("t:FolderClass", class);
    }
    if w.has("folder:DisplayName") {
        x.leaf("t:DisplayName", f.display_name);
    }
    if w.has("folder:TotalCount") {
        x.leaf("t:TotalCount", &f.total.to_string());
    }
    if w.has("folder:ChildFolderCount") {
        x.leaf("t:ChildFolderCount", &f.children.to_string());
    }
    for e in &w.extended {
        let value = match (e.tag, e.property_type.as_str()) {
            (Some(0x10F4), "Boolean") if f.hidden => Some("true".to_owned()),
            (Some(0x10F4), "Boolean") if f.hidden_explicit => Some("false".to_owned()),
            // Exchange renders SystemTime extended properties to the second.
            (Some(0x670A), "SystemTime") => Some(format_datetime(f.changed_at, false)),
            _ => None,
        };
        if let Some(value) = value {
            write_extended(x, e, &value);
        }
    }
    let has_unread = matches!(
        f.kind,
        FolderKind::Folder | FolderKind::Search | FolderKind::Tasks
    );
    if has_unread && w.has("folder:UnreadCount") {
        x.leaf("t:UnreadCount", &f.unread.to_string());
    }
    x.close(&el);
}

fn write_extended(x: &mut Xml, e: &ExtProp, value: &str) {
    x.open("t:ExtendedProperty", &[]);
    let attrs: Vec<(&str, &str)> = e.echo.iter().map(|(k, v)| (*k, v.as_str())).collect();
    x.empty("t:ExtendedFieldURI", &attrs);
    x.leaf("t:Value", value);
    x.close("t:ExtendedProperty");
}

/// Folder properties a restriction can test.
pub(crate) fn folder_kind_of(p: &PropPath) -> Option<Kind> {
    match p {
        PropPath::Field(f) => match f.as_str() {
            "folder:DisplayName" | "folder:FolderClass" => Some(Kind::Str),
            "folder:TotalCount" | "folder:ChildFolderCount" | "folder:UnreadCount" => {
                Some(Kind::Int)
            }
            _ => None,
        },
        PropPath::Extended(e) if e.tag == Some(0x10F4) => Some(Kind::Bool),
        _ => None,
    }
}

pub(crate) fn folder_value(f: &FolderView, p: &PropPath) -> Option<Val> {
    match p {
        PropPath::Field(name) => match name.as_str() {
            "folder:DisplayName" => Some(Val::Str(f.display_name.to_string())),
            "folder:FolderClass" => f.class.map(|c| Val::Str(c.to_string())),
            "folder:TotalCount" => Some(Val::Int(f.total as i64)),
            "folder:ChildFolderCount" => Some(Val::Int(f.children as i64)),
            "folder:UnreadCount" => Some(Val::Int(f.unread as i64)),
            _ => None,
        },
        PropPath::Extended(e) if e.tag == Some(0x10F4) => {
            (f.hidden || f.hidden_explicit).then_some(Val::Bool(f.hidden))
        }
        _ => None,
    }
}

/// The EWS element for an item class.
pub(crate) fn item_element(class: &str) -> &'static str {
    let c = class.to_ascii_lowercase();
    if c.starts_with("ipm.schedule.meeting.request") {
        "MeetingRequest"
    } else if c.starts_with("ipm.schedule.meeting.canceled") {
        "MeetingCancellation"
    } else if c.starts_with("ipm.schedule.meeting.resp") {
        "MeetingResponse"
    } else if c.starts_with("ipm.appointment") {
        "CalendarItem"
    } else if c.starts_with("ipm.contact") {
        "Contact"
    } else if c.starts_with("ipm.distlist") {
        "DistributionList"
    } else if c.starts_with("ipm.task") {
        "Task"
    } else if c.starts_with("ipm.post") {
        "PostItem"
    } else if c.starts_with("ipm.stickynote")
        || c.starts_with("ipm.conversationaction")
        || c.starts_with("ipm.configuration")
    {
        "Item"
    } else {
        "Message"
    }
}

/// True when the item derives from t:MessageType (message:* properties apply).
pub(crate) fn is_message(class: &str) -> bool {
    matches!(
        item_element(class),
        "Message" | "MeetingRequest" | "MeetingCancellation" | "MeetingResponse"
    )
}

/// For GetItem: the first explicitly requested property this item type does not have.
pub(crate) fn invalid_property(item: &Item, w: &Wanted) -> Option<String> {
    if is_message(&item.item_class) {
        let meeting = matches!(
            item_element(&item.item_class),
            "MeetingRequest" | "MeetingCancellation" | "MeetingResponse"
        );
        return w
            .explicit
            .iter()
            .find(|f| {
                (f.starts_with("meeting:") && !meeting)
                    || (f.starts_with("meetingRequest:")
                        && item_element(&item.item_class) != "MeetingRequest")
            })
            .cloned();
    }
    w.explicit
        .iter()
        .find(|f| f.starts_with("message:") || f.starts_with("meeting"))
        .cloned()
}

/// Context for rendering one item.
pub(crate) struct ItemContext<'a> {
    pub mailbox_address: &'a str,
    /// Id of the folder the item is stored in.
    pub parent_id: &'a str,
    pub in_drafts: bool,
    pub millis: bool,
}

struct Address {
    name: String,
    address: String,
}

fn addresses(mime: &[u8], header: &str) -> Vec<Address> {
    let Some(raw) = mime::header(mime, header) else {
        return Vec::new();
    };
    raw.split(',')
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            Some(match (part.rfind('<'), part.rfind('>')) {
                (Some(a), Some(b)) if a < b => Address {
                    name: mime::decode_header_text(part[..a].trim().trim_matches('"')),
                    address: part[a + 1..b].trim().to_string(),
                },
                _ => Address {
                    name: part.to_string(),
                    address: part.to_string(),
                },
            })
        })
        .collect()
}

fn write_mailbox(x: &mut Xml, a: &Address, internal_domain: &str) {
    x.open("t:Mailbox", &[]);
    x.leaf(
        "t:Name",
        if a.name.is_empty() {
            &a.address
        } else {
            &a.name
        },
    );
    x.leaf("t:EmailAddress", &a.address);
    x.leaf("t:RoutingType", "SMTP");
    let mailbox_type = if a.address.to_ascii_lowercase().ends_with(internal_domain) {
        "Mailbox"
    } else {
        "OneOff"
    };
    x.leaf("t:MailboxType", mailbox_type);
    x.close("t:Mailbox");
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Item properties a restriction or sort can use.
pub(crate) fn item_kind_of(p: &PropPath) -> Option<Kind> {
    match p {
        PropPath::Field(f) => match f.as_str() {
            "item:DateTimeReceived"
            | "item:DateTimeSent"
            | "item:DateTimeCreated"
            | "item:LastModifiedTime" => Some(Kind::Time),
            "item:Subject"
            | "item:ItemClass"
            | "item:Importance"
            | "item:Sensitivity"
            | "item:Categories"
            | "message:InternetMessageId"
            | "message:ConversationTopic" => Some(Kind::Str),
            "item:Size" => Some(Kind::Int),
            "item:HasAttachments" | "message:IsRead" | "item:IsDraft" => Some(Kind::Bool),
            _ => None,
        },
        PropPath::Extended(e) => match e.tag? {
            0x1035 | 0x001A | 0x0037 => Some(Kind::Str),
            0x0E06 => Some(Kind::Time),
            0x0E08 | 0x0E07 => Some(Kind::Int),
            0x0E1B => Some(Kind::Bool),
            _ => None,
        },
        PropPath::Indexed(..) => None,
    }
}

pub(crate) fn item_value(item: &Item, in_drafts: bool, p: &PropPath) -> Option<Val> {
    let v = match p {
        PropPath::Field(f) => match f.as_str() {
            "item:DateTimeReceived" | "item:DateTimeCreated" | "item:LastModifiedTime" => {
                Val::Time(item.received)
            }
            "item:DateTimeSent" => Val::Time(item.sent?),
            "item:Subject" => Val::Str(item.subject.clone()),
            "item:ItemClass" => Val::Str(item.item_class.clone()),
            "item:Importance" => Val::Str(item.importance.to_string()),
            "item:Sensitivity" => Val::Str(item.sensitivity.to_string()),
            "item:Categories" if !item.categories.is_empty() => Val::Strs(item.categories.clone()),
            "message:InternetMessageId" => Val::Str(item.message_id.clone()?),
            "message:ConversationTopic" => Val::Str(item.conversation_topic.clone()),
            "item:Size" => Val::Int(item.size() as i64),
            "item:HasAttachments" => Val::Bool(item.has_attachments()),
            "message:IsRead" => Val::Bool(item.is_read),
            "item:IsDraft" => Val::Bool(in_drafts),
            _ => return None,
        },
        PropPath::Extended(e) => match e.tag? {
            0x1035 => Val::Str(item.message_id.clone()?),
            0x001A => Val::Str(item.item_class.clone()),
            0x0037 => Val::Str(item.subject.clone()),
            0x0E06 => Val::Time(item.received),
            0x0E08 => Val::Int(item.size() as i64),
            0x0E07 => {
                Val::Int(i64::from(item.is_read) | if item.has_attachments() { 0x10 } else { 0 })
            }
            0x0E1B => Val::Bool(item.has_attachments()),
            _ => return None,
        },
        PropPath::Indexed(..) => return None,
    };
    Some(v)
}

fn extended_item_value(item: &Item, e: &ExtProp, millis: bool) -> Option<String> {
    let expected = match e.tag? {
        0x1035 | 0x001A | 0x0037 => "String",
        0x0E06 => "SystemTime",
        0x0E08 | 0x0E07 => "Integer",
        0x0E1B => "Boolean",
        _ => return None,
    };
    if e.property_type != expected {
        return None;
    }
    Some(
        match item_value(item, false, &PropPath::Extended(e.clone()))? {
            Val::Str(s) => s,
            Val::Time(t) => format_datetime(t, millis),
            Val::Int(i) => i.to_string(),
            Val::Bool(b) => bool_str(b).to_string(),
            Val::Strs(v) => v.join(";"),
        },
    )
}

/// Write one item element with the wanted properties, in schema order.
pub(crate) fn write_item(x: &mut Xml, item: &Item, ctx: &ItemContext, w: &Wanted) {
    let el = format!("t:{}", item_element(&item.item_class));
    let message = is_message(&item.item_class);
    let internal = ctx
        .mailbox_address
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let from = addresses(&item.mime, "From");
    let to = addresses(&item.mime, "To");
    let cc = addresses(&item.mime, "CC");
    let from_me = from
        .first()
        .is_some_and(|a| a.address.eq_ignore_ascii_case(ctx.mailbox_address));
    x.open(&el, &[]);
    if w.mime {
        x.open("t:MimeContent", &[("CharacterSet", "UTF-8")]);
        x.raw(&STANDARD.encode(&item.mime));
        x.close("t:MimeContent");
    }
    x.empty(
        "t:ItemId",
        &[("Id", &item.id), ("ChangeKey", &item.change_key)],
    );
    if w.has("item:ParentFolderId") {
        x.empty(
            "t:ParentFolderId",
            &[("Id", ctx.parent_id), ("ChangeKey", PARENT_CHANGE_KEY)],
        );
    }
    if w.has("item:ItemClass") {
        x.leaf("t:ItemClass", &item.item_class);
    }
    if w.has("item:Subject") {
        x.leaf("t:Subject", &item.subject);
    }
    if w.has("item:Sensitivity") {
        x.leaf("t:Sensitivity", item.sensitivity);
    }
    if w.has("item:Attachments") && !item.attachments.is_empty() {
        x.open("t:Attachments", &[]);
        for (i, a) in item.attachments.iter().enumerate() {
            let element = if a.content_type.eq_ignore_ascii_case("message/rfc822") {
                "t:ItemAttachment"
            } else {
                "t:FileAttachment"
            };
            let serial = ids::decode(&item.id).map(|d| d.serial).unwrap_or(0);
            let att_id = ids::encode(
                IdKind::Attachment,
                ids::decode(&item.id).map(|d| d.mailbox).unwrap_or(0),
                i as u16,
                serial,
            );
            x.open(element, &[]);
            x.empty("t:AttachmentId", &[("Id", &att_id)]);
            x.leaf("t:Name", &a.name);
            x.leaf("t:ContentType", &a.content_type);
            x.leaf("t:Size", &a.size.to_string());
            x.leaf("t:LastModifiedTime", &format_datetime(item.received, false));
            x.leaf("t:IsInline", bool_str(a.inline));
            if element == "t:FileAttachment" {
                x.leaf("t:IsContactPhoto", "false");
            }
            x.close(element);
        }
        x.close("t:Attachments");
    }
    if w.has("item:DateTimeReceived") {
        x.leaf(
            "t:DateTimeReceived",
            &format_datetime(item.received, ctx.millis),
        );
    }
    if w.has("item:Size") {
        x.leaf("t:Size", &item.size().to_string());
    }
    if w.has("item:Categories") && !item.categories.is_empty() {
        x.open("t:Categories", &[]);
        for c in &item.categories {
            x.leaf("t:String", c);
        }
        x.close("t:Categories");
    }
    if w.has("item:Importance") {
        x.leaf("t:Importance", item.importance);
    }
    if w.has("item:IsSubmitted") {
        x.leaf("t:IsSubmitted", "false");
    }
    if w.has("item:IsDraft") {
        x.leaf("t:IsDraft", bool_str(ctx.in_drafts));
    }
    if w.has("item:IsFromMe") {
        x.leaf("t:IsFromMe", bool_str(from_me));
    }
    if w.has("item:IsResend") {
        x.leaf("t:IsResend", "false");
    }
    if w.has("item:IsUnmodified") {
        x.leaf("t:IsUnmodified", bool_str(!ctx.in_drafts));
    }
    if w.has("item:DateTimeSent")
        && let Some(sent) = item.sent
    {
        x.leaf("t:DateTimeSent", &format_datetime(sent, ctx.millis));
    }
    if w.has("item:DateTimeCreated") {
        x.leaf(
            "t:DateTimeCreated",
            &format_datetime(item.received, ctx.millis),
        );
    }
    let names = |v: &[Address]| {
        v.iter()
            .map(|a| {
                if a.name.is_empty() {
                    a.address.clone()
                } else {
                    a.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if w.has("item:DisplayCc") {
        x.leaf("t:DisplayCc", &names(&cc));
    }
    if w.has("item:DisplayTo") {
        x.leaf("t:DisplayTo", &names(&to));
    }
    if w.has("item:HasAttachments") {
        x.leaf("t:HasAttachments", bool_str(item.has_attachments()));
    }
    for e in &w.extended {
        if let Some(value) = extended_item_value(item, e, ctx.millis) {
            write_extended(x, e, &value);
        }
    }
    if w.has("item:Culture") {
        x.leaf("t:Culture", "en-US");
    }
    if w.has("item:LastModifiedTime") {
        x.leaf(
            "t:LastModifiedTime",
            &format_datetime(item.received, ctx.millis),
        );
    }
    if w.has("item:IsAssociated") {
        x.leaf("t:IsAssociated", "false");
    }
    if w.has("item:ConversationId") {
        x.empty("t:ConversationId", &[("Id", &item.conversation_id)]);
    }
    if message {
        if w.has("message:Sender")
            && let Some(f) = from.first()
        {
            x.open("t:Sender", &[]);
            write_mailbox(x, f, &internal);
            x.close("t:Sender");
        }
        for (field, element, list) in [
            ("message:ToRecipients", "t:ToRecipients", &to),
            ("message:CcRecipients", "t:CcRecipients", &cc),
        ] {
            if w.has(field) && !list.is_empty() {
                x.open(element, &[]);
                for a in list {
                    write_mailbox(x, a, &internal);
                }
                x.close(element);
            }
        }
        if w.has("message:IsReadReceiptRequested") {
            x.leaf("t:IsReadReceiptRequested", "false");
        }
        if w.has("message:IsDeliveryReceiptRequested") {
            x.leaf("t:IsDeliveryReceiptRequested", "false");
        }
        if w.has("message:ConversationTopic") {
            x.leaf("t:ConversationTopic", &item.conversation_topic);
        }
        if w.has("message:From")
            && let Some(f) = from.first()
        {
            x.open("t:From", &[]);
            write_mailbox(x, f, &internal);
            x.close("t:From");
        }
        if w.has("message:InternetMessageId")
            && let Some(id) = &item.message_id
        {
            x.leaf("t:InternetMessageId", id);
        }
        if w.has("message:IsRead") {
            x.leaf("t:IsRead", bool_str(item.is_read));
        }
        if w.has("message:IsResponseRequested") {
            x.leaf("t:IsResponseRequested", "false");
        }
    }
    x.close(&el);
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn datetime_formats() {
        let t = datetime!(2024-03-01 11:00:00.987 +01:00);
        assert_eq!(format_datetime(t, false), "2024-03-01T10:00:00Z");
        assert_eq!(format_datetime(t, true), "2024-03-01T10:00:00.987Z");
    }

    #[test]
    fn elements() {
        assert_eq!(item_element("IPM.Note"), "Message");
        assert_eq!(item_element("IPM.Note.SMIME.MultipartSigned"), "Message");
        assert_eq!(item_element("REPORT.IPM.Note.NDR"), "Message");
        assert_eq!(
            item_element("IPM.Schedule.Meeting.Request"),
            "MeetingRequest"
        );
        assert_eq!(item_element("IPM.Appointment"), "CalendarItem");
        assert!(!is_message("IPM.Contact"));
    }
}
