//! `--check`: validates the configuration, reaches the sink, the token endpoint and Exchange,
//! and checks that each mailbox can be read, printing one line per check on stdout:
//!
//! ```text
//! ok   config: /etc/exchange-sync/config.json: 2 mailboxes; EWS, NTLM
//! ok   sink bucket demo/emails: local:/var/lib/exchange-sync
//! ok   exchange: https://mail.example.com/EWS/Exchange.asmx (NTLM as CORP\svc)
//! FAIL mailbox x@example.com: ErrorNonExistentMailbox: The SMTP address has no mailbox …
//! ```
//!
//! A failing check names what is wrong in its one line; checks that depend on it say `skip`.
//! The answer is exit 0 only when every check passed (configuration errors exit 2 earlier).
//! Nothing is written to the sink but a probe file of the local sink, removed at once.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::RecvTimeoutError;

use super::*;
use crate::exchange::{self, FolderInfo};
use crate::sink::reinfer::RetryPolicy;

/// A check without an answer this long fails: the clients retry patiently (right for a
/// daemon), which would hold up a check for minutes against an unreachable server.
const DEADLINE: Duration = Duration::from_secs(45);

/// Mailboxes checked at once (each check is a few EWS requests).
const PARALLEL_MAILBOXES: usize = 4;

/// The Communications Mining sink's retries under `--check`: one retry, short waits.
pub(super) const SINK_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 2,
    base: Duration::from_secs(1),
    cap: Duration::from_secs(2),
    max_inline_wait: Duration::from_secs(5),
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Ok,
    Fail,
    Skip,
}

/// Prints check lines and counts them.
#[derive(Default)]
struct Report {
    checks: usize,
    failed: usize,
}

impl Report {
    fn line(&mut self, mark: Mark, subject: &str, detail: &str) {
        self.checks += 1;
        let word = match mark {
            Mark::Ok => "ok",
            Mark::Fail => {
                self.failed += 1;
                "FAIL"
            }
            Mark::Skip => {
                self.failed += 1;
                "skip"
            }
        };
        // One line each, whatever a server put in its message.
        let detail: String = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        println!("{word:<4} {subject}: {detail}");
    }
}

/// What one mailbox check found.
struct MailboxResult {
    folders: Result<Vec<FolderInfo>, exchange::Error>,
    /// The stored sync state: `None` when the bucket failed its check or `start_from` is
    /// `config` (not read).
    state: Option<Result<Option<MailboxState>, sink::Error>>,
    /// The deadline passed: the error is ours, not the server's.
    timed_out: bool,
}

/// Runs every check; `Err(Fatal)` (exit 1) when one failed.
pub(super) fn run(
    config: &Config,
    origin: &str,
    shard: &Shard,
    sink: &Arc<dyn Sink>,
    local_prefix: Option<&Path>,
    metrics: &Arc<Metrics>,
) -> Result<(), AppError> {
    let _context = metrics.enter_thread(None);
    let mut report = Report::default();
    let mailboxes: Vec<&config::MailboxConfig> = config
        .mailboxes
        .iter()
        .filter(|m| shard.owns(&m.address))
        .collect();
    let api = match config.microsoft_api {
        MicrosoftApi::Ews => "EWS",
        MicrosoftApi::Graph => "Microsoft Graph",
    };
    let auth = match &config.auth {
        Auth::Ntlm { .. } => "NTLM",
        Auth::OAuth2 { .. } => "OAuth2 client credentials",
    };
    let in_shard = if shard.total > 1 {
        format!(
            " ({} in shard {} of {})",
            mailboxes.len(),
            shard.index,
            shard.total
        )
    } else {
        String::new()
    };
    report.line(
        Mark::Ok,
        "config",
        &format!(
            "{origin}: {} mailboxes{in_shard}; {api}, {auth}",
            config.mailboxes.len()
        ),
    );

    let failed_buckets = check_sink(&mut report, sink.as_ref(), &mailboxes, local_prefix);

    let resource = match config.microsoft_api {
        MicrosoftApi::Ews => config.ews_url.clone().unwrap_or_default(),
        MicrosoftApi::Graph => config.graph_url.clone(),
    };
    let shown_url = crate::http::redact_url(&resource);
    let token_ok = check_token(&mut report, config, &resource);

    // The first mailbox of the shard (or of the configuration) proves the endpoint and the
    // credentials: any request needs a mailbox.
    let Some(probe) = mailboxes.first().copied().or(config.mailboxes.first()) else {
        return finish(report);
    };
    let stop = StopFlag::new();
    let mut sources = build_sources(config, &stop, metrics).or_else(|err| match err {
        AppError::Fatal(message) => {
            report.line(Mark::Fail, "exchange", &format!("{shown_url}: {message}"));
            Ok(Vec::new())
        }
        other => Err(other),
    })?;
    if sources.is_empty() || !token_ok {
        if token_ok {
            // build_sources reported the failure above.
        } else {
            report.line(Mark::Skip, "exchange", &format!("{shown_url}: no token"));
        }
        for mailbox in &mailboxes {
            report.line(
                Mark::Skip,
                &format!("mailbox {}", mailbox.address),
                "not checked: Exchange could not be reached",
            );
        }
        return finish(report);
    }

    let exchange_line = format!("{shown_url} ({})", credentials_summary(config));
    let probe_result = with_deadline(&stop, || {
        let source = sources[0].as_mut();
        source.discover_folders(&probe.address)
    });
    let probe_folders = match probe_result {
        None => {
            report.line(
                Mark::Fail,
                "exchange",
                &format!(
                    "{exchange_line}: no answer within {} s; see the warnings on stderr",
                    DEADLINE.as_secs()
                ),
            );
            None
        }
        // The server answered for the mailbox: endpoint and credentials work.
        Some(result @ (Ok(_) | Err(exchange::Error::Ews { .. }))) => {
            report.line(Mark::Ok, "exchange", &exchange_line);
            Some(result)
        }
        Some(Err(err)) => {
            report.line(Mark::Fail, "exchange", &format!("{exchange_line}: {err}"));
            None
        }
    };
    let Some(probe_folders) = probe_folders else {
        for mailbox in &mailboxes {
            report.line(
                Mark::Skip,
                &format!("mailbox {}", mailbox.address),
                "not checked: Exchange could not be used",
            );
        }
        return finish(report);
    };

    let results = check_mailboxes(
        &mut sources,
        &stop,
        sink.as_ref(),
        &mailboxes,
        &failed_buckets,
        (&probe.address, probe_folders),
    );
    for (mailbox, result) in mailboxes.iter().zip(results) {
        let (mark, detail) = describe_mailbox(mailbox, result);
        report.line(mark, &format!("mailbox {}", mailbox.address), &detail);
    }
    finish(report)
}

fn finish(report: Report) -> Result<(), AppError> {
    if report.failed == 0 {
        Ok(())
    } else {
        Err(AppError::Fatal(format!(
            "--check: {} of {} checks did not pass",
            report.failed, report.checks
        )))
    }
}

/// Prepares every bucket and, for the local sink, proves the directory writable. Returns
/// the buckets that failed.
fn check_sink(
    report: &mut Report,
    sink: &dyn Sink,
    mailboxes: &[&config::MailboxConfig],
    local_prefix: Option<&Path>,
) -> Vec<config::Bucket> {
    let describe = sink.describe();
    let mut writable = true;
    if let Some(prefix) = local_prefix {
        match probe_writable(prefix) {
            Ok(()) => report.line(Mark::Ok, "sink", &format!("{describe} is writable")),
            Err(err) => {
                writable = false;
                report.line(
                    Mark::Fail,
                    "sink",
                    &format!("{describe} is not writable: {err}"),
                );
            }
        }
    }
    let mut buckets: Vec<&config::Bucket> = mailboxes.iter().map(|m| &m.bucket).collect();
    buckets.sort_by(|a, b| (&a.owner, &a.name).cmp(&(&b.owner, &b.name)));
    buckets.dedup();
    let mut failed = Vec::new();
    for bucket in buckets {
        let subject = format!("sink bucket {}/{}", bucket.owner, bucket.name);
        match sink.prepare_bucket(bucket) {
            // Already reported: its sync state is not read either.
            Ok(()) if !writable => failed.push(bucket.clone()),
            Ok(()) => report.line(Mark::Ok, &subject, &describe),
            Err(err) => {
                report.line(Mark::Fail, &subject, &err.to_string());
                failed.push(bucket.clone());
            }
        }
    }
    failed
}

/// Creates and removes a probe file under `prefix/state`, where the daemon writes first.
fn probe_writable(prefix: &Path) -> Result<(), String> {
    let probe = prefix
        .join("state")
        .join(format!(".exchange-sync-check-{}", std::process::id()));
    crate::durable::write_atomically(&probe, b"")
        .map_err(|e| format!("{}: {}", e.path.display(), e.source))?;
    std::fs::remove_file(&probe).map_err(|e| format!("{}: {e}", probe.display()))
}

/// With OAuth2, gets a token. Returns whether Exchange can be tried.
fn check_token(report: &mut Report, config: &Config, resource: &str) -> bool {
    if !matches!(config.auth, Auth::OAuth2 { .. }) {
        return true;
    }
    let provider = match token_provider(config, resource) {
        Ok(provider) => provider,
        Err(err) => {
            report.line(Mark::Fail, "token", &err.to_string());
            return false;
        }
    };
    match provider.token() {
        Ok(_) => {
            report.line(Mark::Ok, "token", &provider.describe());
            true
        }
        Err(err) => {
            report.line(
                Mark::Fail,
                "token",
                &format!("{}: {err}", provider.describe()),
            );
            false
        }
    }
}

fn credentials_summary(config: &Config) -> String {
    match &config.auth {
        Auth::Ntlm { user, .. } if config.access_type == AccessType::Impersonation => {
            format!("NTLM as {user}, impersonation")
        }
        Auth::Ntlm { user, .. } => format!("NTLM as {user}"),
        Auth::OAuth2 { client_id, .. } => format!("OAuth2 app {client_id}"),
    }
}

/// Runs `f` on a scoped thread; `None` when it has not answered within [`DEADLINE`]. Then
/// `stop` is set, which makes the sources' waits and retries end at once.
fn with_deadline<T: Send>(stop: &StopFlag, f: impl FnOnce() -> T + Send) -> Option<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("check".into())
            .spawn_scoped(scope, move || {
                let _ = tx.send(f());
            });
        if spawned.is_err() {
            return None;
        }
        match rx.recv_timeout(DEADLINE) {
            Ok(value) => Some(value),
            Err(_) => {
                stop.stop();
                None
            }
        }
    })
}

/// Checks every mailbox (a few at once, one source each) and returns the results in order.
/// `probe` is the probe mailbox's listing, which is not repeated.
fn check_mailboxes(
    sources: &mut [Box<dyn MailSource>],
    stop: &StopFlag,
    sink: &dyn Sink,
    mailboxes: &[&config::MailboxConfig],
    failed_buckets: &[config::Bucket],
    probe: (&str, Result<Vec<FolderInfo>, exchange::Error>),
) -> Vec<MailboxResult> {
    let (probe_address, probe_folders) = probe;
    let mut probe_folders = Some(probe_folders);
    let next = AtomicUsize::new(0);
    let (tx, rx) = crossbeam_channel::unbounded();
    let workers = sources.len().min(PARALLEL_MAILBOXES).min(mailboxes.len());
    let mut results: Vec<Option<MailboxResult>> = (0..mailboxes.len()).map(|_| None).collect();
    let probe_index = mailboxes.iter().position(|m| m.address == probe_address);
    if let (Some(index), Some(folders)) = (probe_index, probe_folders.take()) {
        let state = load_state(sink, mailboxes[index], failed_buckets);
        results[index] = Some(MailboxResult {
            folders,
            state,
            timed_out: false,
        });
    }
    let results_ref = &mut results;
    std::thread::scope(|scope| {
        for (worker, source) in sources.iter_mut().take(workers).enumerate() {
            let (tx, next) = (tx.clone(), &next);
            let spawned = std::thread::Builder::new()
                .name(format!("check-{worker}"))
                .spawn_scoped(scope, move || {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(mailbox) = mailboxes.get(index) else {
                            return;
                        };
                        if Some(index) == probe_index {
                            continue;
                        }
                        let folders = source.discover_folders(&mailbox.address);
                        let timed_out = folders.is_err() && stop.is_stopped();
                        let state = load_state(sink, mailbox, failed_buckets);
                        let result = MailboxResult {
                            folders,
                            state,
                            timed_out,
                        };
                        if tx.send((index, result)).is_err() {
                            return;
                        }
                    }
                });
            if let Err(err) = spawned {
                log::error!("cannot start a check thread: {err}");
            }
        }
        drop(tx);
        loop {
            match rx.recv_timeout(DEADLINE) {
                Ok((index, result)) => results_ref[index] = Some(result),
                Err(RecvTimeoutError::Timeout) => stop.stop(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or(MailboxResult {
                folders: Err(exchange::Error::Transport {
                    url: String::new(),
                    detail: "not checked".into(),
                }),
                state: None,
                timed_out: true,
            })
        })
        .collect()
}

fn load_state(
    sink: &dyn Sink,
    mailbox: &config::MailboxConfig,
    failed_buckets: &[config::Bucket],
) -> Option<Result<Option<MailboxState>, sink::Error>> {
    if failed_buckets.contains(&mailbox.bucket) || mailbox.start_from == StartFrom::Config {
        return None;
    }
    Some(sink.load_state(&mailbox.bucket, &mailbox.address))
}

fn describe_mailbox(mailbox: &config::MailboxConfig, result: MailboxResult) -> (Mark, String) {
    let folders = match result.folders {
        Ok(folders) => folders,
        Err(_) if result.timed_out => {
            return (
                Mark::Fail,
                format!(
                    "no answer within {} s; see the warnings on stderr",
                    DEADLINE.as_secs()
                ),
            );
        }
        Err(err) => {
            let hint = if err.is_mailbox_fatal() {
                " (check the address and the service account's rights on this mailbox)"
            } else {
                ""
            };
            let text = match &err {
                exchange::Error::Ews { code, message, .. } => format!("{code}: {message}"),
                other => other.to_string(),
            };
            return (Mark::Fail, format!("{text}{hint}"));
        }
    };
    let state = match result.state {
        None if mailbox.start_from == StartFrom::Config => {
            "start_from \"config\": starts at start_timestamp".to_owned()
        }
        None => "sync state not read (the sink failed its check)".to_owned(),
        Some(Ok(None)) => "no sync state yet (a first sync)".to_owned(),
        Some(Ok(Some(state))) => match state.folders.values().map(|f| f.synced_until).max() {
            Some(newest) => format!(
                "sync state of {} folders, newest watermark {}",
                state.folders.len(),
                newest
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
            None => "sync state without folders".to_owned(),
        },
        Some(Err(err)) => {
            return (
                Mark::Fail,
                format!("{} mail folders; sync state: {err}", folders.len()),
            );
        }
    };
    (
        Mark::Ok,
        format!(
            "{} mail folders readable; {state} (bucket {}/{})",
            folders.len(),
            mailbox.bucket.owner,
            mailbox.bucket.name
        ),
    )
}
