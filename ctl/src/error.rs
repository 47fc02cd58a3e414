//! Input errors: one line naming the file and, where they apply, the sheet,
//! column and row, so that the person holding the export can find the cell.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    pub file: PathBuf,
    pub sheet: Option<String>,
    pub column: Option<String>,
    /// 1-based, as a spreadsheet program numbers rows (the header is row 1).
    pub row: Option<usize>,
    pub message: String,
}

impl InputError {
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        InputError {
            file: file.to_path_buf(),
            sheet: None,
            column: None,
            row: None,
            message: message.into(),
        }
    }

    pub fn sheet(mut self, sheet: &str) -> Self {
        self.sheet = Some(sheet.to_string());
        self
    }

    pub fn column(mut self, column: &str) -> Self {
        self.column = Some(column.to_string());
        self
    }

    pub fn row(mut self, row: usize) -> Self {
        self.row = Some(row);
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(sheet) = &self.sheet {
            write!(f, ": sheet {sheet}")?;
        }
        if let Some(column) = &self.column {
            write!(f, ", column {column:?}")?;
        }
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        // One line, whatever the underlying library put in its message.
        let message = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        write!(f, ": {message}")
    }
}
