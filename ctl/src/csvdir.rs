//! RVTools "Export all to CSV": one file per sheet, `RVTools_tab<Sheet>.csv`,
//! with a UTF-8 byte order mark, and ',' or ';' as the delimiter depending on
//! the Windows locale that wrote it.

use std::path::{Path, PathBuf};

use crate::error::InputError;
use crate::rvtools::{Export, OPTIONAL_SHEETS, REQUIRED_SHEETS};
use crate::sheet::Sheet;

/// The delimiter the header line uses most (outside quotes).
fn delimiter(text: &str) -> u8 {
    let header = text.lines().next().unwrap_or("");
    let (mut commas, mut semicolons, mut quoted) = (0, 0, false);
    for c in header.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => commas += 1,
            ';' if !quoted => semicolons += 1,
            _ => {}
        }
    }
    if semicolons > commas {
        b';'
    } else {
        b','
    }
}

pub fn read_sheet(path: &Path, sheet: &str) -> Result<Sheet, InputError> {
    let bytes = std::fs::read(path)
        .map_err(|e| InputError::file(path, format!("cannot read: {e}")).sheet(sheet))?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_start_matches('\u{feff}');
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(text))
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let mut err =
                InputError::file(path, format!("not a readable CSV file: {e}")).sheet(sheet);
            err.row = e.position().map(|p| p.line() as usize);
            err
        })?;
        rows.push(record.iter().map(str::to_string).collect());
    }
    Sheet::from_rows(path.to_path_buf(), sheet, rows)
}

fn find(dir: &Path, sheet: &str) -> Result<Option<PathBuf>, InputError> {
    let wanted = format!("rvtools_tab{}.csv", sheet.to_ascii_lowercase());
    let entries = std::fs::read_dir(dir)
        .map_err(|e| InputError::file(dir, format!("cannot read the directory: {e}")))?;
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| InputError::file(dir, format!("cannot read the directory: {e}")))?;
        if entry.file_name().to_string_lossy().to_ascii_lowercase() == wanted {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found.into_iter().next())
}

pub fn read(dir: &Path) -> Result<Export, InputError> {
    let required = |sheet: &str| -> Result<Sheet, InputError> {
        let Some(path) = find(dir, sheet)? else {
            return Err(InputError::file(
                dir,
                format!("missing sheet {sheet}: no RVTools_tab{sheet}.csv in this directory; export with RVTools \"Export all to CSV\""),
            )
            .sheet(sheet));
        };
        read_sheet(&path, sheet)
    };
    let vnetwork = required(REQUIRED_SHEETS[0])?;
    let vport = required(REQUIRED_SHEETS[1])?;
    let dvport = required(REQUIRED_SHEETS[2])?;
    let vinfo = match find(dir, OPTIONAL_SHEETS[0])? {
        Some(path) => Some(read_sheet(&path, OPTIONAL_SHEETS[0])?),
        None => None,
    };
    Ok(Export {
        source: dir.to_path_buf(),
        vnetwork,
        vport,
        dvport,
        vinfo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiters() {
        assert_eq!(delimiter("VM;Network;\"a,b\"\n"), b';');
        assert_eq!(delimiter("VM,Network,\"a;b\"\n"), b',');
        assert_eq!(delimiter("\"VM\";\"x,y,z\"\n"), b';');
    }
}
