//! The admin console: a client that logs in to database `shardline` as an admin user of
//! `shards.yaml` talks to the proxy itself, PgBouncer style, with `psql` or any driver's simple
//! query. The console answers `SHOW ...`, `RELOAD`, `PAUSE`, `RESUME`, `SHUTDOWN` and the resharder's `RESHARD` ([`reshard`])
//! ([`commands`]) with tables of text columns ([`show`], [`table`]).

pub mod commands;
pub mod reshard;
pub mod show;
pub mod table;

use std::sync::Arc;

use crate::socket::SocketRead;

use crate::context::ProxyContext;
use crate::protocol::backend::{self as msg, sqlstate};
use crate::protocol::frontend::query_text;
use crate::protocol::{FrameError, FrameReader};
use crate::session::ClientOutput;
use table::Reply;

/// The database name that selects the console.
pub const DATABASE: &str = "shardline";

/// Why a console session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleEnd {
    /// The socket failed.
    #[error("lost the console connection: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol; it was sent a FATAL error.
    #[error("console client sent an invalid message: {0}")]
    Protocol(String),
}

/// Completes the login of a console client (parameters, cancel key, `ReadyForQuery`).
pub async fn greet(out: &mut ClientOutput) -> std::io::Result<()> {
    let version = format!("{}/shardline", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        out.push(&msg::parameter_status(name, value)).await?;
    }
    out.push(&msg::backend_key_data(0, 0)).await?;
    out.push(&msg::ready_for_query(b'I')).await?;
    out.flush().await
}

/// Answers console commands until the client leaves.
pub async fn serve(
    ctx: Arc<ProxyContext>,
    mut input: FrameReader<SocketRead>,
    mut out: ClientOutput,
) -> Result<(), ConsoleEnd> {
    // After an extended-protocol message, one error is sent and the rest ignored up to `Sync`.
    let mut refused_extended = false;
    loop {
        let frame = match input.read().await {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return Ok(()),
            Err(FrameError::Io(e)) => return Err(e.into()),
            Err(e) => {
                out.push(&msg::fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string()))
                    .await?;
                out.flush().await?;
                return Err(ConsoleEnd::Protocol(e.to_string()));
            }
        };
        match frame.tag() {
            b'Q' => {
                match query_text(&frame) {
                    Ok(text) => {
                        for reply in answer(&ctx, text).await {
                            out.push(&reply.encode()).await?;
                        }
                    }
                    Err(e) => {
                        out.push(&msg::error(sqlstate::PROTOCOL_VIOLATION, &e.to_string()))
                            .await?
                    }
                }
                out.push(&msg::ready_for_query(b'I')).await?;
                out.flush().await?;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                if !refused_extended {
                    refused_extended = true;
                    let text = "the admin console answers only simple queries (psql, or a driver's simple_query)";
                    out.push(&msg::error(sqlstate::FEATURE_NOT_SUPPORTED, text))
                        .await?;
                    out.flush().await?;
                }
            }
            b'S' => {
                refused_extended = false;
                out.push(&msg::ready_for_query(b'I')).await?;
                out.flush().await?;
            }
            b'X' => return Ok(()),
            other => {
                let text = format!("invalid frontend message type {:?}", other as char);
                out.push(&msg::fatal(sqlstate::PROTOCOL_VIOLATION, &text))
                    .await?;
                out.flush().await?;
                return Err(ConsoleEnd::Protocol(text));
            }
        }
    }
}

/// The replies to a query string: one per `;`-separated command, stopping at the first error.
async fn answer(ctx: &Arc<ProxyContext>, text: &str) -> Vec<Reply> {
    let statements: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if statements.is_empty() {
        return vec![Reply::Empty];
    }
    let mut replies = Vec::new();
    for statement in statements {
        let reply = match commands::parse(statement) {
            Ok(command) => commands::run(ctx, command).await,
            Err(reply) => reply,
        };
        let failed = matches!(reply, Reply::Error { .. });
        replies.push(reply);
        if failed {
            break;
        }
    }
    replies
}
