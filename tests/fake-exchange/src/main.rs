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
    /// benchmarks: add one email of about this many MIME bytes (a base64 attachment) to the
    /// first mailbox's Inbox, received amid the others (0 = none)
    #[argh(option, default = "0")]
    big_email_bytes: usize,
    /// benchmarks: serve the request counters as JSON at GET /_bench/stats and print
    /// `expect emails=N mime-bytes=M` (what a correct client copies) before `ready`
    #[argh(switch)]
    bench_stats: bool,
}

/// A multipart/mixed message of about `size` bytes: a short text part and a PDF-typed
/// attachment of pseudo-random (incompressible) base64, wrapped at 76 columns like a mail
/// client writes it.
fn big_mime(size: usize, address: &str, received: time::OffsetDateTime) -> Vec<u8> {
    use base64::Engine;
    let date = received
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let head = format!(
        concat!(
            "From: Big Sender <big.sender@contoso.example>\r\nTo: <{to}>\r\n",
            "Subject: Large attachment (benchmark)\r\nDate: {date}\r\n",
            "Message-ID: <big-email-{size}@contoso.example>\r\nMIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=\"big-boundary\"\r\n\r\n",
            "--big-boundary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
            "The scan you asked for is attached.\r\n\r\n",
            "--big-boundary\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n",
            "Content-Disposition: attachment; filename=\"scan.pdf\"\r\n",
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ),
        to = address,
        date = date,
        size = size,
    );
    let tail = "\r\n--big-boundary--\r\n";
    // 76 base64 characters + CRLF carry 57 bytes.
    let lines = size.saturating_sub(head.len() + tail.len()) / 78;
    let mut raw = vec![0u8; lines * 57];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in raw.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&raw);
    let mut mime = Vec::with_capacity(size + 128);
    mime.extend_from_slice(head.as_bytes());
    for line in encoded.as_bytes().chunks(76) {
        mime.extend_from_slice(line);
        mime.extend_from_slice(b"\r\n");
    }
    mime.extend_from_slice(tail.as_bytes());
    mime
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
    // The big email's place: the first mailbox's Inbox, at the median received time.
    let big = (args.big_email_bytes > 0)
        .then(|| data.mailboxes.first())
        .flatten()
        .and_then(|mb| {
            let inbox = mb
                .folders
                .iter()
                .find(|f| f.parent_id.is_none() && f.display_name == "Inbox")?;
            let mut times: Vec<_> = inbox.items.iter().map(|i| i.received).collect();
            times.sort();
            let received = times.get(times.len() / 2).copied().unwrap_or(spec.start);
            Some((mb.address.clone(), inbox.id.clone(), received))
        });
    let (mut expect_emails, mut expect_bytes) = (0u64, 0u64);
    for mb in &data.mailboxes {
        for (_, item) in mb.synced_items() {
            expect_emails += 1;
            expect_bytes += item.mime.len() as u64;
        }
    }
    let options = Options {
        ntlm,
        latency: Duration::from_millis(args.latency_ms),
        threads: args.threads,
        max_find_page: args.max_find_page,
        bench_stats: args.bench_stats,
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
    if let Some((address, inbox, received)) = big {
        let mime = big_mime(args.big_email_bytes, &address, received);
        expect_emails += 1;
        expect_bytes += mime.len() as u64;
        let item = fake_exchange::make_item(args.seed ^ 0xB16, received, mime);
        server.add_item(&address, &inbox, item);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {}", server.url());
    for a in &addresses {
        let _ = writeln!(out, "mailbox {a}");
    }
    if args.bench_stats {
        let _ = writeln!(
            out,
            "expect emails={expect_emails} mime-bytes={expect_bytes}"
        );
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
