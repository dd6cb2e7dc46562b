//! tc-tests: cross-crate tests (see `tests/*.rs` in this folder). The
//! library itself is empty; the tests are the content.
