//! [`Options`]: how a [`Cluster`](crate::Cluster) routes, waits and retries, set once at connect.

use std::path::PathBuf;
use std::time::Duration;

/// How a [`Cluster`](crate::Cluster) routes, waits and retries.
///
/// ```
/// use std::time::Duration;
/// use scribe_client::Options;
/// let options = Options::default()
///     .max_replica_lag(Duration::from_millis(500))
///     .write_retries(5);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub(crate) max_replica_lag: Duration,
    pub(crate) refresh_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) status_timeout: Duration,
    pub(crate) write_retries: u32,
    pub(crate) failover_wait: Duration,
    pub(crate) session_wait: Option<Duration>,
    pub(crate) ca: Vec<Ca>,
    pub(crate) credentials: Option<Credentials>,
}

/// What a client proves who it is with, on every request to a node started with `--users`
/// ([`Options::basic_auth`], [`Options::bearer_token`]; [`Credentials::header`] for callers that
/// make their own requests).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP Basic: a user of the nodes' users file and its password.
    Basic {
        /// The user's name.
        user: String,
        /// Its password.
        password: String,
    },
    /// A bearer token from `scribe user token`.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password or the token: options end up in logs.
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, <password>)"),
            Credentials::Bearer(_) => write!(f, "Bearer(<token>)"),
        }
    }
}

impl Credentials {
    /// The `Authorization` header value, marked sensitive (kept out of reqwest's debug output);
    /// why not, for a user name with `:` or characters a header cannot carry.
    pub fn header(&self) -> Result<reqwest::header::HeaderValue, String> {
        use base64::Engine as _;
        let text = match self {
            Credentials::Basic { user, password } => {
                if user.contains(':') {
                    return Err(format!(
                        "user name {user:?} contains ':', which HTTP Basic cannot carry"
                    ));
                }
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {pair}")
            }
            Credentials::Bearer(token) => format!("Bearer {}", token.trim()),
        };
        let mut value = reqwest::header::HeaderValue::from_str(&text)
            .map_err(|_| "credentials with characters an HTTP header cannot carry".to_string())?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ca {
    /// A PEM file, read at connect.
    File(PathBuf),
    /// PEM text.
    Pem(Vec<u8>),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_replica_lag: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            status_timeout: Duration::from_secs(2),
            write_retries: 3,
            failover_wait: Duration::from_secs(5),
            session_wait: None,
            ca: Vec::new(),
            credentials: None,
        }
    }
}

impl Options {
    /// A replica further behind its primary than this (by the age of the oldest record it has
    /// not applied) gets no reads until it catches up. Default 1 s.
    pub fn max_replica_lag(mut self, lag: Duration) -> Options {
        self.max_replica_lag = lag;
        self
    }

    /// How old the client's picture of the cluster may get: a call made later than this after
    /// the last discovery starts a new one in the background. Default 2 s.
    pub fn refresh_interval(mut self, every: Duration) -> Options {
        self.refresh_interval = every;
        self
    }

    /// How long a connection to a node may take before the node counts as unreachable (and a
    /// write to it as not sent). Default 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = timeout;
        self
    }

    /// How long a request may take in all; a write that takes longer has an unknown outcome.
    /// Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Options {
        self.request_timeout = timeout;
        self
    }

    /// How long a node may take to answer its status during discovery. Default 2 s.
    pub fn status_timeout(mut self, timeout: Duration) -> Options {
        self.status_timeout = timeout;
        self
    }

    /// How many times a write that provably did not reach the primary (no connection, or a node
    /// that is no longer the primary) is sent again after rediscovery, at least. Default 3.
    pub fn write_retries(mut self, retries: u32) -> Options {
        self.write_retries = retries;
        self
    }

    /// How long a write that finds no primary — the old one gone, the new one not promoted yet —
    /// keeps rediscovering and resending (only while it provably did not take effect), however
    /// many retries that takes. Default 5 s: longer than a cluster's automatic failover (under
    /// 3 s), so an application rides through one without seeing an error. Zero leaves only
    /// [`Options::write_retries`].
    pub fn failover_wait(mut self, wait: Duration) -> Options {
        self.failover_wait = wait;
        self
    }

    /// How long a replica may wait to apply a session read's position before it forwards the
    /// read to the primary; `None` leaves it to the node. Default `None`.
    pub fn session_wait(mut self, wait: Option<Duration>) -> Options {
        self.session_wait = wait;
        self
    }

    /// Trusts the CA certificates of this PEM file (read at connect) for `https://` nodes, for
    /// example the CA that signed the nodes' `--tls-cert`. May be given more than once. Default:
    /// no CA, so an `https://` node's certificate is refused.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Options {
        self.ca.push(Ca::File(path.into()));
        self
    }

    /// Trusts the CA certificates of this PEM text for `https://` nodes, as
    /// [`Options::ca_file`].
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Options {
        self.ca.push(Ca::Pem(pem.into()));
        self
    }

    /// Logs in as `user` with `password` (HTTP Basic) on every request, discovery included — for
    /// nodes started with `--users`. The user's role decides what it may do: a `read` user's
    /// write fails with [`Error::Forbidden`](crate::Error::Forbidden), a wrong password with
    /// [`Error::Unauthenticated`](crate::Error::Unauthenticated); neither is retried. Replaces
    /// an earlier [`Options::bearer_token`].
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Options {
        self.credentials = Some(Credentials::Basic {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Sends this bearer token (from `scribe user token`) on every request, as
    /// [`Options::basic_auth`] does a password: it stands for its user and role without the
    /// node hashing a password on each request. Replaces an earlier [`Options::basic_auth`].
    pub fn bearer_token(mut self, token: impl Into<String>) -> Options {
        self.credentials = Some(Credentials::Bearer(token.into()));
        self
    }
}
