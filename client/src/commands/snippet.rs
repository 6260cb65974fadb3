//! `lrpymrpc snippet make|cmake`: the Make or CMake integration file on stdout (the
//! same text `cargo xtask snippets` commits under `integration/`).

use std::process::ExitCode;

use crate::cli::SnippetKind;
use crate::commands::snippets;

pub fn run(kind: SnippetKind) -> ExitCode {
    let text = match kind {
        SnippetKind::Make => snippets::make(),
        SnippetKind::Cmake => snippets::cmake(),
    };
    print!("{text}");
    ExitCode::SUCCESS
}
