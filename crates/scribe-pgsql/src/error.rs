//! The one error this crate returns: a statement Scribe cannot run, with the PostgreSQL SQLSTATE
//! the session layer sends back in its `ErrorResponse`.

/// `0A000` feature_not_supported: valid PostgreSQL that Scribe does not support.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `42601` syntax_error: the statement does not parse (an unterminated quote, a malformed COPY).
pub const SYNTAX_ERROR: &str = "42601";
/// `22P04` bad_copy_file_format: COPY data that cannot be decoded.
pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
/// `22021` character_not_in_repertoire: COPY data that is not UTF-8.
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

/// A statement (or COPY data) that Scribe refuses, and why.
///
/// `sqlstate` is always one of the constants of this module, so the session layer can send it
/// as the `C` field of an `ErrorResponse` unchanged; `message` is the `M` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQLSTATE {sqlstate})")]
pub struct CompatError {
    /// The five-character SQLSTATE code.
    pub sqlstate: &'static str,
    /// A sentence for the user.
    pub message: String,
}

impl CompatError {
    /// A feature_not_supported error: `what` is the thing Scribe does not support.
    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        CompatError {
            sqlstate: FEATURE_NOT_SUPPORTED,
            message: format!("Scribe does not support {what}"),
        }
    }

    /// A syntax_error with the given message.
    pub fn syntax(message: impl Into<String>) -> Self {
        CompatError {
            sqlstate: SYNTAX_ERROR,
            message: message.into(),
        }
    }

    /// A bad_copy_file_format error with the given message.
    pub fn copy_format(message: impl Into<String>) -> Self {
        CompatError {
            sqlstate: BAD_COPY_FILE_FORMAT,
            message: message.into(),
        }
    }
}
