//! Executing parsed EWS operations (GetFolder, FindFolder, FindItem, GetItem) against the
//! store: mailbox resolution (delegate, impersonation, implicit via ids), paging, restriction,
//! sorting and the response messages, including per-message errors (real ones and the
//! injected GetItem faults of [`Fault`]).

use crate::ids;
use crate::model::FolderKind;
use crate::render::{self, FolderView, ItemContext, Wanted};
use crate::request::{Expr, FolderRef, ItemRef, Op, Paging, Request, Shape, SortKey, Traversal};
use crate::restriction;
use crate::server::Fault;
use crate::store::{Store, Target};
use crate::xml::{self, FaultDetail, MsgError, SoapFault, Xml};

/// How a request picked its mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessStyle {
    /// `t:ExchangeImpersonation` header.
    Impersonation,
    /// `t:Mailbox/t:EmailAddress` inside a DistinguishedFolderId.
    Delegate,
    /// DistinguishedFolderId without a mailbox: the caller's own mailbox.
    Own,
    /// Only FolderId/ItemId values (which carry the mailbox).
    Implicit,
}

/// What the caller is allowed to do, decided by the server before executing.
pub(crate) struct Caller<'a> {
    /// Mailbox of the authenticated account, if it has one.
    pub own_mailbox: Option<usize>,
    pub illegal_char_refs: bool,
    pub max_find_page: usize,
    /// Injected faults; the item-level ones are applied here.
    pub fault: &'a Fault,
}

/// Result of executing one request.
pub(crate) struct Outcome {
    pub xml: String,
    pub style: Option<AccessStyle>,
    pub mailbox: Option<String>,
    /// `code: why` of every injected per-message error in the response.
    pub injected: Vec<String>,
}

struct Exec<'a> {
    store: &'a Store,
    impersonated: Option<usize>,
    caller: &'a Caller<'a>,
    millis: bool,
    style: Option<AccessStyle>,
    mailbox: Option<usize>,
    injected: Vec<String>,
}

/// For answering without executing: the operation's name, what its error messages carry after
/// the codes (`<m:Items/>` for GetItem), and how many messages it gets (one per id or folder).
fn op_shape(op: &Op) -> (&'static str, &'static str, usize) {
    match op {
        Op::GetFolder { ids, .. } => ("GetFolder", "<m:Folders/>", ids.len()),
        Op::FindFolder { parents, .. } => ("FindFolder", "", parents.len()),
        Op::FindItem { parents, .. } => ("FindItem", "", parents.len()),
        Op::GetItem { ids, .. } => ("GetItem", "<m:Items/>", ids.len()),
    }
}

/// A complete HTTP 200 response in which every message (one per requested id or parent
/// folder, as the server would answer) is `err`: request-level trouble such as throttling
/// that Exchange reports inside the response instead of as a fault.
pub(crate) fn error_response(req: &Request, err: &MsgError) -> String {
    let (op, trailer, count) = op_shape(&req.op);
    let mut x = Xml::new(false);
    xml::response_start(&mut x, op);
    for _ in 0..count {
        xml::error_message(&mut x, op, err, trailer);
    }
    xml::response_end(&mut x, op);
    x.finish()
}

pub(crate) fn execute(store: &Store, req: &Request, caller: &Caller) -> Result<Outcome, SoapFault> {
    let impersonated = match &req.impersonation {
        None => None,
        Some(imp) => {
            if imp.value.is_empty() {
                return Err(SoapFault::simple(
                    "ErrorInvalidExchangeImpersonationHeaderData",
                    "The impersonation header data is invalid.",
                )
                .with_note("empty ConnectingSID value"));
            }
            let found = match imp.kind.as_str() {
                "SID" => None,
                _ => store.mailbox_index(&imp.value),
            };
            match found {
                Some(mb) => Some(mb),
                None => {
                    let mut fault = SoapFault::simple(
                        "ErrorNonExistentMailbox",
                        "The SMTP address has no mailbox associated with it.",
                    );
                    fault.detail =
                        FaultDetail::Values(vec![("SmtpAddress".to_string(), imp.value.clone())]);
                    return Err(fault
                        .with_note(format!("impersonated mailbox {} does not exist", imp.value)));
                }
            }
        }
    };
    let mut exec = Exec {
        store,
        impersonated,
        caller,
        millis: req.precision_ms,
        style: impersonated.map(|_| AccessStyle::Impersonation),
        mailbox: impersonated,
        injected: Vec::new(),
    };
    let xml = match &req.op {
        Op::GetFolder { shape, ids } => exec.get_folder(shape, ids),
        Op::FindFolder {
            traversal,
            shape,
            paging,
            restriction,
            parents,
        } => exec.find_folder(*traversal, shape, paging, restriction.as_ref(), parents),
        Op::FindItem {
            traversal,
            shape,
            paging,
            restriction,
            sort,
            parents,
        } => exec.find_item(
            *traversal,
            shape,
            paging,
            restriction.as_ref(),
            sort,
            parents,
        ),
        Op::GetItem { shape, ids } => exec.get_item(shape, ids),
    };
    Ok(Outcome {
        xml,
        style: exec.style,
        mailbox: exec
            .mailbox
            .map(|mb| store.data.mailboxes[mb].address.clone()),
        injected: exec.injected,
    })
}

/// A slice of a view and the attributes of `m:RootFolder` describing it.
type Page = (std::ops::Range<usize>, Vec<(&'static str, String)>);

/// Slice a view of `total` entries.
fn page(paging: &Option<Paging>, total: usize, cap: usize) -> Result<Page, MsgError> {
    let bad_rows = || {
        MsgError::new(
            "ErrorInvalidPagingMaxRows",
            "The specified paging maximum rows value is invalid.",
        )
    };
    let limit = |max: Option<i64>| -> Result<usize, MsgError> {
        match max {
            Some(m) if m <= 0 => Err(bad_rows()),
            Some(m) => Ok((m as usize).min(cap)),
            None => Ok(cap),
        }
    };
    let bool_attr = |b: bool| if b { "true" } else { "false" }.to_string();
    match *paging {
        None => {
            let end = total.min(cap);
            Ok((
                0..end,
                vec![
                    ("TotalItemsInView", total.to_string()),
                    ("IncludesLastItemInRange", bool_attr(end == total)),
                ],
            ))
        }
        Some(Paging::Indexed {
            max,
            offset,
            from_end,
        }) => {
            let n = limit(max)?;
            if offset < 0 {
                return Err(MsgError::new(
                    "ErrorInvalidIndexedPagingParameters",
                    "The specified indexed paging parameters are invalid.",
                ));
            }
            let offset = offset as usize;
            let (range, next, last) = if from_end {
                let end = total.saturating_sub(offset);
                let start = end.saturating_sub(n);
                (start..end, offset + (end - start), start == 0)
            } else {
                let start = offset.min(total);
                let end = (start + n).min(total);
                (start..end, end.max(offset), end >= total)
            };
            Ok((
                range,
                vec![
                    ("IndexedPagingOffset", next.to_string()),
                    ("TotalItemsInView", total.to_string()),
                    ("IncludesLastItemInRange", bool_attr(last)),
                ],
            ))
        }
        Some(Paging::Fractional {
            max,
            numerator,
            denominator,
        }) => {
            let n = limit(max)?;
            if denominator <= 0 || numerator < 0 || numerator > denominator {
                return Err(MsgError::new(
                    "ErrorInvalidFractionalPagingParameters",
                    "The specified fractional paging parameters are invalid.",
                ));
            }
            let start = (total as i64 * numerator / denominator) as usize;
            let end = (start + n).min(total);
            Ok((
                start..end,
                vec![
                    ("NumeratorOffset", end.to_string()),
                    ("AbsoluteDenominator", total.to_string()),
                    ("IncludesLastItemInRange", bool_attr(end >= total)),
                    ("TotalItemsInView", total.to_string()),
                ],
            ))
        }
    }
}

impl Exec<'_> {
    fn note_access(&mut self, style: AccessStyle, mb: usize) {
        if self.style.is_none() {
            self.style = Some(style);
        }
        if self.mailbox.is_none() {
            self.mailbox = Some(mb);
        }
    }

    fn check_impersonation(&self, mb: usize) -> Result<(), MsgError> {
        match self.impersonated {
            Some(imp) if imp != mb => Err(MsgError::access_denied()),
            _ => Ok(()),
        }
    }

    fn resolve_folder(&mut self, r: &FolderRef) -> Result<(usize, Target), MsgError> {
        match r {
            FolderRef::Distinguished { name, mailbox } => {
                let mb = match mailbox {
                    Some(address) => {
                        if !address.contains('@') {
                            return Err(MsgError::new(
                                "ErrorInvalidSmtpAddress",
                                "The SMTP address format is invalid.",
                            ));
                        }
                        let mb = self
                            .store
                            .mailbox_index(address)
                            .ok_or_else(|| MsgError::non_existent_mailbox(address))?;
                        self.check_impersonation(mb)?;
                        self.note_access(AccessStyle::Delegate, mb);
                        mb
                    }
                    None => {
                        let mb = self
                            .impersonated
                            .or(self.caller.own_mailbox)
                            .ok_or_else(MsgError::missing_email_address)?;
                        self.note_access(AccessStyle::Own, mb);
                        mb
                    }
                };
                let target = self
                    .store
                    .well_known(mb, name)
                    .ok_or_else(MsgError::folder_not_found)?;
                Ok((mb, target))
            }
            FolderRef::Id(id) => match self.store.folder_by_id(id) {
                Some((mb, target)) => {
                    self.check_impersonation(mb)?;
                    self.note_access(AccessStyle::Implicit, mb);
                    Ok((mb, target))
                }
                None if ids::decode(id).is_some() => Err(MsgError::folder_not_found()),
                None => Err(MsgError::id_malformed()),
            },
        }
    }

    fn folder_view(&self, mb: usize, target: Target) -> FolderView<'_> {
        let store = self.store;
        let mailbox = &store.data.mailboxes[mb];
        let parent = store.parent_of(mb, target);
        let children = store.children(mb, target).len();
        let id = store.target_id(mb, target);
        let serial = ids::decode(&id).map(|d| u64::from(d.folder)).unwrap_or(0);
        let change_key = ids::change_key(ids::IdKind::Folder, mb as u16, serial, 1);
        match target {
            Target::Folder(fi) => {
                let f = &mailbox.folders[fi];
                FolderView {
                    kind: f.kind,
                    id,
                    change_key,
                    parent_id: store.target_id(mb, parent),
                    class: f.folder_class.as_deref(),
                    display_name: &f.display_name,
                    total: f.items.len(),
                    children,
                    unread: f.items.iter().filter(|i| !i.is_read).count(),
                    hidden: f.hidden,
                    hidden_explicit: store.is_well_known(mb, fi),
                    changed_at: store.changed_at(mb, target),
                }
            }
            Target::MsgRoot | Target::Root => FolderView {
                kind: FolderKind::Folder,
                id,
                change_key,
                parent_id: store.target_id(mb, parent),
                class: None,
                display_name: if target == Target::MsgRoot {
                    "Top of Information Store"
                } else {
                    ""
                },
                total: 0,
                children,
                unread: 0,
                hidden: false,
                hidden_explicit: false,
                changed_at: store.changed_at(mb, target),
            },
        }
    }

    fn get_folder(&mut self, shape: &Shape, refs: &[FolderRef]) -> String {
        let mut x = Xml::new(self.caller.illegal_char_refs);
        let wanted = Wanted::folder(shape);
        xml::response_start(&mut x, "GetFolder");
        for r in refs {
            match self.resolve_folder(r) {
                Ok((mb, target)) => {
                    xml::success_start(&mut x, "GetFolder");
                    x.raw("<m:Folders>");
                    render::write_folder(&mut x, &self.folder_view(mb, target), &wanted);
                    x.raw("</m:Folders>");
                    xml::message_end(&mut x, "GetFolder");
                }
                Err(e) => xml::error_message(&mut x, "GetFolder", &e, "<m:Folders/>"),
            }
        }
        xml::response_end(&mut x, "GetFolder");
        x.finish()
    }

    fn find_folder(
        &mut self,
        traversal: Traversal,
        shape: &Shape,
        paging: &Option<Paging>,
        restriction: Option<&Expr>,
        parents: &[FolderRef],
    ) -> String {
        let mut x = Xml::new(self.caller.illegal_char_refs);
        let wanted = Wanted::folder(shape);
        xml::response_start(&mut x, "FindFolder");
        let refused = (wanted.extended.iter())
            .filter_map(|e| e.tag)
            .find(|tag| self.caller.fault.refused_folder_tags.contains(tag));
        for r in parents {
            if let Some(tag) = refused {
                let err = MsgError::invalid_extended_property(tag);
                xml::error_message(&mut x, "FindFolder", &err, "");
                self.injected
                    .push(format!("{}: FindFolder asked for 0x{tag:04x}", err.code));
                continue;
            }
            let result = self.resolve_folder(r).and_then(|(mb, target)| {
                let mut list = match traversal {
                    Traversal::Deep => self.store.descendants(mb, target),
                    Traversal::Shallow => self.store.children(mb, target),
                    _ => Vec::new(),
                };
                let views: Vec<FolderView> = {
                    let mut views: Vec<(FolderView, Target)> = list
                        .drain(..)
                        .map(|t| (self.folder_view(mb, t), t))
                        .collect();
                    // Real servers do not list parents before children; order by name.
                    views.sort_by(|a, b| {
                        a.0.display_name
                            .to_lowercase()
                            .cmp(&b.0.display_name.to_lowercase())
                            .then_with(|| a.0.id.cmp(&b.0.id))
                    });
                    views.into_iter().map(|(v, _)| v).collect()
                };
                let views: Vec<FolderView> = match restriction {
                    Some(expr) => {
                        let compiled = restriction::compile(expr, &render::folder_kind_of)?;
                        views
                            .into_iter()
                            .filter(|v| {
                                restriction::eval(&compiled, &|p| render::folder_value(v, p))
                            })
                            .collect()
                    }
                    None => views,
                };
                let (range, attrs) = page(paging, views.len(), self.caller.max_find_page)?;
                Ok((views, range, attrs))
            });
            match result {
                Ok((views, range, attrs)) => {
                    xml::success_start(&mut x, "FindFolder");
                    let attrs: Vec<(&str, &str)> =
                        attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    x.open("m:RootFolder", &attrs);
                    if range.is_empty() {
                        x.empty("t:Folders", &[]);
                    } else {
                        x.open("t:Folders", &[]);
                        for v in &views[range] {
                            render::write_folder(&mut x, v, &wanted);
                        }
                        x.close("t:Folders");
                    }
                    x.close("m:RootFolder");
                    xml::message_end(&mut x, "FindFolder");
                }
                Err(e) => xml::error_message(&mut x, "FindFolder", &e, ""),
            }
        }
        xml::response_end(&mut x, "FindFolder");
        x.finish()
    }

    fn find_item(
        &mut self,
        traversal: Traversal,
        shape: &Shape,
        paging: &Option<Paging>,
        restriction: Option<&Expr>,
        sort: &[SortKey],
        parents: &[FolderRef],
    ) -> String {
        let mut x = Xml::new(self.caller.illegal_char_refs);
        let wanted = Wanted::item(shape, false);
        xml::response_start(&mut x, "FindItem");
        for r in parents {
            let result = self.resolve_folder(r).and_then(|(mb, target)| {
                let mailbox = &self.store.data.mailboxes[mb];
                let items: Vec<&crate::model::Item> = match (target, traversal) {
                    (Target::Folder(fi), Traversal::Shallow) => {
                        mailbox.folders[fi].items.iter().collect()
                    }
                    _ => Vec::new(),
                };
                let drafts = self.store.well_known(mb, "drafts");
                let in_drafts = |item: &crate::model::Item| {
                    drafts.is_some_and(|d| {
                        self.store
                            .home_folder(&item.id)
                            .is_some_and(|(m, f)| m == mb && d == Target::Folder(f))
                    })
                };
                // position in the folder = stable secondary key
                let mut view: Vec<(usize, &crate::model::Item)> =
                    items.into_iter().enumerate().collect();
                if let Some(expr) = restriction {
                    let compiled = restriction::compile(expr, &render::item_kind_of)?;
                    view.retain(|(_, item)| {
                        let drafts = in_drafts(item);
                        restriction::eval(&compiled, &|p| render::item_value(item, drafts, p))
                    });
                }
                for key in sort {
                    if render::item_kind_of(&key.path).is_none() {
                        return Err(MsgError::new(
                            "ErrorUnsupportedPathForSortGroup",
                            "The property path is not supported in a sort or group by clause.",
                        ));
                    }
                }
                let default_sort = [SortKey {
                    path: crate::request::PropPath::Field("item:DateTimeReceived".to_string()),
                    descending: true,
                }];
                let keys: &[SortKey] = if sort.is_empty() { &default_sort } else { sort };
                let first_descending = keys[0].descending;
                view.sort_by(|a, b| {
                    restriction::compare_by(keys, &|p| render::item_value(a.1, false, p), &|p| {
                        render::item_value(b.1, false, p)
                    })
                    .then_with(|| {
                        let o = a.0.cmp(&b.0);
                        if first_descending { o.reverse() } else { o }
                    })
                });
                let (range, attrs) = page(paging, view.len(), self.caller.max_find_page)?;
                Ok((mb, view, range, attrs))
            });
            match result {
                Ok((mb, view, range, attrs)) => {
                    xml::success_start(&mut x, "FindItem");
                    let attrs: Vec<(&str, &str)> =
                        attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    x.open("m:RootFolder", &attrs);
                    if range.is_empty() {
                        x.empty("t:Items", &[]);
                    } else {
                        x.open("t:Items", &[]);
                        for (_, item) in &view[range] {
                            self.write_item(&mut x, mb, item, &wanted);
                        }
                        x.close("t:Items");
                    }
                    x.close("m:RootFolder");
                    xml::message_end(&mut x, "FindItem");
                }
                Err(e) => xml::error_message(&mut x, "FindItem", &e, ""),
            }
        }
        xml::response_end(&mut x, "FindItem");
        x.finish()
    }

    fn write_item(&self, x: &mut Xml, mb: usize, item: &crate::model::Item, wanted: &Wanted) {
        let (home_mb, home_fi) = self.store.home_folder(&item.id).unwrap_or((mb, 0));
        let mailbox = &self.store.data.mailboxes[home_mb];
        let parent_id = mailbox
            .folders
            .get(home_fi)
            .map(|f| f.id.as_str())
            .unwrap_or("");
        let ctx = ItemContext {
            mailbox_address: &mailbox.address,
            parent_id,
            in_drafts: self.store.well_known(home_mb, "drafts") == Some(Target::Folder(home_fi)),
            millis: self.millis,
        };
        render::write_item(x, item, &ctx, wanted);
    }

    fn get_item(&mut self, shape: &Shape, refs: &[ItemRef]) -> String {
        let mut x = Xml::new(self.caller.illegal_char_refs);
        let wanted = Wanted::item(shape, true);
        let fault = self.caller.fault;
        xml::response_start(&mut x, "GetItem");
        if let Some(limit) = fault.timeout_above_batch
            && refs.len() > limit
        {
            // The batch ran out of time: every message fails, nothing is served.
            for _ in refs {
                xml::error_message(
                    &mut x,
                    "GetItem",
                    &MsgError::timeout_expired(),
                    "<m:Items/>",
                );
            }
            self.injected.push(format!(
                "ErrorTimeoutExpired: GetItem of {} items (timeout_above_batch {limit})",
                refs.len()
            ));
            xml::response_end(&mut x, "GetItem");
            return x.finish();
        }
        for r in refs {
            let found = match r {
                ItemRef::Other => Err(MsgError::item_not_found()),
                ItemRef::Id(id) => match self.store.locate_item(id) {
                    Some((mb, _, item)) => match self.check_impersonation(mb) {
                        Ok(()) => {
                            self.note_access(AccessStyle::Implicit, mb);
                            match render::invalid_property(item, &wanted) {
                                Some(uri) => Err(MsgError::invalid_property_request(&uri)),
                                None => Ok((mb, item)),
                            }
                        }
                        Err(e) => Err(e),
                    },
                    None if ids::decode(id).is_some() => Err(MsgError::item_not_found()),
                    None => Err(MsgError::id_malformed()),
                },
            };
            let found = found.and_then(|(mb, item)| {
                let injected = if fault.vanish_on_get.contains(&item.id) {
                    Some((MsgError::item_not_found(), "vanish_on_get"))
                } else if wanted.mime && fault.corrupt_always.contains(&item.id) {
                    Some((MsgError::mime_conversion_failed(), "corrupt_always"))
                } else if refs.len() > 1 && fault.corrupt_in_batch.contains(&item.id) {
                    Some((MsgError::item_corrupt(), "corrupt_in_batch"))
                } else {
                    None
                };
                match injected {
                    Some((err, why)) => {
                        self.injected.push(format!(
                            "{}: {why} {} (batch of {})",
                            err.code,
                            item.id,
                            refs.len()
                        ));
                        Err(err)
                    }
                    None => Ok((mb, item)),
                }
            });
            match found {
                Ok((mb, item)) => {
                    xml::success_start(&mut x, "GetItem");
                    x.raw("<m:Items>");
                    self.write_item(&mut x, mb, item, &wanted);
                    x.raw("</m:Items>");
                    xml::message_end(&mut x, "GetItem");
                }
                Err(e) => xml::error_message(&mut x, "GetItem", &e, "<m:Items/>"),
            }
        }
        xml::response_end(&mut x, "GetItem");
        x.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_math() {
        let p = |max, offset, from_end| {
            Some(Paging::Indexed {
                max,
                offset,
                from_end,
            })
        };
        let (r, a) = page(&p(Some(10), 0, false), 25, 1000).unwrap();
        assert_eq!(r, 0..10);
        assert_eq!(a[0], ("IndexedPagingOffset", "10".to_string()));
        assert_eq!(a[2].1, "false");
        let (r, a) = page(&p(Some(10), 20, false), 25, 1000).unwrap();
        assert_eq!(r, 20..25);
        assert_eq!(a[0].1, "25");
        assert_eq!(a[2].1, "true");
        let (r, _) = page(&p(Some(5000), 0, false), 25, 7).unwrap();
        assert_eq!(r, 0..7);
        let (r, a) = page(&p(Some(10), 0, true), 25, 1000).unwrap();
        assert_eq!(r, 15..25);
        assert_eq!(a[0].1, "10");
        let (r, a) = page(&p(Some(10), 30, false), 25, 1000).unwrap();
        assert!(r.is_empty());
        assert_eq!(a[2].1, "true");
        assert_eq!(
            page(&p(Some(0), 0, false), 25, 1000).unwrap_err().code,
            "ErrorInvalidPagingMaxRows"
        );
        let (r, a) = page(&None, 25, 1000).unwrap();
        assert_eq!(r, 0..25);
        assert_eq!(a.len(), 2);
    }
}
