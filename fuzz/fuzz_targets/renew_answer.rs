//! Fuzz target `renew_answer`: the properties live in `smh_gateway::fuzzing::renew_answer`, shared
//! with the corpus replay in `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smh_gateway::fuzzing::renew_answer(data));
