//! Which files of `sites_dir` are sites: every `*.toml` that is not hidden, in name order.
//! Hidden names are how writers stage a file before renaming it into place (`.acme.toml.tmp`)
//! and how Kubernetes lays out a ConfigMap volume (`..data`, `..2026_05_01_10_00_00.123`), so
//! neither is ever read as a site. A symlink counts as what it points to (a ConfigMap's
//! `cafe.toml -> ..data/cafe.toml`); directories are not descended into.

use std::path::{Path, PathBuf};

/// The site files of `dir`, in name order. A `*.toml` symlink that points nowhere is listed
/// (reading it fails, with its name, rather than a site vanishing without a word).
pub fn site_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let hidden = name.as_encoded_bytes().starts_with(b".");
        let path = entry.path();
        if hidden || path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // `metadata` follows symlinks; a dangling one stays in the list.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        files.push(path);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_toml_files_count_in_name_order_through_symlinks() {
        let dir = std::env::temp_dir().join(format!("sg-sites-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sites = dir.join("sites.d");
        let data = sites.join("..2026_01_01");
        std::fs::create_dir_all(&data).expect("dirs");
        for name in [
            "b.toml",
            ".hidden.toml",
            "notes.txt",
            "a.toml.bak",
            "c.TOML",
        ] {
            std::fs::write(sites.join(name), "").expect("write");
        }
        std::fs::write(data.join("a.toml"), "").expect("write");
        std::os::unix::fs::symlink("..2026_01_01", sites.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/a.toml", sites.join("a.toml")).expect("symlink");
        std::os::unix::fs::symlink("..data/gone.toml", sites.join("gone.toml")).expect("symlink");
        std::fs::create_dir(sites.join("nested.toml")).expect("dir");
        let names: Vec<String> = site_files(&sites)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.toml", "b.toml", "gone.toml"]);
        assert!(site_files(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
