//! Serving the API and the cluster port: HTTP/1.1 over any listener (Unix socket or TCP), with
//! bounds a slow or hostile client cannot get around: how long it may take to send a request's
//! headers (also the next request's on a kept-alive connection, which bounds idle
//! connections), how large the headers may be, and how many connections one address and all
//! of them together may hold. Bodies are bounded per route (the API's JSON), not here: the
//! Raft streams and log uploads are long on purpose.
//!
//! The cluster port speaks TLS 1.3 ([`serve_tls`]): every request carries a [`Peer`] extension
//! saying who sent it, read from the client's certificate, never from the request; handlers
//! decide from it what the peer may do.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Time a client has to send a request's headers (and an idle connection to send another).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Connections one peer address may hold at once (Unix socket clients are one peer).
    pub max_per_peer: usize,
    /// Connections the server holds at once.
    pub max_total: usize,
    /// Bytes a connection's read buffer may hold: bounds a request's headers.
    pub max_header_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: HEADER_TIMEOUT,
            // A peer holds a Raft stream, an agent session, forwarded writes and its users'
            // requests; 512 leaves room for a benchmark's hundreds of clients.
            max_per_peer: 512,
            max_total: 4096,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Who sent a request, as the connection shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A client of the Unix socket (root, or `--socket-group`).
    Local,
    /// A client over TCP; with the identity its certificate proves, if it presented one.
    Remote {
        /// Its address.
        ip: IpAddr,
        /// The node its certificate names.
        identity: Option<crate::pki::Identity>,
    },
}

/// Open connections by peer (`None`: a Unix socket client).
type Counts = std::sync::Arc<std::sync::Mutex<(usize, HashMap<Option<IpAddr>, usize>)>>;

/// One connection's place in [`Counts`], given back when it ends.
struct Slot {
    counts: Counts,
    peer: Option<IpAddr>,
}

impl Slot {
    fn take(counts: &Counts, peer: Option<IpAddr>, opts: &ServeOptions) -> Option<Slot> {
        let mut c = counts.lock().expect("connection counts");
        let mine = c.1.get(&peer).copied().unwrap_or(0);
        if c.0 >= opts.max_total || mine >= opts.max_per_peer {
            return None;
        }
        c.0 += 1;
        *c.1.entry(peer).or_insert(0) += 1;
        Some(Slot {
            counts: counts.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("connection counts");
        c.0 -= 1;
        if let Some(n) = c.1.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(&self.peer);
            }
        }
    }
}

/// Something that accepts connections.
pub trait Accept: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection; with the peer's address where it has one.
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        let (s, peer) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, Some(peer.ip())))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(s, _)| (s, None))
    }
}

/// Serves `router` on `listener` until `shutdown`; connections in flight then get up to 5 s
/// to finish.
pub async fn serve<L: Accept>(listener: L, router: Router, shutdown: CancellationToken) {
    serve_with(listener, router, shutdown, ServeOptions::default()).await
}

/// A server's TLS configuration, replaceable while it serves (a renewed certificate, new
/// roots): each new connection takes the current one. Without one yet (a node that has no
/// certificate), connections are closed unanswered.
#[derive(Debug, Default)]
pub struct ServerTls(std::sync::RwLock<Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>>);

impl ServerTls {
    /// Starts with `config`.
    pub fn new(config: std::sync::Arc<tokio_rustls::rustls::ServerConfig>) -> ServerTls {
        ServerTls(std::sync::RwLock::new(Some(config)))
    }

    /// Replaces the configuration for the connections to come.
    pub fn replace(&self, config: std::sync::Arc<tokio_rustls::rustls::ServerConfig>) {
        *self.0.write().expect("tls lock") = Some(config);
    }

    fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let config = self.0.read().expect("tls lock").clone();
        config.map(tokio_rustls::TlsAcceptor::from)
    }
}

/// Serves `router` over TLS: the handshake (bounded by the header timeout) comes first, and
/// the client's certificate, when it sent one the server's verifier accepted, becomes the
/// requests' [`Peer`] identity.
pub async fn serve_tls<L: Accept>(
    listener: L,
    router: Router,
    shutdown: CancellationToken,
    tls: std::sync::Arc<ServerTls>,
) {
    serve_inner(
        listener,
        router,
        shutdown,
        ServeOptions::default(),
        Some(tls),
    )
    .await
}

/// [`serve`] with other limits.
pub async fn serve_with<L: Accept>(
    listener: L,
    router: Router,
    shutdown: CancellationToken,
    opts: ServeOptions,
) {
    serve_inner(listener, router, shutdown, opts, None).await
}

async fn serve_inner<L: Accept>(
    listener: L,
    router: Router,
    shutdown: CancellationToken,
    opts: ServeOptions,
    tls: Option<std::sync::Arc<ServerTls>>,
) {
    let conns = tokio_util::task::TaskTracker::new();
    let counts = Counts::default();
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over its share: closed at once, before a byte is read.
        let Some(slot) = Slot::take(&counts, peer, &opts) else {
            tracing::warn!(peer = ?peer, "connection refused: too many connections");
            drop(io);
            continue;
        };
        let router = router.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _slot = slot;
            let Some(ip) = peer else {
                return serve_conn(io, router, Peer::Local, opts, stop).await;
            };
            let Some(tls) = tls else {
                let who = Peer::Remote { ip, identity: None };
                return serve_conn(io, router, who, opts, stop).await;
            };
            let Some(acceptor) = tls.acceptor() else {
                tracing::debug!(peer = %ip, "closed: this node has no certificate yet");
                return;
            };
            let stream = match tokio::time::timeout(opts.header_timeout, acceptor.accept(io)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %ip, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %ip, "TLS handshake timed out");
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| crate::pki::identity(cert.as_ref()));
            serve_conn(stream, router, Peer::Remote { ip, identity }, opts, stop).await
        });
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

/// Serves one connection, every request marked with who sent it.
async fn serve_conn<Io>(
    io: Io,
    router: Router,
    who: Peer,
    opts: ServeOptions,
    stop: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::ServiceExt::map_request(
        router,
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(who.clone());
            req
        },
    );
    let service = TowerToHyperService::new(service);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(opts.max_header_bytes)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_that_stalls_in_its_headers_is_cut_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let server = tokio::spawn(serve_with(
            listener,
            router,
            stop.clone(),
            ServeOptions {
                header_timeout: Duration::from_millis(200),
                ..ServeOptions::default()
            },
        ));
        // A whole request is answered.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        ok.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        // Half a request is cut off after the timeout, not held forever.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the stalled connection was not closed");
        stop.cancel();
        server.await.unwrap();
    }

    async fn get(addr: std::net::SocketAddr, extra: &str) -> Vec<u8> {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n");
        let _ = c.write_all(req.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn a_peer_cannot_hold_more_connections_or_larger_headers_than_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let router = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let server = tokio::spawn(serve_with(
            listener,
            router,
            stop.clone(),
            ServeOptions {
                max_per_peer: 3,
                max_header_bytes: 8192,
                ..ServeOptions::default()
            },
        ));
        // Three idle connections are the peer's share...
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 12];
            c.read_exact(&mut buf).await.unwrap();
            idle.push(c);
        }
        // ...a fourth is closed unanswered...
        assert_eq!(get(addr, "").await, b"");
        // ...until one of them goes.
        drop(idle.pop());
        let answered = async {
            loop {
                let out = get(addr, "").await;
                if !out.is_empty() {
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let out = tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200"));
        // Headers beyond the buffer are refused, never buffered without end.
        drop(idle.pop());
        let huge = format!("x-big: {}\r\n", "a".repeat(64 * 1024));
        let out = get(addr, &huge).await;
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        stop.cancel();
        server.await.unwrap();
    }
}
