//! Unit tests of the Azure sink: names, signing, state merging, and the HTTP behaviour
//! (retries, Retry-After, refused credentials, conditional writes) against a scripted
//! loopback server. The round trips against Azurite are in tests/it/azure.rs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::macros::datetime;

use super::shared_key::{sign, string_to_sign};
use super::*;
use crate::auth::TokenProvider;
use crate::secret::Secret;

const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn bucket() -> Bucket {
    Bucket {
        owner: "acme".into(),
        name: "mail".into(),
    }
}

#[test]
fn prefixes_parse_and_print() {
    let p = AzurePrefix::parse("az://acct1/mail").unwrap();
    assert_eq!(
        p,
        AzurePrefix {
            account: "acct1".into(),
            container: "mail".into(),
            path: String::new()
        }
    );
    assert_eq!(p.to_string(), "az://acct1/mail");
    assert_eq!(p.blob_name("data/a/b/x.jsonl"), "data/a/b/x.jsonl");

    let p = AzurePrefix::parse("az://acct1/mail/prod/eu/").unwrap();
    assert_eq!(p.path, "prod/eu");
    assert_eq!(p.to_string(), "az://acct1/mail/prod/eu");
    assert_eq!(p.blob_name("state/a/b/x.json"), "prod/eu/state/a/b/x.json");

    for bad in [
        "acct/mail",
        "https://acct/mail",
        "az://",
        "az://acct",
        "az://acct/",
        "az://Acct/mail",
        "az://ab/mail",
        "az://acct/Mail",
        "az://acct/m",
        "az://acct/-mail",
        "az://acct/ma--il",
        "az://acct/mail/a//b",
        "az://acct/mail/../x",
        "az://acct/mail/a\\b",
    ] {
        let err = AzurePrefix::parse(bad).unwrap_err();
        assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
    }
}

/// Vectors computed independently of this code, with Python's hmac and hashlib from the
/// string to sign as the Azure documentation describes it:
///
/// ```text
/// key = base64.b64decode(DEV_KEY)
/// sts = "PUT\n\n\n26\n\napplication/json\n\n\n\"0x8DC0000000000AA\"\n\n\n\n" \
///       "x-ms-blob-type:BlockBlob\nx-ms-date:Fri, 01 Mar 2024 10:00:05 GMT\n" \
///       "x-ms-version:2021-12-02\n" \
///       "/devstoreaccount1/devstoreaccount1/mail/state/acme/mail/j%25C3%25A9%40x.json"
/// base64.b64encode(hmac.new(key, sts.encode(), hashlib.sha256).digest())
/// ```
#[test]
fn shared_key_signatures_match_known_answers() {
    let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, DEV_KEY).unwrap();
    // A conditional Put Blob of a state blob on Azurite's path-style endpoint: the account
    // appears twice, and the percent signs of an encoded mailbox are themselves encoded.
    let sts = string_to_sign(
        "PUT",
        &[
            ("x-ms-version", "2021-12-02"),
            ("Content-Type", "application/json"),
            ("x-ms-blob-type", "BlockBlob"),
            ("If-Match", "\"0x8DC0000000000AA\""),
            ("x-ms-date", "Fri, 01 Mar 2024 10:00:05 GMT"),
            ("content-length", "26"),
        ],
        "devstoreaccount1",
        "/devstoreaccount1/mail/state/acme/mail/j%25C3%25A9%40x.json",
        &[],
    );
    assert_eq!(
        sts,
        "PUT\n\n\n26\n\napplication/json\n\n\n\"0x8DC0000000000AA\"\n\n\n\n\
         x-ms-blob-type:BlockBlob\nx-ms-date:Fri, 01 Mar 2024 10:00:05 GMT\n\
         x-ms-version:2021-12-02\n\
         /devstoreaccount1/devstoreaccount1/mail/state/acme/mail/j%25C3%25A9%40x.json"
    );
    assert_eq!(
        sign(&key, &sts).unwrap(),
        "YJ5H+butdmyALRBhAYcHmrRMA7tOq1rigbyMtDgjqH0="
    );

    // A container request: a zero length signs as empty, query parameters sorted by name.
    let sts = string_to_sign(
        "GET",
        &[
            ("x-ms-date", "Fri, 01 Mar 2024 10:00:05 GMT"),
            ("x-ms-version", "2021-12-02"),
            ("content-length", "0"),
        ],
        "myaccount",
        "/mail",
        &[("restype", "container"), ("comp", "list")],
    );
    assert_eq!(
        sts,
        "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 01 Mar 2024 10:00:05 GMT\n\
         x-ms-version:2021-12-02\n/myaccount/mail\ncomp:list\nrestype:container"
    );
    assert_eq!(
        sign(&key, &sts).unwrap(),
        "3CURxTt0tK5foDo9GxIw4KTFAFA4aWILSA+bwnjdrso="
    );
}

fn folder(until: time::OffsetDateTime, ids: &[&str], status: &str) -> FolderState {
    FolderState {
        path: vec!["Inbox".into()],
        synced_until: until,
        ids_at_synced_until: ids.iter().map(|s| s.to_string()).collect(),
        last_synced_at: None,
        status: status.into(),
        last_error: None,
    }
}

fn state(folders: &[(&str, FolderState)]) -> MailboxState {
    MailboxState {
        version: 1,
        mailbox: "a@b.c".into(),
        folders: folders
            .iter()
            .map(|(id, f)| (id.to_string(), f.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn merging_keeps_the_newer_watermark_of_each_folder() {
    let t1 = datetime!(2024-01-01 0:00 UTC);
    let t2 = datetime!(2024-01-02 0:00 UTC);
    let ours = state(&[
        ("behind", folder(t1, &["a"], "ok")),
        ("ahead", folder(t2, &["b"], "ok")),
        ("same", folder(t1, &["c", "d"], "error")),
        ("only-ours", folder(t1, &[], "ok")),
    ]);
    let theirs = state(&[
        ("behind", folder(t2, &["x"], "ok")),
        ("ahead", folder(t1, &["y"], "ok")),
        ("same", folder(t1, &["e", "c"], "ok")),
        ("only-theirs", folder(t2, &["z"], "ok")),
    ]);
    let merged = merge_states(&ours, Some(&theirs));
    assert_eq!(merged.folders["behind"], theirs.folders["behind"]);
    assert_eq!(merged.folders["ahead"], ours.folders["ahead"]);
    assert_eq!(
        merged.folders["same"].ids_at_synced_until,
        vec!["c", "d", "e"]
    );
    assert_eq!(merged.folders["same"].status, "error", "ours at a tie");
    assert_eq!(merged.folders["only-ours"], ours.folders["only-ours"]);
    assert_eq!(merged.folders["only-theirs"], theirs.folders["only-theirs"]);
    assert_eq!(merge_states(&ours, None), ours);
    // Merging with itself changes nothing: the normal single-writer case.
    assert_eq!(merge_states(&ours, Some(&ours)), ours);
}

/// One scripted reply.
#[derive(Clone)]
struct Scripted {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, headers: &[(&'static str, &str)], body: &str) -> Scripted {
    Scripted {
        status,
        headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
        body: body.into(),
    }
}

fn azure_error(status: u16, code: &str, message: &str) -> Scripted {
    reply(
        status,
        &[("x-ms-error-code", code)],
        &format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>\
             <Message>{message}\nRequestId:r1\nTime:t</Message></Error>"
        ),
    )
}

/// What the fake saw of a request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback server answering from a script (then 500s), recording every request.
struct FakeBlob {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeBlob {
    fn start(script: Vec<Scripted>) -> FakeBlob {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Mutex::new(VecDeque::from(script));
        let thread = {
            let (server, seen) = (server.clone(), seen.clone());
            std::thread::spawn(move || {
                while let Ok(mut request) = server.recv() {
                    let mut body = Vec::new();
                    let _ = request.as_reader().read_to_end(&mut body);
                    seen.lock().unwrap().push(Seen {
                        method: request.method().to_string(),
                        url: request.url().to_owned(),
                        headers: request
                            .headers()
                            .iter()
                            .map(|h| (h.field.to_string(), h.value.to_string()))
                            .collect(),
                        at: Instant::now(),
                    });
                    let next = script
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or_else(|| azure_error(500, "InternalError", "script ended"));
                    let mut response =
                        tiny_http::Response::from_string(next.body).with_status_code(next.status);
                    for (name, value) in next.headers {
                        response.add_header(
                            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                                .unwrap(),
                        );
                    }
                    let _ = request.respond(response);
                }
            })
        };
        FakeBlob {
            port,
            seen,
            server,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeBlob {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn shared_key_sink(fake: &FakeBlob, key: &str) -> AzureSink {
    let prefix = AzurePrefix::parse("az://devstoreaccount1/mail").unwrap();
    AzureSink::new(
        &prefix,
        AzureCredentials::SharedKey {
            account: "devstoreaccount1".into(),
            key: Secret::new(key),
            blob_endpoint: Some(fake.endpoint()),
        },
    )
    .unwrap()
}

fn batch() -> EncodedBatch {
    EncodedBatch {
        docs: vec![br#"{"id":"1"}"#.to_vec()],
        ids: vec!["1".into()],
        first_received: Some(datetime!(2024-03-01 10:00:05 UTC)),
    }
}

#[test]
fn busy_and_throttled_replies_are_retried_after_retry_after() {
    let fake = FakeBlob::start(vec![
        azure_error(503, "ServerBusy", "The server is busy."),
        reply(429, &[("retry-after", "0.3")], ""),
        reply(201, &[("etag", "\"0x1\"")], ""),
    ]);
    let sink = shared_key_sink(&fake, DEV_KEY);
    sink.put_emails(&bucket(), "Bob@X.com", &batch()).unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[2].at - seen[1].at >= Duration::from_millis(300),
        "Retry-After not honoured"
    );
    let expected = format!(
        "/devstoreaccount1/mail/{}",
        client::encode_path(&data_name(&bucket(), "Bob@X.com", &batch()))
    );
    for request in &seen {
        assert_eq!(request.method, "PUT");
        assert_eq!(request.url, expected);
        assert_eq!(request.header("x-ms-blob-type"), Some("BlockBlob"));
        assert_eq!(request.header("x-ms-version"), Some(API_VERSION));
        assert!(request.header("x-ms-date").unwrap().ends_with(" GMT"));
        assert!(
            request
                .header("authorization")
                .unwrap()
                .starts_with("SharedKey devstoreaccount1:")
        );
    }
}

#[test]
fn retries_are_bounded_and_a_long_retry_after_is_handed_back() {
    let busy = azure_error(503, "ServerBusy", "The server is busy.");
    let fake = FakeBlob::start(vec![busy.clone(), busy.clone(), busy.clone(), busy]);
    let sink = shared_key_sink(&fake, DEV_KEY);
    let err = sink.put_emails(&bucket(), "a@b.c", &batch()).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("ServerBusy"), "{err}");
    assert_eq!(fake.seen().len(), 4);

    let fake = FakeBlob::start(vec![reply(503, &[("retry-after", "120")], "")]);
    let sink = shared_key_sink(&fake, DEV_KEY);
    let started = Instant::now();
    let err = sink.put_emails(&bucket(), "a@b.c", &batch()).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slept in the sink"
    );
    assert_eq!(err.demanded_wait(), Some(Duration::from_secs(120)));
    assert_eq!(fake.seen().len(), 1);
}

#[test]
fn a_refused_key_is_a_clear_auth_error_without_the_key() {
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
    let fake = FakeBlob::start(vec![azure_error(
        403,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of the Authorization \
         header is formed correctly including the signature.",
    )]);
    let sink = shared_key_sink(&fake, wrong);
    let err = sink.load_state(&bucket(), "a@b.c").unwrap_err();
    assert!(err.is_fatal(), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("the storage account devstoreaccount1 rejected the account key"),
        "{text}"
    );
    assert!(text.contains("AuthenticationFailed"), "{text}");
    assert!(!text.contains("RequestId"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(DEV_KEY), "{text}");
    assert_eq!(fake.seen().len(), 1, "no retry of a refusal");
}

#[test]
fn missing_blobs_and_containers_are_told_apart() {
    let fake = FakeBlob::start(vec![
        azure_error(404, "BlobNotFound", "The specified blob does not exist."),
        azure_error(
            404,
            "ContainerNotFound",
            "The specified container does not exist.",
        ),
        azure_error(404, "BlobNotFound", "The specified blob does not exist."),
        azure_error(
            404,
            "ContainerNotFound",
            "The specified container does not exist.",
        ),
    ]);
    let sink = shared_key_sink(&fake, DEV_KEY);
    assert_eq!(sink.load_state(&bucket(), "a@b.c").unwrap(), None);
    let err = sink.load_state(&bucket(), "a@b.c").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("container \"mail\""), "{err}");
    let err = sink.read_config("demo", "prod").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("az://devstoreaccount1/mail/config/demo/prod.json"),
        "{err}"
    );
    let err = sink.check_access().unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(
        fake.seen()[3].url,
        "/devstoreaccount1/mail?restype=container"
    );
}

#[test]
fn state_writes_are_conditional_and_a_conflict_merges() {
    let t1 = datetime!(2024-01-01 0:00 UTC);
    let t2 = datetime!(2024-01-02 0:00 UTC);
    let theirs = state(&[("f", folder(t2, &["x"], "ok"))]);
    let ours = state(&[("f", folder(t1, &["a"], "ok"))]);
    let fake = FakeBlob::start(vec![
        // load: absent
        azure_error(404, "BlobNotFound", "The specified blob does not exist."),
        // save: another writer created it meanwhile
        azure_error(
            409,
            "BlobAlreadyExists",
            "The specified blob already exists.",
        ),
        // reload: theirs
        reply(
            200,
            &[("etag", "\"0xT\"")],
            &serde_json::to_string(&theirs).unwrap(),
        ),
        // save again, conditional on their ETag
        reply(201, &[("etag", "\"0xM\"")], ""),
        // next save: conditional on our new ETag
        reply(201, &[("etag", "\"0xN\"")], ""),
    ]);
    let sink = shared_key_sink(&fake, DEV_KEY);
    assert_eq!(sink.load_state(&bucket(), "a@b.c").unwrap(), None);
    sink.save_state(&bucket(), &ours).unwrap();
    sink.save_state(&bucket(), &ours).unwrap();
    let seen = fake.seen();
    assert_eq!(seen[1].header("if-none-match"), Some("*"));
    assert_eq!(seen[3].header("if-match"), Some("\"0xT\""));
    assert_eq!(seen[4].header("if-match"), Some("\"0xM\""));
    // The merged state, not ours, is what the sink remembers: their newer watermark stays.
    let remembered = sink
        .remembered(&state_name(&bucket(), "a@b.c"))
        .unwrap()
        .state
        .unwrap();
    assert_eq!(remembered.folders["f"].synced_until, t2);
}

#[test]
fn state_saved_without_a_load_reads_the_etag_first() {
    let fake = FakeBlob::start(vec![
        reply(
            200,
            &[("etag", "\"0xOLD\"")],
            &serde_json::to_string(&state(&[])).unwrap(),
        ),
        reply(201, &[("etag", "\"0xNEW\"")], ""),
    ]);
    let sink = shared_key_sink(&fake, DEV_KEY);
    sink.save_state(&bucket(), &state(&[])).unwrap();
    let seen = fake.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[1].header("if-match"), Some("\"0xOLD\""));
}

#[test]
fn corrupt_state_is_reported_as_corrupt() {
    let fake = FakeBlob::start(vec![reply(200, &[("etag", "\"0x1\"")], "{")]);
    let sink = shared_key_sink(&fake, DEV_KEY);
    let err = sink.load_state(&bucket(), "a@b.c").unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

/// Hands out "token-1", "token-2", … and counts invalidations.
struct CountingTokens {
    issued: AtomicUsize,
    invalidated: AtomicUsize,
}

impl TokenProvider for CountingTokens {
    fn token(&self) -> Result<Secret, crate::auth::Error> {
        self.issued.fetch_add(1, Ordering::SeqCst);
        let n = 1 + self.invalidated.load(Ordering::SeqCst);
        Ok(Secret::new(format!("token-{n}")))
    }

    fn invalidate(&self) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
    }

    fn describe(&self) -> String {
        "counting tokens".into()
    }
}

#[test]
fn bearer_tokens_are_renewed_once_after_a_401() {
    let fake = FakeBlob::start(vec![
        azure_error(
            401,
            "InvalidAuthenticationInfo",
            "Lifetime validation failed.",
        ),
        reply(201, &[("etag", "\"0x1\"")], ""),
        azure_error(
            401,
            "InvalidAuthenticationInfo",
            "Lifetime validation failed.",
        ),
        azure_error(
            401,
            "InvalidAuthenticationInfo",
            "Lifetime validation failed.",
        ),
    ]);
    let tokens = Arc::new(CountingTokens {
        issued: AtomicUsize::new(0),
        invalidated: AtomicUsize::new(0),
    });
    let prefix = AzurePrefix::parse("az://devstoreaccount1/mail").unwrap();
    let sink = AzureSink::new(
        &prefix,
        AzureCredentials::Bearer {
            provider: tokens.clone(),
            blob_endpoint: Some(fake.endpoint()),
        },
    )
    .unwrap();
    sink.put_emails(&bucket(), "a@b.c", &batch()).unwrap();
    let seen = fake.seen();
    assert_eq!(seen[0].header("authorization"), Some("Bearer token-1"));
    assert_eq!(seen[1].header("authorization"), Some("Bearer token-2"));
    let err = sink.put_emails(&bucket(), "a@b.c", &batch()).unwrap_err();
    assert!(err.is_fatal(), "{err:?}");
    assert!(
        err.to_string().contains("InvalidAuthenticationInfo"),
        "{err}"
    );
    assert!(!err.to_string().contains("token-"), "{err}");
}

#[test]
fn bearer_tokens_never_go_over_plain_http_to_other_hosts() {
    let prefix = AzurePrefix::parse("az://acct1/mail").unwrap();
    let result = AzureSink::new(
        &prefix,
        AzureCredentials::Bearer {
            provider: Arc::new(crate::auth::StaticToken(Secret::new("t"))),
            blob_endpoint: Some("http://acct1.blob.core.windows.net".into()),
        },
    );
    assert!(matches!(result, Err(Error::Invalid { .. })));
}

#[test]
fn a_connection_string_for_another_account_is_refused() {
    let prefix = AzurePrefix::parse("az://acct1/mail").unwrap();
    let result = AzureSink::new(
        &prefix,
        AzureCredentials::SharedKey {
            account: "acct2".into(),
            key: Secret::new(DEV_KEY),
            blob_endpoint: None,
        },
    );
    let Err(err) = result else { panic!("accepted") };
    assert!(err.to_string().contains("acct2") && err.to_string().contains("acct1"));
    assert!(!err.to_string().contains(DEV_KEY));
}
