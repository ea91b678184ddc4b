//! Exchange Web Services: folder discovery, listing since a watermark, MIME fetch.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use roxmltree::Node;
use time::OffsetDateTime;

use super::soap::{self, NS_MESSAGES, NS_TYPES, child, child_text, escape};
use super::throttle::{self, BackoffGate, ConcurrencyLimit};
use super::transport::Transport;
use super::{
    AttachmentInfo, Error, FetchedItem, FolderInfo, ItemOutcome, ItemRef, Listing, MailSource,
};
use crate::shutdown::StopFlag;

/// Version headers to try, newest first. Exchange2013_SP1 suits 2013 SP1, 2016, 2019 and
/// Online (the newest value the schema documents); everything we use exists in all of them, so
/// a server that rejects one gets the next.
const SERVER_VERSIONS: &[&str] = &[
    "Exchange2013_SP1",
    "Exchange2013",
    "Exchange2010_SP2",
    "Exchange2010_SP1",
    "Exchange2010",
    "Exchange2007_SP1",
];

/// Codes with which a server rejects our `RequestServerVersion`.
const VERSION_ERROR_CODES: &[&str] = &[
    "ErrorInvalidServerVersion",
    "ErrorIncorrectSchemaVersion",
    "ErrorInvalidSchemaVersionForMailboxVersion",
];

/// Per-item codes after which the item is fetched again alone: Exchange fails some items only
/// in batches.
const RETRY_ALONE_CODES: &[&str] = &[
    "ErrorItemCorrupt",
    "ErrorMimeContentConversionFailed",
    "ErrorCorruptData",
];

/// GetItem batches halve on ErrorTimeoutExpired and grow back by one after this many
/// successful batches.
const BATCH_GROWTH_AFTER_SUCCESSES: u32 = 20;

/// Items per FindItem page: below the 250 that Exchange 2013+ allows for restricted searches.
const FIND_ITEM_PAGE: usize = 200;
/// Folders per FindFolder page.
const FIND_FOLDER_PAGE: usize = 250;
/// Items per GetItem with MIME: Microsoft recommends about 10 for MIME exports.
const GET_ITEM_BATCH: usize = 10;
/// At most this many bytes of (store-reported) item size per GetItem; larger items go alone.
const GET_ITEM_BATCH_BYTES: u64 = 20 * 1024 * 1024;
/// Attempts of one request that failed (connection lost, malformed reply, HTML 500) before its
/// error is handed to the caller.
const MAX_ATTEMPTS: u32 = 8;
/// Waits the server demanded (ErrorServerBusy, 429/503 with Retry-After, too many connections)
/// one request may sit through: throttling is the server working as designed, so it gets a
/// much larger, but still finite, budget.
const MAX_THROTTLED_WAITS: u32 = 60;
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(60);
/// Exchange asked to wait but said not how long.
const DEFAULT_BUSY_WAIT: Duration = Duration::from_secs(30);
/// PR_ATTR_HIDDEN.
const PROPERTY_TAG_HIDDEN: &str = "0x10f4";
/// PR_LOCAL_COMMIT_TIME_MAX ([MS-OXCFOLD] 2.2.2.2.1.14): the last time a message in the
/// folder changed (added, modified, moved in or out, deleted).
const PROPERTY_TAG_CHANGED_AT: &str = "0x670a";
/// How far the server's `Date` must be past a folder's change time for that time to be
/// settled: both are to the second, and the front-end server that answers and the mailbox
/// server that stamps the change may disagree by a second or two.
const SETTLED_MARGIN: time::Duration = time::Duration::seconds(5);

/// Whether no change stamped `changed_at` can come after a reply the server sent at
/// `server_now`.
fn is_settled(changed_at: Option<OffsetDateTime>, server_now: Option<OffsetDateTime>) -> bool {
    matches!((changed_at, server_now), (Some(changed), Some(now)) if changed + SETTLED_MARGIN <= now)
}

/// Codes with which a server could refuse the extended property we ask FindFolder for.
const REFUSED_PROPERTY_CODES: &[&str] = &[
    "ErrorInvalidPropertyRequest",
    "ErrorInvalidExtendedProperty",
    "ErrorInvalidExtendedPropertyValue",
    "ErrorInvalidPropertyForOperation",
    "ErrorSchemaValidation",
];

/// How requests name the mailbox they are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The service account has delegate (FullAccess) rights; the mailbox is named in each
    /// distinguished folder id.
    Delegate,
    /// The service account impersonates the mailbox owner (ExchangeImpersonation header).
    Impersonation,
}

/// What every thread talking to one EWS server shares: the server's demanded pauses, its
/// connection budget and the version header it accepts.
#[derive(Debug)]
pub struct EwsServer {
    pub gate: BackoffGate,
    pub connections: ConcurrencyLimit,
    /// Index into `SERVER_VERSIONS`.
    version: AtomicUsize,
    /// The server refused PR_LOCAL_COMMIT_TIME_MAX in FindFolder: stop asking for it.
    no_change_times: AtomicBool,
}

impl EwsServer {
    pub fn new(max_concurrent_requests: usize) -> Self {
        EwsServer {
            gate: BackoffGate::default(),
            connections: ConcurrencyLimit::new(max_concurrent_requests),
            version: AtomicUsize::new(0),
            no_change_times: AtomicBool::new(false),
        }
    }

    fn version(&self) -> (usize, &'static str) {
        let index = self
            .version
            .load(Ordering::Relaxed)
            .min(SERVER_VERSIONS.len() - 1);
        (index, SERVER_VERSIONS[index])
    }

    /// Steps down from `rejected` (unless another thread already did). False when there is no
    /// older version left.
    fn fall_back_from(&self, rejected: usize) -> bool {
        if rejected + 1 >= SERVER_VERSIONS.len() {
            return false;
        }
        let _ = self.version.compare_exchange(
            rejected,
            rejected + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        true
    }
}

/// The EWS client of one worker thread.
pub struct EwsSource {
    transport: Transport,
    access: Access,
    server: Arc<EwsServer>,
    /// Items per GetItem; halves on ErrorTimeoutExpired.
    get_item_batch: usize,
    successes_since_shrink: u32,
    stop: StopFlag,
    /// Politeness pause between consecutive requests of this thread (`poll_message_sleep`).
    request_pause: Duration,
    /// Counts retries by reason, for logs and metrics.
    on_retry: Arc<dyn Fn(&str) + Send + Sync>,
    /// The `Date` of the latest reply read.
    last_reply_date: Option<OffsetDateTime>,
}

impl EwsSource {
    pub fn new(
        transport: Transport,
        access: Access,
        server: Arc<EwsServer>,
        stop: StopFlag,
        request_pause: Duration,
        on_retry: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Self {
        EwsSource {
            transport,
            access,
            server,
            get_item_batch: GET_ITEM_BATCH,
            successes_since_shrink: 0,
            stop,
            request_pause,
            on_retry,
            last_reply_date: None,
        }
    }

    /// Posts an operation for `mailbox` and reads the response with `read`, retrying transient
    /// failures and honouring every wait the server demands, for all threads. With
    /// `give_back_timeouts`, ErrorTimeoutExpired is returned at once so the caller can retry
    /// with a smaller batch.
    fn call<T>(
        &mut self,
        mailbox: &str,
        operation: &str,
        body: &str,
        give_back_timeouts: bool,
        read: impl Fn(&roxmltree::Document<'_>, &soap::Lifted<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let impersonate = (self.access == Access::Impersonation).then_some(mailbox);
        let mut attempt = 0;
        let mut throttled = 0;
        loop {
            if !self.server.gate.wait(&self.stop) {
                return Err(stopped());
            }
            if !self.request_pause.is_zero() && !self.stop.sleep(self.request_pause) {
                return Err(stopped());
            }
            let (version_index, version) = self.server.version();
            let request = soap::envelope(version, impersonate, body);
            let result = {
                let _permit = self.server.connections.acquire();
                self.transport.post(mailbox, &request)
            }
            .and_then(|reply| {
                self.last_reply_date = reply.date;
                into_text(reply.body)
            })
            .and_then(|text| {
                // A fault or a whole-request throttling error fails the request; per-item
                // errors are for `read`.
                // MIME payloads skip the XML parser (see `soap::Lifted`).
                let lifted = soap::Lifted::mime_content(&text);
                let clean = soap::sanitize_char_refs(&lifted.skeleton);
                let doc = soap::parse(&clean)?;
                soap::check_fault(&doc)?;
                check_request_level_errors(&doc)?;
                read(&doc, &lifted)
            });
            // An answer, even an error, is progress for /healthz.
            crate::metrics::progress();
            let err = match result {
                Ok(value) => {
                    self.server.connections.record_success();
                    return Ok(value);
                }
                Err(err) => err,
            };
            let code = match &err {
                Error::Ews { code, .. } => code.as_str(),
                _ => "",
            };
            if VERSION_ERROR_CODES.contains(&code) && self.server.fall_back_from(version_index) {
                let (_, older) = self.server.version();
                log::warn!(
                    "mailbox={mailbox} {operation}: the server rejected RequestServerVersion {version} ({code}); using {older}"
                );
                continue;
            }
            if code == "ErrorTimeoutExpired" && give_back_timeouts {
                return Err(err);
            }
            if !err.is_retryable() || self.stop.is_stopped() {
                return Err(err);
            }
            let is_throttling = matches!(code, "ErrorServerBusy" | "ErrorExceededConnectionCount")
                || err.demanded_wait().is_some();
            let (count, budget) = if is_throttling {
                throttled += 1;
                (throttled, MAX_THROTTLED_WAITS)
            } else {
                attempt += 1;
                (attempt, MAX_ATTEMPTS)
            };
            if count >= budget {
                return Err(err);
            }
            let wait = match code {
                "ErrorServerBusy" => {
                    let wait = err.demanded_wait().unwrap_or(DEFAULT_BUSY_WAIT);
                    if wait > throttle::MAX_DEMANDED_WAIT {
                        return Err(err);
                    }
                    self.server.gate.pause_for(wait);
                    wait
                }
                "ErrorExceededConnectionCount" => {
                    let limit = self.server.connections.lower();
                    log::warn!(
                        "mailbox={mailbox}: the server limits our connections; now at most {limit} requests at once"
                    );
                    throttle::retry_delay(throttled.min(8) - 1, RETRY_BASE, RETRY_CAP)
                }
                _ => match err.demanded_wait() {
                    Some(wait) => {
                        self.server.gate.pause_for(wait);
                        wait
                    }
                    None => throttle::retry_delay(attempt - 1, RETRY_BASE, RETRY_CAP),
                },
            };
            (self.on_retry)(err.kind());
            if is_throttling {
                let reason = match &err {
                    Error::Http { status, .. } => format!("http_{status}"),
                    other => other.kind().to_owned(),
                };
                crate::metrics::throttle_wait(&reason, wait);
            }
            log::warn!(
                "mailbox={mailbox} {operation}: {err}; retry {count}/{} in {} ms",
                budget - 1,
                wait.as_millis()
            );
            if !self.stop.sleep(wait) {
                return Err(stopped());
            }
        }
    }

    fn root_folder_id(&mut self, mailbox: &str) -> Result<String, Error> {
        let body = format!(
            concat!(
                "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>",
                "<m:FolderIds>{}</m:FolderIds></m:GetFolder>"
            ),
            self.distinguished_folder("msgfolderroot", mailbox)
        );
        self.call(mailbox, "GetFolder", &body, false, |doc, _| {
            let (node, status) = first_message(doc)?;
            if !status.success {
                return Err(status.into_error());
            }
            soap::find(node, NS_TYPES, "FolderId")
                .and_then(|n| n.attribute("Id"))
                .map(str::to_owned)
                .ok_or_else(|| malformed("GetFolder response has no FolderId"))
        })
    }

    fn distinguished_folder(&self, id: &str, mailbox: &str) -> String {
        match self.access {
            Access::Delegate => format!(
                r#"<t:DistinguishedFolderId Id="{id}"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#,
                escape(mailbox)
            ),
            Access::Impersonation => format!(r#"<t:DistinguishedFolderId Id="{id}"/>"#),
        }
    }
}

fn stopped() -> Error {
    Error::Transport {
        url: String::new(),
        detail: "stopped before the request was sent".into(),
    }
}

fn malformed(detail: impl Into<String>) -> Error {
    Error::Malformed {
        detail: detail.into(),
    }
}

fn into_text(body: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(body).map_err(|e| malformed(format!("response is not UTF-8: {e}")))
}

/// Response-message codes that concern the whole request (throttling, timeouts) rather than
/// one item; the request is retried as a whole.
fn check_request_level_errors(doc: &roxmltree::Document<'_>) -> Result<(), Error> {
    let Ok(messages) = soap::response_messages(doc) else {
        return Ok(());
    };
    for (_, status) in messages {
        if !status.success
            && matches!(
                status.code.as_str(),
                "ErrorServerBusy"
                    | "ErrorTimeoutExpired"
                    | "ErrorExceededConnectionCount"
                    | "ErrorTooManyObjectsOpened"
                    | "ErrorInternalServerTransientError"
                    | "ErrorBatchProcessingStopped"
            )
        {
            return Err(status.into_error());
        }
    }
    Ok(())
}

fn first_message<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
) -> Result<(Node<'a, 'i>, soap::MessageStatus), Error> {
    soap::response_messages(doc)?
        .into_iter()
        .next()
        .ok_or_else(|| malformed("response has no response message"))
}

/// Paging state reported on `m:RootFolder`.
struct Page {
    next_offset: Option<usize>,
    last: bool,
}

/// Reads the paging attributes. A missing or odd `IncludesLastItemInRange` is an error, not
/// "last page": taking it for the end would silently leave the rest of a folder behind.
fn root_folder_page(root: Node<'_, '_>) -> Result<Page, Error> {
    let last = match root.attribute("IncludesLastItemInRange") {
        Some("true") => true,
        Some("false") => false,
        other => {
            return Err(malformed(format!(
                "RootFolder has IncludesLastItemInRange={other:?}, expected true or false"
            )));
        }
    };
    Ok(Page {
        next_offset: root
            .attribute("IndexedPagingOffset")
            .and_then(|v| v.parse().ok()),
        last,
    })
}

/// One folder as FindFolder reports it.
struct RawFolder {
    parent_id: Option<String>,
    name: String,
    is_mail: bool,
    hidden: bool,
    changed_at: Option<OffsetDateTime>,
    /// See [`FolderInfo::changed_at_settled`]; set from the reply's `Date`.
    changed_at_settled: bool,
}

impl MailSource for EwsSource {
    fn discover_folders(&mut self, mailbox: &str) -> Result<Vec<FolderInfo>, Error> {
        let root_id = self.root_folder_id(mailbox)?;
        let mut folders: HashMap<String, RawFolder> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut offset = 0usize;
        loop {
            let ask_change_times = !self.server.no_change_times.load(Ordering::Relaxed);
            let body = format!(
                concat!(
                    r#"<m:FindFolder Traversal="Deep"><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape>"#,
                    "<t:AdditionalProperties>",
                    r#"<t:FieldURI FieldURI="folder:ParentFolderId"/>"#,
                    r#"<t:FieldURI FieldURI="folder:DisplayName"/>"#,
                    r#"<t:FieldURI FieldURI="folder:FolderClass"/>"#,
                    r#"<t:ExtendedFieldURI PropertyTag="0x10F4" PropertyType="Boolean"/>"#,
                    "{change_time}",
                    "</t:AdditionalProperties></m:FolderShape>",
                    r#"<m:IndexedPageFolderView MaxEntriesReturned="{page}" Offset="{offset}" BasePoint="Beginning"/>"#,
                    "<m:ParentFolderIds>{root}</m:ParentFolderIds></m:FindFolder>"
                ),
                change_time = if ask_change_times {
                    r#"<t:ExtendedFieldURI PropertyTag="0x670A" PropertyType="SystemTime"/>"#
                } else {
                    ""
                },
                page = FIND_FOLDER_PAGE,
                offset = offset,
                root = self.distinguished_folder("msgfolderroot", mailbox),
            );
            let result = self.call(mailbox, "FindFolder", &body, false, |doc, _| {
                read_folder_page(doc)
            });
            let (found, page) = match result {
                Err(Error::Ews { code, .. })
                    if ask_change_times && REFUSED_PROPERTY_CODES.contains(&code.as_str()) =>
                {
                    // Only an optimisation: without it every folder is listed each cycle.
                    log::warn!(
                        "mailbox={mailbox}: the server refuses PR_LOCAL_COMMIT_TIME_MAX in FindFolder ({code}); every folder will be listed on every poll"
                    );
                    self.server.no_change_times.store(true, Ordering::Relaxed);
                    continue;
                }
                other => other?,
            };
            let returned = found.len();
            let server_now = self.last_reply_date;
            for (id, mut folder) in found {
                folder.changed_at_settled = is_settled(folder.changed_at, server_now);
                if let std::collections::hash_map::Entry::Vacant(slot) = folders.entry(id) {
                    order.push(slot.key().clone());
                    slot.insert(folder);
                }
            }
            if page.last || returned == 0 {
                break;
            }
            offset = page
                .next_offset
                .unwrap_or(offset + returned)
                .max(offset + 1);
        }
        Ok(mail_folders(mailbox, &root_id, &folders, &order))
    }

    fn list_items(
        &mut self,
        mailbox: &str,
        folder: &FolderInfo,
        since: OffsetDateTime,
        until: Option<OffsetDateTime>,
        skip_ids: &HashSet<String>,
        limit: usize,
    ) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        let mut seen: HashSet<String> = HashSet::new();
        // Keyset paging: each page starts at the newest time seen so far, so items deleted
        // meanwhile cannot shift an offset past items we have not seen. Only when a whole page
        // shares one second do we page by offset within that second.
        let mut from = since;
        let mut offset = 0usize;
        loop {
            let restriction = match until {
                None => format!(
                    r#"<t:IsGreaterThanOrEqualTo><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURIOrConstant><t:Constant Value="{}"/></t:FieldURIOrConstant></t:IsGreaterThanOrEqualTo>"#,
                    soap::format_datetime(from)
                ),
                Some(until) => format!(
                    concat!(
                        r#"<t:And><t:IsGreaterThanOrEqualTo><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURIOrConstant><t:Constant Value="{}"/></t:FieldURIOrConstant></t:IsGreaterThanOrEqualTo>"#,
                        r#"<t:IsLessThanOrEqualTo><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURIOrConstant><t:Constant Value="{}"/></t:FieldURIOrConstant></t:IsLessThanOrEqualTo></t:And>"#
                    ),
                    soap::format_datetime(from),
                    soap::format_datetime(until)
                ),
            };
            let body = format!(
                concat!(
                    r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>"#,
                    r#"<t:AdditionalProperties><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURI FieldURI="item:Size"/></t:AdditionalProperties>"#,
                    "</m:ItemShape>",
                    r#"<m:IndexedPageItemView MaxEntriesReturned="{page}" Offset="{offset}" BasePoint="Beginning"/>"#,
                    "<m:Restriction>{restriction}</m:Restriction>",
                    r#"<m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:DateTimeReceived"/></t:FieldOrder></m:SortOrder>"#,
                    r#"<m:ParentFolderIds><t:FolderId Id="{folder}"/></m:ParentFolderIds></m:FindItem>"#
                ),
                page = FIND_ITEM_PAGE,
                offset = offset,
                restriction = restriction,
                folder = escape(&folder.id),
            );
            let (page_items, page) = self.call(mailbox, "FindItem", &body, false, |doc, _| {
                read_item_page(doc, mailbox, folder)
            })?;
            let page_len = page_items.len();
            let first_time = page_items.first().map(|i| i.received);
            let last_time = page_items.last().map(|i| i.received);
            for item in page_items {
                if skip_ids.contains(&item.id) || !seen.insert(item.id.clone()) {
                    continue;
                }
                if listing.items.len() == limit {
                    listing.complete = false;
                    return Ok(listing);
                }
                listing.items.push(item);
            }
            if page.last || page_len == 0 {
                listing.complete = true;
                return Ok(listing);
            }
            if listing.items.len() >= limit {
                // More items exist beyond this page.
                listing.complete = false;
                return Ok(listing);
            }
            match (first_time, last_time) {
                (Some(first), Some(last)) if first == last && last == from => offset += page_len,
                (_, Some(last)) if last > from => {
                    from = last;
                    offset = 0;
                }
                _ => offset += page_len,
            }
        }
    }

    fn fetch_items(&mut self, mailbox: &str, items: &[ItemRef]) -> Result<Vec<ItemOutcome>, Error> {
        let mut outcomes = Vec::with_capacity(items.len());
        for chunk in items.chunks(self.get_item_batch.max(1)) {
            outcomes.extend(self.fetch_chunk(mailbox, chunk)?);
        }
        Ok(outcomes)
    }

    fn fetch_batch_limits(&self) -> (usize, u64) {
        (self.get_item_batch, GET_ITEM_BATCH_BYTES)
    }
}

impl EwsSource {
    /// One GetItem, shrinking the batch on ErrorTimeoutExpired and fetching items alone that
    /// the server fails only in batches.
    fn fetch_chunk(&mut self, mailbox: &str, items: &[ItemRef]) -> Result<Vec<ItemOutcome>, Error> {
        let mut outcomes = match self.get_items(mailbox, items, items.len() > 1) {
            Err(Error::Ews { code, .. }) if code == "ErrorTimeoutExpired" && items.len() > 1 => {
                self.get_item_batch = (items.len() / 2).max(1);
                self.successes_since_shrink = 0;
                log::warn!(
                    "mailbox={mailbox}: GetItem of {} items timed out on the server; batches of {} from now on",
                    items.len(),
                    self.get_item_batch
                );
                let (first, second) = items.split_at(items.len() / 2);
                let mut outcomes = self.fetch_chunk(mailbox, first)?;
                outcomes.extend(self.fetch_chunk(mailbox, second)?);
                return Ok(outcomes);
            }
            result => result?,
        };
        self.successes_since_shrink += 1;
        if self.successes_since_shrink >= BATCH_GROWTH_AFTER_SUCCESSES
            && self.get_item_batch < GET_ITEM_BATCH
        {
            self.get_item_batch += 1;
            self.successes_since_shrink = 0;
        }
        for (index, outcome) in outcomes.iter_mut().enumerate() {
            let ItemOutcome::Skipped { code, item_id, .. } = outcome else {
                continue;
            };
            let alone = &items[index..=index];
            let retry = if RETRY_ALONE_CODES.contains(&code.as_str()) && items.len() > 1 {
                log::info!(
                    "mailbox={mailbox} item={item_id}: {code} in a batch; fetching it alone"
                );
                self.get_items(mailbox, alone, false)?
            } else if code == "ErrorInvalidPropertyRequest" {
                // message:* properties on an item that is not a message: ask for item:* only.
                self.get_items_with(mailbox, alone, false, ITEM_PROPERTIES)?
            } else {
                continue;
            };
            if let Some(fetched) = retry.into_iter().next() {
                *outcome = fetched;
            }
        }
        Ok(outcomes)
    }

    fn get_items(
        &mut self,
        mailbox: &str,
        items: &[ItemRef],
        give_back_timeouts: bool,
    ) -> Result<Vec<ItemOutcome>, Error> {
        self.get_items_with(mailbox, items, give_back_timeouts, MESSAGE_PROPERTIES)
    }

    fn get_items_with(
        &mut self,
        mailbox: &str,
        items: &[ItemRef],
        give_back_timeouts: bool,
        properties: &str,
    ) -> Result<Vec<ItemOutcome>, Error> {
        let mut ids = String::new();
        for item in items {
            let _ = write!(ids, r#"<t:ItemId Id="{}"/>"#, escape(&item.id));
        }
        let body = format!(
            concat!(
                "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>",
                "<t:IncludeMimeContent>true</t:IncludeMimeContent>",
                "<t:AdditionalProperties>{properties}</t:AdditionalProperties></m:ItemShape>",
                "<m:ItemIds>{ids}</m:ItemIds></m:GetItem>"
            ),
            properties = properties,
            ids = ids
        );
        self.call(
            mailbox,
            "GetItem",
            &body,
            give_back_timeouts,
            |doc, lifted| read_items(doc, lifted, items),
        )
    }
}

/// Properties every item has (a macro, so `concat!` can build both lists from it).
macro_rules! item_properties {
    () => {
        concat!(
            r#"<t:FieldURI FieldURI="item:DateTimeReceived"/>"#,
            r#"<t:FieldURI FieldURI="item:DateTimeSent"/>"#,
            r#"<t:FieldURI FieldURI="item:Size"/>"#,
            r#"<t:FieldURI FieldURI="item:HasAttachments"/>"#,
            r#"<t:FieldURI FieldURI="item:Attachments"/>"#,
            r#"<t:FieldURI FieldURI="item:Importance"/>"#,
            r#"<t:FieldURI FieldURI="item:Sensitivity"/>"#,
            r#"<t:FieldURI FieldURI="item:Categories"/>"#,
            r#"<t:FieldURI FieldURI="item:ConversationId"/>"#,
        )
    };
}

const ITEM_PROPERTIES: &str = item_properties!();

/// Item properties plus those of messages (the usual case in mail folders).
const MESSAGE_PROPERTIES: &str = concat!(
    item_properties!(),
    r#"<t:FieldURI FieldURI="message:ConversationTopic"/>"#,
    r#"<t:FieldURI FieldURI="message:InternetMessageId"/>"#,
    r#"<t:FieldURI FieldURI="message:IsRead"/>"#,
);

fn read_folder_page(
    doc: &roxmltree::Document<'_>,
) -> Result<(Vec<(String, RawFolder)>, Page), Error> {
    let (message, status) = first_message(doc)?;
    if !status.success {
        return Err(status.into_error());
    }
    let root = child(message, NS_MESSAGES, "RootFolder")
        .ok_or_else(|| malformed("FindFolder response has no RootFolder"))?;
    let mut found = Vec::new();
    for node in child(root, NS_TYPES, "Folders")
        .into_iter()
        .flat_map(|list| list.children().filter(|n| n.is_element()))
    {
        let Some(id) = child(node, NS_TYPES, "FolderId").and_then(|n| n.attribute("Id")) else {
            return Err(malformed("FindFolder folder without FolderId"));
        };
        let class = child_text(node, "FolderClass");
        let is_search = node.tag_name().name() == "SearchFolder";
        // A missing class counts as mail, as Outlook treats it.
        let is_mail = !is_search
            && class.is_none_or(|c| c.is_empty() || c == "IPF.Note" || c.starts_with("IPF.Note."));
        let extended = |tag: &str| {
            node.children()
                .filter(|n| n.has_tag_name((NS_TYPES, "ExtendedProperty")))
                .find(|prop| {
                    child(*prop, NS_TYPES, "ExtendedFieldURI")
                        .and_then(|u| u.attribute("PropertyTag"))
                        .is_some_and(|t| t.eq_ignore_ascii_case(tag))
                })
                .and_then(|prop| child_text(prop, "Value"))
        };
        let hidden = extended(PROPERTY_TAG_HIDDEN) == Some("true");
        // An unreadable time only costs a listing: the folder counts as changed.
        let changed_at = extended(PROPERTY_TAG_CHANGED_AT).and_then(soap::parse_datetime);
        let folder = RawFolder {
            parent_id: child(node, NS_TYPES, "ParentFolderId")
                .and_then(|n| n.attribute("Id"))
                .map(str::to_owned),
            name: child_text(node, "DisplayName").unwrap_or("").to_owned(),
            is_mail,
            hidden,
            changed_at,
            changed_at_settled: false,
        };
        found.push((id.to_owned(), folder));
    }
    Ok((found, root_folder_page(root)?))
}

fn read_item_page(
    doc: &roxmltree::Document<'_>,
    mailbox: &str,
    folder: &FolderInfo,
) -> Result<(Vec<ItemRef>, Page), Error> {
    let (message, status) = first_message(doc)?;
    if !status.success {
        return Err(status.into_error());
    }
    let root = child(message, NS_MESSAGES, "RootFolder")
        .ok_or_else(|| malformed("FindItem response has no RootFolder"))?;
    let mut page_items = Vec::new();
    for node in child(root, NS_TYPES, "Items")
        .into_iter()
        .flat_map(|list| list.children().filter(|n| n.is_element()))
    {
        let Some(id) = child(node, NS_TYPES, "ItemId").and_then(|n| n.attribute("Id")) else {
            return Err(malformed("FindItem item without ItemId"));
        };
        // The restriction cannot match an item without a received time (some drafts); if one
        // slips through we cannot place it relative to the watermark.
        let Some(received) = child_text(node, "DateTimeReceived").and_then(soap::parse_datetime)
        else {
            log::warn!(
                "mailbox={mailbox} folder={:?} item={id}: no DateTimeReceived; not synced",
                folder.path
            );
            continue;
        };
        page_items.push(ItemRef {
            id: id.to_owned(),
            received,
            size_bytes: child_text(node, "Size").and_then(|s| s.parse().ok()),
        });
    }
    Ok((page_items, root_folder_page(root)?))
}

fn read_items(
    doc: &roxmltree::Document<'_>,
    lifted: &soap::Lifted<'_>,
    items: &[ItemRef],
) -> Result<Vec<ItemOutcome>, Error> {
    let messages = soap::response_messages(doc)?;
    if messages.len() != items.len() {
        return Err(malformed(format!(
            "GetItem answered {} messages for {} items",
            messages.len(),
            items.len()
        )));
    }
    Ok(messages
        .into_iter()
        .zip(items)
        .map(|((node, status), requested)| {
            let skipped = |code: String, message: String| ItemOutcome::Skipped {
                item_id: requested.id.clone(),
                code,
                message,
            };
            if !status.success {
                return skipped(status.code, status.message);
            }
            let item = child(node, NS_MESSAGES, "Items")
                .and_then(|items| items.children().find(|n| n.is_element()));
            match item.map(|n| parse_item(n, lifted, &requested.id)) {
                Some(Ok(fetched)) => ItemOutcome::Fetched(Box::new(fetched)),
                Some(Err(detail)) => skipped("MalformedItem".into(), detail),
                None => skipped(
                    "MalformedItem".into(),
                    "GetItem success without an item".into(),
                ),
            }
        })
        .collect())
}

/// Keeps mail folders whose every ancestor up to the root is a visible mail folder, and builds
/// their display-name paths. Children may be listed before their parents.
fn mail_folders(
    mailbox: &str,
    root_id: &str,
    folders: &HashMap<String, RawFolder>,
    order: &[String],
) -> Vec<FolderInfo> {
    let mut out = Vec::new();
    'folders: for id in order {
        let mut path = Vec::new();
        let mut current = id.as_str();
        // A parent chain longer than the folder count is a cycle.
        for _ in 0..=folders.len() {
            if current == root_id {
                path.reverse();
                out.push(FolderInfo {
                    id: id.as_str().into(),
                    path: path.into(),
                    changed_at: folders.get(id).and_then(|f| f.changed_at),
                    changed_at_settled: folders.get(id).is_some_and(|f| f.changed_at_settled),
                });
                continue 'folders;
            }
            let Some(folder) = folders.get(current) else {
                // Parent outside the listing (should not happen under msgfolderroot): skip.
                continue 'folders;
            };
            if !folder.is_mail || folder.hidden {
                continue 'folders;
            }
            path.push(folder.name.clone());
            match &folder.parent_id {
                Some(parent) => current = parent,
                None => continue 'folders,
            }
        }
        log::warn!("mailbox={mailbox} folder {id}: its parent chain loops; skipped");
    }
    out
}

fn parse_item(
    node: Node<'_, '_>,
    lifted: &soap::Lifted<'_>,
    item_id: &str,
) -> Result<FetchedItem, String> {
    let mime_text = child_text(node, "MimeContent").ok_or("item has no MimeContent")?;
    let mime_text = lifted.resolve(mime_text);
    let mime = decode_base64(mime_text).map_err(|e| format!("MimeContent is not base64: {e}"))?;
    let bool_of = |name| child_text(node, name).map(|v| v == "true");
    let attachments = child(node, NS_TYPES, "Attachments")
        .map(|list| {
            list.children()
                .filter(|n| n.is_element())
                .map(|a| AttachmentInfo {
                    name: child_text(a, "Name").unwrap_or("").to_owned(),
                    size_bytes: child_text(a, "Size").and_then(|s| s.parse().ok()),
                    content_type: child_text(a, "ContentType").map(str::to_owned).or_else(|| {
                        (a.tag_name().name() == "ItemAttachment")
                            .then(|| "message/rfc822".to_owned())
                    }),
                    inline: child_text(a, "IsInline") == Some("true"),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(FetchedItem {
        item_id: child(node, NS_TYPES, "ItemId")
            .and_then(|n| n.attribute("Id"))
            .unwrap_or(item_id)
            .to_owned(),
        mime,
        received: child_text(node, "DateTimeReceived").and_then(soap::parse_datetime),
        sent: child_text(node, "DateTimeSent").and_then(soap::parse_datetime),
        internet_message_id: child_text(node, "InternetMessageId")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        conversation_id: child(node, NS_TYPES, "ConversationId")
            .and_then(|n| n.attribute("Id"))
            .map(str::to_owned),
        conversation_topic: child_text(node, "ConversationTopic").map(str::to_owned),
        has_attachments: bool_of("HasAttachments"),
        is_read: bool_of("IsRead"),
        importance: child_text(node, "Importance").map(str::to_owned),
        sensitivity: child_text(node, "Sensitivity").map(str::to_owned),
        categories: child(node, NS_TYPES, "Categories")
            .map(|c| {
                c.children()
                    .filter(|n| n.is_element())
                    .filter_map(|n| n.text())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        size_bytes: child_text(node, "Size").and_then(|s| s.parse().ok()),
        attachments,
    })
}

/// Decodes base64 as Exchange sends it: usually one line, sometimes wrapped, padding optional.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    // Usually one line: decode at once, and only compact a text that fails.
    ENGINE.decode(text).or_else(|err| {
        if text.bytes().any(|b| b.is_ascii_whitespace()) {
            let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            ENGINE.decode(compact)
        } else {
            Err(err)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(parent: &str, name: &str, is_mail: bool, hidden: bool) -> RawFolder {
        RawFolder {
            parent_id: Some(parent.to_owned()),
            name: name.to_owned(),
            is_mail,
            hidden,
            changed_at: None,
            changed_at_settled: false,
        }
    }

    #[test]
    fn folder_paths_skip_hidden_and_non_mail_subtrees() {
        let mut folders = HashMap::new();
        folders.insert("2024".to_owned(), raw("projects", "2024", true, false));
        folders.insert("projects".to_owned(), raw("inbox", "Projects", true, false));
        folders.insert("inbox".to_owned(), raw("root", "Inbox", true, false));
        folders.insert("cal".to_owned(), raw("root", "Calendar", false, false));
        folders.insert("under-cal".to_owned(), raw("cal", "Sub", true, false));
        folders.insert("hidden".to_owned(), raw("root", "Hidden", true, true));
        folders.insert("loop-a".to_owned(), raw("loop-b", "A", true, false));
        folders.insert("loop-b".to_owned(), raw("loop-a", "B", true, false));
        let order: Vec<String> = [
            "2024",
            "projects",
            "inbox",
            "cal",
            "under-cal",
            "hidden",
            "loop-a",
        ]
        .map(String::from)
        .to_vec();
        let found = mail_folders("a@b.c", "root", &folders, &order);
        let paths: Vec<_> = found.iter().map(|f| f.path.join("/")).collect();
        assert_eq!(paths, ["Inbox/Projects/2024", "Inbox/Projects", "Inbox"]);
    }

    #[test]
    fn find_folder_page_reads_hidden_flags_and_change_times() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<m:FindFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<m:ResponseMessages><m:FindFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
<m:RootFolder IndexedPagingOffset="3" TotalItemsInView="3" IncludesLastItemInRange="true"><t:Folders>
<t:Folder><t:FolderId Id="inbox" ChangeKey="A"/><t:ParentFolderId Id="root" ChangeKey="B"/><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>Inbox</t:DisplayName>
<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x10f4" PropertyType="Boolean"/><t:Value>false</t:Value></t:ExtendedProperty>
<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x670a" PropertyType="SystemTime"/><t:Value>2024-03-01T10:00:07Z</t:Value></t:ExtendedProperty></t:Folder>
<t:Folder><t:FolderId Id="hidden" ChangeKey="A"/><t:ParentFolderId Id="root" ChangeKey="B"/><t:DisplayName>Hidden</t:DisplayName>
<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x10f4" PropertyType="Boolean"/><t:Value>true</t:Value></t:ExtendedProperty>
<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x670A" PropertyType="SystemTime"/><t:Value>not a time</t:Value></t:ExtendedProperty></t:Folder>
<t:SearchFolder><t:FolderId Id="search" ChangeKey="A"/><t:ParentFolderId Id="root" ChangeKey="B"/><t:DisplayName>Unread</t:DisplayName></t:SearchFolder>
</t:Folders></m:RootFolder></m:FindFolderResponseMessage></m:ResponseMessages></m:FindFolderResponse></s:Body></s:Envelope>"#;
        let doc = soap::parse(xml).unwrap();
        let (found, page) = read_folder_page(&doc).unwrap();
        assert!(page.last);
        let by_id: HashMap<_, _> = found.into_iter().collect();
        let inbox = &by_id["inbox"];
        assert!(inbox.is_mail && !inbox.hidden);
        assert_eq!(
            inbox.changed_at,
            Some(time::macros::datetime!(2024-03-01 10:00:07 UTC))
        );
        // A time that cannot be read means the folder is listed, nothing worse.
        assert!(by_id["hidden"].hidden);
        assert_eq!(by_id["hidden"].changed_at, None);
        assert!(!by_id["search"].is_mail);
        assert_eq!(by_id["search"].changed_at, None);
    }

    #[test]
    fn a_change_time_is_settled_well_before_the_servers_clock() {
        let changed = time::macros::datetime!(2024-03-01 10:00:07 UTC);
        assert!(is_settled(Some(changed), Some(changed + SETTLED_MARGIN)));
        assert!(!is_settled(
            Some(changed),
            Some(changed + SETTLED_MARGIN - time::Duration::SECOND)
        ));
        assert!(!is_settled(None, Some(changed + SETTLED_MARGIN)));
        assert!(!is_settled(Some(changed), None));
    }

    #[test]
    fn base64_with_wrapping_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\r\nbG8").unwrap(), b"hello");
    }
}
