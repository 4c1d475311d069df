//! Local answers by transaction phase.

use shardline_router::StatementKind;

use super::*;

#[test]
fn local_answers_follow_the_transaction_phase() {
    use StatementKind::{Begin, Commit, DiscardAll, Read, Rollback, SetLocal};
    let held = TxPhase::Held { failed: false };
    let failed = TxPhase::Held { failed: true };
    let cases = [
        (Begin, TxPhase::Idle, Some(LocalAnswer::HoldBegin)),
        (Begin, held, None),
        (Begin, TxPhase::Started, None),
        (Commit, held, Some(LocalAnswer::EndHeld { commit: true })),
        (Commit, failed, Some(LocalAnswer::EndHeld { commit: false })),
        (Rollback, held, Some(LocalAnswer::EndHeld { commit: false })),
        (Commit, TxPhase::Started, None),
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
        (
            DiscardAll,
            TxPhase::Idle,
            Some(LocalAnswer::Discard { tag: "DISCARD ALL" }),
        ),
        (DiscardAll, held, None),
        (Read, TxPhase::Idle, None),
        (Read, held, None),
    ];
    for (kind, phase, expected) in cases {
        assert_eq!(
            local_answer(&kind, "", phase),
            expected,
            "{kind:?} in {phase:?}"
        );
    }
    assert_eq!(
        local_answer(&DiscardAll, "deallocate all", TxPhase::Idle),
        Some(LocalAnswer::Discard {
            tag: "DEALLOCATE ALL"
        })
    );
}
