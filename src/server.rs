//! `--bind ADDR`: serves `/healthz`, `/readyz`, `/metrics` and `/status` from the process's
//! [`Metrics`], on tiny_http (a small synchronous server: no async runtime, no HTTP parsing
//! of our own). A few named worker threads answer; dropping the [`Server`] unblocks and joins
//! them, so it shuts down with the program.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response};

use crate::metrics::{Metrics, Verdict, prometheus};

/// Requests are answered from memory in microseconds; two workers keep one slow client
/// (reading a large `/metrics` slowly) from holding up a probe.
const WORKERS: usize = 2;

/// The endpoints, for `/` and for 405 answers.
const ENDPOINTS: &[(&str, &str)] = &[
    (
        "/healthz",
        "liveness: worker threads alive, no stage wedged (200 or 503)",
    ),
    (
        "/readyz",
        "readiness: configuration loaded, sink reached, first cycle started (200 or 503)",
    ),
    ("/metrics", "Prometheus text exposition"),
    (
        "/status",
        "JSON: every mailbox and folder with watermark, status, last error, next poll",
    ),
];

/// Why the server did not start.
#[derive(Debug)]
pub enum BindError {
    /// `--bind` is not an address: a usage error.
    Address(String),
    /// The address could not be bound (in use, not ours, no permission).
    Listen(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Address(message) | BindError::Listen(message) => f.write_str(message),
        }
    }
}

/// The running server; stops when dropped.
pub struct Server {
    http: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// Binds `bind` (`HOST:PORT`, e.g. `0.0.0.0:8000`; port 0 picks a free one) and starts
    /// answering from `metrics`.
    pub fn start(bind: &str, metrics: Arc<Metrics>) -> Result<Server, BindError> {
        let addr = bind
            .to_socket_addrs()
            .map_err(|e| {
                BindError::Address(format!(
                    "--bind {bind:?}: not an address such as 0.0.0.0:8000 ({e})"
                ))
            })?
            .next()
            .ok_or_else(|| BindError::Address(format!("--bind {bind:?}: resolves to nothing")))?;
        let http = tiny_http::Server::http(addr).map_err(|e| {
            BindError::Listen(format!("--bind {bind}: cannot listen on {addr}: {e}"))
        })?;
        let addr = http.server_addr().to_ip().unwrap_or(addr);
        let http = Arc::new(http);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(WORKERS);
        for index in 0..WORKERS {
            let (worker_http, worker_stopping, metrics) =
                (http.clone(), stopping.clone(), metrics.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("http-server-{index}"))
                .spawn(move || serve(&worker_http, &worker_stopping, &metrics));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    let server = Server {
                        http,
                        stopping,
                        workers,
                        addr,
                    };
                    drop(server);
                    return Err(BindError::Listen(format!(
                        "--bind {bind}: cannot start a server thread: {e}"
                    )));
                }
            }
        }
        log::info!("serving /healthz, /readyz, /metrics and /status on http://{addr}");
        Ok(Server {
            http,
            stopping,
            workers,
            addr,
        })
    }

    /// The address actually bound (with the port chosen for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // One unblock wakes one waiting worker.
        for _ in 0..self.workers.len() {
            self.http.unblock();
        }
        for worker in self.workers.drain(..) {
            let name = worker.thread().name().unwrap_or("http-server").to_owned();
            if worker.join().is_err() {
                log::error!("thread {name} panicked");
            }
        }
    }
}

fn serve(http: &tiny_http::Server, stopping: &AtomicBool, metrics: &Metrics) {
    loop {
        match http.recv() {
            Ok(request) => respond(request, metrics),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => log::debug!("http server: {e}"),
        }
    }
}

/// Status, content type and body for a method and path.
pub fn route(method: &Method, path: &str, metrics: &Metrics) -> (u16, &'static str, Vec<u8>) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let known = path == "/" || ENDPOINTS.iter().any(|(p, _)| *p == path);
    if !matches!(method, Method::Get | Method::Head) {
        return if known {
            (405, TEXT, b"only GET and HEAD\n".to_vec())
        } else {
            (404, TEXT, b"not found\n".to_vec())
        };
    }
    let verdict = |v: Verdict| {
        let mut body = v.lines.join("\n");
        body.push('\n');
        (if v.ok { 200 } else { 503 }, TEXT, body.into_bytes())
    };
    match path {
        "/healthz" => verdict(metrics.liveness()),
        "/readyz" => verdict(metrics.readiness()),
        "/metrics" => (
            200,
            prometheus::CONTENT_TYPE,
            metrics.render_prometheus().into_bytes(),
        ),
        "/status" => {
            let mut body = serde_json::to_vec_pretty(&metrics.status_json()).unwrap_or_default();
            body.push(b'\n');
            (200, "application/json", body)
        }
        "/" => {
            let mut body = format!("exchange-sync {}\n\n", env!("CARGO_PKG_VERSION"));
            for (path, what) in ENDPOINTS {
                body.push_str(&format!("{path:<10} {what}\n"));
            }
            (200, TEXT, body.into_bytes())
        }
        _ => (404, TEXT, b"not found\n".to_vec()),
    }
}

fn respond(request: Request, metrics: &Metrics) {
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let (status, content_type, body) = route(request.method(), &path, metrics);
    let mut response = Response::from_data(body).with_status_code(status);
    for (name, value) in [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ] {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    if status == 405
        && let Ok(header) = Header::from_bytes(&b"Allow"[..], &b"GET, HEAD"[..])
    {
        response.add_header(header);
    }
    // A client that went away has nothing left to hear.
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_endpoints_and_stops_when_dropped() {
        let metrics = Arc::new(Metrics::default());
        let server = Server::start("127.0.0.1:0", metrics.clone()).unwrap();
        let addr = server.addr();
        let ask = |path: &str| {
            get(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
        };
        let healthz = ask("/healthz");
        assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
        let readyz = ask("/readyz");
        assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
        assert!(readyz.contains("configuration is not loaded"), "{readyz}");
        let text = ask("/metrics?x=1");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("version=0.0.4"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        prometheus::validate(body).unwrap();
        let status = ask("/status");
        let body = status.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["state"], "starting");
        assert!(ask("/nope").starts_with("HTTP/1.1 404"));
        let post = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let head = get(
            addr,
            "HEAD /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        drop(server);
        // tiny_http's accept thread closes the listener right after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(std::time::Instant::now() < deadline, "still listening");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        let metrics = Arc::new(Metrics::default());
        assert!(matches!(
            Server::start("not an address", metrics.clone()),
            Err(BindError::Address(_))
        ));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        assert!(matches!(
            Server::start(&addr, metrics),
            Err(BindError::Listen(_))
        ));
    }
}
