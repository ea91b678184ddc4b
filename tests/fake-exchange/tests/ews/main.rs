//! Integration tests of the fake EWS server over real TCP/HTTP: folder enumeration, item
//! listing and MIME download, mailbox access styles, NTLM, strictness and fault injection.

mod access;
mod auth;
mod common;
mod errors;
mod faults;
mod folders;
mod items;
