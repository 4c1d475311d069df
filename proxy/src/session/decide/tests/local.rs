//! Local answers by transaction phase.

use shardline_router::{SavepointOp, StatementKind};

use super::*;

#[test]
fn local_answers_follow_the_transaction_phase() {
    use StatementKind::{Begin, Commit, DeallocateAll, DiscardAll, Read, Rollback, SetLocal};
    let held = TxPhase::Held { failed: false };
    let failed = TxPhase::Held { failed: true };
    let started = TxPhase::Started { failed: false };
    let started_failed = TxPhase::Started { failed: true };
    let deallocate = || StatementKind::Deallocate {
        name: "_pg3_1".into(),
    };
    let savepoint = |op| StatementKind::Savepoint {
        op,
        name: "s".into(),
    };
    let cases = [
        (Begin, TxPhase::Idle, Some(LocalAnswer::HoldBegin)),
        (Begin, held, None),
        (Begin, started, None),
        (Commit, held, Some(LocalAnswer::EndHeld { commit: true })),
        (Commit, failed, Some(LocalAnswer::EndHeld { commit: false })),
        (Rollback, held, Some(LocalAnswer::EndHeld { commit: false })),
        (Commit, started, None),
        (
            Commit,
            TxPhase::Idle,
            Some(LocalAnswer::NoTransaction { tag: "COMMIT" }),
        ),
        (
            SetLocal,
            held,
            Some(LocalAnswer::HoldSetting { tag: "SET" }),
        ),
        (SetLocal, failed, None),
        (SetLocal, TxPhase::Idle, None),
        (SetLocal, started, None),
        (
            savepoint(SavepointOp::Define),
            held,
            Some(LocalAnswer::HoldSavepoint {
                op: SavepointOp::Define,
            }),
        ),
        (savepoint(SavepointOp::Define), failed, None),
        (
            savepoint(SavepointOp::RollbackTo),
            failed,
            Some(LocalAnswer::HoldSavepoint {
                op: SavepointOp::RollbackTo,
            }),
        ),
        (savepoint(SavepointOp::Define), started, None),
        (DiscardAll, TxPhase::Idle, Some(LocalAnswer::DiscardAll)),
        (DiscardAll, held, None),
        (DiscardAll, started, None),
        (
            DeallocateAll,
            TxPhase::Idle,
            Some(LocalAnswer::DeallocateAll),
        ),
        (DeallocateAll, held, Some(LocalAnswer::DeallocateAll)),
        (DeallocateAll, started, Some(LocalAnswer::DeallocateAll)),
        (DeallocateAll, started_failed, None),
        (deallocate(), TxPhase::Idle, Some(LocalAnswer::Deallocate)),
        (deallocate(), started, Some(LocalAnswer::Deallocate)),
        (deallocate(), started_failed, None),
        (Read, TxPhase::Idle, None),
        (Read, held, None),
    ];
    for (kind, phase, expected) in cases {
        assert_eq!(
            local_answer(&kind, phase),
            expected,
            "{kind:?} in {phase:?}"
        );
    }
}
