//! The output every binary's config check shares (`portgroupd --check-config`,
//! `portgroup --check-config`, `portgroupctl check-config`), so scripts and people
//! read one format whichever binary they ran.

use std::io::{Read, Write};
use std::path::Path;

/// Reads FILE, or stdin for "-", labelled as the output names it.
pub fn read_input(file: &Path) -> (String, std::io::Result<Vec<u8>>) {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        let read = std::io::stdin().read_to_end(&mut bytes).map(|_| bytes);
        ("<stdin>".to_string(), read)
    } else {
        (file.display().to_string(), std::fs::read(file))
    }
}

/// Prints one `LABEL: problem` line each on stdout and returns the exit code:
/// 1 on any problem; `LABEL: ok` and 0 when there is none.
pub fn report(label: &str, problems: &[String]) -> i32 {
    let mut out = std::io::stdout().lock();
    if problems.is_empty() {
        let _ = writeln!(out, "{label}: ok");
        return 0;
    }
    for problem in problems {
        let _ = writeln!(out, "{label}: {problem}");
    }
    1
}
