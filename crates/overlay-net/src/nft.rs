//! nftables through its own netlink protocol: a table described as data ([`Table`]), shown in
//! `nft`'s syntax (its `Display`, which is also what `nft list table` prints for it) and
//! loaded into a network namespace in one transaction ([`load`], [`remove`]).
//!
//! Only the vocabulary shoal's rules use is here ([`Match`], [`Action`]). Each item is encoded
//! as the kernel's expressions the way `nft` encodes it (the uapi is
//! `linux/netfilter/nf_tables.h`): no crate that speaks this protocol could be taken (rustables
//! and libnftnl are GPL, the others lack `numgen`, `fib`, maps and payload writes).
//!
//! A load is one netlink batch: the table is created if missing, deleted with everything in
//! it, and created again with its sets, chains and rules. The kernel applies the batch whole
//! or not at all, so a refused rule leaves the namespace's rules as they were.

use crate::NetError;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

/// A table of the `ip` family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its name.
    pub name: String,
    /// Named sets of IPv4 addresses.
    pub sets: Vec<Set>,
    /// Chains, in the order they are shown.
    pub chains: Vec<Chain>,
}

/// A named set of IPv4 addresses (`type ipv4_addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Its name.
    pub name: String,
    /// Its elements.
    pub elements: Vec<Ipv4Addr>,
}

/// A chain: a base chain when it has a hook, else one reached by `jump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Where packets enter it, for a base chain.
    pub hook: Option<Hook>,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// A base chain's type, hook and priority (policy accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `nat` or `filter`.
    pub kind: ChainKind,
    /// The netfilter hook.
    pub point: HookPoint,
    /// The priority (lower runs first).
    pub priority: i32,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// Address translation: sees the first packet of each connection.
    Nat,
    /// Every packet.
    Filter,
}

/// The netfilter hooks shoal uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// Packets arriving, before routing.
    Prerouting,
    /// Packets the namespace sends.
    Output,
    /// Packets leaving, after routing.
    Postrouting,
}

/// Priorities by their `nft` names.
pub mod priority {
    /// `raw`: before connection tracking.
    pub const RAW: i32 = -300;
    /// `mangle`.
    pub const MANGLE: i32 = -150;
    /// `dstnat`.
    pub const DSTNAT: i32 = -100;
    /// `filter`.
    pub const FILTER: i32 = 0;
    /// `srcnat`.
    pub const SRCNAT: i32 = 100;
}

/// A rule: every match must hold, then the actions run in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What the packet must be.
    pub matches: Vec<Match>,
    /// What is done to it.
    pub actions: Vec<Action>,
}

impl Rule {
    /// A rule of `matches` and `actions`.
    pub fn new(matches: Vec<Match>, actions: Vec<Action>) -> Rule {
        Rule { matches, actions }
    }
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// From a stack file's spelling: `udp`, else TCP.
    pub fn parse(s: &str) -> Proto {
        if s == "udp" {
            Proto::Udp
        } else {
            Proto::Tcp
        }
    }

    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// What a packet must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `ip daddr A`.
    Daddr(Ipv4Addr),
    /// `ip saddr A/N`.
    SaddrIn(Ipv4Addr, u8),
    /// `ip saddr @SET`.
    SaddrInSet(String),
    /// `ip dscp D`.
    Dscp(u8),
    /// `meta l4proto P`.
    L4proto(Proto),
    /// `P dport N` (with its `meta l4proto P` dependency).
    Dport(Proto, u16),
    /// `fib daddr type local`: sent to one of the namespace's own addresses.
    DaddrLocal,
    /// `oifname != "NAME"`.
    OifnameNot(String),
    /// `meta mark M`.
    Mark(u32),
}

/// What is done to a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `dnat to A` or `dnat to A:P`.
    Dnat(Ipv4Addr, Option<u16>),
    /// `dnat to numgen random mod N map { 0 : A, … }`: one address at random per
    /// connection.
    DnatRandom(Vec<Ipv4Addr>),
    /// `reject`: ICMP port unreachable, so a connect fails at once.
    Reject,
    /// `jump CHAIN`.
    Jump(String),
    /// `numgen random mod N vmap { 0 : jump C, … }`: one chain at random per connection.
    JumpRandom(Vec<String>),
    /// `masquerade`.
    Masquerade,
    /// `meta mark set M`.
    SetMark(u32),
    /// `ip dscp set D` (ECN bits kept, header checksum updated).
    SetDscp(u8),
    /// `notrack`: no connection tracking.
    Notrack,
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Daddr(a) => write!(f, "ip daddr {a}"),
            Match::SaddrIn(a, n) => write!(f, "ip saddr {a}/{n}"),
            Match::SaddrInSet(s) => write!(f, "ip saddr @{s}"),
            Match::Dscp(d) => write!(f, "ip dscp {d:#x}"),
            Match::L4proto(p) => write!(f, "meta l4proto {p}"),
            Match::Dport(p, n) => write!(f, "{p} dport {n}"),
            Match::DaddrLocal => f.write_str("fib daddr type local"),
            Match::OifnameNot(n) => write!(f, "oifname != \"{n}\""),
            Match::Mark(m) => write!(f, "meta mark {m:#010x}"),
        }
    }
}

/// `{ 0 : a, 1 : b }`.
fn numbered<T: fmt::Display>(items: &[T], prefix: &str) -> String {
    let items: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{i} : {prefix}{t}"))
        .collect();
    format!("{{ {} }}", items.join(", "))
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Dnat(a, None) => write!(f, "dnat to {a}"),
            Action::Dnat(a, Some(p)) => write!(f, "dnat to {a}:{p}"),
            Action::DnatRandom(to) => write!(
                f,
                "dnat to numgen random mod {} map {}",
                to.len(),
                numbered(to, "")
            ),
            Action::Reject => f.write_str("reject"),
            Action::Jump(c) => write!(f, "jump {c}"),
            Action::JumpRandom(to) => write!(
                f,
                "numgen random mod {} vmap {}",
                to.len(),
                numbered(to, "jump ")
            ),
            Action::Masquerade => f.write_str("masquerade"),
            Action::SetMark(m) => write!(f, "meta mark set {m:#010x}"),
            Action::SetDscp(d) => write!(f, "ip dscp set {d:#x}"),
            Action::Notrack => f.write_str("notrack"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self
            .matches
            .iter()
            .map(ToString::to_string)
            .chain(self.actions.iter().map(ToString::to_string))
            .collect();
        f.write_str(&words.join(" "))
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ChainKind::Nat => "nat",
            ChainKind::Filter => "filter",
        };
        let point = match self.point {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Output => "output",
            HookPoint::Postrouting => "postrouting",
        };
        // As nft names them: dstnat and srcnat only at the hooks they are meant for.
        let named = [
            (priority::RAW, "raw", None),
            (priority::MANGLE, "mangle", None),
            (priority::DSTNAT, "dstnat", Some(HookPoint::Prerouting)),
            (priority::FILTER, "filter", None),
            (priority::SRCNAT, "srcnat", Some(HookPoint::Postrouting)),
        ];
        let name = named
            .iter()
            .find(|(p, _, at)| *p == self.priority && at.map_or(true, |at| at == self.point));
        match name {
            Some((_, name, _)) => write!(
                f,
                "type {kind} hook {point} priority {name}; policy accept;"
            ),
            None => write!(
                f,
                "type {kind} hook {point} priority {}; policy accept;",
                self.priority
            ),
        }
    }
}

/// The table as an `nft -f` script.
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table ip {} {{", self.name)?;
        for s in &self.sets {
            write!(f, "\tset {} {{\n\t\ttype ipv4_addr\n", s.name)?;
            if !s.elements.is_empty() {
                let e: Vec<String> = s.elements.iter().map(ToString::to_string).collect();
                writeln!(f, "\t\telements = {{ {} }}", e.join(", "))?;
            }
            writeln!(f, "\t}}")?;
        }
        for c in &self.chains {
            writeln!(f, "\tchain {} {{", c.name)?;
            if let Some(h) = &c.hook {
                writeln!(f, "\t\t{h}")?;
            }
            for r in &c.rules {
                writeln!(f, "\t\t{r}")?;
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "}}")
    }
}

/// A netlink socket to nf_tables, opened inside one network namespace and bound to it for its
/// life: loads through it need no thread entering the namespace. Loads through one socket are
/// taken one at a time.
#[derive(Debug)]
pub struct Conn {
    socket: std::sync::Mutex<netlink_sys::Socket>,
}

impl Conn {
    /// Opens a socket inside the namespace at `netns`.
    pub fn open_in(netns: &Path) -> Result<Conn, NetError> {
        let socket = crate::netns::blocking_in(netns, open_socket)?;
        Ok(Conn {
            socket: std::sync::Mutex::new(socket),
        })
    }

    /// Replaces the table `table.name` by `table`, in one transaction.
    pub fn load(&self, table: &Table) -> Result<(), NetError> {
        self.send(encode(&table.name, Some(table)))
    }

    /// Removes the table `name`, if it is there.
    pub fn remove(&self, name: &str) -> Result<(), NetError> {
        self.send(encode(name, None))
    }

    fn send(&self, batch: Batch) -> Result<(), NetError> {
        let socket = self.socket.lock().expect("nftables socket lock");
        match batch.talk(&socket) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(NetError::Nft(why)),
            Err(e) => Err(NetError::io("talking to nf_tables")(e)),
        }
    }
}

fn open_socket() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    // Errors with the kernel's own words, without the request echoed back.
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);
    Ok(socket)
}

/// Replaces the table `table.name` inside the namespace at `netns` by `table`, in one
/// transaction (a socket opened for this load only).
pub fn load(netns: &Path, table: &Table) -> Result<(), NetError> {
    Conn::open_in(netns)?.load(table)
}

/// Removes the table `name` inside the namespace at `netns`, if it is there.
pub fn remove(netns: &Path, name: &str) -> Result<(), NetError> {
    Conn::open_in(netns)?.remove(name)
}

// The kernel's numbers (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h).
mod sys {
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const NLM_F_APPEND: u16 = 0x800;
    pub const NLM_F_ACK_TLVS: u16 = 0x200;
    pub const NLMSG_ERROR: u16 = 0x2;
    pub const NLMSGERR_ATTR_MSG: u16 = 1;
    pub const NLA_F_NESTED: u16 = 0x8000;

    pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    pub const NFNL_MSG_BATCH_END: u16 = 0x11;
    pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
    pub const NFPROTO_IPV4: u8 = 2;

    pub const NFT_MSG_NEWTABLE: u16 = 0;
    pub const NFT_MSG_DELTABLE: u16 = 2;
    pub const NFT_MSG_NEWCHAIN: u16 = 3;
    pub const NFT_MSG_NEWRULE: u16 = 6;
    pub const NFT_MSG_NEWSET: u16 = 9;
    pub const NFT_MSG_NEWSETELEM: u16 = 12;

    pub const NFTA_TABLE_NAME: u16 = 1;
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    pub const NFTA_CHAIN_NAME: u16 = 3;
    pub const NFTA_CHAIN_HOOK: u16 = 4;
    pub const NFTA_CHAIN_POLICY: u16 = 5;
    pub const NFTA_CHAIN_TYPE: u16 = 7;
    pub const NFTA_HOOK_HOOKNUM: u16 = 1;
    pub const NFTA_HOOK_PRIORITY: u16 = 2;
    pub const NFTA_RULE_TABLE: u16 = 1;
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_EXPR_NAME: u16 = 1;
    pub const NFTA_EXPR_DATA: u16 = 2;

    pub const NFTA_SET_TABLE: u16 = 1;
    pub const NFTA_SET_NAME: u16 = 2;
    pub const NFTA_SET_FLAGS: u16 = 3;
    pub const NFTA_SET_KEY_TYPE: u16 = 4;
    pub const NFTA_SET_KEY_LEN: u16 = 5;
    pub const NFTA_SET_DATA_TYPE: u16 = 6;
    pub const NFTA_SET_DATA_LEN: u16 = 7;
    pub const NFTA_SET_ID: u16 = 10;
    pub const NFTA_SET_USERDATA: u16 = 13;
    pub const NFT_SET_ANONYMOUS: u32 = 0x1;
    pub const NFT_SET_CONSTANT: u32 = 0x2;
    pub const NFT_SET_MAP: u32 = 0x8;
    pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_SET_ELEM_DATA: u16 = 2;
    pub const NFTA_DATA_VALUE: u16 = 1;
    pub const NFTA_DATA_VERDICT: u16 = 2;
    pub const NFTA_VERDICT_CODE: u16 = 1;
    pub const NFTA_VERDICT_CHAIN: u16 = 2;
    pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
    /// nft's datatypes, kept in a set so `nft list` shows its elements.
    pub const TYPE_INTEGER: u32 = 4;
    pub const TYPE_IPADDR: u32 = 7;
    /// nft's user data: the key is in host byte order (numgen's output).
    pub const UDATA_SET_KEYBYTEORDER: u8 = 0;
    pub const BYTEORDER_HOST_ENDIAN: u32 = 1;

    pub const NFT_REG_VERDICT: u32 = 0;
    pub const NFT_REG_1: u32 = 1;
    pub const NFT_REG_2: u32 = 2;
    pub const NFT_JUMP: i32 = -3;
    pub const NF_ACCEPT: u32 = 1;

    pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
    pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
    pub const NFT_PAYLOAD_CSUM_INET: u32 = 1;
    pub const NFTA_PAYLOAD_DREG: u16 = 1;
    pub const NFTA_PAYLOAD_BASE: u16 = 2;
    pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
    pub const NFTA_PAYLOAD_LEN: u16 = 4;
    pub const NFTA_PAYLOAD_SREG: u16 = 5;
    pub const NFTA_PAYLOAD_CSUM_TYPE: u16 = 6;
    pub const NFTA_PAYLOAD_CSUM_OFFSET: u16 = 7;
    pub const NFTA_CMP_SREG: u16 = 1;
    pub const NFTA_CMP_OP: u16 = 2;
    pub const NFTA_CMP_DATA: u16 = 3;
    pub const NFT_CMP_EQ: u32 = 0;
    pub const NFT_CMP_NEQ: u32 = 1;
    pub const NFTA_BITWISE_SREG: u16 = 1;
    pub const NFTA_BITWISE_DREG: u16 = 2;
    pub const NFTA_BITWISE_LEN: u16 = 3;
    pub const NFTA_BITWISE_MASK: u16 = 4;
    pub const NFTA_BITWISE_XOR: u16 = 5;
    pub const NFTA_META_DREG: u16 = 1;
    pub const NFTA_META_KEY: u16 = 2;
    pub const NFTA_META_SREG: u16 = 3;
    pub const NFT_META_MARK: u32 = 3;
    pub const NFT_META_OIFNAME: u32 = 7;
    pub const NFT_META_L4PROTO: u32 = 16;
    pub const NFTA_IMMEDIATE_DREG: u16 = 1;
    pub const NFTA_IMMEDIATE_DATA: u16 = 2;
    pub const NFTA_LOOKUP_SET: u16 = 1;
    pub const NFTA_LOOKUP_SREG: u16 = 2;
    pub const NFTA_LOOKUP_DREG: u16 = 3;
    pub const NFTA_LOOKUP_SET_ID: u16 = 4;
    pub const NFTA_NG_DREG: u16 = 1;
    pub const NFTA_NG_MODULUS: u16 = 2;
    pub const NFTA_NG_TYPE: u16 = 3;
    pub const NFT_NG_RANDOM: u32 = 1;
    pub const NFTA_NAT_TYPE: u16 = 1;
    pub const NFTA_NAT_FAMILY: u16 = 2;
    pub const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
    pub const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
    pub const NFT_NAT_DNAT: u32 = 1;
    pub const NFTA_REJECT_TYPE: u16 = 1;
    pub const NFTA_REJECT_ICMP_CODE: u16 = 2;
    pub const NFT_REJECT_ICMP_UNREACH: u32 = 0;
    pub const ICMP_PORT_UNREACH: u8 = 3;
    pub const NFTA_FIB_DREG: u16 = 1;
    pub const NFTA_FIB_RESULT: u16 = 2;
    pub const NFTA_FIB_FLAGS: u16 = 3;
    pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
    pub const NFTA_FIB_F_DADDR: u32 = 2;
    pub const RTN_LOCAL: u32 = 2;
}

/// One netlink message under construction: header, `nfgenmsg`, attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `done`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        let len = u16::try_from(4 + data.len()).expect("attribute under 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Msg {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    /// A 32-bit attribute, in network byte order as nf_tables wants.
    fn u32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_be_bytes())
    }

    fn begin(&mut self, kind: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | sys::NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Msg {
        let at = self.nests.pop().expect("a nest to end");
        let len = u16::try_from(self.buf.len() - at).expect("attribute under 64 KiB");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// `kind { NFTA_DATA_VALUE: data }`.
    fn value(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        self.begin(kind).attr(sys::NFTA_DATA_VALUE, data).end()
    }

    /// `kind { NFTA_DATA_VERDICT: { jump chain } }`.
    fn jump(&mut self, kind: u16, chain: &str) -> &mut Msg {
        self.begin(kind)
            .begin(sys::NFTA_DATA_VERDICT)
            .u32(sys::NFTA_VERDICT_CODE, sys::NFT_JUMP as u32)
            .str(sys::NFTA_VERDICT_CHAIN, chain)
            .end()
            .end()
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { name, data { … } }`.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Msg)) -> &mut Msg {
        self.begin(sys::NFTA_LIST_ELEM)
            .str(sys::NFTA_EXPR_NAME, name)
            .begin(sys::NFTA_EXPR_DATA);
        data(self);
        self.end().end()
    }

    fn done(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "every nest ended");
        let len = u32::try_from(self.buf.len()).expect("message under 4 GiB");
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// The messages of one transaction, and what each one does (for errors).
struct Batch {
    buf: Vec<u8>,
    what: Vec<(u32, String)>,
    next_set: u32,
    /// Where the last message pushed starts.
    last: usize,
}

impl Batch {
    fn new() -> Batch {
        let mut b = Batch {
            buf: Vec::new(),
            what: Vec::new(),
            next_set: 1,
            last: 0,
        };
        let m = Msg::new(
            sys::NFNL_MSG_BATCH_BEGIN,
            sys::NLM_F_REQUEST,
            0,
            0,
            sys::NFNL_SUBSYS_NFTABLES,
        );
        b.buf.extend(m.done());
        b
    }

    /// Starts an nf_tables message; `what` names it in errors.
    fn msg(&mut self, cmd: u16, flags: u16, what: String) -> Msg {
        let seq = self.what.len() as u32 + 1;
        self.what.push((seq, what));
        Msg::new(
            (sys::NFNL_SUBSYS_NFTABLES << 8) | cmd,
            sys::NLM_F_REQUEST | flags,
            seq,
            sys::NFPROTO_IPV4,
            0,
        )
    }

    fn push(&mut self, m: Msg) {
        self.last = self.buf.len();
        self.buf.extend(m.done());
    }

    /// Ends the batch. Only its last message asks for an acknowledgement: the kernel reports
    /// every refused message whether asked or not, and an acknowledgement per message would
    /// overflow the socket's buffer on a large table.
    fn finish(&mut self) {
        let at = self.last + 6;
        let flags = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]) | sys::NLM_F_ACK;
        self.buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
        let seq = self.what.len() as u32 + 1;
        let m = Msg::new(
            sys::NFNL_MSG_BATCH_END,
            sys::NLM_F_REQUEST,
            seq,
            0,
            sys::NFNL_SUBSYS_NFTABLES,
        );
        self.buf.extend(m.done());
    }

    /// An anonymous constant map from 0..n (numgen's output) to `values`; returns its name
    /// and id for the rule that looks it up.
    fn numbered_map(&mut self, table: &str, values: &[MapValue<'_>]) -> (String, u32) {
        let id = self.next_set;
        self.next_set += 1;
        let name = "__map%d".to_owned();
        let verdicts = matches!(values.first(), Some(MapValue::Jump(_)));
        let mut m = self.msg(
            sys::NFT_MSG_NEWSET,
            sys::NLM_F_CREATE,
            format!("a map of {} entries", values.len()),
        );
        let mut udata = vec![sys::UDATA_SET_KEYBYTEORDER, 4];
        udata.extend_from_slice(&sys::BYTEORDER_HOST_ENDIAN.to_ne_bytes());
        m.str(sys::NFTA_SET_TABLE, table)
            .str(sys::NFTA_SET_NAME, &name)
            .u32(
                sys::NFTA_SET_FLAGS,
                sys::NFT_SET_ANONYMOUS | sys::NFT_SET_CONSTANT | sys::NFT_SET_MAP,
            )
            .u32(sys::NFTA_SET_KEY_TYPE, sys::TYPE_INTEGER)
            .u32(sys::NFTA_SET_KEY_LEN, 4);
        if verdicts {
            m.u32(sys::NFTA_SET_DATA_TYPE, sys::NFT_DATA_VERDICT);
        } else {
            m.u32(sys::NFTA_SET_DATA_TYPE, sys::TYPE_IPADDR)
                .u32(sys::NFTA_SET_DATA_LEN, 4);
        }
        m.u32(sys::NFTA_SET_ID, id)
            .attr(sys::NFTA_SET_USERDATA, &udata);
        self.push(m);

        let mut m = self.msg(
            sys::NFT_MSG_NEWSETELEM,
            sys::NLM_F_CREATE,
            format!("the entries of a map of {}", values.len()),
        );
        m.str(sys::NFTA_SET_ELEM_LIST_TABLE, table)
            .str(sys::NFTA_SET_ELEM_LIST_SET, &name)
            .u32(sys::NFTA_SET_ELEM_LIST_SET_ID, id)
            .begin(sys::NFTA_SET_ELEM_LIST_ELEMENTS);
        for (i, v) in values.iter().enumerate() {
            m.begin(sys::NFTA_LIST_ELEM)
                .value(sys::NFTA_SET_ELEM_KEY, &(i as u32).to_ne_bytes());
            match v {
                MapValue::Addr(a) => m.value(sys::NFTA_SET_ELEM_DATA, &a.octets()),
                MapValue::Jump(c) => m.jump(sys::NFTA_SET_ELEM_DATA, c),
            };
            m.end();
        }
        m.end();
        self.push(m);
        (name, id)
    }

    /// Sends the batch through `socket`; `Some(reason)` when the kernel refused it (then
    /// nothing of it was applied).
    fn talk(mut self, socket: &netlink_sys::Socket) -> std::io::Result<Option<String>> {
        self.finish();
        // Answers a failed earlier exchange left behind are not this batch's.
        let mut buf = vec![0u8; 64 * 1024];
        while socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT).is_ok() {}
        // The batch goes in one message, which must fit the socket's send buffer (as nft
        // does, it is made large enough; root may exceed the system's limit).
        let need = self.buf.len() + 4096;
        {
            use nix::sys::socket::{getsockopt, setsockopt, sockopt};
            let fd = std::os::fd::AsFd::as_fd(socket);
            if getsockopt(&fd, sockopt::SndBuf).is_ok_and(|have| have < 2 * need) {
                setsockopt(&fd, sockopt::SndBufForce, &need)
                    .or_else(|_| setsockopt(&fd, sockopt::SndBuf, &need))
                    .map_err(std::io::Error::from)?;
            }
        }
        socket.send(&self.buf, 0)?;
        // The kernel handles the batch inside the send: every answer is queued by now.
        let last = self.what.len() as u32;
        let mut refused = Vec::new();
        let mut acked_last = false;
        loop {
            let n = match socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let mut at = 0;
            while at + 16 <= n {
                let (len, kind, flags, seq) = header(&buf[at..n]);
                let end = (at + len).min(n);
                if kind == sys::NLMSG_ERROR && at + 20 <= end {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4"));
                    if code == 0 {
                        acked_last |= seq == last;
                    } else {
                        let what = self
                            .what
                            .iter()
                            .find(|(s, _)| *s == seq)
                            .map_or("the batch", |(_, w)| w.as_str());
                        let err = std::io::Error::from_raw_os_error(-code);
                        let detail = (flags & sys::NLM_F_ACK_TLVS != 0)
                            .then(|| ext_ack_message(&buf[(at + 36).min(end)..end]))
                            .flatten()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default();
                        refused.push(format!("{what}: {err}{detail}"));
                    }
                }
                if len < 16 {
                    break;
                }
                at += (len + 3) & !3;
            }
        }
        if !refused.is_empty() {
            return Ok(Some(format!(
                "the kernel refused the rules, so none changed: {}",
                refused.join("; ")
            )));
        }
        if !acked_last {
            return Ok(Some(
                "the kernel did not confirm the rules (is nf_tables in this kernel?)".into(),
            ));
        }
        Ok(None)
    }
}

/// (length, type, flags, sequence) of the netlink header at the start of `b`.
fn header(b: &[u8]) -> (usize, u16, u16, u32) {
    let len = u32::from_ne_bytes(b[0..4].try_into().expect("4")) as usize;
    let kind = u16::from_ne_bytes(b[4..6].try_into().expect("2"));
    let flags = u16::from_ne_bytes(b[6..8].try_into().expect("2"));
    let seq = u32::from_ne_bytes(b[8..12].try_into().expect("4"));
    (len, kind, flags, seq)
}

/// The `NLMSGERR_ATTR_MSG` text among an error's extended-ack attributes.
fn ext_ack_message(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & !sys::NLA_F_NESTED;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == sys::NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = &tlvs[((len + 3) & !3).min(tlvs.len())..];
    }
    None
}

enum MapValue<'a> {
    Addr(Ipv4Addr),
    Jump(&'a str),
}

/// The transaction that replaces table `name` by `table` (or removes it, for `None`).
fn encode(name: &str, table: Option<&Table>) -> Batch {
    let mut b = Batch::new();
    // Create it if missing, so that deleting it cannot fail; then delete it.
    let mut m = b.msg(
        sys::NFT_MSG_NEWTABLE,
        sys::NLM_F_CREATE,
        format!("table ip {name}"),
    );
    m.str(sys::NFTA_TABLE_NAME, name);
    b.push(m);
    let mut m = b.msg(sys::NFT_MSG_DELTABLE, 0, format!("delete table ip {name}"));
    m.str(sys::NFTA_TABLE_NAME, name);
    b.push(m);
    let Some(table) = table else { return b };

    let mut m = b.msg(
        sys::NFT_MSG_NEWTABLE,
        sys::NLM_F_CREATE,
        format!("table ip {name}"),
    );
    m.str(sys::NFTA_TABLE_NAME, name);
    b.push(m);
    for s in &table.sets {
        let id = b.next_set;
        b.next_set += 1;
        let mut m = b.msg(
            sys::NFT_MSG_NEWSET,
            sys::NLM_F_CREATE,
            format!("set {}", s.name),
        );
        m.str(sys::NFTA_SET_TABLE, name)
            .str(sys::NFTA_SET_NAME, &s.name)
            .u32(sys::NFTA_SET_FLAGS, 0)
            .u32(sys::NFTA_SET_KEY_TYPE, sys::TYPE_IPADDR)
            .u32(sys::NFTA_SET_KEY_LEN, 4)
            .u32(sys::NFTA_SET_ID, id);
        b.push(m);
        if s.elements.is_empty() {
            continue;
        }
        let mut m = b.msg(
            sys::NFT_MSG_NEWSETELEM,
            sys::NLM_F_CREATE,
            format!("the elements of set {}", s.name),
        );
        m.str(sys::NFTA_SET_ELEM_LIST_TABLE, name)
            .str(sys::NFTA_SET_ELEM_LIST_SET, &s.name)
            .u32(sys::NFTA_SET_ELEM_LIST_SET_ID, id)
            .begin(sys::NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in &s.elements {
            m.begin(sys::NFTA_LIST_ELEM)
                .value(sys::NFTA_SET_ELEM_KEY, &e.octets())
                .end();
        }
        m.end();
        b.push(m);
    }
    // Every chain before any rule, so that jumps find their targets.
    for c in &table.chains {
        let mut m = b.msg(
            sys::NFT_MSG_NEWCHAIN,
            sys::NLM_F_CREATE,
            format!("chain {}", c.name),
        );
        m.str(sys::NFTA_CHAIN_TABLE, name)
            .str(sys::NFTA_CHAIN_NAME, &c.name);
        if let Some(h) = &c.hook {
            let point = match h.point {
                HookPoint::Prerouting => 0,
                HookPoint::Output => 3,
                HookPoint::Postrouting => 4,
            };
            m.begin(sys::NFTA_CHAIN_HOOK)
                .u32(sys::NFTA_HOOK_HOOKNUM, point)
                .u32(sys::NFTA_HOOK_PRIORITY, h.priority as u32)
                .end()
                .u32(sys::NFTA_CHAIN_POLICY, sys::NF_ACCEPT)
                .str(
                    sys::NFTA_CHAIN_TYPE,
                    match h.kind {
                        ChainKind::Nat => "nat",
                        ChainKind::Filter => "filter",
                    },
                );
        }
        b.push(m);
    }
    for c in &table.chains {
        for r in &c.rules {
            rule(&mut b, name, &c.name, r);
        }
    }
    b
}

/// The messages of one rule: the maps it looks up, then the rule.
fn rule(b: &mut Batch, table: &str, chain: &str, r: &Rule) {
    // Maps first: a rule can only name a map that exists.
    let maps: Vec<(String, u32)> = r
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DnatRandom(to) => {
                let v: Vec<MapValue<'_>> = to.iter().map(|a| MapValue::Addr(*a)).collect();
                Some(b.numbered_map(table, &v))
            }
            Action::JumpRandom(to) => {
                let v: Vec<MapValue<'_>> = to.iter().map(|c| MapValue::Jump(c)).collect();
                Some(b.numbered_map(table, &v))
            }
            _ => None,
        })
        .collect();
    let mut maps = maps.into_iter();
    let mut m = b.msg(
        sys::NFT_MSG_NEWRULE,
        sys::NLM_F_CREATE | sys::NLM_F_APPEND,
        format!("rule `{r}` in chain {chain}"),
    );
    m.str(sys::NFTA_RULE_TABLE, table)
        .str(sys::NFTA_RULE_CHAIN, chain)
        .begin(sys::NFTA_RULE_EXPRESSIONS);
    for x in &r.matches {
        encode_match(&mut m, x);
    }
    for a in &r.actions {
        encode_action(&mut m, a, &mut maps);
    }
    m.end();
    b.push(m);
}

fn payload(m: &mut Msg, base: u32, offset: u32, len: u32) {
    m.expr("payload", |m| {
        m.u32(sys::NFTA_PAYLOAD_DREG, sys::NFT_REG_1)
            .u32(sys::NFTA_PAYLOAD_BASE, base)
            .u32(sys::NFTA_PAYLOAD_OFFSET, offset)
            .u32(sys::NFTA_PAYLOAD_LEN, len);
    });
}

fn cmp(m: &mut Msg, op: u32, data: &[u8]) {
    m.expr("cmp", |m| {
        m.u32(sys::NFTA_CMP_SREG, sys::NFT_REG_1)
            .u32(sys::NFTA_CMP_OP, op)
            .value(sys::NFTA_CMP_DATA, data);
    });
}

fn bitwise(m: &mut Msg, mask: &[u8], xor: &[u8]) {
    m.expr("bitwise", |m| {
        m.u32(sys::NFTA_BITWISE_SREG, sys::NFT_REG_1)
            .u32(sys::NFTA_BITWISE_DREG, sys::NFT_REG_1)
            .u32(sys::NFTA_BITWISE_LEN, mask.len() as u32)
            .value(sys::NFTA_BITWISE_MASK, mask)
            .value(sys::NFTA_BITWISE_XOR, xor);
    });
}

fn meta(m: &mut Msg, key: u32) {
    m.expr("meta", |m| {
        m.u32(sys::NFTA_META_KEY, key)
            .u32(sys::NFTA_META_DREG, sys::NFT_REG_1);
    });
}

fn immediate(m: &mut Msg, reg: u32, data: &[u8]) {
    m.expr("immediate", |m| {
        m.u32(sys::NFTA_IMMEDIATE_DREG, reg)
            .value(sys::NFTA_IMMEDIATE_DATA, data);
    });
}

fn numgen(m: &mut Msg, modulus: usize) {
    m.expr("numgen", |m| {
        m.u32(sys::NFTA_NG_DREG, sys::NFT_REG_1)
            .u32(sys::NFTA_NG_MODULUS, modulus as u32)
            .u32(sys::NFTA_NG_TYPE, sys::NFT_NG_RANDOM);
    });
}

fn lookup(m: &mut Msg, set: &str, id: Option<u32>, dreg: Option<u32>) {
    m.expr("lookup", |m| {
        m.str(sys::NFTA_LOOKUP_SET, set)
            .u32(sys::NFTA_LOOKUP_SREG, sys::NFT_REG_1);
        if let Some(d) = dreg {
            m.u32(sys::NFTA_LOOKUP_DREG, d);
        }
        if let Some(id) = id {
            m.u32(sys::NFTA_LOOKUP_SET_ID, id);
        }
    });
}

fn dnat(m: &mut Msg, port: bool) {
    m.expr("nat", |m| {
        m.u32(sys::NFTA_NAT_TYPE, sys::NFT_NAT_DNAT)
            .u32(sys::NFTA_NAT_FAMILY, u32::from(sys::NFPROTO_IPV4))
            .u32(sys::NFTA_NAT_REG_ADDR_MIN, sys::NFT_REG_1);
        if port {
            m.u32(sys::NFTA_NAT_REG_PROTO_MIN, sys::NFT_REG_2);
        }
    });
}

fn encode_match(m: &mut Msg, x: &Match) {
    const NET: u32 = sys::NFT_PAYLOAD_NETWORK_HEADER;
    match x {
        Match::Daddr(a) => {
            payload(m, NET, 16, 4);
            cmp(m, sys::NFT_CMP_EQ, &a.octets());
        }
        Match::SaddrIn(a, n) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(*n)).unwrap_or(0);
            payload(m, NET, 12, 4);
            bitwise(m, &mask.to_be_bytes(), &[0; 4]);
            cmp(m, sys::NFT_CMP_EQ, &(u32::from(*a) & mask).to_be_bytes());
        }
        Match::SaddrInSet(s) => {
            payload(m, NET, 12, 4);
            lookup(m, s, None, None);
        }
        Match::Dscp(d) => {
            payload(m, NET, 1, 1);
            bitwise(m, &[0xfc], &[0]);
            cmp(m, sys::NFT_CMP_EQ, &[d << 2]);
        }
        Match::L4proto(p) => {
            meta(m, sys::NFT_META_L4PROTO);
            cmp(m, sys::NFT_CMP_EQ, &[p.number()]);
        }
        Match::Dport(p, port) => {
            encode_match(m, &Match::L4proto(*p));
            payload(m, sys::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            cmp(m, sys::NFT_CMP_EQ, &port.to_be_bytes());
        }
        Match::DaddrLocal => {
            m.expr("fib", |m| {
                m.u32(sys::NFTA_FIB_DREG, sys::NFT_REG_1)
                    .u32(sys::NFTA_FIB_RESULT, sys::NFT_FIB_RESULT_ADDRTYPE)
                    .u32(sys::NFTA_FIB_FLAGS, sys::NFTA_FIB_F_DADDR);
            });
            cmp(m, sys::NFT_CMP_EQ, &sys::RTN_LOCAL.to_ne_bytes());
        }
        Match::OifnameNot(name) => {
            let mut ifname = [0u8; 16];
            let n = name.len().min(15);
            ifname[..n].copy_from_slice(&name.as_bytes()[..n]);
            meta(m, sys::NFT_META_OIFNAME);
            cmp(m, sys::NFT_CMP_NEQ, &ifname);
        }
        Match::Mark(v) => {
            meta(m, sys::NFT_META_MARK);
            cmp(m, sys::NFT_CMP_EQ, &v.to_ne_bytes());
        }
    }
}

fn encode_action(m: &mut Msg, a: &Action, maps: &mut impl Iterator<Item = (String, u32)>) {
    match a {
        Action::Dnat(addr, port) => {
            immediate(m, sys::NFT_REG_1, &addr.octets());
            if let Some(p) = port {
                immediate(m, sys::NFT_REG_2, &p.to_be_bytes());
            }
            dnat(m, port.is_some());
        }
        Action::DnatRandom(to) => {
            let (set, id) = maps.next().expect("a map per random action");
            numgen(m, to.len());
            lookup(m, &set, Some(id), Some(sys::NFT_REG_1));
            dnat(m, false);
        }
        Action::Reject => {
            m.expr("reject", |m| {
                m.u32(sys::NFTA_REJECT_TYPE, sys::NFT_REJECT_ICMP_UNREACH)
                    .attr(sys::NFTA_REJECT_ICMP_CODE, &[sys::ICMP_PORT_UNREACH]);
            });
        }
        Action::Jump(c) => {
            m.expr("immediate", |m| {
                m.u32(sys::NFTA_IMMEDIATE_DREG, sys::NFT_REG_VERDICT)
                    .jump(sys::NFTA_IMMEDIATE_DATA, c);
            });
        }
        Action::JumpRandom(to) => {
            let (set, id) = maps.next().expect("a map per random action");
            numgen(m, to.len());
            lookup(m, &set, Some(id), Some(sys::NFT_REG_VERDICT));
        }
        Action::Masquerade => {
            m.expr("masq", |_| {});
        }
        Action::SetMark(v) => {
            immediate(m, sys::NFT_REG_1, &v.to_ne_bytes());
            m.expr("meta", |m| {
                m.u32(sys::NFTA_META_KEY, sys::NFT_META_MARK)
                    .u32(sys::NFTA_META_SREG, sys::NFT_REG_1);
            });
        }
        Action::SetDscp(d) => {
            // The first two bytes of the header, so the checksum update is 16-bit aligned:
            // version and length kept, DSCP set, ECN kept.
            payload(m, sys::NFT_PAYLOAD_NETWORK_HEADER, 0, 2);
            bitwise(m, &[0xff, 0x03], &[0, d << 2]);
            m.expr("payload", |m| {
                m.u32(sys::NFTA_PAYLOAD_SREG, sys::NFT_REG_1)
                    .u32(sys::NFTA_PAYLOAD_BASE, sys::NFT_PAYLOAD_NETWORK_HEADER)
                    .u32(sys::NFTA_PAYLOAD_OFFSET, 0)
                    .u32(sys::NFTA_PAYLOAD_LEN, 2)
                    .u32(sys::NFTA_PAYLOAD_CSUM_TYPE, sys::NFT_PAYLOAD_CSUM_INET)
                    .u32(sys::NFTA_PAYLOAD_CSUM_OFFSET, 10);
            });
        }
        Action::Notrack => {
            m.expr("notrack", |_| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_as_nft_writes_them() {
        let a = |d| Ipv4Addr::new(10, 0, 1, d);
        let r = Rule::new(
            vec![Match::Daddr(a(2))],
            vec![Action::DnatRandom(vec![a(5), a(6)])],
        );
        assert_eq!(
            r.to_string(),
            "ip daddr 10.0.1.2 dnat to numgen random mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 }"
        );
        let r = Rule::new(
            vec![Match::DaddrLocal, Match::Dport(Proto::Tcp, 8080)],
            vec![Action::JumpRandom(vec!["a".into(), "b".into()])],
        );
        assert_eq!(
            r.to_string(),
            "fib daddr type local tcp dport 8080 numgen random mod 2 vmap { 0 : jump a, 1 : jump b }"
        );
        let r = Rule::new(
            vec![
                Match::SaddrIn(Ipv4Addr::new(172, 30, 0, 0), 16),
                Match::OifnameNot("shgw0".into()),
            ],
            vec![Action::Masquerade],
        );
        assert_eq!(
            r.to_string(),
            "ip saddr 172.30.0.0/16 oifname != \"shgw0\" masquerade"
        );
        assert_eq!(
            Action::SetMark(0x5301).to_string(),
            "meta mark set 0x00005301"
        );
    }

    #[test]
    fn a_batch_is_framed_and_every_nest_closed() {
        let t = Table {
            name: "t".into(),
            sets: vec![Set {
                name: "s".into(),
                elements: vec![Ipv4Addr::new(198, 18, 0, 1)],
            }],
            chains: vec![Chain {
                name: "c".into(),
                hook: Some(Hook {
                    kind: ChainKind::Nat,
                    point: HookPoint::Output,
                    priority: priority::DSTNAT,
                }),
                rules: vec![Rule::new(
                    vec![Match::SaddrInSet("s".into())],
                    vec![Action::DnatRandom(vec![Ipv4Addr::LOCALHOST; 3])],
                )],
            }],
        };
        let mut b = encode("t", Some(&t));
        b.finish();
        // Walk the messages: lengths add up, types are as sent, sequences count up.
        let (mut at, mut kinds) = (0, Vec::new());
        while at < b.buf.len() {
            let (len, kind, _, seq) = header(&b.buf[at..]);
            assert!(len >= 20 && len % 4 == 0, "message length {len}");
            kinds.push((kind & 0xff, seq));
            at += len;
        }
        assert_eq!(at, b.buf.len());
        let cmds: Vec<u16> = kinds.iter().map(|k| k.0).collect();
        // begin, table, delete, table, set, elements, chain, map, map entries, rule, end
        assert_eq!(cmds, [0x10, 0, 2, 0, 9, 12, 3, 9, 12, 6, 0x11]);
        assert!(kinds.windows(2).all(|w| w[1].1 == w[0].1 + 1));
    }

    #[test]
    fn an_error_names_the_kernels_reason() {
        let mut tlv = Vec::new();
        tlv.extend_from_slice(&(4u16 + 9).to_ne_bytes());
        tlv.extend_from_slice(&sys::NLMSGERR_ATTR_MSG.to_ne_bytes());
        tlv.extend_from_slice(b"bad data\0");
        tlv.extend_from_slice(&[0, 0, 0]);
        assert_eq!(ext_ack_message(&tlv).as_deref(), Some("bad data"));
        assert_eq!(ext_ack_message(&[1, 0]), None);
    }
}
