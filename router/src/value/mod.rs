//! PostgreSQL values as the proxy must read, compare and compute them itself when it assembles
//! one answer from several shards: exact `numeric` arithmetic in text form, the binary wire
//! format of the few types it decodes or encodes, and PostgreSQL's ordering of values.

pub mod binary;
pub mod numeric;
pub mod order;
