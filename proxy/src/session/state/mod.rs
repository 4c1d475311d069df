//! What a session remembers between statements, as plain values: the client's transaction
//! ([`transaction`]), its settings ([`settings`]) and its prepared statements ([`statements`]).

pub mod settings;
pub(crate) mod statements;
pub(crate) mod transaction;
