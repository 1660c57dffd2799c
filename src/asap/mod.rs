//! The registrar's ASAP state machine, sans-IO: messages and time in, actions out (issue 5).
