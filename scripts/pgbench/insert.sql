-- One single-row INSERT per transaction (autocommit), into bench_insert (created by bench-pg.sh).
\set id random(1, 1000000000)
INSERT INTO bench_insert (k, v) VALUES (:id, 'x');
