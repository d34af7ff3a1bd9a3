//! Every target for a short, bounded run, so `cargo test --workspace` fuzzes each parser a
//! little on every change and fails if one panics.

use ns_fuzz::targets::{self, Ctx};
use ns_fuzz::Budget;

/// Inputs per target: a few seconds for all of them in a debug build.
const INPUTS: u64 = 20_000;
/// Inputs for `vapid`, whose ECDSA signing and checking take about 1 ms in a debug build.
const VAPID_INPUTS: u64 = 2_000;

#[test]
fn no_target_panics_on_a_short_run() {
    let ctx = Ctx::new();
    let budget = Budget {
        iterations: INPUTS,
        max_time: None,
        seed: 1,
    };
    let (slow, fast): (Vec<_>, Vec<_>) =
        targets::all().into_iter().partition(|t| t.name == "vapid");
    let mut outcomes = ns_fuzz::run_all(&fast, &ctx, budget, 2, &|_| {});
    let slow_budget = Budget {
        iterations: VAPID_INPUTS,
        ..budget
    };
    outcomes.extend(ns_fuzz::run_all(&slow, &ctx, slow_budget, 1, &|_| {}));
    assert_eq!(outcomes.len(), targets::all().len());
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let f = o.failure.as_ref()?;
            Some(format!(
                "{}: {} panics in {} inputs; shortest: {}\n  input: b\"{}\"",
                o.target,
                o.panics,
                o.inputs,
                f.message,
                ns_fuzz::escape(&f.input)
            ))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for o in &outcomes {
        let expected = if o.target == "vapid" {
            VAPID_INPUTS
        } else {
            INPUTS
        };
        assert_eq!(o.inputs, expected, "{}", o.target);
        assert!(
            o.accepted > 0,
            "{} never reached an accepting path",
            o.target
        );
    }
}

#[test]
fn every_valid_seed_is_accepted() {
    // The mutations start from these, so each must get past every check of its parser.
    let ctx = Ctx::new();
    for target in targets::all() {
        for seed in target.valid_seeds(&ctx) {
            assert_eq!(
                ns_fuzz::call(&target, &ctx, &seed),
                Ok(true),
                "{}: b\"{}\"",
                target.name,
                ns_fuzz::escape(&seed)
            );
        }
    }
}

#[test]
fn a_panicking_parser_is_caught_and_reported() {
    // The harness must see a panic, or this test could never fail: a parser that panics on
    // any input with a `}` in it is found, counted, and its shortest such input kept.
    fn fragile(_: &Ctx, input: &[u8]) -> bool {
        assert!(!input.contains(&b'}'), "a closing brace");
        true
    }
    let ctx = Ctx::new();
    let target = targets::all().remove(0).with_run(fragile);
    let budget = Budget {
        iterations: 2_000,
        max_time: None,
        seed: 1,
    };
    let outcome = ns_fuzz::run_target(&target, &ctx, budget);
    assert!(outcome.panics > 0);
    assert_eq!(outcome.accepted + outcome.panics, outcome.inputs);
    let failure = outcome.failure.expect("the shortest failing input");
    assert!(failure.input.contains(&b'}'));
    assert!(
        failure.message.contains("a closing brace"),
        "{}",
        failure.message
    );
    assert!(ns_fuzz::call(&target, &ctx, b"{}").is_err());
    assert_eq!(ns_fuzz::call(&target, &ctx, b"{"), Ok(true));
}

#[test]
fn a_run_is_the_same_for_the_same_seed() {
    let ctx = Ctx::new();
    let target = &targets::all()[0];
    let budget = Budget {
        iterations: 500,
        max_time: None,
        seed: 42,
    };
    let inputs = |seed| {
        let mut rng = ns_fuzz::gen::Rng::new(seed);
        let corpus = target.corpus(&ctx);
        (0..budget.iterations)
            .map(|_| target.input(&mut rng, &ctx, &corpus))
            .collect::<Vec<_>>()
    };
    assert_eq!(inputs(budget.seed), inputs(budget.seed));
    assert_ne!(inputs(budget.seed), inputs(budget.seed + 1));
}
