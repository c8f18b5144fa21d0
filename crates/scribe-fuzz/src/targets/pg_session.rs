//! The PostgreSQL front end's own decoding (`scribe-node`'s `pg` module), `pg_session`: a
//! client's bind parameters in text and binary formats with the types it declared
//! ([`decode_params`]), the startup packet's `options` ([`startup_options`], what `PGOPTIONS`
//! sends), savepoint statements ([`savepoint_of`]) and the extended protocol's Parse
//! ([`handler::parse`]).
//!
//! Input: a mode byte (bit 0: binary format), a type byte (where the list of declared types
//! starts), then the parameters separated by `0x1f`; the whole input, as text, is also the
//! options string and the statement.

use bytes::Bytes;
use pgwire::api::portal::Format;
use pgwire::api::Type;
use scribe_node::pg::handler;
use scribe_node::pg::session::{savepoint_of, startup_options};
use scribe_node::pg::types::decode_params;
use scribe_sqlite::Value;

const TYPES: &[Type] = &[
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::OID,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::NUMERIC,
    Type::BOOL,
    Type::BYTEA,
    Type::TEXT,
    Type::VARCHAR,
    Type::JSON,
    Type::UNKNOWN,
    Type::DATE,
    Type::TIMESTAMP,
];

/// `pg_session`.
pub fn session(input: &[u8]) -> bool {
    let text = String::from_utf8_lossy(input);
    let mut accepted = false;
    for (name, value) in startup_options(&text) {
        assert!(!name.contains('-'), "an option name keeps a '-': {name:?}");
        let _ = value;
        accepted = true;
    }
    if let Some((_, name)) = savepoint_of(&text) {
        assert!(!name.is_empty() || text.contains('"'));
        accepted = true;
    }
    if let Ok(p) = handler::parse(&text, false) {
        let _ = p.params;
        accepted = true;
    }
    let [mode, first, rest @ ..] = input else {
        return accepted;
    };
    let format = if mode & 1 == 1 {
        Format::UnifiedBinary
    } else {
        Format::UnifiedText
    };
    let params: Vec<Option<Bytes>> = rest
        .split(|&b| b == 0x1f)
        .map(|p| (p != b"\\0").then(|| Bytes::copy_from_slice(p)))
        .collect();
    let types: Vec<Option<Type>> = (0..params.len())
        .map(|i| {
            TYPES
                .get((usize::from(*first) + i) % (TYPES.len() + 1))
                .cloned()
        })
        .collect();
    if let Ok(values) = decode_params(&params, &types, &format) {
        assert_eq!(values.len(), params.len(), "a parameter went missing");
        for (v, p) in values.iter().zip(&params) {
            if p.is_none() {
                assert_eq!(v, &Value::Null, "a NULL parameter decoded as {v:?}");
            }
        }
        accepted = true;
    }
    accepted
}

/// Seeds for `pg_session`.
pub fn seeds() -> Vec<Vec<u8>> {
    let params = |mode: u8, first: u8, ps: &[&[u8]]| {
        let mut v = vec![mode, first];
        v.extend_from_slice(&ps.join(&0x1f));
        v
    };
    vec![
        params(0, 0, &[b"1", b"-32768", b"9223372036854775807", b"42"]),
        params(0, 4, &[b"1.5", b"-1e300", b"12.50", b"true", b"\\x00ff10"]),
        params(
            0,
            9,
            &[
                b"text",
                "h\u{e9}llo".as_bytes(),
                b"{\"a\":1}",
                b"\\0",
                b"2024-01-01",
            ],
        ),
        params(
            1,
            0,
            &[
                &7i16.to_be_bytes(),
                &7i32.to_be_bytes(),
                &7i64.to_be_bytes(),
            ],
        ),
        params(
            1,
            4,
            &[
                &1.5f32.to_be_bytes(),
                &2.5f64.to_be_bytes(),
                b"",
                &[1],
                b"\x00\x01",
            ],
        ),
        params(1, 9, &[b"bin text", b"v", b"{}", b"raw"]),
        params(0, 8, &[b"\\x", b"\\xDEADbeef", b"\\x0"]),
        b"-c statement_timeout=5min -c scribe.commit=semi-sync --search-path=public".to_vec(),
        b"-c application_name=a\\ b".to_vec(),
        b"SAVEPOINT sp1".to_vec(),
        b"ROLLBACK TRANSACTION TO SAVEPOINT \"sp 1\"".to_vec(),
        b"RELEASE sp1;".to_vec(),
        b"INSERT INTO t VALUES ($1, $2) RETURNING id".to_vec(),
    ]
}

/// Words of the startup options, savepoints and parameter values.
pub const DICT: &[&[u8]] = &[
    b"-c ",
    b"--",
    b"=",
    b"\\ ",
    b"SAVEPOINT ",
    b"RELEASE ",
    b"ROLLBACK TO ",
    b"\\x",
    b"\x1f",
    b"\\0",
    b"true",
    b"off",
    b"NaN",
    b"inf",
    b"-0",
    b"1e400",
    b"$1",
    b"\xc3\xa9",
];
