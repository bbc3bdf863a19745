//! The manager's Raft node (tikv raft-rs) and its durable log.
//!
//! One task owns the `RawNode` ([`node::start`], on a thread of its own); everything else talks to it through a
//! [`node::RaftHandle`]: proposals go in, and applied commands come out as store changes and
//! events. Messages to other managers go through a [`node::Transport`] ([`peer::TcpTransport`]
//! on the cluster port); with one manager there are none, and nothing here assumes there is one
//! manager only.

#[cfg(any(test, feature = "test-util"))]
pub mod mem;
pub mod node;
pub mod peer;
pub mod storage;

/// Forwards raft-rs's slog records to tracing.
#[derive(Debug)]
pub(crate) struct SlogToTracing;

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let msg = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

/// A slog logger that writes to tracing.
pub(crate) fn logger() -> slog::Logger {
    slog::Logger::root(SlogToTracing, slog::o!())
}
