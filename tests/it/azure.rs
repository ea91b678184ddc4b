//! The Azure Blob Storage sink against Azurite (the storage emulator, installed by
//! scripts/test.sh into .azurite): the binary stores exactly what the local sink stores,
//! resumes after kill -9, reports a wrong key clearly, reads its remote configuration; and
//! state blobs round trip with their conflict detection.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use exchange_sync::auth::azure::AzureCredentials;
use exchange_sync::config::Bucket;
use exchange_sync::secret::Secret;
use exchange_sync::sink::Sink;
use exchange_sync::sink::azure::{AzurePrefix, AzureSink};
use exchange_sync::sync::state::{FolderState, MailboxState};
use fake_exchange::{FakeExchange, GenSpec, Options};
use serde_json::json;
use time::macros::datetime;

use crate::support::*;

/// Azurite's well-known development account and key (public, in Microsoft's docs).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where scripts/test.sh installs Azurite, unless EXCHANGE_SYNC_AZURITE names the launcher.
fn azurite_launcher() -> PathBuf {
    if let Some(path) = std::env::var_os("EXCHANGE_SYNC_AZURITE") {
        return PathBuf::from(path);
    }
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".azurite/node_modules/.bin/azurite-blob");
    assert!(
        path.exists(),
        "the Azure sink tests need Azurite: run scripts/test.sh (or tests/peers/azurite.sh), \
         which installs it into .azurite (or set EXCHANGE_SYNC_AZURITE to azurite-blob)"
    );
    path
}

/// A free loopback port: bind port 0, read it, release it.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// An Azurite blob service on a free loopback port with its own data directory; killed on
/// drop.
struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Azurite {
        let launcher = azurite_launcher();
        let dir = tempfile::tempdir().unwrap();
        // Another process may take the port between our release and Azurite's bind: retry.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(&launcher)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(dir.path())
                .args([
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--silent",
                    "--loose",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", launcher.display()));
            let stdout = child.stdout.take().unwrap();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let mut sent = false;
                // Keep draining, so Azurite never blocks on a full pipe.
                while let Some(Ok(line)) = lines.next() {
                    if !sent && line.contains("successfully listens") {
                        let _ = ready_tx.send(());
                        sent = true;
                    }
                }
            });
            let ready = ready_rx.recv_timeout(Duration::from_secs(60)).is_ok()
                && TcpStream::connect(("127.0.0.1", port)).is_ok();
            if ready {
                return Azurite {
                    child,
                    port,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("Azurite did not start (see {})", launcher.display());
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    fn connection_string(&self, key: &str) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};BlobEndpoint={};",
            self.endpoint()
        )
    }

    /// A sink on `az://devstoreaccount1/<container>[/path]` through the library.
    fn sink(&self, prefix: &str) -> AzureSink {
        let prefix = AzurePrefix::parse(prefix).unwrap();
        AzureSink::new(
            &prefix,
            AzureCredentials::SharedKey {
                account: ACCOUNT.into(),
                key: Secret::new(KEY),
                blob_endpoint: Some(self.endpoint()),
            },
        )
        .unwrap()
    }

    /// A new container, named uniquely; returns its `az://` prefix.
    fn container(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("test-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let prefix = format!("az://{ACCOUNT}/{name}");
        self.sink(&prefix).create_container().unwrap();
        prefix
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(mailboxes: usize, emails_per_mailbox: usize) -> GenSpec {
    GenSpec {
        seed: 11,
        mailboxes,
        emails_per_mailbox,
        mime_bytes: 1200,
        start: datetime!(2024-03-01 08:00 UTC),
    }
}

/// The binary with a config file, storing into `prefix` on `azurite`.
fn azure_command(
    config: &Path,
    azurite: &Azurite,
    prefix: &str,
    key: &str,
    args: &[&str],
) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("REINFER_EWS_CONFIG", config)
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            azurite.connection_string(key),
        )
        // Nothing of the token chain may be reached from a test.
        .env("EXCHANGE_SYNC_IMDS_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("REINFER_EWS_AUTH_USER")
        .env_remove("REINFER_EWS_AUTH_PASS")
        .env_remove("REINFER_EWS_ACCESS_TYPE")
        .env_remove("REINFER_EWS_HOST")
        .env_remove("REINFER_EWS_PORT")
        .args(["--private-file-prefix", prefix])
        .args(args);
    command
}

/// Every blob under `data/`, by name relative to the prefix.
fn data_blobs(sink: &AzureSink) -> BTreeMap<String, Vec<u8>> {
    sink.list("data/")
        .unwrap()
        .into_iter()
        .map(|name| {
            let bytes = sink.read(&name).unwrap().expect("listed blob exists");
            (name, bytes)
        })
        .collect()
}

/// Every file under `dir/data`, by path relative to `dir`.
fn data_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(&dir.join("data"))
        .into_iter()
        .map(|path| {
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// Copies the data blobs into a directory laid out like the local sink's, for the local
/// sink's checks.
fn download(blobs: &BTreeMap<String, Vec<u8>>, dir: &Path) {
    for (name, bytes) in blobs {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn azure_sink_stores_exactly_what_the_local_sink_stores() {
    let azurite = Azurite::start();
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(2, 120)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"reinfer_batch_size": 25}),
        ),
    );
    let local = dir.path().join("local");
    run_once(&config, &local);

    // Under a PATH inside the container, to check that blob names nest below it.
    let prefix = format!("{}/sync/eu", azurite.container());
    let result = run(azure_command(
        &config,
        &azurite,
        &prefix,
        KEY,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);

    let sink = azurite.sink(&prefix);
    let blobs = data_blobs(&sink);
    let files = data_files(&local);
    assert!(!files.is_empty());
    assert_eq!(
        blobs.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>(),
        "blob names differ from the local sink's file names"
    );
    assert!(blobs == files, "blob contents differ from the local files");
    let copy = dir.path().join("copy");
    download(&blobs, &copy);
    assert_exact_copy(&fake.data(), &copy);

    // The root of the container holds nothing: everything is under the PATH.
    let root = azurite.sink(prefix.trim_end_matches("/sync/eu"));
    assert!(root.list("data/").unwrap().is_empty());
    // One state blob per mailbox, as the local sink has one state file.
    let mut states = sink.list("state/").unwrap();
    states.sort();
    let mut local_states: Vec<String> = files_under(&local.join("state"))
        .iter()
        .map(|p| {
            p.strip_prefix(&local)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    local_states.sort();
    assert_eq!(states, local_states);

    // A second run finds nothing new and changes nothing.
    let result = run(azure_command(
        &config,
        &azurite,
        &prefix,
        KEY,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert!(data_blobs(&sink) == blobs);
}

#[test]
fn restart_after_kill_9_resumes_into_azure_with_nothing_missing() {
    let azurite = Azurite::start();
    let fake = FakeExchange::start(
        fake_exchange::generate(&spec(2, 400)),
        Options {
            latency: Duration::from_millis(3),
            ..Options::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"reinfer_batch_size": 20, "max_concurrent_fetches": 2}),
        ),
    );
    let prefix = azurite.container();
    let sink = azurite.sink(&prefix);
    let mut child = azure_command(
        &config,
        &azurite,
        &prefix,
        KEY,
        &["--once", "--debug-level", "0"],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Kill it once some state is saved, long before it is done.
    let deadline = Instant::now() + Duration::from_secs(90);
    while sink.list("state/").unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no state saved in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let total = emails_to_copy(&fake.data());
    let count_docs = |blobs: &BTreeMap<String, Vec<u8>>| {
        blobs
            .values()
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .sum::<usize>()
    };
    let before = count_docs(&data_blobs(&sink));
    assert!(
        before < total,
        "the first run finished before it was killed ({before} of {total})"
    );

    let result = run(azure_command(
        &config,
        &azurite,
        &prefix,
        KEY,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    let copy = dir.path().join("copy");
    download(&data_blobs(&sink), &copy);
    let ids: HashSet<(String, String)> = read_docs(&copy)
        .iter()
        .map(|(_, d)| {
            (
                d["mailbox"].as_str().unwrap().to_owned(),
                d["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for mailbox in &fake.data().mailboxes {
        for (_, item) in mailbox.synced_items() {
            let key = (mailbox.address.clone(), expected_id(&mailbox.address, item));
            assert!(ids.contains(&key), "item {} lost across kill -9", item.id);
        }
    }
    assert_eq!(ids.len(), total);
}

#[test]
fn a_wrong_account_key_is_a_clear_error_without_the_key() {
    let azurite = Azurite::start();
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 5)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let prefix = azurite.container();
    // Valid base64, wrong key.
    let wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleQ==";
    let result = run(azure_command(
        &config,
        &azurite,
        &prefix,
        wrong,
        &["--once", "--debug-level", "2"],
    ));
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    assert!(
        result
            .stderr
            .contains("the storage account devstoreaccount1 rejected the account key"),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("AuthorizationFailure")
            || result.stderr.contains("AuthenticationFailed"),
        "{}",
        result.stderr
    );
    for text in [&result.stderr, &result.stdout] {
        assert!(!text.contains(wrong), "the key leaked: {text}");
        assert!(!text.contains(&wrong[..20]), "the key leaked: {text}");
        assert!(!text.contains(KEY) && !text.contains(&KEY[..20]));
    }
    // Nothing was stored.
    assert!(azurite.sink(&prefix).list("").unwrap().is_empty());
}

#[test]
fn a_missing_container_and_bad_prefixes_are_reported() {
    let azurite = Azurite::start();
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 3)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let result = run(azure_command(
        &config,
        &azurite,
        &format!("az://{ACCOUNT}/no-such-container"),
        KEY,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    assert!(
        result.stderr.contains("container \"no-such-container\""),
        "{}",
        result.stderr
    );

    for (prefix, expected) in [
        ("az://devstoreaccount1", "expected az://ACCOUNT/CONTAINER"),
        ("az://devstoreaccount1/Bad_Name", "container name"),
        (
            "az://otheraccount/mail",
            "is for storage account devstoreaccount1",
        ),
    ] {
        let result = run(azure_command(&config, &azurite, prefix, KEY, &["--once"]));
        assert_eq!(result.code(), Some(2), "{prefix}: {}", result.stderr);
        assert!(
            result.stderr.contains(expected),
            "{prefix}: {}",
            result.stderr
        );
        assert!(!result.stderr.contains(KEY));
    }
}

#[test]
fn remote_config_is_read_from_the_container() {
    let azurite = Azurite::start();
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 10)), Options::default()).unwrap();
    let prefix = azurite.container();
    let sink = azurite.sink(&prefix);
    let stored = config(&fake.url(), &addresses(&fake), json!({}));
    sink.write(
        "config/demo/prod.json",
        &serde_json::to_vec(&stored).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.json");
    let mut command = azure_command(
        &unused,
        &azurite,
        &prefix,
        KEY,
        &[
            "--remote-config-owner",
            "demo",
            "--remote-config-key",
            "prod",
            "--once",
            "--debug-level",
            "0",
        ],
    );
    command.env_remove("REINFER_EWS_CONFIG");
    let result = run(command);
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    let copy = dir.path().join("copy");
    download(&data_blobs(&sink), &copy);
    assert_exact_copy(&fake.data(), &copy);

    let mut command = azure_command(
        &unused,
        &azurite,
        &prefix,
        KEY,
        &[
            "--remote-config-owner",
            "demo",
            "--remote-config-key",
            "nope",
            "--once",
        ],
    );
    command.env_remove("REINFER_EWS_CONFIG");
    let missing = run(command);
    assert_eq!(missing.code(), Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("config/demo/nope.json"),
        "{}",
        missing.stderr
    );
}

fn folder(until: time::OffsetDateTime, ids: &[&str]) -> FolderState {
    FolderState {
        path: vec!["Inbox".into(), "Projects".into()],
        synced_until: until,
        ids_at_synced_until: ids.iter().map(|s| s.to_string()).collect(),
        last_synced_at: Some(until),
        status: "ok".into(),
        last_error: None,
    }
}

#[test]
fn state_blobs_round_trip_and_a_second_writer_is_detected() {
    let azurite = Azurite::start();
    let prefix = azurite.container();
    let bucket = Bucket {
        owner: "acme".into(),
        name: "mail".into(),
    };
    // An address whose blob name needs percent-encoding: exercises the signed path.
    let mailbox = "Jé+Smith@Example.com";
    let writer_a = azurite.sink(&prefix);
    let writer_b = azurite.sink(&prefix);
    assert_eq!(writer_a.load_state(&bucket, mailbox).unwrap(), None);
    assert_eq!(writer_b.load_state(&bucket, mailbox).unwrap(), None);

    let t1 = datetime!(2024-03-01 10:00:00 UTC);
    let t2 = datetime!(2024-03-02 10:00:00 UTC);
    let state = |folders: Vec<(&str, FolderState)>| MailboxState {
        version: 1,
        mailbox: mailbox.into(),
        folders: folders
            .into_iter()
            .map(|(id, f)| (id.to_owned(), f))
            .collect(),
    };
    let a = state(vec![
        ("inbox", folder(t1, &["a1"])),
        ("sent", folder(t2, &["s"])),
    ]);
    writer_a.save_state(&bucket, &a).unwrap();
    // Round trip, through a fresh sink, and the layout of the local sink.
    let reader = azurite.sink(&prefix);
    assert_eq!(
        reader.load_state(&bucket, mailbox).unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        reader.list("state/").unwrap(),
        vec!["state/acme/mail/j%C3%A9+smith@example.com.json".to_owned()]
    );

    // Writer B read "no state" before A wrote: its write must not replace A's.
    let b = state(vec![("inbox", folder(t2, &["b1"]))]);
    writer_b.save_state(&bucket, &b).unwrap();
    let merged = reader.load_state(&bucket, mailbox).unwrap().unwrap();
    assert_eq!(
        merged.folders["inbox"].synced_until, t2,
        "B's newer watermark"
    );
    assert_eq!(merged.folders["sent"], a.folders["sent"], "A's folder kept");

    // A writes again with its stale ETag and an older inbox watermark: B's stays.
    let mut a2 = a.clone();
    a2.folders.get_mut("inbox").unwrap().ids_at_synced_until = vec!["a1".into(), "a2".into()];
    writer_a.save_state(&bucket, &a2).unwrap();
    let merged = reader.load_state(&bucket, mailbox).unwrap().unwrap();
    assert_eq!(merged.folders["inbox"].synced_until, t2);
    assert_eq!(merged.folders["inbox"].ids_at_synced_until, vec!["b1"]);

    // A single writer's saves follow one another without conflicts.
    for n in 0..3 {
        let mut next = merged.clone();
        next.folders.get_mut("sent").unwrap().synced_until = t2 + time::Duration::hours(n + 1);
        reader.save_state(&bucket, &next).unwrap();
        assert_eq!(
            azurite.sink(&prefix).load_state(&bucket, mailbox).unwrap(),
            Some(next)
        );
    }
}

/// A self-signed certificate for 127.0.0.1 (as `openssl req -x509 -addext
/// subjectAltName=IP:127.0.0.1` makes): (certificate PEM, private key PEM).
fn loopback_certificate() -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    builder
        .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .build(&builder.x509v3_context(None, None))
        .unwrap();
    builder.append_extension(san).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    (
        builder.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

/// An access token Azurite's basic OAuth check accepts: it reads the claims (issuer,
/// audience, times) and does not verify the signature.
fn storage_jwt() -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let claims = json!({
        "aud": "https://storage.azure.com",
        "iss": "https://sts.windows.net/11111111-2222-3333-4444-555555555555/",
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "oid": "66666666-7777-8888-9999-000000000000",
        "tid": "11111111-2222-3333-4444-555555555555",
    });
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(b"not-verified-by-azurite")
    )
}

#[test]
fn bearer_tokens_from_the_credential_chain_reach_azurite_over_https() {
    let launcher = azurite_launcher();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = loopback_certificate();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let port = free_port();
    let data = dir.path().join("azurite");
    let mut azurite = Command::new(&launcher)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .arg("--location")
        .arg(&data)
        .args(["--oauth", "basic", "--cert"])
        .arg(&cert_path)
        .arg("--key")
        .arg(&key_path)
        .args([
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
            "--loose",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = KillOnDrop(&mut azurite);
    let endpoint = format!("https://127.0.0.1:{port}/{ACCOUNT}");
    let token = storage_jwt();
    // The test's own requests skip certificate checks (loopback only); the binary's trust
    // the certificate through SSL_CERT_FILE.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::NativeTls)
                .disable_verification(true)
                .build(),
        )
        .build()
        .into();
    let request = |method: &str, path: &str| {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap()
            .replace("+0000", "GMT");
        let url = format!("{endpoint}/{path}");
        let builder = match method {
            "PUT" => {
                return agent
                    .put(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .header("x-ms-version", "2021-12-02")
                    .header("x-ms-date", date)
                    .send_empty();
            }
            _ => agent.get(&url),
        };
        builder
            .header("authorization", format!("Bearer {token}"))
            .header("x-ms-version", "2021-12-02")
            .header("x-ms-date", date)
            .call()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match request("PUT", "bearer?restype=container") {
            Ok(response) => {
                assert_eq!(response.status(), 201, "creating the container");
                break;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(err) => panic!("Azurite over https did not start: {err}"),
        }
    }

    // The only credential: a signed-in Azure CLI that hands out the token.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let az = bin.join("az");
    std::fs::write(
        &az,
        format!(
            "#!/bin/sh\necho '{{\"accessToken\": \"{token}\", \"expires_on\": {}, \"tokenType\": \"Bearer\"}}'\n",
            time::OffsetDateTime::now_utc().unix_timestamp() + 3600
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 20)), Options::default()).unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let result = run({
        let mut command = Command::new(BIN);
        command
            .env("REINFER_EWS_CONFIG", &config)
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env_remove("AZURE_CLIENT_ID")
            .env_remove("AZURE_CLIENT_SECRET")
            .env_remove("AZURE_FEDERATED_TOKEN_FILE")
            .env_remove("IDENTITY_ENDPOINT")
            .env(
                "EXCHANGE_SYNC_IMDS_ENDPOINT",
                format!("http://127.0.0.1:{}", free_port()),
            )
            .env("AZURE_STORAGE_BLOB_ENDPOINT", &endpoint)
            .env("SSL_CERT_FILE", &cert_path)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .args(["--private-file-prefix", &format!("az://{ACCOUNT}/bearer")])
            .args(["--once", "--debug-level", "2"]);
        command
    });
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert!(
        result.stderr.contains("using Azure CLI"),
        "{}",
        result.stderr
    );
    // Not even at --debug-level 2, nor any part of it.
    let signature_free = token.rsplit_once('.').unwrap().0;
    for text in [&result.stderr, &result.stdout] {
        assert!(!text.contains(signature_free), "the token leaked");
        assert!(!text.contains(&token[..40]), "the token leaked");
    }
    // What the run stored is listed with the same token.
    let mut listing = request("GET", "bearer?restype=container&comp=list&prefix=data/").unwrap();
    assert_eq!(listing.status(), 200);
    let text = listing.body_mut().read_to_string().unwrap();
    let stored = text.matches("<Name>data/").count();
    assert!(stored >= 1, "{text}");
}
