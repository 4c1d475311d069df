//! The PostgreSQL wire protocol as the proxy needs it: framing, views of frontend messages,
//! and backend messages built or inspected by the proxy. No sockets beyond `AsyncRead`.

pub mod backend;
pub mod encoding;
mod frame;
pub mod frontend;
pub mod spare;

pub use frame::{BufferedMessages, Frame, FrameError, FrameReader};
