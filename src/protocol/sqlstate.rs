//! The SQLSTATE codes walkeeper acts on, named once (PostgreSQL's `src/backend/utils/errcodes.txt`), so no
//! module compares a server error against a string literal.

/// Class 28, invalid authorization specification: `28000` invalid_authorization_specification, `28P01`
/// invalid_password. libpq stops trying further hosts on these.
pub const CLASS_INVALID_AUTHORIZATION: &str = "28";

/// `0A000` feature_not_supported: e.g. READ_REPLICATION_SLOT on a logical slot.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// `42710` duplicate_object: CREATE_REPLICATION_SLOT for a slot that already exists.
pub const DUPLICATE_OBJECT: &str = "42710";
