//! Fuzz target: the TCP framer over a byte stream cut into reads at points the input chooses.
//! Checks that every split yields the same messages and the same error as one read.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        rserpool::wire::fuzz::frame_stream(data);
    });
}
