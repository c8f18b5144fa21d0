-- One single-row INSERT per transaction (autocommit), into bench_mm (created by
-- bench-multi-master.sh); keys drawn from 9e18 so that two masters practically never insert the same.
\set id random(1, 9000000000000000000)
INSERT INTO bench_mm (k, v) VALUES (:id, 'x');
