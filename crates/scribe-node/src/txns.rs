//! Interactive transactions held for HTTP clients across requests: `POST /v1/tx` opens one,
//! `/v1/tx/{id}/execute` runs a statement in it, `/commit` and `/rollback` end it. A replica's
//! PostgreSQL sessions use them to run their transactions on the primary.
//!
//! The table maps an unguessable id to the engine's [`Transaction`]. A transaction idle longer
//! than the node's `--txn-idle-timeout` is rolled back by the engine; its entry is swept when the
//! table is next used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scribe_sqlite::{EngineError, Transaction};

/// One held transaction: the engine's handle (`None` once it ended) and when it was last used.
pub struct Held {
    /// The transaction.
    pub txn: tokio::sync::Mutex<Option<Transaction>>,
    last_used: Mutex<Instant>,
}

impl Held {
    /// Marks it used now.
    pub fn touch(&self) {
        *self.last_used.lock().expect("txn clock") = Instant::now();
    }
}

/// The open transactions of HTTP clients.
#[derive(Default)]
pub struct TxnTable {
    open: Mutex<HashMap<String, Arc<Held>>>,
}

impl TxnTable {
    /// Holds `txn` and answers its id.
    pub fn insert(&self, txn: Transaction, idle: Duration) -> String {
        let id = format!("{:016x}{:016x}", os_random(), os_random());
        let held = Arc::new(Held {
            txn: tokio::sync::Mutex::new(Some(txn)),
            last_used: Mutex::new(Instant::now()),
        });
        let mut open = self.open.lock().expect("txn table");
        // Sweep what the engine has rolled back for idleness (and what clients abandoned).
        open.retain(|_, h| h.last_used.lock().expect("txn clock").elapsed() <= idle * 2);
        open.insert(id.clone(), held);
        id
    }

    /// The transaction with this id.
    pub fn get(&self, id: &str) -> Result<Arc<Held>, EngineError> {
        self.open
            .lock()
            .expect("txn table")
            .get(id)
            .cloned()
            .ok_or_else(|| ended(id))
    }

    /// Forgets a transaction that ended.
    pub fn remove(&self, id: &str) {
        self.open.lock().expect("txn table").remove(id);
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.open.lock().expect("txn table").len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 64 bits from the OS's random source (through the standard library's randomly keyed hasher,
/// whose keys come from it): transaction ids must not be guessable.
fn os_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The error for a transaction id that is not open.
pub fn ended(id: &str) -> EngineError {
    EngineError::TxnEnded(format!(
        "no open transaction {id}: it ended (committed, rolled back, failed or idle too long) or never existed"
    ))
}
