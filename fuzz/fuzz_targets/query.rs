//! Fuzz target `query`: the properties live in `smh_gateway::fuzzing::query`, shared
//! with the corpus replay in `tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smh_gateway::fuzzing::query(data));
