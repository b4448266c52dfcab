//! Splits the README into the crate docs' guides (`quorumlock::guide`): the
//! README stays the one source, and its Rust examples compile as doc tests
//! wherever they are read.

use std::path::Path;

/// README section heading → guide file.
const GUIDES: &[(&str, &str)] = &[
    ("## API tour", "tour"),
    (
        "## Long work: keep-alive, the lost signal, `with_lock`",
        "keep_alive",
    ),
    ("## Fencing tokens", "fencing"),
    ("## Several resources at once", "several_resources"),
    (
        "## Beyond the mutex: semaphores, read-write locks, inspect",
        "primitives",
    ),
    ("## Visibility", "visibility"),
    ("## Guarantees and their limits", "guarantees"),
    ("## Operations", "operations"),
];

fn main() {
    println!("cargo:rerun-if-changed=README.md");
    let readme = std::fs::read_to_string("README.md").expect("README.md is part of the crate");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for (heading, name) in GUIDES {
        let at = readme
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("README.md has no section `{heading}`"));
        let body = at + heading.len() + 2;
        let end = readme[body..]
            .find("\n## ")
            .map_or(readme.len(), |e| body + e + 1);
        let title = heading.trim_start_matches("## ");
        let text = format!("# {title}\n\n{}", &readme[body..end]);
        std::fs::write(Path::new(&out).join(format!("{name}.md")), text)
            .expect("write a guide into OUT_DIR");
    }
}
