//! Fuzz target: every parser on arbitrary bytes. Checks, beyond "no panic": a message that
//! parses re-emits to bytes that parse to the same owned form, and every view can be walked.
//! The first byte chooses ASAP or ENRP.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        rserpool::wire::fuzz::parse_one(data);
    });
}
