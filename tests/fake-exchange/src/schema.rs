//! The slice of the EWS XML schema (types.xsd / messages.xsd) the fake enforces: enumerations
//! (FieldURI, DistinguishedFolderId, ...) and a sequence validator that reports violations in
//! the words .NET schema validation uses inside an ErrorSchemaValidation fault.

use roxmltree::{Document, Node};

use crate::xml::{NS_M, NS_T, SoapFault};

pub(crate) const XS: &str = "http://www.w3.org/2001/XMLSchema";
pub(crate) const UNBOUNDED: usize = usize::MAX;

/// Every value of t:UnindexedFieldURIType (Exchange 2016 schema, plus later additions).
pub(crate) const FIELD_URIS: &[&str] = &[
    "folder:FolderId",
    "folder:ParentFolderId",
    "folder:DisplayName",
    "folder:UnreadCount",
    "folder:TotalCount",
    "folder:ChildFolderCount",
    "folder:FolderClass",
    "folder:SearchParameters",
    "folder:ManagedFolderInformation",
    "folder:PermissionSet",
    "folder:EffectiveRights",
    "folder:SharingEffectiveRights",
    "folder:DistinguishedFolderId",
    "folder:PolicyTag",
    "folder:ArchiveTag",
    "folder:ReplicaList",
    "item:ItemId",
    "item:ParentFolderId",
    "item:ItemClass",
    "item:MimeContent",
    "item:Attachments",
    "item:Subject",
    "item:DateTimeReceived",
    "item:Size",
    "item:Categories",
    "item:HasAttachments",
    "item:Importance",
    "item:InReplyTo",
    "item:InternetMessageHeaders",
    "item:IsAssociated",
    "item:IsDraft",
    "item:IsFromMe",
    "item:IsResend",
    "item:IsSubmitted",
    "item:IsUnmodified",
    "item:DateTimeSent",
    "item:DateTimeCreated",
    "item:Body",
    "item:ResponseObjects",
    "item:Sensitivity",
    "item:ReminderDueBy",
    "item:ReminderIsSet",
    "item:ReminderNextTime",
    "item:ReminderMinutesBeforeStart",
    "item:DisplayTo",
    "item:DisplayCc",
    "item:Culture",
    "item:EffectiveRights",
    "item:LastModifiedName",
    "item:LastModifiedTime",
    "item:ConversationId",
    "item:UniqueBody",
    "item:Flag",
    "item:StoreEntryId",
    "item:InstanceKey",
    "item:NormalizedBody",
    "item:EntityExtractionResult",
    "item:PolicyTag",
    "item:ArchiveTag",
    "item:RetentionDate",
    "item:Preview",
    "item:NextPredictedAction",
    "item:GroupingAction",
    "item:PredictedActionReasons",
    "item:IsClutter",
    "item:RightsManagementLicenseData",
    "item:BlockStatus",
    "item:HasBlockedImages",
    "item:WebClientReadFormQueryString",
    "item:WebClientEditFormQueryString",
    "item:TextBody",
    "item:IconIndex",
    "item:MimeContentUTF8",
    "message:ConversationIndex",
    "message:ConversationTopic",
    "message:InternetMessageId",
    "message:IsRead",
    "message:IsResponseRequested",
    "message:IsReadReceiptRequested",
    "message:IsDeliveryReceiptRequested",
    "message:ReceivedBy",
    "message:ReceivedRepresenting",
    "message:References",
    "message:ReplyTo",
    "message:From",
    "message:Sender",
    "message:ToRecipients",
    "message:CcRecipients",
    "message:BccRecipients",
    "message:ApprovalRequestData",
    "message:VotingInformation",
    "message:ReminderMessageData",
    "meeting:AssociatedCalendarItemId",
    "meeting:IsDelegated",
    "meeting:IsOutOfDate",
    "meeting:HasBeenProcessed",
    "meeting:ResponseType",
    "meeting:ProposedStart",
    "meeting:ProposedEnd",
    "meetingRequest:MeetingRequestType",
    "meetingRequest:IntendedFreeBusyStatus",
    "meetingRequest:ChangeHighlights",
    "calendar:Start",
    "calendar:End",
    "calendar:OriginalStart",
    "calendar:StartWallClock",
    "calendar:EndWallClock",
    "calendar:StartTimeZoneId",
    "calendar:EndTimeZoneId",
    "calendar:IsAllDayEvent",
    "calendar:LegacyFreeBusyStatus",
    "calendar:Location",
    "calendar:EnhancedLocation",
    "calendar:When",
    "calendar:IsMeeting",
    "calendar:IsCancelled",
    "calendar:IsRecurring",
    "calendar:MeetingRequestWasSent",
    "calendar:IsResponseRequested",
    "calendar:CalendarItemType",
    "calendar:MyResponseType",
    "calendar:Organizer",
    "calendar:RequiredAttendees",
    "calendar:OptionalAttendees",
    "calendar:Resources",
    "calendar:ConflictingMeetingCount",
    "calendar:AdjacentMeetingCount",
    "calendar:ConflictingMeetings",
    "calendar:AdjacentMeetings",
    "calendar:Duration",
    "calendar:TimeZone",
    "calendar:AppointmentReplyTime",
    "calendar:AppointmentSequenceNumber",
    "calendar:AppointmentState",
    "calendar:Recurrence",
    "calendar:FirstOccurrence",
    "calendar:LastOccurrence",
    "calendar:ModifiedOccurrences",
    "calendar:DeletedOccurrences",
    "calendar:MeetingTimeZone",
    "calendar:ConferenceType",
    "calendar:AllowNewTimeProposal",
    "calendar:IsOnlineMeeting",
    "calendar:MeetingWorkspaceUrl",
    "calendar:NetShowUrl",
    "calendar:UID",
    "calendar:RecurrenceId",
    "calendar:DateTimeStamp",
    "calendar:StartTimeZone",
    "calendar:EndTimeZone",
    "calendar:JoinOnlineMeetingUrl",
    "calendar:OnlineMeetingSettings",
    "calendar:IsOrganizer",
    "task:ActualWork",
    "task:AssignedTime",
    "task:BillingInformation",
    "task:ChangeCount",
    "task:Companies",
    "task:CompleteDate",
    "task:Contacts",
    "task:DelegationState",
    "task:Delegator",
    "task:DueDate",
    "task:IsAssignmentEditable",
    "task:IsComplete",
    "task:IsRecurring",
    "task:IsTeamTask",
    "task:Mileage",
    "task:Owner",
    "task:PercentComplete",
    "task:Recurrence",
    "task:StartDate",
    "task:Status",
    "task:StatusDescription",
    "task:TotalWork",
    "contacts:Alias",
    "contacts:AssistantName",
    "contacts:Birthday",
    "contacts:BusinessHomePage",
    "contacts:Children",
    "contacts:Companies",
    "contacts:CompanyName",
    "contacts:CompleteName",
    "contacts:ContactSource",
    "contacts:Culture",
    "contacts:Department",
    "contacts:DisplayName",
    "contacts:DirectoryId",
    "contacts:DirectReports",
    "contacts:EmailAddresses",
    "contacts:FileAs",
    "contacts:FileAsMapping",
    "contacts:Generation",
    "contacts:GivenName",
    "contacts:ImAddresses",
    "contacts:Initials",
    "contacts:JobTitle",
    "contacts:Manager",
    "contacts:ManagerMailbox",
    "contacts:MiddleName",
    "contacts:Mileage",
    "contacts:MSExchangeCertificate",
    "contacts:Nickname",
    "contacts:Notes",
    "contacts:OfficeLocation",
    "contacts:PhoneNumbers",
    "contacts:PhoneticFullName",
    "contacts:PhoneticFirstName",
    "contacts:PhoneticLastName",
    "contacts:Photo",
    "contacts:PhysicalAddresses",
    "contacts:PostalAddressIndex",
    "contacts:Profession",
    "contacts:SpouseName",
    "contacts:Surname",
    "contacts:WeddingAnniversary",
    "contacts:UserSMIMECertificate",
    "contacts:HasPicture",
    "distributionlist:Members",
    "postitem:PostedTime",
    "conversation:ConversationId",
    "conversation:ConversationTopic",
    "conversation:UniqueRecipients",
    "conversation:GlobalUniqueRecipients",
    "conversation:UniqueUnreadSenders",
    "conversation:GlobalUniqueUnreadSenders",
    "conversation:UniqueSenders",
    "conversation:GlobalUniqueSenders",
    "conversation:LastDeliveryTime",
    "conversation:GlobalLastDeliveryTime",
    "conversation:Categories",
    "conversation:GlobalCategories",
    "conversation:FlagStatus",
    "conversation:GlobalFlagStatus",
    "conversation:HasAttachments",
    "conversation:GlobalHasAttachments",
    "conversation:HasIrm",
    "conversation:GlobalHasIrm",
    "conversation:MessageCount",
    "conversation:GlobalMessageCount",
    "conversation:UnreadCount",
    "conversation:GlobalUnreadCount",
    "conversation:Size",
    "conversation:GlobalSize",
    "conversation:ItemClasses",
    "conversation:GlobalItemClasses",
    "conversation:Importance",
    "conversation:GlobalImportance",
    "conversation:ItemIds",
    "conversation:GlobalItemIds",
    "conversation:LastModifiedTime",
    "conversation:InstanceKey",
    "conversation:Preview",
    "conversation:GlobalParentFolderId",
    "conversation:NextPredictedAction",
    "conversation:GroupingAction",
    "conversation:IconIndex",
    "conversation:GlobalIconIndex",
    "conversation:DraftItemIds",
    "conversation:HasClutter",
];

/// Every value of t:DistinguishedFolderIdNameType the fake knows.
pub(crate) const DISTINGUISHED_FOLDERS: &[&str] = &[
    "calendar",
    "contacts",
    "deleteditems",
    "drafts",
    "inbox",
    "journal",
    "notes",
    "outbox",
    "sentitems",
    "tasks",
    "msgfolderroot",
    "publicfoldersroot",
    "root",
    "junkemail",
    "searchfolders",
    "voicemail",
    "recoverableitemsroot",
    "recoverableitemsdeletions",
    "recoverableitemsversions",
    "recoverableitemspurges",
    "archiveroot",
    "archivemsgfolderroot",
    "archivedeleteditems",
    "archiveinbox",
    "archiverecoverableitemsroot",
    "archiverecoverableitemsdeletions",
    "archiverecoverableitemsversions",
    "archiverecoverableitemspurges",
    "syncissues",
    "conflicts",
    "localfailures",
    "serverfailures",
    "recipientcache",
    "quickcontacts",
    "conversationhistory",
    "adminauditlogs",
    "todosearch",
    "mycontacts",
    "directory",
    "imcontactlist",
    "peopleconnect",
    "favorites",
    "mycontactsextended",
    "fromfavoritesenders",
    "archive",
    "inference",
    "clutter",
    "scheduled",
    "workingset",
    "allitems",
    "allcontacts",
    "allcategorizeditems",
    "externalcontacts",
    "teammessages",
    "personmetadata",
    "sharepointnotifications",
];

pub(crate) const MAPI_PROPERTY_TYPES: &[&str] = &[
    "ApplicationTime",
    "ApplicationTimeArray",
    "Binary",
    "BinaryArray",
    "Boolean",
    "CLSID",
    "CLSIDArray",
    "Currency",
    "CurrencyArray",
    "Double",
    "DoubleArray",
    "Error",
    "Float",
    "FloatArray",
    "Integer",
    "IntegerArray",
    "Long",
    "LongArray",
    "Null",
    "Object",
    "ObjectArray",
    "Short",
    "ShortArray",
    "SystemTime",
    "SystemTimeArray",
    "String",
    "StringArray",
];

pub(crate) const DISTINGUISHED_PROPERTY_SETS: &[&str] = &[
    "Meeting",
    "Appointment",
    "Common",
    "PublicStrings",
    "Address",
    "InternetHeaders",
    "CalendarAssistant",
    "UnifiedMessaging",
    "Task",
    "Sharing",
];

/// Values of RequestServerVersion/@Version an Exchange 2016 server accepts.
pub(crate) const SERVER_VERSIONS: &[&str] = &[
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
];

/// EWS operations a real server implements but this fake does not.
pub(crate) const OTHER_OPERATIONS: &[&str] = &[
    "SyncFolderItems",
    "SyncFolderHierarchy",
    "ConvertId",
    "ResolveNames",
    "GetAttachment",
    "ExportItems",
    "UploadItems",
    "FindConversation",
    "GetConversationItems",
    "CreateItem",
    "UpdateItem",
    "DeleteItem",
    "MoveItem",
    "CopyItem",
    "SendItem",
    "CreateFolder",
    "UpdateFolder",
    "DeleteFolder",
    "EmptyFolder",
    "MoveFolder",
    "CopyFolder",
    "CreateAttachment",
    "DeleteAttachment",
    "GetServerTimeZones",
    "GetUserOofSettings",
    "SetUserOofSettings",
    "Subscribe",
    "Unsubscribe",
    "GetEvents",
    "GetStreamingEvents",
    "GetUserAvailabilityRequest",
    "ExpandDL",
    "GetDelegate",
    "GetMailTips",
    "GetUserConfiguration",
    "MarkAsJunk",
    "ArchiveItem",
    "GetInboxRules",
    "FindPeople",
    "GetPasswordExpirationDate",
    "GetSharingMetadata",
    "GetRoomLists",
    "GetRooms",
    "MarkAllItemsAsRead",
    "GetUserPhoto",
    "GetAppManifests",
    "GetNonIndexableItemDetails",
];

/// One position of an XSD sequence: any of `names`, between `min` and `max` times.
pub(crate) struct Slot {
    pub names: &'static [(&'static str, &'static str)],
    pub min: usize,
    pub max: usize,
}

pub(crate) const fn slot(
    names: &'static [(&'static str, &'static str)],
    min: usize,
    max: usize,
) -> Slot {
    Slot { names, min, max }
}

/// The t:Path substitution group.
pub(crate) const PATH: &[(&str, &str)] = &[
    (NS_T, "FieldURI"),
    (NS_T, "IndexedFieldURI"),
    (NS_T, "ExtendedFieldURI"),
];

/// The t:SearchExpression substitution group.
pub(crate) const SEARCH_EXPRESSION: &[(&str, &str)] = &[
    (NS_T, "Exists"),
    (NS_T, "Excludes"),
    (NS_T, "IsEqualTo"),
    (NS_T, "IsNotEqualTo"),
    (NS_T, "IsGreaterThan"),
    (NS_T, "IsGreaterThanOrEqualTo"),
    (NS_T, "IsLessThan"),
    (NS_T, "IsLessThanOrEqualTo"),
    (NS_T, "Contains"),
    (NS_T, "Not"),
    (NS_T, "And"),
    (NS_T, "Or"),
];

pub(crate) fn is(node: Node, ns: &str, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name && node.tag_name().namespace() == Some(ns)
}

/// Validation helpers bound to one parsed document (for line/position in faults).
pub(crate) struct Validator<'a, 'i> {
    pub doc: &'a Document<'i>,
}

fn ns_of<'n>(node: Node<'n, '_>) -> &'n str {
    node.tag_name().namespace().unwrap_or("")
}

fn expected_list(names: &[(&str, &str)]) -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (ns, name) in names {
        match groups.iter_mut().find(|(g, _)| g == ns) {
            Some((_, v)) => {
                if !v.contains(name) {
                    v.push(name)
                }
            }
            None => groups.push((ns, vec![name])),
        }
    }
    groups
        .iter()
        .map(|(ns, v)| format!("'{}' in namespace '{}'", v.join(", "), ns))
        .collect::<Vec<_>>()
        .join(" as well as ")
}

impl<'a, 'i> Validator<'a, 'i> {
    pub(crate) fn fault(&self, node: Node, violation: String) -> SoapFault {
        let pos = self.doc.text_pos_at(node.range().start);
        SoapFault::schema(pos.row, pos.col + 1, violation)
    }

    /// Element children, rejecting non-whitespace text.
    pub(crate) fn elements(&self, node: Node<'a, 'i>) -> Result<Vec<Node<'a, 'i>>, SoapFault> {
        let mut out = Vec::new();
        for child in node.children() {
            if child.is_element() {
                out.push(child);
            } else if child.is_text() && !child.text().unwrap_or("").trim().is_empty() {
                return Err(self.fault(
                    child,
                    format!(
                        "The element '{}' in namespace '{}' cannot contain text.",
                        node.tag_name().name(),
                        ns_of(node)
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// Match the element children of `node` against an XSD sequence.
    pub(crate) fn sequence(
        &self,
        node: Node<'a, 'i>,
        slots: &[Slot],
    ) -> Result<Vec<Vec<Node<'a, 'i>>>, SoapFault> {
        let kids = self.elements(node)?;
        let mut out: Vec<Vec<Node>> = slots.iter().map(|_| Vec::new()).collect();
        let matches = |s: &Slot, n: Node| s.names.iter().any(|(ns, name)| is(n, ns, name));
        let expected = |from: usize, out: &Vec<Vec<Node>>| {
            let mut names = Vec::new();
            for (j, s) in slots.iter().enumerate().skip(from) {
                if out[j].len() < s.max {
                    names.extend_from_slice(s.names);
                }
                if out[j].len() < s.min {
                    break;
                }
            }
            names
        };
        let mut si = 0;
        for child in kids {
            let start = si;
            loop {
                let invalid = si == slots.len()
                    || (!(matches(&slots[si], child) && out[si].len() < slots[si].max)
                        && out[si].len() < slots[si].min);
                if invalid {
                    let names = expected(start, &out);
                    let mut msg = format!(
                        "The element '{}' in namespace '{}' has invalid child element '{}' in namespace '{}'.",
                        node.tag_name().name(),
                        ns_of(node),
                        child.tag_name().name(),
                        ns_of(child)
                    );
                    if !names.is_empty() {
                        msg.push_str(&format!(
                            " List of possible elements expected: {}.",
                            expected_list(&names)
                        ));
                    }
                    return Err(self.fault(child, msg));
                }
                if matches(&slots[si], child) && out[si].len() < slots[si].max {
                    out[si].push(child);
                    break;
                }
                si += 1;
            }
        }
        for j in si..slots.len() {
            if out[j].len() < slots[j].min {
                let names = expected(si, &out);
                return Err(self.fault(
                    node,
                    format!(
                        "The element '{}' in namespace '{}' has incomplete content. List of possible elements expected: {}.",
                        node.tag_name().name(),
                        ns_of(node),
                        expected_list(&names)
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// Reject undeclared attributes (no namespace) and require `required`.
    pub(crate) fn attributes(
        &self,
        node: Node,
        allowed: &[&str],
        required: &[&str],
    ) -> Result<(), SoapFault> {
        for a in node.attributes() {
            if a.namespace().is_none() && !allowed.contains(&a.name()) {
                return Err(self.fault(
                    node,
                    format!("The '{}' attribute is not declared.", a.name()),
                ));
            }
        }
        for r in required {
            if node.attribute(*r).is_none() {
                return Err(self.fault(node, format!("The required attribute '{r}' is missing.")));
            }
        }
        Ok(())
    }

    /// An enumerated attribute; `type_name` is the t: type for the message.
    pub(crate) fn enum_attr(
        &self,
        node: Node<'a, 'i>,
        name: &str,
        values: &[&str],
        type_name: &str,
    ) -> Result<Option<&'a str>, SoapFault> {
        match node.attribute(name) {
            None => Ok(None),
            Some(v) if values.contains(&v) => Ok(Some(v)),
            Some(v) => Err(self.fault(
                node,
                format!(
                    "The '{name}' attribute is invalid - The value '{v}' is invalid according to its datatype '{NS_T}:{type_name}' - The Enumeration constraint failed."
                ),
            )),
        }
    }

    pub(crate) fn int_attr(&self, node: Node, name: &str) -> Result<Option<i64>, SoapFault> {
        match node.attribute(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<i32>() {
                Ok(n) => Ok(Some(i64::from(n))),
                Err(_) => Err(self.fault(
                    node,
                    format!(
                        "The '{name}' attribute is invalid - The value '{v}' is invalid according to its datatype '{XS}:int' - The string '{v}' is not a valid Int32 value."
                    ),
                )),
            },
        }
    }

    /// Text of a simple-typed element with an enumeration.
    pub(crate) fn enum_text(
        &self,
        node: Node<'a, 'i>,
        values: &[&str],
        type_name: &str,
    ) -> Result<&'a str, SoapFault> {
        self.attributes(node, &[], &[])?;
        let v = node.text().unwrap_or("");
        if values.contains(&v) {
            return Ok(v);
        }
        Err(self.fault(
            node,
            format!(
                "The '{}:{}' element is invalid - The value '{v}' is invalid according to its datatype '{NS_T}:{type_name}' - The Enumeration constraint failed.",
                ns_of(node),
                node.tag_name().name()
            ),
        ))
    }

    pub(crate) fn bool_text(&self, node: Node) -> Result<bool, SoapFault> {
        self.attributes(node, &[], &[])?;
        let v = node.text().unwrap_or("");
        match v.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(self.fault(
                node,
                format!(
                    "The '{}:{}' element is invalid - The value '{v}' is invalid according to its datatype '{XS}:boolean' - The string '{v}' is not a valid Boolean value.",
                    ns_of(node),
                    node.tag_name().name()
                ),
            )),
        }
    }
}

/// `'{ns}:{name}'` of an element, for "not declared" messages.
pub(crate) fn qualified(node: Node) -> String {
    format!("{}:{}", ns_of(node), node.tag_name().name())
}

/// Namespace helper for messages-namespace slots.
pub(crate) const fn m(name: &'static str) -> (&'static str, &'static str) {
    (NS_M, name)
}

/// Namespace helper for types-namespace slots.
pub(crate) const fn t(name: &'static str) -> (&'static str, &'static str) {
    (NS_T, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(xml: &str, slots: &[Slot]) -> Result<usize, String> {
        let doc = Document::parse(xml).unwrap();
        let v = Validator { doc: &doc };
        v.sequence(doc.root_element(), slots)
            .map(|o| o.iter().map(Vec::len).sum())
            .map_err(|f| f.faultstring)
    }

    #[test]
    fn sequence_messages() {
        const A: &[(&str, &str)] = &[t("A")];
        const B: &[(&str, &str)] = &[t("B")];
        const C: &[(&str, &str)] = &[t("C")];
        let slots = [slot(A, 1, 1), slot(B, 0, 1), slot(C, 1, UNBOUNDED)];
        let ns = format!("xmlns:t=\"{NS_T}\"");
        assert_eq!(
            check(&format!("<t:X {ns}><t:A/><t:C/><t:C/></t:X>"), &slots),
            Ok(3)
        );
        assert_eq!(
            check(&format!("<t:X {ns}><t:A/><t:B/><t:C/></t:X>"), &slots),
            Ok(3)
        );
        let err = check(&format!("<t:X {ns}><t:A/><t:C/><t:B/></t:X>"), &slots).unwrap_err();
        assert!(err.contains("has invalid child element 'B'"), "{err}");
        assert!(
            err.contains("List of possible elements expected: 'C'"),
            "{err}"
        );
        let err = check(&format!("<t:X {ns}><t:B/></t:X>"), &slots).unwrap_err();
        assert!(
            err.contains("List of possible elements expected: 'A' in namespace"),
            "{err}"
        );
        let err = check(&format!("<t:X {ns}><t:A/></t:X>"), &slots).unwrap_err();
        assert!(err.contains("has incomplete content"), "{err}");
        let err = check(&format!("<t:X {ns}><t:A/>text<t:C/></t:X>"), &slots).unwrap_err();
        assert!(err.contains("cannot contain text"), "{err}");
    }

    #[test]
    fn lists_have_key_values() {
        for v in [
            "item:DateTimeReceived",
            "message:InternetMessageId",
            "item:ConversationId",
            "message:ConversationTopic",
            "folder:FolderClass",
        ] {
            assert!(FIELD_URIS.contains(&v));
        }
        assert!(!FIELD_URIS.contains(&"item:ConversationTopic"));
        assert!(DISTINGUISHED_FOLDERS.contains(&"msgfolderroot"));
    }
}
