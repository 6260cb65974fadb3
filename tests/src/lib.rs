//! Placeholder library target: the crate exists for its tests and its thin binary.
