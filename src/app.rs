//! Wires configuration, sink, Exchange sources and the pipeline together; owns start-up order,
//! exit codes and the in-process restart.

use std::collections::HashMap;
use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::Cli;
use crate::config::{self, AccessType, Auth, Config, MicrosoftApi, StartFrom};
use crate::exchange::MailSource;
use crate::exchange::ews::{Access, EwsServer, EwsSource};
use crate::exchange::ntlm::NtlmCredentials;
use crate::exchange::transport::{Credentials, Transport};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::shard::Shard;
use crate::shutdown::StopFlag;
use crate::sink::local::LocalSink;
use crate::sink::reinfer::ReinferSink;
use crate::sink::{self, Sink};
use crate::sync::state::{Cursor, MailboxState, STATE_VERSION};
use crate::sync::{self, Outcome, Settings, Shared};

/// After a stop, how long in-flight uploads may take; below Kubernetes' default 30 s grace.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(25);
/// In-process restarts back off from this …
const RESTART_BACKOFF_START: Duration = Duration::from_secs(5);
/// … doubling up to this, so a persistent fault never becomes a tight loop.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Why the program stops early, and with which exit code.
#[derive(Debug)]
pub enum AppError {
    /// Bad flags or configuration; exit 2.
    Usage(String),
    /// The configuration file has errors; all of them are listed; exit 2.
    Config(config::ConfigErrors),
    /// Something failed at run time that the operator must fix; exit 1.
    Fatal(String),
}

impl AppError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Usage(_) | AppError::Config(_) => 2,
            AppError::Fatal(_) => 1,
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Usage(message) | AppError::Fatal(message) => f.write_str(message),
            AppError::Config(errors) => {
                write!(
                    f,
                    "the configuration has {} error(s):\n{errors}",
                    errors.0.len()
                )
            }
        }
    }
}

/// Runs the program for parsed flags, with `env` as the environment.
pub fn run(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> ExitCode {
    match try_run(cli, env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn try_run(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<(), AppError> {
    if cli.debug_level > 2 {
        return Err(AppError::Usage(format!(
            "--debug-level {}: allowed 0, 1 or 2",
            cli.debug_level
        )));
    }
    let sink = build_sink(cli, env)?;
    let shard = shard_of(cli)?;
    for (flag, set) in [("--bind", cli.bind.is_some()), ("--check", cli.check)] {
        if set {
            return Err(AppError::Usage(format!(
                "{flag} is not supported yet by this build"
            )));
        }
    }
    // The watcher thread re-parses the config later: give it a copy of the environment.
    let env_snapshot: HashMap<String, String> = config::ENV_OVERRIDES
        .iter()
        .map(|o| o.var)
        .chain(["REINFER_EWS_CONFIG"])
        .filter_map(|name| env(name).map(|value| (name.to_owned(), value)))
        .collect();
    let env = move |name: &str| env_snapshot.get(name).cloned();
    let source = config_source(cli, &env)?;
    let (mut bytes, origin) = read_config(&source, sink.as_ref())?;
    let loaded = config::parse(&bytes, &origin, &env).map_err(AppError::Config)?;
    for warning in &loaded.warnings {
        log::warn!("config: {warning}");
    }
    let mut config = loaded.config;
    if cli.print_config {
        let text = serde_json::to_string_pretty(&config.to_redacted_json())
            .map_err(|e| AppError::Fatal(format!("cannot print the configuration: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    check_supported(&config)?;

    let terminate = StopFlag::new();
    crate::shutdown::stop_on_signals(terminate.clone())
        .map_err(|e| AppError::Fatal(format!("cannot install signal handlers: {e}")))?;

    let mut backoff = RESTART_BACKOFF_START;
    loop {
        let watch = (!cli.once).then(|| ConfigWatch {
            source: &source,
            sink: sink.as_ref(),
            env: &env,
            bytes: &bytes,
            interval: config.poll_frequency.max(MIN_CONFIG_RELOAD_INTERVAL),
        });
        let result = run_service(&config, &shard, sink.clone(), cli.once, &terminate, watch);
        match result {
            Ok(RunEnd::Done) => return Ok(()),
            Ok(RunEnd::Reload(new_config, new_bytes)) => {
                log::info!("configuration changed: the pipeline restarted with it");
                config = *new_config;
                bytes = new_bytes;
                backoff = RESTART_BACKOFF_START;
            }
            Err(AppError::Fatal(message))
                if cli.restart_on_unrecoverable_errors && !terminate.is_stopped() =>
            {
                log::error!("{message}");
                log::warn!(
                    "restarting in {} s (--restart-on-unrecoverable-errors)",
                    backoff.as_secs()
                );
                if !terminate.sleep(backoff) {
                    return Ok(());
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Where the configuration is read from.
enum ConfigSource {
    /// The file named by REINFER_EWS_CONFIG.
    File(String),
    /// The sink's stored configuration `owner`/`key`.
    Remote { owner: String, key: String },
}

/// How a run ended when it did not fail.
enum RunEnd {
    Done,
    /// The configuration changed and is valid: run again with it.
    Reload(Box<Config>, Vec<u8>),
}

/// What the config watcher of a run needs.
struct ConfigWatch<'a> {
    source: &'a ConfigSource,
    sink: &'a dyn Sink,
    env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// The bytes the running configuration came from.
    bytes: &'a [u8],
    interval: Duration,
}

/// Re-reading a remote config more often than this gains nothing and costs API calls.
const MIN_CONFIG_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

impl ConfigWatch<'_> {
    /// Re-reads the configuration every interval until `stop`; returns a changed, valid
    /// configuration (and stops the run so it can restart with it). An invalid new one is
    /// logged and the running one kept.
    fn watch(&self, running: &Config, stop: &StopFlag) -> Option<(Config, Vec<u8>)> {
        let mut last_bytes = self.bytes.to_vec();
        while stop.sleep(self.interval) {
            let (bytes, origin) = match read_config(self.source, self.sink) {
                Ok(read) => read,
                Err(err) => {
                    log::warn!("cannot re-read the configuration (keeping the running one): {err}");
                    continue;
                }
            };
            if bytes == last_bytes {
                continue;
            }
            last_bytes = bytes.clone();
            match config::parse(&bytes, &origin, self.env) {
                Ok(loaded) if loaded.config == *running => {}
                Ok(loaded) => match check_supported(&loaded.config) {
                    Ok(()) => {
                        for warning in &loaded.warnings {
                            log::warn!("config: {warning}");
                        }
                        log::info!("{origin} changed; restarting the pipeline with it");
                        stop.stop();
                        return Some((loaded.config, bytes));
                    }
                    Err(err) => {
                        log::error!("new configuration rejected, keeping the running one: {err}")
                    }
                },
                Err(errors) => log::error!(
                    "new configuration from {origin} rejected, keeping the running one:\n{errors}"
                ),
            }
        }
        None
    }
}

fn config_source(
    cli: &Cli,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConfigSource, AppError> {
    let remote = match (&cli.remote_config_owner, &cli.remote_config_key) {
        (Some(owner), Some(key)) => Some((owner.clone(), key.clone())),
        (None, None) => None,
        _ => {
            return Err(AppError::Usage(
                "--remote-config-owner and --remote-config-key go together".into(),
            ));
        }
    };
    match (env("REINFER_EWS_CONFIG").filter(|p| !p.is_empty()), remote) {
        (Some(path), remote) => {
            if remote.is_some() {
                log::info!("REINFER_EWS_CONFIG is set: using {path}, not the remote configuration");
            }
            Ok(ConfigSource::File(path))
        }
        (None, Some((owner, key))) => Ok(ConfigSource::Remote { owner, key }),
        (None, None) => Err(AppError::Usage(
            "no configuration: set REINFER_EWS_CONFIG to a config file, or pass \
             --remote-config-owner and --remote-config-key"
                .into(),
        )),
    }
}

/// The configuration's bytes and a name for its origin (in error messages).
fn read_config(source: &ConfigSource, sink: &dyn Sink) -> Result<(Vec<u8>, String), AppError> {
    match source {
        ConfigSource::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                AppError::Usage(format!(
                    "cannot read the config file {path} (REINFER_EWS_CONFIG): {e}"
                ))
            })?;
            Ok((bytes, path.clone()))
        }
        ConfigSource::Remote { owner, key } => {
            let bytes = sink.read_config(owner, key).map_err(|e| match e {
                sink::Error::NotFound { .. } | sink::Error::Invalid { .. } => {
                    AppError::Usage(format!("remote configuration: {e}"))
                }
                other => AppError::Fatal(format!("cannot read the remote configuration: {other}")),
            })?;
            Ok((bytes, format!("remote config {owner}/{key}")))
        }
    }
}

fn build_sink(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Arc<dyn Sink>, AppError> {
    let chosen = [
        cli.reinfer_api_endpoint.is_some(),
        cli.local_files_prefix.is_some(),
        cli.private_file_prefix.is_some(),
    ];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err(AppError::Usage(
            "choose exactly one sink: --reinfer-api-endpoint URL, --local-files-prefix DIR or \
             --private-file-prefix az://ACCOUNT/CONTAINER"
                .into(),
        ));
    }
    if let Some(dir) = &cli.local_files_prefix {
        return Ok(Arc::new(LocalSink::new(dir)));
    }
    if let Some(value) = &cli.private_file_prefix {
        use crate::sink::azure::{AzurePrefix, AzureSink};
        let prefix = AzurePrefix::parse(value)
            .map_err(|e| AppError::Usage(format!("--private-file-prefix {e}")))?;
        // Only a connection string is read here; token methods are tried at the first
        // request, so nothing is probed before the configuration is known to be good.
        let credentials = crate::auth::azure::from_environment(&prefix.account, env)
            .map_err(|e| AppError::Usage(format!("--private-file-prefix {prefix}: {e}")))?;
        log::debug!(
            "Azure Blob Storage sink {prefix}: credentials {}",
            credentials.describe()
        );
        let sink = AzureSink::new(&prefix, credentials)
            .map_err(|e| AppError::Usage(format!("--private-file-prefix {prefix}: {e}")))?;
        return Ok(Arc::new(sink));
    }
    let endpoint = cli.reinfer_api_endpoint.as_deref().unwrap_or_default();
    let token = env("REINFER_API_TOKEN").filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        AppError::Usage(
            "--reinfer-api-endpoint needs the API token in the REINFER_API_TOKEN environment variable"
                .into(),
        )
    })?;
    let sink = ReinferSink::new(endpoint, Secret::new(token), writer_identity(env))
        .map_err(|e| AppError::Usage(format!("--reinfer-api-endpoint: {e}")))?;
    Ok(Arc::new(sink))
}

/// Who writes sync state, for detecting two replicas on one mailbox: host (the pod name under
/// Kubernetes), process id and start time.
fn writer_identity(env: &dyn Fn(&str) -> Option<String>) -> String {
    let host = env("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let started = time::OffsetDateTime::now_utc().unix_timestamp();
    format!("{host}:{}:{started}", std::process::id())
}

fn shard_of(cli: &Cli) -> Result<Shard, AppError> {
    match (&cli.shard_name, cli.total_shards) {
        (None, None) => Ok(Shard::single()),
        (Some(name), Some(total)) => Shard::from_name(name, total)
            .map_err(|e| AppError::Usage(format!("--shard-name/--total-shards: {e}"))),
        _ => Err(AppError::Usage(
            "--shard-name and --total-shards go together".into(),
        )),
    }
}

fn check_supported(config: &Config) -> Result<(), AppError> {
    if config.microsoft_api == MicrosoftApi::Graph {
        return Err(AppError::Usage(
            "microsoft_api \"graph\" is not supported yet by this build; use \"ews\"".into(),
        ));
    }
    if let Auth::OAuth2 { .. } = config.auth {
        return Err(AppError::Usage(
            "auth_type \"oauth2\" is not supported yet by this build; use \"ntlm\"".into(),
        ));
    }
    // An unusable cipher list is a configuration error: refused at start-up, and as a live
    // edit (the config watcher checks new configurations here).
    if let Some(ciphers) = &config.ews_ssl_ciphers
        && let Err(e) = crate::exchange::tls::TlsClient::new(config.ews_ssl_verify, Some(ciphers))
        && e.is_config_error()
    {
        return Err(AppError::Usage(e.to_string()));
    }
    Ok(())
}

/// One run of the service: until `--once` completes, a stop, or a fatal error.
fn run_service(
    config: &Config,
    shard: &Shard,
    sink: Arc<dyn Sink>,
    once: bool,
    terminate: &StopFlag,
    watch: Option<ConfigWatch<'_>>,
) -> Result<RunEnd, AppError> {
    let started = Instant::now();
    // `--once` copies what was received before it started; rounding up to the next second
    // includes everything of the current second, as EWS compares at second precision.
    let until = once.then(|| {
        let now = time::OffsetDateTime::now_utc();
        now.replace_nanosecond(0).unwrap_or(now) + time::Duration::SECOND
    });
    let mailboxes: Vec<_> = config
        .mailboxes
        .iter()
        .filter(|m| shard.owns(&m.address))
        .cloned()
        .collect();
    log::info!(
        "shard {} of {}: {} of {} mailboxes; sink {}",
        shard.index,
        shard.total,
        mailboxes.len(),
        config.mailboxes.len(),
        sink.describe()
    );

    let mut prepared: Vec<&crate::config::Bucket> = Vec::new();
    for mailbox in &mailboxes {
        if prepared.contains(&&mailbox.bucket) {
            continue;
        }
        let bucket = &mailbox.bucket;
        sink.prepare_bucket(bucket).map_err(|e| {
            AppError::Fatal(format!("bucket {}/{}: {e}", bucket.owner, bucket.name))
        })?;
        prepared.push(bucket);
    }

    let mut states = Vec::with_capacity(mailboxes.len());
    let mut cursors = Vec::with_capacity(mailboxes.len());
    for mailbox in &mailboxes {
        let stored = match mailbox.start_from {
            StartFrom::Config => None,
            StartFrom::Bucket => {
                sink.load_state(&mailbox.bucket, &mailbox.address)
                    .map_err(|e| {
                        let hint = if matches!(e, sink::Error::Corrupt { .. }) {
                            "; fix or remove the state to resync it from start_timestamp"
                        } else {
                            ""
                        };
                        AppError::Fatal(format!(
                            "mailbox={}: cannot load its sync state: {e}{hint}",
                            mailbox.address
                        ))
                    })?
            }
        };
        let state = stored.unwrap_or_else(|| MailboxState {
            version: STATE_VERSION,
            mailbox: mailbox.address.clone(),
            folders: Default::default(),
        });
        let folder_cursors: HashMap<String, Cursor> = state
            .folders
            .iter()
            .map(|(id, folder)| (id.clone(), folder.cursor()))
            .collect();
        cursors.push(folder_cursors);
        states.push(state);
    }

    let stop = StopFlag::new();
    let relay = relay_stop(terminate, &stop);
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        mailboxes,
        sink,
        stop: stop.clone(),
        metrics: metrics.clone(),
        emails_per_folder: config.emails_per_folder,
        batch_size: config.reinfer_batch_size,
        poll_frequency: config.poll_frequency,
    });
    let sources = build_sources(config, &stop, &metrics)?;
    let (outcome, reload) = std::thread::scope(|scope| {
        let watcher = watch.map(|watch| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("config-watch".into())
                .spawn_scoped(scope, move || watch.watch(config, &stop))
        });
        let outcome = sync::run(
            shared,
            states,
            cursors,
            sources,
            Settings {
                uploaders: config.max_concurrent_uploads.max(1),
                until,
                shutdown_deadline: SHUTDOWN_DEADLINE,
            },
        );
        stop.stop();
        let reload = match watcher {
            Some(Ok(handle)) => handle.join().unwrap_or_else(|_| {
                log::error!("the config watcher panicked");
                None
            }),
            Some(Err(err)) => {
                log::error!("cannot start the config watcher: {err}");
                None
            }
            None => None,
        };
        (outcome, reload)
    });
    let _ = relay.join();
    log_summary(&metrics, started.elapsed());
    if let (Some((config, bytes)), false) = (reload, terminate.is_stopped()) {
        return Ok(RunEnd::Reload(Box::new(config), bytes));
    }
    match outcome {
        Outcome::Finished => Ok(RunEnd::Done),
        Outcome::FinishedWithErrors(count) => Err(AppError::Fatal(format!(
            "{count} mailbox(es) or folder(s) could not be synced completely; see the errors above"
        ))),
        Outcome::Fatal(message) => Err(AppError::Fatal(message)),
    }
}

/// Forwards a process-wide stop (signal) to one run's stop flag; ends with either.
fn relay_stop(terminate: &StopFlag, run: &StopFlag) -> std::thread::JoinHandle<()> {
    let (terminate, run) = (terminate.clone(), run.clone());
    std::thread::Builder::new()
        .name("stop-relay".into())
        .spawn(move || {
            let (outer, inner) = (terminate.channel(), run.channel());
            crossbeam_channel::select! {
                recv(outer) -> _ => run.stop(),
                recv(inner) -> _ => {}
            }
        })
        .unwrap_or_else(|err| panic!("cannot start thread stop-relay: {err}"))
}

fn build_sources(
    config: &Config,
    stop: &StopFlag,
    metrics: &Arc<Metrics>,
) -> Result<Vec<Box<dyn MailSource>>, AppError> {
    let url = config
        .ews_url
        .clone()
        .ok_or_else(|| AppError::Usage("ews_endpoint (or host) is required for EWS".into()))?;
    let Auth::Ntlm { user, password } = &config.auth else {
        return Err(AppError::Usage(
            "only NTLM authentication is supported by this build".into(),
        ));
    };
    let credentials = Credentials::Ntlm(NtlmCredentials::from_auth_user(user, password.clone()));
    let access = match config.access_type {
        AccessType::Delegate => Access::Delegate,
        AccessType::Impersonation => Access::Impersonation,
    };
    let server = Arc::new(EwsServer::new(config.max_concurrent_fetches));
    let settings = crate::http::AgentSettings {
        verify_tls: config.ews_ssl_verify,
        ciphers: config.ews_ssl_ciphers.clone(),
    };
    // Checked once, before any thread starts: an unusable cipher list is a config error.
    let tls = crate::http::ews_tls(&settings).map_err(|e| {
        if e.is_config_error() {
            AppError::Usage(e.to_string())
        } else {
            AppError::Fatal(e.to_string())
        }
    })?;
    if !config.ews_ssl_verify && url.starts_with("https:") {
        log::warn!("ews_ssl_verify is false: the EWS server's certificate is not checked");
    }
    let on_retry: Arc<dyn Fn(&str) + Send + Sync> = {
        let metrics = metrics.clone();
        Arc::new(move |reason: &str| metrics.record_retry(reason))
    };
    Ok((0..config.max_concurrent_fetches.max(1))
        .map(|_| {
            let (agent, cert_slot) = crate::http::ews_agent(&tls);
            let transport =
                Transport::new(agent, url.clone(), credentials.clone()).with_cert_slot(cert_slot);
            Box::new(EwsSource::new(
                transport,
                access,
                server.clone(),
                stop.clone(),
                config.poll_message_sleep,
                on_retry.clone(),
            )) as Box<dyn MailSource>
        })
        .collect())
}

fn log_summary(metrics: &Metrics, elapsed: Duration) {
    let emails = Metrics::get(&metrics.emails_synced);
    let bytes = Metrics::get(&metrics.bytes_synced);
    let secs = elapsed.as_secs_f64().max(0.001);
    log::info!(
        "synced {emails} emails ({:.1} MB) in {secs:.1} s ({:.0} emails/s); skipped {}; failed jobs {}; retries {:?}",
        bytes as f64 / 1e6,
        emails as f64 / secs,
        Metrics::get(&metrics.emails_skipped),
        Metrics::get(&metrics.job_failures),
        metrics.retries(),
    );
}
