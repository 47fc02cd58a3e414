//! RVTools "Export all to Excel" workbooks (calamine: pure Rust, reads xlsx
//! without a spreadsheet program).

use std::path::Path;

use calamine::{open_workbook, Data, Reader, Xlsx};

use crate::error::InputError;
use crate::rvtools::{Export, OPTIONAL_SHEETS, REQUIRED_SHEETS};
use crate::sheet::Sheet;

/// Excel numbers as the text RVTools means: `100`, not `100.0`.
pub fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty | Data::Error(_) => String::new(),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => (*f as i64).to_string(),
        Data::Float(f) => f.to_string(),
        Data::Bool(true) => "True".into(),
        Data::Bool(false) => "False".into(),
        Data::DateTime(d) => d.as_f64().to_string(),
    }
}

pub fn read(path: &Path) -> Result<Export, InputError> {
    let mut workbook: Xlsx<_> = open_workbook(path).map_err(|e| match e {
        calamine::XlsxError::Io(io) => InputError::file(path, format!("cannot read: {io}")),
        other => InputError::file(
            path,
            format!(
                "not a readable xlsx workbook (an RVTools \"Export all to Excel\" file): {other}"
            ),
        ),
    })?;
    let names = workbook.sheet_names().to_vec();
    let mut load = |wanted: &str| -> Result<Option<Sheet>, InputError> {
        let Some(name) = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(wanted))
            .cloned()
        else {
            return Ok(None);
        };
        let range = workbook.worksheet_range(&name).map_err(|e| {
            InputError::file(path, format!("cannot read the sheet: {e}")).sheet(wanted)
        })?;
        let (first_row, first_col) = range.start().unwrap_or((0, 0));
        let pad = first_col as usize;
        // Rows before the range's first row are empty: keep the numbering by
        // feeding them as empty rows.
        let leading = (0..first_row).map(|_| Vec::new());
        let rows = range.rows().map(|cells| {
            let mut row = vec![String::new(); pad];
            row.extend(cells.iter().map(cell_text));
            row
        });
        Sheet::from_rows(path.to_path_buf(), wanted, leading.chain(rows)).map(Some)
    };
    let mut required = |wanted: &str| -> Result<Sheet, InputError> {
        load(wanted)?.ok_or_else(|| {
            InputError::file(
                path,
                format!(
                    "missing sheet {wanted} (the workbook has: {}); export with RVTools \"Export all to Excel\"",
                    names.join(", ")
                ),
            )
            .sheet(wanted)
        })
    };
    let vnetwork = required(REQUIRED_SHEETS[0])?;
    let vport = required(REQUIRED_SHEETS[1])?;
    let dvport = required(REQUIRED_SHEETS[2])?;
    let vinfo = load(OPTIONAL_SHEETS[0])?;
    Ok(Export {
        source: path.to_path_buf(),
        vnetwork,
        vport,
        dvport,
        vinfo,
    })
}
