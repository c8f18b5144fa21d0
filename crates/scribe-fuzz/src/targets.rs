//! The fuzz targets: one function per decoder of untrusted bytes, each `fn(&[u8]) -> bool` that
//! must never panic (it answers whether the decoder accepted the input), with the seeds the real
//! encoders produce and a dictionary of the format's words.

mod http;
mod log;
mod log_dir;
mod multi_master;
mod pg_session;
mod pgsql;
mod wire;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name, also its corpus directory's and its crash files' prefix.
    pub name: &'static str,
    /// What it feeds its input to.
    pub about: &'static str,
    /// Runs the decoder on an input; panics on a bug; answers whether the input was accepted.
    pub run: fn(&[u8]) -> bool,
    /// Valid inputs made by the real encoders.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Words of the format for the mutator to insert.
    pub dict: &'static [&'static [u8]],
}

/// Every target, in a fixed order.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "wire_frame",
            about: "peer wire: frame::decode, and read_message over the bytes as a stream",
            run: wire::frame,
            seeds: wire::frame_seeds,
            dict: wire::DICT,
        },
        Target {
            name: "wire_body",
            about: "peer wire: Message::decode_body",
            run: wire::body,
            seeds: wire::body_seeds,
            dict: wire::DICT,
        },
        Target {
            name: "wire_handshake",
            about: "peer wire: a decoded Hello through the primary's handshake decision",
            run: wire::handshake,
            seeds: wire::handshake_seeds,
            dict: wire::DICT,
        },
        Target {
            name: "log_record",
            about: "change log: record::decode_frame and segment::scan",
            run: log::record,
            seeds: log::record_seeds,
            dict: log::DICT,
        },
        Target {
            name: "log_headers",
            about: "change log: segment::decode_header and Terms::decode",
            run: log::headers,
            seeds: log::header_seeds,
            dict: log::DICT,
        },
        Target {
            name: "log_dir",
            about: "change log: Log::open (recovery) of a directory of arbitrary segment files",
            run: log_dir::open,
            seeds: log_dir::seeds,
            dict: log::DICT,
        },
        Target {
            name: "pg_translate",
            about: "PostgreSQL SQL: split, the lexer, translate and translate_for",
            run: pgsql::sql,
            seeds: pgsql::sql_seeds,
            dict: pgsql::DICT,
        },
        Target {
            name: "pg_copy",
            about: "PostgreSQL COPY: parse_copy_rows and CopyDecoder, whole and in chunks",
            run: pgsql::copy,
            seeds: pgsql::copy_seeds,
            dict: pgsql::DICT,
        },
        Target {
            name: "pg_session",
            about: "PostgreSQL front end: bind parameters, startup options, savepoints, Parse",
            run: pg_session::session,
            seeds: pg_session::seeds,
            dict: pg_session::DICT,
        },
        Target {
            name: "http_body",
            about: "HTTP JSON bodies of /v1/execute, /v1/query and /v1/tx, and their validation",
            run: http::body,
            seeds: http::body_seeds,
            dict: http::DICT,
        },
        Target {
            name: "core_tokens",
            about: "position tokens, commit modes, sync sets, sync-timeout policies, durations",
            run: http::tokens,
            seeds: http::token_seeds,
            dict: http::DICT,
        },
        Target {
            name: "mm_schema",
            about:
                "multi-master: SQL through the schema-change rules, conflict policies as written",
            run: multi_master::schema,
            seeds: multi_master::seeds,
            dict: multi_master::DICT,
        },
    ]
}

/// The target called `name`.
pub fn find(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}
