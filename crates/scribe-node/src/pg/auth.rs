//! Per-user SCRAM-SHA-256 on the PostgreSQL port (`--users`): the startup handler that runs the
//! exchange against the users file's verifiers ([`crate::auth::scram::ServerExchange`]) and
//! leaves the authenticated [`Principal`] in the connection's session extensions, where the
//! session finds its role.
//!
//! An unknown user gets the same exchange as a known one with a wrong password (a mock
//! verifier), and the same error: `28P01 password authentication failed`.

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::Sink;
use pgwire::api::auth::mechanism::{AuthMechanism, AuthState};
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, AuthOutcome, LoginInfo,
    StartupHandler,
};
use pgwire::api::ClientInfo;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::auth::scram::{mock_verifier, ScramError, ServerExchange};
use crate::auth::{Principal, UserStore};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The startup handler with `--users`.
pub struct UsersStartup<P> {
    driver: AuthDriver<Arc<P>, Principal>,
    users: Arc<UserStore>,
}

impl<P> UsersStartup<P> {
    /// Authenticates against `users`, announcing `params` once in.
    pub fn new(params: Arc<P>, users: Arc<UserStore>) -> UsersStartup<P> {
        UsersStartup {
            driver: AuthDriver::new(params),
            users,
        }
    }
}

#[async_trait]
impl<P: pgwire::api::auth::ServerParameterProvider> StartupHandler for UsersStartup<P> {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let mechanism = Box::new(UserScram {
                    users: self.users.clone(),
                    step: Step::Initial,
                });
                self.driver.begin_authentication(client, mechanism).await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(m) => {
                let peer = client.socket_addr();
                let user = LoginInfo::from_client_info(client)
                    .user()
                    .unwrap_or_default()
                    .to_string();
                match self.driver.advance_authentication(client, m).await {
                    Ok(o) => o,
                    Err(e) => {
                        // `?user`: quoted and escaped, so a name cannot forge a log line.
                        tracing::warn!(%peer, user = ?user, error = ?e, "PostgreSQL authentication failed");
                        return Err(e);
                    }
                }
            }
            _ => return Ok(()),
        };
        if let AuthOutcome::Authenticated {
            identity,
            final_message,
        } = outcome
        {
            if let Some(p) = identity {
                client.session_extensions().insert(p);
            }
            self.driver
                .complete_authentication(client, final_message)
                .await?;
        }
        Ok(())
    }
}

enum Step {
    Initial,
    /// The server's first message is sent; `principal` is `None` for an unknown user.
    ServerFirstSent {
        exchange: Box<ServerExchange>,
        user: String,
        principal: Option<Principal>,
    },
}

/// One connection's SCRAM exchange.
struct UserScram {
    users: Arc<UserStore>,
    step: Step,
}

/// PostgreSQL's own words for a wrong password or an unknown user.
fn password_failed(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        "28P01".to_string(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

fn malformed(e: ScramError) -> AuthState<Principal> {
    AuthState::Failed(PgWireError::InvalidScramMessage(e.to_string()))
}

#[async_trait]
impl AuthMechanism<Principal> for UserScram {
    async fn begin(
        &mut self,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<AuthState<Principal>> {
        Ok(AuthState::InProgress(Authentication::SASL(vec![
            SCRAM_SHA_256.to_string(),
        ])))
    }

    async fn next(
        &mut self,
        client: &(dyn ClientInfo + Send + Sync),
        message: PasswordMessageFamily,
    ) -> PgWireResult<AuthState<Principal>> {
        match std::mem::replace(&mut self.step, Step::Initial) {
            Step::Initial => {
                let initial = message.into_sasl_initial_response()?;
                if initial.auth_method != SCRAM_SHA_256 {
                    return Ok(AuthState::Failed(PgWireError::UnsupportedSASLAuthMethod(
                        initial.auth_method,
                    )));
                }
                let Some(user) = LoginInfo::from_client_info(client)
                    .user()
                    .map(str::to_string)
                else {
                    return Ok(AuthState::Failed(PgWireError::UserNameRequired));
                };
                let data = initial.data.unwrap_or_default();
                let Ok(client_first) = std::str::from_utf8(&data) else {
                    return Ok(malformed(ScramError::Malformed("not UTF-8")));
                };
                let (verifier, principal) = match self.users.get(&user) {
                    Some(u) => (
                        u.verifier.clone(),
                        Some(Principal {
                            name: u.name.clone(),
                            role: u.role,
                        }),
                    ),
                    None => (mock_verifier(&self.users.token_key, &user), None),
                };
                let nonce = B64.encode(crate::auth::random_bytes::<18>());
                match ServerExchange::start(verifier, client_first, &nonce) {
                    Ok((exchange, server_first)) => {
                        self.step = Step::ServerFirstSent {
                            exchange: Box::new(exchange),
                            user,
                            principal,
                        };
                        Ok(AuthState::InProgress(Authentication::SASLContinue(
                            server_first.into_bytes().into(),
                        )))
                    }
                    Err(e) => Ok(malformed(e)),
                }
            }
            Step::ServerFirstSent {
                exchange,
                user,
                principal,
            } => {
                let response = message.into_sasl_response()?;
                let Ok(client_final) = std::str::from_utf8(&response.data) else {
                    return Ok(malformed(ScramError::Malformed("not UTF-8")));
                };
                match (exchange.finish(client_final), principal) {
                    (Ok(server_final), Some(p)) => Ok(AuthState::Ok {
                        final_message: Some(Authentication::SASLFinal(
                            server_final.into_bytes().into(),
                        )),
                        identity: Some(p),
                    }),
                    (Ok(_) | Err(ScramError::WrongProof), _) => {
                        Ok(AuthState::Failed(password_failed(&user)))
                    }
                    (Err(e), _) => Ok(malformed(e)),
                }
            }
        }
    }
}
