//! Command-line flags (the original product's, kept verbatim, plus ours); declarations only.

use std::path::PathBuf;

use argh::FromArgs;

/// Copies every email of the configured Exchange mailboxes into Communications Mining, a local
/// directory or Azure Blob Storage, and keeps it in sync. The configuration comes from the
/// file named by REINFER_EWS_CONFIG, or from the sink with --remote-config-owner/-key.
#[derive(FromArgs, Debug, Default, PartialEq)]
pub struct Cli {
    /// sink: the Communications Mining API base URL (token from REINFER_API_TOKEN)
    #[argh(option)]
    pub reinfer_api_endpoint: Option<String>,

    /// sink: a local directory; config, state and data live under it
    #[argh(option)]
    pub local_files_prefix: Option<PathBuf>,

    /// sink: Azure Blob Storage, as az://ACCOUNT/CONTAINER[/PATH]
    #[argh(option)]
    pub private_file_prefix: Option<String>,

    /// load the configuration from the sink: owner (project) of the stored config
    #[argh(option)]
    pub remote_config_owner: Option<String>,

    /// load the configuration from the sink: key of the stored config
    #[argh(option)]
    pub remote_config_key: Option<String>,

    /// serve /healthz, /readyz, /metrics and /status on this address (e.g. 0.0.0.0:8000)
    #[argh(option)]
    pub bind: Option<String>,

    /// debug output: 0 none, 1 service debug (default), 2 full debug
    #[argh(option, default = "1")]
    pub debug_level: u8,

    /// this replica's name; its trailing integer is the shard index (exchange-sync-3 → 3)
    #[argh(option)]
    pub shard_name: Option<String>,

    /// how many replicas share the mailboxes
    #[argh(option)]
    pub total_shards: Option<u32>,

    /// restart the service in-process after a fatal error instead of exiting
    #[argh(switch)]
    pub restart_on_unrecoverable_errors: bool,

    /// sync everything received up to now, then exit
    #[argh(switch)]
    pub once: bool,

    /// validate the configuration, reach every endpoint, check each mailbox, then exit
    #[argh(switch)]
    pub check: bool,

    /// print the effective configuration (secrets redacted) and exit
    #[argh(switch)]
    pub print_config: bool,
}

/// Program names the original product's images and manifests put before the flags
/// (`IMAGE reinfer-ews --reinfer-api-endpoint …`, StatefulSet `args: [uipath-exchange-sync-app,
/// --bind, …]`); accepted and ignored so those invocations keep working.
const PROGRAM_NAME_WORDS: &[&str] = &["reinfer-ews", "uipath-exchange-sync-app", "exchange-sync"];

/// The arguments after the program name, without a leading program-name word.
pub fn strip_program_word(args: &[String]) -> &[String] {
    match args.first() {
        Some(first) if PROGRAM_NAME_WORDS.contains(&first.as_str()) => &args[1..],
        _ => args,
    }
}

/// Parses arguments (without argv[0]). `Err` carries the text to print and whether it is help
/// (exit 0) or a usage error (exit 2).
pub fn parse(program: &str, args: &[String]) -> Result<Cli, argh::EarlyExit> {
    let args: Vec<&str> = strip_program_word(args)
        .iter()
        .map(String::as_str)
        .collect();
    Cli::from_args(&[program], &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn original_invocations_parse() {
        let cli = parse(
            "x",
            &args(&["reinfer-ews", "--reinfer-api-endpoint", "https://h/api/"]),
        )
        .unwrap();
        assert_eq!(cli.reinfer_api_endpoint.as_deref(), Some("https://h/api/"));
        let cli = parse("x", &args(&["--local-files-prefix", "/mnt/ews"])).unwrap();
        assert_eq!(cli.local_files_prefix, Some(PathBuf::from("/mnt/ews")));
        let cli = parse(
            "x",
            &args(&[
                "uipath-exchange-sync-app",
                "--bind",
                "0.0.0.0:8000",
                "--shard-name",
                "s-2",
                "--total-shards",
                "4",
            ]),
        )
        .unwrap();
        assert_eq!(cli.bind.as_deref(), Some("0.0.0.0:8000"));
        assert_eq!(cli.total_shards, Some(4));
        assert_eq!(cli.debug_level, 1);
    }

    #[test]
    fn unknown_flags_and_words_are_usage_errors() {
        assert!(parse("x", &args(&["--nope"])).is_err());
        assert!(parse("x", &args(&["something-else"])).is_err());
        let help = parse("x", &args(&["--help"])).unwrap_err();
        assert!(help.status.is_ok());
    }
}
