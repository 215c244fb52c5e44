//! What a walsender says when it refuses something: SQLSTATEs as named constants and PostgreSQL's own words
//! for each refusal (as walsender.c, timeline.c, slot.c, auth.c, postgres.c and backend_startup.c word them
//! in 13–18), as [`ServerError`]s ready for [`super::backend::error_response`].
//!
//! A standby, `pg_receivewal` or a monitoring script matches on these texts and codes as they would on a
//! PostgreSQL server's, so they are kept word for word; where walkeeper refuses something PostgreSQL would
//! do (a base backup, logical decoding, a normal SQL session), the text says walkeeper and what to do.

use super::lsn_text;
use crate::protocol::ServerError;
use crate::wal::segment::{history_file_name, TimeLineId};
use crate::wal::Lsn;

// SQLSTATEs live in `protocol::sqlstate`; re-exported for the refusals below and their callers.
pub use crate::protocol::sqlstate::{
    ADMIN_SHUTDOWN, CANNOT_CONNECT_NOW, CONNECTION_FAILURE, DATA_CORRUPTED, DUPLICATE_OBJECT,
    FEATURE_NOT_SUPPORTED, INTERNAL_ERROR, INVALID_AUTHORIZATION_SPECIFICATION, INVALID_NAME,
    INVALID_PARAMETER_VALUE, INVALID_PASSWORD, NAME_TOO_LONG, OBJECT_NOT_IN_PREREQUISITE_STATE,
    PROTOCOL_VIOLATION, SYNTAX_ERROR, TOO_MANY_CONNECTIONS, UNDEFINED_FILE, UNDEFINED_OBJECT,
};

/// Severities as PostgreSQL sends them (the `S` and `V` fields carry the same English word).
pub const ERROR: &str = "ERROR";
pub const FATAL: &str = "FATAL";
pub const NOTICE: &str = "NOTICE";

/// An ERROR (the command fails, the session goes on).
pub fn error(code: &str, message: impl Into<String>) -> ServerError {
    report(ERROR, code, message)
}

/// A FATAL error (the server closes the connection after sending it).
pub fn fatal(code: &str, message: impl Into<String>) -> ServerError {
    report(FATAL, code, message)
}

/// A NOTICE (informational; the command goes on).
pub fn notice(code: &str, message: impl Into<String>) -> ServerError {
    report(NOTICE, code, message)
}

fn report(severity: &str, code: &str, message: impl Into<String>) -> ServerError {
    ServerError {
        severity: severity.to_string(),
        code: code.to_string(),
        message: message.into(),
        detail: None,
        hint: None,
    }
}

fn with_detail(mut e: ServerError, detail: impl Into<String>) -> ServerError {
    e.detail = Some(detail.into());
    e
}

fn with_hint(mut e: ServerError, hint: impl Into<String>) -> ServerError {
    e.hint = Some(hint.into());
    e
}

// --- Startup and authentication (backend_startup.c, auth.c, postgres.c) ---

/// A startup packet asked for a protocol major other than 3 (PostgreSQL 18's wording: it speaks 3.0 to 3.2).
pub fn unsupported_protocol(major: u32, minor: u32) -> ServerError {
    fatal(
        FEATURE_NOT_SUPPORTED,
        format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2"),
    )
}

pub fn startup_layout() -> ServerError {
    fatal(PROTOCOL_VIOLATION, "invalid startup packet layout: expected terminator as last byte")
}

pub fn no_user_name() -> ServerError {
    fatal(INVALID_AUTHORIZATION_SPECIFICATION, "no PostgreSQL user name specified in startup packet")
}

pub fn invalid_replication_parameter(value: &str) -> ServerError {
    with_hint(
        fatal(INVALID_PARAMETER_VALUE, format!("invalid value for parameter \"replication\": \"{value}\"")),
        "Valid values are: \"false\", 0, \"true\", 1, \"database\".",
    )
}

/// walkeeper serves physical replication only: a normal session or a logical (`replication=database`) one
/// is refused at startup, like a pg_hba.conf rejection, with what to do instead.
pub fn physical_replication_only(user: &str) -> ServerError {
    with_hint(
        fatal(
            INVALID_AUTHORIZATION_SPECIFICATION,
            format!("walkeeper accepts only physical replication connections (user \"{user}\")"),
        ),
        "Connect with replication=true, as a standby's primary_conninfo and pg_receivewal do.",
    )
}

/// The error every failed password check ends with (wrong password, unknown user, no usable secret), so a
/// client cannot tell which it was. libpq keys its ".pgpass" hint on the SQLSTATE.
pub fn password_authentication_failed(user: &str) -> ServerError {
    fatal(INVALID_PASSWORD, format!("password authentication failed for user \"{user}\""))
}

pub fn expected_sasl_response(got: u8) -> ServerError {
    fatal(PROTOCOL_VIOLATION, format!("expected SASL response, got message type {got}"))
}

pub fn expected_password_response(got: u8) -> ServerError {
    fatal(PROTOCOL_VIOLATION, format!("expected password response, got message type {got}"))
}

/// A frontend message type PostgreSQL does not know: the connection has lost message sync.
pub fn invalid_frontend_message_type(tag: u8) -> ServerError {
    fatal(PROTOCOL_VIOLATION, format!("invalid frontend message type {tag}"))
}

/// Parse/Bind/Describe/Execute/Close/Flush on a replication connection. PostgreSQL then ignores messages up
/// to the next Sync, which it answers with ReadyForQuery.
pub fn extended_query_not_supported() -> ServerError {
    error(PROTOCOL_VIOLATION, "extended query protocol not supported in a replication connection")
}

pub fn fastpath_not_supported() -> ServerError {
    error(PROTOCOL_VIOLATION, "fastpath function calls not supported in a replication connection")
}

// --- Replication commands (walsender.c, timeline.c, slot.c, guc.c) ---

/// Any SQL (a query whose first word is not a replication command) on a physical replication connection.
pub fn sql_not_supported() -> ServerError {
    error(FEATURE_NOT_SUPPORTED, "cannot execute SQL commands in WAL sender for physical replication")
}

pub fn syntax_error(message: impl Into<String>) -> ServerError {
    error(SYNTAX_ERROR, message)
}

/// START_REPLICATION at a position this server has not flushed. PostgreSQL sends it after CopyBothResponse.
pub fn start_ahead_of_flush(start: Lsn, flush: Lsn) -> ServerError {
    error(
        INTERNAL_ERROR,
        format!(
            "requested starting point {} is ahead of the WAL flush position of this server {}",
            lsn_text(start),
            lsn_text(flush)
        ),
    )
}

/// START_REPLICATION on a historic timeline, at a position past the point where this server left it.
pub fn start_not_in_history(start: Lsn, timeline: TimeLineId, switchpoint: Lsn) -> ServerError {
    with_detail(
        error(
            INTERNAL_ERROR,
            format!(
                "requested starting point {} on timeline {timeline} is not in this server's history",
                lsn_text(start)
            ),
        ),
        format!("This server's history forked from timeline {timeline} at {}.", lsn_text(switchpoint)),
    )
}

/// START_REPLICATION … TIMELINE n for a timeline that is neither current nor in the current one's history.
pub fn timeline_not_in_history(timeline: TimeLineId) -> ServerError {
    error(INTERNAL_ERROR, format!("requested timeline {timeline} is not in this server's history"))
}

/// TIMELINE_HISTORY for a timeline whose history file does not exist (PostgreSQL reports the failed open;
/// it has already sent the RowDescription by then, which clients ignore before an error: sending the error
/// alone reads the same).
pub fn timeline_history_missing(timeline: TimeLineId) -> ServerError {
    error(
        UNDEFINED_FILE,
        format!("could not open file \"pg_wal/{}\": No such file or directory", history_file_name(timeline)),
    )
}

/// Streaming reached a segment that is not (or no longer) there.
pub fn segment_removed(segment_file_name: &str) -> ServerError {
    error(UNDEFINED_FILE, format!("requested WAL segment {segment_file_name} has already been removed"))
}

pub fn slot_does_not_exist(slot: &str) -> ServerError {
    error(UNDEFINED_OBJECT, format!("replication slot \"{slot}\" does not exist"))
}

pub fn slot_already_exists(slot: &str) -> ServerError {
    error(DUPLICATE_OBJECT, format!("replication slot \"{slot}\" already exists"))
}

/// A slot name PostgreSQL's ReplicationSlotValidateName refuses (checked by CREATE_REPLICATION_SLOT).
pub fn invalid_slot_name(slot: &str) -> Option<ServerError> {
    if slot.is_empty() {
        return Some(error(INVALID_NAME, format!("replication slot name \"{slot}\" is too short")));
    }
    if slot.len() >= 64 {
        return Some(error(NAME_TOO_LONG, format!("replication slot name \"{slot}\" is too long")));
    }
    if !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Some(with_hint(
            error(INVALID_NAME, format!("replication slot name \"{slot}\" contains invalid character")),
            "Replication slot names may only contain lower case letters, numbers, and the underscore character.",
        ));
    }
    None
}

/// Logical slots and logical streaming on a connection without a database (what PostgreSQL says to a
/// physical replication connection).
pub fn logical_decoding_requires_database() -> ServerError {
    error(OBJECT_NOT_IN_PREREQUISITE_STATE, "logical decoding requires a database connection")
}

/// A replication command PostgreSQL would run but walkeeper does not serve (BASE_BACKUP, UPLOAD_MANIFEST).
pub fn not_served(command: &str) -> ServerError {
    with_hint(
        error(FEATURE_NOT_SUPPORTED, format!("walkeeper does not serve {command}")),
        "Run it against the primary or a PostgreSQL standby; walkeeper serves WAL only.",
    )
}

/// CREATE_REPLICATION_SLOT without TEMPORARY: walkeeper keeps no slot from one connection to the next.
pub fn persistent_slot_not_kept(slot: &str) -> ServerError {
    with_hint(
        error(FEATURE_NOT_SUPPORTED, format!("walkeeper keeps no replication slots: cannot create slot \"{slot}\"")),
        "Create a TEMPORARY slot or none (remove primary_slot_name from the standby): walkeeper keeps the WAL its connected standbys still need without one.",
    )
}

/// More clients than the walsender serves at once (PostgreSQL's words when max_connections is reached).
pub fn too_many_connections() -> ServerError {
    fatal(TOO_MANY_CONNECTIONS, "sorry, too many clients already")
}

/// The walsender has no WAL to serve yet (an empty archive and a source that never streamed).
pub fn no_wal_yet() -> ServerError {
    with_hint(
        fatal(CANNOT_CONNECT_NOW, "the archive holds no WAL yet"),
        "walkeeper serves WAL once it has received some from its source server; the standby will retry.",
    )
}

/// WAL read from the archive failed validation (or could not be read) while being served.
pub fn archived_wal_unusable(reason: &str) -> ServerError {
    error(DATA_CORRUPTED, format!("could not serve WAL from the archive: {reason}"))
}

pub fn unrecognized_configuration_parameter(name: &str) -> ServerError {
    error(UNDEFINED_OBJECT, format!("unrecognized configuration parameter \"{name}\""))
}

/// The walsender is shutting down (PostgreSQL's wording when the postmaster asks a backend to stop).
pub fn admin_shutdown() -> ServerError {
    fatal(ADMIN_SHUTDOWN, "terminating connection due to administrator command")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_postgresql_s() {
        let e = start_not_in_history(Lsn(0x3_0000_0100), 1, Lsn(0x3_0000_00A0));
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "XX000");
        assert_eq!(e.message, "requested starting point 3/100 on timeline 1 is not in this server's history");
        assert_eq!(e.detail.as_deref(), Some("This server's history forked from timeline 1 at 3/A0."));
        assert_eq!(
            start_ahead_of_flush(Lsn(0x5000000), Lsn(0x4000028)).message,
            "requested starting point 0/5000000 is ahead of the WAL flush position of this server 0/4000028"
        );
        assert_eq!(
            timeline_history_missing(10).message,
            "could not open file \"pg_wal/0000000A.history\": No such file or directory"
        );
        let bye = admin_shutdown();
        assert_eq!((bye.severity.as_str(), bye.code.as_str()), ("FATAL", "57P01"));
        let auth = password_authentication_failed("standby");
        assert_eq!((auth.severity.as_str(), auth.code.as_str()), ("FATAL", "28P01"));
        assert!(auth.is_auth_failure());
    }

    #[test]
    fn slot_names_as_postgresql_validates_them() {
        assert!(invalid_slot_name("pg_walreceiver_123").is_none());
        assert_eq!(invalid_slot_name("").unwrap().code, INVALID_NAME);
        assert_eq!(invalid_slot_name(&"a".repeat(64)).unwrap().code, NAME_TOO_LONG);
        assert!(invalid_slot_name(&"a".repeat(63)).is_none());
        let bad = invalid_slot_name("Bad").unwrap();
        assert_eq!(bad.message, "replication slot name \"Bad\" contains invalid character");
        assert!(bad.hint.is_some());
    }
}
