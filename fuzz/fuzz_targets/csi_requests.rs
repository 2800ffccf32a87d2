//! Every CSI call, with requests decoded from the input, against a fresh node plugin over the
//! in-memory pool and mounter: no panic, no hang, only documented codes, nothing changed by an
//! error (`thinpool_csi::csi::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinpool_csi::csi::fuzzing::Harness;

fuzz_target!(|input: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a tokio runtime");
    // Records on tmpfs when there is one: each input opens a fresh store.
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("a temporary directory");
    let harness = Harness::new(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    if let Err(violation) = runtime.block_on(harness.run(input)) {
        panic!("{violation}");
    }
});
