//! Microsoft Graph (REST/JSON, app-only OAuth2): folder discovery, listing since a watermark,
//! MIME fetch, with the same semantics and the same email documents as the EWS source.
//!
//! Requests (see `reference/graph-oauth.md`):
//! - folders: `GET /users/{mailbox}/mailFolders?$top=250&includeHiddenFolders=true&$select=…`
//!   (the children of msgfolderroot), then `…/mailFolders/{id}/childFolders` for every kept
//!   folder with children, following `@odata.nextLink` as given. Search folders
//!   (`#microsoft.graph.mailSearchFolder`) and hidden folders (`isHidden`) are skipped with
//!   their subtrees, as on EWS; `mailFolders` lists no calendars, contacts or tasks.
//! - messages: `GET …/mailFolders/{id}/messages?$filter=receivedDateTime ge {since}[ and
//!   receivedDateTime le {until}]&$orderby=receivedDateTime asc&$top=…&$select=…&$expand=…`:
//!   `$orderby` names only the property `$filter` starts with, as Graph requires
//!   (`InefficientFilter` otherwise). The metadata comes with the listing and is kept for the
//!   fetch.
//! - MIME: `GET /users/{mailbox}/messages/{id}/$value`, one request per email.

mod client;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};

use time::OffsetDateTime;

pub use client::{GraphClient, GraphMailboxes, MAX_REQUESTS_PER_MAILBOX};

use super::soap;
use super::{Error, FetchedItem, FolderInfo, ItemOutcome, ItemRef, Listing, MailSource};
use client::Body;
use wire::{FOLDER_SELECT, MESSAGE_EXPAND, MESSAGE_SELECT, Page, RawFolder, RawMessage};

/// Folders per page; Graph documents no maximum for folders, 250 stays well inside what is
/// seen to work (999).
const FOLDER_PAGE: usize = 250;
/// Messages per page. Each carries attachment metadata and three extended properties; the
/// reference warns that large pages of full messages time out (504).
const MESSAGE_PAGE: usize = 100;
/// Emails per `fetch_items` call: one `$value` request each, so this only sets how often the
/// pipeline hears of progress.
const FETCH_BATCH: usize = 10;
/// At most this many bytes of (store-reported) size per `fetch_items` call.
const FETCH_BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Pages without items but with a next link, in a row, before we call the listing broken
/// (Graph may send empty pages, never endlessly).
const MAX_EMPTY_PAGES: usize = 50;
/// Codes with which Graph says an email cannot be served and asking again will not change
/// that: deleted or moved since the listing (`ErrorItemNotFound`, or Graph's generic
/// `itemNotFound`), or content the store cannot convert (the reference's item-level codes).
/// Compared case-insensitively.
const ITEM_GONE_CODES: &[&str] = &[
    "ErrorItemNotFound",
    "itemNotFound",
    "ErrorCannotOpenFileAttachment",
    "ErrorMimeContentConversionFailed",
    "ErrorItemCorrupt",
    "ErrorCorruptData",
    "malwareDetected",
];

/// The Graph client of one worker thread.
pub struct GraphSource {
    client: GraphClient,
    /// Metadata of the items of the latest listing, by Graph id, so fetching an email takes
    /// one request (its MIME) instead of two.
    listed: HashMap<String, FetchedItem>,
}

impl GraphSource {
    pub fn new(client: GraphClient) -> Self {
        GraphSource {
            client,
            listed: HashMap::new(),
        }
    }

    fn user_url(&self, mailbox: &str) -> String {
        format!(
            "{}/users/{}",
            self.client.base(),
            wire::path_segment(mailbox)
        )
    }

    fn messages_url(
        &self,
        mailbox: &str,
        folder: &FolderInfo,
        since: OffsetDateTime,
        until: Option<OffsetDateTime>,
        top: usize,
    ) -> String {
        let mut filter = format!("receivedDateTime ge {}", soap::format_datetime(since));
        if let Some(until) = until {
            filter.push_str(&format!(
                " and receivedDateTime le {}",
                soap::format_datetime(until)
            ));
        }
        format!(
            "{}/mailFolders/{}/messages?$filter={}&$orderby={}&$top={top}&$select={}&$expand={}",
            self.user_url(mailbox),
            wire::path_segment(&folder.id),
            wire::query_value(&filter),
            wire::query_value("receivedDateTime asc"),
            wire::query_value(MESSAGE_SELECT),
            wire::query_value(MESSAGE_EXPAND),
        )
    }

    /// Every folder of one listing, following next links.
    fn folder_pages(&mut self, mailbox: &str, first_url: String) -> Result<Vec<RawFolder>, Error> {
        let mut folders = Vec::new();
        let mut url = first_url;
        let mut empty_pages = 0;
        loop {
            let page: Page<RawFolder> = self.client.get_json(mailbox, "list folders", &url)?;
            empty_pages = if page.value.is_empty() {
                empty_pages + 1
            } else {
                0
            };
            folders.extend(page.value);
            match page.next_link {
                Some(link) if empty_pages < MAX_EMPTY_PAGES => {
                    url = self.client.check_link(&link)?
                }
                Some(_) => return Err(endless_paging(&url)),
                None => return Ok(folders),
            }
        }
    }

    /// The metadata of one message, when the listing did not leave it (or it was listed by
    /// another source).
    fn message_metadata(&mut self, mailbox: &str, id: &str) -> Result<FetchedItem, Error> {
        let url = format!(
            "{}/messages/{}?$select={}&$expand={}",
            self.user_url(mailbox),
            wire::path_segment(id),
            wire::query_value(MESSAGE_SELECT),
            wire::query_value(MESSAGE_EXPAND),
        );
        let raw: RawMessage = self.client.get_json(mailbox, "get message", &url)?;
        Ok(raw.into_item())
    }

    fn fetch_one(&mut self, mailbox: &str, item: &ItemRef) -> Result<ItemOutcome, Error> {
        let metadata = match self.listed.remove(&item.id) {
            Some(metadata) => Ok(metadata),
            None => self.message_metadata(mailbox, &item.id),
        };
        let mime = metadata.and_then(|mut metadata| {
            let url = format!(
                "{}/messages/{}/$value",
                self.user_url(mailbox),
                wire::path_segment(&item.id)
            );
            metadata.mime = self.client.get(mailbox, "get MIME", &url, Body::Mime)?;
            Ok(metadata)
        });
        match mime {
            Ok(fetched) => Ok(ItemOutcome::Fetched(Box::new(fetched))),
            // Deleted or moved between the listing and now, or unconvertible: nothing to copy,
            // and asking again will not change that. The fetcher logs and counts it.
            Err(Error::Ews { code, message, .. })
                if ITEM_GONE_CODES
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&code)) =>
            {
                Ok(ItemOutcome::Skipped {
                    item_id: item.id.clone(),
                    code,
                    message,
                })
            }
            Err(err) => Err(err),
        }
    }
}

fn endless_paging(url: &str) -> Error {
    Error::Malformed {
        detail: format!(
            "{}: {MAX_EMPTY_PAGES} empty pages in a row, each with a next link",
            client::without_query(url)
        ),
    }
}

impl MailSource for GraphSource {
    fn discover_folders(&mut self, mailbox: &str) -> Result<Vec<FolderInfo>, Error> {
        let query = format!(
            "$top={FOLDER_PAGE}&includeHiddenFolders=true&$select={}",
            wire::query_value(FOLDER_SELECT)
        );
        let top_url = format!("{}/mailFolders?{query}", self.user_url(mailbox));
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        // (folder, its path); breadth first, so paths come out shallow first.
        let mut queue: VecDeque<(RawFolder, Vec<String>)> = self
            .folder_pages(mailbox, top_url)?
            .into_iter()
            .map(|folder| (folder, Vec::new()))
            .collect();
        while let Some((folder, parent_path)) = queue.pop_front() {
            // A folder listed twice (a cycle, or pages that shifted) is walked once.
            if !seen.insert(folder.id.clone()) {
                continue;
            }
            let name = folder.display_name.clone().unwrap_or_default();
            if folder.is_search_folder() || folder.is_hidden == Some(true) {
                log::debug!(
                    "mailbox={mailbox}: skipping {} folder {:?} and its subfolders",
                    if folder.is_search_folder() {
                        "search"
                    } else {
                        "hidden"
                    },
                    name
                );
                continue;
            }
            let mut path = parent_path;
            path.push(name);
            if folder.child_folder_count != Some(0) {
                let url = format!(
                    "{}/mailFolders/{}/childFolders?{query}",
                    self.user_url(mailbox),
                    wire::path_segment(&folder.id)
                );
                for child in self.folder_pages(mailbox, url)? {
                    queue.push_back((child, path.clone()));
                }
            }
            out.push(FolderInfo {
                id: folder.id.into(),
                path: path.into(),
                // Graph lists no change time of a folder's contents: every folder is listed.
                changed_at: None,
                changed_at_settled: false,
            });
        }
        Ok(out)
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
        self.listed.clear();
        let mut listing = Listing::default();
        let mut seen: HashSet<String> = HashSet::new();
        let top = MESSAGE_PAGE.min(limit.saturating_add(1)).max(1);
        // Keyset paging, as on EWS: each query starts at the newest received time seen so
        // far, so messages deleted meanwhile cannot shift a `$skip` past messages we have not
        // seen. Only when a whole page shares one second do we follow the server's next link
        // (as given) within that second.
        let mut from = since;
        let mut next: Option<String> = None;
        let mut empty_pages = 0;
        loop {
            let url = match next.take() {
                Some(link) => link,
                None => self.messages_url(mailbox, folder, from, until, top),
            };
            let page: Page<RawMessage> = self.client.get_json(mailbox, "list messages", &url)?;
            let page_len = page.value.len();
            let mut first_time = None;
            let mut last_time = None;
            for raw in page.value {
                let Some(received) = raw.received() else {
                    log::warn!(
                        "mailbox={mailbox} folder={:?} item={}: no receivedDateTime; not synced",
                        folder.path,
                        raw.id
                    );
                    continue;
                };
                first_time.get_or_insert(received);
                last_time = Some(received);
                if skip_ids.contains(&raw.id) || !seen.insert(raw.id.clone()) {
                    continue;
                }
                if listing.items.len() == limit {
                    listing.complete = false;
                    return Ok(listing);
                }
                listing.items.push(ItemRef {
                    id: raw.id.clone(),
                    received,
                    size_bytes: raw.size_bytes(),
                });
                let id = raw.id.clone();
                self.listed.insert(id, raw.into_item());
            }
            let Some(link) = page.next_link else {
                listing.complete = true;
                return Ok(listing);
            };
            if listing.items.len() >= limit {
                // More items exist beyond this page.
                listing.complete = false;
                return Ok(listing);
            }
            empty_pages = if page_len == 0 { empty_pages + 1 } else { 0 };
            if empty_pages >= MAX_EMPTY_PAGES {
                return Err(endless_paging(&url));
            }
            match (first_time, last_time) {
                (Some(first), Some(last)) if first == last && last == from => {
                    next = Some(self.client.check_link(&link)?);
                }
                (_, Some(last)) if last > from => from = last,
                _ => next = Some(self.client.check_link(&link)?),
            }
        }
    }

    fn fetch_items(&mut self, mailbox: &str, items: &[ItemRef]) -> Result<Vec<ItemOutcome>, Error> {
        items
            .iter()
            .map(|item| self.fetch_one(mailbox, item))
            .collect()
    }

    fn fetch_batch_limits(&self) -> (usize, u64) {
        (FETCH_BATCH, FETCH_BATCH_BYTES)
    }
}

#[cfg(test)]
mod tests;
