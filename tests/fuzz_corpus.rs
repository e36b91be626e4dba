//! The fuzz entry points (`paygate_mcp::fuzzing`) as property tests, so every test run
//! covers what `scripts/fuzz.sh` covers for longer: each parser of untrusted input on
//! arbitrary bytes and on mutations of the seed corpus checked in under
//! `fuzz/corpus/<target>/seed-*`. Any panic fails the property (proptest catches it, shrinks
//! the input and reports it).

use std::path::Path;

use paygate_mcp::fuzzing;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestError, TestRunner};

/// Cases per property: each entry point runs on twice this many inputs.
const CASES: u32 = 2_000;

/// Fragments that make a mutated seed reach the parsers' corners more often than random
/// bytes do.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"-0",
    b"1e999",
    b"18446744073709551616",
    b"\"id\":",
    b"\"name\":",
    b"\"keys\":",
    b"\"version\":",
    b"\"key\":",
    b"\"tags\":",
    b"data: ",
    b"\n\n",
    b"\r\n\r\n",
    b"\r\n",
    b"\n",
    b"\xff",
    b"\0",
];

/// The checked-in seeds of one fuzz target; none at all is an error, not a vacuous pass.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// One change to an input.
#[derive(Debug, Clone)]
enum Edit {
    /// Flips one bit.
    Flip(Index, u8),
    /// Inserts random bytes.
    Insert(Index, Vec<u8>),
    /// Inserts a JSON or SSE fragment.
    Token(Index, Index),
    /// Removes up to `len` bytes.
    Remove(Index, usize),
    /// Copies up to `len` bytes from one place to another.
    Copy(Index, usize, Index),
    /// Cuts the input short.
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(at, token)| Edit::Token(at, token)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(at, len)| Edit::Remove(at, len)),
        2 => (any::<Index>(), 1usize..256, any::<Index>())
            .prop_map(|(from, len, to)| Edit::Copy(from, len, to)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut input: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        // Positions are taken over len + 1 so an insert can land at the end.
        let at = |i: &Index, len: usize| i.index(len + 1);
        match e {
            Edit::Flip(i, bit) if !input.is_empty() => {
                let p = i.index(input.len());
                input[p] ^= 1 << bit;
            }
            Edit::Flip(..) => {}
            Edit::Insert(i, bytes) => {
                let p = at(i, input.len());
                input.splice(p..p, bytes.iter().copied());
            }
            Edit::Token(i, t) => {
                let p = at(i, input.len());
                input.splice(p..p, t.get(TOKENS).iter().copied());
            }
            Edit::Remove(i, len) => {
                let p = at(i, input.len());
                let end = (p + len).min(input.len());
                input.drain(p..end);
            }
            Edit::Copy(from, len, to) => {
                let p = at(from, input.len());
                let piece = input[p..(p + len).min(input.len())].to_vec();
                let q = at(to, input.len());
                input.splice(q..q, piece);
            }
            Edit::Truncate(i) => input.truncate(at(i, input.len())),
        }
    }
    input
}

/// A seed of `target` with a few edits.
fn mutated(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    (
        proptest::sample::select(seeds),
        prop::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits))
}

fn arbitrary() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..2048)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn jsonrpc_request_on_arbitrary_bytes(data in arbitrary()) {
        fuzzing::jsonrpc_request(&data);
    }

    #[test]
    fn jsonrpc_request_on_mutated_seeds(data in mutated("jsonrpc_request")) {
        fuzzing::jsonrpc_request(&data);
    }

    #[test]
    fn sse_events_on_arbitrary_bytes(data in arbitrary()) {
        fuzzing::sse_events(&data);
    }

    #[test]
    fn sse_events_on_mutated_seeds(data in mutated("sse_events")) {
        fuzzing::sse_events(&data);
    }

    #[test]
    fn state_file_on_arbitrary_bytes(data in arbitrary()) {
        fuzzing::state_file(&data);
    }

    #[test]
    fn state_file_on_mutated_seeds(data in mutated("state_file")) {
        fuzzing::state_file(&data);
    }

    #[test]
    fn admin_body_on_arbitrary_bytes(data in arbitrary()) {
        fuzzing::admin_body(&data);
    }

    #[test]
    fn admin_body_on_mutated_seeds(data in mutated("admin_body")) {
        fuzzing::admin_body(&data);
    }
}

/// The properties above can fail: a panic on some mutated seed is caught and reported as a
/// failing case, not lost.
#[test]
fn a_panic_on_a_mutated_seed_fails_the_property() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&mutated("jsonrpc_request"), |data| {
        // Stands in for a parser bug: any input that is a request with a numeric id.
        if let Ok(req) = paygate_mcp::jsonrpc::parse_request(&data) {
            assert!(!req.id.as_ref().is_some_and(|id| id.is_number()));
        }
        Ok(())
    });
    assert!(
        matches!(result, Err(TestError::Fail(..))),
        "a panic went unnoticed: {result:?}"
    );
}

/// The mutations reach past the seeds: some mutated requests still parse, others do not.
#[test]
fn mutations_stay_near_the_seeds_and_leave_them() {
    let mut runner = TestRunner::deterministic();
    let strategy = mutated("jsonrpc_request");
    let (mut parsed, mut refused) = (0, 0);
    for _ in 0..500 {
        let data = strategy.new_tree(&mut runner).unwrap().current();
        match paygate_mcp::jsonrpc::parse_request(&data) {
            Ok(_) => parsed += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(
        parsed > 25 && refused > 25,
        "{parsed} parsed, {refused} refused"
    );
}
