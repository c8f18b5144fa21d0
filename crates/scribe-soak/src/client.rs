//! One soak client: a closed loop of writes (inserts of its own rows, updates of rows it knows,
//! multi-statement transactions; mostly to the primary, some through a replica, which forwards
//! them) and reads (point selects of its acknowledged rows with its read-your-writes position,
//! on the primary and the replicas; small range and aggregate queries), keeping its [`Ledger`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::{Api, Outcome};
use crate::ledger::{Ended, Ledger, Write};
use crate::sample::Counters;

/// The soak's table.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS soak (client INTEGER NOT NULL, seq INTEGER NOT NULL, v INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (client, seq))";

const INSERT: &str = "INSERT INTO soak (client, seq, v, payload) VALUES (?, ?, 0, ?)";
const UPDATE: &str = "UPDATE soak SET v = ?, payload = ? WHERE client = ? AND seq = ?";

/// A client's id and the nodes it talks to.
pub struct Client {
    pub id: i64,
    /// The primary.
    pub primary: Api,
    /// The replicas.
    pub replicas: Vec<Api>,
    pub counters: Arc<Counters>,
    pub stop: Arc<AtomicBool>,
}

fn payload() -> String {
    let n = fastrand::usize(200..400);
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(n)
        .collect()
}

impl Client {
    /// Runs until `stop`; returns what it knows of its rows.
    pub async fn run(self) -> Ledger {
        let mut ledger = Ledger::default();
        let mut next_seq = 1i64;
        while !self.stop.load(Ordering::Relaxed) {
            let dice = fastrand::u32(0..100);
            if dice < 55 {
                let write = self.plan_write(&ledger, &mut next_seq, dice);
                self.send_write(&mut ledger, &write).await;
            } else if dice < 85 {
                self.point_read(&ledger).await;
            } else {
                self.range_read(next_seq).await;
            }
        }
        ledger
    }

    /// A single insert (most), an update of a known row, or a transaction of two inserts and an
    /// update.
    fn plan_write(&self, ledger: &Ledger, next_seq: &mut i64, dice: u32) -> Write {
        let exact = ledger.exact_rows();
        let mut w = Write::default();
        let pick = |w: &mut Write| {
            if !exact.is_empty() {
                let (s, v) = exact[fastrand::usize(..exact.len())];
                w.updates.push((s, v + 1));
            }
        };
        let mut insert = |w: &mut Write| {
            w.inserts.push(*next_seq);
            *next_seq += 1;
        };
        match dice {
            0..35 => insert(&mut w),
            35..45 => {
                pick(&mut w);
                if w.updates.is_empty() {
                    insert(&mut w);
                }
            }
            _ => {
                insert(&mut w);
                insert(&mut w);
                pick(&mut w);
            }
        }
        w
    }

    async fn send_write(&self, ledger: &mut Ledger, w: &Write) {
        let mut statements: Vec<(&str, Value)> = Vec::new();
        for s in &w.inserts {
            statements.push((INSERT, json!([self.id, s, payload()])));
        }
        for (s, v) in &w.updates {
            statements.push((UPDATE, json!([v, payload(), self.id, s])));
        }
        // One write in five goes through a replica, which forwards it to the primary.
        let node = if fastrand::u32(0..5) == 0 && !self.replicas.is_empty() {
            &self.replicas[fastrand::usize(..self.replicas.len())]
        } else {
            &self.primary
        };
        match node.execute(&statements).await {
            Outcome::Done(body) => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                let position = body["position"].as_str().map(str::to_string);
                ledger.record(w, Ended::Acked, position);
            }
            Outcome::Failed(kind) => {
                self.counters.error(format!("write:{kind}"));
                ledger.record(w, Ended::Failed, None);
            }
            Outcome::Unknown(kind) => {
                self.counters.error(format!("write:{kind}"));
                ledger.record(w, Ended::Unknown, None);
            }
        }
    }

    /// Any node.
    fn any_node(&self) -> &Api {
        let i = fastrand::usize(..=self.replicas.len());
        if i == 0 {
            &self.primary
        } else {
            &self.replicas[i - 1]
        }
    }

    /// A point select of an acknowledged row on any node, with the position of the client's last
    /// acknowledged write (read-your-writes): it must see the row's version.
    async fn point_read(&self, ledger: &Ledger) {
        let exact = ledger.exact_rows();
        let (Some(position), false) = (&ledger.position, exact.is_empty()) else {
            return;
        };
        let (seq, v) = exact[fastrand::usize(..exact.len())];
        let body = json!({
            "sql": "SELECT v FROM soak WHERE client = ? AND seq = ?",
            "params": [self.id, seq],
            "consistency": "session",
            "position": position,
        });
        match self.any_node().query(&body).await {
            Outcome::Done(b) => {
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
                if b["rows"][0][0].as_i64() != Some(v) {
                    self.counters.stale_reads.fetch_add(1, Ordering::Relaxed);
                    self.counters.error("read:stale_read".into());
                    eprintln!(
                        "client {}: session read of seq {seq} at {position} expected v={v}, got {b}",
                        self.id
                    );
                }
            }
            Outcome::Failed(kind) | Outcome::Unknown(kind) => {
                self.counters.error(format!("read:{kind}"))
            }
        }
    }

    /// A small range or aggregate query on any node (stale reads).
    async fn range_read(&self, next_seq: i64) {
        let body = if fastrand::bool() {
            let from = fastrand::i64(1..=next_seq.max(1));
            json!({
                "sql": "SELECT seq, v, length(payload) FROM soak WHERE client = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                "params": [self.id, from, from + 20],
            })
        } else {
            json!({
                "sql": "SELECT count(*), sum(v), max(seq) FROM soak WHERE client = ?",
                "params": [self.id],
            })
        };
        match self.any_node().query(&body).await {
            Outcome::Done(_) => {
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(kind) | Outcome::Unknown(kind) => {
                self.counters.error(format!("read:{kind}"))
            }
        }
    }
}
