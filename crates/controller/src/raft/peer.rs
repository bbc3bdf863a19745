//! Raft between managers over TCP, on the cluster port.
//!
//! Each manager keeps one long-lived connection to every other voter: an HTTP/1.1
//! `POST /v1/raft/stream` whose request body never ends and carries batches of Raft messages
//! (each a big-endian `u32` length and the protobuf bytes; everything queued when the
//! connection is free goes as one chunk). Messages flow one way on a connection, so two
//! managers hold two connections, one in each direction. A connection that fails (or whose
//! data stays unacknowledged for [`USER_TIMEOUT`], as when a link is cut) is reported to Raft
//! as unreachable and dialled again with back-off; what was queued meanwhile is dropped, which
//! Raft repairs by retrying. A snapshot is reported delivered once its batch was handed to the
//! connection, and failed when the connection broke first.
//!
//! Proposals made on a follower go to the leader through [`HttpForward`]
//! (`POST /v1/raft/propose`). Both run over plain TCP through [`connect`], the one place a TLS
//! layer wraps the stream.

use super::node::{Feedback, Forward, Proposal, ProposeError, RaftHandle, Transport};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use shoal_client::{Client, ClientError, Endpoint};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Path of the message stream on the cluster port.
pub const STREAM_PATH: &str = "/v1/raft/stream";
/// Path of forwarded proposals on the cluster port.
pub const PROPOSE_PATH: &str = "/v1/raft/propose";
/// Bound on connecting to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Data unacknowledged this long breaks a connection (TCP_USER_TIMEOUT), so a cut link is
/// noticed and the connection dialled again once it heals.
pub const USER_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages queued for one peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Largest frame accepted (a snapshot of a large store fits).
const MAX_FRAME: usize = 256 << 20;

/// Opens a TCP connection to another node of the cluster, bounded by [`CONNECT_TIMEOUT`],
/// with no Nagle delay and [`USER_TIMEOUT`].
pub async fn connect(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    Ok(stream)
}

/// Encodes messages as length-prefixed frames.
pub fn encode(msgs: &[Message]) -> Bytes {
    let mut out = BytesMut::new();
    for m in msgs {
        let bytes = m.write_to_bytes().expect("raft messages encode");
        out.put_u32(bytes.len() as u32);
        out.put_slice(&bytes);
    }
    out.freeze()
}

/// Takes the complete frames off the front of `buf`.
pub fn decode(buf: &mut BytesMut) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 4 {
            return Ok(out);
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "raft frame of {len} bytes is larger than {MAX_FRAME}"
            ));
        }
        if buf.len() < 4 + len {
            return Ok(out);
        }
        buf.advance(4);
        let frame = buf.split_to(len);
        out.push(Message::parse_from_bytes(&frame).map_err(|e| format!("raft frame: {e}"))?);
    }
}

/// Reads a peer's message stream and hands each message to Raft.
pub async fn serve_stream(raft: RaftHandle, body: axum::body::Body) {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return };
        buf.extend_from_slice(&chunk);
        match decode(&mut buf) {
            Ok(msgs) => {
                // Waits while Raft is busy: TCP pushes back on the sender, and nothing — a
                // snapshot least of all — is dropped on the floor.
                for m in msgs {
                    if raft.step_wait(m).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "raft stream closed");
                return;
            }
        }
    }
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Message>,
    stop: CancellationToken,
}

/// The TCP transport: one sending task and connection per peer.
#[derive(Debug)]
pub struct TcpTransport {
    peers: HashMap<u64, Peer>,
    /// The daemon's runtime, where the sending tasks run (not the Raft thread's).
    runtime: tokio::runtime::Handle,
    feedback_tx: mpsc::UnboundedSender<Feedback>,
    feedback_rx: Option<mpsc::UnboundedReceiver<Feedback>>,
    shutdown: CancellationToken,
    /// Mutual TLS to every peer (`None` only in tests of the transport itself).
    tls: Option<shoal_client::Tls>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("addr", &self.addr).finish()
    }
}

impl TcpTransport {
    /// A transport with no peers yet; its tasks end with `shutdown`. Every stream is mutual
    /// TLS with `tls` (this manager's certificate).
    pub fn new(shutdown: CancellationToken, tls: Option<shoal_client::Tls>) -> TcpTransport {
        let (feedback_tx, feedback_rx) = mpsc::unbounded_channel();
        TcpTransport {
            peers: HashMap::new(),
            runtime: tokio::runtime::Handle::current(),
            feedback_tx,
            feedback_rx: Some(feedback_rx),
            shutdown,
            tls,
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        for peer in self.peers.values() {
            peer.stop.cancel();
        }
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let Some(peer) = self.peers.get(&to) else {
                tracing::debug!(to, "raft message to an unknown peer dropped");
                continue;
            };
            if let Err(e) = peer.queue.try_send(m) {
                if let mpsc::error::TrySendError::Full(m) = e {
                    if m.get_msg_type() == MessageType::MsgSnapshot {
                        let _ = self.feedback_tx.send(Feedback::Snapshot(to, false));
                    }
                }
                let _ = self.feedback_tx.send(Feedback::Unreachable(to));
            }
        }
    }

    fn set_peers(&mut self, peers: &BTreeMap<u64, String>) {
        self.peers.retain(|id, p| {
            let keep = peers.get(id) == Some(&p.addr);
            if !keep {
                p.stop.cancel();
            }
            keep
        });
        for (id, addr) in peers {
            if self.peers.contains_key(id) || addr.is_empty() {
                continue;
            }
            let (queue, rx) = mpsc::channel(QUEUE);
            let stop = self.shutdown.child_token();
            self.runtime.spawn(send_loop(
                *id,
                addr.clone(),
                rx,
                self.feedback_tx.clone(),
                self.tls.clone(),
                stop.clone(),
            ));
            tracing::info!(raft_id = id, %addr, "raft peer added");
            self.peers.insert(
                *id,
                Peer {
                    addr: addr.clone(),
                    queue,
                    stop,
                },
            );
        }
    }

    fn feedback(&mut self) -> Option<mpsc::UnboundedReceiver<Feedback>> {
        self.feedback_rx.take()
    }
}

type BodyTx = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// Opens the message stream to a peer: the sender of its request body.
async fn open_stream(addr: &str, tls: Option<&shoal_client::Tls>) -> Result<BodyTx, String> {
    let stream = connect(addr).await.map_err(|e| e.to_string())?;
    match tls {
        Some(tls) => {
            let stream = tls.wrap(stream).await.map_err(|e| format!("TLS: {e}"))?;
            stream_over(stream).await
        }
        None => stream_over(stream).await,
    }
}

async fn stream_over<S>(stream: S) -> Result<BodyTx, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(STREAM_PATH)
        .header("host", "shoal")
        .header("content-type", "application/octet-stream")
        .body(body)
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tokio::spawn(async move {
        let _ = sender.send_request(req).await;
    });
    Ok(tx)
}

fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

async fn send_loop(
    id: u64,
    addr: String,
    mut queue: mpsc::Receiver<Message>,
    feedback: mpsc::UnboundedSender<Feedback>,
    tls: Option<shoal_client::Tls>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut logged = false;
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => return,
            r = open_stream(&addr, tls.as_ref()) => r,
        };
        let body = match body {
            Ok(body) => {
                backoff = Duration::from_millis(50);
                if logged {
                    tracing::info!(raft_id = id, %addr, "raft peer reachable again");
                    logged = false;
                }
                body
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(raft_id = id, %addr, error = %e, "raft peer unreachable");
                    logged = true;
                }
                let _ = feedback.send(Feedback::Unreachable(id));
                drop_queued(id, &mut queue, &feedback);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                m = queue.recv() => match m { Some(m) => m, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match queue.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let snapshots = batch
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                .count();
            let sent = tokio::select! {
                _ = stop.cancelled() => return,
                r = body.send(Ok(Frame::data(encode(&batch)))) => r.is_ok(),
            };
            for _ in 0..snapshots {
                let _ = feedback.send(Feedback::Snapshot(id, sent));
            }
            if !sent {
                tracing::debug!(raft_id = id, %addr, "raft stream broke; dialling again");
                let _ = feedback.send(Feedback::Unreachable(id));
                break;
            }
        }
    }
}

fn drop_queued(
    id: u64,
    queue: &mut mpsc::Receiver<Message>,
    feedback: &mpsc::UnboundedSender<Feedback>,
) {
    while let Ok(m) = queue.try_recv() {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let _ = feedback.send(Feedback::Snapshot(id, false));
        }
    }
}

/// The leader's answer to a forwarded proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// The revision the proposal applied at.
    pub revision: u64,
}

/// Forwards proposals to the leader over HTTP on the cluster port, keeping a client (and its
/// idle connections) per leader address.
#[derive(Debug)]
pub struct HttpForward {
    timeout: Duration,
    clients: std::sync::Mutex<HashMap<String, Client>>,
    tls: Option<shoal_client::Tls>,
}

impl HttpForward {
    /// Forwarding bounded by `timeout` per proposal.
    pub fn new(timeout: Duration, tls: Option<shoal_client::Tls>) -> HttpForward {
        HttpForward {
            timeout,
            tls,
            clients: Default::default(),
        }
    }

    fn client(&self, addr: &str) -> Client {
        self.clients
            .lock()
            .expect("clients lock")
            .entry(addr.to_owned())
            .or_insert_with(|| {
                Client::new(Endpoint::Tcp(addr.to_owned()))
                    .with_timeout(self.timeout)
                    .with_tls(self.tls.clone())
            })
            .clone()
    }
}

impl Forward for HttpForward {
    fn forward<'a>(
        &'a self,
        leader: u64,
        addr: &'a str,
        proposal: &'a Proposal,
    ) -> Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + 'a>> {
        Box::pin(async move {
            match self
                .client(addr)
                .post::<_, Forwarded>(PROPOSE_PATH, proposal)
                .await
            {
                Ok(f) => Ok(f.revision),
                Err(ClientError::Api { status, message }) => {
                    Err(ProposeError::Remote { status, message })
                }
                Err(e) => Err(ProposeError::Forward {
                    leader,
                    addr: addr.to_owned(),
                    message: e.to_string(),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let msgs: Vec<Message> = (1..=3)
            .map(|i| Message {
                to: i,
                from: 9,
                term: i * 10,
                ..Default::default()
            })
            .collect();
        let bytes = encode(&msgs);
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut got = decode(&mut buf).unwrap();
            buf.extend_from_slice(&bytes[split..]);
            got.extend(decode(&mut buf).unwrap());
            assert_eq!(got, msgs, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert!(decode(&mut buf).is_err());
    }
}
