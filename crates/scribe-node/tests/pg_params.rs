//! Bind parameters as PostgreSQL clients send them, decoded by the PostgreSQL front end:
//! regressions the fuzzer (`crates/scribe-fuzz`, target `pg_session`) found.

use bytes::Bytes;
use pgwire::api::portal::Format;
use pgwire::api::Type;
use scribe_node::pg::types::decode_params;
use scribe_sqlite::Value;

fn bytea_text(s: &str) -> Result<Vec<Value>, String> {
    decode_params(
        &[Some(Bytes::copy_from_slice(s.as_bytes()))],
        &[Some(Type::BYTEA)],
        &Format::UnifiedText,
    )
    .map_err(|e| format!("{} {}", e.sqlstate, e.message))
}

/// A bytea parameter in text format whose hex digits hold a multi-byte character: the decoder
/// sliced the string every two bytes and panicked inside the character (the fuzzer's input was
/// `\x😀`), ending the client's session. It is invalid text for bytea (SQLSTATE 22P02).
#[test]
fn a_bytea_parameter_with_a_multibyte_character_is_refused_not_a_panic() {
    for s in ["\\x\u{1f600}", "\\xa\u{e9}b", "\\x\u{e9}"] {
        let err = bytea_text(s).expect_err(s);
        assert!(err.starts_with("22P02 "), "{s:?}: {err}");
        assert!(err.contains("expected \\x and hex digits"), "{s:?}: {err}");
    }
}

#[test]
fn bytea_hex_text_decodes_and_only_hex_digits_count() {
    assert_eq!(
        bytea_text("\\xDEADbeef00").unwrap(),
        vec![Value::Blob(vec![0xde, 0xad, 0xbe, 0xef, 0x00])]
    );
    assert_eq!(bytea_text("\\x").unwrap(), vec![Value::Blob(Vec::new())]);
    // A sign is not a hex digit (the old decoder took "+f" for 0x0f).
    for s in ["\\x+f", "\\x-1", "\\x0g", "\\x0", "00"] {
        assert!(bytea_text(s).is_err(), "{s:?} decoded");
    }
}
