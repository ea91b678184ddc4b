//! A minimal HTTP/1.1 server (keep-alive, Content-Length and chunked bodies, Expect:
//! 100-continue, chunked responses) with one reader thread per TCP connection and a fixed pool
//! of handler threads. Written by hand instead of tiny_http because the fake must know exactly
//! which TCP connection a request came on (NTLM authenticates connections), must be able to
//! drop a connection without answering, and must forget a connection's state when it closes.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
/// IIS closes idle keep-alive connections after 120 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One parsed request.
pub(crate) struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Unique per TCP connection for the life of the server.
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// When the request head had been read.
    pub arrived: Instant,
    /// Requests in flight on the server right after this one was read, itself included.
    pub in_flight: usize,
}

impl HttpRequest {
    /// First header with this name (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` (as IIS does for EWS responses).
    pub chunked: bool,
    /// Close the connection after this response.
    pub close: bool,
}

pub(crate) enum Reply {
    Respond(HttpResponse),
    /// Close the connection without answering.
    Drop,
}

/// What the server calls for every request and when a connection ends.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &HttpRequest) -> Reply;
    fn connection_closed(&self, conn_id: u64);
    /// Sleep applied before handling (simulated latency).
    fn latency(&self) -> Duration;
}

/// In-flight request counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

struct Job {
    req: HttpRequest,
    reply: Sender<Reply>,
}

struct Shared {
    shutdown: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    conn_threads: Mutex<Vec<JoinHandle<()>>>,
    next_conn: AtomicU64,
    counters: Arc<Counters>,
}

pub(crate) struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    jobs: Option<Sender<Job>>,
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl HttpServer {
    pub(crate) fn start<H: Handler>(
        addr: SocketAddr,
        threads: usize,
        handler: Arc<H>,
        counters: Arc<Counters>,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            conn_threads: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            counters,
        });
        let (jobs_tx, jobs_rx) = channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut workers = Vec::new();
        for n in 0..threads.max(1) {
            let rx = Arc::clone(&jobs_rx);
            let handler = Arc::clone(&handler);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("fake-ews-worker-{n}"))
                    .spawn(move || worker(rx, handler))?,
            );
        }
        let accept_shared = Arc::clone(&shared);
        let accept_jobs = jobs_tx.clone();
        let accept = std::thread::Builder::new()
            .name("fake-ews-accept".into())
            .spawn(move || accept_loop(listener, accept_shared, accept_jobs, handler))?;
        Ok(HttpServer {
            addr,
            shared,
            accept: Some(accept),
            workers,
            jobs: Some(jobs_tx),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        // End every connection (their threads see EOF/errors and exit).
        let conns: Vec<TcpStream> = match self.shared.conns.lock() {
            Ok(mut map) => map.drain().map(|(_, s)| s).collect(),
            Err(_) => Vec::new(),
        };
        for s in conns {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = match self.shared.conn_threads.lock() {
            Ok(mut v) => v.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for t in threads {
            let _ = t.join();
        }
        // Workers exit once every job sender is gone.
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker<H: Handler>(rx: Arc<Mutex<Receiver<Job>>>, handler: Arc<H>) {
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let reply = handler.handle(&job.req);
        let _ = job.reply.send(reply);
    }
}

fn accept_loop<H: Handler>(
    listener: TcpListener,
    shared: Arc<Shared>,
    jobs: Sender<Job>,
    handler: Arc<H>,
) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let conn_id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let (Ok(clone), Ok(mut map)) = (stream.try_clone(), shared.conns.lock()) {
            map.insert(conn_id, clone);
        }
        let conn_shared = Arc::clone(&shared);
        let conn_jobs = jobs.clone();
        let conn_handler = Arc::clone(&handler);
        let spawned = std::thread::Builder::new()
            .name(format!("fake-ews-conn-{conn_id}"))
            .spawn(move || {
                connection(
                    stream,
                    peer,
                    conn_id,
                    &conn_shared,
                    &conn_jobs,
                    &*conn_handler,
                );
                if let Ok(mut map) = conn_shared.conns.lock() {
                    map.remove(&conn_id);
                }
                conn_handler.connection_closed(conn_id);
            });
        if let (Ok(handle), Ok(mut threads)) = (spawned, shared.conn_threads.lock()) {
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
    }
}

enum ReadOutcome {
    /// The request, whether to keep the connection, whether the client speaks HTTP/1.1.
    Request(Box<HttpRequest>, bool, bool),
    Closed,
    Bad(u16),
}

fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    conn_id: u64,
    peer: SocketAddr,
) -> ReadOutcome {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        match reader
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return ReadOutcome::Closed,
            Ok(_) => {}
            Err(_) => return ReadOutcome::Closed,
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue; // tolerate stray CRLF between requests
        }
        let end = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
        if head.len() > MAX_HEAD || !line.ends_with(b"\n") {
            return ReadOutcome::Bad(400);
        }
    }
    let arrived = Instant::now();
    let Ok(head) = String::from_utf8(head) else {
        return ReadOutcome::Bad(400);
    };
    let mut lines = head.split("\r\n").flat_map(|l| l.split('\n'));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return ReadOutcome::Bad(400);
    };
    if !version.starts_with("HTTP/1.") {
        return ReadOutcome::Bad(400);
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return ReadOutcome::Bad(400);
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    if version == "HTTP/1.1" && get("host").is_none() {
        return ReadOutcome::Bad(400);
    }
    let connection = get("connection").unwrap_or_default();
    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    if get("expect").is_some_and(|e| e.contains("100-continue")) {
        let _ = writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let body = if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        match read_chunked(reader) {
            Some(b) => b,
            None => return ReadOutcome::Bad(400),
        }
    } else {
        let len = match get("content-length") {
            None => 0,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) => n,
                Err(_) => return ReadOutcome::Bad(400),
            },
        };
        if len > MAX_BODY {
            return ReadOutcome::Bad(413);
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return ReadOutcome::Closed;
        }
        body
    };
    ReadOutcome::Request(
        Box::new(HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers,
            body,
            conn_id,
            peer,
            arrived,
            in_flight: 0,
        }),
        keep_alive,
        version == "HTTP/1.1",
    )
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // trailers until an empty line
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t).ok()? == 0 || t.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return None;
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).ok()?;
    }
}

fn http_date() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    ))
    .unwrap_or_default()
}

fn write_response(
    stream: &mut TcpStream,
    r: &HttpResponse,
    keep_alive: bool,
    http11: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(r.body.len() + 512);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status)).as_bytes());
    for (k, v) in &r.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Date: {}\r\n", http_date()).as_bytes());
    if r.close || !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if r.chunked && http11 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in r.body.chunks(16 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", r.body.len()).as_bytes());
        out.extend_from_slice(&r.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

fn connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    shared: &Shared,
    jobs: &Sender<Job>,
    handler: &H,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while !shared.shutdown.load(Ordering::SeqCst) {
        let (req, keep_alive, http11) = match read_request(&mut reader, &mut writer, conn_id, peer)
        {
            ReadOutcome::Closed => break,
            ReadOutcome::Bad(status) => {
                let body = format!(
                    "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Bad Request</TITLE>\r\n<META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n<BODY><h2>Bad Request - Invalid Request</h2>\r\n<hr><p>HTTP Error {status}. The request is badly formed.</p>\r\n</BODY></HTML>\r\n"
                );
                let r = HttpResponse {
                    status,
                    headers: vec![
                        ("Content-Type".into(), "text/html; charset=us-ascii".into()),
                        ("Server".into(), "Microsoft-HTTPAPI/2.0".into()),
                    ],
                    body: body.into_bytes(),
                    chunked: false,
                    close: true,
                };
                let _ = write_response(&mut writer, &r, false, true);
                break;
            }
            ReadOutcome::Request(req, keep_alive, http11) => (req, keep_alive, http11),
        };
        let counters = &shared.counters;
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let mut req = req;
        req.in_flight = now;
        let latency = handler.latency();
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let (tx, rx) = channel();
        let reply = if jobs
            .send(Job {
                req: *req,
                reply: tx,
            })
            .is_ok()
        {
            rx.recv().ok()
        } else {
            None
        };
        // The request stops counting before its answer is written: a client that sends its
        // next request only after reading this answer must never be seen with both in flight.
        counters.in_flight.fetch_sub(1, Ordering::SeqCst);
        let keep = match reply {
            Some(Reply::Respond(r)) => {
                let ok = write_response(&mut writer, &r, keep_alive, http11).is_ok();
                ok && keep_alive && !r.close
            }
            Some(Reply::Drop) | None => false,
        };
        if !keep {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}
