//! Users, roles and authentication: the user store ([`users::UserStore`], loaded from the
//! `--users` TOML file), SCRAM-SHA-256 verifiers ([`scram::Verifier`]), signed bearer tokens and
//! the decisions (which role a route needs, whether a role allows it) as plain code.

pub mod scram;
pub mod users;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::Method;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ring::hmac;

pub use users::{UserEntry, UserStore, UsersError};

/// What a user may do. Ordered: each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries.
    Read,
    /// Queries, writes and interactive transactions.
    Write,
    /// Everything: status details, switchover, promote, membership, metrics.
    Admin,
}

impl Role {
    /// Whether this role is allowed what `needed` guards.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    /// Its name in the users file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (read, write or admin)")),
        }
    }
}

/// The role an HTTP request needs: the one table of it. `None`: open to anyone (health).
/// `/v1/execute` needs `write`; `/v1/query` `read`; a read-only request on `/v1/execute` is
/// still a write route (the statement decides nothing here).
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    match (method.as_str(), path) {
        ("GET", "/health" | "/ready" | "/v1/health" | "/v1/ready") => None,
        (_, "/v1/query") => Some(Role::Read),
        (_, "/v1/execute") => Some(Role::Write),
        (_, p) if p == "/v1/tx" || p.starts_with("/v1/tx/") => Some(Role::Write),
        ("GET", "/v1/conflicts") => Some(Role::Read),
        ("POST", p) if p.starts_with("/v1/conflicts/") && p.ends_with("/resolve") => {
            Some(Role::Write)
        }
        // A summary below admin (what a client needs to route); the whole status for an admin.
        ("GET", "/v1/status") => Some(Role::Read),
        (_, "/v1/status" | "/v1/switchover" | "/v1/promote" | "/v1/members" | "/metrics") => {
            Some(Role::Admin)
        }
        _ => Some(Role::Admin),
    }
}

/// Who a request comes from, once its credentials checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's name (or [`INTERNAL_USER`] for node-to-node calls).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The name of the principal other nodes act as on node-to-node calls.
pub const INTERNAL_USER: &str = "_scribe_internal";

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, unknown user, wrong password or bad token: 401.
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// Known user, role too weak: 403.
    #[error("user {user:?} (role {role}) may not do this: it needs role {needed}")]
    Forbidden {
        /// The user.
        user: String,
        /// Their role.
        role: &'static str,
        /// The role needed.
        needed: &'static str,
    },
}

/// The header a node sets on a call to another node, carrying a signed user assertion.
pub const ASSERTION_HEADER: &str = "x-scribe-assert-user";

/// Checks credentials from an `Authorization` header value (and an optional signed
/// assertion header from another node, for the request `asked`) against `store`; `Ok` with the
/// principal.
pub fn authenticate(
    store: &UserStore,
    authorization: Option<&str>,
    assertion: Option<&str>,
    asked: Asked<'_>,
    now_unix: u64,
) -> Result<Principal, AuthError> {
    let unauth = |m: &str| AuthError::Unauthenticated(m.to_string());
    if let Some(a) = assertion {
        let (name, role) = verify_assertion(&store.forward_key(), a, asked, now_unix)
            .ok_or_else(|| unauth("bad, expired or misdirected node assertion"))?;
        if name == INTERNAL_USER {
            return Ok(Principal { name, role });
        }
        // The other node's file may be older than this one's: the role is never more than
        // this node's own file grants the user.
        let local = store
            .get(&name)
            .map(|u| u.role)
            .ok_or_else(|| unauth("the asserted user is not in this node's users file"))?;
        return Ok(Principal {
            name,
            role: role.min(local),
        });
    }
    let header = authorization.ok_or_else(|| unauth("no credentials"))?;
    if let Some(pair) = basic_pair(header) {
        let (user, password) = pair.map_err(unauth)?;
        return store
            .check_password(&user, &password)
            .map(|role| Principal { name: user, role })
            .ok_or_else(|| unauth("unknown user or wrong password"));
    }
    if let Some(t) = strip_scheme(header, "bearer") {
        let name = verify_token(&store.token_key, t.trim(), now_unix)
            .ok_or_else(|| unauth("invalid or expired token"))?;
        let role = store
            .get(&name)
            .map(|u| u.role)
            .ok_or_else(|| unauth("the token's user no longer exists"))?;
        return Ok(Principal { name, role });
    }
    Err(unauth("unsupported Authorization scheme (Basic or Bearer)"))
}

/// The user and password of an `Authorization: Basic` header value: `None` for another scheme,
/// the reason when the credentials do not decode.
fn basic_pair(header: &str) -> Option<Result<(String, String), &'static str>> {
    let b = strip_scheme(header, "basic")?;
    let pair = B64
        .decode(b.trim())
        .map_err(|_| "Basic credentials are not base64")
        .and_then(|raw| String::from_utf8(raw).map_err(|_| "Basic credentials are not UTF-8"))
        .and_then(|raw| {
            raw.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .ok_or("Basic credentials have no ':'")
        });
    Some(pair)
}

/// Whether `authorization` holds HTTP Basic credentials (checking them may cost a password
/// derivation: the caller runs that off the async threads).
pub fn is_basic(authorization: Option<&str>) -> bool {
    authorization.is_some_and(|h| strip_scheme(h, "basic").is_some())
}

/// The principal of Basic credentials that checked out before ([`UserStore::remembered`]):
/// no derivation. `None` for anything else.
pub fn remembered_basic(store: &UserStore, authorization: Option<&str>) -> Option<Principal> {
    let (user, password) = basic_pair(authorization?)?.ok()?;
    let role = store.remembered(&user, &password)?;
    Some(Principal { name: user, role })
}

/// The user name of HTTP Basic credentials, for logs; `None` for none or another scheme.
pub fn basic_user(authorization: Option<&str>) -> Option<String> {
    Some(basic_pair(authorization?)?.ok()?.0)
}

/// Whether `p` may do what `needed` guards.
pub fn authorize(p: &Principal, needed: Role) -> Result<(), AuthError> {
    if p.role.allows(needed) {
        Ok(())
    } else {
        Err(AuthError::Forbidden {
            user: p.name.clone(),
            role: p.role.as_str(),
            needed: needed.as_str(),
        })
    }
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.trim().split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `N` random bytes from the system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // The system generator failing is not recoverable and not an input error.
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        panic!("the system random number generator failed");
    }
    out
}

fn sign(key: &[u8], msg: &str) -> String {
    B64URL.encode(hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        msg.as_bytes(),
    ))
}

fn verify_sig(key: &[u8], msg: &str, sig: &str) -> bool {
    match B64URL.decode(sig) {
        Ok(tag) => hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            msg.as_bytes(),
            &tag,
        )
        .is_ok(),
        Err(_) => false,
    }
}

/// A bearer token for `user` valid until `expires_unix`: `scribe1.<name>.<expiry>.<HMAC>`,
/// the name base64url, signed with the users file's `token_key`. Removing the user (or
/// changing `token_key`) revokes it.
pub fn make_token(token_key: &[u8], user: &str, expires_unix: u64) -> String {
    let msg = format!("scribe1.{}.{expires_unix}", B64URL.encode(user));
    let sig = sign(token_key, &msg);
    format!("{msg}.{sig}")
}

/// The user a token names, if its signature is good and it has not expired.
pub fn verify_token(token_key: &[u8], token: &str, now_unix: u64) -> Option<String> {
    let (msg, sig) = token.rsplit_once('.')?;
    if !verify_sig(token_key, msg, sig) {
        return None;
    }
    let mut parts = msg.split('.');
    let (v, name, exp) = (parts.next()?, parts.next()?, parts.next()?);
    if v != "scribe1" || parts.next().is_some() || exp.parse::<u64>().ok()? < now_unix {
        return None;
    }
    String::from_utf8(B64URL.decode(name).ok()?).ok()
}

/// How long an assertion is good for: one hop, made just before it is sent.
pub const ASSERTION_TTL_SECS: u64 = 10;

/// How far ahead of this node's clock an assertion's expiry may be (the sender's clock running
/// fast): beyond that it is refused, so no clock can mint a long-lived one.
pub const ASSERTION_MAX_SKEW_SECS: u64 = 30;

/// The request an assertion is made for: it is good for this method and path only.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
}

/// A node's signed assertion that it acts for `user` with `role`, for the header
/// [`ASSERTION_HEADER`] on the one request `asked` (a forwarded one, or the node's own): good
/// for [`ASSERTION_TTL_SECS`] and that method and path only.
pub fn make_assertion(
    key: &[u8],
    user: &str,
    role: Role,
    asked: Asked<'_>,
    now_unix: u64,
) -> String {
    let msg = format!(
        "fwd2.{}.{}.{}.{}.{}",
        B64URL.encode(user),
        role.as_str(),
        asked.method,
        B64URL.encode(asked.path),
        now_unix + ASSERTION_TTL_SECS
    );
    let sig = sign(key, &msg);
    format!("{msg}.{sig}")
}

/// The user and role of a good assertion for `asked`: signed with `key`, made for this method
/// and path, not expired and not expiring implausibly late.
pub fn verify_assertion(
    key: &[u8],
    a: &str,
    asked: Asked<'_>,
    now_unix: u64,
) -> Option<(String, Role)> {
    let (msg, sig) = a.rsplit_once('.')?;
    if !verify_sig(key, msg, sig) {
        return None;
    }
    let mut parts = msg.split('.');
    let v = parts.next()?;
    let (name, role, method, path, exp) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let exp: u64 = exp.parse().ok()?;
    let fresh = exp >= now_unix && exp <= now_unix + ASSERTION_TTL_SECS + ASSERTION_MAX_SKEW_SECS;
    if v != "fwd2" || parts.next().is_some() || !fresh {
        return None;
    }
    if method != asked.method || B64URL.decode(path).ok()? != asked.path.as_bytes() {
        return None;
    }
    let name = String::from_utf8(B64URL.decode(name).ok()?).ok()?;
    Some((name, role.parse().ok()?))
}

/// The key nodes sign assertions with: the one place it is chosen, derived from the users
/// file's `token_key` alone (so files that differ in comments, order or a user added first on
/// one node still agree); `None` without `--users`.
pub fn forward_key(config: &crate::NodeConfig) -> Option<[u8; 32]> {
    config.users.as_ref().map(|u| u.forward_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASK: Asked<'static> = Asked {
        method: "POST",
        path: "/v1/execute",
    };

    fn store() -> UserStore {
        let mut s = UserStore::empty();
        s.set("r", Role::Read, "rpw");
        s.set("w", Role::Write, "wpw");
        s.set("a", Role::Admin, "apw");
        s
    }

    fn basic(u: &str, p: &str) -> String {
        format!("Basic {}", B64.encode(format!("{u}:{p}")))
    }

    #[test]
    fn roles_include_the_lesser_ones() {
        assert!(Role::Admin.allows(Role::Write));
        assert!(Role::Write.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Write));
        assert!(!Role::Write.allows(Role::Admin));
    }

    #[test]
    fn the_route_table_guards_writes_and_administration() {
        let r = |m: Method, p: &str| required_role(&m, p);
        assert_eq!(r(Method::POST, "/v1/query"), Some(Role::Read));
        assert_eq!(r(Method::POST, "/v1/execute"), Some(Role::Write));
        assert_eq!(r(Method::POST, "/v1/tx/abc/commit"), Some(Role::Write));
        assert_eq!(r(Method::POST, "/v1/switchover"), Some(Role::Admin));
        assert_eq!(r(Method::POST, "/v1/members"), Some(Role::Admin));
        assert_eq!(r(Method::GET, "/v1/status"), Some(Role::Read));
        assert_eq!(r(Method::GET, "/metrics"), Some(Role::Admin));
        assert_eq!(r(Method::GET, "/v1/anything-new"), Some(Role::Admin));
    }

    #[test]
    fn basic_credentials_are_checked() {
        let s = store();
        let p = authenticate(&s, Some(&basic("w", "wpw")), None, ASK, 0).expect("good");
        assert_eq!(p.role, Role::Write);
        for bad in [
            basic("w", "nope"),
            basic("zz", "wpw"),
            "Basic !!".into(),
            "Digest x".into(),
        ] {
            assert!(matches!(
                authenticate(&s, Some(&bad), None, ASK, 0),
                Err(AuthError::Unauthenticated(_))
            ));
        }
        assert!(authenticate(&s, None, None, ASK, 0).is_err());
        assert!(authorize(&p, Role::Admin).is_err());
        assert!(authorize(&p, Role::Write).is_ok());
    }

    #[test]
    fn tokens_verify_until_they_expire_or_are_tampered_with() {
        let s = store();
        let t = make_token(&s.token_key, "r", 1000);
        let p = authenticate(&s, Some(&format!("Bearer {t}")), None, ASK, 999).expect("good");
        assert_eq!(
            p,
            Principal {
                name: "r".into(),
                role: Role::Read
            }
        );
        assert!(authenticate(&s, Some(&format!("Bearer {t}")), None, ASK, 1001).is_err());
        let forged = t.replacen(&B64URL.encode("r"), &B64URL.encode("a"), 1);
        assert!(authenticate(&s, Some(&format!("Bearer {forged}")), None, ASK, 0).is_err());
    }

    #[test]
    fn assertions_carry_the_original_role_for_one_request_only() {
        let s = store();
        let post = Asked {
            method: "POST",
            path: "/v1/execute",
        };
        let a = make_assertion(&s.forward_key(), "r", Role::Read, post, 100);
        let p = authenticate(&s, None, Some(&a), post, 105).expect("good");
        assert_eq!(p.role, Role::Read);
        // Another key, another request, too late, too far ahead: refused.
        let other = make_assertion(&[7u8; 32], "r", Role::Admin, post, 100);
        assert!(authenticate(&s, None, Some(&other), post, 105).is_err());
        for asked in [
            Asked {
                method: "POST",
                path: "/v1/switchover",
            },
            Asked {
                method: "GET",
                path: "/v1/execute",
            },
        ] {
            assert!(authenticate(&s, None, Some(&a), asked, 105).is_err());
        }
        assert!(authenticate(&s, None, Some(&a), post, 100 + ASSERTION_TTL_SECS + 1).is_err());
        let far = make_assertion(&s.forward_key(), "r", Role::Read, post, 1000);
        assert!(authenticate(&s, None, Some(&far), post, 100).is_err());
        let tampered = a.replacen(".read.", ".admin.", 1);
        assert!(authenticate(&s, None, Some(&tampered), post, 105).is_err());
    }

    #[test]
    fn an_asserted_role_is_capped_by_this_nodes_file() {
        let s = store();
        let post = Asked {
            method: "POST",
            path: "/v1/execute",
        };
        // An older file on the sending node still says "r" is admin.
        let a = make_assertion(&s.forward_key(), "r", Role::Admin, post, 100);
        assert_eq!(
            authenticate(&s, None, Some(&a), post, 101)
                .expect("ok")
                .role,
            Role::Read
        );
        let gone = make_assertion(&s.forward_key(), "removed", Role::Write, post, 100);
        assert!(authenticate(&s, None, Some(&gone), post, 101).is_err());
        let node = make_assertion(&s.forward_key(), INTERNAL_USER, Role::Admin, post, 100);
        assert_eq!(
            authenticate(&s, None, Some(&node), post, 101)
                .expect("ok")
                .role,
            Role::Admin
        );
    }

    #[test]
    fn the_forward_key_depends_on_the_token_key_alone() {
        let mut a = store();
        let before = a.forward_key();
        a.set("late", Role::Read, "pw");
        assert_eq!(a.forward_key(), before, "a user added on one node first");
        let text = a.to_toml();
        let b = UserStore::parse(&format!("# a comment\n{text}")).expect("parse");
        assert_eq!(b.forward_key(), before);
        assert_ne!(UserStore::empty().forward_key(), before);
    }
}
