//! The README's quick start is examples/quickstart.rs, word for word: the example runs on
//! every backend in scripts/test, so the program the README shows does too.

#[test]
fn readme_quick_start_is_the_quickstart_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/examples/quickstart.rs")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{example}```\n")),
        "README.md's quick start differs from examples/quickstart.rs: copy the example in"
    );
}
