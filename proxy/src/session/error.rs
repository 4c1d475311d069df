//! Errors a client is shown: one of the proxy's own (a SQLSTATE and a message that says what
//! to do) or a shard's `ErrorResponse` passed on with the shard named.

use std::fmt::Display;

use bytes::Bytes;
use shardline_router::RouteError;

use crate::backend::conn::BackendError;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::encoding::TextError;
use crate::protocol::Frame;

/// An error the client should see, with a SQLSTATE.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientError {
    pub sqlstate: &'static str,
    pub message: String,
    /// A full `ErrorResponse` from a shard to pass on instead.
    pub frame: Option<Bytes>,
}

impl ClientError {
    /// An error of the proxy's own.
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        ClientError {
            sqlstate,
            message: message.into(),
            frame: None,
        }
    }

    /// A shard's `ErrorResponse`, passed on with the shard's name added to its message.
    pub fn from_shard(error: &Bytes, shard: &str) -> Self {
        ClientError {
            sqlstate: sqlstate::INTERNAL,
            message: String::new(),
            frame: Some(msg::error_naming_shard(
                &Frame::from_bytes(error.clone()),
                shard,
            )),
        }
    }

    /// What the client is told when its backend on `shard` failed: 57014 for a statement
    /// cancelled by `query_timeout`, else a lost connection (08006).
    pub fn from_backend(shard: &str, error: &BackendError) -> Self {
        match error {
            BackendError::QueryTimeout(limit) => ClientError::new(
                sqlstate::QUERY_CANCELED,
                format!("canceling statement due to query_timeout: it ran longer than {limit:?} on shard {shard} and was cancelled there; raise pool.query_timeout_ms in shards.yaml for longer statements"),
            ),
            other => ClientError::lost_shard(shard, other),
        }
    }

    /// The connection to `shard` broke while the proxy used it.
    pub fn lost_shard(shard: &str, cause: impl Display) -> Self {
        ClientError::new(
            sqlstate::CONNECTION_FAILURE,
            format!("lost the connection to shard {shard}: {cause}"),
        )
    }

    /// The SQLSTATE the client is sent: a shard's own, when the error is one passed on.
    pub fn code(&self) -> String {
        match &self.frame {
            Some(frame) => msg::error_field(&Frame::from_bytes(frame.clone()), b'C')
                .unwrap_or(self.sqlstate)
                .to_owned(),
            None => self.sqlstate.to_owned(),
        }
    }

    /// The `ErrorResponse` the client is sent.
    pub fn bytes(&self) -> Bytes {
        self.frame
            .clone()
            .unwrap_or_else(|| msg::error(self.sqlstate, &self.message))
    }
}

impl From<TextError> for ClientError {
    fn from(e: TextError) -> Self {
        match e {
            TextError::Invalid => ClientError::new(
                sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                "the query text is not valid in the client_encoding in use; send it in that encoding",
            ),
            TextError::Untranslatable => ClientError::new(
                sqlstate::UNTRANSLATABLE_CHARACTER,
                "a character of the statement has no equivalent in the client_encoding in use; prepare the statement again",
            ),
            TextError::Unsupported => ClientError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "shardline reads non-ASCII query text in UTF8 or a single-byte client_encoding (LATIN1-10, WIN125x, KOI8…); set client_encoding to UTF8",
            ),
        }
    }
}

impl From<RouteError> for ClientError {
    fn from(e: RouteError) -> Self {
        ClientError::new(e.sqlstate, e.message)
    }
}
