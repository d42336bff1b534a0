//! Stop-the-world pauses: decoding the kernel's events and keeping the per-reason tallies the
//! terminal summary prints.
use std::{borrow::Cow, collections::BTreeMap};

use profiler_common::stw::{REASON_TEXT_LEN, STW_FLAG_REASON_IS_TEXT, StwEvent};

use super::{histogram::LogLinearHistogram, reason};
use crate::gobin::abi::StwAbi;

/// Pauses longer than this are not real pauses but mismatched timestamps.
const MAX_PLAUSIBLE_PAUSE_NS: u64 = 3600 * 1_000_000_000;

/// One stop-the-world, in the runtime's own terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    /// Prometheus label value, e.g. `gc_mark_termination`.
    pub reason: String,
    pub ends_gc_cycle: bool,
    /// From when stopping began until the world restarted: `/sched/pauses/total/*`.
    pub total_ns: u64,
    /// From when stopping began until every P stopped: `/sched/pauses/stopping/*`.
    pub stopping_ns: Option<u64>,
    /// When stopping began and when the world restarted, on the runtime's own clock
    /// (`nanotime`, the clock of gctrace's times), for the GC cycle's phases (`CycleClock`).
    pub started_ns: u64,
    pub restarted_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidPause {
    /// The restart time is before the start, or implausibly far after it.
    Timestamps,
}

impl InvalidPause {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Timestamps => "invalid_timestamps",
        }
    }
}

pub fn decode(event: &StwEvent, abi: &StwAbi) -> Result<Pause, InvalidPause> {
    let total_ns = event
        .restarted_ns
        .checked_sub(event.started_stopping_ns)
        .filter(|&total| total <= MAX_PLAUSIBLE_PAUSE_NS)
        .ok_or(InvalidPause::Timestamps)?;
    let stopping_ns = (event.finished_stopping_ns != 0)
        .then(|| {
            event
                .finished_stopping_ns
                .checked_sub(event.started_stopping_ns)
        })
        .flatten()
        .filter(|&stopping| stopping <= total_ns);
    let runtime_name: Result<Cow<'_, str>, u32> = if event.flags & STW_FLAG_REASON_IS_TEXT != 0 {
        // Go 1.19: the runtime's text, mapped to the name newer releases use for it.
        let length = (event.reason as usize).min(REASON_TEXT_LEN);
        let text = String::from_utf8_lossy(&event.reason_text[..length]).into_owned();
        Ok(abi
            .reason_for_text(&text)
            .map_or(Cow::Owned(text), Cow::Borrowed))
    } else {
        abi.reason_name(event.reason)
            .map(Cow::Borrowed)
            .ok_or(event.reason)
    };
    let (label, ends_gc_cycle) = match runtime_name {
        Ok(name) => (reason::label(&name), name == reason::GC_MARK_TERMINATION),
        Err(number) => (reason::unnamed(number), false),
    };
    Ok(Pause {
        reason: label,
        ends_gc_cycle,
        total_ns,
        stopping_ns,
        started_ns: event.started_stopping_ns,
        restarted_ns: event.restarted_ns,
    })
}

/// The phases of each GC cycle, from its two stop-the-world pauses as they come: a cycle
/// starts by stopping the world for sweep termination, marks concurrently from the restart
/// (`work.tMark`, the `now` that restart returned) until it stops the world again for mark
/// termination (`work.tMarkTerm`, a `nanotime` taken just before stopping), and ends there.
/// That middle span is gctrace's middle clock term.
#[derive(Clone, Debug, Default)]
pub struct CycleClock {
    /// The current cycle's concurrent mark start, until its mark termination is seen.
    mark_started_ns: Option<u64>,
    /// When the previous cycle began stopping the world for sweep termination.
    previous_start_ns: Option<u64>,
}

/// What one pause completed, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CyclePhases {
    /// Concurrent mark of the cycle this mark termination ends.
    pub concurrent_mark_ns: Option<u64>,
    /// From the previous cycle's start to this one's (a sweep termination).
    pub interval_ns: Option<u64>,
}

impl CycleClock {
    /// Take the next pause of the target, in order; a cycle mapscope saw only half of (it
    /// attached during the cycle) gives nothing.
    pub fn pause(&mut self, pause: &Pause) -> CyclePhases {
        let mut phases = CyclePhases::default();
        if pause.reason == reason::GC_SWEEP_TERMINATION_LABEL {
            phases.interval_ns = self
                .previous_start_ns
                .and_then(|previous| pause.started_ns.checked_sub(previous));
            self.previous_start_ns = Some(pause.started_ns);
            self.mark_started_ns = Some(pause.restarted_ns);
        } else if pause.ends_gc_cycle {
            phases.concurrent_mark_ns = self
                .mark_started_ns
                .take()
                .and_then(|started| pause.started_ns.checked_sub(started));
        }
        phases
    }
}

#[derive(Clone, Debug, Default)]
pub struct ReasonTally {
    pub total: LogLinearHistogram,
    pub sum_ns: u128,
}

/// Everything the terminal summary needs, for one target.
#[derive(Clone, Debug, Default)]
pub struct PauseBook {
    pub by_reason: BTreeMap<String, ReasonTally>,
    pub gc_cycles: u64,
}

impl PauseBook {
    pub fn record(&mut self, pause: &Pause) {
        let tally = self.by_reason.entry(pause.reason.clone()).or_default();
        tally.total.record(pause.total_ns);
        tally.sum_ns += u128::from(pause.total_ns);
        if pause.ends_gc_cycle {
            self.gc_cycles += 1;
        }
    }

    pub fn pauses(&self) -> u64 {
        self.by_reason
            .values()
            .map(|tally| tally.total.count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobin::{
        GoVersion,
        abi::{Support, stw_abi},
    };

    fn abi() -> &'static StwAbi {
        match stw_abi(GoVersion::new(1, 27, 3)) {
            Support::Known(row) => row,
            other => panic!("{other:?}"),
        }
    }

    fn event(reason: u32, started: u64, finished: u64, restarted: u64) -> StwEvent {
        StwEvent {
            pid: 1,
            reason,
            started_stopping_ns: started,
            finished_stopping_ns: finished,
            restarted_ns: restarted,
            ..StwEvent::default()
        }
    }

    #[test]
    fn decodes_runtime_timestamps_into_total_and_stopping() {
        let pause = decode(&event(1, 1_000, 1_300, 51_000), abi()).unwrap();
        assert_eq!(pause.reason, "gc_mark_termination");
        assert!(pause.ends_gc_cycle);
        assert_eq!(pause.total_ns, 50_000);
        assert_eq!(pause.stopping_ns, Some(300));
    }

    #[test]
    fn unknown_stopping_end_and_unknown_reason() {
        let pause = decode(&event(99, 1_000, 0, 2_000), abi()).unwrap();
        assert_eq!(pause.reason, "reason_99");
        assert!(!pause.ends_gc_cycle);
        assert_eq!(pause.stopping_ns, None);
        // A stopping end after the restart is not trusted.
        assert_eq!(
            decode(&event(7, 1_000, 9_000, 2_000), abi())
                .unwrap()
                .stopping_ns,
            None
        );
    }

    #[test]
    fn go119_reason_texts_get_the_same_labels() {
        let Support::Known(old) = stw_abi("go1.19.8".parse().unwrap()) else {
            panic!("1.19 is known")
        };
        let text_event = |text: &str| {
            let mut event = event(0, 1_000, 0, 9_000);
            event.flags = STW_FLAG_REASON_IS_TEXT;
            event.reason = text.len() as u32;
            event.reason_text[..text.len()].copy_from_slice(text.as_bytes());
            event
        };
        let mark = decode(&text_event("gcing"), old).unwrap();
        assert_eq!(mark.reason, "gc_mark_termination");
        assert!(mark.ends_gc_cycle);
        assert_eq!(
            decode(&text_event(""), old).unwrap().reason,
            "gc_sweep_termination"
        );
        assert_eq!(
            decode(&text_event("stack trace"), old).unwrap().reason,
            "all_goroutines_stack_trace"
        );
        assert_eq!(
            decode(&text_event("Some New Thing"), old).unwrap().reason,
            "some_new_thing"
        );
    }

    #[test]
    fn rejects_inverted_or_absurd_timestamps() {
        assert_eq!(
            decode(&event(1, 5_000, 0, 4_000), abi()),
            Err(InvalidPause::Timestamps)
        );
        assert_eq!(
            decode(&event(1, 0, 0, MAX_PLAUSIBLE_PAUSE_NS + 1), abi()),
            Err(InvalidPause::Timestamps)
        );
    }

    /// Concurrent mark runs from the sweep termination's restart to the mark termination's
    /// stop; the interval from one sweep termination's stop to the next; half-seen cycles and
    /// other pauses give nothing.
    #[test]
    fn cycle_phases_come_from_the_two_pauses() {
        let mut clock = CycleClock::default();
        let mut feed = |reason, started, restarted| {
            clock.pause(&decode(&event(reason, started, 0, restarted), abi()).unwrap())
        };
        // Attached mid-cycle: its mark termination has no start.
        assert_eq!(feed(1, 500, 600), CyclePhases::default());
        // Cycle 1: sweep termination 1_000..1_050, mark until 9_000.
        assert_eq!(feed(2, 1_000, 1_050), CyclePhases::default());
        assert_eq!(
            feed(7, 2_000, 2_010),
            CyclePhases::default(),
            "not a GC pause"
        );
        assert_eq!(
            feed(1, 9_000, 9_100),
            CyclePhases {
                concurrent_mark_ns: Some(7_950),
                interval_ns: None
            }
        );
        // Cycle 2 starts 20_000 after cycle 1.
        assert_eq!(
            feed(2, 21_000, 21_040),
            CyclePhases {
                concurrent_mark_ns: None,
                interval_ns: Some(20_000)
            }
        );
        assert_eq!(feed(1, 25_040, 25_100).concurrent_mark_ns, Some(4_000));
        // A second mark termination in the same cycle is not a second observation.
        assert_eq!(feed(1, 26_000, 26_100), CyclePhases::default());
    }

    #[test]
    fn book_counts_cycles_by_mark_termination() {
        let mut book = PauseBook::default();
        for (reason, total) in [
            (2, 10_000),
            (1, 20_000),
            (2, 30_000),
            (1, 40_000),
            (7, 5_000),
        ] {
            book.record(&decode(&event(reason, 0, 0, total), abi()).unwrap());
        }
        assert_eq!(book.gc_cycles, 2);
        assert_eq!(book.pauses(), 5);
        assert_eq!(book.by_reason["gc_sweep_termination"].sum_ns, 40_000);
        assert_eq!(book.by_reason["read_mem_stats"].total.count(), 1);
    }
}
