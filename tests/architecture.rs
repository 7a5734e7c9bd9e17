//! `docs/architecture.md`'s module table is drawn from `src/` as it is: every
//! module has a row, every row is a module, and a folder's row names each of
//! its files.

use std::fs;
use std::path::Path;

#[test]
fn the_module_table_names_every_module_and_nothing_else() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(repo.join("docs/architecture.md")).unwrap();
    let rows: Vec<(&str, &str)> = (doc.lines())
        .filter_map(|line| line.strip_prefix("| `src/"))
        .filter_map(|rest| rest.split_once("` |"))
        .collect();
    let mut modules = Vec::new();
    for entry in fs::read_dir(repo.join("src")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if !entry.path().is_dir() {
            modules.push((name, Vec::new()));
            continue;
        }
        let mut files: Vec<String> = (fs::read_dir(entry.path()).unwrap())
            .map(|f| f.unwrap().file_name().into_string().unwrap())
            .filter(|f| f != "mod.rs")
            .collect();
        files.sort();
        // A folder that only holds its file's unit tests is named in that row.
        if files == ["tests.rs"] && repo.join("src").join(format!("{name}.rs")).exists() {
            let row = (rows.iter()).find(|(module, _)| *module == format!("{name}.rs"));
            let text = row.map_or("", |(_, text)| *text);
            assert!(
                text.contains(&format!("src/{name}/tests.rs")),
                "the row of src/{name}.rs names src/{name}/tests.rs"
            );
            continue;
        }
        modules.push((format!("{name}/"), files));
    }
    for (module, files) in &modules {
        let Some((_, text)) = rows.iter().find(|(m, _)| m == module) else {
            panic!("docs/architecture.md has no row for src/{module}");
        };
        for file in files {
            assert!(
                text.contains(&format!("`{file}`")),
                "the row of src/{module} does not name {file}"
            );
        }
    }
    for (row, _) in &rows {
        assert!(
            modules.iter().any(|(m, _)| m == row),
            "docs/architecture.md has a row for src/{row}, which does not exist"
        );
    }
}
