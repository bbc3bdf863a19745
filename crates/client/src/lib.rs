//! A client of shoal's REST API, over a Unix socket (`unix:///run/shoal/shoal.sock`) or TCP
//! (`tcp://host:port`). The CLI and the agent both use it, so an agent reaches its manager the
//! same way whether the manager runs on its host or elsewhere.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_api::wire::ErrorBody;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Default socket of the local daemon.
pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// Where the API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address, `host:port`.
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, ClientError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(ClientError::Endpoint(s.to_owned()));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if !addr.contains(':') {
                return Err(ClientError::Endpoint(s.to_owned()));
            }
            Ok(Endpoint::Tcp(addr.to_owned()))
        } else {
            Err(ClientError::Endpoint(s.to_owned()))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not an endpoint.
    #[error("invalid host {0:?}: use unix:///path/to/socket or tcp://host:port")]
    Endpoint(String),
    /// Could not connect.
    #[error("cannot connect to shoald at {endpoint}: {error} (is shoald running?)")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        error: std::io::Error,
    },
    /// The HTTP exchange broke.
    #[error("talking to shoald at {endpoint}: {message}")]
    Transport {
        /// Where.
        endpoint: String,
        /// What broke.
        message: String,
    },
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The answer did not decode.
    #[error("unexpected answer from shoald: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request may wait for the answer's headers by default (long polls answer within
/// a minute; streams then run as long as they last).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// How long an idle connection is kept for reuse: well below the servers' 30 s header timeout,
/// so a kept connection is not one the server is about to close.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per client.
const IDLE_MAX: usize = 128;

type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;
type Sender = hyper::client::conn::http1::SendRequest<RequestBody>;

/// Connections whose last answer was read in full, ready for another request.
#[derive(Debug, Default)]
struct Pool {
    idle: std::sync::Mutex<Vec<(Sender, std::time::Instant)>>,
}

impl Pool {
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some((s, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: Sender) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < IDLE_MAX && s.is_ready() {
            idle.push((s, std::time::Instant::now()));
        }
    }
}

/// A TLS 1.3 client configuration (rustls with ring) from PEM texts: servers checked against
/// the roots in `ca_pem`, the certificates of `chain_pem` (the client's first) presented with
/// `key_pem`. The error says which text was wrong.
pub fn mutual_config_from_pem(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{what}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{what}: no PEM certificate in it"));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(ca_pem, "the CA certificate")? {
        roots
            .add(ca)
            .map_err(|e| format!("the CA certificate: {e}"))?;
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the key: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(chain_pem, "the certificate")?, key)
        .map_err(|e| format!("the certificate and key: {e}"))?;
    Ok(std::sync::Arc::new(config))
}

/// TLS for a TCP endpoint: the client's configuration (roots, its certificate) and the name the
/// server's certificate must carry. Clones share the configuration: [`Tls::replace`] (a renewed
/// certificate, new roots) takes effect for every clone's next connection.
#[derive(Clone)]
pub struct Tls {
    config: std::sync::Arc<std::sync::RwLock<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>>,
    server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

impl Tls {
    /// TLS with `config`, the server checked under `server_name`.
    pub fn new(
        config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
        server_name: &str,
    ) -> Tls {
        Tls {
            config: std::sync::Arc::new(std::sync::RwLock::new(config)),
            server_name: tokio_rustls::rustls::pki_types::ServerName::try_from(
                server_name.to_owned(),
            )
            .unwrap_or_else(|_| {
                tokio_rustls::rustls::pki_types::ServerName::try_from("invalid.name")
                    .expect("a valid name")
            }),
        }
    }
}

impl Tls {
    /// Mutual TLS 1.3 from PEM texts: the server checked against the roots `ca_pem` and under
    /// `server_name`, the client's certificate (`cert_pem`, then what was issued with it) and
    /// its key presented.
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        server_name: &str,
    ) -> Result<Tls, String> {
        Ok(Tls::new(
            mutual_config_from_pem(ca_pem, cert_pem, key_pem)?,
            server_name,
        ))
    }

    /// Replaces the configuration of this and every clone, for their next connections.
    pub fn replace(&self, config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>) {
        *self.config.write().expect("tls lock") = config;
    }

    fn config(&self) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
        self.config.read().expect("tls lock").clone()
    }

    /// The TLS handshake over `stream`, bounded by [`CONNECT_TIMEOUT`].
    pub async fn wrap(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.config());
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            connector.connect(self.server_name.clone(), stream),
        )
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS handshake within {CONNECT_TIMEOUT:?}"),
            )
        })?
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A client. Clones share their idle connections: a request whose answer is read in full
/// leaves its connection for the next one (streams keep theirs). Connecting and waiting for an
/// answer are bounded ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`] unless
/// [`Client::with_timeout`]).
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    pool: std::sync::Arc<Pool>,
    /// Extra headers sent with every request (`X-Registry-Auth` for a pull).
    headers: Vec<(String, String)>,
    /// TLS over a TCP endpoint.
    tls: Option<Tls>,
}

/// The body of a response, read as it arrives.
pub type Incoming = hyper::body::Incoming;

impl Client {
    /// A client of the API at `endpoint`.
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            timeout: REQUEST_TIMEOUT,
            pool: Default::default(),
            headers: Vec::new(),
            tls: None,
        }
    }

    /// The same client speaking TLS over its TCP endpoint (`None`: plain).
    pub fn with_tls(mut self, tls: Option<Tls>) -> Client {
        self.tls = tls;
        self.pool = Default::default();
        self
    }

    /// The same client, sending the header `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: String) -> Client {
        self.headers.push((name.to_owned(), value));
        self
    }

    /// The same client with another bound on the wait for an answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Where it connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(hyper::Response<Incoming>, Sender), ClientError> {
        let body = Full::new(Bytes::from(body.unwrap_or_default()))
            .map_err(|never| match never {})
            .boxed_unsync();
        self.send_body(method, path, body).await
    }

    fn transport(&self, e: &dyn fmt::Display) -> ClientError {
        ClientError::Transport {
            endpoint: self.endpoint.to_string(),
            message: e.to_string(),
        }
    }

    fn timed_out(&self, what: &str, after: Duration) -> ClientError {
        ClientError::Transport {
            endpoint: self.endpoint.to_string(),
            message: format!("no {what} within {after:?}"),
        }
    }

    /// A new connection, its HTTP/1.1 handshake done.
    async fn connect(&self) -> Result<Sender, ClientError> {
        let connect_timeout = CONNECT_TIMEOUT.min(self.timeout);
        let connect_error = |error| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            error,
        };
        macro_rules! handshake {
            ($stream:expr) => {{
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                    .await
                    .map_err(|e| self.transport(&e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }};
        }
        Ok(match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream =
                    tokio::time::timeout(connect_timeout, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| self.timed_out("connection", connect_timeout))?
                        .map_err(connect_error)?;
                handshake!(stream)
            }
            Endpoint::Tcp(addr) => {
                let stream =
                    tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
                        .await
                        .map_err(|_| self.timed_out("connection", connect_timeout))?
                        .map_err(connect_error)?;
                stream.set_nodelay(true).ok();
                match &self.tls {
                    None => handshake!(stream),
                    Some(tls) => {
                        let connector = tokio_rustls::TlsConnector::from(tls.config());
                        let stream = tokio::time::timeout(
                            connect_timeout,
                            connector.connect(tls.server_name.clone(), stream),
                        )
                        .await
                        .map_err(|_| self.timed_out("TLS handshake", connect_timeout))?
                        .map_err(|e| self.transport(&format!("TLS: {e}")))?;
                        handshake!(stream)
                    }
                }
            }
        })
    }

    /// Sends a request on an idle connection if one is ready, else on a new one; returns the
    /// answer (its body unread) and the connection, which [`Client::decode`] gives back to the
    /// pool once the body is read.
    async fn send_body(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
    ) -> Result<(hyper::Response<Incoming>, Sender), ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "shoal")
            .header("content-type", "application/json");
        for (k, v) in &self.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let mut req = builder.body(body).map_err(|e| self.transport(&e))?;
        let timeout = self.timeout;
        if let Some(mut sender) = self.pool.take() {
            match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
                Err(_) => return Err(self.timed_out("answer", timeout)),
                Ok(Ok(resp)) => return self.check((resp, sender)).await,
                // The kept connection was closed before the request went out: it was not
                // sent, so it goes on a new connection (never twice).
                Ok(Err(mut e)) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(self.transport(e.error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let resp = tokio::time::timeout(timeout, sender.send_request(req))
            .await
            .map_err(|_| self.timed_out("answer", timeout))?
            .map_err(|e| self.transport(&e))?;
        self.check((resp, sender)).await
    }

    /// Turns an error status into [`ClientError::Api`] with the server's message.
    async fn check(
        &self,
        (resp, sender): (hyper::Response<Incoming>, Sender),
    ) -> Result<(hyper::Response<Incoming>, Sender), ClientError> {
        if resp.status().is_success() {
            return Ok((resp, sender));
        }
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(&e))?
            .to_bytes();
        self.pool.put(sender);
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.message)
            .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    /// Sends a request and decodes a JSON answer.
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request bodies serialize"));
        let answer = self.send(method, path, body).await?;
        self.decode(answer).await
    }

    /// POST raw bytes (an archive) and decode the JSON answer.
    pub async fn upload<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<R, ClientError> {
        let answer = self.send(Method::POST, path, Some(body)).await?;
        self.decode(answer).await
    }

    /// POST a file's bytes as they are read (an archive of any size) and decode the answer.
    pub async fn upload_file<R: DeserializeOwned>(
        &self,
        path: &str,
        file: tokio::fs::File,
    ) -> Result<R, ClientError> {
        let chunks = futures::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let body = BodyExt::boxed_unsync(StreamBody::new(chunks));
        let answer = self.send_body(Method::POST, path, body).await?;
        self.decode(answer).await
    }

    async fn decode<R: DeserializeOwned>(
        &self,
        answer: (hyper::Response<Incoming>, Sender),
    ) -> Result<R, ClientError> {
        let bytes = self.read_body(answer).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Reads an answer's body in full (bounded by the timeout) and keeps the connection.
    async fn read_body(
        &self,
        (resp, sender): (hyper::Response<Incoming>, Sender),
    ) -> Result<Bytes, ClientError> {
        let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| self.timed_out("whole answer", self.timeout))?
            .map_err(|e| self.transport(&e))?
            .to_bytes();
        self.pool.put(sender);
        Ok(bytes)
    }

    /// GET and decode.
    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call::<(), R>(Method::GET, path, None).await
    }

    /// POST a JSON body and decode the answer.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// POST (or DELETE) expecting no body back.
    pub async fn send_no_content<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request bodies serialize"));
        let answer = self.send(method, path, body).await?;
        self.read_body(answer).await.map(|_| ())
    }

    /// GET a streaming answer (`/v1/events`): its body, read frame by frame.
    pub async fn stream(&self, path: &str) -> Result<Incoming, ClientError> {
        // The connection goes with the stream and closes when it is dropped.
        Ok(self.send(Method::GET, path, None).await?.0.into_body())
    }

    /// POSTs (no body) and returns the answer's body to read as it arrives.
    pub async fn stream_post(&self, path: &str) -> Result<Incoming, ClientError> {
        Ok(self.send(Method::POST, path, None).await?.0.into_body())
    }

    /// POSTs a body that streams from `body` while the answer's body is read as it arrives
    /// (both at once: `container exec -i`).
    pub async fn stream_duplex(
        &self,
        path: &str,
        body: impl futures::Stream<Item = Bytes> + Send + 'static,
    ) -> Result<Incoming, ClientError> {
        use futures::StreamExt;
        let body = http_body_util::StreamBody::new(
            body.map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b))),
        )
        .boxed_unsync();
        Ok(self
            .send_body(Method::POST, path, body)
            .await?
            .0
            .into_body())
    }

    /// POSTs `body` as JSON and returns the answer's body to read as it arrives.
    pub async fn stream_post_json<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Incoming, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| self.transport(&e))?;
        Ok(self
            .send(Method::POST, path, Some(bytes))
            .await?
            .0
            .into_body())
    }
}

/// Reads newline-delimited JSON values from a streaming body.
#[derive(Debug)]
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// Wraps a body.
    pub fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
        }
    }

    /// The next value, or `None` at the end of the stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line[..line.len() - 1])
                    .map(Some)
                    .map_err(|e| ClientError::Decode(e.to_string()));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Transport {
                        endpoint: "stream".into(),
                        message: e.to_string(),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A server answering `{}` that counts its connections; with `close`, it closes each
    /// connection after one answer.
    async fn server(close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{}")));
                        if close {
                            resp.headers_mut()
                                .insert("connection", "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn answers_read_in_full_leave_their_connection_for_the_next_request() {
        let (addr, conns) = server(false).await;
        let c = Client::new(Endpoint::Tcp(addr));
        for _ in 0..5 {
            let _: serde_json::Value = c.clone().get("/").await.unwrap();
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_replaced_without_an_error() {
        let (addr, conns) = server(true).await;
        let c = Client::new(Endpoint::Tcp(addr));
        for _ in 0..3 {
            let _: serde_json::Value = c.get("/").await.unwrap();
            // Let the close arrive, as it would between two requests.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:///run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:2377".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:2377".into())
        );
        assert!("http://x".parse::<Endpoint>().is_err());
        assert!("tcp://nohost".parse::<Endpoint>().is_err());
    }
}
