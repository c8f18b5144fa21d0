//! [`Verifier`]: a SCRAM-SHA-256 password verifier (RFC 5802/7677), stored as PostgreSQL stores
//! it: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). The same entry
//! checks an HTTP Basic password (derive the keys, compare) and PostgreSQL's SCRAM exchange.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};

/// Iterations of a new verifier (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A stored SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

/// Why a stored verifier string is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "not a SCRAM-SHA-256 verifier (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>): {0}"
)]
pub struct BadVerifier(&'static str);

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&k, data).as_ref());
    out
}

impl Verifier {
    /// The verifier of `password` with `salt` and `iterations`.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let mut stored_key = [0u8; 32];
        stored_key.copy_from_slice(digest::digest(&digest::SHA256, &client_key).as_ref());
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key,
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// A verifier of `password` with a fresh random 16-byte salt.
    pub fn new_random(password: &str) -> Verifier {
        let salt: [u8; 16] = super::random_bytes();
        Verifier::derive(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Whether `password` is the one this verifier was made from, compared in constant time.
    pub fn check(&self, password: &str) -> bool {
        let other = Verifier::derive(password, &self.salt, self.iterations);
        constant_time_eq(&self.stored_key, &other.stored_key)
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<Verifier, BadVerifier> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(BadVerifier("missing SCRAM-SHA-256$ prefix"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(BadVerifier("missing '$'"))?;
        let (iter, salt) = iter_salt
            .split_once(':')
            .ok_or(BadVerifier("missing ':' after iterations"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(BadVerifier("missing ':' between keys"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| BadVerifier("bad iteration count"))?;
        if iterations == 0 {
            return Err(BadVerifier("zero iterations"));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| BadVerifier("salt is not base64"))?;
        let key = |k: &str| -> Result<[u8; 32], BadVerifier> {
            let v = B64
                .decode(k)
                .map_err(|_| BadVerifier("key is not base64"))?;
            v.try_into().map_err(|_| BadVerifier("key is not 32 bytes"))
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message is not what RFC 5802 describes.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding (SCRAM-SHA-256-PLUS), which is not offered.
    #[error("channel binding is not supported (use SCRAM-SHA-256 without -PLUS)")]
    ChannelBinding,
    /// The client's proof does not match: a wrong password (or an unknown user).
    #[error("the client proof does not match")]
    WrongProof,
}

/// The server's side of one SCRAM-SHA-256 exchange (RFC 5802 section 3, as PostgreSQL runs it:
/// the user is the startup packet's, the `n=` attribute is ignored), between the server's first
/// message and the client's final one. Plain code: the caller moves the messages.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ServerExchange {
    /// Takes the client's first message and answers the server's first one (`r=`, `s=`, `i=`),
    /// extending the client's nonce with `server_nonce` (printable, no commas).
    pub fn start(
        verifier: Verifier,
        client_first: &str,
        server_nonce: &str,
    ) -> Result<(ServerExchange, String), ScramError> {
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = client_first
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            // `y`: the client could bind to the channel but thinks the server cannot. True:
            // SCRAM-SHA-256-PLUS is never offered (were it offered over TLS, `y` would then be
            // a downgrade and must be refused).
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            // As PostgreSQL: the user logs in as itself.
            return Err(ScramError::Malformed(
                "an authorization identity is not supported",
            ));
        }
        // client-first-message-bare: [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = attributes(bare);
        match attrs.next() {
            Some(('n', _)) => {}
            Some(('m', _)) => {
                return Err(ScramError::Malformed(
                    "mandatory extensions are not supported",
                ))
            }
            _ => return Err(ScramError::Malformed("no user name attribute")),
        }
        let client_nonce = match attrs.next() {
            Some(('r', v)) => v,
            _ => return Err(ScramError::Malformed("no client nonce")),
        };
        if client_nonce.is_empty() || !printable(client_nonce) || !printable(server_nonce) {
            return Err(ScramError::Malformed("bad nonce"));
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let gs2_header = format!("{flag},{authzid},");
        let exchange = ServerExchange {
            verifier,
            gs2_header,
            nonce,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
        };
        Ok((exchange, server_first))
    }

    /// Checks the client's final message (`c=`, `r=`, `p=`) and answers the server's final one
    /// (`v=`, the server's signature, which proves to the client that this server knows the
    /// verifier). `WrongProof` for a wrong password.
    pub fn finish(&self, client_final: &str) -> Result<String, ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for (k, v) in attributes(without_proof) {
            match k {
                'c' => binding = Some(v),
                'r' => nonce = Some(v),
                _ => {}
            }
        }
        let binding = binding.ok_or(ScramError::Malformed("no channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed(
                "channel binding does not match the GS2 header",
            ));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("the nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("the proof is not 32 bytes of base64"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (i, b) in client_key.iter_mut().enumerate() {
            *b = proof[i] ^ client_signature[i];
        }
        let mut stored = [0u8; 32];
        stored.copy_from_slice(digest::digest(&digest::SHA256, &client_key).as_ref());
        if !constant_time_eq(&stored, &self.verifier.stored_key) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// A verifier no password matches, for a user that does not exist: the exchange runs as for a
/// real user (the same salt for the same name each time, from `key`), so a client cannot tell
/// an unknown user from a wrong password.
pub fn mock_verifier(key: &[u8], name: &str) -> Verifier {
    let salt = hmac_sha256(key, format!("scribe mock salt {name}").as_bytes());
    Verifier {
        iterations: DEFAULT_ITERATIONS,
        salt: salt[..16].to_vec(),
        stored_key: super::random_bytes(),
        server_key: super::random_bytes(),
    }
}

/// The `k=v` attributes of a SCRAM message.
fn attributes(message: &str) -> impl Iterator<Item = (char, &str)> {
    message.split(',').filter_map(|a| {
        let mut chars = a.chars();
        let k = chars.next()?;
        a.get(1..)?.strip_prefix('=').map(|v| (k, v))
    })
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Whether `a` and `b` are equal, in time independent of where they differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hi(password, salt, i) of RFC 5802: PBKDF2-HMAC-SHA-256 with one 32-byte block.
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_password() {
        let v = Verifier::new_random("hunter2");
        let parsed = Verifier::parse(&v.to_string()).expect("parses");
        assert_eq!(parsed, v);
        assert!(parsed.check("hunter2"));
        assert!(!parsed.check("hunter3"));
        assert!(!parsed.check(""));
    }

    #[test]
    fn matches_the_rfc_7677_example() {
        // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
        // 4096 iterations; the server signature there derives from this ServerKey.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        let v = Verifier::derive("pencil", &salt, 4096);
        // ClientProof = ClientKey XOR ClientSignature; from the RFC's proof we can't get back
        // StoredKey without the AuthMessage, so check the known-good ServerSignature instead.
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = hmac_sha256(&v.server_key, auth.as_bytes());
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    fn rfc_7677_verifier() -> Verifier {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        Verifier::derive("pencil", &salt, 4096)
    }

    #[test]
    fn runs_the_rfc_7677_exchange() {
        let (ex, server_first) = ServerExchange::start(
            rfc_7677_verifier(),
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .expect("first");
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let final_ = ex
            .finish("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("good proof");
        assert_eq!(final_, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn refuses_a_wrong_proof_and_malformed_messages() {
        let nonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let (ex, _) = ServerExchange::start(
            rfc_7677_verifier(),
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            nonce,
        )
        .expect("first");
        let wrong = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(ex.finish(wrong), Err(ScramError::WrongProof));
        for bad in [
            "",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "c=biws,r=other,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=short",
        ] {
            assert!(matches!(ex.finish(bad), Err(ScramError::Malformed(_))), "{bad:?}");
        }
        let v = rfc_7677_verifier;
        assert_eq!(
            ServerExchange::start(v(), "p=tls-server-end-point,,n=,r=abc", nonce).err(),
            Some(ScramError::ChannelBinding)
        );
        for bad in [
            "",
            "n",
            "n,,n=user",
            "x,,n=user,r=abc",
            "n,,n=user,r=",
            "n,a=admin,n=user,r=abc",
            "n,,m=ext,n=user,r=abc",
            "n,,r=abc,n=user",
            "n,,r=abc",
        ] {
            assert!(ServerExchange::start(v(), bad, nonce).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_mock_verifier_gives_the_same_salt_and_matches_no_password() {
        let a = mock_verifier(b"k", "nobody");
        let b = mock_verifier(b"k", "nobody");
        assert_eq!(a.salt, b.salt);
        assert_ne!(a.salt, mock_verifier(b"k", "other").salt);
        assert!(!a.check(""));
    }

    #[test]
    fn refuses_malformed_verifiers() {
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$0:AAAA$",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad:?}");
        }
    }
}
