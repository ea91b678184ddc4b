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
use crate::sync::folders::{FolderTable, MailboxFolders};
use crate::sync::state::{MailboxState, STATE_VERSION};
use crate::sync::{self, Outcome, Settings, Shared};

mod check;

/// After a stop, how long in-flight uploads may take; below Kubernetes' default 30 s grace.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(25);
/// In-process restarts back off from this …
const RESTART_BACKOFF_START: Duration = Duration::from_secs(5);
/// … doubling up to this, so a persistent fault never becomes a tight loop.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Sets the first restart back-off in seconds (fractions allowed) instead of
/// `RESTART_BACKOFF_START`: for tests, and for operators who want faster retries.
pub const RESTART_BACKOFF_ENV: &str = "EXCHANGE_SYNC_RESTART_BACKOFF_SECONDS";

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
    let restart_backoff_start = restart_backoff_start(env)?;
    let sink = build_sink(cli, env)?;
    let shard = shard_of(cli)?;
    // One for the whole process: counters survive in-process restarts and reloads.
    let metrics = Arc::new(Metrics::default());
    metrics.set_run_info(&sink.describe(), shard.index, shard.total);
    // Started before the configuration is read, so probes answer during start-up too.
    let _server = match &cli.bind {
        Some(bind) if !cli.check && !cli.print_config => Some(
            crate::server::Server::start(bind, metrics.clone()).map_err(|e| match e {
                crate::server::BindError::Address(message) => AppError::Usage(message),
                crate::server::BindError::Listen(message) => AppError::Fatal(message),
            })?,
        ),
        _ => None,
    };
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
    metrics.config_loaded(&origin);
    if cli.check {
        let local_prefix = cli.local_files_prefix.as_deref();
        return check::run(&config, &origin, &shard, &sink, local_prefix, &metrics);
    }

    let terminate = StopFlag::new();
    crate::shutdown::stop_on_signals(terminate.clone())
        .map_err(|e| AppError::Fatal(format!("cannot install signal handlers: {e}")))?;

    let mut backoff = restart_backoff_start;
    loop {
        let watch = (!cli.once).then(|| ConfigWatch {
            source: &source,
            sink: sink.as_ref(),
            env: &env,
            bytes: &bytes,
            interval: config.poll_frequency.max(MIN_CONFIG_RELOAD_INTERVAL),
        });
        let run_started = Instant::now();
        let result = run_service(
            &config,
            &shard,
            sink.clone(),
            cli.once,
            &terminate,
            watch,
            &metrics,
        );
        match result {
            Ok(RunEnd::Done) => {
                metrics.end_run(None);
                return Ok(());
            }
            Ok(RunEnd::Reload(new_config, new_bytes)) => {
                log::info!("configuration changed: the pipeline restarted with it");
                metrics.config_reloaded();
                config = *new_config;
                bytes = new_bytes;
                backoff = restart_backoff_start;
            }
            Err(AppError::Fatal(message))
                if cli.restart_on_unrecoverable_errors && !terminate.is_stopped() =>
            {
                // A run that went well for longer than the longest back-off starts it over.
                if run_started.elapsed() > RESTART_BACKOFF_MAX {
                    backoff = restart_backoff_start;
                }
                log::error!("{message}");
                log::warn!(
                    "restarting in {:.1} s (--restart-on-unrecoverable-errors)",
                    backoff.as_secs_f64()
                );
                metrics.restart_scheduled(&message, backoff);
                if !terminate.sleep(backoff) {
                    metrics.end_run(None);
                    return Ok(());
                }
                backoff = next_restart_backoff(backoff, restart_backoff_start);
                // The operator may have fixed the cause (a password) in the configuration.
                if let Some((new_config, new_bytes)) =
                    reread_config(&source, sink.as_ref(), &env, &bytes)
                {
                    metrics.config_loaded(&new_config.1);
                    config = new_config.0;
                    bytes = new_bytes;
                }
            }
            Err(AppError::Fatal(message)) if !cli.once && !terminate.is_stopped() => {
                metrics.end_run(Some(&message));
                return Err(AppError::Fatal(format!(
                    "{message}; exchange-sync stops: this needs the operator (with \
                     --restart-on-unrecoverable-errors it would restart in-process, with back-off)"
                )));
            }
            Err(err) => {
                metrics.end_run(Some(&err.to_string()));
                return Err(err);
            }
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
    // `--check` wants a verdict in seconds, not the daemon's minute of patient retries.
    let sink = if cli.check {
        sink.with_retry_policy(check::SINK_RETRY)
    } else {
        sink
    };
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
    // Graph takes app-only OAuth2 tokens only (the config check already insists on it).
    if config.microsoft_api == MicrosoftApi::Graph && !matches!(config.auth, Auth::OAuth2 { .. }) {
        return Err(AppError::Usage(
            "microsoft_api \"graph\" needs auth_type \"oauth2\"".into(),
        ));
    }
    // An unreadable private key or a thumbprint that does not match its certificate is a
    // configuration error, refused at start-up and as a live edit, naming the key.
    if let Auth::OAuth2 { credential, .. } = &config.auth {
        client_credential(credential)?;
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

/// The app credential of `auth_oauth_client_secret` or `auth_oauth_client_credential_*`.
/// Certificates sign RS256 assertions naming the certificate by its SHA-1 (`x5t`): what
/// Azure AD accepts everywhere (PS256 with `x5t#S256` has been refused in some tenants).
fn client_credential(
    credential: &crate::config::OAuthCredential,
) -> Result<crate::auth::client_credentials::ClientCredential, AppError> {
    use crate::auth::client_credentials::{Certificate, ClientCredential, JwtAlgorithm};
    match credential {
        crate::config::OAuthCredential::Secret(secret) => {
            Ok(ClientCredential::Secret(secret.clone()))
        }
        crate::config::OAuthCredential::Certificate {
            private_key_pem,
            thumbprint,
        } => Certificate::from_pem(private_key_pem, thumbprint.as_deref(), JwtAlgorithm::Rs256)
            .map(ClientCredential::Certificate)
            // The message names the config key (`auth_oauth_client_credential_…`).
            .map_err(|e| AppError::Usage(e.to_string())),
    }
}

/// One token provider for every fetcher thread of a run (they share its cache and its
/// refreshes). The scope is the resource's origin + `/.default`
/// (`https://outlook.office365.com/.default` for Exchange Online EWS,
/// `https://graph.microsoft.com/.default` for Graph), so other clouds and loopback test servers
/// get theirs from the configured endpoint.
fn token_provider(
    config: &Config,
    resource_url: &str,
) -> Result<Arc<dyn crate::auth::TokenProvider>, AppError> {
    use crate::auth::TokenProvider;
    use crate::auth::client_credentials::ClientCredentials;
    let Auth::OAuth2 {
        authority,
        client_id,
        credential,
    } = &config.auth
    else {
        return Err(AppError::Usage(
            "auth_type \"oauth2\" is required here".into(),
        ));
    };
    let scope = crate::exchange::transport::oauth_scope_for(resource_url).ok_or_else(|| {
        AppError::Usage(format!(
            "cannot derive an OAuth2 scope from the endpoint {resource_url}"
        ))
    })?;
    let provider = ClientCredentials::new(
        ClientCredentials::token_url_for(authority),
        client_id.clone(),
        client_credential(credential)?,
        scope,
    );
    log::info!("OAuth2 tokens: {}", provider.describe());
    Ok(Arc::new(provider))
}

/// One run of the service: until `--once` completes, a stop, or a fatal error.
fn run_service(
    config: &Config,
    shard: &Shard,
    sink: Arc<dyn Sink>,
    once: bool,
    terminate: &StopFlag,
    watch: Option<ConfigWatch<'_>>,
    metrics: &Arc<Metrics>,
) -> Result<RunEnd, AppError> {
    let started = Instant::now();
    let before = metrics.totals();
    // Requests from this thread (preparing buckets, loading state) count in the metrics.
    let _context = metrics.enter_thread(None);
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

    let mut folders = Vec::with_capacity(mailboxes.len());
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
        // Into the compact table mailbox by mailbox, so the loaded states never all coexist.
        folders.push(MailboxFolders::from_state(state));
    }
    let folders = Arc::new(FolderTable::new(folders));

    metrics.begin_run(&mailboxes, &folders);
    let stop = StopFlag::new();
    let relay = relay_stop(terminate, &stop);
    let shared = Arc::new(Shared {
        mailboxes,
        sink,
        stop: stop.clone(),
        metrics: metrics.clone(),
        emails_per_folder: config.emails_per_folder,
        batch_size: config.reinfer_batch_size,
        poll_frequency: config.poll_frequency,
    });
    let sources = build_sources(config, &stop, metrics)?;
    let (outcome, reload) = std::thread::scope(|scope| {
        let watcher = watch.map(|watch| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("config-watch".into())
                .spawn_scoped(scope, move || watch.watch(config, &stop))
        });
        let outcome = sync::run(
            shared,
            folders,
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
    log_summary(metrics, before, started.elapsed());
    // A pipeline thread that met a fatal error (a sink refusing our credentials) stopped the
    // run through the stop flag: it still failed.
    let outcome = match (outcome, metrics.take_run_failure()) {
        (Outcome::Finished, Some(message)) if !terminate.is_stopped() => Outcome::Fatal(message),
        (outcome, _) => outcome,
    };
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
    let on_retry: Arc<dyn Fn(&str) + Send + Sync> = {
        let metrics = metrics.clone();
        Arc::new(move |reason: &str| metrics.record_retry(reason))
    };
    let threads = config.max_concurrent_fetches.max(1);
    if config.microsoft_api == MicrosoftApi::Graph {
        return build_graph_sources(config, stop, &tls, on_retry, threads);
    }
    let url = config
        .ews_url
        .clone()
        .ok_or_else(|| AppError::Usage("ews_endpoint (or host) is required for EWS".into()))?;
    let (credentials, access) = match &config.auth {
        Auth::Ntlm { user, password } => (
            Credentials::Ntlm(NtlmCredentials::from_auth_user(user, password.clone())),
            match config.access_type {
                AccessType::Delegate => Access::Delegate,
                AccessType::Impersonation => Access::Impersonation,
            },
        ),
        Auth::OAuth2 { .. } => {
            // An app-only token names no mailbox: Exchange Online needs every request to
            // impersonate its mailbox (ExchangeImpersonation + X-AnchorMailbox), whatever
            // access_type says; exchangelib does the same.
            if config.access_type == AccessType::Delegate {
                log::info!(
                    "auth_type \"oauth2\": app-only tokens name no mailbox, so every EWS request \
                     impersonates its mailbox (ExchangeImpersonation and X-AnchorMailbox) \
                     although access_type is \"delegate\""
                );
            }
            (
                Credentials::Bearer(token_provider(config, &url)?),
                Access::Impersonation,
            )
        }
    };
    let server = Arc::new(EwsServer::new(config.max_concurrent_fetches));
    if !config.ews_ssl_verify && url.starts_with("https:") {
        log::warn!("ews_ssl_verify is false: the EWS server's certificate is not checked");
    }
    Ok((0..threads)
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

/// One Graph source per fetcher thread, sharing the token provider and the per-mailbox limits
/// (at most four requests in flight per mailbox, pauses Graph demands). Graph connections use
/// the same TLS settings as EWS (`ews_ssl_verify`, `ews_ssl_ciphers`, proxy).
fn build_graph_sources(
    config: &Config,
    stop: &StopFlag,
    tls: &crate::exchange::tls::TlsClient,
    on_retry: Arc<dyn Fn(&str) + Send + Sync>,
    threads: usize,
) -> Result<Vec<Box<dyn MailSource>>, AppError> {
    use crate::exchange::graph::{GraphClient, GraphMailboxes, GraphSource};
    let tokens = token_provider(config, &config.graph_url)?;
    let mailboxes = Arc::new(GraphMailboxes::new());
    if !config.ews_ssl_verify && config.graph_url.starts_with("https:") {
        log::warn!("ews_ssl_verify is false: the Graph server's certificate is not checked");
    }
    Ok((0..threads)
        .map(|_| {
            let (agent, _cert_slot) = crate::http::ews_agent(tls);
            let client = GraphClient::new(
                agent,
                &config.graph_url,
                tokens.clone(),
                mailboxes.clone(),
                stop.clone(),
                config.poll_message_sleep,
                on_retry.clone(),
            );
            Box::new(GraphSource::new(client)) as Box<dyn MailSource>
        })
        .collect())
}

/// What one run did (the metrics count over the whole process, hence the difference).
fn log_summary(metrics: &Metrics, before: crate::metrics::Totals, elapsed: Duration) {
    let now = metrics.totals();
    let emails = now.emails - before.emails;
    let bytes = now.bytes - before.bytes;
    let secs = elapsed.as_secs_f64().max(0.001);
    log::info!(
        "synced {emails} emails ({:.1} MB) in {secs:.1} s ({:.0} emails/s); skipped {}; failed jobs {}; retries {}",
        bytes as f64 / 1e6,
        emails as f64 / secs,
        now.skipped - before.skipped,
        now.job_failures - before.job_failures,
        now.retries - before.retries,
    );
}

/// The configuration as it is now, if it changed from `running_bytes` and is valid (else
/// the problem is logged and `None` returned, so the running one is kept). Gives the
/// configuration with its origin, and its bytes.
fn reread_config(
    source: &ConfigSource,
    sink: &dyn Sink,
    env: &dyn Fn(&str) -> Option<String>,
    running_bytes: &[u8],
) -> Option<((Config, String), Vec<u8>)> {
    let (bytes, origin) = match read_config(source, sink) {
        Ok(read) => read,
        Err(err) => {
            log::warn!("cannot re-read the configuration (keeping the running one): {err}");
            return None;
        }
    };
    if bytes == running_bytes {
        return None;
    }
    match config::parse(&bytes, &origin, env) {
        Ok(loaded) => match check_supported(&loaded.config) {
            Ok(()) => {
                for warning in &loaded.warnings {
                    log::warn!("config: {warning}");
                }
                log::info!("{origin} changed; restarting with it");
                Some(((loaded.config, origin), bytes))
            }
            Err(err) => {
                log::error!("new configuration rejected, keeping the running one: {err}");
                None
            }
        },
        Err(errors) => {
            log::error!(
                "new configuration from {origin} rejected, keeping the running one:\n{errors}"
            );
            None
        }
    }
}

/// The first restart back-off: `EXCHANGE_SYNC_RESTART_BACKOFF_SECONDS` or 5 s.
fn restart_backoff_start(env: &dyn Fn(&str) -> Option<String>) -> Result<Duration, AppError> {
    let Some(value) = env(RESTART_BACKOFF_ENV) else {
        return Ok(RESTART_BACKOFF_START);
    };
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0 && *secs <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            AppError::Usage(format!(
                "{RESTART_BACKOFF_ENV}={value:?}: expected seconds, more than 0 and at most 3600"
            ))
        })
}

/// Doubles the back-off, up to `RESTART_BACKOFF_MAX` (or the start, if that is longer).
fn next_restart_backoff(current: Duration, start: Duration) -> Duration {
    (current * 2).min(RESTART_BACKOFF_MAX.max(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_to_its_cap_and_the_start_is_configurable() {
        let start = Duration::from_secs(5);
        let mut backoff = start;
        let mut seen = vec![];
        for _ in 0..9 {
            seen.push(backoff.as_secs());
            backoff = next_restart_backoff(backoff, start);
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        let env = |value: &'static str| {
            move |name: &str| (name == RESTART_BACKOFF_ENV).then(|| value.to_owned())
        };
        assert_eq!(
            restart_backoff_start(&env("0.25")).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            restart_backoff_start(&|_| None).unwrap(),
            RESTART_BACKOFF_START
        );
        for bad in ["0", "-1", "soon", "NaN", "99999"] {
            assert!(restart_backoff_start(&env(bad)).is_err(), "{bad}");
        }
    }
}
