//! Shared helpers for the integration tests: running the binary, writing configs, reading the
//! local sink, starting the pyspnego NTLM acceptor.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_exchange-sync");
pub const NTLM_DOMAIN: &str = "TESTDOM";
pub const NTLM_USER: &str = "svc-sync";
pub const NTLM_PASSWORD: &str = "S3cret-Passw0rd!";

/// What a finished run printed.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A config for `url` with the test NTLM account and `mailboxes` in bucket demo/emails;
/// `extra` keys are merged in.
pub fn config(url: &str, mailboxes: &[String], extra: Value) -> Value {
    let server = json!({
        "ews_endpoint": url,
        "auth_type": "ntlm",
        "auth_user": format!("{NTLM_DOMAIN}\\{NTLM_USER}"),
        "auth_password": NTLM_PASSWORD,
    });
    config_with(server, mailboxes, extra)
}

/// `server` keys (endpoint, authentication) plus `mailboxes` in bucket demo/emails, no pause
/// between requests, a poll every second; `extra` keys are merged in last.
pub fn config_with(server: Value, mailboxes: &[String], extra: Value) -> Value {
    let boxes: serde_json::Map<String, Value> = mailboxes
        .iter()
        .map(|address| {
            let entry =
                json!({"bucket": {"owner": "demo", "name": "emails"}, "start_from": "bucket"});
            (address.clone(), entry)
        })
        .collect();
    let mut config = json!({
        "poll_message_sleep": 0,
        "poll_frequency": 1,
        "mailboxes": boxes,
    });
    for part in [server, extra] {
        if let (Some(target), Value::Object(part)) = (config.as_object_mut(), part) {
            target.extend(part);
        }
    }
    config
}

pub fn write_config(dir: &Path, config: &Value) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    path
}

/// The binary with a config file and the local sink under `prefix`.
pub fn command(config: &Path, prefix: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("REINFER_EWS_CONFIG", config)
        .env_remove("REINFER_EWS_AUTH_USER")
        .env_remove("REINFER_EWS_AUTH_PASS")
        .env_remove("REINFER_EWS_ACCESS_TYPE")
        .env_remove("REINFER_EWS_HOST")
        .env_remove("REINFER_EWS_PORT")
        .arg("--local-files-prefix")
        .arg(prefix)
        .args(args);
    command
}

pub fn run(mut command: Command) -> Run {
    let output = command.output().expect("cannot run exchange-sync");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn run_once(config: &Path, prefix: &Path) -> Run {
    let run = run(command(config, prefix, &["--once", "--debug-level", "0"]));
    assert_eq!(
        run.code(),
        Some(0),
        "exchange-sync --once failed:\n{}",
        run.stderr
    );
    run
}

/// Every document stored under `prefix`, with the file it came from.
pub fn read_docs(prefix: &Path) -> Vec<(PathBuf, Value)> {
    let mut docs = Vec::new();
    let data = prefix.join("data");
    if !data.exists() {
        return docs;
    }
    for path in files_under(&data) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // A running daemon's write in flight: not stored yet (it may be gone by now).
        if name.starts_with(".tmp-") {
            continue;
        }
        assert!(
            name.ends_with(".jsonl"),
            "unexpected file in the data tree: {}",
            path.display()
        );
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let doc: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad JSON line: {e}", path.display()));
            docs.push((path.clone(), doc));
        }
    }
    docs
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Documents by (mailbox, id), failing if any appears twice. The same email delivered to two
/// mailboxes legitimately has one id in both.
pub fn docs_by_unique_id(docs: &[(PathBuf, Value)]) -> HashMap<(String, String), Value> {
    let mut by_id = HashMap::new();
    for (path, doc) in docs {
        let id = doc["id"].as_str().expect("id is a string").to_owned();
        let mailbox = doc["mailbox"]
            .as_str()
            .expect("mailbox is a string")
            .to_owned();
        if by_id
            .insert((mailbox.clone(), id.clone()), doc.clone())
            .is_some()
        {
            panic!(
                "mailbox {mailbox} id {id} stored twice (second copy in {})",
                path.display()
            );
        }
    }
    by_id
}

/// The document id exchange-sync must give a generated item.
pub fn expected_id(mailbox: &str, item: &fake_exchange::Item) -> String {
    let fetched = exchange_sync::exchange::FetchedItem {
        item_id: item.id.clone(),
        mime: item.mime.clone(),
        internet_message_id: item.message_id.clone(),
        ..Default::default()
    };
    exchange_sync::document::email_id(mailbox, &fetched)
}

/// Checks that the local sink holds exactly the emails `data` says must be copied: every id
/// once, MIME as served, folder path as in the mailbox. Returns how many.
pub fn assert_exact_copy(data: &fake_exchange::DataSet, prefix: &Path) -> usize {
    assert_exact_documents(data, &read_docs(prefix))
}

/// Checks that `docs` (from any sink, with where each came from) are exactly the emails
/// `data` says must be copied. Returns how many.
pub fn assert_exact_documents(data: &fake_exchange::DataSet, docs: &[(PathBuf, Value)]) -> usize {
    let by_id = docs_by_unique_id(docs);
    let mut expected = 0;
    for mailbox in &data.mailboxes {
        for (folder, item) in mailbox.synced_items() {
            expected += 1;
            let id = expected_id(&mailbox.address, item);
            let doc = by_id
                .get(&(mailbox.address.clone(), id.clone()))
                .unwrap_or_else(|| {
                    panic!(
                        "mailbox {} item {} ({id}) was not copied",
                        mailbox.address, item.id
                    )
                });
            assert_eq!(doc["mailbox"], mailbox.address.as_str());
            let mime = doc["mime_content"].as_str().unwrap();
            let served = exchange_sync::document::mime_to_text(item.mime.clone());
            assert!(
                mime == served,
                "id {id}: mime_content differs from what was served"
            );
            if let Ok(utf8) = std::str::from_utf8(&item.mime) {
                assert_eq!(
                    mime.as_bytes(),
                    utf8.as_bytes(),
                    "id {id}: UTF-8 MIME not byte-identical"
                );
            }
            assert!(
                !mime.contains('\u{FFFD}')
                    || item.mime.windows(3).any(|w| w == "\u{FFFD}".as_bytes())
            );
            let path: Vec<String> = doc["metadata"]["folder"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                path,
                mailbox.mail_folder_path(&folder.id),
                "id {id}: folder path"
            );
        }
    }
    assert_eq!(
        by_id.len(),
        expected,
        "the sink holds emails that must not be copied"
    );
    expected
}

/// Every mailbox address the fake Exchange serves.
pub fn addresses(fake: &fake_exchange::FakeExchange) -> Vec<String> {
    fake.data()
        .mailboxes
        .iter()
        .map(|m| m.address.clone())
        .collect()
}

/// How many emails a correct client copies from `data`.
pub fn emails_to_copy(data: &fake_exchange::DataSet) -> usize {
    data.mailboxes
        .iter()
        .map(|m| m.synced_items().count())
        .sum()
}

/// Sends SIGTERM to a running exchange-sync.
pub fn send_sigterm(child: &std::process::Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// Stops a running exchange-sync with SIGTERM and expects a clean exit (code 0).
pub fn terminate(child: &mut std::process::Child) {
    send_sigterm(child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Polls `condition` every 10 ms until it holds; fails after `limit`. For waiting on another
/// process's progress, which has no channel to wait on.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The Python with pyspnego that scripts/test.sh installs.
pub fn test_python() -> PathBuf {
    if let Some(path) = std::env::var_os("EXCHANGE_SYNC_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the NTLM interop tests need Python with pyspnego: run scripts/test.sh, which installs it \
         into .venv (or set EXCHANGE_SYNC_TEST_PYTHON)"
    );
    venv
}

/// The pyspnego NTLM acceptor (tests/peers/ntlm_proxy.py) in front of `upstream`.
pub struct NtlmProxy {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NtlmProxy {
    pub fn start(upstream: &str) -> NtlmProxy {
        Self::spawn(upstream, &[])
    }

    /// The acceptor serving HTTPS with the given PEM certificate and key; with `require_cbt`
    /// it insists on tls-server-end-point channel bindings (Extended Protection). Its
    /// `/__stats` is then HTTPS too.
    pub fn start_tls(
        upstream: &str,
        cert_pem_path: &Path,
        key_pem_path: &Path,
        require_cbt: bool,
    ) -> NtlmProxy {
        let mut args = vec![
            std::ffi::OsString::from("--tls-cert"),
            cert_pem_path.into(),
            "--tls-key".into(),
            key_pem_path.into(),
        ];
        if require_cbt {
            args.push("--require-cbt".into());
        }
        Self::spawn(upstream, &args)
    }

    fn spawn(upstream: &str, extra_args: &[std::ffi::OsString]) -> NtlmProxy {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("ntlm.users");
        std::fs::write(
            &users,
            format!("{NTLM_DOMAIN}:{NTLM_USER}:{NTLM_PASSWORD}\n"),
        )
        .unwrap();
        let base = upstream.trim_end_matches("/EWS/Exchange.asmx");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ntlm_proxy.py");
        let mut child = Command::new(test_python())
            .arg(script)
            .arg("--upstream")
            .arg(base)
            .arg("--users-file")
            .arg(&users)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the NTLM proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base_url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected proxy output: {line:?}"))
            .to_owned();
        NtlmProxy {
            child,
            url: format!("{base_url}/EWS/Exchange.asmx"),
            _dir: dir,
        }
    }

    pub fn stats(&self) -> Value {
        let base = self.url.trim_end_matches("/EWS/Exchange.asmx");
        let agent = ureq::Agent::new_with_defaults();
        agent
            .get(format!("{base}/__stats"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    }
}

impl Drop for NtlmProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a spawned daemon if the test fails before it could stop it, so a failing test never
/// leaves a process behind.
pub struct KillOnPanic(pub u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}
