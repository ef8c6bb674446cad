//! The SMTP vocabulary every stage shares: reply codes and texts ([`reply`]), mail addresses
//! as RFC 5321 writes them ([`address`]), SRS addresses ([`srs`]) and authentication verdicts
//! ([`authres`]).
//!
//! Input: bytes and text from clients and scripts. Output: typed replies and addresses. A
//! leaf: it imports nothing from the rest of the daemon, so the receiver, the scripts and the
//! config can all use it without depending on one another.
//!
//! Security: every parser here sees untrusted input (each has a fuzz target, `fuzz/`); they
//! allocate no more than their input and never panic.

pub mod address;
pub mod authres;
pub mod reply;
pub mod srs;
