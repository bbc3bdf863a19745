//! The resolver every container on a network asks (127.0.0.11:53 in its namespace, as
//! Docker's embedded DNS). It answers from the cluster state the manager sent: a service's
//! names (its own, its short name in its stack, its aliases) give its virtual IP, or its
//! running tasks' addresses with `endpoint_mode: dnsrr`; `tasks.NAME` gives the running tasks'
//! addresses. Other names are forwarded to the host's resolvers. Records carry a TTL of 0, and a
//! task that stops running leaves the answers as soon as the manager knows: there is no gossip
//! to wait for.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// The address the resolver listens on inside containers.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// How long a forwarded query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// What a name resolves to, for one container.
pub trait Lookup: Send + Sync + 'static {
    /// `Some(addresses)` for a cluster name (possibly empty: the service runs nothing now);
    /// `None` for a name the cluster does not know.
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>>;
}

/// Builds the answer to `query`, or `None` when it must be forwarded.
pub fn answer(query: &[u8], lookup: &dyn Lookup) -> Option<Vec<u8>> {
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return None,
    };
    let q = req.queries().first()?.clone();
    let name = q
        .name()
        .to_utf8()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let found = lookup.lookup(&name)?;
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(q.clone());
    if q.query_type() == RecordType::A {
        for ip in found {
            resp.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(ip))));
        }
    }
    // A cluster name with no address of the asked type (AAAA, or a service with no running
    // task) is NOERROR with no answer, so the client does not go on to search domains.
    resp.set_response_code(ResponseCode::NoError);
    resp.to_vec().ok()
}

/// A SERVFAIL answer to `query` (nothing to forward to, or the forward failed).
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_response_code(ResponseCode::ServFail);
    for q in req.queries() {
        resp.add_query(q.clone());
    }
    resp.to_vec().ok()
}

/// The host's resolvers, from its `/etc/resolv.conf` (loopback ones are the host's own and
/// unreachable from a container's namespace, so they are left out).
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// Serves queries on `socket` until it fails (the namespace went away) or the task is aborted.
pub async fn serve(socket: UdpSocket, lookup: Arc<dyn Lookup>, upstream: Vec<SocketAddr>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "resolver socket closed");
                return;
            }
        };
        let query = buf[..n].to_vec();
        if let Some(resp) = answer(&query, lookup.as_ref()) {
            let _ = socket.send_to(&resp, from).await;
            continue;
        }
        let socket = socket.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let resp = forward(&query, &upstream)
                .await
                .or_else(|| servfail(&query));
            if let Some(resp) = resp {
                let _ = socket.send_to(&resp, from).await;
            }
        });
    }
}

async fn forward(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let Ok(sock) = UdpSocket::bind("0.0.0.0:0").await else {
            continue;
        };
        if sock.send_to(query, server).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(FORWARD_TIMEOUT, sock.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    struct Fixed;
    impl Lookup for Fixed {
        fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
            match name {
                "web" => Some(vec![Ipv4Addr::new(10, 0, 1, 2)]),
                "tasks.web" => Some(vec![Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 1, 6)]),
                "idle" => Some(vec![]),
                _ => None,
            }
        }
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn addrs(resp: &[u8]) -> (ResponseCode, Vec<Ipv4Addr>) {
        let m = Message::from_vec(resp).unwrap();
        assert_eq!(m.id(), 7);
        let a = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                Some(RData::A(a)) => Some(a.0),
                _ => None,
            })
            .collect();
        (m.response_code(), a)
    }

    #[test]
    fn cluster_names_are_answered_and_others_forwarded() {
        let r = answer(&query("web.", RecordType::A), &Fixed).unwrap();
        assert_eq!(
            addrs(&r),
            (ResponseCode::NoError, vec![Ipv4Addr::new(10, 0, 1, 2)])
        );
        let r = answer(&query("TASKS.web.", RecordType::A), &Fixed).unwrap();
        assert_eq!(addrs(&r).1.len(), 2);
        let r = answer(&query("web.", RecordType::AAAA), &Fixed).unwrap();
        assert_eq!(addrs(&r), (ResponseCode::NoError, vec![]));
        let r = answer(&query("idle.", RecordType::A), &Fixed).unwrap();
        assert_eq!(addrs(&r), (ResponseCode::NoError, vec![]));
        assert!(answer(&query("example.org.", RecordType::A), &Fixed).is_none());
        let r = servfail(&query("example.org.", RecordType::A)).unwrap();
        assert_eq!(addrs(&r).0, ResponseCode::ServFail);
    }
}
