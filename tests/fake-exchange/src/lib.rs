//! A loopback fake of Microsoft Exchange Web Services (EWS, SOAP over HTTP) for the tests,
//! demo and benchmark of exchange-sync. It speaks the wire format of Exchange 2016/2019 for
//! GetFolder, FindFolder, FindItem and GetItem (MIME), validates requests like a strict
//! server, authenticates connections with NTLMv2 when asked to, and can inject the failures
//! real servers produce (see [`Fault`]): throttling in all its forms (ErrorServerBusy as a
//! fault, as a response message and as an inner error; HTTP 503; ErrorExceededConnectionCount),
//! HTML error pages, dropped connections and truncated responses, illegal XML character
//! references, items that vanish or are corrupt, batches that time out, and an older server
//! that refuses newer RequestServerVersion values.
//!
//! ```no_run
//! use fake_exchange::{FakeExchange, GenSpec, Options, generate};
//! let data = generate(&GenSpec { mailboxes: 2, emails_per_mailbox: 50, ..GenSpec::default() });
//! let server = FakeExchange::start(data, Options::default()).unwrap();
//! println!("{}", server.url());
//! ```

mod generate;
mod http;
pub mod ids;
mod mime;
mod model;
mod ntlm;
mod ops;
mod render;
mod request;
mod restriction;
mod rng;
mod schema;
mod server;
mod store;
mod xml;

pub use generate::{GenSpec, generate, generate_with_addresses, make_item};
pub use model::{Attachment, DataSet, Folder, FolderKind, Item, Mailbox, is_mail_class};
pub use ops::AccessStyle;
pub use server::{
    AccessRecord, Arrival, AuthEvent, AuthEventKind, BACK_OFF_GRACE, BackOff, BackOffKind,
    FakeExchange, Fault, MAX_RECORDS, NtlmUser, Options, Stats,
};
