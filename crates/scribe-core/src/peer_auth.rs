//! Peer authentication by a shared secret: the proofs two nodes exchange at the start of every
//! peer connection (replication or control plane) to show each other they hold the cluster's
//! peer secret, without sending it.
//!
//! The exchange (the runtime sends and receives; this module decides):
//! 1. the dialer sends a fresh random nonce `d`;
//! 2. the listener answers its own fresh nonce `l` and `proof(Listener, d, l)`;
//! 3. the dialer checks that proof, then sends `proof(Dialer, d, l)`;
//! 4. the listener checks it and accepts (or refuses) the connection.
//!
//! A proof is HMAC-SHA256, keyed by the secret, over a fixed context label, the side that proves
//! (so a proof can never be reflected back as the other side's), and both nonces (so an old
//! proof fails against a new nonce: no replay). Proofs are compared in constant time.

use std::fmt;

use ring::hmac;

/// Length of a nonce, bytes.
pub const NONCE_LEN: usize = 32;
/// Length of a proof (HMAC-SHA256), bytes.
pub const PROOF_LEN: usize = 32;
/// The shortest secret accepted, bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// What every proof is bound to: this protocol and its version.
const CONTEXT: &[u8] = b"scribe peer authentication v1";

/// Which end of the connection proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node that opened the connection (a replica, or a control-plane member calling).
    Dialer,
    /// The node that accepted it (the peer port's listener).
    Listener,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Dialer => b"dialer",
            Side::Listener => b"listener",
        }
    }
}

/// Why a secret is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Nothing in it (whitespace aside).
    #[error("the peer secret is empty")]
    Empty,
    /// Shorter than [`MIN_SECRET_LEN`].
    #[error("the peer secret is {len} bytes; it must be at least {MIN_SECRET_LEN} (make one with: head -c 32 /dev/urandom | base64)")]
    TooShort {
        /// Its length.
        len: usize,
    },
}

/// Why a proof was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailed {
    /// A nonce of the wrong length.
    #[error("a nonce of {0} bytes (expected {NONCE_LEN})")]
    BadNonce(usize),
    /// Both nonces are the same: a reflected challenge.
    #[error("the other side sent back this side's own nonce")]
    ReflectedNonce,
    /// The proof does not match: the other side does not hold the same secret.
    #[error("the proof does not match: the two nodes do not hold the same --peer-secret")]
    WrongProof,
}

/// The cluster's peer secret, as an HMAC key. Its bytes are never shown (`Debug` hides them).
#[derive(Clone)]
pub struct PeerSecret {
    key: hmac::Key,
}

impl fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

impl PeerSecret {
    /// The secret in `contents` (a secret file's bytes; surrounding whitespace, such as the
    /// newline `base64` writes, is not part of it).
    pub fn new(contents: &[u8]) -> Result<PeerSecret, SecretError> {
        let trimmed = trim(contents);
        if trimmed.is_empty() {
            return Err(SecretError::Empty);
        }
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: trimmed.len() });
        }
        Ok(PeerSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, trimmed),
        })
    }

    /// The proof `side` gives for the exchange of nonces `dialer` and `listener`.
    pub fn prove(&self, side: Side, dialer: &[u8], listener: &[u8]) -> [u8; PROOF_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        ctx.update(&[0]);
        ctx.update(side.label());
        ctx.update(&[0]);
        ctx.update(&(dialer.len() as u32).to_le_bytes());
        ctx.update(dialer);
        ctx.update(&(listener.len() as u32).to_le_bytes());
        ctx.update(listener);
        let tag = ctx.sign();
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks the proof `side` gave for the exchange of nonces `dialer` and `listener`, in
    /// constant time.
    pub fn verify(
        &self,
        side: Side,
        dialer: &[u8],
        listener: &[u8],
        proof: &[u8],
    ) -> Result<(), AuthFailed> {
        for n in [dialer, listener] {
            if n.len() != NONCE_LEN {
                return Err(AuthFailed::BadNonce(n.len()));
            }
        }
        if dialer == listener {
            return Err(AuthFailed::ReflectedNonce);
        }
        let expected = self.prove(side, dialer, listener);
        if proof.len() != PROOF_LEN || !constant_time_eq(&expected, proof) {
            return Err(AuthFailed::WrongProof);
        }
        Ok(())
    }
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef\n";

    fn nonces() -> ([u8; NONCE_LEN], [u8; NONCE_LEN]) {
        ([1; NONCE_LEN], [2; NONCE_LEN])
    }

    #[test]
    fn both_sides_with_the_same_secret_accept_each_other() {
        let a = PeerSecret::new(SECRET).unwrap();
        let b = PeerSecret::new(b"  0123456789abcdef0123456789abcdef").unwrap();
        let (d, l) = nonces();
        let from_listener = b.prove(Side::Listener, &d, &l);
        assert_eq!(a.verify(Side::Listener, &d, &l, &from_listener), Ok(()));
        let from_dialer = a.prove(Side::Dialer, &d, &l);
        assert_eq!(b.verify(Side::Dialer, &d, &l, &from_dialer), Ok(()));
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let a = PeerSecret::new(SECRET).unwrap();
        let other = PeerSecret::new(b"another secret, also long enough!!").unwrap();
        let (d, l) = nonces();
        let proof = other.prove(Side::Dialer, &d, &l);
        assert_eq!(
            a.verify(Side::Dialer, &d, &l, &proof),
            Err(AuthFailed::WrongProof)
        );
    }

    #[test]
    fn an_old_proof_fails_against_a_new_nonce() {
        let s = PeerSecret::new(SECRET).unwrap();
        let (d, l) = nonces();
        let recorded = s.prove(Side::Dialer, &d, &l);
        // The listener picks a fresh nonce for every connection.
        let fresh = [3; NONCE_LEN];
        assert_eq!(
            s.verify(Side::Dialer, &d, &fresh, &recorded),
            Err(AuthFailed::WrongProof)
        );
    }

    #[test]
    fn a_proof_cannot_be_reflected_as_the_other_sides() {
        let s = PeerSecret::new(SECRET).unwrap();
        let (d, l) = nonces();
        let listeners = s.prove(Side::Listener, &d, &l);
        assert_eq!(
            s.verify(Side::Dialer, &d, &l, &listeners),
            Err(AuthFailed::WrongProof)
        );
        assert_eq!(
            s.verify(Side::Listener, &d, &d, &listeners),
            Err(AuthFailed::ReflectedNonce)
        );
    }

    #[test]
    fn truncated_proofs_and_short_nonces_are_refused() {
        let s = PeerSecret::new(SECRET).unwrap();
        let (d, l) = nonces();
        let proof = s.prove(Side::Dialer, &d, &l);
        assert_eq!(
            s.verify(Side::Dialer, &d, &l, &proof[..16]),
            Err(AuthFailed::WrongProof)
        );
        assert_eq!(
            s.verify(Side::Dialer, &d[..8], &l, &proof),
            Err(AuthFailed::BadNonce(8))
        );
    }

    #[test]
    fn empty_and_short_secrets_are_refused() {
        assert_eq!(PeerSecret::new(b" \n").unwrap_err(), SecretError::Empty);
        assert_eq!(
            PeerSecret::new(b"short\n").unwrap_err(),
            SecretError::TooShort { len: 5 }
        );
        assert!(!format!("{:?}", PeerSecret::new(SECRET).unwrap()).contains("0123"));
    }
}
