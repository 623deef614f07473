//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) on stable, through
//! the same entry points the fuzz targets call (`smh_gateway::fuzzing`): every
//! input a fuzzer kept, and every crash it found (saved there as a regression
//! input), runs on each `cargo test`.

use std::path::Path;

use smh_gateway::fuzzing::TARGETS;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read corpus file");
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let run = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let files = corpus(target);
    assert!(
        files.len() >= 10,
        "{target}: only {} corpus files",
        files.len()
    );
    let mut failed = Vec::new();
    for (name, bytes) in &files {
        if std::panic::catch_unwind(|| run(bytes)).is_err() {
            failed.push(name.clone());
        }
    }
    assert!(failed.is_empty(), "{target}: these inputs fail: {failed:?}");
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&dir)
        .expect("fuzz/corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
    for t in &targets {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{t}.rs"));
        let text =
            std::fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            text.contains(&format!("smh_gateway::fuzzing::{t}(data)")),
            "{} must call smh_gateway::fuzzing::{t}",
            bin.display()
        );
    }
}

#[test]
fn route_corpus() {
    replay("route");
}

#[test]
fn query_corpus() {
    replay("query");
}

#[test]
fn body_corpus() {
    replay("body");
}

#[test]
fn token_corpus() {
    replay("token");
}

#[test]
fn renew_answer_corpus() {
    replay("renew_answer");
}

#[test]
fn config_corpus() {
    replay("config");
}

/// The token corpus reaches the accepting path for each algorithm (a seed signed
/// by the harness verifies), so replaying it checks the claim properties too.
#[test]
fn signed_token_seeds_verify() {
    use smh_gateway::fuzzing::{hs_secret_file, sign, token_config};
    use smh_gateway::proxy::auth::Verifier;
    use smh_gateway::secret::Secret;
    let verifier = Verifier::from_config(&token_config(&hs_secret_file())).unwrap();
    for (kid, iss) in [("hs", "iss-a"), ("rs", "iss-b"), ("es", "iss-b")] {
        let alg = kid.to_uppercase();
        let header = format!(r#"{{"alg":"{alg}256","kid":"{kid}"}}"#);
        let claims =
            format!(r#"{{"exp":4102444800,"iss":"{iss}","aud":"smh","library_id":"lib1"}}"#);
        let token = sign(header.as_bytes(), claims.as_bytes());
        let principal = verifier
            .verify(&Secret::new(token))
            .unwrap_or_else(|e| panic!("{kid}: {e:?}"));
        assert_eq!(principal.library.as_deref(), Some("lib1"));
        let seed = format!("sign:{header}\n{claims}");
        smh_gateway::fuzzing::token(seed.as_bytes());
    }
}
