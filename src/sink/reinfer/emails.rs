//! `PUT .../emails`: request bodies built from the already-encoded documents, batches cut to a
//! byte cap, and split-on-failure to isolate the emails the API refuses.

use std::ops::Range;

use super::client::{Call, Method};
use super::{ReinferSink, paths};
use crate::config::Bucket;
use crate::sink::{EncodedBatch, Error};

const BODY_START: &[u8] = br#"{"emails":["#;
const BODY_END: &[u8] = b"]}";

/// Statuses with which the API (or a gateway in front of it) refuses the content of a batch:
/// halving the batch finds the emails at fault.
fn refuses_content(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

/// `{"emails":[doc,doc,...]}` from documents that are JSON objects already.
pub fn body(docs: &[Vec<u8>]) -> Vec<u8> {
    let len = BODY_START.len() + BODY_END.len() + docs.iter().map(|d| d.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(BODY_START);
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(doc);
    }
    out.extend_from_slice(BODY_END);
    out
}

/// Consecutive ranges of `docs` whose bodies stay within `max_body_bytes`; a document larger
/// than that on its own gets a range of its own (the server decides about it).
pub fn chunks(docs: &[Vec<u8>], max_body_bytes: usize) -> Vec<Range<usize>> {
    let empty = BODY_START.len() + BODY_END.len();
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut size = empty;
    for (i, doc) in docs.iter().enumerate() {
        let added = doc.len() + usize::from(i > start);
        if i > start && size + added > max_body_bytes {
            ranges.push(start..i);
            start = i;
            size = empty + doc.len();
        } else {
            size += added;
        }
    }
    if start < docs.len() {
        ranges.push(start..docs.len());
    }
    ranges
}

impl ReinferSink {
    /// Stores `range` of the batch; a refused range is halved until the refused emails are
    /// single, and those are added to `rejected`.
    pub(super) fn put_range(
        &self,
        bucket: &Bucket,
        mailbox: &str,
        batch: &EncodedBatch,
        range: Range<usize>,
        rejected: &mut Vec<(String, String)>,
    ) -> Result<(), Error> {
        let url = self.url(&paths::bucket(bucket, &["emails"]));
        let body = body(&batch.docs[range.clone()]);
        let what = format!(
            "mailbox={mailbox}: storing {} emails ({} bytes) in {}/{}",
            range.len(),
            body.len(),
            bucket.owner,
            bucket.name
        );
        let reply = self.client.send(&Call {
            method: Method::Put,
            url: &url,
            body: Some(&body),
            what: &what,
            accept: "application/json",
            retry_conflict: true,
        })?;
        if !refuses_content(reply.status) {
            let action = format!("add emails to bucket {}/{}", bucket.owner, bucket.name);
            return self.client.expect_ok(&url, &reply, &action).map(drop);
        }
        let message = self.client.message(&reply);
        if range.len() == 1 {
            let id = batch
                .ids
                .get(range.start)
                .cloned()
                .unwrap_or_else(|| format!("(document {} of the batch)", range.start));
            rejected.push((id, format!("HTTP {}: {message}", reply.status)));
            return Ok(());
        }
        log::warn!(
            "{what}: the API refused the batch (HTTP {}: {message}); splitting it in halves to \
             find the emails at fault",
            reply.status
        );
        let middle = range.start + range.len() / 2;
        self.put_range(bucket, mailbox, batch, range.start..middle, rejected)?;
        self.put_range(bucket, mailbox, batch, middle..range.end, rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_joins_documents_without_reencoding() {
        let docs = vec![br#"{"id":"1"}"#.to_vec(), br#"{"id":"2"}"#.to_vec()];
        assert_eq!(body(&docs), br#"{"emails":[{"id":"1"},{"id":"2"}]}"#);
        assert_eq!(body(&[]), br#"{"emails":[]}"#);
    }

    #[test]
    fn chunks_respect_the_byte_cap() {
        let docs: Vec<Vec<u8>> = (0..10).map(|_| vec![b'x'; 100]).collect();
        // 13 bytes of envelope + 3 docs of 100 + 2 commas = 315.
        let ranges = chunks(&docs, 315);
        assert_eq!(ranges, vec![0..3, 3..6, 6..9, 9..10]);
        for range in &ranges {
            assert!(body(&docs[range.clone()]).len() <= 315);
        }
        assert_eq!(chunks(&docs, 314)[0], 0..2);
        // An oversized document goes alone; nothing is dropped.
        let mixed = vec![vec![b'a'; 10], vec![b'b'; 1000], vec![b'c'; 10]];
        assert_eq!(chunks(&mixed, 100), vec![0..1, 1..2, 2..3]);
        assert!(chunks(&[], 100).is_empty());
    }
}
