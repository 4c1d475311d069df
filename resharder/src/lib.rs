//! The resharding engine: moves keys between shards while the application keeps writing.
//!
//! Not built yet. The design (plan, prepare, dual-write, backfill, verify, cutover, cleanup,
//! with progress in the `schema/` catalog) is in `DESIGN.md`; this crate exists now so the
//! workspace layout and its dependency direction (`resharder -> router`) are fixed from the
//! start.

/// The resharding phases, in the order a migration goes through them.
pub const PHASES: [&str; 7] = [
    "plan",
    "prepare",
    "dual-write",
    "backfill",
    "verify",
    "cutover",
    "cleanup",
];
