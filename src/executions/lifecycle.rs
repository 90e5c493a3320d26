//! The lifecycle of an execution: which moves between [`ExecutionStatus`]es are allowed, and what a cancel does in
//! each status. Pure: the recorded moves are in `runs.rs`.
//!
//! ```text
//! PENDING -> QUEUED -> RUNNING -> COMPLETED | FAILED | CANCELED
//!                      RUNNING -> CANCEL_REQUESTED -> CANCELED
//! PENDING | QUEUED -> CANCELED
//! ```
//!
//! Terminal statuses (`COMPLETED`, `FAILED`, `CANCELED`) never change. A run asked to cancel while it runs may
//! still end `COMPLETED` or `FAILED` (its runner finished first), but never runs again.

use super::ExecutionStatus;
use ExecutionStatus::{CancelRequested, Canceled, Completed, Failed, Pending, Queued, Running};

/// Whether an execution in `from` may move to `to`: the one statement of the lifecycle.
pub fn allowed(from: ExecutionStatus, to: ExecutionStatus) -> bool {
    matches!(
        (from, to),
        (Pending, Queued | Canceled)
            | (Queued, Running | Canceled)
            | (Running, Completed | Failed | Canceled | CancelRequested)
            | (CancelRequested, Canceled | Completed | Failed)
    )
}

/// What a cancel does to an execution in a given status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelStep {
    /// Record this move (`CANCELED` at once before it runs, `CANCEL_REQUESTED` while it runs).
    Move(ExecutionStatus),
    /// Already canceled or being canceled: nothing to do (a repeated cancel is a no-op).
    Nothing,
    /// It finished otherwise: a conflict.
    Finished,
}

/// What a cancel does to an execution in `status`.
pub fn cancel_step(status: ExecutionStatus) -> CancelStep {
    match status {
        Pending | Queued => CancelStep::Move(Canceled),
        Running => CancelStep::Move(CancelRequested),
        CancelRequested | Canceled => CancelStep::Nothing,
        Completed | Failed => CancelStep::Finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of statuses, against the lifecycle as the issue states it.
    #[test]
    fn every_pair_of_statuses_is_allowed_exactly_as_the_lifecycle_says() {
        let expected = [
            (Pending, Queued),
            (Pending, Canceled),
            (Queued, Running),
            (Queued, Canceled),
            (Running, Completed),
            (Running, Failed),
            (Running, Canceled),
            (Running, CancelRequested),
            (CancelRequested, Canceled),
            (CancelRequested, Completed),
            (CancelRequested, Failed),
        ];
        let mut n = 0;
        for from in ExecutionStatus::ALL {
            for to in ExecutionStatus::ALL {
                let want = expected.contains(&(from, to));
                assert_eq!(allowed(from, to), want, "{from} -> {to}");
                n += usize::from(want);
                if from.is_terminal() {
                    assert!(!allowed(from, to), "terminal {from} changed to {to}");
                }
                if to == Pending {
                    assert!(!allowed(from, to), "nothing goes back to PENDING ({from})");
                }
            }
        }
        assert_eq!(n, expected.len());
    }

    #[test]
    fn a_cancel_moves_a_run_that_has_not_finished_and_only_along_the_lifecycle() {
        for s in ExecutionStatus::ALL {
            match cancel_step(s) {
                CancelStep::Move(to) => assert!(allowed(s, to), "{s} -> {to}"),
                CancelStep::Nothing => assert!(matches!(s, CancelRequested | Canceled), "{s}"),
                CancelStep::Finished => assert!(s.is_terminal() && s != Canceled, "{s}"),
            }
        }
        assert_eq!(cancel_step(Queued), CancelStep::Move(Canceled));
        assert_eq!(cancel_step(Running), CancelStep::Move(CancelRequested));
    }
}
