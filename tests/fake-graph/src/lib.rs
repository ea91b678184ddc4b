//! A loopback fake of the Microsoft Graph v1.0 mail endpoints for exchange-sync's tests. It
//! serves a [`fake_exchange::DataSet`], so the same generated mailboxes can be served through
//! EWS and Graph, with the JSON shapes of the reference samples: `@odata.context`, `value`
//! arrays, `@odata.nextLink` (`$skip` for messages, `$skiptoken` for folders, both
//! percent-encoded as `%24…` like Graph's own links), error bodies
//! `{"error": {"code", "message", "innerError": {…}}}`.
//!
//! It checks requests the way Graph does: bearer tokens of a [`fake_login::FakeLogin`] for
//! its own origin's `/.default` scope, `$filter`/`$orderby` (`InefficientFilter` when the
//! sorted property is not what the filter starts with), unknown `$select` fields, `$top`
//! limits, `$expand` of attachments and single-value extended properties. It records the
//! requests in flight per mailbox (Graph allows four) and pauses it demanded, and injects the
//! faults of real tenants (see [`Fault`]): 429 with `Retry-After` in seconds, fractional
//! seconds or an HTTP date, 503, 504, `ApplicationThrottled`, messages deleted between listing
//! and fetching, `MailboxNotEnabledForRESTAPI`, `ErrorAccessDenied`.
//!
//! Ids: Graph's default (REST) ids are the EWS ids in base64's URL-safe alphabet
//! ([`rest_id`]); conversation ids likewise.
//!
//! [`BearerFront`] puts Exchange Online's bearer-token check in front of the EWS fake, for
//! EWS-with-OAuth tests.
//!
//! ```no_run
//! use fake_exchange::{GenSpec, generate};
//! use fake_graph::{FakeGraph, Options};
//! let graph = FakeGraph::start(generate(&GenSpec::default()), Options::default()).unwrap();
//! println!("{}", graph.url());
//! ```

mod front;
mod http;
mod odata;
mod render;
mod server;

pub use front::{BearerFront, FrontStats};
pub use server::{
    BACK_OFF_GRACE, BackOff, FakeGraph, Fault, MAX_RECORDS, Options, RequestRecord, RetryAfter,
    Stats,
};

/// The Graph (REST) form of an EWS id: `/` → `-`, `+` → `_`.
pub fn rest_id(ews_id: &str) -> String {
    ews_id.replace('/', "-").replace('+', "_")
}

/// The EWS form of a Graph (REST) id; EWS ids pass unchanged.
pub fn ews_id(id: &str) -> String {
    id.replace('-', "/").replace('_', "+")
}

#[cfg(test)]
mod tests;
