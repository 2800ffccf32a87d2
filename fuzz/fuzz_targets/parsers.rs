//! The parsers of what the kernel, thin_dump, /proc and users hand the driver: no panic on any
//! text, and what parses prints back to the same value (`thinpool_csi::dm::status::check_parsers`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    thinpool_csi::csi::fuzzing::check_parsers(&String::from_utf8_lossy(input));
});
