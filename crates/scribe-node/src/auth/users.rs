//! [`UserStore`]: the users file (`--users`), a TOML file of `[[user]]` entries (`name`,
//! `role`, `password` as a SCRAM-SHA-256 verifier) and the `token_key` bearer tokens are signed
//! with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::digest;

use super::scram::Verifier;
use super::Role;

/// One user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// Its name (the HTTP Basic and PostgreSQL user name).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its password's verifier.
    pub verifier: Verifier,
}

/// Why a users file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It could not be read or written.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Its contents are not a valid users file.
    #[error("users file {path}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    token_key: Option<String>,
    #[serde(default)]
    user: Vec<EntryForm>,
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct EntryForm {
    name: String,
    role: Role,
    password: String,
}

/// The users of a node, as loaded from its users file.
#[derive(Debug, Clone)]
pub struct UserStore {
    users: Vec<UserEntry>,
    /// The key bearer tokens are signed with.
    pub token_key: Vec<u8>,
    /// Logins that checked out: see [`UserStore::check_password`].
    verified: std::sync::Arc<std::sync::Mutex<HashMap<[u8; 32], Role>>>,
}

/// Whether `name` may name a user: a node name's rules, and not the name nodes use for
/// themselves on calls to each other ([`super::INTERNAL_USER`]).
pub fn check_user_name(name: &str) -> Result<(), String> {
    scribe_core::check_node_name(name).map_err(|e| e.to_string())?;
    if name == super::INTERNAL_USER {
        return Err("this name is reserved for the nodes themselves".into());
    }
    Ok(())
}

/// How many verified logins [`UserStore::check_password`] remembers; past it, it forgets them
/// all and starts again (a burst of distinct users costs one derivation each again, no more).
const VERIFIED_CAPACITY: usize = 4096;

impl UserStore {
    /// A store with no users and a fresh token key.
    pub fn empty() -> UserStore {
        let key: [u8; 32] = super::random_bytes();
        UserStore {
            users: Vec::new(),
            token_key: key.to_vec(),
            verified: Default::default(),
        }
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<UserStore, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        UserStore::parse(&text).map_err(|message| UsersError::Malformed {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Reads the file at `path`, or an empty store if there is none (for `scribe user add`).
    pub fn load_or_empty(path: &Path) -> Result<UserStore, UsersError> {
        if path.exists() {
            UserStore::load(path)
        } else {
            Ok(UserStore::empty())
        }
    }

    /// Parses a users file's text.
    pub fn parse(text: &str) -> Result<UserStore, String> {
        let form: FileForm = toml::from_str(text).map_err(|e| e.to_string())?;
        let token_key = match form.token_key {
            Some(k) => B64
                .decode(k.trim())
                .map_err(|_| "token_key is not base64".to_string())?,
            None => Vec::new(),
        };
        if !token_key.is_empty() && token_key.len() < 16 {
            return Err("token_key must be at least 16 bytes".into());
        }
        let mut users: Vec<UserEntry> = Vec::new();
        for e in form.user {
            check_user_name(&e.name).map_err(|m| format!("user name {:?}: {m}", e.name))?;
            if users.iter().any(|u| u.name == e.name) {
                return Err(format!("user {:?} appears twice", e.name));
            }
            let verifier = Verifier::parse(&e.password)
                .map_err(|err| format!("user {:?}: password: {err}", e.name))?;
            users.push(UserEntry {
                name: e.name,
                role: e.role,
                verifier,
            });
        }
        Ok(UserStore {
            users,
            token_key,
            verified: Default::default(),
        })
    }

    /// Whether a node may serve with this file: it needs a `token_key` (bearer tokens, node
    /// assertions and the answers to unknown users are keyed by it; an empty key would let
    /// anyone make them). `scribe user add` writes one.
    pub fn check_serving(&self) -> Result<(), String> {
        if self.token_key.is_empty() {
            return Err("the users file has no token_key: run `scribe user add` on it once (it writes a random one), or add `token_key = \"<32 random bytes, base64>\"`".into());
        }
        Ok(())
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let form = FileForm {
            token_key: Some(B64.encode(&self.token_key)),
            user: self
                .users
                .iter()
                .map(|u| EntryForm {
                    name: u.name.clone(),
                    role: u.role,
                    password: u.verifier.to_string(),
                })
                .collect(),
        };
        let body = toml::to_string(&form).unwrap_or_default();
        format!("# Scribe users file (scribe user add/remove/list/token). Passwords are SCRAM-SHA-256 verifiers.\n{body}")
    }

    /// Writes the file (mode 0600), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let io = |source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt;
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            o.mode(0o600);
            let mut f = o.open(&tmp).map_err(io)?;
            f.write_all(self.to_toml().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Adds `name`, or replaces its entry.
    pub fn set(&mut self, name: &str, role: Role, password: &str) {
        let entry = UserEntry {
            name: name.to_string(),
            role,
            verifier: Verifier::new_random(password),
        };
        match self.users.iter_mut().find(|u| u.name == name) {
            Some(u) => *u = entry,
            None => self.users.push(entry),
        }
        self.forget_logins();
        if self.token_key.is_empty() {
            self.token_key = super::random_bytes::<32>().to_vec();
        }
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        self.forget_logins();
        self.users.len() != before
    }

    /// Forgets the verified logins (the users changed). A clone made before keeps its own.
    fn forget_logins(&mut self) {
        self.verified = Default::default();
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    /// All entries, in file order.
    pub fn users(&self) -> &[UserEntry] {
        &self.users
    }

    /// The role of `name` if `password` is its password. An unknown user costs the same
    /// derivation as a known one, so timing does not tell which names exist.
    ///
    /// A login that checked out is remembered (as an HMAC of name and password under the
    /// token key, never the password), so a client sending the same Basic credentials on every
    /// request pays the derivation once, not per request. Failures are never remembered.
    pub fn check_password(&self, name: &str, password: &str) -> Option<Role> {
        self.remembered(name, password)
            .or_else(|| self.derive_and_check(name, password))
    }

    /// The role of a login that checked out before, without deriving anything.
    pub fn remembered(&self, name: &str, password: &str) -> Option<Role> {
        let key = self.login_key(name, password);
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
    }

    /// [`UserStore::check_password`] the slow way: the derivation, remembering a success.
    fn derive_and_check(&self, name: &str, password: &str) -> Option<Role> {
        let key = self.login_key(name, password);
        let verified = || self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        match self.get(name) {
            Some(u) => {
                let role = u.verifier.check(password).then_some(u.role)?;
                let mut cache = verified();
                if cache.len() >= VERIFIED_CAPACITY {
                    cache.clear();
                }
                cache.insert(key, role);
                Some(role)
            }
            None => {
                let _ = Verifier::derive(
                    password,
                    b"no-such-user-salt",
                    super::scram::DEFAULT_ITERATIONS,
                );
                None
            }
        }
    }

    /// What a verified login is remembered by: HMAC-SHA-256 under the token key of the name's
    /// length, the name and the password.
    fn login_key(&self, name: &str, password: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.token_key);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The key nodes sign user assertions with, derived from the token key alone.
    pub fn forward_key(&self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"scribe forward key v2\0");
        ctx.update(&self.token_key);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_file_loads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let mut s = UserStore::load_or_empty(&path).expect("empty");
        s.set("alice", Role::Write, "pw1");
        s.set("bob", Role::Read, "pw2");
        s.set("alice", Role::Admin, "pw3");
        s.save(&path).expect("save");
        let back = UserStore::load(&path).expect("load");
        assert_eq!(back.users().len(), 2);
        assert_eq!(back.check_password("alice", "pw3"), Some(Role::Admin));
        assert_eq!(back.check_password("alice", "pw1"), None);
        assert_eq!(back.check_password("bob", "pw2"), Some(Role::Read));
        assert_eq!(back.check_password("carol", "pw2"), None);
        assert_eq!(back.token_key, s.token_key);
    }

    #[test]
    fn a_remembered_login_answers_only_its_own_password() {
        let mut s = UserStore::empty();
        s.set("alice", Role::Write, "pw");
        s.set("bob", Role::Read, "pw");
        for _ in 0..3 {
            assert_eq!(s.check_password("alice", "pw"), Some(Role::Write));
            assert_eq!(s.check_password("bob", "pw"), Some(Role::Read));
            assert_eq!(s.check_password("alice", "pw2"), None);
            assert_eq!(
                s.check_password("alicep", "w"),
                None,
                "name and password are kept apart"
            );
        }
        assert_eq!(
            s.verified.lock().expect("lock").len(),
            2,
            "failures are not remembered"
        );
        // A changed user forgets what was verified.
        s.set("alice", Role::Read, "new");
        assert_eq!(s.check_password("alice", "pw"), None);
        assert_eq!(s.check_password("alice", "new"), Some(Role::Read));
        assert!(s.remove("bob"));
        assert_eq!(s.check_password("bob", "pw"), None);
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        for (text, want) in [
            (
                "[[user]]\nname = \"a\"\nrole = \"root\"\npassword = \"x\"\n",
                "root",
            ),
            (
                "[[user]]\nname = \"a\"\nrole = \"read\"\npassword = \"plain\"\n",
                "SCRAM",
            ),
            ("this is not toml", "expected"),
        ] {
            let err = UserStore::parse(text).expect_err(text);
            assert!(err.contains(want), "{err}");
        }
    }
}
