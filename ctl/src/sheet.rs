//! A sheet of an export as text cells, whatever file it came from, and the
//! lookup of columns by header name (never by position: vCenter custom
//! attributes are inserted as extra columns, and headers differ between
//! RVTools versions).

use std::path::PathBuf;

use crate::error::InputError;

#[derive(Debug, Clone)]
pub struct Sheet {
    pub file: PathBuf,
    /// The RVTools sheet name (`vNetwork`), also for CSVs (`RVTools_tabvNetwork.csv`).
    pub name: String,
    pub headers: Vec<String>,
    /// Data rows, each with the 1-based row number it has in the file.
    pub rows: Vec<(usize, Vec<String>)>,
}

/// A column found by name: its index and the header as the file spells it.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub index: usize,
}

/// Headers compare without case, spaces or punctuation: "Mac Address",
/// "MAC address" and "MacAddress" are one column.
pub fn header_key(header: &str) -> String {
    header
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '#')
        .flat_map(char::to_lowercase)
        .collect()
}

impl Sheet {
    /// Builds a sheet from raw rows: the first non-empty row is the header.
    pub fn from_rows(
        file: PathBuf,
        name: &str,
        rows: impl IntoIterator<Item = Vec<String>>,
    ) -> Result<Sheet, InputError> {
        let mut headers = None;
        let mut data = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            let number = i + 1;
            if row.iter().all(|c| c.trim().is_empty()) {
                continue;
            }
            if headers.is_none() {
                let mut row = row;
                if let Some(first) = row.first_mut() {
                    // A UTF-8 byte order mark that a reader left in place.
                    *first = first.trim_start_matches('\u{feff}').to_string();
                }
                headers = Some(row.iter().map(|h| h.trim().to_string()).collect());
            } else {
                data.push((number, row));
            }
        }
        let Some(headers) = headers else {
            return Err(InputError::file(&file, "the sheet is empty (no header row)").sheet(name));
        };
        Ok(Sheet {
            file,
            name: name.to_string(),
            headers,
            rows: data,
        })
    }

    /// The column with one of these headers (the first is the name used in
    /// messages; the rest are aliases from other RVTools versions).
    pub fn col(&self, names: &[&str]) -> Result<Col, InputError> {
        self.opt_col(names).ok_or_else(|| {
            let aliases = if names.len() > 1 {
                format!(" (nor {})", names[1..].join(", "))
            } else {
                String::new()
            };
            self.error(
                None,
                names[0],
                format!("missing column; this sheet has no {:?}{aliases}", names[0]),
            )
        })
    }

    pub fn opt_col(&self, names: &[&str]) -> Option<Col> {
        names.iter().find_map(|name| {
            let key = header_key(name);
            self.headers
                .iter()
                .position(|h| header_key(h) == key)
                .map(|index| Col { index })
        })
    }

    /// The trimmed cell, "" where the row is short.
    pub fn cell<'a>(&self, row: &'a [String], col: Col) -> &'a str {
        row.get(col.index).map(|c| c.trim()).unwrap_or("")
    }

    pub fn opt_cell<'a>(&self, row: &'a [String], col: Option<Col>) -> &'a str {
        col.map(|c| self.cell(row, c)).unwrap_or("")
    }

    pub fn error(
        &self,
        row: Option<usize>,
        column: &str,
        message: impl Into<String>,
    ) -> InputError {
        let mut err = InputError::file(&self.file, message)
            .sheet(&self.name)
            .column(column);
        err.row = row;
        err
    }

    /// The header text of a column, for messages.
    pub fn header(&self, col: Col) -> &str {
        &self.headers[col.index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sheet(rows: &[&[&str]]) -> Sheet {
        Sheet::from_rows(
            PathBuf::from("x.csv"),
            "vNetwork",
            rows.iter()
                .map(|r| r.iter().map(|c| c.to_string()).collect()),
        )
        .unwrap()
    }

    #[test]
    fn columns_by_name_with_aliases_and_bom() {
        let s = sheet(&[
            &["\u{feff}VM", "Application", "MAC address", "IP Address"],
            &["web1", "shop", "00:50:56:AA:00:01", "10.0.0.1"],
        ]);
        assert_eq!(s.col(&["VM"]).unwrap().index, 0);
        assert_eq!(s.col(&["Mac Address"]).unwrap().index, 2);
        assert_eq!(s.col(&["IPv4 Address", "IP Address"]).unwrap().index, 3);
        let err = s.col(&["Network", "Portgroup"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "x.csv: sheet vNetwork, column \"Network\": missing column; this sheet has no \"Network\" (nor Portgroup)"
        );
        assert_eq!(s.rows[0].0, 2);
    }

    #[test]
    fn empty_rows_are_skipped_and_row_numbers_kept() {
        let s = sheet(&[&["", ""], &["VM", "Network"], &["", ""], &["a", "b"]]);
        assert_eq!(s.headers, vec!["VM", "Network"]);
        assert_eq!(s.rows.len(), 1);
        assert_eq!(s.rows[0].0, 4);
    }
}
