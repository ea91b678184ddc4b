//! The small HTTP/1.1 server the test fakes share: std::net, one thread per connection,
//! keep-alive, bodies by Content-Length or chunked. Not tiny_http: it queues new connections
//! behind a pool of threads that keep-alive connections hold, which caps concurrency at about
//! four and would hide how many requests a client has in flight.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Request heads beyond this are refused (431-like: the connection is closed).
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Bodies beyond this are not read (the handler answers 413).
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// A parsed request.
pub struct HttpRequest {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
    pub conn_id: u64,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to send back; `None` from a handler closes the connection without an answer.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub type Handler = dyn Fn(&HttpRequest) -> Option<HttpResponse> + Send + Sync;

/// Open connections: a clone of each stream (to shut it down) and its thread.
type Connections = Mutex<Vec<(TcpStream, JoinHandle<()>)>>;

pub struct HttpServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Open connections (a clone of each stream, to shut it down) and their threads.
    connections: Arc<Connections>,
}

impl HttpServer {
    pub fn start(handler: Arc<Handler>) -> io::Result<HttpServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Arc<Connections> = Arc::default();
        let accept = {
            let stopping = Arc::clone(&stopping);
            let connections = Arc::clone(&connections);
            std::thread::Builder::new()
                .name("fake-http-accept".into())
                .spawn(move || accept_loop(&listener, &stopping, &connections, &handler))?
        };
        Ok(HttpServer {
            addr,
            stopping,
            accept: Some(accept),
            connections,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let connections =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for (stream, _) in &connections {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, thread) in connections {
            let _ = thread.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    stopping: &AtomicBool,
    connections: &Connections,
    handler: &Arc<Handler>,
) {
    let next_id = AtomicU64::new(1);
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let conn_id = next_id.fetch_add(1, Ordering::SeqCst);
        let handler = Arc::clone(handler);
        let spawned = std::thread::Builder::new()
            .name(format!("fake-http-conn-{conn_id}"))
            .spawn(move || serve_connection(stream, peer, conn_id, &handler));
        if let Ok(thread) = spawned {
            let mut open = connections.lock().unwrap_or_else(|e| e.into_inner());
            // Forget connections that ended, so a long test does not pile them up.
            let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *open)
                .into_iter()
                .partition(|(_, t)| t.is_finished());
            *open = live;
            open.push((clone, thread));
            drop(open);
            for (_, thread) in done {
                let _ = thread.join();
            }
        }
    }
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, conn_id: u64, handler: &Arc<Handler>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader, peer, conn_id) {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => return,
        };
        let close = request
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let Some(response) = handler(&request) else {
            // An injected reset: close without a word.
            let _ = writer.shutdown(Shutdown::Both);
            return;
        };
        if write_response(&mut writer, &response, close).is_err() || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// The next request on the connection; `None` when the client closed it between requests.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    peer: SocketAddr,
    conn_id: u64,
) -> io::Result<Option<HttpRequest>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue; // stray CRLF between requests
        }
        let end = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD_BYTES {
            return Err(io::Error::other("request head too large"));
        }
        if end {
            break;
        }
    }
    let head = String::from_utf8(head).map_err(io::Error::other)?;
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(_version)) = (first.next(), first.next(), first.next())
    else {
        return Err(io::Error::other("bad request line"));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut request = HttpRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
        peer,
        conn_id,
    };
    if request
        .header("Expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = request
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        request.body = read_chunked(reader)?;
    } else if let Some(length) = request.header("Content-Length") {
        let length: usize = length
            .parse()
            .map_err(|_| io::Error::other("bad Content-Length"))?;
        if length > MAX_BODY_BYTES {
            return Err(io::Error::other("body too large"));
        }
        let mut body = Vec::with_capacity(length.min(MAX_BODY_BYTES));
        reader.by_ref().take(length as u64).read_to_end(&mut body)?;
        if body.len() != length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        request.body = body;
    }
    Ok(Some(request))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, then the final CRLF.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(io::Error::other("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn write_response(writer: &mut TcpStream, response: &HttpResponse, close: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&response.body);
    writer.write_all(&out)?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
