//! Operations: `--bind` endpoints (health, readiness, Prometheus metrics, status), `--check`,
//! `--restart-on-unrecoverable-errors`, level-2 logs without secrets, and the deployment files
//! (systemd unit, Kubernetes manifests, container image).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fake_exchange::{FakeExchange, GenSpec, NtlmUser, Options};
use fake_reinfer::{Endpoint, FakeReinfer, Fault, FaultKind};
use serde_json::{Value, json};
use time::macros::datetime;

use crate::support::*;

const TOKEN: &str = "planted-api-token-5a4b3c2d1e";
const PLANTED_PASSWORD: &str = "Planted-Passw0rd-9f8e7d";
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn spec(mailboxes: usize, emails: usize) -> GenSpec {
    GenSpec {
        seed: 23,
        mailboxes,
        emails_per_mailbox: emails,
        mime_bytes: 1200,
        start: datetime!(2024-06-01 08:00 UTC),
    }
}

/// The binary with the Communications Mining sink at `api` and the config at `config`.
fn api_command(api_url: &str, config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("REINFER_EWS_CONFIG", config)
        .env("REINFER_API_TOKEN", TOKEN)
        .env_remove("REINFER_EWS_AUTH_PASS")
        .arg("--reinfer-api-endpoint")
        .arg(api_url)
        .args(args);
    command
}

/// A running daemon serving `--bind 127.0.0.1:0`, with its stderr collected line by line.
struct Daemon {
    child: Child,
    base: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    agent: ureq::Agent,
}

impl Daemon {
    fn start(mut command: Command) -> Daemon {
        command
            .args(["--bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot start exchange-sync");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let collected = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("/status on http://") {
                    let _ = tx.try_send(addr.trim().to_owned());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not report its --bind address:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Daemon {
            child,
            base: format!("http://{addr}"),
            lines,
            reader: Some(reader),
            agent,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.stderr()));
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn status(&self) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn wait_for(&self, limit: Duration, what: &str, mut condition: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + limit;
        while !condition(self) {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code and everything it wrote to stderr.
    fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status.code(), self.stderr())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every sample of a Prometheus text page, parsed by the reference implementation
/// (prometheus_client's parser) after our own strict line validator.
fn parse_metrics(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    exchange_sync::metrics::prometheus::validate(text)
        .unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"));
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(test_python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python with prometheus_client (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client rejected the page: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Vec<(String, HashMap<String, String>, f64)> =
        serde_json::from_slice(&output.stdout).unwrap();
    parsed
}

fn value(
    samples: &[(String, HashMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

fn all_values<'a>(
    samples: &'a [(String, HashMap<String, String>, f64)],
    name: &'a str,
) -> impl Iterator<Item = f64> + 'a {
    samples
        .iter()
        .filter(move |(n, _, _)| n == name)
        .map(|(_, _, v)| *v)
}

fn every_mailbox_caught_up(daemon: &Daemon, count: usize) -> bool {
    let status = daemon.status();
    let mailboxes = status["mailboxes"].as_array().unwrap();
    mailboxes.len() == count && mailboxes.iter().all(|m| m["last_success_at"].is_string())
}

#[test]
fn metrics_move_during_a_sync_and_parse_as_prometheus() {
    let fake = FakeExchange::start(
        fake_exchange::generate(&spec(2, 300)),
        Options {
            latency: Duration::from_millis(2),
            ..Options::default()
        },
    )
    .unwrap();
    // Throttling the client must obey and count.
    fake.set_fault(fake_exchange::Fault {
        busy_every_nth: Some(9),
        busy_back_off_ms: 30,
        ..Default::default()
    });
    let api = FakeReinfer::start(TOKEN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"reinfer_batch_size": 20, "max_concurrent_fetches": 2}),
        ),
    );
    let daemon = Daemon::start(api_command(
        &api.base_url(),
        &config,
        &["--debug-level", "0"],
    ));
    let (code, first) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let before = parse_metrics(&first);
    let total = emails_to_copy(&fake.data());
    daemon.wait_for(
        Duration::from_secs(120),
        "every email and a finished cycle",
        |d| api.emails("demo", "emails").len() == total && every_mailbox_caught_up(d, 2),
    );
    let (_, text) = daemon.get("/metrics");
    let after = parse_metrics(&text);

    let stored = api.emails("demo", "emails");
    for address in addresses(&fake) {
        let copied = stored
            .iter()
            .filter(|d| d["mailbox"] == address.as_str())
            .count() as f64;
        let labels = [("mailbox", address.as_str())];
        let synced = value(&after, "exchange_sync_emails_synced_total", &labels);
        assert_eq!(synced, Some(copied), "{address}:\n{text}");
        let earlier = value(&before, "exchange_sync_emails_synced_total", &labels).unwrap_or(0.0);
        assert!(earlier < copied, "the counter did not move for {address}");
        assert!(value(&after, "exchange_sync_bytes_synced_total", &labels).unwrap() > 0.0);
        assert!(value(&after, "exchange_sync_batches_uploaded_total", &labels).unwrap() >= 1.0);
        assert!(
            value(
                &after,
                "exchange_sync_mailbox_last_success_timestamp_seconds",
                &labels
            )
            .is_some(),
            "{text}"
        );
        assert_eq!(
            value(&after, "exchange_sync_mailbox_error", &labels),
            Some(0.0)
        );
    }
    let busy = [("reason", "ErrorServerBusy")];
    assert!(value(&after, "exchange_sync_throttle_waits_total", &busy).unwrap() >= 1.0);
    assert!(value(&after, "exchange_sync_throttle_wait_seconds_total", &busy).unwrap() > 0.0);
    assert!(value(&after, "exchange_sync_retries_total", &busy).unwrap() >= 1.0);
    let ews = [("endpoint", "ews")];
    assert!(
        value(
            &after,
            "exchange_sync_http_request_duration_seconds_count",
            &ews
        )
        .unwrap()
            >= 2.0,
        "{text}"
    );
    let reinfer = [("endpoint", "reinfer")];
    assert!(
        value(
            &after,
            "exchange_sync_http_request_duration_seconds_count",
            &reinfer
        )
        .unwrap()
            >= 2.0,
        "{text}"
    );
    assert!(all_values(&after, "exchange_sync_folder_backlog_emails").count() > 4);
    assert!(all_values(&after, "exchange_sync_folder_backlog_emails").all(|v| v == 0.0));
    assert!(all_values(&after, "exchange_sync_folder_lag_seconds").all(|v| v == 0.0));
    assert_eq!(value(&after, "exchange_sync_ready", &[]), Some(1.0));
    assert_eq!(
        value(
            &after,
            "exchange_sync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn readyz_waits_for_the_sink_and_the_first_cycle_while_healthz_is_up() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 20)), Options::default()).unwrap();
    let api = FakeReinfer::start(TOKEN).unwrap();
    // The bucket answers late: start-up waits on the sink meanwhile.
    api.inject(Fault::new(
        Endpoint::Bucket,
        FaultKind::Delay(Duration::from_secs(3)),
        1,
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let daemon = Daemon::start(api_command(
        &api.base_url(),
        &config,
        &["--debug-level", "0"],
    ));
    let (code, body) = daemon.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("the first sync cycle has not started yet"),
        "{body}"
    );
    let (code, body) = daemon.get("/healthz");
    assert_eq!(code, 200, "{body}");
    let status = daemon.status();
    assert_eq!(status["ready"], false);
    assert_eq!(status["state"], "starting", "{status:#}");

    daemon.wait_for(Duration::from_secs(60), "/readyz 200", |d| {
        d.get("/readyz").0 == 200
    });
    let (code, body) = daemon.get("/healthz");
    assert_eq!(code, 200);
    assert!(body.contains("pipeline threads"), "{body}");
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn status_shows_watermarks_and_nothing_leaks_secrets_even_at_debug_level_2() {
    let fake = FakeExchange::start(
        fake_exchange::generate(&spec(2, 60)),
        Options {
            ntlm: Some(NtlmUser {
                domain: NTLM_DOMAIN.into(),
                user: NTLM_USER.into(),
                password: PLANTED_PASSWORD.into(),
            }),
            ..Options::default()
        },
    )
    .unwrap();
    let api = FakeReinfer::start(TOKEN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"auth_password": PLANTED_PASSWORD}),
        ),
    );
    let daemon = Daemon::start(api_command(
        &api.base_url(),
        &config,
        &["--debug-level", "2"],
    ));
    let total = emails_to_copy(&fake.data());
    daemon.wait_for(
        Duration::from_secs(120),
        "every email and a finished cycle",
        |d| api.emails("demo", "emails").len() == total && every_mailbox_caught_up(d, 2),
    );
    let status = daemon.status();
    assert_eq!(status["ready"], true);
    assert_eq!(status["state"], "running");
    assert_eq!(status["shard"], json!({"index": 0, "total": 1}));
    let data = fake.data();
    for mailbox in &data.mailboxes {
        let shown = status["mailboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["address"] == mailbox.address.as_str())
            .unwrap_or_else(|| panic!("{} missing: {status:#}", mailbox.address));
        assert_eq!(shown["status"], "idle", "{shown:#}");
        assert_eq!(shown["bucket"], "demo/emails");
        assert!(shown["last_error"].is_null());
        assert!(shown["next_poll_at"].is_string(), "{shown:#}");
        // Each folder's watermark is the received time (to the second) of its newest email.
        let mut newest: HashMap<Vec<String>, time::OffsetDateTime> = HashMap::new();
        for (folder, item) in mailbox.synced_items() {
            let path = mailbox.mail_folder_path(&folder.id);
            let received = item.received.replace_nanosecond(0).unwrap();
            let entry = newest.entry(path).or_insert(received);
            *entry = (*entry).max(received);
        }
        assert!(!newest.is_empty());
        let folders = shown["folders"].as_array().unwrap();
        for (path, received) in newest {
            let folder = folders
                .iter()
                .find(|f| f["path"] == json!(path))
                .unwrap_or_else(|| panic!("folder {path:?} missing: {shown:#}"));
            let expected = received
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            assert_eq!(folder["watermark"], expected.as_str(), "{folder:#}");
            assert_eq!(folder["status"], "ok");
            assert_eq!(folder["backlog_emails"], 0);
        }
    }
    let (_, metrics) = daemon.get("/metrics");
    let (_, status_text) = daemon.get("/status");
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    // Level 2 shows each HTTP exchange with the sink ...
    assert!(
        stderr.contains("reinfer PUT http://127.0.0.1:") && stderr.contains("/emails → HTTP 200"),
        "no HTTP exchange lines at level 2:\n{stderr}"
    );
    // ... and never a secret, a header carrying one, or an NTLM token.
    for (what, text) in [
        ("/metrics", &metrics),
        ("/status", &status_text),
        ("stderr", &stderr),
    ] {
        for secret in [PLANTED_PASSWORD, TOKEN, "TlRMTVNTUA"] {
            assert!(!text.contains(secret), "{what} shows {secret:?}");
        }
        assert!(
            !text.to_ascii_lowercase().contains("authorization:"),
            "{what} shows an Authorization header"
        );
    }
}

/// `--check` with the local sink; returns (exit code, stdout, stderr).
fn check(config: &Path, prefix: &Path) -> (Option<i32>, String, String) {
    let result = run(command(config, prefix, &["--check", "--debug-level", "0"]));
    (result.code(), result.stdout, result.stderr)
}

fn lines_starting<'a>(stdout: &'a str, word: &str) -> Vec<&'a str> {
    stdout.lines().filter(|l| l.starts_with(word)).collect()
}

#[test]
fn check_passes_and_pinpoints_a_wrong_password_a_missing_mailbox_and_a_dead_sink() {
    let fake = FakeExchange::start(
        fake_exchange::generate(&spec(2, 5)),
        Options {
            ntlm: Some(NtlmUser {
                domain: NTLM_DOMAIN.into(),
                user: NTLM_USER.into(),
                password: NTLM_PASSWORD.into(),
            }),
            ..Options::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("sink");
    let good = config(&fake.url(), &addresses(&fake), json!({}));
    let path = write_config(dir.path(), &good);

    // Everything reachable: one `ok` line per check, exit 0.
    let (code, stdout, stderr) = check(&path, &prefix);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(lines_starting(&stdout, "FAIL").is_empty(), "{stdout}");
    let exchange = format!(
        "ok   exchange: {} (NTLM as {NTLM_DOMAIN}\\{NTLM_USER})",
        fake.url()
    );
    assert!(stdout.lines().any(|l| l == exchange), "{stdout}");
    assert!(stdout.contains("ok   config: "), "{stdout}");
    assert!(
        stdout.contains("ok   sink bucket demo/emails: local:"),
        "{stdout}"
    );
    for address in addresses(&fake) {
        let line = format!("ok   mailbox {address}: ");
        assert!(stdout.contains(&line), "{stdout}");
    }
    assert!(
        !files_under(&prefix)
            .iter()
            .any(|f| f.to_string_lossy().contains("check")),
        "the writability probe was left behind"
    );

    // A wrong password: one FAIL line naming the account; the mailboxes are not checked.
    let mut wrong = good.clone();
    wrong["auth_password"] = json!(PLANTED_PASSWORD);
    let path = write_config(dir.path(), &wrong);
    let (code, stdout, stderr) = check(&path, &prefix);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let fails = lines_starting(&stdout, "FAIL");
    assert_eq!(fails.len(), 1, "{stdout}");
    assert!(fails[0].starts_with("FAIL exchange: "), "{stdout}");
    assert!(
        fails[0].contains(&format!(
            "rejected the credentials of {NTLM_DOMAIN}\\{NTLM_USER}"
        )),
        "{stdout}"
    );
    assert_eq!(lines_starting(&stdout, "skip mailbox").len(), 2, "{stdout}");
    assert!(!stdout.contains(PLANTED_PASSWORD) && !stderr.contains(PLANTED_PASSWORD));

    // A mailbox the account cannot open.
    let mut boxes = addresses(&fake);
    boxes.push("nobody@example.test".into());
    let path = write_config(dir.path(), &config(&fake.url(), &boxes, json!({})));
    let (code, stdout, stderr) = check(&path, &prefix);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let fails = lines_starting(&stdout, "FAIL");
    assert_eq!(fails.len(), 1, "{stdout}");
    assert!(
        fails[0].starts_with("FAIL mailbox nobody@example.test: ErrorNonExistentMailbox: "),
        "{stdout}"
    );
    assert!(stdout.contains("ok   exchange: "), "{stdout}");

    // A Communications Mining API nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/api/", closed.local_addr().unwrap());
    drop(closed);
    let path = write_config(dir.path(), &good);
    let started = Instant::now();
    let result = run(api_command(
        &endpoint,
        &path,
        &["--check", "--debug-level", "0"],
    ));
    assert_eq!(
        result.code(),
        Some(1),
        "{}\n{}",
        result.stdout,
        result.stderr
    );
    let fails = lines_starting(&result.stdout, "FAIL");
    assert_eq!(fails.len(), 1, "{}", result.stdout);
    assert!(
        fails[0].starts_with("FAIL sink bucket demo/emails: cannot reach http://127.0.0.1:"),
        "{}",
        result.stdout
    );
    assert!(
        result.stdout.contains("ok   exchange: "),
        "{}",
        result.stdout
    );
    assert!(started.elapsed() < Duration::from_secs(30), "too slow");
    assert!(!result.stdout.contains(TOKEN) && !result.stderr.contains(TOKEN));

    // A local directory that cannot be written (a path under a regular file).
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let (code, stdout, _) = check(&path, &blocker.join("sink"));
    assert_eq!(code, Some(1), "{stdout}");
    let fails = lines_starting(&stdout, "FAIL");
    assert_eq!(fails.len(), 1, "{stdout}");
    assert!(fails[0].starts_with("FAIL sink: local:"), "{stdout}");
    assert!(fails[0].contains("is not writable"), "{stdout}");

    // Configuration errors stay exit 2.
    let mut bad = good.clone();
    bad["max_concurrent_uploads"] = json!(99);
    let path = write_config(dir.path(), &bad);
    let (code, _, stderr) = check(&path, &prefix);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn without_restart_flag_a_fatal_error_exits_1_and_with_it_the_service_backs_off_and_recovers() {
    let fake = FakeExchange::start(
        fake_exchange::generate(&spec(1, 30)),
        Options {
            ntlm: Some(NtlmUser {
                domain: NTLM_DOMAIN.into(),
                user: NTLM_USER.into(),
                password: NTLM_PASSWORD.into(),
            }),
            ..Options::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("sink");
    let good = config(&fake.url(), &addresses(&fake), json!({}));
    let mut wrong = good.clone();
    wrong["auth_password"] = json!(PLANTED_PASSWORD);
    let path = write_config(dir.path(), &wrong);

    // Daemon mode without the flag: exit 1, saying why and what the flag would do.
    let result = run(command(&path, &prefix, &["--debug-level", "0"]));
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    assert!(
        result.stderr.contains("rejected the credentials"),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("--restart-on-unrecoverable-errors"),
        "{}",
        result.stderr
    );

    // With it: restarts with growing back-off, not ready meanwhile, alive all along.
    let mut command = command(
        &path,
        &prefix,
        &["--restart-on-unrecoverable-errors", "--debug-level", "0"],
    );
    command.env("EXCHANGE_SYNC_RESTART_BACKOFF_SECONDS", "0.2");
    let daemon = Daemon::start(command);
    daemon.wait_for(Duration::from_secs(30), "three restarts", |d| {
        d.stderr().contains("restarting in 0.8 s")
    });
    let stderr = daemon.stderr();
    let first = stderr.find("restarting in 0.2 s").expect("first back-off");
    let second = stderr.find("restarting in 0.4 s").expect("second back-off");
    assert!(first < second);
    assert!(
        fake.stats().ntlm_failures >= 3,
        "{:?}",
        fake.stats().ntlm_failures
    );
    let (code, body) = daemon.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("rejected the credentials"), "{body}");
    assert_eq!(daemon.get("/healthz").0, 200);
    let (_, text) = daemon.get("/metrics");
    let samples = parse_metrics(&text);
    assert!(value(&samples, "exchange_sync_restarts_total", &[]).unwrap() >= 2.0);

    // The operator fixes the password: the next restart picks it up and syncs.
    write_config(dir.path(), &good);
    daemon.wait_for(Duration::from_secs(60), "the copy after the fix", |d| {
        read_docs(&prefix).len() == emails_to_copy(&fake.data()) && d.get("/readyz").0 == 200
    });
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert_exact_copy(&fake.data(), &prefix);
    assert!(!stderr.contains(PLANTED_PASSWORD));
}

#[test]
fn a_sink_refusing_the_token_mid_run_restarts_the_service_instead_of_ending_it() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 20)), Options::default()).unwrap();
    let api = FakeReinfer::start(TOKEN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let mut command = api_command(
        &api.base_url(),
        &config,
        &["--restart-on-unrecoverable-errors", "--debug-level", "0"],
    );
    command.env("EXCHANGE_SYNC_RESTART_BACKOFF_SECONDS", "0.2");
    let daemon = Daemon::start(command);
    let total = emails_to_copy(&fake.data());
    daemon.wait_for(Duration::from_secs(60), "the first copy", |_| {
        api.emails("demo", "emails").len() == total
    });
    // The token loses its permission; new mail arrives and cannot be stored.
    api.deny("demo", "emails");
    let data = fake.data();
    let mailbox = &data.mailboxes[0];
    let (folder, newest) = mailbox
        .synced_items()
        .max_by_key(|(_, item)| item.received)
        .unwrap();
    fake.add_item(
        &mailbox.address,
        &folder.id,
        fake_exchange::make_item(
            9000,
            newest.received + time::Duration::seconds(5),
            b"Message-ID: <late@test>\r\nSubject: late\r\n\r\nx\r\n".to_vec(),
        ),
    );
    daemon.wait_for(Duration::from_secs(60), "a restart after the 403", |d| {
        d.stderr().contains("restarting in 0.")
    });
    assert!(
        daemon.stderr().contains("permission"),
        "{}",
        daemon.stderr()
    );
    assert_eq!(daemon.get("/readyz").0, 503);
    let (code, stderr) = daemon.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(TOKEN));
}

#[test]
fn bind_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(
            "http://127.0.0.1:9/EWS/Exchange.asmx",
            &["a@example.com".into()],
            json!({}),
        ),
    );
    let result = run(command(
        &path,
        &dir.path().join("sink"),
        &["--bind", "not-an-address"],
    ));
    assert_eq!(result.code(), Some(2), "{}", result.stderr);
    assert!(result.stderr.contains("--bind"), "{}", result.stderr);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let result = run(command(&path, &dir.path().join("sink"), &["--bind", &addr]));
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    assert!(result.stderr.contains("cannot listen"), "{}", result.stderr);
}

/// The unit with `ExecStart` pointing at the built binary (verify insists it exists).
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit =
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join("deploy/exchange-sync.service"))
            .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/exchange-sync "));
    let path = dir.join("exchange-sync.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/exchange-sync", BIN)).unwrap();
    path
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze is missing: .ci/run installs the systemd package");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stderr.contains("Unknown key") && !stderr.contains("ignoring"),
        "{stderr}"
    );
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for exchange-sync.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{text}");
    let unit = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "User=exchange-sync",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "EnvironmentFile=-/etc/exchange-sync/secrets.env",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
}

#[test]
fn kubernetes_manifests_validate_offline_and_shards_match_replicas() {
    let manifests = Path::new(MANIFEST_DIR).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let validate = test_python().with_file_name("kubernetes-validate");
    let output = Command::new(&validate)
        .args(["-k", "1.32.0", "--strict"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/test.sh installs it into .venv)",
                validate.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("passed").count(), files.len(), "{text}");
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");

    // What the validator cannot know: shards = replicas, shard name = pod name, probes.
    let script = r#"
import json, sys, yaml
sts = yaml.safe_load(open(sys.argv[1]))
c = sts["spec"]["template"]["spec"]["containers"][0]
args = c["args"]
env = {e["name"]: e for e in c["env"]}
print(json.dumps({
    "replicas": sts["spec"]["replicas"],
    "total_shards": args[args.index("--total-shards") + 1],
    "shard_name": args[args.index("--shard-name") + 1],
    "pod_name_from": env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
    "first_arg": args[0],
    "bind": args[args.index("--bind") + 1],
    "liveness": c["livenessProbe"]["httpGet"]["path"],
    "readiness": c["readinessProbe"]["httpGet"]["path"],
    "requests": c["resources"]["requests"],
    "non_root": sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
}))
"#;
    let output = Command::new(test_python())
        .args(["-c", script])
        .arg(manifests.join("statefulset.yaml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let facts: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        facts["total_shards"].as_str().unwrap(),
        facts["replicas"].to_string(),
        "{facts}"
    );
    assert_eq!(facts["shard_name"], "$(POD_NAME)");
    assert_eq!(facts["pod_name_from"], "metadata.name");
    assert_eq!(facts["first_arg"], "uipath-exchange-sync-app");
    assert_eq!(facts["bind"], "0.0.0.0:8000");
    assert_eq!(facts["liveness"], "/healthz");
    assert_eq!(facts["readiness"], "/readyz");
    assert!(facts["requests"]["cpu"].is_string() && facts["requests"]["memory"].is_string());
    assert_eq!(facts["non_root"], true);
    // The StatefulSet's argument list parses as our flags (program word included).
    let args: Vec<String> = [
        "uipath-exchange-sync-app",
        "--bind",
        "0.0.0.0:8000",
        "--shard-name",
        "exchange-sync-2",
        "--total-shards",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let cli = exchange_sync::cli::parse("exchange-sync", &args).unwrap();
    assert_eq!(cli.total_shards, Some(3));
}

#[test]
fn container_image_builds_from_a_prebuilt_binary() {
    let podman = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !podman {
        let message = "SKIPPED container_image_builds_from_a_prebuilt_binary: podman is not \
                       installed (apt-get install podman buildah crun; .ci/run does); the image \
                       build was NOT tested";
        eprintln!("\n!!!!!!!! {message}\n");
        println!("{message}");
        return;
    }
    let storage = tempfile::tempdir().unwrap();
    let base = format!(
        "podman --root {0}/storage --runroot {0}/run --storage-driver vfs",
        storage.path().display()
    );
    let tag = "localhost/exchange-sync:ops-test";
    let output = Command::new(Path::new(MANIFEST_DIR).join("scripts/build-image.sh"))
        .arg(BIN)
        .arg(tag)
        .env("CONTAINER_CMD", &base)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    assert!(log.contains(&format!("built {tag}")), "{log}");
    let words: Vec<&str> = base.split_whitespace().collect();
    let inspect = Command::new(words[0])
        .args(&words[1..])
        .args(["image", "inspect", tag])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let images: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = if images[0]["Config"].is_object() {
        &images[0]["Config"]
    } else {
        &images[0]["OCIv1"]["config"]
    };
    assert_eq!(config["User"], "65534:65534", "{config:#}");
    assert_eq!(config["Entrypoint"], json!(["/exchange-sync"]));
    let env = config["Env"].to_string();
    assert!(
        env.contains("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "{env}"
    );
    // Nothing in the image build reaches a registry, and the multi-stage file keeps its shape.
    let prebuilt =
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join("Containerfile.prebuilt")).unwrap();
    assert!(prebuilt.lines().any(|l| l == "FROM scratch"));
    assert!(!prebuilt.lines().any(|l| l.starts_with("RUN")));
    let full = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("Containerfile")).unwrap();
    for needle in [
        "AS build",
        "--features vendored",
        "FROM scratch",
        "USER 65534:65534",
        "ca-certificates.crt",
        "ENTRYPOINT [\"/exchange-sync\"]",
    ] {
        assert!(full.contains(needle), "Containerfile lacks {needle}");
    }
}

#[test]
fn check_reaches_the_token_endpoint_and_pinpoints_a_wrong_client_secret() {
    use fake_graph::BearerFront;
    use fake_login::{App, FakeLogin};
    const CLIENT_ID: &str = "0ea1c1d2-0000-4000-8000-0000000c4ec4";
    const SECRET: &str = "check-Cl1ent~Secret.value";
    let ews =
        FakeExchange::start(fake_exchange::generate(&spec(1, 3)), Options::default()).unwrap();
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_secret(CLIENT_ID, SECRET)]).unwrap());
    let front = BearerFront::start(&ews.url(), login.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut oauth = config(&front.url(), &addresses(&ews), json!({}));
    let settings = oauth.as_object_mut().unwrap();
    settings.remove("auth_user");
    settings.remove("auth_password");
    settings.extend(
        json!({
            "auth_type": "oauth2",
            "auth_oauth_authority": login.authority(),
            "auth_oauth_client_id": CLIENT_ID,
            "auth_oauth_client_secret": SECRET,
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    let path = write_config(dir.path(), &oauth);
    let (code, stdout, stderr) = check(&path, &dir.path().join("sink"));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok   token: "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ok   exchange: {} (OAuth2 app {CLIENT_ID})",
            front.url()
        )),
        "{stdout}"
    );

    oauth["auth_oauth_client_secret"] = json!(PLANTED_PASSWORD);
    let path = write_config(dir.path(), &oauth);
    let (code, stdout, stderr) = check(&path, &dir.path().join("sink"));
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let fails = lines_starting(&stdout, "FAIL");
    assert_eq!(fails.len(), 1, "{stdout}");
    assert!(fails[0].starts_with("FAIL token: "), "{stdout}");
    assert!(stdout.contains("skip exchange: "), "{stdout}");
    assert!(!stdout.contains(PLANTED_PASSWORD) && !stderr.contains(PLANTED_PASSWORD));
}
