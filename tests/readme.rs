//! Every code block of the READMEs is real code that the tests run: each C,
//! C++, Rust, Python, Dockerfile and unit file (`ini`) block must be preceded
//! by `<!-- file: PATH -->` and equal that file, or by `<!-- from: PATH -->`
//! and be lines that follow one another in that file (an excerpt); the restart
//! tests build and restart those files under load, and a real systemd runs
//! the unit files (tests/systemd_units.rs). (Shell commands and output samples
//! are not programs; tests/newcomer.rs runs the shell blocks marked
//! `<!-- run: NAME -->`.)

const READMES: [&str; 2] = ["README.md", "bindings/python/README.md"];
const PROGRAMS: [&str; 6] = ["c", "cpp", "rust", "python", "dockerfile", "ini"];

#[test]
fn every_program_in_a_readme_is_a_tested_file() {
    let mut checked = 0;
    for readme in READMES {
        let text = std::fs::read_to_string(testkit::repo().join(readme)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let Some(language) = lines[i].strip_prefix("```").filter(|l| !l.is_empty()) else {
                i += 1;
                continue;
            };
            let end = i
                + 1
                + (lines[i + 1..].iter())
                    .position(|l| *l == "```")
                    .unwrap_or_else(|| panic!("{readme}:{}: unclosed block", i + 1));
            if PROGRAMS.contains(&language) {
                let marker = if i > 0 { lines[i - 1] } else { "" };
                let (whole, path) = (marker.strip_suffix(" -->"))
                    .and_then(|m| {
                        (m.strip_prefix("<!-- file: ").map(|p| (true, p)))
                            .or_else(|| m.strip_prefix("<!-- from: ").map(|p| (false, p)))
                    })
                    .unwrap_or_else(|| {
                        panic!(
                            "{readme}:{}: a {language} block without <!-- file: PATH --> \
                             or <!-- from: PATH -->",
                            i + 1
                        )
                    });
                let file = std::fs::read_to_string(testkit::repo().join(path))
                    .unwrap_or_else(|e| panic!("{readme}:{}: {path}: {e}", i + 1));
                let block: String = lines[i + 1..end].iter().map(|l| format!("{l}\n")).collect();
                if whole {
                    assert!(
                        block == file,
                        "{readme}:{}: the block differs from {path}; paste the file again",
                        i + 1
                    );
                } else {
                    assert!(
                        !block.is_empty()
                            && (file.starts_with(&block) || file.contains(&format!("\n{block}"))),
                        "{readme}:{}: the block is not a run of lines of {path}",
                        i + 1
                    );
                }
                checked += 1;
            }
            i = end + 1;
        }
    }
    assert!(checked >= 5, "only {checked} program blocks found");
}
