//! Registrar configuration: TOML with defaults that run out of the box (issue 5).
