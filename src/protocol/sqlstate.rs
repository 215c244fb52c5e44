//! The SQLSTATE codes walkeeper acts on, named once (PostgreSQL's `src/backend/utils/errcodes.txt`), so no
//! module compares a server error against a string literal.

/// Class 28, invalid authorization specification: `28000` invalid_authorization_specification, `28P01`
/// invalid_password. libpq stops trying further hosts on these.
pub const CLASS_INVALID_AUTHORIZATION: &str = "28";

/// Class 57, operator intervention: `57P01` admin_shutdown, `57P02` crash_shutdown, `57P03`
/// cannot_connect_now — the server is going away or not there yet.
pub const CLASS_OPERATOR_INTERVENTION: &str = "57";

/// `0A000` feature_not_supported: e.g. READ_REPLICATION_SLOT on a logical slot.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// `42710` duplicate_object: CREATE_REPLICATION_SLOT for a slot that already exists.
pub const DUPLICATE_OBJECT: &str = "42710";

/// Codes the walsender side sends (`protocol::server::errors` words the refusals).
pub const CONNECTION_FAILURE: &str = "08006";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const INVALID_PARAMETER_VALUE: &str = "22023";
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const SYNTAX_ERROR: &str = "42601";
pub const INVALID_NAME: &str = "42602";
pub const NAME_TOO_LONG: &str = "42622";
pub const UNDEFINED_OBJECT: &str = "42704";
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const UNDEFINED_FILE: &str = "58P01";
pub const INTERNAL_ERROR: &str = "XX000";
