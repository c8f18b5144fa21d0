//! Multi-master engines against real files: local transactions become stamped records, records
//! read from another engine's log apply (once, whichever peer they come from), concurrent writes
//! merge by each table's policy, schema changes run on one node only, and a restart resumes
//! the version vector and the clock.

use std::collections::BTreeMap;
use std::path::Path;

use scribe_core::multi_master::{Seq, TablePolicy};
use scribe_core::Lsn;
use scribe_sqlite::mm::MultiMaster;
use scribe_sqlite::{Engine, EngineError, EngineOptions, Statement, Value};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn options(dir: &Path, node: &str) -> EngineOptions {
    let mut o = EngineOptions::new(dir);
    let mut policies = BTreeMap::new();
    policies.insert(
        "counters".to_string(),
        "merge(hits=sum, best=max)".parse::<TablePolicy>().unwrap(),
    );
    policies.insert("addr".to_string(), TablePolicy::Versioned);
    o.multi_master = Some(MultiMaster {
        node: node.to_string(),
        ddl_node: "n1".to_string(),
        policies,
        max_offset_ms: 10_000,
    });
    o
}

fn open(dir: &Path, node: &str) -> Engine {
    Engine::open(options(dir, node)).unwrap().0
}

async fn exec(e: &Engine, sql: &str) -> Result<(), EngineError> {
    e.execute(vec![Statement::new(sql)]).await.map(|_| ())
}

async fn rows(e: &Engine, sql: &str) -> Vec<Vec<Value>> {
    e.query(Statement::new(sql)).await.unwrap().rows.rows
}

/// `e`'s log from `from` on, as a peer link sends it: (LSN, payload).
fn log_of(e: &Engine, from: u64) -> Vec<(u64, Vec<u8>)> {
    e.read_log(Lsn(from))
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn.0, r.payload)
        })
        .collect()
}

/// Streams what `to` has not read of `from`'s log into `to`, as a peer link does.
async fn pull(to: &Engine, to_name: &str, from: &Engine, from_name: &str) -> u64 {
    let _ = to_name;
    let log_id = from.mm_status().unwrap().log_id;
    let cursor = to
        .mm_status()
        .unwrap()
        .cursors
        .get(from_name)
        .copied()
        .unwrap_or_default();
    // A position in another log of the peer's (it was seeded since) means nothing: read its
    // log from its start.
    let next = if cursor.log_id == log_id {
        cursor.lsn + 1
    } else {
        from.log_first_lsn().0
    };
    let records: Vec<(u64, Vec<u8>)> = log_of(from, next);
    if records.is_empty() {
        return 0;
    }
    to.mm_apply(from_name.to_string(), log_id, records)
        .await
        .unwrap()
        .applied
}

/// Every engine pulls from every other until nothing new moves.
async fn exchange(engines: &[Engine]) {
    loop {
        let mut moved = 0;
        for (i, to) in engines.iter().enumerate() {
            for (j, from) in engines.iter().enumerate() {
                if i != j {
                    moved += pull(to, NODES[i], from, NODES[j]).await;
                }
            }
        }
        if moved == 0 {
            return;
        }
    }
}

async fn contents(e: &Engine) -> Vec<Vec<Vec<Value>>> {
    vec![
        rows(e, "SELECT * FROM item ORDER BY id").await,
        rows(e, "SELECT * FROM counters ORDER BY id").await,
    ]
}

async fn schema(e: &Engine) {
    exec(
        e,
        "CREATE TABLE item (id TEXT NOT NULL PRIMARY KEY, name TEXT, price INTEGER)",
    )
    .await
    .unwrap();
    exec(
        e,
        "CREATE TABLE counters (id TEXT NOT NULL PRIMARY KEY, hits INTEGER DEFAULT 0, best INTEGER)",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn three_engines_merge_concurrent_writes_by_policy_and_converge() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Engine> = dirs
        .iter()
        .zip(NODES)
        .map(|(d, n)| open(d.path(), n))
        .collect();
    schema(&engines[0]).await;
    // Schema changes run on the DDL node only; unsafe ones nowhere.
    let e = exec(
        &engines[1],
        "CREATE TABLE other (id TEXT NOT NULL PRIMARY KEY)",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("run on node \"n1\""), "{e}");
    let e = exec(
        &engines[0],
        "CREATE TABLE bad (id INTEGER PRIMARY KEY, v TEXT)",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("not allowed in multi-master mode"), "{e}");
    exchange(&engines).await;
    exec(&engines[0], "INSERT INTO item VALUES ('a', 'apple', 1)")
        .await
        .unwrap();
    exec(
        &engines[0],
        "INSERT INTO counters (id, best) VALUES ('c', 0)",
    )
    .await
    .unwrap();
    exchange(&engines).await;
    // Concurrent: n2 renames, n3 reprices the same row; every node adds to the counter.
    exec(
        &engines[1],
        "UPDATE item SET name = 'apricot' WHERE id = 'a'",
    )
    .await
    .unwrap();
    exec(&engines[2], "UPDATE item SET price = 7 WHERE id = 'a'")
        .await
        .unwrap();
    for (i, e) in engines.iter().enumerate() {
        for _ in 0..10 {
            exec(e, "UPDATE counters SET hits = hits + 1 WHERE id = 'c'")
                .await
                .unwrap();
        }
        exec(
            e,
            &format!("UPDATE counters SET best = {} WHERE id = 'c'", 10 * (i + 1)),
        )
        .await
        .unwrap();
    }
    exec(&engines[1], "INSERT INTO item VALUES ('b', 'banana', 2)")
        .await
        .unwrap();
    exchange(&engines).await;
    let want = vec![
        vec![
            vec![
                Value::Text("a".into()),
                Value::Text("apricot".into()),
                Value::Integer(7),
            ],
            vec![
                Value::Text("b".into()),
                Value::Text("banana".into()),
                Value::Integer(2),
            ],
        ],
        vec![vec![
            Value::Text("c".into()),
            Value::Integer(30),
            Value::Integer(30),
        ]],
    ];
    for e in &engines {
        assert_eq!(contents(e).await, want);
        let vv = e.mm_status().unwrap().vv;
        assert_eq!(vv.get("n1"), Seq(15));
        assert_eq!(vv.get("n2"), Seq(13));
        assert_eq!(vv.get("n3"), Seq(12));
    }
    // A record that arrives again, from another peer, changes nothing.
    let again: Vec<(u64, Vec<u8>)> = log_of(&engines[1], 1);
    let done = engines[2].mm_apply("n2".into(), 0, again).await.unwrap();
    assert_eq!(done.applied, 0);
    assert!(done.duplicates > 20, "{done:?}");
    assert_eq!(contents(&engines[2]).await, want);
    for e in engines {
        e.shutdown().await;
    }
}

#[tokio::test]
async fn a_restarted_engine_resumes_its_sequence_its_clock_and_its_peers_positions() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = open(dirs[0].path(), "n1");
    let b = open(dirs[1].path(), "n2");
    schema(&a).await;
    exec(&a, "INSERT INTO item VALUES ('a', 'one', 1)")
        .await
        .unwrap();
    pull(&b, "n2", &a, "n1").await;
    exec(&b, "UPDATE item SET name = 'two' WHERE id = 'a'")
        .await
        .unwrap();
    pull(&a, "n1", &b, "n2").await;
    a.shutdown().await;
    a = open(dirs[0].path(), "n1");
    let st = a.mm_status().unwrap();
    assert_eq!(st.vv.get("n1"), Seq(3));
    assert_eq!(st.vv.get("n2"), Seq(1));
    assert!(st.cursors["n2"].lsn > 0);
    // Its next write is stamped after everything it holds: it wins over n2's earlier one.
    exec(&a, "UPDATE item SET name = 'three' WHERE id = 'a'")
        .await
        .unwrap();
    assert_eq!(pull(&a, "n1", &b, "n2").await, 0);
    pull(&b, "n2", &a, "n1").await;
    for e in [&a, &b] {
        assert_eq!(
            rows(e, "SELECT name FROM item").await,
            vec![vec![Value::Text("three".into())]]
        );
        assert_eq!(e.mm_status().unwrap().vv.get("n1"), Seq(4));
    }
    a.shutdown().await;
    b.shutdown().await;
    // The other mode cannot open its data.
    let e = Engine::open(EngineOptions::new(dirs[0].path()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("start the node with --multi-master"), "{e}");
}

#[tokio::test]
async fn a_record_of_this_node_it_never_wrote_and_a_gap_are_refused() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = open(dirs[0].path(), "n1");
    let b = open(dirs[1].path(), "n2");
    schema(&a).await;
    exec(&a, "INSERT INTO item VALUES ('a', 'one', 1)")
        .await
        .unwrap();
    let log: Vec<(u64, Vec<u8>)> = log_of(&a, 1);
    // A gap: the third record without the first two.
    let e = b
        .mm_apply("n1".into(), 0, log[2..].to_vec())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("applied up to 0"), "{e}");
    // A fresh n1 (its data lost) is sent n1's own records back: refused, not taken as new.
    b.mm_apply("n1".into(), 0, log.clone()).await.unwrap();
    let fresh = open(dirs[2].path(), "n1");
    let e = fresh
        .mm_apply("n2".into(), 0, log)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("never wrote"), "{e}");
    let e = b
        .mm_apply("n2".into(), 0, Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("which is this node"), "{e}");
    for e in [a, b, fresh] {
        e.shutdown().await;
    }
}

#[tokio::test]
async fn a_versioned_rows_concurrent_write_is_one_conflict_everywhere_until_resolved() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Engine> = dirs
        .iter()
        .zip(NODES)
        .map(|(d, n)| open(d.path(), n))
        .collect();
    exec(
        &engines[0],
        "CREATE TABLE addr (id TEXT NOT NULL PRIMARY KEY, street TEXT, city TEXT)",
    )
    .await
    .unwrap();
    exec(
        &engines[0],
        "INSERT INTO addr VALUES ('u1', 'Main St', 'Springfield')",
    )
    .await
    .unwrap();
    exchange(&engines).await;
    // Concurrent: neither has seen the other's write.
    exec(
        &engines[0],
        "UPDATE addr SET street = '1 Main St' WHERE id = 'u1'",
    )
    .await
    .unwrap();
    exec(
        &engines[1],
        "UPDATE addr SET street = '1 Main Street' WHERE id = 'u1'",
    )
    .await
    .unwrap();
    exchange(&engines).await;
    let conflicts = |e: &Engine| {
        let e = e.clone();
        async move {
            rows(
                &e,
                "SELECT id, node, row, winner_node FROM scribe_conflicts ORDER BY id",
            )
            .await
        }
    };
    let first = conflicts(&engines[0]).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let shown = rows(&engines[0], "SELECT * FROM addr").await;
    for e in &engines {
        assert_eq!(
            conflicts(e).await,
            first,
            "the same one conflict everywhere"
        );
        assert_eq!(
            rows(e, "SELECT * FROM addr").await,
            shown,
            "the same winner everywhere"
        );
    }
    // The winner's node writes the row again as usual: the other node's version stays a conflict.
    let winner = match &first[0][3] {
        Value::Text(n) => n.clone(),
        other => panic!("{other:?}"),
    };
    let w = NODES.iter().position(|n| *n == winner).unwrap();
    exec(
        &engines[w],
        "UPDATE addr SET city = 'Shelbyville' WHERE id = 'u1'",
    )
    .await
    .unwrap();
    exchange(&engines).await;
    let still = conflicts(&engines[2]).await;
    assert_eq!(still.len(), 1, "{still:?}");
    let id = match &still[0][0] {
        Value::Text(id) => id.clone(),
        other => panic!("{other:?}"),
    };
    // A resolution that saw other conflicts than the row has is refused.
    let refused = engines[2]
        .mm_resolve(scribe_sqlite::mm::Resolution {
            id: id.clone(),
            row: None,
            expect: Some(vec!["0000000000000000".into()]),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("read them again"), "{refused}");
    // Resolved on the third node with a merged row: no conflict anywhere, the row everywhere.
    let mut row = BTreeMap::new();
    row.insert(
        "street".to_string(),
        Value::Text("1 Main Street, Apt 2".into()),
    );
    row.insert("city".to_string(), Value::Text("Shelbyville".into()));
    engines[2]
        .mm_resolve(scribe_sqlite::mm::Resolution {
            id: id.clone(),
            row: Some(row),
            expect: Some(vec![id.clone()]),
        })
        .await
        .unwrap();
    exchange(&engines).await;
    for e in &engines {
        assert!(conflicts(e).await.is_empty());
        assert_eq!(
            rows(e, "SELECT * FROM addr").await,
            vec![vec![
                Value::Text("u1".into()),
                Value::Text("1 Main Street, Apt 2".into()),
                Value::Text("Shelbyville".into()),
            ]]
        );
    }
    // A restart keeps the versions: a write after it is ordinary, nothing comes back.
    let e = engines[0].clone();
    e.shutdown().await;
    let e = open(dirs[0].path(), "n1");
    assert!(rows(&e, "SELECT * FROM scribe_conflicts").await.is_empty());
    e.shutdown().await;
    for e in &engines[1..] {
        e.shutdown().await;
    }
}

#[tokio::test]
async fn a_column_written_twice_a_column_added_meanwhile_and_ddl_after_rows() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Engine> = dirs
        .iter()
        .zip(NODES)
        .map(|(d, n)| open(d.path(), n))
        .collect();
    schema(&engines[0]).await;
    exchange(&engines).await;
    // Insert, then update the same column, in one transaction: the update's value stays.
    engines[1]
        .execute(vec![
            Statement::new("INSERT INTO item VALUES ('k', 'zz', 1)"),
            Statement::new("UPDATE item SET name = 'aa' WHERE id = 'k'"),
        ])
        .await
        .unwrap();
    exchange(&engines).await;
    for e in &engines {
        assert_eq!(
            rows(e, "SELECT name FROM item WHERE id = 'k'").await,
            vec![vec![Value::Text("aa".into())]]
        );
    }
    // n1 adds columns with defaults while n2 inserts a row without them: the row gets the
    // defaults on both, and the NOT NULL one does not stop the stream.
    exec(
        &engines[0],
        "ALTER TABLE item ADD COLUMN color TEXT DEFAULT 'red'",
    )
    .await
    .unwrap();
    exec(
        &engines[0],
        "ALTER TABLE item ADD COLUMN w INTEGER NOT NULL DEFAULT 0",
    )
    .await
    .unwrap();
    exec(
        &engines[1],
        "INSERT INTO item (id, name, price) VALUES ('new', 'n', 2)",
    )
    .await
    .unwrap();
    exchange(&engines).await;
    for e in &engines {
        assert_eq!(
            rows(e, "SELECT id, color, w FROM item ORDER BY id").await,
            vec![
                vec![
                    Value::Text("k".into()),
                    Value::Text("red".into()),
                    Value::Integer(0)
                ],
                vec![
                    Value::Text("new".into()),
                    Value::Text("red".into()),
                    Value::Integer(0)
                ],
            ]
        );
    }
    // A schema change after row changes in one transaction is refused, with nothing kept.
    let e = engines[0]
        .execute(vec![
            Statement::new("INSERT INTO item (id) VALUES ('x')"),
            Statement::new("CREATE INDEX item_name ON item (name)"),
        ])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("a schema change after row changes"), "{e}");
    assert!(rows(&engines[0], "SELECT id FROM item WHERE id = 'x'")
        .await
        .is_empty());
    for e in engines {
        e.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_that_reaches_only_one_peer_gets_the_third_nodes_records_through_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Engine> = dirs
        .iter()
        .zip(NODES)
        .map(|(d, n)| open(d.path(), n))
        .collect();
    schema(&engines[0]).await;
    exec(&engines[0], "INSERT INTO item VALUES ('a', 'from n1', 1)")
        .await
        .unwrap();
    // n3 never reads n1's log: only n2's, which relays what n2 applied from n1.
    pull(&engines[1], "n2", &engines[0], "n1").await;
    exec(&engines[1], "UPDATE item SET price = 2 WHERE id = 'a'")
        .await
        .unwrap();
    let applied = pull(&engines[2], "n3", &engines[1], "n2").await;
    assert_eq!(applied, 4, "n1's three records and n2's one");
    assert_eq!(
        rows(&engines[2], "SELECT * FROM item").await,
        vec![vec![
            Value::Text("a".into()),
            Value::Text("from n1".into()),
            Value::Integer(2),
        ]]
    );
    let vv = engines[2].mm_status().unwrap().vv;
    assert_eq!((vv.get("n1"), vv.get("n2")), (Seq(3), Seq(1)));
    for e in engines {
        e.shutdown().await;
    }
}

#[tokio::test]
async fn a_new_node_seeded_from_one_peers_snapshot_converges_with_every_peer() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engines: Vec<Engine> = NODES
        .iter()
        .take(2)
        .zip(&dirs)
        .map(|(n, d)| open(d.path(), n))
        .collect();
    let (n1, n2) = (&engines[0], &engines[1]);
    schema(n1).await;
    pull(n2, "n2", n1, "n1").await;
    for i in 0..20 {
        exec(n1, &format!("INSERT INTO item VALUES ('a{i}', 'one', {i})"))
            .await
            .unwrap();
        exec(n2, &format!("INSERT INTO item VALUES ('b{i}', 'two', {i})"))
            .await
            .unwrap();
    }
    // n1 has read part of n2's log: what n3 gets from n1's snapshot, and where it reads n2 on.
    let half: Vec<(u64, Vec<u8>)> = log_of(n2, 1).into_iter().take(10).collect();
    let n2_log = n2.mm_status().unwrap().log_id;
    n1.mm_apply("n2".into(), n2_log, half).await.unwrap();
    let snap = dirs[0].path().join("seed.snapshot");
    let at = n1.snapshot(snap.clone()).await.unwrap();

    // A node that holds something is not seeded: it would lose what the peer lacks.
    let marker = |i: usize| dirs[i].path().join("SEEDING");
    let held = n2
        .mm_install_snapshot(snap.clone(), "n1".into(), 0, marker(1))
        .await;
    assert!(
        matches!(&held, Err(EngineError::BadRequest(m)) if m.contains("holds records already")),
        "{held:?}"
    );
    assert!(!marker(1).exists(), "a refusal changes nothing");

    let n3 = open(dirs[2].path(), "n3");
    let n3_first_log = n3.mm_status().unwrap().log_id;
    let n1_log = n1.mm_status().unwrap().log_id;
    // A copy that is not a multi-master database is refused before anything changes.
    let stranger = dirs[2].path().join("stranger.db");
    rusqlite::Connection::open(&stranger)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let refused = n3
        .mm_install_snapshot(stranger, "n1".into(), n1_log, marker(2))
        .await;
    assert!(
        matches!(refused, Err(EngineError::Diverged(_))),
        "{refused:?}"
    );
    assert!(!marker(2).exists());
    let installed = n3
        .mm_install_snapshot(snap, "n1".into(), n1_log, marker(2))
        .await
        .unwrap();
    assert_eq!(installed, at);
    assert!(
        !marker(2).exists(),
        "the marker goes once the copy is whole"
    );
    let st = n3.mm_status().unwrap();
    assert_eq!(st.vv, n1.mm_status().unwrap().vv);
    assert_eq!(st.cursors["n1"].lsn, at.lsn.0);
    assert_eq!(st.cursors["n1"].log_id, n1_log);
    assert_eq!(st.cursors["n2"], n1.mm_status().unwrap().cursors["n2"]);
    assert!(!st.cursors.contains_key("n3"));
    assert_ne!(st.log_id, n1_log, "the seeded node's log is its own");
    assert_ne!(st.log_id, n3_first_log);
    assert_eq!(contents(&n3).await, contents(n1).await);

    // From here it reads each peer's log on from where the snapshot left it, writes, and every
    // node converges; its own log starts at the snapshot's position.
    assert_eq!(n3.log_first_lsn(), at.lsn.next());
    exec(&n3, "INSERT INTO item VALUES ('c', 'three', 3)")
        .await
        .unwrap();
    let all = [n1, n2, &n3];
    let names = ["n1", "n2", "n3"];
    for _ in 0..2 {
        for (i, to) in all.iter().enumerate() {
            for (j, from) in all.iter().enumerate() {
                if i != j {
                    pull(to, names[i], from, names[j]).await;
                }
            }
        }
    }
    let want = contents(n1).await;
    assert_eq!(contents(n2).await, want);
    assert_eq!(contents(&n3).await, want);
    assert_eq!(want[0].len(), 41, "{want:?}");
    assert_eq!(n3.mm_status().unwrap().vv.get("n3"), Seq(1));

    // What a peer must hold to stream n3's log from its start is what the snapshot held.
    let start = n3.mm_log_start_vv().await.unwrap();
    assert_eq!(start, st.vv);
    n3.shutdown().await;
    for e in engines {
        e.shutdown().await;
    }
}

#[tokio::test]
async fn a_policy_set_through_sql_replicates_with_the_schema_and_is_fixed_once_the_table_has_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut engines: Vec<Engine> = NODES
        .iter()
        .zip(&dirs)
        .map(|(n, d)| open(d.path(), n))
        .collect();
    // With the table that it creates, in one transaction; or before a table exists.
    engines[0]
        .execute(vec![
            Statement::new(
                "CREATE TABLE votes (id TEXT NOT NULL PRIMARY KEY, up INTEGER NOT NULL DEFAULT 0, who TEXT)",
            ),
            Statement::new("ALTER TABLE votes SET POLICY merge(up = sum)"),
        ])
        .await
        .unwrap();
    exec(&engines[0], "ALTER TABLE later SET POLICY 'versioned'")
        .await
        .unwrap();
    exec(
        &engines[0],
        "CREATE TABLE later (id TEXT NOT NULL PRIMARY KEY, v TEXT)",
    )
    .await
    .unwrap();
    exec(
        &engines[0],
        "CREATE TABLE plain (id TEXT NOT NULL PRIMARY KEY)",
    )
    .await
    .unwrap();
    exec(&engines[0], "INSERT INTO votes (id) VALUES ('v')")
        .await
        .unwrap();
    exchange(&engines).await;
    for e in &engines {
        let p = e.mm_status().unwrap().policies;
        assert_eq!(p["votes"], "merge(up = sum)", "{p:?}");
        assert_eq!(p["later"], "versioned", "{p:?}");
        assert_eq!(
            rows(
                e,
                "SELECT policy, source FROM scribe_policies WHERE table_name = 'votes'"
            )
            .await,
            vec![vec![
                Value::Text("merge(up = sum)".into()),
                Value::Text("sql".into())
            ]]
        );
    }
    // Concurrent increments on every node add up: the replicated policy merges them.
    for e in &engines {
        for _ in 0..5 {
            exec(e, "UPDATE votes SET up = up + 1 WHERE id = 'v'")
                .await
                .unwrap();
        }
    }
    exchange(&engines).await;
    for e in &engines {
        assert_eq!(
            rows(e, "SELECT up FROM votes").await,
            vec![vec![Value::Integer(15)]]
        );
    }

    // Refused, changing nothing: a table that exists keeps its policy; a rule must name a
    // column; the policy is set where schema changes run.
    let exists = exec(&engines[0], "ALTER TABLE votes SET POLICY lww").await;
    assert!(
        matches!(&exists, Err(EngineError::BadRequest(m)) if m.contains("exists with policy merge(up = sum)")),
        "{exists:?}"
    );
    exec(&engines[0], "ALTER TABLE votes SET POLICY merge(up=sum)")
        .await
        .expect("setting the policy a table has changes nothing");
    let column = engines[0]
        .execute(vec![
            Statement::new("CREATE TABLE other (id TEXT NOT NULL PRIMARY KEY)"),
            Statement::new("ALTER TABLE other SET POLICY merge(nope = max)"),
        ])
        .await;
    assert!(
        matches!(&column, Err(EngineError::BadRequest(m)) if m.contains("\"nope\"")),
        "{column:?}"
    );
    let elsewhere = exec(&engines[1], "ALTER TABLE newer SET POLICY versioned").await;
    assert!(
        matches!(&elsewhere, Err(EngineError::BadRequest(m)) if m.contains("\"n1\"")),
        "{elsewhere:?}"
    );
    let bad = exec(&engines[0], "ALTER TABLE newer SET POLICY merge(x = avg)").await;
    assert!(matches!(bad, Err(EngineError::BadRequest(_))), "{bad:?}");

    // A restart keeps what SQL set; a flag that would change an existing table's policy is
    // refused at start.
    let e = engines.remove(1);
    e.shutdown().await;
    let reopened = open(dirs[1].path(), "n2");
    assert_eq!(
        reopened.mm_status().unwrap().policies["votes"],
        "merge(up = sum)"
    );
    reopened.shutdown().await;
    let mut flags = options(dirs[1].path(), "n2");
    flags
        .multi_master
        .as_mut()
        .unwrap()
        .policies
        .insert("plain".into(), TablePolicy::Versioned);
    let refused = Engine::open(flags).map(|_| ());
    assert!(
        matches!(&refused, Err(EngineError::BadRequest(m)) if m.contains("table plain exists with policy lww")),
        "{refused:?}"
    );
    for e in engines {
        e.shutdown().await;
    }
}
