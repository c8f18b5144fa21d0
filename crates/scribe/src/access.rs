//! [`Access`]: the flags every client command reaches a node with — the CA to trust for
//! `https://` and the credentials to present to a node with `--users` — and the client they make.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::Args;
use reqwest::header::HeaderValue;
use scribe_client::Credentials;

use crate::client::Client;

/// How a client command reaches a node: the CA it trusts, and who it is.
#[derive(Args, Debug, Clone, Default)]
pub struct Access {
    /// PEM file of CA certificates to trust for an https:// URL (the node's --tls-cert signer) [default: none]
    #[arg(long, env = "SCRIBE_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Log in as this user of the node's --users file (HTTP Basic); the password comes from SCRIBE_PASSWORD, --password-stdin or a prompt on the terminal [default: no credentials]
    #[arg(long, env = "SCRIBE_USER", global = true)]
    pub user: Option<String>,
    /// With --user: read the password from the first line of standard input
    #[arg(long, global = true, requires = "user")]
    pub password_stdin: bool,
    /// Present this bearer token (from `scribe user token`) instead of a user and password
    #[arg(long, env = "SCRIBE_TOKEN", global = true, conflicts_with = "user")]
    pub token: Option<String>,
}

impl Access {
    /// The `Authorization` header these flags ask for, if any: reads the password (standard
    /// input, `SCRIBE_PASSWORD` or the terminal) once.
    pub fn authorization(&self) -> anyhow::Result<Option<HeaderValue>> {
        let credentials = match (&self.token, &self.user) {
            (Some(token), _) => Credentials::Bearer(token.clone()),
            (None, Some(user)) => {
                if user.contains(':') {
                    return Err(anyhow!(
                        "--user {user:?}: a user name with ':' cannot log in over HTTP Basic"
                    ));
                }
                Credentials::Basic {
                    user: user.clone(),
                    password: self.password(user)?,
                }
            }
            (None, None) => return Ok(None),
        };
        credentials.header().map(Some).map_err(|e| anyhow!(e))
    }

    fn password(&self, user: &str) -> anyhow::Result<String> {
        if self.password_stdin {
            return crate::user::read_password(true);
        }
        if let Ok(p) = std::env::var("SCRIBE_PASSWORD") {
            return Ok(p);
        }
        if std::io::stdin().is_terminal() {
            return crate::user::read_password(false)
                .with_context(|| format!("the password of {user:?}"));
        }
        Err(anyhow!(
            "--user {user:?} needs a password: set SCRIBE_PASSWORD, pass --password-stdin, or run on a terminal to be asked"
        ))
    }

    /// A client of the node at `url` keeping up to `idle` idle connections, with these flags.
    pub fn client(&self, url: &str, idle: usize) -> anyhow::Result<Client> {
        Client::connect(url, idle, self.ca.as_deref(), self.authorization()?)
    }
}
