//! The `fake-exchange` binary: generate mailboxes and serve them over EWS on 127.0.0.1 for the
//! demo and manual testing. Prints `listening on <url>`, one `mailbox <address>` line per
//! mailbox and `ready`, then serves until killed (SIGTERM/SIGINT end the process) or, with
//! `--exit-on-stdin-eof`, until stdin is closed.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use fake_exchange::{FakeExchange, GenSpec, NtlmUser, Options, generate_with_addresses};

#[derive(argh::FromArgs)]
/// Fake Exchange Web Services server on 127.0.0.1.
struct Args {
    /// TCP port (0 = pick a free one)
    #[argh(option, default = "0")]
    port: u16,
    /// number of mailboxes
    #[argh(option, default = "3")]
    mailboxes: usize,
    /// mails a correct client must copy, per mailbox
    #[argh(option, default = "200")]
    emails_per_mailbox: usize,
    /// approximate MIME size of each mail in bytes
    #[argh(option, default = "4000")]
    mime_bytes: usize,
    /// latency added to every response, in milliseconds
    #[argh(option, default = "0")]
    latency_ms: u64,
    /// seed for the generated data
    #[argh(option, default = "1")]
    seed: u64,
    /// require NTLM for this account: DOMAIN\user:password
    #[argh(option)]
    ntlm_user: Option<String>,
    /// mailbox addresses are <prefix><n>@example.test, n from 1 (a prefix containing '@'
    /// is used as <local><n>@<domain>)
    #[argh(option, default = "String::from(\"user\")")]
    address_prefix: String,
    /// handler threads
    #[argh(option, default = "16")]
    threads: usize,
    /// server cap on FindItem/FindFolder page size
    #[argh(option, default = "1000")]
    max_find_page: usize,
    /// also stop when stdin reaches end of file
    #[argh(switch)]
    exit_on_stdin_eof: bool,
}

fn parse_ntlm(s: &str) -> Result<NtlmUser, String> {
    let (account, password) = s
        .split_once(':')
        .ok_or_else(|| "--ntlm-user must be DOMAIN\\user:password".to_string())?;
    let (domain, user) = account
        .split_once('\\')
        .ok_or_else(|| "--ntlm-user must be DOMAIN\\user:password".to_string())?;
    if domain.is_empty() || user.is_empty() {
        return Err("--ntlm-user must be DOMAIN\\user:password".to_string());
    }
    Ok(NtlmUser {
        domain: domain.to_string(),
        user: user.to_string(),
        password: password.to_string(),
    })
}

fn main() {
    let args: Args = argh::from_env();
    let ntlm = match args.ntlm_user.as_deref().map(parse_ntlm).transpose() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("fake-exchange: {e}");
            std::process::exit(2);
        }
    };
    let spec = GenSpec {
        seed: args.seed,
        mailboxes: args.mailboxes,
        emails_per_mailbox: args.emails_per_mailbox,
        mime_bytes: args.mime_bytes,
        ..GenSpec::default()
    };
    let prefix = args.address_prefix.clone();
    let data = generate_with_addresses(&spec, |n| match prefix.split_once('@') {
        Some((local, domain)) => format!("{local}{}@{domain}", n + 1),
        None => format!("{prefix}{}@example.test", n + 1),
    });
    let addresses: Vec<String> = data.mailboxes.iter().map(|m| m.address.clone()).collect();
    let options = Options {
        ntlm,
        latency: Duration::from_millis(args.latency_ms),
        threads: args.threads,
        max_find_page: args.max_find_page,
    };
    let server = match FakeExchange::start_at(
        data,
        options,
        SocketAddr::from(([127, 0, 0, 1], args.port)),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "fake-exchange: cannot listen on 127.0.0.1:{}: {e}",
                args.port
            );
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {}", server.url());
    for a in &addresses {
        let _ = writeln!(out, "mailbox {a}");
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    if args.exit_on_stdin_eof {
        let mut sink = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        drop(server);
    } else {
        loop {
            std::thread::park();
        }
    }
}
