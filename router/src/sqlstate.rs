//! The SQLSTATE codes shardline sends, named as PostgreSQL's `errcodes.txt` names them: one
//! table for the router's refusals, the sessions' errors and the admin console, so a code is
//! chosen by meaning and drivers' retry logic sees the code PostgreSQL would send.

/// `00000`: the code of a plain `NOTICE`.
pub const SUCCESSFUL_COMPLETION: &str = "00000";
/// `01000`: a `WARNING` (the answer lacks some shards' rows under
/// `shardline.partial_results`).
pub const WARNING: &str = "01000";
/// `08001`: a shard refused the proxy's login.
pub const CANNOT_CONNECT: &str = "08001";
/// `08006`: a shard could not be reached or its connection was lost.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08P01`: a malformed protocol message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `0A000`: a construct shardline cannot run exactly (and so refuses).
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `2201W`: a negative or unreadable `LIMIT`.
pub const INVALID_ROW_COUNT_IN_LIMIT: &str = "2201W";
/// `2201X`: a negative or unreadable `OFFSET`.
pub const INVALID_ROW_COUNT_IN_OFFSET: &str = "2201X";
/// `22003`: a combined value outside its type's range.
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
/// `22021`: bytes that are not valid in the encoding.
pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
/// `2200H`: a generated key past its type's largest value.
pub const SEQUENCE_GENERATOR_LIMIT_EXCEEDED: &str = "2200H";
/// `22P05`: a character the target encoding has no equivalent for.
pub const UNTRANSLATABLE_CHARACTER: &str = "22P05";
/// `22023`: a parameter value that cannot be used.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// `22P02`: a shard key value that does not read as its type.
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
/// `23502`: a shard key left NULL.
pub const NOT_NULL_VIOLATION: &str = "23502";
/// `25000`: a statement not valid in the transaction's state.
pub const INVALID_TRANSACTION_STATE: &str = "25000";
/// `25P01`: `COMMIT`/`ROLLBACK` outside a transaction (a warning).
pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
/// `25P02`: a statement after the transaction failed.
pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
/// `25P03`: a session idle in its transaction beyond `idle_in_transaction_session_timeout`.
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
/// `3B001`: a savepoint that does not exist.
pub const INVALID_SAVEPOINT_SPECIFICATION: &str = "3B001";
/// `26000`: a prepared statement the client never prepared.
pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
/// `28000`: a user who may not do this.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `28P01`: a wrong password.
pub const INVALID_PASSWORD: &str = "28P01";
/// `3D000`: a database the cluster does not serve.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// `3F000`: a schema that does not exist.
pub const INVALID_SCHEMA_NAME: &str = "3F000";
/// `40000`: the transaction was rolled back.
pub const TRANSACTION_ROLLBACK: &str = "40000";
/// `40003`: whether the transaction committed everywhere is not known to the client.
pub const STATEMENT_COMPLETION_UNKNOWN: &str = "40003";
/// `40P01`: a deadlock, broken by cancelling one of its transactions' statements.
pub const DEADLOCK_DETECTED: &str = "40P01";
/// `42601`: text shardline (or the console) cannot read.
pub const SYNTAX_ERROR: &str = "42601";
/// `42704`: a name the console does not know.
pub const UNDEFINED_OBJECT: &str = "42704";
/// `42939`: a name reserved for the system (here: shardline's own).
pub const RESERVED_NAME: &str = "42939";
/// `42P01`: a table that does not exist.
pub const UNDEFINED_TABLE: &str = "42P01";
/// `42P05`: a prepared statement whose name the client already uses.
pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// `53300`: no connection could be had in time.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `54000`: a message or value beyond a limit.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `54001`: a statement too complex to route.
pub const STATEMENT_TOO_COMPLEX: &str = "54001";
/// `55000`: an object (a migration, a layout) not in the state the command needs.
pub const OBJECT_NOT_IN_STATE: &str = "55000";
/// `57014`: the statement was cancelled.
pub const QUERY_CANCELED: &str = "57014";
/// `57P01`: the proxy is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `F0000`: `shards.yaml` is invalid.
pub const CONFIG_FILE_ERROR: &str = "F0000";
/// `XX000`: a fault of shardline itself, never used for bad input.
pub const INTERNAL: &str = "XX000";
