//! [`Error`]: why a call failed, in variants shaped by what the caller does next — fix the request,
//! wait for a primary, check whether a write landed, or report a bug.

/// Why a call failed. New kinds may be added: match with a catch-all arm.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node answered with an error: the request was handled and refused (bad SQL, a constraint,
    /// a node that cannot take it now...). Nothing of a refused write was kept — except for the
    /// code `sync_timeout`, whose transaction *is* committed on the primary but was not confirmed
    /// replicated in time (its message says so); do not retry that one blindly.
    #[error("{message} (HTTP {status}, {code})")]
    Server {
        /// HTTP status.
        status: u16,
        /// The stable error code (`sql_error`, `constraint_violation`, `unavailable`...), or
        /// `http_<status>` when the answer carried none.
        code: String,
        /// What the node said.
        message: String,
    },
    /// No node is the primary now (it is down, or a failover is under way): writes cannot be
    /// taken. Nothing was written; retry later.
    #[error("no primary: {0}")]
    NoPrimary(String),
    /// No node could be reached. Nothing was written; check the URLs and the network.
    #[error("no node could be reached: {0}")]
    Unreachable(String),
    /// A write was sent and no answer came back (timeout, connection lost, a server failure): it
    /// may or may not have committed. Check before retrying it, for example by reading what it
    /// would have written.
    #[error("the outcome of the write sent to {url} is unknown, check whether it committed before retrying: {reason}")]
    OutcomeUnknown {
        /// The node the write was sent to.
        url: String,
        /// What happened.
        reason: String,
    },
    /// A node answered something this client cannot read: a version mismatch or a bug.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The node that answered.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The nodes check credentials (`--users`) and refused these: none given, an unknown user, a
    /// wrong password, an expired or forged token (HTTP 401). Nothing was done; not retried.
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
    /// The user is known and its role may not do this — a `read` user's write, a `write` user's
    /// switchover (HTTP 403). Nothing was done; not retried.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// The call itself is wrong (no URL given, a URL that does not parse, a statement with both
    /// positional and named parameters); nothing was sent.
    #[error("invalid use of the client: {0}")]
    Usage(String),
}

impl Error {
    /// The node's error code, when a node refused the request (`unauthorized` and `forbidden`
    /// for [`Error::Unauthenticated`] and [`Error::Forbidden`]).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            Error::Unauthenticated(_) => Some("unauthorized"),
            Error::Forbidden(_) => Some("forbidden"),
            _ => None,
        }
    }
}
