//! A fuzzing harness on stable Rust for every parser that sees untrusted input.
//!
//! No coverage feedback (that needs libFuzzer and nightly): instead each target has a small
//! structure-aware generator (random bytes, a JSON grammar with the protocol's field names
//! and type confusions, mutations of valid inputs made with a test secret and key), driven
//! by a seeded RNG so a run is repeatable. Each call runs inside `catch_unwind`; a panic is
//! counted and the shortest input that caused one is kept to be replayed.

pub mod gen;
pub mod targets;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use gen::Rng;
use targets::{Ctx, Target};

/// How much to run.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Inputs per target.
    pub iterations: u64,
    /// Stop a target early after this long, whatever its count.
    pub max_time: Option<Duration>,
    pub seed: u64,
}

/// What running one target gave.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub target: &'static str,
    pub inputs: u64,
    /// Inputs the parser accepted: shows the generator reaches past the first check.
    pub accepted: u64,
    pub panics: u64,
    pub elapsed: Duration,
    /// The shortest input that panicked, and the panic's message.
    pub failure: Option<Failure>,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub input: Vec<u8>,
    pub message: String,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The one line a run prints for this target.
    pub fn line(&self) -> String {
        format!(
            "{:<13} inputs {:>10}  accepted {:>9}  panics {:>3}  {:>9.0} inputs/s  ({:.1} s)",
            self.target,
            self.inputs,
            self.accepted,
            self.panics,
            self.per_second(),
            self.elapsed.as_secs_f64()
        )
    }
}

thread_local! {
    /// Set while this thread calls a parser: its panic is caught and recorded, not printed.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Routes panics on fuzzing threads to [`CAUGHT`]; every other panic still reaches the
/// hook that was there before.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let recorded = CAUGHT.with(|c| match &mut *c.borrow_mut() {
                Some(slot) => {
                    *slot = Some(info.to_string());
                    true
                }
                None => false,
            });
            if !recorded {
                previous(info);
            }
        }));
    });
}

/// Calls the target on one input; `Err` with the panic's message if it panicked.
pub fn call(target: &Target, ctx: &Ctx, input: &[u8]) -> Result<bool, String> {
    install_panic_hook();
    CAUGHT.with(|c| *c.borrow_mut() = Some(None));
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.run(ctx, input)));
    let message = CAUGHT.with(|c| c.borrow_mut().take().flatten());
    result.map_err(|_| message.unwrap_or_else(|| "a panic without a message".to_owned()))
}

/// Each target draws from its own stream, so its inputs don't depend on the others.
fn target_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs one target within `budget`.
pub fn run_target(target: &Target, ctx: &Ctx, budget: Budget) -> Outcome {
    let mut rng = Rng::new(target_seed(budget.seed, target.name));
    let corpus = target.corpus(ctx);
    let start = Instant::now();
    let mut outcome = Outcome {
        target: target.name,
        inputs: 0,
        accepted: 0,
        panics: 0,
        elapsed: Duration::ZERO,
        failure: None,
    };
    while outcome.inputs < budget.iterations {
        if outcome.inputs % 1024 == 0 && budget.max_time.is_some_and(|m| start.elapsed() >= m) {
            break;
        }
        let input = target.input(&mut rng, ctx, &corpus);
        outcome.inputs += 1;
        match call(target, ctx, &input) {
            Ok(accepted) => outcome.accepted += u64::from(accepted),
            Err(message) => {
                outcome.panics += 1;
                let shorter = outcome
                    .failure
                    .as_ref()
                    .is_none_or(|f| input.len() < f.input.len());
                if shorter {
                    outcome.failure = Some(Failure { input, message });
                }
            }
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

/// Runs `targets` on `jobs` threads; `done` sees each outcome as it finishes. Returns the
/// outcomes in the order of `targets`.
pub fn run_all(
    targets: &[Target],
    ctx: &Ctx,
    budget: Budget,
    jobs: usize,
    done: &(dyn Fn(&Outcome) + Sync),
) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(vec![None; targets.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, targets.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(i) else { break };
                let outcome = run_target(target, ctx, budget);
                done(&outcome);
                outcomes.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
            });
        }
    });
    outcomes
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// An input as a Rust byte string literal's content: printable ASCII as is, the rest escaped.
pub fn escape(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}
