//! The README's route table is the code's: it must equal what `smh-gateway routes`
//! prints for the built-in table, so the two cannot drift.

use smh_gateway::proxy::route::Router;

#[test]
fn the_readme_route_table_is_the_effective_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let begin = "<!-- routes:begin -->\n";
    let start = readme
        .find(begin)
        .expect("README has the routes:begin marker")
        + begin.len();
    let end = readme
        .find("<!-- routes:end -->")
        .expect("README has the routes:end marker");
    let want = Router::new(&[]).unwrap().markdown();
    assert!(
        readme[start..end] == want,
        "README's route table is stale: replace it with the output of `cargo run -q -- routes`:\n{want}"
    );
}
