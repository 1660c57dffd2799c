//! The registrar's state: pools, pool elements, selection policies, lifetimes and per-owner
//! checksums (issue 4).
